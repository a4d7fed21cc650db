//! The node registers with a (fake) controller, reports capacity, answers
//! `GetCapacity`, re-registers when the controller forgets it, and keeps the
//! token key the controller hands out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::storage_registry_server::{StorageRegistry, StorageRegistryServer};
use fleetmig_proto::v1::{
    Capability, CapabilityRole, CapacityAck, CapacityReport, GetCapacityRequest,
    MissingChunksRequest, RegisterNodeRequest, RegisterNodeResponse,
};
use fleetmig_storage_node::{Config, Error};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// What the fake controller saw.
#[derive(Debug)]
enum Seen {
    Register(RegisterNodeRequest),
    Report(CapacityReport),
}

/// Scripted failures of the fake controller.
#[derive(Debug, Default)]
struct Script {
    /// Registrations to answer with `Unavailable` before accepting one.
    unavailable_registrations: u32,
    /// Registrations to answer with `InvalidArgument`.
    refuse_registrations: bool,
    /// Capacity reports to answer with `NotFound`.
    forget_reports: u32,
    /// The token key handed out with registrations.
    token_public_key: Vec<u8>,
}

#[derive(Clone)]
struct FakeRegistry {
    script: Arc<Mutex<Script>>,
    seen: mpsc::UnboundedSender<Seen>,
}

#[tonic::async_trait]
impl StorageRegistry for FakeRegistry {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        let _ = self.seen.send(Seen::Register(request.into_inner()));
        let mut script = self.script.lock().expect("script lock");
        if script.refuse_registrations {
            return Err(Status::invalid_argument("site is not configured"));
        }
        if script.unavailable_registrations > 0 {
            script.unavailable_registrations -= 1;
            return Err(Status::unavailable("controller is starting"));
        }
        Ok(Response::new(RegisterNodeResponse {
            report_interval_ms: 50,
            token_public_key: script.token_public_key.clone(),
        }))
    }

    async fn report_capacity(
        &self,
        request: Request<CapacityReport>,
    ) -> Result<Response<CapacityAck>, Status> {
        let _ = self.seen.send(Seen::Report(request.into_inner()));
        let mut script = self.script.lock().expect("script lock");
        if script.forget_reports > 0 {
            script.forget_reports -= 1;
            return Err(Status::not_found("unknown storage node"));
        }
        Ok(Response::new(CapacityAck {}))
    }
}

/// A fake controller and a storage node pointed at it.
struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    seen: mpsc::UnboundedReceiver<Seen>,
    controller_shutdown: CancellationToken,
    node_shutdown: CancellationToken,
    node: tokio::task::JoinHandle<fleetmig_storage_node::Result<()>>,
    node_addr: std::net::SocketAddr,
}

impl Fixture {
    async fn start(script: Script) -> Self {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let registry = FakeRegistry {
            script: Arc::new(Mutex::new(script)),
            seen: seen_tx,
        };
        let controller_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind controller");
        let controller_addr = controller_listener.local_addr().expect("controller addr");
        let controller_shutdown = CancellationToken::new();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(StorageRegistryServer::new(registry))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(controller_listener),
                    controller_shutdown.clone().cancelled_owned(),
                ),
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(
            dir.path().join("storage"),
            format!("http://{controller_addr}"),
        );
        config.site = "hq".to_owned();
        config.ready_file = Some(dir.path().join("storage.addr"));
        config.shutdown_grace_ms = Duration::from_secs(2);

