//! One scheduling pass's reading half: facts from the registry, a
//! [`decide`] per wave, and the decisions turned into owned work (new job
//! and wave records with their audit events) to write afterwards. Runs
//! under the registry lock, without awaiting.

use crate::controller::job_event;
use crate::liveness::Liveness;
use crate::model::{AuditEvent, Failure, Job, Phase, Scenario, Wave, WaveState};
use crate::policy::facts::estimate_duration_ms;
use crate::policy::{
    BatchStats, Decision, FailureFacts, JobFacts, Load, WaveFacts, WaveJobs, decide,
};
use crate::registry::{Registry, Versioned};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// What a pass does to one wave, owned so the registry lock can be released.
#[derive(Debug)]
pub(super) struct WaveWork {
    /// The wave as read (its revision guards every admission).
    pub wave: Versioned<Wave>,
    /// A new wave record (halt, completion, batch) and its event.
    pub next_wave: Option<(Wave, AuditEvent)>,
    /// Job records to write (deadline failures, retries, skips), each
    /// compared against the revision it was decided on.
    pub writes: Vec<(Job, u64, AuditEvent)>,
    /// Events with no record to write (a reimage past its deadline), by job.
    pub notes: Vec<(String, String, AuditEvent)>,
    /// Pending jobs to admit, with the batch set, in order.
    pub admit: Vec<(Job, u64)>,
    /// The wave's cap of jobs per storage node.
    pub node_cap: Option<u32>,
}

/// The facts of one job.
fn job_facts<'r>(
    registry: &'r Registry,
    liveness: &Liveness,
    wave: &Wave,
    job: &'r Job,
) -> JobFacts<'r> {
    let inventory = registry
        .machines
        .get(&job.machine_id)
        .map(|m| &m.value.inventory);
    let in_flight = job.phase.is_in_flight();
    let policy = &wave.spec.policy;
    let estimated_ms = if job.phase == Phase::Pending && !policy.windows.is_empty() {
        let bytes = inventory.map_or(0, |i| i.profiles.iter().map(|p| p.bytes).sum());
        estimate_duration_ms(policy, bytes)
    } else {
        0
    };
    JobFacts {
        id: &job.id,
        site: inventory.map_or("", |i| i.site.as_str()),
        labels: inventory.map_or(&NO_LABELS, |i| &i.labels),
        phase: job.phase,
        attempt: job.attempt,
        failure: job.failure.as_ref().map(|f| FailureFacts {
            phase: f.phase,
            retryable: f.retryable,
        }),
        lost: in_flight
            && !job.session.is_empty()
            && job.owner().is_some_and(|owner| liveness.is_lost(owner)),
        superseded: job.phase == Phase::Failed
            && registry
                .latest_job(&job.machine_id)
                .is_some_and(|latest| latest.value.id != job.id),
        picked_up: !job.session.is_empty(),
        replace: job.scenario == Scenario::Replace,
        node: job.placement.as_ref().map(|p| p.node_id.as_str()),
        batch: job.batch,
        phase_since_ms: job.phase_since_ms,
        not_before_ms: job.not_before_ms,
        estimated_ms,
    }
}

fn wave_facts<'r>(registry: &'r Registry, wave: &'r Wave) -> WaveFacts<'r> {
    WaveFacts {
        name: &wave.spec.name,
        plan: &wave.plan,
        policy: &wave.spec.policy,
        plan_policy: registry.plans.get(&wave.plan).map(|p| &p.value.policy),
        state: wave.state,
        max_in_flight: wave.spec.max_in_flight,
        batch: &wave.batch,
        paused: &wave.paused,
        total_jobs: registry
            .wave_jobs
            .get(&wave.spec.name)
            .map_or(0, |ids| ids.len() as u32),
    }
}

/// The outcome of `batch` in `wave`, from every job it admitted.
fn batch_stats(registry: &Registry, wave: &str, batch: u32) -> BatchStats {
    let mut stats = BatchStats::default();
    for job in registry.jobs_of_wave(wave).map(|j| &j.value) {
        if job.batch != Some(batch) {
            continue;
        }
        stats.jobs += 1;
        stats.done += u32::from(job.phase == Phase::Done);
        if job.phase.is_terminal()
            && let Some(finished) = job.finished_ms
        {
            stats.last_finished_ms =
                Some(stats.last_finished_ms.map_or(finished, |l| l.max(finished)));
        }
    }
    stats
}

/// The pass's decisions: every wave's work, the load after them, and how
/// long each decision took.
pub(super) struct Pass {
    pub work: Vec<WaveWork>,
    pub load: Load,
    pub decisions: Vec<Duration>,
}

