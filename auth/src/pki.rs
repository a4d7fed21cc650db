//! The fleet's certificate authority.
//!
//! One CA per fleet signs every certificate: controllers and storage nodes
//! (server and client authentication, with DNS/IP names), workers (client
//! authentication; the controller signs the CSR a worker sends at
//! enrollment and decides itself which machine it is) and operators
//! (client authentication, with a [`Role`]). Each
//! leaf names its peer in one URI SAN ([`PeerIdentity::to_uri`]).
//!
//! [`init_dir`] writes a complete PKI for tests and small deployments.

use crate::identity::{PeerIdentity, Role};
use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// Validity of a CA that [`CertificateAuthority::generate`] creates: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Validity of the leaf certificates [`init_dir`] issues: one year.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far in the past certificates start, so a peer whose clock is a little
/// behind the CA's does not refuse a certificate as not yet valid.
const BACKDATE: Duration = Duration::from_secs(60);

/// DNS names and IP addresses a server certificate is valid for, besides
/// `localhost`, `127.0.0.1` and `::1`, which controller and storage
/// certificates always carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerNames {
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
}

impl ServerNames {
    /// No names beyond the loopback ones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sorts each of `names` into an IP address (if it parses as one) or a
    /// DNS name (lowercased; labels of letters, digits and inner hyphens,
    /// no wildcards). Duplicates are dropped.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self> {
        let mut parsed = Self::default();
        for name in names {
            parsed.add(name.as_ref())?;
        }
        Ok(parsed)
    }

    /// Adds one DNS name or IP address.
    pub fn add(&mut self, name: &str) -> Result<()> {
        let name = name.trim();
        if let Ok(ip) = name.parse::<IpAddr>() {
            if !self.ip_addresses.contains(&ip) {
                self.ip_addresses.push(ip);
            }
            return Ok(());
        }
        check_dns_name(name).map_err(|reason| Error::InvalidServerName {
            name: name.to_string(),
            reason,
        })?;
        let name = name.to_ascii_lowercase();
        if !self.dns_names.contains(&name) {
            self.dns_names.push(name);
        }
        Ok(())
    }

    /// The DNS names, in the order given.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The IP addresses, in the order given.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> bool {
        self.dns_names.is_empty() && self.ip_addresses.is_empty()
    }

    /// These names plus `localhost`, `127.0.0.1` and `::1`.
    pub fn with_loopback(&self) -> ServerNames {
        let mut names = ServerNames {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        };
        for name in &self.dns_names {
            if !names.dns_names.contains(name) {
                names.dns_names.push(name.clone());
            }
        }
        for ip in &self.ip_addresses {
            if !names.ip_addresses.contains(ip) {
                names.ip_addresses.push(*ip);
            }
        }
        names
    }

    /// Every name as text, DNS names first.
    pub fn to_strings(&self) -> Vec<String> {
        self.dns_names
            .iter()
            .cloned()
            .chain(self.ip_addresses.iter().map(IpAddr::to_string))
            .collect()
    }
}

/// Why `name` is not a DNS name a certificate can carry, if it is not.
fn check_dns_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 253 {
        return Err(format!("{} characters, at most 253 allowed", name.len()));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} is not 1 to 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with a hyphen"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "character {bad:?} (a DNS name is letters, digits, hyphens and dots)"
            ));
        }
    }
    Ok(())
}

/// A certificate and its new private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The leaf certificate (PEM `CERTIFICATE`).
    pub cert_pem: String,
    /// Its private key (PEM PKCS#8 `PRIVATE KEY`); write it with mode 0600.
    pub key_pem: String,
    /// The certificate's serial number, lowercase hex (as
    /// [`PeerCert::serial_hex`](crate::identity::PeerCert::serial_hex) reads it).
    pub serial_hex: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .finish_non_exhaustive()
    }
}

/// The fleet's certificate authority: its certificate and signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn certificate_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |error| Error::Certificate {
        what,
        reason: error.to_string(),
    }
}

impl CertificateAuthority {
    /// A new self-signed CA named `common_name`, valid for [`CA_VALIDITY`].
    pub fn generate(common_name: &str) -> Result<Self> {
        Self::generate_with_validity(common_name, CA_VALIDITY)
    }

