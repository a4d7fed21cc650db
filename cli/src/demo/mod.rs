//! `fleetmig demo`: a refresh wave and a replace wave on this machine.
//!
//! Starts a controller and a storage node from the binaries next to
//! `fleetmig`, generates simulated XP machines with `fleetmig-worker simulate
//! gen-machine` (`PC-0001`.. to refresh in place, `XP-R01`.. to replace) and
//! fingerprints them, creates an empty destination machine per replace
//! source (`W7-R01`..), starts one worker agent per machine, applies a plan
//! with a refresh wave and (unless `--replace-pairs 0`) a replace wave, follows
//! both to the end, and compares every restored file with its original: on
//! the refreshed machine itself, or on the replace destination, whose state
//! travels through the storage node. Every replace source must be left as it
//! was. Children log to `WORK/logs/<name>.log` and are always stopped
//! (SIGTERM, then SIGKILL) before the command returns.

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
    /// Simulated XP machines to refresh in place.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=9999))]
    pub machines: u32,
    /// XP machines to replace with new (empty) hardware through the storage
    /// node; 0 runs the refresh wave only.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=999))]
    pub replace_pairs: u32,
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
    /// Give up if the waves have not finished after this many seconds.
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
        "fleetmig demo: {} machines to refresh, {} to replace, {} users each, {} files per user; work dir {}",
        args.machines,
        args.replace_pairs,
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
    // 0. The demo fleet's CA and certificates: everything below talks mutual TLS.
    let pki = work_dir.join("pki");
    fleetmig_auth::pki::init_dir(&pki, &[])?;
    let pem = |name: &str| pki.join(name).into_os_string();
    crate::client::set_transport(fleetmig_auth::Transport::Tls(std::sync::Arc::new(
        fleetmig_auth::tls::TlsFiles::in_dir(&pki, "admin").load()?,
    )));

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
            "--ca".into(),
            pem("ca.pem"),
            "--cert".into(),
            pem("controller.pem"),
            "--key".into(),
            pem("controller.key"),
            "--ca-key".into(),
            pem("ca.key"),
        ]),
    )?;
    let controller_addr = fleet
        .wait_for_ready_file("controller", &controller_ready, READY_TIMEOUT)
        .await?;
    let controller_url = format!("https://{controller_addr}");
    output::emit(&format!(
        "controller listening on {controller_url} (mutual TLS)"
    ))?;

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
            "--ca".into(),
            pem("ca.pem"),
            "--cert".into(),
            pem("storage-node.pem"),
            "--key".into(),
            pem("storage-node.key"),
        ]),
    )?;
    let storage_addr = fleet
        .wait_for_ready_file("storage-node", &storage_ready, READY_TIMEOUT)
        .await?;
    output::emit(&format!("storage node listening on https://{storage_addr}"))?;

    // Workers enroll with a bootstrap token (one use per machine).
    let machine_count = args.machines + 2 * args.replace_pairs;
    let token = client::connect(&controller_url)
        .await?
        .create_enrollment_token(fleetmig_proto::v1::CreateEnrollmentTokenRequest {
            uses: machine_count.max(1),
            ttl_secs: 3600,
        })
        .await
        .map_err(|status| rpc_error(&controller_url, "create an enrollment token", &status))?
        .into_inner()
        .token;
    let token_file = pki.join("bootstrap.token");
    tokio::fs::write(&token_file, token)
        .await
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    let enrollment = machines::Enrollment {
        ca: pki.join("ca.pem"),
        token_file,
    };

    // 3. Machines and their agents.
    let mut specs = machines::refresh_specs(args.machines);
    specs.extend(machines::replace_source_specs(args.replace_pairs));
    let mut machines = machines::generate(specs, args, binaries, work_dir, fleet).await?;
    let sources = machines.split_off(args.machines as usize);
    let pairs = machines::pair_up(sources, work_dir).await?;
    let agents = machines
        .iter()
        .map(|machine| (machine.hostname.as_str(), machine.root.as_path()))
        .chain(pairs.iter().flat_map(|pair| {
            [
                (pair.source.hostname.as_str(), pair.source.root.as_path()),
                (pair.destination.as_str(), pair.destination_root.as_path()),
            ]
        }));
    machines::start_agents(agents, binaries, &controller_url, &enrollment, fleet)?;
    let hostnames: Vec<String> = machines.iter().map(|m| m.hostname.clone()).collect();
    let enrolling: Vec<String> = hostnames
        .iter()
        .cloned()
        .chain(
            pairs
                .iter()
                .flat_map(|pair| [pair.source.hostname.clone(), pair.destination.clone()]),
        )
        .collect();
    let mut client = client::connect(&controller_url).await?;
    machines::wait_for_enrollment(
        &mut client,
        &controller_url,
        fleet,
        &enrolling,
        ENROLL_TIMEOUT,
    )
    .await?;

    // 4. Plan and waves.
    let plan_path = work_dir.join("plan.toml");
    let plan_pairs: Vec<plan_file::Pair<'_>> = pairs
        .iter()
        .map(|pair| plan_file::Pair {
            source: &pair.source.hostname,
            destination: &pair.destination,
        })
        .collect();
    let plan = plan_file::render(&hostnames, &plan_pairs);
    tokio::fs::write(&plan_path, &plan)
        .await
        .with_context(|| format!("cannot write {}", plan_path.display()))?;
    let request = PlanRequest {
        source: plan,
        file_name: plan_path.display().to_string(),
        attachments: Default::default(),
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
    let mut waves = vec![progress::FollowedWave {
        name: plan_file::WAVE_NAME,
        expected_jobs: machines.len(),
    }];
    if !pairs.is_empty() {
        waves.push(progress::FollowedWave {
            name: plan_file::REPLACE_WAVE_NAME,
            expected_jobs: pairs.len(),
        });
    }
    for wave in &waves {
        client
            .start_wave(WaveRequest {
                wave: wave.name.to_owned(),
                actor: crate::commands::operator_actor(),
            })
            .await
            .map_err(|status| {
                rpc_error(
                    &controller_url,
                    &format!("start wave {}", wave.name),
                    &status,
                )
            })?;
        output::emit(&format!("started wave {}", wave.name))?;
    }

    // 5. Follow both to the end.
    let status = progress::follow(
        &mut client,
        &controller_url,
        fleet,
        &waves,
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
    // Refresh machines and replace destinations hold restored files.
    let restored_machines = machines.len() + pairs.len();
    let verification = report::verify(machines, pairs, &status.jobs).await?;
    output::emit(&report::render_verdict(
        &verification,
        not_done,
        status.jobs.len(),
    ))?;
    if not_done == 0 && verification.is_ok() && verification.machines == restored_machines {
        Ok(Verdict::Success)
    } else {
        Ok(Verdict::Failure)
    }
}

fn os_args<const N: usize>(args: [OsString; N]) -> Vec<OsString> {
    args.into()
}
