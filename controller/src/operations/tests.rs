//! Operator controls against a real controller on the embedded store, with
//! workers simulated by direct calls: retry-failed, promote, the pause
//! clock, abort's safe points, and the storage-node view.

use super::*;
use crate::controller::ControllerSettings;
use crate::lifecycle::Report;
use crate::model::{CaptureSummary, Failure, Inventory, Placement, Profile, RestoreSummary};
use crate::nodes::{Capacity, StorageNode};
use crate::policy::{BatchSize, Batches, Budget};
use crate::store::EmbeddedStore;
use std::sync::Arc;

const ACTOR: &str = "operator:alice";

struct Fleet {
    controller: Controller,
    /// Machine ids by hostname.
    ids: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

fn inventory(hostname: &str) -> Inventory {
    Inventory {
        hostname: hostname.into(),
        site: "hq".into(),
        profiles: vec![Profile {
            name: "alice".into(),
            bytes: 1 << 20,
            files: 10,
            last_used_unix: 0,
        }],
        ..Inventory::default()
    }
}

/// A controller with `hostnames` enrolled (no scheduler runs: tests admit
/// jobs themselves).
async fn fleet(hostnames: &[&str]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let controller = Controller::open(store, ControllerSettings::default())
        .await
        .unwrap();
    let mut ids = BTreeMap::new();
    for hostname in hostnames {
        let id = controller.enroll("", inventory(hostname)).await.unwrap();
        ids.insert(hostname.to_string(), id);
    }
    Fleet {
        controller,
        ids,
        _dir: dir,
    }
}

fn refresh_plan(wave: &str, hostnames: &[&str]) -> String {
    let names: Vec<String> = hostnames.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "version = 1\nname = \"p\"\n\n[[waves]]\nname = {wave:?}\nscenario = \"refresh\"\n\
         max_in_flight = 10\n[waves.select]\nhostnames = [{}]\n",
        names.join(", ")
    )
}

impl Fleet {
    fn id(&self, hostname: &str) -> &str {
        &self.ids[hostname]
    }

    fn job_id(&self, wave: &str, hostname: &str) -> String {
        Job::id_for(wave, self.id(hostname))
    }

    fn job(&self, wave: &str, hostname: &str) -> Job {
        let id = self.job_id(wave, hostname);
        self.controller.registry().jobs[&id].value.clone()
    }

    fn wave(&self, name: &str) -> Wave {
        self.controller.registry().waves[name].value.clone()
    }

    /// Applies a refresh plan of one wave over `hostnames` and starts it.
    async fn start_refresh(&self, wave: &str, hostnames: &[&str]) {
        self.controller
            .apply_plan(&refresh_plan(wave, hostnames), "p.toml", ACTOR)
            .await
            .unwrap();
        self.controller.start_wave(wave, ACTOR).await.unwrap();
    }

    /// Stands in for the scheduler: the job goes to `Assigned`.
    async fn admit(&self, job_id: &str) {
        self.controller
            .update_job(job_id, |job| {
                let mut next = job.clone();
                next.phase = Phase::Assigned;
                Ok(Some((next, vec![])))
            })
            .await
            .unwrap();
    }

    /// Admits the job and has its worker pick it up; returns the fence.
    async fn pick_up(&self, wave: &str, hostname: &str) -> u64 {
        let job_id = self.job_id(wave, hostname);
        self.admit(&job_id).await;
        let reply = self
            .controller
            .check_in(self.id(hostname), &format!("session-{hostname}"), "")
            .await
            .unwrap();
        reply.assignment.expect("the job is handed out").fence
    }

    async fn report(
        &self,
        wave: &str,
        hostname: &str,
        fence: u64,
        report: Report,
    ) -> crate::Result<Phase> {
        self.controller
            .report(
                self.id(hostname),
                &self.job_id(wave, hostname),
                fence,
                report,
            )
            .await
    }

