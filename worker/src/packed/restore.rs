//! Restoring a packed capture into the Windows 7 layout under a root.
//!
//! 1. The manifest is fetched and opened (`open_manifest` validates every entry: no `..`,
//!    absolute paths, drive letters, UNC paths or duplicate targets get past it) before anything
//!    is written.
//! 2. Directories are created through real directories only ([`SafeRoot`]): a symlink where a
//!    directory is expected fails the restore, it is never followed.
//! 3. Each file is looked at: already there with the manifest's size, mtime and content (an
//!    earlier, interrupted restore) means it is skipped; a different file holding the target is
//!    kept and the incoming one goes to `name(1).ext` (USMT's rule, as the hard-link restore
//!    does), or replaces it with `overwrite`. Where each file goes is recorded in the
//!    [journal](super::journal) before any is written.
//! 4. Chunks are fetched in batches (one batch ahead of the writers), opened in parallel
//!    (`open_chunk` verifies the AEAD tag and the id) and written to a temporary name in the
//!    target directory; the whole-file content hash is checked, mode and mtime set, and the file
//!    renamed into place. A corrupt chunk fails the restore naming the file and the chunk.
//! 5. Symlinks that stay inside their profile are recreated last; directory modes and mtimes
//!    are set deepest first; the filesystem is synced once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use fleetmig_format::{EntryKind, FleetKey, MigrationKey, PackedEntry, PackedManifest};
use fleetmig_state::layout::WIN7_PROFILES_DIR;
use fleetmig_state::{Phase, ProgressSink};
use rayon::prelude::*;
use serde::Serialize;

use super::journal::RestoreJournal;
use super::progress::Ticker;
use super::safe_fs::{self, DirCache, Found, SafeRoot};
use super::store::ChunkStore;
use super::write::{self, How, Job};
use crate::error::{Error, Result};

/// Highest `name(n).ext` tried before giving up on a collision.
pub const MAX_COLLISION_INDEX: u32 = 10_000;
/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Replace a different file at a target instead of restoring as `name(1).ext`.
    pub overwrite: bool,
    /// Record files that cannot be written as skipped instead of failing (corrupt chunks always
    /// fail).
    pub continue_on_error: bool,
    /// Profiles to rename on the way in (USMT `/mu`): captured name → new name.
    pub user_map: BTreeMap<String, String>,
    /// The restore journal file, if any (see [`super::journal`]).
    pub journal: Option<PathBuf>,
    /// Estimated plaintext bytes per fetch batch.
    pub batch_bytes: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            overwrite: false,
            continue_on_error: false,
            user_map: BTreeMap::new(),
            journal: None,
            batch_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// Profiles restored, under their new names.
    pub users: Vec<String>,
    /// Files written by this run (renamed and overwritten ones included).
    pub files_written: u64,
    /// Files found already in place (an earlier run), not written again.
    pub files_already_present: u64,
    /// Bytes of all restored files.
    pub bytes: u64,
    /// Bytes written by this run.
    pub bytes_written: u64,
    /// Directory entries applied.
    pub dirs: u64,
    /// Symlinks created or already present.
    pub symlinks: u64,
    /// Symlinks not recreated because they point outside their profile (targets).
    pub symlinks_skipped: Vec<String>,
    /// Files restored under a collision name: (target, actual path).
    pub renamed: Vec<(String, String)>,
    /// Different files replaced (`overwrite`).
    pub overwritten: Vec<String>,
    /// Files not restored under `continue_on_error`: (target, reason).
    pub skipped: Vec<(String, String)>,
    /// Chunks fetched.
    pub chunks_fetched: u64,
    /// Sealed bytes fetched.
    pub sealed_bytes_fetched: u64,
}

/// Fetches and opens the manifest of `store`. Returns it with the plain BLAKE3 (hex) of its
/// sealed bytes.
pub fn fetch_manifest(
    store: &dyn ChunkStore,
    key: &MigrationKey,
) -> Result<(PackedManifest, String)> {
    let sealed = store.manifest()?;
    let digest = blake3::hash(&sealed).to_hex().to_string();
    let manifest = fleetmig_format::open_manifest(key, &sealed)?;
    Ok((manifest, digest))
}

