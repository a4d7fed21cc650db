//! Restore: link the store's files into their Windows 7 places under `Users/`.
//!
//! No data is copied: every file is a hard link to the store's inode, which is the original's
//! inode, so content, mode and mtime come along unchanged. Targets come from a sealed, validated
//! manifest and are additionally resolved component by component under the root, refusing any
//! symlinked or non-directory parent, so a restore never writes outside the root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoResultExt, Result};
use crate::fsutil::{StatInfo, filetime_from_ns, lstat};
use crate::hardlink::{VerifyReport, device_of, ensure_same_filesystem};
use crate::layout::WIN7_PROFILES_DIR;
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
    /// Only these users (as captured, before [`RestoreOptions::user_map`]), when not empty.
    pub users: Vec<String>,
    /// Profiles to rename on the way in (USMT `/mu`): captured name → new profile name, so
    /// `Users/<old>/…` targets are restored under `Users/<new>/…`. Several users may map to one
    /// name; colliding files then follow the collision rule.
    #[serde(default)]
    pub user_map: BTreeMap<String, String>,
    /// Record files that cannot be restored in [`RestoreReport::skipped`] instead of failing.
    #[serde(default)]
    pub continue_on_error: bool,
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
    /// Files not restored under `continue_on_error`: (target path, reason).
    #[serde(default)]
    pub skipped: Vec<(String, String)>,
}

/// Where one file ended up.
enum Placed {
    Linked,
    AlreadyPresent,
    Renamed(PathBuf),
    AlreadyPresentAs(PathBuf),
    Overwritten,
    Skipped(String),
}

/// Restores a sealed store into the Windows 7 tree under `root` (see the module docs).
/// Idempotent: running it again finds everything already in place.
pub fn restore(
    store_dir: &Path,
    root: &Path,
    opts: &RestoreOptions,
    progress: &dyn ProgressSink,
) -> Result<RestoreReport> {
    let manifest = map_users(Manifest::load_sealed(store_dir)?, &opts.user_map)?;
    let root = root.canonicalize().at(root)?;
    ensure_same_filesystem(&root, device_of(&root)?, store_dir, device_of(store_dir)?)?;
    let wanted = |entry: &&Entry| opts.users.is_empty() || opts.users.contains(&entry.user);
    let entries: Vec<&Entry> = manifest.entries.iter().filter(wanted).collect();
    let users: Vec<String> = manifest
        .users
        .iter()
        .filter(|user| opts.users.is_empty() || opts.users.contains(user))
        .map(|user| opts.user_map.get(user).unwrap_or(user).clone())
        .collect();
    tracing::info!(store = %store_dir.display(), root = %root.display(), entries = entries.len(), "restore started");

    // Directories first, level by level (each level in parallel), checked component by component.
    let mut dirs = BTreeSet::new();
    let mut last = None;
    for entry in &entries {
        let dir = match entry.kind {
            EntryKind::Dir => entry.target.as_str(),
            _ => parent_rel(&entry.target),
        };
        // Entries come sorted by store path, so most share the previous one's directory.
        if last != Some(dir) {
            dirs.insert(dir);
            last = Some(dir);
        }
    }
    ensure_dirs(&root, &dirs)?;

    let files: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|entry| entry.kind == EntryKind::File)
        .collect();
    let bytes_total = files.iter().map(|entry| entry.size).sum();
    let counter = ProgressCounter::new(progress, Phase::Applying, files.len() as u64, bytes_total);
    counter.flush(None);
    let (root_ref, counter_ref) = (&root, &counter);
    let placed: Vec<(&Entry, Placed)> = files
        .par_chunks(FILES_PER_TASK)
        .flat_map_iter(|chunk| {
            let mut dirs = OpenDirs::default();
            chunk.iter().map(move |entry| {
                let placed = match place_file(&mut dirs, store_dir, root_ref, entry, opts.overwrite)
                {
                    Ok(placed) => placed,
                    Err(error) if opts.continue_on_error => {
                        tracing::warn!(target = %entry.target, %error, "skipping file");
                        Placed::Skipped(error.to_string())
                    }
                    Err(error) => return Err(error),
                };
                counter_ref.file_done(entry.size, &entry.user);
                Ok((*entry, placed))
            })
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
            Placed::Skipped(reason) => report.skipped.push((entry.target.clone(), reason)),
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
    // Each level in parallel: a directory's mode and times do not touch its siblings or parent.
    let depth = |entry: &&Entry| entry.target.matches('/').count();
    let mut dir_entries: Vec<&Entry> = entries
        .iter()
        .copied()
        .filter(|entry| entry.kind == EntryKind::Dir)
        .collect();
    dir_entries.sort_by_key(|entry| std::cmp::Reverse(depth(entry)));
    for level in dir_entries.chunk_by(|a, b| depth(a) == depth(b)) {
        level.par_iter().try_for_each(|entry| {
            let path = join_rel(&root, &entry.target);
            fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode & 0o7777))
                .at(&path)?;
            filetime::set_file_mtime(&path, filetime_from_ns(entry.mtime_ns)).at(&path)
        })?;
    }
    report.dirs += dir_entries.len() as u64;
    tracing::info!(
        root = %root.display(),
        linked = report.files_linked,
        already_present = report.files_already_present,
        renamed = report.renamed.len(),
        "restore finished"
    );
    Ok(report)
}

