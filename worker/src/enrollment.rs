//! The worker's TLS identity: the fleet's CA, and the client certificate
//! enrollment binds to this machine.
//!
//! A new machine has only the CA (`--ca`). It generates a key pair and a
//! certificate request once (`_fleetmig/tls/machine.key`, `machine.csr`, so
//! an approval given while it waits still matches after a restart), sends the
//! request with its bootstrap token, and installs the certificate the
//! controller signs (`machine.pem`). From then on every connection presents
//! it, and the controller lets it act only as the machine it names. The
//! folder lives under `_fleetmig/`, which the reimage preserves.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetmig_auth::Transport;
use fleetmig_auth::tls::TlsMaterial;

use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::identity::AgentState;

/// Largest bootstrap token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// The agent's transport and the files behind it.
#[derive(Debug)]
pub struct AgentTls {
    /// The transport of controller and storage-node channels.
    pub transport: Transport,
    dir: PathBuf,
    ca_pem: Option<String>,
    token_file: Option<PathBuf>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tls_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl AgentTls {
    /// The TLS state `config` asks for: plaintext with
    /// `--insecure-plaintext`, else the CA plus the machine certificate when
    /// one was installed. Neither flag is an error.
    pub fn open(config: &AgentConfig, state: &AgentState) -> Result<Self> {
        let dir = state.dir().join("tls");
        if config.insecure_plaintext {
            return Ok(Self {
                transport: Transport::Plaintext,
                dir,
                ca_pem: None,
                token_file: None,
            });
        }
        let Some(ca) = &config.ca else {
            return Err(tls_error(
                &config.machine_root,
                "TLS is required: give --ca (the fleet's CA certificate) and usually \
                 --bootstrap-token-file, or --insecure-plaintext for local development",
            ));
        };
        let ca_pem = std::fs::read_to_string(ca).map_err(io_error(ca))?;
        let mut tls = Self {
            transport: Transport::Plaintext,
            dir,
            ca_pem: Some(ca_pem),
            token_file: config.bootstrap_token_file.clone(),
        };
        tls.transport = tls.load_transport()?;
        Ok(tls)
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("machine.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("machine.key")
    }

    fn csr_path(&self) -> PathBuf {
        self.dir.join("machine.csr")
    }

    /// The CA alone, or with the installed certificate.
    fn load_transport(&self) -> Result<Transport> {
        let Some(ca_pem) = &self.ca_pem else {
            return Ok(Transport::Plaintext);
        };
        let (cert, key) = (self.cert_path(), self.key_path());
        let own = if cert.exists() && key.exists() {
            Some((
                std::fs::read_to_string(&cert).map_err(io_error(&cert))?,
                std::fs::read_to_string(&key).map_err(io_error(&key))?,
            ))
        } else {
            None
        };
        let material =
            TlsMaterial::from_pem(ca_pem, own.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))
                .map_err(|err| tls_error(&cert, err))?;
        Ok(Transport::Tls(Arc::new(material)))
    }

    /// Whether a machine certificate is installed.
    pub fn has_certificate(&self) -> bool {
        matches!(&self.transport, Transport::Tls(m) if m.has_identity())
    }

    /// The certificate request to send with `Enroll`: empty in plaintext
    /// mode or once a certificate is installed; otherwise the one kept on
    /// disk (created with its key the first time).
    pub fn csr_pem(&self) -> Result<String> {
        if self.ca_pem.is_none() || self.has_certificate() {
            return Ok(String::new());
        }
        let csr = self.csr_path();
        if csr.exists() && self.key_path().exists() {
            return std::fs::read_to_string(&csr).map_err(io_error(&csr));
        }
        std::fs::create_dir_all(&self.dir).map_err(io_error(&self.dir))?;
        let (csr_pem, key_pem) =
            fleetmig_auth::pki::generate_csr().map_err(|err| tls_error(&csr, err))?;
        write_private(&self.key_path(), &key_pem)?;
        write_private(&csr, &csr_pem)?;
        Ok(csr_pem)
    }

    /// The bootstrap token from `--bootstrap-token-file` (empty without one
    /// or once a certificate is installed).
    pub fn bootstrap_token(&self) -> Result<String> {
        let Some(path) = &self.token_file else {
            return Ok(String::new());
        };
        if self.has_certificate() {
            return Ok(String::new());
        }
        let size = std::fs::metadata(path).map_err(io_error(path))?.len();
        if size > MAX_TOKEN_FILE_BYTES {
            return Err(tls_error(
                path,
                format!("a bootstrap token file of {size} bytes, at most {MAX_TOKEN_FILE_BYTES}"),
            ));
        }
        Ok(std::fs::read_to_string(path)
            .map_err(io_error(path))?
            .trim()
            .to_string())
    }

    /// Installs the certificate the controller signed and returns the
    /// transport presenting it.
    pub fn install_certificate(&mut self, cert_pem: &str) -> Result<Transport> {
        let cert = self.cert_path();
        // Check it matches our key before keeping it.
        let key_pem =
            std::fs::read_to_string(self.key_path()).map_err(io_error(&self.key_path()))?;
        let ca_pem = self.ca_pem.clone().unwrap_or_default();
        TlsMaterial::from_pem(&ca_pem, Some((cert_pem, &key_pem))).map_err(|err| {
            tls_error(&cert, format!("the certificate the controller sent: {err}"))
        })?;
        write_private(&cert, cert_pem)?;
        self.transport = self.load_transport()?;
        Ok(self.transport.clone())
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (temp file,
/// fsync, rename).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents.as_bytes())
        .map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}
