//! Wave policies with real processes: a mixed plan (refresh and replace, two
//! sites, two storage nodes) whose broken machines exhaust the error budget;
//! the wave halts, the operator fixes the machines, retries the failed ones
//! and resumes, and the plan completes with every profile intact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmig_proto::v1::{JobPhase, RetryFailedRequest, StatusResponse, WaveRequest};
use fleetmig_tests::{
    Cluster, MachineSnapshot, assert_refreshed, assert_replaced, describe_jobs, wait_for,
};

/// The fault-injection name: captures fail on a file so named as if it were
/// unreadable (the tests run as root, which reads even mode-000 files).
const LOCKED: &str = "locked.dat";

/// Refresh machines per site.
const PER_SITE: usize = 7;

/// Budget of the wave: failures tolerated before it halts.
const BUDGET: usize = 2;

fn plan(pairs: &[(String, String)]) -> String {
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(source, destination)| {
            format!("  {{ source = {source:?}, destination = {destination:?} }},\n")
        })
        .collect();
    format!(
        r#"version = 1
name = "fleet"

[[waves]]
name = "main"
scenario = "auto"
max_in_flight = 4
max_in_flight_per_site = 3
batch = [2, "100%"]
error_budget = {BUDGET}
pairs = [
{}]
[waves.select]
sites = ["hq", "branch"]
"#,
        pairs.concat()
    )
}

/// A user profile folder of a generated XP machine.
fn a_profile(root: &Path) -> PathBuf {
    let profiles = root.join("Documents and Settings");
    let mut names: Vec<String> = std::fs::read_dir(&profiles)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", profiles.display()))
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            !matches!(
                name.as_str(),
                "All Users" | "Default User" | "LocalService" | "NetworkService"
            )
        })
        .collect();
    names.sort();
    profiles.join(names.first().expect("a user profile"))
}

fn wave<'a>(status: &'a StatusResponse, name: &str) -> &'a fleetmig_proto::v1::WaveSummary {
    status
        .waves
        .iter()
        .find(|wave| wave.name == name)
        .unwrap_or_else(|| panic!("no wave {name} in status:{}", describe_jobs(status)))
}

