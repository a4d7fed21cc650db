//! PutChunks: receiving a stream of sealed chunks and making them durable
//! in batches.
//!
//! Each message is checked (sizes, checksum) and written to `tmp/` on the
//! blocking pool, a few at a time, while the next messages arrive; nothing
//! is synced per chunk. Every [`BATCH_BYTES`] (or [`BATCH_FILES`]), and at
//! the end of the stream, the batch is handed to [`chunks::publish`] (data
//! synced in parallel, renamed into place, shard directories synced) on a
//! task of its own, so the next batch fills while the previous one syncs.
//! The response is sent only when every batch is durable. On any failure
//! the temporary files are removed: nothing partial is ever visible.

use std::collections::HashSet;

use bytes::Bytes;
use fleetmig_proto::v1;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::task::JoinHandle;

use crate::chunks::{self, MAX_SEALED_CHUNK_BYTES, StagedChunk};
use crate::error::{Error, Result};
use crate::layout::{ChunkId, MigrationId};
use crate::node::{Node, now_unix_ms};

/// Sealed bytes staged before a batch is made durable.
pub const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Files staged before a batch is made durable (many small chunks).
pub const BATCH_FILES: usize = 512;
/// Chunks being checked and written to `tmp/` at once.
const STAGING_CONCURRENCY: usize = 3;

/// One PutChunks message, as the node sees it.
#[derive(Debug, Clone)]
pub struct ChunkUpload {
    /// The capability token (first message only).
    pub token: Option<v1::SignedCapability>,
    /// 32-byte chunk id.
    pub chunk_id: Vec<u8>,
    /// 32-byte plain BLAKE3 of `data`.
    pub checksum: Vec<u8>,
    /// The sealed chunk.
    pub data: Bytes,
}

/// Answer to PutChunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutSummary {
    /// Chunks written by this call.
    pub stored: u32,
    /// Chunks already held (not written again).
    pub already_present: u32,
    /// Sealed bytes written by this call.
    pub bytes_written: u64,
}

/// What staging one chunk produced.
enum Staged {
    /// The node already holds it.
    Present,
    /// Written to `tmp/`, awaiting its batch's sync.
    Written(StagedChunk),
}

/// What one published batch added.
#[derive(Debug, Default)]
struct BatchOutcome {
    stored: u32,
    already_present: u32,
    bytes_written: u64,
}

impl Node {
    /// PutChunks (role CAPTURE, token on the first message): stores every
    /// chunk of `uploads` durably, then answers.
    pub async fn put_chunks<S>(&self, mut uploads: S) -> Result<PutSummary>
    where
        S: Stream<Item = Result<ChunkUpload>> + Unpin + Send,
    {
        let first = match uploads.next().await {
            Some(first) => first?,
            None => return Err(Error::Token(fleetmig_auth::Error::Missing)),
        };
        let grant = self.open_upload(first.token.as_ref()).await?;
        let mut upload = Upload::new(self.clone(), grant.migration);
        let received = async {
            upload.accept(first).await?;
            while let Some(message) = uploads.next().await {
                upload.accept(message?).await?;
            }
            upload.finish().await
        }
        .await;
        match received {
            Ok(summary) => {
                tracing::info!(
                    migration_id = %upload.migration,
                    stored = summary.stored,
                    already_present = summary.already_present,
                    bytes_written = summary.bytes_written,
                    "chunks stored"
                );
                Ok(summary)
            }
            Err(err) => {
                upload.abandon().await;
                tracing::warn!(migration_id = %upload.migration, error = %err, "upload failed; its unfinished chunks were removed");
                Err(err)
            }
        }
    }
}

/// One PutChunks stream in progress.
struct Upload {
    node: Node,
    migration: MigrationId,
    /// Messages received, for naming a message whose id is malformed.
    messages: u64,
    /// Ids this stream already handled: a repeat is acknowledged as present.
    seen: HashSet<ChunkId>,
    /// Chunks being checked and written on the blocking pool (at most
    /// [`STAGING_CONCURRENCY`]: this bounds the chunk data held in memory).
    staging: FuturesUnordered<JoinHandle<Result<Staged>>>,
    /// Chunks in `tmp/` waiting for the batch to be made durable.
    batch: Vec<StagedChunk>,
    batch_bytes: u64,
    /// The previous batch, being made durable while this one fills.
    publishing: Option<JoinHandle<Result<BatchOutcome>>>,
    summary: PutSummary,
}

