//! The worker's connection to the controllers, and retrying calls.
//!
//! A worker may be given several controllers (`--controller a,b,c`: the controllers of one
//! etcd-backed fleet, any of which serves workers). [`Client`] sends each call to the current
//! one; a transport failure or a transient status ([`is_transient`]) moves it to the next one
//! for the following attempt ([`Rotation`]), while the callers' retry loops keep their backoff.
//!
//! A controller that hangs (stopped, not dead: its kernel still accepts connections) is
//! abandoned within about [`ClientOptions::call_timeout`]: every unary call has that deadline,
//! and HTTP/2 keep-alive pings close a connection whose peer stops answering them, which also
//! ends a progress stream so that it reconnects elsewhere.

use crate::error::{Error, Result};
use fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES;
use fleetmig_proto::v1::worker_service_client::WorkerServiceClient;
use rand::Rng;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Deadline of one unary call: a controller silent this long is taken for gone.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The generated client of one controller endpoint.
pub type Raw = WorkerServiceClient<Channel>;

/// Timeouts of the connections to the controllers.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TLS (the fleet's CA and, once enrolled, the machine's certificate)
    /// or plaintext.
    pub transport: fleetmig_auth::Transport,
    /// Establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Deadline of a unary call (enforced by the worker, and sent to the controller).
    pub call_timeout: Duration,
    /// HTTP/2 keep-alive ping interval (also while idle).
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered before the connection is closed.
    pub keep_alive_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            transport: fleetmig_auth::Transport::Plaintext,
            connect_timeout: Duration::from_secs(3),
            call_timeout: CALL_TIMEOUT,
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }
}

/// Which of `len` endpoints is current.
///
/// A turn counter that only grows (the endpoint is `turn % len`), so that failures of calls
/// that started on an endpoint the client has already left do not move it again: several
/// calls failing together on one endpoint make exactly one switch.
#[derive(Debug)]
pub struct Rotation {
    len: usize,
    turn: AtomicU64,
}

/// The endpoint a call was sent to, as [`Rotation::current`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    turn: u64,
    index: usize,
}

impl Ticket {
    /// Index of the endpoint.
    pub fn index(self) -> usize {
        self.index
    }
}

impl Rotation {
    /// A rotation over `len` endpoints (at least one), starting at the first.
    pub fn new(len: usize) -> Self {
        Self {
            len: len.max(1),
            turn: AtomicU64::new(0),
        }
    }

    /// The current endpoint.
    pub fn current(&self) -> Ticket {
        let turn = self.turn.load(Ordering::Acquire);
        Ticket {
            turn,
            index: (turn % self.len as u64) as usize,
        }
    }

    /// Moves past the endpoint of `failed`, unless another failure already did (or there is
    /// only one endpoint). Returns the new endpoint's index when this call made the switch.
    pub fn advance(&self, failed: Ticket) -> Option<usize> {
        if self.len < 2 {
            return None;
        }
        self.turn
            .compare_exchange(
                failed.turn,
                failed.turn + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok()
            .map(|turn| ((turn + 1) % self.len as u64) as usize)
    }
}

#[derive(Debug)]
struct Target {
    url: String,
    client: Raw,
}

#[derive(Debug)]
struct Shared {
    targets: Vec<Target>,
    rotation: Rotation,
    options: ClientOptions,
}

/// A client over one or more controller endpoints (lazily connected; channels reconnect by
/// themselves). Clones share the current endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// The URLs of a comma-separated list, trimmed; empty pieces are refused.
pub fn split_urls(list: &str) -> Result<Vec<String>> {
    let urls: Vec<String> = list.split(',').map(|url| url.trim().to_owned()).collect();
    if urls.iter().any(String::is_empty) {
        return Err(Error::BadUrl {
            url: list.to_owned(),
            reason: "empty controller URL in the list".to_owned(),
        });
    }
    Ok(urls)
}

/// Builds a client for `urls` (one URL or a comma-separated list) with the default options,
/// without connecting yet.
pub fn connect_lazy(urls: &str) -> Result<Client> {
    Client::new(&split_urls(urls)?, ClientOptions::default())
}

fn channel(url: &str, options: &ClientOptions) -> Result<Raw> {
    let endpoint = options
        .transport
        .endpoint(url)
        .map_err(|err| Error::BadUrl {
            url: url.to_owned(),
            reason: err.to_string(),
        })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(options.keep_alive_interval)
        .keep_alive_timeout(options.keep_alive_timeout)
        .keep_alive_while_idle(true);
    Ok(WorkerServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES))
}

