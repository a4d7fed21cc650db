//! The scheduler's decisions for one wave, as a pure function of facts:
//! no I/O, no locks, no clock but the `now_ms` it is given.
//!
//! Every safety rule of wave policies lives here, in one place:
//! - a wave never has more than `max_in_flight` jobs in flight, nor more
//!   than its current batch allows in all; nested caps per site and
//!   controller-wide hold across waves (per storage node: the scheduler
//!   excludes full nodes when it places, see [`Load::node`]);
//! - an error budget tolerating `T` failures halts the wave once failures
//!   exceed `T`, and admission keeps `failed + in_flight <= T + 1`, so even
//!   if every job in flight fails the wave stops at `T + 1`: no overshoot.
//!   Unreachable machines count as failures. The plan's budget likewise;
//! - a job starts only when a governing maintenance window fits its
//!   estimated duration;
//! - a job past its phase's deadline (paused time left out) fails
//!   retryably, except while reimaging, where it is only flagged;
//! - a retryable failure before anything was sealed goes back to pending
//!   after a backoff while attempts remain (also in a halted wave, where it
//!   then waits); such a failure never counts against a budget, whatever
//!   the wave's state, so a halt cannot turn it into an overshoot;
//! - the next batch opens only when the current one is over and met its
//!   success criteria and bake time (or an operator promoted it).
//!
//! Counts come from the jobs' phases as persisted, so a restarted
//! controller decides exactly as the one before it.

use super::facts::{
    BatchStats, FailureFacts, JobFacts, Load, WaveFacts, counts_as_failure, will_retry,
};
use super::spec::Advance;
use super::window::{Verdict, Windows, human_duration, local_time};
use crate::model::{BatchProgress, Phase, WaveState};
use std::collections::HashMap;

/// A job past its phase's deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry<'a> {
    /// The job.
    pub id: &'a str,
    /// The phase it overstayed.
    pub phase: Phase,
    /// Fail it (retryably); `false` for a reimaging job, which is only flagged.
    pub fail: bool,
    /// Nobody picked it up: count the lost attempt (so retries end).
    pub count_attempt: bool,
    /// What happened, for the failure and the audit log.
    pub reason: String,
}

/// A failed job going back to pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry<'a> {
    /// The job.
    pub id: &'a str,
    /// Not admitted again before this.
    pub not_before_ms: i64,
    /// For the audit log.
    pub reason: String,
}

/// A pending job that will never run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip<'a> {
    /// The job.
    pub id: &'a str,
    /// Why (kept on the job).
    pub reason: String,
}

/// A pending job to move to `Assigned`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission<'a> {
    /// The job.
    pub id: &'a str,
    /// The batch it counts in (a retried job keeps its first batch).
    pub batch: u32,
}

/// The wave's batch moved on (or a promotion was used up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchChange {
    /// The wave's new batch progress.
    pub progress: BatchProgress,
    /// For the audit log.
    pub reason: String,
}

/// Everything [`decide`] wants done for one wave, to apply in this order:
/// wave record (`halt`, `complete`, `batch`), then `expire`, `retry`,
/// `skip`, then `admit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision<'a> {
    /// Jobs past their deadline.
    pub expire: Vec<Expiry<'a>>,
    /// Failed jobs to retry.
    pub retry: Vec<Retry<'a>>,
    /// Pending jobs that will never run (their wave was aborted).
    pub skip: Vec<Skip<'a>>,
    /// Halt the wave, for this reason.
    pub halt: Option<String>,
    /// Every job is over: complete the wave.
    pub complete: bool,
    /// New batch progress.
    pub batch: Option<BatchChange>,
    /// Jobs to admit, in order.
    pub admit: Vec<Admission<'a>>,
    /// Why pending jobs that were looked at cannot start yet.
    pub waiting: Vec<(&'a str, String)>,
    /// Why the wave's other pending jobs wait (a wave-wide limit).
    pub wave_waiting: Option<String>,
}

/// Jobs up to this long are fitted into windows compiled once per pass.
const WINDOW_HORIZON_MS: u64 = 24 * 3600 * 1000;

/// A budget's arithmetic, for the halt reason.
fn budget_reason(scope: &str, failed: u32, lost: u32, tolerated: u32) -> String {
    let detail = if lost > 0 {
        format!(" ({failed} failed, {lost} unreachable)")
    } else {
        String::new()
    };
    format!(
        "{scope} error budget exhausted: {} failures{detail}, {tolerated} tolerated",
        failed + lost
    )
}

