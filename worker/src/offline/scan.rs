//! `scan`: capture the selected profiles into a hard-link or packed store, or only estimate it.
//!
//! The Scanning phase walks the selected profiles once with the capture's selection to learn
//! what will be captured (files, bytes, what will be skipped) and how much space the store
//! needs; `--estimate` stops there. The capture itself is the engine's
//! [`fleetmig_state::capture`], which applies the same user filter and selection, or the packed
//! capture ([`super::packed`]), which selects exactly the same entries.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetmig_state::layout::{DirDecision, WIN7_PROFILES_DIR, XP_PROFILES_DIR};
use fleetmig_state::manifest::{DATA_DIR, EntryKind, Manifest};
use fleetmig_state::users::{UserChoice, UserFilter};
use fleetmig_state::{CaptureOptions, Phase, Progress, ProgressSink, Selection};
use serde::Serialize;

use super::args::ScanArgs;
use super::exit::Code;
use super::output::{Outcome, human_bytes};
use super::progress::Reporter;
use crate::error::{Error, Result};

/// Bytes of a manifest entry besides its paths (keys, numbers, punctuation), rounded up.
const MANIFEST_ENTRY_OVERHEAD: u64 = 160;
/// Space a directory or small file takes at least on a typical filesystem.
const BLOCK: u64 = 4096;
/// Length of the store directory of machine-wide files (`_system`).
const SYSTEM_STORE_DIR_LEN: usize = 7;
/// Scanning reports progress every this many entries.
const SCAN_PROGRESS_EVERY: u64 = 1000;

/// A file the capture skips (or would skip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Source path relative to the machine root.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The summary of `scan`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanSummary {
    /// The machine root, as given.
    pub machine_root: PathBuf,
    /// The store, as given.
    pub store: PathBuf,
    /// `hardlink` or `packed`.
    pub store_kind: String,
    /// The machine's hostname, the domain of its profiles in user patterns.
    pub hostname: String,
    /// True for `--estimate`: nothing was written.
    pub estimate: bool,
    /// Users captured (or that would be).
    pub users: Vec<String>,
    /// Every profile found, with whether and why it is captured.
    pub profiles: Vec<UserChoice>,
    /// Files captured.
    pub files: u64,
    /// Bytes in those files (linked, not copied).
    pub bytes: u64,
    /// Directories captured (profile roots included).
    pub dirs: u64,
    /// Symlinks recorded.
    pub symlinks: u64,
    /// Files left out by the selection rules.
    pub excluded_files: u64,
    /// Files that were (or would be) skipped.
    pub skipped: Vec<Skipped>,
    /// Seal of the written manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Estimated store size: for a hard-link store, the manifest and the store's directories.
    pub store_bytes_needed: u64,
    /// Free space where the store goes.
    pub free_bytes: u64,
    /// Constructs of the `--rules` files that are not honoured (`file:line:column: message`).
    pub rule_warnings: Vec<String>,
    /// Where `--list-files` wrote the captured paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_files: Option<PathBuf>,
    /// Wall time.
    pub seconds: f64,
}

