//! Placing replace jobs on storage nodes: pick the nodes with room (same
//! site first, then most available space after reservations), reserve the
//! estimated bytes on one of them (the primary), choose the replica nodes
//! the capture is copied to (another site first, then most room), and sign
//! the capability tokens workers present to the nodes.

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::model::{Job, Phase, Placement, ReplicaNode, Scenario, now_ms};
use crate::nodes::{Capacity, StorageNode};
use fleetmig_proto::v1::{self, CapabilityRole, storage_node_client::StorageNodeClient};
use std::collections::HashSet;
use std::time::Duration;
use tonic::transport::Channel;

/// Smallest reservation, for machines whose inventory reports no profiles.
const MIN_RESERVATION_BYTES: u64 = 1 << 20;

/// Most copies of a capture a plan may ask for.
pub const MAX_REPLICATION: u32 = 3;

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

/// The replication factor of a job: what its wave asks for, else 2 when at
/// least two storage nodes are registered, else 1.
pub fn resolve_factor(requested: Option<u32>, registered_nodes: usize) -> u32 {
    requested
        .unwrap_or(if registered_nodes >= 2 { 2 } else { 1 })
        .clamp(1, MAX_REPLICATION)
}

/// What a node may still take, by its latest report (free space minus
/// reservations and the node's minimum free space).
fn available(capacity: &Capacity) -> u64 {
    capacity.available_bytes
}

/// Whether a node can take a copy of `bytes` now: live (a report younger
/// than `live`), accepting captures, with room. Returns its available bytes,
/// or why not.
fn usable(
    node: &StorageNode,
    capacity: Option<&Capacity>,
    bytes: u64,
    now: i64,
    live: Duration,
) -> Result<u64, String> {
    let Some(capacity) = capacity else {
        return Err(format!("{}: no capacity report yet", node.id));
    };
    if now.saturating_sub(capacity.reported_ms) >= live.as_millis() as i64 {
        Err(format!(
            "{}: no capacity report for over {} (not live)",
            node.id,
            humantime::format_duration(live)
        ))
    } else if !capacity.accepting_captures {
        Err(format!("{}: restore-only", node.id))
    } else if available(capacity) < bytes {
        Err(format!(
            "{}: {} bytes available, {bytes} needed",
            node.id,
            available(capacity)
        ))
    } else {
        Ok(available(capacity))
    }
}

/// Nodes that can take `bytes`, best first: same site, then most room.
/// Nodes in `full` already have their cap (`cap`) of jobs in flight; nodes
/// without a report younger than `live` are not live.
fn candidates(
    nodes: &[(StorageNode, Option<Capacity>)],
    site: &str,
    bytes: u64,
    full: &HashSet<String>,
    cap: u32,
    live: Duration,
) -> (Vec<StorageNode>, Vec<String>) {
    let now = now_ms();
    let mut usable_nodes = Vec::new();
    let mut reasons = Vec::new();
    for (node, capacity) in nodes {
        if full.contains(&node.id) {
            reasons.push(format!("{}: {cap} jobs in flight, its cap", node.id));
            continue;
        }
        match usable(node, capacity.as_ref(), bytes, now, live) {
            Ok(room) => usable_nodes.push((node.site != site, u64::MAX - room, node.clone())),
            Err(reason) => reasons.push(reason),
        }
    }
    usable_nodes.sort_by(|a, b| (a.0, a.1, &a.2.id).cmp(&(b.0, b.1, &b.2.id)));
    (
        usable_nodes.into_iter().map(|(_, _, node)| node).collect(),
        reasons,
    )
}

