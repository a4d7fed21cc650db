//! One test per rule of [`decide`].

use super::*;
use crate::model::PauseClock;
use crate::policy::facts::PlanLoad;
use crate::policy::spec::{
    BatchSize, Batches, Budget, Caps, Deadlines, MaintenanceWindow, PlanPolicy, Retries,
    SuccessCriteria, WavePolicy, WindowTimes,
};
use std::collections::BTreeMap;

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
const NOW: i64 = 1_800_000_000_000;
const MIN: i64 = 60_000;

const IDS: [&str; 12] = [
    "j0", "j1", "j2", "j3", "j4", "j5", "j6", "j7", "j8", "j9", "j10", "j11",
];

fn job(i: usize, phase: Phase) -> JobFacts<'static> {
    JobFacts {
        id: IDS[i],
        site: "paris",
        labels: &NO_LABELS,
        phase,
        attempt: u32::from(phase != Phase::Pending),
        failure: (phase == Phase::Failed).then_some(FailureFacts {
            phase: Phase::Capturing,
            retryable: false,
        }),
        lost: false,
        superseded: false,
        picked_up: phase != Phase::Pending,
        replace: false,
        node: None,
        batch: (phase != Phase::Pending).then_some(0),
        phase_since_ms: NOW - MIN,
        not_before_ms: None,
        estimated_ms: 0,
    }
}

fn pending(n: usize) -> Vec<JobFacts<'static>> {
    (0..n).map(|i| job(i, Phase::Pending)).collect()
}

struct Wave {
    policy: WavePolicy,
    plan: Option<PlanPolicy>,
    state: WaveState,
    max_in_flight: u32,
    batch: BatchProgress,
    paused: PauseClock,
    total: u32,
}

impl Wave {
    fn new(total: u32, max_in_flight: u32) -> Wave {
        Wave {
            policy: WavePolicy::default(),
            plan: None,
            state: WaveState::Running,
            max_in_flight,
            batch: BatchProgress::default(),
            paused: PauseClock::default(),
            total,
        }
    }

    fn facts(&self) -> WaveFacts<'_> {
        WaveFacts {
            name: "w",
            plan: "p",
            policy: &self.policy,
            plan_policy: self.plan.as_ref(),
            state: self.state,
            max_in_flight: self.max_in_flight,
            batch: &self.batch,
            paused: &self.paused,
            total_jobs: self.total,
        }
    }

    /// Decides with a load made of these jobs only.
    fn decide<'a>(&self, jobs: &[JobFacts<'a>], now: i64) -> (Decision<'a>, Load) {
        self.decide_with(jobs, BatchStats::default(), now)
    }

    fn decide_with<'a>(
        &self,
        jobs: &[JobFacts<'a>],
        stats: BatchStats,
        now: i64,
    ) -> (Decision<'a>, Load) {
        let facts = self.facts();
        let mut load = Load::default();
        load.add_wave("p", self.total);
        for job in jobs {
            load.add_job(&facts, job);
        }
        let decision = decide_list(&facts, jobs, &|_| stats, &mut load, now);
        (decision, load)
    }
}

fn admitted<'a>(decision: &Decision<'a>) -> Vec<&'a str> {
    decision.admit.iter().map(|a| a.id).collect()
}

#[test]
fn a_sliding_window_admits_in_order_up_to_max_in_flight() {
    let wave = Wave::new(10, 3);
    let mut jobs = pending(10);
    jobs[0] = job(0, Phase::Capturing);
    let (decision, load) = wave.decide(&jobs, NOW);
    assert_eq!(admitted(&decision), ["j1", "j2"]);
    assert!(decision.admit.iter().all(|a| a.batch == 0));
    assert_eq!(load.global, 3);
    assert_eq!(load.site("paris"), 3);
    assert!(
        decision
            .wave_waiting
            .as_deref()
            .unwrap()
            .contains("max_in_flight of 3")
    );
    // Not lockstep: one job finishing frees one slot at once.
    jobs[1] = job(1, Phase::Done);
    jobs[2] = job(2, Phase::Capturing);
    jobs[0] = job(0, Phase::Restoring);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(admitted(&decision), ["j3"]);
}