        let node_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
        let node_addr = node_listener.local_addr().expect("node addr");
        let node_shutdown = CancellationToken::new();
        let node = tokio::spawn(fleetmig_storage_node::serve(
            config.clone(),
            node_listener,
            node_shutdown.clone(),
        ));
        Self {
            _dir: dir,
            config,
            seen,
            controller_shutdown,
            node_shutdown,
            node,
            node_addr,
        }
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the fake controller heard from the node in time")
            .expect("fake controller still running")
    }

    async fn next_registration(&mut self) -> RegisterNodeRequest {
        match self.next_seen().await {
            Seen::Register(request) => request,
            Seen::Report(report) => panic!("expected a registration, got report {report:?}"),
        }
    }

    async fn next_report(&mut self) -> CapacityReport {
        match self.next_seen().await {
            Seen::Report(report) => report,
            Seen::Register(request) => panic!("expected a report, got registration {request:?}"),
        }
    }

    fn node_id(&self) -> String {
        std::fs::read_to_string(self.config.data_dir.join("node-id"))
            .expect("node-id written")
            .trim()
            .to_owned()
    }

    async fn stop_node(&mut self) -> fleetmig_storage_node::Result<()> {
        self.node_shutdown.cancel();
        tokio::time::timeout(WAIT, &mut self.node)
            .await
            .expect("node stops in time")
            .expect("node task did not panic")
    }

    /// Starts a new node process-equivalent on the same data directory.
    async fn restart_node(&mut self) {
        self.stop_node().await.expect("clean shutdown");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
        self.node_addr = listener.local_addr().expect("node addr");
        self.node_shutdown = CancellationToken::new();
        self.node = tokio::spawn(fleetmig_storage_node::serve(
            self.config.clone(),
            listener,
            self.node_shutdown.clone(),
        ));
    }

    async fn stop(mut self) -> fleetmig_storage_node::Result<()> {
        let result = self.stop_node().await;
        self.controller_shutdown.cancel();
        result
    }
}

async fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn registers_after_retries_then_reports_capacity() {
    let mut fixture = Fixture::start(Script {
        unavailable_registrations: 2,
        ..Script::default()
    })
    .await;
    let ready_file = fixture.config.ready_file.clone().expect("ready file set");
    let ready = wait_for_file(&ready_file).await;
    assert_eq!(ready, format!("{}\n", fixture.node_addr));

    for attempt in 0..3 {
        let request = fixture.next_registration().await;
        assert_eq!(request.site, "hq", "attempt {attempt}");
        assert_eq!(request.endpoint, format!("http://{}", fixture.node_addr));
        assert_eq!(request.node_id, fixture.node_id());
        let capacity = request.capacity.expect("registration carries capacity");
        assert!(capacity.total_bytes > 0);
        assert!(capacity.accepting_captures);
    }
    for _ in 0..2 {
        let report = fixture.next_report().await;
        assert_eq!(report.node_id, fixture.node_id());
        assert!(report.free_bytes <= report.total_bytes);
    }

    let mut client = StorageNodeClient::connect(format!("http://{}", fixture.node_addr))
        .await
        .expect("connect to node");
    let capacity = client
        .get_capacity(GetCapacityRequest {})
        .await
        .expect("GetCapacity")
        .into_inner();
    assert_eq!(capacity.node_id, fixture.node_id());
    assert!(capacity.total_bytes > 0);
    assert!(capacity.accepting_captures);
    assert_eq!(capacity.active_sessions, 0);

    fixture.stop().await.expect("clean shutdown");
    assert!(!ready_file.exists(), "ready file removed on shutdown");
}

