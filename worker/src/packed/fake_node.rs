//! TESTS ONLY: an in-memory storage node served over real gRPC on loopback, with injectable
//! failures, to exercise [`super::NodeStore`] (uploads, resumes, fetches, status mapping)
//! without the storage-node crate.
//!
//! `Replicate` copies in-process: fake nodes served in this process find each other by URL.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use fleetmig_proto::v1::{self, storage_node_server::StorageNode};
use tonic::{Request, Response, Status, Streaming};

/// What the fake node holds and how it misbehaves.
#[derive(Debug, Default)]
pub struct FakeState {
    /// Sealed chunks by id.
    pub chunks: HashMap<[u8; 32], Bytes>,
    /// The committed manifest and its digest.
    pub manifest: Option<(Vec<u8>, String)>,
    /// Chunks received by `PutChunks` (already held ones included).
    pub received: u64,
    /// Break the next `PutChunks` stream (Unavailable) after storing this many chunks of it.
    pub break_stream_after: Option<usize>,
    /// Chunks served as DATA_LOSS.
    pub lost: HashSet<[u8; 32]>,
    /// Answer `MissingChunks` with RESOURCE_EXHAUSTED.
    pub full: bool,
    /// `Release` calls.
    pub releases: u32,
    /// Every call answers UNAVAILABLE (the node is down).
    pub down: bool,
    /// Go down after serving this many chunks in all (`chunks_served` counts them).
    pub down_after_chunks: Option<u64>,
    /// Chunks served by `GetChunks`.
    pub chunks_served: u64,
    /// `Replicate` calls that copied the migration (or found it already there).
    pub replications: u32,
    /// Answer this many more `Replicate` calls with UNAVAILABLE.
    pub replicate_failures: u32,
}

/// The fake node; clones share the state.
#[derive(Debug, Clone, Default)]
pub struct FakeNode {
    /// Shared state, inspected and rigged by tests.
    pub state: Arc<Mutex<FakeState>>,
}

/// The fake nodes served in this process, by URL (for `Replicate`).
static SERVED: LazyLock<Mutex<HashMap<String, FakeNode>>> = LazyLock::new(Mutex::default);

impl FakeNode {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// UNAVAILABLE when the node is down.
    fn up(&self) -> Result<(), Status> {
        if self.lock().down {
            return Err(Status::unavailable("the node is down (injected)"));
        }
        Ok(())
    }

    /// Serves on a loopback port of `runtime`; returns the URL.
    pub fn serve(&self, runtime: &tokio::runtime::Runtime) -> String {
        runtime.block_on(self.serve_here())
    }

    /// Serves on a loopback port of the current runtime; returns the URL.
    pub async fn serve_here(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let service = v1::storage_node_server::StorageNodeServer::new(self.clone())
            .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
            .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES);
        tokio::spawn(
            tonic::transport::Server::builder()
                .initial_stream_window_size(4 * 1024 * 1024)
                .initial_connection_window_size(16 * 1024 * 1024)
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let url = format!("http://{address}");
        SERVED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.clone(), self.clone());
        url
    }
}

fn ids(bytes: &[u8]) -> Result<Vec<[u8; 32]>, Status> {
    if !bytes.len().is_multiple_of(32) {
        return Err(Status::invalid_argument(
            "chunk ids are not a multiple of 32 bytes",
        ));
    }
    Ok(bytes
        .chunks(32)
        .map(|id| <[u8; 32]>::try_from(id).expect("32 bytes"))
        .collect())
}

fn require_token(token: Option<&v1::SignedCapability>) -> Result<(), Status> {
    match token {
        Some(_) => Ok(()),
        None => Err(Status::permission_denied("no capability token")),
    }
}

type ChunkStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::ChunkData, Status>> + Send>>;

#[tonic::async_trait]
impl StorageNode for FakeNode {
    async fn get_capacity(
        &self,
        _request: Request<v1::GetCapacityRequest>,
    ) -> Result<Response<v1::CapacityReport>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn reserve(
        &self,
        _request: Request<v1::ReserveRequest>,
    ) -> Result<Response<v1::ReserveResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn missing_chunks(
        &self,
        request: Request<v1::MissingChunksRequest>,
    ) -> Result<Response<v1::MissingChunksResponse>, Status> {
        self.up()?;
        let request = request.into_inner();
        require_token(request.token.as_ref())?;
        let state = self.lock();
        if state.full {
            return Err(Status::resource_exhausted(
                "no space left for this migration",
            ));
        }
        let missing = ids(&request.chunk_ids)?
            .iter()
            .enumerate()
            .filter(|(_, id)| !state.chunks.contains_key(*id))
            .map(|(index, _)| index as u32)
            .collect();
        Ok(Response::new(v1::MissingChunksResponse { missing }))
    }