/// Picks up to `count` nodes for copies of `bytes` besides `primary` and
/// the nodes in `exclude` (which hold copies already): live, accepting
/// captures, with room, each time preferring a site no chosen node (the
/// primary and the excluded ones included) is at, then the most room.
/// Per-node caps of jobs in flight count primaries only, so they do not
/// apply here. Returns the nodes, and why the others cannot take a copy.
pub(crate) fn rank_replicas(
    nodes: &[(StorageNode, Option<Capacity>)],
    primary: &StorageNode,
    exclude: &[String],
    bytes: u64,
    count: usize,
    live: Duration,
) -> (Vec<StorageNode>, Vec<String>) {
    let now = now_ms();
    let mut pool = Vec::new();
    let mut reasons = Vec::new();
    let mut sites: HashSet<String> = [primary.site.clone()].into();
    for (node, capacity) in nodes {
        if exclude.contains(&node.id) {
            sites.insert(node.site.clone());
            continue;
        }
        if node.id == primary.id {
            continue;
        }
        match usable(node, capacity.as_ref(), bytes, now, live) {
            Ok(room) => pool.push((room, node.clone())),
            Err(reason) => reasons.push(reason),
        }
    }
    let mut chosen = Vec::with_capacity(count);
    while chosen.len() < count {
        let best = pool
            .iter()
            .enumerate()
            .min_by(|(_, (room_a, a)), (_, (room_b, b))| {
                (sites.contains(&a.site), u64::MAX - room_a, &a.id).cmp(&(
                    sites.contains(&b.site),
                    u64::MAX - room_b,
                    &b.id,
                ))
            })
            .map(|(index, _)| index);
        let Some(index) = best else { break };
        let (_, node) = pool.swap_remove(index);
        sites.insert(node.site.clone());
        chosen.push(node);
    }
    (chosen, reasons)
}

