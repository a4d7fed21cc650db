//! The offline verbs (`scan`, `load`, `store`) driven through the real `fleetmig-worker` binary
//! on generated machines in temp directories.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fleetmig_state::fingerprint::{self, FileFingerprint};
use fleetmig_state::manifest::MANIFEST_FILE;

mod common;

use common::{Run, os, worker};

/// A generated XP machine `PC-07` (alice, bob, carol) in a temp dir; the store goes to
/// `<root>/StateStore`, which the simulated reimage keeps.
struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
}

impl Machine {
    fn new(seed: u64, users: u32, files: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pc-07");
        let opts = fleetmig_state::GenOptions {
            seed,
            users,
            files_per_user: files,
            hostname: Some("PC-07".into()),
        };
        fleetmig_state::generate_machine(&root, &opts).unwrap();
        let store = root.join("StateStore");
        Self {
            _dir: dir,
            root,
            store,
        }
    }

    fn profile(&self, user: &str) -> PathBuf {
        self.root.join("Documents and Settings").join(user)
    }

    fn scan(&self, extra: &[&str]) -> Run {
        let mut args = os(&[
            &"scan",
            &"--machine-root",
            &self.root,
            &"--store",
            &self.store,
            &"--hardlink",
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
            &"--machine-root",
            &self.root,
            &"--json",
        ]);
        args.extend(extra.iter().map(OsString::from));
        worker(args)
    }

    fn reimage(&self) {
        fleetmig_state::simulate_reimage(&self.root, &[PathBuf::from("StateStore")]).unwrap();
    }
}

fn users_of(summary: &serde_json::Value) -> Vec<String> {
    summary["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn scan_and_load_round_trip_byte_identical() {
    let machine = Machine::new(7, 3, 150);
    let expected = fingerprint::expected_after_refresh(&machine.root).unwrap();
    let list = machine.root.with_file_name("captured.txt");

    let scan = machine.scan(&["--list-files", list.to_str().unwrap()]);
    let summary = scan.expect(0).json();
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["status"], "success");
    assert_eq!(users_of(&summary), ["alice", "bob", "carol"]);
    assert_eq!(summary["files"].as_u64().unwrap() as usize, expected.len());
    assert!(summary["manifest_digest"].as_str().unwrap().len() == 64);
    // Only the summary is on stdout; progress and logs are on stderr.
    assert!(scan.stdout.trim_start().starts_with('{'));

    let listed = fs::read_to_string(&list).unwrap();
    let listed: Vec<&str> = listed.lines().collect();
    let files_and_links =
        summary["files"].as_u64().unwrap() + summary["symlinks"].as_u64().unwrap();
    assert_eq!(listed.len() as u64, files_and_links);
    let prefix = machine.profile("alice");
    assert!(
        listed
            .iter()
            .any(|line| Path::new(line).starts_with(&prefix))
    );
    assert!(listed.iter().all(|line| fs::symlink_metadata(line).is_ok()));

    machine.reimage();
    let load = machine.load(&[]);
    let loaded = load.expect(0).json();
    assert_eq!(loaded["mismatches"].as_array().unwrap().len(), 0);
    assert_eq!(
        loaded["files_checked"].as_u64().unwrap() as usize,
        expected.len()
    );
    let report = fingerprint::compare(&expected, &machine.root).unwrap();
    assert!(
        report.is_ok(),
        "missing {:?} different {:?}",
        report.missing,
        report.different
    );
    assert_eq!(report.matched as usize, expected.len());

    // A second load finds everything in place.
    let again = machine.load(&[]).expect(0).json();
    assert_eq!(again["files_linked"], 0);
}

