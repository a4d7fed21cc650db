//! Live progress of a running job: the state engine's progress callbacks
//! feed a watch channel, and a heartbeat task streams the latest snapshot
//! to the controller at the interval it asked for. The stream also renews
//! the machine's lease; it reconnects by itself if the controller restarts.

use crate::client::{Backoff, Client};
use fleetmig_proto::v1;
use fleetmig_state::{Progress, ProgressSink};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The latest progress of the job, shared by the engine and the heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Wire phase of the job.
    pub phase: i32,
    /// Files done.
    pub files_done: u64,
    /// Files in total (0: unknown).
    pub files_total: u64,
    /// Bytes done.
    pub bytes_done: u64,
    /// Bytes in total (0: unknown).
    pub bytes_total: u64,
    /// Profile being worked on.
    pub current_user: String,
    /// The engine's stage, named as in USMT's progress log (Scanning,
    /// Collecting, Saving, Applying, Verifying).
    pub stage: String,
}

/// Publishes engine progress into a watch channel.
pub struct WatchSink {
    sender: watch::Sender<Snapshot>,
}

impl WatchSink {
    /// A sink writing into `sender`.
    pub fn new(sender: watch::Sender<Snapshot>) -> Self {
        WatchSink { sender }
    }
}

impl ProgressSink for WatchSink {
    fn update(&self, progress: &Progress) {
        self.sender.send_modify(|snapshot| {
            snapshot.files_done = progress.files_done;
            snapshot.files_total = progress.files_total;
            snapshot.bytes_done = progress.bytes_done;
            snapshot.bytes_total = progress.bytes_total;
            snapshot.current_user = progress.current_user.clone().unwrap_or_default();
            snapshot.stage = format!("{:?}", progress.phase);
        });
    }
}

/// Identity of the job the heartbeat speaks for.
#[derive(Debug, Clone)]
pub struct JobRef {
    /// Machine id.
    pub machine_id: String,
    /// Job id.
    pub job_id: String,
    /// Fence of the assignment.
    pub fence: u64,
}

/// Streams snapshots every `interval` until `stop` is cancelled.
pub async fn heartbeat(
    client: Client,
    job: JobRef,
    progress: watch::Receiver<Snapshot>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !stop.is_cancelled() {
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let mut call_client = client.clone();
        let call =
            call_client.stream_progress(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let feed = async {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let snapshot = progress.borrow().clone();
                let update = v1::ProgressUpdate {
                    job_id: job.job_id.clone(),
                    fence: job.fence,
                    machine_id: job.machine_id.clone(),
                    phase: snapshot.phase,
                    files_done: snapshot.files_done,
                    files_total: snapshot.files_total,
                    bytes_done: snapshot.bytes_done,
                    bytes_total: snapshot.bytes_total,
                    current_user: snapshot.current_user,
                    message: snapshot.stage,
                };
                if sender.send(update).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            result = call => {
                match result {
                    Ok(_) => {}
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                        tracing::info!(job_id = %job.job_id, message = status.message(), "progress refused; job superseded");
                        return;
                    }
                    Err(status) => {
                        tracing::debug!(job_id = %job.job_id, code = ?status.code(), "progress stream broke; reconnecting");
                    }
                }
            }
            () = feed => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.delay()) => {}
        }
    }
}
