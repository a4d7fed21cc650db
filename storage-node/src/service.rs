//! The tonic adapter: `fleetmig.v1.StorageNode` over [`Node`], and the one
//! place wire messages are converted to and from the node's types.

use std::pin::Pin;

use fleetmig_proto::v1::storage_node_server::{StorageNode, StorageNodeServer};
use fleetmig_proto::v1::{
    CapacityReport, ChunkData, CommitRequest, CommitResponse, GetCapacityRequest, GetChunksRequest,
    GetManifestRequest, GetManifestResponse, ListMigrationsRequest, ListMigrationsResponse,
    MigrationEntry, MissingChunksRequest, MissingChunksResponse, PutChunkRequest,
    PutChunksResponse, ReleaseRequest, ReleaseResponse, ReplicateRequest, ReplicateResponse,
    ReserveRequest, ReserveResponse,
};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::capacity::Capacity;
use crate::capture::CommitInput;
use crate::error::Error;
use crate::node::Node;
use crate::upload::ChunkUpload;

/// Wire form of a capacity measurement.
pub fn capacity_report(node_id: &str, capacity: Capacity) -> CapacityReport {
    CapacityReport {
        node_id: node_id.to_owned(),
        total_bytes: capacity.total_bytes,
        free_bytes: capacity.free_bytes,
        reserved_bytes: capacity.reserved_bytes,
        active_sessions: capacity.active_sessions,
        accepting_captures: capacity.accepting_captures,
        stored_bytes: capacity.stored_bytes,
        migrations: capacity.migrations,
        available_bytes: capacity.available_bytes,
    }
}

/// Serves `StorageNode` requests.
#[derive(Debug, Clone)]
pub struct StorageNodeService {
    node: Node,
}

impl StorageNodeService {
    /// A service answering for `node`.
    pub fn new(node: Node) -> Self {
        Self { node }
    }

    /// The tonic server for this service, with fleetmig's message-size limits.
    pub fn into_server(self) -> StorageNodeServer<Self> {
        StorageNodeServer::new(self)
            .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
            .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
    }
}

/// Logs a refused call (at debug: refusals are the caller's business) and
/// converts it.
/// The machine a TLS peer's certificate names, if it is a machine (workers);
/// `None` for controllers, other nodes and plaintext peers.
fn peer_machine<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    match fleetmig_auth::identity::peer_cert(request) {
        None => Ok(None),
        Some(Err(err)) => Err(Status::unauthenticated(format!(
            "client certificate: {err}"
        ))),
        Some(Ok(cert)) => match cert.identity {
            fleetmig_auth::PeerIdentity::Machine(id) => Ok(Some(id)),
            _ => Ok(None),
        },
    }
}

/// A worker may present only tokens issued to its own machine: a token
/// stolen from another machine is refused (its signature is checked later,
/// by the node).
fn bind_token(
    machine: Option<&str>,
    token: Option<&fleetmig_proto::v1::SignedCapability>,
) -> Result<(), Status> {
    let (Some(machine), Some(token)) = (machine, token) else {
        return Ok(());
    };
    let claims =
        <fleetmig_proto::v1::Capability as prost::Message>::decode(token.claims.as_slice())
            .map_err(|err| Status::unauthenticated(format!("malformed capability token: {err}")))?;
    if claims.machine_id != machine {
        return Err(Status::permission_denied(format!(
            "the certificate of machine {machine} cannot use a token issued to machine {}",
            claims.machine_id
        )));
    }
    Ok(())
}

fn refused(call: &'static str, err: Error) -> Status {
    tracing::debug!(call, error = %err, "refused");
    Status::from(err)
}

