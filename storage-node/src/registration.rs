//! Registering with the controllers' `StorageRegistry` and reporting capacity.
//!
//! The node may be given several controllers (one fleet: e.g. an HA group
//! or the controllers of a migration); it keeps itself registered with
//! every one of them, each in a task of its own, so a dead or slow
//! controller never delays the others. For each, the node registers
//! (retrying with capped exponential backoff and jitter while the
//! controller is unreachable), then reports its capacity every
//! `report_interval_ms` that controller asked for. A controller that answers
//! `NotFound` to a report has forgotten the node (e.g. it lost its state), so
//! the node registers with it again.
//!
//! Each registration answer carries the controller's token public key; the
//! node keeps the first one (see `tokens.rs`) to verify capability tokens,
//! and logs an error when a controller hands out another.

use std::time::Duration;

use fleetmig_proto::v1::RegisterNodeRequest;
use fleetmig_proto::v1::storage_registry_client::StorageRegistryClient;
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::{Error, Result};
use crate::node::Node;
use crate::service::capacity_report;
use crate::tokens::Offer;

/// How long establishing a connection to the controller may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one registry call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Report interval used when the controller leaves it unset.
const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// Floor on the report interval, whatever the controller asks for.
const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(50);

/// Who this node is, as told to the controller.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Stable node id (from the data directory).
    pub node_id: String,
    /// URL workers and the controller reach the node at.
    pub endpoint: String,
    /// Site the node serves.
    pub site: String,
}

/// A `StorageRegistry` client for `url` with fleetmig's limits.
///
/// The channel connects lazily and reconnects on its own, so an unreachable
/// controller shows up as `Unavailable` on each call rather than here.
pub fn registry_client(
    transport: &fleetmig_auth::Transport,
    url: &str,
) -> Result<StorageRegistryClient<Channel>> {
    let endpoint = transport
        .endpoint(url)
        .map_err(|err| Error::InvalidUrl {
            url: url.to_owned(),
            reason: err.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    Ok(StorageRegistryClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
        .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES))
}

/// Keeps the node registered with every controller of `controller_urls`
/// (duplicates ignored), one task each, until `shutdown` is cancelled.
///
/// Every URL is checked first. Returns an error when a URL is invalid or a
/// controller refuses the node outright (retrying cannot help), which the
/// caller treats as fatal; the other tasks are then stopped.
pub async fn run_all(
    identity: NodeIdentity,
    controller_urls: Vec<String>,
    node: Node,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut urls: Vec<String> = Vec::with_capacity(controller_urls.len());
    for url in controller_urls {
        registry_client(&node.inner.settings.transport, &url)?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    let stop = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    for url in urls {
        tasks.spawn(run(identity.clone(), url, node.clone(), stop.clone()));
    }
    let mut outcome = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|err| {
            Err(Error::Task {
                task: "registration",
                reason: err.to_string(),
            })
        });
        if let Err(err) = result {
            if outcome.is_ok() {
                outcome = Err(err);
            }
            stop.cancel();
        }
    }
    outcome
}

/// Keeps the node registered with one controller until `shutdown` is
/// cancelled.
///
/// Returns an error only when the controller refuses the node outright
/// (retrying cannot help), which the caller treats as fatal.
pub async fn run(
    identity: NodeIdentity,
    controller_url: String,
    node: Node,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut client = registry_client(&node.inner.settings.transport, &controller_url)?;
    let registrar = Registrar {
        identity,
        controller_url,
        node,
    };
    loop {
        let Some(interval) = registrar.register(&mut client, &shutdown).await? else {
            return Ok(());
        };
        match registrar.report(&mut client, interval, &shutdown).await {
            ReportEnd::Shutdown => return Ok(()),
            ReportEnd::Forgotten => tracing::warn!(
                node_id = %registrar.identity.node_id,
                controller = %registrar.controller_url,
                "controller no longer knows this node; registering again"
            ),
        }
    }
}

/// Why the reporting loop ended.
enum ReportEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The controller answered `NotFound`: register again.
    Forgotten,
}

struct Registrar {
    identity: NodeIdentity,
    controller_url: String,
    node: Node,
}

