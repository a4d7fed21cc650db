//! High availability (issue 6): three controllers sharing a real three-member etcd cluster,
//! whose leader is killed or paused in the middle of a wave; replicated replace captures that
//! survive losing a storage node; and the embedded store, which needs no etcd.
//!
//! The etcd tests need `etcd` on `PATH` (or `$FLEETMIG_ETCD`): `bash scripts/setup.sh`
//! installs it. Without it they fail, saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleetmig_proto::v1::{JobPhase, ListStorageNodesResponse, StatusResponse};
use fleetmig_tests::{
    Cluster, MachineSnapshot, REPLACE_PHASES, assert_each_phase_once, assert_phases_entered_once,
    assert_refreshed, assert_replaced, assert_single_reimage, describe_events, describe_jobs,
    job_ids_by_hostname, job_transitions, refresh_plan, wait_for,
};

/// Members of the etcd cluster of the HA tests.
const ETCD_MEMBERS: usize = 3;
/// Controllers of the HA tests.
const CONTROLLERS: usize = 3;

/// A generated refresh machine and what it held before the wave.
struct Machine {
    hostname: String,
    root: PathBuf,
    snapshot: MachineSnapshot,
}

/// `count` small XP machines `<prefix>-01`, ...: one user with a few files each (about 25
/// files to migrate), seeds from `seed`.
async fn small_machines(cluster: &Cluster, prefix: &str, count: usize, seed: u64) -> Vec<Machine> {
    let mut machines = Vec::with_capacity(count);
    for i in 0..count {
        let hostname = format!("{prefix}-{:02}", i + 1);
        let root = cluster.gen_machine(&hostname, seed + i as u64, 1, 8).await;
        let snapshot = MachineSnapshot::take(&root).await;
        machines.push(Machine {
            hostname,
            root,
            snapshot,
        });
    }
    machines
}

/// Jobs of `status` in `phase`.
fn count(status: &StatusResponse, phase: JobPhase) -> usize {
    status
        .jobs
        .iter()
        .filter(|job| job.phase() == phase)
        .count()
}