    /// Picks the job up and walks it to `phase` (capturing, captured or
    /// reimaging); returns the fence.
    async fn run_to(&self, wave: &str, hostname: &str, phase: Phase) -> u64 {
        let fence = self.pick_up(wave, hostname).await;
        let steps = [
            Report::Entered(Phase::Capturing),
            Report::Captured(capture(hostname)),
            Report::Entered(Phase::Reimaging),
        ];
        for step in steps {
            let reached = step.phase();
            self.report(wave, hostname, fence, step).await.unwrap();
            if reached == phase {
                return fence;
            }
        }
        panic!("run_to does not go to {phase:?}");
    }

    async fn events(&self, wave: &str) -> Vec<AuditEvent> {
        self.controller.audit_log(Some(wave)).await.unwrap()
    }
}

fn capture(hostname: &str) -> CaptureSummary {
    CaptureSummary {
        files: 10,
        bytes: 1 << 20,
        manifest_digest: "digest".into(),
        store_location: format!("{hostname}:/StateStore/job"),
        ..CaptureSummary::default()
    }
}

fn failure(phase: Phase, reason: &str) -> Report {
    Report::Failed(Failure {
        phase,
        reason: reason.into(),
        retryable: phase == Phase::Capturing,
    })
}

#[tokio::test]
async fn retry_failed_creates_a_wave_of_the_failed_machines_with_the_same_spec() {
    let fleet = fleet(&["PC-1", "PC-2", "PC-3", "PC-4"]).await;
    fleet
        .start_refresh("w", &["PC-1", "PC-2", "PC-3", "PC-4"])
        .await;
    // A policy on the wave, as a plan would state it.
    {
        let current = fleet.controller.wave("w").unwrap();
        let mut next = current.value.clone();
        next.spec.policy.error_budget = Some(Budget::Count(3));
        let event = operator_event(ACTOR, "test.policy", "w", String::new());
        fleet
            .controller
            .put_wave(&current, next, event)
            .await
            .unwrap();
    }
    // Nothing failed yet.
    assert!(matches!(
        fleet.controller.retry_failed("w", ACTOR, false).await,
        Err(Error::NothingToRetry { .. })
    ));

    // PC-1 fails its capture (retryable); PC-2 fails mid-reimage (its
    // state sits in its store: not a case for a new capture); PC-3 is done;
    // PC-4 fails too.
    let fence = fleet.run_to("w", "PC-1", Phase::Capturing).await;
    fleet
        .report("w", "PC-1", fence, failure(Phase::Capturing, "disk error"))
        .await
        .unwrap();
    let fence = fleet.run_to("w", "PC-2", Phase::Reimaging).await;
    fleet
        .report(
            "w",
            "PC-2",
            fence,
            failure(Phase::Reimaging, "hook exited 3"),
        )
        .await
        .unwrap();
    let fence = fleet.run_to("w", "PC-4", Phase::Capturing).await;
    fleet
        .report("w", "PC-4", fence, failure(Phase::Capturing, "disk error"))
        .await
        .unwrap();

    let retry = fleet
        .controller
        .retry_failed("w", ACTOR, false)
        .await
        .unwrap();
    assert_eq!(retry.wave.spec.name, "w-retry-1");
    assert_eq!(retry.wave.retry_of.as_deref(), Some("w"));
    assert_eq!(retry.wave.state, WaveState::Created);
    assert_eq!(retry.hostnames, ["PC-1", "PC-4"]);
    assert_eq!(retry.excluded.len(), 1);
    assert_eq!(retry.excluded[0].hostname, "PC-2");
    assert!(
        retry.excluded[0].reason.contains("PC-2:/StateStore/job"),
        "{}",
        retry.excluded[0].reason
    );
    let source = fleet.wave("w");
    assert_eq!(retry.wave.plan, source.plan);
    assert_eq!(retry.wave.spec.policy, source.spec.policy);
    assert_eq!(retry.wave.spec.scenario, source.spec.scenario);
    assert_eq!(retry.wave.spec.max_in_flight, source.spec.max_in_flight);
    assert_eq!(
        retry.wave.spec.select.ids,
        [fleet.id("PC-1").to_string(), fleet.id("PC-4").to_string()]
    );
    // The same machines are not queued twice while the retry waits.
    assert!(matches!(
        fleet.controller.retry_failed("w", ACTOR, false).await,
        Err(Error::NothingToRetry { .. })
    ));
    // Durable, with its audit trail on both waves.
    let kinds: Vec<String> = fleet
        .events("w")
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"wave.retry_failed".to_string()),
        "{kinds:?}"
    );
    let created = fleet.events("w-retry-1").await;
    assert_eq!(created[0].kind, "wave.create");
    assert_eq!(created[0].actor, ACTOR);

    // Starting it creates jobs for exactly those machines.
    fleet
        .controller
        .start_wave("w-retry-1", ACTOR)
        .await
        .unwrap();
    let status = fleet.controller.status(Some("w-retry-1")).unwrap();
    let mut hosts: Vec<&str> = status.jobs.iter().map(|j| j.hostname.as_str()).collect();
    hosts.sort();
    assert_eq!(hosts, ["PC-1", "PC-4"]);
    assert_eq!(status.waves[0].wave.machines, 2);

    // A retry of the retry: PC-1 fails again; the name stays rooted.
    let fence = fleet.run_to("w-retry-1", "PC-1", Phase::Capturing).await;
    fleet
        .report(
            "w-retry-1",
            "PC-1",
            fence,
            failure(Phase::Capturing, "disk error"),
        )
        .await
        .unwrap();
    let again = fleet
        .controller
        .retry_failed("w-retry-1", ACTOR, true)
        .await
        .unwrap();
    assert_eq!(again.wave.spec.name, "w-retry-2");
    assert_eq!(again.wave.retry_of.as_deref(), Some("w-retry-1"));
    assert_eq!(again.wave.state, WaveState::Running, "started at once");
    assert_eq!(fleet.job("w-retry-2", "PC-1").phase, Phase::Pending);
    // The first wave's PC-1 moved on.
    let err = fleet
        .controller
        .retry_failed("w", ACTOR, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("moved on to job"), "{err}");
}

