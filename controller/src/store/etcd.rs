//! The etcd backend: the controller's [`Store`] kept in an etcd cluster that several controllers
//! share.
//!
//! # Layout
//!
//! Everything of one fleetmig cluster lives under one etcd key prefix, `/fleetmig/<cluster>/` by
//! default ([`EtcdConfig::prefix`]):
//!
//! - `<prefix>kv/<key>`: the store's keys (`jobs/…`, `machines/…`, …), values as the callers
//!   encoded them. [`Store`] keys are relative to `<prefix>kv/`.
//! - `<prefix>leader`: the election of [`crate::leader`]; its keys are
//!   `<prefix>leader/<lease id>`, outside the store's keys so that loads and watches never see
//!   them.
//!
//! # Semantics
//!
//! The [`Store`] model is etcd's, so the mapping is direct: revisions are etcd's revisions (the
//! whole cluster's counter, moved by other etcd clients too), a [`Txn`] is one etcd `Txn` whose
//! compares are `mod_revision(key) == r` (`create_revision(key) == 0` for "absent") and whose
//! success branch holds every put and delete. etcd does not say which compare failed, so the
//! failure branch reads every compared key (keys only) in the same atomic step; the first one
//! whose revision differs is the conflict reported, exactly as the embedded store reports it.
//!
//! Ranges are read in pages of [`EtcdConfig::page_size`] keys, all at the revision of the first
//! page, so a large range (100,000 jobs) is one consistent snapshot without one huge response.
//!
//! # Limits of the etcd server
//!
//! - **`--max-txn-ops`** (etcd's default: 128) caps the compares, and separately the operations,
//!   of one transaction. The controller commits up to 50 jobs together with their audit events,
//!   plus compares, so **run etcd with `--max-txn-ops 1024`** ([`RECOMMENDED_MAX_TXN_OPS`]) and
//!   set [`EtcdConfig::max_txn_ops`] to the server's value. A larger transaction is refused with
//!   [`Error::InvalidArgument`] before it is sent: splitting it would break its atomicity.
//! - **`--max-request-bytes`** (default 1.5 MiB, [`ETCD_DEFAULT_MAX_REQUEST_BYTES`]) caps one
//!   request, so one transaction's keys and values together. Transactions estimated above
//!   [`EtcdConfig::max_request_bytes`] are refused the same way.
//! - Requests are linearizable reads and consensus writes: each costs a round trip to the etcd
//!   leader and, for writes, an fsync on a quorum. Only job transitions and milestones belong
//!   here, never per-heartbeat data.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client as etcd;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    Compare, KeyValue, LeaderGuard, Op, Store, Txn, TxnOutcome, WatchEvent, WatchStream,
    WatchUpdate,
};
use crate::error::{Error, Result};

/// The prefix of the default cluster.
pub const DEFAULT_PREFIX: &str = "/fleetmig/default/";

/// The `--max-txn-ops` fleetmig needs of its etcd servers, and the default of
/// [`EtcdConfig::max_txn_ops`]. etcd's own default is 128.
pub const RECOMMENDED_MAX_TXN_OPS: usize = 1024;

/// etcd's default `--max-txn-ops`.
pub const ETCD_DEFAULT_MAX_TXN_OPS: usize = 128;

/// etcd's default `--max-request-bytes` (1.5 MiB), the default of
/// [`EtcdConfig::max_request_bytes`].
pub const ETCD_DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Default number of keys read per range request.
pub const DEFAULT_PAGE_SIZE: usize = 1000;

/// Largest response the client accepts (a page of large values, a watch batch of many
/// transactions); gRPC's default of 4 MiB is too small for a full page of 1.5 MiB writes.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Bytes a request carries besides its keys and values, estimated generously.
const REQUEST_OVERHEAD_BYTES: usize = 1024;
/// Bytes each operation or compare adds besides its key and value, estimated generously.
const PER_ITEM_OVERHEAD_BYTES: usize = 32;

/// How many times a range restarts after its pinned revision was compacted under it.
const SNAPSHOT_ATTEMPTS: usize = 5;

