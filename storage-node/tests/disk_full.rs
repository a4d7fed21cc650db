//! A full disk: the upload fails with RESOURCE_EXHAUSTED, no partial chunk
//! is visible, tmp/ is empty, the migration is not committed. Runs on an
//! 8 MiB tmpfs (skipped, with a message, where mounting is not permitted).

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetmig_storage_node::record::MigrationState;
use tonic::Code;

use crate::support::{TestNode, chunk};

/// An 8 MiB tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(path)
            .output()
            .ok()?;
        if output.status.success() {
            return Some(Self {
                path: path.to_owned(),
            });
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Not root, or a container without CAP_SYS_ADMIN.
        assert!(
            stderr.contains("permission denied")
                || stderr.contains("Operation not permitted")
                || stderr.contains("must be superuser")
                || stderr.contains("only root"),
            "mount failed for another reason: {stderr}"
        );
        eprintln!(
            "skipping the disk-full test: cannot mount a tmpfs here ({})",
            stderr.trim()
        );
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.path).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

#[tokio::test]
async fn a_full_disk_leaves_nothing_partial() {
    let root = tempfile::tempdir().expect("tempdir");
    let Some(tmpfs) = Tmpfs::mount(&root.path().join("small")) else {
        return;
    };
    let node = TestNode::start_in(&tmpfs.path, |_| {}).await;

    // 3 × 3 MiB does not fit in 8 MiB.
    let chunks: Vec<_> = (0..3).map(|n| chunk(100 + n, 3 << 20)).collect();
    let refs: Vec<_> = chunks.iter().collect();
    let status = node
        .put("mig-full", &refs)
        .await
        .expect_err("the disk fills up");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let expected = format!(
        "storage node {} disk full while storing chunk ",
        node.node.node_id()
    );
    assert!(status.message().contains(&expected), "{status:?}");

    assert!(
        node.temporaries().is_empty(),
        "tmp/ is cleaned up: {:?}",
        node.temporaries()
    );
    // Whatever is visible is whole: every chunk file verifies.
    let report =
        fleetmig_storage_node::scrub::scrub(node.data_dir(), Default::default()).expect("scrub");
    assert!(report.corrupt.is_empty(), "{report:?}");
    let commit = node
        .commit("mig-full", b"manifest", &refs)
        .await
        .expect_err("chunks are missing");
    assert_eq!(commit.code(), Code::FailedPrecondition, "{commit:?}");
    assert_eq!(
        node.node.migration_state("mig-full"),
        Some(MigrationState::Capturing)
    );
    let capacity = node.capacity().await;
    assert_eq!(capacity.stored_bytes, report.bytes_checked);

    // Once space is back, the same upload completes.
    node.put("mig-full", &refs[..1])
        .await
        .expect("one chunk fits");
    node.stop().await.expect("clean stop");
    drop(tmpfs);
}