impl Upload {
    fn new(node: Node, migration: MigrationId) -> Self {
        Self {
            node,
            migration,
            messages: 0,
            seen: HashSet::new(),
            staging: FuturesUnordered::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            publishing: None,
            summary: PutSummary::default(),
        }
    }

    /// Checks one message and starts staging it.
    async fn accept(&mut self, message: ChunkUpload) -> Result<()> {
        self.messages += 1;
        let (id, checksum) = validate(&message, self.messages)?;
        self.node.touch(&self.migration, now_unix_ms());
        if !self.seen.insert(id) {
            self.summary.already_present += 1;
            return Ok(());
        }
        while self.staging.len() >= STAGING_CONCURRENCY {
            self.collect_one().await?;
        }
        // Held until the presence check is done: a chunk found present is
        // claimed first, so garbage collection cannot remove it meanwhile.
        let no_gc = self.node.inner.gc_lock.clone().read_owned().await;
        self.node.table().claim(&self.migration, [id]);
        let layout = self.node.layout().clone();
        let node_id = self.node.node_id().to_owned();
        let data = message.data;
        self.staging.push(tokio::task::spawn_blocking(move || {
            let present = chunks::is_present(&layout, &id)
                .map_err(|source| Error::io("checking", layout.chunk_path(&id), source));
            drop(no_gc);
            if chunks::checksum(&data) != checksum {
                return Err(Error::ChecksumMismatch {
                    chunk_id: id.to_hex(),
                });
            }
            if present? {
                return Ok(Staged::Present);
            }
            chunks::stage(&layout, id, &checksum, &data)
                .map(Staged::Written)
                .map_err(|source| Error::DiskFull {
                    node_id,
                    chunk_id: id.to_hex(),
                    source,
                })
        }));
        Ok(())
    }

    /// Waits for one staging job and adds its chunk to the batch, starting
    /// the batch's publication when it is full.
    async fn collect_one(&mut self) -> Result<()> {
        let Some(joined) = self.staging.next().await else {
            return Ok(());
        };
        let staged = joined.map_err(|err| Error::Task {
            task: "stage chunk",
            reason: err.to_string(),
        })??;
        match staged {
            Staged::Present => self.summary.already_present += 1,
            Staged::Written(chunk) => {
                self.batch_bytes += chunk.sealed_len;
                self.batch.push(chunk);
                if self.batch_bytes >= BATCH_BYTES || self.batch.len() >= BATCH_FILES {
                    self.start_publishing().await?;
                }
            }
        }
        Ok(())
    }

    /// Hands the batch to a publishing task, after the previous one is done.
    async fn start_publishing(&mut self) -> Result<()> {
        self.wait_for_publishing().await?;
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        if batch.is_empty() {
            return Ok(());
        }
        let node = self.node.clone();
        let migration = self.migration.clone();
        self.publishing = Some(tokio::spawn(async move {
            publish_batch(&node, &migration, batch).await
        }));
        Ok(())
    }

    async fn wait_for_publishing(&mut self) -> Result<()> {
        let Some(publishing) = self.publishing.take() else {
            return Ok(());
        };
        let outcome = publishing.await.map_err(|err| Error::Task {
            task: "publish chunks",
            reason: err.to_string(),
        })??;
        self.summary.stored += outcome.stored;
        self.summary.already_present += outcome.already_present;
        self.summary.bytes_written += outcome.bytes_written;
        Ok(())
    }

    /// The stream ended: stage what is left, publish, wait until durable.
    async fn finish(&mut self) -> Result<PutSummary> {
        while !self.staging.is_empty() {
            self.collect_one().await?;
        }
        self.start_publishing().await?;
        self.wait_for_publishing().await?;
        Ok(self.summary)
    }