/// Queue between [`EtcdStore::follow`]'s task and its receiver.
const FOLLOW_QUEUE: usize = 1024;

/// The shortest and longest pause of [`EtcdStore::follow`] between failed attempts.
const FOLLOW_BACKOFF_MIN: Duration = Duration::from_millis(100);
const FOLLOW_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How to reach an etcd cluster and where fleetmig's keys live in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members (`http://host:2379`, or `host:2379`).
    pub endpoints: Vec<String>,
    /// The key prefix of this fleetmig cluster; non-empty and ending in `/`.
    pub prefix: String,
    /// The servers' `--max-txn-ops`: the most compares, and separately the most operations, one
    /// transaction may have.
    pub max_txn_ops: usize,
    /// The servers' `--max-request-bytes`: the largest transaction, keys and values together.
    pub max_request_bytes: usize,
    /// Keys per range request.
    pub page_size: usize,
    /// Time allowed for one request (a get, a range page, a transaction).
    pub request_timeout: Duration,
    /// Time allowed to connect to an endpoint.
    pub connect_timeout: Duration,
}

impl EtcdConfig {
    /// Settings for the cluster at `endpoints`, with the default prefix and limits.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_txn_ops: RECOMMENDED_MAX_TXN_OPS,
            max_request_bytes: ETCD_DEFAULT_MAX_REQUEST_BYTES,
            page_size: DEFAULT_PAGE_SIZE,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Parse a store URL of the form `etcd://host:2379,host2:2379` (the `--store` syntax).
    pub fn parse(url: &str) -> Result<EtcdConfig> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            Error::InvalidArgument(format!(
                "store URL {url:?} does not start with etcd:// (expected etcd://host:2379,...)"
            ))
        })?;
        let rest = rest.trim_end_matches('/');
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
            .map(|endpoint| format!("http://{endpoint}"))
            .collect();
        if endpoints.is_empty() || rest.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "store URL {url:?} must list endpoints as etcd://host:2379,host2:2379"
            )));
        }
        Ok(EtcdConfig::new(endpoints))
    }

    /// Use the prefix of cluster `name`: `/fleetmig/<name>/`.
    pub fn with_cluster(mut self, name: &str) -> EtcdConfig {
        self.prefix = format!("/fleetmig/{name}/");
        self
    }

    /// The etcd key prefix of the store's keys: `<prefix>kv/`.
    pub fn kv_prefix(&self) -> String {
        format!("{}kv/", self.prefix)
    }

    /// The name of the leader election: `<prefix>leader`.
    pub fn election_name(&self) -> String {
        format!("{}leader", self.prefix)
    }

    fn check(&self) -> Result<()> {
        let problem = if self.endpoints.is_empty() {
            Some("no endpoints".to_owned())
        } else if self.prefix.is_empty() || !self.prefix.ends_with('/') {
            Some(format!(
                "prefix {:?} must be non-empty and end in /",
                self.prefix
            ))
        } else if self.max_txn_ops == 0 || self.page_size == 0 || self.max_request_bytes == 0 {
            Some("max_txn_ops, max_request_bytes and page_size must be positive".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::InvalidArgument(format!(
                "etcd store configuration: {problem}"
            ))),
            None => Ok(()),
        }
    }
}

/// A consistent read of every key under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The store revision the keys were read at: they reflect every change up to it and none
    /// after. Watch from `revision + 1` to continue.
    pub revision: u64,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
}

/// What [`EtcdStore::follow`] delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUpdate {
    /// Replace everything known under the prefix with this snapshot: the first update, and
    /// again whenever the history needed to continue was compacted away.
    Reset(Snapshot),
    /// The changes of one committed transaction, after the last update's revision.
    Changes {
        /// The revision the transaction committed at.
        revision: u64,
        /// Its changes under the prefix.
        events: Vec<WatchEvent>,
    },
}

