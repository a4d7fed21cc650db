//! Replicas of replace captures: the reconciler that keeps every committed
//! capture on as many live storage nodes as its replication factor asks.
//!
//! The source worker copies its capture to the replica nodes chosen at
//! admission before it reports it (see `lifecycle.rs`); the job then records
//! its *holders*, the nodes with a committed copy. One pass of
//! [`Controller::reconcile_replicas`], run periodically by the leader only:
//!
//! 1. **Re-sync.** Each node that registered again or came back live after a
//!    silence (see `nodes.rs`) lists its migrations (`ListMigrations`, an
//!    INVENTORY token); a job that names it as a holder while it no longer
//!    holds the migration committed (or holds another manifest) loses it as
//!    a holder (audit `job.replica_lost`).
//! 2. **Repair.** Each replace job with a committed capture that is not over
//!    and has fewer live holders than its factor gets copies on other live
//!    nodes that accept captures (another site first, then the most room):
//!    the controller asks a live holder to `Replicate` to the target (a
//!    REPLICATE token for each) and, on success, adds the target to the
//!    job's holders with compare-and-swap (audit `job.replicated`).
//!
//! Errors from one node or job are recorded in the [`ReconcileReport`] and
//! never stop the pass; only a store error that ends this controller's right
//! to write (not the leader, store gone) does.
//!
//! A copy a worker commits while a node's listing is read may look lost to
//! that listing: the job then loses the holder and the next pass copies to
//! it again, which the node answers at once (`already_committed`).

use crate::controller::{Controller, job_event};
use crate::error::{Error, Result};
use crate::model::{Job, now_ms};
use crate::nodes::{Capacity, StorageNode};
use crate::placement::rank_replicas;
use fleetmig_proto::v1::{self, CapabilityRole};
use futures::StreamExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the leader should run [`Controller::reconcile_replicas`].
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// Longest one `Replicate` call may take (it copies a whole capture).
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// Copies made at once in one pass.
const PARALLEL_COPIES: usize = 4;

/// Migrations asked of a node per `ListMigrations` page.
const INVENTORY_PAGE: u32 = 1000;

/// Most `ListMigrations` pages read from one node in one pass (a node
/// that keeps answering `more` is cut off there and re-synced later).
const MAX_INVENTORY_PAGES: usize = 10_000;

/// Migration states in which a node holds a committed copy.
const HOLDING_STATES: [&str; 3] = ["committed", "sealed", "retained"];

/// What one reconciler pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Nodes whose migrations were listed and checked against the holders.
    pub nodes_synced: usize,
    /// Holders dropped because their node no longer holds the copy.
    pub holders_dropped: usize,
    /// Copies made (holders added).
    pub replicated: usize,
    /// Migrations still short of live copies after the pass.
    pub under_replicated: usize,
    /// What went wrong, one line per node or copy; the pass went on.
    pub errors: Vec<String>,
}

/// A replace job short of live copies, as the pass found it.
#[derive(Debug, Clone)]
struct Shortfall {
    job_id: String,
    wanted: u32,
    holders: Vec<String>,
    live_holders: Vec<String>,
    bytes: u64,
}

/// Whether `err` ends the pass: this controller may no longer write.
fn is_fatal(err: &Error) -> bool {
    matches!(err, Error::NotLeader { .. } | Error::StoreUnavailable(_))
}

/// Whether a listed migration is a committed copy of the manifest
/// `digest` (an empty digest on either side is not compared).
fn holds(entry: Option<&v1::MigrationEntry>, digest: &str) -> Result<(), String> {
    let Some(entry) = entry else {
        return Err("the node does not hold it".into());
    };
    if !HOLDING_STATES.contains(&entry.state.as_str()) {
        return Err(format!("the node holds it {}, not committed", entry.state));
    }
    if !digest.is_empty() && !entry.manifest_digest.is_empty() && entry.manifest_digest != digest {
        return Err(format!(
            "the node holds another manifest ({}, the job's is {digest})",
            entry.manifest_digest
        ));
    }
    Ok(())
}

