//! The storage node's logic, with no tonic in it: the shared state, opening
//! the data directory, capacity and admission, and Release. Every call on a
//! migration is authorised by a capability token. The capture calls live in
//! `capture.rs` (PutChunks in `upload.rs`), the restore calls in
//! `restore.rs`, the sweeper and garbage collection in `sweeper.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleetmig_proto::v1::{self, CapabilityRole};
use tokio::sync::{Notify, OwnedMutexGuard, RwLock};

use crate::capacity::{Budget, Capacity, CapacityProbe, FreeSpaceFloor, Space};
use crate::chunks;
use crate::config::{CommitStage, Config};
use crate::error::{Error, Result};
use crate::fences::Grant;
use crate::layout::{ChunkId, Layout, MigrationId};
use crate::migrations::{Entry, Table};
use crate::record::{self, MigrationRecord, MigrationState};
use crate::replicate::Peers;
use crate::tokens::TokenKeys;

/// The node's policy, from its configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Free space the node never hands out.
    pub floor: FreeSpaceFloor,
    /// Refuse new captures (`--restore-only`).
    pub restore_only: bool,
    /// Most client sessions (`--max-clients`).
    pub max_clients: u32,
    /// How long a restored migration is kept (`--retention-days`).
    pub retention_ms: u64,
    /// Test-only fault injection (`--fault-commit-pause-ms`): Commit's pause
    /// before its record rename (`None` in normal operation).
    pub commit_pause_before_rename: Option<Duration>,
    /// Test-only fault injection: Commit's pause after its record rename,
    /// before the answer (`None` in normal operation).
    pub commit_pause_after_rename: Option<Duration>,
    /// How the node reaches controllers and other nodes.
    pub transport: fleetmig_auth::Transport,
}

impl NodeSettings {
    /// The settings `config` asks for.
    pub fn from_config(config: &Config, transport: fleetmig_auth::Transport) -> Self {
        Self {
            transport,
            floor: FreeSpaceFloor {
                min_free_bytes: config.min_free_bytes,
                min_free_percent: config.min_free_percent,
            },
            restore_only: config.restore_only,
            max_clients: config.max_clients,
            retention_ms: config.retention_ms(),
            commit_pause_before_rename: config.commit_pause(CommitStage::BeforeRecordRename),
            commit_pause_after_rename: config.commit_pause(CommitStage::AfterRecordRename),
        }
    }

    /// How long Commit pauses at `stage` (test-only fault injection).
    pub fn commit_pause(&self, stage: CommitStage) -> Option<Duration> {
        match stage {
            CommitStage::BeforeRecordRename => self.commit_pause_before_rename,
            CommitStage::AfterRecordRename => self.commit_pause_after_rename,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A storage node: cheap to clone, shared by the gRPC service, the
/// registration loop and the sweeper.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) node_id: String,
    pub(crate) layout: Layout,
    pub(crate) settings: NodeSettings,
    pub(crate) probe: CapacityProbe,
    tokens: TokenKeys,
    /// Every migration. A std mutex: never held across an await.
    pub(crate) table: Mutex<Table>,
    /// One async lock per migration, held across the disk writes of a
    /// transition so two calls on the same migration cannot interleave
    /// their record writes (calls on different migrations do not wait).
    migration_locks: Mutex<HashMap<MigrationId, Arc<tokio::sync::Mutex<()>>>>,
    /// Calls that find a chunk present and rely on it staying (capture
    /// presence checks, Commit) hold it for reading; garbage collection
    /// holds it for writing while it decides and deletes.
    pub(crate) gc_lock: Arc<RwLock<()>>,
    /// Bytes of chunk files held: counted at startup, then kept in step.
    pub(crate) stored_bytes: AtomicU64,
    /// Restore calls and streams in progress (client sessions).
    pub(crate) restores_in_progress: AtomicU32,
    /// Sorted chunk lists of recently restored migrations.
    pub(crate) references: Mutex<HashMap<MigrationId, Arc<Vec<ChunkId>>>>,
    /// Wakes the sweeper early (a release with zero retention).
    pub(crate) sweep_soon: Notify,
    /// Clients of the nodes this one replicates to.
    pub(crate) peers: Peers,
}

/// Answer to Release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// State after the release.
    pub state: MigrationState,
    /// When a retained migration is deleted (0 otherwise).
    pub delete_after_unix_ms: i64,
}

/// Runs blocking `work` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    task: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Task {
            task,
            reason: err.to_string(),
        })?
}

