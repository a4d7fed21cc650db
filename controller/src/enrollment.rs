//! Enrollment and trust: bootstrap tokens, machine certificates, operator
//! approval and revocation.
//!
//! A new worker holds no certificate. It connects over TLS (verifying the
//! controller against the fleet's CA) without a client certificate and calls
//! `Enroll` with a certificate signing request and, usually, a bootstrap
//! token. With a valid token (`enroll-tokens/<hash>`: uses left, expiry;
//! consumed by compare-and-swap) the controller signs the CSR for the machine
//! id *it* decides, so the worker can afterwards act only as that machine.
//! Without a token the request waits under `enroll-pending/<id>` until an
//! operator approves it. A token never re-issues a certificate for a machine
//! that already has one: that takes an approval.
//!
//! Issued serials are kept per machine (`machine-certs/<id>`); revoking a
//! machine writes `revoked/<serial>` for each, and every controller refuses
//! those certificates from then on (its own at once, the others as soon as
//! the change reaches them through the store's feed or their next refresh).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fleetmig_auth::PeerIdentity;
use fleetmig_auth::pki::CertificateAuthority;
use serde::{Deserialize, Serialize};

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{AuditEvent, Inventory, now_ms};
use crate::store::{Txn, TxnOutcome};

/// Bootstrap tokens: `enroll-tokens/<BLAKE3 of the token, hex>`.
pub const ENROLL_TOKENS: &str = "enroll-tokens/";
/// Enrollments waiting for an approval: `enroll-pending/<machine id>`.
pub const ENROLL_PENDING: &str = "enroll-pending/";
/// Serials issued to a machine: `machine-certs/<machine id>`.
pub const MACHINE_CERTS: &str = "machine-certs/";
/// Revoked certificates: `revoked/<serial hex>`.
pub const REVOKED: &str = "revoked/";

/// Longest lifetime of a bootstrap token.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most enrollments one token allows.
pub const MAX_TOKEN_USES: u32 = 100_000;
/// Largest certificate signing request accepted.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Lifetime of a machine certificate.
pub const MACHINE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A stored bootstrap token (only its hash is the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    expires_ms: i64,
    uses_left: u32,
    created_by: String,
}

/// An enrollment waiting for an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingEnrollment {
    /// The machine id it will get.
    pub machine_id: String,
    /// What the worker said about itself.
    pub inventory: Inventory,
    /// The worker's CSR (PEM); a later request with another CSR replaces it.
    pub csr_pem: String,
    /// When it first asked.
    pub requested_ms: i64,
    /// Where it asked from.
    pub peer_address: String,
    /// Set by `ApproveMachine`: the next request with this CSR gets its
    /// certificate.
    #[serde(default)]
    pub approved_by: Option<String>,
}

/// Serials issued to one machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IssuedSerials {
    serials: Vec<String>,
}

/// A revoked certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revocation {
    machine_id: String,
    unix_ms: i64,
    by: String,
}

/// The trust state every request consults: the CA that signs machine
/// certificates (absent: enrollment over TLS is off) and the revoked serials.
#[derive(Default)]
pub struct Trust {
    ca: Option<Arc<CertificateAuthority>>,
    revoked: std::sync::RwLock<HashSet<String>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("signs_enrollments", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Trust with `ca` signing machine certificates.
    pub fn with_ca(ca: CertificateAuthority) -> Self {
        Self {
            ca: Some(Arc::new(ca)),
            revoked: Default::default(),
        }
    }

    /// Whether the certificate with `serial_hex` was revoked.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(serial_hex)
    }

    /// Records revoked serials (from this controller or the store's feed).
    pub fn add_revoked(&self, serials: impl IntoIterator<Item = String>) {
        self.revoked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(serials);
    }

    /// The CA's certificate, PEM (empty without a CA).
    pub fn ca_pem(&self) -> String {
        self.ca
            .as_ref()
            .map(|ca| ca.cert_pem().to_string())
            .unwrap_or_default()
    }
}

/// What an `Enroll` request amounts to once checked.
#[derive(Debug)]
pub enum EnrollOutcome {
    /// Enrolled; the certificate (PEM) when a CSR was signed.
    Enrolled {
        /// The machine id.
        machine_id: String,
        /// The signed certificate, if any.
        certificate_pem: Option<String>,
    },
    /// Waiting for `fleetmig machines approve`.
    Pending {
        /// The machine id it will get.
        machine_id: String,
    },
}

