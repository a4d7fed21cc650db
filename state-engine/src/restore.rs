//! Restore: link the store's files into their Windows 7 places under `Users/`.
//!
//! No data is copied: every file is a hard link to the store's inode, which is the original's
//! inode, so content, mode and mtime come along unchanged. Targets come from a sealed, validated
//! manifest and are additionally resolved component by component under the root, refusing any
//! symlinked or non-directory parent, so a restore never writes outside the root.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Result};
use crate::fsutil::{StatInfo, filetime_from_ns, lstat};
use crate::hardlink::{VerifyReport, device_of, ensure_same_filesystem};
use crate::manifest::{Entry, EntryKind, Manifest, join_rel};
use crate::progress::{Phase, ProgressCounter, ProgressSink};

/// Highest `name(n).ext` tried before giving up on a collision.
const MAX_COLLISION_INDEX: u32 = 10_000;

/// How to restore.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOptions {
    /// Replace a different file already at a target instead of renaming the incoming one to
    /// `name(1).ext` (USMT's default collision rule).
    pub overwrite: bool,
    /// Only these users, when not empty.
    pub users: Vec<String>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Users restored.
    pub users: Vec<String>,
    /// Files newly linked into place (renamed and overwritten ones included).
    pub files_linked: u64,
    /// Files that were already in place (same inode), e.g. on a second run.
    pub files_already_present: u64,
    /// Bytes of all restored files (none of them copied).
    pub bytes: u64,
    /// Directory entries applied (created or already present).
    pub dirs: u64,
    /// Symlinks created or already present.
    pub symlinks: u64,
    /// Symlinks not recreated because they point outside their profile (target paths).
    pub symlinks_skipped: Vec<String>,
    /// Incoming files renamed because a different file held the target: (target, actual path),
    /// also listed when a rerun finds them already in place under the renamed name.
    pub renamed: Vec<(String, String)>,
    /// Different files replaced because `overwrite` was set (target paths).
    pub overwritten: Vec<String>,
}

/// Where one file ended up.
enum Placed {
    Linked,
    AlreadyPresent,
    Renamed(PathBuf),
    AlreadyPresentAs(PathBuf),
    Overwritten,
}

/// Restores a sealed store into the Windows 7 tree under `root` (see the module docs).
/// Idempotent: running it again finds everything already in place.
pub fn restore(
    store_dir: &Path,
    root: &Path,
    opts: &RestoreOptions,
    progress: &dyn ProgressSink,
) -> Result<RestoreReport> {
    let manifest = Manifest::load_sealed(store_dir)?;
    let root = root.canonicalize().at(root)?;
    ensure_same_filesystem(&root, device_of(&root)?, store_dir, device_of(store_dir)?)?;
    let wanted = |entry: &&Entry| opts.users.is_empty() || opts.users.contains(&entry.user);
    let entries: Vec<&Entry> = manifest.entries.iter().filter(wanted).collect();
    let users: Vec<String> = manifest
        .users
        .iter()
        .filter(|user| opts.users.is_empty() || opts.users.contains(user))
        .cloned()
        .collect();
    tracing::info!(store = %store_dir.display(), root = %root.display(), entries = entries.len(), "restore started");

    // Directories first, sequentially and checked component by component.
    let mut dirs = BTreeSet::new();
    for entry in &entries {
        match entry.kind {
            EntryKind::Dir => dirs.insert(entry.target.as_str()),
            _ => dirs.insert(parent_rel(&entry.target)),
        };
    }
    let mut resolver = DirResolver::new(&root);
    for dir in &dirs {
        resolver.ensure(dir)?;
    }

    let files: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|entry| entry.kind == EntryKind::File)
        .collect();
    let bytes_total = files.iter().map(|entry| entry.size).sum();
    let counter = ProgressCounter::new(progress, Phase::Applying, files.len() as u64, bytes_total);
    counter.flush(None);
    let placed: Vec<(&Entry, Placed)> = files
        .par_iter()
        .map(|entry| {
            let placed = place_file(store_dir, &root, entry, opts.overwrite)?;
            counter.file_done(entry.size, &entry.user);
            Ok((*entry, placed))
        })
        .collect::<Result<_>>()?;
    counter.flush(None);

    let mut report = RestoreReport {
        users,
        bytes: bytes_total,
        ..RestoreReport::default()
    };
    for (entry, placed) in placed {
        match placed {
            Placed::Linked => report.files_linked += 1,
            Placed::AlreadyPresent => report.files_already_present += 1,
            Placed::Overwritten => {
                report.files_linked += 1;
                report.overwritten.push(entry.target.clone());
            }
            Placed::Renamed(actual) => {
                report.files_linked += 1;
                report
                    .renamed
                    .push((entry.target.clone(), relative_to(&root, &actual)));
            }
            Placed::AlreadyPresentAs(actual) => {
                report.files_already_present += 1;
                report
                    .renamed
                    .push((entry.target.clone(), relative_to(&root, &actual)));
            }
        }
    }

    for entry in entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::Symlink)
    {
        if place_symlink(&root, entry)? {
            report.symlinks += 1;
        } else {
            report.symlinks_skipped.push(entry.target.clone());
        }
    }

    // Directory modes and mtimes last (creating files bumps them), deepest first.
    let mut dir_entries: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|entry| entry.kind == EntryKind::Dir)
        .collect();
    dir_entries.sort_by_key(|entry| std::cmp::Reverse(entry.target.matches('/').count()));
    for entry in dir_entries {
        let path = join_rel(&root, &entry.target);
        fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode & 0o7777)).at(&path)?;
        filetime::set_file_mtime(&path, filetime_from_ns(entry.mtime_ns)).at(&path)?;
        report.dirs += 1;
    }
    tracing::info!(
        root = %root.display(),
        linked = report.files_linked,
        already_present = report.files_already_present,
        renamed = report.renamed.len(),
        "restore finished"
    );
    Ok(report)
}