#[test]
fn a_ramp_admits_batch_by_batch() {
    let mut wave = Wave::new(10, 10);
    wave.policy.batches = Batches::Ramp(vec![
        BatchSize::Count(1),
        BatchSize::Count(2),
        BatchSize::Percent(100),
    ]);
    let mut jobs = pending(10);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(admitted(&decision), ["j0"]);
    assert!(decision.wave_waiting.unwrap().contains("batch 1"));

    // Batch 1's job still running: batch 2 does not open.
    jobs[0] = job(0, Phase::Capturing);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.admit.is_empty() && decision.batch.is_none());

    // Over: batch 2 opens and admits two, in the same pass.
    jobs[0] = job(0, Phase::Done);
    let (decision, _) = wave.decide(&jobs, NOW);
    let change = decision.batch.as_ref().expect("the next batch opens");
    assert_eq!(change.progress.index, 1);
    assert_eq!(change.progress.opened_ms, NOW);
    assert_eq!(admitted(&decision), ["j1", "j2"]);
    assert!(decision.admit.iter().all(|a| a.batch == 1));

    // Batch 3 is everything left.
    wave.batch.index = 1;
    jobs[1] = job(1, Phase::Done);
    jobs[2] = job(2, Phase::Failed);
    jobs[1].batch = Some(1);
    jobs[2].batch = Some(1);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(decision.batch.as_ref().unwrap().progress.index, 2);
    assert_eq!(decision.admit.len(), 7);
}

#[test]
fn manual_advance_waits_for_a_promotion() {
    let mut wave = Wave::new(4, 4);
    wave.policy.batches = Batches::Each(BatchSize::Count(2));
    wave.policy.success.advance = Advance::Manual;
    let mut jobs = pending(4);
    jobs[0] = job(0, Phase::Done);
    jobs[1] = job(1, Phase::Done);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.admit.is_empty());
    assert!(
        decision
            .wave_waiting
            .unwrap()
            .contains("batch 2 waits for `fleetmig wave promote w`")
    );
    wave.batch.promoted = true;
    let (decision, _) = wave.decide(&jobs, NOW);
    let change = decision.batch.clone().unwrap();
    assert_eq!(
        (change.progress.index, change.progress.promoted),
        (1, false)
    );
    assert_eq!(admitted(&decision), ["j2", "j3"]);

    // A promotion of the last batch is used up and opens nothing.
    wave.batch.index = 1;
    let (decision, _) = wave.decide(&pending(4)[2..], NOW);
    let change = decision.batch.unwrap();
    assert_eq!(
        (change.progress.index, change.progress.promoted),
        (1, false)
    );
}

#[test]
fn a_promotion_opens_the_next_batch_past_unmet_criteria() {
    let mut wave = Wave::new(4, 4);
    wave.policy.batches = Batches::Each(BatchSize::Count(2));
    wave.policy.success.min_success_percent = 100;
    let mut jobs = pending(4);
    jobs[0] = job(0, Phase::Done);
    jobs[1] = job(1, Phase::Failed);
    let stats = BatchStats {
        jobs: 2,
        done: 1,
        last_finished_ms: Some(NOW - MIN),
    };
    let (decision, _) = wave.decide_with(&jobs, stats, NOW);
    assert!(decision.admit.is_empty());
    assert!(
        decision
            .wave_waiting
            .unwrap()
            .contains("1 of 2 succeeded (50%), 100% required")
    );
    wave.batch.promoted = true;
    let (decision, _) = wave.decide_with(&jobs, stats, NOW);
    assert_eq!(decision.admit.len(), 2);
}

