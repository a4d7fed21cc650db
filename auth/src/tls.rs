//! Loading TLS files and building tonic's TLS configs.
//!
//! Every fleetmig endpoint trusts one CA bundle (`ca.pem`) and presents its
//! own certificate and key (`<name>.pem`, `<name>.key`). [`TlsFiles::load`]
//! checks them up front, with errors naming the file, so a misconfiguration
//! shows at startup instead of as handshake failures later:
//! missing or unreadable files, files with no PEM in them, a CA bundle
//! holding a non-CA certificate, a key that is not the certificate's, a
//! certificate the CA did not issue, an expired certificate.

use crate::identity::PeerCert;
use crate::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::certificate::X509Certificate;

/// Installs rustls's ring crypto provider as the process default, unless a
/// provider is installed already. Idempotent and cheap; the config builders
/// here call it, so callers need it only when they build rustls configs
/// themselves. (rustls refuses to pick a default on its own when more than
/// one provider is compiled in.)
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a default exists.
        let _ = ring_provider().install_default();
    }
}

/// rustls's ring provider. rustls 0.23.48 deprecated it because ring has no
/// post-quantum key exchange; the fleet uses it anyway (tonic's `tls-ring`)
/// because aws-lc-rs, the alternative, is a large C build.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Where an endpoint's TLS files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA bundle (PEM) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This endpoint's certificate (PEM, leaf first), if it has one.
    pub cert: Option<PathBuf>,
    /// This endpoint's private key (PEM), if it has one.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// `dir/ca.pem`, `dir/<name>.pem` and `dir/<name>.key`, the layout
    /// [`init_dir`](crate::pki::init_dir) writes.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: Some(dir.join(format!("{name}.pem"))),
            key: Some(dir.join(format!("{name}.key"))),
        }
    }

    /// Only a CA bundle: a client without a certificate of its own (a worker
    /// before enrollment).
    pub fn ca_only(ca: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            cert: None,
            key: None,
        }
    }

    /// Reads and checks the files.
    pub fn load(&self) -> Result<TlsMaterial> {
        let ca_pem = read_text(&self.ca)?;
        let own = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                cert.as_path(),
                read_text(cert)?,
                key.as_path(),
                read_text(key)?,
            )),
            (Some(cert), None) => {
                return Err(Error::TlsConfig(format!(
                    "certificate {} given without its private key",
                    cert.display()
                )));
            }
            (None, Some(key)) => {
                return Err(Error::TlsConfig(format!(
                    "private key {} given without its certificate",
                    key.display()
                )));
            }
        };
        TlsMaterial::check(&self.ca, ca_pem, own)
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|error| Error::TlsFile {
        path: path.to_path_buf(),
        reason: format!("cannot read: {error}"),
    })
}

/// Whether a server requires clients to present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client presents a certificate from the fleet's CA.
    Required,
    /// A client may connect without a certificate (a certificate it does
    /// present must still verify). For the enrollment path: a new worker has
    /// no certificate yet. Handlers must then refuse every call but
    /// enrollment when [`peer_cert`](crate::identity::peer_cert) is `None`.
    Optional,
}

/// Checked TLS material: the CA bundle and, optionally, this endpoint's
/// certificate and key.
#[derive(Clone)]
pub struct TlsMaterial {
    ca_pem: String,
    own: Option<OwnCert>,
}

#[derive(Clone)]
struct OwnCert {
    cert_pem: String,
    key_pem: String,
    leaf_der: CertificateDer<'static>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("has_identity", &self.own.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Checks PEM text held in memory (e.g. a certificate just issued at
    /// enrollment), with the same checks as [`TlsFiles::load`]; errors name
    /// the files as `<memory: ca>`, `<memory: cert>`, `<memory: key>`.
    pub fn from_pem(ca_pem: &str, cert_and_key: Option<(&str, &str)>) -> Result<Self> {
        let own = cert_and_key.map(|(cert, key)| {
            (
                Path::new("<memory: cert>"),
                cert.to_string(),
                Path::new("<memory: key>"),
                key.to_string(),
            )
        });
        Self::check(Path::new("<memory: ca>"), ca_pem.to_string(), own)
    }

