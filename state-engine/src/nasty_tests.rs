//! Round trips of the generator's nasty cases: generate → fingerprint → capture → verify →
//! reimage → restore → verify → compare, then every case checked by name.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::fingerprint::{self, FileFingerprint, SymlinkExpectation};
use crate::generate::{GenExtras, GenOptions, SPARSE_FILE, generate_machine_with, nasty};
use crate::layout::Selection;
use crate::manifest::{EntryKind, Manifest};
use crate::{CaptureOptions, NoProgress, RestoreOptions};

const USERS: [&str; 2] = ["alice", "bob"];

fn machine(files_per_user: u32, extras: &GenExtras) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pc");
    let opts = GenOptions {
        seed: 23,
        users: USERS.len() as u32,
        files_per_user,
        hostname: Some("NASTY-PC".into()),
    };
    let report = generate_machine_with(&root, &opts, extras).unwrap();
    assert_eq!(report.users, USERS);
    (dir, root)
}

/// Windows 7 target path (relative to the root) of a profile-relative XP path.
fn target(user: &str, rel: &str) -> String {
    let mapped = Selection::default().map_rel(rel).expect("migrated path");
    format!("Users/{user}/{mapped}")
}

fn xp(root: &Path, user: &str, rel: &str) -> PathBuf {
    root.join("Documents and Settings").join(user).join(rel)
}

#[test]
fn every_nasty_case_survives_a_refresh() {
    let extras = GenExtras {
        nasty: Some(true),
        large_sparse: None,
    };
    let (_dir, root) = machine(150, &extras);
    let expected: BTreeMap<String, FileFingerprint> =
        fingerprint::expected_after_refresh(&root).unwrap();
    let symlinks: BTreeMap<String, SymlinkExpectation> =
        fingerprint::expected_symlinks(&root).unwrap();

    // The machine really has every case, and the expectations name them.
    for user in USERS {
        for name in nasty::UNICODE_NAMES {
            let rel = format!("{}/{name}", nasty::UNICODE_DIR);
            assert!(expected.contains_key(&target(user, &rel)), "{rel}");
        }
        for rel in nasty::ZERO_BYTE_FILES {
            assert_eq!(expected[&target(user, rel)].size, 0, "{rel}");
        }
        for (rel, mode) in nasty::READ_ONLY_FILES {
            assert_eq!(expected[&target(user, rel)].mode, *mode, "{rel}");
        }
        assert_eq!(expected[&target(user, nasty::UNREADABLE_FILE)].mode, 0);
        for rel in nasty::long_paths() {
            assert!(xp(&root, user, &rel).is_file(), "{rel}");
            assert!(target(user, &rel).chars().count() > 250, "{rel}");
        }
        let [first, second, temp] = nasty::HARD_LINKED.map(|rel| xp(&root, user, rel));
        let inode = fs::metadata(&first).unwrap().ino();
        assert_eq!(fs::metadata(&second).unwrap().ino(), inode);
        assert_eq!(fs::metadata(&temp).unwrap().ino(), inode);
        assert_eq!(fs::metadata(&first).unwrap().nlink(), 3);
        for (rel, text, escapes) in nasty::SYMLINKS {
            let want = SymlinkExpectation {
                text: (*text).to_owned(),
                escapes: *escapes,
            };
            assert_eq!(symlinks[&target(user, rel)], want, "{rel}");
        }
    }
    assert_eq!(symlinks.len(), USERS.len() * nasty::SYMLINKS.len());

    // Capture: nothing skipped, links recorded, never followed.
    let store = root.join("MigStore");
    let capture =
        crate::capture(&root, &store, &CaptureOptions::new("nasty"), &NoProgress).unwrap();
    assert!(capture.skipped.is_empty(), "{:?}", capture.skipped);
    assert_eq!(capture.files as usize, expected.len());
    assert_eq!(capture.symlinks as usize, symlinks.len());
    let verified = crate::verify_store(&root, &store).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.mismatches);
    let manifest = Manifest::load_sealed(&store).unwrap();
    for entry in manifest.entries_of(EntryKind::Symlink) {
        let want = &symlinks[&entry.target];
        assert_eq!(entry.link_target.as_deref(), Some(want.text.as_str()));
        assert_eq!(entry.link_escapes, want.escapes, "{}", entry.target);
    }
    for entry in &manifest.entries {
        for link in [
            "My Documents/WINDOWS/",
            "My Documents/hostname/",
            "Desktop/Favorites/",
        ] {
            assert!(!entry.source.contains(link), "followed: {}", entry.source);
        }
        assert!(!entry.source.contains("kernel32.dll"), "{}", entry.source);
    }
    // The temp name of the linked file is excluded, the two others are captured.
    let sources: Vec<&str> = manifest.entries.iter().map(|e| e.source.as_str()).collect();
    assert!(
        !sources
            .iter()
            .any(|source| source.ends_with(nasty::HARD_LINKED[2]))
    );

    crate::simulate_reimage(&root, std::slice::from_ref(&store)).unwrap();
    assert!(crate::verify_store(&root, &store).unwrap().is_ok());
    let restored = crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap();
    assert_eq!(restored.files_linked, capture.files);
    assert!(restored.renamed.is_empty(), "{:?}", restored.renamed);
    let escaping: Vec<&String> = symlinks
        .iter()
        .filter(|(_, link)| link.escapes)
        .map(|(target, _)| target)
        .collect();
    let mut skipped: Vec<&String> = restored.symlinks_skipped.iter().collect();
    skipped.sort();
    assert_eq!(skipped, escaping);
    assert_eq!(restored.symlinks as usize, symlinks.len() - escaping.len());
    let verified = crate::restore::verify_restore(&store, &root).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.mismatches);

    // Every included file byte-identical, with its mtime and mode, at its mapped path.
    let compared = fingerprint::compare(&expected, &root).unwrap();
    assert!(
        compared.is_ok(),
        "missing {:?} different {:?}",
        compared.missing,
        compared.different
    );
    assert_eq!(compared.matched as usize, expected.len());

    for user in USERS {
        let new = |rel: &str| root.join(target(user, rel));
        let nfc = new(&format!("{}/Caf\u{e9}.txt", nasty::UNICODE_DIR));
        let nfd = new(&format!("{}/Cafe\u{301}.txt", nasty::UNICODE_DIR));
        assert_ne!(
            fs::metadata(&nfc).unwrap().ino(),
            fs::metadata(&nfd).unwrap().ino()
        );
        for rel in nasty::EMPTY_DIRS {
            assert_eq!(fs::read_dir(new(rel)).unwrap().count(), 0, "{rel}");
        }
        for rel in nasty::ZERO_BYTE_FILES {
            assert_eq!(fs::metadata(new(rel)).unwrap().len(), 0, "{rel}");
        }
        for rel in nasty::long_paths() {
            assert!(new(&rel).is_file(), "{rel}");
        }
        // Both migrated names of the linked file are back, as one inode; the temp name is not.
        let [first, second, temp] = nasty::HARD_LINKED;
        let (first, second) = (new(first), new(second));
        assert_eq!(
            fs::metadata(&first).unwrap().ino(),
            fs::metadata(&second).unwrap().ino()
        );
        assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
        let temp_target = format!("Users/{user}/AppData/Local/Temp/{}", file_name(temp));
        assert!(fs::symlink_metadata(root.join(temp_target)).is_err());
        // Symlinks inside the profile come back with their text; the others do not.
        for (rel, text, escapes) in nasty::SYMLINKS {
            let at = new(rel);
            if *escapes {
                assert!(fs::symlink_metadata(&at).is_err(), "{rel} was recreated");
            } else {
                assert_eq!(fs::read_link(&at).unwrap(), Path::new(text), "{rel}");
            }
        }
        // Excluded temp and cache files are absent.
        for excluded in [
            "AppData/Local/Temp",
            "AppData/Local/Temporary Internet Files",
            "AppData/Local/History",
        ] {
            let left =
                fingerprint::list_files_under(&root, &format!("Users/{user}/{excluded}")).unwrap();
            assert!(left.is_empty(), "{excluded}: {left:?}");
        }
    }
    // What the escaping links point to was not captured: no restored file came from outside.
    let restored_files = fingerprint::list_files_under(&root, "Users").unwrap();
    assert!(restored_files.iter().all(|file| !file.contains("kernel32")));
    assert_eq!(
        restored_files
            .iter()
            .filter(|file| file.starts_with("Users/alice/") || file.starts_with("Users/bob/"))
            .count(),
        expected.len()
    );
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap()
}

