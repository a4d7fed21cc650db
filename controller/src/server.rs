//! Wiring: open the store, load the controller, serve gRPC, run the
//! scheduler (and, on etcd, the election, the feed and the contact relay),
//! and shut all of it down on one cancellation token.

use crate::cluster::{KnownLeader, LeaseLoss, Membership};
use crate::config::Config;
use crate::controller::{Controller, ControllerSettings};
use crate::enrollment::Trust;
use crate::error::{Error, Result};
use crate::escrow::MasterKey;
use crate::grpc::access::Access;
use crate::grpc::{
    operator::OperatorApi, peer::PeerApi, storage::StorageRegistryApi, worker::WorkerApi,
};
use crate::leader::{Election, ElectionConfig};
use crate::secrets::Secrets;
use crate::store::EmbeddedStore;
use crate::store::etcd::{EtcdConfig, EtcdStore};
use fleetmig_proto::v1::{
    controller_peer_server::ControllerPeerServer, operator_service_server::OperatorServiceServer,
    storage_registry_server::StorageRegistryServer, worker_service_server::WorkerServiceServer,
};
use fleetmig_proto::{MAX_CONCURRENT_STREAMS, MAX_CONTROL_MESSAGE_BYTES};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a controller re-reads the revoked certificates (the others'
/// revocations reach it at most this late; its own at once).
const REVOCATION_REFRESH: Duration = Duration::from_secs(2);

/// Writes `contents` to `path` atomically (temp file, fsync, rename).
pub fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Runs a controller until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&config.data_dir).map_err(|err| Error::StoreIo {
        path: config.data_dir.display().to_string(),
        message: err.to_string(),
    })?;
    let (transport, trust) = security(&config)?;
    let settings = |secrets: Secrets| ControllerSettings {
        transport: transport.clone(),
        trust: trust.clone(),
        token_ttl: Duration::from_secs(config.token_ttl_secs.max(60)),
        reservation_lease: Duration::from_secs(config.reservation_lease_secs.max(10)),
        secrets: Arc::new(secrets),
        checkin_interval: Duration::from_millis(config.checkin_interval_ms.max(50)),
        lease: Duration::from_millis(config.lease_ms.max(100)),
        heartbeat_interval: Duration::from_millis(config.heartbeat_ms.max(50)),
        ..ControllerSettings::default()
    };
    let listener = TcpListener::bind(config.listen).await.map_err(|err| {
        Error::InvalidArgument(format!("cannot listen on {}: {err}", config.listen))
    })?;
    let local = listener
        .local_addr()
        .map_err(|err| Error::InvalidArgument(format!("listener address: {err}")))?;
    let served = if config.store == "embedded" {
        let store = Arc::new(EmbeddedStore::open(&config.data_dir)?);
        let secrets = Secrets::load_or_create(&config.data_dir, master_key(&config)?)?;
        let controller = Controller::open(store, settings(secrets)).await?;
        serve(controller, listener, &config, shutdown).await
    } else {
        let etcd = EtcdStore::connect(EtcdConfig::parse(&config.store)?).await?;
        let secrets = Secrets::load_or_create_shared(&etcd, master_key(&config)?).await?;
        let me = KnownLeader {
            id: config
                .controller_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string()),
            url: config
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("{}://{local}", transport.scheme())),
        };
        if !crate::controller::is_valid_id(&me.id) {
            return Err(Error::InvalidArgument(format!(
                "--controller-id {:?}: use 1-64 letters, digits, '-', '_' or '.'",
                me.id
            )));
        }
        let election = Election::new(
            etcd.client().clone(),
            ElectionConfig {
                ttl: Duration::from_secs(config.election_ttl_secs.max(2)),
                ..ElectionConfig::for_store(&etcd, me.candidate())
            },
        );
        let membership = Membership::member(me.id.clone(), me.url.clone());
        let controller =
            Controller::open_member(Arc::new(etcd), settings(secrets), membership).await?;
        tracing::info!(controller_id = %me.id, url = %me.url, store = %config.store, "controller joins the fleet's controllers as a follower");
        let tasks = TaskTracker::new();
        tasks.spawn(controller.clone().run_feed(shutdown.clone()));
        tasks.spawn(
            controller
                .clone()
                .run_leader_watch(election.clone(), shutdown.clone()),
        );
        tasks.spawn(controller.clone().run_relay(shutdown.clone()));
        tasks.spawn(controller.clone().run_election(
            election,
            LeaseLoss::from_fault_flag(config.fault_ignore_lease_loss),
            shutdown.clone(),
        ));
        tasks.close();
        let served = serve(controller, listener, &config, shutdown).await;
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("cluster tasks did not stop within the grace period");
        }
        served
    };
    served.map(|_| {
        tracing::info!(%local, "controller stopped");
    })
}

