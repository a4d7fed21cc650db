//! Writing under a restore root without ever passing through a symlink.
//!
//! Every directory is reached from the root's descriptor one component at a time with
//! `O_NOFOLLOW | O_DIRECTORY`, so a symlink (or a file) placed where a directory is expected
//! is refused instead of followed, whatever it points to, and a path can never leave the root.
//! Files are then created and renamed relative to the directory's descriptor, also without
//! following a final symlink.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{Error, Result};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A restore root, open.
#[derive(Debug)]
pub struct SafeRoot {
    path: PathBuf,
    fd: OwnedFd,
}

impl SafeRoot {
    /// Opens `root` (resolved once, here: the root itself may be reached through symlinks).
    pub fn open(root: &Path) -> Result<Self> {
        let path = root
            .canonicalize()
            .map_err(|error| Error::io(root, error))?;
        let fd = rustix::fs::open(&path, DIR_FLAGS, Mode::empty())
            .map_err(|errno| Error::io(&path, errno.into()))?;
        Ok(Self { path, fd })
    }

    /// The root's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory `rel` ('/'-separated, "" for the root) through real directories
    /// only.
    pub fn open_dir(&self, rel: &str) -> Result<OwnedFd> {
        let mut current = rustix::fs::openat(self.fd.as_fd(), ".", DIR_FLAGS, Mode::empty())
            .map_err(|errno| Error::io(&self.path, errno.into()))?;
        let mut walked = String::new();
        for part in rel.split('/').filter(|part| !part.is_empty()) {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            current = rustix::fs::openat(current.as_fd(), part, DIR_FLAGS, Mode::empty())
                .map_err(|errno| self.dir_error(&walked, errno))?;
        }
        Ok(current)
    }

    /// Creates the directories `dirs` and their ancestors as real directories (mode 0755 before
    /// umask), refusing any symlink or non-directory in the way. Returns how many were created.
    pub fn ensure_dirs(&self, dirs: &BTreeSet<Vec<&str>>) -> Result<u64> {
        let mut created = 0;
        let mut stack: Vec<(&str, OwnedFd)> = Vec::new();
        for components in dirs {
            let common = stack
                .iter()
                .zip(components)
                .take_while(|((open, _), wanted)| open == *wanted)
                .count();
            stack.truncate(common);
            for part in &components[common..] {
                let parent = stack.last().map_or(self.fd.as_fd(), |(_, fd)| fd.as_fd());
                match rustix::fs::mkdirat(parent, *part, Mode::from_raw_mode(0o755)) {
                    Ok(()) => created += 1,
                    Err(Errno::EXIST) => {}
                    Err(errno) => {
                        let rel = joined(&stack, part);
                        return Err(Error::io(self.path.join(rel), errno.into()));
                    }
                }
                let fd = rustix::fs::openat(parent, *part, DIR_FLAGS, Mode::empty())
                    .map_err(|errno| self.dir_error(&joined(&stack, part), errno))?;
                stack.push((part, fd));
            }
        }
        Ok(created)
    }

    /// The error for a directory that could not be opened: a symlink or non-directory in the
    /// way is an escape attempt (or damage) and says so.
    fn dir_error(&self, rel: &str, errno: Errno) -> Error {
        let path = self.path.join(rel);
        if errno == Errno::LOOP || errno == Errno::NOTDIR {
            return fleetmig_state::Error::PathEscapes {
                path,
                root: self.path.clone(),
                reason: "a directory on the way is a symlink or not a directory; refusing to restore through it".to_owned(),
            }
            .into();
        }
        Error::io(path, errno.into())
    }
}

fn joined(stack: &[(&str, OwnedFd)], last: &str) -> String {
    let mut rel: Vec<&str> = stack.iter().map(|(part, _)| *part).collect();
    rel.push(last);
    rel.join("/")
}

/// The most recently used directory of a restore task, kept open (files arrive grouped by
/// directory).
pub struct DirCache<'a> {
    root: &'a SafeRoot,
    last: Option<(String, OwnedFd)>,
}

impl<'a> DirCache<'a> {
    /// An empty cache over `root`.
    pub fn new(root: &'a SafeRoot) -> Self {
        Self { root, last: None }
    }

