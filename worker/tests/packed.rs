//! Packed stores end to end: `scan --packed` / `load` through the real binary, and the packed
//! library (capture, restore, verify) on generated machines in temp directories.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use fleetmig_format::{ChunkId, EntryKind, FleetKey, PackedManifest};
use fleetmig_state::NoProgress;
use fleetmig_state::fingerprint;
use fleetmig_worker::packed::{
    self, ChunkStore, ChunkUpload, Commit, DirStore, Keys, RestoreOptions, offline_migration_key,
};

mod common;

use common::{Run, os, worker};

/// A generated XP machine, a packed store and a fresh Windows 7 root beside it.
struct Machine {
    dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    target: PathBuf,
    key: PathBuf,
}

impl Machine {
    fn new(seed: u64, users: u32, files: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("xp");
        let opts = fleetmig_state::GenOptions {
            seed,
            users,
            files_per_user: files,
            hostname: Some("PC-07".into()),
        };
        fleetmig_state::generate_machine(&root, &opts).unwrap();
        let target = dir.path().join("win7");
        fs::create_dir(&target).unwrap();
        Self {
            store: dir.path().join("store"),
            key: dir.path().join("fleet.key"),
            root,
            target,
            dir,
        }
    }

    fn scan(&self, extra: &[&str]) -> Run {
        let mut args = os(&[
            &"scan",
            &"--machine-root",
            &self.root,
            &"--store",
            &self.store,
            &"--packed",
            &"--key-file",
            &self.key,
            &"--json",
        ]);
        args.extend(extra.iter().map(OsString::from));
        worker(args)
    }

    fn load(&self, extra: &[&str]) -> Run {
        let mut args = os(&[
            &"load",
            &"--store",
            &self.store,
            &"--key-file",
            &self.key,
            &"--target-root",
            &self.target,
            &"--json",
        ]);
        args.extend(extra.iter().map(OsString::from));
        worker(args)
    }

    /// The keys of the store (after a scan).
    fn keys(&self) -> Keys {
        let fleet = fleetmig_format::keys::load_key_bytes(&self.key).unwrap();
        let info = DirStore::open(&self.store).unwrap().info();
        Keys {
            fleet: FleetKey::from_bytes(fleet),
            migration: offline_migration_key(&fleet, &info.migration_id),
        }
    }

    fn manifest(&self) -> PackedManifest {
        let store = DirStore::open(&self.store).unwrap();
        packed::fetch_manifest(&store, &self.keys().migration)
            .unwrap()
            .0
    }

    fn outside(&self) -> PathBuf {
        let outside = self.dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        outside
    }
}

fn assert_restored_like_a_refresh(
    expected_root_files: &BTreeMap<String, fingerprint::FileFingerprint>,
    target: &Path,
) {
    let report = fingerprint::compare(expected_root_files, target).unwrap();
    assert!(
        report.is_ok(),
        "missing {:?} different {:?}",
        report.missing,
        report.different
    );
    assert_eq!(report.matched as usize, expected_root_files.len());
}

#[test]
fn scan_and_load_restore_the_refresh_layout() {
    let machine = Machine::new(7, 3, 150);
    let expected = fingerprint::expected_after_refresh(&machine.root).unwrap();
    let symlinks = fingerprint::expected_symlinks(&machine.root).unwrap();

    let scan = machine.scan(&["--create-key"]).expect(0).json();
    assert_eq!(scan["status"], "success");
    assert_eq!(scan["store_kind"], "packed");
    assert_eq!(scan["key_created"], true);
    assert_eq!(scan["files"].as_u64().unwrap() as usize, expected.len());
    assert_eq!(scan["users"], serde_json::json!(["alice", "bob", "carol"]));
    assert_eq!(scan["manifest_digest"].as_str().unwrap().len(), 64);
    assert_eq!(fs::metadata(&machine.key).unwrap().mode() & 0o777, 0o600);

    // The same options give the hard-link capture's counts.
    let hard = worker(os(&[
        &"scan",
        &"--machine-root",
        &machine.root,
        &"--store",
        &machine.dir.path().join("hard"),
        &"--hardlink",
        &"--json",
    ]))
    .expect(0)
    .json();
    for field in [
        "files",
        "bytes",
        "dirs",
        "symlinks",
        "excluded_files",
        "users",
    ] {
        assert_eq!(scan[field], hard[field], "{field}");
    }

    let load = machine.load(&[]).expect(0).json();
    assert_eq!(load["store_kind"], "packed");
    assert_eq!(
        load["files_written"].as_u64().unwrap() as usize,
        expected.len()
    );
    assert_eq!(
        load["files_checked"].as_u64().unwrap() as usize,
        expected.len()
    );
    assert!(load["mismatches"].as_array().unwrap().is_empty());
    assert_restored_like_a_refresh(&expected, &machine.target);
    for (target, link) in &symlinks {
        let path = machine.target.join(target);
        if link.escapes {
            assert!(fs::symlink_metadata(&path).is_err(), "{target} recreated");
        } else {
            assert_eq!(
                fs::read_link(&path).unwrap(),
                Path::new(&link.text),
                "{target}"
            );
        }
    }
    assert!(
        !machine.target.join("_fleetmig").exists(),
        "the restore journal is removed after a verified load"
    );

    // Loading again finds everything in place and writes nothing.
    let again = machine.load(&[]).expect(0).json();
    assert_eq!(again["files_written"], 0);
    assert_eq!(
        again["files_already_present"].as_u64().unwrap() as usize,
        expected.len()
    );
}

