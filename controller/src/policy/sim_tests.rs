//! Property tests: random fleets, policies and failure patterns driven
//! through [`decide`] with a fake clock until every machine is done,
//! failed or skipped, checking the safety invariants after every pass:
//! - no wave exceeds `max_in_flight`, no site its cap, no storage node its
//!   cap, the controller its global cap, no wave its current batch;
//! - failures never exceed a budget's tolerance by more than the one that
//!   halts it (in-flight jobs count against the budget), and a running
//!   wave over its budget halts in the same pass (wave and plan budgets);
//! - a job starts only when a governing window fits its estimated duration;
//! - deadlines never fire early, never while paused, never mid-reimage;
//! - a batch opens only when the previous one is over and met its
//!   criteria and bake time, or was promoted;
//! - every skipped job has a reason, and the simulation ends.
//!
//! Every pass rebuilds its facts from the jobs' phases alone, as a
//! restarted controller would, so the invariants also hold across restarts.

use super::decide::decide_list;
use super::facts::{BatchStats, FailureFacts, JobFacts, Load, WaveFacts, counts_as_failure};
use super::spec::{
    Advance, BatchSize, Batches, Budget, Caps, Deadlines, MaintenanceWindow, PlanPolicy, Retries,
    SuccessCriteria, WavePolicy, WindowTimes,
};
use super::window::{fits, governs};
use crate::model::{BatchProgress, PauseClock, Phase, WaveState};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const STEP: i64 = 10 * MIN;
/// 2026-03-27T00:00Z: Europe moves its clocks two days later.
const START: i64 = 1_774_569_600_000;
/// A wave that makes no progress for this long is aborted by the operator.
const STUCK: i64 = 10 * DAY;
/// The simulation must end well before this.
const END: i64 = START + 400 * DAY;

const SITES: [&str; 3] = ["paris", "lyon", "nyc"];
const ZONES: [&str; 4] = ["Europe/Paris", "America/New_York", "UTC", "Asia/Kolkata"];
const NODES_PER_SITE: usize = 2;

/// How a simulated fleet misbehaves (probabilities in percent).
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    fail: u32,
    retryable: u32,
    lost: u32,
    hang: u32,
}

#[derive(Debug, Clone)]
struct Setup {
    machines: usize,
    replace_percent: u32,
    waves: Vec<(WavePolicy, u32)>,
    plan: PlanPolicy,
    behaviour: Behaviour,
    seed: u64,
}

fn size() -> impl Strategy<Value = BatchSize> {
    prop_oneof![
        (1u32..8).prop_map(BatchSize::Count),
        (1u8..=100).prop_map(BatchSize::Percent),
    ]
}

fn budget() -> impl Strategy<Value = Option<Budget>> {
    proptest::option::of(prop_oneof![
        (0u32..4).prop_map(Budget::Count),
        (0u8..40).prop_map(Budget::Percent),
    ])
}

fn window() -> impl Strategy<Value = MaintenanceWindow> {
    let weekly = (
        proptest::collection::btree_set(0u8..7, 1..7),
        0u16..24,
        4u16..20,
    )
        .prop_map(|(days, start, hours)| WindowTimes::Weekly {
            days: days.into_iter().collect(),
            start_minute: start * 60,
            end_minute: (start * 60 + hours * 60) % 1440,
        });
    let range = (0i64..6 * 24, 6i64..96).prop_map(|(from, hours)| WindowTimes::Range {
        from_ms: START + from * HOUR,
        to_ms: START + (from + hours) * HOUR,
    });
    (
        prop_oneof![3 => weekly, 1 => range],
        0usize..ZONES.len(),
        proptest::collection::vec(0usize..SITES.len(), 0..2),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(times, zone, sites, lab)| MaintenanceWindow {
            times,
            time_zone: ZONES[zone].into(),
            sites: sites.into_iter().map(|s| SITES[s].to_string()).collect(),
            labels: if lab {
                [("tier".to_string(), "lab".to_string())].into()
            } else {
                BTreeMap::new()
            },
        })
}

fn minutes(range: std::ops::Range<u64>) -> impl Strategy<Value = u64> {
    range.prop_map(|m| m * 60_000)
}

