//! End-to-end: generate → capture → verify → reimage → restore → verify → compare → delete store.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::fingerprint::{self, FileFingerprint};
use crate::manifest::{EntryKind, MANIFEST_FILE, Manifest};
use crate::progress::{Progress, ProgressSink};
use crate::{CaptureOptions, GenOptions, NoProgress, RestoreOptions};

#[derive(Default)]
struct Recorder(Mutex<Vec<Progress>>);

impl ProgressSink for Recorder {
    fn update(&self, progress: &Progress) {
        self.0.lock().unwrap().push(progress.clone());
    }
}

fn machine(files_per_user: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pc-01");
    let opts = GenOptions {
        seed: 42,
        users: 3,
        files_per_user,
        hostname: Some("PC-01".into()),
    };
    crate::generate_machine(&root, &opts).unwrap();
    (dir, root)
}

fn inode(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

#[test]
fn full_refresh_preserves_user_state() {
    let (_dir, root) = machine(1_500);
    let expected: BTreeMap<String, FileFingerprint> =
        fingerprint::expected_after_refresh(&root).unwrap();
    assert!(expected.len() > 3 * 1_000);
    let store = root.join("MigStore");

    let recorder = Recorder::default();
    let capture = crate::capture(&root, &store, &CaptureOptions::new("job-7"), &recorder).unwrap();
    assert_eq!(capture.users, ["alice", "bob", "carol"]);
    assert_eq!(capture.files as usize, expected.len());
    assert!(
        capture.excluded_files > 3 * 100,
        "temp, caches, history and Thumbs.db are excluded"
    );
    assert!(capture.skipped.is_empty());
    assert!(
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.files_done >= 1_000)
    );

    // Every store file is the original's inode; nothing was copied.
    let manifest = Manifest::load_sealed(&store).unwrap();
    assert_eq!(manifest.hostname, "PC-01");
    for entry in manifest.entries_of(EntryKind::File) {
        assert_eq!(
            inode(&store.join(&entry.store)),
            inode(&root.join(&entry.source)),
            "{}",
            entry.source
        );
    }
    let verified = crate::verify_store(&root, &store).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.mismatches);
    assert_eq!(verified.files_checked, capture.files);

    let readonly = "Users/alice/Documents/Contract (signed).doc";
    let expected_readonly = expected[readonly].clone();
    assert_eq!(expected_readonly.mode, 0o444);

    crate::simulate_reimage(&root, &[PathBuf::from("MigStore")]).unwrap();
    assert!(!root.join("Documents and Settings").exists());
    assert!(
        crate::verify_store(&root, &store).unwrap().is_ok(),
        "the store survives the reimage"
    );

    let report = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(report.files_linked, capture.files);
    assert!(report.renamed.is_empty());
    let verified = crate::restore::verify_restore(&store, &root).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.mismatches);

    let compared = fingerprint::compare(&expected, &root).unwrap();
    assert!(
        compared.is_ok(),
        "missing {:?} different {:?}",
        compared.missing,
        compared.different
    );
    assert_eq!(compared.matched as usize, expected.len());
    for user in ["alice", "bob", "carol"] {
        for excluded in [
            "AppData/Local/Temp",
            "AppData/Local/Temporary Internet Files",
            "AppData/Local/History",
            "Local Settings",
        ] {
            let left =
                fingerprint::list_files_under(&root, &format!("Users/{user}/{excluded}")).unwrap();
            assert!(left.is_empty(), "{excluded}: {left:?}");
        }
        assert!(
            root.join(format!("Users/{user}/Documents/Überweisung – März.doc"))
                .is_file()
        );
        assert!(
            root.join(format!("Users/{user}/Documents/報告.txt"))
                .is_file()
        );
        assert!(root.join(format!("Users/{user}/Pictures")).is_dir());
        assert!(
            root.join(format!(
                "Users/{user}/AppData/Local/Microsoft/Outlook/Outlook.pst"
            ))
            .is_file()
        );
        assert!(
            root.join(format!("Users/{user}/Documents/Old Projects"))
                .is_dir(),
            "empty dirs come back"
        );
        let thumbs = fingerprint::list_files_under(&root, &format!("Users/{user}")).unwrap();
        assert!(thumbs.iter().all(|path| !path.ends_with("Thumbs.db")));
    }
    let info = crate::detect(&root).unwrap();
    assert_eq!(info.os_family, "windows-7");
    assert_eq!(info.hostname, "PC-01");
    assert_eq!(info.profiles.len(), 3);
    // Profile directory mtime came back too.
    let alice = manifest
        .entries
        .iter()
        .find(|entry| entry.target == "Users/alice")
        .unwrap();
    let alice_meta = fs::metadata(root.join("Users/alice")).unwrap();
    assert_eq!(
        alice_meta.mtime() * 1_000_000_000 + alice_meta.mtime_nsec(),
        alice.mtime_ns
    );

    // A second restore is a no-op.
    let again = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(again.files_linked, 0);
    assert_eq!(again.files_already_present, capture.files);

    // Deleting the store leaves the restored files intact, with one link fewer.
    let target = root.join(readonly);
    assert_eq!(fs::metadata(&target).unwrap().nlink(), 2);
    crate::delete_store(&store).unwrap();
    assert!(!store.exists());
    assert_eq!(fs::metadata(&target).unwrap().nlink(), 1);
    assert_eq!(
        fingerprint::fingerprint_file(&target).unwrap(),
        expected_readonly
    );
    assert!(fingerprint::compare(&expected, &root).unwrap().is_ok());
}

