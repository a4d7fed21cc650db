//! The capture side: Reserve, opening a capture (leases, implicit and
//! renewed reservations, the source machine), MissingChunks and Commit.
//! PutChunks lives in `upload.rs`.
//!
//! A REPLICATE token grants the same calls as CAPTURE (Reserve as well):
//! another node copying a migration here (`replicate.rs` on that node). Such
//! a copy binds no source machine, and its Commit seals the migration at
//! once: it was verified where it was captured.

use std::sync::Arc;

use fleetmig_proto::v1::{self, CapabilityRole};

use crate::chunks;
use crate::config::CommitStage;
use crate::durable;
use crate::error::{Error, Result};
use crate::layout::{ChunkId, Layout, MigrationId, parse_chunk_ids};
use crate::node::{Node, blocking, now_unix_ms};
use crate::record::{self, CommitInfo, MigrationRecord, MigrationState};

/// Lease of a reservation whose request leaves it unset: 15 minutes.
pub const DEFAULT_LEASE_MS: u64 = 15 * 60 * 1000;
/// Most ids one MissingChunks request may ask about.
pub const MAX_MISSING_QUERY_IDS: usize = 65_536;
/// A commit touching more shard directories than this syncs the filesystem
/// once instead of each directory.
const SHARD_SYNCS_BEFORE_SYNCFS: usize = 32;

/// Roles that may write a migration: its source machine, or a node
/// replicating it here.
const WRITE_ROLES: [CapabilityRole; 2] = [CapabilityRole::Capture, CapabilityRole::Replicate];
/// Roles that may reserve space: the controller for a capture, or for a copy.
const RESERVE_ROLES: [CapabilityRole; 2] = [CapabilityRole::Reserve, CapabilityRole::Replicate];

/// What a capture (or replica) token grants, once checked.
#[derive(Debug, Clone)]
pub(crate) struct CaptureGrant {
    pub(crate) migration: MigrationId,
    /// The migration is being copied from another node (REPLICATE).
    pub(crate) replica: bool,
}

/// Who writes a migration.
#[derive(Debug, Clone, Copy)]
enum Writer<'a> {
    /// Its source machine (CAPTURE token).
    Machine(&'a str),
    /// Another node copying it (REPLICATE token): no machine is bound.
    Replica,
}

impl Writer<'_> {
    fn check(self, record: &MigrationRecord) -> Result<()> {
        match self {
            Self::Machine(machine) => record.check_source(machine),
            Self::Replica => Ok(()),
        }
    }

    fn capturing(self, record: &MigrationRecord, now: i64) -> Result<MigrationRecord> {
        match self {
            Self::Machine(machine) => record.capturing(machine, now),
            Self::Replica => record.replica_capturing(now),
        }
    }
}

/// Why a capture call opens the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapturePurpose {
    /// MissingChunks or PutChunks: refused once committed.
    Write,
    /// Commit: a committed migration is answered by the commit itself.
    Commit,
}

/// Answer to Reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Bytes reserved.
    pub reserved_bytes: u64,
    /// When the reservation lapses without activity.
    pub expires_unix_ms: i64,
}

/// What Commit is asked to record.
#[derive(Debug, Clone)]
pub struct CommitInput {
    /// The sealed manifest.
    pub manifest: Vec<u8>,
    /// Referenced chunk ids, 32 bytes each, concatenated.
    pub chunk_ids: Vec<u8>,
    /// Plain BLAKE3 of the manifest, hex.
    pub manifest_digest: String,
    /// Plaintext bytes of the capture.
    pub logical_bytes: u64,
}

/// Answer to Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitSummary {
    /// Sealed bytes referenced (shared chunks counted).
    pub referenced_bytes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
}

impl Node {
    /// Reserve (role RESERVE or REPLICATE): promises `bytes` to the token's
    /// migration for `lease_ms` (default 15 minutes). Idempotent; renews the
    /// lease. A committed migration has nothing left to reserve
    /// (`FAILED_PRECONDITION`).
    pub async fn reserve(
        &self,
        token: Option<&v1::SignedCapability>,
        bytes: u64,
        lease_ms: u32,
    ) -> Result<Reservation> {
        let now = now_unix_ms();
        let id = self.authorize(token, &RESERVE_ROLES, now).await?.migration;
        let lease_ms = if lease_ms == 0 {
            DEFAULT_LEASE_MS
        } else {
            u64::from(lease_ms)
        };
        let _transition = self.lock_migration(&id).await;
        let space = self.inner.probe.space().await?;
        let next = {
            let table = self.table();
            let next = match table.entries.get(&id) {
                Some(entry) => entry.record.reserved_again(bytes, lease_ms, now)?,
                None => MigrationRecord::reservation(&id, bytes, lease_ms, now),
            };
            self.admit(&table, &id, bytes, space, now)?;
            next
        };
        let next = self.persist(next).await?;
        let expires_unix_ms = next.lease_expires_unix_ms;
        self.table().apply(next, &id, now);
        tracing::info!(migration_id = %id, bytes, lease_ms, "reserved");
        Ok(Reservation {
            reserved_bytes: bytes,
            expires_unix_ms,
        })
    }

