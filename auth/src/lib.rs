//! Capability tokens.
//!
//! The controller signs short-lived tokens that say which machine may do what
//! to which migration on which storage node ([`v1::Capability`]); storage
//! nodes verify them offline with the controller's Ed25519 public key. Only
//! the source machine gets a `CAPTURE` token for its migration and only the
//! associated destination a `RESTORE` token, so a node needs no view of the
//! controller's state to refuse everybody else. The controller keeps
//! `RESERVE`, `REPLICATE` (copying a migration between nodes) and
//! `INVENTORY` (listing a node's migrations; names no migration) for itself.
//!
//! Every token carries the job's fence; a node remembers the highest fence
//! it has seen per migration and refuses lower ones ([`is_stale_fence`];
//! fence [`UNFENCED`] is exempt).
//!
//! Mutual TLS, the other half of authentication, lives in three modules:
//! [`identity`] (who a peer is, carried as a `spiffe://fleetmig/...` URI SAN
//! in its certificate, and reading it back from a tonic request), [`pki`]
//! (the fleet's certificate authority: issuing certificates, signing worker
//! CSRs, writing a small deployment's PKI directory) and [`tls`] (loading PEM
//! files and building tonic's server and client TLS configs).

pub mod identity;
pub mod pki;
pub mod tls;
pub mod transport;

pub use identity::{PeerCert, PeerIdentity, Role};
pub use transport::Transport;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fleetmig_proto::v1::{self, CapabilityRole};
use prost::Message;
use std::path::{Path, PathBuf};

/// Why a token or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No token was presented.
    #[error("no capability token presented")]
    Missing,
    /// The token is not a well-formed signed capability.
    #[error("malformed capability token: {0}")]
    Malformed(String),
    /// The signature does not verify under the controller's key.
    #[error("capability token signature does not verify (not signed by this fleet's controller)")]
    BadSignature,
    /// The token's lifetime is over.
    #[error(
        "capability token for migration {migration_id} expired at {expires_unix_ms} (now {now_unix_ms})"
    )]
    Expired {
        /// Migration named by the token.
        migration_id: String,
        /// Expiry in the token.
        expires_unix_ms: i64,
        /// The verifier's clock.
        now_unix_ms: i64,
    },
    /// The token is valid but grants something else.
    #[error("capability token does not grant this: {0}")]
    WrongGrant(String),
    /// A key file could not be read or written.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A peer identity URI is not a well-formed fleetmig identity.
    #[error("invalid peer identity {uri:?}: {reason}")]
    InvalidIdentity {
        /// The URI (or name) refused.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An operator role is not `viewer`, `operator` or `admin`.
    #[error("unknown operator role {0:?} (expected viewer, operator or admin)")]
    InvalidRole(String),
    /// A peer's certificate does not parse or does not name exactly one
    /// fleetmig identity.
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    /// A DNS name or IP address cannot go into a server certificate.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The name refused.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Creating, issuing or loading a certificate failed.
    #[error("{what}: {reason}")]
    Certificate {
        /// What was being done ("issuing a certificate for machine m1").
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// A worker's certificate signing request was refused.
    #[error("certificate signing request refused: {0}")]
    InvalidCsr(String),
    /// A TLS file (CA bundle, certificate, private key) is missing or
    /// unusable, or a PKI file could not be written.
    #[error("tls file {path}: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS configuration is incomplete (e.g. a server without a key).
    #[error("tls configuration: {0}")]
    TlsConfig(String),
    /// A PKI directory already holds a CA key; it is never overwritten.
    #[error(
        "{path} already exists: refusing to overwrite the fleet's certificate authority \
         (every certificate it issued would stop verifying)"
    )]
    AlreadyInitialized {
        /// The existing CA key file.
        path: PathBuf,
    },
    /// A URL to reach over TLS is not `https://host[:port]`.
    #[error("invalid tls url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL refused.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The gRPC status code for this error when it ends a call: a refused
    /// token or peer is `Unauthenticated`, a token granting something else
    /// `PermissionDenied`, bad input (a CSR, a name, a URL) `InvalidArgument`,
    /// and the endpoint's own key, certificate or TLS files `Internal`.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::Missing
            | Error::Malformed(_)
            | Error::BadSignature
            | Error::Expired { .. }
            | Error::InvalidIdentity { .. }
            | Error::PeerCertificate(_) => Code::Unauthenticated,
            Error::WrongGrant(_) => Code::PermissionDenied,
            Error::InvalidRole(_)
            | Error::InvalidServerName { .. }
            | Error::InvalidCsr(_)
            | Error::InvalidUrl { .. } => Code::InvalidArgument,
            Error::AlreadyInitialized { .. } => Code::AlreadyExists,
            Error::KeyFile { .. }
            | Error::Certificate { .. }
            | Error::TlsFile { .. }
            | Error::TlsConfig(_) => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Signs capability tokens; held by the controller only.
