//! The fleetmig storage node: the state migration point for replace migrations.
//!
//! For now the node keeps a stable id in its data directory, serves
//! `StorageNode::GetCapacity` and keeps itself registered with the
//! controller's `StorageRegistry`, reporting capacity at the interval the
//! controller asks for. The content-addressed chunk store comes later.

pub mod capacity;
pub mod config;
pub mod data_dir;
pub mod error;
pub mod registration;
pub mod service;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
pub use crate::error::{Error, Result};

use crate::capacity::CapacityProbe;
use crate::registration::NodeIdentity;
use crate::service::StorageNodeService;

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
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        address: config.listen.to_string(),
        source,
    })?;
    let data_dir = config.data_dir.clone();
    let node_id = tokio::task::spawn_blocking(move || data_dir::prepare(&data_dir))
        .await
        .map_err(|err| Error::Task {
            task: "data directory",
            reason: err.to_string(),
        })??
        .to_string();
    let endpoint = advertised_url(&config, local_addr)?;
    let probe = CapacityProbe::new(config.data_dir.clone(), config.min_free_bytes);
    tracing::info!(
        node_id = %node_id,
        address = %local_addr,
        data_dir = %config.data_dir.display(),
        site = %config.site,
        "storage node starting"
    );

    // Cancelled by the caller's shutdown or by the failure of a critical task.
    let node_shutdown = shutdown.child_token();

    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(fleetmig_proto::MAX_CONCURRENT_STREAMS)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(StorageNodeService::new(node_id.clone(), probe.clone()).into_server())
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            node_shutdown.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);

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
    let mut registration = tokio::spawn(registration::run(
        identity,
        config.controller.clone(),
        probe,
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
fn advertised_url(config: &Config, local_addr: SocketAddr) -> Result<String> {
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
    Ok(format!("http://{addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_the_bound_address_or_the_override() {
        let mut config = Config::new("/tmp/x".into(), "http://127.0.0.1:7400".into());
        let bound: SocketAddr = "0.0.0.0:7601".parse().expect("addr");
        assert_eq!(
            advertised_url(&config, bound).expect("url"),
            "http://127.0.0.1:7601"
        );
        config.advertise_url = Some("http://storage.hq:7600".into());
        assert_eq!(
            advertised_url(&config, bound).expect("url"),
            "http://storage.hq:7600"
        );
        config.advertise_url = Some("bad url".into());
        assert!(advertised_url(&config, bound).is_err());
    }
}