/// Rewrites the targets of users in `user_map` from `Users/<old>/…` to `Users/<new>/…`.
pub fn map_users(
    mut manifest: PackedManifest,
    user_map: &BTreeMap<String, String>,
) -> Result<PackedManifest> {
    if user_map.contains_key("") {
        // Machine-wide entries have no user: an empty name would move them
        // into a profile (found by the restore_paths fuzz target).
        return Err(Error::BadArguments(
            "user map source \"\" names no user".to_string(),
        ));
    }
    for new in user_map.values() {
        let plain =
            !new.is_empty() && !new.contains('/') && super::select::unrepresentable(new).is_none();
        if !plain {
            return Err(Error::BadArguments(format!(
                "user map target {new:?} is not a usable profile name"
            )));
        }
    }
    if user_map.is_empty() {
        return Ok(manifest);
    }
    for entry in &mut manifest.entries {
        let Some(new) = user_map.get(&entry.user) else {
            continue;
        };
        // Validated on open: the target is `Users/<user>/<rest>`.
        let rest = entry.target.splitn(3, '/').nth(2).unwrap_or_default();
        entry.target = format!("{WIN7_PROFILES_DIR}/{new}/{rest}");
    }
    for user in &mut manifest.users {
        if let Some(new) = user_map.get(user) {
            *user = new.clone();
        }
    }
    Ok(manifest)
}

/// `name(n).ext` of a relative target.
pub fn collision_rel(target: &str, index: u32) -> String {
    fleetmig_state::restore::collision_name(Path::new(target), index)
        .to_string_lossy()
        .into_owned()
}

/// What is at a path, with the content compared to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    /// Same size, mtime and content; `mode_differs` when only the permission bits changed.
    Matches {
        mode_differs: bool,
    },
    Differs,
    IsDir,
}

/// Looks at `rel` and compares it with `entry` (content only when size and mtime match).
fn inspect(cache: &mut DirCache<'_>, root: &Path, rel: &str, entry: &PackedEntry) -> Result<State> {
    let (parent, name) = safe_fs::split_parent(rel);
    let dir = cache.get(parent)?;
    let found = safe_fs::look(dir, name).map_err(|error| Error::io(root.join(rel), error))?;
    Ok(match found {
        Found::Nothing => State::Absent,
        Found::Dir => State::IsDir,
        Found::Other => State::Differs,
        Found::File {
            size,
            mtime_ns,
            mode,
        } => {
            if size != entry.size || mtime_ns != entry.mtime_ns {
                State::Differs
            } else {
                let hash = safe_fs::hash_file(dir, name)
                    .map_err(|error| Error::io(root.join(rel), error))?;
                if hash.to_hex().eq_ignore_ascii_case(&entry.content_hash) {
                    State::Matches {
                        mode_differs: mode != entry.mode & 0o7777,
                    }
                } else {
                    State::Differs
                }
            }
        }
    })
}

/// Restores `manifest` (from [`fetch_manifest`]) out of `store` into `root`.
pub fn restore(
    store: &dyn ChunkStore,
    root: &Path,
    fleet: &FleetKey,
    manifest: &PackedManifest,
    opts: &RestoreOptions,
    progress: &dyn ProgressSink,
) -> Result<RestoreReport> {
    let manifest = map_users(manifest.clone(), &opts.user_map)?;
    let safe = SafeRoot::open(root)?;
    let root = safe.path().to_path_buf();
    tracing::info!(store = %store.location(), root = %root.display(), entries = manifest.entries.len(), "packed restore started");
    let mut report = RestoreReport {
        users: manifest.users.clone(),
        ..RestoreReport::default()
    };

    // Directories first, through real directories only.
    let mut dirs: BTreeSet<Vec<&str>> = BTreeSet::new();
    for entry in &manifest.entries {
        let dir = match entry.kind {
            EntryKind::Dir => entry.target.as_str(),
            _ => safe_fs::split_parent(&entry.target).0,
        };
        if !dir.is_empty() {
            dirs.insert(dir.split('/').collect());
        }
    }
    safe.ensure_dirs(&dirs)?;

    let files: Vec<&PackedEntry> = manifest
        .entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::File)
        .collect();
    report.bytes = files.iter().map(|entry| entry.size).sum();
    let ticker = Ticker::new(progress, Phase::Applying, files.len() as u64, report.bytes);
    let capture = format!("{}@{}", manifest.migration_id, manifest.created_unix_ms);
    let mut journal = opts
        .journal
        .as_deref()
        .map(|path| RestoreJournal::load(path, &capture));
    let jobs = plan(
        &safe,
        &manifest,
        &files,
        journal.as_ref(),
        opts,
        &mut report,
    )?;
    ticker.add(report.files_already_present, 0);
    if let Some(journal) = journal.as_mut() {
        journal.record(
            jobs.iter()
                .map(|job| (job.entry.target.clone(), job.actual.clone())),
        )?;
    }
    write::write_files(store, fleet, &safe, &jobs, opts, &ticker, &mut report)?;
    ticker.flush(None);

    for entry in manifest
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Symlink)
    {
        if place_symlink(&safe, entry)? {
            report.symlinks += 1;
        } else {
            report.symlinks_skipped.push(entry.target.clone());
        }
    }
    // Directory modes and mtimes last (creating files changes them), deepest first.
    let mut dir_entries: Vec<&PackedEntry> = manifest
        .entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::Dir)
        .collect();
    dir_entries.sort_by_key(|entry| std::cmp::Reverse(entry.target.matches('/').count()));
    for entry in &dir_entries {
        let fd = safe.open_dir(&entry.target)?;
        safe_fs::set_mode_and_mtime(fd.as_fd(), entry.mode, entry.mtime_ns)
            .map_err(|error| Error::io(root.join(&entry.target), error))?;
    }
    report.dirs = dir_entries.len() as u64;
    rustix::fs::syncfs(safe.fd()).map_err(|errno| Error::io(&root, errno.into()))?;
    tracing::info!(
        root = %root.display(),
        written = report.files_written,
        already_present = report.files_already_present,
        renamed = report.renamed.len(),
        chunks = report.chunks_fetched,
        "packed restore finished"
    );
    Ok(report)
}

