//! Checking a packed restore: every file of the manifest is at its target (or at a
//! `name(n).ext` collision name) with the manifest's size, mtime, permission bits and content
//! hash; every directory exists as a real directory. Nothing is followed through a symlink.

use std::path::Path;

use fleetmig_format::{EntryKind, PackedEntry, PackedManifest};
use fleetmig_state::{Phase, ProgressSink};
use rayon::prelude::*;
use serde::Serialize;

use super::progress::Ticker;
use super::restore::{MAX_COLLISION_INDEX, collision_rel};
use super::safe_fs::{self, DirCache, Found, SafeRoot};
use crate::error::Result;

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// File entries checked.
    pub files_checked: u64,
    /// Directory entries checked.
    pub dirs_checked: u64,
    /// Bytes of the files checked.
    pub bytes: u64,
    /// One line per problem, naming the target.
    pub mismatches: Vec<String>,
}

impl VerifyReport {
    /// True when nothing was wrong.
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Verifies the restore of `manifest` (with users already mapped, see
/// [`super::restore::map_users`]) under `root`, reading every file.
pub fn verify(
    root: &Path,
    manifest: &PackedManifest,
    progress: &dyn ProgressSink,
) -> Result<VerifyReport> {
    let safe = SafeRoot::open(root)?;
    let files: Vec<&PackedEntry> = manifest
        .entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::File)
        .collect();
    let bytes = files.iter().map(|entry| entry.size).sum();
    let ticker = Ticker::new(progress, Phase::Verifying, files.len() as u64, bytes);
    let mut mismatches: Vec<String> = files
        .par_iter()
        .map_init(
            || DirCache::new(&safe),
            |cache, entry| {
                let problem = check_file(cache, entry);
                ticker.file_done(entry.size, &entry.user);
                problem
            },
        )
        .flatten()
        .collect();
    let dirs: Vec<&PackedEntry> = manifest
        .entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::Dir)
        .collect();
    mismatches.extend(
        dirs.par_iter()
            .filter_map(|entry| {
                safe.open_dir(&entry.target).err().map(|error| {
                    format!("{}: directory missing or unusable: {error}", entry.target)
                })
            })
            .collect::<Vec<_>>(),
    );
    ticker.flush(None);
    mismatches.sort();
    Ok(VerifyReport {
        files_checked: files.len() as u64,
        dirs_checked: dirs.len() as u64,
        bytes,
        mismatches,
    })
}

/// The problem with one restored file, if any.
fn check_file(cache: &mut DirCache<'_>, entry: &PackedEntry) -> Option<String> {
    let mut first_problem = None;
    for index in 0..=MAX_COLLISION_INDEX {
        let candidate = if index == 0 {
            entry.target.clone()
        } else {
            collision_rel(&entry.target, index)
        };
        let (parent, name) = safe_fs::split_parent(&candidate);
        let dir = match cache.get(parent) {
            Ok(dir) => dir,
            Err(error) => return Some(format!("{}: {error}", entry.target)),
        };
        let problem = match safe_fs::look(dir, name) {
            Ok(Found::Nothing) => break,
            Ok(Found::File {
                size,
                mtime_ns,
                mode,
            }) => {
                if size != entry.size {
                    format!("size {size}, expected {}", entry.size)
                } else if mtime_ns != entry.mtime_ns {
                    format!("mtime {mtime_ns}, expected {}", entry.mtime_ns)
                } else if mode != entry.mode & 0o7777 {
                    format!("mode {mode:04o}, expected {:04o}", entry.mode & 0o7777)
                } else {
                    match safe_fs::hash_file(dir, name) {
                        Ok(hash) if hash.to_hex().eq_ignore_ascii_case(&entry.content_hash) => {
                            return None;
                        }
                        Ok(_) => "content differs from the manifest".to_owned(),
                        Err(error) => format!("unreadable: {error}"),
                    }
                }
            }
            Ok(Found::Dir | Found::Other) => "a directory or symlink is in place".to_owned(),
            Err(error) => format!("cannot stat: {error}"),
        };
        first_problem.get_or_insert_with(|| format!("{}: {problem}", entry.target));
    }
    Some(first_problem.unwrap_or_else(|| format!("{}: missing", entry.target)))
}
