//! How a fleetmig process reaches the others: mutual TLS, or plaintext
//! where an explicit development flag allows it.
//!
//! Every client channel of every service is built through
//! [`Transport::endpoint`], so one place decides the scheme: with TLS on,
//! only `https://` URLs are accepted (a plaintext URL is an error, never a
//! silent downgrade) and the channel verifies the server against the
//! fleet's CA and presents this process's certificate; in plaintext mode
//! only `http://` URLs are.

use std::sync::Arc;

use tonic::transport::{Endpoint, ServerTlsConfig};

use crate::tls::{ClientAuth, TlsMaterial, tls_domain};
use crate::{Error, Result};

/// The transport security of one process.
#[derive(Debug, Clone)]
pub enum Transport {
    /// No TLS (`--insecure-plaintext`, local development and unit tests).
    Plaintext,
    /// Mutual TLS with the fleet's CA and, when it has one, this process's
    /// certificate.
    Tls(Arc<TlsMaterial>),
}

impl Transport {
    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The URL scheme peers are reached with: `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.is_tls() { "https" } else { "http" }
    }

    /// An endpoint for `url` with this transport's security; refuses a URL
    /// whose scheme does not match it.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|err| invalid(err.to_string()))?;
        match self {
            Transport::Plaintext => {
                if !url.starts_with("http://") {
                    return Err(invalid(
                        "TLS is off (--insecure-plaintext): use an http:// URL".into(),
                    ));
                }
                Ok(endpoint)
            }
            Transport::Tls(material) => {
                if !url.starts_with("https://") {
                    return Err(invalid(
                        "TLS is on: plaintext is refused, use an https:// URL".into(),
                    ));
                }
                let domain = tls_domain(url)?;
                endpoint
                    .tls_config(material.client_config(&domain))
                    .map_err(|err| invalid(format!("TLS configuration: {err}")))
            }
        }
    }

    /// The server TLS config of this process (`None` in plaintext mode).
    pub fn server_config(&self, client_auth: ClientAuth) -> Result<Option<ServerTlsConfig>> {
        match self {
            Transport::Plaintext => Ok(None),
            Transport::Tls(material) => material.server_config(client_auth).map(Some),
        }
    }

    /// This transport with another certificate and key (a worker after its
    /// enrollment), trusting the same CA.
    pub fn with_identity(&self, cert_pem: &str, key_pem: &str) -> Result<Transport> {
        match self {
            Transport::Plaintext => Ok(Transport::Plaintext),
            Transport::Tls(material) => Ok(Transport::Tls(Arc::new(TlsMaterial::from_pem(
                material.ca_pem(),
                Some((cert_pem, key_pem)),
            )?))),
        }
    }
}

/// What a PEM certificate (the leaf, first in the file) names.
pub fn peer_cert_from_pem(pem: &str) -> Result<crate::identity::PeerCert> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| Error::PeerCertificate("no PEM CERTIFICATE".into()))?
        .map_err(|err| Error::PeerCertificate(format!("malformed PEM: {err}")))?;
    crate::identity::PeerCert::from_der(der.as_ref())
}
