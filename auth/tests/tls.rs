//! Mutual TLS over real loopback connections: a tonic server with the
//! fleet's certificates, serving a fake `StorageRegistry` that records who
//! each caller is, and clients with good, foreign, missing and plaintext
//! credentials.
//!
//! Every refusal is followed by a good call on the same server, so a refusal
//! can never be a server that simply died.

use fleetmig_auth::identity::{PeerIdentity, Role, peer_cert};
use fleetmig_auth::pki::{self, CertificateAuthority, ServerNames};
use fleetmig_auth::tls::{ClientAuth, TlsFiles, TlsMaterial, tls_domain};
use fleetmig_proto::v1;
use fleetmig_proto::v1::storage_registry_client::StorageRegistryClient;
use fleetmig_proto::v1::storage_registry_server::{StorageRegistry, StorageRegistryServer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};
use tonic::{Request, Response, Status};

const DAY: Duration = Duration::from_secs(24 * 3600);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who called, per call that reached the handler (`None`: no certificate).
type Seen = Arc<Mutex<Vec<Option<PeerIdentity>>>>;

/// A `StorageRegistry` that records each caller's identity.
struct RecordingRegistry {
    seen: Seen,
}

#[tonic::async_trait]
impl StorageRegistry for RecordingRegistry {
    async fn register_node(
        &self,
        request: Request<v1::RegisterNodeRequest>,
    ) -> Result<Response<v1::RegisterNodeResponse>, Status> {
        let identity = match peer_cert(&request) {
            None => None,
            Some(Ok(cert)) => Some(cert.identity),
            Some(Err(error)) => return Err(Status::unauthenticated(error.to_string())),
        };
        self.seen.lock().unwrap().push(identity);
        Ok(Response::new(v1::RegisterNodeResponse {
            report_interval_ms: 1_000,
            token_public_key: Vec::new(),
        }))
    }

    async fn report_capacity(
        &self,
        _request: Request<v1::CapacityReport>,
    ) -> Result<Response<v1::CapacityAck>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// A running TLS server on a port-0 loopback listener.
struct TestServer {
    addr: SocketAddr,
    seen: Seen,
    /// Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

impl TestServer {
    async fn start(material: &TlsMaterial, client_auth: ClientAuth) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(material.server_config(client_auth).unwrap())
            .unwrap()
            .add_service(StorageRegistryServer::new(RecordingRegistry {
                seen: seen.clone(),
            }));
        tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            seen,
            _stop: stop,
        }
    }

    fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<Option<PeerIdentity>> {
        self.seen.lock().unwrap().clone()
    }
}

