//! Capture: walk the XP profiles in parallel and hard-link every selected file into the store.
//!
//! The walk is a rayon task per directory (large directories are also split into chunks), using
//! directory file descriptors so each file costs one `fstatat` and one `linkat` relative to an
//! open directory, with no repeated path lookups. Manifest entries are built from that one stat.

use std::ffi::{CStr, CString};
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};

use super::{
    CaptureOptions, CaptureReport, data_dir, delete_store, device_of, ensure_same_filesystem,
};
use crate::error::{Error, IoResultExt, Result};
use crate::fsutil::{StatInfo, is_empty_or_missing};
use crate::inventory::{probe_hard_links, profile_names, read_hostname};
use crate::layout::{DirDecision, DirRules, Selection, WIN7_PROFILES_DIR, XP_PROFILES_DIR};
use crate::manifest::{Entry, EntryKind, Manifest, store_path};
use crate::progress::{Phase, ProgressCounter, ProgressSink};
use crate::rules::Scope;

/// Entries processed by one task before large directories are split across threads.
const CHUNK: usize = 512;

/// Links `name` in `source_dir` to `name` in `store_dir`; replaceable in tests to inject failures.
pub(crate) type Linker =
    dyn Fn(BorrowedFd<'_>, &CStr, BorrowedFd<'_>, &CStr) -> std::io::Result<()> + Sync;

fn link_at(
    source_dir: BorrowedFd<'_>,
    name: &CStr,
    store_dir: BorrowedFd<'_>,
    store_name: &CStr,
) -> std::io::Result<()> {
    rustix::fs::linkat(source_dir, name, store_dir, store_name, AtFlags::empty())
        .map_err(Into::into)
}

/// Captures every non-system profile under `root/Documents and Settings` into `store_dir` as
/// hard links, then writes and seals the manifest.
///
/// Refuses (before touching anything) a root that is not an XP tree, a store that is not empty
/// (unless `opts.overwrite`), a store inside the profiles directory, a store on another
/// filesystem, or a filesystem without hard links.
pub fn capture(
    root: &Path,
    store_dir: &Path,
    opts: &CaptureOptions,
    progress: &dyn ProgressSink,
) -> Result<CaptureReport> {
    capture_with(root, store_dir, opts, progress, &link_at)
}

/// [`capture`] with a replaceable link operation.
pub(crate) fn capture_with(
    root: &Path,
    store_dir: &Path,
    opts: &CaptureOptions,
    progress: &dyn ProgressSink,
    linker: &Linker,
) -> Result<CaptureReport> {
    let profiles_dir = root.join(XP_PROFILES_DIR);
    if !profiles_dir.is_dir() {
        return Err(Error::NotAnXpMachine {
            path: root.to_path_buf(),
            reason: format!("no {XP_PROFILES_DIR} directory"),
        });
    }
    prepare_store(root, &profiles_dir, store_dir, opts.overwrite)?;
    let users: Vec<String> = profile_names(&profiles_dir)?
        .into_iter()
        .filter(|user| opts.wants_profile(root, user))
        .collect();
    tracing::info!(root = %root.display(), store = %store_dir.display(), users = users.len(), "capture started");

    let counter = ProgressCounter::new(progress, Phase::Collecting, 0, 0);
    counter.flush(None);
    let store_stat = crate::fsutil::lstat(store_dir)?;
    let walker = Walker {
        root,
        profiles_dir: &profiles_dir,
        data_dir: &data_dir(store_dir),
        store_id: (store_stat.dev, store_stat.ino),
        opts,
        selection: &opts.selection,
        linker,
        counter: &counter,
    };
    let mut outputs: Vec<Output> = users
        .par_iter()
        .map(|user| walker.user(user))
        .collect::<Result<_>>()?;
    // Machine-wide files named by System-context rules (`C:\Data\* [*]`), none by default.
    let system_roots = opts.selection.system_roots();
    let system: Vec<Output> = system_roots
        .par_iter()
        .map(|rel| walker.system_root(rel))
        .collect::<Result<_>>()?;
    outputs.extend(system);
    let mut total = Output::default();
    for output in outputs {
        total.merge(output);
    }
    counter.flush(None);

    ProgressCounter::new(progress, Phase::Saving, total.files, total.bytes).flush(None);
    let mut entries = total.take_entries();
    entries.par_sort_unstable_by(|a, b| a.store.cmp(&b.store));
    let mut manifest = Manifest::new(&opts.job_id, root);
    manifest.hostname = read_hostname(root);
    manifest.users = users.clone();
    manifest.entries = entries;
    let manifest_digest = manifest.write_sealed(store_dir)?;
    tracing::info!(
        store = %store_dir.display(),
        files = total.files,
        bytes = total.bytes,
        skipped = total.skipped.len(),
        digest = %manifest_digest,
        "capture sealed"
    );
    Ok(CaptureReport {
        users,
        files: total.files,
        dirs: total.dirs,
        symlinks: total.symlinks,
        bytes: total.bytes,
        excluded_files: total.excluded_files,
        skipped: total.skipped,
        manifest_digest,
    })
}