/// A [`Store`] in an etcd cluster; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct EtcdStore {
    client: etcd::Client,
    kv: etcd::KvClient,
    config: Arc<EtcdConfig>,
    /// `<prefix>kv/`, prepended to every store key.
    kv_prefix: Arc<str>,
    /// The endpoints, for messages.
    label: Arc<str>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect to the cluster and check that it answers.
    pub async fn connect(config: EtcdConfig) -> Result<EtcdStore> {
        config.check()?;
        let label: Arc<str> = format!("etcd://{}", config.endpoints.join(",")).into();
        let options = etcd::ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let connect = etcd::Client::connect(config.endpoints.clone(), Some(options));
        let client = match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(map_error(&label, "connect", error)),
            Err(_) => {
                return Err(Error::StoreUnavailable(format!(
                    "{label}: connecting timed out after {:?}",
                    config.connect_timeout
                )));
            }
        };
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(config.max_request_bytes.saturating_mul(2));
        let store = EtcdStore {
            client,
            kv,
            kv_prefix: config.kv_prefix().into(),
            config: Arc::new(config),
            label,
        };
        // The client connects lazily: ask for the revision so that a wrong address fails here.
        let revision = store.revision().await?;
        tracing::info!(store = %store.label, prefix = %store.config.prefix, revision, "connected to etcd");
        Ok(store)
    }

    /// The etcd client, shared with [`crate::leader`].
    pub fn client(&self) -> &etcd::Client {
        &self.client
    }

    /// The settings this store was connected with.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The full etcd key of store key `key`.
    pub fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.kv_prefix)
    }

    /// Read every key under `prefix` at one revision, in pages of [`EtcdConfig::page_size`].
    pub async fn snapshot(&self, prefix: &str) -> Result<Snapshot> {
        let mut attempt = 1;
        loop {
            match self.try_snapshot(prefix).await {
                Err(Failure::Compacted) if attempt < SNAPSHOT_ATTEMPTS => {
                    tracing::debug!(store = %self.label, prefix, attempt, "range revision compacted during paging; restarting");
                    attempt += 1;
                }
                Err(Failure::Compacted) => {
                    return Err(Error::StoreUnavailable(format!(
                        "{}: range of {prefix:?} kept being compacted while paging",
                        self.label
                    )));
                }
                Err(Failure::Error(error)) => return Err(error),
                Ok(snapshot) => return Ok(snapshot),
            }
        }
    }

    async fn try_snapshot(&self, prefix: &str) -> Result<Snapshot, Failure> {
        let full_prefix = self.etcd_key(prefix).into_bytes();
        let end = prefix_end(&full_prefix);
        let page_size = i64::try_from(self.config.page_size).unwrap_or(i64::MAX);
        let mut start = full_prefix;
        let mut revision = 0_i64;
        let mut kvs = Vec::new();
        loop {
            let options = etcd::GetOptions::new()
                .with_range(end.clone())
                .with_limit(page_size)
                .with_revision(revision);
            let mut kv = self.kv.clone();
            let mut page = self
                .call_raw("range", kv.get(start.clone(), Some(options)))
                .await?;
            if revision == 0 {
                revision = header_revision(page.header()).map_err(Failure::Error)?;
            }
            let more = page.more();
            let page = page.take_kvs();
            let Some(last) = page.last() else { break };
            start = last.key().to_vec();
            start.push(0);
            for kv in page {
                kvs.push(self.decode(kv).map_err(Failure::Error)?);
            }
            if !more {
                break;
            }
        }
        Ok(Snapshot {
            revision: to_revision(revision).map_err(Failure::Error)?,
            kvs,
        })
    }

    /// Keep a copy of everything under `prefix` current: a [`FollowUpdate::Reset`] snapshot, then
    /// every change after it, in order; a new `Reset` whenever compaction breaks the history.
    ///
    /// Errors (etcd unreachable, a watch broken) are logged and retried with backoff; the
    /// updates resume exactly after the last one delivered. The task stops when `shutdown` is
    /// cancelled or the receiver is dropped.
    pub fn follow(
        &self,
        prefix: &str,
        shutdown: CancellationToken,
    ) -> mpsc::Receiver<FollowUpdate> {
        let (sender, receiver) = mpsc::channel(FOLLOW_QUEUE);
        let store = self.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = store.run_follow(&prefix, &sender) => {}
                () = shutdown.cancelled() => {}
                () = sender.closed() => {}
            }
            tracing::debug!(store = %store.label, prefix, "follow stopped");
        });
        receiver
    }

    async fn run_follow(&self, prefix: &str, sender: &mpsc::Sender<FollowUpdate>) {
        let mut backoff = FOLLOW_BACKOFF_MIN;
        loop {
            let snapshot = match self.snapshot(prefix).await {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    tracing::warn!(store = %self.label, prefix, %error, "follow: snapshot failed; retrying");
                    pause(&mut backoff).await;
                    continue;
                }
            };
            let mut last = snapshot.revision;
            tracing::debug!(store = %self.label, prefix, revision = last, keys = snapshot.kvs.len(), "follow: snapshot");
            if sender.send(FollowUpdate::Reset(snapshot)).await.is_err() {
                return;
            }
            'watch: loop {
                let mut stream = match self.watch(prefix, last + 1).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(store = %self.label, prefix, %error, "follow: watch failed; retrying");
                        pause(&mut backoff).await;
                        continue 'watch;
                    }
                };
                while let Some(update) = stream.next().await {
                    match update {
                        Ok(WatchUpdate::Changes { revision, events }) => {
                            backoff = FOLLOW_BACKOFF_MIN;
                            last = revision;
                            let update = FollowUpdate::Changes { revision, events };
                            if sender.send(update).await.is_err() {
                                return;
                            }
                        }
                        Ok(WatchUpdate::Compacted { compact_revision }) => {
                            tracing::info!(store = %self.label, prefix, last, compact_revision, "follow: history compacted; reloading");
                            break 'watch;
                        }
                        Err(error) => {
                            tracing::warn!(store = %self.label, prefix, last, %error, "follow: watch broke; resuming");
                            break;
                        }
                    }
                }
                pause(&mut backoff).await;
            }
        }
    }

    /// Run a unary request with the request timeout.
    async fn call_raw<T>(
        &self,
        what: &'static str,
        request: impl Future<Output = Result<T, etcd::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if is_compacted(&error) => Err(Failure::Compacted),
            Ok(Err(error)) => Err(Failure::Error(map_error(&self.label, what, error))),
            Err(_) => Err(Failure::Error(Error::StoreUnavailable(format!(
                "{}: {what} timed out after {:?}",
                self.label, self.config.request_timeout
            )))),
        }
    }

    async fn call<T>(
        &self,
        what: &'static str,
        request: impl Future<Output = Result<T, etcd::Error>>,
    ) -> Result<T> {
        self.call_raw(what, request)
            .await
            .map_err(|failure| match failure {
                Failure::Error(error) => error,
                Failure::Compacted => Error::StoreUnavailable(format!(
                    "{}: {what}: required revision has been compacted",
                    self.label
                )),
            })
    }

    /// A stored etcd key-value as a store [`KeyValue`], its key made relative.
    fn decode(&self, kv: etcd::KeyValue) -> Result<KeyValue> {
        let key = self.relative_key(kv.key())?;
        let create_revision = to_revision(kv.create_revision())?;
        let mod_revision = to_revision(kv.mod_revision())?;
        let (_, value) = kv.into_key_value();
        Ok(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        })
    }

    fn relative_key(&self, key: &[u8]) -> Result<String> {
        let shown = || String::from_utf8_lossy(key).into_owned();
        let relative =
            key.strip_prefix(self.kv_prefix.as_bytes())
                .ok_or_else(|| Error::StoreCorrupt {
                    key: shown(),
                    reason: format!("etcd returned a key outside {}", self.kv_prefix),
                })?;
        String::from_utf8(relative.to_vec()).map_err(|_| Error::StoreCorrupt {
            key: shown(),
            reason: "key is not UTF-8".to_owned(),
        })
    }

    /// Refuse a transaction that etcd would refuse for its size, with the reason.
    fn check_limits(&self, txn: &Txn) -> Result<()> {
        let max = self.config.max_txn_ops;
        let compares = txn.compares.len() + usize::from(txn.guard.is_some());
        if compares > max || txn.ops.len() > max {
            return Err(Error::InvalidArgument(format!(
                "store transaction has {compares} compares and {} operations; the etcd store \
                 allows at most {max} of each (etcd --max-txn-ops; fleetmig needs \
                 --max-txn-ops {RECOMMENDED_MAX_TXN_OPS})",
                txn.ops.len()
            )));
        }
        let prefix = self.kv_prefix.len() + PER_ITEM_OVERHEAD_BYTES;
        let ops: usize = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => prefix + key.len() + value.len(),
                Op::Delete { key } => prefix + key.len(),
            })
            .sum();
        // Each compare is sent twice: as the compare and as the failure branch's read.
        let compares: usize = txn
            .compares
            .iter()
            .map(|compare| 2 * (prefix + compare.key().len()))
            .sum();
        let guard = txn
            .guard
            .as_ref()
            .map_or(0, |guard| 2 * (guard.key.len() + PER_ITEM_OVERHEAD_BYTES));
        let size = REQUEST_OVERHEAD_BYTES + ops + compares + guard;
        if size > self.config.max_request_bytes {
            return Err(Error::InvalidArgument(format!(
                "store transaction is about {size} bytes; the etcd store allows at most {} \
                 (etcd --max-request-bytes, 1.5 MiB by default)",
                self.config.max_request_bytes
            )));
        }
        Ok(())
    }

    /// Find, from the failure branch's reads, why a transaction did not apply.
    fn explain_failure(
        &self,
        txn_compares: &[Compare],
        guard: Option<&LeaderGuard>,
        response: &etcd::TxnResponse,
    ) -> Result<TxnOutcome> {
        let mut reads = response.op_responses().into_iter();
        let mut next_read = |what: &str| -> Result<Option<(i64, i64)>> {
            match reads.next() {
                Some(etcd::TxnOpResponse::Get(get)) => Ok(get
                    .kvs()
                    .first()
                    .map(|kv| (kv.create_revision(), kv.mod_revision()))),
                _ => Err(Error::StoreIo {
                    path: self.label.to_string(),
                    message: format!("failed transaction did not return the read of {what}"),
                }),
            }
        };
        if let Some(guard) = guard {
            let created = next_read(&guard.key)?.map_or(0, |(created, _)| created);
            if to_revision(created)? != guard.create_revision {
                return Err(lost_leadership(guard));
            }
        }
        for compare in txn_compares {
            let Compare::ModRevision { key, revision } = compare;
            let actual = next_read(key)?.map_or(0, |(_, modified)| modified);
            if to_revision(actual)? != *revision {
                return Ok(TxnOutcome::Conflict { key: key.clone() });
            }
        }
        // Unreachable while etcd evaluates what it reads atomically; name the first key anyway.
        let key = txn_compares
            .first()
            .map(|compare| compare.key().to_owned())
            .unwrap_or_default();
        tracing::warn!(store = %self.label, key, "etcd transaction failed but every compare re-read as holding");
        Ok(TxnOutcome::Conflict { key })
    }

    /// Turn one etcd watch response into updates, grouped by revision.
    fn absorb(
        &self,
        response: &etcd::WatchResponse,
        out: &mut VecDeque<Result<WatchUpdate>>,
    ) -> bool {
        let mut updates: Vec<WatchUpdate> = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let decoded = (|| -> Result<(u64, WatchEvent)> {
                let revision = to_revision(kv.mod_revision())?;
                let event = match event.event_type() {
                    etcd::EventType::Put => WatchEvent::Put(self.decode(kv.clone())?),
                    etcd::EventType::Delete => WatchEvent::Delete {
                        key: self.relative_key(kv.key())?,
                    },
                };
                Ok((revision, event))
            })();
            let (revision, event) = match decoded {
                Ok(decoded) => decoded,
                Err(error) => {
                    out.extend(updates.into_iter().map(Ok));
                    out.push_back(Err(error));
                    return true;
                }
            };
            match updates.last_mut() {
                Some(WatchUpdate::Changes {
                    revision: current,
                    events,
                }) if *current == revision => events.push(event),
                _ => updates.push(WatchUpdate::Changes {
                    revision,
                    events: vec![event],
                }),
            }
        }
        out.extend(updates.into_iter().map(Ok));
        if response.canceled() {
            if response.compact_revision() > 0 {
                let compact_revision = u64::try_from(response.compact_revision()).unwrap_or(0);
                out.push_back(Ok(WatchUpdate::Compacted { compact_revision }));
            } else {
                out.push_back(Err(Error::StoreUnavailable(format!(
                    "{}: etcd cancelled the watch: {}",
                    self.label,
                    response.cancel_reason()
                ))));
            }
            return true;
        }
        false
    }
}