fn count(status: &StatusResponse, phase: JobPhase) -> usize {
    status
        .jobs
        .iter()
        .filter(|job| job.phase() == phase)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_wave_halts_at_its_budget_and_completes_after_retry() {
    let mut cluster = Cluster::new();

    // 14 refresh machines on two sites; the first four (by hostname, the
    // admission order) cannot be captured until an operator fixes them.
    let mut refresh = Vec::new();
    for (i, site) in (0..2 * PER_SITE).map(|i| (i, ["hq", "branch"][i % 2])) {
        let name = format!("XP-{:02}", i + 1);
        let root = cluster.gen_machine(&name, 100 + i as u64, 1, 30).await;
        let snapshot = MachineSnapshot::take(&root).await;
        let broken = i < 4;
        if broken {
            std::fs::write(a_profile(&root).join(LOCKED), b"locked by another process")
                .expect("write the locked file");
        }
        refresh.push((name, site, root, snapshot, broken));
    }
    // Three replace pairs, one source per site and one on hq; destinations
    // are new hardware in a staging site the wave does not select.
    let mut replace = Vec::new();
    for (i, site) in ["hq", "branch", "hq"].into_iter().enumerate() {
        let source = format!("XP-R{}", i + 1);
        let destination = format!("W7-R{}", i + 1);
        let root = cluster.gen_machine(&source, 200 + i as u64, 1, 30).await;
        let snapshot = MachineSnapshot::take(&root).await;
        let target = cluster.root().join("machines").join(&destination);
        std::fs::create_dir_all(&target).expect("destination root");
        replace.push((source, destination, site, root, snapshot, target));
    }

    cluster.start_controller().await;
    let _hq_node = cluster.start_storage_node("smp-hq", "hq", &[]).await;
    let _branch_node = cluster
        .start_storage_node("smp-branch", "branch", &[])
        .await;
    let fault = ["--fault-unreadable-name", LOCKED];
    let mut workers = Vec::new();
    let mut hostnames = Vec::new();
    for (name, site, root, _, _) in &refresh {
        workers.push(cluster.start_worker(root, &[&["--site", site][..], &fault].concat()));
        hostnames.push(name.clone());
    }
    for (source, destination, site, root, _, target) in &replace {
        workers.push(cluster.start_worker(root, &[&["--site", site][..], &fault].concat()));
        workers.push(cluster.start_worker(target, &["--site", "staging"]));
        hostnames.push(source.clone());
        hostnames.push(destination.clone());
    }
    let names: Vec<&str> = hostnames.iter().map(String::as_str).collect();
    cluster
        .wait_for_enrolled(&names, Duration::from_secs(60))
        .await;

    let pairs: Vec<(String, String)> = replace
        .iter()
        .map(|(source, destination, ..)| (source.clone(), destination.clone()))
        .collect();
    cluster.apply_plan(&plan(&pairs)).await;
    cluster.start_wave("main").await;

    // The wave halts once failures exceed the budget, and never overshoots:
    // in-flight jobs count against what is left of it.
    let halted = wait_for(
        async || {
            let status = cluster
                .try_status("main")
                .await
                .map_err(|err| err.to_string())?;
            if wave(&status, "main").state == "halted" && count(&status, JobPhase::Failed) > 0 {
                let in_flight = status
                    .jobs
                    .iter()
                    .filter(|job| {
                        !matches!(
                            job.phase(),
                            JobPhase::Pending
                                | JobPhase::Done
                                | JobPhase::Failed
                                | JobPhase::Skipped
                        )
                    })
                    .count();
                if in_flight == 0 {
                    return Ok(status);
                }
            }
            Err(describe_jobs(&status))
        },
        Duration::from_secs(180),
        "the wave to halt at its error budget",
    )
    .await;
    let failed = count(&halted, JobPhase::Failed);
    assert_eq!(
        failed,
        BUDGET + 1,
        "the halt comes with the failure after the budget, no more:{}",
        describe_jobs(&halted)
    );
    assert!(
        count(&halted, JobPhase::Pending) > 0,
        "the halt left machines unstarted:{}",
        describe_jobs(&halted)
    );
    let summary = wave(&halted, "main");
    assert!(
        summary.halt_reason.contains("budget"),
        "halt reason: {:?}",
        summary.halt_reason
    );
    for job in halted.jobs.iter().filter(|j| j.phase() == JobPhase::Failed) {
        let broken = refresh
            .iter()
            .any(|(name, _, _, _, broken)| *broken && job.hostname == *name);
        assert!(
            broken,
            "only broken machines fail:{}",
            describe_jobs(&halted)
        );
    }

    // The operator fixes the machines, retries the failed ones in a new wave,
    // and resumes the halted one for the rest.
    for (_, _, root, _, broken) in &refresh {
        if *broken {
            std::fs::remove_file(a_profile(root).join(LOCKED)).expect("fix the machine");
        }
    }
    let mut operator = cluster.controller().client();
    let retry = operator
        .retry_failed(RetryFailedRequest {
            wave: "main".into(),
            actor: "test".into(),
            start: true,
        })
        .await
        .expect("retry the failed machines")
        .into_inner();
    assert_eq!(retry.hostnames.len(), BUDGET + 1, "{retry:?}");
    let retry_wave = retry.wave.expect("the retry wave").name;
    operator
        .resume_wave(WaveRequest {
            wave: "main".into(),
            actor: "test".into(),
        })
        .await
        .expect("resume the halted wave");

    let jobs_of_main = 2 * PER_SITE + replace.len();
    let done = wait_for(
        async || {
            let main = cluster
                .try_status("main")
                .await
                .map_err(|err| err.to_string())?;
            let retried = cluster
                .try_status(&retry_wave)
                .await
                .map_err(|err| err.to_string())?;
            let finished = count(&main, JobPhase::Done) == jobs_of_main - (BUDGET + 1)
                && count(&retried, JobPhase::Done) == BUDGET + 1;
            let completed = wave(&main, "main").state == "completed"
                && wave(&retried, &retry_wave).state == "completed";
            if finished && completed {
                Ok((main, retried))
            } else {
                Err(format!(
                    "main:{}\nretry:{}",
                    describe_jobs(&main),
                    describe_jobs(&retried)
                ))
            }
        },
        Duration::from_secs(300),
        "the plan to complete after the retry",
    )
    .await;

    // Every machine's profiles arrived intact, each exactly once.
    let mut job_of: BTreeMap<String, String> = BTreeMap::new();
    for job in done.0.jobs.iter().chain(&done.1.jobs) {
        if job.phase() == JobPhase::Done {
            assert!(
                job_of
                    .insert(job.hostname.clone(), job.job_id.clone())
                    .is_none(),
                "{} ran to done twice",
                job.hostname
            );
        }
    }
    for (name, _, _, snapshot, _) in &refresh {
        let job_id = job_of
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no done job"));
        assert_refreshed(snapshot, job_id);
    }
    for (source, _, _, _, snapshot, target) in &replace {
        assert!(job_of.contains_key(source), "{source} has no done job");
        assert_replaced(snapshot, target);
    }
    let log = cluster.audit_log("main").await;
    assert!(
        log.iter().any(|event| event.kind == "wave.halted"),
        "the halt is in the audit log"
    );
    assert!(
        log.iter()
            .any(|event| event.kind == "wave.resumed" && event.actor == "operator:admin"),
        "the resume is in the audit log with its actor: the operator its certificate names"
    );
}