/// Makes `store_dir` an empty, usable store directory with a `data/` subdirectory.
fn prepare_store(
    root: &Path,
    profiles_dir: &Path,
    store_dir: &Path,
    overwrite: bool,
) -> Result<()> {
    if !is_empty_or_missing(store_dir)? {
        if !overwrite {
            return Err(Error::NotEmpty {
                path: store_dir.to_path_buf(),
            });
        }
        delete_store(store_dir)?;
        if !is_empty_or_missing(store_dir)? {
            return Err(Error::NotEmpty {
                path: store_dir.to_path_buf(),
            });
        }
    }
    let created = !store_dir.exists();
    fs::create_dir_all(store_dir).at(store_dir)?;
    let checked = check_store_location(root, profiles_dir, store_dir);
    if checked.is_err() && created {
        let _ = fs::remove_dir(store_dir);
    }
    checked?;
    let data = data_dir(store_dir);
    fs::create_dir(&data).at(&data)
}

fn check_store_location(root: &Path, profiles_dir: &Path, store_dir: &Path) -> Result<()> {
    let profiles = profiles_dir.canonicalize().at(profiles_dir)?;
    let store = store_dir.canonicalize().at(store_dir)?;
    if store.starts_with(&profiles) {
        return Err(Error::StoreInsideProfiles { store, profiles });
    }
    ensure_same_filesystem(root, device_of(root)?, store_dir, device_of(store_dir)?)?;
    probe_hard_links(store_dir).map_err(|source| Error::HardLinksUnsupported {
        path: store_dir.to_path_buf(),
        source,
    })
}

/// What a walk task produced.
#[derive(Default)]
struct Output {
    entries: Vec<Entry>,
    /// Entries of merged outputs, concatenated once at the end ([`Output::take_entries`]) so
    /// that merging up a deep tree never moves an entry more than once.
    batches: Vec<Vec<Entry>>,
    skipped: Vec<(String, String)>,
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    excluded_files: u64,
}

impl Output {
    fn merge(&mut self, mut other: Output) {
        if !other.entries.is_empty() {
            self.batches.push(other.entries);
        }
        if self.batches.is_empty() {
            self.batches = other.batches;
        } else {
            self.batches.append(&mut other.batches);
        }
        self.skipped.extend(other.skipped);
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.bytes += other.bytes;
        self.excluded_files += other.excluded_files;
    }

    /// All entries, own and merged, in one vector.
    fn take_entries(&mut self) -> Vec<Entry> {
        let merged: usize = self.batches.iter().map(Vec::len).sum();
        let mut all = std::mem::take(&mut self.entries);
        all.reserve_exact(merged);
        for mut batch in self.batches.drain(..) {
            all.append(&mut batch);
        }
        all
    }
}

/// Shared, read-only state of one capture's walk.
struct Walker<'a> {
    /// The machine root, where machine-wide (System-context) walks start.
    root: &'a Path,
    profiles_dir: &'a Path,
    data_dir: &'a Path,
    /// (device, inode) of the store, never walked by a machine-wide walk.
    store_id: (u64, u64),
    opts: &'a CaptureOptions,
    selection: &'a Selection,
    linker: &'a Linker,
    counter: &'a ProgressCounter<'a>,
}

/// One directory being captured: its open descriptors and its profile-relative path.
struct OpenDir<'a> {
    /// The profile; "" for a machine-wide walk (paths relative to the machine root).
    user: &'a str,
    /// Path relative to the profile, '/'-separated, "" for the profile itself.
    rel: &'a str,
    source_path: PathBuf,
    source: OwnedFd,
    store: OwnedFd,
    /// The selection's decisions for the files directly in this directory.
    rules: DirRules<'a>,
}