    /// A new self-signed CA named `common_name`, valid for `validity`.
    pub fn generate_with_validity(common_name: &str, validity: Duration) -> Result<Self> {
        let what = format!("generating certificate authority {common_name:?}");
        let key = KeyPair::generate().map_err(certificate_error(what.clone()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let (not_before, not_after) =
            validity_window(validity, None).map_err(|reason| Error::Certificate {
                what: what.clone(),
                reason,
            })?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(certificate_error(what))?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// Loads a CA from its certificate and PKCS#8 private key (both PEM).
    /// Refuses a certificate that is not a CA or a key that is not its own.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(certificate_error("loading the CA private key (PKCS#8 PEM)"))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|error| {
            Error::Certificate {
                what: "loading the CA certificate".into(),
                reason: format!("not PEM: {error}"),
            }
        })?;
        let cert = pem.parse_x509().map_err(|error| Error::Certificate {
            what: "loading the CA certificate".into(),
            reason: format!("does not parse: {error}"),
        })?;
        if !cert.is_ca() {
            return Err(Error::Certificate {
                what: "loading the CA certificate".into(),
                reason: format!("{} is not a CA certificate", cert.subject()),
            });
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(Error::Certificate {
                what: "loading the CA".into(),
                reason: "the private key does not belong to the CA certificate".into(),
            });
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&pem.contents.clone().into(), key)
            .map_err(certificate_error("loading the CA certificate"))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
            not_after,
        })
    }

    /// The CA certificate (PEM), which every peer trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM PKCS#8). Keep it with mode 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the CA certificate expires, seconds since the Unix epoch. No
    /// leaf it issues outlives it.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after.unix_timestamp()
    }

    /// Issues a certificate with a new key pair for `identity`, valid from a
    /// minute ago for `validity` (cut to the CA's own expiry).
    ///
    /// Controller and storage certificates are for server and client
    /// authentication and carry `names` plus the loopback names; machine and
    /// operator certificates are for client authentication only and take no
    /// names (an error if `names` is not empty).
    pub fn issue(
        &self,
        identity: &PeerIdentity,
        names: &ServerNames,
        validity: Duration,
    ) -> Result<IssuedCert> {
        let what = format!("issuing a certificate for {identity}");
        if !identity.is_server() && !names.is_empty() {
            return Err(Error::Certificate {
                what,
                reason: format!(
                    "server names ({}) are only for controller and storage certificates",
                    names.to_strings().join(", ")
                ),
            });
        }
        let key = KeyPair::generate().map_err(certificate_error(what.clone()))?;
        let params = self.leaf_params(identity, names, validity, &what)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(certificate_error(what))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial_hex: serial_hex(&params),
        })
    }

    /// Signs a worker's certificate signing request (PEM) for `identity`,
    /// returning the certificate (PEM).
    ///
    /// Only the CSR's public key is used, once its signature shows the
    /// requester holds the private key: whatever subject, names or
    /// extensions it asks for are ignored, and the certificate names only
    /// `identity` — the controller decides who the machine is.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &PeerIdentity,
        validity: Duration,
    ) -> Result<String> {
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject;
        use x509_parser::certification_request::X509CertificationRequest;
        use x509_parser::prelude::FromDer;

        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|error| {
                Error::InvalidCsr(format!("not a PEM CERTIFICATE REQUEST: {error}"))
            })?;
        let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
            .map_err(|error| Error::InvalidCsr(format!("does not parse: {error}")))?;
        csr.verify_signature().map_err(|error| {
            Error::InvalidCsr(format!(
                "its signature does not verify (the requester must hold the key): {error}"
            ))
        })?;
        let public_key =
            rcgen::SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
                .map_err(|error| Error::InvalidCsr(format!("unsupported public key: {error}")))?;
        let what = format!("signing a certificate request for {identity}");
        let params = self.leaf_params(identity, &ServerNames::new(), validity, &what)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(certificate_error(what))?;
        Ok(cert.pem())
    }

    fn leaf_params(
        &self,
        identity: &PeerIdentity,
        names: &ServerNames,
        validity: Duration,
        what: &str,
    ) -> Result<CertificateParams> {
        let fail = |reason: String| Error::Certificate {
            what: what.to_string(),
            reason,
        };
        identity.validate()?;
        let uri = identity.to_uri();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&identity.to_string());
        params.subject_alt_names.push(SanType::URI(
            uri.clone()
                .try_into()
                .map_err(|error: rcgen::Error| fail(format!("URI {uri}: {error}")))?,
        ));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if identity.is_server() {
            params
                .extended_key_usages
                .insert(0, ExtendedKeyUsagePurpose::ServerAuth);
            let names = names.with_loopback();
            for name in names.dns_names() {
                params.subject_alt_names.push(SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|error: rcgen::Error| fail(format!("DNS name {name}: {error}")))?,
                ));
            }
            for ip in names.ip_addresses() {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let (not_before, not_after) =
            validity_window(validity, Some(self.not_after)).map_err(fail)?;
        params.not_before = not_before;
        params.not_after = not_after;
        Ok(params)
    }
}

