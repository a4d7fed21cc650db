//! Replicate: copying a committed migration from this node to another one
//! (issue 6: every replace migration is held by two nodes before its
//! capture counts as verified; a node that comes back is re-synced).
//!
//! This node is the client of the target's `StorageNode` service, with the
//! target token the caller passed (a REPLICATE capability for the target):
//!
//! 1. `Reserve` the migration's referenced sealed bytes. A target that
//!    refuses with `FAILED_PRECONDITION` may already hold the migration
//!    committed: a `Commit` of the same manifest answers that at once
//!    (idempotent), and nothing is sent.
//! 2. `MissingChunks` for every referenced chunk, [`MISSING_QUERY_IDS`] at
//!    a time.
//! 3. `PutChunks` of only the missing chunks, read from this node's chunk
//!    files (a few in parallel) and checked against their checksums as they
//!    are read, in streams of about [`STREAM_BYTES`] (each stream's answer
//!    means its chunks are durable on the target). A corrupt or missing
//!    local chunk is never sent: the call ends with `DATA_LOSS` naming it.
//! 4. `Commit` of the manifest, its digest and the chunk list: the target
//!    seals the copy (restorable at once).
//!
//! Every step is idempotent, so a broken replication redone sends only what
//! the target still lacks. Failures of the target keep its status code; the
//! message names the target and the call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES;
use fleetmig_proto::v1::storage_node_client::StorageNodeClient;
use fleetmig_proto::v1::{
    self, CapabilityRole, CommitRequest, MissingChunksRequest, PutChunkRequest, ReserveRequest,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::chunks;
use crate::error::{Error, Result};
use crate::layout::{ChunkId, MigrationId};
use crate::node::{Node, blocking, now_unix_ms};
use crate::record::CommitInfo;
use crate::{CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES};

/// Chunk ids per `MissingChunks` call to the target (its limit is 65,536).
pub const MISSING_QUERY_IDS: usize = 16_384;
/// Sealed bytes sent in one `PutChunks` stream before its answer (every
/// chunk durable on the target) is awaited.
pub const STREAM_BYTES: u64 = 64 * 1024 * 1024;
/// Chunk files read and checked at once ahead of the stream.
const READS_IN_FLIGHT: usize = 4;
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of `Reserve` and `MissingChunks` on the target.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of `Commit` on the target (it checks every referenced chunk).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(300);
/// Target clients kept (channels reconnect on their own).
const MAX_PEERS: usize = 64;

/// What Replicate did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicateSummary {
    /// Chunks the migration references.
    pub chunks: u64,
    /// Chunks sent (the target lacked them).
    pub chunks_sent: u64,
    /// Sealed bytes sent.
    pub bytes_sent: u64,
    /// The target already held the migration committed; nothing was sent.
    pub already_committed: bool,
}

/// Clients of the nodes this node replicates to, by endpoint.
#[derive(Debug)]
pub(crate) struct Peers {
    transport: fleetmig_auth::Transport,
    clients: Mutex<HashMap<String, StorageNodeClient<Channel>>>,
}

impl Peers {
    /// No clients yet; they will use `transport`.
    pub(crate) fn new(transport: fleetmig_auth::Transport) -> Self {
        Self {
            transport,
            clients: Mutex::default(),
        }
    }

    /// A client of the node at `endpoint` (cached; connects lazily).
    fn client(&self, endpoint: &str) -> Result<StorageNodeClient<Channel>> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(endpoint) {
            return Ok(client.clone());
        }
        let client = peer_client(&self.transport, endpoint)?;
        if clients.len() >= MAX_PEERS {
            clients.clear();
        }
        clients.insert(endpoint.to_owned(), client.clone());
        Ok(client)
    }
}

/// A lazily connecting `StorageNode` client for another node, with the
/// fleet's message limits and HTTP/2 windows sized for bulk chunks (like a
/// worker's upload path).
pub fn peer_client(
    transport: &fleetmig_auth::Transport,
    endpoint: &str,
) -> Result<StorageNodeClient<Channel>> {
    let channel = transport
        .endpoint(endpoint)
        .map_err(|err| Error::InvalidUrl {
            url: endpoint.to_owned(),
            reason: err.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .connect_lazy();
    Ok(StorageNodeClient::new(channel)
        .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES))
}

/// The node a migration is copied to, and how to address it.
struct Target {
    client: StorageNodeClient<Channel>,
    endpoint: String,
    migration: MigrationId,
    token: v1::SignedCapability,
}

impl Target {
    /// The error for a status the target answered `call` with.
    fn failed(&self, call: &'static str, status: &tonic::Status) -> Error {
        Error::Replication {
            migration_id: self.migration.to_string(),
            target: self.endpoint.clone(),
            call,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// Runs a unary call with a deadline.
    async fn call<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> std::result::Result<T, tonic::Status> {
        match tokio::time::timeout(timeout, call).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {} s",
                timeout.as_secs()
            ))),
        }
    }

    async fn reserve(&self, bytes: u64) -> std::result::Result<(), tonic::Status> {
        let request = ReserveRequest {
            token: Some(self.token.clone()),
            bytes,
            lease_ms: 0,
        };
        self.call(CALL_TIMEOUT, self.client.clone().reserve(request))
            .await
            .map(drop)
    }

    async fn commit(&self, request: CommitRequest) -> std::result::Result<(), tonic::Status> {
        self.call(COMMIT_TIMEOUT, self.client.clone().commit(request))
            .await
            .map(drop)
    }

    /// The chunks of `references` the target lacks.
    async fn missing(&self, references: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let mut missing = Vec::new();
        for batch in references.chunks(MISSING_QUERY_IDS) {
            let request = MissingChunksRequest {
                token: Some(self.token.clone()),
                chunk_ids: concat_ids(batch),
            };
            let answer = self
                .call(CALL_TIMEOUT, self.client.clone().missing_chunks(request))
                .await
                .map_err(|status| self.failed("MissingChunks", &status))?;
            for index in answer.missing {
                let chunk = batch.get(index as usize).ok_or_else(|| {
                    self.failed(
                        "MissingChunks",
                        &tonic::Status::internal(format!(
                            "answered index {index} for {} ids",
                            batch.len()
                        )),
                    )
                })?;
                missing.push(*chunk);
            }
        }
        Ok(missing)
    }
}