/// Creates directories under a root, refusing to pass through symlinks or non-directories.
struct DirResolver<'a> {
    root: &'a Path,
    known: BTreeSet<String>,
}

impl<'a> DirResolver<'a> {
    fn new(root: &'a Path) -> Self {
        Self {
            root,
            known: BTreeSet::new(),
        }
    }

    /// Makes sure the validated relative directory `rel` exists as a real directory under root.
    fn ensure(&mut self, rel: &str) -> Result<()> {
        if rel.is_empty() || self.known.contains(rel) {
            return Ok(());
        }
        self.ensure(parent_rel(rel))?;
        let path = join_rel(self.root, rel);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::PathEscapes {
                    path,
                    root: self.root.to_path_buf(),
                    reason: "a parent directory is a symlink or not a directory".to_owned(),
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&path).at(&path)?;
            }
            Err(error) => return Err(error).at(&path),
        }
        self.known.insert(rel.to_owned());
        Ok(())
    }
}

fn relative_to(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The parent of a '/'-separated relative path ("" at the top).
fn parent_rel(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// Links one store file to its target, applying the collision rule.
fn place_file(store_dir: &Path, root: &Path, entry: &Entry, overwrite: bool) -> Result<Placed> {
    let source = join_rel(store_dir, &entry.store);
    let stat = lstat(&source)?;
    if let Some(reason) = crate::hardlink::verify::compare_file(entry, &stat) {
        return Err(Error::StoreMismatch {
            path: source,
            reason,
        });
    }
    let target = join_rel(root, &entry.target);
    for index in 0..=MAX_COLLISION_INDEX {
        let candidate = if index == 0 {
            target.clone()
        } else {
            collision_name(&target, index)
        };
        match fs::hard_link(&source, &candidate) {
            Ok(()) if index == 0 => return Ok(Placed::Linked),
            Ok(()) => return Ok(Placed::Renamed(candidate)),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let existing = lstat(&candidate)?;
                if same_file(&existing, &stat) {
                    return Ok(if index == 0 {
                        Placed::AlreadyPresent
                    } else {
                        Placed::AlreadyPresentAs(candidate)
                    });
                }
                if index == 0 && overwrite && existing.mode & 0o170000 != 0o040000 {
                    replace_with_link(&source, &candidate)?;
                    return Ok(Placed::Overwritten);
                }
            }
            Err(error) => return Err(error).at(&candidate),
        }
    }
    Err(Error::Io {
        path: target,
        source: std::io::Error::other("too many colliding names"),
    })
}

fn same_file(a: &StatInfo, b: &StatInfo) -> bool {
    a.dev == b.dev && a.ino == b.ino
}

/// Atomically replaces `target` with a hard link to `source` (link to a temp name, rename).
fn replace_with_link(source: &Path, target: &Path) -> Result<()> {
    let temp = target.with_file_name(format!(
        ".fleetmig-restore-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::hard_link(source, &temp).at(&temp)?;
    fs::rename(&temp, target).at(target)
}

/// `dir/name(index).ext`: the USMT collision name.
pub fn collision_name(path: &Path, index: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let renamed = match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{}({index}){}", &name[..dot], &name[dot..]),
        _ => format!("{name}({index})"),
    };
    path.with_file_name(renamed)
}

/// Recreates a symlink that stays inside its profile; returns false when it was skipped.
fn place_symlink(root: &Path, entry: &Entry) -> Result<bool> {
    let Some(text) = entry.link_target.as_deref() else {
        return Ok(false);
    };
    // Re-check at the target location: "Users/<user>/" are the first two components.
    let profile_rel = entry.target.splitn(3, '/').nth(2).unwrap_or("");
    if entry.link_escapes || crate::hardlink::symlink_escapes(profile_rel, text) {
        return Ok(false);
    }
    let target = join_rel(root, &entry.target);
    for index in 0..=MAX_COLLISION_INDEX {
        let candidate = if index == 0 {
            target.clone()
        } else {
            collision_name(&target, index)
        };
        match std::os::unix::fs::symlink(text, &candidate) {
            Ok(()) => return Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                if fs::read_link(&candidate).ok().as_deref() == Some(Path::new(text)) {
                    return Ok(true);
                }
            }
            Err(error) => return Err(error).at(&candidate),
        }
    }
    Ok(false)
}

/// Checks a restore: every file entry of the store's manifest is at its target (or at a
/// `name(n).ext` collision name) with the original's inode, size, mode and mtime; directories
/// exist. Works after the store was deleted only if the manifest is still there, so run it
/// before [`crate::hardlink::delete_store`].
pub fn verify_restore(store_dir: &Path, root: &Path) -> Result<VerifyReport> {
    let manifest = Manifest::load_sealed(store_dir)?;
    let mismatches: Vec<String> = manifest
        .entries
        .par_iter()
        .filter_map(|entry| match entry.kind {
            EntryKind::File => check_restored_file(root, entry),
            EntryKind::Dir => {
                let path = join_rel(root, &entry.target);
                (!fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()))
                    .then(|| format!("{}: directory missing", entry.target))
            }
            EntryKind::Symlink => None,
        })
        .collect();
    Ok(VerifyReport {
        files_checked: manifest.entries_of(EntryKind::File).count() as u64,
        mismatches,
    })
}

