//! The replace scenario end to end: sources capture to a storage node, their
//! associated destinations restore, with real processes on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetmig_proto::v1::worker_service_client::WorkerServiceClient;
use fleetmig_proto::v1::{CheckInRequest, JobPhase, PhaseReport};
use fleetmig_tests::{
    Cluster, MachineSnapshot, assert_replaced, describe_jobs, job, job_ids_by_hostname,
    replace_plan, wait_for,
};

/// An empty machine root for new hardware: the hostname is the directory name.
fn new_hardware(cluster: &Cluster, hostname: &str) -> PathBuf {
    let root = cluster.root().join("machines").join(hostname);
    std::fs::create_dir_all(&root)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", root.display()));
    root
}

/// Three source -> destination pairs through one storage node: every destination
/// ends up with its source's profiles, byte for byte with sizes and mtimes, and the
/// sources are untouched. A fourth machine that is no destination gets nothing and
/// is refused when it tries to act on a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_wave_restores_on_the_associated_destinations() {
    let mut cluster = Cluster::new();
    let mut sources = Vec::new();
    for (i, name) in ["XP-1", "XP-2", "XP-3"].into_iter().enumerate() {
        let root = cluster.gen_machine(name, 40 + i as u64, 2, 80).await;
        let snapshot = MachineSnapshot::take(&root).await;
        sources.push((name, root, snapshot));
    }
    let destinations: Vec<(&str, PathBuf)> = ["W7-1", "W7-2", "W7-3"]
        .into_iter()
        .map(|name| (name, new_hardware(&cluster, name)))
        .collect();
    let intruder = new_hardware(&cluster, "W7-X");

    cluster.start_controller().await;
    let _node = cluster.start_storage_node("smp1", "default", &[]).await;
    let mut workers = Vec::new();
    for root in sources
        .iter()
        .map(|(_, root, _)| root)
        .chain(destinations.iter().map(|(_, root)| root))
        .chain([&intruder])
    {
        workers.push(cluster.start_worker(root, &[]));
    }
    let ids = cluster
        .wait_for_enrolled(
            &["XP-1", "XP-2", "XP-3", "W7-1", "W7-2", "W7-3", "W7-X"],
            Duration::from_secs(30),
        )
        .await;

    let pairs = [("XP-1", "W7-1"), ("XP-2", "W7-2"), ("XP-3", "W7-3")];
    cluster
        .apply_plan(&replace_plan("p", "swap", 3, &pairs))
        .await;
    cluster.start_wave("swap").await;
    let jobs = job_ids_by_hostname(&cluster.status("swap").await);
    assert_eq!(jobs.len(), 3, "one job per pair: {jobs:?}");

    // The intruder never gets a job, and cannot report on one.
    let mut worker_api = WorkerServiceClient::connect(cluster.controller().url())
        .await
        .expect("worker API reachable");
    let check_in = worker_api
        .check_in(CheckInRequest {
            machine_id: ids["W7-X"].clone(),
            session_id: "intruder-session".into(),
            ..CheckInRequest::default()
        })
        .await
        .expect("an enrolled machine may check in")
        .into_inner();
    assert!(
        check_in.assignment.is_none(),
        "the intruder got {check_in:?}"
    );

    let status = cluster
        .wait_for_all_done("swap", 3, Duration::from_secs(120))
        .await;
    for job_id in jobs.values() {
        let refused = worker_api
            .report_phase(PhaseReport {
                job_id: job_id.clone(),
                fence: 1,
                machine_id: ids["W7-X"].clone(),
                phase: JobPhase::Restoring.into(),
                ..PhaseReport::default()
            })
            .await
            .expect_err("a machine that is not the destination must be refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }

    for ((source, _, snapshot), (destination, root)) in sources.iter().zip(&destinations) {
        let done = job(&status, &jobs[*source]);
        assert_eq!(
            done.destination_hostname,
            *destination,
            "{}",
            describe_jobs(&status)
        );
        assert!(!done.storage_node.is_empty(), "{}", describe_jobs(&status));
        assert_replaced(snapshot, root);
    }
    assert!(
        !intruder.join("Users").exists(),
        "the intruder received user state"
    );
}

/// Bytes of every regular file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += bytes_under(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// A stored chunk with one byte flipped is never restored as good: the
/// destination's restore fails naming the file, and scrub names the chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_chunk_fails_the_restore_and_scrub_reports_it() {
    let mut cluster = Cluster::new();
    let source = cluster.gen_machine("XP-C", 51, 1, 60).await;
    let destination = new_hardware(&cluster, "W7-C");
    cluster.start_controller().await;
    let mut node = cluster.start_storage_node("smp1", "default", &[]).await;
    let _source_worker = cluster.start_worker(&source, &[]);
    cluster
        .wait_for_enrolled(&["XP-C"], Duration::from_secs(30))
        .await;
    cluster
        .apply_plan(&replace_plan("p", "swap", 1, &[("XP-C", "W7-C")]))
        .await;
    cluster.start_wave("swap").await;
    let job_id = job_ids_by_hostname(&cluster.status("swap").await)["XP-C"].clone();
    wait_for(
        async || {
            let status = cluster
                .try_status("swap")
                .await
                .map_err(|e| e.to_string())?;
            match job(&status, &job_id).phase() {
                JobPhase::Captured => Ok(()),
                _ => Err(describe_jobs(&status)),
            }
        },
        Duration::from_secs(60),
        "the capture to be sealed",
    )
    .await;

    // Flip one byte in the middle of the largest stored chunk.
    node.kill().await;
    let (chunk_id, path) = node
        .chunk_files()
        .into_iter()
        .max_by_key(|(_, path)| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
        .expect("the node holds chunks");
    let mut bytes = std::fs::read(&path).expect("chunk readable");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).expect("chunk writable");
    node.restart(&[]).await;

    let _destination_worker = cluster.start_worker(&destination, &[]);
    let failed = wait_for(
        async || {
            let status = cluster
                .try_status("swap")
                .await
                .map_err(|e| e.to_string())?;
            let job = job(&status, &job_id);
            match job.phase() {
                JobPhase::Failed => Ok(job.failure.clone().unwrap_or_default()),
                JobPhase::Done => panic!("a corrupt chunk was restored as good"),
                _ => Err(describe_jobs(&status)),
            }
        },
        Duration::from_secs(60),
        "the restore to fail",
    )
    .await;
    assert!(
        failed.reason.contains("Users/") && failed.reason.contains(&chunk_id[..16]),
        "the failure should name the file and the chunk: {}",
        failed.reason
    );

    node.kill().await;
    let scrub = std::process::Command::new(fleetmig_tests::bin("fleetmig-storage-node"))
        .arg("scrub")
        .arg("--data-dir")
        .arg(&node.data_dir)
        .output()
        .expect("scrub runs");
    let report = String::from_utf8_lossy(&scrub.stdout);
    assert_eq!(scrub.status.code(), Some(1), "scrub must fail: {report}");
    assert!(
        report.contains(&chunk_id),
        "scrub must name {chunk_id}: {report}"
    );
}