/// The median of `durations` (the upper one of an even count).
fn median(durations: &[Duration]) -> Duration {
    let mut sorted = durations.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Asserts what a completed refresh wave must show: in the audit log every job entered each
/// phase exactly once, in order; each machine's journal shows one reimage after a verified
/// capture; every profile arrived intact.
async fn assert_wave_refreshed_once(
    cluster: &Cluster,
    wave: &str,
    machines: &[Machine],
    jobs: &BTreeMap<String, String>,
) {
    let events = cluster.audit_log(wave).await;
    let transitions = job_transitions(&events);
    for machine in machines {
        let job_id = &jobs[&machine.hostname];
        assert_each_phase_once(&transitions, job_id, &events);
        assert_single_reimage(&machine.root, job_id);
        assert_refreshed(&machine.snapshot, job_id);
    }
}

/// Jobs of `status` the scheduler admitted (no longer PENDING).
fn admitted(status: &StatusResponse) -> usize {
    status.jobs.len() - count(status, JobPhase::Pending)
}

/// Waits until `ready` holds for the status of `wave` (failing at once when a job fails);
/// returns the status then.
async fn wait_for_wave(
    cluster: &Cluster,
    wave: &str,
    what: &str,
    ready: impl Fn(&StatusResponse) -> bool,
) -> StatusResponse {
    wait_for(
        async || {
            let status = cluster
                .try_status(wave)
                .await
                .map_err(|err| err.to_string())?;
            assert_eq!(
                count(&status, JobPhase::Failed) + count(&status, JobPhase::Skipped),
                0,
                "a job of wave {wave} did not succeed:{}",
                describe_jobs(&status)
            );
            if ready(&status) {
                Ok(status)
            } else {
                Err(describe_jobs(&status))
            }
        },
        Duration::from_secs(120),
        what,
    )
    .await
}

/// Machines of the failover wave.
const FAILOVER_MACHINES: usize = 50;
/// Leaders killed during the failover wave.
const FAILOVERS: usize = 3;
/// The longest a failover may take with the default 10 s election TTL.
const FAILOVER_LIMIT: Duration = Duration::from_secs(15);
/// Jobs done before the first leader is killed: the wave is under way.
const DONE_BEFORE_FIRST_FAILOVER: usize = 2;
/// Per-file capture delay of the failover waves' workers, in ms: with about 20 files to
/// capture on 2 threads, a job takes about 4 s, so that a wave of 50 at 10 at a time
/// outlasts three failovers.
const CAPTURE_DELAY_MS: &str = "300";

/// A wave of 50 machines (10 at a time) runs on three controllers over a three-member etcd
/// cluster; its leader is SIGKILLed three times mid-wave (each time restarted once another
/// controller leads). Each failover — kill until another controller says it leads, with a
/// higher epoch — takes less than 15 s with the default 10 s TTL, and the wave completes as if
/// nothing happened: every job entered each phase once, every machine reimaged once and got
/// its profiles back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_wave_fails_over_and_the_wave_completes() {
    let started = Instant::now();
    let mut cluster = Cluster::new();
    let machines = small_machines(&cluster, "HA", FAILOVER_MACHINES, 600).await;
    eprintln!(
        "generated {} machines in {:.1}s",
        machines.len(),
        started.elapsed().as_secs_f64()
    );

    cluster.start_etcd(ETCD_MEMBERS).await;
    cluster.start_ha_controllers(CONTROLLERS, 10).await;
    let _node = cluster.start_storage_node("smp1", "default", &[]).await;
    let mut workers = Vec::new();
    for machine in &machines {
        workers.push(cluster.start_worker(
            &machine.root,
            &["--fault-capture-delay-ms", CAPTURE_DELAY_MS],
        ));
    }
    let hostnames: Vec<&str> = machines.iter().map(|m| m.hostname.as_str()).collect();
    cluster
        .wait_for_enrolled(&hostnames, Duration::from_secs(90))
        .await;
    cluster
        .apply_plan(&refresh_plan("ha", "ha", 10, &hostnames))
        .await;
    let wave_started = Instant::now();
    cluster.start_wave("ha").await;
    let jobs = job_ids_by_hostname(&cluster.status("ha").await);
    assert_eq!(
        jobs.len(),
        FAILOVER_MACHINES,
        "one job per machine: {jobs:?}"
    );

    // The first leader is killed once jobs complete; each later one once it admitted a job
    // (more than were admitted when its predecessor died), proving it runs the scheduler.
    let mut failovers: Vec<Duration> = Vec::new();
    let mut admitted_at_kill: Option<usize> = None;
    for round in 1..=FAILOVERS {
        let status = match admitted_at_kill {
            None => {
                wait_for_wave(&cluster, "ha", "the first jobs to be done", |status| {
                    count(status, JobPhase::Done) >= DONE_BEFORE_FIRST_FAILOVER
                })
                .await
            }
            Some(before) => {
                wait_for_wave(
                    &cluster,
                    "ha",
                    &format!(
                        "the leader elected by failover {} to admit a job",
                        round - 1
                    ),
                    |status| admitted(status) > before,
                )
                .await
            }
        };
        let pending = count(&status, JobPhase::Pending);
        assert!(
            pending > 0,
            "the wave got too far before failover {round}: no job left to admit (make the jobs \
             slower):{}",
            describe_jobs(&status)
        );
        let old = cluster
            .find_leader()
            .await
            .unwrap_or_else(|message| panic!("before failover {round}: {message}"));
        let killed_at = Instant::now();
        cluster.kill_controller(old.index).await;
        let new = cluster.wait_for_new_leader(&old, FAILOVER_LIMIT * 2).await;
        let took = killed_at.elapsed();
        eprintln!(
            "failover: {round} of {FAILOVERS} took {:.1}s ({} epoch {} killed with {} jobs done \
             and {pending} pending; {} leads, epoch {})",
            took.as_secs_f64(),
            old.controller_id,
            old.epoch,
            count(&status, JobPhase::Done),
            new.controller_id,
            new.epoch
        );
        failovers.push(took);
        admitted_at_kill = Some(admitted(&status));
        cluster.restart_ha_controller(old.index).await;
    }
    let median = median(&failovers);
    eprintln!(
        "failover median: {:.1}s (of {})",
        median.as_secs_f64(),
        failovers
            .iter()
            .map(|took| format!("{:.1}s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (round, took) in failovers.iter().enumerate() {
        assert!(
            *took < FAILOVER_LIMIT,
            "failover {} of {FAILOVERS} took {:.1}s, not less than {FAILOVER_LIMIT:?}",
            round + 1,
            took.as_secs_f64()
        );
    }

    cluster
        .wait_for_all_done("ha", FAILOVER_MACHINES, Duration::from_secs(180))
        .await;
    eprintln!(
        "the wave of {FAILOVER_MACHINES} completed in {:.1}s with {FAILOVERS} failovers",
        wave_started.elapsed().as_secs_f64()
    );
    assert_wave_refreshed_once(&cluster, "ha", &machines, &jobs).await;
    for worker in &mut workers {
        worker.child.assert_running();
    }
}

/// Election TTL of the pause test, in seconds.
const PAUSE_TTL_SECS: u64 = 3;
/// Machines of the pause test.
const PAUSE_MACHINES: usize = 24;

/// The leader is frozen (SIGSTOP) for three lease TTLs in the middle of a wave: another
/// controller takes over with a higher epoch. When the old one wakes up it still believes it
/// leads (`--fault-ignore-lease-loss`) and goes on writing: etcd refuses its first write by
/// the fence, it steps down, and nothing it tried to write after the new leader started made
/// it into the audit log. The wave completes with each phase once on every worker's own
/// journal (no worker acted on a stale assignment) and every machine intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_paused_past_its_lease_is_fenced() {
    let mut cluster = Cluster::new();
    let machines = small_machines(&cluster, "PZ", PAUSE_MACHINES, 700).await;
    cluster.start_etcd(ETCD_MEMBERS).await;
    // Every controller carries on as if it still led when its lease is lost, as a process
    // that slept through it would: only the fence on its writes can stop the old leader.
    cluster
        .start_ha_controllers_with(CONTROLLERS, PAUSE_TTL_SECS, &["--fault-ignore-lease-loss"])
        .await;
    let mut workers = Vec::new();
    for machine in &machines {
        workers.push(cluster.start_worker(
            &machine.root,
            &["--fault-capture-delay-ms", CAPTURE_DELAY_MS],
        ));
    }
    let hostnames: Vec<&str> = machines.iter().map(|m| m.hostname.as_str()).collect();
    cluster
        .wait_for_enrolled(&hostnames, Duration::from_secs(60))
        .await;
    cluster
        .apply_plan(&refresh_plan("pz", "pz", 3, &hostnames))
        .await;
    cluster.start_wave("pz").await;
    let jobs = job_ids_by_hostname(&cluster.status("pz").await);
    assert_eq!(jobs.len(), PAUSE_MACHINES, "one job per machine: {jobs:?}");

    // Pause while jobs run and most are still to be admitted.
    let status = wait_for(
        async || {
            let status = cluster
                .try_status("pz")
                .await
                .map_err(|err| err.to_string())?;
            let running = status.jobs.iter().any(|job| {
                matches!(
                    job.phase(),
                    JobPhase::Capturing
                        | JobPhase::Captured
                        | JobPhase::Reimaging
                        | JobPhase::Restoring
                        | JobPhase::Verifying
                )
            });
            if running {
                Ok(status)
            } else {
                Err(describe_jobs(&status))
            }
        },
        Duration::from_secs(60),
        "a job of wave pz to run",
    )
    .await;
    assert!(
        count(&status, JobPhase::Pending) >= PAUSE_MACHINES / 2,
        "the wave got too far before the pause:{}",
        describe_jobs(&status)
    );
    let old = cluster
        .find_leader()
        .await
        .unwrap_or_else(|message| panic!("before the pause: {message}"));
    let pause = Duration::from_secs(3 * PAUSE_TTL_SECS);
    let paused_at = Instant::now();
    cluster.pause_controller(old.index);
    let new = cluster
        .wait_for_new_leader(&old, pause + Duration::from_secs(15))
        .await;
    let took_over = paused_at.elapsed();
    eprintln!(
        "pause: {} (epoch {}) stopped; {} leads with epoch {} after {:.1}s",
        old.controller_id,
        old.epoch,
        new.controller_id,
        new.epoch,
        took_over.as_secs_f64()
    );
    // The fault lasts three TTLs, however soon the new leader came.
    tokio::time::sleep(pause.saturating_sub(took_over)).await;
    cluster.resume_controller(old.index);
    let resumed_at = Instant::now();
    let stepped_down = wait_for(
        async || {
            let probe = cluster.probe_controller(old.index).await;
            match &probe.status {
                Ok(status) if !status.leader => Ok(probe),
                _ => Err(probe.describe()),
            }
        },
        Duration::from_secs(10),
        &format!(
            "the resumed {} to say it no longer leads",
            old.controller_id
        ),
    )
    .await;
    eprintln!(
        "pause: {} resumed after {:.1}s and reported leader = false {:.1}s later ({})",
        old.controller_id,
        pause.as_secs_f64().max(took_over.as_secs_f64()),
        resumed_at.elapsed().as_secs_f64(),
        stepped_down.describe()
    );
    let leader_now = cluster
        .find_leader()
        .await
        .unwrap_or_else(|message| panic!("after the resume: {message}"));
    assert_eq!(
        (leader_now.index, leader_now.epoch),
        (new.index, new.epoch),
        "the resumed controller must not disturb the new leader: {leader_now:?}, expected {new:?}"
    );

    cluster
        .wait_for_all_done("pz", PAUSE_MACHINES, Duration::from_secs(120))
        .await;
    assert_wave_refreshed_once(&cluster, "pz", &machines, &jobs).await;

    // Nothing the old leader wrote is ordered after the new leader's first write.
    let events = cluster.audit_log("").await;
    let old_actor = format!("controller:{}", old.controller_id);
    let new_actor = format!("controller:{}", new.controller_id);
    // The new term starts with its epoch bump; the new leader may have led before.
    let term_start = format!("leads from epoch {} ", new.epoch);
    let first_new = events
        .iter()
        .filter(|event| {
            event.actor == new_actor
                && event.kind == "controller.leader"
                && event.detail.contains(&term_start)
        })
        .map(|event| event.seq)
        .min()
        .unwrap_or_else(|| {
            panic!(
                "the new leader {} took over with epoch {}, yet no controller.leader event \
                 of {new_actor:?} says so:{}",
                new.controller_id,
                new.epoch,
                describe_events(&events)
            )
        });
    let old_events: Vec<u64> = events
        .iter()
        .filter(|event| event.actor == old_actor)
        .map(|event| event.seq)
        .collect();
    let late: Vec<_> = events
        .iter()
        .filter(|event| event.actor == old_actor && event.seq > first_new)
        .cloned()
        .collect();
    eprintln!(
        "audit: {} events by {old_actor} (last #{}); the new term of {new_actor} starts at #{first_new}",
        old_events.len(),
        old_events.iter().max().copied().unwrap_or_default()
    );
    assert!(
        late.is_empty(),
        "the paused leader {} wrote after the new term started at #{first_new}:{}",
        old.controller_id,
        describe_events(&late)
    );

    // It found out from etcd refusing a write, not from its lease.
    let log_path = cluster.ha_controller(old.index).log_path().to_path_buf();
    let fenced = print_fencing_messages(&log_path);
    assert!(
        fenced
            .iter()
            .any(|line| line.contains("write refused by the fence")),
        "the resumed {} stepped down without a write refused by the fence (see {})",
        old.controller_id,
        log_path.display()
    );
    for worker in &mut workers {
        worker.child.assert_running();
    }
}

/// Prints the lines of the log at `path` that tell of lost leadership or fenced writes, and
/// returns them.
fn print_fencing_messages(path: &std::path::Path) -> Vec<String> {
    const PATTERNS: [&str; 5] = [
        "not the leader",
        "leadership lost",
        "lost leadership",
        "stepping down",
        "fenc",
    ];
    let text = std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let found: Vec<&str> = text
        .lines()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            PATTERNS.iter().any(|pattern| lower.contains(pattern))
        })
        .collect();
    if found.is_empty() {
        eprintln!(
            "fencing: no message matching {PATTERNS:?} in {}",
            path.display()
        );
        return Vec::new();
    }
    eprintln!(
        "fencing: {} lines of {} match {PATTERNS:?}; the first ones:",
        found.len(),
        path.display()
    );
    for line in found.iter().take(12) {
        eprintln!("    {line}");
    }
    found.into_iter().map(str::to_owned).collect()
}

