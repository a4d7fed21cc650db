//! The store manifest: what was captured, from where, to where, sealed with a BLAKE3 digest.
//!
//! On disk a store holds `manifest.json` and `manifest.seal` (the hex BLAKE3 digest of
//! `manifest.json`). Both are written atomically, the seal last, so a store with a valid seal is
//! a completed capture. Loading always checks the seal and validates every path, because a
//! manifest may come from an untrusted place.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Result};
use crate::fsutil::{check_relative, write_atomic};
use crate::layout::WIN7_PROFILES_DIR;

/// The manifest format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a store.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the seal inside a store.
pub const SEAL_FILE: &str = "manifest.seal";
/// Directory inside a store that holds the captured tree.
pub const DATA_DIR: &str = "data";
/// Directory under [`DATA_DIR`] holding machine-wide files (System-context rules), whose
/// entries have an empty `user`.
pub const SYSTEM_STORE_DIR: &str = "_system";

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file, hard-linked into the store.
    File,
    /// A directory, recreated in the store.
    Dir,
    /// A symbolic link, recorded and recreated, never followed.
    Symlink,
}

/// One captured file, directory or symlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// The profile (user name) it belongs to; empty for machine-wide files.
    pub user: String,
    /// Source path relative to the machine root, '/'-separated (`Documents and Settings/alice/...`).
    pub source: String,
    /// Windows 7 target path relative to the machine root (`Users/alice/Documents/a.doc`).
    pub target: String,
    /// Path inside the store (`data/alice/My Documents/a.doc`).
    pub store: String,
    /// Size in bytes (files), 0 otherwise.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Inode of the original; the store link and the restored file share it.
    pub inode: u64,
    /// For symlinks, the link text as found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// For symlinks pointing outside their profile: recorded, but never recreated on restore.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link_escapes: bool,
}

