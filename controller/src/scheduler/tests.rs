//! The scheduler through the real controller and embedded store, without
//! a network: plans applied and waves started as an operator would,
//! workers played by check-ins and reports, restarts by reopening the store.

use crate::controller::{Controller, ControllerSettings};
use crate::lifecycle::Report;
use crate::model::{
    CaptureSummary, Failure, Inventory, Job, Phase, Profile, RestoreSummary, Wave, WaveState,
};
use crate::store::EmbeddedStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn open(dir: &Path) -> Controller {
    let store = Arc::new(EmbeddedStore::open(dir).unwrap());
    let settings = ControllerSettings {
        scheduler_tick: Duration::from_millis(50),
        ..ControllerSettings::default()
    };
    Controller::open(store, settings).await.unwrap()
}

fn inventory(hostname: &str, site: &str) -> Inventory {
    Inventory {
        hostname: hostname.into(),
        os_family: "windows-xp".into(),
        site: site.into(),
        supports_hard_links: true,
        free_bytes: 100 << 30,
        total_bytes: 200 << 30,
        profiles: vec![Profile {
            name: "alice".into(),
            bytes: 1 << 20,
            files: 10,
            last_used_unix: 0,
        }],
        ..Inventory::default()
    }
}

/// Enrolls `n` machines named `PC-00`.. alternating between `sites`.
async fn enroll(controller: &Controller, n: usize, sites: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let site = sites[i % sites.len()];
        ids.push(
            controller
                .enroll("", inventory(&format!("PC-{i:02}"), site))
                .await
                .unwrap(),
        );
    }
    ids
}

fn plan(wave_keys: &str) -> String {
    format!(
        "version = 1\nname = \"p\"\n[[waves]]\nname = \"w\"\nscenario = \"refresh\"\n{wave_keys}\n[waves.select]\nall = true\n"
    )
}

fn wave(controller: &Controller) -> Wave {
    controller.registry().waves["w"].value.clone()
}

fn jobs_in(controller: &Controller, phase: Phase) -> Vec<Job> {
    controller
        .registry()
        .jobs_of_wave("w")
        .filter(|job| job.value.phase == phase)
        .map(|job| job.value.clone())
        .collect()
}

/// Plays the worker of `job`: picks it up, then runs it to `Done`, or
/// fails it during its capture.
async fn work(controller: &Controller, job: &Job, fail: bool) {
    let session = format!("session-{}", job.machine_id);
    let assigned = controller
        .check_in(&job.machine_id, &session, "")
        .await
        .unwrap()
        .assignment
        .expect("an admitted job is handed to its machine");
    let (machine, id, fence) = (&job.machine_id, &job.id, assigned.fence);
    let report = |report| controller.report(machine, id, fence, report);
    report(Report::Entered(Phase::Capturing)).await.unwrap();
    if fail {
        let failure = Failure {
            phase: Phase::Capturing,
            reason: "unreadable file".into(),
            retryable: false,
        };
        report(Report::Failed(failure)).await.unwrap();
        return;
    }
    let summary = CaptureSummary {
        files: 1,
        manifest_digest: "digest".into(),
        ..CaptureSummary::default()
    };
    report(Report::Captured(summary)).await.unwrap();
    for phase in [Phase::Reimaging, Phase::Restoring, Phase::Verifying] {
        report(Report::Entered(phase)).await.unwrap();
    }
    report(Report::Done(RestoreSummary::default()))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn admission_follows_the_ramp_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path()).await;
    enroll(&controller, 10, &["hq"]).await;
    let applied = controller
        .apply_plan(
            &plan("max_in_flight = 10\nbatch = [1, 2, \"100%\"]"),
            "p.toml",
            "test",
        )
        .await
        .unwrap();
    assert_eq!(applied.waves[0].policy.batches.size_of(1, 10), 2);
    controller.start_wave("w", "test").await.unwrap();

    assert_eq!(
        controller.schedule_once().await.unwrap(),
        1,
        "batch 1 is one machine"
    );
    assert_eq!(
        controller.schedule_once().await.unwrap(),
        0,
        "batch 2 waits for batch 1"
    );
    let waiting = controller.registry().wave_waiting.get("w").cloned();
    assert!(waiting.unwrap().contains("batch 1"), "the wait is visible");
    let first = jobs_in(&controller, Phase::Assigned).remove(0);
    assert_eq!(first.batch, Some(0));
    work(&controller, &first, false).await;

    assert_eq!(
        controller.schedule_once().await.unwrap(),
        2,
        "batch 2 is two machines"
    );
    assert_eq!(wave(&controller).batch.index, 1);
    let second = jobs_in(&controller, Phase::Assigned);
    assert!(second.iter().all(|job| job.batch == Some(1)));

    // A restarted controller resumes batch 2 from the store: no more admissions.
    drop(controller);
    let controller = open(dir.path()).await;
    assert_eq!(wave(&controller).batch.index, 1);
    assert_eq!(controller.schedule_once().await.unwrap(), 0);
    assert_eq!(jobs_in(&controller, Phase::Assigned).len(), 2);

    for job in &second {
        work(&controller, job, false).await;
    }
    assert_eq!(
        controller.schedule_once().await.unwrap(),
        7,
        "the rest of the wave"
    );
    assert_eq!(wave(&controller).batch.index, 2);
    for job in jobs_in(&controller, Phase::Assigned) {
        work(&controller, &job, false).await;
    }
    controller.schedule_once().await.unwrap();
    assert_eq!(wave(&controller).state, WaveState::Completed);
    let events = controller.audit_log(Some("w")).await.unwrap();
    let batches: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "wave.batch")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert!(batches[0].starts_with("batch 2 opened"), "{batches:?}");
}

