//! `fleetmig demo`: a whole refresh migration on this machine.
//!
//! Starts a controller and a storage node from the binaries next to
//! `fleetmig`, generates simulated XP machines with `fleetmig-worker simulate
//! gen-machine`, fingerprints them, starts one worker agent per machine,
//! applies a one-wave plan, follows the wave to the end, and compares every
//! restored file with its original. Children log to `WORK/logs/<name>.log`
//! and are always stopped (SIGTERM, then SIGKILL) before the command returns.

mod machines;
mod plan_file;
mod processes;
mod progress;
mod report;
mod work_dir;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use fleetmig_proto::v1::{PlanRequest, WaveRequest};
use tokio_util::sync::CancellationToken;

use self::processes::{Binaries, Fleet};
use self::work_dir::WorkDir;
use crate::client::{self, rpc_error};
use crate::output;

/// How long the controller and the storage node have to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agents have to enroll.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(60);
/// Check-in interval the demo's controller hands to workers.
const CHECKIN_INTERVAL_MS: u32 = 500;

/// `fleetmig demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Simulated XP machines to migrate.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=9999))]
    pub machines: u32,
    /// User profiles per machine.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,
    /// Files per user profile.
    #[arg(long, default_value_t = 300)]
    pub files: u32,
    /// Keep the temporary work dir (it is always kept after a failure).
    #[arg(long)]
    pub keep: bool,
    /// Use this (missing or empty) directory instead of a temporary one; it is kept.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Give up if the wave has not finished after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout_secs: u64,
}

/// How the demo ended, when nothing broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Every job done and every file matches.
    Success,
    /// A job failed or a file does not match.
    Failure,
}

/// Runs the demo; `shutdown` (Ctrl-C) stops it and its children.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let binaries = Binaries::locate()?;
    let work = WorkDir::create(args.work_dir.as_deref(), args.keep)?;
    output::emit(&format!(
        "fleetmig demo: {} machines, {} users each, {} files per user; work dir {}",
        args.machines,
        args.users,
        args.files,
        work.path().display()
    ))?;
    let log_dir = work.path().join("logs");
    tokio::fs::create_dir_all(&log_dir)
        .await
        .with_context(|| format!("cannot create {}", log_dir.display()))?;

    let mut fleet = Fleet::new(log_dir);
    let outcome = tokio::select! {
        outcome = drive(&args, &binaries, work.path(), &mut fleet) => Some(outcome),
        () = shutdown.cancelled() => None,
    };
    fleet.stop_all().await;

    let (result, keep_anyway) = match outcome {
        Some(Ok(Verdict::Success)) => (Ok(ExitCode::SUCCESS), false),
        Some(Ok(Verdict::Failure)) => (Ok(ExitCode::FAILURE), true),
        Some(Err(err)) => (Err(err), true),
        None => {
            output::emit("interrupted; stopped the demo's processes")?;
            (Ok(ExitCode::from(130)), true)
        }
    };
    if let Some(kept) = work.finish(keep_anyway).await {
        output::emit(&format!(
            "work dir kept at {} (logs in {})",
            kept.display(),
            kept.join("logs").display()
        ))?;
    }
    result
}

/// Everything between starting the first child and the verdict.
async fn drive(
    args: &DemoArgs,
    binaries: &Binaries,
    work_dir: &Path,
    fleet: &mut Fleet,
) -> anyhow::Result<Verdict> {
    // 1. Controller.
    let controller_ready = work_dir.join("controller.addr");
    fleet.spawn(
        "controller",
        &binaries.controller,
        &os_args([
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            work_dir.join("controller").into(),
            "--ready-file".into(),
            controller_ready.clone().into(),
            "--checkin-interval-ms".into(),
            CHECKIN_INTERVAL_MS.to_string().into(),
        ]),
    )?;
    let controller_addr = fleet
        .wait_for_ready_file("controller", &controller_ready, READY_TIMEOUT)
        .await?;
    let controller_url = format!("http://{controller_addr}");
    output::emit(&format!("controller listening on {controller_url}"))?;

    // 2. Storage node.
    let storage_ready = work_dir.join("storage.addr");
    fleet.spawn(
        "storage-node",
        &binaries.storage_node,
        &os_args([
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            work_dir.join("storage").into(),
            "--controller".into(),
            controller_url.clone().into(),
            "--site".into(),
            "hq".into(),
            "--ready-file".into(),
            storage_ready.clone().into(),
        ]),
    )?;
    let storage_addr = fleet
        .wait_for_ready_file("storage-node", &storage_ready, READY_TIMEOUT)
        .await?;
    output::emit(&format!("storage node listening on http://{storage_addr}"))?;

    // 3. Machines and their agents.
    let machines = machines::generate(args, binaries, work_dir, fleet).await?;
    machines::start_agents(&machines, binaries, &controller_url, fleet)?;
    let hostnames: Vec<String> = machines.iter().map(|m| m.hostname.clone()).collect();
    let mut client = client::connect(&controller_url).await?;
    machines::wait_for_enrollment(
        &mut client,
        &controller_url,
        fleet,
        &hostnames,
        ENROLL_TIMEOUT,
    )
    .await?;

    // 4. Plan and wave.
    let plan_path = work_dir.join("plan.toml");
    let plan = plan_file::render(&hostnames);
    tokio::fs::write(&plan_path, &plan)
        .await
        .with_context(|| format!("cannot write {}", plan_path.display()))?;
    let request = PlanRequest {
        source: plan,
        file_name: plan_path.display().to_string(),
    };
    let applied = client
        .apply_plan(request)
        .await
        .map_err(|status| {
            rpc_error(
                &controller_url,
                &format!("apply plan {}", plan_path.display()),
                &status,
            )
        })?
        .into_inner();
    output::emit(&output::render_plan_summary(
        "applied plan",
        &applied.plan,
        &applied.waves,
    ))?;
    let wave = plan_file::WAVE_NAME;
    client
        .start_wave(WaveRequest {
            wave: wave.to_owned(),
            actor: crate::commands::operator_actor(),
        })
        .await
        .map_err(|status| rpc_error(&controller_url, &format!("start wave {wave}"), &status))?;
    output::emit(&format!("started wave {wave}"))?;

    // 5. Follow it to the end.
    let status = progress::follow(
        &mut client,
        &controller_url,
        fleet,
        wave,
        machines.len(),
        Duration::from_secs(args.timeout_secs),
    )
    .await?;

    // 6. Report and verify.
    output::emit("")?;
    output::emit(&report::render_summary(&status.jobs, output::now_unix_ms()))?;
    let not_done = status
        .jobs
        .iter()
        .filter(|job| output::phase_of(job.phase) != fleetmig_proto::v1::JobPhase::Done)
        .count();
    let verification = report::verify(machines, &status.jobs).await?;
    output::emit(&report::render_verdict(
        &verification,
        not_done,
        status.jobs.len(),
    ))?;
    if not_done == 0 && verification.is_ok() && verification.machines == hostnames.len() {
        Ok(Verdict::Success)
    } else {
        Ok(Verdict::Failure)
    }
}

fn os_args<const N: usize>(args: [OsString; N]) -> Vec<OsString> {
    args.into()
}
