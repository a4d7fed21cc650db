//! Crashes in the middle of a wave: a worker killed during its capture, a controller
//! killed while jobs run. Nothing destructive may happen twice or too early, and every
//! machine must still end up refreshed.

use std::time::Duration;

use fleetmig_proto::v1::JobPhase;
use fleetmig_state::fingerprint::{self, list_files_under};
use fleetmig_tests::{
    Cluster, MachineSnapshot, assert_each_phase_once, assert_refreshed, assert_single_reimage,
    describe_events, describe_jobs, describe_journal, job, job_ids_by_hostname, job_transitions,
    read_journal, refresh_plan, source_inodes, store_dir, wait_for,
};

/// A worker SIGKILLed in the middle of its capture leaves the XP machine untouched; a
/// new worker on the same machine takes the job over, captures again and completes it,
/// reimaging exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_during_capture_resumes() {
    let mut cluster = Cluster::new();
    let pc = cluster.gen_machine("PC-KILL", 21, 2, 400).await;
    let snapshot = MachineSnapshot::take(&pc).await;

    cluster.start_controller().await;
    let mut worker = cluster.start_worker(&pc, &["--fault-capture-delay-ms", "5"]);
    cluster
        .wait_for_enrolled(&["PC-KILL"], Duration::from_secs(30))
        .await;
    cluster
        .apply_plan(&refresh_plan("p", "w1", 1, &["PC-KILL"]))
        .await;
    cluster.start_wave("w1").await;
    let job_id = job_ids_by_hostname(&cluster.status("w1").await)["PC-KILL"].clone();
    let store_data = format!("StateStore/{job_id}/data");

    // Mid-capture: the controller says CAPTURING, the journal says the capture started,
    // and the store already holds a good number of links (but is not sealed).
    wait_for(
        async || {
            let status = cluster.try_status("w1").await.map_err(|e| e.to_string())?;
            let phase = job(&status, &job_id).phase();
            let started = read_journal(&pc)
                .iter()
                .any(|entry| entry.job_id == job_id && entry.event == "capture.start");
            let linked = list_files_under(&pc, &store_data).map_or(0, |files| files.len());
            if phase == JobPhase::Capturing && started && linked >= 50 {
                Ok(())
            } else {
                Err(format!(
                    "phase {phase:?}, capture.start in journal: {started}, {linked} files in the \
                     store:{}",
                    describe_jobs(&status)
                ))
            }
        },
        Duration::from_secs(60),
        "the capture to be under way",
    )
    .await;
    worker.kill().await;
    let killed_fence = read_journal(&pc)
        .iter()
        .find(|entry| entry.job_id == job_id && entry.event == "capture.start")
        .map(|entry| entry.fence)
        .expect("capture.start was journaled");

    let status = cluster.status("w1").await;
    assert_eq!(
        job(&status, &job_id).phase(),
        JobPhase::Capturing,
        "the job moved on although its worker was killed mid-capture:{}",
        describe_jobs(&status)
    );
    assert!(
        !store_dir(&pc, &job_id).join("manifest.seal").exists(),
        "the store was sealed before the worker was killed: the kill came too late"
    );
    let journal = read_journal(&pc);
    assert!(
        !journal.iter().any(|entry| entry.event == "reimage.start"),
        "reimage started although the capture never finished:{}",
        describe_journal(&pc)
    );
    assert!(
        pc.join("Documents and Settings").is_dir(),
        "Documents and Settings is gone after a killed capture"
    );
    let after_kill = fingerprint::expected_after_refresh(&pc).expect("fingerprint after the kill");
    assert!(
        after_kill == snapshot.expected,
        "the XP profiles changed during the interrupted capture: {} files before, {} after; \
         first difference: {:?}",
        snapshot.expected.len(),
        after_kill.len(),
        snapshot
            .expected
            .iter()
            .find(|(target, want)| after_kill.get(*target) != Some(*want))
            .map(|(target, _)| target)
    );
    assert_eq!(
        source_inodes(&pc),
        snapshot.inodes,
        "an XP original was replaced (new inode) during the interrupted capture"
    );

    worker.restart(&[]).await;
    let status = cluster
        .wait_for_all_done("w1", 1, Duration::from_secs(120))
        .await;
    let done = job(&status, &job_id);
    assert!(
        done.attempt >= 2,
        "the job should have been handed out again after the kill:{}",
        describe_jobs(&status)
    );
    assert_refreshed(&snapshot, &job_id);
    let reimage = assert_single_reimage(&pc, &job_id);
    assert!(
        reimage.fence > killed_fence,
        "the reimage ran under fence {} but the killed worker held {killed_fence}:{}",
        reimage.fence,
        describe_journal(&pc)
    );
    assert!(
        !store_dir(&pc, &job_id).exists(),
        "the store outlived the job"
    );

    let events = cluster.audit_log("w1").await;
    let transitions = job_transitions(&events);
    let list = transitions.get(&job_id).cloned().unwrap_or_default();
    let reimaging: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, t)| t.from == "captured" && t.to == "reimaging")
        .map(|(index, _)| index)
        .collect();
    assert_eq!(
        reimaging.len(),
        1,
        "the audit log should show `captured -> reimaging` exactly once:{}",
        describe_events(&events)
    );
    assert!(
        list[..reimaging[0]].iter().any(|t| t.to == "captured"),
        "`captured -> reimaging` is not preceded by `-> captured` in the audit log:{}",
        describe_events(&events)
    );
    assert_each_phase_once(&transitions, &job_id, &events);
}