    /// The directory `rel`, opened safely unless it is the cached one.
    pub fn get(&mut self, rel: &str) -> Result<BorrowedFd<'_>> {
        if self.last.as_ref().is_none_or(|(open, _)| open != rel) {
            self.last = None;
            let fd = self.root.open_dir(rel)?;
            self.last = Some((rel.to_owned(), fd));
        }
        Ok(self
            .last
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("just opened"))
    }
}

/// What is at a name in a directory (never following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Nothing,
    /// A regular file.
    File {
        /// Size.
        size: u64,
        /// Modification time, ns.
        mtime_ns: i64,
        /// Permission bits.
        mode: u32,
    },
    /// A directory.
    Dir,
    /// A symlink or anything else.
    Other,
}

/// `lstat` of `name` in `dir`.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
pub fn look(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<Found> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => {
            let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode as u32);
            Ok(match kind {
                rustix::fs::FileType::RegularFile => Found::File {
                    size: stat.st_size.max(0) as u64,
                    mtime_ns: (stat.st_mtime as i64) * 1_000_000_000 + stat.st_mtime_nsec as i64,
                    mode: stat.st_mode as u32 & 0o7777,
                },
                rustix::fs::FileType::Directory => Found::Dir,
                _ => Found::Other,
            })
        }
        Err(Errno::NOENT) => Ok(Found::Nothing),
        Err(errno) => Err(errno.into()),
    }
}

/// Plain BLAKE3 of the regular file `name` in `dir` (opened without following a symlink).
pub fn hash_file(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<blake3::Hash> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let mut file = File::from(fd);
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize())
}

/// Creates (or truncates) the temporary file `name` in `dir`, never through a symlink.
pub fn create_temp(dir: BorrowedFd<'_>, name: &str) -> std::io::Result<File> {
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

/// Sets permission bits and the modification time through an open descriptor.
pub fn set_mode_and_mtime(fd: BorrowedFd<'_>, mode: u32, mtime_ns: i64) -> std::io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    };
    rustix::fs::futimens(fd, &times)?;
    Ok(())
}

/// The parent (`""` at the top) and last component of a '/'-separated relative path.
pub fn split_parent(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// The temporary name a file is written under before it is renamed to `target`: short (the
/// target's own name may already be 255 bytes) and the same on every attempt, so an
/// interrupted restore's leftover is simply overwritten.
pub fn temp_name(target: &str) -> String {
    let digest = blake3::hash(target.as_bytes()).to_hex();
    format!(".fleetmig-partial-{}", &digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_never_go_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("Users")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("Users/alice")).unwrap();
        let safe = SafeRoot::open(&root).unwrap();

        let dirs: BTreeSet<Vec<&str>> = [vec!["Users", "alice", "Documents"]].into();
        let error = safe.ensure_dirs(&dirs).unwrap_err();
        assert!(error.to_string().contains("symlink"), "{error}");
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        assert!(safe.open_dir("Users/alice").is_err());

        let dirs: BTreeSet<Vec<&str>> = [
            vec!["Users", "bob", "Documents"],
            vec!["Users", "bob", "Desktop"],
            vec!["ProgramData"],
        ]
        .into();
        assert_eq!(safe.ensure_dirs(&dirs).unwrap(), 4);
        assert!(root.join("Users/bob/Desktop").is_dir());
        assert_eq!(safe.ensure_dirs(&dirs).unwrap(), 0);
        let fd = safe.open_dir("Users/bob/Documents").unwrap();
        assert_eq!(look(fd.as_fd(), "x").unwrap(), Found::Nothing);
    }

    #[test]
    fn temp_names_are_short_and_stable() {
        let long = "x".repeat(255);
        assert!(temp_name(&long).len() < 40);
        assert_eq!(temp_name("a/b"), temp_name("a/b"));
        assert_ne!(temp_name("a/b"), temp_name("a/c"));
        assert_eq!(split_parent("Users/a/b.doc"), ("Users/a", "b.doc"));
        assert_eq!(split_parent("top"), ("", "top"));
    }
}