    /// Checks a CAPTURE (or REPLICATE) token and makes sure its migration
    /// is capturing: renews the lease, or starts the capture (from a
    /// reservation, an implicit empty one, or re-reserving an expired one if
    /// there is room).
    async fn open_capture(
        &self,
        token: Option<&v1::SignedCapability>,
        now: i64,
        purpose: CapturePurpose,
    ) -> Result<CaptureGrant> {
        let grant = self.authorize(token, &WRITE_ROLES, now).await?;
        let id = grant.migration;
        let replica = grant.role == CapabilityRole::Replicate;
        let writer = if replica {
            Writer::Replica
        } else {
            Writer::Machine(&grant.claims.machine_id)
        };
        let granted = CaptureGrant {
            migration: id.clone(),
            replica,
        };
        if self.capture_is_live(&id, writer, now, purpose)? {
            return Ok(granted);
        }
        let _transition = self.lock_migration(&id).await;
        if self.capture_is_live(&id, writer, now, purpose)? {
            return Ok(granted);
        }
        let space = self.inner.probe.space().await?;
        let next = {
            let table = self.table();
            match table.entries.get(&id) {
                None => {
                    self.admit(&table, &id, 0, space, now)?;
                    let reserved = MigrationRecord::reservation(&id, 0, DEFAULT_LEASE_MS, now);
                    writer.capturing(&reserved, now)?
                }
                Some(entry) => {
                    let record = &entry.record;
                    if record.state == MigrationState::Expired || record.is_lapsed(now) {
                        writer.check(record)?;
                        self.admit(&table, &id, record.reserved_bytes, space, now)?;
                    }
                    writer.capturing(record, now)?
                }
            }
        };
        let next = self.persist(next).await?;
        match writer {
            Writer::Machine(machine) => {
                tracing::info!(migration_id = %id, machine_id = %machine, "capture started")
            }
            Writer::Replica => tracing::info!(migration_id = %id, "replica copy started"),
        }
        self.table().apply(next, &id, now);
        Ok(granted)
    }

    /// The fast path of [`Self::open_capture`]: `Ok(true)` when nothing
    /// needs persisting (the lease is renewed in memory).
    fn capture_is_live(
        &self,
        id: &MigrationId,
        writer: Writer<'_>,
        now: i64,
        purpose: CapturePurpose,
    ) -> Result<bool> {
        let mut table = self.table();
        let Some(entry) = table.entries.get_mut(id) else {
            return Ok(false);
        };
        writer.check(&entry.record)?;
        if purpose == CapturePurpose::Commit && entry.record.state.is_committed() {
            return Ok(true);
        }
        entry.record.check_writable()?;
        if entry.record.state == MigrationState::Capturing && !entry.record.is_lapsed(now) {
            entry.touch(now);
            return Ok(true);
        }
        Ok(false)
    }

    /// Notes capture activity (renews the lease in memory).
    pub(crate) fn touch(&self, id: &MigrationId, now: i64) {
        if let Some(entry) = self.table().entries.get_mut(id) {
            entry.touch(now);
        }
    }

    /// MissingChunks (role CAPTURE or REPLICATE): indexes of the ids the node lacks. The
    /// ids it holds are claimed for the capture (kept from garbage
    /// collection until it commits or expires).
    pub async fn missing_chunks(
        &self,
        token: Option<&v1::SignedCapability>,
        chunk_ids: &[u8],
    ) -> Result<Vec<u32>> {
        let now = now_unix_ms();
        let ids = parse_chunk_ids(chunk_ids, MAX_MISSING_QUERY_IDS, "chunk_ids")?;
        let grant = self.open_capture(token, now, CapturePurpose::Write).await?;
        let _no_gc = self.inner.gc_lock.read().await;
        let layout = self.inner.layout.clone();
        let ids = Arc::new(ids);
        let present = present_in_parallel(layout, ids.clone()).await?;
        self.table().claim(
            &grant.migration,
            ids.iter()
                .zip(&present)
                .filter(|(_, p)| **p)
                .map(|(id, _)| *id),
        );
        Ok(present
            .iter()
            .enumerate()
            .filter(|(_, present)| !**present)
            .map(|(index, _)| index as u32)
            .collect())
    }

