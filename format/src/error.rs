//! The one error type of the packed format.

use std::path::PathBuf;

use crate::chunk::ChunkId;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong packing, sealing or opening packed state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file is missing, unreadable or not 32 hex-encoded bytes.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A sealed chunk is too short, has a bad magic, version or flags.
    #[error("chunk {id}: malformed: {reason}")]
    ChunkMalformed {
        /// The chunk asked for.
        id: ChunkId,
        /// What is wrong.
        reason: String,
    },
    /// The AEAD tag of a chunk did not verify: corrupt, swapped, or sealed under another fleet key.
    #[error(
        "chunk {id}: authentication failed (corrupt, swapped or sealed under another fleet key)"
    )]
    ChunkCorrupt {
        /// The chunk asked for.
        id: ChunkId,
    },
    /// A chunk decrypted, but its plaintext does not hash to its id.
    #[error("chunk {id}: plaintext hashes to {actual}")]
    ChunkIdMismatch {
        /// The chunk asked for.
        id: ChunkId,
        /// The id its plaintext actually has.
        actual: ChunkId,
    },
    /// A sealed manifest is too short, has a bad magic, version or flags.
    #[error("manifest: malformed: {reason}")]
    ManifestMalformed {
        /// What is wrong.
        reason: String,
    },
    /// The manifest's AEAD tag did not verify: wrong migration key (or a corrupted manifest).
    #[error("manifest: authentication failed (wrong migration key or corrupted manifest)")]
    WrongKey,
    /// A manifest entry is hostile or inconsistent (path escapes, drive letters, ...).
    #[error("manifest entry {index} ({path:?}): {reason}")]
    BadEntry {
        /// Index of the entry in the manifest.
        index: usize,
        /// The offending path or value.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file rebuilt from chunks does not have the content hash the manifest promised.
    #[error("file {path}: content hash {actual} does not match the manifest's {expected}")]
    ContentHashMismatch {
        /// The file being written.
        path: PathBuf,
        /// Hash recorded in the manifest.
        expected: String,
        /// Hash of what was written.
        actual: String,
    },
}