/// A wave's jobs as [`decide`] reads them.
pub struct WaveJobs<'a, 'i> {
    /// The wave's jobs except the queued ones, in admission order: in
    /// flight, failed, pending again for a retry (done and skipped ones may
    /// be left out).
    pub active: &'i [JobFacts<'a>],
    /// The queued jobs (pending, never admitted; see [`is_queued`]) in
    /// admission order. Read lazily, only as far as admissions go (all of it
    /// for an aborted wave), so a pass costs what it admits, not the wave's size.
    pub queued: &'i mut dyn Iterator<Item = JobFacts<'a>>,
    /// How many jobs `queued` yields.
    pub queued_count: u32,
}

/// Whether `job` is queued: pending and never admitted.
pub fn is_queued(job: &JobFacts<'_>) -> bool {
    job.phase == Phase::Pending && job.batch.is_none()
}

/// [`decide`] over a plain list of the wave's jobs, in admission order
/// (done and skipped ones may be left out).
pub fn decide_list<'a>(
    wave: &WaveFacts<'_>,
    jobs: &[JobFacts<'a>],
    batch_stats: &dyn Fn(u32) -> BatchStats,
    load: &mut Load,
    now_ms: i64,
) -> Decision<'a> {
    let active: Vec<JobFacts<'a>> = jobs.iter().filter(|j| !is_queued(j)).copied().collect();
    let mut queued = jobs.iter().filter(|j| is_queued(j)).copied();
    let queued_count = (jobs.len() - active.len()) as u32;
    let jobs = WaveJobs {
        active: &active,
        queued: &mut queued,
        queued_count,
    };
    decide(wave, jobs, batch_stats, load, now_ms)
}

/// Decides what to do with `wave` at `now_ms`.
///
/// `batch_stats` returns a batch's outcome and is called only when the
/// success criteria need it (at most once); `load` holds every wave's
/// in-flight jobs and each plan's failures, this wave's included, and is
/// updated with what is decided (so the next wave of the pass sees it).
/// Unplaced replace jobs are admitted subject to the scheduler finding a
/// storage node below its cap ([`Load::node`]).
pub fn decide<'a>(
    wave: &WaveFacts<'_>,
    jobs: WaveJobs<'a, '_>,
    batch_stats: &dyn Fn(u32) -> BatchStats,
    load: &mut Load,
    now_ms: i64,
) -> Decision<'a> {
    let mut decision = Decision::default();
    if !matches!(
        wave.state,
        WaveState::Running | WaveState::Paused | WaveState::Halted | WaveState::Aborted
    ) {
        return decision;
    }
    let WaveJobs {
        active,
        queued,
        queued_count,
    } = jobs;
    let mut view: Vec<JobFacts<'a>> = active.to_vec();
    let mut fresh = vec![false; view.len()];
    expire_deadlines(wave, &mut view, &mut fresh, load, now_ms, &mut decision);
    if wave.state == WaveState::Aborted {
        let pending = view.iter().copied().filter(|j| j.phase == Phase::Pending);
        for job in pending.chain(queued) {
            decision.skip.push(Skip {
                id: job.id,
                reason: "wave aborted before the job started".into(),
            });
        }
        return decision;
    }
    retry_failures(wave, &mut view, &mut fresh, now_ms, &mut decision);
    if wave.state == WaveState::Halted {
        decision.wave_waiting = Some("wave halted".into());
        return decision;
    }

    let mut counts = Counts::of(wave, &view);
    counts.unadmitted += queued_count;
    if let Some(reason) = halt_reason(wave, &counts, load) {
        decision.halt = Some(reason);
        return decision;
    }
    let unfinished = queued_count > 0
        || view
            .iter()
            .any(|j| !j.phase.is_terminal() || will_retry(wave, j));
    if !unfinished {
        decision.complete = true;
        return decision;
    }
    if wave.state == WaveState::Paused {
        decision.wave_waiting = Some("wave paused".into());
        return decision;
    }
    let index = advance_batch(
        wave,
        &view,
        &fresh,
        &counts,
        batch_stats,
        now_ms,
        &mut decision,
    );
    let readmits = view
        .iter()
        .zip(&fresh)
        .filter(|(job, fresh)| job.phase == Phase::Pending && !**fresh)
        .map(|(job, _)| *job);
    // Retried jobs (already counted in their batch) first, then the queue.
    admit(
        wave,
        &mut readmits.chain(queued),
        &counts,
        index,
        load,
        now_ms,
        &mut decision,
    );
    decision
}