/// The list of everything a capture put in a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`] for manifests written by this crate.
    pub format_version: u32,
    /// The migration job this capture belongs to.
    pub job_id: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// The machine root the capture was taken from (informational).
    pub source_root: String,
    /// The machine's hostname at capture time.
    #[serde(default)]
    pub hostname: String,
    /// Users captured.
    #[serde(default)]
    pub users: Vec<String>,
    /// Entries, directories before their content.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// A new empty manifest stamped with the current time.
    pub fn new(job_id: &str, source_root: &Path) -> Self {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as i64)
            .unwrap_or(0);
        Self {
            format_version: FORMAT_VERSION,
            job_id: job_id.to_owned(),
            created_unix_ms,
            source_root: source_root.to_string_lossy().into_owned(),
            hostname: String::new(),
            users: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Writes `manifest.json` then `manifest.seal` into `store_dir`, both atomically and durably.
    /// Returns the seal (hex BLAKE3 digest of `manifest.json`).
    pub fn write_sealed(&self, store_dir: &Path) -> Result<String> {
        let manifest_path = store_dir.join(MANIFEST_FILE);
        let bytes = self.to_json().map_err(|source| Error::ManifestJson {
            path: manifest_path.clone(),
            source,
        })?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        write_atomic(store_dir, MANIFEST_FILE, &bytes)?;
        write_atomic(store_dir, SEAL_FILE, format!("{digest}\n").as_bytes())?;
        Ok(digest)
    }

    /// Serializes to compact JSON, identical to `serde_json::to_vec(self)`, but with the entries
    /// serialized in parallel chunks (100k entries are ~30 MB of JSON).
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        const ENTRIES_PER_CHUNK: usize = 4096;
        let header = self.clone_without_entries();
        let mut out = serde_json::to_vec(&header)?;
        // `entries` is the last field, so the header ends with `"entries":[]}`.
        debug_assert!(out.ends_with(b"[]}"));
        out.truncate(out.len() - 2);
        let chunks: Vec<Vec<u8>> = self
            .entries
            .par_chunks(ENTRIES_PER_CHUNK)
            .map(|chunk| {
                let mut buf = Vec::with_capacity(chunk.len() * 384);
                for (index, entry) in chunk.iter().enumerate() {
                    if index > 0 {
                        buf.push(b',');
                    }
                    serde_json::to_writer(&mut buf, entry)?;
                }
                Ok(buf)
            })
            .collect::<serde_json::Result<_>>()?;
        out.reserve(chunks.iter().map(Vec::len).sum::<usize>() + chunks.len() + 2);
        for (index, chunk) in chunks.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    fn clone_without_entries(&self) -> Manifest {
        Manifest {
            format_version: self.format_version,
            job_id: self.job_id.clone(),
            created_unix_ms: self.created_unix_ms,
            source_root: self.source_root.clone(),
            hostname: self.hostname.clone(),
            users: self.users.clone(),
            entries: Vec::new(),
        }
    }

    /// Loads the manifest of a store, refusing it unless the seal matches and every entry is
    /// safe to act on (see [`Manifest::validate`]).
    pub fn load_sealed(store_dir: &Path) -> Result<Manifest> {
        let seal_path = store_dir.join(SEAL_FILE);
        let manifest_path = store_dir.join(MANIFEST_FILE);
        let seal = match fs::read_to_string(&seal_path) {
            Ok(seal) => seal,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingSeal {
                    path: store_dir.to_path_buf(),
                });
            }
            Err(error) => return Err(error).at(&seal_path),
        };
        let bytes = fs::read(&manifest_path).at(&manifest_path)?;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        let expected = seal.trim().to_owned();
        if actual != expected {
            return Err(Error::SealMismatch {
                path: store_dir.to_path_buf(),
                expected,
                actual,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| Error::ManifestJson {
                path: manifest_path.clone(),
                source,
            })?;
        manifest
            .validate()
            .map_err(|reason| Error::ManifestInvalid {
                path: manifest_path,
                reason,
            })?;
        Ok(manifest)
    }

    /// Reads the seal of a store (the manifest digest) without checking it.
    pub fn read_seal(store_dir: &Path) -> Result<String> {
        let seal_path = store_dir.join(SEAL_FILE);
        Ok(fs::read_to_string(&seal_path)
            .at(&seal_path)?
            .trim()
            .to_owned())
    }

    /// Checks everything restore relies on: the format version; user names are single plain
    /// components; `source`, `target` and `store` are relative, free of `..`, `.`, empty
    /// components and NUL; `target` lies under `Users/<user>/` and `store` under `data/<user>/`;
    /// for machine-wide entries (empty `user`), `store` lies under `data/_system/` and `target`
    /// anywhere but `Windows/`, `_fleetmig/`, `StateStore/`; no two entries share a store path. Returns the first problem found.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "unsupported format version {} (expected {FORMAT_VERSION})",
                self.format_version
            ));
        }
        let mut store_paths = HashSet::with_capacity(self.entries.len());
        for (index, entry) in self.entries.iter().enumerate() {
            let bad = |what: &str, value: &str, reason: String| {
                format!("entry {index}: {what} {value:?}: {reason}")
            };
            if entry.user.contains('/') {
                return Err(bad("user", &entry.user, "contains '/'".to_owned()));
            }
            // An empty user marks a machine-wide (System-context rules) entry.
            let system = entry.user.is_empty();
            if !system {
                check_relative(&entry.user).map_err(|reason| bad("user", &entry.user, reason))?;
            }
            check_relative(&entry.source).map_err(|reason| bad("source", &entry.source, reason))?;
            check_relative(&entry.target).map_err(|reason| bad("target", &entry.target, reason))?;
            check_relative(&entry.store).map_err(|reason| bad("store", &entry.store, reason))?;
            if system {
                if !system_target_allowed(&entry.target) {
                    return Err(bad(
                        "target",
                        &entry.target,
                        "a system entry must not target Windows/, _fleetmig/ or StateStore/"
                            .to_owned(),
                    ));
                }
                if !is_under(&entry.store, &[DATA_DIR, SYSTEM_STORE_DIR]) {
                    return Err(bad(
                        "store",
                        &entry.store,
                        format!("not under {DATA_DIR}/{SYSTEM_STORE_DIR}"),
                    ));
                }
            } else if !is_under(&entry.target, &[WIN7_PROFILES_DIR, &entry.user]) {
                return Err(bad(
                    "target",
                    &entry.target,
                    format!("not under {WIN7_PROFILES_DIR}/{}", entry.user),
                ));
            }
            if !system && !is_under(&entry.store, &[DATA_DIR, &entry.user]) {
                return Err(bad(
                    "store",
                    &entry.store,
                    format!("not under {DATA_DIR}/{}", entry.user),
                ));
            }
            if entry.kind == EntryKind::Symlink
                && entry
                    .link_target
                    .as_deref()
                    .is_none_or(|text| text.contains('\0'))
            {
                return Err(bad(
                    "symlink",
                    &entry.source,
                    "missing or invalid link target".to_owned(),
                ));
            }
            if !store_paths.insert(entry.store.as_str()) {
                return Err(bad("store", &entry.store, "listed twice".to_owned()));
            }
        }
        Ok(())
    }

    /// Entries of one kind.
    pub fn entries_of(&self, kind: EntryKind) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |entry| entry.kind == kind)
    }
}

/// True when the '/'-separated `path` equals or lies under the given components.
fn is_under(path: &str, prefix: &[&str]) -> bool {
    let mut parts = path.split('/');
    prefix.iter().all(|want| parts.next() == Some(want))
}

/// The store path of a captured profile path: `data/<user>/<rel>`; for machine-wide entries
/// (`user` empty, `rel` relative to the machine root) `data/_system/<rel>`.
pub fn store_path(user: &str, rel: &str) -> String {
    let user = if user.is_empty() {
        SYSTEM_STORE_DIR
    } else {
        user
    };
    if rel.is_empty() {
        format!("{DATA_DIR}/{user}")
    } else {
        format!("{DATA_DIR}/{user}/{rel}")
    }
}