/// A replace plan over `pairs` asking for `replication` copies of each capture.
fn replicated_replace_plan(wave: &str, replication: u32, pairs: &[(&str, &str)]) -> String {
    let pairs: String = pairs
        .iter()
        .map(|(source, destination)| {
            format!("  {{ source = {source:?}, destination = {destination:?} }},\n")
        })
        .collect();
    format!(
        "version = 1\n\
         name = \"replicated\"\n\
         \n\
         [[waves]]\n\
         name = {wave:?}\n\
         scenario = \"replace\"\n\
         max_in_flight = 3\n\
         replication = {replication}\n\
         pairs = [\n{pairs}]\n"
    )
}

/// The under-replicated migrations of `nodes`, one line each, and every node's liveness.
fn describe_replication(nodes: &ListStorageNodesResponse) -> String {
    let mut out = String::new();
    for node in &nodes.nodes {
        out.push_str(&format!(
            "\n    node {} ({}, site {}): live {}",
            node.node_id, node.endpoint, node.site, node.live
        ));
    }
    if nodes.under_replicated.is_empty() {
        out.push_str("\n    nothing under-replicated");
    }
    for entry in &nodes.under_replicated {
        out.push_str(&format!(
            "\n    under-replicated {} (wave {}): wanted {}, holders {:?}, live {:?}",
            entry.migration_id, entry.wave, entry.wanted, entry.holders, entry.live_holders
        ));
    }
    out
}

