//! Who a peer is, as its certificate says.
//!
//! Every certificate the fleet's CA issues carries exactly one URI subject
//! alternative name in the `spiffe://fleetmig/` trust domain:
//!
//! | peer | URI |
//! | --- | --- |
//! | controller | `spiffe://fleetmig/controller/<id>` |
//! | storage node | `spiffe://fleetmig/storage/<node_id>` |
//! | worker (machine) | `spiffe://fleetmig/machine/<machine_id>` |
//! | operator | `spiffe://fleetmig/operator/<role>/<name>` |
//!
//! Names are 1 to 128 characters of `[A-Za-z0-9._-@]` (and not `.` or
//! `..`); parsing is strict, so a certificate naming anything else is not a
//! fleetmig peer. TLS has already checked the chain when a tonic handler
//! sees a request; [`peer_cert`] only reads who the verified leaf names.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;
use x509_parser::extensions::GeneralName;

/// The scheme and trust domain of every fleetmig identity URI.
pub const TRUST_DOMAIN_PREFIX: &str = "spiffe://fleetmig/";

/// Longest name (id, node id, machine id, operator name) in an identity.
pub const MAX_NAME_CHARS: usize = 128;

/// What an operator may do; ordered `Viewer < Operator < Admin`, so
/// `role >= Role::Operator` reads as "at least operator".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads plans, status and events.
    Viewer,
    /// Also runs waves (start, pause, resume, retry).
    Operator,
    /// Everything, including destructive and fleet-wide controls.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The lowercase name used in URIs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    /// Parses a lowercase role name (`viewer`, `operator`, `admin`).
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| Error::InvalidRole(s.to_string()))
    }
}

/// Who a peer is: the identity its certificate's URI SAN names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A controller, by its id.
    Controller(String),
    /// A storage node, by its node id.
    StorageNode(String),
    /// A worker, by the machine id the controller gave it at enrollment.
    Machine(String),
    /// A person (or their automation) using the operator API.
    Operator {
        /// The operator's name.
        name: String,
        /// What they may do.
        role: Role,
    },
}

impl PeerIdentity {
    /// The URI SAN for this identity, e.g. `spiffe://fleetmig/machine/m1`.
    pub fn to_uri(&self) -> String {
        match self {
            PeerIdentity::Controller(id) => format!("{TRUST_DOMAIN_PREFIX}controller/{id}"),
            PeerIdentity::StorageNode(id) => format!("{TRUST_DOMAIN_PREFIX}storage/{id}"),
            PeerIdentity::Machine(id) => format!("{TRUST_DOMAIN_PREFIX}machine/{id}"),
            PeerIdentity::Operator { name, role } => {
                format!("{TRUST_DOMAIN_PREFIX}operator/{role}/{name}")
            }
        }
    }

    /// Parses an identity URI strictly: the `spiffe://fleetmig/` prefix, a
    /// known kind, the right number of segments, valid names, nothing else
    /// (no query, fragment or trailing slash).
    pub fn from_uri(uri: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidIdentity {
            uri: uri.to_string(),
            reason,
        };
        let path = uri
            .strip_prefix(TRUST_DOMAIN_PREFIX)
            .ok_or_else(|| invalid(format!("does not start with {TRUST_DOMAIN_PREFIX}")))?;
        let segments: Vec<&str> = path.split('/').collect();
        let one_name = |segments: &[&str]| -> Result<String> {
            match segments {
                [name] => {
                    check_name(name).map_err(&invalid)?;
                    Ok(name.to_string())
                }
                _ => Err(invalid(format!(
                    "expected one name after the kind, found {} segments",
                    segments.len()
                ))),
            }
        };
        match segments.as_slice() {
            ["controller", rest @ ..] => Ok(PeerIdentity::Controller(one_name(rest)?)),
            ["storage", rest @ ..] => Ok(PeerIdentity::StorageNode(one_name(rest)?)),
            ["machine", rest @ ..] => Ok(PeerIdentity::Machine(one_name(rest)?)),
            ["operator", role, name] => {
                let role = role
                    .parse::<Role>()
                    .map_err(|error| invalid(error.to_string()))?;
                check_name(name).map_err(&invalid)?;
                Ok(PeerIdentity::Operator {
                    name: name.to_string(),
                    role,
                })
            }
            ["operator", ..] => Err(invalid(
                "an operator identity is operator/<role>/<name>".into(),
            )),
            [kind, ..] => Err(invalid(format!(
                "unknown kind {kind:?} (expected controller, storage, machine or operator)"
            ))),
            [] => Err(invalid("no kind".into())),
        }
    }

    /// Checks the identity's names are valid, i.e. that
    /// `from_uri(to_uri())` gives it back.
    pub fn validate(&self) -> Result<()> {
        let parsed = Self::from_uri(&self.to_uri())?;
        if &parsed != self {
            return Err(Error::InvalidIdentity {
                uri: self.to_uri(),
                reason: "does not round-trip".into(),
            });
        }
        Ok(())
    }