#[tokio::test]
async fn retry_failed_of_a_replace_wave_keeps_the_pairs() {
    let fleet = fleet(&["XP-1", "XP-2", "W7-1", "W7-2"]).await;
    let plan = r#"version = 1
name = "p"
[[waves]]
name = "swap"
scenario = "replace"
pairs = [{ source = "XP-1", destination = "W7-1" }, { source = "XP-2", destination = "W7-2" }]
"#;
    fleet
        .controller
        .apply_plan(plan, "p.toml", ACTOR)
        .await
        .unwrap();
    fleet.controller.start_wave("swap", ACTOR).await.unwrap();
    let fence = fleet.pick_up("swap", "XP-2").await;
    fleet
        .report("swap", "XP-2", fence, Report::Entered(Phase::Capturing))
        .await
        .unwrap();
    fleet
        .report(
            "swap",
            "XP-2",
            fence,
            failure(Phase::Capturing, "node refused"),
        )
        .await
        .unwrap();
    let retry = fleet
        .controller
        .retry_failed("swap", ACTOR, true)
        .await
        .unwrap();
    assert_eq!(retry.hostnames, ["XP-2"]);
    assert_eq!(retry.wave.spec.pairs.len(), 1);
    assert_eq!(retry.wave.spec.pairs[0].source, "XP-2");
    assert_eq!(retry.wave.spec.pairs[0].destination, "W7-2");
    let job = fleet.job(&retry.wave.spec.name, "XP-2");
    assert_eq!(job.destination.unwrap().hostname, "W7-2");
}

