//! The embedded backend: one redb file, written through a group-committing writer thread.
//!
//! # Layout
//!
//! `data_dir/controller.redb` holds two tables:
//!
//! - `kv` (`&str` → `&[u8]`): every key, its value prefixed by a fixed 17-byte header —
//!   a format byte (`1`), then `create_revision` and `mod_revision` as big-endian `u64`s.
//!   One table keeps a key's revisions and value in one B-tree entry, so a get or a range is one
//!   lookup or one scan.
//! - `meta` (`&str` → `u64`): `revision`, the last committed revision, written in the same redb
//!   transaction as the data it describes, so it survives restarts and never runs ahead of them.
//!
//! # Writes
//!
//! A dedicated thread owns all writes. [`EmbeddedStore::txn`] queues the transaction and awaits
//! a oneshot reply. The thread takes every queued transaction (up to [`MAX_BATCH`]), evaluates
//! each one's compares in order inside one redb write transaction — so a transaction sees the
//! writes of those before it in the same batch — applies the ones that pass, commits once with
//! immediate durability (one fsync for the whole batch) and only then answers everyone. If the
//! redb transaction fails, none of the batch applies and every caller gets the error.
//!
//! # Reads
//!
//! [`EmbeddedStore::get`] and [`EmbeddedStore::range`] open redb read transactions on the
//! blocking pool; they see every commit that has been answered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::{Compare, KeyValue, Op, Store, Txn, TxnOutcome};
use crate::error::{Error, Result};

/// File name of the database inside the data directory.
pub const FILE_NAME: &str = "controller.redb";

/// Most transactions the writer commits together in one redb transaction.
pub const MAX_BATCH: usize = 1024;

/// Transactions that may wait for the writer before callers of `txn` wait to enqueue.
const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

const KV: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

const FORMAT_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8;

/// A [`Store`] kept in a local redb file; crash-safe, durable on every answered commit.
pub struct EmbeddedStore {
    /// Shared with the writer thread and with read tasks on the blocking pool.
    db: Arc<Database>,
    /// The database file, named in errors.
    path: Arc<PathBuf>,
    /// Queue of the writer thread. Bounded, so that a slow disk pushes back on callers instead
    /// of growing memory; dropping it tells the writer to finish the queue and exit.
    requests: Option<mpsc::Sender<WriteRequest>>,
    /// Last durably committed revision, published by the writer after each commit.
    revision: Arc<AtomicU64>,
    /// The writer thread, joined on drop so that the file is closed when the store is.
    writer: Option<JoinHandle<()>>,
}

/// One transaction waiting for the writer, with the channel its caller awaits.
struct WriteRequest {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome>>,
}

