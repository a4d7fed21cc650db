//! Running a replace job: the old machine captures its user state to a storage node, the new
//! machine restores it from there. One job, two workers; which side this worker is follows
//! from the phase the job is in when assigned:
//!
//! - **source** (`ASSIGNED`, `CAPTURING`): packed capture to the node (the metadata cache in
//!   the agent state dir makes a resumed capture cheap, and the node is asked which chunks it
//!   lacks, so nothing it holds is sent again), `Commit`, `Release` (capture side), then
//!   `CAPTURED` with the summary;
//! - **destination** (`CAPTURED`, `RESTORING`, `VERIFYING`): restore into the machine root
//!   (resumable: files already in place are skipped), verify every file, `Release` (restore
//!   side: the node's retention clock starts), then `DONE`.
//!
//! Milestones go to the machine's journal (`capture.committed`, `capture.released`,
//! `restore.done`, `restore.verified`, `restore.released`) so a worker that crashed between a
//! node call and the controller's acknowledgement resumes without redoing or losing anything.
//! `capture.committed` also carries how the upload went ([`UploadFigures`]: chunks sealed,
//! stored, found on the node, sent though the node held them, re-sent after a broken stream).

use std::path::{Path, PathBuf};

use fleetmig_format::{FleetKey, MigrationKey};
use fleetmig_proto::v1::{self, JobPhase};
use serde::{Deserialize, Serialize};

use crate::agent::JobContext;
use crate::error::{Error, Result};
use crate::packed::{self, ChunkStore, Keys, NodeStore};
use crate::refresh::{blocking, first_mismatches};
use crate::telemetry::WatchSink;

