//! The migration record and its state machine.
//!
//! ```text
//! reserved --(first capture call)--> capturing --Commit--> committed
//!   --Release(capture)--> sealed --Release(restore)--> retained --(sweeper)--> deleted
//! reserved/capturing --(lease runs out)--> expired --(capture call, if room)--> capturing
//! expired --(sweeper, after the retention period)--> deleted
//! reserved/capturing --Commit(REPLICATE)--> sealed        (a copy from another node)
//! ```
//!
//! Only `sealed` and `retained` migrations are restorable. Every transition
//! here is a pure function of the old record and the clock; the node persists
//! the result (`migrations/<id>.json`, written atomically) before it acts on
//! it, so the record on disk is always the truth after a crash.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::error::{Error, Result};
use crate::layout::{CHUNK_ID_LEN, ChunkId, Layout, MigrationId};

/// Version of the record's JSON layout.
pub const RECORD_FORMAT_VERSION: u32 = 1;

/// Where a migration is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Space is reserved; nothing uploaded yet.
    Reserved,
    /// The source machine is uploading.
    Capturing,
    /// Every chunk and the manifest are durable; not yet restorable.
    Committed,
    /// The capture is released: read-only and restorable.
    Sealed,
    /// The restore is released: still restorable until `delete_after`.
    Retained,
    /// The lease ran out before a commit; never restorable.
    Expired,
}

impl MigrationState {
    /// Lowercase name, as reported to callers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Capturing => "capturing",
            Self::Committed => "committed",
            Self::Sealed => "sealed",
            Self::Retained => "retained",
            Self::Expired => "expired",
        }
    }

    /// A capture that has not committed and not expired.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Reserved | Self::Capturing)
    }

    /// Committed, sealed or retained: the manifest and chunk list exist.
    pub fn is_committed(self) -> bool {
        matches!(self, Self::Committed | Self::Sealed | Self::Retained)
    }

    /// Whether restores may read the migration.
    pub fn is_restorable(self) -> bool {
        matches!(self, Self::Sealed | Self::Retained)
    }
}

/// What Commit recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// Plain BLAKE3 of the sealed manifest, lowercase hex.
    pub manifest_digest: String,
    /// Size of the sealed manifest.
    pub manifest_bytes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// Sealed bytes of those chunks (shared chunks counted).
    pub referenced_bytes: u64,
    /// Plaintext bytes of the capture, as the worker reported.
    pub logical_bytes: u64,
    /// When the commit happened.
    pub committed_unix_ms: i64,
}

/// A migration as persisted in `migrations/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// [`RECORD_FORMAT_VERSION`].
    pub format_version: u32,
    /// The migration id (validated, safe in paths).
    pub migration_id: String,
    /// Current state.
    pub state: MigrationState,
    /// Machine named by the first CAPTURE token; later capture tokens must
    /// name the same machine.
    #[serde(default)]
    pub source_machine_id: Option<String>,
    /// When the record was first created.
    pub created_unix_ms: i64,
    /// When the current reservation or capture started (chunk files newer
    /// than the oldest open capture's start are never garbage-collected).
    pub started_unix_ms: i64,
    /// Last persisted change.
    pub updated_unix_ms: i64,
    /// Bytes reserved (zero once committed).
    pub reserved_bytes: u64,
    /// Lease length: how long the reservation lives without activity.
    pub lease_ms: u64,
    /// Lease expiry as last persisted (activity renews it in memory).
    pub lease_expires_unix_ms: i64,
    /// Set by Commit.
    #[serde(default)]
    pub commit: Option<CommitInfo>,
    /// When a retained or expired migration is deleted.
    #[serde(default)]
    pub delete_after_unix_ms: Option<i64>,
    /// Highest token fence seen for the migration: tokens with a lower
    /// (non-zero) fence are refused. Records written before fences were
    /// kept read as 0.
    #[serde(default)]
    pub highest_fence: u64,
}

impl MigrationRecord {
    /// A fresh reservation of `bytes` for `lease_ms`.
    pub fn reservation(id: &MigrationId, bytes: u64, lease_ms: u64, now: i64) -> Self {
        Self {
            format_version: RECORD_FORMAT_VERSION,
            migration_id: id.as_str().to_owned(),
            state: MigrationState::Reserved,
            source_machine_id: None,
            created_unix_ms: now,
            started_unix_ms: now,
            updated_unix_ms: now,
            reserved_bytes: bytes,
            lease_ms,
            lease_expires_unix_ms: lease_expiry(now, lease_ms),
            commit: None,
            delete_after_unix_ms: None,
            highest_fence: 0,
        }
    }