/// One chunk read from this node's store and checked.
struct ReadChunk {
    id: ChunkId,
    checksum: [u8; 32],
    sealed: Bytes,
}

impl Node {
    /// Replicate (role CAPTURE of the migration's source, or REPLICATE):
    /// copies the committed migration of `token` to the node at
    /// `target_endpoint`, with `target_token` (see the module docs).
    pub async fn replicate(
        &self,
        token: Option<&v1::SignedCapability>,
        target_endpoint: &str,
        target_token: Option<&v1::SignedCapability>,
    ) -> Result<ReplicateSummary> {
        let started = Instant::now();
        let now = now_unix_ms();
        let grant = self
            .authorize(
                token,
                &[CapabilityRole::Capture, CapabilityRole::Replicate],
                now,
            )
            .await?;
        let id = grant.migration;
        let target_endpoint = target_endpoint.trim();
        if target_endpoint.is_empty() {
            return Err(Error::BadRequest {
                field: "target_endpoint",
                reason: "no target node named".into(),
            });
        }
        let target_token = target_token.cloned().ok_or_else(|| Error::BadRequest {
            field: "target_token",
            reason: "missing: a REPLICATE capability for the target node is needed".into(),
        })?;
        let _session = self.restore_session();
        let info = self.replicable(&id, &grant.claims, grant.role)?;
        let manifest = self.read_manifest(&id, &info.manifest_digest).await?;
        let references = self.references(&id).await?;
        let target = Target {
            client: self.inner.peers.client(target_endpoint)?,
            endpoint: target_endpoint.to_owned(),
            migration: id.clone(),
            token: target_token,
        };
        let commit = CommitRequest {
            token: Some(target.token.clone()),
            manifest,
            chunk_ids: concat_ids(&references),
            manifest_digest: info.manifest_digest.clone(),
            logical_bytes: info.logical_bytes,
        };
        let mut summary = ReplicateSummary {
            chunks: references.len() as u64,
            ..ReplicateSummary::default()
        };

        if let Err(refused) = target.reserve(info.referenced_bytes).await {
            if refused.code() != tonic::Code::FailedPrecondition {
                return Err(target.failed("Reserve", &refused));
            }
            // Nothing left to reserve: the target may hold it committed.
            return match target.commit(commit).await {
                Ok(()) => {
                    summary.already_committed = true;
                    self.log_replicated(&id, &target, summary, started);
                    Ok(summary)
                }
                Err(commit_refused) => Err(Error::Replication {
                    migration_id: id.to_string(),
                    target: target.endpoint.clone(),
                    call: "Reserve",
                    code: refused.code(),
                    message: format!(
                        "{} (and Commit: {})",
                        refused.message(),
                        commit_refused.message()
                    ),
                }),
            };
        }
        let missing = target.missing(&references).await?;
        tracing::debug!(
            migration_id = %id,
            target = %target.endpoint,
            chunks = references.len(),
            missing = missing.len(),
            "replicating"
        );
        let (chunks_sent, bytes_sent) = self.send_chunks(&target, missing).await?;
        summary.chunks_sent = chunks_sent;
        summary.bytes_sent = bytes_sent;
        target
            .commit(commit)
            .await
            .map_err(|status| target.failed("Commit", &status))?;
        self.log_replicated(&id, &target, summary, started);
        Ok(summary)
    }

    /// The commit of migration `id` if it may be replicated with a token
    /// holding `role`: committed (or sealed, retained) here, and for a
    /// CAPTURE token, captured by the token's machine.
    fn replicable(
        &self,
        id: &MigrationId,
        claims: &v1::Capability,
        role: CapabilityRole,
    ) -> Result<CommitInfo> {
        let table = self.table();
        let entry = table.entries.get(id).ok_or_else(|| self.unknown(id))?;
        let record = &entry.record;
        if role == CapabilityRole::Capture {
            record.check_source(&claims.machine_id)?;
        }
        match &record.commit {
            Some(info) if record.state.is_committed() => Ok(info.clone()),
            _ => Err(Error::WrongState {
                migration_id: id.to_string(),
                state: record.state.name(),
                refusal: "not committed; nothing to replicate",
            }),
        }
    }