impl Walker<'_> {
    /// Captures one profile: its root entry, then everything below.
    fn user(&self, user: &String) -> Result<Output> {
        let source_path = self.profiles_dir.join(user);
        let stat = crate::fsutil::lstat(&source_path)?;
        let store_dir = self.data_dir.join(user);
        fs::create_dir(&store_dir).at(&store_dir)?;
        let mut output = Output {
            dirs: 1,
            ..Output::default()
        };
        output.entries.push(Entry {
            kind: EntryKind::Dir,
            user: user.clone(),
            source: format!("{XP_PROFILES_DIR}/{user}"),
            target: format!("{WIN7_PROFILES_DIR}/{user}"),
            store: store_path(user, ""),
            size: 0,
            mtime_ns: stat.mtime_ns,
            mode: stat.mode,
            inode: stat.ino,
            link_target: None,
            link_escapes: false,
        });
        if matches!(
            self.selection.decide_user_dir(user, ""),
            DirDecision::Walk(_)
        ) {
            output.merge(self.dir(user, String::new())?);
        } else {
            output.excluded_files += count_files(&source_path);
        }
        Ok(output)
    }

    /// Captures one machine-wide root directory (relative to the machine root, "" for the
    /// root itself) into `data/_system/`. A missing root captures nothing.
    fn system_root(&self, rel: &str) -> Result<Output> {
        let source_path = join_profile(self.root, rel);
        let stat = match crate::fsutil::lstat(&source_path) {
            Ok(stat) => stat,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Output::default());
            }
            Err(error) => return self.skip_or_fail("", rel, error),
        };
        let is_dir = FileType::from_raw_mode(stat.mode) == FileType::Directory;
        if !is_dir || (stat.dev, stat.ino) == self.store_id {
            return Ok(Output::default());
        }
        let DirDecision::Walk(target) = self.selection.decide_system_dir(rel) else {
            return Ok(Output::default());
        };
        let store_dir = join_profile(&self.store_base(""), rel);
        fs::create_dir_all(&store_dir).at(&store_dir)?;
        let mut output = Output::default();
        if !rel.is_empty() {
            output.dirs = 1;
            output.entries.push(Entry {
                kind: EntryKind::Dir,
                user: String::new(),
                source: rel.to_owned(),
                target,
                store: store_path("", rel),
                size: 0,
                mtime_ns: stat.mtime_ns,
                mode: stat.mode,
                inode: stat.ino,
                link_target: None,
                link_escapes: false,
            });
        }
        output.merge(self.dir("", rel.to_owned())?);
        Ok(output)
    }

    /// Where a walk's sources start: the profile, or the machine root for user "".
    fn source_base(&self, user: &str) -> PathBuf {
        if user.is_empty() {
            self.root.to_path_buf()
        } else {
            self.profiles_dir.join(user)
        }
    }

    /// Where a walk's links go: `data/<user>`, or `data/_system` for user "".
    fn store_base(&self, user: &str) -> PathBuf {
        let top = if user.is_empty() {
            crate::manifest::SYSTEM_STORE_DIR
        } else {
            user
        };
        self.data_dir.join(top)
    }

    /// Captures the content of one directory (already present in the store), recursing in parallel.
    fn dir(&self, user: &str, rel: String) -> Result<Output> {
        let source_path = join_profile(&self.source_base(user), &rel);
        let store_path = join_profile(&self.store_base(user), &rel);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let opened = rustix::fs::openat(CWD, &source_path, flags, Mode::empty())
            .at(&source_path)
            .and_then(|source| {
                Ok((
                    source,
                    rustix::fs::openat(CWD, &store_path, flags, Mode::empty()).at(&store_path)?,
                ))
            });
        let (source, store) = match opened {
            Ok(fds) => fds,
            Err(error) => return self.skip_or_fail(user, &rel, error),
        };
        let names = match read_names(&source) {
            Ok(names) => names,
            Err(error) => {
                return self.skip_or_fail(
                    user,
                    &rel,
                    Error::Io {
                        path: source_path,
                        source: error,
                    },
                );
            }
        };
        let scope = if user.is_empty() {
            Scope::Machine
        } else {
            Scope::Profile
        };
        let dir = OpenDir {
            user,
            rel: &rel,
            source_path,
            source,
            store,
            rules: self.selection.dir_rules(scope, user, &rel),
        };
        let (mut output, subdirs) = if names.len() > CHUNK {
            names
                .par_chunks(CHUNK)
                .map(|chunk| self.entries(&dir, chunk))
                .try_reduce(Default::default, |mut a, b| {
                    a.0.merge(b.0);
                    a.1.extend(b.1);
                    Ok(a)
                })?
        } else {
            self.entries(&dir, &names)?
        };
        drop(dir);
        let children: Vec<Output> = subdirs
            .into_par_iter()
            .map(|child| self.dir(user, child))
            .collect::<Result<_>>()?;
        for child in children {
            output.merge(child);
        }
        Ok(output)
    }

    /// Handles a slice of one directory's entries; returns the output and the subdirectories
    /// (profile-relative) still to walk.
    fn entries(&self, dir: &OpenDir<'_>, names: &[CString]) -> Result<(Output, Vec<String>)> {
        let mut output = Output::default();
        let mut subdirs = Vec::new();
        for name in names {
            let Ok(name_str) = name.to_str() else {
                let path = dir
                    .source_path
                    .join(std::ffi::OsStr::new(&*String::from_utf8_lossy(
                        name.to_bytes(),
                    )));
                self.record_failure(
                    &mut output,
                    dir.user,
                    &lossy_rel(dir.rel, name),
                    Error::NonUtf8Name { path },
                )?;
                continue;
            };
            let rel = if dir.rel.is_empty() {
                name_str.to_owned()
            } else {
                format!("{}/{name_str}", dir.rel)
            };
            let stat =
                match rustix::fs::statat(&dir.source, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => StatInfo::from_rustix(&stat),
                    Err(error) => {
                        let wanted = dir.rules.decide(name_str).is_some()
                            || matches!(self.decide_dir(dir.user, &rel), DirDecision::Walk(_));
                        if wanted {
                            let error = Error::Io {
                                path: dir.source_path.join(name_str),
                                source: error.into(),
                            };
                            self.record_failure(&mut output, dir.user, &rel, error)?;
                        }
                        continue;
                    }
                };
            // The rules decide files and directories differently, so the decision needs the
            // type from the stat above.
            let is_dir = FileType::from_raw_mode(stat.mode) == FileType::Directory;
            let decided = if is_dir {
                if dir.user.is_empty() && (stat.dev, stat.ino) == self.store_id {
                    continue;
                }
                match self.decide_dir(dir.user, &rel) {
                    DirDecision::Walk(target) => Some(target),
                    DirDecision::Excluded => None,
                    DirDecision::OutOfScope => continue,
                }
            } else {
                dir.rules.decide(name_str)
            };
            let Some(target) = decided else {
                output.excluded_files += if is_dir {
                    count_files(&dir.source_path.join(name_str))
                } else {
                    u64::from(FileType::from_raw_mode(stat.mode) == FileType::RegularFile)
                };
                continue;
            };
            let entry = |kind| Entry {
                kind,
                user: dir.user.to_owned(),
                source: source_rel(dir.user, &rel),
                target: target.clone(),
                store: store_path(dir.user, &rel),
                size: if kind == EntryKind::File {
                    stat.size
                } else {
                    0
                },
                mtime_ns: stat.mtime_ns,
                mode: stat.mode,
                inode: stat.ino,
                link_target: None,
                link_escapes: false,
            };
            match FileType::from_raw_mode(stat.mode) {
                FileType::Directory => {
                    rustix::fs::mkdirat(&dir.store, name.as_c_str(), Mode::RWXU)
                        .at(dir.source_path.join(name_str))?;
                    output.entries.push(entry(EntryKind::Dir));
                    output.dirs += 1;
                    subdirs.push(rel);
                }
                FileType::RegularFile => {
                    let linked = if self.opts.fault_unreadable_name.as_deref() == Some(name_str) {
                        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
                    } else {
                        (self.linker)(dir.source.as_fd(), name, dir.store.as_fd(), name)
                    };
                    if let Err(error) = linked {
                        let error = Error::Io {
                            path: dir.source_path.join(name_str),
                            source: error,
                        };
                        self.record_failure(&mut output, dir.user, &rel, error)?;
                        continue;
                    }
                    output.entries.push(entry(EntryKind::File));
                    output.files += 1;
                    output.bytes += stat.size;
                    self.counter.file_done(stat.size, dir.user);
                    if let Some(delay) = self.opts.per_file_delay {
                        std::thread::sleep(delay);
                    }
                }
                FileType::Symlink => {
                    let text = rustix::fs::readlinkat(&dir.source, name.as_c_str(), Vec::new())
                        .at(dir.source_path.join(name_str))
                        .and_then(|text| {
                            text.into_string().map_err(|_| Error::NonUtf8Name {
                                path: dir.source_path.join(name_str),
                            })
                        });
                    let text = match text {
                        Ok(text) => text,
                        Err(error) => {
                            self.record_failure(&mut output, dir.user, &rel, error)?;
                            continue;
                        }
                    };
                    rustix::fs::symlinkat(text.as_str(), &dir.store, name.as_c_str())
                        .at(dir.source_path.join(name_str))?;
                    let mut symlink = entry(EntryKind::Symlink);
                    symlink.link_escapes = symlink_escapes(&rel, &text);
                    symlink.link_target = Some(text);
                    output.entries.push(symlink);
                    output.symlinks += 1;
                }
                _ => output.skipped.push((
                    source_rel(dir.user, &rel),
                    "not a regular file, directory or symlink".to_owned(),
                )),
            }
        }
        Ok((output, subdirs))
    }

    /// A directory decision for the walk of `user` ("" for machine-wide walks).
    fn decide_dir(&self, user: &str, rel: &str) -> DirDecision {
        if user.is_empty() {
            self.selection.decide_system_dir(rel)
        } else {
            self.selection.decide_user_dir(user, rel)
        }
    }

    /// Records a per-entry failure when continuing on errors, else returns it.
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
        tracing::warn!(user, path = rel, %error, "skipping file");
        output
            .skipped
            .push((source_rel(user, rel), error.to_string()));
        Ok(())
    }

    /// A directory that cannot be opened: skipped as a whole when continuing on errors.
    fn skip_or_fail(&self, user: &str, rel: &str, error: Error) -> Result<Output> {
        let mut output = Output::default();
        self.record_failure(&mut output, user, rel, error)?;
        Ok(output)
    }
}