#[test]
fn an_unchanged_rescan_reads_nothing_and_a_changed_file_is_read_again() {
    let machine = Machine::new(8, 2, 120);
    let first = machine.scan(&["--create-key"]).expect(0).json();
    let files = first["files"].as_u64().unwrap();
    assert_eq!(first["files_read"], files);
    assert_eq!(first["cache_hits"], 0);

    let again = machine.scan(&["--overwrite"]).expect(0).json();
    assert_eq!(again["files_read"], 0, "no file content read again");
    assert_eq!(again["cache_hits"], files);
    assert_eq!(
        again["chunks_written"], 0,
        "nothing sealed or written again"
    );
    assert_eq!(again["files"], files);

    let changed = machine
        .root
        .join("Documents and Settings/alice/My Documents/changed after the first scan.txt");
    fs::write(&changed, b"new content").unwrap();
    let third = machine.scan(&["--overwrite"]).expect(0).json();
    assert_eq!(third["files_read"], 1);
    assert_eq!(third["chunks_written"], 1);
    assert_eq!(third["cache_hits"], files);

    // The store restores the latest capture.
    let expected = fingerprint::expected_after_refresh(&machine.root).unwrap();
    machine.load(&[]).expect(0);
    assert_restored_like_a_refresh(&expected, &machine.target);

    // --no-cache reads everything; another fleet key never trusts the cache.
    let fresh = machine
        .scan(&["--overwrite", "--no-cache"])
        .expect(0)
        .json();
    assert_eq!(fresh["files_read"], files + 1);
    let other_key = machine.dir.path().join("other.key");
    let other = worker(os(&[
        &"scan",
        &"--machine-root",
        &machine.root,
        &"--store",
        &machine.dir.path().join("other-store"),
        &"--packed",
        &"--key-file",
        &other_key,
        &"--create-key",
        &"--json",
    ]))
    .expect(0)
    .json();
    assert_eq!(other["cache_hits"], 0);
}

#[test]
fn the_library_capture_reports_cache_hits_and_rereads_what_the_store_lost() {
    let machine = Machine::new(9, 1, 60);
    let dir = machine.dir.path();
    let keys = Keys {
        fleet: FleetKey::from_bytes([5; 32]),
        migration: fleetmig_format::MigrationKey::from_bytes([6; 32]),
    };
    let options = packed::CaptureOptions {
        capture: fleetmig_state::CaptureOptions::new("m-1"),
        cache: Some(dir.join("cache.bin")),
        ..packed::CaptureOptions::default()
    };
    let store = DirStore::create(&dir.join("s"), "m-1", "PC-07", false).unwrap();
    let first = packed::capture(&machine.root, &store, &keys, &options, &NoProgress).unwrap();
    assert_eq!(first.stats.files_read, first.files);
    assert_eq!(first.stats.chunks_sealed, first.chunks);
    let second = packed::capture(&machine.root, &store, &keys, &options, &NoProgress).unwrap();
    assert_eq!(second.stats.cache_hits, first.files);
    assert_eq!((second.stats.files_read, second.stats.bytes_read), (0, 0));
    assert_eq!(second.stats.chunks_sealed, 0);

    // Into a new, empty store the cached chunk ids are missing: those files are read again.
    let empty = DirStore::create(&dir.join("s2"), "m-1", "PC-07", false).unwrap();
    let third = packed::capture(&machine.root, &empty, &keys, &options, &NoProgress).unwrap();
    assert_eq!(third.stats.files_read, first.files);
    assert_eq!(empty.chunk_files().unwrap(), first.chunks);
}

#[test]
fn two_machines_share_their_common_chunks() {
    let machine = Machine::new(10, 2, 80);
    // A second machine: the same files (another copy), plus one of its own.
    let other_root = machine.dir.path().join("xp-2");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&machine.root)
        .arg(&other_root)
        .status()
        .unwrap();
    assert!(copied.success());
    fs::write(
        other_root.join("Documents and Settings/bob/My Documents/only on the second machine.txt"),
        b"unique to PC-08",
    )
    .unwrap();

    let first = machine.scan(&["--create-key"]).expect(0).json();
    let first_chunks = first["chunks"].as_u64().unwrap();
    assert_eq!(first["chunks_written"], first_chunks);
    let second = worker(os(&[
        &"scan",
        &"--machine-root",
        &other_root,
        &"--store",
        &machine.store,
        &"--packed",
        &"--key-file",
        &machine.key,
        &"--overwrite",
        &"--json",
    ]))
    .expect(0)
    .json();
    assert_eq!(second["chunks"].as_u64().unwrap(), first_chunks + 1);
    assert_eq!(
        second["chunks_written"], 1,
        "only the new file's chunk is stored"
    );
    let store = DirStore::open(&machine.store).unwrap();
    assert_eq!(store.chunk_files().unwrap(), first_chunks + 1);
}

