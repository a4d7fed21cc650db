//! Key escrow: the keys the controller holds, encrypted at rest under a
//! master key read from a file.
//!
//! The fleet key, the token-signing seed and every migration key are stored
//! sealed: `sealed:v1:<hex of nonce (24) || XChaCha20-Poly1305 ciphertext>`,
//! with the store key (or file name) as associated data, so a sealed value
//! moved to another key does not open. The master key itself never enters
//! the store, argv or the log: it is read from `--master-key-file` (by
//! default `<data-dir>/master.key`, created on first start with mode 0600;
//! several controllers on etcd share one file). Values written before
//! escrow (plain hex) are still read, and sealed on their next write.
//! Migration keys are never deleted, not even with their computer
//! association: `fleetmig migration recover` needs them.

use std::path::Path;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::error::{Error, Result};

/// Prefix of a sealed value.
const SEALED_PREFIX: &str = "sealed:v1:";
/// Default file name of the master key in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// The key every escrowed key is sealed under.
pub struct MasterKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A master key of these bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&Key::from(bytes)),
        }
    }

    /// Reads the key file at `path` (64 hex characters), creating it with a
    /// random key (mode 0600) when `create` and it does not exist.
    pub fn load(path: &Path, create: bool) -> Result<Self> {
        let io = |err: String| Error::StoreIo {
            path: path.display().to_string(),
            message: err,
        };
        if !path.exists() {
            if !create {
                return Err(io("the master key file does not exist".into()));
            }
            let bytes = fleetmig_format::keys::generate_key_bytes();
            fleetmig_format::keys::write_key_file(path, &bytes).map_err(|e| io(e.to_string()))?;
            tracing::info!(path = %path.display(), "created the master key: back it up apart from the store");
        }
        let bytes = fleetmig_format::keys::load_key_bytes(path).map_err(|e| io(e.to_string()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// A fresh random master key (tests).
    pub fn ephemeral() -> Self {
        Self::from_bytes(fleetmig_format::keys::generate_key_bytes())
    }

    /// Seals a 32-byte `secret` stored under `name`.
    pub fn seal(&self, name: &str, secret: &[u8; 32]) -> String {
        let nonce: [u8; 24] = rand::random();
        let mut body = secret.to_vec();
        self.cipher
            .encrypt_in_place(&XNonce::from(nonce), name.as_bytes(), &mut body)
            .expect("xchacha20poly1305 seals 32 bytes");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        format!("{SEALED_PREFIX}{}", hex::encode(out))
    }

    /// Opens what [`MasterKey::seal`] wrote under `name` (or a legacy plain
    /// 64-hex value).
    pub fn open(&self, name: &str, stored: &str) -> Result<[u8; 32]> {
        let corrupt = |reason: &str| Error::StoreCorrupt {
            key: name.to_string(),
            reason: reason.to_string(),
        };
        let Some(sealed) = stored.strip_prefix(SEALED_PREFIX) else {
            return crate::keys::decode_migration_key(name, stored);
        };
        let bytes = hex::decode(sealed).map_err(|_| corrupt("a sealed key is hex"))?;
        if bytes.len() != 24 + 32 + 16 {
            return Err(corrupt("a sealed key is 72 bytes"));
        }
        let (nonce, body) = bytes.split_at(24);
        let mut body = body.to_vec();
        let nonce: [u8; 24] = nonce.try_into().expect("24 bytes");
        self.cipher
            .decrypt_in_place(&XNonce::from(nonce), name.as_bytes(), &mut body)
            .map_err(|_| {
                corrupt("does not open under the master key (another --master-key-file?)")
            })?;
        body.try_into()
            .map_err(|_| corrupt("a sealed key holds 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_under_their_name_and_master_key() {
        let master = MasterKey::ephemeral();
        let secret = [7u8; 32];
        let sealed = master.seal("migkeys/j1", &secret);
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains(&hex::encode(secret)), "{sealed}");
        assert_eq!(master.open("migkeys/j1", &sealed).unwrap(), secret);
        assert!(
            master.open("migkeys/j2", &sealed).is_err(),
            "moved to another key"
        );
        assert!(MasterKey::ephemeral().open("migkeys/j1", &sealed).is_err());
        // A value written before escrow still reads.
        assert_eq!(
            master.open("migkeys/old", &hex::encode(secret)).unwrap(),
            secret
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('0');
        assert!(master.open("migkeys/j1", &tampered).is_err() || tampered == sealed);
    }

    #[test]
    fn the_key_file_is_created_once_and_required_when_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        assert!(MasterKey::load(&path, false).is_err());
        let first = MasterKey::load(&path, true).unwrap();
        let sealed = first.seal("x", &[1; 32]);
        let again = MasterKey::load(&path, false).unwrap();
        assert_eq!(again.open("x", &sealed).unwrap(), [1; 32]);
    }
}