/// Fails (or flags) in-flight jobs past their phase's deadline. Nothing
/// expires while the wave is paused; time paused before does not count.
fn expire_deadlines<'a>(
    wave: &WaveFacts<'_>,
    view: &mut [JobFacts<'a>],
    fresh: &mut [bool],
    load: &mut Load,
    now: i64,
    decision: &mut Decision<'a>,
) {
    if wave.state == WaveState::Paused {
        return;
    }
    // Closed pauses only: a pause left open on a wave no longer paused
    // (halted or aborted meanwhile) would otherwise freeze its deadlines
    // for good.
    let paused_ms = wave.paused.total_ms;
    let deadlines = &wave.policy.deadlines;
    for (job, fresh) in view.iter_mut().zip(fresh.iter_mut()) {
        if !job.phase.is_in_flight() {
            continue;
        }
        let Some(limit) = deadlines.for_phase(job.phase, job.replace) else {
            continue;
        };
        let raw = now.saturating_sub(job.phase_since_ms).max(0) as u64;
        // Pauses during the phase do not count. The clock keeps only the
        // total, so every pause that may overlap the phase is left out:
        // a deadline may fire late, never early.
        let elapsed = raw - paused_ms.min(raw);
        if elapsed <= limit {
            continue;
        }
        if job.phase == Phase::Reimaging {
            // Stable wording: the scheduler records the flag once.
            decision.expire.push(Expiry {
                id: job.id,
                phase: job.phase,
                fail: false,
                count_attempt: false,
                reason: format!(
                    "reimaging past its {} deadline; never failed mid-reimage, \
                     the job waits for the machine",
                    human_duration(limit)
                ),
            });
            continue;
        }
        let spent = format!(
            "{} for {} (deadline {})",
            job.phase.name(),
            human_duration(elapsed),
            human_duration(limit)
        );
        decision.expire.push(Expiry {
            id: job.id,
            phase: job.phase,
            fail: true,
            count_attempt: !job.picked_up,
            reason: format!("deadline passed: {spent}"),
        });
        load.leave_flight(wave.plan, job.site, job.node, job.lost);
        job.failure = Some(FailureFacts {
            phase: job.phase,
            retryable: true,
        });
        job.phase = Phase::Failed;
        job.lost = false;
        if !job.picked_up {
            job.attempt += 1;
        }
        *fresh = true;
        if counts_as_failure(wave, job) {
            load.plan_mut(wave.plan).failed += 1;
        }
    }
}

/// Sends retryable failures back to pending with a backoff. A job that
/// failed in this very pass (its deadline) is retried on the next one,
/// after its failure is on record.
fn retry_failures<'a>(
    wave: &WaveFacts<'_>,
    view: &mut [JobFacts<'a>],
    fresh: &mut [bool],
    now: i64,
    decision: &mut Decision<'a>,
) {
    let retries = &wave.policy.retries;
    for (job, fresh) in view.iter_mut().zip(fresh.iter_mut()) {
        if *fresh || !will_retry(wave, job) {
            continue;
        }
        let backoff = retries.backoff_after(job.attempt.max(1));
        let not_before = now.saturating_add(backoff.min(i64::MAX as u64) as i64);
        let phase = job.failure.map_or(Phase::Failed, |f| f.phase);
        decision.retry.push(Retry {
            id: job.id,
            not_before_ms: not_before,
            reason: format!(
                "retryable failure in {}: attempt {} of {} after {}",
                phase.name(),
                job.attempt + 1,
                retries.max_attempts,
                human_duration(backoff)
            ),
        });
        job.phase = Phase::Pending;
        job.not_before_ms = Some(not_before);
        job.failure = None;
        // Not admitted in the pass that retries it: the retry is written first.
        *fresh = true;
    }
}

/// The wave's own counts, after this pass's expiries and retries.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    failed: u32,
    lost: u32,
    in_flight: u32,
    /// Pending jobs never admitted.
    unadmitted: u32,
}

impl Counts {
    fn of(wave: &WaveFacts<'_>, view: &[JobFacts<'_>]) -> Counts {
        let mut counts = Counts::default();
        for job in view {
            if job.phase.is_in_flight() {
                counts.in_flight += 1;
                counts.lost += u32::from(job.lost);
            } else if job.phase == Phase::Pending {
                counts.unadmitted += u32::from(job.batch.is_none());
            } else if counts_as_failure(wave, job) {
                counts.failed += 1;
            }
        }
        counts
    }
}

/// Why the wave must halt now, if it must: its own budget or its plan's.
fn halt_reason(wave: &WaveFacts<'_>, counts: &Counts, load: &Load) -> Option<String> {
    if let Some(budget) = wave.policy.error_budget {
        let tolerated = budget.tolerated(wave.total_jobs);
        if counts.failed + counts.lost > tolerated {
            return Some(budget_reason("wave", counts.failed, counts.lost, tolerated));
        }
    }
    let plan_budget = wave.plan_policy.and_then(|p| p.error_budget)?;
    let plan = load.plan(wave.plan);
    let tolerated = plan_budget.tolerated(plan.jobs);
    (plan.failures() > tolerated).then(|| {
        budget_reason(
            &format!("plan {}", wave.plan),
            plan.failed,
            plan.lost,
            tolerated,
        )
    })
}