    /// Whether this peer serves (controller, storage node) as well as calls;
    /// its certificate is then valid for server authentication too.
    pub fn is_server(&self) -> bool {
        matches!(
            self,
            PeerIdentity::Controller(_) | PeerIdentity::StorageNode(_)
        )
    }

    /// The kind as it appears in the URI (`controller`, `storage`,
    /// `machine`, `operator`).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerIdentity::Controller(_) => "controller",
            PeerIdentity::StorageNode(_) => "storage",
            PeerIdentity::Machine(_) => "machine",
            PeerIdentity::Operator { .. } => "operator",
        }
    }

    /// The peer's name: controller id, node id, machine id or operator name.
    pub fn name(&self) -> &str {
        match self {
            PeerIdentity::Controller(name)
            | PeerIdentity::StorageNode(name)
            | PeerIdentity::Machine(name)
            | PeerIdentity::Operator { name, .. } => name,
        }
    }
}

impl fmt::Display for PeerIdentity {
    /// Human-readable: `controller c1`, `storage node n1`, `machine m1`,
    /// `operator alice (admin)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Controller(id) => write!(f, "controller {id}"),
            PeerIdentity::StorageNode(id) => write!(f, "storage node {id}"),
            PeerIdentity::Machine(id) => write!(f, "machine {id}"),
            PeerIdentity::Operator { name, role } => write!(f, "operator {name} ({role})"),
        }
    }
}

impl FromStr for PeerIdentity {
    type Err = Error;

    /// Same as [`PeerIdentity::from_uri`].
    fn from_str(s: &str) -> Result<Self> {
        Self::from_uri(s)
    }
}

/// Why `name` is not a valid identity name, if it is not.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > MAX_NAME_CHARS {
        return Err(format!(
            "name is {} characters, at most {MAX_NAME_CHARS} allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(format!(
            "character {bad:?} in name {name:?} (allowed: A-Z a-z 0-9 . _ - @)"
        ));
    }
    Ok(())
}

/// Whether `uri` claims the fleetmig trust domain, in any letter case (so
/// a second claim cannot hide from the exactly-one rule by its spelling).
fn in_fleetmig_domain(uri: &str) -> bool {
    let Some(scheme) = uri.get(..9) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("spiffe://") {
        return false;
    }
    let authority = uri[9..].split(['/', '?', '#']).next().unwrap_or_default();
    authority.eq_ignore_ascii_case("fleetmig")
}

