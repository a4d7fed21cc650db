//! The source's replicas: once its capture is committed and released (sealed) on the primary
//! node, the source asks the primary to copy it to each replica node the transfer names
//! (`Replicate`, with the job's own CAPTURE capability on the primary and the replica's
//! REPLICATE capability for the target), so that the capture the controller sees as
//! `CAPTURED` survives the loss of a node.
//!
//! Transient failures are retried with backoff for [`NodeTimings::replicate_give_up`] per
//! target; a target still not reached then fails the capture (retryable), naming the node:
//! `CAPTURED` is never reported with fewer replicas than asked. Each copy is journaled
//! (`capture.replicated`, with the node, the manifest digest and the figures), so a resumed
//! job does not ask again.
//!
//! [`NodeTimings::replicate_give_up`]: super::NodeTimings::replicate_give_up

use fleetmig_proto::v1;
use serde::{Deserialize, Serialize};

use super::{detail, giving_up_after, recorded_all};
use crate::agent::JobContext;
use crate::error::{Error, Result};
use crate::refresh::blocking;

/// What the source journals (`capture.replicated`) once a replica node holds the committed
/// capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ReplicaRecord {
    /// The replica node.
    pub node_id: String,
    /// Its endpoint.
    pub node_endpoint: String,
    /// Digest of the manifest it holds (a capture made again needs copying again).
    pub manifest_digest: String,
    /// Chunks the migration references.
    pub chunks: u32,
    /// Chunks the primary sent (the replica lacked them).
    pub chunks_sent: u32,
    /// Sealed bytes sent.
    pub bytes_sent: u64,
    /// The replica already held the capture committed; nothing was sent.
    pub already_committed: bool,
}

/// Copies the capture with `manifest_digest` to every replica node of `transfer` not yet
/// journaled as holding it; returns the replica node ids, in the transfer's order.
pub(super) async fn replicate(
    ctx: &JobContext,
    transfer: &v1::ReplaceTransfer,
    manifest_digest: &str,
) -> Result<Vec<String>> {
    let done: Vec<ReplicaRecord> = recorded_all(ctx, "capture.replicated")?;
    let mut replicated = Vec::with_capacity(transfer.replicas.len());
    for target in &transfer.replicas {
        let already = done.iter().any(|record| {
            record.node_id == target.node_id && record.manifest_digest == manifest_digest
        });
        if already {
            tracing::info!(job_id = %ctx.job_id, node = %target.node_id, "capture already replicated to this node");
        } else {
            let record = replicate_to(ctx, transfer, target, manifest_digest).await?;
            ctx.record("capture.replicated", detail(&record)).await?;
        }
        replicated.push(target.node_id.clone());
    }
    Ok(replicated)
}

/// One `Replicate` call on the primary (retried for the bound) to `target`.
async fn replicate_to(
    ctx: &JobContext,
    transfer: &v1::ReplaceTransfer,
    target: &v1::ReplicaTarget,
    manifest_digest: &str,
) -> Result<ReplicaRecord> {
    let named = format!("{} ({})", target.node_id, target.node_endpoint);
    let token = target
        .capability
        .clone()
        .ok_or_else(|| Error::BadAssignment {
            job_id: ctx.job_id.clone(),
            reason: format!("replica node {named} carries no capability token"),
        })?;
    let store = super::node_store(ctx, transfer)?
        .with_retry(giving_up_after(ctx.node_timings.replicate_give_up));
    let endpoint = target.node_endpoint.clone();
    tracing::info!(job_id = %ctx.job_id, from = %store.node(), to = %named, "replicating the capture");
    let response = blocking(move || store.replicate(&endpoint, &token))
        .await
        .map_err(|error| match error {
            Error::Shutdown => Error::Shutdown,
            error => Error::ReplicationFailed {
                target: named.clone(),
                retryable: error.is_retryable() || matches!(error, Error::NodeFull { .. }),
                reason: error.to_string(),
            },
        })?;
    let record = ReplicaRecord {
        node_id: target.node_id.clone(),
        node_endpoint: target.node_endpoint.clone(),
        manifest_digest: manifest_digest.to_owned(),
        chunks: response.chunks,
        chunks_sent: response.chunks_sent,
        bytes_sent: response.bytes_sent,
        already_committed: response.already_committed,
    };
    tracing::info!(
        job_id = %ctx.job_id,
        node = %named,
        chunks = record.chunks,
        chunks_sent = record.chunks_sent,
        bytes_sent = record.bytes_sent,
        already_committed = record.already_committed,
        "capture replicated"
    );
    Ok(record)
}