#[test]
fn collisions_are_renamed_or_overwritten() {
    let (_dir, root) = machine(60);
    let store = root.join("MigStore");
    crate::capture(&root, &store, &CaptureOptions::new("job"), &NoProgress).unwrap();
    crate::simulate_reimage(&root, std::slice::from_ref(&store)).unwrap();
    let target = root.join("Users/alice/Documents/報告.txt");
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    fs::write(&target, b"written on the new machine").unwrap();

    let report = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(
        report.renamed,
        [(
            "Users/alice/Documents/報告.txt".to_owned(),
            "Users/alice/Documents/報告(1).txt".to_owned()
        )]
    );
    assert_eq!(fs::read(&target).unwrap(), b"written on the new machine");
    assert!(root.join("Users/alice/Documents/報告(1).txt").is_file());
    assert!(
        crate::restore::verify_restore(&store, &root)
            .unwrap()
            .is_ok()
    );

    // Idempotent even with the collision.
    let again = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(again.files_linked, 0);
    assert!(!root.join("Users/alice/Documents/報告(2).txt").exists());

    // Replace (not rewrite: it is a hard link to the store) bob's restored file with a new one.
    let other = root.join("Users/bob/Documents/報告.txt");
    fs::remove_file(&other).unwrap();
    fs::write(&other, b"bob's new file").unwrap();
    let fresh = root.join("Users/bob/Documents/Überweisung – März.doc");
    fs::remove_file(&fresh).unwrap();
    let opts = RestoreOptions {
        overwrite: true,
        users: vec!["bob".into()],
        ..RestoreOptions::default()
    };
    let report = crate::restore(&store, &root, &opts, &NoProgress).unwrap();
    assert_eq!(report.overwritten, ["Users/bob/Documents/報告.txt"]);
    assert_eq!(report.files_linked, 2);
    assert_ne!(fs::read(&other).unwrap(), b"bob's new file");
}

#[test]
fn restore_never_writes_outside_root() {
    let (dir, root) = machine(40);
    let store = root.join("MigStore");
    crate::capture(&root, &store, &CaptureOptions::new("job"), &NoProgress).unwrap();
    crate::simulate_reimage(&root, std::slice::from_ref(&store)).unwrap();

    // A symlinked parent inside the new tree that leads out of the root is refused.
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir_all(root.join("Users/alice")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("Users/alice/Documents")).unwrap();
    let error = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(matches!(error, crate::Error::PathEscapes { .. }), "{error}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    fs::remove_file(root.join("Users/alice/Documents")).unwrap();

    // A hostile manifest, even correctly re-sealed, is refused before anything is written.
    let mut manifest = Manifest::load_sealed(&store).unwrap();
    let file = manifest
        .entries
        .iter()
        .position(|entry| entry.kind == EntryKind::File)
        .unwrap();
    manifest.entries[file].target = format!(
        "Users/{}/../../../outside/evil",
        manifest.entries[file].user
    );
    manifest.write_sealed(&store).unwrap();
    let error = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(
        matches!(error, crate::Error::ManifestInvalid { .. }),
        "{error}"
    );

    // Tampering without re-sealing breaks the seal.
    let path = store.join(MANIFEST_FILE);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("../../../outside/evil", "x");
    fs::write(&path, text).unwrap();
    let error = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap_err();
    assert!(
        matches!(error, crate::Error::SealMismatch { .. }),
        "{error}"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
}

#[test]
fn symlinks_inside_profile_are_restored_escaping_ones_are_not() {
    let (_dir, root) = machine(40);
    let profile = root.join("Documents and Settings/alice");
    std::os::unix::fs::symlink("/etc", profile.join("Desktop/etc")).unwrap();
    std::os::unix::fs::symlink("../Favorites", profile.join("Desktop/favs")).unwrap();
    let store = root.join("MigStore");
    crate::capture(&root, &store, &CaptureOptions::new("job"), &NoProgress).unwrap();
    crate::simulate_reimage(&root, std::slice::from_ref(&store)).unwrap();
    let report = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(report.symlinks, 1);
    assert_eq!(report.symlinks_skipped, ["Users/alice/Desktop/etc"]);
    assert_eq!(
        fs::read_link(root.join("Users/alice/Desktop/favs")).unwrap(),
        Path::new("../Favorites")
    );
    assert!(!root.join("Users/alice/Desktop/etc").exists());
}
