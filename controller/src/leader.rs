//! Leadership among controllers that share one etcd cluster, through etcd's election API.
//!
//! Every controller runs an [`Election`] and calls [`Election::campaign`]; exactly one at a time
//! holds a [`Leadership`], the one whose election key (`<election>/<lease id>`, attached to its
//! lease) has the lowest create revision. The leader keeps its lease alive every TTL/3
//! (TTL: [`DEFAULT_TTL`], 10 s); if the lease ends — keep-alives unanswered until it must have
//! expired, the server saying it is gone, or the key deleted — [`Leadership::lost`] is
//! cancelled: the controller stops leading and drains. Nothing panics or exits.
//!
//! # Fencing
//!
//! A process can be paused past its lease (SIGSTOP, a long GC-like stall, a partition) and go on
//! believing it leads. Its writes must then fail, which the store does atomically:
//! [`Leadership::guard`] is a [`LeaderGuard`] on the leader key's create revision, which is
//! unique to this term (a later leader's key is created at a higher revision) and so is also
//! the **fencing epoch** ([`Leadership::epoch`]) to hand to workers and storage nodes.
//! [`Txn::when_leader`] adds the guard to one transaction; [`FencedStore`] adds it to every
//! transaction of a store, so that leader code needs no change. A transaction whose guard fails
//! returns the error of [`crate::store::etcd::lost_leadership`].
//!
//! # Followers
//!
//! [`Election::leader`] tells who leads now, [`Election::observe`] streams each new leader.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client as etcd;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::etcd::{EtcdStore, lost_leadership, map_error};
use crate::store::{KeyValue, LeaderGuard, SharedStore, Store, Txn, TxnOutcome, WatchStream};

/// The default lease TTL of a leader: it is deposed at most this long after it stopped
/// renewing.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The shortest TTL asked for; etcd raises shorter ones to about 1.5 s anyway.
const MIN_TTL: Duration = Duration::from_secs(2);

/// Pauses between failed campaign attempts.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Pause before the leader-key watcher re-checks after its watch broke.
const KEY_RECHECK: Duration = Duration::from_secs(1);

/// Settings of one controller's participation in the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionConfig {
    /// The election's name: the etcd key prefix of its candidates'
    /// keys ([`crate::store::etcd::EtcdConfig::election_name`]).
    pub name: String,
    /// What this controller announces as leader, for the others and for operators: its
    /// address, typically.
    pub candidate: String,
    /// The leader lease's TTL; keep-alives go every TTL/3. Whole seconds, at least 2.
    pub ttl: Duration,
    /// Time allowed for one request other than the campaign itself (which waits until elected).
    pub request_timeout: Duration,
}

