//! The fleetmig storage node: the state migration point for replace migrations.
//!
//! The node stores sealed chunks by id and the sealed manifests of
//! migrations; it never sees plaintext, file names or keys. Every call on a
//! migration carries a capability token the controller signed; the node
//! verifies it offline with the controller's public key, which it receives
//! when it registers. See `docs/storage-node.md` for the on-disk layout, the
//! durability rules and the migration state machine.
//!
//! Modules: `node` (the logic, no tonic; `capture` and `restore` add the
//! calls of each side), `upload` (PutChunks batching), `replicate` (copying
//! a committed migration to another node), `inventory` (ListMigrations),
//! `fences` (authorising a call: token, migration, fence),
//! `chunks` (chunk files), `record` (migration records and their state
//! machine), `migrations` (the in-memory table), `sweeper` (expiry,
//! retention, garbage collection), `scrub` (offline integrity check),
//! `tokens` (the controllers' key), `service` (the tonic adapter),
//! `registration` (with every controller), `capacity`, `config`,
//! `data_dir`, `durable`, `layout`.

pub mod capacity;
pub mod capture;
pub mod chunks;
pub mod config;
pub mod data_dir;
pub mod durable;
pub mod error;
pub mod fences;
pub mod inventory;
pub mod layout;
pub mod migrations;
pub mod node;
pub mod record;
pub mod registration;
pub mod replicate;
pub mod restore;
pub mod scrub;
pub mod service;
pub mod sweeper;
pub mod tokens;
pub mod upload;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use crate::config::{Cli, Command, CommitStage, Config, ScrubArgs};
pub use crate::error::{Error, Result};
pub use crate::node::Node;

use crate::registration::NodeIdentity;
use crate::service::StorageNodeService;

/// HTTP/2 flow-control window of one stream: a whole chunk in flight.
pub(crate) const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window of one connection.
pub(crate) const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// Binds `config.listen` and runs the node until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            address: config.listen.to_string(),
            source,
        })?;
    serve(config, listener, shutdown).await
}

/// Runs the node on an already bound `listener` (tests bind port 0 first and
/// hand the listener in) until `shutdown` is cancelled or a critical task
/// fails.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let node = Node::open(&config).await?;
    serve_node(node, config, listener, shutdown).await
}

/// Like [`serve`], for a node the caller opened (tests keep a handle to
/// call [`Node::sweep`] or [`Node::gc`] directly).
pub async fn serve_node(
    node: Node,
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        address: config.listen.to_string(),
        source,
    })?;
    let node_id = node.node_id().to_owned();
    let endpoint = advertised_url(&config, local_addr, node.inner.settings.transport.scheme())?;
    tracing::info!(
        node_id = %node_id,
        address = %local_addr,
        data_dir = %config.data_dir.display(),
        site = %config.site,
        restore_only = config.restore_only,
        "storage node starting"
    );

    // Cancelled by the caller's shutdown or by the failure of a critical task.
    let node_shutdown = shutdown.child_token();

    let mut builder = tonic::transport::Server::builder();
    // Every client (workers, controllers, other nodes) presents a
    // certificate from the fleet's CA; capability tokens then say what each
    // may do to which migration.
    if let Some(tls) = node
        .inner
        .settings
        .transport
        .server_config(fleetmig_auth::tls::ClientAuth::Required)
        .map_err(|err| Error::Tls(err.to_string()))?
    {
        builder = builder
            .tls_config(tls)
            .map_err(|err| Error::Tls(err.to_string()))?;
    }
    let server = builder
        .max_concurrent_streams(fleetmig_proto::MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(StorageNodeService::new(node.clone()).into_server())
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            node_shutdown.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);
    let sweeper = tokio::spawn(sweeper::run(
        node.clone(),
        config.sweep_interval_ms,
        node_shutdown.clone(),
    ));

    // The listener is bound and being served: connections made from now on succeed.
    if let Some(ready_file) = &config.ready_file {
        let path = ready_file.clone();
        let contents = format!("{local_addr}\n");
        let written = tokio::task::spawn_blocking(move || {
            data_dir::write_atomically(&path, contents.as_bytes())
        })
        .await;
        let failure = match written {
            Ok(Ok(())) => None,
            Ok(Err(source)) => Some(Error::ReadyFile {
                path: ready_file.clone(),
                source,
            }),
            Err(err) => Some(Error::Task {
                task: "ready file",
                reason: err.to_string(),
            }),
        };
        if let Some(err) = failure {
            node_shutdown.cancel();
            let _ = server.await;
            return Err(err);
        }
    }

    let identity = NodeIdentity {
        node_id,
        endpoint,
        site: config.site.clone(),
    };
    let mut registration = tokio::spawn(registration::run_all(
        identity,
        config.controllers.clone(),
        node.clone(),
        node_shutdown.clone(),
    ));

    let outcome = tokio::select! {
        joined = &mut server => {
            // The server only stops on its own when it fails.
            node_shutdown.cancel();
            let _ = registration.await;
            server_outcome(joined, local_addr)
        }
        joined = &mut registration => {
            let outcome = match joined {
                Ok(result) => result,
                Err(err) => Err(Error::Task { task: "registration", reason: err.to_string() }),
            };
            if outcome.is_err() {
                node_shutdown.cancel();
            }
            node_shutdown.cancelled().await;
            tracing::info!(grace_ms = config.shutdown_grace_ms.as_millis() as u64, "draining");
            match tokio::time::timeout(config.shutdown_grace_ms, &mut server).await {
                Ok(joined) => outcome.and(server_outcome(joined, local_addr)),
                Err(_) => {
                    tracing::warn!("grace period over; dropping open requests");
                    server.abort();
                    outcome
                }
            }
        }
    };

    node_shutdown.cancel();
    let _ = sweeper.await;
    if let Some(ready_file) = &config.ready_file {
        // A stale address would mislead whoever waits for the next start.
        let _ = tokio::fs::remove_file(ready_file).await;
    }
    match &outcome {
        Ok(()) => tracing::info!("storage node stopped"),
        Err(err) => tracing::error!(error = %err, "storage node failed"),
    }
    outcome
}

fn server_outcome(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
    local_addr: SocketAddr,
) -> Result<()> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(Error::Server {
            address: local_addr.to_string(),
            reason: err.to_string(),
        }),
        Err(err) => Err(Error::Task {
            task: "grpc server",
            reason: err.to_string(),
        }),
    }
}

/// The URL the node tells the controller to reach it at.
fn advertised_url(config: &Config, local_addr: SocketAddr, scheme: &str) -> Result<String> {
    if let Some(url) = &config.advertise_url {
        tonic::transport::Endpoint::from_shared(url.clone()).map_err(|err| Error::InvalidUrl {
            url: url.clone(),
            reason: err.to_string(),
        })?;
        return Ok(url.clone());
    }
    let mut addr = local_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("{scheme}://{addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_the_bound_address_or_the_override() {
        let mut config = Config::new("/tmp/x".into(), "http://127.0.0.1:7400".into());
        let bound: SocketAddr = "0.0.0.0:7601".parse().expect("addr");
        assert_eq!(
            advertised_url(&config, bound, "http").expect("url"),
            "http://127.0.0.1:7601"
        );
        config.advertise_url = Some("http://storage.hq:7600".into());
        assert_eq!(
            advertised_url(&config, bound, "http").expect("url"),
            "http://storage.hq:7600"
        );
        config.advertise_url = Some("bad url".into());
        assert!(advertised_url(&config, bound, "http").is_err());
    }
}
