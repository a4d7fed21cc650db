//! Storage nodes known to the controller and their latest capacity.
//! Registrations are persisted; capacity reports stay in memory.
//!
//! A node is *live* while its latest capacity report is younger than
//! [`LIVE_REPORTS`] report intervals: only live nodes take new captures and
//! count as replicas. A node that registers again, or reports after it was
//! not live, is marked for a re-sync of its inventory (see
//! `replication.rs`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

/// Report intervals a node may miss before it no longer counts as live.
pub const LIVE_REPORTS: u32 = 3;

/// Report interval asked of nodes unless the controller is told another
/// (the controller's `--node-report-interval-ms` default).
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The interval a node actually reports at when asked for `asked` (mirrors
/// the storage node: 0 means its own default of 5 s, and never under 50 ms).
pub fn effective_report_interval(asked: Duration) -> Duration {
    if asked.is_zero() {
        Duration::from_secs(5)
    } else {
        asked.max(Duration::from_millis(50))
    }
}

/// A registered storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageNode {
    /// Stable node id.
    pub id: String,
    /// Address clients use.
    pub endpoint: String,
    /// Site the node serves.
    pub site: String,
    /// When it registered.
    pub registered_ms: i64,
}

/// Latest capacity a node reported (volatile).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Volume size.
    pub total_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
    /// Bytes promised to migrations in progress.
    pub reserved_bytes: u64,
    /// Transfers in progress.
    pub active_sessions: u32,
    /// Whether it takes new captures.
    pub accepting_captures: bool,
    /// What a new reservation may take (free minus reservations and the
    /// node's minimum free space).
    pub available_bytes: u64,
    /// Sealed bytes stored, after dedup.
    pub stored_bytes: u64,
    /// Migrations held.
    pub migrations: u32,
    /// When the report arrived.
    pub reported_ms: i64,
}

impl Capacity {
    /// Whether this report is recent enough at `now` for its node to count
    /// as live: younger than [`LIVE_REPORTS`] × `report_interval`.
    pub fn is_live(&self, now: i64, report_interval: Duration) -> bool {
        let window = report_interval.as_millis() as i64 * i64::from(LIVE_REPORTS);
        now.saturating_sub(self.reported_ms) < window
    }
}

/// All nodes with their capacity.
#[derive(Debug)]
pub struct NodeTable {
    /// Nodes by id, with their latest capacity if any.
    pub nodes: BTreeMap<String, (StorageNode, Option<Capacity>)>,
    /// The interval nodes report at (liveness is judged against it).
    pub report_interval: Duration,
    /// Nodes whose migrations must be checked against the jobs' recorded
    /// holders: they registered again or came back after a silence.
    pub resync: BTreeSet<String>,
}

impl Default for NodeTable {
    fn default() -> Self {
        Self {
            nodes: BTreeMap::new(),
            report_interval: DEFAULT_REPORT_INTERVAL,
            resync: BTreeSet::new(),
        }
    }
}

impl NodeTable {
    /// How long a report keeps its node live.
    pub fn live_window(&self) -> Duration {
        self.report_interval * LIVE_REPORTS
    }

    /// Whether `node_id` is registered and live at `now`.
    pub fn is_live(&self, node_id: &str, now: i64) -> bool {
        self.nodes
            .get(node_id)
            .and_then(|(_, capacity)| capacity.as_ref())
            .is_some_and(|c| c.is_live(now, self.report_interval))
    }
}

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::keys;
use crate::model::{AuditEvent, now_ms};
use crate::store::Txn;

impl Controller {
    /// Records a storage node's registration (persisted) and capacity.
    pub async fn register_node(&self, node: StorageNode, capacity: Option<Capacity>) -> Result<()> {
        if !crate::controller::is_valid_id(&node.id) {
            return Err(Error::InvalidArgument(format!(
                "storage node id {:?} is malformed",
                node.id
            )));
        }
        if node.endpoint.is_empty() || node.endpoint.len() > 512 {
            return Err(Error::InvalidArgument(format!(
                "storage node {} has no usable endpoint",
                node.id
            )));
        }
        let known = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(&node.id)
            .map(|(known, _)| (known.endpoint.clone(), known.site.clone()));
        if known != Some((node.endpoint.clone(), node.site.clone())) {
            let event = AuditEvent {
                seq: 0,
                unix_ms: now_ms(),
                actor: format!("node:{}", node.id),
                kind: "node.register".into(),
                wave: String::new(),
                job_id: String::new(),
                machine_id: String::new(),
                detail: format!("{} at site {:?}", node.endpoint, node.site),
            };
            let txn = Txn::new().put(keys::key(keys::NODES, &node.id), keys::encode(&node));
            self.commit(txn, vec![event]).await?;
        }
        tracing::info!(node_id = %node.id, endpoint = %node.endpoint, "storage node registered");
        let mut table = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        // A node registers when it starts: whatever it held may be gone.
        table.resync.insert(node.id.clone());
        table.nodes.insert(node.id.clone(), (node, capacity));
        Ok(())
    }

    /// Records a capacity report (memory only). A node that was not live
    /// before this report is marked for a re-sync of its inventory.
    pub fn report_capacity(&self, node_id: &str, capacity: Capacity) -> Result<()> {
        let mut table = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let was_live = table.is_live(node_id, capacity.reported_ms);
        let entry = table
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| Error::UnknownNode(node_id.to_string()))?;
        entry.1 = Some(capacity);
        if !was_live && table.resync.insert(node_id.to_string()) {
            tracing::info!(
                node_id,
                "storage node live again; its replicas will be re-synced"
            );
        }
        Ok(())
    }

    /// Tells the controller the interval storage nodes are asked to report
    /// at (the registry's `report_interval_ms`); liveness is judged by it.
    pub fn set_node_report_interval(&self, asked: Duration) {
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .report_interval = effective_report_interval(asked);
    }

    /// How long a capacity report keeps its node live.
    pub fn node_live_window(&self) -> Duration {
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live_window()
    }

    /// The ids of the registered nodes that are live now.
    pub fn live_nodes(&self) -> HashSet<String> {
        let now = now_ms();
        let table = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        table
            .nodes
            .keys()
            .filter(|id| table.is_live(id, now))
            .cloned()
            .collect()
    }

    /// Takes the nodes marked for a re-sync that are live now (the others
    /// stay marked until they are).
    pub fn take_resync(&self) -> Vec<StorageNode> {
        let now = now_ms();
        let mut table = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let ready: Vec<String> = table
            .resync
            .iter()
            .filter(|id| table.is_live(id, now))
            .cloned()
            .collect();
        let mut nodes = Vec::with_capacity(ready.len());
        for id in ready {
            table.resync.remove(&id);
            if let Some((node, _)) = table.nodes.get(&id) {
                nodes.push(node.clone());
            }
        }
        nodes
    }

    /// Marks `node_id` for a re-sync again (its inventory could not be read).
    pub fn mark_resync(&self, node_id: &str) {
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resync
            .insert(node_id.to_string());
    }

    /// Registered nodes with their latest capacity.
    pub fn storage_nodes(&self) -> Vec<(StorageNode, Option<Capacity>)> {
        let table = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        table.nodes.values().cloned().collect()
    }
}