#[test]
fn success_criteria_and_bake_time_gate_the_next_batch() {
    let mut wave = Wave::new(4, 4);
    wave.policy.batches = Batches::Each(BatchSize::Count(2));
    wave.policy.success = SuccessCriteria {
        min_success_percent: 50,
        bake_ms: 30 * MIN as u64,
        advance: Advance::Auto,
    };
    let mut jobs = pending(4);
    jobs[0] = job(0, Phase::Done);
    jobs[1] = job(1, Phase::Failed);
    let stats = BatchStats {
        jobs: 2,
        done: 1,
        last_finished_ms: Some(NOW - 10 * MIN),
    };
    let (decision, _) = wave.decide_with(&jobs, stats, NOW);
    assert!(decision.admit.is_empty() && decision.batch.is_none());
    assert!(decision.wave_waiting.unwrap().contains("bakes until"));
    let (decision, _) = wave.decide_with(&jobs, stats, NOW + 20 * MIN);
    assert_eq!(decision.batch.unwrap().progress.index, 1);
    assert_eq!(decision.admit.len(), 2);
}

#[test]
fn in_flight_jobs_count_against_the_budget_so_it_is_never_overshot() {
    let mut wave = Wave::new(10, 10);
    wave.policy.error_budget = Some(Budget::Count(1));
    // T = 1: at most T + 1 = 2 may be failed or in flight at once.
    let jobs = pending(10);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(decision.admit.len(), 2);
    assert!(
        decision
            .wave_waiting
            .unwrap()
            .contains("cannot be overshot")
    );

    let mut jobs = pending(10);
    jobs[0] = job(0, Phase::Failed);
    jobs[1] = job(1, Phase::Capturing);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.admit.is_empty() && decision.halt.is_none());

    jobs[1] = job(1, Phase::Done);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(admitted(&decision), ["j2"], "one failed, one may fly");

    jobs[1] = job(1, Phase::Failed);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.admit.is_empty());
    assert_eq!(
        decision.halt.as_deref(),
        Some("wave error budget exhausted: 2 failures, 1 tolerated")
    );
}

#[test]
fn unreachable_machines_count_as_failures() {
    let mut wave = Wave::new(10, 10);
    wave.policy.error_budget = Some(Budget::Percent(10));
    let mut jobs = pending(10);
    jobs[0] = job(0, Phase::Failed);
    jobs[1] = job(1, Phase::Capturing);
    jobs[1].lost = true;
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(
        decision.halt.as_deref(),
        Some("wave error budget exhausted: 2 failures (1 failed, 1 unreachable), 1 tolerated")
    );
}

#[test]
fn a_failure_superseded_by_a_retry_wave_no_longer_counts() {
    let mut wave = Wave::new(4, 4);
    wave.policy.error_budget = Some(Budget::Count(0));
    let mut jobs = pending(4);
    jobs[0] = job(0, Phase::Failed);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.halt.is_some());
    jobs[0].superseded = true;
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.halt.is_none());
    assert_eq!(decision.admit.len(), 1, "T = 0 admits one at a time");
}

#[test]
fn the_plan_budget_spans_waves() {
    let mut wave = Wave::new(4, 4);
    wave.plan = Some(PlanPolicy {
        error_budget: Some(Budget::Count(2)),
        max_in_flight: None,
    });
    let facts = wave.facts();
    let jobs = pending(4);
    // Another wave of the plan has 2 failures and 1 job in flight.
    let mut load = Load::default();
    load.plans.insert(
        "p".into(),
        PlanLoad {
            jobs: 20,
            failed: 2,
            lost: 0,
            in_flight: 0,
        },
    );
    load.enter_flight("p", "lyon", None);
    let decision = decide_list(&facts, &jobs, &|_| BatchStats::default(), &mut load, NOW);
    assert!(decision.admit.is_empty(), "2 failed + 1 in flight = T + 1");
    assert!(
        decision
            .wave_waiting
            .unwrap()
            .contains("plan p error budget")
    );
    load.plan_mut("p").failed = 3;
    let decision = decide_list(&facts, &jobs, &|_| BatchStats::default(), &mut load, NOW);
    assert_eq!(
        decision.halt.as_deref(),
        Some("plan p error budget exhausted: 3 failures, 2 tolerated")
    );
}