/// Runs `scan`.
pub fn run(args: &ScanArgs, reporter: &Reporter) -> Result<Outcome> {
    let started = Instant::now();
    if args.hardlink == args.packed {
        return Err(Error::BadArguments(
            "pass exactly one of --hardlink (hard-link store) and --packed (packed store)"
                .to_owned(),
        ));
    }
    let filter = UserFilter {
        include: args.user_include.clone(),
        exclude: args.user_exclude.clone(),
        exclude_older_than: args
            .user_exclude_older_than
            .map(|days| Duration::from_secs(days.saturating_mul(86_400))),
    };
    filter.validate().map_err(Error::BadArguments)?;
    let root = &args.machine_root;
    if !root.join(XP_PROFILES_DIR).is_dir() {
        return Err(Error::BadArguments(format!(
            "machine root {} is not a windows xp machine (no {XP_PROFILES_DIR} directory)",
            root.display()
        )));
    }
    let rules = super::rules::load(&args.rules)?;

    let profiles = fleetmig_state::users::select(root, &filter)?;
    let users: Vec<String> = profiles
        .iter()
        .filter(|choice| choice.selected)
        .map(|choice| choice.name.clone())
        .collect();
    let scanned = scan_trees(
        root,
        &args.store,
        &users,
        &rules.selection,
        args.list_files.is_some(),
        reporter,
    );
    let free_bytes = free_space(&args.store)?;
    let mut summary = ScanSummary {
        machine_root: root.clone(),
        store: args.store.clone(),
        store_kind: if args.packed { "packed" } else { "hardlink" }.to_owned(),
        hostname: fleetmig_state::inventory::read_hostname(root),
        estimate: args.estimate,
        users,
        profiles,
        files: scanned.files,
        bytes: scanned.bytes,
        dirs: scanned.dirs,
        symlinks: scanned.symlinks,
        excluded_files: scanned.excluded_files,
        skipped: scanned.skipped.clone(),
        store_bytes_needed: if args.packed {
            scanned.packed_bytes_needed()
        } else {
            scanned.store_bytes_needed()
        },
        free_bytes,
        list_files: args.list_files.clone(),
        rule_warnings: rules.warnings,
        ..ScanSummary::default()
    };

    if args.estimate {
        if let Some(list) = &args.list_files {
            write_list(list, root, scanned.paths.iter().map(String::as_str))?;
        }
        summary.seconds = started.elapsed().as_secs_f64();
        let code = if summary.store_bytes_needed > free_bytes {
            Code::OutOfSpace
        } else {
            Code::Success
        };
        let text = render(&summary);
        return Ok(Outcome::new(code, &summary, text));
    }
    if args.packed {
        // Compression and dedup usually make a packed store far smaller than its upper bound:
        // no pre-check; running out of space while writing is reported as such.
        return super::packed::scan(args, summary, rules.selection, &filter, reporter, started);
    }
    if summary.store_bytes_needed > free_bytes {
        return Err(Error::OutOfSpace {
            path: args.store.clone(),
            needed: summary.store_bytes_needed,
            available: free_bytes,
        });
    }

    reporter.set_totals(scanned.files, scanned.bytes);
    let options = CaptureOptions {
        continue_on_error: args.continue_on_error,
        overwrite: args.overwrite,
        include_users: args.user_include.clone(),
        exclude_users: args.user_exclude.clone(),
        exclude_users_older_than: filter.exclude_older_than,
        selection: rules.selection,
        ..CaptureOptions::new(format!("scan-{}", uuid::Uuid::now_v7()))
    };
    let report = fleetmig_state::capture(root, &args.store, &options, reporter)?;
    summary.users = report.users;
    summary.files = report.files;
    summary.bytes = report.bytes;
    summary.dirs = report.dirs;
    summary.symlinks = report.symlinks;
    summary.excluded_files = report.excluded_files;
    summary.skipped = report
        .skipped
        .into_iter()
        .map(|(path, reason)| Skipped { path, reason })
        .collect();
    summary.manifest_digest = Some(report.manifest_digest);
    if let Some(list) = &args.list_files {
        let manifest = Manifest::load_sealed(&args.store)?;
        let captured = manifest
            .entries
            .iter()
            .filter(|entry| entry.kind != EntryKind::Dir)
            .map(|entry| entry.source.as_str());
        write_list(list, root, captured)?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    let code = if summary.skipped.is_empty() {
        Code::Success
    } else {
        Code::Skipped
    };
    let text = render(&summary);
    Ok(Outcome::new(code, &summary, text))
}

/// What the Scanning walk found.
#[derive(Debug, Default)]
struct Scanned {
    files: u64,
    bytes: u64,
    dirs: u64,
    symlinks: u64,
    excluded_files: u64,
    skipped: Vec<Skipped>,
    /// Estimated `manifest.json` size.
    manifest_bytes: u64,
    /// Source paths of files and symlinks (relative to the root), when asked for.
    paths: Vec<String>,
}

impl Scanned {
    fn merge(&mut self, other: Scanned) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.excluded_files += other.excluded_files;
        self.skipped.extend(other.skipped);
        self.manifest_bytes += other.manifest_bytes;
        self.paths.extend(other.paths);
    }

    /// Upper bound of a packed store: every byte stored uncompressed and without dedup, a
    /// chunk header and tag per file, the manifest.
    fn packed_bytes_needed(&self) -> u64 {
        const CHUNK_OVERHEAD: u64 = 32;
        self.bytes + self.files * (CHUNK_OVERHEAD + BLOCK) + self.manifest_bytes
    }

    /// A hard-link store holds no data: the manifest and seal, plus a block per directory.
    fn store_bytes_needed(&self) -> u64 {
        self.manifest_bytes.div_ceil(BLOCK) * BLOCK + BLOCK + (self.dirs + 1) * BLOCK
    }
}