impl EmbeddedStore {
    /// Open (or create) `data_dir/controller.redb` and start its writer thread.
    ///
    /// Blocking: opening may repair the file after a crash. Call it at startup or from
    /// `spawn_blocking`.
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(data_dir).map_err(|error| store_io(data_dir, error))?;
        let path = Arc::new(data_dir.join(FILE_NAME));
        let db = Database::create(path.as_path()).map_err(|error| store_io(&path, error))?;
        let revision = initialize(&db).map_err(|error| store_io(&path, error))?;
        let db = Arc::new(db);
        let revision = Arc::new(AtomicU64::new(revision));

        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            db: Arc::clone(&db),
            path: Arc::clone(&path),
            revision: Arc::clone(&revision),
        };
        let handle = std::thread::Builder::new()
            .name("fleetmig-store-writer".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|error| store_io(&path, error))?;

        tracing::debug!(path = %path.display(), revision = revision.load(Ordering::Acquire), "store opened");
        Ok(EmbeddedStore {
            db,
            path,
            requests: Some(sender),
            revision,
            writer: Some(handle),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run a read on the blocking pool against a fresh read transaction.
    async fn read<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(|error| Error::StoreUnavailable(format!("store read task failed: {error}")))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer answer what is queued and exit; joining means the
        // file is released when the store is gone, so it can be reopened at once.
        drop(self.requests.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "store writer thread panicked");
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        let path = Arc::clone(&self.path);
        self.read(move |db| {
            let read = || -> Result<Option<Result<KeyValue>>, redb::Error> {
                let transaction = db.begin_read()?;
                let table = transaction.open_table(KV)?;
                let stored = table.get(key.as_str())?;
                Ok(stored.map(|stored| decode_key_value(&key, stored.value())))
            };
            read().map_err(|error| store_io(&path, error))?.transpose()
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let prefix = prefix.to_owned();
        let path = Arc::clone(&self.path);
        self.read(move |db| {
            let read = || -> Result<Vec<Result<KeyValue>>, redb::Error> {
                let transaction = db.begin_read()?;
                let table = transaction.open_table(KV)?;
                let mut found = Vec::new();
                // Keys sort bytewise, so the keys with this prefix are the contiguous run that
                // starts at the prefix itself.
                for entry in table.range(prefix.as_str()..)? {
                    let (key, stored) = entry?;
                    let key = key.value();
                    if !key.starts_with(prefix.as_str()) {
                        break;
                    }
                    found.push(decode_key_value(key, stored.value()));
                }
                Ok(found)
            };
            read()
                .map_err(|error| store_io(&path, error))?
                .into_iter()
                .collect()
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        txn.validate()?;
        let requests = self
            .requests
            .as_ref()
            .ok_or_else(|| Error::StoreUnavailable("store is closed".to_owned()))?;
        let (reply, outcome) = oneshot::channel();
        requests
            .send(WriteRequest { txn, reply })
            .await
            .map_err(|_| Error::StoreUnavailable("store writer has stopped".to_owned()))?;
        outcome.await.map_err(|_| {
            Error::StoreUnavailable("store writer stopped before answering".to_owned())
        })?
    }

    async fn revision(&self) -> Result<u64> {
        Ok(self.revision.load(Ordering::Acquire))
    }
}

/// Create the tables if they are missing and read the stored revision.
fn initialize(db: &Database) -> Result<u64, redb::Error> {
    let transaction = db.begin_write()?;
    let revision = {
        transaction.open_table(KV)?;
        let meta = transaction.open_table(META)?;
        meta.get(REVISION_KEY)?.map_or(0, |stored| stored.value())
    };
    transaction.commit()?;
    Ok(revision)
}

/// The state of the writer thread.
struct Writer {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    revision: Arc<AtomicU64>,
}

impl Writer {
    /// Commit batches until the queue is closed and empty.
    fn run(self, mut requests: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = requests.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
        tracing::debug!(path = %self.path.display(), "store writer stopped");
    }

    /// Apply and commit one batch, then answer each of its callers.
    fn commit_batch(&self, batch: &mut Vec<WriteRequest>) {
        let current = self.revision.load(Ordering::Acquire);
        match self.apply_batch(current, batch) {
            Ok((outcomes, revision)) => {
                self.revision.store(revision, Ordering::Release);
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    // A caller that stopped waiting does not undo its commit.
                    let _ = request.reply.send(outcome);
                }
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, transactions = batch.len(), "store commit failed");
                let message = error.to_string();
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(Error::StoreIo {
                        path: self.path.display().to_string(),
                        message: message.clone(),
                    }));
                }
            }
        }
    }

    /// Evaluate and apply every transaction of the batch in one redb transaction and commit it.
    /// Returns each transaction's outcome and the revision after the batch.
    fn apply_batch(
        &self,
        current: u64,
        batch: &[WriteRequest],
    ) -> Result<(Vec<Result<TxnOutcome>>, u64), redb::Error> {
        let mut transaction = self.db.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        let mut revision = current;
        let outcomes = apply_all(&transaction, &mut revision, batch)?;
        if revision == current {
            // Nothing changed (only conflicts, empty transactions or deletes of absent keys):
            // the answers rest on state that is already durable, so skip the fsync.
            transaction.abort()?;
        } else {
            transaction.commit()?;
        }
        Ok((outcomes, revision))
    }
}

/// Apply the batch's transactions in order inside `transaction`, moving `revision` on.
fn apply_all(
    transaction: &WriteTransaction,
    revision: &mut u64,
    batch: &[WriteRequest],
) -> Result<Vec<Result<TxnOutcome>>, redb::Error> {
    let start = *revision;
    let mut kv = transaction.open_table(KV)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for request in batch {
        outcomes.push(apply_txn(&mut kv, revision, &request.txn)?);
    }
    if *revision != start {
        let mut meta = transaction.open_table(META)?;
        meta.insert(REVISION_KEY, *revision)?;
    }
    Ok(outcomes)
}