/// Three replace pairs on two sites with `replication = 2` over two storage nodes. Once every
/// source captured (one replica each), the node that is primary for the most jobs is
/// SIGKILLed: the controller lists those migrations under-replicated with one live holder.
/// The destinations still restore every file byte for byte (from the surviving copy), and
/// when the node comes back nothing is under-replicated any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_node_lost_after_capture_still_restores() {
    let started = Instant::now();
    let mut cluster = Cluster::new();
    let pairs = [
        ("XP-R1", "W7-R1", "hq"),
        ("XP-R2", "W7-R2", "branch"),
        ("XP-R3", "W7-R3", "hq"),
    ];
    let mut sources = Vec::new();
    for (i, (source, destination, site)) in pairs.iter().enumerate() {
        let root = cluster.gen_machine(source, 800 + i as u64, 1, 20).await;
        let snapshot = MachineSnapshot::take(&root).await;
        let target = cluster.root().join("machines").join(destination);
        std::fs::create_dir_all(&target)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", target.display()));
        sources.push((*source, *destination, *site, root, snapshot, target));
    }

    // Frequent capacity reports, so a dead node stops counting as a live holder quickly.
    cluster
        .start_controller_with(&["--node-report-interval-ms", "500"])
        .await;
    let mut nodes = [
        cluster.start_storage_node("smp-hq", "hq", &[]).await,
        cluster
            .start_storage_node("smp-branch", "branch", &[])
            .await,
    ];
    let mut workers = Vec::new();
    for (_, _, site, root, _, _) in &sources {
        workers.push(cluster.start_worker(root, &["--site", site]));
    }
    let source_names: Vec<&str> = sources.iter().map(|(source, ..)| *source).collect();
    cluster
        .wait_for_enrolled(&source_names, Duration::from_secs(60))
        .await;
    let plan_pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(source, destination, _)| (*source, *destination))
        .collect();
    cluster
        .apply_plan(&replicated_replace_plan("swap", 2, &plan_pairs))
        .await;
    cluster.start_wave("swap").await;
    let jobs = job_ids_by_hostname(&cluster.status("swap").await);
    assert_eq!(jobs.len(), pairs.len(), "one job per pair: {jobs:?}");

    // Only the sources run: every job stops at CAPTURED, its capture on a primary and one
    // replica.
    let captured = wait_for(
        async || {
            let status = cluster
                .try_status("swap")
                .await
                .map_err(|err| err.to_string())?;
            assert_eq!(
                count(&status, JobPhase::Failed),
                0,
                "a capture failed:{}",
                describe_jobs(&status)
            );
            let replicated = status.jobs.iter().all(|job| {
                job.phase() == JobPhase::Captured
                    && !job.storage_node.is_empty()
                    && job.captured.as_ref().is_some_and(|summary| {
                        summary.replica_node_ids.len() == 1
                            && summary.replica_node_ids[0] != job.storage_node
                    })
            });
            if replicated {
                Ok(status)
            } else {
                let replicas: Vec<String> = status
                    .jobs
                    .iter()
                    .map(|job| {
                        format!(
                            "{} on {:?}, replicas {:?}",
                            job.hostname,
                            job.storage_node,
                            job.captured
                                .as_ref()
                                .map(|summary| summary.replica_node_ids.clone())
                        )
                    })
                    .collect();
                Err(format!("{replicas:?}{}", describe_jobs(&status)))
            }
        },
        Duration::from_secs(120),
        "every source to be captured with one replica",
    )
    .await;

    let listed = cluster
        .try_storage_nodes()
        .await
        .unwrap_or_else(|status| panic!("ListStorageNodes failed: {status:?}"));
    let node_id_of = |index: usize| -> String {
        let url = nodes[index].url();
        listed
            .nodes
            .iter()
            .find(|node| node.endpoint == url)
            .map(|node| node.node_id.clone())
            .unwrap_or_else(|| {
                panic!(
                    "node {} ({url}) is not registered:{}",
                    nodes[index].name,
                    describe_replication(&listed)
                )
            })
    };
    let node_ids = [node_id_of(0), node_id_of(1)];
    let primaries = |id: &str| {
        captured
            .jobs
            .iter()
            .filter(|job| job.storage_node == id)
            .count()
    };
    let victim = if primaries(&node_ids[0]) >= primaries(&node_ids[1]) {
        0
    } else {
        1
    };
    let victim_id = node_ids[victim].clone();
    assert!(
        primaries(&victim_id) > 0,
        "no job has a primary:{}",
        describe_jobs(&captured)
    );
    let held_by_victim: BTreeSet<String> = captured
        .jobs
        .iter()
        .filter(|job| {
            job.storage_node == victim_id
                || job
                    .captured
                    .as_ref()
                    .is_some_and(|summary| summary.replica_node_ids.contains(&victim_id))
        })
        .map(|job| job.job_id.clone())
        .collect();
    eprintln!(
        "replication: {:.1}s: killing node {} ({victim_id}), primary of {} jobs, holding {} \
         migrations",
        started.elapsed().as_secs_f64(),
        nodes[victim].name,
        primaries(&victim_id),
        held_by_victim.len()
    );
    nodes[victim].kill().await;

    let degraded = wait_for(
        async || {
            let listed = cluster
                .try_storage_nodes()
                .await
                .map_err(|err| err.to_string())?;
            let victim_dead = listed
                .nodes
                .iter()
                .any(|node| node.node_id == victim_id && !node.live);
            let under: BTreeMap<&str, _> = listed
                .under_replicated
                .iter()
                .map(|entry| (entry.migration_id.as_str(), entry))
                .collect();
            let all_listed = held_by_victim.iter().all(|job_id| {
                under.get(job_id.as_str()).is_some_and(|entry| {
                    entry.wanted == 2
                        && entry.holders.len() == 2
                        && entry.holders.contains(&victim_id)
                        && entry.live_holders.len() == 1
                        && !entry.live_holders.contains(&victim_id)
                })
            });
            if victim_dead && all_listed {
                Ok(listed)
            } else {
                Err(describe_replication(&listed))
            }
        },
        Duration::from_secs(60),
        "the migrations on the killed node to be listed under-replicated",
    )
    .await;
    eprintln!(
        "replication: {:.1}s: after the kill:{}",
        started.elapsed().as_secs_f64(),
        describe_replication(&degraded)
    );
    let unexpected: Vec<&str> = degraded
        .under_replicated
        .iter()
        .map(|entry| entry.migration_id.as_str())
        .filter(|id| !held_by_victim.contains(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "migrations the killed node did not hold are listed under-replicated: {unexpected:?}{}",
        describe_replication(&degraded)
    );

    // The destinations restore from whichever copy lives.
    for (_, _, site, _, _, target) in &sources {
        workers.push(cluster.start_worker(target, &["--site", site]));
    }
    cluster
        .wait_for_all_done("swap", pairs.len(), Duration::from_secs(120))
        .await;
    eprintln!(
        "replication: {:.1}s: every destination restored",
        started.elapsed().as_secs_f64()
    );
    let events = cluster.audit_log("swap").await;
    let transitions = job_transitions(&events);
    for (source, _, _, _, snapshot, target) in &sources {
        assert_replaced(snapshot, target);
        assert_phases_entered_once(&transitions, &jobs[*source], &REPLACE_PHASES, &events);
    }

    // The node comes back; its copies count again.
    nodes[victim].restart(&[]).await;
    let healed = wait_for(
        async || {
            let listed = cluster
                .try_storage_nodes()
                .await
                .map_err(|err| err.to_string())?;
            let victim_live = listed
                .nodes
                .iter()
                .any(|node| node.node_id == victim_id && node.live);
            if victim_live && listed.under_replicated.is_empty() {
                Ok(listed)
            } else {
                Err(describe_replication(&listed))
            }
        },
        Duration::from_secs(60),
        "nothing to be under-replicated once the node is back",
    )
    .await;
    eprintln!(
        "replication: {:.1}s: after the restart:{}",
        started.elapsed().as_secs_f64(),
        describe_replication(&healed)
    );
}