/// Whether a machine-wide entry may restore to `target` (relative, already checked): anywhere
/// but under `Windows/`, `_fleetmig/` or `StateStore/` (compared case-insensitively).
pub fn system_target_allowed(target: &str) -> bool {
    let top = target.split('/').next().unwrap_or("");
    !["Windows", "_fleetmig", "StateStore"]
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(top))
}

/// Joins a validated '/'-separated relative path onto a directory.
pub(crate) fn join_rel(dir: &Path, rel: &str) -> PathBuf {
    let mut path = dir.to_path_buf();
    path.extend(rel.split('/'));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            kind: EntryKind::File,
            user: "alice".into(),
            source: format!("Documents and Settings/alice/My Documents/{name}"),
            target: format!("Users/alice/Documents/{name}"),
            store: format!("data/alice/My Documents/{name}"),
            size: 3,
            mtime_ns: 1_100_000_000_123_456_789,
            mode: 0o100644,
            inode: 42,
            link_target: None,
            link_escapes: false,
        }
    }

    fn sample(entries: usize) -> Manifest {
        let mut manifest = Manifest::new("job-1", Path::new("/machines/xp"));
        manifest.entries = (0..entries)
            .map(|i| entry(&format!("file {i}.doc")))
            .collect();
        manifest
    }

    #[test]
    fn round_trip_and_seal() {
        // One sample: two calls may straddle a millisecond and differ in `created_unix_ms`.
        let empty = sample(0);
        assert_eq!(
            empty.to_json().unwrap(),
            serde_json::to_vec(&empty).unwrap()
        );
        let store = tempfile::tempdir().unwrap();
        let manifest = sample(3);
        let digest = manifest.write_sealed(store.path()).unwrap();
        assert_eq!(Manifest::read_seal(store.path()).unwrap(), digest);
        assert_eq!(Manifest::load_sealed(store.path()).unwrap(), manifest);
    }

    #[test]
    fn tampering_breaks_the_seal() {
        let store = tempfile::tempdir().unwrap();
        sample(2).write_sealed(store.path()).unwrap();
        let path = store.path().join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"size\":3", "\"size\":4");
        fs::write(&path, text).unwrap();
        let error = Manifest::load_sealed(store.path()).unwrap_err();
        assert!(matches!(error, Error::SealMismatch { .. }), "{error}");
    }

    #[test]
    fn unsealed_store_is_refused() {
        let store = tempfile::tempdir().unwrap();
        sample(1).write_sealed(store.path()).unwrap();
        fs::remove_file(store.path().join(SEAL_FILE)).unwrap();
        let error = Manifest::load_sealed(store.path()).unwrap_err();
        assert!(matches!(error, Error::MissingSeal { .. }), "{error}");
        assert!(error.to_string().contains("not sealed"));
    }

    #[test]
    fn hostile_entries_are_refused_even_when_sealed() {
        type Mutation = Box<dyn Fn(&mut Entry)>;
        let hostile: Vec<Mutation> = vec![
            Box::new(|e| e.target = "Users/alice/../../etc/passwd".into()),
            Box::new(|e| e.target = "/etc/passwd".into()),
            Box::new(|e| e.target = "Windows/System32/evil.dll".into()),
            Box::new(|e| e.target = "Users/bob/a.doc".into()),
            Box::new(|e| e.store = "../../etc/shadow".into()),
            Box::new(|e| e.store = "data/alice/a\0b".into()),
            Box::new(|e| e.source = "/etc/passwd".into()),
            Box::new(|e| e.user = "..".into()),
            Box::new(|e| {
                e.kind = EntryKind::Symlink;
                e.link_target = None;
            }),
        ];
        for (index, mutate) in hostile.iter().enumerate() {
            let store = tempfile::tempdir().unwrap();
            let mut manifest = sample(2);
            mutate(&mut manifest.entries[1]);
            manifest.write_sealed(store.path()).unwrap();
            let error = Manifest::load_sealed(store.path()).unwrap_err();
            assert!(
                matches!(error, Error::ManifestInvalid { .. }),
                "case {index}: {error}"
            );
        }
    }

    #[test]
    fn large_manifest_serializes_fast() {
        let manifest = sample(100_000);
        let started = std::time::Instant::now();
        let bytes = manifest.to_json().unwrap();
        let elapsed = started.elapsed();
        assert_eq!(bytes, serde_json::to_vec(&manifest).unwrap());
        assert!(bytes.len() > 1_000_000);
        // This crate is unoptimised in debug builds and tests share the cores; release must be fast.
        let bound = if cfg!(debug_assertions) { 20_000 } else { 100 };
        assert!(
            elapsed < std::time::Duration::from_millis(bound),
            "took {elapsed:?}"
        );
    }
}