prop_compose! {
    fn wave_policy(caps: Caps)(
        batches in prop_oneof![
            size().prop_map(Batches::Each),
            proptest::collection::vec(size(), 1..4).prop_map(Batches::Ramp),
        ],
        error_budget in budget(),
        min_success_percent in prop_oneof![Just(0u8), Just(50), Just(100)],
        bake_ms in prop_oneof![Just(0u64), minutes(10..180)],
        manual in proptest::bool::weighted(0.25),
        windows in proptest::collection::vec(window(), 0..3),
        estimated in minutes(30..180),
        assigned_ms in proptest::option::of(minutes(45..240)),
        capturing_ms in proptest::option::of(minutes(90..360)),
        restoring_ms in proptest::option::of(minutes(90..360)),
        verifying_ms in proptest::option::of(minutes(90..240)),
        max_attempts in 1u32..4,
        backoff in minutes(5..60),
        max_in_flight in 1u32..8,
    ) -> (WavePolicy, u32) {
        let policy = WavePolicy {
            batches,
            caps: caps.clone(),
            error_budget,
            success: SuccessCriteria {
                min_success_percent,
                bake_ms,
                advance: if manual { Advance::Manual } else { Advance::Auto },
            },
            windows,
            estimated_duration_ms: estimated,
            deadlines: Deadlines { assigned_ms, capturing_ms, restoring_ms, verifying_ms },
            retries: Retries { max_attempts, backoff_ms: backoff, max_backoff_ms: 4 * backoff },
        };
        (policy, max_in_flight)
    }
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        proptest::option::of(1u32..6),
        proptest::option::of(1u32..4),
        proptest::option::of(1u32..12),
        budget(),
    )
        .prop_flat_map(|(per_site, per_storage_node, global, plan_budget)| {
            let caps = Caps {
                per_site,
                per_storage_node,
            };
            (
                1usize..40,
                0u32..=100,
                proptest::collection::vec(wave_policy(caps), 1..4),
                (0u32..40, 0u32..=100, 0u32..15, 0u32..15),
                any::<u64>(),
            )
                .prop_map(
                    move |(
                        machines,
                        replace_percent,
                        waves,
                        (fail, retryable, lost, hang),
                        seed,
                    )| {
                        Setup {
                            machines,
                            replace_percent,
                            waves,
                            plan: PlanPolicy {
                                error_budget: plan_budget,
                                max_in_flight: global,
                            },
                            behaviour: Behaviour {
                                fail,
                                retryable,
                                lost,
                                hang,
                            },
                            seed,
                        }
                    },
                )
        })
}

#[derive(Debug)]
struct SimWave {
    policy: WavePolicy,
    state: WaveState,
    max_in_flight: u32,
    batch: BatchProgress,
    paused: PauseClock,
    jobs: Vec<usize>,
    /// When the operator first saw "waits for promote".
    promote_seen: Option<i64>,
    resume_at: Option<i64>,
    last_change: i64,
}

#[derive(Debug)]
struct SimJob {
    id: String,
    wave: usize,
    site: &'static str,
    labels: BTreeMap<String, String>,
    replace: bool,
    estimate: u64,
    phase: Phase,
    attempt: u32,
    failure: Option<FailureFacts>,
    picked_up: bool,
    node: Option<String>,
    batch: Option<u32>,
    phase_since: i64,
    not_before: Option<i64>,
    finished: Option<i64>,
    skip_reason: Option<String>,
    /// When the current phase ends (`i64::MAX`: hangs).
    next_at: i64,
    /// This attempt fails at the end of this phase.
    fail_in: Option<(Phase, bool)>,
    /// This attempt loses contact on entering this phase, for so long.
    lose_in: Option<(Phase, i64)>,
    lost_until: Option<i64>,
    /// This attempt hangs in this phase.
    hang_in: Option<Phase>,
}

impl SimJob {
    fn lost(&self) -> bool {
        self.phase.is_in_flight() && self.picked_up && self.lost_until.is_some()
    }

    fn facts(&self) -> JobFacts<'_> {
        JobFacts {
            id: &self.id,
            site: self.site,
            labels: &self.labels,
            phase: self.phase,
            attempt: self.attempt,
            failure: self.failure,
            lost: self.lost(),
            superseded: false,
            picked_up: self.picked_up,
            replace: self.replace,
            node: self.node.as_deref(),
            batch: self.batch,
            phase_since_ms: self.phase_since,
            not_before_ms: self.not_before,
            estimated_ms: self.estimate,
        }
    }
}

struct Sim {
    now: i64,
    rng: StdRng,
    behaviour: Behaviour,
    plan: PlanPolicy,
    waves: Vec<SimWave>,
    jobs: Vec<SimJob>,
    index: HashMap<String, usize>,
    admissions: u64,
    plan_over_before: std::cell::Cell<bool>,
}

