//! What [`decide`](super::decide::decide) looks at: a wave, its jobs and the
//! load across the controller, all derived from persisted state (job
//! phases, the wave record), never from volatile counters, so a restarted
//! controller takes the same decisions.

use super::spec::{PlanPolicy, WavePolicy};
use crate::model::{BatchProgress, PauseClock, Phase, WaveState};
use std::collections::{BTreeMap, HashMap};

/// Fixed part of a job's estimated duration when the plan gives none: the
/// reimage and the round trips around it.
pub const ESTIMATE_FIXED_MS: u64 = 45 * 60 * 1000;
/// Bytes a job is assumed to move per second (capture plus restore) when
/// the plan gives no estimate.
pub const ESTIMATE_BYTES_PER_SEC: u64 = 20 << 20;

/// A job's estimated duration for window fitting: the policy's estimate,
/// or one derived from the machine's profile bytes.
pub fn estimate_duration_ms(policy: &WavePolicy, profile_bytes: u64) -> u64 {
    if policy.estimated_duration_ms > 0 {
        return policy.estimated_duration_ms;
    }
    ESTIMATE_FIXED_MS.saturating_add(profile_bytes / ESTIMATE_BYTES_PER_SEC * 1000)
}

/// A wave as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct WaveFacts<'a> {
    /// Wave name.
    pub name: &'a str,
    /// Plan the wave belongs to.
    pub plan: &'a str,
    /// The wave's policy.
    pub policy: &'a WavePolicy,
    /// The plan's policy (`None`: the plan is gone or sets nothing).
    pub plan_policy: Option<&'a PlanPolicy>,
    /// Lifecycle state.
    pub state: WaveState,
    /// Most jobs of the wave in flight at once.
    pub max_in_flight: u32,
    /// Where the wave is in its batches (persisted with the wave).
    pub batch: &'a BatchProgress,
    /// Pause bookkeeping.
    pub paused: &'a PauseClock,
    /// Jobs in the wave, terminal ones included.
    pub total_jobs: u32,
}

/// How a failed job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureFacts {
    /// Phase the job failed in.
    pub phase: Phase,
    /// Whether a retry may succeed.
    pub retryable: bool,
}

/// A job as the decision sees it. Done and skipped jobs may be left out:
/// they only matter through [`WaveFacts::total_jobs`] and [`BatchStats`].
#[derive(Debug, Clone, Copy)]
pub struct JobFacts<'a> {
    /// Job id.
    pub id: &'a str,
    /// Site of the machine.
    pub site: &'a str,
    /// Labels of the machine.
    pub labels: &'a BTreeMap<String, String>,
    /// Current phase.
    pub phase: Phase,
    /// Attempts so far (times handed out, see [`crate::model::Job::attempt`]).
    pub attempt: u32,
    /// The failure, for a failed job.
    pub failure: Option<FailureFacts>,
    /// The machine running the job lost contact (its lease expired).
    pub lost: bool,
    /// A failed job whose machine has a later job (a retry wave): its
    /// failure no longer counts against any budget.
    pub superseded: bool,
    /// A worker session owns the job.
    pub picked_up: bool,
    /// A replace job (goes through a storage node).
    pub replace: bool,
    /// Storage node holding the job's reservation, once placed.
    pub node: Option<&'a str>,
    /// The batch that admitted the job (`None`: never admitted).
    pub batch: Option<u32>,
    /// When the job entered its phase.
    pub phase_since_ms: i64,
    /// A retried job waits until then.
    pub not_before_ms: Option<i64>,
    /// Estimated duration, for window fitting (0 when the wave has no windows).
    pub estimated_ms: u64,
}

/// The outcome of one batch, for its success criteria.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Jobs the batch admitted.
    pub jobs: u32,
    /// Of which done.
    pub done: u32,
    /// When its last job finished.
    pub last_finished_ms: Option<i64>,
}

/// A plan's jobs and failures across all its waves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanLoad {
    /// Jobs in the plan's started waves.
    pub jobs: u32,
    /// Failed jobs that count against the budget.
    pub failed: u32,
    /// In-flight jobs whose machine lost contact (they count as failures).
    pub lost: u32,
    /// Jobs in flight.
    pub in_flight: u32,
}

impl PlanLoad {
    /// Failures counted against the plan's budget: failed plus unreachable.
    pub fn failures(&self) -> u32 {
        self.failed + self.lost
    }
}

/// In-flight jobs across every wave of the controller, and each plan's
/// failures: the load nested caps and plan budgets are checked against.
/// [`decide`](super::decide::decide) updates it with what it decides, so
/// waves decided one after another in a pass share it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load {
    /// Jobs in flight, all waves.
    pub global: u32,
    /// Jobs in flight per site.
    pub sites: HashMap<String, u32>,
    /// Replace jobs in flight per storage node.
    pub nodes: HashMap<String, u32>,
    /// Per plan.
    pub plans: HashMap<String, PlanLoad>,
}

