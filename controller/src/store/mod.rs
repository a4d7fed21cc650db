//! The controller's key-value store: the trait every backend implements, and its types.
//!
//! The model is deliberately etcd's, so that an etcd backend can implement [`Store`] without
//! pretending:
//!
//! - Keys are UTF-8 strings with `/`-separated prefixes (`jobs/<id>`); values are bytes that the
//!   callers encode (JSON).
//! - The store has one global revision counter. Every committed transaction that changes
//!   something moves it forward by exactly one; all of that transaction's puts carry the new
//!   revision as their `mod_revision`.
//! - A transaction is a list of compares on `mod_revision` and a list of operations. If every
//!   compare holds, all operations apply atomically at one new revision; otherwise nothing applies.
//!
//! Revisions start at 0 for an empty store, and every existing key has a `mod_revision` of at
//! least 1, so `mod_revision == 0` means "absent". Callers must rely only on ordering and
//! equality of revisions, never on their absolute values: an etcd cluster starts at revision 1
//! and other etcd clients move it too.
//!
//! [`embedded::EmbeddedStore`] keeps everything in a local redb file; [`etcd::EtcdStore`] keeps
//! it in an etcd cluster, shared by several controllers.
//!
//! # Leadership guards
//!
//! With several controllers on one etcd cluster, the leader elected through
//! [`crate::leader`] makes every write conditional on still being the leader:
//! [`Txn::when_leader`] adds a [`LeaderGuard`] that holds only while the leader key still exists
//! with the create revision it had when the controller was elected. A deposed leader's guarded
//! writes fail with an error, never with a [`TxnOutcome::Conflict`], so that nobody retries them.
//!
//! # Watches
//!
//! [`Store::watch`] streams the changes under a prefix, one [`WatchUpdate::Changes`] per
//! committed revision, so that follower controllers keep their in-memory state current. A
//! watch that falls behind the store's compaction ends with [`WatchUpdate::Compacted`]; the
//! follower then reloads everything ([`etcd::EtcdStore::follow`] does all of this).

pub mod embedded;
pub mod etcd;

#[cfg(test)]
pub(crate) mod conformance;

use std::collections::HashSet;

use crate::error::{Error, Result};

pub use embedded::EmbeddedStore;

/// A stored value with etcd-style revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, for example `jobs/0190c3a4-…`.
    pub key: String,
    /// The bytes the caller stored.
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (kept across later puts; a key that is
    /// deleted and put again gets a new one).
    pub create_revision: u64,
    /// Revision of the transaction that last put the key.
    pub mod_revision: u64,
}

/// A condition a transaction checks before applying its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod_revision equals this (0 = the key must not exist).
    ModRevision {
        /// The key to check.
        key: String,
        /// The `mod_revision` the key must have; 0 requires the key to be absent.
        revision: u64,
    },
}

impl Compare {
    /// The key this compare looks at.
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision { key, .. } => key,
        }
    }
}

/// One change a transaction makes when its compares hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite a key.
    Put {
        /// The key to write.
        key: String,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Remove a key; removing an absent key is not an error and changes nothing.
    Delete {
        /// The key to remove.
        key: String,
    },
}

impl Op {
    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// "This controller is still the leader": the election key `key` exists and still has the
/// create revision it had when this controller won the election.
///
/// A leader key's create revision is unique to one term of leadership (a new leader's key is
/// created later, at a higher revision), which makes it the fencing epoch of that term; see
/// [`crate::leader::Leadership::guard`].
///
/// `key` is the full etcd key returned by the election, not a key relative to the store's
/// prefix.
///
/// Backends:
/// - [`etcd::EtcdStore`] adds `create_revision(key) == create_revision` to the etcd
///   transaction's compares, so the check and the writes are one atomic step; when it fails the
///   transaction returns [`Error::StoreUnavailable`] naming the lost leadership.
/// - [`embedded::EmbeddedStore`] treats every guard as holding. It has no elections: redb locks
///   its file, so exactly one controller process uses it, and that process is trivially the only
///   leader there will ever be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaderGuard {
    /// The leader's election key (full etcd key).
    pub key: String,
    /// The create revision the election key must still have.
    pub create_revision: u64,
}

/// A conditional, atomic batch of operations.
///
/// Build one with [`Txn::new`] and the chaining helpers:
///
/// ```
/// # use fleetmig_controller::store::Txn;
/// let txn = Txn::new()
///     .when_revision("jobs/1", 7)
///     .put("jobs/1", b"{}".to_vec())
///     .delete("queue/1");
/// assert_eq!(txn.ops.len(), 2);
/// ```
///
/// As in etcd, one transaction may touch each key at most once; [`Store::txn`] rejects a
/// transaction whose operations name the same key twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions that must all hold, checked in order.
    pub compares: Vec<Compare>,
    /// Operations applied, all at one revision, when every compare holds.
    pub ops: Vec<Op>,
    /// If set, the transaction also requires this leadership to still hold; see
    /// [`LeaderGuard`] for what each backend does with it.
    pub guard: Option<LeaderGuard>,
}

