//! What a packed capture takes: exactly what the hard-link capture
//! ([`fleetmig_state::capture`]) would link, with the same targets, so a replace restore
//! produces the tree a refresh restore would.
//!
//! The walk mirrors the engine's: the selected profiles (user filter and `NTUSER.DAT` age via
//! [`fleetmig_state::CaptureOptions::wants_profile`]), then the machine-wide roots of
//! System-context rules; per directory the selection's [`DirDecision`], per file its target;
//! directories in parallel with rayon; symlinks recorded, never followed; FIFOs, sockets and
//! devices always skipped; unreadable entries and names that are not UTF-8 fail the capture
//! unless `continue_on_error`. Unlike the engine it only reads metadata (no store is written),
//! and it also keeps each file's inode, device and ctime for the [metadata cache](super::cache).
//!
//! Two things the packed manifest cannot hold are adapted (see [`adapt_targets`]): the profile
//! directory itself (`Users/<user>`, which the format refuses as a target: it is recreated as
//! the parent of the profile's content, without its mode and mtime), and targets that are
//! equal ignoring ASCII case (the format refuses them, as Windows would clash): a second
//! directory is merged into the first, a second file or symlink gets the USMT collision name
//! `name(1).ext`. Names the format refuses (a backslash, a drive-letter-like `X:` prefix) can
//! never be packed and are always skipped and listed, like FIFOs.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use fleetmig_format::EntryKind;
use fleetmig_state::CaptureOptions;
use fleetmig_state::layout::{DirDecision, WIN7_PROFILES_DIR, XP_PROFILES_DIR};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// One entry the capture takes, with the metadata read during the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// The profile, empty for machine-wide entries.
    pub user: String,
    /// Path relative to the machine root, '/'-separated.
    pub source: String,
    /// Windows 7 target relative to the machine root.
    pub target: String,
    /// Size in bytes (files), 0 otherwise.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the epoch (cache key).
    pub ctime_ns: i64,
    /// Full `st_mode`.
    pub mode: u32,
    /// Inode (cache key).
    pub ino: u64,
    /// Device (cache key).
    pub dev: u64,
    /// Link text of a symlink.
    pub link_target: Option<String>,
}

/// Everything the walk decided.
#[derive(Debug, Default)]
pub struct Selected {
    /// Profiles captured, sorted.
    pub users: Vec<String>,
    /// Entries, sorted by source path (directories before their content).
    pub entries: Vec<Candidate>,
    /// Files left out by the selection rules.
    pub excluded_files: u64,
    /// Entries that could not be captured: (source path, reason).
    pub skipped: Vec<(String, String)>,
    /// Directories captured, profile directories and merged ones included (what the
    /// hard-link capture reports as `dirs`).
    pub dirs: u64,
    /// Entries given another target because theirs clashed: (source, new target).
    pub renamed: Vec<(String, String)>,
}

/// Walks the XP machine at `root` with the capture's user filter and selection.
/// `skip_dir` is a directory never walked (a local store placed inside the machine root).
pub fn select(root: &Path, opts: &CaptureOptions, skip_dir: Option<&Path>) -> Result<Selected> {
    let profiles_dir = root.join(XP_PROFILES_DIR);
    if !profiles_dir.is_dir() {
        return Err(fleetmig_state::Error::NotAnXpMachine {
            path: root.to_path_buf(),
            reason: format!("no {XP_PROFILES_DIR} directory"),
        }
        .into());
    }
    let users: Vec<String> = fleetmig_state::inventory::profile_names(&profiles_dir)?
        .into_iter()
        .filter(|user| opts.wants_profile(root, user))
        .collect();
    let skip_id = skip_dir
        .and_then(|dir| fs::metadata(dir).ok())
        .map(|meta| (meta.dev(), meta.ino()));
    let walker = Walker {
        root,
        profiles_dir: &profiles_dir,
        skip_id,
        opts,
    };
    let mut outputs: Vec<Output> = users
        .par_iter()
        .map(|user| walker.user(user))
        .collect::<Result<_>>()?;
    let system: Vec<Output> = opts
        .selection
        .system_roots()
        .par_iter()
        .map(|rel| walker.system_root(rel))
        .collect::<Result<_>>()?;
    outputs.extend(system);
    let mut selected = Selected {
        dirs: users.len() as u64,
        users,
        ..Selected::default()
    };
    for output in outputs {
        selected.entries.extend(output.entries);
        selected.skipped.extend(output.skipped);
        selected.excluded_files += output.excluded_files;
    }
    selected
        .entries
        .par_sort_unstable_by(|a, b| a.source.cmp(&b.source));
    selected.skipped.sort();
    selected.dirs += selected
        .entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::Dir)
        .count() as u64;
    selected.renamed = adapt_targets(&mut selected.entries);
    Ok(selected)
}