/// Without `--store` the controller runs on its embedded store, alone, and needs no etcd: it
/// says it leads, under its own id, and a small refresh wave completes with fences of its
/// epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_default_needs_no_etcd() {
    let mut cluster = Cluster::new();
    let machines = small_machines(&cluster, "EM", 2, 900).await;
    cluster.start_controller().await;
    let status = cluster.status("").await;
    eprintln!(
        "embedded: controller_id {:?}, leader {}, leader_endpoint {:?}, epoch {}",
        status.controller_id, status.leader, status.leader_endpoint, status.epoch
    );
    assert!(
        !status.controller_id.is_empty(),
        "GetStatus must name the controller (\"embedded\"): {:?}",
        status.controller_id
    );
    assert!(status.leader, "the embedded controller always leads");

    let mut workers = Vec::new();
    for machine in &machines {
        workers.push(cluster.start_worker(&machine.root, &[]));
    }
    let hostnames: Vec<&str> = machines.iter().map(|m| m.hostname.as_str()).collect();
    cluster
        .wait_for_enrolled(&hostnames, Duration::from_secs(30))
        .await;
    cluster
        .apply_plan(&refresh_plan("em", "em", 2, &hostnames))
        .await;
    cluster.start_wave("em").await;
    let jobs = job_ids_by_hostname(&cluster.status("em").await);
    cluster
        .wait_for_all_done("em", machines.len(), Duration::from_secs(60))
        .await;
    assert_wave_refreshed_once(&cluster, "em", &machines, &jobs).await;
    for machine in &machines {
        let reimage = assert_single_reimage(&machine.root, &jobs[&machine.hostname]);
        assert_eq!(
            reimage.fence >> 32,
            u64::from(status.epoch),
            "the fence of {} ({:#x}) should carry the epoch GetStatus reports ({})",
            machine.hostname,
            reimage.fence,
            status.epoch
        );
    }
}

/// The harness's etcd cluster itself (no controller): three members come up healthy, one
/// killed leaves the other two serving, and restarted on its data it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_etcd_cluster_survives_a_member_restart() {
    let mut cluster = Cluster::new();
    cluster.start_etcd(ETCD_MEMBERS).await;
    let url = cluster.etcd().store_url();
    assert_eq!(
        url.split(',').count(),
        ETCD_MEMBERS,
        "the store URL lists every member: {url}"
    );
    cluster.etcd_mut().kill_member(1).await;
    assert!(!cluster.etcd().members()[1].is_running());
    for member in [0, 2] {
        wait_for(
            async || {
                if cluster.etcd().is_healthy(member).await {
                    Ok(())
                } else {
                    Err("unhealthy".to_owned())
                }
            },
            Duration::from_secs(30),
            &format!("etcd member {member} to stay healthy with one member down"),
        )
        .await;
    }
    cluster.etcd_mut().restart_member(1).await;
    for member in 0..ETCD_MEMBERS {
        assert!(
            cluster.etcd().is_healthy(member).await,
            "member {member} is unhealthy after the restart"
        );
    }
}