fn bump(map: &mut HashMap<String, u32>, key: &str, up: bool) {
    match map.get_mut(key) {
        Some(count) if up => *count += 1,
        Some(count) => *count = count.saturating_sub(1),
        None if up => {
            map.insert(key.to_string(), 1);
        }
        None => {}
    }
}

impl Load {
    /// Counts `jobs` more jobs in `plan` (call once per started wave).
    pub fn add_wave(&mut self, plan: &str, jobs: u32) {
        self.plan_mut(plan).jobs += jobs;
    }

    /// Counts one job of `wave` as it stands.
    pub fn add_job(&mut self, wave: &WaveFacts<'_>, job: &JobFacts<'_>) {
        if job.phase.is_in_flight() {
            self.enter_flight(wave.plan, job.site, job.node);
            if job.lost {
                self.plan_mut(wave.plan).lost += 1;
            }
        } else if counts_as_failure(wave, job) {
            self.plan_mut(wave.plan).failed += 1;
        }
    }

    /// A job of `plan` at `site` (placed on `node`) entered flight.
    pub fn enter_flight(&mut self, plan: &str, site: &str, node: Option<&str>) {
        self.global += 1;
        bump(&mut self.sites, site, true);
        if let Some(node) = node {
            bump(&mut self.nodes, node, true);
        }
        self.plan_mut(plan).in_flight += 1;
    }

    /// A job of `plan` left flight (it failed or was taken back).
    pub fn leave_flight(&mut self, plan: &str, site: &str, node: Option<&str>, lost: bool) {
        self.global = self.global.saturating_sub(1);
        bump(&mut self.sites, site, false);
        if let Some(node) = node {
            bump(&mut self.nodes, node, false);
        }
        let plan = self.plan_mut(plan);
        plan.in_flight = plan.in_flight.saturating_sub(1);
        if lost {
            plan.lost = plan.lost.saturating_sub(1);
        }
    }

    /// A placed job now holds a slot on `node`.
    pub fn place(&mut self, node: &str) {
        bump(&mut self.nodes, node, true);
    }

    /// In-flight jobs at `site`.
    pub fn site(&self, site: &str) -> u32 {
        self.sites.get(site).copied().unwrap_or(0)
    }

    /// In-flight jobs on storage node `node`.
    pub fn node(&self, node: &str) -> u32 {
        self.nodes.get(node).copied().unwrap_or(0)
    }

    /// The plan's counts (zero when unknown).
    pub fn plan(&self, plan: &str) -> PlanLoad {
        self.plans.get(plan).copied().unwrap_or_default()
    }

    pub(crate) fn plan_mut(&mut self, plan: &str) -> &mut PlanLoad {
        if !self.plans.contains_key(plan) {
            self.plans.insert(plan.to_string(), PlanLoad::default());
        }
        self.plans.get_mut(plan).expect("inserted above")
    }
}

/// Phases a retry may restart a job from: nothing sealed, nothing
/// destructive yet. A later failure is left to `wave retry-failed`, which
/// resumes from the kept state instead of capturing again.
pub fn retry_restarts_from(phase: Phase) -> bool {
    matches!(phase, Phase::Assigned | Phase::Capturing)
}

/// Whether the failed `job` has a retry left under its wave's policy: the
/// failure is retryable, happened before anything was sealed, and
/// attempts remain. Such a failure never counts against a budget, in any
/// state of the wave, so whether a failure counts never changes while it
/// stands: that is what keeps `failed + in flight <= tolerated + 1`.
pub fn retry_left(wave: &WaveFacts<'_>, job: &JobFacts<'_>) -> bool {
    job.phase == Phase::Failed
        && job
            .failure
            .is_some_and(|f| f.retryable && retry_restarts_from(f.phase))
        && job.attempt < wave.policy.retries.max_attempts
}

/// Whether the failed `job` goes back to pending for another attempt: it
/// has a retry left and its wave is running, paused or halted (a halted
/// wave's retried jobs wait, pending, for an operator to resume it; an
/// aborted wave retries nothing).
pub fn will_retry(wave: &WaveFacts<'_>, job: &JobFacts<'_>) -> bool {
    matches!(
        wave.state,
        WaveState::Running | WaveState::Paused | WaveState::Halted
    ) && retry_left(wave, job)
}

/// Whether `job` counts as a failure against budgets: failed with no
/// retry left, and not superseded by a later job of its machine.
/// Unreachable in-flight machines count too, separately ([`JobFacts::lost`]).
pub fn counts_as_failure(wave: &WaveFacts<'_>, job: &JobFacts<'_>) -> bool {
    job.phase == Phase::Failed && !job.superseded && !retry_left(wave, job)
}