/// All entry names of an open directory except `.` and `..`.
fn read_names(dir: &OwnedFd) -> std::io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Regular files in an excluded subtree (1 for an excluded file, 0 for anything else):
/// what a capture reports as excluded.
pub fn count_files(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_file())
        .count() as u64
}

/// Whether a symlink at profile-relative `rel` with link text `text` resolves outside the profile
/// (lexically; absolute links always count as outside).
pub(crate) fn symlink_escapes(rel: &str, text: &str) -> bool {
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

fn join_profile(base: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        crate::manifest::join_rel(base, rel)
    }
}

fn source_rel(user: &str, rel: &str) -> String {
    if user.is_empty() {
        return rel.to_owned();
    }
    format!("{XP_PROFILES_DIR}/{user}/{rel}")
}

fn lossy_rel(rel: &str, name: &CStr) -> String {
    let name = String::from_utf8_lossy(name.to_bytes());
    if rel.is_empty() {
        name.into_owned()
    } else {
        format!("{rel}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenOptions, generate_machine};
    use crate::progress::NoProgress;
    use std::os::unix::ffi::OsStrExt;

    fn small_machine() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let opts = GenOptions {
            seed: 11,
            users: 1,
            files_per_user: 80,
            hostname: None,
        };
        generate_machine(root.path(), &opts).unwrap();
        root
    }

    #[test]
    fn refuses_non_empty_store_without_overwrite() {
        let root = small_machine();
        let store = root.path().join("MigStore");
        fs::create_dir(&store).unwrap();
        fs::write(store.join("stray"), b"x").unwrap();
        let error =
            capture(root.path(), &store, &CaptureOptions::new("j"), &NoProgress).unwrap_err();
        assert!(matches!(error, Error::NotEmpty { .. }), "{error}");
        // A store from an earlier capture is replaced with overwrite.
        fs::remove_file(store.join("stray")).unwrap();
        capture(root.path(), &store, &CaptureOptions::new("j1"), &NoProgress).unwrap();
        let error =
            capture(root.path(), &store, &CaptureOptions::new("j2"), &NoProgress).unwrap_err();
        assert!(matches!(error, Error::NotEmpty { .. }));
        let opts = CaptureOptions {
            overwrite: true,
            ..CaptureOptions::new("j2")
        };
        capture(root.path(), &store, &opts, &NoProgress).unwrap();
        assert_eq!(Manifest::load_sealed(&store).unwrap().job_id, "j2");
    }

    #[test]
    fn refuses_store_inside_profiles_and_non_xp_roots() {
        let root = small_machine();
        let inside = root.path().join("Documents and Settings/alice/store");
        let error =
            capture(root.path(), &inside, &CaptureOptions::new("j"), &NoProgress).unwrap_err();
        assert!(
            matches!(error, Error::StoreInsideProfiles { .. }),
            "{error}"
        );
        assert!(!inside.exists(), "a refused store directory is cleaned up");
        let empty = tempfile::tempdir().unwrap();
        let error = capture(
            empty.path(),
            &empty.path().join("s"),
            &CaptureOptions::new("j"),
            &NoProgress,
        )
        .unwrap_err();
        assert!(matches!(error, Error::NotAnXpMachine { .. }));
    }

    #[test]
    fn continue_on_error_records_real_and_injected_failures() {
        let root = small_machine();
        let docs = root
            .path()
            .join("Documents and Settings/alice/My Documents");
        // A real failure: a name that is not UTF-8 cannot be recorded in the manifest.
        fs::write(
            docs.join(std::ffi::OsStr::from_bytes(b"bad\xffname.doc")),
            b"x",
        )
        .unwrap();
        fs::write(docs.join("fail-me.doc"), b"y").unwrap();
        let failing: &Linker = &|source, name, store, store_name| {
            if name.to_bytes().starts_with(b"fail-") {
                return Err(std::io::Error::from_raw_os_error(
                    rustix::io::Errno::PERM.raw_os_error(),
                ));
            }
            link_at(source, name, store, store_name)
        };

        let strict = capture_with(
            root.path(),
            &root.path().join("s1"),
            &CaptureOptions::new("j"),
            &NoProgress,
            failing,
        );
        assert!(strict.is_err());

        let opts = CaptureOptions {
            continue_on_error: true,
            ..CaptureOptions::new("j")
        };
        let store = root.path().join("s2");
        let report = capture_with(root.path(), &store, &opts, &NoProgress, failing).unwrap();
        let skipped: Vec<&str> = report
            .skipped
            .iter()
            .map(|(path, _)| path.as_str())
            .collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped
                .iter()
                .any(|path| path.ends_with("My Documents/fail-me.doc"))
        );
        assert!(skipped.iter().any(|path| path.contains("bad")));
        assert!(report.skipped.iter().all(|(_, reason)| !reason.is_empty()));
        let manifest = Manifest::load_sealed(&store).unwrap();
        assert!(
            manifest
                .entries
                .iter()
                .all(|entry| !entry.source.contains("fail-me"))
        );
        assert_eq!(
            manifest.entries_of(EntryKind::File).count() as u64,
            report.files
        );
    }

    #[test]
    fn symlinks_are_recorded_not_followed() {
        let root = small_machine();
        let profile = root.path().join("Documents and Settings/alice");
        std::os::unix::fs::symlink("/etc", profile.join("My Documents/etc-link")).unwrap();
        std::os::unix::fs::symlink("../Desktop", profile.join("My Documents/desk")).unwrap();
        let store = root.path().join("store");
        let report = capture(root.path(), &store, &CaptureOptions::new("j"), &NoProgress).unwrap();
        assert_eq!(report.symlinks, 2);
        let manifest = Manifest::load_sealed(&store).unwrap();
        let link = |suffix: &str| {
            manifest
                .entries
                .iter()
                .find(|entry| entry.source.ends_with(suffix))
                .unwrap()
                .clone()
        };
        assert!(link("etc-link").link_escapes);
        assert!(!link("desk").link_escapes);
        assert_eq!(link("desk").link_target.as_deref(), Some("../Desktop"));
        assert!(
            manifest
                .entries
                .iter()
                .all(|entry| !entry.source.contains("etc-link/"))
        );
    }

    #[test]
    fn escape_detection() {
        assert!(symlink_escapes("a/link", "/etc"));
        assert!(symlink_escapes("link", "../x"));
        assert!(symlink_escapes("a/link", "../../x"));
        assert!(!symlink_escapes("a/link", "../b/c"));
        assert!(!symlink_escapes("a/b/link", "./../c"));
    }
}