impl Sim {
    fn new(setup: &Setup) -> Sim {
        let mut rng = StdRng::seed_from_u64(setup.seed);
        let mut waves: Vec<SimWave> = setup
            .waves
            .iter()
            .map(|(policy, max_in_flight)| SimWave {
                policy: policy.clone(),
                state: WaveState::Running,
                max_in_flight: *max_in_flight,
                batch: BatchProgress {
                    opened_ms: START,
                    ..BatchProgress::default()
                },
                paused: PauseClock::default(),
                jobs: Vec::new(),
                promote_seen: None,
                resume_at: None,
                last_change: START,
            })
            .collect();
        let mut jobs = Vec::new();
        let mut index = HashMap::new();
        for machine in 0..setup.machines {
            let wave = rng.random_range(0..waves.len());
            let id = format!("w{wave}.m{machine}");
            let mut labels = BTreeMap::new();
            let tier = if rng.random_bool(0.3) {
                "lab"
            } else {
                "office"
            };
            labels.insert("tier".to_string(), tier.to_string());
            index.insert(id.clone(), jobs.len());
            waves[wave].jobs.push(jobs.len());
            jobs.push(SimJob {
                id,
                wave,
                site: SITES[rng.random_range(0..SITES.len())],
                labels,
                replace: rng.random_range(0..100) < setup.replace_percent,
                estimate: setup.waves[wave].0.estimated_duration_ms,
                phase: Phase::Pending,
                attempt: 0,
                failure: None,
                picked_up: false,
                node: None,
                batch: None,
                phase_since: START,
                not_before: None,
                finished: None,
                skip_reason: None,
                next_at: i64::MAX,
                fail_in: None,
                lose_in: None,
                lost_until: None,
                hang_in: None,
            });
        }
        Sim {
            now: START,
            rng,
            behaviour: setup.behaviour,
            plan: setup.plan.clone(),
            waves,
            jobs,
            index,
            admissions: 0,
            plan_over_before: std::cell::Cell::new(false),
        }
    }

