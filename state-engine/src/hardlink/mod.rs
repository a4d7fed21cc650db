//! The hard-link migration store (USMT's `/hardlink` mode, on Linux trees).
//!
//! A store is a directory on the same filesystem as the machine root holding
//! `data/<user>/<path in the XP profile>` (hard links to the originals, so no data is copied),
//! `data/_system/<path from the machine root>` for machine-wide files that System-context rules
//! select (see [`crate::rules`]), `manifest.json` and `manifest.seal`. Capture never modifies an original: it only adds links
//! (which bumps the originals' link count and ctime, nothing else).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::{Selection, XP_PROFILES_DIR};
use crate::users::{self, UserFilter};

mod capture;
mod delete;
pub(crate) mod verify;

pub(crate) use capture::symlink_escapes;
pub use capture::{capture, count_files};
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
    /// User include patterns (USMT `/ui`): `DOMAIN\name` or `name` globs, matched
    /// case-insensitively; a match is always captured (see [`crate::users`]).
    pub include_users: Vec<String>,
    /// User exclude patterns (USMT `/ue`), same syntax; include patterns win.
    pub exclude_users: Vec<String>,
    /// Leave out profiles whose `NTUSER.DAT` is older than this (USMT `/uel`); include
    /// patterns still win.
    pub exclude_users_older_than: Option<Duration>,
    /// The domain matched by the `DOMAIN\` part of user patterns; the machine's hostname when
    /// `None` (local accounts, see [`crate::users`]).
    pub user_domain: Option<String>,
    /// Which files migrate and where they go (profile files, plus machine-wide folders named
    /// by System-context rules); the built-in rules by default.
    pub selection: Selection,
    /// FOR FAULT-INJECTION TESTING ONLY: sleep this long after each linked file, so a test can
    /// kill a worker in the middle of a capture.
    pub per_file_delay: Option<Duration>,
    /// FOR FAULT-INJECTION TESTING ONLY: files with exactly this name fail as if they could
    /// not be read (permission denied). Tests run as root, which reads even mode-000 files.
    pub fault_unreadable_name: Option<String>,
}

impl CaptureOptions {
    /// Default options for a job.
    pub fn new(job_id: impl Into<String>) -> Self {
        Self {
            job_id: job_id.into(),
            ..Self::default()
        }
    }

    /// The user filter these options describe.
    pub fn user_filter(&self) -> UserFilter {
        UserFilter {
            include: self.include_users.clone(),
            exclude: self.exclude_users.clone(),
            exclude_older_than: self.exclude_users_older_than,
        }
    }

    /// Whether `user` is captured under the include/exclude patterns, matching the `DOMAIN\`
    /// part against [`CaptureOptions::user_domain`] (empty when unset). The age limit needs the
    /// profile, so it is not applied here: see [`CaptureOptions::wants_profile`].
    pub fn wants_user(&self, user: &str) -> bool {
        let now = SystemTime::now();
        let domain = self.user_domain.as_deref().unwrap_or("");
        self.user_filter()
            .decide(domain, user, Some(now), now)
            .selected()
    }

    /// Whether the profile `user` of the XP machine at `root` is captured: patterns (the domain
    /// is the machine's hostname unless [`CaptureOptions::user_domain`] is set) and the age of
    /// its `NTUSER.DAT`.
    pub fn wants_profile(&self, root: &Path, user: &str) -> bool {
        let domain = self
            .user_domain
            .clone()
            .unwrap_or_else(|| crate::inventory::read_hostname(root));
        let last_used = users::last_used(&root.join(XP_PROFILES_DIR).join(user));
        self.user_filter()
            .decide(&domain, user, last_used, SystemTime::now())
            .selected()
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
        // Include beats exclude; with an exclusion present, others are still captured (USMT).
        assert!(opts.wants_user("BOB") && opts.wants_user("carol"));
        opts.exclude_users = vec!["*\\*".into()];
        assert!(opts.wants_user("bob") && !opts.wants_user("carol"));
        opts.exclude_users.clear();
        assert!(opts.wants_user("bob") && !opts.wants_user("carol"));
        opts.include_users = vec!["CORP\\*".into()];
        opts.user_domain = Some("corp".into());
        assert!(opts.wants_user("dave"));
        opts.user_domain = Some("PC-01".into());
        assert!(!opts.wants_user("dave"));
    }

    #[test]
    fn profile_age_filter() {
        let root = tempfile::tempdir().unwrap();
        let profiles = root.path().join(XP_PROFILES_DIR);
        for user in ["fresh", "stale", "admin"] {
            std::fs::create_dir_all(profiles.join(user)).unwrap();
            std::fs::write(profiles.join(user).join("NTUSER.DAT"), b"hive").unwrap();
        }
        let old = filetime::FileTime::from_unix_time(1_100_000_000, 0);
        for user in ["stale", "admin"] {
            filetime::set_file_mtime(profiles.join(user).join("NTUSER.DAT"), old).unwrap();
        }
        let opts = CaptureOptions {
            exclude_users_older_than: Some(Duration::from_secs(30 * 86_400)),
            include_users: vec!["*\\admin".into()],
            ..CaptureOptions::new("job")
        };
        assert!(opts.wants_profile(root.path(), "fresh"));
        assert!(!opts.wants_profile(root.path(), "stale"));
        assert!(opts.wants_profile(root.path(), "admin"));
    }
}