/// Decides where every file goes (see the module docs); records files already in place in
/// `report`, returns the files to write.
fn plan<'m>(
    safe: &SafeRoot,
    manifest: &'m PackedManifest,
    files: &[&'m PackedEntry],
    journal: Option<&RestoreJournal>,
    opts: &RestoreOptions,
    report: &mut RestoreReport,
) -> Result<Vec<Job<'m>>> {
    let root = safe.path();
    // Where each file is looked for first: its journal place, else its target.
    let first_look: Vec<(&str, bool)> = files
        .iter()
        .map(
            |entry| match journal.and_then(|journal| journal.placed(&entry.target)) {
                Some(actual) => (actual, true),
                None => (entry.target.as_str(), false),
            },
        )
        .collect();
    let states: Vec<Result<State>> = files
        .par_iter()
        .zip(&first_look)
        .map_init(
            || DirCache::new(safe),
            |cache, (entry, (path, _))| inspect(cache, root, path, entry),
        )
        .collect();
    let targets: HashSet<&str> = manifest
        .entries
        .iter()
        .map(|entry| entry.target.as_str())
        .collect();
    let mut claimed: HashSet<String> = HashSet::with_capacity(files.len());
    let mut cache = DirCache::new(safe);
    let mut jobs = Vec::new();
    for ((entry, (path, journaled)), state) in files.iter().zip(&first_look).zip(states) {
        let state = match state {
            Ok(state) => state,
            Err(error)
                if opts.continue_on_error
                    && !matches!(
                        error,
                        Error::State(fleetmig_state::Error::PathEscapes { .. })
                    ) =>
            {
                report
                    .skipped
                    .push((entry.target.clone(), error.to_string()));
                continue;
            }
            Err(error) => return Err(error),
        };
        let decision = if *journaled {
            match state {
                State::Matches { mode_differs } => {
                    Decision::Present(path.to_string(), mode_differs)
                }
                _ => Decision::Write(path.to_string(), How::Again),
            }
        } else {
            let owned = !claimed.contains(*path);
            match state {
                State::Absent if owned => Decision::Write(path.to_string(), How::New),
                State::Matches { mode_differs } if owned => {
                    Decision::Present(path.to_string(), mode_differs)
                }
                State::Differs if owned && opts.overwrite => {
                    Decision::Write(path.to_string(), How::Overwrite)
                }
                _ => collide(&mut cache, root, entry, &targets, &claimed)?,
            }
        };
        match decision {
            Decision::Write(actual, how) => {
                claimed.insert(actual.clone());
                jobs.push(Job { entry, actual, how });
            }
            Decision::Present(actual, mode_differs) => {
                fix_mode(safe, &actual, entry, mode_differs);
                present(report, entry, &actual);
                claimed.insert(actual);
            }
            Decision::Nowhere => {
                let error = Error::io(
                    root.join(&entry.target),
                    std::io::Error::other("too many colliding names"),
                );
                if !opts.continue_on_error {
                    return Err(error);
                }
                report
                    .skipped
                    .push((entry.target.clone(), error.to_string()));
            }
        }
    }
    Ok(jobs)
}

/// Where a file goes.
enum Decision {
    Write(String, How),
    /// Already there (at this path); whether only its permission bits differ.
    Present(String, bool),
    /// No free collision name.
    Nowhere,
}

/// A collision: the first free `name(n).ext` (not another entry's target), or one already
/// holding this very file.
fn collide(
    cache: &mut DirCache<'_>,
    root: &Path,
    entry: &PackedEntry,
    targets: &HashSet<&str>,
    claimed: &HashSet<String>,
) -> Result<Decision> {
    for index in 1..=MAX_COLLISION_INDEX {
        let candidate = collision_rel(&entry.target, index);
        if targets.contains(candidate.as_str()) || claimed.contains(&candidate) {
            continue;
        }
        match inspect(cache, root, &candidate, entry)? {
            State::Absent => return Ok(Decision::Write(candidate, How::Renamed)),
            State::Matches { mode_differs } => {
                return Ok(Decision::Present(candidate, mode_differs));
            }
            State::Differs | State::IsDir => {}
        }
    }
    Ok(Decision::Nowhere)
}

