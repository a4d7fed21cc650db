//! The one error type of the state engine.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while generating, capturing, restoring or checking user state.
///
/// Every variant names the path (or manifest field) involved so a log line is enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem call failed on `path`.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory the failing call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A directory that must be empty (a fresh store, a fresh machine root) already has content.
    #[error("{path} already exists and is not empty")]
    NotEmpty {
        /// The directory that is not empty.
        path: PathBuf,
    },
    /// The store and the machine root live on different filesystems, so hard links cannot work.
    #[error(
        "store {store} is on a different filesystem (device {store_dev}) than {root} (device {root_dev})"
    )]
    CrossFilesystem {
        /// The machine root.
        root: PathBuf,
        /// Device id of the machine root.
        root_dev: u64,
        /// The store directory.
        store: PathBuf,
        /// Device id of the store directory.
        store_dev: u64,
    },
    /// The filesystem under `path` refused to create a hard link.
    #[error("hard links are not supported under {path}: {source}")]
    HardLinksUnsupported {
        /// Where the probe link was attempted.
        path: PathBuf,
        /// Why the probe failed.
        #[source]
        source: io::Error,
    },
    /// The store is placed where capturing would capture the store itself.
    #[error("store {store} must not be inside the profiles directory {profiles}")]
    StoreInsideProfiles {
        /// The store directory.
        store: PathBuf,
        /// The profiles directory being captured.
        profiles: PathBuf,
    },
    /// The machine root does not look like a machine of the expected kind.
    #[error("{path} is not a windows xp machine tree: {reason}")]
    NotAnXpMachine {
        /// The machine root.
        path: PathBuf,
        /// What was missing.
        reason: String,
    },
    /// The store has no seal file; it was never completed or has been tampered with.
    #[error("store {path} is not sealed (missing manifest.seal); refusing to use it")]
    MissingSeal {
        /// The store directory.
        path: PathBuf,
    },
    /// The manifest no longer matches its seal.
    #[error(
        "manifest in store {path} does not match its seal (expected {expected}, found {actual}); refusing to use it"
    )]
    SealMismatch {
        /// The store directory.
        path: PathBuf,
        /// The digest recorded in the seal.
        expected: String,
        /// The digest of manifest.json as found.
        actual: String,
    },
    /// The manifest could not be parsed or serialized.
    #[error("manifest {path} is not valid json: {source}")]
    ManifestJson {
        /// The manifest file.
        path: PathBuf,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The manifest parsed, but says something the engine refuses to act on.
    #[error("manifest {path} is invalid: {reason}")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, naming the offending entry.
        reason: String,
    },
    /// A path would resolve outside the directory it must stay in.
    #[error("path {path} escapes {root}: {reason}")]
    PathEscapes {
        /// The offending path.
        path: PathBuf,
        /// The directory it must stay inside.
        root: PathBuf,
        /// How it escapes.
        reason: String,
    },
    /// A store file no longer matches its manifest entry.
    #[error("store file {path} does not match the manifest: {reason}")]
    StoreMismatch {
        /// The file in the store.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A rules file is not well-formed XML or not a USMT `<migration>` document.
    #[error("rules file {file}:{line}:{column}: {message}")]
    RulesXml {
        /// The rules file as named by the caller.
        file: String,
        /// 1-based line of the problem.
        line: u32,
        /// 1-based column of the problem.
        column: u32,
        /// What is wrong.
        message: String,
    },
    /// A file name is not valid UTF-8 and cannot be recorded in the manifest.
    #[error("file name of {path} is not valid utf-8")]
    NonUtf8Name {
        /// The path with the offending name (lossily rendered).
        path: PathBuf,
    },
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the path a failing `io` call was about.
pub(crate) trait IoResultExt<T> {
    /// Maps an `io::Error` into [`Error::Io`] naming `path`.
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        })
    }
}

impl<T> IoResultExt<T> for rustix::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|errno| Error::Io {
            path: path.as_ref().to_path_buf(),
            source: errno.into(),
        })
    }
}