/// Seals a manifest without validating it, with the format's layout (docs/format.md), to
/// stand in for a hostile store.
fn seal_hostile(migration_key_bytes: &[u8; 32], manifest: &serde_json::Value) -> Vec<u8> {
    use chacha20poly1305::aead::{AeadInOut, KeyInit};
    use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
    let json = serde_json::to_vec(manifest).unwrap();
    let mut body = zstd::bulk::compress(&json, 3).unwrap();
    let nonce = [7u8; 24];
    let mut bytes = b"FMMF".to_vec();
    bytes.extend_from_slice(&[1, 0, 0, 0]);
    bytes.extend_from_slice(&nonce);
    let seal_key = blake3::derive_key(
        fleetmig_format::keys::CONTEXT_MANIFEST_SEAL,
        migration_key_bytes,
    );
    XChaCha20Poly1305::new(&Key::from(seal_key))
        .encrypt_in_place(&XNonce::from(nonce), &bytes, &mut body)
        .unwrap();
    bytes.extend_from_slice(&body);
    bytes
}

/// Replaces the store's manifest with `manifest`, sealed under the store's migration key.
fn plant_manifest(machine: &Machine, manifest: &serde_json::Value) {
    let fleet = fleetmig_format::keys::load_key_bytes(&machine.key).unwrap();
    let info_path = machine.store.join("store.json");
    let mut info: serde_json::Value =
        serde_json::from_slice(&fs::read(&info_path).unwrap()).unwrap();
    let id = info["migration_id"].as_str().unwrap().to_owned();
    let mut material = fleet.to_vec();
    material.extend_from_slice(id.as_bytes());
    let key = blake3::derive_key(packed::dir_store::OFFLINE_MIGRATION_KEY_CONTEXT, &material);
    let sealed = seal_hostile(&key, manifest);
    info["manifest_digest"] = blake3::hash(&sealed).to_hex().to_string().into();
    fs::write(machine.store.join("manifest.fmmf"), &sealed).unwrap();
    fs::write(&info_path, serde_json::to_vec(&info).unwrap()).unwrap();
}

#[test]
fn hostile_manifests_are_refused_before_anything_is_written() {
    let machine = Machine::new(11, 1, 20);
    machine.scan(&["--create-key"]).expect(0);
    let genuine = machine.manifest();
    let file = genuine
        .entries
        .iter()
        .find(|entry| entry.kind == EntryKind::File && entry.size > 0)
        .unwrap()
        .clone();
    let outside = machine.outside();
    for hostile_target in [
        "Users/alice/../../../outside/evil.txt".to_owned(),
        format!("{}/evil.txt", outside.display()),
        "C:/Windows/evil.txt".to_owned(),
        "\\\\server\\share\\evil.txt".to_owned(),
    ] {
        let mut manifest = serde_json::to_value(&genuine).unwrap();
        let mut evil = serde_json::to_value(&file).unwrap();
        evil["target"] = hostile_target.clone().into();
        evil["source"] = "Documents and Settings/alice/evil.txt".into();
        manifest["entries"].as_array_mut().unwrap().push(evil);
        plant_manifest(&machine, &manifest);

        let run = machine.load(&[]);
        let failed = run.expect(13).json();
        assert_eq!(failed["status"], "store_invalid", "{hostile_target}");
        assert!(
            failed["error"].as_str().unwrap().contains("manifest entry"),
            "{hostile_target}: {}",
            failed["error"]
        );
        assert!(
            fs::read_dir(&machine.target).unwrap().next().is_none(),
            "{hostile_target}: nothing may be written"
        );
        assert!(fs::read_dir(&outside).unwrap().next().is_none());
    }
}

#[test]
fn a_symlink_where_a_directory_is_expected_is_never_written_through() {
    let machine = Machine::new(12, 1, 20);
    machine.scan(&["--create-key"]).expect(0);
    let outside = machine.outside();
    fs::create_dir_all(machine.target.join("Users")).unwrap();
    std::os::unix::fs::symlink(&outside, machine.target.join("Users/alice")).unwrap();

    let failed = machine.load(&[]).expect(13).json();
    assert!(
        failed["error"].as_str().unwrap().contains("symlink"),
        "{}",
        failed["error"]
    );
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written through the symlink"
    );

    // Deeper too: a symlinked Documents folder inside a real profile.
    fs::remove_file(machine.target.join("Users/alice")).unwrap();
    fs::create_dir_all(machine.target.join("Users/alice")).unwrap();
    std::os::unix::fs::symlink(&outside, machine.target.join("Users/alice/Documents")).unwrap();
    machine.load(&[]).expect(13);
    assert!(fs::read_dir(&outside).unwrap().next().is_none());
}