/// A node whose disk cannot hold the capture refuses the reservation: the job
/// waits with the reason visible, and nothing at all is written on the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_node_refuses_cleanly() {
    let mut cluster = Cluster::new();
    let source = cluster.gen_machine("XP-F", 61, 2, 120).await;
    let machine_bytes = bytes_under(&source);
    let mount = cluster.root().join("nodes").join("tiny");
    std::fs::create_dir_all(&mount).expect("mount point");
    let size_kib = (machine_bytes / 4 / 1024).max(256);
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|status| status.success());
    if !mounted {
        eprintln!("skipping: cannot mount a small tmpfs here (needs CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());

    cluster.start_controller().await;
    let node = cluster.start_storage_node("tiny", "default", &[]).await;
    assert_eq!(node.data_dir, mount);
    let _worker = cluster.start_worker(&source, &[]);
    cluster
        .wait_for_enrolled(&["XP-F"], Duration::from_secs(30))
        .await;
    cluster
        .apply_plan(&replace_plan("p", "swap", 1, &[("XP-F", "W7-F")]))
        .await;
    cluster.start_wave("swap").await;
    let job_id = job_ids_by_hostname(&cluster.status("swap").await)["XP-F"].clone();
    let reason = wait_for(
        async || {
            let status = cluster
                .try_status("swap")
                .await
                .map_err(|e| e.to_string())?;
            let job = job(&status, &job_id);
            if job.phase() != JobPhase::Pending {
                panic!(
                    "a job no node can hold must wait: {}",
                    describe_jobs(&status)
                );
            }
            if job.waiting.is_empty() {
                Err(describe_jobs(&status))
            } else {
                Ok(job.waiting.clone())
            }
        },
        Duration::from_secs(30),
        "the job to wait for storage",
    )
    .await;
    assert!(
        reason.contains("waiting for a storage node") && reason.contains("needed"),
        "the reason says what is missing: {reason}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = cluster.status("swap").await;
    assert_eq!(job(&status, &job_id).phase(), JobPhase::Pending);
    assert!(node.chunk_files().is_empty(), "no chunk may be written");
}
