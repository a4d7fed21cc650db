//! The controller's secrets: the fleet key (chunk ids and chunk sealing of
//! every packed capture) and the Ed25519 key that signs capability tokens.
//!
//! Both live in files in the data directory, created on first start with
//! mode 0600 and never overwritten: losing the fleet key makes every stored
//! capture unreadable. Migration keys (one per replace job) are kept in the
//! store under `migkeys/` and handed to a worker only with its own job.

use crate::error::{Error, Result};
use crate::escrow::MasterKey;
use crate::keys;
use crate::store::{Store, Txn, TxnOutcome};
use fleetmig_auth::TokenSigner;
use std::path::Path;
use std::sync::Arc;

/// Store key of the shared fleet key (several controllers).
const FLEET_KEY_ENTRY: &str = "secrets/fleet-key";
/// Store key of the shared token-signing seed (several controllers).
const SIGNING_KEY_ENTRY: &str = "secrets/token-signing-key";

/// The 32-byte key at `entry`, sealed under `master`, created at random if
/// absent.
async fn shared_key(store: &dyn Store, master: &MasterKey, entry: &str) -> Result<[u8; 32]> {
    for _ in 0..4 {
        if let Some(kv) = store.get(entry).await? {
            let stored: String = keys::decode(entry, &kv.value)?;
            return master.open(entry, &stored);
        }
        let fresh = master.seal(entry, &fleetmig_format::keys::generate_key_bytes());
        let txn = Txn::new()
            .when_absent(entry)
            .put(entry, keys::encode(&fresh));
        if let TxnOutcome::Committed { .. } = store.txn(txn).await? {
            tracing::info!(entry, "created a shared key");
        }
    }
    Err(Error::Conflict { key: entry.into() })
}

/// File name of the fleet key in the data directory.
pub const FLEET_KEY_FILE: &str = "fleet.key";
/// File name of the token signing key in the data directory.
pub const SIGNING_KEY_FILE: &str = "token-signing.key";

/// The fleet key and the token signer.
pub struct Secrets {
    fleet_key: [u8; 32],
    signer: TokenSigner,
    master: Arc<MasterKey>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// Loads both keys from `data_dir`, creating the missing ones.
    pub fn load_or_create(data_dir: &Path, master: Arc<MasterKey>) -> Result<Secrets> {
        let fleet_path = data_dir.join(FLEET_KEY_FILE);
        let key_error = |path: &Path, err: String| Error::StoreIo {
            path: path.display().to_string(),
            message: err,
        };
        if !fleet_path.exists() {
            let bytes = fleetmig_format::keys::generate_key_bytes();
            fleetmig_format::keys::write_key_file(&fleet_path, &bytes)
                .map_err(|err| key_error(&fleet_path, err.to_string()))?;
            tracing::info!(path = %fleet_path.display(), "created the fleet key");
        }
        let fleet_key = fleetmig_format::keys::load_key_bytes(&fleet_path)
            .map_err(|err| key_error(&fleet_path, err.to_string()))?;
        let signing_path = data_dir.join(SIGNING_KEY_FILE);
        let signer = TokenSigner::load_or_create(&signing_path)
            .map_err(|err| key_error(&signing_path, err.to_string()))?;
        Ok(Secrets {
            fleet_key,
            signer,
            master,
        })
    }

    /// The keys shared by the controllers of one etcd cluster, kept in the
    /// store under `secrets/` and created by whichever controller comes first
    /// (create-if-absent, so two first starts agree on one pair).
    ///
    /// They are stored sealed under `master` ([`crate::escrow`]), which
    /// every controller of the cluster reads from the same key file.
    pub async fn load_or_create_shared(
        store: &dyn Store,
        master: Arc<MasterKey>,
    ) -> Result<Secrets> {
        let fleet_key = shared_key(store, &master, FLEET_KEY_ENTRY).await?;
        let seed = shared_key(store, &master, SIGNING_KEY_ENTRY).await?;
        Ok(Secrets {
            fleet_key,
            signer: TokenSigner::from_seed(seed),
            master,
        })
    }

    /// Fresh random keys held only in memory (tests, throwaway controllers).
    pub fn ephemeral() -> Secrets {
        Secrets {
            fleet_key: fleetmig_format::keys::generate_key_bytes(),
            signer: TokenSigner::from_seed(fleetmig_format::keys::generate_key_bytes()),
            master: Arc::new(MasterKey::ephemeral()),
        }
    }

    /// The master key escrowed keys are sealed under.
    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    /// The fleet key.
    pub fn fleet_key(&self) -> &[u8; 32] {
        &self.fleet_key
    }

    /// The capability token signer.
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }
}