/// Rewrites the targets of users named in `user_map` from `Users/<old>/…` to `Users/<new>/…`.
/// New names must be single plain path components.
fn map_users(mut manifest: Manifest, user_map: &BTreeMap<String, String>) -> Result<Manifest> {
    if user_map.is_empty() {
        return Ok(manifest);
    }
    for new in user_map.values() {
        if let Err(reason) = check_user_name(new) {
            return Err(Error::PathEscapes {
                path: PathBuf::from(new),
                root: PathBuf::from(WIN7_PROFILES_DIR),
                reason: format!("user map target: {reason}"),
            });
        }
    }
    for entry in &mut manifest.entries {
        let Some(new) = user_map.get(&entry.user) else {
            continue;
        };
        // Validated on load: the target is `Users/<user>` or `Users/<user>/<rest>`.
        let rest = entry
            .target
            .splitn(3, '/')
            .nth(2)
            .map_or(String::new(), |rest| format!("/{rest}"));
        entry.target = format!("{WIN7_PROFILES_DIR}/{new}{rest}");
    }
    Ok(manifest)
}

/// Why `name` cannot be a profile directory name, if it cannot.
fn check_user_name(name: &str) -> std::result::Result<(), String> {
    if name.contains('/') {
        return Err(format!("{name:?} contains '/'"));
    }
    crate::fsutil::check_relative(name).map_err(|reason| format!("{name:?}: {reason}"))
}

/// Creates the validated relative directories `dirs` and their ancestors under `root`,
/// refusing to pass through symlinks or non-directories. Shallowest level first, each level in
/// parallel, so a directory is only created in parents already checked or created.
fn ensure_dirs(root: &Path, dirs: &BTreeSet<&str>) -> Result<()> {
    let mut levels: Vec<BTreeSet<&str>> = Vec::new();
    for dir in dirs {
        let mut rel: &str = dir;
        while !rel.is_empty() {
            let depth = rel.matches('/').count();
            if levels.len() <= depth {
                levels.resize_with(depth + 1, BTreeSet::new);
            }
            if !levels[depth].insert(rel) {
                break; // its ancestors are in already
            }
            rel = parent_rel(rel);
        }
    }
    for level in &levels {
        level.par_iter().try_for_each(|rel| ensure_dir(root, rel))?;
    }
    Ok(())
}

/// Makes sure the validated relative directory `rel`, whose parent is a checked real directory,
/// exists as a real directory under `root` (`mkdir` never follows a symlink in the last place).
fn ensure_dir(root: &Path, rel: &str) -> Result<()> {
    let path = join_rel(root, rel);
    match fs::create_dir(&path) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).at(&path),
    }
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::PathEscapes {
            path,
            root: root.to_path_buf(),
            reason: "a parent directory is a symlink or not a directory".to_owned(),
        }),
        Err(error) => Err(error).at(&path),
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

/// Files placed by one task: consecutive files (sorted by store path) mostly share their
/// directories, which [`OpenDirs`] keeps open.
const FILES_PER_TASK: usize = 256;

