//! The restore side: GetManifest and GetChunks of sealed or retained
//! migrations, with every byte re-checked before it is served.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use fleetmig_proto::v1::{self, CapabilityRole};
use tokio::sync::mpsc;

use crate::chunks;
use crate::error::{Error, Result};
use crate::layout::{ChunkId, MigrationId, parse_chunk_ids};
use crate::node::{Inner, Node, blocking, now_unix_ms};
use crate::record::{self, MigrationRecord};

/// Most ids one GetChunks request may ask for.
pub const MAX_GET_CHUNKS_IDS: usize = 1024;
/// Chunks a GetChunks stream reads ahead of a slow reader.
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// Restored migrations whose chunk lists stay cached in memory.
const REFERENCE_CACHE_ENTRIES: usize = 16;

/// One chunk served by GetChunks.
#[derive(Debug, Clone)]
pub struct ChunkPayload {
    /// The chunk.
    pub id: ChunkId,
    /// Its sealed bytes, checked against the stored checksum.
    pub sealed: Bytes,
}

/// Counts a restore call or stream as a client session while alive.
pub(crate) struct RestoreSession(Arc<Inner>);

impl Drop for RestoreSession {
    fn drop(&mut self) {
        self.0.restores_in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Node {
    pub(crate) fn restore_session(&self) -> RestoreSession {
        self.inner
            .restores_in_progress
            .fetch_add(1, Ordering::Relaxed);
        RestoreSession(self.inner.clone())
    }

    /// The record of a restorable migration.
    fn restorable(&self, id: &MigrationId) -> Result<MigrationRecord> {
        let table = self.table();
        let entry = table.entries.get(id).ok_or_else(|| self.unknown(id))?;
        entry.record.check_restorable()?;
        Ok(entry.record.clone())
    }

    /// GetManifest (role RESTORE): the sealed manifest of a sealed or
    /// retained migration, checked against its digest, and the digest.
    pub async fn manifest(
        &self,
        token: Option<&v1::SignedCapability>,
    ) -> Result<(Vec<u8>, String)> {
        let now = now_unix_ms();
        let id = self
            .authorize(token, &[CapabilityRole::Restore], now)
            .await?
            .migration;
        let _session = self.restore_session();
        let record = self.restorable(&id)?;
        let digest = record
            .commit
            .map(|info| info.manifest_digest)
            .unwrap_or_default();
        let manifest = self
            .read_manifest(&id, &digest)
            .await
            .inspect_err(|err| tracing::error!(error = %err, "refusing to serve a manifest"))?;
        Ok((manifest, digest))
    }

    /// The sealed manifest of committed migration `id`, checked against
    /// `digest` (`DATA_LOSS` if it does not match or cannot be read).
    pub(crate) async fn read_manifest(&self, id: &MigrationId, digest: &str) -> Result<Vec<u8>> {
        let path = self.inner.layout.manifest_path(id);
        let node_id = self.inner.node_id.clone();
        let expected = digest.to_owned();
        let id = id.clone();
        blocking("read manifest", move || {
            let corrupt = |reason: String| Error::CorruptManifest {
                migration_id: id.to_string(),
                node_id: node_id.clone(),
                reason,
            };
            let manifest = std::fs::read(&path)
                .map_err(|err| corrupt(format!("cannot read {}: {err}", path.display())))?;
            if blake3::hash(&manifest).to_hex().as_str() != expected {
                return Err(corrupt("it does not match its digest".into()));
            }
            Ok(manifest)
        })
        .await
    }

    /// GetChunks (role RESTORE): streams the asked chunks of a sealed or
    /// retained migration, each re-checked against its checksum, reading at
    /// most [`CHUNKS_IN_FLIGHT`] ahead of the reader. A corrupt chunk ends
    /// the stream with an error and is never served.
    pub async fn chunks(
        &self,
        token: Option<&v1::SignedCapability>,
        chunk_ids: &[u8],
    ) -> Result<mpsc::Receiver<Result<ChunkPayload>>> {
        let now = now_unix_ms();
        let id = self
            .authorize(token, &[CapabilityRole::Restore], now)
            .await?
            .migration;
        let session = self.restore_session();
        let ids = parse_chunk_ids(chunk_ids, MAX_GET_CHUNKS_IDS, "chunk_ids")?;
        self.restorable(&id)?;
        let references = self.references(&id).await?;
        if let Some(foreign) = ids
            .iter()
            .find(|chunk| references.binary_search(chunk).is_err())
        {
            return Err(Error::NotReferenced {
                migration_id: id.to_string(),
                chunk_id: foreign.to_hex(),
            });
        }
        let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let layout = self.inner.layout.clone();
        let node_id = self.inner.node_id.clone();
        tokio::spawn(async move {
            let _session = session;
            for chunk in ids {
                let path = layout.chunk_path(&chunk);
                let read = blocking("read chunk", move || Ok(chunks::read_verified(&path))).await;
                let item = match read {
                    Ok(Ok(sealed)) => Ok(ChunkPayload { id: chunk, sealed }),
                    Ok(Err(fault)) => {
                        let err = Error::CorruptChunk {
                            chunk_id: chunk.to_hex(),
                            migration_id: id.to_string(),
                            node_id: node_id.clone(),
                            reason: fault.to_string(),
                        };
                        tracing::error!(error = %err, "refusing to serve a chunk; run scrub");
                        Err(err)
                    }
                    Err(err) => Err(err),
                };
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    break; // the reader is gone, or the stream ends on the error
                }
            }
        });
        Ok(receiver)
    }

    /// The sorted chunk list of committed migration `id` (cached).
    pub(crate) async fn references(&self, id: &MigrationId) -> Result<Arc<Vec<ChunkId>>> {
        let cached = self
            .inner
            .references
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(id)
            .cloned();
        if let Some(references) = cached {
            return Ok(references);
        }
        let layout = self.inner.layout.clone();
        let list_id = id.clone();
        let references = Arc::new(
            blocking("read chunk list", move || {
                record::read_references(&layout, &list_id)
            })
            .await?,
        );
        let mut cache = self
            .inner
            .references
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= REFERENCE_CACHE_ENTRIES
            && let Some(evicted) = cache.keys().next().cloned()
        {
            cache.remove(&evicted);
        }
        cache.insert(id.clone(), references.clone());
        Ok(references)
    }
}