/// Waits for `count` audit events matching `matches`. (No timeout: in
/// paused time one would fire while the store's writer thread works.)
async fn events(
    rx: &mut tokio::sync::broadcast::Receiver<crate::model::AuditEvent>,
    count: usize,
    matches: impl Fn(&crate::model::AuditEvent) -> bool,
) {
    let mut seen = 0;
    while seen < count {
        let event = rx.recv().await.unwrap();
        seen += usize::from(matches(&event));
    }
}

#[tokio::test(start_paused = true)]
async fn a_budget_halt_stops_admissions_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path()).await;
    enroll(&controller, 8, &["hq"]).await;
    controller
        .apply_plan(
            &plan("max_in_flight = 8\nerror_budget = 1"),
            "p.toml",
            "test",
        )
        .await
        .unwrap();
    controller.start_wave("w", "test").await.unwrap();
    let mut rx = controller.subscribe();
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(controller.clone().run_scheduler(shutdown.clone()));

    // One failure tolerated: at most two jobs failed or in flight at once.
    events(&mut rx, 2, |e| e.detail.starts_with("pending -> assigned")).await;
    // Many more passes (the tick is 50 ms) admit nothing more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        jobs_in(&controller, Phase::Assigned).len(),
        2,
        "no overshoot"
    );
    for job in jobs_in(&controller, Phase::Assigned) {
        work(&controller, &job, true).await;
    }
    events(&mut rx, 1, |e| e.kind == "wave.halted").await;
    let halted = wave(&controller);
    assert_eq!(
        halted.halt_reason.as_deref(),
        Some("wave error budget exhausted: 2 failures, 1 tolerated")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        jobs_in(&controller, Phase::Pending).len(),
        6,
        "nothing new starts"
    );
    shutdown.cancel();
    scheduler.await.unwrap();

    // After a restart the wave is still halted and still admits nothing.
    drop(controller);
    let controller = open(dir.path()).await;
    assert_eq!(wave(&controller), halted);
    assert_eq!(controller.schedule_once().await.unwrap(), 0);
    assert_eq!(jobs_in(&controller, Phase::Pending).len(), 6);
    let kinds: Vec<String> = controller
        .audit_log(Some("w"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "wave.halted").count(), 1);
}

#[tokio::test(start_paused = true)]
async fn site_caps_hold_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path()).await;
    enroll(&controller, 6, &["paris", "lyon"]).await;
    controller
        .apply_plan(
            &plan("max_in_flight = 6\nmax_in_flight_per_site = 2"),
            "p.toml",
            "test",
        )
        .await
        .unwrap();
    controller.start_wave("w", "test").await.unwrap();
    assert_eq!(controller.schedule_once().await.unwrap(), 4);
    let pending = jobs_in(&controller, Phase::Pending);
    let reason = controller.registry().waiting.get(&pending[0].id).cloned();
    assert!(reason.unwrap().contains("its cap"));
    drop(controller);
    let controller = open(dir.path()).await;
    assert_eq!(controller.schedule_once().await.unwrap(), 0);
    assert_eq!(jobs_in(&controller, Phase::Assigned).len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_missed_deadline_fails_the_job_and_a_retry_readmits_it() {
    let dir = tempfile::tempdir().unwrap();
    let controller = open(dir.path()).await;
    enroll(&controller, 1, &["hq"]).await;
    controller
        .apply_plan(
            &plan(
                "[waves.deadlines]\nassigned = \"10m\"\n[waves.retries]\nmax_attempts = 2\nbackoff = \"1m\"\nmax_backoff = \"5m\"",
            ),
            "p.toml",
            "test",
        )
        .await
        .unwrap();
    controller.start_wave("w", "test").await.unwrap();
    let t0 = crate::model::now_ms();
    let minute = 60_000;
    let pass = |at: i64| controller.schedule_pass_at(at);
    assert_eq!(pass(t0).await.unwrap().admitted, 1);
    // Nobody picks it up: past ten minutes it fails, retryably.
    pass(t0 + 9 * minute).await.unwrap();
    assert_eq!(jobs_in(&controller, Phase::Assigned).len(), 1);
    pass(t0 + 11 * minute).await.unwrap();
    let failed = jobs_in(&controller, Phase::Failed).remove(0);
    assert!(failed.failure.as_ref().unwrap().retryable);
    assert_eq!(failed.attempt, 1, "the unclaimed attempt counts");
    // The next pass retries it after a minute's backoff.
    pass(t0 + 11 * minute).await.unwrap();
    let retried = jobs_in(&controller, Phase::Pending).remove(0);
    assert_eq!(retried.not_before_ms, Some(t0 + 12 * minute));
    assert_eq!(retried.batch, Some(0), "it keeps its batch");
    assert_eq!(pass(t0 + 11 * minute + 30_000).await.unwrap().admitted, 0);
    assert_eq!(pass(t0 + 12 * minute).await.unwrap().admitted, 1);
    // The second attempt runs to the end.
    let job = jobs_in(&controller, Phase::Assigned).remove(0);
    work(&controller, &job, false).await;
    pass(t0 + 20 * minute).await.unwrap();
    assert_eq!(wave(&controller).state, WaveState::Completed);
    let kinds: Vec<String> = controller
        .audit_log(Some("w"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"job.deadline".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"job.retry".to_string()), "{kinds:?}");
}
