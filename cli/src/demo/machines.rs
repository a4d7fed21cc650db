//! Simulated XP machines: generating them, fingerprinting what their
//! migration must produce, starting their agents, waiting for enrollment.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetmig_proto::v1::ListMachinesRequest;
use fleetmig_state::fingerprint::{self, FileFingerprint};

use super::DemoArgs;
use super::processes::{self, Binaries, Fleet};
use crate::client::{OperatorClient, rpc_error};
use crate::output;

/// One generated machine.
#[derive(Debug)]
pub struct DemoMachine {
    /// `PC-0001`, ...
    pub hostname: String,
    /// Its simulated disk.
    pub root: PathBuf,
    /// Win7 target path -> fingerprint every migrated file must have.
    pub expected: BTreeMap<String, FileFingerprint>,
}

/// Hostname of the `index`-th machine (1-based).
pub fn hostname(index: u32) -> String {
    format!("PC-{index:04}")
}

fn dir_name(index: u32) -> String {
    format!("pc-{index:04}")
}

/// Generates the machines (a few at a time) with `fleetmig-worker simulate
/// gen-machine` and fingerprints each before anything touches it.
pub async fn generate(
    args: &DemoArgs,
    binaries: &Binaries,
    work_dir: &Path,
    fleet: &Fleet,
) -> anyhow::Result<Vec<DemoMachine>> {
    let machines_dir = work_dir.join("machines");
    tokio::fs::create_dir_all(&machines_dir)
        .await
        .with_context(|| format!("cannot create {}", machines_dir.display()))?;
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    // Bounds how many generators (each a process writing many files) run at once.
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 1..=args.machines {
        let hostname = hostname(index);
        let root = machines_dir.join(dir_name(index));
        let name = format!("gen-{}", dir_name(index));
        let log_path = fleet.log_path(&name);
        let worker = binaries.worker.clone();
        let gen_args: Vec<OsString> = vec![
            "simulate".into(),
            "gen-machine".into(),
            "--seed".into(),
            index.to_string().into(),
            "--users".into(),
            args.users.to_string().into(),
            "--files".into(),
            args.files.to_string().into(),
            "--hostname".into(),
            hostname.clone().into(),
            root.clone().into(),
        ];
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            processes::run_to_completion(&name, &worker, &gen_args, &log_path).await?;
            if !tokio::fs::try_exists(&root).await.unwrap_or(false) {
                bail!(
                    "{} simulate gen-machine exited successfully but did not create {}",
                    worker.display(),
                    root.display()
                );
            }
            let fingerprint_root = root.clone();
            let expected = tokio::task::spawn_blocking(move || {
                fingerprint::expected_after_refresh(&fingerprint_root)
            })
            .await?
            .with_context(|| format!("cannot fingerprint {}", root.display()))?;
            anyhow::Ok(DemoMachine {
                hostname,
                root,
                expected,
            })
        });
    }
    let mut machines = Vec::with_capacity(args.machines as usize);
    while let Some(joined) = tasks.join_next().await {
        let machine = joined.context("machine generator task failed")??;
        output::emit(&format!(
            "generated {} ({} files to migrate)",
            machine.hostname,
            machine.expected.len()
        ))?;
        machines.push(machine);
    }
    machines.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(machines)
}

/// Starts one `fleetmig-worker agent` per machine.
pub fn start_agents(
    machines: &[DemoMachine],
    binaries: &Binaries,
    controller_url: &str,
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    for machine in machines {
        let args: Vec<OsString> = vec![
            "agent".into(),
            "--controller".into(),
            controller_url.into(),
            "--machine-root".into(),
            machine.root.clone().into(),
        ];
        let name = format!("worker-{}", machine.hostname.to_lowercase());
        fleet.spawn(&name, &binaries.worker, &args)?;
    }
    Ok(())
}

/// Polls `ListMachines` until every hostname is enrolled.
pub async fn wait_for_enrollment(
    client: &mut OperatorClient,
    controller_url: &str,
    fleet: &mut Fleet,
    hostnames: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let wanted: BTreeSet<&str> = hostnames.iter().map(String::as_str).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reported = usize::MAX;
    loop {
        fleet.check_alive()?;
        let listed = client
            .list_machines(ListMachinesRequest::default())
            .await
            .map_err(|status| rpc_error(controller_url, "list machines", &status))?
            .into_inner();
        let enrolled: BTreeSet<&str> = listed
            .machines
            .iter()
            .filter_map(|machine| machine.inventory.as_ref())
            .map(|inventory| inventory.hostname.as_str())
            .filter(|hostname| wanted.contains(hostname))
            .collect();
        if enrolled.len() != reported {
            reported = enrolled.len();
            output::emit(&format!("{reported}/{} machines enrolled", wanted.len()))?;
        }
        if enrolled.len() == wanted.len() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<&str> = wanted.difference(&enrolled).copied().take(10).collect();
            bail!(
                "machines not enrolled after {}s: {} (see the worker-*.log files)",
                timeout.as_secs(),
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