pub struct TokenSigner {
    key: SigningKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("public_key", &hex_key(&self.public_key()))
            .finish_non_exhaustive()
    }
}

fn hex_key(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the signing key from `path`, creating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let key_error = |error: fleetmig_format::Error| Error::KeyFile {
            path: path.to_path_buf(),
            reason: error.to_string(),
        };
        if !path.exists() {
            let seed = fleetmig_format::keys::generate_key_bytes();
            fleetmig_format::keys::write_key_file(path, &seed).map_err(key_error)?;
        }
        let seed = fleetmig_format::keys::load_key_bytes(path).map_err(key_error)?;
        Ok(Self::from_seed(seed))
    }

    /// The public key storage nodes verify with (32 bytes).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &v1::Capability) -> v1::SignedCapability {
        let encoded = claims.encode_to_vec();
        let signature = self.key.sign(&encoded);
        v1::SignedCapability {
            claims: encoded,
            signature: signature.to_bytes().to_vec(),
        }
    }
}

/// What a verifier requires of a token besides a good signature.
#[derive(Debug, Clone, Copy)]
pub struct Requirement<'a> {
    /// The role the call needs.
    pub role: CapabilityRole,
    /// The node verifying (tokens name the node they are for).
    pub node_id: &'a str,
    /// The verifier's clock, milliseconds since the Unix epoch.
    pub now_unix_ms: i64,
}

/// Verifies capability tokens with the controller's public key.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    key: VerifyingKey,
}

impl TokenVerifier {
    /// A verifier for the 32-byte public key `bytes`.
    pub fn from_public_key(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::Malformed(format!(
                "a public key is 32 bytes, this one is {}",
                bytes.len()
            ))
        })?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|error| Error::Malformed(format!("not an Ed25519 public key: {error}")))?;
        Ok(Self { key })
    }

    /// The public key, 32 bytes.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Checks `token`'s signature, expiry, node and role; returns its claims.
    pub fn verify(
        &self,
        token: Option<&v1::SignedCapability>,
        need: Requirement<'_>,
    ) -> Result<v1::Capability> {
        self.verify_any(token, &[need.role], need.node_id, need.now_unix_ms)
    }

    /// Like [`Self::verify`], for a call that more than one role grants
    /// (e.g. `Commit` takes CAPTURE or REPLICATE). The caller reads the
    /// role the token holds from the claims.
    pub fn verify_any(
        &self,
        token: Option<&v1::SignedCapability>,
        roles: &[CapabilityRole],
        node_id: &str,
        now_unix_ms: i64,
    ) -> Result<v1::Capability> {
        let token = token.ok_or(Error::Missing)?;
        let signature: [u8; 64] = token.signature.as_slice().try_into().map_err(|_| {
            Error::Malformed(format!(
                "a signature is 64 bytes, this one is {}",
                token.signature.len()
            ))
        })?;
        self.key
            .verify_strict(&token.claims, &Signature::from_bytes(&signature))
            .map_err(|_| Error::BadSignature)?;
        let claims = v1::Capability::decode(token.claims.as_slice())
            .map_err(|error| Error::Malformed(format!("claims do not decode: {error}")))?;
        if claims.expires_unix_ms <= now_unix_ms {
            return Err(Error::Expired {
                migration_id: claims.migration_id,
                expires_unix_ms: claims.expires_unix_ms,
                now_unix_ms,
            });
        }
        if claims.node_id != node_id {
            return Err(Error::WrongGrant(format!(
                "issued for node {:?}, presented to node {:?}",
                claims.node_id, node_id
            )));
        }
        let role = CapabilityRole::try_from(claims.role).ok();
        if !role.is_some_and(|role| roles.contains(&role)) {
            let held = role.map_or("unknown", |r| r.as_str_name());
            let needed: Vec<&str> = roles.iter().map(|r| r.as_str_name()).collect();
            return Err(Error::WrongGrant(format!(
                "role {held} on migration {}, the call needs {}",
                claims.migration_id,
                needed.join(" or ")
            )));
        }
        check_subject(&claims, role.unwrap_or(CapabilityRole::Unspecified))?;
        Ok(claims)
    }
}