    fn roll(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100) < percent
    }

    /// Scripts one attempt of a freshly admitted job.
    fn script(&mut self, job: usize) {
        let phases: &[Phase] = if self.jobs[job].replace {
            &[
                Phase::Capturing,
                Phase::Captured,
                Phase::Restoring,
                Phase::Verifying,
            ]
        } else {
            &[
                Phase::Capturing,
                Phase::Captured,
                Phase::Reimaging,
                Phase::Restoring,
                Phase::Verifying,
            ]
        };
        let pick = |rng: &mut StdRng| phases[rng.random_range(0..phases.len())];
        let fail_in = if self.roll(self.behaviour.fail) {
            let retryable = self.roll(self.behaviour.retryable);
            Some((pick(&mut self.rng), retryable))
        } else {
            None
        };
        let lose_in = if self.roll(self.behaviour.lost) {
            let phase = if self.rng.random_bool(0.2) {
                Phase::Assigned
            } else {
                pick(&mut self.rng)
            };
            Some((phase, self.rng.random_range(1..48) * HOUR))
        } else {
            None
        };
        // Only hang where a deadline will end it (never while reimaging).
        let deadlines = self.waves[self.jobs[job].wave].policy.deadlines.clone();
        let replace = self.jobs[job].replace;
        let hang_in = if self.roll(self.behaviour.hang) {
            let phase = pick(&mut self.rng);
            (phase != Phase::Reimaging && deadlines.for_phase(phase, replace).is_some())
                .then_some(phase)
        } else {
            None
        };
        let pickup = self.rng.random_range(0..60) * MIN;
        let job = &mut self.jobs[job];
        job.fail_in = fail_in;
        job.lose_in = lose_in;
        job.hang_in = hang_in;
        job.next_at = self.now + pickup;
        if let Some((Phase::Assigned, lost_for)) = lose_in {
            job.lost_until = Some(self.now + lost_for);
        }
    }

    fn enter(&mut self, job: usize, phase: Phase) {
        let duration = self.rng.random_range(10..150) * MIN;
        let now = self.now;
        let job = &mut self.jobs[job];
        job.phase = phase;
        job.phase_since = now;
        job.next_at = if job.hang_in == Some(phase) {
            i64::MAX
        } else {
            now + duration
        };
        if let Some((lose, lost_for)) = job.lose_in
            && lose == phase
        {
            job.lost_until = Some(now + lost_for);
        }
    }

    /// Workers make progress.
    fn progress(&mut self) {
        for i in 0..self.jobs.len() {
            let now = self.now;
            let job = &mut self.jobs[i];
            if !job.phase.is_in_flight() {
                continue;
            }
            if let Some(until) = job.lost_until {
                if until > now {
                    continue;
                }
                job.lost_until = None;
                job.next_at = job.next_at.max(now);
            }
            if now < job.next_at {
                continue;
            }
            let wave = job.wave;
            if job.phase == Phase::Assigned && !job.picked_up {
                job.picked_up = true;
                job.attempt += 1;
                self.enter(i, Phase::Capturing);
                self.waves[wave].last_change = now;
                continue;
            }
            if let Some((phase, retryable)) = job.fail_in
                && phase == job.phase
            {
                job.failure = Some(FailureFacts { phase, retryable });
                job.phase = Phase::Failed;
                job.finished = Some(now);
                job.phase_since = now;
                self.waves[wave].last_change = now;
                continue;
            }
            let next = match (job.phase, job.replace) {
                (Phase::Capturing, _) => Phase::Captured,
                (Phase::Captured, false) => Phase::Reimaging,
                (Phase::Captured, true) | (Phase::Reimaging, _) => Phase::Restoring,
                (Phase::Restoring, _) => Phase::Verifying,
                _ => Phase::Done,
            };
            self.waves[wave].last_change = now;
            if next == Phase::Done {
                job.phase = Phase::Done;
                job.finished = Some(now);
                job.phase_since = now;
            } else {
                self.enter(i, next);
            }
        }
    }

    /// The operator: resumes pauses, sometimes pauses, promotes waiting
    /// batches, aborts halted or stuck waves.
    fn operate(&mut self, waiting: &[Option<String>]) {
        for w in 0..self.waves.len() {
            let now = self.now;
            let pause = self.rng.random_bool(0.002);
            let pause_for = self.rng.random_range(1..24) * HOUR;
            let promote_after = self.rng.random_range(0..6) * HOUR;
            let wave = &mut self.waves[w];
            match wave.state {
                WaveState::Halted => {
                    wave.state = WaveState::Aborted;
                    wave.last_change = now;
                }
                WaveState::Paused if wave.resume_at.is_some_and(|at| at <= now) => {
                    let since = wave.paused.since_ms.take().unwrap();
                    wave.paused.total_ms += (now - since) as u64;
                    wave.state = WaveState::Running;
                    wave.resume_at = None;
                }
                WaveState::Running if pause => {
                    wave.state = WaveState::Paused;
                    wave.paused.since_ms = Some(now);
                    wave.resume_at = Some(now + pause_for);
                }
                WaveState::Running => {
                    let waits = waiting
                        .get(w)
                        .and_then(|r| r.as_deref())
                        .is_some_and(|r| r.contains("wave promote"));
                    if waits {
                        let seen = *wave.promote_seen.get_or_insert(now);
                        if now >= seen + promote_after {
                            wave.batch.promoted = true;
                            wave.promote_seen = None;
                        }
                    }
                    if now - wave.last_change > STUCK {
                        wave.state = WaveState::Aborted;
                    }
                }
                _ => {}
            }
        }
    }

    fn wave_facts(&self, w: usize) -> WaveFacts<'_> {
        let wave = &self.waves[w];
        WaveFacts {
            name: "w",
            plan: "p",
            policy: &wave.policy,
            plan_policy: Some(&self.plan),
            state: wave.state,
            max_in_flight: wave.max_in_flight,
            batch: &wave.batch,
            paused: &wave.paused,
            total_jobs: wave.jobs.len() as u32,
        }
    }

    fn batch_stats(&self, w: usize, batch: u32) -> BatchStats {
        let mut stats = BatchStats::default();
        for job in self.waves[w].jobs.iter().map(|j| &self.jobs[*j]) {
            if job.batch == Some(batch) {
                stats.jobs += 1;
                stats.done += u32::from(job.phase == Phase::Done);
                if job.phase.is_terminal() {
                    stats.last_finished_ms = job.finished.max(stats.last_finished_ms);
                }
            }
        }
        stats
    }

    fn load(&self) -> Load {
        let mut load = Load::default();
        for w in 0..self.waves.len() {
            let facts = self.wave_facts(w);
            load.add_wave("p", facts.total_jobs);
            for job in &self.waves[w].jobs {
                load.add_job(&facts, &self.jobs[*job].facts());
            }
        }
        load
    }

    /// A storage node for a replace job at `site`: same site first, below the cap.
    fn place(&self, site: &str, cap: Option<u32>, load: &Load) -> Option<String> {
        let same = SITES.iter().position(|s| *s == site).unwrap();
        let order = std::iter::once(same).chain((0..SITES.len()).filter(|s| *s != same));
        order
            .flat_map(|s| (0..NODES_PER_SITE).map(move |n| format!("{}-{n}", SITES[s])))
            .find(|node| cap.is_none_or(|cap| load.node(node) < cap))
    }

    /// One scheduling pass over every wave, as the scheduler does it.
    fn pass(&mut self) -> Result<Vec<Option<String>>, TestCaseError> {
        let mut load = self.load();
        let mut waiting = Vec::new();
        for w in 0..self.waves.len() {
            let (decision, state_before) = {
                let facts = self.wave_facts(w);
                let jobs: Vec<JobFacts<'_>> = self.waves[w]
                    .jobs
                    .iter()
                    .map(|j| self.jobs[*j].facts())
                    .collect();
                let stats = |batch| self.batch_stats(w, batch);
                let decision = decide_list(&facts, &jobs, &stats, &mut load, self.now);
                (owned(decision, &self.index), facts.state)
            };
            self.check_decision(w, &decision, state_before)?;
            let before = self.waves[w].batch.clone();
            self.apply(w, decision.clone(), &mut load);
            self.check_batch(w, &before)?;
            waiting.push(decision.wave_waiting);
        }
        Ok(waiting)
    }

    /// Checks what a decision asks for before it is applied.
    fn check_decision(
        &self,
        w: usize,
        decision: &Owned,
        state: WaveState,
    ) -> Result<(), TestCaseError> {
        let wave = &self.waves[w];
        let now = self.now;
        for (job, fail) in &decision.expire {
            let job = &self.jobs[*job];
            let limit = wave
                .policy
                .deadlines
                .for_phase(job.phase, job.replace)
                .unwrap();
            let raw = (now - job.phase_since) as u64;
            let elapsed = raw - wave.paused.total_ms.min(raw);
            prop_assert!(
                elapsed > limit,
                "deadline fired early: {elapsed} <= {limit}"
            );
            prop_assert!(state != WaveState::Paused, "deadline fired while paused");
            prop_assert_eq!(*fail, job.phase != Phase::Reimaging, "failed mid-reimage");
        }
        for (job, _) in &decision.admit {
            let job = &self.jobs[*job];
            prop_assert_eq!(state, WaveState::Running, "admission in a {:?} wave", state);
            let governing: Vec<_> = wave
                .policy
                .windows
                .iter()
                .filter(|w| governs(w, job.site, &job.labels))
                .collect();
            let estimate = job.estimate;
            prop_assert!(
                governing.is_empty() || governing.iter().any(|w| fits(w, now, estimate).unwrap()),
                "{} started outside its windows at {}",
                job.id,
                now
            );
            prop_assert!(
                job.not_before.is_none_or(|nb| nb <= now),
                "started during backoff"
            );
        }
        for (job, reason) in &decision.skip {
            prop_assert!(
                !reason.is_empty(),
                "{} skipped without a reason",
                self.jobs[*job].id
            );
        }
        Ok(())
    }

    /// A batch opened by itself only if the one before is over, met its
    /// criteria and baked (checked after the pass's expiries and retries).
    fn check_batch(&self, w: usize, before: &BatchProgress) -> Result<(), TestCaseError> {
        let wave = &self.waves[w];
        if wave.batch.index == before.index || before.promoted {
            return Ok(());
        }
        let now = self.now;
        let index = before.index;
        prop_assert_eq!(wave.batch.index, index + 1, "batches open one at a time");
        prop_assert_eq!(wave.policy.success.advance, Advance::Auto);
        let total = wave.jobs.len() as u32;
        let quota = wave.policy.batches.admitted_through(index, total);
        let consumed = wave
            .jobs
            .iter()
            .map(|j| &self.jobs[*j])
            .filter(|j| {
                j.batch.is_some_and(|b| b <= index) || (j.batch.is_none() && j.phase.is_terminal())
            })
            .count() as u32;
        prop_assert!(
            consumed >= quota,
            "batch {index} opened the next before filling"
        );
        let facts = self.wave_facts(w);
        // Over: every job of the batch terminal, and no failure of it about to be retried.
        let over = wave.jobs.iter().map(|j| &self.jobs[*j]).all(|j| {
            j.batch != Some(index)
                || (j.phase.is_terminal()
                    && (j.phase != Phase::Failed || counts_as_failure(&facts, &j.facts())))
        });
        prop_assert!(over, "batch {index} not over");
        let stats = self.batch_stats(w, index);
        let required = u64::from(wave.policy.success.min_success_percent);
        prop_assert!(u64::from(stats.done) * 100 >= required * u64::from(stats.jobs));
        if let Some(last) = stats.last_finished_ms {
            prop_assert!(now >= last + wave.policy.success.bake_ms as i64, "unbaked");
        }
        Ok(())
    }

    fn apply(&mut self, w: usize, decision: Owned, load: &mut Load) {
        let now = self.now;
        if let Some(reason) = decision.halt {
            assert!(!reason.is_empty());
            // As the scheduler writes it: a pause in progress ends.
            let wave = &mut self.waves[w];
            wave.state = WaveState::Halted;
            if let Some(since) = wave.paused.since_ms.take() {
                wave.paused.total_ms += (now - since) as u64;
                wave.resume_at = None;
            }
        }
        if decision.complete {
            self.waves[w].state = WaveState::Completed;
        }
        if let Some(batch) = decision.batch {
            if batch.index != self.waves[w].batch.index {
                self.waves[w].last_change = now;
            }
            self.waves[w].batch = batch;
        }
        for (job, fail) in decision.expire {
            if !fail {
                continue;
            }
            let job = &mut self.jobs[job];
            job.failure = Some(FailureFacts {
                phase: job.phase,
                retryable: true,
            });
            job.phase = Phase::Failed;
            if !job.picked_up {
                job.attempt += 1;
            }
            job.finished = Some(now);
            job.phase_since = now;
            job.lost_until = None;
        }
        for (job, not_before) in decision.retry {
            let job = &mut self.jobs[job];
            job.phase = Phase::Pending;
            job.not_before = Some(not_before);
            job.failure = None;
            job.picked_up = false;
            job.node = None;
            job.finished = None;
            job.phase_since = now;
        }
        for (job, reason) in decision.skip {
            let job = &mut self.jobs[job];
            job.phase = Phase::Skipped;
            job.skip_reason = Some(reason);
            job.finished = Some(now);
        }
        let node_cap = self.waves[w].policy.caps.per_storage_node;
        for (job, batch) in decision.admit {
            if self.jobs[job].replace {
                // The scheduler places after deciding; a job no node can
                // take waits, still pending.
                match self.place(self.jobs[job].site, node_cap, load) {
                    Some(node) => {
                        load.place(&node);
                        self.jobs[job].node = Some(node);
                    }
                    None => {
                        let site = self.jobs[job].site;
                        load.leave_flight("p", site, None, false);
                        continue;
                    }
                }
            }
            self.admissions += 1;
            self.waves[w].last_change = now;
            let sim_job = &mut self.jobs[job];
            sim_job.phase = Phase::Assigned;
            sim_job.batch = Some(batch);
            sim_job.phase_since = now;
            sim_job.not_before = None;
            sim_job.lost_until = None;
            self.script(job);
        }
    }

    /// Invariants that hold between passes.
    fn check_state(&self) -> Result<(), TestCaseError> {
        let mut sites: HashMap<&str, u32> = HashMap::new();
        let mut nodes: HashMap<&str, u32> = HashMap::new();
        let mut global = 0;
        let (mut plan_failed, mut plan_lost, mut plan_flight) = (0, 0, 0);
        for (w, wave) in self.waves.iter().enumerate() {
            let facts = self.wave_facts(w);
            let (mut failed, mut lost, mut in_flight, mut with_batch) = (0, 0, 0, 0);
            for job in wave.jobs.iter().map(|j| &self.jobs[*j]) {
                with_batch += u32::from(job.batch.is_some());
                if job.phase.is_in_flight() {
                    in_flight += 1;
                    lost += u32::from(job.lost());
                    *sites.entry(job.site).or_default() += 1;
                    if let Some(node) = &job.node {
                        *nodes.entry(node.as_str()).or_default() += 1;
                    }
                } else if counts_as_failure(&facts, &job.facts()) {
                    failed += 1;
                }
                if job.phase == Phase::Skipped {
                    prop_assert!(job.skip_reason.as_deref().is_some_and(|r| !r.is_empty()));
                }
            }
            global += in_flight;
            plan_failed += failed;
            plan_lost += lost;
            plan_flight += in_flight;
            prop_assert!(
                in_flight <= wave.max_in_flight,
                "wave {w}: {in_flight} in flight > max {}",
                wave.max_in_flight
            );
            let total = wave.jobs.len() as u32;
            prop_assert!(
                with_batch
                    <= wave
                        .policy
                        .batches
                        .admitted_through(wave.batch.index, total),
                "wave {w}: {with_batch} admitted beyond batch {}",
                wave.batch.index
            );
            if let Some(budget) = wave.policy.error_budget {
                let tolerated = budget.tolerated(total);
                prop_assert!(
                    failed + in_flight <= tolerated + 1,
                    "wave {w}: {failed} failed + {in_flight} in flight > {tolerated} + 1"
                );
                if matches!(wave.state, WaveState::Running | WaveState::Paused) {
                    prop_assert!(
                        failed + lost <= tolerated,
                        "wave {w} over its budget ({failed} + {lost} lost > {tolerated}) but {:?}",
                        wave.state
                    );
                }
            }
        }
        let caps = &self.waves[0].policy.caps;
        if let Some(cap) = caps.per_site {
            prop_assert!(
                sites.values().all(|n| *n <= cap),
                "site cap {cap}: {sites:?}"
            );
        }
        if let Some(cap) = caps.per_storage_node {
            prop_assert!(
                nodes.values().all(|n| *n <= cap),
                "node cap {cap}: {nodes:?}"
            );
        }
        if let Some(cap) = self.plan.max_in_flight {
            prop_assert!(global <= cap, "global cap {cap}: {global}");
        }
        if let Some(budget) = self.plan.error_budget {
            let tolerated = budget.tolerated(self.jobs.len() as u32);
            prop_assert!(
                plan_failed + plan_flight <= tolerated + 1,
                "plan: {plan_failed} failed + {plan_flight} in flight > {tolerated} + 1"
            );
            // A wave decided before another's deadline failures of the same
            // pass sees them on the next pass (admitting nothing meanwhile).
            let over = plan_failed + plan_lost > tolerated;
            let running = self
                .waves
                .iter()
                .any(|wave| matches!(wave.state, WaveState::Running | WaveState::Paused));
            prop_assert!(
                !(over && running && self.plan_over_before.get()),
                "waves run on with the plan over budget"
            );
            self.plan_over_before.set(over && running);
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.waves
            .iter()
            .all(|w| matches!(w.state, WaveState::Completed | WaveState::Aborted))
            && self.jobs.iter().all(|j| j.phase.is_terminal())
    }
}