#[test]
fn user_selection_age_and_user_map() {
    let machine = Machine::new(11, 3, 60);
    // Generated profiles were last used years ago; carol logged on just now.
    let hive = machine.profile("carol").join("NTUSER.DAT");
    fs::File::options()
        .write(true)
        .open(&hive)
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    let expected = fingerprint::expected_after_refresh(&machine.root).unwrap();

    // Include beats exclude and the age limit: alice is old but included; bob is excluded by
    // pattern; carol is recent and matches nothing.
    let scan = machine.scan(&[
        "--user-exclude",
        "pc-07\\B*",
        "--user-exclude-older-than",
        "30",
        "--user-include",
        "*\\ALICE",
    ]);
    let summary = scan.expect(0).json();
    assert_eq!(users_of(&summary), ["alice", "carol"]);
    let reasons: BTreeMap<String, String> = summary["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["account"].as_str().unwrap().to_owned(),
                p["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons["PC-07\\alice"], "included");
    assert_eq!(reasons["PC-07\\bob"], "excluded");
    assert_eq!(reasons["PC-07\\carol"], "default");

    machine.reimage();
    let loaded = machine
        .load(&["--user-map", "alice=asmith"])
        .expect(0)
        .json();
    assert_eq!(users_of(&loaded), ["asmith", "carol"]);
    assert!(
        !machine.root.join("Users/bob").exists(),
        "excluded user restored"
    );
    assert!(
        !machine.root.join("Users/alice").exists(),
        "mapped user kept its old name"
    );
    // Every included file is byte-identical at its mapped path.
    let mapped: BTreeMap<String, FileFingerprint> = expected
        .into_iter()
        .filter(|(target, _)| !target.starts_with("Users/bob/"))
        .map(
            |(target, print)| match target.strip_prefix("Users/alice/") {
                Some(rest) => (format!("Users/asmith/{rest}"), print),
                None => (target, print),
            },
        )
        .collect();
    assert!(
        mapped
            .keys()
            .any(|target| target.starts_with("Users/asmith/"))
    );
    let report = fingerprint::compare(&mapped, &machine.root).unwrap();
    assert!(
        report.is_ok(),
        "missing {:?} different {:?}",
        report.missing,
        report.different
    );

    // A map naming a user the store does not have is a bad argument.
    machine.load(&["--user-map", "dave=d"]).expect(11);
}

#[test]
fn include_alone_and_age_alone() {
    let machine = Machine::new(12, 3, 20);
    let only = machine
        .scan(&["--user-include", "PC-07\\b?b"])
        .expect(0)
        .json();
    assert_eq!(users_of(&only), ["bob"]);
    // Generated profiles are years old: the age limit alone leaves nobody.
    let aged = machine
        .scan(&["--overwrite", "--user-exclude-older-than", "365"])
        .expect(0)
        .json();
    assert!(users_of(&aged).is_empty());
    let manifest = fleetmig_state::Manifest::load_sealed(&machine.store).unwrap();
    assert!(manifest.entries.is_empty());
}

#[test]
fn estimate_writes_nothing_and_matches_the_scan() {
    let machine = Machine::new(13, 2, 80);
    let list = machine.root.with_file_name("would.txt");
    let estimate = machine
        .scan(&["--estimate", "--list-files", list.to_str().unwrap()])
        .expect(0)
        .json();
    assert_eq!(estimate["estimate"], true);
    assert!(
        !machine.store.exists(),
        "--estimate must not create the store"
    );
    assert!(estimate["store_bytes_needed"].as_u64().unwrap() > 0);
    assert!(estimate["free_bytes"].as_u64().unwrap() > 0);
    let would = fs::read_to_string(&list).unwrap().lines().count() as u64;

    let scan = machine.scan(&[]).expect(0).json();
    for field in [
        "files",
        "bytes",
        "dirs",
        "symlinks",
        "excluded_files",
        "users",
    ] {
        assert_eq!(estimate[field], scan[field], "{field}");
    }
    assert_eq!(
        would,
        scan["files"].as_u64().unwrap() + scan["symlinks"].as_u64().unwrap()
    );
    // The manifest is within the estimate.
    let manifest_len = fs::metadata(machine.store.join(MANIFEST_FILE))
        .unwrap()
        .len();
    assert!(manifest_len <= estimate["store_bytes_needed"].as_u64().unwrap());
}

#[test]
fn bad_arguments_exit_11() {
    let machine = Machine::new(14, 1, 10);
    let no_hardlink = worker(os(&[
        &"scan",
        &"--machine-root",
        &machine.root,
        &"--store",
        &machine.store,
    ]));
    no_hardlink.expect(11);
    assert!(
        no_hardlink.stderr.contains("--hardlink"),
        "{}",
        no_hardlink.stderr
    );
    machine.scan(&["--user-exclude", "a\\b\\c"]).expect(11);
    machine
        .scan(&["--rules", "/nonexistent/MigUser.xml"])
        .expect(11);
    let missing = machine.root.join("nope");
    worker(os(&[
        &"scan",
        &"--machine-root",
        &missing,
        &"--store",
        &machine.store,
        &"--hardlink",
    ]))
    .expect(11);
    worker(["scan", "--no-such-option"]).expect(11);
    worker([
        "load",
        "--store",
        "/s",
        "--machine-root",
        "/m",
        "--user-map",
        "x",
    ])
    .expect(11);
    // A bad-arguments failure with --json still prints a json object.
    let failed = machine.scan(&["--user-exclude", ""]).expect(11).json();
    assert_eq!(failed["status"], "bad_arguments");
    assert!(failed["error"].as_str().unwrap().contains("user pattern"));
    assert!(!machine.store.exists());

    let help = worker(["scan", "--help"]);
    help.expect(0);
    assert!(help.stdout.contains("Exit codes") && help.stdout.contains("12  store already exists"));
}

#[test]
fn existing_store_needs_overwrite() {
    let machine = Machine::new(15, 1, 20);
    machine.scan(&[]).expect(0);
    let again = machine.scan(&[]).expect(12).json();
    assert_eq!(again["status"], "store_exists");
    machine.scan(&["--overwrite"]).expect(0);
}

#[test]
fn skipped_files_exit_3_and_unreadable_names_exit_16() {
    let machine = Machine::new(16, 1, 20);
    let docs = machine.profile("alice").join("My Documents");
    // A FIFO can never be captured: it is skipped and listed, even without --continue-on-error.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        docs.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let scan = machine.scan(&[]).expect(3).json();
    assert_eq!(scan["status"], "skipped");
    let skipped = scan["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("My Documents/pipe")
    );

    // A name that is not UTF-8 fails the scan, unless --continue-on-error skips it.
    fs::write(docs.join(OsStr::from_bytes(b"bad\xffname.doc")), b"x").unwrap();
    let failed = machine.scan(&["--overwrite"]).expect(16).json();
    assert!(failed["error"].as_str().unwrap().contains("utf-8"));
    let scan = machine
        .scan(&["--overwrite", "--continue-on-error"])
        .expect(3)
        .json();
    assert_eq!(scan["skipped"].as_array().unwrap().len(), 2);
    // The skipped files do not fail the load.
    machine.reimage();
    machine.load(&[]).expect(0);
}

#[test]
fn tampered_store_is_invalid_13() {
    let machine = Machine::new(17, 1, 20);
    machine.scan(&[]).expect(0);
    let store = machine.store.as_os_str();
    worker(os(&[&"store", &"verify", &store, &"--json"])).expect(0);
    let manifest = machine.store.join(MANIFEST_FILE);
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replacen("\"size\":", "\"size\":1", 1)).unwrap();
    let verify = worker(os(&[&"store", &"verify", &store, &"--json"]));
    assert_eq!(verify.expect(13).json()["status"], "store_invalid");
    worker(os(&[&"store", &"ls", &store])).expect(13);
    machine.reimage();
    machine.load(&[]).expect(13);
}

#[test]
fn store_verify_finds_changed_files() {
    let machine = Machine::new(18, 1, 20);
    machine.scan(&[]).expect(0);
    // Rewriting a captured file in place changes the shared inode's size and mtime.
    let stored = fleetmig_state::Manifest::load_sealed(&machine.store)
        .unwrap()
        .entries_of(fleetmig_state::EntryKind::File)
        .next()
        .unwrap()
        .clone();
    fs::write(machine.root.join(&stored.source), b"changed after capture").unwrap();
    let verify = worker(os(&[
        &"store",
        &"verify",
        &machine.store,
        &"--machine-root",
        &machine.root,
        &"--json",
    ]));
    let summary = verify.expect(13).json();
    let mismatches = summary["mismatches"].as_array().unwrap();
    assert!(mismatches[0].as_str().unwrap().contains(&stored.store));
}

#[test]
fn store_ls_json_lists_every_entry() {
    let machine = Machine::new(19, 2, 30);
    machine.scan(&[]).expect(0);
    let ls = worker(os(&[&"store", &"ls", &machine.store, &"--json"]));
    let listing = ls.expect(0).json();
    let manifest = fleetmig_state::Manifest::load_sealed(&machine.store).unwrap();
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries.len(), manifest.entries.len());
    assert_eq!(listing["hostname"], "PC-07");
    let file = entries
        .iter()
        .find(|entry| entry["kind"] == "file")
        .unwrap();
    assert!(file["size"].as_u64().is_some());
    assert!(file["mtime"].as_str().unwrap().ends_with('Z'));
    assert!(
        file["source"]
            .as_str()
            .unwrap()
            .starts_with("Documents and Settings/")
    );
    assert!(file["target"].as_str().unwrap().starts_with("Users/"));
    let text = worker(os(&[&"store", &"ls", &machine.store]));
    assert!(text.expect(0).stdout.contains(" -> Users/alice/"));
}