impl Node {
    /// Opens the node's data directory: the node id, the store directories
    /// (emptying `tmp/`), every migration record, the stored bytes and the
    /// controller's token key.
    pub async fn open(config: &Config) -> Result<Self> {
        let config = config.clone();
        blocking("open data directory", move || Self::open_blocking(&config)).await
    }

    fn open_blocking(config: &Config) -> Result<Self> {
        let transport = config.transport()?;
        let node_id = crate::data_dir::prepare(&config.data_dir)?.to_string();
        let layout = Layout::new(&config.data_dir);
        let leftovers = crate::data_dir::prepare_store(&layout)?;
        if leftovers > 0 {
            tracing::info!(files = leftovers, "removed unfinished writes from tmp/");
        }
        let records = record::load_all(&layout)?;
        let (files, strays) = chunks::walk(&layout)
            .map_err(|source| Error::io("listing", layout.chunks_dir(), source))?;
        if !strays.is_empty() {
            tracing::warn!(count = strays.len(), example = %strays[0].display(), "ignoring files in chunks/ that are not chunk files");
        }
        let stored_bytes = files.iter().map(|f| f.len).sum();
        let tokens = TokenKeys::load(
            layout.controller_key_file(),
            config.token_public_key.as_deref(),
        )?;
        if let Some(pause) = config.fault_commit_pause {
            tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                stage = config
                    .fault_commit_pause_stage
                    .map_or("all", CommitStage::name),
                "fault injection enabled: Commit pauses (tests only)"
            );
        }
        if !tokens.has_key() {
            tracing::warn!(
                "no controller token key yet: migration calls are refused until the controller hands one out"
            );
        }

