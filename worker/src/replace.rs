//! Running a replace job: the old machine captures its user state to a storage node, the new
//! machine restores it from there. One job, two workers; which side this worker is follows
//! from the phase the job is in when assigned:
//!
//! - **source** (`ASSIGNED`, `CAPTURING`): packed capture to the primary node (the metadata
//!   cache in the agent state dir makes a resumed capture cheap, and the node is asked which
//!   chunks it lacks, so nothing it holds is sent again), `Commit`, `Release` (capture side),
//!   then the copies to the replica nodes the transfer names ([`replicate`]), then `CAPTURED`
//!   with the summary and the replicas;
//! - **destination** (`CAPTURED`, `RESTORING`, `VERIFYING`): restore into the machine root from
//!   the first node that serves the capture, the primary then the replicas ([`sources`];
//!   resumable: files already in place are skipped, also when another node takes over), verify
//!   every file, `Release` on every node (restore side: the retention clock starts), then
//!   `DONE`.
//!
//! Milestones go to the machine's journal (`capture.committed`, `capture.released`,
//! `capture.replicated`, `restore.source`, `restore.done`, `restore.verified`,
//! `restore.released`) so a worker that crashed between a node call and the controller's
//! acknowledgement resumes without redoing or losing anything.
//! `capture.committed` also carries how the upload went ([`UploadFigures`]: chunks sealed,
//! stored, found on the node, sent though the node held them, re-sent after a broken stream).

mod replicate;
mod sources;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use fleetmig_format::{FleetKey, MigrationKey};
use fleetmig_proto::v1::{self, JobPhase};
use serde::{Deserialize, Serialize};

use crate::agent::JobContext;
use crate::error::{Error, Result};
use crate::packed::node_store::RetryPolicy;
use crate::packed::{self, ChunkStore, Keys, NodeStore};
use crate::refresh::{blocking, first_mismatches};
use crate::telemetry::WatchSink;

/// File name of the metadata cache in the agent state dir.
pub const CACHE_FILE: &str = "packcache.bin";

/// How long a replace job keeps trying a storage node before it moves on or gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeTimings {
    /// Retrying `Replicate` to one replica node; then the capture fails (retryable), naming
    /// the node.
    pub replicate_give_up: Duration,
    /// Retrying one restore source when another one follows; then the restore moves on to it.
    pub source_give_up: Duration,
    /// Retrying `Release` on one node after a verified restore; then it is logged and skipped.
    pub release_give_up: Duration,
}

impl Default for NodeTimings {
    fn default() -> Self {
        Self {
            replicate_give_up: Duration::from_secs(120),
            source_give_up: Duration::from_secs(20),
            release_give_up: Duration::from_secs(20),
        }
    }
}

/// What the source remembers of its committed capture: the detail (JSON) of its
/// `capture.committed` and `capture.released` journal entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CaptureRecord {
    users: u32,
    files: u64,
    directories: u64,
    bytes: u64,
    excluded_files: u64,
    manifest_digest: String,
    store_location: String,
    /// How the chunks got to the node (all zero in the records of workers that predate it, so a
    /// worker upgraded mid-job still finds its committed capture).
    #[serde(default)]
    upload: UploadFigures,
}

/// The upload figures of a committed capture, as operators read them in the journal entry
/// `capture.committed` (key `upload`). Chunk counts are of sealed chunks, the node's unit of
/// storage and dedup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadFigures {
    /// Distinct chunks the committed manifest references.
    pub chunks_referenced: u64,
    /// Distinct chunks the node already held when asked (content it had from this or another
    /// machine): neither sealed nor sent.
    pub chunks_found_on_node: u64,
    /// Chunks sealed and sent because the node lacked them when asked (each at most once).
    pub chunks_sealed: u64,
    /// Bytes of those sealed chunks (after compression and encryption).
    pub sealed_bytes: u64,
    /// Chunks the node acknowledged writing. Chunks it made durable from an upload stream that
    /// then broke are not acknowledged, so are not counted here.
    pub chunks_stored: u64,
    /// Chunks sent that the node already held when they arrived (acknowledged, not written
    /// again): another capture stored the same content meanwhile, or a re-send repeated a
    /// chunk the node had kept.
    pub chunks_sent_already_held: u64,
    /// Chunks sent again after an upload stream broke (only those the node then lacked).
    pub chunks_resent: u64,
}