/// One tree the capture walks: a profile, or a machine-wide root named by System rules.
#[derive(Debug, Clone)]
enum Tree {
    /// `Documents and Settings/<user>`.
    Profile(String),
    /// A directory relative to the machine root ("" for the root itself).
    System(String),
}

/// Walks what the capture will walk (one thread per tree), with the same decisions.
fn scan_trees(
    root: &Path,
    store: &Path,
    users: &[String],
    selection: &Selection,
    want_paths: bool,
    reporter: &Reporter,
) -> Scanned {
    let progress = ScanProgress {
        reporter,
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    progress.report(None);
    let store_id = std::fs::metadata(store)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()));
    let trees: Vec<Tree> = users
        .iter()
        .cloned()
        .map(Tree::Profile)
        .chain(selection.system_roots().into_iter().map(Tree::System))
        .collect();
    let walk = TreeWalk {
        root,
        store_id,
        selection,
        want_paths,
        progress: &progress,
    };
    let mut total = Scanned::default();
    std::thread::scope(|scope| {
        let handles: Vec<_> = trees
            .iter()
            .map(|tree| {
                let walk = &walk;
                scope.spawn(move || walk.tree(tree))
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(scanned) => total.merge(scanned),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    progress.report(None);
    total.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    total.paths.sort();
    total
}

/// Counters of the Scanning phase, shared by the tree threads.
struct ScanProgress<'a> {
    reporter: &'a Reporter,
    files: AtomicU64,
    bytes: AtomicU64,
}

impl ScanProgress<'_> {
    fn file(&self, bytes: u64, user: &str) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if (self.files.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(SCAN_PROGRESS_EVERY) {
            self.report(Some(user));
        }
    }

    fn report(&self, user: Option<&str>) {
        self.reporter.update(&Progress {
            phase: Phase::Scanning,
            files_done: self.files.load(Ordering::Relaxed),
            files_total: 0,
            bytes_done: self.bytes.load(Ordering::Relaxed),
            bytes_total: 0,
            current_user: user.map(str::to_owned),
        });
    }
}

/// Shared state of the Scanning walk.
struct TreeWalk<'a> {
    root: &'a Path,
    /// (device, inode) of an existing store, never walked.
    store_id: Option<(u64, u64)>,
    selection: &'a Selection,
    want_paths: bool,
    progress: &'a ScanProgress<'a>,
}

