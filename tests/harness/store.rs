//! Looking into a worker's hard-link migration store (`<root>/StateStore/<job>/`) while
//! its job runs.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetmig_state::manifest::{EntryKind, Manifest, SEAL_FILE};

use crate::journal::read_journal;
use crate::machine::MachineSnapshot;

/// How often [`inspect_store`] looks for the seal.
const SEAL_POLL: Duration = Duration::from_millis(10);

/// Path of the store of `job_id` on the machine at `root`.
pub fn store_dir(root: &Path, job_id: &str) -> PathBuf {
    root.join("StateStore").join(job_id)
}

/// `dir` joined with the '/'-separated relative path `rel` (as manifests record them).
fn join_rel(dir: &Path, rel: &str) -> PathBuf {
    let mut path = dir.to_path_buf();
    path.extend(rel.split('/').filter(|part| !part.is_empty()));
    path
}

/// The inode `source` (an XP path relative to the root) had in `snapshot`.
fn original_inode(snapshot: &MachineSnapshot, source: &str) -> u64 {
    *snapshot.inodes.get(source).unwrap_or_else(|| {
        panic!(
            "the manifest captured {source}, which was not a file of {} before the wave",
            snapshot.root.display()
        )
    })
}

/// What [`inspect_store`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreInspection {
    /// File entries in the sealed manifest (each checked).
    pub files: usize,
    /// Of those, store files found sharing the original's inode (fewer than `files` only
    /// when the job released the store during the check).
    pub store_links_checked: usize,
    /// Of those, originals still in their XP place, sharing the store link's inode.
    pub originals_linked: usize,
    /// Whether the journal showed `reimage.start` for the job when the check was over:
    /// when false, the whole check ran before the reimage (phase CAPTURED or earlier,
    /// or a reimage hook that had not started yet).
    pub reimage_started: bool,
}

/// Waits (polling every 10 ms, up to `timeout`) until the store of `job_id` is sealed,
/// then checks that it is a hard-link store of exactly the migratable files: the
/// manifest lists every file of `snapshot.expected` and nothing else, each entry records
/// the inode of the original, and each store file *is* that inode (no data copied).
/// Originals still in place must share it too. Store files are checked only while the
/// store exists (see [`StoreInspection::store_links_checked`]).
///
/// Blocking: run it with `spawn_blocking`.
///
/// # Panics
/// When the store is not sealed in time, or any of the above does not hold.
pub fn inspect_store(
    snapshot: &MachineSnapshot,
    job_id: &str,
    timeout: Duration,
) -> StoreInspection {
    let root = &snapshot.root;
    let store = store_dir(root, job_id);
    let started = Instant::now();
    while !store.join(SEAL_FILE).exists() {
        assert!(
            started.elapsed() < timeout,
            "the store {} was not sealed within {timeout:?} (journal: {:?})",
            store.display(),
            read_journal(root)
                .iter()
                .map(|entry| entry.event.as_str())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(SEAL_POLL);
    }
    let manifest = Manifest::load_sealed(&store).unwrap_or_else(|err| {
        panic!(
            "cannot load the sealed manifest of {}: {err}",
            store.display()
        )
    });
    assert_eq!(
        manifest.job_id,
        job_id,
        "manifest of {} names another job",
        store.display()
    );

    let files: Vec<_> = manifest
        .entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::File)
        .collect();
    let captured: BTreeSet<&str> = files.iter().map(|entry| entry.target.as_str()).collect();
    let expected: BTreeSet<&str> = snapshot.expected.keys().map(String::as_str).collect();
    let not_captured: Vec<&&str> = expected.difference(&captured).take(10).collect();
    let unexpected: Vec<&&str> = captured.difference(&expected).take(10).collect();
    assert!(
        not_captured.is_empty() && unexpected.is_empty() && files.len() == expected.len(),
        "the manifest of {} does not list exactly the migratable files ({} file entries, {} \
         expected): not captured {not_captured:?}, unexpected {unexpected:?}",
        store.display(),
        files.len(),
        expected.len()
    );

    for entry in &files {
        let original_ino = original_inode(snapshot, &entry.source);
        assert_eq!(
            entry.inode, original_ino,
            "manifest entry {} records inode {} but the original {} had inode {original_ino}",
            entry.target, entry.inode, entry.source
        );
    }

    let mut store_links_checked = 0;
    let mut originals_linked = 0;
    for entry in &files {
        let original_ino = original_inode(snapshot, &entry.source);
        let stored = join_rel(&store, &entry.store);
        let meta = match std::fs::symlink_metadata(&stored) {
            Ok(meta) => meta,
            // The job went on and released its store while this ran.
            Err(_) if !store.exists() => break,
            Err(err) => panic!("cannot stat the store file {}: {err}", stored.display()),
        };
        assert_eq!(
            meta.ino(),
            original_ino,
            "store file {} has inode {} but the original {} has {original_ino}: data was copied, \
             not hard-linked",
            stored.display(),
            meta.ino(),
            entry.source
        );
        store_links_checked += 1;
        let source = join_rel(root, &entry.source);
        if let Ok(source_meta) = std::fs::symlink_metadata(&source) {
            assert_eq!(
                source_meta.ino(),
                original_ino,
                "the original {} changed inode during the capture",
                source.display()
            );
            assert!(
                source_meta.nlink() >= 2,
                "the original {} has {} link(s) although the store links it",
                source.display(),
                source_meta.nlink()
            );
            originals_linked += 1;
        }
    }
    let reimage_started = read_journal(root)
        .iter()
        .any(|entry| entry.job_id == job_id && entry.event == "reimage.start");
    StoreInspection {
        files: files.len(),
        store_links_checked,
        originals_linked,
        reimage_started,
    }
}