impl UploadFigures {
    /// The figures of a packed capture report.
    pub fn of(report: &packed::CaptureReport) -> Self {
        let stats = &report.stats;
        Self {
            chunks_referenced: report.chunks,
            chunks_found_on_node: stats.chunks_present,
            chunks_sealed: stats.chunks_sealed,
            sealed_bytes: stats.sealed_bytes,
            chunks_stored: stats.chunks_stored,
            chunks_sent_already_held: stats.chunks_already_present,
            chunks_resent: stats.chunks_resent,
        }
    }
}

impl CaptureRecord {
    fn summary(&self, replica_node_ids: Vec<String>) -> v1::CaptureSummary {
        v1::CaptureSummary {
            users: self.users,
            files: self.files,
            directories: self.directories,
            bytes: self.bytes,
            excluded_files: self.excluded_files,
            manifest_digest: self.manifest_digest.clone(),
            store_location: self.store_location.clone(),
            replica_node_ids,
        }
    }
}

/// What the destination remembers of its verified restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RestoreRecord {
    files: u64,
    directories: u64,
    bytes: u64,
}

impl RestoreRecord {
    fn summary(&self) -> v1::RestoreSummary {
        v1::RestoreSummary {
            files: self.files,
            directories: self.directories,
            bytes: self.bytes,
            mismatched_files: 0,
        }
    }
}

/// Runs the replace job of `ctx` from its current phase to the end of this worker's side.
pub async fn run(ctx: &JobContext) -> Result<()> {
    let transfer = ctx.replace.as_ref().ok_or_else(|| Error::BadAssignment {
        job_id: ctx.job_id.clone(),
        reason: "a replace job without its storage node, capability and keys".to_owned(),
    })?;
    let keys = keys_of(ctx, transfer)?;
    check_replicas(ctx, transfer)?;
    match ctx.phase {
        JobPhase::Assigned | JobPhase::Capturing => source(ctx, transfer, &keys).await,
        JobPhase::Captured | JobPhase::Restoring | JobPhase::Verifying => {
            destination(ctx, transfer, &keys).await
        }
        phase => Err(Error::BadAssignment {
            job_id: ctx.job_id.clone(),
            reason: format!(
                "cannot resume a replace in phase {}",
                fleetmig_proto::phase_name(phase)
            ),
        }),
    }
}

/// The job's keys, checked.
fn keys_of(ctx: &JobContext, transfer: &v1::ReplaceTransfer) -> Result<Keys> {
    let key = |bytes: &[u8], what: &str| -> Result<[u8; 32]> {
        <[u8; 32]>::try_from(bytes).map_err(|_| Error::BadAssignment {
            job_id: ctx.job_id.clone(),
            reason: format!("the {what} key is {} bytes, not 32", bytes.len()),
        })
    };
    Ok(Keys {
        fleet: FleetKey::from_bytes(key(&transfer.fleet_key, "fleet")?),
        migration: MigrationKey::from_bytes(key(&transfer.migration_key, "migration")?),
    })
}

/// Refuses replica nodes the job cannot use: without an id, endpoint or capability, the
/// primary again, or one named twice.
fn check_replicas(ctx: &JobContext, transfer: &v1::ReplaceTransfer) -> Result<()> {
    let mut seen = vec![transfer.node_id.as_str()];
    for replica in &transfer.replicas {
        let problem = if replica.node_id.is_empty() || replica.node_endpoint.is_empty() {
            Some("has no node id or endpoint")
        } else if replica.capability.is_none() {
            Some("carries no capability token")
        } else if seen.contains(&replica.node_id.as_str()) {
            Some("is named twice (or is the primary node)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::BadAssignment {
                job_id: ctx.job_id.clone(),
                reason: format!("replica node {:?} {problem}", replica.node_id),
            });
        }
        seen.push(&replica.node_id);
    }
    Ok(())
}

/// The node store of this job's primary node, for the blocking pipeline.
fn node_store(ctx: &JobContext, transfer: &v1::ReplaceTransfer) -> Result<NodeStore> {
    NodeStore::for_transfer(
        transfer,
        tokio::runtime::Handle::current(),
        ctx.shutdown.clone(),
    )
}

/// The default retry policy, giving up after `give_up_after`.
fn giving_up_after(give_up_after: Duration) -> RetryPolicy {
    RetryPolicy {
        give_up_after,
        ..RetryPolicy::default()
    }
}

/// The details of every journal entry `event` of this job, oldest first (unparsable ones
/// skipped).
fn recorded_all<T: for<'de> Deserialize<'de>>(ctx: &JobContext, event: &str) -> Result<Vec<T>> {
    Ok(ctx
        .state
        .journal()?
        .into_iter()
        .filter(|entry| entry.job_id == ctx.job_id && entry.event == event)
        .filter_map(|entry| serde_json::from_str(&entry.detail).ok())
        .collect())
}