/// Why a read failed: the revision it pinned was compacted (retry from scratch), or anything
/// else.
enum Failure {
    Compacted,
    Error(Error),
}

/// The state of one watch stream.
struct WatchState {
    store: EtcdStore,
    stream: etcd::WatchStream,
    pending: VecDeque<Result<WatchUpdate>>,
    done: bool,
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut kv = self.kv.clone();
        let mut response = self.call("get", kv.get(self.etcd_key(key), None)).await?;
        response
            .take_kvs()
            .into_iter()
            .next()
            .map(|kv| self.decode(kv))
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        Ok(self.snapshot(prefix).await?.kvs)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        txn.validate()?;
        self.check_limits(&txn)?;
        let Txn {
            compares: txn_compares,
            ops,
            guard,
        } = txn;
        let keys_only = || Some(etcd::GetOptions::new().with_keys_only());
        let mut compares = Vec::with_capacity(txn_compares.len() + 1);
        let mut reads = Vec::with_capacity(txn_compares.len() + 1);
        if let Some(guard) = &guard {
            compares.push(etcd::Compare::create_revision(
                guard.key.as_bytes(),
                etcd::CompareOp::Equal,
                to_etcd_revision(guard.create_revision)?,
            ));
            reads.push(etcd::TxnOp::get(guard.key.as_bytes(), keys_only()));
        }
        for compare in &txn_compares {
            let Compare::ModRevision { key, revision } = compare;
            let key = self.etcd_key(key);
            compares.push(if *revision == 0 {
                etcd::Compare::create_revision(key.as_bytes(), etcd::CompareOp::Equal, 0)
            } else {
                etcd::Compare::mod_revision(
                    key.as_bytes(),
                    etcd::CompareOp::Equal,
                    to_etcd_revision(*revision)?,
                )
            });
            reads.push(etcd::TxnOp::get(key, keys_only()));
        }
        let ops: Vec<etcd::TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => etcd::TxnOp::put(self.etcd_key(&key), value, None),
                Op::Delete { key } => etcd::TxnOp::delete(self.etcd_key(&key), None),
            })
            .collect();
        let request = etcd::Txn::new().when(compares).and_then(ops).or_else(reads);
        let mut kv = self.kv.clone();
        let response = self.call("txn", kv.txn(request)).await?;
        let revision = to_revision(header_revision(response.header())?)?;
        if response.succeeded() {
            return Ok(TxnOutcome::Committed { revision });
        }
        self.explain_failure(&txn_compares, guard.as_ref(), &response)
    }

    async fn revision(&self) -> Result<u64> {
        // A single-key read of the prefix itself (never a store key) is the cheapest request
        // that carries the cluster's current revision.
        let options = etcd::GetOptions::new().with_keys_only();
        let mut kv = self.kv.clone();
        let response = self
            .call(
                "revision",
                kv.get(self.config.prefix.as_bytes(), Some(options)),
            )
            .await?;
        to_revision(header_revision(response.header())?)
    }

    async fn watch(&self, prefix: &str, start_revision: u64) -> Result<WatchStream> {
        let options = etcd::WatchOptions::new()
            .with_prefix()
            .with_start_revision(to_etcd_revision(start_revision)?);
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let stream = self
            .call("watch", client.watch(self.etcd_key(prefix), Some(options)))
            .await?;
        let state = WatchState {
            store: self.clone(),
            stream,
            pending: VecDeque::new(),
            done: false,
        };
        let updates = futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(update) = state.pending.pop_front() {
                    return Some((update, state));
                }
                if state.done {
                    return None;
                }
                match state.stream.message().await {
                    Ok(Some(response)) => {
                        state.done = state.store.absorb(&response, &mut state.pending);
                    }
                    Ok(None) => {
                        state.done = true;
                        state.pending.push_back(Err(Error::StoreUnavailable(format!(
                            "{}: etcd closed the watch",
                            state.store.label
                        ))));
                    }
                    Err(error) => {
                        state.done = true;
                        state
                            .pending
                            .push_back(Err(map_error(&state.store.label, "watch", error)));
                    }
                }
            }
        });
        Ok(Box::pin(updates))
    }
}