/// A decision with job indices instead of borrowed ids.
#[derive(Debug, Clone, Default)]
struct Owned {
    expire: Vec<(usize, bool)>,
    retry: Vec<(usize, i64)>,
    skip: Vec<(usize, String)>,
    halt: Option<String>,
    complete: bool,
    batch: Option<BatchProgress>,
    admit: Vec<(usize, u32)>,
    wave_waiting: Option<String>,
}

fn owned(decision: super::decide::Decision<'_>, index: &HashMap<String, usize>) -> Owned {
    let at = |id: &str| index[id];
    Owned {
        expire: decision.expire.iter().map(|e| (at(e.id), e.fail)).collect(),
        retry: decision
            .retry
            .iter()
            .map(|r| (at(r.id), r.not_before_ms))
            .collect(),
        skip: decision
            .skip
            .into_iter()
            .map(|s| (at(s.id), s.reason))
            .collect(),
        halt: decision.halt,
        complete: decision.complete,
        batch: decision.batch.map(|b| b.progress),
        admit: decision.admit.iter().map(|a| (at(a.id), a.batch)).collect(),
        wave_waiting: decision.wave_waiting,
    }
}

fn simulate(setup: &Setup) -> Result<Sim, TestCaseError> {
    let mut sim = Sim::new(setup);
    let mut waiting = Vec::new();
    while !sim.finished() {
        prop_assert!(sim.now < END, "the simulation did not end");
        sim.now += STEP;
        sim.operate(&waiting);
        sim.progress();
        waiting = sim.pass()?;
        sim.check_state()?;
    }
    for job in &sim.jobs {
        prop_assert!(
            matches!(job.phase, Phase::Done | Phase::Failed | Phase::Skipped),
            "{} ended {:?}",
            job.id,
            job.phase
        );
        if job.phase == Phase::Failed {
            prop_assert!(job.failure.is_some());
        }
    }
    Ok(sim)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(128),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_fleets_keep_every_invariant_and_finish(setup in setup()) {
        simulate(&setup)?;
    }
}