#[tokio::test]
async fn registers_again_when_the_controller_forgets_the_node() {
    let mut fixture = Fixture::start(Script {
        forget_reports: 1,
        ..Script::default()
    })
    .await;
    let first = fixture.next_registration().await;
    let forgotten = fixture.next_report().await;
    assert_eq!(forgotten.node_id, first.node_id);
    let second = fixture.next_registration().await;
    assert_eq!(
        second.node_id, first.node_id,
        "same node id after re-registering"
    );
    fixture.next_report().await;
    fixture.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_refused_registration_stops_the_node() {
    let mut fixture = Fixture::start(Script {
        refuse_registrations: true,
        ..Script::default()
    })
    .await;
    fixture.next_registration().await;
    let result = tokio::time::timeout(WAIT, &mut fixture.node)
        .await
        .expect("node stops by itself")
        .expect("node task did not panic");
    let err = result.expect_err("registration refused");
    assert!(matches!(err, Error::RegistrationRefused { .. }), "{err}");
    assert!(err.to_string().contains("site is not configured"), "{err}");
}

#[tokio::test]
async fn keeps_its_node_id_across_restarts() {
    let mut fixture = Fixture::start(Script::default()).await;
    let first = fixture.next_registration().await;
    fixture.restart_node().await;
    let second = loop {
        // Reports of the first run may still be in flight.
        if let Seen::Register(request) = fixture.next_seen().await {
            break request;
        }
    };
    assert_eq!(second.node_id, first.node_id);
    assert_eq!(second.endpoint, format!("http://{}", fixture.node_addr));
    fixture.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn keeps_the_controller_token_key_and_accepts_its_tokens() {
    let signer = fleetmig_auth::TokenSigner::from_seed([77; 32]);
    let mut fixture = Fixture::start(Script {
        // The node has no key until it registers: calls are unavailable.
        unavailable_registrations: 1,
        token_public_key: signer.public_key().to_vec(),
        ..Script::default()
    })
    .await;
    let first = fixture.next_registration().await;
    let node_id = first.node_id;
    let token = |role: CapabilityRole| {
        let now = fleetmig_storage_node::node::now_unix_ms();
        signer.sign(&Capability {
            machine_id: "pc-1".into(),
            migration_id: "m1".into(),
            node_id: node_id.clone(),
            role: role as i32,
            issued_unix_ms: now,
            expires_unix_ms: now + 60_000,
            fence: 1,
        })
    };
    let mut client = StorageNodeClient::connect(format!("http://{}", fixture.node_addr))
        .await
        .expect("connect to node");
    let key_file = fixture.config.data_dir.join("controller-token.pub");
    let text = wait_for_file(&key_file).await;
    assert_eq!(text.trim(), hex::encode(signer.public_key()));
    // The key file is written just before the key is put to use: retry while
    // the node still answers UNAVAILABLE (no key yet).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let missing = loop {
        let answer = client
            .missing_chunks(MissingChunksRequest {
                token: Some(token(CapabilityRole::Capture)),
                chunk_ids: vec![1; 32],
            })
            .await;
        match answer {
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => {
                break other
                    .expect("tokens verify with the controller's key")
                    .into_inner();
            }
        }
    };
    assert_eq!(missing.missing, vec![0]);

    // A restarted node knows the key before it reaches the controller.
    fixture.restart_node().await;
    let mut client = StorageNodeClient::connect(format!("http://{}", fixture.node_addr))
        .await
        .expect("connect to node");
    let capacity = client
        .get_capacity(GetCapacityRequest {})
        .await
        .expect("GetCapacity")
        .into_inner();
    assert_eq!(capacity.migrations, 1);
    client
        .missing_chunks(MissingChunksRequest {
            token: Some(token(CapabilityRole::Capture)),
            chunk_ids: vec![1; 32],
        })
        .await
        .expect("the stored key is loaded at startup");
    fixture.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn without_a_key_migration_calls_are_unavailable() {
    let fixture = Fixture::start(Script {
        refuse_registrations: false,
        unavailable_registrations: u32::MAX,
        ..Script::default()
    })
    .await;
    let mut client = StorageNodeClient::connect(format!("http://{}", fixture.node_addr))
        .await
        .expect("connect to node");
    let status = client
        .missing_chunks(MissingChunksRequest {
            token: None,
            chunk_ids: vec![1; 32],
        })
        .await
        .expect_err("no key yet");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status
            .message()
            .contains("node has no controller public key yet"),
        "{status:?}"
    );
    fixture.stop().await.expect("clean shutdown");
}

/// A fake controller on its own port.
struct FakeController {
    url: String,
    seen: mpsc::UnboundedReceiver<Seen>,
    shutdown: CancellationToken,
}

impl FakeController {
    async fn start(script: Script) -> Self {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let registry = FakeRegistry {
            script: Arc::new(Mutex::new(script)),
            seen: seen_tx,
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind controller");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(StorageRegistryServer::new(registry))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.clone().cancelled_owned(),
                ),
        );
        Self {
            url,
            seen,
            shutdown,
        }
    }

    /// Waits for the next capacity report, within `limit`, skipping anything else.
    async fn next_report(&mut self, limit: Duration) {
        loop {
            let seen = tokio::time::timeout(limit, self.seen.recv())
                .await
                .expect("the controller got a report in time")
                .expect("controller running");
            if let Seen::Report(_) = seen {
                return;
            }
        }
    }

    /// Waits for a registration and then a capacity report, within `limit`.
    async fn registration_and_report(&mut self, limit: Duration) -> RegisterNodeRequest {
        let registration = loop {
            let seen = tokio::time::timeout(limit, self.seen.recv())
                .await
                .expect("the controller heard from the node in time")
                .expect("controller running");
            if let Seen::Register(request) = seen {
                break request;
            }
        };
        loop {
            let seen = tokio::time::timeout(limit, self.seen.recv())
                .await
                .expect("the controller got a report in time")
                .expect("controller running");
            if let Seen::Report(_) = seen {
                return registration;
            }
        }
    }
}