/// The error a transaction fails with when its leader guard no longer holds.
pub fn lost_leadership(guard: &LeaderGuard) -> Error {
    Error::NotLeader {
        key: guard.key.clone(),
        epoch: guard.create_revision,
    }
}

/// Whether `error` is the failure of a transaction whose leader guard no longer held.
pub fn is_lost_leadership(error: &Error) -> bool {
    matches!(error, Error::NotLeader { .. })
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: every key from the prefix on.
    vec![0]
}

fn header_revision(header: Option<&etcd::ResponseHeader>) -> Result<i64> {
    header
        .map(etcd::ResponseHeader::revision)
        .ok_or_else(|| Error::StoreUnavailable("etcd response carries no header".to_owned()))
}

fn to_revision(revision: i64) -> Result<u64> {
    u64::try_from(revision)
        .map_err(|_| Error::StoreUnavailable(format!("etcd returned negative revision {revision}")))
}

fn to_etcd_revision(revision: u64) -> Result<i64> {
    i64::try_from(revision)
        .map_err(|_| Error::InvalidArgument(format!("revision {revision} is beyond etcd's range")))
}

async fn pause(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(FOLLOW_BACKOFF_MAX);
}

fn is_compacted(error: &etcd::Error) -> bool {
    matches!(error, etcd::Error::GRpcStatus(status)
        if status.code() == tonic::Code::OutOfRange
            || status.message().contains("required revision has been compacted"))
}