impl Controller {
    /// One reconciler pass: re-syncs the nodes that came back, then copies
    /// every under-replicated capture to more live nodes. To be run
    /// periodically (every [`RECONCILE_INTERVAL`]) by the leader only.
    pub async fn reconcile_replicas(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for node in self.take_resync() {
            match self.resync_node(&node, &mut report).await {
                Ok(()) => report.nodes_synced += 1,
                Err(err) => {
                    self.mark_resync(&node.id);
                    let fatal = matches!(&err, NodeError::Store(e) if is_fatal(e));
                    report.errors.push(format!("re-sync of {}: {err}", node.id));
                    if let (true, NodeError::Store(err)) = (fatal, err) {
                        return Err(err);
                    }
                }
            }
        }
        let nodes = self.storage_nodes();
        let live = self.live_nodes();
        let window = self.node_live_window();
        let shortfalls = self.shortfalls(&live);
        let copies = futures::stream::iter(shortfalls)
            .map(|shortfall| self.repair(shortfall, &nodes, window))
            .buffer_unordered(PARALLEL_COPIES)
            .collect::<Vec<_>>()
            .await;
        let mut fatal = None;
        for (added, errors, error) in copies {
            report.replicated += added;
            report.errors.extend(errors);
            if let Some(err) = error {
                fatal.get_or_insert(err);
            }
        }
        if let Some(err) = fatal {
            return Err(err);
        }
        report.under_replicated = self.shortfalls_count(&self.live_nodes());
        if !report.errors.is_empty() {
            tracing::warn!(errors = ?report.errors, "replica reconciler pass had errors");
        }
        tracing::debug!(?report, "replica reconciler pass");
        Ok(report)
    }

    /// Replace jobs short of live copies that have a live holder to copy
    /// from.
    fn shortfalls(&self, live: &HashSet<String>) -> Vec<Shortfall> {
        let mut found: Vec<Shortfall> = self
            .registry()
            .jobs
            .values()
            .filter_map(|job| {
                let job = &job.value;
                let (wanted, holders, live_holders) = job.live_copies(live)?;
                let short = live_holders.len() < wanted as usize && !live_holders.is_empty();
                short.then(|| Shortfall {
                    job_id: job.id.clone(),
                    wanted,
                    holders,
                    live_holders,
                    bytes: job.placement.as_ref().map_or(1, |p| p.reserved_bytes.max(1)),
                })
            })
            .collect();
        found.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        found
    }

    /// Migrations short of live copies.
    fn shortfalls_count(&self, live: &HashSet<String>) -> usize {
        self.registry()
            .jobs
            .values()
            .filter_map(|job| job.value.copies())
            .filter(|(wanted, holders)| {
                holders.iter().filter(|h| live.contains(*h)).count() < *wanted as usize
            })
            .count()
    }

