//! Placing replace jobs on storage nodes: pick the nodes with room (same
//! site first, then most available space after reservations), reserve the
//! estimated bytes on one of them, and sign the capability tokens workers
//! present to the node.

use crate::controller::Controller;
use crate::model::{Job, Phase, Placement, now_ms};
use crate::nodes::{Capacity, StorageNode};
use fleetmig_proto::v1::{self, CapabilityRole, storage_node_client::StorageNodeClient};
use std::collections::HashSet;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Smallest reservation, for machines whose inventory reports no profiles.
const MIN_RESERVATION_BYTES: u64 = 1 << 20;
/// Capacity reports older than this do not count for placement.
const STALE_REPORT: Duration = Duration::from_secs(120);

/// Bytes to reserve for `job`'s source: its profiles' size from inventory.
fn estimate_bytes(controller: &Controller, job: &Job) -> u64 {
    let registry = controller.registry();
    let profiles: u64 = registry
        .machines
        .get(&job.machine_id)
        .map(|m| m.value.inventory.profiles.iter().map(|p| p.bytes).sum())
        .unwrap_or_default();
    profiles.max(MIN_RESERVATION_BYTES)
}

/// What a node may still take, by its latest report (free space minus
/// reservations and the node's minimum free space).
fn available(capacity: &Capacity) -> u64 {
    capacity.available_bytes
}

/// Nodes that can take `bytes`, best first: same site, then most room.
/// Nodes in `full` already have their cap (`cap`) of jobs in flight.
fn candidates(
    nodes: Vec<(StorageNode, Option<Capacity>)>,
    site: &str,
    bytes: u64,
    full: &HashSet<String>,
    cap: u32,
) -> (Vec<StorageNode>, Vec<String>) {
    let now = now_ms();
    let mut usable = Vec::new();
    let mut reasons = Vec::new();
    for (node, capacity) in nodes {
        if full.contains(&node.id) {
            reasons.push(format!("{}: {cap} jobs in flight, its cap", node.id));
            continue;
        }
        let Some(capacity) = capacity else {
            reasons.push(format!("{}: no capacity report yet", node.id));
            continue;
        };
        if now - capacity.reported_ms > STALE_REPORT.as_millis() as i64 {
            reasons.push(format!(
                "{}: no capacity report for over 2 minutes",
                node.id
            ));
        } else if !capacity.accepting_captures {
            reasons.push(format!("{}: restore-only", node.id));
        } else if available(&capacity) < bytes {
            reasons.push(format!(
                "{}: {} bytes available, {bytes} needed",
                node.id,
                available(&capacity)
            ));
        } else {
            usable.push((node.site != site, u64::MAX - available(&capacity), node));
        }
    }
    usable.sort_by(|a, b| (a.0, a.1, &a.2.id).cmp(&(b.0, b.1, &b.2.id)));
    (
        usable.into_iter().map(|(_, _, node)| node).collect(),
        reasons,
    )
}

impl Controller {
    /// Signs a capability for `machine_id` on `job`'s migration at its node.
    pub(crate) fn capability(
        &self,
        job: &Job,
        node_id: &str,
        machine_id: &str,
        role: CapabilityRole,
    ) -> v1::SignedCapability {
        let now = now_ms();
        let claims = v1::Capability {
            machine_id: machine_id.to_string(),
            migration_id: job.id.clone(),
            node_id: node_id.to_string(),
            role: role.into(),
            issued_unix_ms: now,
            expires_unix_ms: now + self.settings().token_ttl.as_millis() as i64,
            fence: job.fence,
        };
        self.settings().secrets.signer().sign(&claims)
    }

