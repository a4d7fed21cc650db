//! The hard-link migration store (USMT's `/hardlink` mode, on Linux trees).
//!
//! A store is a directory on the same filesystem as the machine root holding
//! `data/<user>/<path in the XP profile>` (hard links to the originals, so no data is copied),
//! `manifest.json` and `manifest.seal`. Capture never modifies an original: it only adds links
//! (which bumps the originals' link count and ctime, nothing else).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::Selection;

mod capture;
mod delete;
pub(crate) mod verify;

pub use capture::capture;
pub(crate) use capture::symlink_escapes;
pub use delete::delete_store;
pub use verify::verify_store;

/// How to capture.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// The migration job id recorded in the manifest.
    pub job_id: String,
    /// Record files that cannot be read or linked in [`CaptureReport::skipped`] instead of failing.
    pub continue_on_error: bool,
    /// Replace an existing, non-empty store (deleted with [`delete_store`] first).
    pub overwrite: bool,
    /// Only these users, when not empty.
    pub include_users: Vec<String>,
    /// Never these users.
    pub exclude_users: Vec<String>,
    /// Which profile paths migrate and where they go; the built-in rules by default.
    pub selection: Selection,
    /// FOR FAULT-INJECTION TESTING ONLY: sleep this long after each linked file, so a test can
    /// kill a worker in the middle of a capture.
    pub per_file_delay: Option<Duration>,
}

impl CaptureOptions {
    /// Default options for a job.
    pub fn new(job_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            ..Self::default()
        }
    }

    /// Whether `user` is captured under the include/exclude lists.
    pub fn wants_user(&self, user: &str) -> bool {
        let included =
            self.include_users.is_empty() || self.include_users.iter().any(|name| name == user);
        included && !self.exclude_users.iter().any(|name| name == user)
    }
}

/// What a capture did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureReport {
    /// Users captured.
    pub users: Vec<String>,
    /// Files linked into the store.
    pub files: u64,
    /// Directories recreated in the store (profile roots included).
    pub dirs: u64,
    /// Symlinks recorded.
    pub symlinks: u64,
    /// Bytes in the linked files (none of them copied).
    pub bytes: u64,
    /// Files left out by the selection rules (temp, caches, `Thumbs.db`).
    pub excluded_files: u64,
    /// Files that could not be captured: (source path relative to the root, reason).
    pub skipped: Vec<(String, String)>,
    /// The manifest seal (BLAKE3 hex of `manifest.json`).
    pub manifest_digest: String,
}

/// The outcome of [`verify_store`] or [`crate::restore::verify_restore`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// File entries checked.
    pub files_checked: u64,
    /// One line per problem, naming the path.
    pub mismatches: Vec<String>,
}

impl VerifyReport {
    /// True when nothing was wrong.
    pub fn is_ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Refuses a store on another device than the root: hard links cannot cross filesystems.
pub fn ensure_same_filesystem(
    root: &Path,
    root_dev: u64,
    store: &Path,
    store_dev: u64,
) -> Result<()> {
    if root_dev == store_dev {
        return Ok(());
    }
    Err(Error::CrossFilesystem {
        root: root.to_path_buf(),
        root_dev,
        store: store.to_path_buf(),
        store_dev,
    })
}

/// The device id (`st_dev`) of a path.
pub fn device_of(path: &Path) -> Result<u64> {
    use crate::error::IoResultExt;
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path).at(path)?.dev())
}

/// The absolute path of a store's data directory.
pub fn data_dir(store_dir: &Path) -> PathBuf {
    store_dir.join(crate::manifest::DATA_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_filesystem_is_refused() {
        let error = ensure_same_filesystem(
            Path::new("/machines/xp"),
            2049,
            Path::new("/mnt/usb/store"),
            2065,
        )
        .unwrap_err();
        assert!(matches!(error, Error::CrossFilesystem { .. }));
        assert!(error.to_string().contains("different filesystem"));
        ensure_same_filesystem(Path::new("/a"), 7, Path::new("/a/store"), 7).unwrap();
    }

    #[test]
    fn user_filters() {
        let mut opts = CaptureOptions::new("job");
        assert!(opts.wants_user("alice"));
        opts.exclude_users.push("alice".into());
        assert!(!opts.wants_user("alice"));
        opts.include_users.push("bob".into());
        assert!(opts.wants_user("bob") && !opts.wants_user("carol"));
    }
}