impl TreeWalk<'_> {
    /// What the capture does with a directory of the tree (`rel` from the tree's base).
    fn decide_dir(&self, tree: &Tree, rel: &str) -> DirDecision {
        match tree {
            Tree::Profile(user) => self.selection.decide_user_dir(user, rel),
            Tree::System(_) => self.selection.decide_system_dir(rel),
        }
    }

    /// Where a file (or symlink) of the tree goes, if it is captured.
    fn decide_file(&self, tree: &Tree, rel: &str) -> Option<String> {
        match tree {
            Tree::Profile(user) => self.selection.decide_user_file(user, rel),
            Tree::System(_) => self.selection.decide_system_file(rel),
        }
    }

    fn tree(&self, tree: &Tree) -> Scanned {
        let (base, user, start) = match tree {
            Tree::Profile(user) => (
                self.root.join(XP_PROFILES_DIR).join(user),
                user.as_str(),
                String::new(),
            ),
            Tree::System(rel) => (self.root.to_path_buf(), "", rel.clone()),
        };
        let source_of = |rel: &str| match tree {
            Tree::Profile(user) => format!("{XP_PROFILES_DIR}/{user}/{rel}"),
            Tree::System(_) => rel.to_owned(),
        };
        let mut scanned = Scanned::default();
        let top = if start.is_empty() {
            base.clone()
        } else {
            base.join(&start)
        };
        match (tree, self.decide_dir(tree, &start)) {
            (_, DirDecision::OutOfScope) => return scanned,
            (Tree::Profile(_), DirDecision::Excluded) => {
                scanned.dirs = 1;
                scanned.manifest_bytes = entry_bytes(user, "", "");
                scanned.excluded_files = fleetmig_state::hardlink::count_files(&top);
                return scanned;
            }
            (Tree::System(_), DirDecision::Excluded) => return scanned,
            (Tree::Profile(_), DirDecision::Walk(_)) => {
                scanned.dirs = 1;
                scanned.manifest_bytes = entry_bytes(user, "", "");
            }
            (Tree::System(_), DirDecision::Walk(target)) => {
                if !top.is_dir() {
                    return scanned;
                }
                if !start.is_empty() {
                    scanned.dirs = 1;
                    scanned.manifest_bytes = entry_bytes(user, &start, &target);
                }
            }
        }
        let mut walk = walkdir::WalkDir::new(&top)
            .follow_links(false)
            .min_depth(1)
            .into_iter();
        while let Some(entry) = walk.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    let rel = error
                        .path()
                        .and_then(|path| path.strip_prefix(&base).ok())
                        .map(|rel| rel.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    scanned.skipped.push(Skipped {
                        path: source_of(&rel),
                        reason: format!("unreadable: {error}"),
                    });
                    continue;
                }
            };
            let file_type = entry.file_type();
            let rel_path = entry.path().strip_prefix(&base).unwrap_or(entry.path());
            let Some(rel) = rel_path.to_str() else {
                if file_type.is_dir() {
                    walk.skip_current_dir();
                }
                scanned.skipped.push(Skipped {
                    path: source_of(&rel_path.to_string_lossy()),
                    reason: "file name is not valid utf-8".to_owned(),
                });
                continue;
            };
            let decided = if file_type.is_dir() {
                let id = entry.metadata().ok().map(|meta| (meta.dev(), meta.ino()));
                if id.is_some() && id == self.store_id {
                    walk.skip_current_dir();
                    continue;
                }
                match self.decide_dir(tree, rel) {
                    DirDecision::Walk(target) => Some(target),
                    DirDecision::Excluded => {
                        walk.skip_current_dir();
                        scanned.excluded_files +=
                            fleetmig_state::hardlink::count_files(entry.path());
                        continue;
                    }
                    DirDecision::OutOfScope => {
                        walk.skip_current_dir();
                        continue;
                    }
                }
            } else {
                self.decide_file(tree, rel)
            };
            let Some(target) = decided else {
                scanned.excluded_files += u64::from(file_type.is_file());
                continue;
            };
            if file_type.is_dir() {
                scanned.dirs += 1;
            } else if file_type.is_file() {
                let size = entry.metadata().map(|meta| meta.len()).unwrap_or(0);
                scanned.files += 1;
                scanned.bytes += size;
                self.progress.file(size, user);
            } else if file_type.is_symlink() {
                scanned.symlinks += 1;
            } else {
                scanned.skipped.push(Skipped {
                    path: source_of(rel),
                    reason: "not a regular file, directory or symlink".to_owned(),
                });
                continue;
            }
            scanned.manifest_bytes += entry_bytes(user, rel, &target);
            if self.want_paths && !file_type.is_dir() {
                scanned.paths.push(source_of(rel));
            }
        }
        scanned
    }
}