#[test]
fn site_and_global_caps_hold_across_waves() {
    let mut wave = Wave::new(6, 10);
    wave.policy.caps = Caps {
        per_site: Some(2),
        per_storage_node: None,
    };
    wave.plan = Some(PlanPolicy {
        error_budget: None,
        max_in_flight: Some(4),
    });
    let facts = wave.facts();
    let mut jobs = pending(6);
    for job in &mut jobs[3..] {
        job.site = "lyon";
    }
    let mut load = Load::default();
    load.enter_flight("other-plan", "paris", None);
    let decision = decide_list(&facts, &jobs, &|_| BatchStats::default(), &mut load, NOW);
    // Paris has one elsewhere: one more; Lyon two; the global cap of 4 stops there.
    assert_eq!(admitted(&decision), ["j0", "j3", "j4"]);
    assert_eq!(load.global, 4);
    assert_eq!((load.site("paris"), load.site("lyon")), (2, 2));
    let reasons: Vec<_> = decision
        .waiting
        .iter()
        .map(|(id, r)| (*id, r.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("j1", "site \"paris\" has 2 jobs in flight, its cap"),
            ("j2", "site \"paris\" has 2 jobs in flight, its cap"),
        ]
    );
    assert!(
        decision
            .wave_waiting
            .unwrap()
            .contains("controller-wide cap of 4")
    );
}

fn paris_nights() -> MaintenanceWindow {
    MaintenanceWindow {
        times: WindowTimes::Weekly {
            days: vec![0, 1, 2, 3, 4, 5, 6],
            start_minute: 20 * 60,
            end_minute: 6 * 60,
        },
        time_zone: "Europe/Paris".into(),
        sites: vec!["paris".into()],
        labels: BTreeMap::new(),
    }
}

fn paris(local: &str) -> i64 {
    local
        .parse::<jiff::civil::DateTime>()
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Paris").unwrap())
        .unwrap()
        .timestamp()
        .as_millisecond()
}

#[test]
fn a_job_starts_only_when_its_estimated_duration_fits_a_window() {
    let mut wave = Wave::new(3, 3);
    wave.policy.windows = vec![paris_nights()];
    let mut jobs = pending(3);
    for job in &mut jobs {
        job.estimated_ms = 2 * 3600 * 1000;
    }
    jobs[2].site = "lyon";
    let noon = paris("2026-12-01T12:00");
    let (decision, _) = wave.decide(&jobs, noon);
    assert_eq!(admitted(&decision), ["j2"], "Lyon has no window");
    assert_eq!(
        decision.waiting[0],
        (
            "j0",
            "outside its maintenance window until 2026-12-01 20:00 Europe/Paris".to_string()
        )
    );
    // At 04:30 two hours no longer fit before 06:00.
    let (decision, _) = wave.decide(&jobs[..2], paris("2026-12-02T04:30"));
    assert!(decision.admit.is_empty());
    assert!(decision.waiting[0].1.contains("until 2026-12-02 20:00"));
    let (decision, _) = wave.decide(&jobs[..2], paris("2026-12-01T21:00"));
    assert_eq!(admitted(&decision), ["j0", "j1"]);
}

#[test]
fn deadlines_fail_jobs_retryably_but_only_flag_a_reimage() {
    let mut wave = Wave::new(3, 3);
    wave.policy.deadlines = Deadlines {
        assigned_ms: Some(10 * MIN as u64),
        capturing_ms: None,
        restoring_ms: Some(60 * MIN as u64),
        verifying_ms: None,
    };
    let mut jobs = vec![
        job(0, Phase::Assigned),
        job(1, Phase::Reimaging),
        job(2, Phase::Capturing),
    ];
    jobs[0].picked_up = false;
    jobs[0].attempt = 0;
    jobs[0].phase_since_ms = NOW - 11 * MIN;
    jobs[1].phase_since_ms = NOW - 61 * MIN;
    jobs[2].phase_since_ms = NOW - 600 * MIN;
    let (decision, load) = wave.decide(&jobs, NOW);
    assert_eq!(decision.expire.len(), 2);
    let assigned = &decision.expire[0];
    assert_eq!((assigned.id, assigned.fail), ("j0", true));
    assert!(assigned.count_attempt, "nobody picked it up");
    assert!(
        assigned
            .reason
            .contains("assigned for 11 min (deadline 10 min)")
    );
    let reimaging = &decision.expire[1];
    assert_eq!((reimaging.id, reimaging.fail), ("j1", false));
    assert!(reimaging.reason.contains("never failed mid-reimage"));
    assert_eq!(load.global, 2, "the failed job left flight");
    // It failed for good (one attempt allowed): it counts for the plan.
    assert_eq!(load.plan("p").failed, 1);
}

