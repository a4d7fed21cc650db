//! Content fingerprints of a machine, to check a migration end to end.
//!
//! Take [`expected_after_refresh`] on the XP machine before anything happens, then after the
//! refresh [`compare`] it with the Windows 7 tree.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{IoResultExt, Result};
use crate::inventory::profile_names;
use crate::layout::{Selection, WIN7_PROFILES_DIR, XP_PROFILES_DIR};

/// What a migrated file must look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// BLAKE3 of the content, hex.
    pub blake3_hex: String,
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Targets present with the expected fingerprint.
    pub matched: u64,
    /// Targets not found.
    pub missing: Vec<String>,
    /// Targets found with another size, mtime, mode or content.
    pub different: Vec<String>,
}

impl CompareReport {
    /// True when everything matched.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.different.is_empty()
    }
}

/// Fingerprints one file (symlinks are not followed).
pub fn fingerprint_file(path: &Path) -> Result<FileFingerprint> {
    let meta = fs::symlink_metadata(path).at(path)?;
    let mut hasher = blake3::Hasher::new();
    if meta.is_file() {
        let file = File::open(path).at(path)?;
        hasher.update_reader(file).at(path)?;
    }
    Ok(FileFingerprint {
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        mode: meta.mode() & 0o7777,
        blake3_hex: hasher.finalize().to_hex().to_string(),
    })
}

/// For every migratable file of every non-system profile of the XP machine at `root`: its
/// Windows 7 target path (relative to the root, '/'-separated) and fingerprint.
///
/// Regular files only: symlinks are never followed and left out here (they are not file content;
/// see [`expected_symlinks`]), and a file with several names appears once per migratable name.
pub fn expected_after_refresh(root: &Path) -> Result<BTreeMap<String, FileFingerprint>> {
    expected_with(root, &Selection::default())
}

/// [`expected_after_refresh`] with a custom selection.
pub fn expected_with(
    root: &Path,
    selection: &Selection,
) -> Result<BTreeMap<String, FileFingerprint>> {
    migratable(root, selection, |kind| kind.is_file())?
        .into_par_iter()
        .map(|found| Ok((found.target, fingerprint_file(&found.path)?)))
        .collect()
}

/// A symlink of an XP profile, as a refresh must treat it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymlinkExpectation {
    /// The link text.
    pub text: String,
    /// Whether it points outside its profile (lexically; absolute links always do). Such links
    /// are recorded in the store but never recreated, and what they point to is never captured.
    pub escapes: bool,
}

/// For every symlink in a migratable place of every non-system profile of the XP machine at
/// `root`: its Windows 7 target path and what a refresh must do with it. A restored tree has
/// the non-escaping ones at their target with the same text, and nothing at the others.
pub fn expected_symlinks(root: &Path) -> Result<BTreeMap<String, SymlinkExpectation>> {
    let links = migratable(root, &Selection::default(), |kind| kind.is_symlink())?;
    links
        .into_iter()
        .map(|found| {
            let text = fs::read_link(&found.path).at(&found.path)?;
            let text = text.to_string_lossy().into_owned();
            let escapes = crate::hardlink::symlink_escapes(&found.rel, &text);
            Ok((found.target, SymlinkExpectation { text, escapes }))
        })
        .collect()
}

/// An entry of a profile that the selection migrates.
struct Migratable {
    /// Windows 7 target path relative to the machine root.
    target: String,
    /// Path relative to the XP profile, '/'-separated.
    rel: String,
    /// Where it is now.
    path: std::path::PathBuf,
}

/// Entries of the given kind in migratable places of every non-system profile (no symlink is
/// followed; excluded trees are not entered).
fn migratable(
    root: &Path,
    selection: &Selection,
    wanted: impl Fn(&fs::FileType) -> bool,
) -> Result<Vec<Migratable>> {
    let profiles_dir = root.join(XP_PROFILES_DIR);
    let mut found = Vec::new();
    for user in profile_names(&profiles_dir)? {
        let profile = profiles_dir.join(&user);
        let mut walk = walkdir::WalkDir::new(&profile)
            .follow_links(false)
            .into_iter();
        while let Some(entry) = walk.next() {
            let entry = entry.map_err(|error| crate::Error::Io {
                path: error.path().unwrap_or(&profile).to_path_buf(),
                source: error.into(),
            })?;
            let rel = entry.path().strip_prefix(&profile).unwrap_or(entry.path());
            let Some(rel) = rel.to_str() else { continue };
            let Some(mapped) = selection.map_rel(rel) else {
                if entry.file_type().is_dir() {
                    walk.skip_current_dir();
                }
                continue;
            };
            if wanted(&entry.file_type()) {
                found.push(Migratable {
                    target: format!("{WIN7_PROFILES_DIR}/{user}/{mapped}"),
                    rel: rel.to_owned(),
                    path: entry.into_path(),
                });
            }
        }
    }
    Ok(found)
}

/// Fingerprints of the given targets (relative to `root`) that exist as regular files.
pub fn actual<'a>(
    root: &Path,
    targets: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<String, FileFingerprint>> {
    let targets: Vec<&str> = targets.collect();
    let found: Vec<Option<(String, FileFingerprint)>> = targets
        .into_par_iter()
        .map(|target| {
            let path = crate::manifest::join_rel(root, target);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    Ok(Some((target.to_owned(), fingerprint_file(&path)?)))
                }
                _ => Ok(None),
            }
        })
        .collect::<Result<_>>()?;
    Ok(found.into_iter().flatten().collect())
}

/// Compares the expected fingerprints with what is under `root` now.
pub fn compare(expected: &BTreeMap<String, FileFingerprint>, root: &Path) -> Result<CompareReport> {
    let found = actual(root, expected.keys().map(String::as_str))?;
    let mut report = CompareReport::default();
    for (target, want) in expected {
        match found.get(target) {
            None => report.missing.push(target.clone()),
            Some(have) if have != want => report.different.push(target.clone()),
            Some(_) => report.matched += 1,
        }
    }
    Ok(report)
}

/// Regular files under `root/rel_dir`, relative to the root, sorted ('/'-separated); empty when
/// the directory does not exist.
pub fn list_files_under(root: &Path, rel_dir: &str) -> Result<Vec<String>> {
    let dir = root.join(rel_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&dir).follow_links(false) {
        let entry = entry.map_err(|error| crate::Error::Io {
            path: error.path().unwrap_or(&dir).to_path_buf(),
            source: error.into(),
        })?;
        if entry.file_type().is_file() {
            let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(files)
}