/// Estimated JSON size of one manifest entry (`target` relative to the machine root).
fn entry_bytes(user: &str, rel: &str, target: &str) -> u64 {
    let source = XP_PROFILES_DIR.len() + user.len() + rel.len() + 2;
    let target = target.len().max(WIN7_PROFILES_DIR.len() + user.len() + 1);
    let store = DATA_DIR.len() + user.len().max(SYSTEM_STORE_DIR_LEN) + rel.len() + 2;
    (source + target + store + user.len()) as u64 + MANIFEST_ENTRY_OVERHEAD
}

/// Free bytes on the filesystem that holds (or will hold) `path`.
pub fn free_space(path: &Path) -> Result<u64> {
    let probe = path
        .ancestors()
        .find(|dir| !dir.as_os_str().is_empty() && dir.exists())
        .unwrap_or(Path::new("."));
    let stat = rustix::fs::statvfs(probe).map_err(|errno| Error::io(probe, errno.into()))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Writes `root/<path>` for every path, one per line.
pub(super) fn write_list<'a>(
    list: &Path,
    root: &Path,
    paths: impl Iterator<Item = &'a str>,
) -> Result<()> {
    let mut text = String::new();
    for path in paths {
        let _ = writeln!(text, "{}", root.join(path).display());
    }
    std::fs::write(list, text).map_err(|error| Error::io(list, error))
}

/// The human summary.
pub(super) fn render(summary: &ScanSummary) -> String {
    let mut text = String::new();
    let verb = if summary.estimate {
        "estimate for"
    } else {
        "scan of"
    };
    let _ = writeln!(
        text,
        "{verb} {} ({}) -> {} [{} store]",
        summary.machine_root.display(),
        summary.hostname,
        summary.store.display(),
        if summary.store_kind == "packed" {
            "packed"
        } else {
            "hard-link"
        }
    );
    let _ = writeln!(text, "users: {}", summary.users.join(", "));
    for choice in summary.profiles.iter().filter(|choice| !choice.selected) {
        let _ = writeln!(
            text,
            "  not captured: {} ({})",
            choice.account,
            choice.reason.describe()
        );
    }
    let _ = writeln!(
        text,
        "files: {} ({}), directories: {}, symlinks: {}, excluded by rules: {}",
        summary.files,
        human_bytes(summary.bytes),
        summary.dirs,
        summary.symlinks,
        summary.excluded_files
    );
    let _ = writeln!(
        text,
        "store space needed: {} (free: {})",
        human_bytes(summary.store_bytes_needed),
        human_bytes(summary.free_bytes)
    );
    if let Some(digest) = &summary.manifest_digest {
        let _ = writeln!(text, "manifest digest: {digest}");
    }
    if !summary.skipped.is_empty() {
        let _ = writeln!(text, "skipped: {}", summary.skipped.len());
        for skipped in &summary.skipped {
            let _ = writeln!(text, "  {}: {}", skipped.path, skipped.reason);
        }
    }
    for warning in &summary.rule_warnings {
        let _ = writeln!(text, "rule not honoured: {warning}");
    }
    if let Some(list) = &summary.list_files {
        let _ = writeln!(text, "file list: {}", list.display());
    }
    let _ = writeln!(text, "took {:.2}s", summary.seconds);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_space_is_manifest_and_directories() {
        let scanned = Scanned {
            dirs: 3,
            manifest_bytes: 5000,
            ..Scanned::default()
        };
        assert_eq!(scanned.store_bytes_needed(), 2 * BLOCK + BLOCK + 4 * BLOCK);
    }

    #[test]
    fn free_space_of_a_missing_path_uses_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(&dir.path().join("not/yet/there")).unwrap() > 0);
    }
}