/// Generates a worker's key pair and a certificate signing request for it:
/// `(csr_pem, key_pem)`. The request names nothing; the controller decides
/// the identity when it signs ([`CertificateAuthority::sign_csr`]).
pub fn generate_csr() -> Result<(String, String)> {
    let what = "generating a certificate request";
    let key = KeyPair::generate().map_err(certificate_error(what))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name("fleetmig worker");
    let csr = params
        .serialize_request(&key)
        .map_err(certificate_error(what))?;
    let csr_pem = csr.pem().map_err(certificate_error(what))?;
    Ok((csr_pem, key.serialize_pem()))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "fleetmig");
    name.push(DnType::CommonName, common_name);
    name
}

/// 16 random bytes, the first in 0x01..=0x7f: positive, and no leading zero
/// byte for DER to strip, so the hex read back equals the hex issued.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

fn serial_hex(params: &CertificateParams) -> String {
    params
        .serial_number
        .as_ref()
        .map(|serial| hex::encode(serial.to_bytes()))
        .unwrap_or_default()
}

/// `(not_before, not_after)`: from a minute ago for `validity`, cut to
/// `cap` (the issuer's expiry).
fn validity_window(
    validity: Duration,
    cap: Option<OffsetDateTime>,
) -> std::result::Result<(OffsetDateTime, OffsetDateTime), String> {
    if validity.is_zero() {
        return Err("validity is zero".into());
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(time::Duration::try_from(validity).map_err(|error| error.to_string())?)
        .ok_or_else(|| format!("validity {validity:?} is too long"))?;
    let not_after = match cap {
        Some(cap) if cap <= now => return Err(format!("the CA expired at {cap}")),
        Some(cap) => not_after.min(cap),
        None => not_after,
    };
    Ok((now - BACKDATE, not_after))
}

/// What [`init_dir`] wrote.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The directory.
    pub dir: PathBuf,
    /// Every file written, in order (`ca.key` last).
    pub files: Vec<PathBuf>,
    /// The names the controller and storage certificates are valid for.
    pub server_names: Vec<String>,
}

/// The leaf certificates [`init_dir`] writes: file stem and identity.
fn init_identities() -> Vec<(&'static str, PeerIdentity)> {
    let operator = |name: &str, role| PeerIdentity::Operator {
        name: name.into(),
        role,
    };
    vec![
        ("controller", PeerIdentity::Controller("controller".into())),
        (
            "storage-node",
            PeerIdentity::StorageNode("storage-node".into()),
        ),
        ("admin", operator("admin", Role::Admin)),
        ("operator", operator("operator", Role::Operator)),
        ("viewer", operator("viewer", Role::Viewer)),
    ]
}

