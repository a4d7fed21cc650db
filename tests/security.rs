//! Mutual TLS between real processes: a controller with the fleet's CA, a
//! worker that enrolls with a bootstrap token, and operators with roles.
//!
//! Refused, each for its own reason: a plaintext client, a client with a
//! certificate from another CA, a client without a certificate, a machine
//! acting as another machine, a viewer aborting a wave, an expired token and
//! a revoked machine.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fleetmig_auth::Transport;
use fleetmig_auth::tls::TlsFiles;
use fleetmig_proto::v1::operator_service_client::OperatorServiceClient;
use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::worker_service_client::WorkerServiceClient;
use fleetmig_proto::v1::{
    Capability, CapabilityRole, CheckInRequest, CreateEnrollmentTokenRequest, EnrollRequest,
    GetCapacityRequest, GetManifestRequest, Inventory, ListMachinesRequest, MachineRequest,
    SignedCapability, StatusRequest, WaveRequest,
};
use fleetmig_tests::bin;
use tokio::process::{Child, Command};
use tonic::Code;
use tonic::transport::Channel;

/// Starts `program` with `args`, output in `log`, with plaintext *not* allowed.
fn spawn(program: &Path, args: &[&std::ffi::OsStr], log: &Path) -> Child {
    let file = std::fs::File::create(log).expect("log file");
    Command::new(program)
        .args(args)
        .env_remove("FLEETMIG_INSECURE_PLAINTEXT")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()))
}