#[test]
fn a_flipped_byte_in_a_chunk_fails_the_load_naming_file_and_chunk() {
    let machine = Machine::new(13, 1, 30);
    machine.scan(&["--create-key"]).expect(0);
    let manifest = machine.manifest();
    let mut uses: HashMap<ChunkId, usize> = HashMap::new();
    for entry in &manifest.entries {
        for id in &entry.chunks {
            *uses.entry(*id).or_default() += 1;
        }
    }
    let victim = manifest
        .entries
        .iter()
        .find(|entry| entry.chunks.len() == 1 && uses[&entry.chunks[0]] == 1)
        .unwrap();
    let id = victim.chunks[0];
    let store = DirStore::open(&machine.store).unwrap();
    let path = store.chunk_path(&id);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&path, bytes).unwrap();

    let failed = machine.load(&[]).expect(13).json();
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains(&victim.target), "{error}");
    assert!(error.contains(&id.to_hex()), "{error}");
    let victim_path = machine.target.join(&victim.target);
    assert!(
        !victim_path.exists(),
        "a corrupt file is never put in place"
    );
}

#[test]
fn a_different_file_at_a_target_is_kept_and_the_restored_one_renamed() {
    let machine = Machine::new(14, 1, 30);
    machine.scan(&["--create-key"]).expect(0);
    let manifest = machine.manifest();
    let entry = manifest
        .entries
        .iter()
        .find(|entry| entry.kind == EntryKind::File && entry.target.ends_with(".doc"))
        .unwrap();
    let existing = machine.target.join(&entry.target);
    fs::create_dir_all(existing.parent().unwrap()).unwrap();
    fs::write(&existing, b"the new machine's own file").unwrap();

    let load = machine.load(&[]).expect(0).json();
    let renamed = load["renamed"].as_array().unwrap();
    assert_eq!(renamed.len(), 1);
    assert_eq!(renamed[0]["target"], entry.target.as_str());
    let actual = renamed[0]["actual"].as_str().unwrap();
    assert!(actual.ends_with("(1).doc"), "{actual}");
    assert_eq!(fs::read(&existing).unwrap(), b"the new machine's own file");
    let restored = fingerprint::fingerprint_file(&machine.target.join(actual)).unwrap();
    assert_eq!(restored.blake3_hex, entry.content_hash);
    // Again: found in place under its collision name.
    let again = machine.load(&[]).expect(0).json();
    assert_eq!(again["files_written"], 0);
    assert_eq!(again["renamed"].as_array().unwrap().len(), 1);
}

/// A store that stops serving chunks after a number of them (a node going away mid-restore).
struct FailingAfter<'a> {
    inner: &'a DirStore,
    left: AtomicUsize,
}

impl ChunkStore for FailingAfter<'_> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn missing(&self, ids: &[ChunkId]) -> fleetmig_worker::Result<Vec<u32>> {
        self.inner.missing(ids)
    }
    fn upload(&self) -> fleetmig_worker::Result<Box<dyn ChunkUpload + '_>> {
        self.inner.upload()
    }
    fn commit(&self, commit: &Commit) -> fleetmig_worker::Result<()> {
        self.inner.commit(commit)
    }
    fn manifest(&self) -> fleetmig_worker::Result<Bytes> {
        self.inner.manifest()
    }
    fn fetch(
        &self,
        ids: &[ChunkId],
        sink: &mut dyn FnMut(ChunkId, Bytes) -> fleetmig_worker::Result<()>,
    ) -> fleetmig_worker::Result<()> {
        let granted = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                Some(left.saturating_sub(ids.len()))
            })
            .unwrap();
        if granted < ids.len() {
            return Err(fleetmig_worker::Error::NodeUnavailable {
                node: "test".into(),
                message: "connection reset".into(),
            });
        }
        self.inner.fetch(ids, sink)
    }
    fn release(&self) -> fleetmig_worker::Result<()> {
        Ok(())
    }
}

