//! Where the destination restores from: the primary node of the transfer (`node_id`), then each
//! replica node (`replicas`, each with a RESTORE capability there), in that order.
//!
//! The first node that serves the manifest is used. When a node fails (unreachable past
//! [`NodeTimings::source_give_up`](super::NodeTimings), data it lost, a refusal) the next one
//! takes over; the packed restore is resumable, so files already restored are neither fetched
//! nor written again. Every node must serve the same capture: the digest of the first manifest
//! served is journaled (`restore.source`, with the node) and a node serving another one is
//! passed over. After the verified restore, every node is released; a node that cannot be
//! reached then is logged, not fatal.

use std::path::Path;
use std::sync::Arc;

use fleetmig_format::PackedManifest;
use fleetmig_proto::v1;
use serde::{Deserialize, Serialize};

use super::{Keys, giving_up_after, open_manifest, recorded};
use crate::agent::JobContext;
use crate::error::{Error, Result};
use crate::packed::node_store::RetryPolicy;
use crate::packed::{self, NodeStore};
use crate::refresh::blocking;
use crate::telemetry::WatchSink;

/// What the destination journals (`restore.source`) when a node serves it the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SourceRecord {
    node_id: String,
    node_endpoint: String,
    manifest_digest: String,
}

/// The nodes holding the migration, primary first, each as a transfer of its own (node id,
/// endpoint and RESTORE capability swapped in; no replicas).
pub(super) fn sources(transfer: &v1::ReplaceTransfer) -> Vec<v1::ReplaceTransfer> {
    let primary = v1::ReplaceTransfer {
        replicas: Vec::new(),
        ..transfer.clone()
    };
    let replicas = transfer.replicas.iter().map(|replica| v1::ReplaceTransfer {
        node_id: replica.node_id.clone(),
        node_endpoint: replica.node_endpoint.clone(),
        capability: replica.capability.clone(),
        replicas: Vec::new(),
        ..transfer.clone()
    });
    std::iter::once(primary).chain(replicas).collect()
}

/// Whether another node may succeed where a node failed with `error`: it was unreachable,
/// lost data, served a bad chunk, or refused (e.g. it does not hold the migration).
fn next_source_may_help(error: &Error) -> bool {
    matches!(
        error,
        Error::NodeUnavailable { .. }
            | Error::NodeDataLoss { .. }
            | Error::NodeRefused { .. }
            | Error::NodeFull { .. }
            | Error::CorruptChunk { .. }
    )
}

/// The store of one source, retried for `policy`.
fn store_of(
    ctx: &JobContext,
    source: &v1::ReplaceTransfer,
    policy: RetryPolicy,
) -> Result<NodeStore> {
    Ok(super::node_store(ctx, source)?.with_retry(policy))
}

/// Runs `work` with the manifest of the first source that serves it and lets `work` finish;
/// moves on to the next source when a node fails (see [`next_source_may_help`]). Returns what
/// `work` returned and the id of the node that served it.
pub(super) async fn first_serving<T, W>(
    ctx: &JobContext,
    transfer: &v1::ReplaceTransfer,
    keys: &Keys,
    work: W,
) -> Result<(T, String)>
where
    T: Send + 'static,
    W: Fn(&NodeStore, &PackedManifest) -> Result<T> + Send + Sync + 'static,
{
    let sources = sources(transfer);
    // With a single node, wait for it as long as ever; with several, move on sooner.
    let policy = if sources.len() > 1 {
        giving_up_after(ctx.node_timings.source_give_up)
    } else {
        RetryPolicy::default()
    };
    let work = Arc::new(work);
    let mut failures = Vec::new();
    for source in &sources {
        let expected =
            recorded::<SourceRecord>(ctx, "restore.source")?.map(|record| record.manifest_digest);
        let store = store_of(ctx, source, policy)?;
        let node = store.node().to_owned();
        let (state, job_id, fence) = (ctx.state.clone(), ctx.job_id.clone(), ctx.fence);
        let (keys, work) = (keys.clone(), Arc::clone(&work));
        let (migration_id, source_hostname) = (
            transfer.migration_id.clone(),
            transfer.source_hostname.clone(),
        );
        let record = SourceRecord {
            node_id: source.node_id.clone(),
            node_endpoint: source.node_endpoint.clone(),
            manifest_digest: String::new(),
        };
        let attempt = blocking(move || {
            let (manifest, digest) = open_manifest(&store, &keys, &migration_id, &source_hostname)?;
            if let Some(expected) = expected.filter(|expected| *expected != digest) {
                return Err(Error::NodeRefused {
                    node: store.node().to_owned(),
                    call: "GetManifest",
                    code: "OtherCapture".to_owned(),
                    message: format!(
                        "the node serves a manifest with digest {digest}, the restore started from {expected}"
                    ),
                });
            }
            let record = SourceRecord {
                manifest_digest: digest,
                ..record
            };
            let detail = serde_json::to_string(&record).expect("records serialize");
            state.record(&job_id, fence, "restore.source", detail)?;
            work(&store, &manifest)
        })
        .await;
        match attempt {
            Ok(value) => return Ok((value, source.node_id.clone())),
            Err(error) if sources.len() > 1 && next_source_may_help(&error) => {
                tracing::warn!(job_id = %ctx.job_id, %node, %error, "storage node failed; trying the next one holding the migration");
                failures.push(format!("{node}: {error}"));
            }
            Err(error) => return Err(error),
        }
    }
    Err(Error::NoRestoreSource(failures.join("; ")))
}

/// Restores the capture into `root` from the first source that serves it (see the module
/// docs); `journal` is the restore journal. Returns the report and the node that finished it.
pub(super) async fn restore(
    ctx: &JobContext,
    transfer: &v1::ReplaceTransfer,
    keys: &Keys,
    root: &Path,
    journal: &Path,
) -> Result<(packed::RestoreReport, String)> {
    let sink = WatchSink::new(ctx.progress.clone());
    let (machine_root, journal_path) = (root.to_path_buf(), journal.to_path_buf());
    let fleet = keys.fleet.clone();
    first_serving(ctx, transfer, keys, move |store, manifest| {
        let options = packed::RestoreOptions {
            journal: Some(journal_path.clone()),
            ..packed::RestoreOptions::default()
        };
        packed::restore(store, &machine_root, &fleet, manifest, &options, &sink)
    })
    .await
}

/// Releases the migration (restore side) on every source; a node that cannot be reached is
/// logged and skipped (its retention clock then never starts from this worker).
pub(super) async fn release_all(ctx: &JobContext, transfer: &v1::ReplaceTransfer) {
    let policy = giving_up_after(ctx.node_timings.release_give_up);
    for source in sources(transfer) {
        let released = match store_of(ctx, &source, policy) {
            Ok(store) => blocking(move || packed::ChunkStore::release(&store)).await,
            Err(error) => Err(error),
        };
        if let Err(error) = released {
            tracing::warn!(job_id = %ctx.job_id, node = %source.node_id, endpoint = %source.node_endpoint, %error, "cannot release the migration on this storage node; going on");
        }
    }
}