#[test]
fn a_healthy_fleet_finishes_with_every_machine_done() {
    let setup = Setup {
        machines: 30,
        replace_percent: 30,
        waves: vec![(
            WavePolicy {
                batches: Batches::Ramp(vec![BatchSize::Count(1), BatchSize::Percent(25)]),
                error_budget: Some(Budget::Count(1)),
                estimated_duration_ms: HOUR as u64,
                ..WavePolicy::default()
            },
            5,
        )],
        plan: PlanPolicy::default(),
        behaviour: Behaviour {
            fail: 0,
            retryable: 0,
            lost: 0,
            hang: 0,
        },
        seed: 7,
    };
    let sim = simulate(&setup).unwrap();
    assert!(sim.jobs.iter().all(|j| j.phase == Phase::Done));
    assert_eq!(sim.admissions, 30);
    assert_eq!(sim.waves[0].state, WaveState::Completed);
}

#[test]
fn a_failing_fleet_halts_at_its_budget_and_skips_the_rest() {
    let setup = Setup {
        machines: 30,
        replace_percent: 0,
        waves: vec![(
            WavePolicy {
                error_budget: Some(Budget::Count(2)),
                estimated_duration_ms: HOUR as u64,
                ..WavePolicy::default()
            },
            10,
        )],
        plan: PlanPolicy::default(),
        behaviour: Behaviour {
            fail: 100,
            retryable: 0,
            lost: 0,
            hang: 0,
        },
        seed: 11,
    };
    let sim = simulate(&setup).unwrap();
    let failed = sim.jobs.iter().filter(|j| j.phase == Phase::Failed).count();
    assert_eq!(failed, 3, "halts at the third failure, no overshoot");
    assert_eq!(
        sim.jobs
            .iter()
            .filter(|j| j.phase == Phase::Skipped)
            .count(),
        27
    );
    assert_eq!(sim.waves[0].state, WaveState::Aborted);
}

