//! The chunk store of a replace migration: a storage node, over gRPC (`fleetmig.v1.StorageNode`).
//!
//! Every call carries the capability token the controller issued for this job (the worker only
//! passes it through). Calls are made from the packed pipeline's plain threads, which block on
//! the async client through the runtime's [`Handle`]; never call these from an async task.
//!
//! Uploads keep one `PutChunks` stream busy: a stream is closed after [`STREAM_BYTES`] and its
//! answer (every chunk durable) awaited while the next stream already carries chunks. The
//! chunks of a stream are kept until its answer; when a stream breaks, the node is asked which
//! of them it lacks (`MissingChunks`) and only those are sent again, so an interrupted upload
//! never re-sends what the node holds. Transient transport errors are retried with capped,
//! jittered backoff for up to [`RetryPolicy::give_up_after`], then reported as
//! [`Error::NodeUnavailable`] (retryable).

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmig_format::ChunkId;
use fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES;
use fleetmig_proto::v1::{self, storage_node_client::StorageNodeClient};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::store::{ChunkStore, ChunkUpload, Commit, SealedChunk, UploadStats};
use crate::client::Backoff;
use crate::error::{Error, Result};

/// Sealed bytes sent in one `PutChunks` stream before it is closed and acknowledged.
pub const STREAM_BYTES: usize = 32 * 1024 * 1024;
/// Chunk ids per `GetChunks` call (the node's limit).
pub const GET_CHUNKS_MAX: usize = 1024;
/// Chunk ids per `MissingChunks` call.
const MISSING_MAX: usize = 8192;
/// Uploads of the same missing chunks before giving up on a node that acknowledges them but
/// keeps reporting them missing.
const RESEND_ROUNDS: usize = 100;
/// Deadline of one unary call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of one `Replicate` call: the node copies the whole migration before it answers
/// (a call cut short loses nothing: the next one sends only what the target still lacks).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// HTTP/2 stream window (bytes in flight per call).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// How long and how fast transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub first: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// Stop retrying (and fail with [`Error::NodeUnavailable`]) after this long.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// A storage node holding one migration.
#[derive(Debug, Clone)]
pub struct NodeStore {
    /// `<node id> (<endpoint>)`, for messages.
    node: String,
    node_id: String,
    migration_id: String,
    client: StorageNodeClient<Channel>,
    token: v1::SignedCapability,
    handle: Handle,
    shutdown: CancellationToken,
    retry: RetryPolicy,
}