/// Makes targets unique ignoring ASCII case, as the packed manifest requires: a directory whose
/// target is taken is dropped (its content lands in the existing one), a file or symlink whose
/// target is taken gets the first free `name(n).ext`. Returns (source, new target) of each
/// renamed entry.
pub fn adapt_targets(entries: &mut Vec<Candidate>) -> Vec<(String, String)> {
    // The first entry naming a target owns it; later ones move, to names nobody owns.
    let mut taken: HashSet<String> = HashSet::with_capacity(entries.len());
    let owner: Vec<bool> = entries
        .iter()
        .map(|entry| taken.insert(entry.target.to_ascii_lowercase()))
        .collect();
    let mut renamed = Vec::new();
    let mut index = 0;
    entries.retain_mut(|entry| {
        let owns = owner[index];
        index += 1;
        if owns {
            return true;
        }
        if entry.kind == EntryKind::Dir {
            return false;
        }
        let original = PathBuf::from(&entry.target);
        for n in 1..=10_000u32 {
            let candidate = fleetmig_state::restore::collision_name(&original, n)
                .to_string_lossy()
                .into_owned();
            if taken.insert(candidate.to_ascii_lowercase()) {
                tracing::warn!(source = %entry.source, target = %entry.target, renamed = %candidate, "two captured entries share a target; renamed the second");
                renamed.push((entry.source.clone(), candidate.clone()));
                entry.target = candidate;
                return true;
            }
        }
        false
    });
    renamed
}

/// Why the packed format cannot hold this relative path, if it cannot (the same rules as
/// `fleetmig_format::PackedManifest::validate` applies to sources and targets).
pub fn unrepresentable(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("empty path".to_owned());
    }
    if path.contains('\0') {
        return Some("contains a nul byte".to_owned());
    }
    if path.contains('\\') {
        return Some("contains a backslash, which the packed format refuses".to_owned());
    }
    if path.starts_with('/') {
        return Some("absolute path".to_owned());
    }
    for part in path.split('/') {
        if matches!(part, "" | "." | "..") {
            return Some(format!("{part:?} component"));
        }
        let bytes = part.as_bytes();
        if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return Some(format!(
                "{part:?} looks like a drive letter, which the packed format refuses"
            ));
        }
    }
    None
}

/// What one walk task found.
#[derive(Default)]
struct Output {
    entries: Vec<Candidate>,
    skipped: Vec<(String, String)>,
    excluded_files: u64,
}

impl Output {
    fn merge(&mut self, other: Output) {
        self.entries.extend(other.entries);
        self.skipped.extend(other.skipped);
        self.excluded_files += other.excluded_files;
    }
}

/// Read-only state of one walk.
struct Walker<'a> {
    root: &'a Path,
    profiles_dir: &'a Path,
    /// (device, inode) of a directory never walked.
    skip_id: Option<(u64, u64)>,
    opts: &'a CaptureOptions,
}

