//! The in-memory table of migrations: each persisted record plus what only
//! lives while the node runs (lease renewals, last activity, the chunks an
//! open capture relies on, fences not yet persisted in a record).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::layout::{ChunkId, MigrationId};
use crate::record::{MigrationRecord, MigrationState};

/// A capture with activity this recent counts as an active client session.
pub const ACTIVE_SESSION_WINDOW_MS: i64 = 60_000;
/// Most fences kept in memory for migrations without a record (tokens for
/// migrations this node does not hold, or held before a deletion).
pub const MAX_UNRECORDED_FENCES: usize = 65_536;

/// One migration held by the node.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The record; equal to the one on disk except for the lease expiry,
    /// which activity renews in memory only.
    pub record: MigrationRecord,
    /// Last capture call, milliseconds since the Unix epoch.
    pub last_activity_unix_ms: i64,
    /// Chunks an open capture was told are present or uploaded: garbage
    /// collection must keep them until the capture commits or expires.
    pub claims: HashSet<ChunkId>,
    /// False when the node restarted during the capture: its claims were
    /// lost, so garbage collection waits until the capture ends.
    pub claims_complete: bool,
    /// Sealed bytes this capture made durable (they count against its
    /// reservation: free space already reflects them).
    pub written_bytes: u64,
}

impl Entry {
    /// An entry for a record created (or loaded) now.
    pub fn new(record: MigrationRecord, claims_complete: bool) -> Self {
        Self {
            last_activity_unix_ms: record.updated_unix_ms,
            record,
            claims: HashSet::new(),
            claims_complete,
            written_bytes: 0,
        }
    }

    /// Bytes still promised to this migration: its reservation minus what
    /// it already wrote, while the capture is open and its lease live.
    pub fn outstanding_bytes(&self, now: i64) -> u64 {
        if !self.record.state.is_open() || self.record.is_lapsed(now) {
            return 0;
        }
        self.record
            .reserved_bytes
            .saturating_sub(self.written_bytes)
    }

    /// Whether this is a capture session in progress.
    pub fn is_active_capture(&self, now: i64) -> bool {
        self.record.state == MigrationState::Capturing
            && now - self.last_activity_unix_ms < ACTIVE_SESSION_WINDOW_MS
    }

    /// Renews the lease and notes activity.
    pub fn touch(&mut self, now: i64) {
        self.last_activity_unix_ms = now;
        if self.record.state.is_open() {
            self.record.lease_expires_unix_ms = self
                .record
                .lease_expires_unix_ms
                .max(crate::record::lease_expiry(now, self.record.lease_ms));
        }
    }
}

/// What garbage collection must not delete, gathered under the table lock.
#[derive(Debug, Clone, Default)]
pub struct OpenCaptures {
    /// Chunks claimed by open captures.
    pub claimed: HashSet<ChunkId>,
    /// Start of the oldest open capture: chunk files modified since then
    /// may be uploads of a capture in progress.
    pub oldest_start_unix_ms: Option<i64>,
    /// An open capture whose claims were lost in a restart.
    pub incomplete: Option<String>,
}

/// Every migration the node holds, by id (in id order, for listing).
#[derive(Debug, Default)]
pub struct Table {
    /// The entries.
    pub entries: BTreeMap<MigrationId, Entry>,
    /// Bumped by every commit: garbage collection re-reads the references
    /// if a commit happened while it looked.
    pub commit_generation: u64,
    /// Highest fences seen that no record holds yet: migrations without a
    /// record (kept in memory only, at most [`MAX_UNRECORDED_FENCES`]), or
    /// a raise not yet persisted. Every persisted record takes these in.
    pub fences: HashMap<MigrationId, u64>,
}

impl Table {
    /// Outstanding reservations of every migration but `excluding`.
    pub fn reserved_bytes(&self, now: i64, excluding: Option<&MigrationId>) -> u64 {
        self.entries
            .iter()
            .filter(|(id, _)| Some(*id) != excluding)
            .map(|(_, entry)| entry.outstanding_bytes(now))
            .fold(0u64, u64::saturating_add)
    }