/// Found by the property test: a deadline failure with a retry left was
/// not counted when a second job was admitted, then counted once an
/// unreachable machine halted the wave (one failure over `T + 1`).
#[test]
fn a_halt_never_turns_a_retryable_failure_into_an_overshoot() {
    let caps = Caps {
        per_site: Some(2),
        per_storage_node: None,
    };
    let base = WavePolicy {
        caps,
        estimated_duration_ms: 30 * MIN as u64,
        ..WavePolicy::default()
    };
    let lyon_mornings = MaintenanceWindow {
        times: WindowTimes::Weekly {
            days: vec![1, 6],
            start_minute: 480,
            end_minute: 780,
        },
        time_zone: "Asia/Kolkata".into(),
        sites: vec!["lyon".into()],
        labels: BTreeMap::new(),
    };
    let first = WavePolicy {
        batches: Batches::Ramp(vec![BatchSize::Count(3)]),
        error_budget: Some(Budget::Percent(0)),
        success: SuccessCriteria {
            advance: Advance::Manual,
            ..SuccessCriteria::default()
        },
        windows: vec![lyon_mornings],
        retries: Retries {
            max_attempts: 2,
            backoff_ms: 2_460_000,
            max_backoff_ms: 9_840_000,
        },
        ..base.clone()
    };
    let second = WavePolicy {
        batches: Batches::Ramp(vec![BatchSize::Percent(72)]),
        error_budget: Some(Budget::Count(0)),
        deadlines: Deadlines {
            capturing_ms: Some(15_000_000),
            ..Deadlines::default()
        },
        retries: Retries {
            max_attempts: 2,
            backoff_ms: 300_000,
            max_backoff_ms: 1_200_000,
        },
        ..base
    };
    let setup = Setup {
        machines: 11,
        replace_percent: 85,
        waves: vec![(first, 1), (second, 1)],
        plan: PlanPolicy {
            error_budget: None,
            max_in_flight: Some(3),
        },
        behaviour: Behaviour {
            fail: 18,
            retryable: 34,
            lost: 4,
            hang: 10,
        },
        seed: 17_991_240_543_462_431_381,
    };
    simulate(&setup).unwrap();
}