/// Stream of chunks answering GetChunks.
type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChunkData, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl StorageNode for StorageNodeService {
    async fn get_capacity(
        &self,
        _request: Request<GetCapacityRequest>,
    ) -> Result<Response<CapacityReport>, Status> {
        let capacity = self.node.capacity().await?;
        Ok(Response::new(capacity_report(
            self.node.node_id(),
            capacity,
        )))
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let reservation = self
            .node
            .reserve(request.token.as_ref(), request.bytes, request.lease_ms)
            .await
            .map_err(|err| refused("reserve", err))?;
        Ok(Response::new(ReserveResponse {
            reserved_bytes: reservation.reserved_bytes,
            expires_unix_ms: reservation.expires_unix_ms,
        }))
    }

    async fn missing_chunks(
        &self,
        request: Request<MissingChunksRequest>,
    ) -> Result<Response<MissingChunksResponse>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let missing = self
            .node
            .missing_chunks(request.token.as_ref(), &request.chunk_ids)
            .await
            .map_err(|err| refused("missing_chunks", err))?;
        Ok(Response::new(MissingChunksResponse { missing }))
    }

    async fn put_chunks(
        &self,
        request: Request<Streaming<PutChunkRequest>>,
    ) -> Result<Response<PutChunksResponse>, Status> {
        let machine = peer_machine(&request)?;
        let uploads = request.into_inner().map(move |message| {
            message
                .map_err(|status| Error::UploadStream {
                    code: status.code(),
                    message: status.message().to_owned(),
                })
                .and_then(|m| {
                    bind_token(machine.as_deref(), m.token.as_ref()).map_err(|status| {
                        Error::UploadStream {
                            code: status.code(),
                            message: status.message().to_owned(),
                        }
                    })?;
                    Ok(m)
                })
                .map(|m| ChunkUpload {
                    token: m.token,
                    chunk_id: m.chunk_id,
                    checksum: m.checksum,
                    data: m.data,
                })
        });
        let summary = self
            .node
            .put_chunks(uploads)
            .await
            .map_err(|err| refused("put_chunks", err))?;
        Ok(Response::new(PutChunksResponse {
            stored: summary.stored,
            already_present: summary.already_present,
            bytes_written: summary.bytes_written,
        }))
    }

    async fn commit(
        &self,
        request: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let input = CommitInput {
            manifest: request.manifest,
            chunk_ids: request.chunk_ids,
            manifest_digest: request.manifest_digest,
            logical_bytes: request.logical_bytes,
        };
        let summary = self
            .node
            .commit(request.token.as_ref(), input)
            .await
            .map_err(|err| refused("commit", err))?;
        Ok(Response::new(CommitResponse {
            referenced_bytes: summary.referenced_bytes,
            chunks: u32::try_from(summary.chunks).unwrap_or(u32::MAX),
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let (manifest, manifest_digest) = self
            .node
            .manifest(request.token.as_ref())
            .await
            .map_err(|err| refused("get_manifest", err))?;
        Ok(Response::new(GetManifestResponse {
            manifest,
            manifest_digest,
        }))
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        request: Request<GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let chunks = self
            .node
            .chunks(request.token.as_ref(), &request.chunk_ids)
            .await
            .map_err(|err| refused("get_chunks", err))?;
        let stream = ReceiverStream::new(chunks).map(|item| {
            item.map(|chunk| ChunkData {
                chunk_id: chunk.id.0.to_vec(),
                data: chunk.sealed,
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let summary = self
            .node
            .replicate(
                request.token.as_ref(),
                &request.target_endpoint,
                request.target_token.as_ref(),
            )
            .await
            .map_err(|err| {
                // The caller retries; the log says why a copy is behind.
                tracing::warn!(target_endpoint = %request.target_endpoint, error = %err, "replicate failed");
                Status::from(err)
            })?;
        Ok(Response::new(ReplicateResponse {
            chunks: u32::try_from(summary.chunks).unwrap_or(u32::MAX),
            chunks_sent: u32::try_from(summary.chunks_sent).unwrap_or(u32::MAX),
            bytes_sent: summary.bytes_sent,
            already_committed: summary.already_committed,
        }))
    }

    async fn list_migrations(
        &self,
        request: Request<ListMigrationsRequest>,
    ) -> Result<Response<ListMigrationsResponse>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let page = self
            .node
            .list_migrations(request.token.as_ref(), &request.start_after, request.limit)
            .await
            .map_err(|err| refused("list_migrations", err))?;
        Ok(Response::new(ListMigrationsResponse {
            migrations: page
                .migrations
                .into_iter()
                .map(|listed| MigrationEntry {
                    migration_id: listed.migration_id,
                    state: listed.state.name().to_owned(),
                    manifest_digest: listed.manifest_digest,
                })
                .collect(),
            more: page.more,
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let machine = peer_machine(&request)?;
        let request = request.into_inner();
        bind_token(machine.as_deref(), request.token.as_ref())?;
        let released = self
            .node
            .release(request.token.as_ref())
            .await
            .map_err(|err| refused("release", err))?;
        Ok(Response::new(ReleaseResponse {
            state: released.state.name().to_owned(),
            delete_after_unix_ms: released.delete_after_unix_ms,
        }))
    }
}