#[test]
fn paused_time_does_not_count_toward_deadlines() {
    let mut wave = Wave::new(1, 1);
    wave.policy.deadlines.capturing_ms = Some(10 * MIN as u64);
    let mut jobs = vec![job(0, Phase::Capturing)];
    jobs[0].phase_since_ms = NOW - 15 * MIN;
    wave.paused = PauseClock {
        total_ms: 0,
        since_ms: Some(NOW - 14 * MIN),
    };
    wave.state = WaveState::Paused;
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.expire.is_empty(), "frozen while paused");
    // A pause left open on a wave halted meanwhile does not freeze it for good.
    wave.state = WaveState::Halted;
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(decision.expire.len(), 1);
    wave.state = WaveState::Running;
    wave.paused = PauseClock {
        total_ms: 14 * MIN as u64,
        since_ms: None,
    };
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(
        decision.expire.is_empty(),
        "1 min of capture outside the pause"
    );
    let (decision, _) = wave.decide(&jobs, NOW + 10 * MIN);
    assert_eq!(decision.expire.len(), 1);
}

#[test]
fn retryable_failures_come_back_after_a_backoff_while_attempts_remain() {
    let mut wave = Wave::new(2, 2);
    wave.policy.retries = Retries {
        max_attempts: 3,
        backoff_ms: 60_000,
        max_backoff_ms: 600_000,
    };
    wave.policy.error_budget = Some(Budget::Count(0));
    let mut jobs = vec![job(0, Phase::Failed), job(1, Phase::Failed)];
    jobs[0].failure = Some(FailureFacts {
        phase: Phase::Capturing,
        retryable: true,
    });
    jobs[0].attempt = 2;
    jobs[1].failure = Some(FailureFacts {
        phase: Phase::Restoring,
        retryable: true,
    });
    jobs[1].superseded = true;
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(
        decision.retry.len(),
        1,
        "a failure after the seal is not retried"
    );
    let retry = &decision.retry[0];
    assert_eq!(retry.id, "j0");
    assert_eq!(retry.not_before_ms, NOW + 120_000);
    assert!(retry.reason.contains("attempt 3 of 3"));
    assert!(
        decision.halt.is_none(),
        "a failure being retried is not counted"
    );
    assert!(decision.admit.is_empty(), "not in the pass that retries it");
    assert!(!decision.complete);

    // Back to pending, waiting out its backoff.
    jobs[0].phase = Phase::Pending;
    jobs[0].failure = None;
    jobs[0].not_before_ms = Some(NOW + 120_000);
    let (decision, _) = wave.decide(&jobs, NOW + 60_000);
    assert!(decision.admit.is_empty());
    assert!(decision.waiting[0].1.starts_with("retry backoff until"));
    let (decision, _) = wave.decide(&jobs, NOW + 120_000);
    assert_eq!(decision.admit, [Admission { id: "j0", batch: 0 }]);

    // Out of attempts: it fails for good and counts.
    jobs[0] = job(0, Phase::Failed);
    jobs[0].failure = Some(FailureFacts {
        phase: Phase::Capturing,
        retryable: true,
    });
    jobs[0].attempt = 3;
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.retry.is_empty());
    assert!(decision.halt.is_some());
}

