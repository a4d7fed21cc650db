//! Running a refresh job: capture into a hard-link store, verify, reimage,
//! restore, verify, release the store — resuming from whatever phase the
//! controller says the job is in.
//!
//! Safety rules, each enforced right before the step it guards:
//! - the reimage hook runs only after the store verified again on this
//!   machine *and* the controller durably acknowledged `REIMAGING`, which it
//!   only accepts from a verified `CAPTURED`;
//! - the store is deleted only after the restore verified and the
//!   controller durably acknowledged `VERIFYING`.

use crate::agent::JobContext;
use crate::error::{Error, Result};
use crate::hook::ReimageHook;
use crate::telemetry::WatchSink;
use fleetmig_proto::v1::{self, JobPhase};
use fleetmig_state::RestoreOptions;
use std::path::PathBuf;

/// What the worker remembers of a finished restore, so a crash between
/// deleting the store and reporting `DONE` can still report it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RestoreRecord {
    files: u64,
    directories: u64,
    bytes: u64,
}

/// Runs `blocking` on the blocking pool (the state engine and the packed
/// pipeline are synchronous).
pub(crate) async fn blocking<T: Send + 'static>(
    blocking: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(blocking)
        .await
        .map_err(|err| Error::VerificationFailed {
            what: "worker task",
            details: format!("blocking task panicked: {err}"),
        })?
}

/// The first few mismatches, joined, with a count of the rest.
pub(crate) fn first_mismatches(mismatches: &[String]) -> String {
    let mut details = mismatches
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if mismatches.len() > 5 {
        details.push_str(&format!(" (and {} more)", mismatches.len() - 5));
    }
    details
}

/// Runs the refresh job of `ctx` from its current phase to the end.
pub async fn run(ctx: &JobContext, hook: &ReimageHook) -> Result<()> {
    let root = ctx.state.root().to_path_buf();
    let store = ctx.state.store_for(&ctx.job_id);
    let mut phase = ctx.phase;

    if phase == JobPhase::Assigned {
        phase = ctx.enter(JobPhase::Capturing).await?;
    }
    if phase == JobPhase::Capturing {
        capture(ctx, &root, &store).await?;
        phase = JobPhase::Captured;
    }
    if phase == JobPhase::Captured {
        if ctx.phase == JobPhase::Captured {
            // Resumed after a crash: the store sat here unattended, so check
            // it again before anything destructive.
            verify_store(ctx, &root, &store).await?;
        }
        phase = ctx.enter(JobPhase::Reimaging).await?;
    }
    if phase == JobPhase::Reimaging {
        if ctx.phase == JobPhase::Reimaging {
            // Resumed mid-reimage: the hook runs again, so the store it must
            // preserve is checked again first (originals may already be gone;
            // the store's own links must not be).
            verify_store(ctx, &root, &store).await?;
        }
        ctx.record("reimage.start", String::new()).await?;
        ctx.set_phase(JobPhase::Reimaging);
        hook.run(&root, &store).await?;
        ctx.record("reimage.done", String::new()).await?;
        phase = ctx.enter(JobPhase::Restoring).await?;
    }
    if phase == JobPhase::Restoring {
        ctx.set_phase(JobPhase::Restoring);
        let sink = WatchSink::new(ctx.progress.clone());
        let (store_dir, machine_root) = (store.clone(), root.clone());
        let report = blocking(move || {
            Ok(fleetmig_state::restore(
                &store_dir,
                &machine_root,
                &RestoreOptions::default(),
                &sink,
            )?)
        })
        .await?;
        tracing::info!(job_id = %ctx.job_id, files = report.files_linked + report.files_already_present, renamed = report.renamed.len(), "restore done");
        ctx.record(
            "restore.done",
            format!("{} files linked", report.files_linked),
        )
        .await?;
        phase = ctx.enter(JobPhase::Verifying).await?;
    }
    if phase == JobPhase::Verifying {
        ctx.set_phase(JobPhase::Verifying);
        let record = verify_and_release(ctx, &root, &store).await?;
        let summary = v1::RestoreSummary {
            files: record.files,
            directories: record.directories,
            bytes: record.bytes,
            mismatched_files: 0,
        };
        ctx.report(v1::PhaseReport {
            phase: JobPhase::Done.into(),
            restored: Some(summary),
            ..ctx.report_header()
        })
        .await?;
        return Ok(());
    }
    Err(Error::BadAssignment {
        job_id: ctx.job_id.clone(),
        reason: format!("cannot resume a refresh in phase {phase:?}"),
    })
}

