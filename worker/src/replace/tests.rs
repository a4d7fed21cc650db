//! Tests of replace jobs against fake storage nodes and a fake controller.

use super::*;
use crate::identity::AgentState;
use crate::packed::fake_node::FakeNode;
use crate::telemetry::Snapshot;
use fleetmig_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
        node_timings: NodeTimings::default(),
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

/// A replica node of the transfer.
fn replica_target(node_id: &str, url: &str) -> v1::ReplicaTarget {
    v1::ReplicaTarget {
        node_id: node_id.into(),
        node_endpoint: url.into(),
        capability: Some(v1::SignedCapability {
            claims: format!("claims for {node_id}").into_bytes(),
            signature: b"signature".to_vec(),
        }),
    }
}

/// Timings short enough for tests.
fn impatient() -> NodeTimings {
    NodeTimings {
        replicate_give_up: Duration::from_millis(300),
        source_give_up: Duration::from_millis(300),
        release_give_up: Duration::from_millis(300),
    }
}

/// Two fake nodes, a fake controller and a generated source machine (plus an empty
/// destination).
struct Replicated {
    primary: FakeNode,
    replica: FakeNode,
    controller: FakeController,
    controller_url: String,
    transfer: v1::ReplaceTransfer,
    old: std::path::PathBuf,
    new: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Replicated {
    async fn start(seed: u64, files_per_user: u32) -> Self {
        let (primary, replica) = (FakeNode::default(), FakeNode::default());
        let primary_url = primary.serve_here().await;
        let replica_url = replica.serve_here().await;
        let controller = FakeController::default();
        let controller_url = controller.serve().await;
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("xp"), dir.path().join("w7"));
        let opts = fleetmig_state::GenOptions {
            seed,
            users: 1,
            files_per_user,
            hostname: Some("PC-31".into()),
        };
        fleetmig_state::generate_machine(&old, &opts).unwrap();
        std::fs::create_dir(&new).unwrap();
        let mut transfer = transfer(&primary_url);
        transfer.replicas = vec![replica_target("node-2", &replica_url)];
        Self {
            primary,
            replica,
            controller,
            controller_url,
            transfer,
            old,
            new,
            _dir: dir,
        }
    }

    fn source(&self, phase: JobPhase) -> JobContext {
        let mut ctx = context(
            &self.old,
            &self.controller_url,
            phase,
            Some(self.transfer.clone()),
        );
        ctx.node_timings = impatient();
        ctx
    }

    fn destination(&self, phase: JobPhase) -> JobContext {
        let mut ctx = context(
            &self.new,
            &self.controller_url,
            phase,
            Some(self.transfer.clone()),
        );
        ctx.node_timings = impatient();
        ctx
    }

    fn last_captured(&self) -> Option<v1::CaptureSummary> {
        self.controller
            .reports
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|report| report.captured.clone())
    }

    /// The restored machine holds exactly what the source had.
    fn assert_restored(&self) {
        let expected = fleetmig_state::fingerprint::expected_after_refresh(&self.old).unwrap();
        let compared = fleetmig_state::fingerprint::compare(&expected, &self.new).unwrap();
        assert!(
            compared.is_ok(),
            "{:?} {:?}",
            compared.missing,
            compared.different
        );
    }
}