    /// Opens the capture for a PutChunks stream (used by `upload.rs`).
    pub(crate) async fn open_upload(
        &self,
        token: Option<&v1::SignedCapability>,
    ) -> Result<CaptureGrant> {
        self.open_capture(token, now_unix_ms(), CapturePurpose::Write)
            .await
    }

    /// Commit (role CAPTURE or REPLICATE): checks every referenced chunk is
    /// present, stores the manifest and the chunk list durably, then the
    /// record in state committed (that rename is the commit point); under
    /// REPLICATE the record is sealed instead. Idempotent for the same
    /// manifest digest (a REPLICATE commit of a committed migration seals
    /// it).
    pub async fn commit(
        &self,
        token: Option<&v1::SignedCapability>,
        input: CommitInput,
    ) -> Result<CommitSummary> {
        let now = now_unix_ms();
        let mut ids = parse_chunk_ids(&input.chunk_ids, usize::MAX, "chunk_ids")?;
        let grant = self
            .open_capture(token, now, CapturePurpose::Commit)
            .await?;
        let id = grant.migration;
        let requested_digest = input.manifest_digest.trim().to_ascii_lowercase();
        let _transition = self.lock_migration(&id).await;
        if let Some(summary) = self.already_committed(&id, &requested_digest)? {
            if grant.replica {
                self.seal_replica(&id, now).await?;
            }
            return Ok(summary);
        }

        let manifest = Arc::new(input.manifest);
        let hashed = manifest.clone();
        let actual = blocking("hash manifest", move || {
            Ok(blake3::hash(&hashed).to_hex().to_string())
        })
        .await?;
        if actual != requested_digest {
            return Err(Error::ManifestDigestMismatch {
                migration_id: id.to_string(),
                digest: input.manifest_digest,
                actual,
            });
        }
        ids.sort_unstable();
        ids.dedup();

        // No chunk may be garbage-collected between this check and the
        // record naming it.
        let _no_gc = self.inner.gc_lock.read().await;
        let layout = self.inner.layout.clone();
        let ids = Arc::new(ids);
        let referenced_bytes = check_and_settle(layout.clone(), ids.clone()).await?;

        let record_id = id.clone();
        let stored_manifest = manifest.clone();
        let list = ids.clone();
        blocking("write manifest", move || {
            let path = layout.manifest_path(&record_id);
            durable::write_synced_then_rename(&path, &stored_manifest)
                .map_err(|source| Error::io("writing manifest", path, source))?;
            record::write_references(&layout, &record_id, &list)?;
            durable::sync_dir(&layout.migrations_dir())
                .map_err(|source| Error::io("syncing", layout.migrations_dir(), source))
        })
        .await?;
        self.fault_pause(&id, CommitStage::BeforeRecordRename).await;

        let info = CommitInfo {
            manifest_digest: actual,
            manifest_bytes: manifest.len() as u64,
            chunks: ids.len() as u64,
            referenced_bytes,
            logical_bytes: input.logical_bytes,
            committed_unix_ms: now,
        };
        let next = {
            let table = self.table();
            let entry = table.entries.get(&id).ok_or_else(|| self.unknown(&id))?;
            if grant.replica {
                entry.record.replica_committed(info, now)?
            } else {
                entry.record.committed(info, now)?
            }
        };
        let next = self.persist(next).await?;
        let state = next.state;
        self.table().apply(next, &id, now);
        tracing::info!(
            migration_id = %id,
            chunks = ids.len(),
            referenced_bytes,
            logical_bytes = input.logical_bytes,
            state = state.name(),
            "committed"
        );
        self.fault_pause(&id, CommitStage::AfterRecordRename).await;
        Ok(CommitSummary {
            referenced_bytes,
            chunks: ids.len() as u64,
        })
    }