/// [`rank_replicas`] when exactly `count` nodes are needed: the nodes, or
/// why there are not enough.
pub(crate) fn choose_replicas(
    nodes: &[(StorageNode, Option<Capacity>)],
    primary: &StorageNode,
    exclude: &[String],
    bytes: u64,
    count: usize,
    live: Duration,
) -> Result<Vec<StorageNode>, Vec<String>> {
    let (chosen, mut reasons) = rank_replicas(nodes, primary, exclude, bytes, count, live);
    if chosen.len() == count {
        return Ok(chosen);
    }
    if reasons.is_empty() {
        reasons.push(match chosen.len() {
            0 => "no other storage node is registered".to_string(),
            n => format!("only {n} other storage nodes are registered"),
        });
    }
    Err(reasons)
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
        self.sign_capability(job, node_id, machine_id, role, job.fence)
    }

    /// Signs a capability with an explicit `fence`.
    pub(crate) fn sign_capability(
        &self,
        job: &Job,
        node_id: &str,
        machine_id: &str,
        role: CapabilityRole,
        fence: u64,
    ) -> v1::SignedCapability {
        let now = now_ms();
        let claims = v1::Capability {
            machine_id: machine_id.to_string(),
            migration_id: job.id.clone(),
            node_id: node_id.to_string(),
            role: role.into(),
            issued_unix_ms: now,
            expires_unix_ms: now + self.settings().token_ttl.as_millis() as i64,
            fence,
        };
        self.settings().secrets.signer().sign(&claims)
    }

    /// A client for the node at `endpoint` (channels are cached per address).
    pub(crate) fn node_client(&self, endpoint: &str) -> Result<StorageNodeClient<Channel>, String> {
        self.cached_node_client(endpoint, endpoint, Some(Duration::from_secs(30)))
    }

    /// A client for calls that may run long (`Replicate` copies a whole
    /// capture): no channel-wide timeout; the caller sets one per request.
    pub fn long_node_client(&self, endpoint: &str) -> Result<StorageNodeClient<Channel>, String> {
        self.cached_node_client(&format!("long:{endpoint}"), endpoint, None)
    }

    fn cached_node_client(
        &self,
        cache_key: &str,
        endpoint: &str,
        timeout: Option<Duration>,
    ) -> Result<StorageNodeClient<Channel>, String> {
        let mut channels = self
            .inner
            .node_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(cache_key) {
            Some(channel) => channel.clone(),
            None => {
                let mut builder = self
                    .settings()
                    .transport
                    .endpoint(endpoint)
                    .map_err(|err| format!("bad node address {endpoint}: {err}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true);
                if let Some(timeout) = timeout {
                    builder = builder.timeout(timeout);
                }
                let channel = builder.connect_lazy();
                channels.insert(cache_key.to_string(), channel.clone());
                channel
            }
        };
        Ok(StorageNodeClient::new(channel)
            .max_decoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES)
            .max_encoding_message_size(fleetmig_proto::MAX_CONTROL_MESSAGE_BYTES))
    }

    /// The copies `job` must have: its wave's `replication`, else automatic
    /// by the `registered` storage nodes.
    pub(crate) fn replication_factor(&self, job: &Job, registered: usize) -> u32 {
        let requested = self
            .registry()
            .waves
            .get(&job.wave)
            .and_then(|wave| wave.value.spec.replication);
        resolve_factor(requested, registered)
    }

    /// Reserves space for `job` on the best node that accepts it, leaving
    /// out the nodes in `full` (at their `cap` of jobs in flight), and
    /// chooses its `factor - 1` replica nodes. On failure returns why no
    /// node could take it (the job waits).
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
        let nodes = self.storage_nodes();
        let factor = self.replication_factor(job, nodes.len());
        if factor as usize > nodes.len() && !nodes.is_empty() {
            return Err(format!(
                "waiting for storage nodes: replication {factor} needs {factor} storage nodes, {} registered",
                nodes.len()
            ));
        }
        let live = self.node_live_window();
        let (primaries, mut reasons) = candidates(&nodes, &site, bytes, full, cap, live);
        let mut replica_reasons: Option<Vec<String>> = None;
        for node in primaries {
            let replicas =
                match choose_replicas(&nodes, &node, &[], bytes, factor as usize - 1, live) {
                    Ok(replicas) => replicas,
                    Err(why) => {
                        replica_reasons.get_or_insert(why);
                        continue;
                    }
                };
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
                    let replica_ids: Vec<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
                    tracing::info!(job_id = %job.id, node_id = %node.id, bytes, factor, replicas = ?replica_ids, "reserved space for a replace capture");
                    return Ok(Placement {
                        node_id: node.id,
                        endpoint: node.endpoint,
                        reserved_bytes: bytes,
                        reserved_ms: now_ms(),
                        factor,
                        replicas: replicas
                            .into_iter()
                            .map(|r| ReplicaNode {
                                node_id: r.id,
                                endpoint: r.endpoint,
                            })
                            .collect(),
                        holders: Vec::new(),
                    });
                }
                Err(status) => reasons.push(format!("{}: {}", node.id, status.message())),
            }
        }
        if let Some(why) = replica_reasons {
            let wanted = factor - 1;
            return Err(format!(
                "waiting for {wanted} more live storage node{} with {bytes} bytes free for \
                 replicas (replication {factor}): {}",
                if wanted == 1 { "" } else { "s" },
                why.join("; ")
            ));
        }
        if reasons.is_empty() {
            reasons.push("no storage node is registered".into());
        }
        Err(format!(
            "waiting for a storage node with {bytes} bytes free: {}",
            reasons.join("; ")
        ))
    }

    /// The address of node `node_id`: as registered now, else as recorded
    /// on `placement`.
    fn node_endpoint(&self, node_id: &str, placement: &Placement) -> Option<String> {
        let registered = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(node_id)
            .map(|(node, _)| node.endpoint.clone());
        registered.or_else(|| {
            if node_id == placement.node_id {
                Some(placement.endpoint.clone())
            } else {
                placement
                    .replicas
                    .iter()
                    .find(|r| r.node_id == node_id)
                    .map(|r| r.endpoint.clone())
            }
        })
    }

    /// Key escrow: what an admin needs to restore migration `job_id` by
    /// hand — its key, the fleet key, the nodes holding a committed copy and
    /// a restore capability for each (for the destination, or the source
    /// when there is none yet). Audited by the caller.
    pub fn recovery_information(&self, job_id: &str) -> Result<v1::RecoverMigrationResponse> {
        let job = self
            .registry()
            .jobs
            .get(job_id)
            .map(|job| job.value.clone())
            .ok_or_else(|| Error::UnknownJob(job_id.to_string()))?;
        if job.scenario != Scenario::Replace {
            return Err(Error::FailedPrecondition(format!(
                "job {job_id} is a refresh: its state is in the hard-link store on the machine \
                 itself (fleetmig-worker load --store ...), nothing is escrowed"
            )));
        }
        let (Some(placement), Some(captured)) = (job.placement.as_ref(), job.captured.as_ref())
        else {
            return Err(Error::FailedPrecondition(format!(
                "migration {job_id} has no committed capture yet"
            )));
        };
        let migration_key = self
            .registry()
            .migration_keys
            .get(&job.id)
            .copied()
            .ok_or_else(|| Error::Internal(format!("the key of migration {job_id} is missing")))?;
        let destination = job
            .destination
            .as_ref()
            .map(|d| d.machine_id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| job.machine_id.clone());
        let mut node_endpoints = Vec::new();
        let mut restore_tokens = Vec::new();
        for holder in placement.holders(true) {
            let Some(endpoint) = self.node_endpoint(&holder, placement) else {
                continue;
            };
            node_endpoints.push(endpoint);
            restore_tokens.push(self.capability(
                &job,
                &holder,
                &destination,
                CapabilityRole::Restore,
            ));
        }
        Ok(v1::RecoverMigrationResponse {
            migration_id: job.id.clone(),
            source_machine_id: job.machine_id.clone(),
            destination_machine_id: destination,
            migration_key_hex: hex::encode(migration_key),
            fleet_key_hex: hex::encode(self.settings().secrets.fleet_key()),
            node_endpoints,
            restore_tokens,
            manifest_digest: captured.manifest_digest.clone(),
        })
    }

    /// The transfer details a worker needs for its part of a replace job:
    /// the source gets a CAPTURE capability and, per planned replica node,
    /// a REPLICATE one; the destination a RESTORE capability for the
    /// primary and for every other node holding a committed copy.
    pub fn replace_transfer(&self, job: &Job, machine_id: &str) -> Option<v1::ReplaceTransfer> {
        if job.scenario != Scenario::Replace {
            return None;
        }
        let placement = job.placement.as_ref()?;
        let (role, replicas) = match job.phase {
            Phase::Assigned | Phase::Capturing => {
                let replicas = placement
                    .replicas
                    .iter()
                    .map(|replica| v1::ReplicaTarget {
                        node_id: replica.node_id.clone(),
                        node_endpoint: self
                            .node_endpoint(&replica.node_id, placement)
                            .unwrap_or_else(|| replica.endpoint.clone()),
                        capability: Some(self.capability(
                            job,
                            &replica.node_id,
                            &job.machine_id,
                            CapabilityRole::Replicate,
                        )),
                    })
                    .collect();
                (CapabilityRole::Capture, replicas)
            }
            Phase::Captured | Phase::Restoring | Phase::Verifying => {
                let replicas = placement
                    .holders(job.captured.is_some())
                    .into_iter()
                    .filter(|holder| *holder != placement.node_id)
                    .filter_map(|holder| {
                        let endpoint = self.node_endpoint(&holder, placement)?;
                        Some(v1::ReplicaTarget {
                            capability: Some(self.capability(
                                job,
                                &holder,
                                machine_id,
                                CapabilityRole::Restore,
                            )),
                            node_id: holder,
                            node_endpoint: endpoint,
                        })
                    })
                    .collect();
                (CapabilityRole::Restore, replicas)
            }
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
            node_endpoint: self
                .node_endpoint(&placement.node_id, placement)
                .unwrap_or_else(|| placement.endpoint.clone()),
            capability: Some(self.capability(job, &placement.node_id, machine_id, role)),
            fleet_key: self.settings().secrets.fleet_key().to_vec(),
            migration_key: migration_key.to_vec(),
            source_hostname,
            destination_hostname: job
                .destination
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default(),
            replicas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Duration = Duration::from_secs(30);

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

    fn ids(nodes: &[StorageNode]) -> Vec<&str> {
        nodes.iter().map(|n| n.id.as_str()).collect()
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
        let (order, reasons) = candidates(&nodes, "lyon", 100, &HashSet::new(), 0, LIVE);
        assert_eq!(ids(&order), ["b", "c", "a"]);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("50 bytes available, 100 needed"));
    }

    #[test]
    fn restore_only_and_stale_nodes_are_skipped() {
        let mut restore_only = capacity(1000).unwrap();
        restore_only.accepting_captures = false;
        let mut stale = capacity(1000).unwrap();
        stale.reported_ms = now_ms() - LIVE.as_millis() as i64 - 1;
        let (order, reasons) = candidates(
            &[
                (node("a", "x"), Some(restore_only)),
                (node("b", "x"), Some(stale)),
            ],
            "x",
            1,
            &HashSet::new(),
            0,
            LIVE,
        );
        assert!(order.is_empty());
        assert!(reasons[0].contains("restore-only"), "{reasons:?}");
        assert!(
            reasons[1].contains("no capacity report for over 30s (not live)"),
            "{reasons:?}"
        );
    }

    #[test]
    fn nodes_at_their_cap_of_jobs_in_flight_are_left_out() {
        let nodes = vec![
            (node("a", "lyon"), capacity(900)),
            (node("b", "lyon"), capacity(500)),
            (node("c", "paris"), capacity(800)),
        ];
        let full: HashSet<String> = ["a".to_string()].into();
        let (order, reasons) = candidates(&nodes, "lyon", 100, &full, 4, LIVE);
        assert_eq!(
            ids(&order),
            ["b", "c"],
            "same site first, the full node never"
        );
        assert_eq!(reasons, ["a: 4 jobs in flight, its cap"]);
    }

    #[test]
    fn the_factor_defaults_to_two_with_two_nodes_and_stays_in_range() {
        assert_eq!(resolve_factor(None, 0), 1);
        assert_eq!(resolve_factor(None, 1), 1);
        assert_eq!(resolve_factor(None, 2), 2);
        assert_eq!(resolve_factor(None, 5), 2);
        assert_eq!(resolve_factor(Some(1), 5), 1);
        assert_eq!(
            resolve_factor(Some(3), 1),
            3,
            "validation and admission judge that"
        );
        assert_eq!(resolve_factor(Some(0), 1), 1);
        assert_eq!(resolve_factor(Some(9), 9), MAX_REPLICATION);
    }

    #[test]
    fn replicas_prefer_another_site_then_most_room() {
        let nodes = vec![
            (node("p", "lyon"), capacity(900)),
            (node("l1", "lyon"), capacity(950)),
            (node("l2", "lyon"), capacity(990)),
            (node("a1", "paris"), capacity(300)),
            (node("a2", "paris"), capacity(400)),
            (node("b1", "nice"), capacity(200)),
        ];
        let primary = node("p", "lyon");
        let one = choose_replicas(&nodes, &primary, &[], 100, 1, LIVE).unwrap();
        assert_eq!(ids(&one), ["a2"], "another site first, then the most room");
        let two = choose_replicas(&nodes, &primary, &[], 100, 2, LIVE).unwrap();
        assert_eq!(ids(&two), ["a2", "b1"], "each copy at a site not used yet");
        let excluded = choose_replicas(&nodes, &primary, &["a2".into()], 100, 1, LIVE).unwrap();
        assert_eq!(
            ids(&excluded),
            ["b1"],
            "a2 holds a copy at paris already: nice is a site not used yet"
        );
        let same_site_only = vec![
            (node("p", "lyon"), capacity(900)),
            (node("l1", "lyon"), capacity(950)),
        ];
        let fallback = choose_replicas(&same_site_only, &primary, &[], 100, 1, LIVE).unwrap();
        assert_eq!(
            ids(&fallback),
            ["l1"],
            "the primary's site when nothing else"
        );
        assert!(
            choose_replicas(&same_site_only, &primary, &[], 100, 0, LIVE)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn replicas_must_be_live_accepting_and_have_room() {
        let mut stale = capacity(1000).unwrap();
        stale.reported_ms = 0;
        let mut restore_only = capacity(1000).unwrap();
        restore_only.accepting_captures = false;
        let nodes = vec![
            (node("p", "lyon"), capacity(900)),
            (node("s", "paris"), Some(stale)),
            (node("r", "paris"), Some(restore_only)),
            (node("t", "paris"), capacity(10)),
            (node("n", "paris"), None),
        ];
        let why = choose_replicas(&nodes, &node("p", "lyon"), &[], 100, 1, LIVE).unwrap_err();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(
            why[0].starts_with("s: no capacity report for over"),
            "{why:?}"
        );
        assert!(why[1].contains("restore-only") && why[2].contains("10 bytes available"));
        let alone = vec![(node("p", "lyon"), capacity(900))];
        assert_eq!(
            choose_replicas(&alone, &node("p", "lyon"), &[], 1, 1, LIVE).unwrap_err(),
            ["no other storage node is registered"]
        );
    }
}