/// One `RegisterNode` call to `url`, over TLS when `tls` is given.
async fn call(url: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let attempt = async {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|error| format!("endpoint: {error}"))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|error| format!("tls config: {error}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| format!("connect: {error:?}"))?;
        let response = StorageRegistryClient::new(channel)
            .register_node(v1::RegisterNodeRequest {
                node_id: "n1".into(),
                ..Default::default()
            })
            .await
            .map_err(|status| format!("call: {status:?}"))?;
        assert_eq!(response.get_ref().report_interval_ms, 1_000);
        Ok(())
    };
    tokio::time::timeout(CALL_TIMEOUT * 2, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// The PKI `init_dir` writes, plus a worker certificate signed from a CSR.
struct Fleet {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        pki::init_dir(dir.path(), &[]).unwrap();
        let ca = CertificateAuthority::from_pem(
            &std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            &std::fs::read_to_string(dir.path().join("ca.key")).unwrap(),
        )
        .unwrap();
        Fleet { dir, ca }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The controller's material, from its files.
    fn controller(&self) -> TlsMaterial {
        TlsFiles::in_dir(self.path(), "controller").load().unwrap()
    }

    /// A worker enrolled the way workers are: its own key, a CSR, and a
    /// certificate the CA signed for the machine id the controller chose.
    fn worker(&self, machine_id: &str) -> TlsMaterial {
        let (csr, key) = pki::generate_csr().unwrap();
        let cert = self
            .ca
            .sign_csr(&csr, &PeerIdentity::Machine(machine_id.into()), DAY)
            .unwrap();
        TlsMaterial::from_pem(self.ca.cert_pem(), Some((&cert, &key))).unwrap()
    }

    /// A client trusting the fleet CA, with no certificate of its own.
    fn anonymous(&self) -> TlsMaterial {
        TlsFiles::ca_only(self.path().join("ca.pem"))
            .load()
            .unwrap()
    }

    /// A client trusting the fleet CA (so it would accept the server) but
    /// presenting a machine certificate from another CA.
    fn impostor(&self) -> ClientTlsConfig {
        let other = CertificateAuthority::generate("impostor CA").unwrap();
        let cert = other
            .issue(
                &PeerIdentity::Machine("m1".into()),
                &ServerNames::new(),
                DAY,
            )
            .unwrap();
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("127.0.0.1")
            .identity(Identity::from_pem(cert.cert_pem, cert.key_pem))
    }
}

#[tokio::test]
async fn a_fleet_client_is_served_and_identified() {
    let fleet = Fleet::new();
    let server = TestServer::start(&fleet.controller(), ClientAuth::Required).await;
    let url = server.https_url();
    let domain = tls_domain(&url).unwrap();

    call(&url, Some(fleet.worker("m-17").client_config(&domain)))
        .await
        .unwrap();
    let admin = TlsFiles::in_dir(fleet.path(), "admin").load().unwrap();
    call(&url, Some(admin.client_config(&domain)))
        .await
        .unwrap();
    // The server certificate is also valid for "localhost".
    call(&url, Some(fleet.worker("m-18").client_config("localhost")))
        .await
        .unwrap();

    assert_eq!(
        server.seen(),
        [
            Some(PeerIdentity::Machine("m-17".into())),
            Some(PeerIdentity::Operator {
                name: "admin".into(),
                role: Role::Admin
            }),
            Some(PeerIdentity::Machine("m-18".into())),
        ]
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let fleet = Fleet::new();
    for client_auth in [ClientAuth::Required, ClientAuth::Optional] {
        let server = TestServer::start(&fleet.controller(), client_auth).await;
        let url = server.https_url();
        let error = call(&url, Some(fleet.impostor()))
            .await
            .expect_err("a foreign certificate must be refused");
        assert!(error.contains("UnknownCA"), "{client_auth:?}: {error}");
        assert!(server.seen().is_empty(), "{client_auth:?}: {error}");

        call(&url, Some(fleet.worker("m1").client_config("127.0.0.1")))
            .await
            .unwrap();
        assert_eq!(server.seen(), [Some(PeerIdentity::Machine("m1".into()))]);
    }
}

#[tokio::test]
async fn a_plaintext_client_is_refused() {
    let fleet = Fleet::new();
    let server = TestServer::start(&fleet.controller(), ClientAuth::Optional).await;
    let plaintext = format!("http://127.0.0.1:{}", server.addr.port());
    call(&plaintext, None)
        .await
        .expect_err("plaintext must not reach the service");
    assert!(server.seen().is_empty());

    call(
        &server.https_url(),
        Some(fleet.anonymous().client_config("127.0.0.1")),
    )
    .await
    .unwrap();
    assert_eq!(server.seen(), [None]);
}

#[tokio::test]
async fn a_client_without_a_certificate_needs_optional_client_auth() {
    let fleet = Fleet::new();
    let required = TestServer::start(&fleet.controller(), ClientAuth::Required).await;
    let error = call(
        &required.https_url(),
        Some(fleet.anonymous().client_config("127.0.0.1")),
    )
    .await
    .expect_err("no certificate, client auth required");
    assert!(error.contains("CertificateRequired"), "{error}");
    assert!(required.seen().is_empty());
    call(
        &required.https_url(),
        Some(fleet.worker("m1").client_config("127.0.0.1")),
    )
    .await
    .unwrap();

    let optional = TestServer::start(&fleet.controller(), ClientAuth::Optional).await;
    call(
        &optional.https_url(),
        Some(fleet.anonymous().client_config("127.0.0.1")),
    )
    .await
    .unwrap();
    call(
        &optional.https_url(),
        Some(fleet.worker("m2").client_config("127.0.0.1")),
    )
    .await
    .unwrap();
    assert_eq!(
        optional.seen(),
        [None, Some(PeerIdentity::Machine("m2".into()))],
        "an anonymous caller has no identity; a certified one still has"
    );
}

#[tokio::test]
async fn clients_refuse_a_server_they_cannot_verify() {
    let fleet = Fleet::new();
    let server = TestServer::start(&fleet.controller(), ClientAuth::Required).await;
    let url = server.https_url();
    let worker = fleet.worker("m1");

    // The name is not in the server's certificate.
    let error = call(&url, Some(worker.client_config("controller.example.org")))
        .await
        .expect_err("wrong server name");
    assert!(error.contains("NotValidForName"), "{error}");

    // A client of another fleet does not trust this server.
    let other = tempfile::tempdir().unwrap();
    pki::init_dir(other.path(), &[]).unwrap();
    let stranger = TlsFiles::in_dir(other.path(), "admin").load().unwrap();
    let error = call(&url, Some(stranger.client_config("127.0.0.1")))
        .await
        .expect_err("a server from another CA");
    // Unique CA names make this UnknownIssuer; were the names equal, the
    // signature check would catch it (BadSignature).
    assert!(
        error.contains("UnknownIssuer") || error.contains("BadSignature"),
        "{error}"
    );
    assert!(server.seen().is_empty());

    call(&url, Some(worker.client_config("127.0.0.1")))
        .await
        .unwrap();
    assert_eq!(server.seen().len(), 1);
}