/// The open store and target directories of the last file placed, so the common case (no
/// collision) costs one `statat` and one `linkat` on single names instead of resolving full
/// paths three times. Target directories were checked by [`ensure_dirs`] and are opened with
/// `O_NOFOLLOW`.
#[derive(Default)]
struct OpenDirs {
    store: Option<(String, OwnedFd)>,
    target: Option<(String, OwnedFd)>,
}

impl OpenDirs {
    /// Links `entry` into place through open directories. `None` whenever that is not a plain
    /// success (name taken, store file changed, any error): [`place_file`]'s full-path logic then
    /// decides and reports, exactly as without this shortcut.
    fn try_link(&mut self, store_dir: &Path, root: &Path, entry: &Entry) -> Option<Placed> {
        let (store_parent, store_name) = entry.store.rsplit_once('/')?;
        let (target_parent, target_name) = entry.target.rsplit_once('/')?;
        let store = open_dir_cached(&mut self.store, store_dir, store_parent)?;
        let target = open_dir_cached(&mut self.target, root, target_parent)?;
        let stat = rustix::fs::statat(store, store_name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if crate::hardlink::verify::compare_file(entry, &StatInfo::from_rustix(&stat)).is_some() {
            return None;
        }
        rustix::fs::linkat(store, store_name, target, target_name, AtFlags::empty()).ok()?;
        Some(Placed::Linked)
    }
}

/// The directory `base/rel`, opened (`O_PATH`, never through a final symlink) unless `slot`
/// already holds it.
fn open_dir_cached<'a>(
    slot: &'a mut Option<(String, OwnedFd)>,
    base: &Path,
    rel: &str,
) -> Option<BorrowedFd<'a>> {
    if slot.as_ref().is_none_or(|(open, _)| open != rel) {
        *slot = None;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(CWD, join_rel(base, rel), flags, Mode::empty()).ok()?;
        *slot = Some((rel.to_owned(), fd));
    }
    slot.as_ref().map(|(_, fd)| fd.as_fd())
}

/// Links one store file to its target, applying the collision rule.
fn place_file(
    dirs: &mut OpenDirs,
    store_dir: &Path,
    root: &Path,
    entry: &Entry,
    overwrite: bool,
) -> Result<Placed> {
    if let Some(placed) = dirs.try_link(store_dir, root, entry) {
        return Ok(placed);
    }
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
    verify_restore_with(store_dir, root, &RestoreOptions::default())
}

/// [`verify_restore`] of a restore made with `opts`: only its users, at their mapped targets.
pub fn verify_restore_with(
    store_dir: &Path,
    root: &Path,
    opts: &RestoreOptions,
) -> Result<VerifyReport> {
    let manifest = map_users(Manifest::load_sealed(store_dir)?, &opts.user_map)?;
    let wanted = |entry: &&Entry| opts.users.is_empty() || opts.users.contains(&entry.user);
    let mismatches: Vec<String> = manifest
        .entries
        .par_iter()
        .filter(wanted)
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
        files_checked: manifest.entries_of(EntryKind::File).filter(wanted).count() as u64,
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
    fn user_map_rewrites_targets_and_refuses_bad_names() {
        let mut manifest = Manifest::new("j", Path::new("/m"));
        for (user, target) in [
            ("alice", "Users/alice"),
            ("alice", "Users/alice/Documents/a.doc"),
            ("bob", "Users/bob/b.doc"),
        ] {
            manifest.entries.push(Entry {
                kind: EntryKind::File,
                user: user.into(),
                source: String::new(),
                target: target.into(),
                store: String::new(),
                size: 0,
                mtime_ns: 0,
                mode: 0,
                inode: 0,
                link_target: None,
                link_escapes: false,
            });
        }
        let map: BTreeMap<String, String> = [("alice".into(), "alice.smith".into())].into();
        let mapped = map_users(manifest.clone(), &map).unwrap();
        let targets: Vec<&str> = mapped.entries.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "Users/alice.smith",
                "Users/alice.smith/Documents/a.doc",
                "Users/bob/b.doc"
            ]
        );
        for bad in ["..", "a/b", "", "."] {
            let map: BTreeMap<String, String> = [("alice".into(), bad.into())].into();
            assert!(map_users(manifest.clone(), &map).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parents() {
        assert_eq!(parent_rel("Users/alice/a.doc"), "Users/alice");
        assert_eq!(parent_rel("Users"), "");
    }
}
