//! The controller's token public key, and checking capability tokens with it.
//!
//! The key arrives with every `RegisterNodeResponse` and is kept in
//! `controller-token.pub` (hex) so a restarted node verifies tokens before
//! it reaches the controller again. `--token-public-key FILE` pins a key
//! instead; the controller's is then ignored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use fleetmig_auth::{Requirement, TokenVerifier};
use fleetmig_proto::v1;

use crate::durable;
use crate::error::{Error, Result};

/// The verifier in use, if any key is known. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` until a key is known: every migration call is then refused.
    verifier: RwLock<Option<TokenVerifier>>,
    /// Where the controller's key is kept.
    stored_key_file: PathBuf,
    /// Set when `--token-public-key` pins the key.
    pinned_from: Option<PathBuf>,
}

impl TokenKeys {
    /// Loads the pinned key file if given (an unreadable one is an error),
    /// else the key stored by an earlier registration (an unreadable one is
    /// ignored with a warning: the controller hands it out again).
    pub fn load(stored_key_file: PathBuf, pinned: Option<&Path>) -> Result<Self> {
        let verifier = match pinned {
            Some(path) => Some(read_key_file(path)?),
            None if stored_key_file.exists() => match read_key_file(&stored_key_file) {
                Ok(verifier) => Some(verifier),
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring the stored controller key");
                    None
                }
            },
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                verifier: RwLock::new(verifier),
                stored_key_file,
                pinned_from: pinned.map(Path::to_owned),
            }),
        })
    }

    /// Whether a key is known.
    pub fn has_key(&self) -> bool {
        self.read().is_some()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<TokenVerifier>> {
        self.inner
            .verifier
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks `token` for `role` on node `node_id` at `now_unix_ms`.
    pub fn verify(
        &self,
        token: Option<&v1::SignedCapability>,
        role: v1::CapabilityRole,
        node_id: &str,
        now_unix_ms: i64,
    ) -> Result<v1::Capability> {
        let verifier = self.read().clone().ok_or(Error::NoControllerKey)?;
        Ok(verifier.verify(
            token,
            Requirement {
                role,
                node_id,
                now_unix_ms,
            },
        )?)
    }

    /// Takes the key the controller handed out at registration: stores it
    /// (blocking: call off the runtime) and uses it from now on. A pinned
    /// key is kept; a changed key is logged.
    pub fn offer_blocking(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Ok(());
        }
        let offered =
            TokenVerifier::from_public_key(key).map_err(|err| Error::ControllerKeyFile {
                path: self.inner.stored_key_file.clone(),
                reason: format!("the controller handed out an unusable key: {err}"),
            })?;
        let current = self.read().as_ref().map(TokenVerifier::public_key);
        if current == Some(offered.public_key()) {
            return Ok(());
        }
        if let Some(pinned) = &self.inner.pinned_from {
            tracing::warn!(
                pinned = %pinned.display(),
                offered = %hex::encode(key),
                "the controller's token key differs from the pinned one; keeping the pinned key"
            );
            return Ok(());
        }
        let path = &self.inner.stored_key_file;
        durable::write_atomically(path, format!("{}\n", hex::encode(key)).as_bytes()).map_err(
            |err| Error::ControllerKeyFile {
                path: path.clone(),
                reason: err.to_string(),
            },
        )?;
        match current {
            Some(old) => tracing::warn!(
                old = %hex::encode(old),
                new = %hex::encode(key),
                "the controller's token key changed; tokens signed with the old key are refused from now on"
            ),
            None => tracing::info!(key = %hex::encode(key), "controller token key received"),
        }
        *self
            .inner
            .verifier
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(offered);
        Ok(())
    }
}

/// Reads a key file: 64 hex characters, surrounding whitespace ignored.
pub fn read_key_file(path: &Path) -> Result<TokenVerifier> {
    let refuse = |reason: String| Error::ControllerKeyFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|err| refuse(err.to_string()))?;
    let text = text.trim();
    if text.len() != 64 {
        return Err(refuse(format!(
            "expected 64 hex characters, found {}",
            text.len()
        )));
    }
    let bytes = hex::decode(text).map_err(|err| refuse(format!("not hex: {err}")))?;
    TokenVerifier::from_public_key(&bytes).map_err(|err| refuse(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_auth::TokenSigner;
    use v1::CapabilityRole;

    fn token(signer: &TokenSigner, role: CapabilityRole) -> v1::SignedCapability {
        signer.sign(&v1::Capability {
            machine_id: "pc".into(),
            migration_id: "m".into(),
            node_id: "n".into(),
            role: role as i32,
            issued_unix_ms: 0,
            expires_unix_ms: 10_000,
            fence: 1,
        })
    }

    #[test]
    fn without_a_key_every_call_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load(dir.path().join("k.pub"), None).unwrap();
        let signer = TokenSigner::from_seed([3; 32]);
        let err = keys
            .verify(
                Some(&token(&signer, CapabilityRole::Capture)),
                CapabilityRole::Capture,
                "n",
                1,
            )
            .expect_err("no key");
        assert!(matches!(err, Error::NoControllerKey));
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unavailable);
    }

    #[test]
    fn the_controller_key_is_stored_reloaded_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let stored = dir.path().join("controller-token.pub");
        let first = TokenSigner::from_seed([3; 32]);
        let keys = TokenKeys::load(stored.clone(), None).unwrap();
        keys.offer_blocking(&first.public_key()).unwrap();
        let on_disk = std::fs::read_to_string(&stored).unwrap();
        assert_eq!(on_disk.trim(), hex::encode(first.public_key()));

        let reloaded = TokenKeys::load(stored.clone(), None).unwrap();
        let claims = reloaded
            .verify(
                Some(&token(&first, CapabilityRole::Restore)),
                CapabilityRole::Restore,
                "n",
                1,
            )
            .unwrap();
        assert_eq!(claims.migration_id, "m");

        let second = TokenSigner::from_seed([4; 32]);
        reloaded.offer_blocking(&second.public_key()).unwrap();
        assert!(
            reloaded
                .verify(
                    Some(&token(&first, CapabilityRole::Restore)),
                    CapabilityRole::Restore,
                    "n",
                    1
                )
                .is_err(),
            "old key no longer accepted"
        );
        assert!(
            reloaded
                .verify(
                    Some(&token(&second, CapabilityRole::Restore)),
                    CapabilityRole::Restore,
                    "n",
                    1
                )
                .is_ok()
        );
    }

    #[test]
    fn a_pinned_key_wins_over_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        let pinned_signer = TokenSigner::from_seed([5; 32]);
        let pinned = dir.path().join("pinned.pub");
        std::fs::write(
            &pinned,
            format!("  {}\n", hex::encode(pinned_signer.public_key())),
        )
        .unwrap();
        let keys = TokenKeys::load(dir.path().join("stored.pub"), Some(&pinned)).unwrap();
        keys.offer_blocking(&TokenSigner::from_seed([6; 32]).public_key())
            .unwrap();
        assert!(
            keys.verify(
                Some(&token(&pinned_signer, CapabilityRole::Capture)),
                CapabilityRole::Capture,
                "n",
                1
            )
            .is_ok()
        );
        std::fs::write(&pinned, "abc").unwrap();
        let err =
            TokenKeys::load(dir.path().join("stored.pub"), Some(&pinned)).expect_err("short key");
        assert!(err.to_string().contains("64 hex"), "{err}");
    }
}