#[test]
fn store_delete_keeps_read_only_originals() {
    let machine = Machine::new(20, 1, 30);
    let docs = machine.profile("alice").join("My Documents");
    let precious = docs.join("read-only.doc");
    fs::write(&precious, b"keep me").unwrap();
    fs::set_permissions(&precious, fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(&docs, fs::Permissions::from_mode(0o555)).unwrap();
    machine.scan(&[]).expect(0);
    assert_eq!(fs::metadata(&precious).unwrap().nlink(), 2);

    let deleted = worker(os(&[&"store", &"delete", &machine.store, &"--json"]));
    let summary = deleted.expect(0).json();
    assert_eq!(summary["removed_dir"], true);
    assert!(!machine.store.exists());
    let meta = fs::metadata(&precious).unwrap();
    assert_eq!(meta.nlink(), 1);
    assert_eq!(meta.mode() & 0o7777, 0o444);
    assert_eq!(fs::read(&precious).unwrap(), b"keep me");
    assert_eq!(fs::metadata(&docs).unwrap().mode() & 0o7777, 0o555);
    let expected = fingerprint::expected_after_refresh(&machine.root).unwrap();
    assert!(expected.len() > 20, "originals are all still there");

    // Not a store: refused; a missing store: bad arguments.
    let home = machine.root.with_file_name("home");
    fs::create_dir_all(home.join("data")).unwrap();
    fs::write(home.join("notes.txt"), b"x").unwrap();
    worker(os(&[&"store", &"delete", &home])).expect(13);
    assert!(home.join("data").is_dir());
    worker(os(&[&"store", &"delete", &machine.store])).expect(11);
    fs::set_permissions(&docs, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn store_verbs_of_a_hard_link_store_ignore_a_key_and_never_delete_through_a_symlink() {
    let machine = Machine::new(21, 1, 20);
    machine.scan(&[]).expect(0);
    let key = machine.root.with_file_name("fleet.key");
    fs::write(&key, "00".repeat(32)).unwrap();
    // A key file changes nothing for a hard-link store (it is ignored with a warning).
    let listing = worker(os(&[
        &"store",
        &"ls",
        &machine.store,
        &"--key-file",
        &key,
        &"--json",
    ]));
    assert!(listing.expect(0).json().get("store_kind").is_none());
    worker(os(&[
        &"store",
        &"verify",
        &machine.store,
        &"--key-file",
        &key,
    ]))
    .expect(0);
    // `delete` of a symlink to the store: bad arguments, the store intact.
    let link = machine.root.with_file_name("link-to-store");
    std::os::unix::fs::symlink(&machine.store, &link).unwrap();
    worker(os(&[&"store", &"delete", &link])).expect(11);
    assert!(machine.store.join(MANIFEST_FILE).is_file());
    worker(os(&[&"store", &"delete", &machine.store])).expect(0);
    assert!(!machine.store.exists());
}