    /// The validated id.
    pub fn id(&self) -> Result<MigrationId> {
        MigrationId::parse(&self.migration_id)
    }

    fn refuse(&self, refusal: &'static str) -> Error {
        Error::WrongState {
            migration_id: self.migration_id.clone(),
            state: self.state.name(),
            refusal,
        }
    }

    /// An open capture whose lease has run out (the sweeper has not marked
    /// it expired yet).
    pub fn is_lapsed(&self, now: i64) -> bool {
        self.state.is_open() && self.lease_expires_unix_ms <= now
    }

    /// Reserve again (idempotent per migration: renews the lease and sets
    /// the bytes). A committed migration has nothing left to reserve.
    pub fn reserved_again(&self, bytes: u64, lease_ms: u64, now: i64) -> Result<Self> {
        if self.state.is_committed() {
            return Err(self.refuse("nothing left to reserve"));
        }
        let mut next = self.clone();
        if self.state == MigrationState::Expired {
            next.state = MigrationState::Reserved;
            next.started_unix_ms = now;
            next.delete_after_unix_ms = None;
        }
        next.reserved_bytes = bytes;
        next.lease_ms = lease_ms;
        next.lease_expires_unix_ms = lease_expiry(now, lease_ms);
        next.updated_unix_ms = now;
        Ok(next)
    }