    /// Streams `missing` to the target with PutChunks; returns the chunks
    /// and sealed bytes sent.
    async fn send_chunks(&self, target: &Target, missing: Vec<ChunkId>) -> Result<(u64, u64)> {
        let layout = self.layout().clone();
        let node_id = self.node_id().to_owned();
        let migration = target.migration.to_string();
        let mut reads = futures::stream::iter(missing)
            .map(move |id| {
                let layout = layout.clone();
                let node_id = node_id.clone();
                let migration = migration.clone();
                async move {
                    let path = layout.chunk_path(&id);
                    let read =
                        blocking("read chunk", move || Ok(chunks::read_checked(&path))).await?;
                    read.map(|(checksum, sealed)| ReadChunk {
                        id,
                        checksum,
                        sealed,
                    })
                    .map_err(|fault| {
                        let err = Error::CorruptChunk {
                            chunk_id: id.to_hex(),
                            migration_id: migration,
                            node_id,
                            reason: fault.to_string(),
                        };
                        tracing::error!(error = %err, "refusing to replicate a chunk; run scrub");
                        err
                    })
                }
            })
            .buffered(READS_IN_FLIGHT);

        let (mut chunks_sent, mut bytes_sent) = (0u64, 0u64);
        while let Some(first) = reads.next().await {
            // Nothing is sent before the first chunk of a stream is good.
            let mut next = Some(first?);
            let (sender, receiver) = mpsc::channel(2);
            let mut client = target.client.clone();
            let call =
                tokio::spawn(async move { client.put_chunks(ReceiverStream::new(receiver)).await });
            let mut token = Some(target.token.clone());
            let (mut stream_bytes, mut failure, mut cut_short) = (0u64, None, false);
            while let Some(chunk) = next.take() {
                let len = chunk.sealed.len() as u64;
                let message = PutChunkRequest {
                    token: token.take(),
                    chunk_id: chunk.id.0.to_vec(),
                    checksum: chunk.checksum.to_vec(),
                    data: chunk.sealed,
                };
                if sender.send(message).await.is_err() {
                    cut_short = true; // the target ended the call: its answer says why
                    break;
                }
                chunks_sent += 1;
                bytes_sent += len;
                stream_bytes += len;
                if stream_bytes >= STREAM_BYTES {
                    break;
                }
                match reads.next().await {
                    Some(Ok(chunk)) => next = Some(chunk),
                    Some(Err(err)) => failure = Some(err),
                    None => {}
                }
            }
            // Ends the stream: what was sent is made durable on the target.
            drop(sender);
            let answer = call.await.map_err(|err| Error::Task {
                task: "replicate chunks",
                reason: err.to_string(),
            })?;
            if let Some(err) = failure {
                return Err(err);
            }
            let answer = answer
                .map_err(|status| target.failed("PutChunks", &status))?
                .into_inner();
            if cut_short {
                return Err(target.failed(
                    "PutChunks",
                    &tonic::Status::unavailable("the target ended the stream early"),
                ));
            }
            tracing::debug!(
                migration_id = %target.migration,
                target = %target.endpoint,
                stored = answer.stored,
                already_present = answer.already_present,
                "replica chunks durable on the target"
            );
        }
        Ok((chunks_sent, bytes_sent))
    }

    fn log_replicated(
        &self,
        id: &MigrationId,
        target: &Target,
        summary: ReplicateSummary,
        started: Instant,
    ) {
        tracing::info!(
            migration_id = %id,
            target = %target.endpoint,
            chunks = summary.chunks,
            chunks_sent = summary.chunks_sent,
            bytes_sent = summary.bytes_sent,
            already_committed = summary.already_committed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replicated"
        );
    }
}

/// Chunk ids concatenated, as on the wire.
fn concat_ids(ids: &[ChunkId]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ids.len() * crate::layout::CHUNK_ID_LEN);
    for id in ids {
        bytes.extend_from_slice(&id.0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_concatenated_as_on_the_wire() {
        let ids = [ChunkId([1; 32]), ChunkId([2; 32])];
        let bytes = concat_ids(&ids);
        assert_eq!(bytes.len(), 64);
        assert_eq!(
            crate::layout::parse_chunk_ids(&bytes, 2, "chunk_ids").unwrap(),
            ids
        );
    }

    #[tokio::test]
    async fn a_bad_target_endpoint_is_refused() {
        let err =
            peer_client(&fleetmig_auth::Transport::Plaintext, "not a url").expect_err("bad url");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
        let peers = Peers::new(fleetmig_auth::Transport::Plaintext);
        let a = peers.client("http://127.0.0.1:9").expect("client");
        drop(a);
        assert_eq!(peers.clients.lock().unwrap().len(), 1);
        peers.client("http://127.0.0.1:9").expect("cached");
        assert_eq!(peers.clients.lock().unwrap().len(), 1);
    }
}