/// How a caller presented itself to `Enroll`.
#[derive(Debug, Clone)]
pub enum EnrollCaller {
    /// Plaintext (local development): no certificates at all.
    Plaintext,
    /// TLS without a client certificate: a first enrollment.
    Anonymous {
        /// The peer's address, for the pending list.
        peer_address: String,
    },
    /// TLS with this machine's own certificate: a re-enrollment (inventory
    /// update).
    Machine(String),
}

fn token_key(token: &str) -> String {
    keys::key(
        ENROLL_TOKENS,
        blake3::hash(token.as_bytes()).to_hex().as_ref(),
    )
}

impl Controller {
    /// The trust state (CA and revocations).
    pub fn trust(&self) -> &Trust {
        &self.inner.settings.trust
    }

    /// Creates a bootstrap token allowing `uses` enrollments for `ttl`.
    /// Returns the secret (shown once) and its expiry.
    pub async fn create_enrollment_token(
        &self,
        uses: u32,
        ttl: Duration,
        actor: &str,
    ) -> Result<(String, i64)> {
        if uses == 0 || uses > MAX_TOKEN_USES {
            return Err(Error::InvalidArgument(format!(
                "uses {uses}: a token allows 1 to {MAX_TOKEN_USES} enrollments"
            )));
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(Error::InvalidArgument(format!(
                "ttl {}s: a token lives 1 s to {} days",
                ttl.as_secs(),
                MAX_TOKEN_TTL.as_secs() / 86_400
            )));
        }
        let token = hex::encode(fleetmig_format::keys::generate_key_bytes());
        let expires_ms = now_ms() + ttl.as_millis() as i64;
        let stored = StoredToken {
            expires_ms,
            uses_left: uses,
            created_by: actor.to_string(),
        };
        let key = token_key(&token);
        let event = self.trust_event(
            actor,
            "enrollment.token",
            "",
            format!("bootstrap token for {uses} enrollment(s), expires at {expires_ms}"),
        );
        self.commit(
            Txn::new()
                .when_absent(key.clone())
                .put(key, keys::encode(&stored)),
            vec![event],
        )
        .await?;
        Ok((token, expires_ms))
    }