    /// Refuses a capture token naming another machine than the source.
    pub fn check_source(&self, machine_id: &str) -> Result<()> {
        match &self.source_machine_id {
            Some(source) if source != machine_id => Err(Error::OtherMachine {
                migration_id: self.migration_id.clone(),
                source_machine: source.clone(),
                presented: machine_id.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses writes (MissingChunks, PutChunks) once committed.
    pub fn check_writable(&self) -> Result<()> {
        if self.state.is_committed() {
            return Err(self.refuse("read-only; writes are refused"));
        }
        Ok(())
    }

    /// Refuses reads unless sealed or retained.
    pub fn check_restorable(&self) -> Result<()> {
        if !self.state.is_restorable() {
            return Err(self.refuse("not restorable"));
        }
        Ok(())
    }

    /// The record once capture calls start (from reserved, or reopened from
    /// expired or a lapsed lease: the caller checked there is room).
    pub fn capturing(&self, machine_id: &str, now: i64) -> Result<Self> {
        self.check_writable()?;
        self.check_source(machine_id)?;
        let mut next = self.writing(now)?;
        next.source_machine_id = Some(machine_id.to_owned());
        Ok(next)
    }

    /// Like [`Self::capturing`], for a copy from another node under a
    /// REPLICATE token: no machine is bound to the migration.
    pub fn replica_capturing(&self, now: i64) -> Result<Self> {
        self.writing(now)
    }

    fn writing(&self, now: i64) -> Result<Self> {
        self.check_writable()?;
        let mut next = self.clone();
        if self.state == MigrationState::Expired {
            next.started_unix_ms = now;
            next.delete_after_unix_ms = None;
        }
        next.state = MigrationState::Capturing;
        next.lease_expires_unix_ms = lease_expiry(now, self.lease_ms);
        next.updated_unix_ms = now;
        Ok(next)
    }

    /// The record after a commit: the reservation is replaced by real usage.
    pub fn committed(&self, info: CommitInfo, now: i64) -> Result<Self> {
        if !self.state.is_open() {
            return Err(self.refuse("not being captured; nothing to commit"));
        }
        let mut next = self.clone();
        next.state = MigrationState::Committed;
        next.reserved_bytes = 0;
        next.commit = Some(info);
        next.updated_unix_ms = now;
        Ok(next)
    }

    /// The record after a commit under a REPLICATE token: the copy of a
    /// migration another node verified is sealed (read-only, restorable) at
    /// once, without a capture release.
    pub fn replica_committed(&self, info: CommitInfo, now: i64) -> Result<Self> {
        let mut next = self.committed(info, now)?;
        next.state = MigrationState::Sealed;
        Ok(next)
    }

    /// Release by the capture: committed becomes sealed. Idempotent; `None`
    /// when nothing changes.
    pub fn sealed(&self, now: i64) -> Result<Option<Self>> {
        match self.state {
            MigrationState::Committed => {
                let mut next = self.clone();
                next.state = MigrationState::Sealed;
                next.updated_unix_ms = now;
                Ok(Some(next))
            }
            MigrationState::Sealed | MigrationState::Retained => Ok(None),
            _ => Err(self.refuse("not committed; commit before releasing the capture")),
        }
    }

    /// Release by the restore: sealed becomes retained until
    /// `now + retention_ms`. Idempotent; `None` when nothing changes.
    pub fn retained(&self, now: i64, retention_ms: u64) -> Result<Option<Self>> {
        match self.state {
            MigrationState::Sealed => {
                let mut next = self.clone();
                next.state = MigrationState::Retained;
                next.delete_after_unix_ms = Some(now.saturating_add(millis(retention_ms)));
                next.updated_unix_ms = now;
                Ok(Some(next))
            }
            MigrationState::Retained => Ok(None),
            MigrationState::Committed => {
                Err(self.refuse("not sealed; the capture has not been released"))
            }
            _ => Err(self.refuse("not restorable")),
        }
    }

    /// The lease ran out before a commit: expired, deleted after
    /// `retention_ms` unless a capture reopens it.
    pub fn expired(&self, now: i64, retention_ms: u64) -> Result<Self> {
        if !self.state.is_open() {
            return Err(self.refuse("not an open capture; it cannot expire"));
        }
        let mut next = self.clone();
        next.state = MigrationState::Expired;
        next.delete_after_unix_ms = Some(now.saturating_add(millis(retention_ms)));
        next.updated_unix_ms = now;
        Ok(next)
    }

    /// Whether the sweeper deletes the migration now.
    pub fn is_due_for_deletion(&self, now: i64) -> bool {
        matches!(
            self.state,
            MigrationState::Retained | MigrationState::Expired
        ) && self.delete_after_unix_ms.is_some_and(|at| at <= now)
    }
}

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// `now + lease_ms`, saturating.
pub fn lease_expiry(now: i64, lease_ms: u64) -> i64 {
    now.saturating_add(millis(lease_ms))
}

/// Writes `record` durably and atomically: this rename is the commit point
/// of every transition.
pub fn save(layout: &Layout, record: &MigrationRecord) -> Result<()> {
    let id = record.id()?;
    let path = layout.record_path(&id);
    let json = serde_json::to_vec_pretty(record).map_err(|err| Error::CorruptRecord {
        path: path.clone(),
        reason: format!("cannot encode: {err}"),
    })?;
    durable::write_atomically(&path, &json)
        .map_err(|source| Error::io("writing migration record", path, source))
}

/// Removes a migration's files: the record first (the deletion point), then
/// the manifest and chunk list (leftovers are removed at the next start).
pub fn remove(layout: &Layout, id: &MigrationId) -> Result<()> {
    let record = layout.record_path(id);
    remove_if_present(&record)?;
    durable::sync_dir(&layout.migrations_dir())
        .map_err(|source| Error::io("syncing", layout.migrations_dir(), source))?;
    remove_if_present(&layout.manifest_path(id))?;
    remove_if_present(&layout.references_path(id))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::io("removing", path, source)),
    }
}

/// Loads every record of `migrations/`, removing temporaries of interrupted
/// writes and manifests or chunk lists without a record (a deletion or
/// commit cut short). A record that does not parse stops the node.
pub fn load_all(layout: &Layout) -> Result<Vec<MigrationRecord>> {
    let dir = layout.migrations_dir();
    let entries = std::fs::read_dir(&dir).map_err(|source| Error::io("listing", &dir, source))?;
    let mut records = Vec::new();
    let mut others = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::io("listing", &dir, source))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if durable::is_temporary_name(&name) {
            remove_if_present(&path)?;
            continue;
        }
        let Some(stem) = name.strip_suffix(".json") else {
            others.push((name, path));
            continue;
        };
        let text = std::fs::read(&path).map_err(|source| Error::io("reading", &path, source))?;
        let record: MigrationRecord =
            serde_json::from_slice(&text).map_err(|err| Error::CorruptRecord {
                path: path.clone(),
                reason: err.to_string(),
            })?;
        if record.migration_id != stem || MigrationId::parse(stem).is_err() {
            return Err(Error::CorruptRecord {
                path,
                reason: format!("it names migration {:?}", record.migration_id),
            });
        }
        if record.format_version != RECORD_FORMAT_VERSION {
            return Err(Error::CorruptRecord {
                path,
                reason: format!("unknown format version {}", record.format_version),
            });
        }
        records.push(record);
    }
    for (name, path) in others {
        let stem = name
            .strip_suffix(".manifest")
            .or_else(|| name.strip_suffix(".chunks"));
        let owned = stem.is_some_and(|stem| {
            records
                .iter()
                .any(|r| r.migration_id == stem && r.state.is_committed())
        });
        if !owned {
            tracing::info!(path = %path.display(), "removing a file no committed migration owns");
            remove_if_present(&path)?;
        }
    }
    Ok(records)
}