impl Walker<'_> {
    fn user(&self, user: &String) -> Result<Output> {
        let mut output = Output::default();
        if matches!(
            self.opts.selection.decide_user_dir(user, ""),
            DirDecision::Walk(_)
        ) {
            output.merge(self.dir(user, String::new())?);
        } else {
            output.excluded_files +=
                fleetmig_state::hardlink::count_files(&self.profiles_dir.join(user));
        }
        Ok(output)
    }

    fn system_root(&self, rel: &str) -> Result<Output> {
        let path = join(self.root, rel);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Output::default());
            }
            Err(error) => return self.skip_or_fail("", rel, io_error(&path, error)),
        };
        if !meta.is_dir() || Some((meta.dev(), meta.ino())) == self.skip_id {
            return Ok(Output::default());
        }
        let DirDecision::Walk(target) = self.opts.selection.decide_system_dir(rel) else {
            return Ok(Output::default());
        };
        let mut output = Output::default();
        if !rel.is_empty() {
            if let Some(reason) = unrepresentable(rel).or_else(|| unrepresentable(&target)) {
                output.skipped.push((rel.to_owned(), reason));
                return Ok(output);
            }
            output
                .entries
                .push(candidate(EntryKind::Dir, "", rel.to_owned(), target, &meta));
        }
        output.merge(self.dir("", rel.to_owned())?);
        Ok(output)
    }

    fn base(&self, user: &str) -> PathBuf {
        if user.is_empty() {
            self.root.to_path_buf()
        } else {
            self.profiles_dir.join(user)
        }
    }

    /// Walks one directory (`rel` from the tree's base), recursing in parallel.
    fn dir(&self, user: &str, rel: String) -> Result<Output> {
        let path = join(&self.base(user), &rel);
        let reader = match fs::read_dir(&path) {
            Ok(reader) => reader,
            Err(error) => return self.skip_or_fail(user, &rel, io_error(&path, error)),
        };
        let mut output = Output::default();
        let mut subdirs = Vec::new();
        for item in reader {
            let item = match item {
                Ok(item) => item,
                Err(error) => {
                    self.record_failure(&mut output, user, &rel, io_error(&path, error))?;
                    continue;
                }
            };
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                let lossy = name.to_string_lossy().into_owned();
                let error = fleetmig_state::Error::NonUtf8Name {
                    path: path.join(&name),
                };
                self.record_failure(&mut output, user, &child(&rel, &lossy), error.into())?;
                continue;
            };
            let child_rel = child(&rel, name);
            let meta = match item.metadata() {
                Ok(meta) => meta,
                Err(error) => {
                    let wanted = self.decide_file(user, &child_rel).is_some()
                        || matches!(self.decide_dir(user, &child_rel), DirDecision::Walk(_));
                    if wanted {
                        let error = io_error(&path.join(name), error);
                        self.record_failure(&mut output, user, &child_rel, error)?;
                    }
                    continue;
                }
            };
            let file_type = meta.file_type();
            let decided = if file_type.is_dir() {
                if user.is_empty() && Some((meta.dev(), meta.ino())) == self.skip_id {
                    continue;
                }
                match self.decide_dir(user, &child_rel) {
                    DirDecision::Walk(target) => Some(target),
                    DirDecision::Excluded => None,
                    DirDecision::OutOfScope => continue,
                }
            } else {
                self.decide_file(user, &child_rel)
            };
            let Some(target) = decided else {
                output.excluded_files += if file_type.is_dir() {
                    fleetmig_state::hardlink::count_files(&path.join(name))
                } else {
                    u64::from(file_type.is_file())
                };
                continue;
            };
            let source = source_of(user, &child_rel);
            let kind = if file_type.is_dir() {
                EntryKind::Dir
            } else if file_type.is_file() {
                EntryKind::File
            } else if file_type.is_symlink() {
                EntryKind::Symlink
            } else {
                output.skipped.push((
                    source,
                    "not a regular file, directory or symlink".to_owned(),
                ));
                continue;
            };
            if let Some(reason) = unrepresentable(&source).or_else(|| unrepresentable(&target)) {
                output.skipped.push((source, reason));
                continue;
            }
            let mut entry = candidate(kind, user, source, target, &meta);
            match kind {
                EntryKind::Dir => subdirs.push(child_rel),
                EntryKind::Symlink => match read_link_text(&path.join(name)) {
                    Ok(text) => entry.link_target = Some(text),
                    Err(error) => {
                        self.record_failure(&mut output, user, &child_rel, error)?;
                        continue;
                    }
                },
                EntryKind::File => {}
            }
            output.entries.push(entry);
        }
        let children: Vec<Output> = subdirs
            .into_par_iter()
            .map(|sub| self.dir(user, sub))
            .collect::<Result<_>>()?;
        for sub in children {
            output.merge(sub);
        }
        Ok(output)
    }

    fn decide_dir(&self, user: &str, rel: &str) -> DirDecision {
        if user.is_empty() {
            self.opts.selection.decide_system_dir(rel)
        } else {
            self.opts.selection.decide_user_dir(user, rel)
        }
    }

    fn decide_file(&self, user: &str, rel: &str) -> Option<String> {
        if user.is_empty() {
            self.opts.selection.decide_system_file(rel)
        } else {
            self.opts.selection.decide_user_file(user, rel)
        }
    }

    /// A per-entry failure: recorded when continuing on errors, else returned.
    fn record_failure(
        &self,
        output: &mut Output,
        user: &str,
        rel: &str,
        error: Error,
    ) -> Result<()> {
        if !self.opts.continue_on_error {
            return Err(error);
        }
        tracing::warn!(user, path = rel, %error, "skipping entry");
        output
            .skipped
            .push((source_of(user, rel), error.to_string()));
        Ok(())
    }

    fn skip_or_fail(&self, user: &str, rel: &str, error: Error) -> Result<Output> {
        let mut output = Output::default();
        self.record_failure(&mut output, user, rel, error)?;
        Ok(output)
    }
}

fn candidate(
    kind: EntryKind,
    user: &str,
    source: String,
    target: String,
    meta: &fs::Metadata,
) -> Candidate {
    Candidate {
        kind,
        user: user.to_owned(),
        source,
        target,
        size: if kind == EntryKind::File {
            meta.size()
        } else {
            0
        },
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        mode: meta.mode(),
        ino: meta.ino(),
        dev: meta.dev(),
        link_target: None,
    }
}

fn read_link_text(path: &Path) -> Result<String> {
    let text = fs::read_link(path).map_err(|error| io_error(path, error))?;
    text.into_os_string().into_string().map_err(|_| {
        fleetmig_state::Error::NonUtf8Name {
            path: path.to_path_buf(),
        }
        .into()
    })
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    fleetmig_state::Error::Io {
        path: path.to_path_buf(),
        source,
    }
    .into()
}