impl Registrar {
    /// Registers, retrying while the controller is unreachable. Returns the
    /// report interval, or `None` if shutdown came first.
    async fn register(
        &self,
        client: &mut StorageRegistryClient<Channel>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Duration>> {
        let mut backoff = Backoff::default();
        loop {
            let outcome = match self.node.capacity().await {
                Ok(capacity) => {
                    let request = RegisterNodeRequest {
                        node_id: self.identity.node_id.clone(),
                        endpoint: self.identity.endpoint.clone(),
                        site: self.identity.site.clone(),
                        capacity: Some(capacity_report(&self.identity.node_id, capacity)),
                    };
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(None),
                        result = client.register_node(request) => result.map_err(Some),
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot measure capacity before registering");
                    Err(None)
                }
            };
            match outcome {
                Ok(response) => {
                    let response = response.into_inner();
                    self.take_token_key(response.token_public_key).await;
                    let interval = report_interval(response.report_interval_ms);
                    tracing::info!(
                        node_id = %self.identity.node_id,
                        controller = %self.controller_url,
                        report_interval_ms = interval.as_millis() as u64,
                        "registered with controller"
                    );
                    return Ok(Some(interval));
                }
                Err(Some(status)) if !is_retryable(&status) => {
                    return Err(Error::RegistrationRefused {
                        controller: self.controller_url.clone(),
                        node_id: self.identity.node_id.clone(),
                        status: format!("{:?}: {}", status.code(), status.message()),
                    });
                }
                Err(status) => {
                    let delay = backoff.next_delay();
                    if let Some(status) = status {
                        tracing::warn!(
                            controller = %self.controller_url,
                            attempt = backoff.attempts(),
                            retry_in_ms = delay.as_millis() as u64,
                            code = ?status.code(),
                            error = %status.message(),
                            "cannot register with controller; retrying"
                        );
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(None),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Keeps the controller's token key if the node has none (a bad one,
    /// or one differing from the key in use, is logged: tokens stay
    /// verifiable with the key held so far).
    async fn take_token_key(&self, key: Vec<u8>) {
        if key.is_empty() {
            tracing::warn!(controller = %self.controller_url, "the controller sent no token key");
            return;
        }
        let tokens = self.node.tokens().clone();
        let stored = tokio::task::spawn_blocking(move || tokens.offer_blocking(&key)).await;
        match stored {
            Ok(Ok(Offer::Taken | Offer::Unchanged)) => {}
            Ok(Ok(Offer::Conflict { in_use, offered })) => tracing::error!(
                controller = %self.controller_url,
                in_use = %in_use,
                offered = %offered,
                "this controller hands out another token key than the one in use; keeping the key in use (all controllers of a fleet must share one signing key)"
            ),
            Ok(Err(err)) => tracing::error!(
                controller = %self.controller_url,
                error = %err,
                "cannot keep the controller's token key"
            ),
            Err(err) => tracing::error!(error = %err, "token key task failed"),
        }
    }

    /// Reports capacity every `interval` until shutdown or until the
    /// controller has forgotten the node.
    async fn report(
        &self,
        client: &mut StorageRegistryClient<Channel>,
        interval: Duration,
        shutdown: &CancellationToken,
    ) -> ReportEnd {
        // Only the first failure of a run is a warning; the rest are noise.
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return ReportEnd::Shutdown,
                () = tokio::time::sleep(interval) => {}
            }
            let capacity = match self.node.capacity().await {
                Ok(capacity) => capacity,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot measure capacity; skipping report");
                    continue;
                }
            };
            let report = capacity_report(&self.identity.node_id, capacity);
            let result = tokio::select! {
                () = shutdown.cancelled() => return ReportEnd::Shutdown,
                result = client.report_capacity(report) => result,
            };
            match result {
                Ok(_) => {
                    if failing {
                        tracing::info!(controller = %self.controller_url, "capacity reports delivered again");
                    }
                    failing = false;
                }
                Err(status) if status.code() == Code::NotFound => return ReportEnd::Forgotten,
                Err(status) if !failing => {
                    failing = true;
                    tracing::warn!(
                        controller = %self.controller_url,
                        code = ?status.code(),
                        error = %status.message(),
                        "capacity report failed; will keep trying"
                    );
                }
                Err(status) => tracing::debug!(code = ?status.code(), "capacity report failed"),
            }
        }
    }
}

/// The interval to report at, given what the controller asked for.
fn report_interval(report_interval_ms: u32) -> Duration {
    if report_interval_ms == 0 {
        return DEFAULT_REPORT_INTERVAL;
    }
    Duration::from_millis(u64::from(report_interval_ms)).max(MIN_REPORT_INTERVAL)
}

/// Whether a registration failure may succeed on retry.
fn is_retryable(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::OutOfRange
    )
}

/// Capped exponential backoff with jitter: the n-th delay is drawn uniformly
/// from `[ceiling/2, ceiling]`, with `ceiling = min(initial * 2^n, max)`, so
/// many nodes restarted together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempts: 0,
        }
    }

    /// How many delays have been handed out.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The next delay, with jitter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        jittered(ceiling, rand::rng().random_range(0.0..=1.0))
    }

    /// Upper bound of the `attempt`-th delay.
    fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// A delay between `ceiling/2` (at `unit = 0`) and `ceiling` (at `unit = 1`).
fn jittered(ceiling: Duration, unit: f64) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u64> = (0..7)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_half_and_full_ceiling() {
        let ceiling = Duration::from_millis(800);
        assert_eq!(jittered(ceiling, 0.0), Duration::from_millis(400));
        assert_eq!(jittered(ceiling, 1.0), ceiling);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        for attempt in 0..10 {
            let ceiling = backoff.ceiling(attempt);
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        assert_eq!(backoff.attempts(), 10);
    }

    #[test]
    fn report_interval_has_a_default_and_a_floor() {
        assert_eq!(report_interval(0), DEFAULT_REPORT_INTERVAL);
        assert_eq!(report_interval(1), MIN_REPORT_INTERVAL);
        assert_eq!(report_interval(2000), Duration::from_secs(2));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(is_retryable(&Status::unavailable("down")));
        assert!(is_retryable(&Status::deadline_exceeded("slow")));
        assert!(is_retryable(&Status::internal("oops")));
        assert!(!is_retryable(&Status::invalid_argument("bad site")));
        assert!(!is_retryable(&Status::unimplemented("old controller")));
    }

    #[test]
    fn refuses_a_malformed_controller_url() {
        let err = registry_client(&fleetmig_auth::Transport::Plaintext, "not a url")
            .expect_err("bad url");
        assert!(err.to_string().contains("not a url"), "{err}");
    }
}