/// Writes a PKI for tests and small deployments into `dir` (created if
/// missing): `ca.pem` + `ca.key`, and a certificate and key for
/// `controller` and `storage-node` (valid for `server_names` plus the
/// loopback names) and for the operators `admin`, `operator` and `viewer`
/// (each with that role). Keys are written with mode 0600; every file is
/// written to a temporary file and renamed into place.
///
/// Refuses to run when `dir/ca.key` exists. `ca.key` is written last, so a
/// directory holding it is complete, and a run that died before it may
/// simply be repeated.
pub fn init_dir(dir: &Path, server_names: &[String]) -> Result<InitReport> {
    let names = ServerNames::parse(server_names)?;
    let ca_key_path = dir.join("ca.key");
    if ca_key_path.exists() {
        return Err(Error::AlreadyInitialized { path: ca_key_path });
    }
    std::fs::create_dir_all(dir).map_err(|error| Error::TlsFile {
        path: dir.to_path_buf(),
        reason: format!("cannot create the directory: {error}"),
    })?;
    // A name of its own, so the CAs of two fleets are never mistaken for
    // each other (in a bundle, in logs).
    let ca_name = format!("fleetmig CA {:08x}", rand::random::<u32>());
    let ca = CertificateAuthority::generate(&ca_name)?;
    let mut files = Vec::new();
    for (stem, identity) in init_identities() {
        let leaf_names = if identity.is_server() {
            names.clone()
        } else {
            ServerNames::new()
        };
        let issued = ca.issue(&identity, &leaf_names, LEAF_VALIDITY)?;
        let cert_path = dir.join(format!("{stem}.pem"));
        write_file(&cert_path, issued.cert_pem.as_bytes(), FileKind::Public)?;
        files.push(cert_path);
        let key_path = dir.join(format!("{stem}.key"));
        write_file(&key_path, issued.key_pem.as_bytes(), FileKind::Secret)?;
        files.push(key_path);
    }
    let ca_path = dir.join("ca.pem");
    write_file(&ca_path, ca.cert_pem().as_bytes(), FileKind::Public)?;
    files.push(ca_path);
    write_file(
        &ca_key_path,
        ca.key_pem().as_bytes(),
        FileKind::SecretNoClobber,
    )?;
    files.push(ca_key_path);
    sync_dir(dir)?;
    Ok(InitReport {
        dir: dir.to_path_buf(),
        files,
        server_names: names.with_loopback().to_strings(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// Mode 0644, replaces an existing file.
    Public,
    /// Mode 0600, replaces an existing file.
    Secret,
    /// Mode 0600, never replaces an existing file.
    SecretNoClobber,
}

/// Writes `contents` to a temporary file beside `path` (created with the
/// final mode, so a key is never readable by others, even briefly), syncs
/// it and moves it into place.
fn write_file(path: &Path, contents: &[u8], kind: FileKind) -> Result<()> {
    let io = |what: &str, error: std::io::Error| Error::TlsFile {
        path: path.to_path_buf(),
        reason: format!("{what}: {error}"),
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{:016x}", rand::random::<u64>()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if kind == FileKind::Public {
            0o644
        } else {
            0o600
        });
    }
    let result = (|| {
        let mut file = options
            .open(&tmp)
            .map_err(|error| io("cannot create a temporary file", error))?;
        file.write_all(contents)
            .map_err(|error| io("cannot write", error))?;
        file.sync_all().map_err(|error| io("cannot sync", error))?;
        drop(file);
        if kind == FileKind::SecretNoClobber {
            // A hard link fails if the target exists, where rename would
            // silently replace it.
            std::fs::hard_link(&tmp, path).map_err(|error| {
                if error.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::AlreadyInitialized {
                        path: path.to_path_buf(),
                    }
                } else {
                    io("cannot move into place", error)
                }
            })?;
            std::fs::remove_file(&tmp)
                .map_err(|error| io("cannot remove the temporary file", error))
        } else {
            std::fs::rename(&tmp, path).map_err(|error| io("cannot move into place", error))
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| Error::TlsFile {
            path: dir.to_path_buf(),
            reason: format!("cannot sync the directory: {error}"),
        })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerCert;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::extensions::GeneralName;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// Every SAN of a certificate, as text.
    fn sans(pem: &str) -> Vec<String> {
        let der = der(pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("uri:{uri}"),
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("other:{other}"),
            })
            .collect()
    }

    fn ekus(pem: &str) -> (bool, bool) {
        let der = der(pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        (eku.server_auth, eku.client_auth)
    }

    #[test]
    fn issued_certificates_name_their_identity_and_serial() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let machine = PeerIdentity::Machine("m-1".into());
        let issued = ca.issue(&machine, &ServerNames::new(), DAY).unwrap();
        let peer = PeerCert::from_der(&der(&issued.cert_pem)).unwrap();
        assert_eq!(peer.identity, machine);
        assert_eq!(peer.serial_hex, issued.serial_hex);
        assert_eq!(peer.serial_hex.len(), 32, "{}", peer.serial_hex);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            (peer.not_after_unix - (now + 86_400)).abs() < 60,
            "{peer:?}"
        );
        assert_eq!(
            sans(&issued.cert_pem),
            ["uri:spiffe://fleetmig/machine/m-1"]
        );
        assert_eq!(ekus(&issued.cert_pem), (false, true), "client auth only");

        let again = ca.issue(&machine, &ServerNames::new(), DAY).unwrap();
        assert_ne!(again.serial_hex, issued.serial_hex, "serials are random");
        assert_ne!(again.key_pem, issued.key_pem, "every leaf has its own key");
    }

    #[test]
    fn server_certificates_carry_their_names_and_loopback() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let names = ServerNames::parse(&["Controller.Example.org", "10.1.2.3"]).unwrap();
        let issued = ca
            .issue(&PeerIdentity::Controller("c1".into()), &names, DAY)
            .unwrap();
        let sans = sans(&issued.cert_pem);
        for expected in [
            "uri:spiffe://fleetmig/controller/c1",
            "dns:localhost",
            "dns:controller.example.org",
        ] {
            assert!(
                sans.iter().any(|san| san == expected),
                "{expected} in {sans:?}"
            );
        }
        assert_eq!(
            sans.iter().filter(|san| san.starts_with("ip:")).count(),
            3,
            "{sans:?}"
        );
        assert_eq!(ekus(&issued.cert_pem), (true, true));

        let storage = ca
            .issue(
                &PeerIdentity::StorageNode("n1".into()),
                &ServerNames::new(),
                DAY,
            )
            .unwrap();
        assert!(sans_contain(&storage.cert_pem, "dns:localhost"));
        assert_eq!(ekus(&storage.cert_pem), (true, true));

        let refused = ca
            .issue(&PeerIdentity::Machine("m1".into()), &names, DAY)
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("only for controller and storage"),
            "{refused}"
        );
        let invalid = ca
            .issue(
                &PeerIdentity::Machine("m/1".into()),
                &ServerNames::new(),
                DAY,
            )
            .unwrap_err();
        assert!(
            matches!(invalid, Error::InvalidIdentity { .. }),
            "{invalid}"
        );
        assert!(ServerNames::parse(&["bad name"]).is_err());
        assert!(ServerNames::parse(&["*.example.org"]).is_err());
        assert!(ServerNames::parse(&["-x.example.org"]).is_err());
    }

    fn sans_contain(pem: &str, expected: &str) -> bool {
        sans(pem).iter().any(|san| san == expected)
    }

    #[test]
    fn leaves_never_outlive_the_ca() {
        let ca = CertificateAuthority::generate_with_validity("short CA", DAY).unwrap();
        let issued = ca
            .issue(
                &PeerIdentity::Machine("m1".into()),
                &ServerNames::new(),
                10 * DAY,
            )
            .unwrap();
        let peer = PeerCert::from_der(&der(&issued.cert_pem)).unwrap();
        assert!(peer.not_after_unix <= ca.not_after_unix());
        assert!(
            ca.issue(
                &PeerIdentity::Machine("m1".into()),
                &ServerNames::new(),
                Duration::ZERO
            )
            .is_err()
        );
    }

    #[test]
    fn a_ca_reloads_from_pem_and_refuses_a_foreign_key() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(reloaded.not_after_unix(), ca.not_after_unix());
        let issued = reloaded
            .issue(
                &PeerIdentity::Machine("m1".into()),
                &ServerNames::new(),
                DAY,
            )
            .unwrap();
        // Signed by the same CA: the leaf verifies under the original's key.
        let ca_der = der(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let leaf_der = der(&issued.cert_pem);
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());

        let other = CertificateAuthority::generate("other CA").unwrap();
        let error = CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(error.to_string().contains("does not belong"), "{error}");
        let error = CertificateAuthority::from_pem(&issued.cert_pem, &issued.key_pem).unwrap_err();
        assert!(error.to_string().contains("not a CA"), "{error}");
        assert!(CertificateAuthority::from_pem("junk", ca.key_pem()).is_err());
    }

    #[test]
    fn sign_csr_ignores_the_names_the_csr_asks_for() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        // A greedy request: a controller identity, DNS names, server auth.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![
            "controller.example.org".to_string(),
            "10.0.0.1".to_string(),
        ])
        .unwrap();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://fleetmig/controller/evil".try_into().unwrap(),
        ));
        params.distinguished_name = distinguished_name("controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

        let machine = PeerIdentity::Machine("m-42".into());
        let cert_pem = ca.sign_csr(&csr_pem, &machine, DAY).unwrap();
        assert_eq!(sans(&cert_pem), ["uri:spiffe://fleetmig/machine/m-42"]);
        assert_eq!(ekus(&cert_pem), (false, true));
        assert_eq!(
            PeerCert::from_der(&der(&cert_pem)).unwrap().identity,
            machine
        );
        // The certificate is for the requester's key.
        let cert_der = der(&cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        assert!(
            !cert.subject().to_string().contains("controller"),
            "{}",
            cert.subject()
        );

        let (worker_csr, worker_key) = generate_csr().unwrap();
        let cert_pem = ca.sign_csr(&worker_csr, &machine, DAY).unwrap();
        let cert_der = der(&cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let worker_key = KeyPair::from_pem(&worker_key).unwrap();
        assert_eq!(
            cert.public_key().raw,
            worker_key.subject_public_key_info().as_slice()
        );

        assert!(matches!(
            ca.sign_csr("junk", &machine, DAY),
            Err(Error::InvalidCsr(_))
        ));
        // A request whose signature does not verify is refused: change one
        // base64 character of the last line, which lies in the signature.
        let mut lines: Vec<String> = worker_csr.lines().map(str::to_string).collect();
        let last_body = lines.len() - 2;
        let mut chars: Vec<char> = lines[last_body].chars().collect();
        chars[4] = if chars[4] == 'A' { 'B' } else { 'A' };
        lines[last_body] = chars.into_iter().collect();
        let tampered = lines.join("\n");
        let error = ca.sign_csr(&tampered, &machine, DAY).unwrap_err();
        assert!(matches!(error, Error::InvalidCsr(_)), "{error}");
    }

    #[test]
    fn init_dir_writes_a_pki_with_private_keys_and_refuses_a_second_init() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let report = init_dir(&dir, &["fleet.example.org".to_string()]).unwrap();
        assert_eq!(report.files.last().unwrap(), &dir.join("ca.key"));
        assert!(
            report
                .server_names
                .contains(&"fleet.example.org".to_string())
        );
        let expected = [
            ("controller", PeerIdentity::Controller("controller".into())),
            (
                "storage-node",
                PeerIdentity::StorageNode("storage-node".into()),
            ),
            (
                "admin",
                PeerIdentity::Operator {
                    name: "admin".into(),
                    role: Role::Admin,
                },
            ),
            (
                "operator",
                PeerIdentity::Operator {
                    name: "operator".into(),
                    role: Role::Operator,
                },
            ),
            (
                "viewer",
                PeerIdentity::Operator {
                    name: "viewer".into(),
                    role: Role::Viewer,
                },
            ),
        ];
        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(dir.join("ca.key")).unwrap();
        CertificateAuthority::from_pem(&ca_pem, &ca_key).expect("the CA reloads");
        for (stem, identity) in expected {
            let cert = std::fs::read_to_string(dir.join(format!("{stem}.pem"))).unwrap();
            assert_eq!(PeerCert::from_der(&der(&cert)).unwrap().identity, identity);
            assert!(dir.join(format!("{stem}.key")).exists());
        }
        assert!(sans_contain(
            &std::fs::read_to_string(dir.join("controller.pem")).unwrap(),
            "dns:fleet.example.org"
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            for file in &report.files {
                let name = file.file_name().unwrap().to_string_lossy();
                if name.ends_with(".key") {
                    assert_eq!(mode(file), 0o600, "{name}");
                } else {
                    assert_eq!(mode(file), 0o644, "{name}");
                }
            }
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let error = init_dir(&dir, &[]).unwrap_err();
        assert!(matches!(error, Error::AlreadyInitialized { .. }), "{error}");
        assert!(error.to_string().contains("ca.key"), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.key")).unwrap(),
            ca_key,
            "the CA key is untouched"
        );
        assert!(matches!(
            init_dir(&tmp.path().join("other"), &["not a name".to_string()]),
            Err(Error::InvalidServerName { .. })
        ));
    }
}