/// What the fleet needs to know of a peer's (already verified) certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Who the certificate names.
    pub identity: PeerIdentity,
    /// The serial number, lowercase hex without separators (for audit logs
    /// and revocation).
    pub serial_hex: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl PeerCert {
    /// Reads a DER certificate. Exactly one URI SAN in the fleetmig trust
    /// domain is required (URIs of other trust domains are ignored; a second
    /// fleetmig one, even in another letter case, is refused).
    pub fn from_der(der: &[u8]) -> Result<PeerCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|error| Error::PeerCertificate(format!("does not parse: {error}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|error| Error::PeerCertificate(format!("subject alternative names: {error}")))?
            .ok_or_else(|| {
                Error::PeerCertificate(
                    "no subject alternative names, so no fleetmig identity".into(),
                )
            })?;
        let claims: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .filter(|uri| in_fleetmig_domain(uri))
            .collect();
        let uri = match claims.as_slice() {
            [uri] => *uri,
            [] => {
                return Err(Error::PeerCertificate(format!(
                    "no {TRUST_DOMAIN_PREFIX} URI subject alternative name"
                )));
            }
            many => {
                return Err(Error::PeerCertificate(format!(
                    "{} fleetmig identities ({}), exactly one allowed",
                    many.len(),
                    many.join(", ")
                )));
            }
        };
        let identity = PeerIdentity::from_uri(uri)?;
        Ok(PeerCert {
            identity,
            serial_hex: hex::encode(cert.raw_serial()),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }
}

/// The identity of the peer of a tonic request served over TLS: `None` when
/// the peer presented no certificate (plaintext, or a TLS server whose
/// client authentication is optional), otherwise what its leaf certificate
/// (the first one presented) names.
pub fn peer_cert<T>(request: &tonic::Request<T>) -> Option<Result<PeerCert>> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    Some(PeerCert::from_der(leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uris() {
        let identities = [
            PeerIdentity::Controller("controller".into()),
            PeerIdentity::StorageNode("node-a.site_1".into()),
            PeerIdentity::Machine("0198f3a2-7c1e-7d2b-9a3f-000000000001".into()),
            PeerIdentity::Operator {
                name: "alice@example.org".into(),
                role: Role::Admin,
            },
            PeerIdentity::Operator {
                name: "bob".into(),
                role: Role::Viewer,
            },
        ];
        for identity in identities {
            let uri = identity.to_uri();
            assert!(uri.starts_with(TRUST_DOMAIN_PREFIX), "{uri}");
            assert_eq!(PeerIdentity::from_uri(&uri).unwrap(), identity, "{uri}");
            assert_eq!(uri.parse::<PeerIdentity>().unwrap(), identity);
            identity.validate().unwrap();
        }
        assert_eq!(
            PeerIdentity::Operator {
                name: "alice".into(),
                role: Role::Operator
            }
            .to_uri(),
            "spiffe://fleetmig/operator/operator/alice"
        );
        assert_eq!(
            PeerIdentity::StorageNode("n1".into()).to_uri(),
            "spiffe://fleetmig/storage/n1"
        );
    }

    #[test]
    fn malformed_identities_are_refused() {
        let long = format!("spiffe://fleetmig/machine/{}", "m".repeat(129));
        let refused = [
            "",
            "spiffe://fleetmig/",
            "spiffe://fleetmig",
            "spiffe://other/machine/m1",
            "https://fleetmig/machine/m1",
            "SPIFFE://fleetmig/machine/m1",
            "spiffe://fleetmig/printer/p1",
            "spiffe://fleetmig/machine/",
            "spiffe://fleetmig/machine",
            "spiffe://fleetmig/machine/m1/",
            "spiffe://fleetmig/machine/m1/extra",
            "spiffe://fleetmig/machine/m 1",
            "spiffe://fleetmig/machine/m1?x=1",
            "spiffe://fleetmig/machine/m1#frag",
            "spiffe://fleetmig/machine/..",
            "spiffe://fleetmig/machine/.",
            "spiffe://fleetmig/machine/mé",
            "spiffe://fleetmig/storage/a%2Fb",
            "spiffe://fleetmig/operator/alice",
            "spiffe://fleetmig/operator/root/alice",
            "spiffe://fleetmig/operator/Admin/alice",
            "spiffe://fleetmig/operator/admin/",
            "spiffe://fleetmig/operator/admin/alice/x",
            long.as_str(),
        ];
        for uri in refused {
            let error = PeerIdentity::from_uri(uri).expect_err(uri);
            assert!(
                matches!(error, Error::InvalidIdentity { .. }),
                "{uri}: {error}"
            );
        }
        let max = format!("spiffe://fleetmig/machine/{}", "m".repeat(128));
        PeerIdentity::from_uri(&max).expect("128 characters are allowed");
        let error = PeerIdentity::from_uri("spiffe://fleetmig/printer/p1").unwrap_err();
        assert!(
            error.to_string().contains("unknown kind \"printer\""),
            "{error}"
        );
        assert!(PeerIdentity::Machine("a/b".into()).validate().is_err());
        assert!(PeerIdentity::Controller(String::new()).validate().is_err());
    }

    #[test]
    fn roles_are_ordered_and_lowercase() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert_eq!(Role::Admin.to_string(), "admin");
        assert!(matches!(
            "ADMIN".parse::<Role>(),
            Err(Error::InvalidRole(_))
        ));
        assert!("".parse::<Role>().is_err());
    }

    /// A self-signed certificate with these URI SANs (and a DNS name).
    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["host.example.org".into()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_peer_certificate_names_exactly_one_fleetmig_identity() {
        let der = cert_with_uris(&["spiffe://other/machine/x", "spiffe://fleetmig/machine/m1"]);
        let peer = PeerCert::from_der(&der).unwrap();
        assert_eq!(peer.identity, PeerIdentity::Machine("m1".into()));
        assert!(!peer.serial_hex.is_empty());

        let refusals = [
            (cert_with_uris(&[]), "no spiffe://fleetmig/"),
            (
                cert_with_uris(&["spiffe://other/machine/m1"]),
                "no spiffe://fleetmig/",
            ),
            (
                cert_with_uris(&[
                    "spiffe://fleetmig/machine/m1",
                    "spiffe://fleetmig/machine/m2",
                ]),
                "2 fleetmig identities",
            ),
            (
                cert_with_uris(&[
                    "spiffe://fleetmig/machine/m1",
                    "SPIFFE://FleetMig/controller/c",
                ]),
                "2 fleetmig identities",
            ),
            (
                cert_with_uris(&["spiffe://fleetmig/printer/p1"]),
                "unknown kind",
            ),
        ];
        for (der, expected) in refusals {
            let error = PeerCert::from_der(&der).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected}: {error}");
        }
        let error = PeerCert::from_der(b"not a certificate").unwrap_err();
        assert!(matches!(error, Error::PeerCertificate(_)), "{error}");
    }

    #[test]
    fn display_is_for_people() {
        let alice = PeerIdentity::Operator {
            name: "alice".into(),
            role: Role::Operator,
        };
        assert_eq!(alice.to_string(), "operator alice (operator)");
        assert_eq!(
            PeerIdentity::StorageNode("n1".into()).to_string(),
            "storage node n1"
        );
        assert_eq!(alice.kind(), "operator");
        assert_eq!(alice.name(), "alice");
        assert!(!alice.is_server());
        assert!(PeerIdentity::Controller("c".into()).is_server());
    }
}
