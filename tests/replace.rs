//! The replace scenario end to end: sources capture to a storage node, their
//! associated destinations restore, with real processes on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetmig_proto::v1::worker_service_client::WorkerServiceClient;
use fleetmig_proto::v1::{CheckInRequest, JobPhase, PhaseReport};
use fleetmig_tests::{
    Cluster, MachineSnapshot, REPLACE_PHASES, assert_phases_entered_once, assert_replaced,
    committed_capture, describe_jobs, job, job_ids_by_hostname, job_transitions, replace_plan,
    wait_for, write_seeded_file, xp_profile,
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

    // The intruder never gets a job, and cannot report on one (with its own certificate).
    let channel = cluster
        .pki()
        .machine(&intruder)
        .endpoint(&cluster.controller().url())
        .expect("endpoint")
        .connect()
        .await
        .expect("worker API reachable");
    let mut worker_api = WorkerServiceClient::new(channel);
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

/// Bytes of the files a snapshot says must migrate: what its capture holds.
fn captured_bytes(snapshot: &MachineSnapshot) -> u64 {
    snapshot.expected.values().map(|file| file.size).sum()
}

/// Source machines of the dedup wave.
const DEDUP_SOURCES: usize = 10;
/// Files every dedup source holds with the same content.
const SHARED_FILES: u64 = 14;
/// Files of each dedup source nobody else holds.
const UNIQUE_FILES: u64 = 8;

/// Dedup source `index` (hostname `XP-D<index>`): the same small generated profile (one seed
/// for all), the same [`SHARED_FILES`] incompressible files, then [`UNIQUE_FILES`]
/// incompressible files of its own, sized so that they make up 30% of what it captures
/// (about 13 MB in all). Every byte comes from a seed, so the machine is the same on every
/// run. Returns its hostname, root, snapshot and the bytes of its own files.
async fn dedup_source(cluster: &Cluster, index: usize) -> (String, PathBuf, MachineSnapshot, u64) {
    let name = format!("XP-D{index}");
    let root = cluster.gen_machine(&name, 70, 1, 12).await;
    let documents = xp_profile(&root, "alice").join("My Documents");
    for k in 0..SHARED_FILES {
        // Two files of several chunks (chunks are 256 KiB to 4 MiB), the others of one or two.
        let size = if k < 2 {
            1_310_720 + k * 65_536
        } else {
            65_536 + (k * 37 % 17) * 24_576
        };
        let path = documents.join("Shared").join(format!("report-{k:02}.bin"));
        write_seeded_file(&path, 0x5EED_0000 + k, size as usize);
    }
    let shared = captured_bytes(&MachineSnapshot::take(&root).await);
    // unique / (shared + unique) = 30%.
    let unique = shared * 3 / 7;
    for k in 0..UNIQUE_FILES {
        let mut size = unique / UNIQUE_FILES;
        if k == UNIQUE_FILES - 1 {
            size += unique % UNIQUE_FILES;
        }
        let path = documents.join("Own").join(format!("{name}-{k}.dat"));
        write_seeded_file(&path, ((index as u64 + 1) << 32) | k, size as usize);
    }
    let snapshot = MachineSnapshot::take(&root).await;
    (name, root, snapshot, unique)
}

/// Ten sources sharing 70% of their bytes go through one storage node to ten new machines:
/// every destination gets its source's state byte for byte, and the node stores the shared
/// content once: at most 40% of the bytes captured (the files added to the generated profile
/// are incompressible, so only dedup gets there; without it the node would hold nearly all).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wave_of_similar_machines_is_stored_once_on_the_node() {
    let started = Instant::now();
    let mut cluster = Cluster::new();
    let mut sources = Vec::new();
    for index in 0..DEDUP_SOURCES {
        sources.push(dedup_source(&cluster, index).await);
    }
    let destinations: Vec<(String, PathBuf)> = (0..DEDUP_SOURCES)
        .map(|index| {
            let name = format!("W7-D{index}");
            let root = new_hardware(&cluster, &name);
            (name, root)
        })
        .collect();
    let generated = started.elapsed();

    cluster.start_controller().await;
    let node = cluster.start_storage_node("smp1", "default", &[]).await;
    let mut workers = Vec::new();
    for root in sources
        .iter()
        .map(|(_, root, _, _)| root)
        .chain(destinations.iter().map(|(_, root)| root))
    {
        workers.push(cluster.start_worker(root, &[]));
    }
    let hostnames: Vec<&str> = sources
        .iter()
        .map(|(name, _, _, _)| name.as_str())
        .chain(destinations.iter().map(|(name, _)| name.as_str()))
        .collect();
    cluster
        .wait_for_enrolled(&hostnames, Duration::from_secs(60))
        .await;
    let pairs: Vec<(&str, &str)> = sources
        .iter()
        .zip(&destinations)
        .map(|((source, _, _, _), (destination, _))| (source.as_str(), destination.as_str()))
        .collect();
    cluster
        .apply_plan(&replace_plan("p", "dedup", DEDUP_SOURCES as u32, &pairs))
        .await;
    let wave_started = Instant::now();
    cluster.start_wave("dedup").await;
    let jobs = job_ids_by_hostname(&cluster.status("dedup").await);
    assert_eq!(jobs.len(), DEDUP_SOURCES, "one job per pair: {jobs:?}");
    cluster
        .wait_for_all_done("dedup", DEDUP_SOURCES, Duration::from_secs(180))
        .await;
    let wave = wave_started.elapsed();

    let (mut captured, mut unique) = (0, 0);
    let (mut referenced, mut sealed, mut found, mut already_held) = (0, 0, 0, 0);
    for ((source, root, snapshot, own), (_, destination)) in sources.iter().zip(&destinations) {
        assert_replaced(snapshot, destination);
        let bytes = captured_bytes(snapshot);
        let committed = committed_capture(root, &jobs[source]);
        assert_eq!(
            (committed.files, committed.bytes),
            (snapshot.expected.len() as u64, bytes),
            "{source} journaled another capture than its files"
        );
        captured += bytes;
        unique += own;
        referenced += committed.upload.chunks_referenced;
        sealed += committed.upload.chunks_sealed;
        found += committed.upload.chunks_found_on_node;
        already_held += committed.upload.chunks_sent_already_held;
    }
    let stored = node.chunk_bytes();
    let chunk_files = node.chunk_files().len() as u64;
    let capacity = node.capacity().await;
    assert_eq!(
        capacity.stored_bytes, stored,
        "the node's stored_bytes should be the bytes of its chunk files"
    );
    let ratio = stored as f64 / captured as f64;
    eprintln!(
        "dedup: captured {captured} bytes, stored {stored} bytes, ratio {ratio:.3} \
         ({chunk_files} chunk files for {referenced} chunk references; sources sealed {sealed} \
         chunks, found {found} on the node when asking, sent {already_held} the node held by \
         then); generation {:.1}s, wave {:.1}s",
        generated.as_secs_f64(),
        wave.as_secs_f64()
    );
    // Nobody else holds a source's own files, and they do not compress: a floor that a node
    // losing data, or a count missing files, falls under.
    assert!(
        stored >= unique,
        "the node stores {stored} bytes, less than the {unique} bytes no two sources share"
    );
    assert!(
        chunk_files < referenced,
        "no chunk is shared: {chunk_files} chunk files for {referenced} references"
    );
    assert!(
        ratio <= 0.40,
        "the node stores {stored} of {captured} captured bytes ({:.1}%), more than 40%",
        ratio * 100.0
    );
}