/// Check one transaction's compares and, if they hold, apply its ops at `revision + 1`.
///
/// The outer error is a storage failure that dooms the whole batch; the inner one belongs to
/// this transaction alone (an unreadable stored value), which then applies nothing.
fn apply_txn(
    kv: &mut Table<'_, &str, &[u8]>,
    revision: &mut u64,
    txn: &Txn,
) -> Result<Result<TxnOutcome>, redb::Error> {
    for compare in &txn.compares {
        let Compare::ModRevision {
            key,
            revision: expected,
        } = compare;
        let actual = match stored_revisions(kv, key)? {
            Ok(revisions) => revisions.map_or(0, |(_, mod_revision)| mod_revision),
            Err(error) => return Ok(Err(error)),
        };
        if actual != *expected {
            return Ok(Ok(TxnOutcome::Conflict { key: key.clone() }));
        }
    }

    // Read everything the writes depend on before writing anything, so that a bad stored value
    // leaves this transaction unapplied rather than half-applied.
    let new_revision = *revision + 1;
    let mut create_revisions = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        let create_revision = match op {
            Op::Put { key, .. } => match stored_revisions(kv, key)? {
                Ok(revisions) => revisions.map_or(new_revision, |(create, _)| create),
                Err(error) => return Ok(Err(error)),
            },
            Op::Delete { .. } => 0,
        };
        create_revisions.push(create_revision);
    }

    let mut changed = false;
    for (op, create_revision) in txn.ops.iter().zip(create_revisions) {
        match op {
            Op::Put { key, value } => {
                let entry = encode_entry(create_revision, new_revision, value);
                kv.insert(key.as_str(), entry.as_slice())?;
                changed = true;
            }
            Op::Delete { key } => {
                changed |= kv.remove(key.as_str())?.is_some();
            }
        }
    }
    if changed {
        *revision = new_revision;
    }
    Ok(Ok(TxnOutcome::Committed {
        revision: *revision,
    }))
}

/// `(create_revision, mod_revision)` of `key` as the write transaction sees it.
fn stored_revisions(
    kv: &Table<'_, &str, &[u8]>,
    key: &str,
) -> Result<Result<Option<(u64, u64)>>, redb::Error> {
    let Some(stored) = kv.get(key)? else {
        return Ok(Ok(None));
    };
    Ok(decode_header(key, stored.value()).map(|(create, modified, _)| Some((create, modified))))
}

/// The stored form of a value: format byte, create and mod revisions, then the value.
fn encode_entry(create_revision: u64, mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(HEADER_LEN + value.len());
    entry.push(FORMAT_V1);
    entry.extend_from_slice(&create_revision.to_be_bytes());
    entry.extend_from_slice(&mod_revision.to_be_bytes());
    entry.extend_from_slice(value);
    entry
}

/// Split a stored entry into `(create_revision, mod_revision, value)`.
fn decode_header<'a>(key: &str, entry: &'a [u8]) -> Result<(u64, u64, &'a [u8])> {
    let corrupt = |reason: String| Error::StoreCorrupt {
        key: key.to_owned(),
        reason,
    };
    if entry.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "entry is {} bytes, shorter than its {HEADER_LEN}-byte header",
            entry.len()
        )));
    }
    let (header, value) = entry.split_at(HEADER_LEN);
    if header[0] != FORMAT_V1 {
        return Err(corrupt(format!("unknown entry format {}", header[0])));
    }
    let read_u64 = |bytes: &[u8]| {
        let mut buffer = [0; 8];
        buffer.copy_from_slice(bytes);
        u64::from_be_bytes(buffer)
    };
    let create_revision = read_u64(&header[1..9]);
    let mod_revision = read_u64(&header[9..17]);
    if create_revision == 0 || mod_revision < create_revision {
        return Err(corrupt(format!(
            "impossible revisions: created at {create_revision}, modified at {mod_revision}"
        )));
    }
    Ok((create_revision, mod_revision, value))
}

fn decode_key_value(key: &str, entry: &[u8]) -> Result<KeyValue> {
    let (create_revision, mod_revision, value) = decode_header(key, entry)?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    })
}

fn store_io(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::StoreIo {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests;