/// The detail of this job's latest journal entry `event`, parsed.
fn recorded<T: for<'de> Deserialize<'de>>(ctx: &JobContext, event: &str) -> Result<Option<T>> {
    Ok(ctx
        .state
        .journal()?
        .into_iter()
        .rev()
        .find(|entry| entry.job_id == ctx.job_id && entry.event == event)
        .and_then(|entry| serde_json::from_str(&entry.detail).ok()))
}

fn detail<T: Serialize>(record: &T) -> String {
    serde_json::to_string(record).expect("records serialize")
}

async fn source(ctx: &JobContext, transfer: &v1::ReplaceTransfer, keys: &Keys) -> Result<()> {
    if ctx.phase == JobPhase::Assigned {
        ctx.enter(JobPhase::Capturing).await?;
    }
    ctx.set_phase(JobPhase::Capturing);
    let record = match recorded::<CaptureRecord>(ctx, "capture.released")? {
        Some(record) => {
            tracing::info!(job_id = %ctx.job_id, "capture already committed and released; reporting it again");
            record
        }
        None => {
            let committed = recorded::<CaptureRecord>(ctx, "capture.committed")?;
            let record = match committed {
                Some(record) => match release(ctx, transfer).await {
                    Ok(()) => record,
                    Err(error @ Error::NodeRefused { .. }) => {
                        tracing::warn!(job_id = %ctx.job_id, %error, "the node does not know the committed capture any more; capturing again");
                        let record = capture(ctx, transfer, keys).await?;
                        release(ctx, transfer).await?;
                        record
                    }
                    Err(error) => return Err(error),
                },
                None => {
                    let record = capture(ctx, transfer, keys).await?;
                    release(ctx, transfer).await?;
                    record
                }
            };
            ctx.record("capture.released", detail(&record)).await?;
            record
        }
    };
    let replicas = replicate::replicate(ctx, transfer, &record.manifest_digest).await?;
    ctx.report(v1::PhaseReport {
        phase: JobPhase::Captured.into(),
        captured: Some(record.summary(replicas)),
        ..ctx.report_header()
    })
    .await?;
    Ok(())
}

/// Captures into the node and commits; journals `capture.committed`.
async fn capture(
    ctx: &JobContext,
    transfer: &v1::ReplaceTransfer,
    keys: &Keys,
) -> Result<CaptureRecord> {
    ctx.record("capture.start", format!("node:{}", transfer.node_id))
        .await?;
    let (job_id, capture, faults) = (ctx.job_id.clone(), ctx.capture.clone(), ctx.faults.clone());
    let migration_id = transfer.migration_id.clone();
    let cache = ctx.state.dir().join(CACHE_FILE);
    let store = node_store(ctx, transfer)?;
    let root = ctx.state.root().to_path_buf();
    let (keys, sink) = (keys.clone(), WatchSink::new(ctx.progress.clone()));
    let report = blocking(move || {
        let options = packed::CaptureOptions {
            capture: JobContext::capture_options(&job_id, migration_id, &capture, &faults)?,
            cache: Some(cache),
            ..packed::CaptureOptions::default()
        };
        packed::capture(&root, &store, &keys, &options, &sink)
    })
    .await?;
    for (path, reason) in &report.skipped {
        tracing::warn!(job_id = %ctx.job_id, %path, %reason, "file skipped");
    }
    let upload = UploadFigures::of(&report);
    tracing::info!(
        job_id = %ctx.job_id,
        files = report.files,
        bytes = report.bytes,
        cache_hits = report.stats.cache_hits,
        chunks_referenced = upload.chunks_referenced,
        chunks_found_on_node = upload.chunks_found_on_node,
        chunks_sealed = upload.chunks_sealed,
        sealed_bytes = upload.sealed_bytes,
        chunks_stored = upload.chunks_stored,
        chunks_sent_already_held = upload.chunks_sent_already_held,
        chunks_resent = upload.chunks_resent,
        digest = %report.manifest_digest,
        "capture committed to the storage node"
    );
    let record = CaptureRecord {
        users: report.users.len() as u32,
        files: report.files,
        directories: report.dirs,
        bytes: report.bytes,
        excluded_files: report.excluded_files,
        manifest_digest: report.manifest_digest.clone(),
        store_location: format!("node:{}/{}", transfer.node_id, transfer.migration_id),
        upload,
    };
    ctx.record("capture.committed", detail(&record)).await?;
    Ok(record)
}

/// `Release` on the node with this job's capability (capture or restore side).
async fn release(ctx: &JobContext, transfer: &v1::ReplaceTransfer) -> Result<()> {
    let store = node_store(ctx, transfer)?;
    blocking(move || store.release()).await
}