    fn check(
        ca_path: &Path,
        ca_pem: String,
        own: Option<(&Path, String, &Path, String)>,
    ) -> Result<Self> {
        let bad = |path: &Path, reason: String| Error::TlsFile {
            path: path.to_path_buf(),
            reason,
        };
        let ca_ders = parse_certs(ca_path, &ca_pem)?;
        let mut cas = Vec::new();
        for der in &ca_ders {
            let cert = parse_x509(ca_path, der)?;
            if !cert.is_ca() {
                return Err(bad(
                    ca_path,
                    format!(
                        "{} is not a CA certificate (is this a leaf certificate?)",
                        cert.subject()
                    ),
                ));
            }
            cas.push(cert);
        }
        let Some((cert_path, cert_pem, key_path, key_pem)) = own else {
            return Ok(Self { ca_pem, own: None });
        };
        let chain = parse_certs(cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| {
            bad(
                key_path,
                format!("no PEM private key (PKCS#8, SEC1 or PKCS#1) in it: {error}"),
            )
        })?;
        let provider = ring_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|error| {
            match error {
                rustls::Error::InconsistentKeys(_) => bad(
                    key_path,
                    format!(
                        "is not the private key of the certificate in {}",
                        cert_path.display()
                    ),
                ),
                other => bad(key_path, format!("unusable private key: {other}")),
            }
        })?;
        let leaf = parse_x509(cert_path, &chain[0])?;
        if leaf.is_ca() {
            return Err(bad(
                cert_path,
                format!("{} is a CA certificate, not an endpoint's", leaf.subject()),
            ));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let not_after = leaf.validity().not_after;
        if not_after.timestamp() < now {
            return Err(bad(cert_path, format!("expired at {not_after}")));
        }
        // The last certificate of the chain must be issued by a CA in the
        // bundle (a single leaf, with the fleet's CA, is the usual case).
        let top = parse_x509(cert_path, chain.last().unwrap_or(&chain[0]))?;
        let issued_by_ca = cas.iter().any(|ca| {
            top.issuer() == ca.subject() && top.verify_signature(Some(ca.public_key())).is_ok()
        });
        if !issued_by_ca {
            return Err(bad(
                cert_path,
                format!(
                    "was not issued by the CA in {} (its issuer is {})",
                    ca_path.display(),
                    top.issuer()
                ),
            ));
        }
        let leaf_der = chain[0].clone();
        Ok(Self {
            ca_pem,
            own: Some(OwnCert {
                cert_pem,
                key_pem,
                leaf_der,
            }),
        })
    }

    /// The CA bundle, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether this endpoint has a certificate and key of its own.
    pub fn has_identity(&self) -> bool {
        self.own.is_some()
    }

    /// What this endpoint's own certificate names, if it has one (an error
    /// if it names no single fleetmig identity).
    pub fn own_cert(&self) -> Option<Result<PeerCert>> {
        self.own
            .as_ref()
            .map(|own| PeerCert::from_der(own.leaf_der.as_ref()))
    }

    /// A tonic server config: this endpoint's certificate, and client
    /// certificates verified against the CA bundle, required or optional.
    /// An error if this material has no certificate and key.
    pub fn server_config(&self, client_auth: ClientAuth) -> Result<ServerTlsConfig> {
        let own = self.own.as_ref().ok_or_else(|| {
            Error::TlsConfig("a server needs a certificate and private key, none was given".into())
        })?;
        install_crypto_provider();
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(&own.cert_pem, &own.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(client_auth == ClientAuth::Optional))
    }

    /// A tonic client config verifying the server against the CA bundle and
    /// the name `domain` (see [`tls_domain`]), presenting this endpoint's
    /// certificate when it has one.
    pub fn client_config(&self, domain: &str) -> ClientTlsConfig {
        install_crypto_provider();
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(domain);
        match &self.own {
            Some(own) => config.identity(Identity::from_pem(&own.cert_pem, &own.key_pem)),
            None => config,
        }
    }
}

fn parse_certs(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| Error::TlsFile {
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {error}"),
        })?;
    if certs.is_empty() {
        return Err(Error::TlsFile {
            path: path.to_path_buf(),
            reason: "no PEM CERTIFICATE in it".into(),
        });
    }
    Ok(certs)
}

fn parse_x509<'a>(path: &Path, der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|error| Error::TlsFile {
            path: path.to_path_buf(),
            reason: format!("certificate does not parse: {error}"),
        })
}

