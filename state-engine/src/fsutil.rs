//! Small filesystem helpers shared by the modules: stat conversion, atomic writes, path checks.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoResultExt, Result};

/// The parts of a `stat` the engine records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatInfo {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) mode: u32,
    pub(crate) size: u64,
    pub(crate) mtime_ns: i64,
}

impl StatInfo {
    /// Converts a rustix `Stat` (field widths differ between architectures).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub(crate) fn from_rustix(stat: &rustix::fs::Stat) -> Self {
        Self {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
            mode: stat.st_mode as u32,
            size: stat.st_size.max(0) as u64,
            mtime_ns: (stat.st_mtime as i64) * 1_000_000_000 + stat.st_mtime_nsec as i64,
        }
    }

    /// Converts std metadata.
    pub(crate) fn from_metadata(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }
}

/// `lstat` as a [`StatInfo`].
pub(crate) fn lstat(path: &Path) -> Result<StatInfo> {
    let meta = fs::symlink_metadata(path).at(path)?;
    Ok(StatInfo::from_metadata(&meta))
}

/// Nanoseconds since the epoch into a `filetime::FileTime`.
pub(crate) fn filetime_from_ns(mtime_ns: i64) -> filetime::FileTime {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    let nanos = mtime_ns.rem_euclid(1_000_000_000) as u32;
    filetime::FileTime::from_unix_time(secs, nanos)
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    {
        let mut file = File::create(&tmp).at(&tmp)?;
        file.write_all(bytes).at(&tmp)?;
        file.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, &target).at(&target)?;
    sync_dir(dir)
}

/// fsyncs a directory so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).at(dir)
}

/// Checks that a manifest path is a plain relative path: not empty, not absolute, no `.`/`..`
/// components, no empty components, no NUL. Returns the reason when it is not.
pub(crate) fn check_relative(path: &str) -> std::result::Result<(), String> {
    if path.is_empty() {
        return Err("empty path".to_owned());
    }
    if path.contains('\0') {
        return Err("path contains a nul byte".to_owned());
    }
    if path.starts_with('/') {
        return Err("absolute path".to_owned());
    }
    for part in path.split('/') {
        match part {
            "" => return Err("empty path component".to_owned()),
            "." | ".." => return Err(format!("'{part}' component")),
            _ => {}
        }
    }
    Ok(())
}

/// Normalises `path` (absolute, or relative to `root`) into components relative to `root`,
/// lexically. Refuses paths that leave `root`. `root` must be canonical.
pub(crate) fn relative_under(root: &Path, path: &Path) -> Result<PathBuf> {
    let escapes = |reason: &str| Error::PathEscapes {
        path: path.to_path_buf(),
        root: root.to_path_buf(),
        reason: reason.to_owned(),
    };
    let rel = if path.is_absolute() {
        // Resolve the existing part so /root/./x and symlinked roots compare properly.
        let absolute = canonicalize_existing_prefix(path)?;
        absolute
            .strip_prefix(root)
            .map(Path::to_path_buf)
            .map_err(|_| escapes("not under the root"))?
    } else {
        path.to_path_buf()
    };
    let mut clean = PathBuf::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return Err(escapes("contains '..' or a root component")),
        }
    }
    Ok(clean)
}

/// Canonicalises the longest existing ancestor of `path` and appends the rest unchanged.
fn canonicalize_existing_prefix(path: &Path) -> Result<PathBuf> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(canonical) => {
                let mut out = canonical;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => {
                let Some(name) = existing.file_name().map(|name| name.to_os_string()) else {
                    return Ok(path.to_path_buf());
                };
                rest.push(name);
                if !existing.pop() {
                    return Ok(path.to_path_buf());
                }
            }
        }
    }
}

/// Removes a tree without following symlinks, making directories writable first when a removal
/// is refused (read-only directories in old trees). Missing paths are fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).at(path),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).at(path);
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path).at(path)
        }
    }
}

/// Adds owner rwx to every directory of a tree (never following symlinks).
fn make_dirs_writable(path: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(_) => continue,
        };
        if entry.file_type().is_dir() {
            let mode = entry
                .metadata()
                .map(|meta| meta.permissions().mode())
                .unwrap_or(0o700);
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode | 0o700));
        }
    }
    Ok(())
}

/// Returns true when `dir` is missing or has no entries.
pub(crate) fn is_empty_or_missing(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(error).at(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_checks() {
        assert!(check_relative("Users/alice/a.doc").is_ok());
        assert!(check_relative("Users/alice/报告 (1).txt").is_ok());
        assert!(check_relative("").is_err());
        assert!(check_relative("/etc/passwd").is_err());
        assert!(check_relative("Users/../../etc").is_err());
        assert!(check_relative("Users/./x").is_err());
        assert!(check_relative("Users//x").is_err());
        assert!(check_relative("Users/a\0b").is_err());
    }

    #[test]
    fn relative_under_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(
            relative_under(&root, Path::new("store")).unwrap(),
            PathBuf::from("store")
        );
        assert_eq!(
            relative_under(&root, &root.join("a/b")).unwrap(),
            PathBuf::from("a/b")
        );
        assert!(relative_under(&root, Path::new("../x")).is_err());
        assert!(relative_under(&root, Path::new("/elsewhere")).is_err());
    }
}
