//! Conversions between wire types and domain types. Untrusted input is
//! validated here, once.

use crate::error::{Error, Result};
use crate::lifecycle::Report;
use crate::model::{self, Phase, Scenario};
use crate::operations::{
    JobView, MachineView, RetryExclusion, StorageNodeView, UnderReplicatedView, WaveView,
};
use crate::plan::Problem;
use crate::registry::Progress;
use fleetmig_proto::v1;

/// Most profiles an inventory may list.
const MAX_PROFILES: usize = 10_000;
/// Longest free-text field accepted from a worker.
const MAX_TEXT: usize = 4096;
/// Most replica node ids a capture summary may name.
const MAX_REPLICA_IDS: usize = 16;

fn text(field: &str, value: String) -> Result<String> {
    if value.len() > MAX_TEXT {
        return Err(Error::InvalidArgument(format!(
            "{field} is {} bytes; the limit is {MAX_TEXT}",
            value.len()
        )));
    }
    Ok(value)
}

/// Domain phase of a wire phase.
pub fn phase_from_wire(phase: i32) -> Result<Phase> {
    let phase = v1::JobPhase::try_from(phase)
        .map_err(|_| Error::InvalidArgument(format!("unknown job phase {phase}")))?;
    Ok(match phase {
        v1::JobPhase::Unspecified => {
            return Err(Error::InvalidArgument("job phase is unspecified".into()));
        }
        v1::JobPhase::Pending => Phase::Pending,
        v1::JobPhase::Assigned => Phase::Assigned,
        v1::JobPhase::Capturing => Phase::Capturing,
        v1::JobPhase::Captured => Phase::Captured,
        v1::JobPhase::Reimaging => Phase::Reimaging,
        v1::JobPhase::Restoring => Phase::Restoring,
        v1::JobPhase::Verifying => Phase::Verifying,
        v1::JobPhase::Done => Phase::Done,
        v1::JobPhase::Failed => Phase::Failed,
        v1::JobPhase::Skipped => Phase::Skipped,
    })
}

/// Wire phase of a domain phase.
pub fn phase_to_wire(phase: Phase) -> v1::JobPhase {
    match phase {
        Phase::Pending => v1::JobPhase::Pending,
        Phase::Assigned => v1::JobPhase::Assigned,
        Phase::Capturing => v1::JobPhase::Capturing,
        Phase::Captured => v1::JobPhase::Captured,
        Phase::Reimaging => v1::JobPhase::Reimaging,
        Phase::Restoring => v1::JobPhase::Restoring,
        Phase::Verifying => v1::JobPhase::Verifying,
        Phase::Done => v1::JobPhase::Done,
        Phase::Failed => v1::JobPhase::Failed,
        Phase::Skipped => v1::JobPhase::Skipped,
    }
}

/// Wire scenario of a domain scenario.
pub fn scenario_to_wire(scenario: Scenario) -> v1::Scenario {
    match scenario {
        Scenario::Refresh => v1::Scenario::Refresh,
        Scenario::Replace => v1::Scenario::Replace,
    }
}

/// Validates and converts a worker's inventory.
pub fn inventory_from_wire(inventory: Option<v1::Inventory>) -> Result<model::Inventory> {
    let inventory =
        inventory.ok_or_else(|| Error::InvalidArgument("enrollment without inventory".into()))?;
    if inventory.profiles.len() > MAX_PROFILES {
        return Err(Error::InvalidArgument(format!(
            "inventory lists {} profiles; the limit is {MAX_PROFILES}",
            inventory.profiles.len()
        )));
    }
    let profiles = inventory
        .profiles
        .into_iter()
        .map(|p| {
            Ok(model::Profile {
                name: text("profile name", p.name)?,
                bytes: p.bytes,
                files: p.files,
                last_used_unix: p.last_used_unix,
            })
        })
        .collect::<Result<_>>()?;
    Ok(model::Inventory {
        hostname: text("hostname", inventory.hostname)?,
        os_family: text("os_family", inventory.os_family)?,
        os_version: text("os_version", inventory.os_version)?,
        volume_id: text("volume_id", inventory.volume_id)?,
        free_bytes: inventory.free_bytes,
        total_bytes: inventory.total_bytes,
        profiles,
        hardware_id: text("hardware_id", inventory.hardware_id)?,
        supports_hard_links: inventory.supports_hard_links,
        site: text("site", inventory.site)?,
        labels: inventory.labels.into_iter().collect(),
        agent_version: text("agent_version", inventory.agent_version)?,
    })
}

