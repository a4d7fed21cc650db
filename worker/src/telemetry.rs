//! Live progress of a running job: the state engine's progress callbacks
//! feed a watch channel, and a heartbeat task streams the latest snapshot
//! to the controller at the interval it asked for. The stream also renews
//! the machine's lease; it reconnects by itself if the controller restarts,
//! to the next controller of the list when the current one failed or hung.

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
        let (ticket, mut call_client) = client.pick();
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
        tokio::pin!(call);
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = &mut call => result,
            () = feed => {
                // The request stream was dropped: the call is ending; its status says why.
                tokio::time::timeout(Duration::from_secs(1), &mut call)
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::unavailable("progress stream closed")))
            }
        };
        match result {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                tracing::info!(job_id = %job.job_id, message = status.message(), "progress refused; job superseded");
                return;
            }
            Err(status) => {
                tracing::debug!(job_id = %job.job_id, code = ?status.code(), controller = client.current_url(), "progress stream broke; reconnecting");
                client.failed(ticket, &status);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff.delay()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientOptions;
    use fleetmig_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
    use std::sync::{Arc, Mutex};

    /// A controller that takes progress streams and remembers every update.
    #[derive(Clone, Default)]
    struct Listening {
        updates: Arc<Mutex<Vec<v1::ProgressUpdate>>>,
    }

    #[tonic::async_trait]
    impl WorkerService for Listening {
        async fn enroll(
            &self,
            _request: tonic::Request<v1::EnrollRequest>,
        ) -> Result<tonic::Response<v1::EnrollResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn check_in(
            &self,
            _request: tonic::Request<v1::CheckInRequest>,
        ) -> Result<tonic::Response<v1::CheckInResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn report_phase(
            &self,
            _request: tonic::Request<v1::PhaseReport>,
        ) -> Result<tonic::Response<v1::PhaseAck>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn stream_progress(
            &self,
            request: tonic::Request<tonic::Streaming<v1::ProgressUpdate>>,
        ) -> Result<tonic::Response<v1::ProgressSummary>, tonic::Status> {
            let mut stream = request.into_inner();
            let mut received = 0;
            while let Some(update) = stream.message().await? {
                self.updates.lock().unwrap().push(update);
                received += 1;
            }
            Ok(tonic::Response::new(v1::ProgressSummary {
                updates_received: received,
            }))
        }
    }

    /// A stopped controller (connections accepted, nothing answered) loses the progress stream
    /// to the next controller once its keep-alive pings go unanswered.
    #[tokio::test]
    async fn the_progress_stream_moves_on_from_a_hung_controller() {
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hung_url = format!("http://{}", hung.local_addr().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_url = format!("http://{}", listener.local_addr().unwrap());
        let live = Listening::default();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(live.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let options = ClientOptions {
            keep_alive_interval: Duration::from_millis(200),
            keep_alive_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        let client = Client::new(&[hung_url, live_url.clone()], options).unwrap();
        let (progress, progress_rx) = watch::channel(Snapshot {
            phase: v1::JobPhase::Restoring.into(),
            ..Snapshot::default()
        });
        let stop = CancellationToken::new();
        let job = JobRef {
            machine_id: "m".into(),
            job_id: "j".into(),
            fence: 3,
        };
        let task = tokio::spawn(heartbeat(
            client.clone(),
            job,
            progress_rx,
            Duration::from_millis(50),
            stop.clone(),
        ));
        let started = std::time::Instant::now();
        while live.updates.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no progress reached the live controller"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap();
        assert_eq!(client.current_url(), live_url);
        let first = live.updates.lock().unwrap()[0].clone();
        assert_eq!((first.job_id.as_str(), first.fence), ("j", 3));
        assert_eq!(first.phase, i32::from(v1::JobPhase::Restoring));
        drop((hung, progress));
    }
}