    /// Handles an `Enroll`: checks the caller and the token, records the
    /// machine, and signs its CSR when allowed.
    pub async fn enroll_caller(
        &self,
        caller: EnrollCaller,
        requested_id: &str,
        inventory: Inventory,
        bootstrap_token: &str,
        csr_pem: &str,
    ) -> Result<EnrollOutcome> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(Error::InvalidArgument(format!(
                "certificate request of {} bytes, at most {MAX_CSR_BYTES}",
                csr_pem.len()
            )));
        }
        match caller {
            EnrollCaller::Plaintext => {
                let machine_id = self.enroll(requested_id, inventory).await?;
                Ok(EnrollOutcome::Enrolled {
                    machine_id,
                    certificate_pem: None,
                })
            }
            EnrollCaller::Machine(own_id) => {
                if !requested_id.is_empty() && requested_id != own_id {
                    return Err(Error::PermissionDenied(format!(
                        "the certificate of machine {own_id} cannot enroll machine {requested_id}"
                    )));
                }
                let machine_id = self.enroll(&own_id, inventory).await?;
                Ok(EnrollOutcome::Enrolled {
                    machine_id,
                    certificate_pem: None,
                })
            }
            EnrollCaller::Anonymous { peer_address } => {
                let Some(ca) = self.inner.settings.trust.ca.clone() else {
                    return Err(Error::FailedPrecondition(
                        "this controller signs no machine certificates (start it with --ca-key)"
                            .into(),
                    ));
                };
                if csr_pem.is_empty() {
                    return Err(Error::InvalidArgument(
                        "a first enrollment over TLS needs a certificate signing request".into(),
                    ));
                }
                let machine_id = if requested_id.is_empty() {
                    uuid::Uuid::new_v4().to_string()
                } else if crate::controller::is_valid_id(requested_id) {
                    requested_id.to_string()
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "machine id {requested_id:?} is malformed"
                    )));
                };
                let has_cert = self
                    .inner
                    .store
                    .get(&keys::key(MACHINE_CERTS, &machine_id))
                    .await?
                    .is_some();
                let pending = self.pending(&machine_id).await?;
                let approved = pending
                    .as_ref()
                    .is_some_and(|p| p.approved_by.is_some() && p.csr_pem == csr_pem);
                if !approved {
                    if !bootstrap_token.is_empty() && !has_cert {
                        self.consume_token(bootstrap_token).await?;
                    } else {
                        if !bootstrap_token.is_empty() {
                            tracing::warn!(%machine_id, "a bootstrap token cannot re-issue the certificate of an enrolled machine; waiting for an approval");
                        }
                        self.record_pending(
                            &machine_id,
                            inventory,
                            csr_pem,
                            &peer_address,
                            pending,
                        )
                        .await?;
                        return Ok(EnrollOutcome::Pending { machine_id });
                    }
                }
                let machine_id = self.enroll(&machine_id, inventory).await?;
                let identity = PeerIdentity::Machine(machine_id.clone());
                let certificate_pem = ca
                    .sign_csr(csr_pem, &identity, MACHINE_CERT_VALIDITY)
                    .map_err(|err| Error::InvalidArgument(format!("certificate request: {err}")))?;
                let serial = fleetmig_auth::transport::peer_cert_from_pem(&certificate_pem)
                    .map(|cert| cert.serial_hex)
                    .map_err(|err| Error::Internal(format!("the issued certificate: {err}")))?;
                self.record_issued(&machine_id, &serial, approved).await?;
                Ok(EnrollOutcome::Enrolled {
                    machine_id,
                    certificate_pem: Some(certificate_pem),
                })
            }
        }
    }

    async fn pending(&self, machine_id: &str) -> Result<Option<PendingEnrollment>> {
        let key = keys::key(ENROLL_PENDING, machine_id);
        match self.inner.store.get(&key).await? {
            Some(kv) => Ok(Some(keys::decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Takes one use of `token`, refusing an unknown, used-up or expired one.
    async fn consume_token(&self, token: &str) -> Result<()> {
        let key = token_key(token);
        for _ in 0..16 {
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::Unauthenticated(
                    "unknown bootstrap token".to_string(),
                ));
            };
            let mut stored: StoredToken = keys::decode(&key, &kv.value)?;
            if stored.expires_ms <= now_ms() {
                return Err(Error::Unauthenticated(format!(
                    "bootstrap token expired at {} (unix ms)",
                    stored.expires_ms
                )));
            }
            if stored.uses_left == 0 {
                return Err(Error::Unauthenticated(
                    "bootstrap token already used up".to_string(),
                ));
            }
            stored.uses_left -= 1;
            let txn = Txn::new()
                .when_revision(key.clone(), kv.mod_revision)
                .put(key.clone(), keys::encode(&stored));
            // Any controller may take a use: a compare-and-swap on the token.
            if let TxnOutcome::Committed { .. } = self.inner.store.txn(txn).await? {
                return Ok(());
            }
        }
        Err(Error::Conflict { key })
    }

    async fn record_pending(
        &self,
        machine_id: &str,
        inventory: Inventory,
        csr_pem: &str,
        peer_address: &str,
        existing: Option<PendingEnrollment>,
    ) -> Result<()> {
        if existing
            .as_ref()
            .is_some_and(|p| p.csr_pem == csr_pem && p.inventory == inventory)
        {
            return Ok(());
        }
        let pending = PendingEnrollment {
            machine_id: machine_id.to_string(),
            inventory,
            csr_pem: csr_pem.to_string(),
            requested_ms: existing.as_ref().map_or_else(now_ms, |p| p.requested_ms),
            peer_address: peer_address.to_string(),
            // A new key pair needs a new approval.
            approved_by: None,
        };
        let key = keys::key(ENROLL_PENDING, machine_id);
        let event = self.trust_event(
            "controller",
            "enrollment.pending",
            machine_id,
            format!(
                "{} asks to enroll from {peer_address} without a token",
                pending.inventory.hostname
            ),
        );
        self.commit(Txn::new().put(key, keys::encode(&pending)), vec![event])
            .await?;
        Ok(())
    }

    async fn record_issued(&self, machine_id: &str, serial: &str, approved: bool) -> Result<()> {
        let key = keys::key(MACHINE_CERTS, machine_id);
        for _ in 0..16 {
            let current = self.inner.store.get(&key).await?;
            let (mut issued, txn) = match &current {
                Some(kv) => (
                    keys::decode::<IssuedSerials>(&key, &kv.value)?,
                    Txn::new().when_revision(key.clone(), kv.mod_revision),
                ),
                None => (
                    IssuedSerials::default(),
                    Txn::new().when_absent(key.clone()),
                ),
            };
            issued.serials.push(serial.to_string());
            let mut txn = txn.put(key.clone(), keys::encode(&issued));
            if approved {
                txn = txn.delete(keys::key(ENROLL_PENDING, machine_id));
            }
            let event = self.trust_event(
                "controller",
                "enrollment.certificate",
                machine_id,
                format!(
                    "certificate {serial} issued ({})",
                    if approved {
                        "approved"
                    } else {
                        "bootstrap token"
                    }
                ),
            );
            match self.commit(txn, vec![event]).await {
                Ok(_) => return Ok(()),
                Err(Error::Conflict { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(Error::Conflict { key })
    }

    /// Approves a pending enrollment: the worker's next request gets its
    /// certificate.
    pub async fn approve_machine(&self, machine_id: &str, actor: &str) -> Result<String> {
        let key = keys::key(ENROLL_PENDING, machine_id);
        let Some(kv) = self.inner.store.get(&key).await? else {
            return Err(Error::NotFound(format!(
                "no enrollment of machine {machine_id} waits for an approval"
            )));
        };
        let mut pending: PendingEnrollment = keys::decode(&key, &kv.value)?;
        pending.approved_by = Some(actor.to_string());
        let event = self.trust_event(
            actor,
            "enrollment.approved",
            machine_id,
            format!("{} approved", pending.inventory.hostname),
        );
        self.commit(
            Txn::new()
                .when_revision(key.clone(), kv.mod_revision)
                .put(key, keys::encode(&pending)),
            vec![event],
        )
        .await?;
        Ok(format!(
            "{} ({machine_id}) approved: it gets its certificate on its next try",
            pending.inventory.hostname
        ))
    }

    /// Revokes every certificate issued to `machine_id`; refused at once.
    pub async fn revoke_machine(&self, machine_id: &str, actor: &str) -> Result<String> {
        let key = keys::key(MACHINE_CERTS, machine_id);
        let Some(kv) = self.inner.store.get(&key).await? else {
            return Err(Error::NotFound(format!(
                "machine {machine_id} holds no certificate this fleet issued"
            )));
        };
        let issued: IssuedSerials = keys::decode(&key, &kv.value)?;
        let mut txn = Txn::new()
            .delete(key)
            .delete(keys::key(ENROLL_PENDING, machine_id));
        let revocation = Revocation {
            machine_id: machine_id.to_string(),
            unix_ms: now_ms(),
            by: actor.to_string(),
        };
        for serial in &issued.serials {
            txn = txn.put(keys::key(REVOKED, serial), keys::encode(&revocation));
        }
        let event = self.trust_event(
            actor,
            "machine.revoked",
            machine_id,
            format!("certificates {} revoked", issued.serials.join(", ")),
        );
        self.commit(txn, vec![event]).await?;
        self.inner
            .settings
            .trust
            .add_revoked(issued.serials.iter().cloned());
        Ok(format!(
            "machine {machine_id}: {} certificate(s) revoked",
            issued.serials.len()
        ))
    }

    /// Enrollments waiting for an approval.
    pub async fn pending_enrollments(&self) -> Result<Vec<PendingEnrollment>> {
        let mut out = Vec::new();
        for kv in self.inner.store.range(ENROLL_PENDING).await? {
            let pending: PendingEnrollment = keys::decode(&kv.key, &kv.value)?;
            if pending.approved_by.is_none() {
                out.push(pending);
            }
        }
        Ok(out)
    }

    /// Loads the revoked serials from the store (at start, and
    /// periodically on every controller).
    pub async fn refresh_revocations(&self) -> Result<usize> {
        let serials: Vec<String> = self
            .inner
            .store
            .range(REVOKED)
            .await?
            .into_iter()
            .filter_map(|kv| kv.key.strip_prefix(REVOKED).map(str::to_string))
            .collect();
        let count = serials.len();
        self.inner.settings.trust.add_revoked(serials);
        Ok(count)
    }

    /// Refreshes the revocations every `every` until `shutdown`.
    pub async fn run_revocation_refresh(
        self,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if let Err(err) = self.refresh_revocations().await {
                tracing::warn!(error = %err, "cannot refresh the revoked certificates");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Audits that `actor` took migration `migration_id`'s recovery
    /// information (its keys): the log says who read which secrets.
    pub async fn record_recovery(&self, migration_id: &str, actor: &str) -> Result<()> {
        let mut event = self.trust_event(
            actor,
            "migration.recovery",
            "",
            format!(
                "recovery information (keys, nodes, restore tokens) of {migration_id} handed out"
            ),
        );
        event.job_id = migration_id.to_string();
        self.commit(Txn::new(), vec![event]).await?;
        Ok(())
    }

    fn trust_event(&self, actor: &str, kind: &str, machine_id: &str, detail: String) -> AuditEvent {
        AuditEvent {
            seq: 0,
            unix_ms: now_ms(),
            actor: actor.to_string(),
            kind: kind.to_string(),
            wave: String::new(),
            job_id: String::new(),
            machine_id: machine_id.to_string(),
            detail,
        }
    }
}