/// Wire inventory of a domain inventory.
pub fn inventory_to_wire(inventory: &model::Inventory) -> v1::Inventory {
    v1::Inventory {
        hostname: inventory.hostname.clone(),
        os_family: inventory.os_family.clone(),
        os_version: inventory.os_version.clone(),
        volume_id: inventory.volume_id.clone(),
        free_bytes: inventory.free_bytes,
        total_bytes: inventory.total_bytes,
        profiles: inventory
            .profiles
            .iter()
            .map(|p| v1::UserProfile {
                name: p.name.clone(),
                bytes: p.bytes,
                files: p.files,
                last_used_unix: p.last_used_unix,
            })
            .collect(),
        hardware_id: inventory.hardware_id.clone(),
        supports_hard_links: inventory.supports_hard_links,
        site: inventory.site.clone(),
        labels: inventory.labels.clone().into_iter().collect(),
        agent_version: inventory.agent_version.clone(),
    }
}

/// Converts a phase report into the domain report.
pub fn report_from_wire(report: &v1::PhaseReport) -> Result<Report> {
    let phase = phase_from_wire(report.phase)?;
    Ok(match phase {
        Phase::Captured => {
            let summary = report.captured.clone().ok_or_else(|| {
                Error::InvalidArgument("a CAPTURED report must carry its capture summary".into())
            })?;
            Report::Captured(model::CaptureSummary {
                users: summary.users,
                files: summary.files,
                directories: summary.directories,
                bytes: summary.bytes,
                excluded_files: summary.excluded_files,
                manifest_digest: text("manifest_digest", summary.manifest_digest)?,
                store_location: text("store_location", summary.store_location)?,
                replica_node_ids: replica_ids_from_wire(summary.replica_node_ids)?,
            })
        }
        Phase::Done => {
            let summary = report.restored.ok_or_else(|| {
                Error::InvalidArgument("a DONE report must carry its restore summary".into())
            })?;
            Report::Done(model::RestoreSummary {
                files: summary.files,
                directories: summary.directories,
                bytes: summary.bytes,
                mismatched_files: summary.mismatched_files,
            })
        }
        Phase::Failed => {
            let failure = report.failure.clone().ok_or_else(|| {
                Error::InvalidArgument("a FAILED report must carry its failure".into())
            })?;
            Report::Failed(model::Failure {
                phase: phase_from_wire(failure.phase)?,
                reason: text("failure reason", failure.reason)?,
                retryable: failure.retryable,
            })
        }
        Phase::Pending | Phase::Assigned | Phase::Skipped => {
            return Err(Error::InvalidArgument(format!(
                "workers cannot report phase {}",
                phase.name()
            )));
        }
        other => Report::Entered(other),
    })
}

/// The replica node ids of a capture summary: well-formed node ids, each
/// once (duplicates are dropped, the order kept).
fn replica_ids_from_wire(ids: Vec<String>) -> Result<Vec<String>> {
    if ids.len() > MAX_REPLICA_IDS {
        return Err(Error::InvalidArgument(format!(
            "a capture names {} replica nodes; at most {MAX_REPLICA_IDS}",
            ids.len()
        )));
    }
    let mut unique: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        if !crate::controller::is_valid_id(&id) {
            return Err(Error::InvalidArgument(format!(
                "replica node id {:?} is malformed",
                id.chars().take(80).collect::<String>()
            )));
        }
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    Ok(unique)
}

/// Live progress from a worker's update.
pub fn progress_from_wire(update: &v1::ProgressUpdate) -> Result<Progress> {
    Ok(Progress {
        files_done: update.files_done,
        files_total: update.files_total,
        bytes_done: update.bytes_done,
        bytes_total: update.bytes_total,
        current_user: text("current_user", update.current_user.clone())?,
    })
}