/// Map an etcd client error onto the controller's errors: retryable trouble is
/// [`Error::StoreUnavailable`], limits etcd enforces are [`Error::InvalidArgument`] with the
/// setting to change, anything else [`Error::StoreIo`].
pub(crate) fn map_error(label: &str, what: &str, error: etcd::Error) -> Error {
    match &error {
        etcd::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("too many operations in txn request") {
                Error::InvalidArgument(format!(
                    "{label}: etcd refused a {what} with more operations than its --max-txn-ops \
                     allows; run etcd with --max-txn-ops {RECOMMENDED_MAX_TXN_OPS} and set the \
                     store's max_txn_ops to match ({message})"
                ))
            } else if message.contains("request is too large")
                || message.contains("received message larger than max")
            {
                Error::InvalidArgument(format!(
                    "{label}: etcd refused a {what} larger than its --max-request-bytes \
                     (1.5 MiB by default) ({message})"
                ))
            } else {
                match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Unknown => {
                        Error::StoreUnavailable(format!("{label}: {what}: {message}"))
                    }
                    _ => Error::StoreIo {
                        path: label.to_owned(),
                        message: format!("{what}: {error}"),
                    },
                }
            }
        }
        etcd::Error::TransportError(_)
        | etcd::Error::IoError(_)
        | etcd::Error::EndpointError(_)
        | etcd::Error::WatchError(_)
        | etcd::Error::LeaseKeepAliveError(_) => {
            Error::StoreUnavailable(format!("{label}: {what}: {error}"))
        }
        _ => Error::StoreIo {
            path: label.to_owned(),
            message: format!("{what}: {error}"),
        },
    }
}

#[cfg(test)]
pub(crate) mod test_server;

#[cfg(test)]
mod tests;