/// `rel/name`, or `name` at the top.
fn child(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// The source path (relative to the machine root) of a walk's relative path.
fn source_of(user: &str, rel: &str) -> String {
    if user.is_empty() {
        rel.to_owned()
    } else if rel.is_empty() {
        format!("{XP_PROFILES_DIR}/{user}")
    } else {
        format!("{XP_PROFILES_DIR}/{user}/{rel}")
    }
}

/// Joins a '/'-separated relative path ("" for `base` itself).
pub fn join(base: &Path, rel: &str) -> PathBuf {
    let mut path = base.to_path_buf();
    if !rel.is_empty() {
        path.extend(rel.split('/'));
    }
    path
}

/// The profile directory of `user` on Windows 7, relative to the root.
pub fn profile_target(user: &str) -> String {
    format!("{WIN7_PROFILES_DIR}/{user}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_state::manifest::Manifest;
    use fleetmig_state::{GenOptions, NoProgress, generate_machine};

    /// The packed selection is the hard-link capture's, entry for entry.
    #[test]
    fn selects_what_the_hard_link_capture_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("xp");
        let opts = GenOptions {
            seed: 5,
            users: 2,
            files_per_user: 150,
            hostname: Some("PC-05".into()),
        };
        generate_machine(&root, &opts).unwrap();
        let capture = CaptureOptions::new("j");
        let selected = select(&root, &capture, None).unwrap();

        let store = dir.path().join("store");
        let report = fleetmig_state::capture(&root, &store, &capture, &NoProgress).unwrap();
        let manifest = Manifest::load_sealed(&store).unwrap();
        let kind_name = |kind: fleetmig_state::EntryKind| format!("{kind:?}").to_lowercase();
        // The hard-link capture's entries, minus profile directories (the packed manifest
        // cannot list them) and directories whose target an earlier one has (merged).
        let mut seen = HashSet::new();
        let mut hard: Vec<(String, String, String)> = manifest
            .entries
            .iter()
            .filter(|entry| entry.user.is_empty() || entry.target != profile_target(&entry.user))
            .map(|entry| {
                (
                    entry.source.clone(),
                    entry.target.clone(),
                    kind_name(entry.kind),
                )
            })
            .collect();
        hard.sort();
        hard.retain(|(_, target, kind)| kind != "dir" || seen.insert(target.to_ascii_lowercase()));
        let mut packed: Vec<(String, String, String)> = selected
            .entries
            .iter()
            .map(|entry| {
                let kind = format!("{:?}", entry.kind).to_lowercase();
                (entry.source.clone(), entry.target.clone(), kind)
            })
            .collect();
        packed.sort();
        assert_eq!(hard, packed);
        assert_eq!(selected.excluded_files, report.excluded_files);
        assert_eq!(selected.users, report.users);
        assert!(selected.skipped.is_empty(), "{:?}", selected.skipped);
        assert!(selected.renamed.is_empty(), "{:?}", selected.renamed);
    }

    #[test]
    fn representable_paths() {
        assert!(unrepresentable("Users/alice/Documents/a.doc").is_none());
        assert!(unrepresentable("Users/alice/a\\b.doc").is_some());
        assert!(unrepresentable("Users/alice/C:evil").is_some());
        assert!(unrepresentable("Users/alice/ab:c").is_none());
        assert!(unrepresentable("/abs").is_some());
        assert!(unrepresentable("a//b").is_some());
    }

    fn file(source: &str, target: &str, kind: EntryKind) -> Candidate {
        Candidate {
            kind,
            user: "alice".into(),
            source: source.into(),
            target: target.into(),
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            mode: 0,
            ino: 0,
            dev: 0,
            link_target: None,
        }
    }

    #[test]
    fn clashing_targets_are_merged_or_renamed() {
        let mut entries = vec![
            file("a/Local", "Users/alice/AppData/Local", EntryKind::Dir),
            file("a/Local/App", "Users/alice/AppData/Local", EntryKind::Dir),
            file(
                "a/x.doc",
                "Users/alice/AppData/Local/x.doc",
                EntryKind::File,
            ),
            file(
                "a/App/X.DOC",
                "Users/alice/AppData/Local/X.DOC",
                EntryKind::File,
            ),
            file(
                "a/App/x(1).doc",
                "Users/alice/AppData/Local/x(1).doc",
                EntryKind::File,
            ),
        ];
        let renamed = adapt_targets(&mut entries);
        let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "Users/alice/AppData/Local",
                "Users/alice/AppData/Local/x.doc",
                "Users/alice/AppData/Local/X(2).DOC",
                "Users/alice/AppData/Local/x(1).doc",
            ]
        );
        assert_eq!(renamed.len(), 1);
    }
}
