//! Fleet and migration keys, their derived subkeys, and key files.
//!
//! A key file holds 32 random bytes, hex-encoded (64 characters, surrounding whitespace
//! ignored). Every purpose gets its own subkey, derived with `blake3::derive_key` and a
//! context string that names the format version and the purpose; no key is used twice.

use std::fmt;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Context deriving the chunk-id key from the fleet key.
pub const CONTEXT_CHUNK_ID: &str = "fleetmig packed format v1 2025 chunk id";
/// Context deriving the chunk encryption key from the fleet key.
pub const CONTEXT_CHUNK_SEAL: &str = "fleetmig packed format v1 2025 chunk seal";
/// Context deriving the manifest encryption key from the migration key.
pub const CONTEXT_MANIFEST_SEAL: &str = "fleetmig packed format v1 2025 manifest seal";

/// The fleet-wide key: shared by every machine of the fleet so that identical content gets the
/// same chunk id and ciphertext everywhere. Never given to storage nodes.
#[derive(Clone)]
pub struct FleetKey {
    id_key: [u8; 32],
    seal_key: [u8; 32],
}

impl FleetKey {
    /// The key from its 32 raw bytes; derives the chunk-id and chunk-seal subkeys.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            id_key: blake3::derive_key(CONTEXT_CHUNK_ID, &bytes),
            seal_key: blake3::derive_key(CONTEXT_CHUNK_SEAL, &bytes),
        }
    }

    /// Loads a key file (see the module docs).
    pub fn load(path: &Path) -> Result<Self> {
        load_key_bytes(path).map(Self::from_bytes)
    }

    /// The key used for keyed BLAKE3 chunk ids.
    pub(crate) fn id_key(&self) -> &[u8; 32] {
        &self.id_key
    }

    /// The key used to seal chunks.
    pub(crate) fn seal_key(&self) -> &[u8; 32] {
        &self.seal_key
    }
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetKey(<redacted>)")
    }
}

/// A per-migration key sealing that migration's manifest. Without it the manifest (file names,
/// sizes, chunk lists) cannot be read, even with the fleet key.
#[derive(Clone)]
pub struct MigrationKey {
    seal_key: [u8; 32],
}

impl MigrationKey {
    /// The key from its 32 raw bytes; derives the manifest-seal subkey.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            seal_key: blake3::derive_key(CONTEXT_MANIFEST_SEAL, &bytes),
        }
    }

    /// Loads a key file (see the module docs).
    pub fn load(path: &Path) -> Result<Self> {
        load_key_bytes(path).map(Self::from_bytes)
    }

    /// The key used to seal the manifest.
    pub(crate) fn seal_key(&self) -> &[u8; 32] {
        &self.seal_key
    }
}

impl fmt::Debug for MigrationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MigrationKey(<redacted>)")
    }
}

/// 32 fresh random bytes from the operating system's generator.
pub fn generate_key_bytes() -> [u8; 32] {
    rand::random()
}

/// Writes a new key file holding `bytes` hex-encoded, readable by the owner only. Refuses to
/// overwrite an existing file: replacing a key makes everything sealed under it unreadable.
pub fn write_key_file(path: &Path, bytes: &[u8; 32]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reads a key file: 64 hex characters, surrounding whitespace ignored.
pub fn load_key_bytes(path: &Path) -> Result<[u8; 32]> {
    let bad = |reason: String| Error::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::fs::read_to_string(path).map_err(|error| bad(format!("cannot read: {error}")))?;
    let text = text.trim();
    if text.len() != 64 {
        return Err(bad(format!(
            "expected 64 hex characters (32 bytes), found {} characters",
            text.len()
        )));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|error| bad(format!("not hex: {error}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        let bytes = generate_key_bytes();
        write_key_file(&path, &bytes).unwrap();
        assert_eq!(load_key_bytes(&path).unwrap(), bytes);
        assert!(
            write_key_file(&path, &bytes).is_err(),
            "never overwrites a key"
        );

        let short = dir.path().join("short.key");
        std::fs::write(&short, "abcd").unwrap();
        let error = load_key_bytes(&short).unwrap_err().to_string();
        assert!(
            error.contains("short.key") && error.contains("64 hex"),
            "{error}"
        );

        let not_hex = dir.path().join("nothex.key");
        std::fs::write(&not_hex, "z".repeat(64)).unwrap();
        assert!(
            load_key_bytes(&not_hex)
                .unwrap_err()
                .to_string()
                .contains("not hex")
        );

        let missing = dir.path().join("missing.key");
        assert!(
            load_key_bytes(&missing)
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }

    #[test]
    fn subkeys_differ_and_debug_is_redacted() {
        let key = FleetKey::from_bytes([7; 32]);
        assert_ne!(key.id_key(), key.seal_key());
        assert_ne!(key.id_key(), &[7; 32]);
        assert_eq!(format!("{key:?}"), "FleetKey(<redacted>)");
    }
}
