//! The sweeper: expires captures whose lease ran out, deletes migrations
//! whose retention is over, and garbage-collects chunk files no migration
//! needs any more.
//!
//! Garbage-collection safety: a chunk file is deleted only if
//! - no committed, sealed or retained migration references it,
//! - no open capture claims it (was told it is present, or uploaded it),
//! - it is older than the start of the oldest open capture (an upload in
//!   progress is never newer-than-checked), and
//! - no open capture lost its claims in a restart (then nothing is deleted
//!   until those captures commit or expire).
//!
//! Deciding and deleting happen under the write side of the node's GC lock,
//! which every presence check a capture relies on holds for reading.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::chunks::{self, ChunkFile};
use crate::error::{Error, Result};
use crate::layout::{ChunkId, MigrationId};
use crate::migrations::OpenCaptures;
use crate::node::{Node, blocking, now_unix_ms};
use crate::record;

/// Temporary files older than this are leftovers of abandoned streams.
const STALE_TEMP_MS: i64 = 60 * 60 * 1000;
/// Chunk files modified this close before the oldest open capture started
/// are kept too (timestamps of some filesystems are coarse).
const RECENT_SLACK_MS: i64 = 2_000;
/// Attempts at a consistent garbage-collection pass while commits happen.
const GC_ATTEMPTS: usize = 3;

/// What one sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Migrations whose lease ran out.
    pub expired: Vec<String>,
    /// Migrations deleted (retention over, or expired long enough).
    pub deleted: Vec<String>,
    /// Garbage collection.
    pub gc: GcReport,
    /// Leftover temporary files removed.
    pub stale_temp_files: usize,
}

impl SweepReport {
    /// Whether anything changed.
    pub fn did_something(&self) -> bool {
        !self.expired.is_empty()
            || !self.deleted.is_empty()
            || self.gc.deleted_chunks > 0
            || self.stale_temp_files > 0
    }
}

/// What one garbage-collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunk files looked at.
    pub chunks_examined: usize,
    /// Chunk files deleted.
    pub deleted_chunks: usize,
    /// Bytes of the deleted files.
    pub deleted_bytes: u64,
    /// Unreferenced chunks kept because an open capture claims them.
    pub kept_claimed: usize,
    /// Unreferenced chunks kept because they may belong to a capture in progress.
    pub kept_recent: usize,
    /// Why the pass deleted nothing on purpose, if it did not run.
    pub skipped: Option<String>,
}

/// Why a chunk file is kept or collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A committed, sealed or retained migration references it.
    Referenced,
    /// An open capture claims it.
    Claimed,
    /// Modified since the oldest open capture started.
    Recent,
    /// Nothing needs it.
    Collect,
}

/// The garbage-collection rule for one chunk file.
pub fn judge(file: &ChunkFile, referenced: &HashSet<ChunkId>, open: &OpenCaptures) -> Verdict {
    if referenced.contains(&file.id) {
        return Verdict::Referenced;
    }
    if open.claimed.contains(&file.id) {
        return Verdict::Claimed;
    }
    if let Some(start) = open.oldest_start_unix_ms
        && file.modified_unix_ms >= start.saturating_sub(RECENT_SLACK_MS)
    {
        return Verdict::Recent;
    }
    Verdict::Collect
}

impl Node {
    /// One sweep: expire, delete, collect, clean `tmp/`.
    pub async fn sweep(&self, now: i64) -> Result<SweepReport> {
        let expired = self.expire_lapsed(now).await?;
        let deleted = self.delete_due(now).await?;
        let gc = self.gc().await?;
        let tmp = self.layout().tmp_dir();
        let stale_temp_files = blocking("clean tmp", move || {
            remove_stale_temporaries(&tmp, now).map_err(|source| Error::io("cleaning", tmp, source))
        })
        .await?;
        Ok(SweepReport {
            expired: expired.iter().map(ToString::to_string).collect(),
            deleted: deleted.iter().map(ToString::to_string).collect(),
            gc,
            stale_temp_files,
        })
    }