/// Starts a node (in-process) registering with `controllers`.
async fn start_node(
    controllers: &[&str],
) -> (
    tempfile::TempDir,
    Config,
    CancellationToken,
    tokio::task::JoinHandle<fleetmig_storage_node::Result<()>>,
    std::net::SocketAddr,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(dir.path().join("storage"), controllers.join(","));
    config.shutdown_grace_ms = Duration::from_secs(2);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind node");
    let addr = listener.local_addr().expect("node addr");
    let shutdown = CancellationToken::new();
    let node = tokio::spawn(fleetmig_storage_node::serve(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    (dir, config, shutdown, node, addr)
}

#[tokio::test]
async fn registers_with_every_controller_and_a_dead_one_delays_none() {
    let mut first = FakeController::start(Script::default()).await;
    let mut second = FakeController::start(Script {
        // Starting up for a while: the node keeps retrying this one alone.
        unavailable_registrations: 3,
        ..Script::default()
    })
    .await;
    // Accepts connections and never answers.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let black_hole_url = format!("http://{}", black_hole.local_addr().expect("addr"));
    let (_dir, _config, shutdown, node, _addr) =
        start_node(&[&first.url, &black_hole_url, &second.url, &first.url]).await;

    let quick = Duration::from_secs(3);
    let from_first = first.registration_and_report(quick).await;
    let from_second = second.registration_and_report(WAIT).await;
    assert_eq!(from_first.node_id, from_second.node_id);
    assert_eq!(from_first.endpoint, from_second.endpoint);
    // Reports keep going to both, independently.
    first.next_report(quick).await;
    first.next_report(quick).await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, node)
        .await
        .expect("node stops in time")
        .expect("no panic")
        .expect("clean shutdown");
    first.shutdown.cancel();
    second.shutdown.cancel();
    drop(black_hole);
}

#[tokio::test]
async fn the_first_token_key_stays_when_another_controller_differs() {
    let first_signer = fleetmig_auth::TokenSigner::from_seed([81; 32]);
    let other_signer = fleetmig_auth::TokenSigner::from_seed([82; 32]);
    let mut first = FakeController::start(Script {
        token_public_key: first_signer.public_key().to_vec(),
        ..Script::default()
    })
    .await;
    let mut other = FakeController::start(Script {
        // Answers after the first controller did.
        unavailable_registrations: 2,
        token_public_key: other_signer.public_key().to_vec(),
        ..Script::default()
    })
    .await;
    let (_dir, config, shutdown, node, addr) = start_node(&[&first.url, &other.url]).await;
    let registered = first.registration_and_report(WAIT).await;
    other.registration_and_report(WAIT).await;

    let key_file = config.data_dir.join("controller-token.pub");
    let text = wait_for_file(&key_file).await;
    assert_eq!(text.trim(), hex::encode(first_signer.public_key()));
    let token = |signer: &fleetmig_auth::TokenSigner| {
        let now = fleetmig_storage_node::node::now_unix_ms();
        signer.sign(&Capability {
            machine_id: "pc-1".into(),
            migration_id: "m1".into(),
            node_id: registered.node_id.clone(),
            role: CapabilityRole::Capture as i32,
            issued_unix_ms: now,
            expires_unix_ms: now + 60_000,
            fence: 1,
        })
    };
    let mut client = StorageNodeClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to node");
    let status = client
        .missing_chunks(MissingChunksRequest {
            token: Some(token(&other_signer)),
            chunk_ids: vec![1; 32],
        })
        .await
        .expect_err("the other key is not in use");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    client
        .missing_chunks(MissingChunksRequest {
            token: Some(token(&first_signer)),
            chunk_ids: vec![1; 32],
        })
        .await
        .expect("the first key stays in use");
    shutdown.cancel();
    tokio::time::timeout(WAIT, node)
        .await
        .expect("node stops in time")
        .expect("no panic")
        .expect("clean shutdown");
    first.shutdown.cancel();
    other.shutdown.cancel();
}