    /// A client for the node at `endpoint` (channels are cached per address).
    pub(crate) fn node_client(&self, endpoint: &str) -> Result<StorageNodeClient<Channel>, String> {
        let mut channels = self
            .inner
            .node_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(endpoint) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(endpoint.to_string())
                    .map_err(|err| format!("bad node address {endpoint}: {err}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(30))
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(endpoint.to_string(), channel.clone());
                channel
            }
        };
        Ok(StorageNodeClient::new(channel)
            .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
            .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES))
    }

    /// Reserves space for `job` on the best node that accepts it, leaving
    /// out the nodes in `full` (at their `cap` of jobs in flight). On
    /// failure returns why no node could take it (the job waits).
    pub(crate) async fn place(
        &self,
        job: &Job,
        full: &HashSet<String>,
        cap: u32,
    ) -> Result<Placement, String> {
        let bytes = estimate_bytes(self, job);
        let site = self
            .registry()
            .machines
            .get(&job.machine_id)
            .map(|m| m.value.inventory.site.clone())
            .unwrap_or_default();
        let (nodes, mut reasons) = candidates(self.storage_nodes(), &site, bytes, full, cap);
        for node in nodes {
            let token = self.capability(job, &node.id, &job.machine_id, CapabilityRole::Reserve);
            let mut client = match self.node_client(&node.endpoint) {
                Ok(client) => client,
                Err(reason) => {
                    reasons.push(reason);
                    continue;
                }
            };
            let request = v1::ReserveRequest {
                token: Some(token),
                bytes,
                lease_ms: self.settings().reservation_lease.as_millis() as u32,
            };
            match client.reserve(request).await {
                Ok(_) => {
                    tracing::info!(job_id = %job.id, node_id = %node.id, bytes, "reserved space for a replace capture");
                    return Ok(Placement {
                        node_id: node.id,
                        endpoint: node.endpoint,
                        reserved_bytes: bytes,
                        reserved_ms: now_ms(),
                    });
                }
                Err(status) => reasons.push(format!("{}: {}", node.id, status.message())),
            }
        }
        if reasons.is_empty() {
            reasons.push("no storage node is registered".into());
        }
        Err(format!(
            "waiting for a storage node with {bytes} bytes free: {}",
            reasons.join("; ")
        ))
    }

    /// The transfer details a worker needs for its part of a replace job:
    /// the source gets a CAPTURE capability, the destination a RESTORE one.
    pub fn replace_transfer(&self, job: &Job, machine_id: &str) -> Option<v1::ReplaceTransfer> {
        let placement = job.placement.as_ref()?;
        let role = match job.phase {
            Phase::Assigned | Phase::Capturing => CapabilityRole::Capture,
            Phase::Captured | Phase::Restoring | Phase::Verifying => CapabilityRole::Restore,
            _ => return None,
        };
        let migration_key = self.registry().migration_keys.get(&job.id).copied()?;
        let source_hostname = self
            .registry()
            .machines
            .get(&job.machine_id)
            .map(|m| m.value.inventory.hostname.clone())
            .unwrap_or_default();
        Some(v1::ReplaceTransfer {
            migration_id: job.id.clone(),
            node_id: placement.node_id.clone(),
            node_endpoint: placement.endpoint.clone(),
            capability: Some(self.capability(job, &placement.node_id, machine_id, role)),
            fleet_key: self.settings().secrets.fleet_key().to_vec(),
            migration_key: migration_key.to_vec(),
            source_hostname,
            destination_hostname: job
                .destination
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default(),
            replicas: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, site: &str) -> StorageNode {
        StorageNode {
            id: id.into(),
            endpoint: format!("http://{id}"),
            site: site.into(),
            registered_ms: 0,
        }
    }

    fn capacity(available_bytes: u64) -> Option<Capacity> {
        Some(Capacity {
            available_bytes,
            free_bytes: available_bytes,
            accepting_captures: true,
            reported_ms: now_ms(),
            ..Capacity::default()
        })
    }

    #[test]
    fn same_site_first_then_most_room() {
        let nodes = vec![
            (node("a", "paris"), capacity(500)),
            (node("b", "lyon"), capacity(900)),
            (node("c", "lyon"), capacity(700)),
            (node("d", "lyon"), capacity(50)),
            (node("e", "lyon"), None),
        ];
        let (order, reasons) = candidates(nodes, "lyon", 100, &HashSet::new(), 0);
        let ids: Vec<_> = order.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "a"]);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("50 bytes available, 100 needed"));
    }

    #[test]
    fn restore_only_and_stale_nodes_are_skipped() {
        let mut restore_only = capacity(1000).unwrap();
        restore_only.accepting_captures = false;
        let mut stale = capacity(1000).unwrap();
        stale.reported_ms = 0;
        let (order, reasons) = candidates(
            vec![
                (node("a", "x"), Some(restore_only)),
                (node("b", "x"), Some(stale)),
            ],
            "x",
            1,
            &HashSet::new(),
            0,
        );
        assert!(order.is_empty());
        assert!(reasons[0].contains("restore-only") && reasons[1].contains("2 minutes"));
    }

    #[test]
    fn nodes_at_their_cap_of_jobs_in_flight_are_left_out() {
        let nodes = vec![
            (node("a", "lyon"), capacity(900)),
            (node("b", "lyon"), capacity(500)),
            (node("c", "paris"), capacity(800)),
        ];
        let full: HashSet<String> = ["a".to_string()].into();
        let (order, reasons) = candidates(nodes, "lyon", 100, &full, 4);
        let ids: Vec<_> = order.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"], "same site first, the full node never");
        assert_eq!(reasons, ["a: 4 jobs in flight, its cap"]);
    }
}