/// The name a client verifies the server by, from its URL
/// `https://host[:port][/path]`: the host, without the brackets of an IPv6
/// address. Anything but an `https` URL with a host is an error.
pub fn tls_domain(url: &str) -> Result<String> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|error| invalid(format!("does not parse: {error}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => return Err(invalid(format!("scheme {other:?}, TLS needs https"))),
        None => return Err(invalid("no scheme, expected https://host:port".into())),
    }
    let host = uri
        .host()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| invalid("no host".into()))?;
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    Ok(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerIdentity;
    use crate::pki::{CertificateAuthority, ServerNames};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn tls_domain_is_the_host() {
        assert_eq!(
            tls_domain("https://controller.example.org:7443").unwrap(),
            "controller.example.org"
        );
        assert_eq!(tls_domain("https://127.0.0.1:7443").unwrap(), "127.0.0.1");
        assert_eq!(tls_domain("https://[::1]:7443/").unwrap(), "::1");
        assert_eq!(tls_domain("https://localhost").unwrap(), "localhost");
        for bad in [
            "http://localhost:7443",
            "localhost:7443",
            "",
            "https://",
            "not a url",
        ] {
            let error = tls_domain(bad).expect_err(bad);
            assert!(matches!(error, Error::InvalidUrl { .. }), "{bad}: {error}");
        }
    }

    #[test]
    fn the_files_of_init_dir_load() {
        let tmp = tempfile::tempdir().unwrap();
        crate::pki::init_dir(tmp.path(), &[]).unwrap();
        for name in ["controller", "storage-node", "admin", "operator", "viewer"] {
            let material = TlsFiles::in_dir(tmp.path(), name).load().unwrap();
            assert!(material.has_identity());
            let own = material.own_cert().unwrap().unwrap();
            assert_eq!(own.identity.name(), name);
            material.server_config(ClientAuth::Required).unwrap();
            material.client_config("localhost");
        }
        let ca_only = TlsFiles::ca_only(tmp.path().join("ca.pem")).load().unwrap();
        assert!(!ca_only.has_identity());
        assert!(ca_only.own_cert().is_none());
        let error = ca_only.server_config(ClientAuth::Optional).unwrap_err();
        assert!(matches!(error, Error::TlsConfig(_)), "{error}");
    }

    #[test]
    fn bad_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        crate::pki::init_dir(dir, &[]).unwrap();
        let files = TlsFiles::in_dir(dir, "controller");
        let error_of = |files: &TlsFiles| files.load().unwrap_err().to_string();

        let missing = TlsFiles::in_dir(dir, "nobody");
        let error = error_of(&missing);
        assert!(
            error.contains("nobody.pem") && error.contains("cannot read"),
            "{error}"
        );

        std::fs::write(dir.join("junk.pem"), "hello\n").unwrap();
        let junk_ca = TlsFiles {
            ca: dir.join("junk.pem"),
            ..files.clone()
        };
        let error = error_of(&junk_ca);
        assert!(
            error.contains("junk.pem") && error.contains("no PEM CERTIFICATE"),
            "{error}"
        );

        let leaf_as_ca = TlsFiles {
            ca: dir.join("controller.pem"),
            ..files.clone()
        };
        let error = error_of(&leaf_as_ca);
        assert!(
            error.contains("controller.pem") && error.contains("not a CA"),
            "{error}"
        );

        let mismatched = TlsFiles {
            key: Some(dir.join("admin.key")),
            ..files.clone()
        };
        let error = error_of(&mismatched);
        assert!(
            error.contains("admin.key")
                && error.contains("not the private key of the certificate in"),
            "{error}"
        );

        let cert_as_key = TlsFiles {
            key: Some(dir.join("controller.pem")),
            ..files.clone()
        };
        let error = error_of(&cert_as_key);
        assert!(
            error.contains("controller.pem") && error.contains("no PEM private key"),
            "{error}"
        );

        let no_key = TlsFiles {
            key: None,
            ..files.clone()
        };
        assert!(error_of(&no_key).contains("without its private key"));

        // A certificate from another CA, with its own (matching) key.
        let other = CertificateAuthority::generate("other CA").unwrap();
        let foreign = other
            .issue(
                &PeerIdentity::Controller("c".into()),
                &ServerNames::new(),
                DAY,
            )
            .unwrap();
        std::fs::write(dir.join("foreign.pem"), &foreign.cert_pem).unwrap();
        std::fs::write(dir.join("foreign.key"), &foreign.key_pem).unwrap();
        let error = error_of(&TlsFiles::in_dir(dir, "foreign"));
        assert!(
            error.contains("foreign.pem") && error.contains("was not issued by the CA in"),
            "{error}"
        );
        // The same material with the other CA's bundle loads.
        TlsMaterial::from_pem(
            other.cert_pem(),
            Some((&foreign.cert_pem, &foreign.key_pem)),
        )
        .unwrap();
    }
}