/// Reads the registry, decides every scheduled wave, records why pending
/// jobs wait, and returns the work to write.
///
/// It reads each wave's active jobs (in flight, failed, pending retries)
/// and only as much of its queue as the decision admits, so a pass costs
/// the jobs in flight plus the jobs it looks at, not the fleet.
pub(super) fn plan_pass(registry: &mut Registry, liveness: &Liveness, now: i64) -> Pass {
    let mut load = Load::default();
    let mut decisions = Vec::new();
    let mut work = Vec::new();
    let mut waiting: Vec<WaveReasons> = Vec::new();
    {
        let registry = &*registry;
        let mut gathered = Vec::new();
        for wave in registry.waves.values() {
            if wave.value.state == WaveState::Created {
                continue;
            }
            let facts = wave_facts(registry, &wave.value);
            load.add_wave(facts.plan, facts.total_jobs);
            let scheduled = matches!(
                wave.value.state,
                WaveState::Running | WaveState::Paused | WaveState::Halted | WaveState::Aborted
            );
            let mut jobs = Vec::new();
            for job in registry.active_jobs_of_wave(&wave.value.spec.name) {
                let job = job_facts(registry, liveness, &wave.value, &job.value);
                load.add_job(&facts, &job);
                if scheduled {
                    jobs.push(job);
                }
            }
            if scheduled {
                gathered.push((wave, jobs));
            }
        }
        for (wave, active) in gathered {
            let facts = wave_facts(registry, &wave.value);
            let name = wave.value.spec.name.as_str();
            let stats = |batch| batch_stats(registry, name, batch);
            let mut queued = registry
                .queued_jobs_of_wave(name)
                .map(|job| job_facts(registry, liveness, &wave.value, &job.value));
            let jobs = WaveJobs {
                active: &active,
                queued: &mut queued,
                queued_count: registry.queued_count(name),
            };
            let started = Instant::now();
            let decision = decide(&facts, jobs, &stats, &mut load, now);
            decisions.push(started.elapsed());
            waiting.push(WaveReasons {
                wave: name.to_string(),
                jobs: decision
                    .waiting
                    .iter()
                    .map(|(id, reason)| (id.to_string(), reason.clone()))
                    .collect(),
                admitted: decision.admit.iter().map(|a| a.id.to_string()).collect(),
                wave_reason: decision.wave_waiting.clone(),
            });
            work.push(into_work(registry, wave, decision, now));
        }
    }
    // A flag is recorded once, until the job moves on (which clears it).
    for wave in &mut work {
        wave.notes.retain(|(job_id, reason, _)| {
            let new = registry.waiting.get(job_id) != Some(reason);
            if new {
                registry.waiting.insert(job_id.clone(), reason.clone());
            }
            new
        });
    }
    for reasons in waiting {
        record_reasons(registry, reasons);
    }
    Pass {
        work,
        load,
        decisions,
    }
}

/// Why a wave's pending jobs wait, as one pass decided.
struct WaveReasons {
    wave: String,
    /// Jobs looked at and held back, with why.
    jobs: Vec<(String, String)>,
    /// Jobs admitted (a storage wait of theirs may still hold).
    admitted: HashSet<String>,
    /// The wave-wide reason for the jobs not looked at.
    wave_reason: Option<String>,
}

/// Records a pass's reasons and takes back those of the previous pass
/// that no longer hold (the job was not looked at this time: the
/// wave-wide reason applies to it now).
fn record_reasons(registry: &mut Registry, reasons: WaveReasons) {
    let WaveReasons {
        wave,
        jobs,
        admitted,
        wave_reason,
    } = reasons;
    let mut kept: HashSet<String> = HashSet::with_capacity(jobs.len());
    for (job_id, reason) in jobs {
        if registry.waiting.get(&job_id) != Some(&reason) {
            registry.waiting.insert(job_id.clone(), reason);
        }
        kept.insert(job_id);
    }
    if let Some(before) = registry.waiting_by_wave.remove(&wave) {
        for job_id in before {
            if kept.contains(&job_id) {
                continue;
            }
            if admitted.contains(&job_id) {
                // Its storage wait stays until it is placed.
                kept.insert(job_id);
            } else {
                registry.waiting.remove(&job_id);
            }
        }
    }
    if !kept.is_empty() {
        registry.waiting_by_wave.insert(wave.clone(), kept);
    }
    match wave_reason {
        Some(reason) => {
            registry.wave_waiting.insert(wave, reason);
        }
        None => {
            registry.wave_waiting.remove(&wave);
        }
    }
}