#[tokio::test]
async fn promote_only_a_running_wave_once_per_batch() {
    let fleet = fleet(&["PC-1", "PC-2", "PC-3", "PC-4", "PC-5"]).await;
    fleet
        .start_refresh("w", &["PC-1", "PC-2", "PC-3", "PC-4", "PC-5"])
        .await;
    {
        let current = fleet.controller.wave("w").unwrap();
        let mut next = current.value.clone();
        next.spec.policy.batches = Batches::Each(BatchSize::Count(2));
        let event = operator_event(ACTOR, "test.policy", "w", String::new());
        fleet
            .controller
            .put_wave(&current, next, event)
            .await
            .unwrap();
    }
    let wave = fleet.controller.promote_wave("w", ACTOR).await.unwrap();
    assert!(wave.batch.promoted);
    assert!(fleet.wave("w").batch.promoted, "cached and stored");
    let promoted: Vec<AuditEvent> = fleet
        .events("w")
        .await
        .into_iter()
        .filter(|e| e.kind == "wave.promoted")
        .collect();
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0].actor, ACTOR);
    assert!(
        promoted[0].detail.contains("batch 1 of 3"),
        "{}",
        promoted[0].detail
    );
    // Again: nothing changes, nothing is logged.
    fleet.controller.promote_wave("w", ACTOR).await.unwrap();
    let count = fleet
        .events("w")
        .await
        .iter()
        .filter(|e| e.kind == "wave.promoted")
        .count();
    assert_eq!(count, 1);
    let view = &fleet.controller.status(Some("w")).unwrap().waves[0];
    assert_eq!(view.batch_count, Some(3));

    fleet.controller.pause_wave("w", ACTOR).await.unwrap();
    let err = fleet.controller.promote_wave("w", ACTOR).await.unwrap_err();
    assert!(matches!(err, Error::WaveState { .. }));
    assert!(
        err.to_string()
            .contains("only a running wave has a batch to promote"),
        "{err}"
    );
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(matches!(
        fleet.controller.promote_wave("nope", ACTOR).await,
        Err(Error::UnknownWave(_))
    ));
}

#[tokio::test]
async fn pause_freezes_the_clock_and_resume_adds_the_span() {
    let fleet = fleet(&["PC-1", "PC-2"]).await;
    fleet.start_refresh("w", &["PC-1", "PC-2"]).await;

    let paused = fleet.controller.pause_wave("w", ACTOR).await.unwrap();
    assert_eq!(paused.state, WaveState::Paused);
    let since = paused.paused.since_ms.expect("a pause in progress");
    assert_eq!(paused.paused.total_ms, 0);
    // Pausing again keeps the original start of the pause.
    let again = fleet.controller.pause_wave("w", ACTOR).await.unwrap();
    assert_eq!(again.paused.since_ms, Some(since));
    // Pending jobs say why they wait.
    let status = fleet.controller.status(Some("w")).unwrap();
    assert!(
        status
            .jobs
            .iter()
            .all(|j| j.waiting.as_deref() == Some("wave paused")),
        "{:?}",
        status.jobs
    );
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert!(fleet.controller.status(Some("w")).unwrap().waves[0].paused_ms >= 60);

    let resumed = fleet.controller.resume_wave("w", ACTOR).await.unwrap();
    assert_eq!(resumed.state, WaveState::Running);
    assert_eq!(resumed.paused.since_ms, None);
    let first = resumed.paused.total_ms;
    assert!(first >= 60, "paused for {first} ms");
    // Running: the clock no longer moves.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        fleet.controller.status(Some("w")).unwrap().waves[0].paused_ms,
        first
    );
    // A second pause adds to the total.
    fleet.controller.pause_wave("w", ACTOR).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let resumed = fleet.controller.resume_wave("w", ACTOR).await.unwrap();
    assert!(resumed.paused.total_ms >= first + 20);

    let events = fleet.events("w").await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "wave.paused").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "wave.resumed").count(), 2);
    assert!(
        events
            .iter()
            .all(|e| !e.kind.starts_with("wave.") || e.actor == ACTOR)
    );

    // Resuming a running wave changes nothing; a created one is refused.
    fleet.controller.resume_wave("w", ACTOR).await.unwrap();
    assert!(matches!(
        fleet.controller.pause_wave("nope", ACTOR).await,
        Err(Error::UnknownWave(_))
    ));
}