#[test]
fn a_retried_job_is_readmitted_past_a_full_batch() {
    let mut wave = Wave::new(4, 4);
    wave.policy.batches = Batches::Each(BatchSize::Count(2));
    let mut jobs = pending(4);
    jobs[0] = job(0, Phase::Capturing);
    jobs[1].batch = Some(0);
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(decision.admit, [Admission { id: "j1", batch: 0 }]);
}

#[test]
fn a_wave_completes_when_every_job_is_over() {
    let wave = Wave::new(3, 3);
    let jobs = vec![
        job(0, Phase::Done),
        job(1, Phase::Failed),
        job(2, Phase::Skipped),
    ];
    let (decision, _) = wave.decide(&jobs, NOW);
    assert!(decision.complete);
    let (decision, _) = wave.decide(&[], NOW);
    assert!(decision.complete, "done jobs may be left out");
}

#[test]
fn an_aborted_wave_skips_its_pending_jobs_with_a_reason() {
    let mut wave = Wave::new(3, 3);
    wave.state = WaveState::Aborted;
    let jobs = vec![job(0, Phase::Pending), job(1, Phase::Capturing)];
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(decision.skip.len(), 1);
    assert_eq!(decision.skip[0].id, "j0");
    assert!(decision.admit.is_empty() && !decision.complete);
}

#[test]
fn halted_paused_and_created_waves_admit_nothing() {
    for state in [WaveState::Halted, WaveState::Paused, WaveState::Created] {
        let mut wave = Wave::new(3, 3);
        wave.state = state;
        let (decision, _) = wave.decide(&pending(3), NOW);
        assert!(decision.admit.is_empty(), "{state:?}");
        assert!(decision.halt.is_none() && !decision.complete, "{state:?}");
    }
}

#[test]
fn the_queue_is_read_only_as_far_as_admissions_go() {
    let wave = Wave::new(1000, 2);
    let facts = wave.facts();
    let queue = pending(12);
    let mut read = 0;
    let mut queued = queue.iter().copied().inspect(|_| read += 1);
    let jobs = WaveJobs {
        active: &[],
        queued: &mut queued,
        queued_count: 1000,
    };
    let mut load = Load::default();
    let decision = decide(&facts, jobs, &|_| BatchStats::default(), &mut load, NOW);
    assert_eq!(admitted(&decision), ["j0", "j1"]);
    drop(queued);
    assert_eq!(read, 3, "two admitted, one more to find the window full");
    assert!(!decision.complete, "the rest of the queue is still to run");
}

#[test]
fn a_failure_with_a_retry_left_never_counts_even_when_the_wave_halts() {
    let mut wave = Wave::new(4, 4);
    wave.policy.error_budget = Some(Budget::Count(0));
    wave.policy.retries.max_attempts = 2;
    let mut jobs = pending(4);
    jobs[0] = job(0, Phase::Failed);
    jobs[0].failure = Some(FailureFacts {
        phase: Phase::Capturing,
        retryable: true,
    });
    jobs[1] = job(1, Phase::Capturing);
    jobs[1].lost = true;
    // The unreachable machine halts the wave; the retry still goes ahead.
    let (decision, load) = wave.decide(&jobs, NOW);
    assert_eq!(
        decision.halt.as_deref(),
        Some("wave error budget exhausted: 1 failures (0 failed, 1 unreachable), 0 tolerated")
    );
    assert_eq!(decision.retry.len(), 1);
    assert_eq!(load.plan("p").failed, 0);
    // A halted wave keeps retrying (the job then waits, pending).
    wave.state = WaveState::Halted;
    let (decision, _) = wave.decide(&jobs, NOW);
    assert_eq!(decision.retry.len(), 1);
    assert!(decision.admit.is_empty());
    // An aborted wave retries nothing, and the failure still does not count.
    wave.state = WaveState::Aborted;
    let (decision, load) = wave.decide(&jobs, NOW);
    assert!(decision.retry.is_empty());
    assert_eq!(load.plan("p").failed, 0);
}
