//! Simulated machines: generating them, and recording what they hold before a
//! migration so the result can be checked against it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fleetmig_state::fingerprint::{self, FileFingerprint};
use fleetmig_state::layout::XP_PROFILES_DIR;

use crate::cluster::Cluster;
use crate::process::{bin, run_to_completion};

impl Cluster {
    /// Generates the Windows XP machine `name` (also its hostname) at
    /// `ROOT/machines/<name>` with `fleetmig-worker simulate gen-machine`.
    pub async fn gen_machine(
        &self,
        name: &str,
        seed: u64,
        users: u32,
        files_per_user: u32,
    ) -> PathBuf {
        let root = self.root().join("machines").join(name);
        let args: Vec<OsString> = vec![
            "simulate".into(),
            "gen-machine".into(),
            "--seed".into(),
            seed.to_string().into(),
            "--users".into(),
            users.to_string().into(),
            "--files".into(),
            files_per_user.to_string().into(),
            "--hostname".into(),
            name.into(),
            root.clone().into(),
        ];
        run_to_completion(
            &format!("gen-machine {name}"),
            &bin("fleetmig-worker"),
            &args,
            &self.log_path(&format!("gen-{name}")),
        )
        .await;
        assert!(
            root.join(XP_PROFILES_DIR).is_dir(),
            "gen-machine succeeded but {} has no {XP_PROFILES_DIR}",
            root.display()
        );
        root
    }
}

/// What an XP machine held before its migration.
#[derive(Debug, Clone)]
pub struct MachineSnapshot {
    /// The machine root.
    pub root: PathBuf,
    /// Windows 7 target path (relative to the root) -> fingerprint of every file that
    /// must be migrated ([`fingerprint::expected_after_refresh`]).
    pub expected: BTreeMap<String, FileFingerprint>,
    /// XP path (relative to the root, `Documents and Settings/...`) -> inode, for every
    /// regular file under `Documents and Settings` ([`source_inodes`]).
    pub inodes: BTreeMap<String, u64>,
    /// Names of the files found under `Documents and Settings/*/Local Settings/Temp`.
    pub temp_files: BTreeSet<String>,
}

impl MachineSnapshot {
    /// Records the machine at `root` (on a blocking thread).
    pub async fn take(root: &Path) -> MachineSnapshot {
        let root = root.to_path_buf();
        match tokio::task::spawn_blocking(move || MachineSnapshot::take_blocking(&root)).await {
            Ok(snapshot) => snapshot,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }

    /// Records the machine at `root`.
    pub fn take_blocking(root: &Path) -> MachineSnapshot {
        let expected = fingerprint::expected_after_refresh(root).unwrap_or_else(|err| {
            panic!("cannot fingerprint the machine {}: {err}", root.display())
        });
        assert!(
            !expected.is_empty(),
            "the machine {} has nothing to migrate",
            root.display()
        );
        let inodes = source_inodes(root);
        assert!(
            inodes.len() >= expected.len(),
            "{} has {} files under {XP_PROFILES_DIR} but {} to migrate",
            root.display(),
            inodes.len(),
            expected.len()
        );
        MachineSnapshot {
            root: root.to_path_buf(),
            expected,
            inodes,
            temp_files: temp_file_names(root),
        }
    }
}

/// The XP profile directory of `user` on the machine at `root`
/// (`<root>/Documents and Settings/<user>`).
pub fn xp_profile(root: &Path, user: &str) -> PathBuf {
    root.join(XP_PROFILES_DIR).join(user)
}

/// `len` deterministic bytes for `seed`: a SplitMix64 stream, so the same seed always gives
/// the same content and the bytes do not compress (compression cannot hide how much of a
/// capture was deduplicated).
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Writes [`seeded_bytes`]`(seed, len)` to `path`, creating its parent directories; returns
/// `len`.
///
/// # Panics
/// When the file cannot be written.
pub fn write_seeded_file(path: &Path, seed: u64, len: usize) -> u64 {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
    }
    std::fs::write(path, seeded_bytes(seed, len))
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    len as u64
}

/// XP path (relative to `root`, '/'-separated, `Documents and Settings/...`) -> inode of
/// every regular file under `Documents and Settings`.
pub fn source_inodes(root: &Path) -> BTreeMap<String, u64> {
    let files = fingerprint::list_files_under(root, XP_PROFILES_DIR).unwrap_or_else(|err| {
        panic!(
            "cannot list {}: {err}",
            root.join(XP_PROFILES_DIR).display()
        )
    });
    files
        .into_iter()
        .map(|file| {
            let path = root.join(&file);
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()));
            (file, meta.ino())
        })
        .collect()
}

/// Names of the files under `Documents and Settings/*/Local Settings/Temp`.
pub fn temp_file_names(root: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let profiles = root.join(XP_PROFILES_DIR);
    let Ok(entries) = std::fs::read_dir(&profiles) else {
        return names;
    };
    for entry in entries.flatten() {
        let user = entry.file_name().to_string_lossy().into_owned();
        let temp = format!("{XP_PROFILES_DIR}/{user}/Local Settings/Temp");
        let files = fingerprint::list_files_under(root, &temp)
            .unwrap_or_else(|err| panic!("cannot list {temp}: {err}"));
        for file in files {
            if let Some(name) = Path::new(&file).file_name() {
                names.insert(name.to_string_lossy().into_owned());
            }
        }
    }
    names
}