/// Builds a lazily connecting channel to a storage node, on the runtime of `handle`, with the
/// fleet's message limits and HTTP/2 windows sized for bulk chunks.
pub fn connect_lazy(endpoint: &str, handle: &Handle) -> Result<StorageNodeClient<Channel>> {
    let _runtime = handle.enter();
    let channel = crate::transport::node_transport()
        .endpoint(endpoint)
        .map_err(|error| Error::BadUrl {
            url: endpoint.to_owned(),
            reason: error.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_lazy();
    Ok(StorageNodeClient::new(channel)
        .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES))
}

impl NodeStore {
    /// The node of a replace assignment (connects lazily). `handle` is the runtime the client
    /// runs on; `shutdown` stops retries.
    pub fn for_transfer(
        transfer: &v1::ReplaceTransfer,
        handle: Handle,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        let token = transfer
            .capability
            .clone()
            .ok_or_else(|| Error::BadAssignment {
                job_id: transfer.migration_id.clone(),
                reason: "the replace transfer carries no capability token".to_owned(),
            })?;
        let client = connect_lazy(&transfer.node_endpoint, &handle)?;
        Ok(Self::new(
            client,
            token,
            &transfer.node_id,
            &transfer.node_endpoint,
            &transfer.migration_id,
            handle,
            shutdown,
        ))
    }

    /// A store over an existing client.
    pub fn new(
        client: StorageNodeClient<Channel>,
        token: v1::SignedCapability,
        node_id: &str,
        endpoint: &str,
        migration_id: &str,
        handle: Handle,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            node: format!("{node_id} ({endpoint})"),
            node_id: node_id.to_owned(),
            migration_id: migration_id.to_owned(),
            client,
            token,
            handle,
            shutdown,
            retry: RetryPolicy::default(),
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Calls `call` until it succeeds, fails for good, or transient failures outlast the retry
    /// policy.
    async fn call<T, F, Fut>(&self, what: &'static str, mut call: F) -> Result<T>
    where
        F: FnMut(StorageNodeClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::new(self.retry.first, self.retry.cap);
        loop {
            match call(self.client.clone()).await {
                Ok(value) => return Ok(value),
                Err(status)
                    if is_transient(&status) && started.elapsed() < self.retry.give_up_after =>
                {
                    self.pause(what, &status, &mut backoff).await?;
                }
                Err(status) => return Err(self.error(what, status)),
            }
        }
    }

    /// Waits before the next attempt (or fails on shutdown).
    async fn pause(&self, what: &str, status: &tonic::Status, backoff: &mut Backoff) -> Result<()> {
        let delay = backoff.delay();
        tracing::debug!(node = %self.node, what, code = ?status.code(), message = status.message(), ?delay, "storage node call failed; retrying");
        tokio::select! {
            () = self.shutdown.cancelled() => Err(Error::Shutdown),
            () = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// The worker error for a node's status.
    fn error(&self, call: &'static str, status: tonic::Status) -> Error {
        let node = self.node.clone();
        let message = status.message().to_owned();
        match status.code() {
            code if is_transient_code(code) => Error::NodeUnavailable {
                node,
                message: format!("{call}: {code:?}: {message}"),
            },
            tonic::Code::ResourceExhausted => Error::NodeFull { node, message },
            tonic::Code::DataLoss => Error::NodeDataLoss { node, message },
            code => Error::NodeRefused {
                node,
                call,
                code: format!("{code:?}"),
                message,
            },
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    async fn missing_async(&self, ids: &[ChunkId]) -> Result<Vec<u32>> {
        let mut missing = Vec::new();
        for (batch_index, batch) in ids.chunks(MISSING_MAX).enumerate() {
            let chunk_ids = concat_ids(batch);
            let response = self
                .call("MissingChunks", |mut client| {
                    let request = self.request(v1::MissingChunksRequest {
                        token: Some(self.token.clone()),
                        chunk_ids: chunk_ids.clone(),
                    });
                    async move { client.missing_chunks(request).await }
                })
                .await?
                .into_inner();
            for index in response.missing {
                if index as usize >= batch.len() {
                    return Err(Error::NodeRefused {
                        node: self.node.clone(),
                        call: "MissingChunks",
                        code: "InvalidResponse".to_owned(),
                        message: format!("index {index} out of {} ids", batch.len()),
                    });
                }
                missing.push((batch_index * MISSING_MAX) as u32 + index);
            }
        }
        Ok(missing)
    }

    /// One `GetChunks` call for at most [`GET_CHUNKS_MAX`] ids, retried for what did not
    /// arrive yet.
    async fn fetch_batch(
        &self,
        ids: &[ChunkId],
        sink: &mut dyn FnMut(ChunkId, Bytes) -> Result<()>,
    ) -> Result<()> {
        let mut wanted: HashSet<ChunkId> = ids.iter().copied().collect();
        let started = Instant::now();
        let mut backoff = Backoff::new(self.retry.first, self.retry.cap);
        while !wanted.is_empty() {
            let asked: Vec<ChunkId> = ids
                .iter()
                .filter(|id| wanted.contains(id))
                .copied()
                .collect();
            let request = self.request(v1::GetChunksRequest {
                token: Some(self.token.clone()),
                chunk_ids: concat_ids(&asked),
            });
            let mut client = self.client.clone();
            let mut sink_error = None;
            let streamed = async {
                let mut stream = client.get_chunks(request).await?.into_inner();
                while let Some(chunk) = stream.message().await? {
                    let Ok(bytes) = <[u8; 32]>::try_from(chunk.chunk_id.as_slice()) else {
                        return Err(tonic::Status::data_loss("a chunk id that is not 32 bytes"));
                    };
                    let id = ChunkId(bytes);
                    if wanted.remove(&id) {
                        if let Err(error) = sink(id, chunk.data) {
                            sink_error = Some(error);
                            return Ok(());
                        }
                    }
                }
                Ok::<(), tonic::Status>(())
            }
            .await;
            if let Some(error) = sink_error {
                return Err(error);
            }
            match streamed {
                Ok(()) => {
                    if let Some(id) = asked.iter().find(|id| wanted.contains(id)) {
                        return Err(Error::CorruptChunk {
                            path: String::new(),
                            chunk: id.to_hex(),
                            reason: format!("storage node {} did not send it", self.node),
                        });
                    }
                }
                Err(status)
                    if is_transient(&status) && started.elapsed() < self.retry.give_up_after =>
                {
                    self.pause("GetChunks", &status, &mut backoff).await?;
                }
                Err(status) => return Err(self.error("GetChunks", status)),
            }
        }
        Ok(())
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    /// `<node id> (<endpoint>)`, for messages.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Copies the committed migration from this node to the node at `target_endpoint`
    /// (`Replicate` with this store's token here and `target_token` there): the node sends only
    /// the chunks the target lacks and commits the manifest there. Idempotent. Transient
    /// failures are retried for the store's [`RetryPolicy`]. Blocking, like every call here.
    pub fn replicate(
        &self,
        target_endpoint: &str,
        target_token: &v1::SignedCapability,
    ) -> Result<v1::ReplicateResponse> {
        let response = self.block_on(self.call("Replicate", |mut client| {
            let mut request = tonic::Request::new(v1::ReplicateRequest {
                token: Some(self.token.clone()),
                target_endpoint: target_endpoint.to_owned(),
                target_token: Some(target_token.clone()),
            });
            request.set_timeout(REPLICATE_TIMEOUT);
            async move { client.replicate(request).await }
        }))?;
        Ok(response.into_inner())
    }
}

impl ChunkStore for NodeStore {
    fn location(&self) -> String {
        format!("node:{}/{}", self.node_id, self.migration_id)
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<u32>> {
        self.block_on(self.missing_async(ids))
    }

    fn upload(&self) -> Result<Box<dyn ChunkUpload + '_>> {
        Ok(Box::new(NodeUpload {
            store: self,
            active: None,
            finishing: None,
            stats: UploadStats::default(),
        }))
    }

    fn commit(&self, commit: &Commit) -> Result<()> {
        let chunk_ids = concat_ids(&commit.chunk_ids);
        let size = commit.manifest.len() + chunk_ids.len() + commit.manifest_digest.len() + 1024;
        if size > MAX_CONTROL_MESSAGE_BYTES {
            return Err(Error::NodeRefused {
                node: self.node.clone(),
                call: "Commit",
                code: "OutOfRange".to_owned(),
                message: format!(
                    "the commit (sealed manifest of {} bytes and {} chunk ids) exceeds the {} byte message limit",
                    commit.manifest.len(),
                    commit.chunk_ids.len(),
                    MAX_CONTROL_MESSAGE_BYTES
                ),
            });
        }
        let manifest = commit.manifest.to_vec();
        self.block_on(self.call("Commit", |mut client| {
            let request = self.request(v1::CommitRequest {
                token: Some(self.token.clone()),
                manifest: manifest.clone(),
                chunk_ids: chunk_ids.clone(),
                manifest_digest: commit.manifest_digest.clone(),
                logical_bytes: commit.logical_bytes,
            });
            async move { client.commit(request).await }
        }))?;
        Ok(())
    }

    fn manifest(&self) -> Result<Bytes> {
        let response = self
            .block_on(self.call("GetManifest", |mut client| {
                let request = self.request(v1::GetManifestRequest {
                    token: Some(self.token.clone()),
                });
                async move { client.get_manifest(request).await }
            }))?
            .into_inner();
        let actual = blake3::hash(&response.manifest).to_hex().to_string();
        if !response.manifest_digest.is_empty()
            && !actual.eq_ignore_ascii_case(&response.manifest_digest)
        {
            return Err(Error::NodeDataLoss {
                node: self.node.clone(),
                message: format!(
                    "the manifest has digest {actual}, the node says {}",
                    response.manifest_digest
                ),
            });
        }
        Ok(Bytes::from(response.manifest))
    }

    fn fetch(
        &self,
        ids: &[ChunkId],
        sink: &mut dyn FnMut(ChunkId, Bytes) -> Result<()>,
    ) -> Result<()> {
        self.block_on(async {
            for batch in ids.chunks(GET_CHUNKS_MAX) {
                self.fetch_batch(batch, sink).await?;
            }
            Ok(())
        })
    }

    fn release(&self) -> Result<()> {
        let response = self
            .block_on(self.call("Release", |mut client| {
                let request = self.request(v1::ReleaseRequest {
                    token: Some(self.token.clone()),
                });
                async move { client.release(request).await }
            }))?
            .into_inner();
        tracing::info!(node = %self.node, migration = %self.migration_id, state = %response.state, "migration released on the storage node");
        Ok(())
    }
}

/// One `PutChunks` stream: its sender, its call, and the chunks it carries until acknowledged.
struct Stream {
    sender: Option<tokio::sync::mpsc::Sender<v1::PutChunkRequest>>,
    call: tokio::task::JoinHandle<std::result::Result<v1::PutChunksResponse, tonic::Status>>,
    retained: Vec<SealedChunk>,
    bytes: usize,
}

/// An upload to a storage node (see the module docs).
struct NodeUpload<'a> {
    store: &'a NodeStore,
    /// The stream being filled.
    active: Option<Stream>,
    /// The previous stream, closed, awaiting its answer.
    finishing: Option<Stream>,
    stats: UploadStats,
}

impl NodeUpload<'_> {
    fn open_stream(&self) -> Stream {
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let mut client = self.store.client.clone();
        let call = self.store.handle.spawn(async move {
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            client
                .put_chunks(stream)
                .await
                .map(tonic::Response::into_inner)
        });
        Stream {
            sender: Some(sender),
            call,
            retained: Vec::new(),
            bytes: 0,
        }
    }

    fn message(&self, chunk: &SealedChunk, first: bool) -> v1::PutChunkRequest {
        v1::PutChunkRequest {
            token: first.then(|| self.store.token.clone()),
            chunk_id: chunk.id.0.to_vec(),
            checksum: chunk.checksum.to_vec(),
            data: chunk.bytes.clone(),
        }
    }

    /// Closes a stream and waits for its answer; a broken stream (or one that could not carry
    /// all its chunks) is repaired by sending again what the node lacks.
    fn settle(&mut self, mut stream: Stream, broken: bool) -> Result<()> {
        stream.sender = None;
        let answer = self.store.block_on(&mut stream.call);
        let status = match answer {
            Ok(Ok(response)) => {
                self.count(&response);
                if !broken {
                    return Ok(());
                }
                return self.resend(stream.retained);
            }
            Ok(Err(status)) => status,
            Err(join) => tonic::Status::unavailable(format!("upload task ended: {join}")),
        };
        if !is_transient(&status) {
            return Err(self.store.error("PutChunks", status));
        }
        tracing::warn!(node = %self.store.node, code = ?status.code(), message = status.message(), chunks = stream.retained.len(), "upload stream broke; sending again what the node lacks");
        self.resend(stream.retained)
    }

    /// Asks the node which of `chunks` it lacks and sends only those, until it has them all.
    fn resend(&mut self, chunks: Vec<SealedChunk>) -> Result<()> {
        let store = self.store;
        let started = Instant::now();
        let mut backoff = Backoff::new(store.retry.first, store.retry.cap);
        let mut pending = chunks;
        for _round in 0..RESEND_ROUNDS {
            let ids: Vec<ChunkId> = pending.iter().map(|chunk| chunk.id).collect();
            let missing: HashSet<u32> = store.missing(&ids)?.into_iter().collect();
            pending = pending
                .into_iter()
                .enumerate()
                .filter(|(index, _)| missing.contains(&(*index as u32)))
                .map(|(_, chunk)| chunk)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            let stream = self.open_stream();
            let sender = stream.sender.clone().expect("a new stream is open");
            let messages: Vec<v1::PutChunkRequest> = pending
                .iter()
                .enumerate()
                .map(|(index, chunk)| self.message(chunk, index == 0))
                .collect();
            let answer = store.block_on(async move {
                drop(stream.sender);
                for message in messages {
                    if sender.send(message).await.is_err() {
                        break;
                    }
                }
                drop(sender);
                stream.call.await
            });
            let status = match answer {
                Ok(Ok(response)) => {
                    self.count(&response);
                    self.stats.chunks_resent += pending.len() as u64;
                    continue; // ask again: the answer proves durability, MissingChunks proves all
                }
                Ok(Err(status)) => status,
                Err(join) => tonic::Status::unavailable(format!("upload task ended: {join}")),
            };
            if !is_transient(&status) || started.elapsed() >= store.retry.give_up_after {
                return Err(store.error("PutChunks", status));
            }
            store.block_on(store.pause("PutChunks", &status, &mut backoff))?;
        }
        Err(Error::NodeRefused {
            node: store.node.clone(),
            call: "PutChunks",
            code: "Incomplete".to_owned(),
            message: format!(
                "{} chunks still missing after {RESEND_ROUNDS} uploads that the node acknowledged",
                pending.len()
            ),
        })
    }

    fn count(&mut self, response: &v1::PutChunksResponse) {
        self.stats.chunks_stored += u64::from(response.stored);
        self.stats.chunks_already_present += u64::from(response.already_present);
        self.stats.bytes_written += response.bytes_written;
    }
}

impl ChunkUpload for NodeUpload<'_> {
    fn put(&mut self, chunk: SealedChunk) -> Result<()> {
        if self.active.is_none() {
            self.active = Some(self.open_stream());
        }
        let stream = self.active.as_mut().expect("just opened");
        let message = v1::PutChunkRequest {
            token: stream.retained.is_empty().then(|| self.store.token.clone()),
            chunk_id: chunk.id.0.to_vec(),
            checksum: chunk.checksum.to_vec(),
            data: chunk.bytes.clone(),
        };
        let sender = stream.sender.as_ref().expect("the active stream is open");
        // Not on a runtime thread (see the module docs): block on the channel directly.
        let sent = sender.blocking_send(message).is_ok();
        stream.bytes += chunk.bytes.len();
        stream.retained.push(chunk);
        if !sent {
            // The call ended early: its status says why; settling repairs it.
            let broken = self.active.take().expect("active");
            return self.settle(broken, true);
        }
        if stream.bytes >= STREAM_BYTES {
            let full = self.active.take().expect("active");
            let previous = self.finishing.replace(Stream {
                sender: None,
                ..full
            });
            if let Some(previous) = previous {
                self.settle(previous, false)?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<UploadStats> {
        if let Some(previous) = self.finishing.take() {
            self.settle(previous, false)?;
        }
        if let Some(last) = self.active.take() {
            self.settle(last, false)?;
        }
        Ok(self.stats)
    }
}

/// Whether a node's status is worth retrying.
fn is_transient(status: &tonic::Status) -> bool {
    is_transient_code(status.code())
}

fn is_transient_code(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

/// Chunk ids, 32 bytes each, concatenated (the wire form).
fn concat_ids(ids: &[ChunkId]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ids.len() * 32);
    for id in ids {
        bytes.extend_from_slice(&id.0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::fake_node::FakeNode;
    use crate::packed::{CaptureOptions, Keys, RestoreOptions};
    use fleetmig_format::{FleetKey, MigrationKey};
    use fleetmig_state::{GenOptions, NoProgress, fingerprint, generate_machine};

    struct Node {
        runtime: tokio::runtime::Runtime,
        fake: FakeNode,
        url: String,
    }

    impl Node {
        fn start() -> Self {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let fake = FakeNode::default();
            let url = fake.serve(&runtime);
            Self { runtime, fake, url }
        }

        fn store(&self) -> NodeStore {
            let token = v1::SignedCapability {
                claims: b"claims".to_vec(),
                signature: b"signature".to_vec(),
            };
            NodeStore::new(
                connect_lazy(&self.url, self.runtime.handle()).unwrap(),
                token,
                "node-1",
                &self.url,
                "m-1",
                self.runtime.handle().clone(),
                CancellationToken::new(),
            )
        }
    }

    fn keys() -> Keys {
        Keys {
            fleet: FleetKey::from_bytes([1; 32]),
            migration: MigrationKey::from_bytes([2; 32]),
        }
    }

    fn machine(dir: &std::path::Path) -> std::path::PathBuf {
        let root = dir.join("xp");
        let opts = GenOptions {
            seed: 21,
            users: 1,
            files_per_user: 120,
            hostname: Some("PC-21".into()),
        };
        generate_machine(&root, &opts).unwrap();
        root
    }

    #[test]
    fn capture_and_restore_through_a_node() {
        let node = Node::start();
        let store = node.store();
        let dir = tempfile::tempdir().unwrap();
        let root = machine(dir.path());
        let expected = fingerprint::expected_after_refresh(&root).unwrap();
        let options = CaptureOptions {
            capture: fleetmig_state::CaptureOptions::new("m-1"),
            cache: Some(dir.path().join("cache.bin")),
            ..CaptureOptions::default()
        };
        let first = crate::packed::capture(&root, &store, &keys(), &options, &NoProgress).unwrap();
        assert_eq!(first.stats.chunks_stored, first.chunks);
        let received = node.fake.state.lock().unwrap().received;
        assert_eq!(received, first.chunks, "each chunk sent once");
        store.release().unwrap();

        // Unchanged: nothing read, nothing sent; a new manifest is committed.
        let second = crate::packed::capture(&root, &store, &keys(), &options, &NoProgress).unwrap();
        assert_eq!(
            (second.stats.files_read, second.stats.chunks_sealed),
            (0, 0)
        );
        assert_eq!(node.fake.state.lock().unwrap().received, received);
        assert_eq!(
            second.manifest_digest,
            node.fake.state.lock().unwrap().manifest.clone().unwrap().1
        );

        let target = dir.path().join("win7");
        std::fs::create_dir(&target).unwrap();
        let (manifest, digest) = crate::packed::fetch_manifest(&store, &keys().migration).unwrap();
        assert_eq!(digest, second.manifest_digest);
        let report = crate::packed::restore(
            &store,
            &target,
            &keys().fleet,
            &manifest,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        assert_eq!(report.files_written as usize, expected.len());
        let compared = fingerprint::compare(&expected, &target).unwrap();
        assert!(
            compared.is_ok(),
            "{:?} {:?}",
            compared.missing,
            compared.different
        );
        assert!(
            crate::packed::verify(&target, &manifest, &NoProgress)
                .unwrap()
                .is_ok()
        );
        assert_eq!(node.fake.state.lock().unwrap().releases, 1);
    }

    #[test]
    fn a_broken_upload_resends_only_what_the_node_lacks() {
        let node = Node::start();
        let store = node.store();
        let fleet = FleetKey::from_bytes([4; 32]);
        let chunks: Vec<SealedChunk> = (0..50u32)
            .map(|n| SealedChunk::seal(&fleet, format!("chunk number {n} ").repeat(100).as_bytes()))
            .collect();
        node.fake.state.lock().unwrap().break_stream_after = Some(20);
        let mut upload = store.upload().unwrap();
        for chunk in chunks.iter().cloned() {
            upload.put(chunk).unwrap();
        }
        let stats = upload.finish().unwrap();
        let state = node.fake.state.lock().unwrap();
        assert_eq!(state.chunks.len(), 50);
        assert_eq!(state.received, 50, "nothing the node held was sent again");
        // Only the chunks that went into the broken stream after the break are sent again.
        assert!((1..=30).contains(&stats.chunks_resent), "{stats:?}");
    }

    #[test]
    fn lost_chunks_full_nodes_and_unreachable_nodes_are_named() {
        let node = Node::start();
        let store = node.store();
        let dir = tempfile::tempdir().unwrap();
        let root = machine(dir.path());
        let options = CaptureOptions {
            capture: fleetmig_state::CaptureOptions::new("m-1"),
            ..CaptureOptions::default()
        };
        crate::packed::capture(&root, &store, &keys(), &options, &NoProgress).unwrap();
        let (manifest, _) = crate::packed::fetch_manifest(&store, &keys().migration).unwrap();
        let victim = manifest
            .entries
            .iter()
            .rev()
            .find(|entry| entry.chunks.len() == 1)
            .unwrap();
        node.fake
            .state
            .lock()
            .unwrap()
            .lost
            .insert(victim.chunks[0].0);
        let target = dir.path().join("win7");
        std::fs::create_dir(&target).unwrap();
        let error = crate::packed::restore(
            &store,
            &target,
            &keys().fleet,
            &manifest,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains(&victim.chunks[0].to_hex()), "{error}");
        assert!(error.contains("lost"), "{error}");
        assert!(error.contains("restore of Users/"), "{error}");

        node.fake.state.lock().unwrap().full = true;
        let error = store.missing(&[ChunkId([0; 32])]).unwrap_err();
        assert!(matches!(error, Error::NodeFull { .. }), "{error}");

        // Nobody listens there: retried, then reported as unreachable (retryable).
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let unreachable = NodeStore::new(
            connect_lazy(&format!("http://{closed}"), node.runtime.handle()).unwrap(),
            v1::SignedCapability::default(),
            "node-2",
            "closed",
            "m-1",
            node.runtime.handle().clone(),
            CancellationToken::new(),
        )
        .with_retry(RetryPolicy {
            first: Duration::from_millis(10),
            cap: Duration::from_millis(20),
            give_up_after: Duration::from_millis(200),
        });
        let error = unreachable.missing(&[ChunkId([0; 32])]).unwrap_err();
        assert!(matches!(error, Error::NodeUnavailable { .. }), "{error}");
        assert!(error.is_retryable());
    }

    /// Throughput of a capture to a node on loopback (an in-memory fake: no disk on the node).
    /// `cargo test --release -p fleetmig-worker --lib loopback_throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark"]
    fn loopback_throughput() {
        let node = Node::start();
        let store = node.store();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("xp");
        let opts = GenOptions {
            seed: 1,
            users: 3,
            files_per_user: 10_000,
            hostname: Some("BENCH".into()),
        };
        generate_machine(&root, &opts).unwrap();
        let archives = root.join("Documents and Settings/alice/My Documents/Archives");
        std::fs::create_dir_all(&archives).unwrap();
        for index in 0..60u64 {
            let line = format!(
                "2008-03-{:02} From: user{index}@corp.example Subject: Re: order status\n",
                index % 28
            );
            let text: Vec<u8> = line
                .as_bytes()
                .iter()
                .copied()
                .cycle()
                .take(5 << 20)
                .collect();
            std::fs::write(archives.join(format!("archive {index}.mbx")), text).unwrap();
        }
        let options = CaptureOptions {
            capture: fleetmig_state::CaptureOptions::new("m-1"),
            cache: Some(dir.path().join("cache.bin")),
            ..CaptureOptions::default()
        };
        let started = Instant::now();
        let first = crate::packed::capture(&root, &store, &keys(), &options, &NoProgress).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "capture to a loopback node: {} files, {} MB in {seconds:.2}s = {:.0} MB/s ({} chunks, {} MB sealed)",
            first.files,
            first.bytes / 1_000_000,
            first.bytes as f64 / seconds / 1e6,
            first.chunks,
            first.stats.sealed_bytes / 1_000_000
        );
        let started = Instant::now();
        crate::packed::capture(&root, &store, &keys(), &options, &NoProgress).unwrap();
        eprintln!(
            "unchanged re-capture: {:.2}s",
            started.elapsed().as_secs_f64()
        );
        let target = dir.path().join("w7");
        std::fs::create_dir(&target).unwrap();
        let (manifest, _) = crate::packed::fetch_manifest(&store, &keys().migration).unwrap();
        let started = Instant::now();
        let report = crate::packed::restore(
            &store,
            &target,
            &keys().fleet,
            &manifest,
            &RestoreOptions::default(),
            &NoProgress,
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "restore from a loopback node: {} MB in {seconds:.2}s = {:.0} MB/s",
            report.bytes_written / 1_000_000,
            report.bytes_written as f64 / seconds / 1e6
        );
    }
}
