//! Storage nodes known to the controller and their latest capacity.
//! Registrations are persisted; capacity reports stay in memory.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// All nodes with their capacity.
#[derive(Debug, Default)]
pub struct NodeTable {
    /// Nodes by id, with their latest capacity if any.
    pub nodes: BTreeMap<String, (StorageNode, Option<Capacity>)>,
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
        self.inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .insert(node.id.clone(), (node, capacity));
        Ok(())
    }

    /// Records a capacity report (memory only).
    pub fn report_capacity(&self, node_id: &str, capacity: Capacity) -> Result<()> {
        let mut table = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let entry = table
            .nodes
            .get_mut(node_id)
            .ok_or_else(|| Error::UnknownNode(node_id.to_string()))?;
        entry.1 = Some(capacity);
        Ok(())
    }

    /// Registered nodes with their latest capacity.
    pub fn storage_nodes(&self) -> Vec<(StorageNode, Option<Capacity>)> {
        let table = self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner());
        table.nodes.values().cloned().collect()
    }
}