impl Client {
    /// A client over `urls`, tried in this order. Must be called within a Tokio runtime.
    pub fn new(urls: &[String], options: ClientOptions) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::BadUrl {
                url: String::new(),
                reason: "no controller URL".to_owned(),
            });
        }
        let targets = urls
            .iter()
            .map(|url| {
                Ok(Target {
                    url: url.clone(),
                    client: channel(url, &options)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shared: Arc::new(Shared {
                rotation: Rotation::new(targets.len()),
                targets,
                options,
            }),
        })
    }

    /// The URLs, in rotation order.
    pub fn urls(&self) -> impl Iterator<Item = &str> {
        self.shared.targets.iter().map(|target| target.url.as_str())
    }

    /// URL of the current endpoint.
    pub fn current_url(&self) -> &str {
        &self.shared.targets[self.shared.rotation.current().index].url
    }

    /// The current endpoint's client, with the ticket to report its failure with.
    pub fn pick(&self) -> (Ticket, Raw) {
        let ticket = self.shared.rotation.current();
        (ticket, self.shared.targets[ticket.index].client.clone())
    }

    /// Reports that a call sent with `ticket` failed with `status`: a transient failure moves
    /// the client to the next endpoint (once, however many calls failed there).
    pub fn failed(&self, ticket: Ticket, status: &tonic::Status) {
        if is_transient(status) {
            self.move_on(ticket, status.message());
        }
    }

    /// Moves past the endpoint of `ticket` for `reason` (logged), unless already done.
    pub fn move_on(&self, ticket: Ticket, reason: &str) {
        if let Some(next) = self.shared.rotation.advance(ticket) {
            tracing::info!(
                from = %self.shared.targets[ticket.index].url,
                to = %self.shared.targets[next].url,
                reason,
                "switching controller"
            );
        }
    }

    /// One unary call on the current endpoint, with the call deadline; a transient failure
    /// moves the client to the next endpoint for the following call.
    pub async fn once<T, F, Fut>(&self, call: F) -> std::result::Result<T, tonic::Status>
    where
        F: FnOnce(Raw) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let (ticket, raw) = self.pick();
        self.settle(ticket, call(raw)).await
    }

    /// Awaits a unary call sent with `ticket` (from [`Client::pick`]) within the call deadline,
    /// and reports its failure (see [`Client::failed`]).
    pub async fn settle<T>(
        &self,
        ticket: Ticket,
        call: impl Future<Output = std::result::Result<T, tonic::Status>>,
    ) -> std::result::Result<T, tonic::Status> {
        let timeout = self.shared.options.call_timeout;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "controller {} did not answer within {timeout:?}",
                self.shared.targets[ticket.index].url
            ))),
        };
        if let Err(status) = &result {
            self.failed(ticket, status);
        }
        result
    }

    /// Calls `call` until it succeeds or fails for good: transient failures are retried with
    /// backoff, each attempt on the endpoint current at that time, until `shutdown`.
    pub async fn retry<T, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(Raw) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let call = &mut call;
        retry(what, shutdown, move || {
            let (ticket, raw) = self.pick();
            self.settle(ticket, call(raw))
        })
        .await
    }
}

/// A unary request with the standard deadline (sent to the controller).
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Whether a status is worth retrying (the controller is down, hung or busy).
pub fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
    )
}

/// Capped exponential backoff with full jitter, so a fleet reconnecting
/// after a controller restart spreads out instead of stampeding.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff { next: first, cap }
    }

    /// The delay before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.cap);
        let millis = current.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }
}