async fn destination(ctx: &JobContext, transfer: &v1::ReplaceTransfer, keys: &Keys) -> Result<()> {
    if let Some(record) = recorded::<RestoreRecord>(ctx, "restore.released")? {
        tracing::info!(job_id = %ctx.job_id, "restore already verified and released; reporting it again");
        return report_done(ctx, &record).await;
    }
    let root = ctx.state.root().to_path_buf();
    let journal = ctx.state.dir().join(format!("restore-{}.json", ctx.job_id));
    let mut phase = ctx.phase;
    if phase == JobPhase::Captured {
        phase = ctx.enter(JobPhase::Restoring).await?;
    }
    if phase == JobPhase::Restoring {
        ctx.set_phase(JobPhase::Restoring);
        ctx.record("restore.start", format!("node:{}", transfer.node_id))
            .await?;
        let (report, node_id) = sources::restore(ctx, transfer, keys, &root, &journal).await?;
        tracing::info!(job_id = %ctx.job_id, node = %node_id, written = report.files_written, already_present = report.files_already_present, renamed = report.renamed.len(), "restore done");
        ctx.record(
            "restore.done",
            format!(
                "{} files written, {} already in place, from node:{node_id}",
                report.files_written, report.files_already_present
            ),
        )
        .await?;
        phase = ctx.enter(JobPhase::Verifying).await?;
    }
    if phase != JobPhase::Verifying {
        return Err(Error::BadAssignment {
            job_id: ctx.job_id.clone(),
            reason: format!(
                "cannot resume a replace restore in phase {}",
                fleetmig_proto::phase_name(phase)
            ),
        });
    }
    ctx.set_phase(JobPhase::Verifying);
    let record = verify(ctx, transfer, keys, &root, &journal).await?;
    ctx.record("restore.verified", detail(&record)).await?;
    sources::release_all(ctx, transfer).await;
    ctx.record("restore.released", detail(&record)).await?;
    report_done(ctx, &record).await
}

/// Fetches and opens the manifest; refuses one of another migration. Returns it with the plain
/// BLAKE3 (hex) of its sealed bytes.
fn open_manifest(
    store: &NodeStore,
    keys: &Keys,
    migration_id: &str,
    source_hostname: &str,
) -> Result<(fleetmig_format::PackedManifest, String)> {
    let (manifest, digest) = packed::fetch_manifest(store, &keys.migration)?;
    if manifest.migration_id != migration_id {
        return Err(Error::NodeRefused {
            node: store.location(),
            call: "GetManifest",
            code: "WrongMigration".to_owned(),
            message: format!(
                "the manifest belongs to migration {:?}, not {migration_id:?}",
                manifest.migration_id
            ),
        });
    }
    if !source_hostname.is_empty() && !manifest.hostname.eq_ignore_ascii_case(source_hostname) {
        tracing::warn!(manifest = %manifest.hostname, expected = %source_hostname, "the capture comes from another hostname than the controller says");
    }
    tracing::info!(
        node = %store.location(),
        digest,
        entries = manifest.entries.len(),
        "manifest fetched and opened"
    );
    Ok((manifest, digest))
}

/// Verifies every restored file against the manifest (from the first node that serves it);
/// removes the restore journal when all match.
async fn verify(
    ctx: &JobContext,
    transfer: &v1::ReplaceTransfer,
    keys: &Keys,
    root: &Path,
    journal: &Path,
) -> Result<RestoreRecord> {
    let sink = WatchSink::new(ctx.progress.clone());
    let (machine_root, journal) = (root.to_path_buf(), journal.to_path_buf());
    let (report, _) = sources::first_serving(ctx, transfer, keys, move |_, manifest| {
        let report = packed::verify(&machine_root, manifest, &sink)?;
        if report.is_ok() {
            packed::journal::RestoreJournal::remove(&journal)?;
        }
        Ok(report)
    })
    .await?;
    if !report.is_ok() {
        return Err(Error::VerificationFailed {
            what: "restore",
            details: first_mismatches(&report.mismatches),
        });
    }
    tracing::info!(job_id = %ctx.job_id, files = report.files_checked, "restore verified");
    Ok(RestoreRecord {
        files: report.files_checked,
        directories: report.dirs_checked,
        bytes: report.bytes,
    })
}

async fn report_done(ctx: &JobContext, record: &RestoreRecord) -> Result<()> {
    ctx.report(v1::PhaseReport {
        phase: JobPhase::Done.into(),
        restored: Some(record.summary()),
        ..ctx.report_header()
    })
    .await?;
    Ok(())
}
