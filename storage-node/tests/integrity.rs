//! Corrupt chunks on disk: never served as good, found by scrub (the
//! function and the `scrub` subcommand), healed by quarantine + re-capture.

use std::io::{Seek, SeekFrom, Write};

use fleetmig_storage_node::scrub::{self, ScrubOptions};
use tonic::Code;

use crate::support::{TestNode, chunk};

fn flip_a_byte(path: &std::path::Path, offset: u64) {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open chunk file");
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    std::io::Read::read_exact(&mut file, &mut byte).expect("read");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&[byte[0] ^ 0x01]).expect("write");
}

#[tokio::test]
async fn a_corrupt_chunk_is_refused_reported_and_healed() {
    let root = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_in(root.path(), |_| {}).await;
    let (a, b, c) = (chunk(1, 2000), chunk(2, 3000), chunk(3, 4000));
    node.seal("mig-1", b"manifest", &[&a, &b, &c]).await;
    flip_a_byte(&node.chunk_path(&b), 32 + 1500);

    let (served, error) = node.get_chunks("mig-1", &[&a, &b, &c]).await;
    assert_eq!(served.len(), 1, "chunks before the corrupt one are served");
    assert_eq!(served[0].data, a.data);
    let status = error.expect("the corrupt chunk ends the stream");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    let expected = format!(
        "chunk {} of migration mig-1 is corrupt on node {}",
        hex::encode(b.id),
        node.node.node_id()
    );
    assert!(status.message().contains(&expected), "{status:?}");

    // Scrub, read-only, from the library while the node is down.
    let data_dir = node.data_dir().to_owned();
    node.stop().await.expect("clean stop");
    let report = scrub::scrub(&data_dir, ScrubOptions::default()).expect("scrub");
    assert!(!report.is_clean());
    assert_eq!(report.chunks_checked, 3);
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].chunk_id, hex::encode(b.id));
    assert_eq!(report.corrupt[0].migrations, vec!["mig-1".to_owned()]);
    assert!(report.missing.is_empty());

    // The subcommand: exit code 1, the chunk and its migration on stdout.
    let binary = env!("CARGO_BIN_EXE_fleetmig-storage-node");
    let output = std::process::Command::new(binary)
        .args(["scrub", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run scrub");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("corrupt chunk {}", hex::encode(b.id)))
            && stdout.contains("mig-1"),
        "{stdout}"
    );

    // Quarantine, then a new capture of the same content heals the store.
    let output = std::process::Command::new(binary)
        .args(["scrub", "--quarantine", "--json", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run scrub --quarantine");
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    assert_eq!(json["corrupt"][0]["chunk_id"], hex::encode(b.id));
    assert!(json["corrupt"][0]["quarantined_to"].is_string());
    let report = scrub::scrub(&data_dir, ScrubOptions::default()).expect("scrub");
    assert_eq!(
        report.missing.len(),
        1,
        "mig-1 now lacks the quarantined chunk"
    );
    assert!(!report.is_clean());

    let node = TestNode::start_in(root.path(), |_| {}).await;
    assert_eq!(
        node.missing("mig-2", &[&a, &b, &c]).await.expect("missing"),
        vec![1]
    );
    let put = node.put("mig-2", &[&b]).await.expect("re-upload");
    assert_eq!(put.stored, 1);
    let (served, error) = node.get_chunks("mig-1", &[&a, &b, &c]).await;
    assert!(error.is_none(), "healed: {error:?}");
    assert_eq!(served[1].data, b.data);
    node.stop().await.expect("clean stop");
    let report = scrub::scrub(&data_dir, ScrubOptions::default()).expect("scrub");
    assert!(report.is_clean(), "{report:?}");
    let output = std::process::Command::new(binary)
        .args(["scrub", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run scrub");
    assert_eq!(output.status.code(), Some(0));
}

#[tokio::test]
async fn a_corrupt_manifest_is_never_served() {
    let node = TestNode::start().await;
    let a = chunk(1, 100);
    node.seal("mig-m", b"the sealed manifest", &[&a]).await;
    let path = node.data_dir().join("migrations/mig-m.manifest");
    flip_a_byte(&path, 3);
    let status = node.manifest("mig-m").await.expect_err("corrupt manifest");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("mig-m"), "{status:?}");
    node.stop().await.expect("clean stop");
}