#[test]
fn large_sparse_file_is_linked_not_copied() {
    const SIZE: u64 = 3 << 30;
    let extras = GenExtras {
        nasty: Some(false),
        large_sparse: Some(SIZE),
    };
    let (_dir, root) = machine(40, &extras);
    let source = xp(&root, "alice", SPARSE_FILE);
    let before = fs::metadata(&source).unwrap();
    assert_eq!(before.len(), SIZE);
    assert!(
        before.blocks() * 512 < 1 << 20,
        "{} blocks",
        before.blocks()
    );
    assert!(
        !xp(&root, "bob", SPARSE_FILE).exists(),
        "only the first user"
    );
    let read_ends = |path: &Path| {
        let file = fs::File::open(path).unwrap();
        let (mut head, mut tail) = ([0u8; 512], [0u8; 512]);
        file.read_exact_at(&mut head, 0).unwrap();
        file.read_exact_at(&mut tail, SIZE - 512).unwrap();
        (head, tail)
    };
    let ends = read_ends(&source);
    assert_ne!(ends.0, [0; 512]);

    // Everything else is fingerprinted as usual; the sparse file by inode, size and ends.
    let mut expected = fingerprint::expected_with(&root, &Selection::default()).unwrap();
    let sparse_target = target("alice", SPARSE_FILE);
    let sparse_expected = expected.remove(&sparse_target).unwrap();
    let store = root.join("MigStore");
    crate::capture(&root, &store, &CaptureOptions::new("sparse"), &NoProgress).unwrap();
    assert!(crate::verify_store(&root, &store).unwrap().is_ok());
    crate::simulate_reimage(&root, std::slice::from_ref(&store)).unwrap();
    crate::restore(&store, &root, &RestoreOptions::default(), &NoProgress).unwrap();
    let verified = crate::restore::verify_restore(&store, &root).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.mismatches);
    assert!(fingerprint::compare(&expected, &root).unwrap().is_ok());

    let restored = root.join(&sparse_target);
    let after = fs::metadata(&restored).unwrap();
    assert_eq!(after.ino(), before.ino(), "same inode: no data copied");
    assert_eq!(after.len(), SIZE);
    assert_eq!(after.blocks(), before.blocks(), "still sparse");
    assert_eq!(
        after.mtime() * 1_000_000_000 + after.mtime_nsec(),
        sparse_expected.mtime_ns
    );
    assert_eq!(after.mode() & 0o7777, sparse_expected.mode);
    assert_eq!(read_ends(&restored), ends);
}
