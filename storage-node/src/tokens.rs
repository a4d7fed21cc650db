//! The controller's token public key, and checking capability tokens with it.
//!
//! The key arrives with every `RegisterNodeResponse` and is kept in
//! `controller-token.pub` (hex) so a restarted node verifies tokens before
//! it reaches the controller again. Every controller of a fleet hands out
//! the same key; the first one the node holds (stored, or received) stays in
//! use, and a registration handing out another is logged as an error and
//! ignored (to change the key, stop the node and remove the file).
//! `--token-public-key FILE` pins a key instead; the controllers' are then
//! ignored.

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

    /// Checks `token` for one of `roles` on node `node_id` at `now_unix_ms`.
    pub fn verify_any(
        &self,
        token: Option<&v1::SignedCapability>,
        roles: &[v1::CapabilityRole],
        node_id: &str,
        now_unix_ms: i64,
    ) -> Result<v1::Capability> {
        let verifier = self.read().clone().ok_or(Error::NoControllerKey)?;
        Ok(verifier.verify_any(token, roles, node_id, now_unix_ms)?)
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

    /// Takes the key a controller handed out at registration: the first key
    /// is stored (blocking: call off the runtime) and used from then on. A
    /// pinned key is kept (a different offer is a warning); a key in use is
    /// never replaced by a different offer ([`Offer::Conflict`]: the caller
    /// logs it as an error).
    pub fn offer_blocking(&self, key: &[u8]) -> Result<Offer> {
        if key.is_empty() {
            return Ok(Offer::Unchanged);
        }
        let offered =
            TokenVerifier::from_public_key(key).map_err(|err| Error::ControllerKeyFile {
                path: self.inner.stored_key_file.clone(),
                reason: format!("the controller handed out an unusable key: {err}"),
            })?;
        // Held for writing throughout: two registrations answering at once
        // cannot both install a key.
        let mut verifier = self
            .inner
            .verifier
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = verifier.as_ref().map(TokenVerifier::public_key);
        if current == Some(offered.public_key()) {
            return Ok(Offer::Unchanged);
        }
        if let Some(pinned) = &self.inner.pinned_from {
            tracing::warn!(
                pinned = %pinned.display(),
                offered = %hex::encode(key),
                "the controller's token key differs from the pinned one; keeping the pinned key"
            );
            return Ok(Offer::Unchanged);
        }
        if let Some(in_use) = current {
            return Ok(Offer::Conflict {
                in_use: hex::encode(in_use),
                offered: hex::encode(key),
            });
        }
        let path = &self.inner.stored_key_file;
        durable::write_atomically(path, format!("{}\n", hex::encode(key)).as_bytes()).map_err(
            |err| Error::ControllerKeyFile {
                path: path.clone(),
                reason: err.to_string(),
            },
        )?;
        tracing::info!(key = %hex::encode(key), "controller token key received");
        *verifier = Some(offered);
        Ok(Offer::Taken)
    }
}

/// What became of a key a controller handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// The node had no key: this one is stored and used from now on.
    Taken,
    /// The node already uses this key (or a pinned one); nothing changed.
    Unchanged,
    /// The node uses another key and keeps it: the controllers disagree.
    Conflict {
        /// The key in use, hex.
        in_use: String,
        /// The key offered, hex.
        offered: String,
    },
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
    fn the_first_controller_key_is_stored_reloaded_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stored = dir.path().join("controller-token.pub");
        let first = TokenSigner::from_seed([3; 32]);
        let keys = TokenKeys::load(stored.clone(), None).unwrap();
        assert_eq!(
            keys.offer_blocking(&first.public_key()).unwrap(),
            Offer::Taken
        );
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

        // Another key (a controller of another fleet, or a rotation) never
        // replaces the one in use.
        let second = TokenSigner::from_seed([4; 32]);
        let offer = reloaded.offer_blocking(&second.public_key()).unwrap();
        assert_eq!(
            offer,
            Offer::Conflict {
                in_use: hex::encode(first.public_key()),
                offered: hex::encode(second.public_key()),
            }
        );
        assert_eq!(
            reloaded.offer_blocking(&first.public_key()).unwrap(),
            Offer::Unchanged
        );
        assert!(
            reloaded
                .verify(
                    Some(&token(&first, CapabilityRole::Restore)),
                    CapabilityRole::Restore,
                    "n",
                    1
                )
                .is_ok(),
            "the first key stays in use"
        );
        assert!(
            reloaded
                .verify(
                    Some(&token(&second, CapabilityRole::Restore)),
                    CapabilityRole::Restore,
                    "n",
                    1
                )
                .is_err()
        );
        let on_disk = std::fs::read_to_string(&stored).unwrap();
        assert_eq!(on_disk.trim(), hex::encode(first.public_key()));
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