        let now = now_unix_ms();
        let mut table = Table::default();
        for mut record in records {
            let id = record.id()?;
            if record.state.is_open() {
                // Clients may have retried while the node was down.
                record.lease_expires_unix_ms = record
                    .lease_expires_unix_ms
                    .max(record::lease_expiry(now, record.lease_ms));
            }
            let open = record.state.is_open();
            table.entries.insert(id, Entry::new(record, !open));
        }
        tracing::info!(
            node_id = %node_id,
            migrations = table.entries.len(),
            chunks = files.len(),
            stored_bytes,
            "store opened"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                node_id,
                probe: CapacityProbe::new(config.data_dir.clone()),
                layout,
                settings: NodeSettings::from_config(config, transport.clone()),
                tokens,
                table: Mutex::new(table),
                migration_locks: Mutex::new(HashMap::new()),
                gc_lock: Arc::new(RwLock::new(())),
                stored_bytes: AtomicU64::new(stored_bytes),
                restores_in_progress: AtomicU32::new(0),
                references: Mutex::new(HashMap::new()),
                sweep_soon: Notify::new(),
                peers: Peers::new(transport),
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The data directory's layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The controller's token key.
    pub fn tokens(&self) -> &TokenKeys {
        &self.inner.tokens
    }

    /// The state of migration `migration_id`, if the node holds it.
    pub fn migration_state(&self, migration_id: &str) -> Option<MigrationState> {
        let id = MigrationId::parse(migration_id).ok()?;
        self.table().entries.get(&id).map(|e| e.record.state)
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        self.inner
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) async fn lock_migration(&self, id: &MigrationId) -> OwnedMutexGuard<()> {
        let lock = self
            .inner
            .migration_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Subtracts deleted chunk files from the stored-bytes counter.
    pub(crate) fn sub_stored_bytes(&self, bytes: u64) {
        let _ =
            self.inner
                .stored_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |stored| {
                    Some(stored.saturating_sub(bytes))
                });
    }

    pub(crate) fn forget_migration(&self, id: &MigrationId) {
        self.inner
            .migration_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
        self.inner
            .references
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }

    /// Writes `record` (taking in the highest fence seen for it, so every
    /// persisted record carries it); returns what was written.
    pub(crate) async fn persist(&self, mut record: MigrationRecord) -> Result<MigrationRecord> {
        let id = record.id()?;
        record.highest_fence = record.highest_fence.max(self.table().highest_fence(&id));
        let layout = self.inner.layout.clone();
        blocking("write migration record", move || {
            record::save(&layout, &record)?;
            Ok(record)
        })
        .await
    }

    /// Measures capacity now.
    pub async fn capacity(&self) -> Result<Capacity> {
        let space = self.inner.probe.space().await?;
        let now = now_unix_ms();
        let table = self.table();
        let reserved_bytes = table.reserved_bytes(now, None);
        let budget = Budget {
            free_bytes: space.free_bytes,
            reserved_by_others: reserved_bytes,
            floor_bytes: self.inner.settings.floor.bytes(space.total_bytes),
        };
        Ok(Capacity {
            total_bytes: space.total_bytes,
            free_bytes: space.free_bytes,
            reserved_bytes,
            active_sessions: self.active_sessions(&table, now, None),
            accepting_captures: !self.inner.settings.restore_only,
            stored_bytes: self.inner.stored_bytes.load(Ordering::Relaxed),
            migrations: u32::try_from(table.entries.len()).unwrap_or(u32::MAX),
            available_bytes: budget.available(),
        })
    }

    pub(crate) fn active_sessions(
        &self,
        table: &Table,
        now: i64,
        excluding: Option<&MigrationId>,
    ) -> u32 {
        table
            .capture_sessions(now, excluding)
            .saturating_add(self.inner.restores_in_progress.load(Ordering::Relaxed))
    }

    /// Whether a new (or reopened) capture of `bytes` for `id` may start.
    pub(crate) fn admit(
        &self,
        table: &Table,
        id: &MigrationId,
        bytes: u64,
        space: Space,
        now: i64,
    ) -> Result<()> {
        let settings = &self.inner.settings;
        if settings.restore_only {
            return Err(Error::RestoreOnly {
                node_id: self.inner.node_id.clone(),
            });
        }
        let active = self.active_sessions(table, now, Some(id));
        if active >= settings.max_clients {
            return Err(Error::TooManyClients {
                node_id: self.inner.node_id.clone(),
                active,
                max: settings.max_clients,
            });
        }
        let budget = Budget {
            free_bytes: space.free_bytes,
            reserved_by_others: table.reserved_bytes(now, Some(id)),
            floor_bytes: settings.floor.bytes(space.total_bytes),
        };
        if !budget.admits(bytes) {
            return Err(Error::NoRoom {
                node_id: self.inner.node_id.clone(),
                migration_id: id.to_string(),
                requested: bytes,
                available: budget.available(),
            });
        }
        Ok(())
    }

    pub(crate) fn unknown(&self, id: &MigrationId) -> Error {
        Error::UnknownMigration {
            node_id: self.inner.node_id.clone(),
            migration_id: id.to_string(),
        }
    }

    /// Release: with a CAPTURE token, committed becomes sealed (read-only,
    /// restorable); with a RESTORE token, sealed becomes retained and the
    /// retention clock starts. Idempotent.
    pub async fn release(&self, token: Option<&v1::SignedCapability>) -> Result<Released> {
        let now = now_unix_ms();
        let Grant {
            claims,
            migration: id,
            role,
        } = self
            .authorize(
                token,
                &[CapabilityRole::Capture, CapabilityRole::Restore],
                now,
            )
            .await?;
        let _transition = self.lock_migration(&id).await;
        let (current, next) = {
            let table = self.table();
            let entry = table.entries.get(&id).ok_or_else(|| self.unknown(&id))?;
            let record = &entry.record;
            let next = if role == CapabilityRole::Capture {
                record.check_source(&claims.machine_id)?;
                record.sealed(now)?
            } else {
                record.retained(now, self.inner.settings.retention_ms)?
            };
            (record.clone(), next)
        };
        let record = match next {
            Some(next) => {
                let next = self.persist(next).await?;
                self.table().apply(next.clone(), &id, now);
                tracing::info!(migration_id = %id, state = next.state.name(), "released");
                next
            }
            None => current,
        };
        let delete_after_unix_ms = match record.state {
            MigrationState::Retained => record.delete_after_unix_ms.unwrap_or_default(),
            _ => 0,
        };
        if record.state == MigrationState::Retained && delete_after_unix_ms <= now {
            self.inner.sweep_soon.notify_one();
        }
        Ok(Released {
            state: record.state,
            delete_after_unix_ms,
        })
    }
}