/// Opens the next batch when the current one allows it; returns the
/// batch index in force for admissions.
fn advance_batch(
    wave: &WaveFacts<'_>,
    view: &[JobFacts<'_>],
    fresh: &[bool],
    counts: &Counts,
    batch_stats: &dyn Fn(u32) -> BatchStats,
    now: i64,
    decision: &mut Decision<'_>,
) -> u32 {
    let batches = &wave.policy.batches;
    let total = wave.total_jobs;
    let current = wave.batch.index;
    let quota = batches.admitted_through(current, total);
    let consumed = total.saturating_sub(counts.unadmitted);
    let has_next = quota < total && counts.unadmitted > 0;
    let shown = current + 1;
    let open = |reason: String, decision: &mut Decision<'_>| {
        decision.batch = Some(BatchChange {
            progress: BatchProgress {
                index: current + 1,
                opened_ms: now,
                promoted: false,
            },
            reason,
        });
        current + 1
    };
    if wave.batch.promoted {
        if has_next {
            return open(
                format!("batch {} opened: batch {shown} was promoted", shown + 1),
                decision,
            );
        }
        decision.batch = Some(BatchChange {
            progress: BatchProgress {
                promoted: false,
                ..wave.batch.clone()
            },
            reason: format!("batch {shown} is the last; the promotion has nothing to open"),
        });
        return current;
    }
    if !has_next {
        return current;
    }
    let batch_over = consumed >= quota
        && !view
            .iter()
            .any(|j| j.batch == Some(current) && (!j.phase.is_terminal() || will_retry(wave, j)));
    if !batch_over {
        return current;
    }
    let success = &wave.policy.success;
    if success.advance == Advance::Manual {
        decision.wave_waiting = Some(format!(
            "batch {shown} is over; batch {} waits for `fleetmig wave promote {}`",
            shown + 1,
            wave.name
        ));
        return current;
    }
    let needs_stats = success.min_success_percent > 0 || success.bake_ms > 0;
    let mut stats = if needs_stats {
        batch_stats(current)
    } else {
        BatchStats::default()
    };
    // A job of the batch failed by its deadline in this pass finished now.
    let failed_now = view
        .iter()
        .zip(fresh)
        .any(|(j, fresh)| *fresh && j.batch == Some(current) && j.phase == Phase::Failed);
    if failed_now {
        stats.last_finished_ms = Some(now);
    }
    let required = u64::from(success.min_success_percent);
    if required > 0 && u64::from(stats.done) * 100 < required * u64::from(stats.jobs) {
        let percent = (u64::from(stats.done) * 100)
            .checked_div(u64::from(stats.jobs))
            .unwrap_or(100);
        decision.wave_waiting = Some(format!(
            "batch {shown}: {} of {} succeeded ({percent}%), {required}% required; \
             batch {} waits for `fleetmig wave promote {}`",
            stats.done,
            stats.jobs,
            shown + 1,
            wave.name
        ));
        return current;
    }
    if success.bake_ms > 0 {
        let baked = stats
            .last_finished_ms
            .map(|last| last.saturating_add(success.bake_ms.min(i64::MAX as u64) as i64));
        if let Some(until) = baked.filter(|until| now < *until) {
            decision.wave_waiting = Some(format!(
                "batch {shown} bakes until {}; batch {} opens then",
                local_time(until, ""),
                shown + 1
            ));
            return current;
        }
    }
    open(
        format!(
            "batch {} opened: batch {shown} met its criteria ({} of {} done{})",
            shown + 1,
            stats.done,
            stats.jobs,
            if success.bake_ms > 0 {
                format!(", baked {}", human_duration(success.bake_ms))
            } else {
                String::new()
            }
        ),
        decision,
    )
}

/// Which limit stops admissions, and the room under each.
struct Room {
    wave: u32,
    budget: u32,
    plan_budget: u32,
    global: u32,
}