fn wave_event(wave: &Wave, kind: &str, detail: String, now: i64) -> AuditEvent {
    AuditEvent {
        seq: 0,
        unix_ms: now,
        actor: "controller".into(),
        kind: kind.into(),
        wave: wave.spec.name.clone(),
        job_id: String::new(),
        machine_id: String::new(),
        detail,
    }
}

/// Turns a decision into records to write.
fn into_work(
    registry: &Registry,
    wave: &Versioned<Wave>,
    decision: Decision<'_>,
    now: i64,
) -> WaveWork {
    let job = |id: &str| registry.jobs.get(id).cloned();
    let mut next_wave = None;
    if let Some(reason) = decision.halt {
        let mut next = wave.value.clone();
        next.state = WaveState::Halted;
        next.halt_reason = Some(reason.clone());
        // A paused wave that halts is no longer paused: close the pause so
        // its deadlines run again (they resume when the wave does).
        if let Some(since) = next.paused.since_ms.take() {
            let span = now.saturating_sub(since).max(0) as u64;
            next.paused.total_ms = next.paused.total_ms.saturating_add(span);
        }
        let event = wave_event(&next, "wave.halted", reason, now);
        next_wave = Some((next, event));
    } else if decision.complete {
        let mut next = wave.value.clone();
        next.state = WaveState::Completed;
        next.finished_ms = Some(now);
        let counts = registry.phase_counts(&next.spec.name);
        let detail = counts
            .iter()
            .map(|(phase, n)| format!("{n} {phase}"))
            .collect::<Vec<_>>()
            .join(", ");
        let event = wave_event(&next, "wave.completed", detail, now);
        next_wave = Some((next, event));
    } else if let Some(change) = decision.batch {
        let mut next = wave.value.clone();
        next.batch = change.progress;
        let event = wave_event(&next, "wave.batch", change.reason, now);
        next_wave = Some((next, event));
    }

    let mut writes = Vec::new();
    let mut notes = Vec::new();
    for expiry in decision.expire {
        let Some(current) = job(expiry.id) else {
            continue;
        };
        if !expiry.fail {
            let event = job_event(
                &current.value,
                "controller",
                "job.deadline",
                expiry.reason.clone(),
            );
            notes.push((current.value.id.clone(), expiry.reason, event));
            continue;
        }
        let mut next = current.value.clone();
        next.phase = Phase::Failed;
        next.failure = Some(Failure {
            phase: expiry.phase,
            reason: expiry.reason.clone(),
            retryable: true,
        });
        if expiry.count_attempt {
            next.attempt += 1;
        }
        next.finished_ms = Some(now);
        next.phase_since_ms = now;
        let detail = format!(
            "{} -> failed: {} (retryable)",
            expiry.phase.name(),
            expiry.reason
        );
        let event = job_event(&next, "controller", "job.deadline", detail);
        writes.push((next, current.revision, event));
    }
    for retry in decision.retry {
        let Some(current) = job(retry.id) else {
            continue;
        };
        let mut next = current.value.clone();
        next.phase = Phase::Pending;
        next.not_before_ms = Some(retry.not_before_ms);
        next.phase_since_ms = now;
        // A fresh start: the old session and fence are void, the capture
        // (if any) and the storage reservation are made again.
        next.session.clear();
        next.fence = 0;
        next.failure = None;
        next.captured = None;
        next.restored = None;
        next.placement = None;
        next.started_ms = None;
        next.finished_ms = None;
        let event = job_event(&next, "controller", "job.retry", retry.reason);
        writes.push((next, current.revision, event));
    }
    for skip in decision.skip {
        let Some(current) = job(skip.id) else {
            continue;
        };
        let mut next = current.value.clone();
        next.phase = Phase::Skipped;
        next.skip_reason = Some(skip.reason.clone());
        next.finished_ms = Some(now);
        next.phase_since_ms = now;
        let detail = format!("{} -> skipped: {}", current.value.phase.name(), skip.reason);
        let event = job_event(&next, "controller", "job.phase", detail);
        writes.push((next, current.revision, event));
    }
    let admit = decision
        .admit
        .iter()
        .filter_map(|admission| {
            let current = job(admission.id)?;
            let mut next = current.value;
            next.batch = Some(admission.batch);
            Some((next, current.revision))
        })
        .collect();
    WaveWork {
        wave: wave.clone(),
        next_wave,
        writes,
        notes,
        admit,
        node_cap: wave.value.spec.policy.caps.per_storage_node,
    }
}
