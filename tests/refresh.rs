//! A refresh wave end to end: a controller and two workers as processes.

use std::path::Path;
use std::time::Duration;

use fleetmig_proto::v1::JobPhase;
use fleetmig_tests::{
    Cluster, MachineSnapshot, assert_each_phase_once, assert_refreshed, assert_single_reimage, bin,
    describe_jobs, inspect_store, job, job_ids_by_hostname, job_transitions, refresh_plan,
};

/// `text` quoted for `sh`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A `--reimage-command` that waits until `gate` exists (at most a minute, and only
/// while its worker lives), then runs the simulated reimage through `fleetmig-worker
/// simulate reimage`, preserving what the worker asks to preserve (`FLEETMIG_PRESERVE`,
/// colon-separated).
fn gated_reimage_command(gate: &Path) -> String {
    let gate = sh_quote(&gate.to_string_lossy());
    let worker = sh_quote(&bin("fleetmig-worker").to_string_lossy());
    format!(
        "i=0; while [ ! -e {gate} ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 3; \
         kill -0 $PPID 2>/dev/null || exit 4; sleep 0.02; done; \
         set -f; set --; IFS=:; for p in $FLEETMIG_PRESERVE; do set -- \"$@\" --preserve \"$p\"; done; \
         unset IFS; exec {worker} simulate reimage --machine-root \"$FLEETMIG_MACHINE_ROOT\" \"$@\""
    )
}

/// The result of a blocking task, its panic (a failed assertion) carried over.
async fn finish<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// Two machines, one wave: both are refreshed with every migratable file in its
/// Windows 7 place, unchanged, through a store of hard links (no data copied).
///
/// PC-A reimages through a hook command held at a gate, so its store can be inspected
/// with every XP original still in place; PC-B uses the built-in simulated reimage and
/// its store is inspected while its job runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_wave_two_workers() {
    let mut cluster = Cluster::new();
    let pc_a = cluster.gen_machine("PC-A", 11, 2, 150).await;
    let pc_b = cluster.gen_machine("PC-B", 12, 2, 150).await;
    let snapshot_a = MachineSnapshot::take(&pc_a).await;
    let snapshot_b = MachineSnapshot::take(&pc_b).await;
    assert!(
        !snapshot_a.temp_files.is_empty() && !snapshot_b.temp_files.is_empty(),
        "the generated machines should have temp files to leave behind"
    );

    cluster.start_controller().await;
    let gate = cluster.root().join("reimage-gate-PC-A");
    let hook = gated_reimage_command(&gate);
    let _worker_a = cluster.start_worker(
        &pc_a,
        &["--fault-capture-delay-ms", "1", "--reimage-command", &hook],
    );
    let _worker_b = cluster.start_worker(&pc_b, &["--fault-capture-delay-ms", "1"]);
    cluster
        .wait_for_enrolled(&["PC-A", "PC-B"], Duration::from_secs(30))
        .await;

    cluster
        .apply_plan(&refresh_plan("p", "w1", 2, &["PC-A", "PC-B"]))
        .await;
    cluster.start_wave("w1").await;
    let jobs = job_ids_by_hostname(&cluster.status("w1").await);
    assert_eq!(jobs.len(), 2, "wave w1 should have two jobs: {jobs:?}");
    let (job_a, job_b) = (jobs["PC-A"].clone(), jobs["PC-B"].clone());

    let inspect_a = tokio::task::spawn_blocking({
        let (snapshot, job_id) = (snapshot_a.clone(), job_a.clone());
        move || inspect_store(&snapshot, &job_id, Duration::from_secs(60))
    });
    let inspect_b = tokio::task::spawn_blocking({
        let (snapshot, job_id) = (snapshot_b.clone(), job_b.clone());
        move || inspect_store(&snapshot, &job_id, Duration::from_secs(60))
    });

    // PC-A's hook cannot pass the gate: its job waits in REIMAGING, nothing wiped yet.
    let inspection_a = finish(inspect_a).await;
    let status = cluster.status("w1").await;
    let phase_a = job(&status, &job_a).phase();
    assert!(
        matches!(
            phase_a,
            JobPhase::Capturing | JobPhase::Captured | JobPhase::Reimaging
        ),
        "PC-A went past its gated reimage:{}",
        describe_jobs(&status)
    );
    assert!(
        pc_a.join("Documents and Settings").is_dir(),
        "PC-A was wiped before its reimage hook passed the gate"
    );
    assert!(
        inspection_a.store_links_checked == inspection_a.files
            && inspection_a.originals_linked == inspection_a.files,
        "every XP original of PC-A should still be in place, sharing its store link's inode \
         (gated reimage): {inspection_a:?}"
    );
    std::fs::write(&gate, b"go").expect("cannot open the reimage gate");

    let inspection_b = finish(inspect_b).await;
    // PC-B's store is checked while its job runs unhindered: the manifest's inodes are
    // always checked; its store files and originals as far as the job let them be.
    if inspection_b.store_links_checked < inspection_b.files {
        eprintln!("note: PC-B released its store during the inspection: {inspection_b:?}");
    } else if !inspection_b.reimage_started {
        assert_eq!(
            inspection_b.originals_linked, inspection_b.files,
            "before its reimage every XP original of PC-B should share its store link's inode: \
             {inspection_b:?}"
        );
    } else {
        eprintln!(
            "note: PC-B's store was inspected after its reimage had started: {inspection_b:?}"
        );
    }

    let status = cluster
        .wait_for_all_done("w1", 2, Duration::from_secs(120))
        .await;
    for (snapshot, job_id) in [(&snapshot_a, &job_a), (&snapshot_b, &job_b)] {
        assert_refreshed(snapshot, job_id);
        assert_single_reimage(&snapshot.root, job_id);
        let captured = job(&status, job_id).captured.clone().unwrap_or_default();
        assert!(
            captured.files >= snapshot.expected.len() as u64
                && !captured.manifest_digest.is_empty(),
            "job {job_id} reported the capture {captured:?} for {} migratable files",
            snapshot.expected.len()
        );
    }

    let events = cluster.audit_log("w1").await;
    let transitions = job_transitions(&events);
    for job_id in [&job_a, &job_b] {
        assert_each_phase_once(&transitions, job_id, &events);
    }
}