impl ElectionConfig {
    /// The election `name`, entered as `candidate`, with the default TTL.
    pub fn new(name: impl Into<String>, candidate: impl Into<String>) -> ElectionConfig {
        ElectionConfig {
            name: name.into(),
            candidate: candidate.into(),
            ttl: DEFAULT_TTL,
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The election of the cluster `store` belongs to.
    pub fn for_store(store: &EtcdStore, candidate: impl Into<String>) -> ElectionConfig {
        ElectionConfig {
            request_timeout: store.config().request_timeout,
            ..ElectionConfig::new(store.config().election_name(), candidate)
        }
    }

    /// The TTL in whole seconds, as etcd takes it.
    fn ttl_secs(&self) -> i64 {
        let ttl = self.ttl.max(MIN_TTL);
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    }
}

/// Who leads, as the election key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's election key.
    pub key: String,
    /// The key's create revision: the fencing epoch of this term.
    pub epoch: u64,
    /// What the leader announced ([`ElectionConfig::candidate`]).
    pub candidate: String,
    /// The leader's lease.
    pub lease: i64,
}

impl LeaderInfo {
    fn from_kv(kv: &etcd::KeyValue) -> Result<LeaderInfo> {
        Ok(LeaderInfo {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            epoch: u64::try_from(kv.create_revision()).map_err(|_| {
                Error::StoreUnavailable("leader key has a negative revision".to_owned())
            })?,
            candidate: String::from_utf8_lossy(kv.value()).into_owned(),
            lease: kv.lease(),
        })
    }
}

/// A stream of the leaders one after another; see [`Election::observe`].
pub type LeaderStream = Pin<Box<dyn futures::Stream<Item = Result<LeaderInfo>> + Send + 'static>>;

/// One controller's handle on the election.
#[derive(Clone)]
pub struct Election {
    client: etcd::Client,
    config: Arc<ElectionConfig>,
    label: Arc<str>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Election {
    /// Take part in the election `config.name` through `client`.
    pub fn new(client: etcd::Client, config: ElectionConfig) -> Election {
        let label = format!("election {}", config.name).into();
        Election {
            client,
            config: Arc::new(config),
            label,
        }
    }

    /// Take part in the election of `store`'s cluster, as `candidate`.
    pub fn for_store(store: &EtcdStore, candidate: impl Into<String>) -> Election {
        Election::new(
            store.client().clone(),
            ElectionConfig::for_store(store, candidate),
        )
    }

    /// The settings.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Wait until this controller leads, and return its leadership.
    ///
    /// Grants a lease and keeps it alive while waiting. Unreachable etcd and lost leases are
    /// retried with backoff; the call returns [`Error::StoreUnavailable`] only when `shutdown`
    /// is cancelled (withdrawing the candidacy) or on an error retrying cannot fix.
    pub async fn campaign(&self, shutdown: &CancellationToken) -> Result<Leadership> {
        let mut backoff = RETRY_MIN;
        loop {
            if shutdown.is_cancelled() {
                return Err(self.cancelled());
            }
            match self.try_campaign(shutdown).await {
                Ok(Some(leadership)) => return Ok(leadership),
                Ok(None) => return Err(self.cancelled()),
                Err(Error::StoreUnavailable(reason)) => {
                    tracing::warn!(election = %self.config.name, %reason, "campaign failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return Err(self.cancelled()),
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One campaign on a fresh lease; `None` when `shutdown` interrupted it.
    async fn try_campaign(&self, shutdown: &CancellationToken) -> Result<Option<Leadership>> {
        let granted_at = Instant::now();
        let mut lease_client = self.client.lease_client();
        let grant = self
            .call(
                "lease grant",
                lease_client.grant(self.config.ttl_secs(), None),
            )
            .await?;
        let lease_id = grant.id();
        let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(0));
        let lost = CancellationToken::new();
        let keeper = AbortOnDrop(tokio::spawn(keep_alive(
            self.client.lease_client(),
            lease_id,
            ttl,
            granted_at,
            lost.clone(),
        )));

        let mut election = self.client.election_client();
        let campaign = election.campaign(
            self.config.name.as_bytes(),
            self.config.candidate.as_bytes(),
            lease_id,
        );
        let response = tokio::select! {
            response = campaign => response,
            () = shutdown.cancelled() => {
                drop(keeper);
                self.revoke(lease_id).await;
                return Ok(None);
            }
            () = lost.cancelled() => {
                drop(keeper);
                self.revoke(lease_id).await;
                return Err(Error::StoreUnavailable(format!(
                    "{}: the lease ended while campaigning",
                    self.label
                )));
            }
        };
        let leader_key = match response {
            Ok(mut response) => response.take_leader(),
            Err(error) => {
                drop(keeper);
                self.revoke(lease_id).await;
                return Err(map_error(&self.label, "campaign", error));
            }
        };
        let Some(leader_key) = leader_key else {
            drop(keeper);
            self.revoke(lease_id).await;
            return Err(Error::StoreUnavailable(format!(
                "{}: campaign answered without a leader key",
                self.label
            )));
        };

        // etcd 3.4 can answer a campaign whose key its lease has already taken away: check that
        // the key is there, ours, before leading.
        let mut kv = self.client.kv_client();
        let current = self
            .call("leader key check", kv.get(leader_key.key(), None))
            .await;
        let held = match &current {
            Ok(response) => response.kvs().first().is_some_and(|kv| {
                kv.create_revision() == leader_key.rev() && kv.lease() == lease_id
            }),
            Err(_) => false,
        };
        if !held || lost.is_cancelled() {
            drop(keeper);
            self.revoke(lease_id).await;
            return Err(Error::StoreUnavailable(format!(
                "{}: elected, but the leader key was gone at once",
                self.label
            )));
        }

        let epoch = u64::try_from(leader_key.rev()).map_err(|_| {
            Error::StoreUnavailable(format!("{}: negative leader revision", self.label))
        })?;
        let info = LeaderInfo {
            key: String::from_utf8_lossy(leader_key.key()).into_owned(),
            epoch,
            candidate: self.config.candidate.clone(),
            lease: lease_id,
        };
        let watcher = AbortOnDrop(tokio::spawn(watch_leader_key(
            self.client.clone(),
            leader_key.key().to_vec(),
            leader_key.rev(),
            lost.clone(),
        )));
        tracing::info!(election = %self.config.name, key = %info.key, epoch, lease = lease_id, "elected leader");
        Ok(Some(Leadership {
            info,
            leader_key,
            election: self.clone(),
            lost,
            keeper: Some(keeper),
            _watcher: watcher,
        }))
    }

    /// The current leader, if there is one.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let mut election = self.client.election_client();
        match tokio::time::timeout(
            self.config.request_timeout,
            election.leader(self.config.name.as_bytes()),
        )
        .await
        {
            Ok(Ok(response)) => response.kv().map(LeaderInfo::from_kv).transpose(),
            Ok(Err(etcd::Error::GRpcStatus(status))) if status.message().contains("no leader") => {
                Ok(None)
            }
            Ok(Err(error)) => Err(map_error(&self.label, "leader", error)),
            Err(_) => Err(Error::StoreUnavailable(format!(
                "{}: leader timed out",
                self.label
            ))),
        }
    }

    /// Stream the leaders as they change, starting with the current one (once there is one).
    /// The stream ends after an error; observe again to go on.
    pub async fn observe(&self) -> Result<LeaderStream> {
        let mut election = self.client.election_client();
        let stream = self
            .call("observe", election.observe(self.config.name.as_bytes()))
            .await?;
        let label = Arc::clone(&self.label);
        let leaders = stream.filter_map(move |item| {
            let label = Arc::clone(&label);
            async move {
                match item {
                    Ok(response) => response.kv().map(LeaderInfo::from_kv),
                    Err(error) => Some(Err(map_error(&label, "observe", error))),
                }
            }
        });
        Ok(Box::pin(leaders))
    }

    async fn call<T>(
        &self,
        what: &'static str,
        request: impl std::future::Future<Output = Result<T, etcd::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(map_error(&self.label, what, error)),
            Err(_) => Err(Error::StoreUnavailable(format!(
                "{}: {what} timed out after {:?}",
                self.label, self.config.request_timeout
            ))),
        }
    }

    /// Revoke `lease` (deleting its keys), logging rather than failing.
    async fn revoke(&self, lease: i64) {
        let mut lease_client = self.client.lease_client();
        match self.call("lease revoke", lease_client.revoke(lease)).await {
            Ok(_) => {}
            Err(error) if error.to_string().contains("lease not found") => {}
            Err(error) => {
                tracing::warn!(election = %self.config.name, lease, %error, "could not revoke the lease; it expires by itself");
            }
        }
    }

    fn cancelled(&self) -> Error {
        Error::StoreUnavailable(format!("{}: campaign withdrawn on shutdown", self.label))
    }
}

/// This controller's term as leader. Dropping it stops renewing the lease (leadership then ends
/// within the TTL); [`Leadership::resign`] ends it at once.
pub struct Leadership {
    info: LeaderInfo,
    leader_key: etcd::LeaderKey,
    election: Election,
    lost: CancellationToken,
    keeper: Option<AbortOnDrop>,
    _watcher: AbortOnDrop,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("info", &self.info)
            .field("lost", &self.lost.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The leader key, epoch, candidate and lease of this term.
    pub fn info(&self) -> &LeaderInfo {
        &self.info
    }

    /// The fencing epoch: the leader key's create revision, higher for every later term.
    pub fn epoch(&self) -> u64 {
        self.info.epoch
    }

    /// The guard every write of this term carries ([`Txn::when_leader`], [`FencedStore`]).
    pub fn guard(&self) -> LeaderGuard {
        LeaderGuard {
            key: self.info.key.clone(),
            create_revision: self.info.epoch,
        }
    }

    /// Cancelled once this term is over: the lease was lost, or the leadership resigned or
    /// dropped. Leader work selects on it and stops.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Whether this term is over.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// End this term now: step down locally, delete the leader key and revoke the lease, so
    /// that the next candidate leads at once. Call it after draining leader work.
    pub async fn resign(mut self) -> Result<()> {
        self.lost.cancel();
        drop(self.keeper.take());
        let mut election = self.election.client.election_client();
        let options = etcd::ResignOptions::new().with_leader(self.leader_key.clone());
        if let Err(error) = self
            .election
            .call("resign", election.resign(Some(options)))
            .await
        {
            tracing::warn!(key = %self.info.key, %error, "resign failed; revoking the lease instead");
        }
        let mut lease_client = self.election.client.lease_client();
        let revoked = self
            .election
            .call("lease revoke", lease_client.revoke(self.info.lease))
            .await;
        tracing::info!(key = %self.info.key, epoch = self.info.epoch, "resigned leadership");
        match revoked {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("lease not found") => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Stop renewing the lease without telling anyone, as a paused process would.
    #[cfg(test)]
    pub(crate) fn stop_keep_alive(&mut self) {
        drop(self.keeper.take());
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.lost.cancel();
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renew `lease` every TTL/3 until it is lost, then cancel `lost`.
///
/// The lease is taken as expiring TTL after the last renewal *sent* that etcd answered (etcd
/// restarts the TTL when it receives it, later), so this side gives up no later than the server.
async fn keep_alive(
    client: etcd::LeaseClient,
    lease: i64,
    ttl: Duration,
    granted_at: Instant,
    lost: CancellationToken,
) {
    let reason = tokio::select! {
        reason = renew_until_lost(client, lease, ttl, granted_at) => reason,
        () = lost.cancelled() => return,
    };
    if !lost.is_cancelled() {
        tracing::warn!(lease, reason, "leadership lease lost; stepping down");
        lost.cancel();
    }
}

async fn renew_until_lost(
    mut client: etcd::LeaseClient,
    lease: i64,
    ttl: Duration,
    granted_at: Instant,
) -> &'static str {
    let interval = ttl / 3;
    let mut expires_at = granted_at + ttl;
    loop {
        let sent = Instant::now();
        let opened = tokio::time::timeout_at(expires_at, client.keep_alive(lease)).await;
        let (mut keeper, mut responses) = match opened {
            Ok(Ok(stream)) => {
                // Opening the stream sent a renewal and checked its answer.
                expires_at = sent + ttl;
                stream
            }
            Ok(Err(error)) if is_lease_gone(&error) => return "etcd says the lease is gone",
            Ok(Err(error)) => {
                tracing::debug!(lease, %error, "keep-alive stream failed; reopening");
                if Instant::now() + interval / 4 >= expires_at {
                    return "etcd unreachable until the lease expired";
                }
                tokio::time::sleep(interval / 4).await;
                continue;
            }
            Err(_) => return "etcd unreachable until the lease expired",
        };
        loop {
            tokio::time::sleep(interval).await;
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout_at(expires_at, responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {
                    let granted = Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0));
                    expires_at = sent + granted;
                }
                Ok(Ok(Some(_))) => return "the lease expired or was revoked",
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => return "no keep-alive answer before the lease expired",
            }
        }
        if Instant::now() >= expires_at {
            return "etcd unreachable until the lease expired";
        }
    }
}

fn is_lease_gone(error: &etcd::Error) -> bool {
    match error {
        etcd::Error::LeaseKeepAliveError(message) => message.contains("not found"),
        etcd::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        _ => false,
    }
}

/// Cancel `lost` as soon as the leader key is deleted or replaced (a revoked or expired lease,
/// an operator deleting it) — faster than the next keep-alive would tell.
async fn watch_leader_key(client: etcd::Client, key: Vec<u8>, epoch: i64, lost: CancellationToken) {
    let shown = String::from_utf8_lossy(&key).into_owned();
    tokio::select! {
        reason = watch_until_gone(client, key, epoch) => {
            if !lost.is_cancelled() {
                tracing::warn!(key = %shown, epoch, reason, "leader key gone; stepping down");
                lost.cancel();
            }
        }
        () = lost.cancelled() => {}
    }
}

async fn watch_until_gone(client: etcd::Client, key: Vec<u8>, epoch: i64) -> &'static str {
    let mut start = epoch;
    loop {
        let mut watch_client = client.watch_client();
        let options = etcd::WatchOptions::new().with_start_revision(start);
        if let Ok(mut stream) = watch_client.watch(key.clone(), Some(options)).await {
            while let Ok(Some(response)) = stream.message().await {
                if response.canceled() {
                    break;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    match event.event_type() {
                        etcd::EventType::Delete => return "the leader key was deleted",
                        etcd::EventType::Put if kv.create_revision() != epoch => {
                            return "the leader key was recreated";
                        }
                        etcd::EventType::Put => start = kv.mod_revision() + 1,
                    }
                }
            }
        }
        // The watch broke or was refused: look at the key itself, then watch again after it.
        tokio::time::sleep(KEY_RECHECK).await;
        let mut kv_client = client.kv_client();
        if let Ok(response) = kv_client.get(key.clone(), None).await {
            match response.kvs().first() {
                Some(kv) if kv.create_revision() == epoch => {
                    if let Some(header) = response.header() {
                        start = header.revision() + 1;
                    }
                }
                _ => return "the leader key is gone",
            }
        }
    }
}

/// A store whose every transaction carries a leadership's [`LeaderGuard`], and which refuses
/// to write at all once the leadership is known to be lost.
///
/// Give it to the code that runs only on the leader (the scheduler, wave controls); reads and
/// watches pass through unchanged.
pub struct FencedStore {
    inner: SharedStore,
    guard: LeaderGuard,
    lost: CancellationToken,
}

impl FencedStore {
    /// Guard every write to `inner` with `leadership`.
    pub fn new(inner: SharedStore, leadership: &Leadership) -> FencedStore {
        FencedStore {
            inner,
            guard: leadership.guard(),
            lost: leadership.lost(),
        }
    }

    /// The guard its transactions carry.
    pub fn guard(&self) -> &LeaderGuard {
        &self.guard
    }
}

#[async_trait::async_trait]
impl Store for FencedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.inner.range(prefix).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        if self.lost.is_cancelled() {
            return Err(lost_leadership(&self.guard));
        }
        self.inner.txn(txn.when_leader(self.guard.clone())).await
    }

    async fn revision(&self) -> Result<u64> {
        self.inner.revision().await
    }

    async fn watch(&self, prefix: &str, start_revision: u64) -> Result<WatchStream> {
        self.inner.watch(prefix, start_revision).await
    }
}

#[cfg(test)]
mod tests;