    /// Copies one job's capture to as many live nodes as it lacks. Returns
    /// the copies made, the errors, and a fatal store error if one ended it.
    async fn repair(
        &self,
        shortfall: Shortfall,
        nodes: &[(StorageNode, Option<Capacity>)],
        window: Duration,
    ) -> (usize, Vec<String>, Option<Error>) {
        let mut errors = Vec::new();
        let missing = shortfall.wanted as usize - shortfall.live_holders.len();
        let node = |id: &str| nodes.iter().find(|(n, _)| n.id == id).map(|(n, _)| n);
        // Copy from the primary while it is live, else from another holder.
        let Some(source) = shortfall.live_holders.iter().find_map(|id| node(id)) else {
            return (0, errors, None);
        };
        let (targets, reasons) = rank_replicas(
            nodes,
            source,
            &shortfall.holders,
            shortfall.bytes,
            missing,
            window,
        );
        if targets.len() < missing {
            errors.push(format!(
                "{}: {} live copies of {} wanted and only {} more node(s) can take one{}",
                shortfall.job_id,
                shortfall.live_holders.len(),
                shortfall.wanted,
                targets.len(),
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join("; "))
                }
            ));
        }
        let mut added = 0;
        for target in targets {
            let Some(job) = self.registry().jobs.get(&shortfall.job_id).map(|j| j.value.clone())
            else {
                break;
            };
            let mut copied = None;
            for holder in shortfall.live_holders.iter().filter_map(|id| node(id)) {
                match self.replicate(&job, holder, &target).await {
                    Ok(response) => {
                        copied = Some((holder.id.clone(), response));
                        break;
                    }
                    Err(why) => errors.push(format!(
                        "{}: copy from {} to {} failed: {why}",
                        job.id, holder.id, target.id
                    )),
                }
            }
            let Some((from, response)) = copied else {
                continue;
            };
            match self
                .add_holder(&job.id, &target.id, &from, &response)
                .await
            {
                Ok(true) => added += 1,
                Ok(false) => {}
                Err(err) if is_fatal(&err) => return (added, errors, Some(err)),
                Err(err) => errors.push(format!(
                    "{}: could not record the copy on {}: {err}",
                    job.id, target.id
                )),
            }
        }
        (added, errors, None)
    }

    /// Asks `holder` to copy `job`'s migration to `target`.
    async fn replicate(
        &self,
        job: &Job,
        holder: &StorageNode,
        target: &StorageNode,
    ) -> Result<v1::ReplicateResponse, String> {
        let token = self.controller_token(job, &holder.id);
        let target_token = self.controller_token(job, &target.id);
        let mut client = self.long_node_client(&holder.endpoint)?;
        let mut request = tonic::Request::new(v1::ReplicateRequest {
            token: Some(token),
            target_endpoint: target.endpoint.clone(),
            target_token: Some(target_token),
        });
        request.set_timeout(REPLICATE_TIMEOUT);
        tracing::info!(job_id = %job.id, from = %holder.id, to = %target.id, "replicating a capture");
        client
            .replicate(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    }

    /// A REPLICATE token of the controller's own for `job` on `node_id`:
    /// unfenced, so it neither fails against nor raises the fence a node
    /// keeps for the migration.
    fn controller_token(&self, job: &Job, node_id: &str) -> v1::SignedCapability {
        self.sign_capability(
            job,
            node_id,
            &job.machine_id,
            CapabilityRole::Replicate,
            fleetmig_auth::UNFENCED,
        )
    }

    /// Records `target` as a holder of `job_id`'s capture, copied from
    /// `from`. Returns whether the job changed (it may be over, or list the
    /// holder already).
    async fn add_holder(
        &self,
        job_id: &str,
        target: &str,
        from: &str,
        response: &v1::ReplicateResponse,
    ) -> Result<bool> {
        let detail = if response.already_committed {
            format!("storage node {target} already held a committed copy (copy from {from})")
        } else {
            format!(
                "copied to storage node {target} from {from}: {} of {} chunks, {} bytes sent",
                response.chunks_sent, response.chunks, response.bytes_sent
            )
        };
        let changed = AtomicBool::new(false);
        self.update_job(job_id, |job| {
                changed.store(false, Ordering::Relaxed);
                if job.copies().is_none() {
                    return Ok(None);
                }
                let Some(placement) = job.placement.as_ref() else {
                    return Ok(None);
                };
                let mut holders = placement.holders(true);
                if holders.iter().any(|h| h == target) {
                    return Ok(None);
                }
                holders.push(target.to_string());
                changed.store(true, Ordering::Relaxed);
                let mut next = job.clone();
                if let Some(placement) = next.placement.as_mut() {
                    placement.holders = holders.clone();
                }
                let event = job_event(
                    &next,
                    "controller",
                    "job.replicated",
                    format!(
                        "{detail}; holders now {} ({} wanted)",
                        holders.join(", "),
                        placement.wanted()
                    ),
                );
                Ok(Some((next, vec![event])))
            })
            .await?;
        let changed = changed.load(Ordering::Relaxed);
        if changed {
            tracing::info!(job_id, node_id = target, "capture replicated");
        }
        Ok(changed)
    }

    /// Lists `node`'s migrations and drops it from the holders of every job
    /// whose migration it no longer holds committed.
    async fn resync_node(
        &self,
        node: &StorageNode,
        report: &mut ReconcileReport,
    ) -> Result<(), NodeError> {
        let started = now_ms();
        // Only the jobs that name the node as a holder matter.
        let jobs: Vec<(String, String)> = self
            .registry()
            .jobs
            .values()
            .filter_map(|job| {
                let (_, holders) = job.value.copies()?;
                holders.contains(&node.id).then(|| {
                    let digest = job
                        .value
                        .captured
                        .as_ref()
                        .map(|c| c.manifest_digest.clone())
                        .unwrap_or_default();
                    (job.value.id.clone(), digest)
                })
            })
            .collect();
        let wanted: HashSet<&str> = jobs.iter().map(|(id, _)| id.as_str()).collect();
        let listed = self.list_migrations(node, &wanted).await?;
        tracing::info!(node_id = %node.id, holders_of = jobs.len(), listed = listed.len(), elapsed_ms = now_ms() - started, "storage node re-synced");
        for (job_id, digest) in jobs {
            let Err(why) = holds(listed.get(&job_id), &digest) else {
                continue;
            };
            match self.drop_holder(&job_id, &node.id, &why).await {
                Ok(true) => report.holders_dropped += 1,
                Ok(false) => {}
                Err(err) if is_fatal(&err) => return Err(NodeError::Store(err)),
                Err(err) => report.errors.push(format!(
                    "{job_id}: could not drop holder {}: {err}",
                    node.id
                )),
            }
        }
        Ok(())
    }

    /// The entries of the migrations in `wanted` that `node` lists.
    async fn list_migrations(
        &self,
        node: &StorageNode,
        wanted: &HashSet<&str>,
    ) -> Result<BTreeMap<String, v1::MigrationEntry>, NodeError> {
        let mut client = self.node_client(&node.endpoint).map_err(NodeError::Node)?;
        let mut listed = BTreeMap::new();
        let mut start_after = String::new();
        for _ in 0..MAX_INVENTORY_PAGES {
            let page = client
                .list_migrations(v1::ListMigrationsRequest {
                    token: Some(self.inventory_token(&node.id)),
                    start_after: start_after.clone(),
                    limit: INVENTORY_PAGE,
                })
                .await
                .map_err(|status| {
                    NodeError::Node(format!(
                        "ListMigrations: {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                })?
                .into_inner();
            let Some(last) = page.migrations.last().map(|m| m.migration_id.clone()) else {
                return Ok(listed);
            };
            if last <= start_after {
                return Err(NodeError::Node(format!(
                    "ListMigrations went backwards after {start_after:?}"
                )));
            }
            for entry in page.migrations {
                if wanted.contains(entry.migration_id.as_str()) {
                    listed.insert(entry.migration_id.clone(), entry);
                }
            }
            if !page.more {
                return Ok(listed);
            }
            start_after = last;
        }
        Err(NodeError::Node(format!(
            "ListMigrations still had more after {MAX_INVENTORY_PAGES} pages"
        )))
    }

    /// An INVENTORY token for `node_id` (names no migration nor machine).
    fn inventory_token(&self, node_id: &str) -> v1::SignedCapability {
        let now = now_ms();
        let claims = v1::Capability {
            machine_id: String::new(),
            migration_id: String::new(),
            node_id: node_id.to_string(),
            role: CapabilityRole::Inventory.into(),
            issued_unix_ms: now,
            expires_unix_ms: now + self.settings().token_ttl.as_millis() as i64,
            fence: fleetmig_auth::UNFENCED,
        };
        self.settings().secrets.signer().sign(&claims)
    }

    /// Drops `node_id` from `job_id`'s holders because of `why`. Returns
    /// whether the job changed.
    async fn drop_holder(&self, job_id: &str, node_id: &str, why: &str) -> Result<bool> {
        let dropped = AtomicBool::new(false);
        self.update_job(job_id, |job| {
                dropped.store(false, Ordering::Relaxed);
                if job.copies().is_none() {
                    return Ok(None);
                }
                let Some(placement) = job.placement.as_ref() else {
                    return Ok(None);
                };
                let holders = placement.holders(true);
                if !holders.iter().any(|h| h == node_id) {
                    return Ok(None);
                }
                let left: Vec<String> = holders.into_iter().filter(|h| h != node_id).collect();
                dropped.store(true, Ordering::Relaxed);
                let mut next = job.clone();
                if let Some(placement) = next.placement.as_mut() {
                    placement.holders = left.clone();
                    // A placement from before replication now says so.
                    placement.factor = placement.factor.max(1);
                }
                let event = job_event(
                    &next,
                    "controller",
                    "job.replica_lost",
                    format!(
                        "storage node {node_id} no longer holds the capture ({why}); {} of {} \
                         copies left{}",
                        left.len(),
                        placement.wanted(),
                        if left.is_empty() {
                            String::new()
                        } else {
                            format!(" on {}", left.join(", "))
                        }
                    ),
                );
                Ok(Some((next, vec![event])))
            })
            .await?;
        let dropped = dropped.load(Ordering::Relaxed);
        if dropped {
            tracing::warn!(job_id, node_id, reason = why, "replica lost; it will be copied again");
        }
        Ok(dropped)
    }
}

/// Why a node's re-sync failed.
#[derive(Debug)]
enum NodeError {
    /// The node could not be reached or refused.
    Node(String),
    /// The store refused a write.
    Store(Error),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Node(why) => f.write_str(why),
            NodeError::Store(err) => write!(f, "{err}"),
        }
    }
}

#[cfg(test)]
mod tests;