    /// Test-only fault injection (`--fault-commit-pause-ms`): sleeps at
    /// `stage` of a commit, holding its locks, so a crash test can kill the
    /// node there. Nothing happens unless the flag is set.
    async fn fault_pause(&self, id: &MigrationId, stage: CommitStage) {
        if let Some(pause) = self.inner.settings.commit_pause(stage) {
            tracing::warn!(
                migration_id = %id,
                stage = stage.name(),
                pause_ms = pause.as_millis() as u64,
                "commit paused (fault injection)"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// A REPLICATE commit of a migration committed here but not released:
    /// sealed, like a fresh replica (the caller holds the migration lock).
    async fn seal_replica(&self, id: &MigrationId, now: i64) -> Result<()> {
        let next = {
            let table = self.table();
            let entry = table.entries.get(id).ok_or_else(|| self.unknown(id))?;
            entry.record.sealed(now)?
        };
        if let Some(next) = next {
            let next = self.persist(next).await?;
            self.table().apply(next, id, now);
            tracing::info!(migration_id = %id, "sealed by a replica commit");
        }
        Ok(())
    }

    /// The answer to a repeated Commit, or an error if the migration was
    /// committed with another manifest; `None` if it is not committed.
    fn already_committed(&self, id: &MigrationId, digest: &str) -> Result<Option<CommitSummary>> {
        let table = self.table();
        let Some(entry) = table.entries.get(id) else {
            return Err(self.unknown(id));
        };
        let Some(info) = entry
            .record
            .commit
            .as_ref()
            .filter(|_| entry.record.state.is_committed())
        else {
            return Ok(None);
        };
        if info.manifest_digest != digest {
            return Err(Error::CommittedDifferently {
                migration_id: id.to_string(),
                committed: info.manifest_digest.clone(),
                requested: digest.to_owned(),
            });
        }
        Ok(Some(CommitSummary {
            referenced_bytes: info.referenced_bytes,
            chunks: info.chunks,
        }))
    }
}

/// Whether each of `ids` has a chunk file (large queries in parallel).
async fn present_in_parallel(layout: Layout, ids: Arc<Vec<ChunkId>>) -> Result<Vec<bool>> {
    const PER_TASK: usize = 4096;
    let tasks: Vec<_> = (0..ids.len().div_ceil(PER_TASK))
        .map(|part| {
            let layout = layout.clone();
            let ids = ids.clone();
            blocking("check chunks", move || {
                let range = part * PER_TASK..((part + 1) * PER_TASK).min(ids.len());
                ids[range]
                    .iter()
                    .map(|id| {
                        chunks::is_present(&layout, id)
                            .map_err(|source| Error::io("checking", layout.chunk_path(id), source))
                    })
                    .collect::<Result<Vec<bool>>>()
            })
        })
        .collect();
    let mut present = Vec::with_capacity(ids.len());
    for part in futures::future::join_all(tasks).await {
        present.extend(part?);
    }
    Ok(present)
}

/// For Commit: every id must have a chunk file; their shard directories are
/// synced (a chunk another stream just renamed may not be durable yet).
/// Returns the sealed bytes referenced.
async fn check_and_settle(layout: Layout, ids: Arc<Vec<ChunkId>>) -> Result<u64> {
    let sizes_layout = layout.clone();
    let sizes_ids = ids.clone();
    let (referenced_bytes, missing) = blocking("check chunks", move || {
        let mut bytes = 0u64;
        let mut missing = Vec::new();
        for id in sizes_ids.iter() {
            match chunks::file_len(&sizes_layout, id)
                .map_err(|source| Error::io("checking", sizes_layout.chunk_path(id), source))?
            {
                Some(len) => bytes += len.saturating_sub(chunks::CHECKSUM_LEN as u64),
                None => missing.push(*id),
            }
        }
        Ok((bytes, missing))
    })
    .await?;
    if let Some(example) = missing.first() {
        return Err(Error::MissingReferencedChunks {
            count: missing.len(),
            example: example.to_hex(),
        });
    }
    let mut shards: Vec<_> = ids.iter().map(|id| layout.shard_dir(id)).collect();
    shards.sort();
    shards.dedup();
    if shards.len() > SHARD_SYNCS_BEFORE_SYNCFS {
        let chunks_dir = layout.chunks_dir();
        return blocking("sync chunks", move || {
            durable::sync_filesystem(&chunks_dir)
                .map_err(|source| Error::io("syncing", chunks_dir, source))
        })
        .await
        .map(|()| referenced_bytes);
    }
    durable::in_parallel(shards.clone(), |dir: &std::path::PathBuf| {
        durable::sync_dir(dir)
    })
    .await
    .map_err(|(index, source)| Error::io("syncing", shards[index].clone(), source))?;
    Ok(referenced_bytes)
}