impl Room {
    fn of(wave: &WaveFacts<'_>, counts: &Counts, load: &Load) -> Room {
        let budget = wave.policy.error_budget.map_or(u32::MAX, |b| {
            (b.tolerated(wave.total_jobs) + 1).saturating_sub(counts.failed + counts.in_flight)
        });
        let plan_policy = wave.plan_policy;
        let plan_budget = plan_policy
            .and_then(|p| p.error_budget)
            .map_or(u32::MAX, |b| {
                let plan = load.plan(wave.plan);
                (b.tolerated(plan.jobs) + 1).saturating_sub(plan.failed + plan.in_flight)
            });
        let global = plan_policy
            .and_then(|p| p.max_in_flight)
            .map_or(u32::MAX, |cap| cap.saturating_sub(load.global));
        Room {
            wave: wave.max_in_flight.saturating_sub(counts.in_flight),
            budget,
            plan_budget,
            global,
        }
    }

    fn any(&self) -> bool {
        self.wave
            .min(self.budget)
            .min(self.plan_budget)
            .min(self.global)
            > 0
    }

    fn take(&mut self) {
        for room in [
            &mut self.wave,
            &mut self.budget,
            &mut self.plan_budget,
            &mut self.global,
        ] {
            *room = room.saturating_sub(1);
        }
    }

    fn why_full(&self, wave: &WaveFacts<'_>) -> String {
        if self.wave == 0 {
            format!("wave at its max_in_flight of {}", wave.max_in_flight)
        } else if self.budget == 0 {
            "error budget: failures plus jobs in flight already reach the budget's \
             limit (jobs in flight count against it, so it cannot be overshot)"
                .into()
        } else if self.plan_budget == 0 {
            format!(
                "plan {} error budget: failures plus jobs in flight already reach its limit",
                wave.plan
            )
        } else {
            format!(
                "controller-wide cap of {} jobs in flight reached",
                wave.plan_policy
                    .and_then(|p| p.max_in_flight)
                    .unwrap_or_default()
            )
        }
    }
}

/// Admits pending jobs in order while every limit has room, reading
/// `pending` only as far as that.
fn admit<'a>(
    wave: &WaveFacts<'_>,
    pending: &mut dyn Iterator<Item = JobFacts<'a>>,
    counts: &Counts,
    index: u32,
    load: &mut Load,
    now: i64,
    decision: &mut Decision<'a>,
) {
    let policy = wave.policy;
    let mut room = Room::of(wave, counts, load);
    let quota = policy.batches.admitted_through(index, wave.total_jobs);
    let consumed = wave.total_jobs.saturating_sub(counts.unadmitted);
    let mut batch_room = quota.saturating_sub(consumed);
    // Compiled on first use, for the longest estimate seen so far.
    let mut windows: Option<(Windows<'_>, u64)> = None;
    let mut shown_until: HashMap<(i64, &str), String> = HashMap::new();
    for job in pending {
        if !room.any() {
            decision
                .wave_waiting
                .get_or_insert_with(|| room.why_full(wave));
            break;
        }
        if job.batch.is_none() && batch_room == 0 {
            // Retried jobs came first: nothing behind this one may start.
            decision.wave_waiting.get_or_insert_with(|| {
                format!(
                    "batch {}: all {quota} of its machines admitted so far",
                    index + 1
                )
            });
            break;
        }
        if let Some(not_before) = job.not_before_ms.filter(|nb| *nb > now) {
            decision.waiting.push((
                job.id,
                format!("retry backoff until {}", local_time(not_before, "")),
            ));
            continue;
        }
        if let Some(cap) = policy.caps.per_site
            && load.site(job.site) >= cap
        {
            decision.waiting.push((
                job.id,
                format!("site {:?} has {cap} jobs in flight, its cap", job.site),
            ));
            continue;
        }
        if !policy.windows.is_empty() {
            if windows
                .as_ref()
                .is_none_or(|(_, longest)| *longest < job.estimated_ms)
            {
                let longest = job.estimated_ms.max(WINDOW_HORIZON_MS);
                windows = Some((Windows::compile(&policy.windows, now, longest), longest));
            }
            let (compiled, _) = windows.as_ref().expect("compiled above");
            match compiled.verdict(job.site, job.labels, now, job.estimated_ms) {
                Verdict::Open => {}
                Verdict::Until(at, tz) => {
                    let reason = shown_until
                        .entry((at, tz))
                        .or_insert_with(|| {
                            format!(
                                "outside its maintenance window until {}",
                                local_time(at, tz)
                            )
                        })
                        .clone();
                    decision.waiting.push((job.id, reason));
                    continue;
                }
                Verdict::Never(reason) => {
                    decision.waiting.push((job.id, reason));
                    continue;
                }
            }
        }
        let batch = match job.batch {
            Some(batch) => batch,
            None => {
                batch_room -= 1;
                index
            }
        };
        room.take();
        load.enter_flight(wave.plan, job.site, None);
        decision.admit.push(Admission { id: job.id, batch });
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