    /// Marks reservations and captures whose lease ran out as expired
    /// (their reserved bytes are free again).
    pub async fn expire_lapsed(&self, now: i64) -> Result<Vec<MigrationId>> {
        let lapsed: Vec<MigrationId> = self
            .table()
            .entries
            .iter()
            .filter(|(_, entry)| entry.record.is_lapsed(now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut expired = Vec::new();
        for id in lapsed {
            let _transition = self.lock_migration(&id).await;
            let next = {
                let table = self.table();
                match table.entries.get(&id) {
                    Some(entry) if entry.record.is_lapsed(now) => entry
                        .record
                        .expired(now, self.inner.settings.retention_ms)?,
                    _ => continue, // renewed meanwhile
                }
            };
            let next = self.persist(next).await?;
            self.table().apply(next, &id, now);
            tracing::info!(migration_id = %id, "lease ran out before a commit; capture expired");
            expired.push(id);
        }
        Ok(expired)
    }

    /// Deletes retained migrations past their retention and expired ones
    /// past theirs: record first, then manifest and chunk list.
    pub async fn delete_due(&self, now: i64) -> Result<Vec<MigrationId>> {
        let due: Vec<MigrationId> = self
            .table()
            .entries
            .iter()
            .filter(|(_, entry)| entry.record.is_due_for_deletion(now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut deleted = Vec::new();
        for id in due {
            let _transition = self.lock_migration(&id).await;
            let still_due = self
                .table()
                .entries
                .get(&id)
                .is_some_and(|entry| entry.record.is_due_for_deletion(now));
            if !still_due {
                continue;
            }
            let layout = self.layout().clone();
            let files_id = id.clone();
            blocking("delete migration", move || {
                record::remove(&layout, &files_id)
            })
            .await?;
            self.table().remove(&id);
            self.forget_migration(&id);
            tracing::info!(migration_id = %id, "migration deleted");
            deleted.push(id);
        }
        Ok(deleted)
    }

    /// Garbage-collects chunk files nothing needs (see the module docs).
    pub async fn gc(&self) -> Result<GcReport> {
        for _ in 0..GC_ATTEMPTS {
            let (generation, committed) = {
                let table = self.table();
                let committed: Vec<MigrationId> = table
                    .entries
                    .iter()
                    .filter(|(_, entry)| entry.record.state.is_committed())
                    .map(|(id, _)| id.clone())
                    .collect();
                (table.commit_generation, committed)
            };
            let layout = self.layout().clone();
            let node = self.clone();
            let (referenced, files) = blocking("garbage collection", move || {
                let mut referenced = HashSet::new();
                for id in &committed {
                    match record::read_references(&layout, id) {
                        Ok(ids) => referenced.extend(ids),
                        // Deleted meanwhile: its references no longer count.
                        Err(_) if node.migration_state(id.as_str()).is_none() => {}
                        // Never collect without knowing what a migration needs.
                        Err(err) => return Err(err),
                    }
                }
                let (files, _strays) = chunks::walk(&layout)
                    .map_err(|source| Error::io("listing", layout.chunks_dir(), source))?;
                Ok((referenced, files))
            })
            .await?;
            let mut report = GcReport {
                chunks_examined: files.len(),
                ..GcReport::default()
            };
            let unreferenced: Vec<ChunkFile> = files
                .into_iter()
                .filter(|file| !referenced.contains(&file.id))
                .collect();
            if unreferenced.is_empty() {
                return Ok(report);
            }

            let _exclusive = self.inner.gc_lock.write().await;
            let open = {
                let table = self.table();
                if table.commit_generation != generation {
                    continue; // a commit added references meanwhile: look again
                }
                table.open_captures()
            };
            if let Some(migration) = open.incomplete {
                report.skipped = Some(format!(
                    "capture {migration} was open when the node restarted; its claims are unknown until it commits or expires"
                ));
                tracing::info!(
                    reason = report.skipped.as_deref(),
                    "garbage collection skipped"
                );
                return Ok(report);
            }
            let mut doomed = Vec::new();
            for file in unreferenced {
                match judge(&file, &referenced, &open) {
                    Verdict::Collect => doomed.push(file),
                    Verdict::Claimed => report.kept_claimed += 1,
                    Verdict::Recent => report.kept_recent += 1,
                    Verdict::Referenced => {}
                }
            }
            let (deleted_chunks, deleted_bytes) =
                blocking("garbage collection", move || Ok(delete_files(&doomed))).await?;
            report.deleted_chunks = deleted_chunks;
            report.deleted_bytes = deleted_bytes;
            self.sub_stored_bytes(deleted_bytes);
            if deleted_chunks > 0 || report.kept_claimed > 0 || report.kept_recent > 0 {
                tracing::info!(
                    deleted_chunks,
                    deleted_bytes,
                    kept_claimed = report.kept_claimed,
                    kept_recent = report.kept_recent,
                    "garbage collection"
                );
            }
            return Ok(report);
        }
        Ok(GcReport {
            skipped: Some("commits kept changing the references; trying again next sweep".into()),
            ..GcReport::default()
        })
    }
}

/// Deletes `files`; returns how many and their bytes (already-gone files
/// are not counted).
fn delete_files(files: &[ChunkFile]) -> (usize, u64) {
    let mut count = 0;
    let mut bytes = 0;
    for file in files {
        match std::fs::remove_file(&file.path) {
            Ok(()) => {
                count += 1;
                bytes += file.len;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %file.path.display(), error = %err, "cannot delete an unreferenced chunk");
            }
        }
    }
    (count, bytes)
}

fn remove_stale_temporaries(tmp: &std::path::Path, now: i64) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        let modified = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        if now - modified > STALE_TEMP_MS && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sweeps every `interval` (and when a release asks for it) until
/// `shutdown` is cancelled. Failures are logged; the next sweep retries.
pub async fn run(node: Node, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = node.inner.sweep_soon.notified() => {}
        }
        match node.sweep(now_unix_ms()).await {
            Ok(report) if report.did_something() => tracing::info!(
                expired = ?report.expired,
                deleted = ?report.deleted,
                deleted_chunks = report.gc.deleted_chunks,
                deleted_bytes = report.gc.deleted_bytes,
                stale_temp_files = report.stale_temp_files,
                "sweep"
            ),
            Ok(report) => {
                tracing::debug!(examined = report.gc.chunks_examined, "sweep: nothing to do")
            }
            Err(err) => tracing::warn!(error = %err, "sweep failed; retrying next interval"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8, modified_unix_ms: i64) -> ChunkFile {
        ChunkFile {
            id: ChunkId([n; 32]),
            path: std::path::PathBuf::from(format!("/x/{n}")),
            len: 10,
            modified_unix_ms,
        }
    }

    #[test]
    fn only_unreferenced_unclaimed_old_chunks_are_collected() {
        let referenced: HashSet<ChunkId> = [ChunkId([1; 32])].into();
        let open = OpenCaptures {
            claimed: [ChunkId([2; 32])].into(),
            oldest_start_unix_ms: Some(100_000),
            incomplete: None,
        };
        assert_eq!(judge(&file(1, 0), &referenced, &open), Verdict::Referenced);
        assert_eq!(judge(&file(2, 0), &referenced, &open), Verdict::Claimed);
        assert_eq!(
            judge(&file(3, 100_000), &referenced, &open),
            Verdict::Recent
        );
        assert_eq!(
            judge(&file(3, 100_000 - RECENT_SLACK_MS), &referenced, &open),
            Verdict::Recent,
            "coarse timestamps are given slack"
        );
        assert_eq!(
            judge(&file(3, 50_000), &referenced, &open),
            Verdict::Collect
        );
        let none_open = OpenCaptures::default();
        assert_eq!(
            judge(&file(3, i64::MAX), &referenced, &none_open),
            Verdict::Collect,
            "without open captures age does not matter"
        );
    }
}