#[tokio::test]
async fn resume_after_a_halt_names_the_halt_reason() {
    let fleet = fleet(&["PC-1"]).await;
    fleet.start_refresh("w", &["PC-1"]).await;
    // The scheduler halts the wave on its error budget.
    {
        let current = fleet.controller.wave("w").unwrap();
        let mut next = current.value.clone();
        next.state = WaveState::Halted;
        next.halt_reason = Some("2 failures exceed the error budget of 1".into());
        let event = operator_event("controller", "wave.halted", "w", String::new());
        fleet
            .controller
            .put_wave(&current, next, event)
            .await
            .unwrap();
    }
    let status = fleet.controller.status(Some("w")).unwrap();
    assert_eq!(
        status.jobs[0].waiting.as_deref(),
        Some("wave halted: 2 failures exceed the error budget of 1")
    );
    // Halted is not paused: pause and promote are refused.
    assert!(fleet.controller.pause_wave("w", ACTOR).await.is_err());
    assert!(fleet.controller.promote_wave("w", ACTOR).await.is_err());

    let wave = fleet.controller.resume_wave("w", ACTOR).await.unwrap();
    assert_eq!(wave.state, WaveState::Running);
    let resumed = fleet
        .events("w")
        .await
        .into_iter()
        .find(|e| e.kind == "wave.resumed")
        .expect("a wave.resumed event");
    assert_eq!(resumed.actor, ACTOR);
    assert!(
        resumed
            .detail
            .contains("2 failures exceed the error budget of 1"),
        "{}",
        resumed.detail
    );
}