/// Small files of the fault test's source: one chunk each, so the node makes them durable in
/// batches of 512 within one upload stream.
const MAIL_FILES: u64 = 1600;

/// The storage node is SIGKILLed in the middle of a source's upload and comes back a second
/// later on the same port and data directory. The source retries, asks the node what it
/// lacks, and sends only that: the job finishes without failing or capturing again, the
/// destination gets the state byte for byte, no chunk the node held was sent again, and the
/// node holds exactly the chunks the manifest references.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storage_node_killed_mid_upload_gets_only_what_it_lacks() {
    let mut cluster = Cluster::new();
    let source = cluster.gen_machine("XP-K", 81, 1, 12).await;
    let mail = xp_profile(&source, "alice")
        .join("My Documents")
        .join("Mail");
    for k in 0..MAIL_FILES {
        let size = 4_096 + (k * 613 % 8_192);
        write_seeded_file(
            &mail.join(format!("message-{k:04}.eml")),
            0xFA17_0000 + k,
            size as usize,
        );
    }
    let snapshot = MachineSnapshot::take(&source).await;
    let destination = new_hardware(&cluster, "W7-K");

    cluster.start_controller().await;
    let mut node = cluster.start_storage_node("smp1", "default", &[]).await;
    // Slow reads keep the upload going for seconds (about 8 s with 2 reader threads).
    let _source_worker = cluster.start_worker(&source, &["--fault-capture-delay-ms", "10"]);
    let _destination_worker = cluster.start_worker(&destination, &[]);
    cluster
        .wait_for_enrolled(&["XP-K", "W7-K"], Duration::from_secs(30))
        .await;
    cluster
        .apply_plan(&replace_plan("p", "swap", 1, &[("XP-K", "W7-K")]))
        .await;
    cluster.start_wave("swap").await;
    let job_id = job_ids_by_hostname(&cluster.status("swap").await)["XP-K"].clone();

    // Kill as soon as the node made some chunks durable while the capture goes on.
    wait_for(
        async || {
            let status = cluster
                .try_status("swap")
                .await
                .map_err(|e| e.to_string())?;
            let phase = job(&status, &job_id).phase();
            let held = node.chunk_files().len();
            match phase {
                JobPhase::Capturing if held > 0 => Ok(()),
                JobPhase::Pending | JobPhase::Assigned | JobPhase::Capturing => Err(format!(
                    "{held} chunk files on the node;{}",
                    describe_jobs(&status)
                )),
                _ => panic!(
                    "the capture went past CAPTURING before the node held a chunk:{}",
                    describe_jobs(&status)
                ),
            }
        },
        Duration::from_secs(60),
        "the node to hold chunks of the running capture",
    )
    .await;
    node.kill().await;
    let held_at_kill = node.chunk_files().len() as u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.restart(&[]).await;

    cluster
        .wait_for_all_done("swap", 1, Duration::from_secs(120))
        .await;
    assert_replaced(&snapshot, &destination);
    let events = cluster.audit_log("swap").await;
    assert_phases_entered_once(&job_transitions(&events), &job_id, &REPLACE_PHASES, &events);

    let upload = committed_capture(&source, &job_id).upload;
    let held = node.chunk_files().len() as u64;
    eprintln!(
        "node killed with {held_at_kill} chunk files of {} referenced; upload: {upload:?}; \
         the node now holds {held} chunk files",
        upload.chunks_referenced
    );
    assert!(
        held_at_kill > 0 && held_at_kill < upload.chunks_referenced,
        "the kill should land mid-upload: {held_at_kill} of {} chunks held",
        upload.chunks_referenced
    );
    assert_eq!(
        upload.chunks_sent_already_held, 0,
        "chunks the node had stored were sent again: {upload:?}"
    );
    assert_eq!(
        held, upload.chunks_referenced,
        "the node should hold exactly the chunks of the manifest: {upload:?}"
    );
    assert_eq!(
        upload.chunks_sealed, upload.chunks_referenced,
        "every chunk should be sealed once, in one capture: {upload:?}"
    );
    assert!(
        upload.chunks_resent <= upload.chunks_referenced - held_at_kill,
        "more chunks re-sent than the node lacked after the kill ({}): {upload:?}",
        upload.chunks_referenced - held_at_kill
    );
}