    /// Capture sessions in progress, not counting `excluding`.
    pub fn capture_sessions(&self, now: i64, excluding: Option<&MigrationId>) -> u32 {
        let count = self
            .entries
            .iter()
            .filter(|(id, entry)| Some(*id) != excluding && entry.is_active_capture(now))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Inserts or replaces the record of a migration after a transition
    /// persisted, keeping (or resetting) its in-memory bookkeeping.
    pub fn apply(&mut self, record: MigrationRecord, id: &MigrationId, now: i64) {
        if self
            .fences
            .get(id)
            .is_some_and(|fence| *fence <= record.highest_fence)
        {
            self.fences.remove(id);
        }
        match self.entries.get_mut(id) {
            Some(entry) => {
                let reopened =
                    entry.record.state == MigrationState::Expired && record.state.is_open();
                if reopened || !record.state.is_open() {
                    entry.claims = HashSet::new();
                    entry.claims_complete = true;
                    entry.written_bytes = 0;
                }
                if record.state.is_committed() && !entry.record.state.is_committed() {
                    self.commit_generation += 1;
                }
                entry.record = record;
                entry.last_activity_unix_ms = now;
            }
            None => {
                if record.state.is_committed() {
                    self.commit_generation += 1;
                }
                let mut entry = Entry::new(record, true);
                entry.last_activity_unix_ms = now;
                self.entries.insert(id.clone(), entry);
            }
        }
    }

    /// Highest fence seen for `id`: its record's, or a higher one not yet
    /// persisted.
    pub fn highest_fence(&self, id: &MigrationId) -> u64 {
        let recorded = self
            .entries
            .get(id)
            .map_or(0, |entry| entry.record.highest_fence);
        recorded.max(self.fences.get(id).copied().unwrap_or(0))
    }

    /// Remembers `fence` as the highest seen for `id` (in memory, until a
    /// record takes it in).
    pub fn raise_fence(&mut self, id: &MigrationId, fence: u64) {
        if self.fences.len() >= MAX_UNRECORDED_FENCES
            && !self.fences.contains_key(id)
            && let Some(evicted) = self
                .fences
                .keys()
                .find(|other| !self.entries.contains_key(*other))
                .cloned()
        {
            self.fences.remove(&evicted);
        }
        let highest = self.fences.entry(id.clone()).or_insert(0);
        *highest = (*highest).max(fence);
    }

    /// Forgets a deleted migration, keeping its fence in memory so stale
    /// tokens stay refused while the node runs.
    pub fn remove(&mut self, id: &MigrationId) {
        let fence = self.highest_fence(id);
        self.entries.remove(id);
        if fence > 0 {
            self.raise_fence(id, fence);
        }
    }

    /// Adds `chunks` to the claims of `id` if it is an open capture.
    pub fn claim(&mut self, id: &MigrationId, chunks: impl IntoIterator<Item = ChunkId>) {
        if let Some(entry) = self.entries.get_mut(id)
            && entry.record.state.is_open()
        {
            entry.claims.extend(chunks);
        }
    }

    /// What open captures protect from garbage collection.
    pub fn open_captures(&self) -> OpenCaptures {
        let mut open = OpenCaptures::default();
        for (id, entry) in &self.entries {
            if !entry.record.state.is_open() {
                continue;
            }
            open.claimed.extend(entry.claims.iter().copied());
            let start = entry.record.started_unix_ms;
            open.oldest_start_unix_ms =
                Some(open.oldest_start_unix_ms.map_or(start, |s| s.min(start)));
            if !entry.claims_complete {
                open.incomplete = Some(id.to_string());
            }
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> MigrationId {
        MigrationId::parse(name).unwrap()
    }

    fn table_with(records: Vec<MigrationRecord>) -> Table {
        let mut table = Table::default();
        for record in records {
            let key = record.id().unwrap();
            table.apply(record, &key, 0);
        }
        table
    }

    #[test]
    fn outstanding_reservations_shrink_with_writes_and_end_with_the_lease() {
        let a = MigrationRecord::reservation(&id("a"), 1_000, 100, 0);
        let b = MigrationRecord::reservation(&id("b"), 500, 1_000, 0);
        let mut table = table_with(vec![a, b]);
        assert_eq!(table.reserved_bytes(10, None), 1_500);
        assert_eq!(table.reserved_bytes(10, Some(&id("a"))), 500);
        table.entries.get_mut(&id("b")).unwrap().written_bytes = 200;
        assert_eq!(table.reserved_bytes(10, None), 1_300);
        table.entries.get_mut(&id("b")).unwrap().written_bytes = 900;
        assert_eq!(table.reserved_bytes(10, None), 1_000, "never negative");
        assert_eq!(table.reserved_bytes(100, None), 0, "a's lease lapsed");
        table.entries.get_mut(&id("a")).unwrap().touch(90);
        assert_eq!(table.reserved_bytes(100, None), 1_000, "activity renews");
    }

    #[test]
    fn committed_migrations_hold_no_reservation_and_bump_the_generation() {
        let reserved = MigrationRecord::reservation(&id("a"), 1_000, 100, 0);
        let mut table = table_with(vec![reserved.clone()]);
        table.claim(&id("a"), [ChunkId([1; 32])]);
        assert_eq!(table.open_captures().claimed.len(), 1);
        let committed = reserved
            .capturing("pc", 1)
            .unwrap()
            .committed(
                crate::record::CommitInfo {
                    manifest_digest: String::new(),
                    manifest_bytes: 0,
                    chunks: 0,
                    referenced_bytes: 0,
                    logical_bytes: 0,
                    committed_unix_ms: 2,
                },
                2,
            )
            .unwrap();
        let generation = table.commit_generation;
        table.apply(committed, &id("a"), 2);
        assert_eq!(table.commit_generation, generation + 1);
        assert_eq!(table.reserved_bytes(3, None), 0);
        let open = table.open_captures();
        assert!(open.claimed.is_empty(), "claims end with the capture");
        assert_eq!(open.oldest_start_unix_ms, None);
    }

    #[test]
    fn fences_live_in_memory_until_a_record_takes_them_in() {
        let mut table = Table::default();
        assert_eq!(table.highest_fence(&id("a")), 0);
        table.raise_fence(&id("a"), 7);
        table.raise_fence(&id("a"), 3);
        assert_eq!(table.highest_fence(&id("a")), 7, "never lowered");
        let mut record = MigrationRecord::reservation(&id("a"), 0, 1_000, 0);
        record.highest_fence = 7;
        table.apply(record, &id("a"), 1);
        assert!(table.fences.is_empty(), "the record holds it now");
        assert_eq!(table.highest_fence(&id("a")), 7);
        table.remove(&id("a"));
        assert!(table.entries.is_empty());
        assert_eq!(table.highest_fence(&id("a")), 7, "kept after deletion");
    }

    #[test]
    fn unrecorded_fences_are_bounded() {
        let mut table = Table::default();
        for n in 0..=MAX_UNRECORDED_FENCES {
            table.raise_fence(&id(&format!("m{n}")), 1);
        }
        assert_eq!(table.fences.len(), MAX_UNRECORDED_FENCES);
    }

    #[test]
    fn active_sessions_are_recent_captures() {
        let capturing = MigrationRecord::reservation(&id("a"), 0, 1_000_000, 0)
            .capturing("pc", 0)
            .unwrap();
        let reserved = MigrationRecord::reservation(&id("b"), 0, 1_000_000, 0);
        let table = table_with(vec![capturing, reserved]);
        assert_eq!(table.capture_sessions(1, None), 1);
        assert_eq!(table.capture_sessions(1, Some(&id("a"))), 0);
        assert_eq!(table.capture_sessions(ACTIVE_SESSION_WINDOW_MS, None), 0);
    }
}
