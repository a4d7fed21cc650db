//! The worker's connection to the controller, and retrying calls.

use crate::error::{Error, Result};
use fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES;
use fleetmig_proto::v1::worker_service_client::WorkerServiceClient;
use rand::Rng;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Deadline of one unary call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A lazily connected client; reconnects by itself after failures.
pub type Client = WorkerServiceClient<Channel>;

/// Builds a client for `url` without connecting yet.
pub fn connect_lazy(url: &str) -> Result<Client> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|err| Error::BadUrl {
            url: url.to_string(),
            reason: err.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(false);
    Ok(WorkerServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CONTROL_MESSAGE_BYTES))
}

/// A unary request with the standard deadline.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Whether a status is worth retrying (the controller is down or busy).
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
}