/// Records a file found in place.
fn present(report: &mut RestoreReport, entry: &PackedEntry, actual: &str) {
    report.files_already_present += 1;
    if actual != entry.target {
        report
            .renamed
            .push((entry.target.clone(), actual.to_owned()));
    }
}

/// Puts the manifest's permission bits back on a file found in place (best effort: verify
/// reports what is still wrong).
fn fix_mode(safe: &SafeRoot, rel: &str, entry: &PackedEntry, mode_differs: bool) {
    if !mode_differs {
        return;
    }
    let (parent, name) = safe_fs::split_parent(rel);
    let fixed = safe.open_dir(parent).ok().and_then(|dir| {
        let flags =
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir.as_fd(), name, flags, rustix::fs::Mode::empty()).ok()?;
        rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(entry.mode & 0o7777)).ok()
    });
    if fixed.is_none() {
        tracing::warn!(
            target = rel,
            "cannot restore the permission bits of a file already in place"
        );
    }
}

/// Whether a symlink at profile-relative `rel` with link text `text` resolves outside the
/// profile (lexically; absolute links always do) — the hard-link engine's rule.
pub fn symlink_escapes(rel: &str, text: &str) -> bool {
    if text.starts_with('/') {
        return true;
    }
    let mut depth: Vec<&str> = rel.split('/').filter(|part| !part.is_empty()).collect();
    depth.pop();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if depth.pop().is_none() {
                    return true;
                }
            }
            other => depth.push(other),
        }
    }
    false
}

/// Recreates a symlink that stays inside its profile (checked where it was captured and where
/// it lands); returns false when it is not recreated.
fn place_symlink(safe: &SafeRoot, entry: &PackedEntry) -> Result<bool> {
    let Some(text) = entry.link_target.as_deref() else {
        return Ok(false);
    };
    let source_rel = if entry.user.is_empty() {
        entry.source.as_str()
    } else {
        entry.source.splitn(3, '/').nth(2).unwrap_or("")
    };
    let target_rel = entry.target.splitn(3, '/').nth(2).unwrap_or("");
    if symlink_escapes(source_rel, text) || symlink_escapes(target_rel, text) {
        return Ok(false);
    }
    let (parent, name) = safe_fs::split_parent(&entry.target);
    let dir = safe.open_dir(parent)?;
    for index in 0..=MAX_COLLISION_INDEX {
        let candidate = if index == 0 {
            name.to_owned()
        } else {
            collision_rel(name, index)
        };
        match rustix::fs::symlinkat(text, dir.as_fd(), candidate.as_str()) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::EXIST) => {
                let existing = rustix::fs::readlinkat(dir.as_fd(), candidate.as_str(), Vec::new());
                if existing.is_ok_and(|existing| existing.as_bytes() == text.as_bytes()) {
                    return Ok(true);
                }
            }
            Err(errno) => {
                return Err(Error::io(safe.path().join(&entry.target), errno.into()));
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_format::ChunkId;

    fn entry(target: &str, chunks: Vec<ChunkId>, size: u64) -> PackedEntry {
        PackedEntry {
            kind: EntryKind::File,
            user: "alice".into(),
            source: String::new(),
            target: target.into(),
            size,
            mtime_ns: 0,
            mode: 0o100644,
            link_target: None,
            content_hash: String::new(),
            chunks,
        }
    }

    #[test]
    fn escape_rule_matches_the_engine() {
        assert!(symlink_escapes("a/link", "/etc"));
        assert!(symlink_escapes("link", "../x"));
        assert!(!symlink_escapes("a/link", "../b/c"));
        assert!(!symlink_escapes("a/b/link", "./../c"));
    }

    #[test]
    fn user_map_rewrites_targets() {
        let mut manifest = PackedManifest::new("m", "PC");
        manifest.users = vec!["alice".into()];
        manifest
            .entries
            .push(entry("Users/alice/Documents/a.doc", vec![], 0));
        let map: BTreeMap<String, String> = [("alice".into(), "asmith".into())].into();
        let mapped = map_users(manifest.clone(), &map).unwrap();
        assert_eq!(mapped.entries[0].target, "Users/asmith/Documents/a.doc");
        assert_eq!(mapped.users, ["asmith"]);
        for bad in ["..", "a/b", "", "C:x"] {
            let map: BTreeMap<String, String> = [("alice".into(), bad.into())].into();
            assert!(map_users(manifest.clone(), &map).is_err(), "{bad:?}");
        }
        let machine_wide: BTreeMap<String, String> = [(String::new(), "asmith".into())].into();
        assert!(
            map_users(manifest.clone(), &machine_wide).is_err(),
            "an empty source name would move machine-wide entries into a profile"
        );
    }
}