/// Calls `call` until it succeeds or fails for good; transient failures
/// are retried with backoff until `shutdown`.
pub async fn retry<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if is_transient(&status) => {
                let delay = backoff.delay();
                tracing::debug!(what, code = ?status.code(), message = status.message(), ?delay, "controller call failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(Error::Shutdown),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(status) => return Err(Error::Controller(status)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_proto::v1;
    use fleetmig_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
    use std::sync::Mutex;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<_> = (0..6).map(|_| backoff.delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[5] >= Duration::from_millis(400) && delays[5] <= Duration::from_millis(800));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_on_permanent_errors_and_retries_transient_ones() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let result: Result<()> = retry("t", &shutdown, || {
            calls += 1;
            let status = if calls < 3 {
                tonic::Status::unavailable("down")
            } else {
                tonic::Status::invalid_argument("bad")
            };
            async move { Err(status) }
        })
        .await;
        assert!(
            matches!(result, Err(Error::Controller(s)) if s.code() == tonic::Code::InvalidArgument)
        );
        assert_eq!(calls, 3);
    }

    #[test]
    fn rotation_moves_once_per_failed_endpoint_and_wraps_around() {
        let rotation = Rotation::new(3);
        let first = rotation.current();
        assert_eq!(first.index(), 0);
        // Two calls failed on endpoint 0: one switch.
        assert_eq!(rotation.advance(first), Some(1));
        assert_eq!(rotation.advance(first), None);
        assert_eq!(rotation.current().index(), 1);
        let second = rotation.current();
        assert_eq!(rotation.advance(second), Some(2));
        let third = rotation.current();
        assert_eq!(rotation.advance(third), Some(0));
        assert_eq!(rotation.current().index(), 0);
        // A failure reported for endpoint 1 long after the client left it moves nothing, even
        // though the rotation came back around to the same index.
        assert_eq!(rotation.advance(second), None);
        assert_eq!(rotation.current().index(), 0);
    }

    #[test]
    fn a_single_endpoint_never_rotates() {
        let rotation = Rotation::new(1);
        let ticket = rotation.current();
        assert_eq!(rotation.advance(ticket), None);
        assert_eq!(rotation.current(), ticket);
        assert_eq!(Rotation::new(0).current().index(), 0);
    }

    #[test]
    fn url_lists_split_and_trim() {
        assert_eq!(
            split_urls("http://a:1, http://b:2 ,http://c:3").unwrap(),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(split_urls("http://a:1").unwrap(), ["http://a:1"]);
        assert!(split_urls("http://a:1,,http://b:2").is_err());
        assert!(split_urls("").is_err());
    }

    #[tokio::test]
    async fn only_transient_failures_switch_endpoints() {
        let client = connect_lazy("http://127.0.0.1:1,http://127.0.0.1:2").unwrap();
        assert_eq!(client.urls().count(), 2);
        let (ticket, _) = client.pick();
        client.failed(ticket, &tonic::Status::failed_precondition("stale fence"));
        assert_eq!(client.current_url(), "http://127.0.0.1:1");
        client.failed(ticket, &tonic::Status::unavailable("refused"));
        assert_eq!(client.current_url(), "http://127.0.0.1:2");
        client.failed(ticket, &tonic::Status::unavailable("refused"));
        assert_eq!(client.current_url(), "http://127.0.0.1:2");
    }

    /// A controller that answers check-ins with its own name (in `next_checkin_ms`).
    #[derive(Clone)]
    struct Named {
        name: u32,
        calls: Arc<Mutex<u32>>,
    }

    #[tonic::async_trait]
    impl WorkerService for Named {
        async fn enroll(
            &self,
            _request: tonic::Request<v1::EnrollRequest>,
        ) -> std::result::Result<tonic::Response<v1::EnrollResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn check_in(
            &self,
            _request: tonic::Request<v1::CheckInRequest>,
        ) -> std::result::Result<tonic::Response<v1::CheckInResponse>, tonic::Status> {
            *self.calls.lock().unwrap() += 1;
            Ok(tonic::Response::new(v1::CheckInResponse {
                next_checkin_ms: self.name,
                ..v1::CheckInResponse::default()
            }))
        }

        async fn report_phase(
            &self,
            _request: tonic::Request<v1::PhaseReport>,
        ) -> std::result::Result<tonic::Response<v1::PhaseAck>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn stream_progress(
            &self,
            _request: tonic::Request<tonic::Streaming<v1::ProgressUpdate>>,
        ) -> std::result::Result<tonic::Response<v1::ProgressSummary>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
    }

    /// Serves `name` on a loopback port until `stop` is cancelled; returns the URL and the
    /// server task.
    async fn serve(
        name: u32,
        calls: Arc<Mutex<u32>>,
        stop: CancellationToken,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(Named { name, calls }))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
                .unwrap();
        });
        (format!("http://{address}"), server)
    }

    async fn check_in(client: &Client, shutdown: &CancellationToken) -> u32 {
        client
            .retry("check in", shutdown, |mut raw| async move {
                raw.check_in(request(v1::CheckInRequest::default())).await
            })
            .await
            .unwrap()
            .into_inner()
            .next_checkin_ms
    }

    #[tokio::test]
    async fn calls_continue_on_the_second_controller_when_the_first_goes_away() {
        let (first_calls, second_calls) = (Arc::default(), Arc::default());
        let stop_first = CancellationToken::new();
        let (first, first_server) = serve(1, Arc::clone(&first_calls), stop_first.clone()).await;
        let (second, _second_server) =
            serve(2, Arc::clone(&second_calls), CancellationToken::new()).await;
        let client = connect_lazy(&format!("{first},{second}")).unwrap();
        let shutdown = CancellationToken::new();
        for _ in 0..3 {
            assert_eq!(check_in(&client, &shutdown).await, 1);
        }
        stop_first.cancel();
        first_server.await.unwrap();
        for _ in 0..3 {
            assert_eq!(check_in(&client, &shutdown).await, 2);
        }
        assert_eq!(client.current_url(), second);
        assert_eq!(*first_calls.lock().unwrap(), 3);
        assert_eq!(*second_calls.lock().unwrap(), 3);
    }

    /// A stopped controller still accepts connections (its kernel does) but never answers: the
    /// call deadline abandons it for the next one.
    #[tokio::test]
    async fn a_hung_controller_is_abandoned_after_the_call_deadline() {
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hung_url = format!("http://{}", hung.local_addr().unwrap());
        let calls = Arc::default();
        let (live, _server) = serve(7, Arc::clone(&calls), CancellationToken::new()).await;
        let options = ClientOptions {
            call_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        let client = Client::new(&[hung_url, live.clone()], options).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(check_in(&client, &CancellationToken::new()).await, 7);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(client.current_url(), live);
        drop(hung);
    }
}