fn journal_events(ctx: &JobContext, event: &str) -> Vec<serde_json::Value> {
    recorded_all(ctx, event).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_reported_and_not_copied_again_on_resume() {
    let setup = Replicated::start(41, 40).await;
    // The first Replicate call breaks: retried within the bound.
    setup.primary.state.lock().unwrap().replicate_failures = 1;
    let source = setup.source(JobPhase::Assigned);
    run(&source).await.unwrap();
    assert_eq!(
        setup.controller.phases(),
        [JobPhase::Capturing, JobPhase::Captured]
    );
    let captured = setup.last_captured().unwrap();
    assert_eq!(captured.replica_node_ids, ["node-2"]);
    let primary_manifest = setup.primary.state.lock().unwrap().manifest.clone();
    assert!(primary_manifest.is_some());
    assert_eq!(
        setup.replica.state.lock().unwrap().manifest,
        primary_manifest
    );
    let held = setup.primary.state.lock().unwrap().chunks.len();
    assert_eq!(setup.replica.state.lock().unwrap().chunks.len(), held);
    assert_eq!(setup.primary.state.lock().unwrap().replications, 1);
    let records = journal_events(&source, "capture.replicated");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["node_id"], "node-2");
    assert_eq!(
        records[0]["manifest_digest"],
        captured.manifest_digest.as_str()
    );
    assert_eq!(records[0]["chunks_sent"], held);
    assert_eq!(records[0]["already_committed"], false);

    // Resumed after the report was lost: the same capture and replicas, nothing copied again.
    let received = setup.primary.state.lock().unwrap().received;
    let resumed = setup.source(JobPhase::Capturing);
    run(&resumed).await.unwrap();
    assert_eq!(setup.primary.state.lock().unwrap().replications, 1);
    assert_eq!(setup.primary.state.lock().unwrap().received, received);
    assert_eq!(setup.last_captured(), Some(captured));
    assert_eq!(journal_events(&resumed, "capture.replicated").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_out_of_reach_fails_the_capture_naming_it() {
    let setup = Replicated::start(42, 20).await;
    setup.replica.state.lock().unwrap().down = true;
    let source = setup.source(JobPhase::Assigned);
    let error = run(&source).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::ReplicationFailed {
                retryable: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    let text = error.to_string();
    assert!(text.contains("node-2"), "{text}");
    assert_eq!(
        setup.controller.phases(),
        [JobPhase::Capturing],
        "no CAPTURED"
    );
    assert!(journal_events(&source, "capture.replicated").is_empty());

    // The node is back: the retried job replicates without capturing again.
    setup.replica.state.lock().unwrap().down = false;
    let received = setup.primary.state.lock().unwrap().received;
    let retried = setup.source(JobPhase::Capturing);
    run(&retried).await.unwrap();
    assert_eq!(setup.primary.state.lock().unwrap().received, received);
    assert_eq!(setup.last_captured().unwrap().replica_node_ids, ["node-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refusing_the_copy_is_never_reported_as_holding_it() {
    let setup = Replicated::start(43, 10).await;
    let mut transfer = setup.transfer.clone();
    transfer.replicas[0].node_endpoint = "http://127.0.0.1:1".into();
    let mut source = setup.source(JobPhase::Assigned);
    source.replace = Some(transfer);
    let error = run(&source).await.unwrap_err().to_string();
    assert!(error.contains("node-2 (http://127.0.0.1:1)"), "{error}");
    assert!(setup.last_captured().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replica_lists_are_refused_before_any_report() {
    let dir = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:1";
    for replicas in [
        vec![replica_target("node-1", url)],
        vec![replica_target("node-2", url), replica_target("node-2", url)],
        vec![v1::ReplicaTarget {
            capability: None,
            ..replica_target("node-2", url)
        }],
        vec![replica_target("node-2", "")],
    ] {
        let mut job = transfer(url);
        job.replicas = replicas;
        let ctx = context(dir.path(), url, JobPhase::Assigned, Some(job));
        assert!(
            matches!(run(&ctx).await, Err(Error::BadAssignment { .. })),
            "{:?}",
            ctx.replace
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_falls_back_to_the_replica_when_the_primary_is_down() {
    let setup = Replicated::start(44, 40).await;
    run(&setup.source(JobPhase::Assigned)).await.unwrap();
    setup.primary.state.lock().unwrap().down = true;
    setup.controller.reports.lock().unwrap().clear();

    let destination = setup.destination(JobPhase::Captured);
    run(&destination).await.unwrap();
    assert_eq!(
        setup.controller.phases(),
        [JobPhase::Restoring, JobPhase::Verifying, JobPhase::Done]
    );
    setup.assert_restored();
    assert_eq!(setup.primary.state.lock().unwrap().chunks_served, 0);
    assert!(setup.replica.state.lock().unwrap().chunks_served > 0);
    let served = journal_events(&destination, "restore.source");
    assert!(!served.is_empty());
    assert!(
        served.iter().all(|record| record["node_id"] == "node-2"),
        "{served:?}"
    );
    let done = destination
        .state
        .journal()
        .unwrap()
        .into_iter()
        .rfind(|entry| entry.event == "restore.done")
        .unwrap();
    assert!(done.detail.ends_with("from node:node-2"), "{}", done.detail);
    // The replica was released; the primary could not be, which does not fail the job.
    assert_eq!(setup.replica.state.lock().unwrap().releases, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_down_is_a_retryable_failure_naming_them() {
    let setup = Replicated::start(45, 10).await;
    run(&setup.source(JobPhase::Assigned)).await.unwrap();
    setup.primary.state.lock().unwrap().down = true;
    setup.replica.state.lock().unwrap().down = true;
    let error = run(&setup.destination(JobPhase::Captured))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("node-1") && text.contains("node-2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_continues_on_the_replica_when_the_primary_fails_midway() {
    // Over 1024 small files: more than one fetch batch (at most 1024 chunks each).
    let setup = Replicated::start(46, 1500).await;
    run(&setup.source(JobPhase::Assigned)).await.unwrap();
    let total = setup.primary.state.lock().unwrap().chunks.len() as u64;
    let batch = crate::packed::node_store::GET_CHUNKS_MAX as u64;
    assert!(total > batch + 100, "{total} chunks: one batch only");
    // The primary dies after the first batch, in the middle of the next one.
    let limit = batch + (total - batch) / 2;
    setup.primary.state.lock().unwrap().down_after_chunks = Some(limit);

    let destination = setup.destination(JobPhase::Captured);
    run(&destination).await.unwrap();
    setup.assert_restored();
    let from_primary = setup.primary.state.lock().unwrap().chunks_served;
    let from_replica = setup.replica.state.lock().unwrap().chunks_served;
    assert_eq!(from_primary, limit);
    // What the primary's completed batches restored was not fetched again.
    assert!(
        from_replica < total,
        "replica served {from_replica} of {total} chunks"
    );
    let served: Vec<String> = journal_events(&destination, "restore.source")
        .iter()
        .map(|record| record["node_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(served[..2], ["node-1", "node-2"], "{served:?}");
}
