//! Who may call what, from the caller's TLS client certificate.
//!
//! Every handler asks [`Access`] before it acts: a worker may act only as
//! the machine its certificate names, storage registration needs a storage
//! node's certificate, the peer service a controller's, and the operator
//! API an operator's with a high enough role (viewers read; operators run
//! waves; admins also manage trust and recover migrations). A revoked
//! certificate is refused everywhere. In plaintext mode
//! (`--insecure-plaintext`) nobody is authenticated and everything is
//! allowed: that mode is for local development only.

use std::sync::Arc;

use fleetmig_auth::{PeerCert, PeerIdentity, Role};
use tonic::{Request, Status};

use crate::enrollment::{EnrollCaller, Trust};

/// Anonymous enrollments allowed per peer address and second, and their
/// burst (a site behind one NAT address enrolls many machines at once).
const ENROLLMENTS_PER_SECOND: u32 = 10;
/// See [`ENROLLMENTS_PER_SECOND`].
const ENROLLMENT_BURST: u32 = 50;

type EnrollLimiter = governor::DefaultKeyedRateLimiter<std::net::IpAddr>;

/// The access policy of one controller.
#[derive(Clone)]
pub struct Access {
    tls: bool,
    trust: Arc<Trust>,
    enrollments: Arc<EnrollLimiter>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// The policy of a controller with TLS on (`tls`) or plaintext.
    pub fn new(tls: bool, trust: Arc<Trust>) -> Self {
        let quota = governor::Quota::per_second(
            std::num::NonZeroU32::new(ENROLLMENTS_PER_SECOND).expect("nonzero"),
        )
        .allow_burst(std::num::NonZeroU32::new(ENROLLMENT_BURST).expect("nonzero"));
        Self {
            tls,
            trust,
            enrollments: Arc::new(governor::RateLimiter::keyed(quota)),
        }
    }

    /// The caller's verified certificate: `None` without one (plaintext,
    /// or a TLS client that presented none). A revoked or unreadable one
    /// is an error.
    fn peer<T>(&self, request: &Request<T>) -> Result<Option<PeerCert>, Status> {
        if !self.tls {
            return Ok(None);
        }
        match fleetmig_auth::identity::peer_cert(request) {
            None => Ok(None),
            Some(Err(err)) => Err(Status::unauthenticated(format!(
                "client certificate: {err}"
            ))),
            Some(Ok(cert)) => {
                if self.trust.is_revoked(&cert.serial_hex) {
                    return Err(Status::unauthenticated(format!(
                        "the certificate of {} (serial {}) is revoked",
                        cert.identity, cert.serial_hex
                    )));
                }
                Ok(Some(cert))
            }
        }
    }

    fn required<T>(
        &self,
        request: &Request<T>,
        what: &str,
    ) -> Result<Option<PeerIdentity>, Status> {
        if !self.tls {
            return Ok(None);
        }
        match self.peer(request)? {
            Some(cert) => Ok(Some(cert.identity)),
            None => Err(Status::unauthenticated(format!(
                "{what} needs a client certificate from this fleet's CA"
            ))),
        }
    }

    /// Allows the call only from `machine_id` itself.
    pub fn machine<T>(&self, request: &Request<T>, machine_id: &str) -> Result<(), Status> {
        self.machine_guard(request)?.check(machine_id)
    }

    /// The machine a caller may act as, for checking every message of a
    /// stream.
    pub fn machine_guard<T>(&self, request: &Request<T>) -> Result<MachineGuard, Status> {
        match self.required(request, "a worker call")? {
            None => Ok(MachineGuard { own: None }),
            Some(PeerIdentity::Machine(own)) => Ok(MachineGuard { own: Some(own) }),
            Some(other) => Err(Status::permission_denied(format!(
                "{other} is not a machine; worker calls need a machine certificate"
            ))),
        }
    }

    /// Who is enrolling.
    pub fn enroll_caller<T>(&self, request: &Request<T>) -> Result<EnrollCaller, Status> {
        if !self.tls {
            return Ok(EnrollCaller::Plaintext);
        }
        match self.peer(request)? {
            None => {
                let addr = request.remote_addr();
                if let Some(addr) = addr
                    && self.enrollments.check_key(&addr.ip()).is_err()
                {
                    return Err(Status::resource_exhausted(format!(
                        "too many enrollments from {}: at most {ENROLLMENTS_PER_SECOND} a \
                         second (burst {ENROLLMENT_BURST}); retry later",
                        addr.ip()
                    )));
                }
                if self.enrollments.len() > 100_000 {
                    self.enrollments.retain_recent();
                }
                Ok(EnrollCaller::Anonymous {
                    peer_address: addr.map(|addr| addr.to_string()).unwrap_or_default(),
                })
            }
            Some(PeerCert {
                identity: PeerIdentity::Machine(id),
                ..
            }) => Ok(EnrollCaller::Machine(id)),
            Some(other) => Err(Status::permission_denied(format!(
                "{} cannot enroll as a machine",
                other.identity
            ))),
        }
    }

    /// Allows the call from a storage node.
    pub fn storage_node<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match self.required(request, "storage registration")? {
            None | Some(PeerIdentity::StorageNode(_)) => Ok(()),
            Some(other) => Err(Status::permission_denied(format!(
                "{other} is not a storage node"
            ))),
        }
    }

    /// Allows the call from another controller.
    pub fn controller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match self.required(request, "a controller peer call")? {
            None | Some(PeerIdentity::Controller(_)) => Ok(()),
            Some(other) => Err(Status::permission_denied(format!(
                "{other} is not a controller"
            ))),
        }
    }

    /// Allows the call from an operator with at least `role`; returns the
    /// audit actor (`operator:<name>`). In plaintext mode the actor is the
    /// name the request gives, as before TLS.
    pub fn operator<T>(
        &self,
        request: &Request<T>,
        role: Role,
        claimed_name: &str,
    ) -> Result<String, Status> {
        match self.required(request, "the operator API")? {
            None => Ok(plaintext_actor(claimed_name)),
            Some(PeerIdentity::Operator { name, role: held }) if held >= role => {
                Ok(format!("operator:{name}"))
            }
            Some(PeerIdentity::Operator { name, role: held }) => Err(Status::permission_denied(
                format!("operator {name} is a {held}; this needs the {role} role"),
            )),
            Some(other) => Err(Status::permission_denied(format!(
                "{other} is not an operator"
            ))),
        }
    }
}

/// The machine a worker's certificate names (`None`: plaintext, anyone).
#[derive(Debug, Clone)]
pub struct MachineGuard {
    own: Option<String>,
}

impl MachineGuard {
    /// Allows acting as `machine_id` only to that machine.
    pub fn check(&self, machine_id: &str) -> Result<(), Status> {
        match &self.own {
            None => Ok(()),
            Some(own) if own == machine_id => Ok(()),
            Some(own) => Err(Status::permission_denied(format!(
                "the certificate of machine {own} cannot act as machine {machine_id}"
            ))),
        }
    }
}

/// The actor of an unauthenticated (plaintext) operator call.
fn plaintext_actor(name: &str) -> String {
    if name.is_empty() {
        "operator:anonymous".into()
    } else if name.starts_with("operator:") {
        name.to_string()
    } else {
        format!("operator:{name}")
    }
}