fn check_restored_file(root: &Path, entry: &Entry) -> Option<String> {
    let target = join_rel(root, &entry.target);
    let mut first_problem = None;
    for index in 0..=MAX_COLLISION_INDEX {
        let candidate = if index == 0 {
            target.clone()
        } else {
            collision_name(&target, index)
        };
        let Ok(meta) = fs::symlink_metadata(&candidate) else {
            break;
        };
        let stat = StatInfo::from_metadata(&meta);
        if stat.ino == entry.inode {
            return crate::hardlink::verify::compare_file(entry, &stat)
                .map(|problem| format!("{}: {problem}", entry.target));
        }
        first_problem
            .get_or_insert_with(|| format!("{}: a different file is in place", entry.target));
    }
    Some(first_problem.unwrap_or_else(|| format!("{}: missing", entry.target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collision_names() {
        assert_eq!(
            collision_name(Path::new("Users/a/Report.doc"), 1),
            PathBuf::from("Users/a/Report(1).doc")
        );
        assert_eq!(
            collision_name(Path::new("Users/a/archive.tar.gz"), 2),
            PathBuf::from("Users/a/archive.tar(2).gz")
        );
        assert_eq!(
            collision_name(Path::new("Users/a/.bashrc"), 1),
            PathBuf::from("Users/a/.bashrc(1)")
        );
        assert_eq!(
            collision_name(Path::new("Users/a/README"), 3),
            PathBuf::from("Users/a/README(3)")
        );
    }

    #[test]
    fn parents() {
        assert_eq!(parent_rel("Users/alice/a.doc"), "Users/alice");
        assert_eq!(parent_rel("Users"), "");
    }
}