impl Txn {
    /// An empty transaction: no compares, no operations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Require `key`'s `mod_revision` to equal `revision` (0: the key must not exist).
    pub fn when_revision(mut self, key: impl Into<String>, revision: u64) -> Self {
        self.compares.push(Compare::ModRevision {
            key: key.into(),
            revision,
        });
        self
    }

    /// Require `key` not to exist; the same as `when_revision(key, 0)`.
    pub fn when_absent(self, key: impl Into<String>) -> Self {
        self.when_revision(key, 0)
    }

    /// Require the leadership `guard` to still hold (checked before the compares); replaces any
    /// guard set before.
    pub fn when_leader(mut self, guard: LeaderGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Put `value` at `key` if the compares hold.
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Delete `key` if the compares hold.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    /// Check the rules every backend enforces: no empty key, no key touched twice by the
    /// operations (etcd refuses both).
    pub fn validate(&self) -> Result<()> {
        if self
            .guard
            .as_ref()
            .is_some_and(|guard| guard.key.is_empty())
        {
            return Err(Error::InvalidArgument(
                "store transaction is guarded by an empty leader key".to_owned(),
            ));
        }
        if self.compares.iter().any(|compare| compare.key().is_empty()) {
            return Err(Error::InvalidArgument(
                "store transaction compares an empty key".to_owned(),
            ));
        }
        let mut seen = HashSet::with_capacity(self.ops.len());
        for op in &self.ops {
            let key = op.key();
            if key.is_empty() {
                return Err(Error::InvalidArgument(
                    "store transaction writes an empty key".to_owned(),
                ));
            }
            if !seen.insert(key) {
                return Err(Error::InvalidArgument(format!(
                    "store transaction touches key {key} more than once"
                )));
            }
        }
        Ok(())
    }
}

/// What happened to a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held and the operations applied at `revision` (for a transaction that
    /// changed nothing, the store's revision at the time, unchanged).
    Committed {
        /// The revision the transaction's writes carry.
        revision: u64,
    },
    /// A compare failed and nothing was applied.
    Conflict {
        /// The key of the first compare, in order, that failed.
        key: String,
    },
}

impl TxnOutcome {
    /// Whether the transaction applied.
    pub fn is_committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed { .. })
    }
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or overwritten; the value carries the new revisions.
    Put(KeyValue),
    /// The key was deleted.
    Delete {
        /// The deleted key (relative to the store, like every key).
        key: String,
    },
}

impl WatchEvent {
    /// The key this event is about.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key } => key,
        }
    }
}

/// What a watch stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchUpdate {
    /// Every change one transaction made under the watched prefix, in the order the transaction
    /// listed them. Revisions strictly increase from one `Changes` to the next.
    Changes {
        /// The revision the transaction committed at.
        revision: u64,
        /// Its changes under the prefix (never empty).
        events: Vec<WatchEvent>,
    },
    /// The store has compacted away the history the watch needed (changes up to
    /// `compact_revision` are gone). The stream ends after this: the watcher must reload a
    /// snapshot and watch again from there.
    Compacted {
        /// The oldest revision the store still has history for.
        compact_revision: u64,
    },
}

/// A stream of [`WatchUpdate`]s. It ends after [`WatchUpdate::Compacted`] or an error; dropping
/// it cancels the watch.
pub type WatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<WatchUpdate>> + Send + 'static>>;

/// The controller's key-value store, with etcd semantics.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// All keys starting with prefix, in key order.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    /// Atomically: if every compare holds, apply all ops at one new revision.
    ///
    /// The revision moves forward by one when the transaction changes something (a put, or a
    /// delete of an existing key), exactly as in etcd; a transaction that passes but changes
    /// nothing is committed at the current revision. Returns only once the outcome is durable.
    /// A transaction whose caller stops waiting may still commit.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;
    /// The store's current revision.
    async fn revision(&self) -> Result<u64>;
    /// Stream the changes under `prefix` committed at `start_revision` or later (0: from the
    /// next commit on).
    ///
    /// Backends that serve a single controller (the embedded store) have nobody to tell and
    /// return [`Error::InvalidArgument`]: the default.
    async fn watch(&self, prefix: &str, start_revision: u64) -> Result<WatchStream> {
        let _ = (prefix, start_revision);
        Err(Error::InvalidArgument(
            "this store backend does not support watches".to_owned(),
        ))
    }
}

/// A store shared by every part of the controller.
pub type SharedStore = std::sync::Arc<dyn Store>;
