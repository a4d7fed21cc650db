//! The test fleet's PKI: every process the harness starts talks mutual TLS.
//!
//! One CA and its certificates per [`crate::Cluster`] (`<root>/pki`, written by
//! `fleetmig_auth::pki::init_dir`, like `fleetmig certs init`); controllers sign the
//! workers' enrollments with the CA key, and the harness keeps a bootstrap token for
//! them in `pki/bootstrap.token`. The harness itself calls as the `admin` operator.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetmig_auth::Transport;
use fleetmig_auth::tls::TlsFiles;

/// The files of one test fleet.
#[derive(Debug, Clone)]
pub struct TestPki {
    dir: PathBuf,
    admin: Transport,
}

impl TestPki {
    /// Creates the CA and certificates in `dir`, and the shared master key beside them.
    ///
    /// # Panics
    /// When the files cannot be written.
    pub fn create(dir: &Path) -> TestPki {
        fleetmig_auth::pki::init_dir(dir, &[])
            .unwrap_or_else(|err| panic!("cannot create the test PKI in {}: {err}", dir.display()));
        let master = dir.join("master.key");
        let bytes: [u8; 32] = rand::random();
        std::fs::write(&master, format!("{}\n", hex::encode(bytes)))
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", master.display()));
        let admin = Transport::Tls(Arc::new(
            TlsFiles::in_dir(dir, "admin")
                .load()
                .unwrap_or_else(|err| panic!("the admin certificate: {err}")),
        ));
        TestPki {
            dir: dir.to_path_buf(),
            admin,
        }
    }

    /// A file of the PKI directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The transport of the harness's own calls (the admin operator).
    pub fn admin(&self) -> &Transport {
        &self.admin
    }

    /// Where the harness keeps a bootstrap token for the workers.
    pub fn token_file(&self) -> PathBuf {
        self.file("bootstrap.token")
    }

    fn args(&self, pairs: &[(&str, &str)]) -> Vec<OsString> {
        pairs
            .iter()
            .flat_map(|(flag, file)| [OsString::from(*flag), self.file(file).into_os_string()])
            .collect()
    }

    /// TLS arguments of a controller.
    pub fn controller_args(&self) -> Vec<OsString> {
        self.args(&[
            ("--ca", "ca.pem"),
            ("--cert", "controller.pem"),
            ("--key", "controller.key"),
            ("--ca-key", "ca.key"),
            ("--master-key-file", "master.key"),
        ])
    }

    /// TLS arguments of a storage node.
    pub fn storage_args(&self) -> Vec<OsString> {
        self.args(&[
            ("--ca", "ca.pem"),
            ("--cert", "storage-node.pem"),
            ("--key", "storage-node.key"),
        ])
    }

    /// TLS arguments of a worker agent.
    pub fn worker_args(&self) -> Vec<OsString> {
        self.args(&[
            ("--ca", "ca.pem"),
            ("--bootstrap-token-file", "bootstrap.token"),
        ])
    }
}

impl TestPki {
    /// The transport of the machine whose disk is `machine_root`, with the certificate
    /// its worker got at enrollment (`_fleetmig/tls/`).
    ///
    /// # Panics
    /// When the machine has not enrolled yet.
    pub fn machine(&self, machine_root: &Path) -> Transport {
        let dir = machine_root.join("_fleetmig").join("tls");
        let files = TlsFiles {
            ca: self.file("ca.pem"),
            cert: Some(dir.join("machine.pem")),
            key: Some(dir.join("machine.key")),
        };
        Transport::Tls(Arc::new(files.load().unwrap_or_else(|err| {
            panic!("the certificate of {}: {err}", machine_root.display())
        })))
    }
}