/// The master key of `config`: `--master-key-file` (which must exist), else
/// `<data-dir>/master.key`, created on first start.
fn master_key(config: &Config) -> Result<Arc<MasterKey>> {
    let key = match &config.master_key_file {
        Some(path) => MasterKey::load(path, false)?,
        None if config.store != "embedded" => {
            return Err(Error::InvalidArgument(
                "--master-key-file is required with --store etcd://...: every controller of \
                 the cluster must read the same master key"
                    .into(),
            ));
        }
        None => MasterKey::load(&config.data_dir.join(crate::escrow::MASTER_KEY_FILE), true)?,
    };
    Ok(Arc::new(key))
}

/// The transport and trust of `config`: mutual TLS with the given files, or
/// plaintext when `--insecure-plaintext` says so; neither is an error.
pub fn security(config: &Config) -> Result<(fleetmig_auth::Transport, Arc<Trust>)> {
    if config.insecure_plaintext {
        tracing::warn!("--insecure-plaintext: no TLS, no authentication; local development only");
        return Ok((fleetmig_auth::Transport::Plaintext, Arc::default()));
    }
    let (Some(ca), Some(cert), Some(key)) = (&config.ca, &config.cert, &config.key) else {
        return Err(Error::InvalidArgument(
            "TLS is required: give --ca, --cert and --key (`fleetmig certs init` creates them), \
             or --insecure-plaintext for local development"
                .into(),
        ));
    };
    let files = fleetmig_auth::tls::TlsFiles {
        ca: ca.clone(),
        cert: Some(cert.clone()),
        key: Some(key.clone()),
    };
    let material = files
        .load()
        .map_err(|err| Error::InvalidArgument(format!("TLS: {err}")))?;
    let trust = match &config.ca_key {
        None => Trust::default(),
        Some(ca_key) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).map_err(|err| {
                    Error::InvalidArgument(format!("cannot read {}: {err}", path.display()))
                })
            };
            let authority =
                fleetmig_auth::pki::CertificateAuthority::from_pem(&read(ca)?, &read(ca_key)?)
                    .map_err(|err| Error::InvalidArgument(format!("--ca-key: {err}")))?;
            Trust::with_ca(authority)
        }
    };
    Ok((
        fleetmig_auth::Transport::Tls(Arc::new(material)),
        Arc::new(trust),
    ))
}

/// Serves `controller` on an already bound `listener`.
pub async fn serve(
    controller: Controller,
    listener: TcpListener,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<()> {
    let local = listener
        .local_addr()
        .map_err(|err| Error::InvalidArgument(format!("listener address: {err}")))?;
    let tasks = TaskTracker::new();
    tasks.spawn(controller.clone().run_scheduler(shutdown.clone()));
    let transport = controller.settings().transport.clone();
    let access = Access::new(transport.is_tls(), controller.settings().trust.clone());
    if transport.is_tls() {
        tasks.spawn(
            controller
                .clone()
                .run_revocation_refresh(REVOCATION_REFRESH, shutdown.clone()),
        );
    }

    let worker = WorkerServiceServer::new(WorkerApi {
        controller: controller.clone(),
        access: access.clone(),
    })
    .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES);
    let operator = OperatorServiceServer::new(OperatorApi {
        controller: controller.clone(),
        access: access.clone(),
    })
    .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES);
    let peer = ControllerPeerServer::new(PeerApi {
        controller: controller.clone(),
        access: access.clone(),
    })
    .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES);
    let storage = StorageRegistryServer::new(StorageRegistryApi {
        controller: controller.clone(),
        access: access.clone(),
        report_interval_ms: config.node_report_interval_ms,
    })
    .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES);

    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let server_shutdown = shutdown.clone();
    let mut builder = tonic::transport::Server::builder();
    // Client certificates are optional at the handshake only so that a new
    // worker can enroll; every handler but `Enroll` requires one (`Access`).
    if let Some(tls) = transport
        .server_config(fleetmig_auth::tls::ClientAuth::Optional)
        .map_err(|err| Error::InvalidArgument(format!("TLS: {err}")))?
    {
        builder = builder
            .tls_config(tls)
            .map_err(|err| Error::InvalidArgument(format!("TLS: {err}")))?;
    }
    let server = builder
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .add_service(worker)
        .add_service(operator)
        .add_service(storage)
        .add_service(peer)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            server_shutdown.cancelled().await;
        });
    if let Some(path) = &config.ready_file {
        write_atomically(path, &format!("{local}\n")).map_err(|err| {
            Error::InvalidArgument(format!("cannot write ready file {}: {err}", path.display()))
        })?;
    }
    tracing::info!(%local, epoch = controller.epoch(), "controller serving");
    let result = server.await;
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!("background tasks did not stop within the grace period");
    }
    result.map_err(|err| Error::StoreUnavailable(format!("grpc server failed: {err}")))
}