/// Writes the sorted, deduplicated chunk ids of a commit, synced, renamed
/// into place (the caller syncs the directory).
pub fn write_references(layout: &Layout, id: &MigrationId, chunks: &[ChunkId]) -> Result<()> {
    let path = layout.references_path(id);
    let mut bytes = Vec::with_capacity(chunks.len() * CHUNK_ID_LEN);
    for chunk in chunks {
        bytes.extend_from_slice(&chunk.0);
    }
    durable::write_synced_then_rename(&path, &bytes)
        .map_err(|source| Error::io("writing chunk list", path, source))
}

/// The sorted chunk ids a committed migration references.
pub fn read_references(layout: &Layout, id: &MigrationId) -> Result<Vec<ChunkId>> {
    let path = layout.references_path(id);
    let bytes = std::fs::read(&path).map_err(|source| Error::io("reading", &path, source))?;
    if !bytes.len().is_multiple_of(CHUNK_ID_LEN) {
        return Err(Error::CorruptRecord {
            path,
            reason: format!("{} bytes is not a whole number of chunk ids", bytes.len()),
        });
    }
    let mut ids: Vec<ChunkId> = bytes
        .chunks_exact(CHUNK_ID_LEN)
        .map(|id| ChunkId(id.try_into().expect("chunks_exact yields 32 bytes")))
        .collect();
    if !ids.is_sorted() {
        ids.sort_unstable();
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> MigrationId {
        MigrationId::parse("wave1.m1").unwrap()
    }

    fn info() -> CommitInfo {
        CommitInfo {
            manifest_digest: "d".repeat(64),
            manifest_bytes: 10,
            chunks: 2,
            referenced_bytes: 100,
            logical_bytes: 1000,
            committed_unix_ms: 5,
        }
    }

    #[test]
    fn a_migration_goes_reserved_capturing_committed_sealed_retained() {
        let reserved = MigrationRecord::reservation(&id(), 500, 1_000, 0);
        assert_eq!(reserved.state, MigrationState::Reserved);
        assert_eq!(reserved.lease_expires_unix_ms, 1_000);
        let capturing = reserved.capturing("pc-1", 10).unwrap();
        assert_eq!(capturing.state, MigrationState::Capturing);
        assert_eq!(capturing.source_machine_id.as_deref(), Some("pc-1"));
        assert_eq!(capturing.lease_expires_unix_ms, 1_010);
        assert!(!capturing.state.is_restorable());

        let committed = capturing.committed(info(), 20).unwrap();
        assert_eq!(committed.state, MigrationState::Committed);
        assert_eq!(committed.reserved_bytes, 0, "reservation replaced by usage");
        assert!(
            !committed.state.is_restorable(),
            "committed is not restorable"
        );
        assert!(committed.check_writable().is_err());
        assert!(committed.check_restorable().is_err());
        assert!(
            committed.retained(25, 0).is_err(),
            "restore release needs a seal"
        );

        let sealed = committed.sealed(30).unwrap().expect("changes");
        assert_eq!(sealed.state, MigrationState::Sealed);
        assert!(sealed.check_restorable().is_ok());
        assert_eq!(sealed.sealed(31).unwrap(), None, "idempotent");

        let retained = sealed.retained(40, 7_000).unwrap().expect("changes");
        assert_eq!(retained.state, MigrationState::Retained);
        assert_eq!(retained.delete_after_unix_ms, Some(7_040));
        assert!(retained.check_restorable().is_ok());
        assert_eq!(retained.retained(50, 1).unwrap(), None, "idempotent");
        assert!(!retained.is_due_for_deletion(7_039));
        assert!(retained.is_due_for_deletion(7_040));
    }

    #[test]
    fn only_open_captures_commit_and_only_committed_ones_seal() {
        let reserved = MigrationRecord::reservation(&id(), 0, 1_000, 0);
        let err = reserved.sealed(1).expect_err("not committed");
        assert!(
            err.to_string().contains("is reserved, not committed"),
            "{err}"
        );
        let expired = reserved.expired(2_000, 0).unwrap();
        assert!(expired.committed(info(), 2_001).is_err());
        assert!(expired.check_restorable().is_err());
        let committed = reserved
            .capturing("pc", 1)
            .unwrap()
            .committed(info(), 2)
            .unwrap();
        assert!(committed.committed(info(), 3).is_err());
        assert!(committed.expired(3, 0).is_err(), "committed never expires");
        assert!(committed.capturing("pc", 3).is_err(), "writes refused");
        assert!(committed.reserved_again(1, 1, 3).is_err());
    }

    #[test]
    fn a_replica_commit_is_sealed_at_once_and_binds_no_machine() {
        let capturing = MigrationRecord::reservation(&id(), 100, 1_000, 0)
            .replica_capturing(1)
            .unwrap();
        assert_eq!(capturing.state, MigrationState::Capturing);
        assert_eq!(capturing.source_machine_id, None);
        let sealed = capturing.replica_committed(info(), 2).unwrap();
        assert_eq!(sealed.state, MigrationState::Sealed);
        assert_eq!(sealed.reserved_bytes, 0);
        assert!(sealed.check_restorable().is_ok());
        assert!(sealed.replica_capturing(3).is_err(), "read-only");
        assert_eq!(
            sealed.sealed(3).unwrap(),
            None,
            "a capture release is a no-op"
        );
    }

    #[test]
    fn records_without_a_fence_read_as_zero() {
        let mut record = MigrationRecord::reservation(&id(), 1, 2, 3);
        record.highest_fence = 9;
        let mut json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(json["highest_fence"], 9);
        json.as_object_mut().unwrap().remove("highest_fence");
        let old: MigrationRecord = serde_json::from_value(json).unwrap();
        assert_eq!(old.highest_fence, 0);
    }

    #[test]
    fn the_first_capture_machine_owns_the_migration() {
        let capturing = MigrationRecord::reservation(&id(), 0, 1_000, 0)
            .capturing("pc-1", 1)
            .unwrap();
        assert!(capturing.capturing("pc-1", 2).is_ok());
        let err = capturing.capturing("pc-2", 2).expect_err("other machine");
        assert!(matches!(err, Error::OtherMachine { .. }), "{err}");
    }

    #[test]
    fn leases_lapse_expire_and_reopen() {
        let reserved = MigrationRecord::reservation(&id(), 300, 100, 0);
        assert!(!reserved.is_lapsed(99));
        assert!(reserved.is_lapsed(100));
        let expired = reserved.expired(150, 1_000).unwrap();
        assert_eq!(expired.state, MigrationState::Expired);
        assert!(!expired.is_due_for_deletion(1_149));
        assert!(expired.is_due_for_deletion(1_150));
        let reopened = expired.capturing("pc", 200).unwrap();
        assert_eq!(reopened.state, MigrationState::Capturing);
        assert_eq!(reopened.started_unix_ms, 200);
        assert_eq!(reopened.delete_after_unix_ms, None);
        assert_eq!(reopened.reserved_bytes, 300);
        let renewed = expired.reserved_again(400, 50, 300).unwrap();
        assert_eq!(renewed.state, MigrationState::Reserved);
        assert_eq!(renewed.lease_expires_unix_ms, 350);
        assert_eq!(renewed.reserved_bytes, 400);
    }

    #[test]
    fn records_round_trip_and_orphans_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        crate::data_dir::prepare_store(&layout).unwrap();
        let record = MigrationRecord::reservation(&id(), 1, 2, 3);
        save(&layout, &record).unwrap();
        let other = MigrationId::parse("gone").unwrap();
        std::fs::write(layout.manifest_path(&other), b"m").unwrap();
        std::fs::write(layout.migrations_dir().join("x.json.tmp.1.2"), b"{").unwrap();
        let loaded = load_all(&layout).unwrap();
        assert_eq!(loaded, vec![record]);
        let left: Vec<_> = std::fs::read_dir(layout.migrations_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["wave1.m1.json".to_owned()]);

        std::fs::write(layout.record_path(&other), b"{ not json").unwrap();
        let err = load_all(&layout).expect_err("corrupt record");
        assert!(matches!(err, Error::CorruptRecord { .. }), "{err}");
    }
}