/// Rule files a plan request may attach at most.
pub const MAX_PLAN_ATTACHMENTS: usize = 64;

/// The rule files attached to a plan request, checked for count (each
/// file's size is checked with the plan, which names the file).
pub fn attachments_from_wire(
    attachments: std::collections::HashMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>> {
    if attachments.len() > MAX_PLAN_ATTACHMENTS {
        return Err(Error::InvalidArgument(format!(
            "the plan request attaches {} files; at most {MAX_PLAN_ATTACHMENTS} rule files may be attached",
            attachments.len()
        )));
    }
    Ok(attachments.into_iter().collect())
}

/// The assignment sent to a worker for `job`, whose wave captures with `rules`.
pub fn assignment_to_wire(
    job: &model::Job,
    rules: &[model::RuleFile],
    heartbeat_ms: u32,
) -> v1::Assignment {
    v1::Assignment {
        job_id: job.id.clone(),
        fence: job.fence,
        scenario: scenario_to_wire(job.scenario).into(),
        phase: phase_to_wire(job.phase).into(),
        attempt: job.attempt,
        wave: job.wave.clone(),
        heartbeat_interval_ms: heartbeat_ms,
        capture: Some(v1::CaptureOptions {
            user_include: job.capture_options.user_include.clone(),
            user_exclude: job.capture_options.user_exclude.clone(),
            continue_on_error: job.capture_options.continue_on_error,
            rules: rules
                .iter()
                .map(|file| v1::RuleFile {
                    name: file.name.clone(),
                    xml: file.xml.clone(),
                })
                .collect(),
        }),
        // Filled by the worker adapter, which holds the keys.
        replace: None,
    }
}

/// Wire summary of a wave.
pub fn wave_to_wire(view: &WaveView) -> v1::WaveSummary {
    let wave = &view.wave;
    v1::WaveSummary {
        name: wave.spec.name.clone(),
        plan: wave.plan.clone(),
        state: wave.state.name().into(),
        machines: wave.machines,
        max_in_flight: wave.spec.max_in_flight,
        phase_counts: view
            .phase_counts
            .iter()
            .map(|(k, v)| ((*k).to_string(), *v))
            .collect(),
        batch_index: wave.batch.index,
        batch_count: view.batch_count.unwrap_or(0),
        batch_promoted: wave.batch.promoted,
        batch_opened_unix_ms: wave.batch.opened_ms,
        halt_reason: wave.halt_reason.clone().unwrap_or_default(),
        budget_tolerated: view.budget_tolerated,
        budget_used: view.budget_used,
        paused_ms: view.paused_ms,
        retry_of: wave.retry_of.clone().unwrap_or_default(),
        started_unix_ms: wave.started_ms.unwrap_or_default(),
        finished_unix_ms: wave.finished_ms.unwrap_or_default(),
    }
}

/// Wire form of a machine `retry-failed` left out.
pub fn exclusion_to_wire(exclusion: &RetryExclusion) -> v1::RetryExclusion {
    v1::RetryExclusion {
        machine_id: exclusion.machine_id.clone(),
        hostname: exclusion.hostname.clone(),
        reason: exclusion.reason.clone(),
    }
}

/// Wire status of a storage node.
pub fn node_to_wire(view: &StorageNodeView) -> v1::StorageNodeStatus {
    let capacity = view.capacity.clone().unwrap_or_default();
    v1::StorageNodeStatus {
        node_id: view.node.id.clone(),
        endpoint: view.node.endpoint.clone(),
        site: view.node.site.clone(),
        registered_unix_ms: view.node.registered_ms,
        reported: view.capacity.is_some(),
        total_bytes: capacity.total_bytes,
        free_bytes: capacity.free_bytes,
        reserved_bytes: capacity.reserved_bytes,
        available_bytes: capacity.available_bytes,
        stored_bytes: capacity.stored_bytes,
        active_sessions: capacity.active_sessions,
        accepting_captures: capacity.accepting_captures,
        migrations: capacity.migrations,
        reported_unix_ms: capacity.reported_ms,
        report_age_ms: view.report_age_ms.unwrap_or(0),
        placed_jobs: view.placed_jobs,
        live: view.live,
    }
}

/// Wire form of an under-replicated migration.
pub fn under_replicated_to_wire(view: &UnderReplicatedView) -> v1::UnderReplicated {
    v1::UnderReplicated {
        migration_id: view.migration_id.clone(),
        wave: view.wave.clone(),
        wanted: view.wanted,
        holders: view.holders.clone(),
        live_holders: view.live_holders.clone(),
    }
}

/// Wire status of a job.
pub fn job_to_wire(view: &JobView) -> v1::JobStatus {
    let job = &view.job;
    v1::JobStatus {
        job_id: job.id.clone(),
        wave: job.wave.clone(),
        machine_id: job.machine_id.clone(),
        hostname: view.hostname.clone(),
        scenario: scenario_to_wire(job.scenario).into(),
        phase: phase_to_wire(job.phase).into(),
        attempt: job.attempt,
        captured: job.captured.as_ref().map(|c| v1::CaptureSummary {
            users: c.users,
            files: c.files,
            directories: c.directories,
            bytes: c.bytes,
            excluded_files: c.excluded_files,
            manifest_digest: c.manifest_digest.clone(),
            store_location: c.store_location.clone(),
            replica_node_ids: c.replica_node_ids.clone(),
        }),
        restored: job.restored.as_ref().map(|r| v1::RestoreSummary {
            files: r.files,
            directories: r.directories,
            bytes: r.bytes,
            mismatched_files: r.mismatched_files,
        }),
        failure: job.failure.as_ref().map(|f| v1::Failure {
            phase: phase_to_wire(f.phase).into(),
            reason: f.reason.clone(),
            retryable: f.retryable,
        }),
        created_unix_ms: job.created_ms,
        started_unix_ms: job.started_ms.unwrap_or_default(),
        finished_unix_ms: job.finished_ms.unwrap_or_default(),
        progress: view.progress.as_ref().map(|p| v1::ProgressSnapshot {
            files_done: p.files_done,
            files_total: p.files_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            current_user: p.current_user.clone(),
        }),
        destination_hostname: job
            .destination
            .as_ref()
            .map(|d| d.hostname.clone())
            .unwrap_or_default(),
        storage_node: job
            .placement
            .as_ref()
            .map(|p| p.node_id.clone())
            .unwrap_or_default(),
        waiting: view.waiting.clone().unwrap_or_default(),
        skip_reason: job.skip_reason.clone().unwrap_or_default(),
        batch: job.batch,
        phase_since_unix_ms: job.phase_since_ms,
        not_before_unix_ms: job.not_before_ms.unwrap_or_default(),
    }
}

/// Wire status of a machine.
pub fn machine_to_wire(view: &MachineView) -> v1::MachineStatus {
    v1::MachineStatus {
        machine_id: view.machine.id.clone(),
        inventory: Some(inventory_to_wire(&view.machine.inventory)),
        enrolled_unix_ms: view.machine.enrolled_ms,
        last_seen_unix_ms: view.last_seen_ms,
        job_id: view.job.as_ref().map(|j| j.id.clone()).unwrap_or_default(),
        job_phase: view
            .job
            .as_ref()
            .map_or(v1::JobPhase::Unspecified, |j| phase_to_wire(j.phase))
            .into(),
    }
}

/// Wire form of a plan problem.
pub fn problem_to_wire(problem: &Problem) -> v1::PlanProblem {
    v1::PlanProblem {
        message: problem.message.clone(),
        line: problem.line,
        column: problem.column,
    }
}

/// Wire form of an audit event.
pub fn event_to_wire(event: &model::AuditEvent) -> v1::Event {
    v1::Event {
        seq: event.seq,
        unix_ms: event.unix_ms,
        actor: event.actor.clone(),
        kind: event.kind.clone(),
        wave: event.wave.clone(),
        job_id: event.job_id.clone(),
        machine_id: event.machine_id.clone(),
        detail: event.detail.clone(),
    }
}