/// File name of the metadata cache in the agent state dir.
pub const CACHE_FILE: &str = "packcache.bin";

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
    fn summary(&self) -> v1::CaptureSummary {
        v1::CaptureSummary {
            users: self.users,
            files: self.files,
            directories: self.directories,
            bytes: self.bytes,
            excluded_files: self.excluded_files,
            manifest_digest: self.manifest_digest.clone(),
            store_location: self.store_location.clone(),
            replica_node_ids: Vec::new(),
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

/// The node store of this job, for the blocking pipeline.
fn node_store(ctx: &JobContext, transfer: &v1::ReplaceTransfer) -> Result<NodeStore> {
    NodeStore::for_transfer(
        transfer,
        tokio::runtime::Handle::current(),
        ctx.shutdown.clone(),
    )
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
    ctx.report(v1::PhaseReport {
        phase: JobPhase::Captured.into(),
        captured: Some(record.summary()),
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
        let store = node_store(ctx, transfer)?;
        let (keys, sink) = (keys.clone(), WatchSink::new(ctx.progress.clone()));
        let (migration_id, source_hostname) = (
            transfer.migration_id.clone(),
            transfer.source_hostname.clone(),
        );
        let (machine_root, journal_path) = (root.clone(), journal.clone());
        let report = blocking(move || {
            let manifest = open_manifest(&store, &keys, &migration_id, &source_hostname)?;
            let options = packed::RestoreOptions {
                journal: Some(journal_path),
                ..packed::RestoreOptions::default()
            };
            packed::restore(
                &store,
                &machine_root,
                &keys.fleet,
                &manifest,
                &options,
                &sink,
            )
        })
        .await?;
        tracing::info!(job_id = %ctx.job_id, written = report.files_written, already_present = report.files_already_present, renamed = report.renamed.len(), "restore done");
        ctx.record(
            "restore.done",
            format!(
                "{} files written, {} already in place",
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
    release(ctx, transfer).await?;
    ctx.record("restore.released", detail(&record)).await?;
    report_done(ctx, &record).await
}

/// Fetches and opens the manifest; refuses one of another migration.
fn open_manifest(
    store: &NodeStore,
    keys: &Keys,
    migration_id: &str,
    source_hostname: &str,
) -> Result<fleetmig_format::PackedManifest> {
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
        digest,
        entries = manifest.entries.len(),
        "manifest fetched and opened"
    );
    Ok(manifest)
}

/// Verifies every restored file against the manifest; removes the restore journal when all match.
async fn verify(
    ctx: &JobContext,
    transfer: &v1::ReplaceTransfer,
    keys: &Keys,
    root: &Path,
    journal: &Path,
) -> Result<RestoreRecord> {
    let store = node_store(ctx, transfer)?;
    let (keys, sink) = (keys.clone(), WatchSink::new(ctx.progress.clone()));
    let (migration_id, source_hostname) = (
        transfer.migration_id.clone(),
        transfer.source_hostname.clone(),
    );
    let (machine_root, journal): (PathBuf, PathBuf) = (root.to_path_buf(), journal.to_path_buf());
    let report = blocking(move || {
        let manifest = open_manifest(&store, &keys, &migration_id, &source_hostname)?;
        let report = packed::verify(&machine_root, &manifest, &sink)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AgentState;
    use crate::packed::fake_node::FakeNode;
    use crate::telemetry::Snapshot;
    use fleetmig_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
    use std::sync::{Arc, Mutex};
    use tokio_util::sync::CancellationToken;

    /// A controller that accepts every phase report and remembers it.
    #[derive(Clone, Default)]
    struct FakeController {
        reports: Arc<Mutex<Vec<v1::PhaseReport>>>,
    }

    #[tonic::async_trait]
    impl WorkerService for FakeController {
        async fn enroll(
            &self,
            _request: tonic::Request<v1::EnrollRequest>,
        ) -> std::result::Result<tonic::Response<v1::EnrollResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }

        async fn check_in(
            &self,
            _request: tonic::Request<v1::CheckInRequest>,
        ) -> std::result::Result<tonic::Response<v1::CheckInResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }

        async fn report_phase(
            &self,
            request: tonic::Request<v1::PhaseReport>,
        ) -> std::result::Result<tonic::Response<v1::PhaseAck>, tonic::Status> {
            let report = request.into_inner();
            let phase = report.phase;
            self.reports.lock().unwrap().push(report);
            Ok(tonic::Response::new(v1::PhaseAck { phase }))
        }

        async fn stream_progress(
            &self,
            _request: tonic::Request<tonic::Streaming<v1::ProgressUpdate>>,
        ) -> std::result::Result<tonic::Response<v1::ProgressSummary>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
    }

    impl FakeController {
        async fn serve(&self) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(WorkerServiceServer::new(self.clone()))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            );
            format!("http://{address}")
        }

        fn phases(&self) -> Vec<JobPhase> {
            self.reports
                .lock()
                .unwrap()
                .iter()
                .map(|report| JobPhase::try_from(report.phase).unwrap())
                .collect()
        }
    }

    fn context(
        root: &Path,
        controller: &str,
        phase: JobPhase,
        replace: Option<v1::ReplaceTransfer>,
    ) -> JobContext {
        JobContext {
            state: AgentState::open(root).unwrap(),
            client: crate::client::connect_lazy(controller).unwrap(),
            machine_id: "m".into(),
            job_id: "job-1".into(),
            fence: 1,
            phase,
            capture: v1::CaptureOptions::default(),
            replace,
            progress: tokio::sync::watch::channel(Snapshot::default()).0,
            faults: crate::agent::Faults::default(),
            shutdown: CancellationToken::new(),
        }
    }

    fn transfer(node: &str) -> v1::ReplaceTransfer {
        v1::ReplaceTransfer {
            migration_id: "job-1".into(),
            node_id: "node-1".into(),
            node_endpoint: node.into(),
            capability: Some(v1::SignedCapability {
                claims: b"claims".to_vec(),
                signature: b"signature".to_vec(),
            }),
            fleet_key: vec![1; 32],
            migration_key: vec![2; 32],
            source_hostname: "PC-31".into(),
            destination_hostname: "W7-31".into(),
            replicas: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn source_and_destination_migrate_through_the_node() {
        let node = FakeNode::default();
        let node_url = node.serve_here().await;
        let controller = FakeController::default();
        let controller_url = controller.serve().await;
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("xp"), dir.path().join("w7"));
        let opts = fleetmig_state::GenOptions {
            seed: 31,
            users: 2,
            files_per_user: 60,
            hostname: Some("PC-31".into()),
        };
        fleetmig_state::generate_machine(&old, &opts).unwrap();
        std::fs::create_dir(&new).unwrap();
        let expected = fleetmig_state::fingerprint::expected_after_refresh(&old).unwrap();

        let source = context(
            &old,
            &controller_url,
            JobPhase::Assigned,
            Some(transfer(&node_url)),
        );
        run(&source).await.unwrap();
        assert_eq!(
            controller.phases(),
            [JobPhase::Capturing, JobPhase::Captured]
        );
        let captured = controller.reports.lock().unwrap()[1]
            .captured
            .clone()
            .unwrap();
        assert_eq!(captured.files as usize, expected.len());
        assert_eq!(captured.users, 2);
        assert_eq!(captured.store_location, "node:node-1/job-1");
        let (sealed, digest) = node.state.lock().unwrap().manifest.clone().unwrap();
        assert_eq!(captured.manifest_digest, digest);
        assert_eq!(blake3::hash(&sealed).to_hex().as_str(), digest);
        assert!(old.join("_fleetmig").join(CACHE_FILE).is_file());

        // The committed milestone carries the upload figures: a fresh node held nothing, so
        // every referenced chunk was sealed, sent and stored exactly once.
        let committed: CaptureRecord = recorded(&source, "capture.committed").unwrap().unwrap();
        let upload = committed.upload;
        let held = node.state.lock().unwrap().chunks.len() as u64;
        assert!(upload.chunks_referenced > 0, "{upload:?}");
        assert_eq!(upload.chunks_referenced, held, "{upload:?}");
        assert_eq!(upload.chunks_sealed, held, "{upload:?}");
        assert_eq!(upload.chunks_stored, held, "{upload:?}");
        assert_eq!(upload.chunks_found_on_node, 0, "{upload:?}");
        assert_eq!(upload.chunks_sent_already_held, 0, "{upload:?}");
        assert_eq!(upload.chunks_resent, 0, "{upload:?}");
        let sealed_held: u64 = node
            .state
            .lock()
            .unwrap()
            .chunks
            .values()
            .map(|bytes| bytes.len() as u64)
            .sum();
        assert_eq!(upload.sealed_bytes, sealed_held, "{upload:?}");
        let detail = source
            .state
            .journal()
            .unwrap()
            .into_iter()
            .rfind(|entry| entry.event == "capture.committed")
            .unwrap()
            .detail;
        let json: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(json["upload"]["chunks_sealed"], held, "{detail}");
        assert_eq!(json["upload"]["chunks_sent_already_held"], 0, "{detail}");

        // A source resumed after its report was lost reports the same capture, sending nothing.
        let received = node.state.lock().unwrap().received;
        let resumed = context(
            &old,
            &controller_url,
            JobPhase::Capturing,
            Some(transfer(&node_url)),
        );
        run(&resumed).await.unwrap();
        assert_eq!(node.state.lock().unwrap().received, received);
        let again = controller
            .reports
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .captured
            .clone();
        assert_eq!(again, Some(captured.clone()));

        controller.reports.lock().unwrap().clear();
        let destination = context(
            &new,
            &controller_url,
            JobPhase::Captured,
            Some(transfer(&node_url)),
        );
        run(&destination).await.unwrap();
        assert_eq!(
            controller.phases(),
            [JobPhase::Restoring, JobPhase::Verifying, JobPhase::Done]
        );
        let restored = controller.reports.lock().unwrap()[2].restored.unwrap();
        assert_eq!(restored.files, captured.files);
        assert_eq!(restored.bytes, captured.bytes);
        assert_eq!(restored.mismatched_files, 0);
        let compared = fleetmig_state::fingerprint::compare(&expected, &new).unwrap();
        assert!(
            compared.is_ok(),
            "{:?} {:?}",
            compared.missing,
            compared.different
        );
        assert!(!new.join("_fleetmig/restore-job-1.json").exists());
        assert_eq!(node.state.lock().unwrap().releases, 2);

        // Resumed in VERIFYING after the release: reports DONE again, releases nothing more.
        let resumed = context(
            &new,
            &controller_url,
            JobPhase::Verifying,
            Some(transfer(&node_url)),
        );
        run(&resumed).await.unwrap();
        assert_eq!(node.state.lock().unwrap().releases, 2);
        assert_eq!(controller.phases().last(), Some(&JobPhase::Done));
    }

    /// A second machine with the same content finds every chunk on the node: nothing sealed
    /// or sent, and the figures say so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_capture_of_content_the_node_holds_sends_nothing() {
        let node = FakeNode::default();
        let node_url = node.serve_here().await;
        let controller = FakeController::default();
        let controller_url = controller.serve().await;
        let dir = tempfile::tempdir().unwrap();
        let mut figures = Vec::new();
        for name in ["a", "b"] {
            let root = dir.path().join(name);
            let opts = fleetmig_state::GenOptions {
                seed: 32,
                users: 1,
                files_per_user: 40,
                hostname: Some("PC-32".into()),
            };
            fleetmig_state::generate_machine(&root, &opts).unwrap();
            let mut job = transfer(&node_url);
            job.migration_id = format!("job-{name}");
            let mut ctx = context(&root, &controller_url, JobPhase::Assigned, Some(job));
            ctx.job_id = format!("job-{name}");
            run(&ctx).await.unwrap();
            let record: CaptureRecord = recorded(&ctx, "capture.committed").unwrap().unwrap();
            figures.push(record.upload);
        }
        let (first, second) = (figures[0], figures[1]);
        assert!(first.chunks_sealed > 0, "{first:?}");
        assert_eq!(second.chunks_referenced, first.chunks_referenced);
        assert_eq!(
            second.chunks_found_on_node, first.chunks_referenced,
            "{second:?}"
        );
        assert_eq!(
            (
                second.chunks_sealed,
                second.sealed_bytes,
                second.chunks_stored
            ),
            (0, 0, 0),
            "{second:?}"
        );
    }

    /// The journal entry of a worker that predates the upload figures still parses (with zero
    /// figures), so an upgraded worker does not capture a committed migration again.
    #[test]
    fn records_without_upload_figures_still_parse() {
        let old = r#"{"users":2,"files":9,"directories":4,"bytes":1234,"excluded_files":1,"manifest_digest":"ab","store_location":"node:n/m"}"#;
        let record: CaptureRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.files, 9);
        assert_eq!(record.upload, UploadFigures::default());
        let again: CaptureRecord = serde_json::from_str(&detail(&record)).unwrap();
        assert_eq!(again, record);
    }

    #[tokio::test]
    async fn unusable_assignments_are_refused_before_any_report() {
        let dir = tempfile::tempdir().unwrap();
        let url = "http://127.0.0.1:1";
        let missing = context(dir.path(), url, JobPhase::Assigned, None);
        assert!(matches!(
            run(&missing).await,
            Err(Error::BadAssignment { .. })
        ));
        let mut short = transfer(url);
        short.fleet_key = vec![1; 16];
        let short_key = context(dir.path(), url, JobPhase::Assigned, Some(short));
        let error = run(&short_key).await.unwrap_err();
        assert!(
            error.to_string().contains("fleet key is 16 bytes"),
            "{error}"
        );
        let wrong_phase = context(dir.path(), url, JobPhase::Reimaging, Some(transfer(url)));
        assert!(matches!(
            run(&wrong_phase).await,
            Err(Error::BadAssignment { .. })
        ));
    }
}
