//! Where things live in the data directory, and the two names that end up
//! in paths: chunk ids and migration ids.
//!
//! ```text
//! <data-dir>/node-id                   the node's stable id
//! <data-dir>/controller-token.pub      the controller's token key (hex)
//! <data-dir>/chunks/<ab>/<64 hex id>   32-byte checksum, then the sealed bytes
//! <data-dir>/tmp/                      writes in progress (emptied at startup)
//! <data-dir>/migrations/<id>.json      the migration record (written atomically)
//! <data-dir>/migrations/<id>.manifest  the sealed manifest
//! <data-dir>/migrations/<id>.chunks    referenced chunk ids, sorted, 32 bytes each
//! <data-dir>/quarantine/<64 hex id>    corrupt chunks moved aside by scrub
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Length of a chunk id (keyed BLAKE3, computed by workers).
pub const CHUNK_ID_LEN: usize = 32;
/// Longest migration id accepted in a path.
pub const MAX_MIGRATION_ID_LEN: usize = 128;
/// Name of the file keeping the controller's token public key.
pub const CONTROLLER_KEY_FILE: &str = "controller-token.pub";

/// A 32-byte chunk id. Displayed as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; CHUNK_ID_LEN]);

impl ChunkId {
    /// The id in `bytes`, if it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// Parses 64 hex characters (a chunk file's name).
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != CHUNK_ID_LEN * 2 {
            return None;
        }
        let mut id = [0u8; CHUNK_ID_LEN];
        hex::decode_to_slice(text, &mut id).ok()?;
        // Only the lowercase spelling names a chunk file.
        (text.bytes().all(|b| !b.is_ascii_uppercase())).then_some(Self(id))
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The shard directory name: the first two hex characters.
    pub fn shard(&self) -> String {
        hex::encode(&self.0[..1])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

/// Splits `bytes` (ids concatenated, as on the wire) into chunk ids,
/// refusing a length that is not a multiple of 32 or more than `limit` ids.
pub fn parse_chunk_ids(bytes: &[u8], limit: usize, field: &'static str) -> Result<Vec<ChunkId>> {
    if !bytes.len().is_multiple_of(CHUNK_ID_LEN) {
        return Err(Error::BadChunkIds {
            field,
            reason: format!(
                "{} bytes is not a whole number of {CHUNK_ID_LEN}-byte ids",
                bytes.len()
            ),
        });
    }
    let count = bytes.len() / CHUNK_ID_LEN;
    if count > limit {
        return Err(Error::BadChunkIds {
            field,
            reason: format!("{count} ids, at most {limit} per request"),
        });
    }
    Ok(bytes
        .chunks_exact(CHUNK_ID_LEN)
        .map(|id| ChunkId(id.try_into().expect("chunks_exact yields 32 bytes")))
        .collect())
}

/// A migration id that is safe to use in a file name: 1–128 ASCII letters,
/// digits, `-`, `_` or `.`, not starting with a dot.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MigrationId(String);

impl MigrationId {
    /// Validates `id` (taken from a token, so untrusted as a path).
    pub fn parse(id: &str) -> Result<Self> {
        let refuse = |reason: &str| {
            Err(Error::InvalidMigrationId {
                migration_id: id.chars().take(MAX_MIGRATION_ID_LEN).collect(),
                reason: reason.to_owned(),
            })
        };
        if id.is_empty() {
            return refuse("it is empty");
        }
        if id.len() > MAX_MIGRATION_ID_LEN {
            return refuse("it is longer than 128 characters");
        }
        if id.starts_with('.') {
            return refuse("it starts with a dot");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return refuse("only ASCII letters, digits, '-', '_' and '.' are allowed");
        }
        Ok(Self(id.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets tables keyed by id be searched (and ranged over) by any string,
/// e.g. a listing's `start_after`; the order is the same.
impl std::borrow::Borrow<str> for MigrationId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Paths of the data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of `data_dir` (nothing is created).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.to_owned(),
        }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `chunks/`.
    pub fn chunks_dir(&self) -> PathBuf {
        self.root.join("chunks")
    }

    /// `tmp/`.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// `migrations/`.
    pub fn migrations_dir(&self) -> PathBuf {
        self.root.join("migrations")
    }

    /// `quarantine/`.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// `controller-token.pub`.
    pub fn controller_key_file(&self) -> PathBuf {
        self.root.join(CONTROLLER_KEY_FILE)
    }

    /// `chunks/<ab>/` for `id`.
    pub fn shard_dir(&self, id: &ChunkId) -> PathBuf {
        self.chunks_dir().join(id.shard())
    }

    /// `chunks/<ab>/<hex>`.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        self.shard_dir(id).join(id.to_hex())
    }

    /// `tmp/<hex>.<unique>`: a chunk being written.
    pub fn chunk_temp_path(&self, id: &ChunkId, unique: u64) -> PathBuf {
        self.tmp_dir().join(format!("{}.{unique}", id.to_hex()))
    }

    /// `migrations/<id>.json`.
    pub fn record_path(&self, id: &MigrationId) -> PathBuf {
        self.migrations_dir().join(format!("{id}.json"))
    }

    /// `migrations/<id>.manifest`.
    pub fn manifest_path(&self, id: &MigrationId) -> PathBuf {
        self.migrations_dir().join(format!("{id}.manifest"))
    }

    /// `migrations/<id>.chunks`.
    pub fn references_path(&self, id: &MigrationId) -> PathBuf {
        self.migrations_dir().join(format!("{id}.chunks"))
    }

    /// Every shard directory, `chunks/00` to `chunks/ff`.
    pub fn all_shard_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        (0..=255u8).map(|byte| self.chunks_dir().join(hex::encode([byte])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_ids_are_safe_file_names() {
        for good in ["wave-1.m42", "a", "J_01", &"x".repeat(128)] {
            assert!(MigrationId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "../etc",
            "a b",
            "é",
            "a\0b",
            &"x".repeat(129),
        ] {
            let err = MigrationId::parse(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidMigrationId { .. }), "{err}");
        }
    }

    #[test]
    fn chunk_paths_are_sharded_by_the_first_byte() {
        let layout = Layout::new(Path::new("/d"));
        let mut id = ChunkId([0x11; 32]);
        id.0[0] = 0xab;
        let path = layout.chunk_path(&id);
        assert_eq!(
            path,
            Path::new("/d/chunks/ab").join(format!("ab{}", "11".repeat(31)))
        );
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex(&id.to_hex().to_uppercase()), None);
        assert_eq!(ChunkId::from_hex("ab"), None);
        assert_eq!(layout.all_shard_dirs().count(), 256);
    }

    #[test]
    fn id_lists_must_be_whole_and_bounded() {
        assert_eq!(parse_chunk_ids(&[7; 64], 2, "chunk_ids").unwrap().len(), 2);
        assert!(parse_chunk_ids(&[7; 63], 2, "chunk_ids").is_err());
        assert!(parse_chunk_ids(&[7; 96], 2, "chunk_ids").is_err());
        assert!(parse_chunk_ids(&[], 2, "chunk_ids").unwrap().is_empty());
    }
}