async fn capture(ctx: &JobContext, root: &std::path::Path, store: &std::path::Path) -> Result<()> {
    ctx.set_phase(JobPhase::Capturing);
    ctx.record("capture.start", String::new()).await?;
    let (job_id, capture, faults) = (ctx.job_id.clone(), ctx.capture.clone(), ctx.faults.clone());
    let sink = WatchSink::new(ctx.progress.clone());
    let (machine_root, store_dir) = (root.to_path_buf(), store.to_path_buf());
    let report = blocking(move || {
        let mut options = JobContext::capture_options(&job_id, job_id.clone(), &capture, &faults)?;
        // A store left by an interrupted attempt holds only links of ours.
        options.overwrite = true;
        if let Some(parent) = store_dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        Ok(fleetmig_state::capture(
            &machine_root,
            &store_dir,
            &options,
            &sink,
        )?)
    })
    .await?;
    for (path, reason) in &report.skipped {
        tracing::warn!(job_id = %ctx.job_id, %path, %reason, "file skipped");
    }
    verify_store(ctx, root, store).await?;
    ctx.record("capture.verified", report.manifest_digest.clone())
        .await?;
    let summary = v1::CaptureSummary {
        users: report.users.len() as u32,
        files: report.files,
        directories: report.dirs,
        bytes: report.bytes,
        excluded_files: report.excluded_files,
        manifest_digest: report.manifest_digest.clone(),
        store_location: store.display().to_string(),
        replica_node_ids: Vec::new(),
    };
    ctx.report(v1::PhaseReport {
        phase: JobPhase::Captured.into(),
        captured: Some(summary),
        ..ctx.report_header()
    })
    .await?;
    Ok(())
}

async fn verify_store(
    ctx: &JobContext,
    root: &std::path::Path,
    store: &std::path::Path,
) -> Result<()> {
    let (machine_root, store_dir) = (root.to_path_buf(), store.to_path_buf());
    let verify =
        blocking(move || Ok(fleetmig_state::verify_store(&machine_root, &store_dir)?)).await?;
    if !verify.is_ok() {
        return Err(Error::VerificationFailed {
            what: "migration store",
            details: first_mismatches(&verify.mismatches),
        });
    }
    tracing::info!(job_id = %ctx.job_id, files = verify.files_checked, "migration store verified");
    Ok(())
}

/// Verifies the restore, then deletes the store; tolerant of a crash
/// between the two (the journal remembers the verified restore).
async fn verify_and_release(
    ctx: &JobContext,
    root: &std::path::Path,
    store: &std::path::Path,
) -> Result<RestoreRecord> {
    if !store.exists() {
        let recorded = ctx
            .state
            .journal()?
            .into_iter()
            .rev()
            .find(|entry| entry.job_id == ctx.job_id && entry.event == "store.deleted");
        return match recorded.and_then(|entry| serde_json::from_str(&entry.detail).ok()) {
            Some(record) => Ok(record),
            None => Err(Error::VerificationFailed {
                what: "restore",
                details: format!(
                    "store {} is gone but no verified restore was recorded",
                    store.display()
                ),
            }),
        };
    }
    let (machine_root, store_dir) = (root.to_path_buf(), store.to_path_buf());
    let (verify, record) = blocking(move || {
        let verify = fleetmig_state::verify_restore(&store_dir, &machine_root)?;
        let manifest = fleetmig_state::Manifest::load_sealed(&store_dir)?;
        let mut record = RestoreRecord {
            files: 0,
            directories: 0,
            bytes: 0,
        };
        for entry in &manifest.entries {
            match entry.kind {
                fleetmig_state::EntryKind::File => {
                    record.files += 1;
                    record.bytes += entry.size;
                }
                fleetmig_state::EntryKind::Dir => record.directories += 1,
                fleetmig_state::EntryKind::Symlink => {}
            }
        }
        Ok((verify, record))
    })
    .await?;
    if !verify.is_ok() {
        return Err(Error::VerificationFailed {
            what: "restore",
            details: first_mismatches(&verify.mismatches),
        });
    }
    let store_dir: PathBuf = store.to_path_buf();
    blocking(move || {
        fleetmig_state::delete_store(&store_dir)?;
        // Leave no empty StateStore folder behind on the new OS.
        if let Some(parent) = store_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    })
    .await?;
    ctx.record(
        "store.deleted",
        serde_json::to_string(&record).expect("record serializes"),
    )
    .await?;
    tracing::info!(job_id = %ctx.job_id, files = record.files, "restore verified; migration store released");
    Ok(record)
}