/// Found by the property test: a wave halted while paused kept its pause
/// open, which froze its deadlines for good and left a hung job running.
#[test]
fn a_wave_halted_while_paused_still_ends_its_hung_jobs() {
    let policy = |count: u32, verifying: Option<u64>| WavePolicy {
        batches: Batches::Each(BatchSize::Count(count)),
        caps: Caps {
            per_site: Some(4),
            per_storage_node: Some(2),
        },
        estimated_duration_ms: 30 * MIN as u64,
        deadlines: Deadlines {
            verifying_ms: verifying,
            ..Deadlines::default()
        },
        retries: Retries {
            max_attempts: 1,
            backoff_ms: 300_000,
            max_backoff_ms: 1_200_000,
        },
        ..WavePolicy::default()
    };
    let setup = Setup {
        machines: 9,
        replace_percent: 0,
        waves: vec![(policy(3, Some(5_400_000)), 1), (policy(2, None), 1)],
        plan: PlanPolicy {
            error_budget: Some(Budget::Percent(22)),
            max_in_flight: None,
        },
        behaviour: Behaviour {
            fail: 2,
            retryable: 0,
            lost: 1,
            hang: 1,
        },
        seed: 8_680_394_446_468_129_095,
    };
    simulate(&setup).unwrap();
}