/// A controller SIGKILLed and restarted (same address, same data) while a wave runs:
/// the workers carry on, and every job goes through each phase exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_restart_mid_wave() {
    let mut cluster = Cluster::new();
    let hostnames = ["PC-1", "PC-2", "PC-3"];
    let mut snapshots = Vec::new();
    for (index, hostname) in hostnames.iter().enumerate() {
        let root = cluster
            .gen_machine(hostname, 31 + index as u64, 2, 150)
            .await;
        snapshots.push((*hostname, MachineSnapshot::take(&root).await));
    }

    cluster.start_controller().await;
    let _workers: Vec<_> = snapshots
        .iter()
        .map(|(_, snapshot)| {
            cluster.start_worker(&snapshot.root, &["--fault-capture-delay-ms", "2"])
        })
        .collect();
    cluster
        .wait_for_enrolled(&hostnames, Duration::from_secs(30))
        .await;
    cluster
        .apply_plan(&refresh_plan("p", "w1", 1, &hostnames))
        .await;
    cluster.start_wave("w1").await;
    let jobs = job_ids_by_hostname(&cluster.status("w1").await);
    assert_eq!(jobs.len(), 3, "wave w1 should have three jobs: {jobs:?}");

    wait_for(
        async || {
            let status = cluster.try_status("w1").await.map_err(|e| e.to_string())?;
            let done = status
                .jobs
                .iter()
                .filter(|job| job.phase() == JobPhase::Done)
                .count();
            let in_flight = status.jobs.iter().any(|job| {
                matches!(
                    job.phase(),
                    JobPhase::Assigned
                        | JobPhase::Capturing
                        | JobPhase::Captured
                        | JobPhase::Reimaging
                        | JobPhase::Restoring
                        | JobPhase::Verifying
                )
            });
            if done >= 1 && in_flight {
                Ok(())
            } else {
                Err(describe_jobs(&status))
            }
        },
        Duration::from_secs(60),
        "one job done and another in flight",
    )
    .await;
    let before = cluster.status("w1").await;
    eprintln!(
        "restarting the controller with jobs:{}",
        describe_jobs(&before)
    );
    cluster.restart_controller().await;

    cluster
        .wait_for_all_done("w1", 3, Duration::from_secs(120))
        .await;
    let events = cluster.audit_log("w1").await;
    let transitions = job_transitions(&events);
    for (hostname, snapshot) in &snapshots {
        let job_id = &jobs[*hostname];
        assert_each_phase_once(&transitions, job_id, &events);
        assert_single_reimage(&snapshot.root, job_id);
        assert_refreshed(snapshot, job_id);
    }
}