async fn wait_for_file(path: &Path, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared; log:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tls(dir: &Path, name: &str) -> Transport {
    Transport::Tls(std::sync::Arc::new(
        TlsFiles::in_dir(dir, name).load().expect("load TLS files"),
    ))
}

async fn operator(transport: &Transport, url: &str) -> OperatorServiceClient<Channel> {
    let channel = transport
        .endpoint(url)
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("the TLS handshake itself succeeds for a fleet certificate");
    OperatorServiceClient::new(channel)
}

/// A call with `transport` that must not get through; returns the status.
async fn refused_status(transport: &Transport, url: &str) -> String {
    let endpoint = match transport.endpoint(url) {
        Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(5)),
        Err(err) => return format!("refused before connecting: {err}"),
    };
    match endpoint.connect().await {
        Err(err) => format!("handshake refused: {err:?}"),
        Ok(channel) => {
            let status = OperatorServiceClient::new(channel)
                .get_status(StatusRequest::default())
                .await
                .expect_err("this client must be refused");
            format!("{:?}: {}", status.code(), status.message())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_enrollment_roles_and_revocation() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = root.path().join("pki");
    fleetmig_auth::pki::init_dir(&pki, &[]).expect("certs init");
    let other_pki = root.path().join("other-pki");
    fleetmig_auth::pki::init_dir(&other_pki, &[]).expect("another fleet's certs");
    let file = |name: &str| pki.join(name).into_os_string();

    // The controller: TLS only, signing enrollments with the CA key.
    let ready = root.path().join("controller.ready");
    let controller_log = root.path().join("controller.log");
    let data = root.path().join("controller").into_os_string();
    let ready_arg = ready.clone().into_os_string();
    let _controller = spawn(
        &bin("fleetmig-controller"),
        &[
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            &data,
            "--ready-file".as_ref(),
            &ready_arg,
            "--checkin-interval-ms".as_ref(),
            "200".as_ref(),
            "--ca".as_ref(),
            &file("ca.pem"),
            "--cert".as_ref(),
            &file("controller.pem"),
            "--key".as_ref(),
            &file("controller.key"),
            "--ca-key".as_ref(),
            &file("ca.key"),
        ],
        &controller_log,
    );
    let addr = wait_for_file(&ready, &controller_log).await;
    let url = format!("https://{addr}");

    // Refused: plaintext, another fleet's CA, no client certificate.
    let plaintext = refused_status(&Transport::Plaintext, &format!("http://{addr}")).await;
    eprintln!("plaintext client: {plaintext}");
    let foreign = refused_status(&tls(&other_pki, "admin"), &url).await;
    eprintln!("client of another CA: {foreign}");
    let anonymous = Transport::Tls(std::sync::Arc::new(
        TlsFiles::ca_only(pki.join("ca.pem"))
            .load()
            .expect("CA only"),
    ));
    let no_cert = refused_status(&anonymous, &url).await;
    eprintln!("client without a certificate: {no_cert}");
    assert!(no_cert.starts_with("Unauthenticated"), "{no_cert}");

    // An admin creates a bootstrap token; a worker enrolls with it.
    let admin = tls(&pki, "admin");
    let mut admin_client = operator(&admin, &url).await;
    let token = admin_client
        .create_enrollment_token(CreateEnrollmentTokenRequest {
            uses: 1,
            ttl_secs: 3600,
        })
        .await
        .expect("admin creates a token")
        .into_inner()
        .token;
    let token_file = root.path().join("token");
    std::fs::write(&token_file, &token).expect("token file");
    let machine = root.path().join("pc-1");
    let generated = std::process::Command::new(bin("fleetmig-worker"))
        .args(["simulate", "gen-machine", "--seed", "5", "--users", "1"])
        .args(["--files", "5", "--hostname", "SEC-01"])
        .arg(&machine)
        .status()
        .expect("gen-machine");
    assert!(generated.success());
    let worker_log = root.path().join("worker.log");
    let machine_arg = machine.clone().into_os_string();
    let token_arg = token_file.clone().into_os_string();
    let url_arg: std::ffi::OsString = url.clone().into();
    let _worker = spawn(
        &bin("fleetmig-worker"),
        &[
            "agent".as_ref(),
            "--controller".as_ref(),
            &url_arg,
            "--machine-root".as_ref(),
            &machine_arg,
            "--ca".as_ref(),
            &file("ca.pem"),
            "--bootstrap-token-file".as_ref(),
            &token_arg,
        ],
        &worker_log,
    );
    let cert_dir: PathBuf = machine.join("_fleetmig").join("tls");
    wait_for_file(&cert_dir.join("machine.pem"), &worker_log).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let machine_id = loop {
        let machines = admin_client
            .list_machines(ListMachinesRequest::default())
            .await
            .expect("list machines")
            .into_inner()
            .machines;
        if let Some(m) = machines.first() {
            break m.machine_id.clone();
        }
        assert!(Instant::now() < deadline, "the worker never enrolled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The worker's certificate acts as its machine, and only as it.
    let machine_transport = Transport::Tls(std::sync::Arc::new(
        TlsFiles {
            ca: pki.join("ca.pem"),
            cert: Some(cert_dir.join("machine.pem")),
            key: Some(cert_dir.join("machine.key")),
        }
        .load()
        .expect("the machine's certificate"),
    ));
    let mut as_machine = WorkerServiceClient::new(
        machine_transport
            .endpoint(&url)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect as the machine"),
    );
    let check_in = |id: &str| CheckInRequest {
        machine_id: id.to_string(),
        session_id: "security-test".into(),
        ..CheckInRequest::default()
    };
    as_machine
        .check_in(check_in(&machine_id))
        .await
        .expect("a machine checks in as itself");
    let other = as_machine
        .check_in(check_in("another-machine"))
        .await
        .expect_err("a machine cannot act as another");
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    let operator_call = OperatorServiceClient::new(
        machine_transport
            .endpoint(&url)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    )
    .get_status(StatusRequest::default())
    .await
    .expect_err("a machine is no operator");
    assert_eq!(operator_call.code(), Code::PermissionDenied);

    // A storage node on mutual TLS: a machine's certificate cannot carry a
    // token issued to another machine (refused before its signature is even
    // checked), and a token it forged for itself does not verify.
    let node_ready = root.path().join("node.ready");
    let node_log = root.path().join("node.log");
    let node_data = root.path().join("storage").into_os_string();
    let node_ready_arg = node_ready.clone().into_os_string();
    let _node = spawn(
        &bin("fleetmig-storage-node"),
        &[
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--data-dir".as_ref(),
            &node_data,
            "--ready-file".as_ref(),
            &node_ready_arg,
            "--controller".as_ref(),
            &url_arg,
            "--ca".as_ref(),
            &file("ca.pem"),
            "--cert".as_ref(),
            &file("storage-node.pem"),
            "--key".as_ref(),
            &file("storage-node.key"),
        ],
        &node_log,
    );
    let node_addr = wait_for_file(&node_ready, &node_log).await;
    let node_url = format!("https://{node_addr}");
    let plaintext_node = match StorageNodeClient::connect(format!("http://{node_addr}")).await {
        Err(err) => format!("connect refused: {err}"),
        Ok(mut client) => {
            let status = client
                .get_capacity(GetCapacityRequest {})
                .await
                .expect_err("the node refuses plaintext");
            format!("{:?}: {}", status.code(), status.message())
        }
    };
    eprintln!("plaintext client of the storage node: {plaintext_node}");
    let mut node_as_machine = StorageNodeClient::new(
        machine_transport
            .endpoint(&node_url)
            .expect("endpoint")
            .connect()
            .await
            .expect("a fleet certificate connects to the node"),
    );
    let forged = |machine: &str| {
        Some(SignedCapability {
            claims: prost::Message::encode_to_vec(&Capability {
                machine_id: machine.to_string(),
                migration_id: "m1".into(),
                role: CapabilityRole::Restore.into(),
                expires_unix_ms: i64::MAX,
                ..Capability::default()
            }),
            signature: vec![0; 64],
        })
    };
    let stolen = node_as_machine
        .get_manifest(GetManifestRequest {
            token: forged("another-machine"),
        })
        .await
        .expect_err("another machine's token is refused");
    assert_eq!(stolen.code(), Code::PermissionDenied, "{stolen:?}");
    let own_forgery = node_as_machine
        .get_manifest(GetManifestRequest {
            token: forged(&machine_id),
        })
        .await
        .expect_err("a forged token is refused");
    assert_ne!(own_forgery.code(), Code::Ok);
    eprintln!("forged token of its own machine: {own_forgery:?}");

    // A viewer reads but cannot abort; the token was one-time.
    let mut viewer = operator(&tls(&pki, "viewer"), &url).await;
    viewer
        .get_status(StatusRequest::default())
        .await
        .expect("a viewer reads the status");
    let abort = viewer
        .abort_wave(WaveRequest {
            wave: "any".into(),
            ..WaveRequest::default()
        })
        .await
        .expect_err("a viewer cannot abort a wave");
    assert_eq!(abort.code(), Code::PermissionDenied, "{abort:?}");
    assert!(abort.message().contains("viewer"), "{abort:?}");

    // Tokens: used up, and expired.
    let enroll_with = |token: String| {
        let (csr_pem, _key) = fleetmig_auth::pki::generate_csr().expect("csr");
        EnrollRequest {
            protocol_version: fleetmig_proto::PROTOCOL_VERSION,
            machine_id: String::new(),
            inventory: Some(Inventory {
                hostname: "SEC-02".into(),
                ..Inventory::default()
            }),
            bootstrap_token: token,
            csr_pem,
        }
    };
    let mut anonymous_worker = WorkerServiceClient::new(
        anonymous
            .endpoint(&url)
            .expect("endpoint")
            .connect()
            .await
            .expect("an enrolling worker connects with the CA alone"),
    );
    let used = anonymous_worker
        .enroll(enroll_with(token.clone()))
        .await
        .expect_err("a one-time token works once");
    assert_eq!(used.code(), Code::Unauthenticated, "{used:?}");
    let short = admin_client
        .create_enrollment_token(CreateEnrollmentTokenRequest {
            uses: 5,
            ttl_secs: 1,
        })
        .await
        .expect("token")
        .into_inner()
        .token;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = anonymous_worker
        .enroll(enroll_with(short))
        .await
        .expect_err("an expired token is refused");
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");
    assert!(expired.message().contains("expired"), "{expired:?}");
    let pending = anonymous_worker
        .enroll(enroll_with(String::new()))
        .await
        .expect("without a token the enrollment waits")
        .into_inner();
    assert!(pending.pending_approval && pending.certificate_pem.is_empty());

    // Unauthenticated enrollment is rate limited per address.
    let mut limited = 0;
    for _ in 0..80 {
        match anonymous_worker.enroll(enroll_with("nope".into())).await {
            Err(status) if status.code() == Code::ResourceExhausted => limited += 1,
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
            Ok(response) => panic!("an unknown token enrolled: {response:?}"),
        }
    }
    eprintln!("80 quick enrollments with a bad token: {limited} rate limited");
    assert!(
        limited > 0,
        "80 enrollments in a burst were never rate limited"
    );

    // Revoked: refused at once.
    admin_client
        .revoke_machine(MachineRequest {
            machine_id: machine_id.clone(),
        })
        .await
        .expect("admin revokes the machine");
    let revoked = as_machine
        .check_in(check_in(&machine_id))
        .await
        .expect_err("a revoked machine is refused");
    assert_eq!(revoked.code(), Code::Unauthenticated, "{revoked:?}");
    assert!(revoked.message().contains("revoked"), "{revoked:?}");
    eprintln!("revoked machine: {}", revoked.message());
}
