//! Scheduler throughput: a plan of N simulated machines (default 100,000) with instant jobs,
//! through the real controller, scheduler and embedded store (redb, fsync'd group commits), in
//! one process and without the network.
//!
//! `bench_scheduler [machines=100000] [max_in_flight=5000] [workers=2000] [data_dir]`
//!
//! Simulated workers check in; a check-in that picks up a job is an *assignment* (one durable
//! transaction); the job then reports capturing → captured → reimaging → restoring → verifying
//! → done at once (six more). Prints assignments per second over the whole wave, and the
//! p50/p99 latency of an assigning check-in (the decision: find the machine's admitted job,
//! fence it, write it) and of the scheduler's admission passes.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetmig_controller::lifecycle::Report;
use fleetmig_controller::model::{CaptureSummary, Inventory, Phase, RestoreSummary};
use fleetmig_controller::store::EmbeddedStore;
use fleetmig_controller::{Controller, ControllerSettings};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let machines: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(100_000);
    let max_in_flight: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5_000);
    let workers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    let temp = tempfile::tempdir()?;
    let dir: PathBuf = args
        .next()
        .map_or_else(|| temp.path().to_path_buf(), PathBuf::from);

    let store = Arc::new(EmbeddedStore::open(&dir)?);
    let settings = ControllerSettings {
        scheduler_tick: Duration::from_millis(20),
        ..ControllerSettings::default()
    };
    let controller = Controller::open(store, settings).await?;

    // Enroll, many at once (each enrollment is one transaction).
    let started = Instant::now();
    let ids = Arc::new(Mutex::new(Vec::with_capacity(machines)));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers.min(machines) {
        let (controller, ids, next) = (controller.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                if n >= machines {
                    return Ok::<_, BoxError>(());
                }
                let id = controller.enroll("", inventory(n)).await?;
                ids.lock().await.push(id);
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let ids = Arc::try_unwrap(ids)
        .map_err(|_| "enrollment tasks still hold the ids")?
        .into_inner();
    println!(
        "enrolled {} machines in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let plan = format!(
        "version = 1\nname = \"bench\"\n[[waves]]\nname = \"all\"\nscenario = \"refresh\"\nmax_in_flight = {max_in_flight}\n[waves.select]\nall = true\n"
    );
    controller.apply_plan(&plan, "bench.toml", "bench").await?;
    let started = Instant::now();
    controller.start_wave("all", "bench").await?;
    println!(
        "wave started ({} jobs created) in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(controller.clone().run_scheduler(shutdown.clone()));

    // Simulated workers: each owns a slice of machines and keeps checking them in until every
    // one has run its job.
    let started = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(machines)));
    let chunk = ids.len().div_ceil(workers.max(1));
    let mut tasks = Vec::new();
    for (index, slice) in ids.chunks(chunk).enumerate() {
        let (controller, latencies) = (controller.clone(), latencies.clone());
        let slice = slice.to_vec();
        tasks.push(tokio::spawn(async move {
            let session = format!("bench-session-{index}");
            let mut remaining = slice;
            let mut mine = Vec::new();
            while !remaining.is_empty() {
                let mut waiting = Vec::with_capacity(remaining.len());
                for machine in remaining {
                    let asked = Instant::now();
                    let reply = controller.check_in(&machine, &session, "").await?;
                    let Some(job) = reply.assignment else {
                        waiting.push(machine);
                        continue;
                    };
                    mine.push(asked.elapsed());
                    run_instant_job(&controller, &machine, &job.id, job.fence).await?;
                }
                remaining = waiting;
                if !remaining.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            latencies.lock().await.extend(mine);
            Ok::<_, BoxError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    scheduler.await?;

    let mut latencies = Arc::try_unwrap(latencies)
        .map_err(|_| "worker tasks still hold the latencies")?
        .into_inner();
    latencies.sort_unstable();
    let done = controller
        .status(Some("all"))?
        .jobs
        .iter()
        .filter(|view| view.job.phase == Phase::Done)
        .count();
    println!(
        "{} jobs assigned and run to done in {seconds:.1}s: {:.0} assignments/s ({} transactions/s with the phase reports)",
        latencies.len(),
        latencies.len() as f64 / seconds,
        (latencies.len() * 7) as f64 / seconds
    );
    println!(
        "assigning check-in latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
    if done != machines {
        return Err(format!("only {done} of {machines} jobs are done").into());
    }
    println!(
        "goal >= 5,000 assignments/s: {}",
        if latencies.len() as f64 / seconds >= 5_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

/// Reports every phase of a refresh job at once.
async fn run_instant_job(
    controller: &Controller,
    machine: &str,
    job_id: &str,
    fence: u64,
) -> Result<(), BoxError> {
    let reports = [
        Report::Entered(Phase::Capturing),
        Report::Captured(CaptureSummary {
            users: 1,
            files: 1,
            bytes: 1,
            manifest_digest: "0".repeat(64),
            store_location: "bench".into(),
            ..CaptureSummary::default()
        }),
        Report::Entered(Phase::Reimaging),
        Report::Entered(Phase::Restoring),
        Report::Entered(Phase::Verifying),
        Report::Done(RestoreSummary {
            files: 1,
            bytes: 1,
            ..RestoreSummary::default()
        }),
    ];
    for report in reports {
        controller.report(machine, job_id, fence, report).await?;
    }
    Ok(())
}

fn inventory(n: usize) -> Inventory {
    Inventory {
        hostname: format!("PC-{n:06}"),
        os_family: "windows-xp".into(),
        site: ["hq", "branch"][n % 2].into(),
        supports_hard_links: true,
        free_bytes: 50 << 30,
        total_bytes: 80 << 30,
        ..Inventory::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e3
}