#[tokio::test]
async fn abort_stops_every_job_at_a_safe_point() {
    let hosts = ["PC-1", "PC-2", "PC-3", "PC-4", "PC-5", "PC-6"];
    let fleet = fleet(&hosts).await;
    fleet.start_refresh("w", &hosts).await;
    // PC-1 pending; PC-2 picked up, not started; PC-3 capturing; PC-4
    // captured; PC-5 reimaging; PC-6 done.
    let _ = fleet.pick_up("w", "PC-2").await;
    let capturing = fleet.run_to("w", "PC-3", Phase::Capturing).await;
    let _ = fleet.run_to("w", "PC-4", Phase::Captured).await;
    let reimaging = fleet.run_to("w", "PC-5", Phase::Reimaging).await;
    let done = fleet.run_to("w", "PC-6", Phase::Reimaging).await;
    for step in [
        Report::Entered(Phase::Restoring),
        Report::Entered(Phase::Verifying),
        Report::Done(RestoreSummary::default()),
    ] {
        fleet.report("w", "PC-6", done, step).await.unwrap();
    }

    let wave = fleet.controller.abort_wave("w", ACTOR).await.unwrap();
    assert_eq!(wave.state, WaveState::Aborted);
    assert!(wave.finished_ms.is_some());

    for host in ["PC-1", "PC-2"] {
        let job = fleet.job("w", host);
        assert_eq!(job.phase, Phase::Skipped, "{host}");
        assert_eq!(
            job.skip_reason.as_deref(),
            Some("wave aborted by operator:alice")
        );
    }
    let sealed = fleet.job("w", "PC-4");
    assert_eq!(sealed.phase, Phase::Skipped);
    assert_eq!(
        sealed.skip_reason.as_deref(),
        Some("aborted after capture; state kept at PC-4:/StateStore/job")
    );
    assert!(sealed.captured.is_some(), "the capture is kept");
    assert_eq!(fleet.job("w", "PC-3").phase, Phase::Capturing);
    assert_eq!(fleet.job("w", "PC-5").phase, Phase::Reimaging);
    assert_eq!(fleet.job("w", "PC-6").phase, Phase::Done);

    // The worker that had not started is refused its first step.
    let err = fleet
        .report(
            "w",
            "PC-2",
            fence_of(&fleet, "PC-2"),
            Report::Entered(Phase::Capturing),
        )
        .await
        .unwrap_err();
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::FailedPrecondition
    );

    // The running capture finishes and is recorded, but the job stops there:
    // the worker is refused, so it never runs its reimage hook.
    let err = fleet
        .report("w", "PC-3", capturing, Report::Captured(capture("PC-3")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobStopped { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("state kept at PC-3:/StateStore/job"),
        "{err}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::FailedPrecondition
    );
    let stopped = fleet.job("w", "PC-3");
    assert_eq!(stopped.phase, Phase::Skipped);
    assert_eq!(stopped.captured.as_ref().unwrap().manifest_digest, "digest");
    assert!(
        fleet
            .report("w", "PC-3", capturing, Report::Entered(Phase::Reimaging))
            .await
            .is_err()
    );
    assert_eq!(fleet.job("w", "PC-3").phase, Phase::Skipped);
    // Nor does the sealed one reimage.
    assert!(
        fleet
            .report(
                "w",
                "PC-4",
                fence_of(&fleet, "PC-4"),
                Report::Entered(Phase::Reimaging)
            )
            .await
            .is_err()
    );

    // The reimaging job runs to its end.
    for step in [
        Report::Entered(Phase::Restoring),
        Report::Entered(Phase::Verifying),
        Report::Done(RestoreSummary {
            files: 10,
            ..RestoreSummary::default()
        }),
    ] {
        fleet.report("w", "PC-5", reimaging, step).await.unwrap();
    }
    assert_eq!(fleet.job("w", "PC-5").phase, Phase::Done);

    // Every stop is in the audit log with its actor.
    let events = fleet.events("w").await;
    let aborted = events.iter().find(|e| e.kind == "wave.aborted").unwrap();
    assert_eq!(aborted.actor, ACTOR);
    assert!(
        aborted.detail.contains("3 jobs skipped, 1 captures finish"),
        "{}",
        aborted.detail
    );
    let skips = events
        .iter()
        .filter(|e| e.kind == "job.phase" && e.detail.contains("skipped"))
        .count();
    assert_eq!(
        skips, 4,
        "PC-1, PC-2, PC-4 by the operator, PC-3 at its seal"
    );

    // Aborting again changes nothing; a completed wave cannot be aborted.
    fleet.controller.abort_wave("w", ACTOR).await.unwrap();
    assert_eq!(
        fleet
            .events("w")
            .await
            .iter()
            .filter(|e| e.kind == "wave.aborted")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_capture_sealed_in_the_race_with_abort_still_never_reimages() {
    let fleet = fleet(&["PC-1"]).await;
    fleet.start_refresh("w", &["PC-1"]).await;
    let fence = fleet.run_to("w", "PC-1", Phase::Capturing).await;
    fleet.controller.abort_wave("w", ACTOR).await.unwrap();
    // The capture's seal landed after the wave turned aborted but before
    // the sweep could see it (written here without the wave gate).
    let job_id = fleet.job_id("w", "PC-1");
    fleet
        .controller
        .update_job(&job_id, |job| {
            let mut next = job.clone();
            next.phase = Phase::Captured;
            next.captured = Some(capture("PC-1"));
            Ok(Some((next, vec![])))
        })
        .await
        .unwrap();
    let err = fleet
        .report("w", "PC-1", fence, Report::Entered(Phase::Reimaging))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobStopped { .. }), "{err}");
    let job = fleet.job("w", "PC-1");
    assert_eq!(job.phase, Phase::Skipped);
    assert_eq!(
        job.skip_reason.as_deref(),
        Some("aborted after capture; state kept at PC-1:/StateStore/job")
    );
}

#[tokio::test]
async fn abort_from_pause_closes_the_clock() {
    let fleet = fleet(&["PC-1"]).await;
    fleet.start_refresh("w", &["PC-1"]).await;
    fleet.controller.pause_wave("w", ACTOR).await.unwrap();
    let wave = fleet.controller.abort_wave("w", ACTOR).await.unwrap();
    assert_eq!(wave.paused.since_ms, None);
    assert_eq!(fleet.job("w", "PC-1").phase, Phase::Skipped);
    assert!(matches!(
        fleet.controller.resume_wave("w", ACTOR).await,
        Err(Error::WaveState { .. })
    ));
}

#[tokio::test]
async fn budgets_and_storage_nodes_are_in_the_views() {
    let fleet = fleet(&["PC-1", "PC-2", "PC-3", "PC-4"]).await;
    fleet
        .start_refresh("w", &["PC-1", "PC-2", "PC-3", "PC-4"])
        .await;
    {
        let current = fleet.controller.wave("w").unwrap();
        let mut next = current.value.clone();
        next.spec.policy.error_budget = Some(Budget::Percent(50));
        let event = operator_event(ACTOR, "test.policy", "w", String::new());
        fleet
            .controller
            .put_wave(&current, next, event)
            .await
            .unwrap();
    }
    let fence = fleet.run_to("w", "PC-1", Phase::Capturing).await;
    fleet
        .report("w", "PC-1", fence, failure(Phase::Capturing, "disk error"))
        .await
        .unwrap();
    let view = &fleet.controller.status(Some("w")).unwrap().waves[0];
    assert_eq!(view.budget_tolerated, Some(2));
    assert_eq!(view.budget_used, 1);
    assert_eq!(
        view.batch_count,
        Some(1),
        "one batch of the whole wave by default"
    );

    // A storage node with a capacity report, and a replace job placed on it.
    fleet
        .controller
        .register_node(
            StorageNode {
                id: "node-a".into(),
                endpoint: "http://127.0.0.1:7600".into(),
                site: "hq".into(),
                registered_ms: now_ms(),
            },
            None,
        )
        .await
        .unwrap();
    assert!(fleet.controller.storage_node_views()[0].capacity.is_none());
    fleet
        .controller
        .report_capacity(
            "node-a",
            Capacity {
                total_bytes: 100,
                free_bytes: 80,
                reserved_bytes: 10,
                available_bytes: 60,
                active_sessions: 2,
                accepting_captures: true,
                migrations: 3,
                reported_ms: now_ms() - 1_500,
                ..Capacity::default()
            },
        )
        .unwrap();
    let job_id = fleet.job_id("w", "PC-2");
    fleet
        .controller
        .update_job(&job_id, |job| {
            let mut next = job.clone();
            next.placement = Some(Placement {
                node_id: "node-a".into(),
                endpoint: "http://127.0.0.1:7600".into(),
                reserved_bytes: 10,
                reserved_ms: now_ms(),
                ..Placement::default()
            });
            Ok(Some((next, vec![])))
        })
        .await
        .unwrap();
    let views = fleet.controller.storage_node_views();
    assert_eq!(views.len(), 1);
    let node = &views[0];
    assert_eq!(node.node.site, "hq");
    assert_eq!(node.placed_jobs, 1);
    assert!(node.report_age_ms.unwrap() >= 1_500);
    let wire = crate::grpc::convert::node_to_wire(node);
    assert!(wire.reported);
    assert_eq!(
        (wire.available_bytes, wire.active_sessions, wire.migrations),
        (60, 2, 3)
    );
}

fn fence_of(fleet: &Fleet, hostname: &str) -> u64 {
    fleet.job("w", hostname).fence
}

#[tokio::test]
async fn failures_the_retry_policy_retries_are_neither_retried_nor_counted() {
    let fleet = fleet(&["PC-1"]).await;
    fleet.start_refresh("w", &["PC-1"]).await;
    {
        let current = fleet.controller.wave("w").unwrap();
        let mut next = current.value.clone();
        next.spec.policy.retries.max_attempts = 3;
        next.spec.policy.error_budget = Some(Budget::Count(0));
        let event = operator_event(ACTOR, "test.policy", "w", String::new());
        fleet
            .controller
            .put_wave(&current, next, event)
            .await
            .unwrap();
    }
    let fence = fleet.run_to("w", "PC-1", Phase::Capturing).await;
    fleet
        .report("w", "PC-1", fence, failure(Phase::Capturing, "disk error"))
        .await
        .unwrap();
    let view = &fleet.controller.status(Some("w")).unwrap().waves[0];
    assert_eq!((view.budget_tolerated, view.budget_used), (Some(0), 0));
    let err = fleet
        .controller
        .retry_failed("w", ACTOR, false)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the wave's retry policy retries it (attempt 1 of 3)"),
        "{err}"
    );
}