/// The fence of a token not tied to a job attempt. Job fences are
/// `epoch << 32 | attempt` with `attempt >= 1`, so a worker never holds
/// fence 0; the controller signs its own tokens (RESERVE before a job has an
/// owner, REPLICATE, INVENTORY) with it. A node neither refuses an unfenced
/// token as stale nor lets it raise the highest fence it has seen.
pub const UNFENCED: u64 = 0;

/// Whether a token with fence `presented` is stale for a migration whose
/// highest fence seen so far is `highest` (see [`UNFENCED`]).
pub fn is_stale_fence(presented: u64, highest: u64) -> bool {
    presented != UNFENCED && presented < highest
}

/// Checks the claims name what their role needs: an INVENTORY token names
/// no migration (it covers the whole node) and no machine is required of it
/// or of a REPLICATE token (the controller holds those, not a machine);
/// every other role names both a migration and a machine.
fn check_subject(claims: &v1::Capability, role: CapabilityRole) -> Result<()> {
    match role {
        CapabilityRole::Inventory if !claims.migration_id.is_empty() => {
            Err(Error::Malformed(format!(
                "an INVENTORY token names no migration, this one names {:?}",
                claims.migration_id
            )))
        }
        CapabilityRole::Inventory => Ok(()),
        CapabilityRole::Replicate if claims.migration_id.is_empty() => {
            Err(Error::Malformed("claims name no migration".into()))
        }
        CapabilityRole::Replicate => Ok(()),
        _ if claims.migration_id.is_empty() || claims.machine_id.is_empty() => Err(
            Error::Malformed("claims name no migration or machine".into()),
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: CapabilityRole, expires: i64) -> v1::Capability {
        v1::Capability {
            machine_id: "m1".into(),
            migration_id: "wave.m1".into(),
            node_id: "node-a".into(),
            role: role as i32,
            issued_unix_ms: 0,
            expires_unix_ms: expires,
            fence: 7,
        }
    }

    fn need(role: CapabilityRole) -> Requirement<'static> {
        Requirement {
            role,
            node_id: "node-a",
            now_unix_ms: 1_000,
        }
    }

    #[test]
    fn a_signed_token_verifies_and_returns_its_claims() {
        let signer = TokenSigner::from_seed([1; 32]);
        let verifier = TokenVerifier::from_public_key(&signer.public_key()).unwrap();
        let token = signer.sign(&claims(CapabilityRole::Capture, 2_000));
        let got = verifier
            .verify(Some(&token), need(CapabilityRole::Capture))
            .unwrap();
        assert_eq!(got.migration_id, "wave.m1");
        assert_eq!(got.fence, 7);
    }

    #[test]
    fn refusals_name_the_reason() {
        let signer = TokenSigner::from_seed([1; 32]);
        let verifier = TokenVerifier::from_public_key(&signer.public_key()).unwrap();
        let capture = signer.sign(&claims(CapabilityRole::Capture, 2_000));
        assert!(matches!(
            verifier.verify(None, need(CapabilityRole::Capture)),
            Err(Error::Missing)
        ));
        assert!(matches!(
            verifier.verify(Some(&capture), need(CapabilityRole::Restore)),
            Err(Error::WrongGrant(_))
        ));
        let expired = signer.sign(&claims(CapabilityRole::Capture, 1_000));
        assert!(matches!(
            verifier.verify(Some(&expired), need(CapabilityRole::Capture)),
            Err(Error::Expired { .. })
        ));
        let other_node = Requirement {
            node_id: "node-b",
            ..need(CapabilityRole::Capture)
        };
        assert!(matches!(
            verifier.verify(Some(&capture), other_node),
            Err(Error::WrongGrant(_))
        ));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let signer = TokenSigner::from_seed([1; 32]);
        let verifier = TokenVerifier::from_public_key(&signer.public_key()).unwrap();
        let mut token = signer.sign(&claims(CapabilityRole::Capture, 2_000));
        // Rewrite the claims to another migration, keeping the signature.
        let mut forged = claims(CapabilityRole::Capture, 2_000);
        forged.migration_id = "wave.m2".into();
        token.claims = forged.encode_to_vec();
        assert!(matches!(
            verifier.verify(Some(&token), need(CapabilityRole::Capture)),
            Err(Error::BadSignature)
        ));
        let foreign = TokenSigner::from_seed([2; 32]).sign(&claims(CapabilityRole::Capture, 2_000));
        assert!(matches!(
            verifier.verify(Some(&foreign), need(CapabilityRole::Capture)),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn a_call_may_accept_several_roles() {
        let signer = TokenSigner::from_seed([1; 32]);
        let verifier = TokenVerifier::from_public_key(&signer.public_key()).unwrap();
        let roles = [CapabilityRole::Capture, CapabilityRole::Replicate];
        let mut replicate = claims(CapabilityRole::Replicate, 2_000);
        replicate.machine_id.clear();
        let got = verifier
            .verify_any(Some(&signer.sign(&replicate)), &roles, "node-a", 1_000)
            .expect("a REPLICATE token needs no machine");
        assert_eq!(got.role, CapabilityRole::Replicate as i32);
        let restore = signer.sign(&claims(CapabilityRole::Restore, 2_000));
        let err = verifier
            .verify_any(Some(&restore), &roles, "node-a", 1_000)
            .expect_err("restore grants neither");
        assert!(
            err.to_string().contains(
                "role CAPABILITY_ROLE_RESTORE on migration wave.m1, the call needs CAPABILITY_ROLE_CAPTURE or CAPABILITY_ROLE_REPLICATE"
            ),
            "{err}"
        );
        let mut capture = claims(CapabilityRole::Capture, 2_000);
        capture.machine_id.clear();
        assert!(matches!(
            verifier.verify_any(Some(&signer.sign(&capture)), &roles, "node-a", 1_000),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn inventory_tokens_name_no_migration() {
        let signer = TokenSigner::from_seed([1; 32]);
        let verifier = TokenVerifier::from_public_key(&signer.public_key()).unwrap();
        let mut inventory = claims(CapabilityRole::Inventory, 2_000);
        assert!(matches!(
            verifier.verify(
                Some(&signer.sign(&inventory)),
                need(CapabilityRole::Inventory)
            ),
            Err(Error::Malformed(_))
        ));
        inventory.migration_id.clear();
        inventory.machine_id.clear();
        verifier
            .verify(
                Some(&signer.sign(&inventory)),
                need(CapabilityRole::Inventory),
            )
            .expect("an INVENTORY token covers the node");
        let mut replicate = claims(CapabilityRole::Replicate, 2_000);
        replicate.migration_id.clear();
        assert!(matches!(
            verifier.verify(
                Some(&signer.sign(&replicate)),
                need(CapabilityRole::Replicate)
            ),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn errors_map_to_grpc_codes() {
        assert_eq!(Error::Missing.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            Error::WrongGrant("x".into()).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            Error::PeerCertificate("x".into()).code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            Error::InvalidCsr("x".into()).code(),
            tonic::Code::InvalidArgument
        );
        let status = tonic::Status::from(Error::TlsConfig("no key".into()));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "tls configuration: no key");
    }

    #[test]
    fn lower_fences_are_stale_and_fence_zero_never_is() {
        assert!(!is_stale_fence(5, 5));
        assert!(!is_stale_fence(6, 5));
        assert!(is_stale_fence(4, 5));
        assert!(!is_stale_fence(UNFENCED, 5), "unfenced tokens are exempt");
        assert!(!is_stale_fence(1, 0));
    }

    #[test]
    fn the_signing_key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token-signing.key");
        let first = TokenSigner::load_or_create(&path).unwrap();
        let again = TokenSigner::load_or_create(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
    }
}