#[test]
fn an_interrupted_restore_resumes_without_rewriting_finished_files() {
    let machine = Machine::new(15, 2, 200);
    machine.scan(&["--create-key"]).expect(0);
    let expected = fingerprint::expected_after_refresh(&machine.root).unwrap();
    let keys = machine.keys();
    let store = DirStore::open(&machine.store).unwrap();
    let (manifest, _) = packed::fetch_manifest(&store, &keys.migration).unwrap();
    let options = RestoreOptions {
        journal: Some(machine.dir.path().join("restore-journal.json")),
        batch_bytes: 64 * 1024, // many small batches, so the failure lands half-way
        ..RestoreOptions::default()
    };
    let chunks = manifest.chunk_ids().len();
    let failing = FailingAfter {
        inner: &store,
        left: AtomicUsize::new(chunks / 2),
    };
    let error = packed::restore(
        &failing,
        &machine.target,
        &keys.fleet,
        &manifest,
        &options,
        &NoProgress,
    )
    .unwrap_err();
    assert!(error.is_retryable(), "{error}");

    // What the interrupted run finished, by inode.
    let finished: HashMap<String, u64> = expected
        .keys()
        .filter_map(|target| {
            let meta = fs::symlink_metadata(machine.target.join(target)).ok()?;
            Some((target.clone(), meta.ino()))
        })
        .collect();
    assert!(
        !finished.is_empty() && finished.len() < expected.len(),
        "{} of {}",
        finished.len(),
        expected.len()
    );

    let report = packed::restore(
        &store,
        &machine.target,
        &keys.fleet,
        &manifest,
        &options,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(report.files_already_present as usize, finished.len());
    assert_eq!(
        (report.files_written + report.files_already_present) as usize,
        expected.len()
    );
    assert!(report.renamed.is_empty(), "{:?}", report.renamed);
    for (target, inode) in &finished {
        let now = fs::symlink_metadata(machine.target.join(target))
            .unwrap()
            .ino();
        assert_eq!(*inode, now, "{target} was written again");
    }
    assert_restored_like_a_refresh(&expected, &machine.target);
    let verified = packed::verify(&machine.target, &manifest, &NoProgress).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.mismatches);
    // No temporary file is left behind.
    let leftovers: Vec<_> = walk_files(&machine.target)
        .into_iter()
        .filter(|path| path.to_string_lossy().contains(".fleetmig-partial-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn verify_names_changed_files() {
    let machine = Machine::new(16, 1, 30);
    machine.scan(&["--create-key"]).expect(0);
    machine.load(&[]).expect(0);
    let manifest = machine.manifest();
    let entry = manifest
        .entries
        .iter()
        .find(|entry| entry.kind == EntryKind::File && entry.size > 10)
        .unwrap();
    let path = machine.target.join(&entry.target);
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1;
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let report = packed::verify(&machine.target, &manifest, &NoProgress).unwrap();
    assert_eq!(report.mismatches.len(), 1, "{:?}", report.mismatches);
    assert!(
        report.mismatches[0].starts_with(&entry.target),
        "{:?}",
        report.mismatches
    );
    assert!(report.mismatches[0].contains("content differs"));
}

#[test]
fn keys_and_flags_errors_have_their_codes() {
    let machine = Machine::new(17, 1, 10);
    // Exactly one of --hardlink and --packed.
    let both = worker(os(&[
        &"scan",
        &"--machine-root",
        &machine.root,
        &"--store",
        &machine.store,
        &"--packed",
        &"--hardlink",
        &"--key-file",
        &machine.key,
    ]));
    both.expect(11);
    assert!(both.stderr.contains("--hardlink"), "{}", both.stderr);
    // A missing key file is refused without --create-key, naming the file.
    let missing = machine.scan(&[]).expect(11).json();
    let error = missing["error"].as_str().unwrap();
    assert!(
        error.contains("fleet.key") && error.contains("--create-key"),
        "{error}"
    );
    assert!(!machine.store.exists());
    // --packed without --key-file.
    worker(os(&[
        &"scan",
        &"--machine-root",
        &machine.root,
        &"--store",
        &machine.store,
        &"--packed",
    ]))
    .expect(11);
    // A malformed key file names the file.
    fs::write(&machine.key, "not a key").unwrap();
    let bad = machine.scan(&[]).expect(11).json();
    assert!(bad["error"].as_str().unwrap().contains("fleet.key"));
    fs::remove_file(&machine.key).unwrap();

    machine.scan(&["--create-key"]).expect(0);
    // A second scan into the store needs --overwrite.
    assert_eq!(
        machine.scan(&[]).expect(12).json()["status"],
        "store_exists"
    );
    // Loading with another fleet key: wrong key.
    let other = machine.dir.path().join("other.key");
    fleetmig_format::keys::write_key_file(&other, &[9; 32]).unwrap();
    let wrong = worker(os(&[
        &"load",
        &"--store",
        &machine.store,
        &"--key-file",
        &other,
        &"--machine-root",
        &machine.target,
        &"--json",
    ]));
    assert_eq!(wrong.expect(14).json()["status"], "wrong_key");
    // Loading a packed store without a key.
    worker(os(&[
        &"load",
        &"--store",
        &machine.store,
        &"--machine-root",
        &machine.target,
    ]))
    .expect(11);
    // A capture that never committed cannot be loaded.
    let info_path = machine.store.join("store.json");
    let info = fs::read_to_string(&info_path).unwrap();
    fs::write(&info_path, info.replace("\"committed\"", "\"capturing\"")).unwrap();
    let uncommitted = machine.load(&[]).expect(13).json();
    assert!(
        uncommitted["error"]
            .as_str()
            .unwrap()
            .contains("never completed")
    );
}

#[test]
fn large_files_stream_through_capture_and_restore() {
    let machine = Machine::new(18, 1, 20);
    let docs = machine
        .root
        .join("Documents and Settings/alice/My Documents");
    // 20 MiB streamed (above the whole-file read limit), 3 MiB read at once: both multi-chunk.
    let mut big = fleetmig_format::chunker::pseudo_random_bytes(1, 12 * 1024 * 1024);
    big.extend(b"Quarterly figures, region north, all in order. ".repeat(180_000));
    fs::write(docs.join("Outlook.pst"), &big).unwrap();
    let medium = fleetmig_format::chunker::pseudo_random_bytes(2, 3 * 1024 * 1024);
    fs::write(docs.join("scan.pdf"), &medium).unwrap();
    // The same content twice: its chunks are stored once.
    fs::write(docs.join("Outlook backup.pst"), &big).unwrap();
    let expected = fingerprint::expected_after_refresh(&machine.root).unwrap();

    let dir = machine.dir.path();
    let keys = Keys {
        fleet: FleetKey::from_bytes([3; 32]),
        migration: fleetmig_format::MigrationKey::from_bytes([4; 32]),
    };
    let store = DirStore::create(&dir.join("s"), "m", "PC-07", false).unwrap();
    let options = packed::CaptureOptions {
        capture: fleetmig_state::CaptureOptions::new("m"),
        pipeline: packed::PipelineConfig {
            plaintext_budget: 8 * 1024 * 1024, // tighter than one large file
            ..packed::PipelineConfig::default()
        },
        ..packed::CaptureOptions::default()
    };
    let report = packed::capture(&machine.root, &store, &keys, &options, &NoProgress).unwrap();
    let (manifest, _) = packed::fetch_manifest(&store, &keys.migration).unwrap();
    let pst = manifest
        .entries
        .iter()
        .find(|entry| entry.target.ends_with("Documents/Outlook.pst"))
        .unwrap();
    assert!(pst.chunks.len() >= 5, "{} chunks", pst.chunks.len());
    assert_eq!(store.chunk_files().unwrap(), report.chunks);
    // The backup copy's chunks were sealed once, with the original's.
    assert_eq!(report.stats.chunks_sealed, report.chunks);

    let options = RestoreOptions {
        batch_bytes: 1024 * 1024, // the large files span many fetch batches
        ..RestoreOptions::default()
    };
    packed::restore(
        &store,
        &machine.target,
        &keys.fleet,
        &manifest,
        &options,
        &NoProgress,
    )
    .unwrap();
    assert_restored_like_a_refresh(&expected, &machine.target);
    assert!(
        packed::verify(&machine.target, &manifest, &NoProgress)
            .unwrap()
            .is_ok()
    );
}

#[test]
fn skipped_entries_user_map_estimate_and_file_list() {
    let machine = Machine::new(19, 2, 40);
    let docs = machine
        .root
        .join("Documents and Settings/alice/My Documents");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        docs.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // Linux allows these names; the packed format (Windows-bound) cannot hold them.
    fs::write(docs.join("back\\slash.txt"), b"x").unwrap();
    fs::write(docs.join("C:drive.txt"), b"y").unwrap();

    let estimate = machine
        .scan(&["--estimate", "--create-key"])
        .expect(0)
        .json();
    assert_eq!(estimate["estimate"], true);
    assert!(!machine.store.exists());
    assert!(
        estimate["store_bytes_needed"].as_u64().unwrap() >= estimate["bytes"].as_u64().unwrap()
    );

    let list = machine.dir.path().join("captured.txt");
    let scan = machine
        .scan(&["--create-key", "--list-files", list.to_str().unwrap()])
        .expect(3)
        .json();
    let skipped: Vec<String> = scan["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            format!(
                "{}: {}",
                item["path"].as_str().unwrap(),
                item["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|line| line.contains("My Documents/pipe: not a regular file"))
    );
    assert!(skipped.iter().any(|line| line.contains("backslash")));
    assert!(skipped.iter().any(|line| line.contains("drive letter")));
    let listed = fs::read_to_string(&list).unwrap();
    assert_eq!(
        listed.lines().count() as u64,
        scan["files"].as_u64().unwrap() + scan["symlinks"].as_u64().unwrap()
    );

    let loaded = machine
        .load(&["--user-map", "alice=asmith"])
        .expect(0)
        .json();
    assert_eq!(loaded["users"], serde_json::json!(["asmith", "bob"]));
    assert!(machine.target.join("Users/asmith/Documents").is_dir());
    assert!(!machine.target.join("Users/alice").exists());
    machine.load(&["--user-map", "dave=d"]).expect(11);
}

impl Machine {
    /// `fleetmig-worker store VERB STORE [extra...] --json`.
    fn store_verb(&self, verb: &str, extra: &[&dyn AsRef<OsStr>]) -> Run {
        let mut args = os(&[&"store", &verb, &self.store, &"--json"]);
        args.extend(extra.iter().map(|part| part.as_ref().to_os_string()));
        worker(args)
    }

    /// A key file with another fleet key.
    fn other_key(&self) -> PathBuf {
        let other = self.dir.path().join("other.key");
        if !other.exists() {
            fleetmig_format::keys::write_key_file(&other, &[9; 32]).unwrap();
        }
        other
    }
}

/// A chunk used by exactly one file of the manifest, and that file.
fn chunk_of_one_file(manifest: &PackedManifest) -> (ChunkId, String) {
    let mut uses: HashMap<ChunkId, usize> = HashMap::new();
    for entry in &manifest.entries {
        for id in &entry.chunks {
            *uses.entry(*id).or_default() += 1;
        }
    }
    let entry = manifest
        .entries
        .iter()
        .find(|entry| entry.chunks.len() == 1 && uses[&entry.chunks[0]] == 1)
        .unwrap();
    (entry.chunks[0], entry.target.clone())
}

#[test]
fn store_ls_shows_the_store_without_the_key_and_its_entries_with_it() {
    let machine = Machine::new(20, 2, 40);
    let scan = machine.scan(&["--create-key"]).expect(0).json();
    let chunks = scan["chunks"].as_u64().unwrap();

    // Without the key: what store.json and the chunk files say, and that the key is needed.
    let bare = machine.store_verb("ls", &[]).expect(0).json();
    assert_eq!(bare["status"], "success");
    assert_eq!(bare["store_kind"], "packed");
    assert_eq!(bare["state"], "committed");
    assert_eq!(bare["format_version"], 1);
    assert_eq!(bare["migration_id"], scan["migration_id"]);
    assert_eq!(bare["hostname"], "PC-07");
    assert_eq!(bare["manifest_digest"], scan["manifest_digest"]);
    assert_eq!(bare["chunks"], chunks);
    assert_eq!(bare["chunk_files"], chunks);
    assert_eq!(bare["logical_bytes"], scan["bytes"]);
    assert!(bare["sealed_bytes"].as_u64().unwrap() > 0);
    assert!(bare["manifest_bytes"].as_u64().unwrap() > 0);
    assert!(bare.get("entries").is_none(), "{bare}");
    assert!(bare["note"].as_str().unwrap().contains("--key-file"));
    let text = worker(os(&[&"store", &"ls", &machine.store]));
    text.expect(0);
    assert!(text.stdout.contains("packed store"), "{}", text.stdout);
    assert!(text.stdout.contains("--key-file"), "{}", text.stdout);

    // With the key: every manifest entry, like a hard-link store's listing.
    let manifest = machine.manifest();
    let listing = machine
        .store_verb("ls", &[&"--key-file", &machine.key])
        .expect(0)
        .json();
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries.len(), manifest.entries.len());
    assert_eq!(listing["users"], serde_json::json!(["alice", "bob"]));
    assert!(listing.get("note").is_none());
    let file = manifest
        .entries
        .iter()
        .find(|entry| entry.kind == EntryKind::File && !entry.chunks.is_empty())
        .unwrap();
    let listed = entries
        .iter()
        .find(|entry| entry["target"] == file.target.as_str())
        .unwrap();
    assert_eq!(listed["kind"], "file");
    assert_eq!(listed["size"], file.size);
    assert_eq!(listed["source"], file.source.as_str());
    assert_eq!(listed["chunks"], file.chunks.len());
    assert!(listed["mtime"].as_str().unwrap().ends_with('Z'));
    let text = worker(os(&[
        &"store",
        &"ls",
        &machine.store,
        &"--key-file",
        &machine.key,
    ]));
    text.expect(0);
    assert!(
        text.stdout.contains(&format!(" -> {}", file.target)),
        "{}",
        text.stdout
    );

    // Another key does not open the manifest.
    let other = machine.other_key();
    let wrong = machine.store_verb("ls", &[&"--key-file", &other]);
    assert_eq!(wrong.expect(14).json()["status"], "wrong_key");

    // A capture that never committed: shown, but invalid.
    let info_path = machine.store.join("store.json");
    let info = fs::read_to_string(&info_path).unwrap();
    fs::write(&info_path, info.replace("\"committed\"", "\"capturing\"")).unwrap();
    let uncommitted = machine.store_verb("ls", &[]).expect(13).json();
    assert_eq!(uncommitted["state"], "capturing");
    assert_eq!(uncommitted["status"], "store_invalid");
    assert!(
        uncommitted["note"]
            .as_str()
            .unwrap()
            .contains("never completed")
    );
}

#[test]
fn store_verify_checks_every_chunk_and_names_bad_ones_with_their_files() {
    let machine = Machine::new(21, 2, 40);
    let scan = machine.scan(&["--create-key"]).expect(0).json();
    let chunks = scan["chunks"].as_u64().unwrap();

    let good = machine
        .store_verb("verify", &[&"--key-file", &machine.key])
        .expect(0)
        .json();
    assert_eq!(good["status"], "success");
    assert_eq!(good["store_kind"], "packed");
    assert_eq!(good["chunk_files"], chunks);
    assert_eq!(good["chunks_referenced"], chunks);
    assert_eq!(good["unreferenced_chunks"], 0);
    assert_eq!(good["files"], scan["files"]);
    assert!(good["bad_chunks"].as_array().unwrap().is_empty());
    assert!(good["mismatches"].as_array().unwrap().is_empty());

    // The key is needed (bad arguments), and it must be the right one (wrong key).
    let keyless = machine.store_verb("verify", &[]).expect(11).json();
    assert!(
        keyless["error"].as_str().unwrap().contains("--key-file"),
        "{keyless}"
    );
    let other = machine.other_key();
    let wrong = machine
        .store_verb("verify", &[&"--key-file", &other])
        .expect(14)
        .json();
    assert_eq!(wrong["status"], "wrong_key");

    // A flipped byte in one chunk: invalid, naming the chunk and the file that uses it.
    let manifest = machine.manifest();
    let (flipped, victim) = chunk_of_one_file(&manifest);
    let store = DirStore::open(&machine.store).unwrap();
    let path = store.chunk_path(&flipped);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&path, bytes).unwrap();
    let failed = machine
        .store_verb("verify", &[&"--key-file", &machine.key])
        .expect(13)
        .json();
    assert_eq!(failed["status"], "store_invalid");
    let bad = failed["bad_chunks"].as_array().unwrap();
    assert_eq!(bad.len(), 1, "{failed}");
    assert_eq!(bad[0]["chunk"], flipped.to_hex().as_str());
    assert!(
        bad[0]["problem"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{failed}"
    );
    assert_eq!(bad[0]["files"], serde_json::json!([victim.as_str()]));
    let line = failed["mismatches"][0].as_str().unwrap();
    assert!(
        line.contains(&flipped.to_hex()) && line.contains(&victim),
        "{line}"
    );
    let text = worker(os(&[
        &"store",
        &"verify",
        &machine.store,
        &"--key-file",
        &machine.key,
    ]));
    text.expect(13);
    assert!(text.stdout.contains("INVALID"), "{}", text.stdout);
    assert!(text.stdout.contains(&flipped.to_hex()), "{}", text.stdout);

    // A referenced chunk that is gone is named too.
    let gone = manifest
        .chunk_ids()
        .into_iter()
        .find(|id| *id != flipped)
        .unwrap();
    fs::remove_file(store.chunk_path(&gone)).unwrap();
    let failed = machine
        .store_verb("verify", &[&"--key-file", &machine.key])
        .expect(13)
        .json();
    let bad = failed["bad_chunks"].as_array().unwrap();
    assert_eq!(bad.len(), 2, "{failed}");
    let missing = bad
        .iter()
        .find(|bad| bad["chunk"] == gone.to_hex().as_str())
        .unwrap();
    assert_eq!(missing["problem"], "missing");
    assert!(!missing["files"].as_array().unwrap().is_empty());
}

#[test]
fn store_delete_removes_a_packed_store_and_nothing_else() {
    let machine = Machine::new(22, 1, 30);
    let scan = machine.scan(&["--create-key"]).expect(0).json();
    let originals = fingerprint::expected_after_refresh(&machine.root).unwrap();

    // A symlink to the store is never followed: bad arguments, the store intact.
    let link = machine.dir.path().join("link-to-store");
    std::os::unix::fs::symlink(&machine.store, &link).unwrap();
    worker(os(&[&"store", &"delete", &link, &"--json"])).expect(11);
    assert!(machine.store.join("store.json").is_file());
    let chunks = scan["chunks"].as_u64().unwrap();

    let deleted = machine.store_verb("delete", &[]).expect(0).json();
    assert_eq!(deleted["status"], "success");
    assert_eq!(deleted["store_kind"], "packed");
    assert_eq!(deleted["state"], "committed");
    assert_eq!(deleted["chunks_removed"], chunks);
    assert!(deleted["bytes_removed"].as_u64().unwrap() > 0);
    assert_eq!(deleted["removed_dir"], true);
    assert!(!machine.store.exists());
    assert!(machine.key.exists(), "the key file is not the store's");
    // The captured machine is untouched.
    assert_eq!(
        fingerprint::expected_after_refresh(&machine.root).unwrap(),
        originals
    );
    // Gone: a missing store is a bad argument.
    machine.store_verb("delete", &[]).expect(11);

    // A file the store did not make is kept, and with it the directory.
    machine.scan(&[]).expect(0);
    fs::write(machine.store.join("notes.txt"), b"not the store's").unwrap();
    let kept = machine.store_verb("delete", &[]).expect(0).json();
    assert_eq!(kept["removed_dir"], false);
    assert_eq!(kept["kept"], serde_json::json!(["notes.txt"]));
    assert_eq!(
        fs::read(machine.store.join("notes.txt")).unwrap(),
        b"not the store's"
    );
    assert!(!machine.store.join("store.json").exists());
    assert!(!machine.store.join("chunks").exists());
    // What is left is not a store: refused, untouched.
    machine.store_verb("delete", &[]).expect(13);
    assert!(machine.store.join("notes.txt").exists());

    // A store.json of another kind is not a fleetmig packed store: refused, untouched.
    fs::write(machine.store.join("store.json"), br#"{"kind":"photos"}"#).unwrap();
    let refused = machine.store_verb("delete", &[]).expect(13).json();
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("not a fleetmig packed store"),
        "{refused}"
    );
    assert!(machine.store.join("store.json").exists());
    // `load` reports it as such too, not as a hard-link store without a seal.
    let load = machine.load(&[]).expect(13).json();
    assert!(
        load["error"].as_str().unwrap().contains("store.json"),
        "{load}"
    );
}