    async fn put_chunks(
        &self,
        request: Request<Streaming<v1::PutChunkRequest>>,
    ) -> Result<Response<v1::PutChunksResponse>, Status> {
        self.up()?;
        let mut stream = request.into_inner();
        let mut response = v1::PutChunksResponse::default();
        let break_after = self.lock().break_stream_after.take();
        let mut first = true;
        while let Some(message) = stream.message().await? {
            if first {
                require_token(message.token.as_ref())?;
                first = false;
            }
            if break_after == Some((response.stored + response.already_present) as usize) {
                return Err(Status::unavailable("connection reset (injected)"));
            }
            let id = <[u8; 32]>::try_from(message.chunk_id.as_slice())
                .map_err(|_| Status::invalid_argument("chunk id is not 32 bytes"))?;
            if blake3::hash(&message.data).as_bytes().as_slice() != message.checksum.as_slice() {
                return Err(Status::invalid_argument("checksum mismatch"));
            }
            let mut state = self.lock();
            state.received += 1;
            match state.chunks.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => response.already_present += 1,
                std::collections::hash_map::Entry::Vacant(slot) => {
                    response.stored += 1;
                    response.bytes_written += message.data.len() as u64;
                    slot.insert(message.data);
                }
            }
        }
        Ok(Response::new(response))
    }

    async fn commit(
        &self,
        request: Request<v1::CommitRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        self.up()?;
        let request = request.into_inner();
        require_token(request.token.as_ref())?;
        let mut state = self.lock();
        let referenced = ids(&request.chunk_ids)?;
        if let Some(id) = referenced.iter().find(|id| !state.chunks.contains_key(*id)) {
            return Err(Status::failed_precondition(format!(
                "chunk {} is not uploaded",
                fleetmig_format::ChunkId(*id)
            )));
        }
        if blake3::hash(&request.manifest).to_hex().as_str() != request.manifest_digest {
            return Err(Status::invalid_argument("manifest digest mismatch"));
        }
        state.manifest = Some((request.manifest, request.manifest_digest));
        Ok(Response::new(v1::CommitResponse {
            referenced_bytes: 0,
            chunks: referenced.len() as u32,
        }))
    }

    async fn get_manifest(
        &self,
        request: Request<v1::GetManifestRequest>,
    ) -> Result<Response<v1::GetManifestResponse>, Status> {
        self.up()?;
        require_token(request.get_ref().token.as_ref())?;
        let state = self.lock();
        let (manifest, manifest_digest) = state
            .manifest
            .clone()
            .ok_or_else(|| Status::failed_precondition("not committed"))?;
        Ok(Response::new(v1::GetManifestResponse {
            manifest,
            manifest_digest,
        }))
    }

    type GetChunksStream = ChunkStream;

    async fn get_chunks(
        &self,
        request: Request<v1::GetChunksRequest>,
    ) -> Result<Response<Self::GetChunksStream>, Status> {
        self.up()?;
        let request = request.into_inner();
        require_token(request.token.as_ref())?;
        let wanted = ids(&request.chunk_ids)?;
        if wanted.len() > 1024 {
            return Err(Status::invalid_argument("more than 1024 chunk ids"));
        }
        let mut state = self.lock();
        let mut items = Vec::new();
        for id in wanted {
            if state
                .down_after_chunks
                .is_some_and(|limit| state.chunks_served >= limit)
            {
                state.down = true;
                items.push(Err(Status::unavailable("the node went down (injected)")));
                break;
            }
            if state.lost.contains(&id) {
                items.push(Err(Status::data_loss(format!(
                    "chunk {} failed its checksum",
                    fleetmig_format::ChunkId(id)
                ))));
                break;
            }
            let served = state.chunks.get(&id).cloned();
            match served {
                Some(data) => {
                    state.chunks_served += 1;
                    items.push(Ok(v1::ChunkData {
                        chunk_id: id.to_vec(),
                        data,
                    }));
                }
                None => {
                    items.push(Err(Status::not_found("no such chunk")));
                    break;
                }
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn replicate(
        &self,
        request: Request<v1::ReplicateRequest>,
    ) -> Result<Response<v1::ReplicateResponse>, Status> {
        self.up()?;
        let request = request.into_inner();
        require_token(request.token.as_ref())?;
        require_token(request.target_token.as_ref())?;
        let (manifest, chunks) = {
            let mut state = self.lock();
            if state.replicate_failures > 0 {
                state.replicate_failures -= 1;
                return Err(Status::unavailable("replication interrupted (injected)"));
            }
            let manifest = state
                .manifest
                .clone()
                .ok_or_else(|| Status::failed_precondition("not committed"))?;
            (manifest, state.chunks.clone())
        };
        let target = SERVED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&request.target_endpoint)
            .cloned()
            .ok_or_else(|| {
                Status::unavailable(format!("target {} unreachable", request.target_endpoint))
            })?;
        let mut response = v1::ReplicateResponse {
            chunks: chunks.len() as u32,
            ..v1::ReplicateResponse::default()
        };
        {
            let mut held = target.lock();
            if held.down {
                return Err(Status::unavailable(format!(
                    "target {} unreachable",
                    request.target_endpoint
                )));
            }
            if held
                .manifest
                .as_ref()
                .is_some_and(|(_, digest)| *digest == manifest.1)
            {
                response.already_committed = true;
            } else {
                for (id, data) in chunks {
                    if let std::collections::hash_map::Entry::Vacant(slot) = held.chunks.entry(id) {
                        response.chunks_sent += 1;
                        response.bytes_sent += data.len() as u64;
                        slot.insert(data);
                    }
                }
                held.manifest = Some(manifest);
            }
        }
        self.lock().replications += 1;
        Ok(Response::new(response))
    }

    async fn list_migrations(
        &self,
        _request: Request<v1::ListMigrationsRequest>,
    ) -> Result<Response<v1::ListMigrationsResponse>, Status> {
        Err(Status::unimplemented(
            "the fake node does not list migrations",
        ))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        self.up()?;
        require_token(request.get_ref().token.as_ref())?;
        self.lock().releases += 1;
        Ok(Response::new(v1::ReleaseResponse {
            state: "sealed".to_owned(),
            delete_after_unix_ms: 0,
        }))
    }
}