    /// After a failure: waits for the jobs in flight and removes every
    /// temporary file of this stream (off the async runtime).
    async fn abandon(&mut self) {
        let mut leftovers: Vec<StagedChunk> = std::mem::take(&mut self.batch);
        while let Some(joined) = self.staging.next().await {
            if let Ok(Ok(Staged::Written(chunk))) = joined {
                leftovers.push(chunk);
            }
        }
        // A batch already publishing removes its own files if it fails.
        if let Some(publishing) = self.publishing.take() {
            let _ = publishing.await;
        }
        // Dropping a staged chunk removes its temporary file.
        let _ = tokio::task::spawn_blocking(move || drop(leftovers)).await;
    }
}

/// Checks the shape of a message: id and checksum lengths, data size.
fn validate(message: &ChunkUpload, index: u64) -> Result<(ChunkId, [u8; 32])> {
    let Some(id) = ChunkId::from_slice(&message.chunk_id) else {
        return Err(Error::BadChunk {
            chunk: format!("in message {index}"),
            reason: format!("chunk id is {} bytes, expected 32", message.chunk_id.len()),
        });
    };
    let bad = |reason: String| Error::BadChunk {
        chunk: id.to_hex(),
        reason,
    };
    let checksum: [u8; 32] = message.checksum.as_slice().try_into().map_err(|_| {
        bad(format!(
            "checksum is {} bytes, expected 32",
            message.checksum.len()
        ))
    })?;
    if message.data.is_empty() {
        return Err(bad("no data".into()));
    }
    if message.data.len() > MAX_SEALED_CHUNK_BYTES {
        return Err(bad(format!(
            "{} bytes of data, at most {MAX_SEALED_CHUNK_BYTES}",
            message.data.len()
        )));
    }
    Ok((id, checksum))
}

/// Makes a batch durable and counts what it stored (even on failure, the
/// chunks renamed into place before it are complete and counted).
async fn publish_batch(
    node: &Node,
    migration: &MigrationId,
    batch: Vec<StagedChunk>,
) -> Result<BatchOutcome> {
    let published = chunks::publish(node.layout(), batch).await;
    let file_bytes: u64 = published.stored.iter().map(|(_, len)| len).sum();
    let sealed_bytes = file_bytes - (published.stored.len() * chunks::CHECKSUM_LEN) as u64;
    node.inner
        .stored_bytes
        .fetch_add(file_bytes, std::sync::atomic::Ordering::Relaxed);
    {
        let mut table = node.table();
        if let Some(entry) = table.entries.get_mut(migration) {
            entry.written_bytes += sealed_bytes;
        }
        table.claim(migration, published.stored.iter().map(|(id, _)| *id));
    }
    if let Some((chunk, source)) = published.error {
        return Err(Error::DiskFull {
            node_id: node.node_id().to_owned(),
            chunk_id: chunk.to_hex(),
            source,
        });
    }
    Ok(BatchOutcome {
        stored: published.stored.len() as u32,
        already_present: published.already_present as u32,
        bytes_written: sealed_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(id_len: usize, checksum_len: usize, data_len: usize) -> ChunkUpload {
        ChunkUpload {
            token: None,
            chunk_id: vec![1; id_len],
            checksum: vec![2; checksum_len],
            data: Bytes::from(vec![3; data_len]),
        }
    }

    #[test]
    fn malformed_messages_are_refused_by_shape() {
        assert!(validate(&upload(32, 32, 10), 1).is_ok());
        let err = validate(&upload(31, 32, 10), 4).expect_err("short id");
        assert!(err.to_string().contains("in message 4"), "{err}");
        assert!(validate(&upload(32, 16, 10), 1).is_err());
        assert!(validate(&upload(32, 32, 0), 1).is_err());
        assert!(validate(&upload(32, 32, MAX_SEALED_CHUNK_BYTES), 1).is_ok());
        assert!(validate(&upload(32, 32, MAX_SEALED_CHUNK_BYTES + 1), 1).is_err());
    }
}
