//! Simulated machines: generating the XP ones, fingerprinting what their
//! migration must produce, creating the empty replace destinations, starting
//! their agents, waiting for enrollment.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetmig_proto::v1::ListMachinesRequest;
use fleetmig_state::fingerprint::{self, FileFingerprint};
use fleetmig_state::layout::XP_PROFILES_DIR;

use super::DemoArgs;
use super::processes::{self, Binaries, Fleet};
use crate::client::{OperatorClient, rpc_error};
use crate::output;

/// Added to a replace source's index for its generator seed, so that no
/// source shares a seed (and so its files) with a refresh machine (whose
/// seeds are their indexes, at most 9999).
const REPLACE_SEED_BASE: u32 = 10_000;

/// A machine to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// Hostname written into the machine.
    pub hostname: String,
    /// Directory under `WORK/machines`.
    pub dir_name: String,
    /// `gen-machine` seed; distinct for every machine of the demo.
    pub seed: u32,
}

/// One generated XP machine.
#[derive(Debug)]
pub struct DemoMachine {
    /// `PC-0001`, `XP-R01`, ...
    pub hostname: String,
    /// Its simulated disk.
    pub root: PathBuf,
    /// Win7 target path -> fingerprint every migrated file must have.
    pub expected: BTreeMap<String, FileFingerprint>,
}

/// A replace source and the new machine its state moves to.
#[derive(Debug)]
pub struct ReplacePair {
    /// The XP machine; `expected` is what the destination must hold afterwards.
    pub source: DemoMachine,
    /// Every regular file under the source's XP profiles (path relative to
    /// its root) -> fingerprint before the migration: a replace leaves the
    /// source as it was.
    pub source_before: BTreeMap<String, FileFingerprint>,
    /// `W7-R01`, ...
    pub destination: String,
    /// The destination's disk, empty before the migration.
    pub destination_root: PathBuf,
}

/// Hostname of the `index`-th refresh machine (1-based).
pub fn hostname(index: u32) -> String {
    format!("PC-{index:04}")
}

/// Hostname of the `index`-th replace source (1-based).
pub fn source_hostname(index: u32) -> String {
    format!("XP-R{index:02}")
}

/// Hostname of the `index`-th replace destination (1-based).
pub fn destination_hostname(index: u32) -> String {
    format!("W7-R{index:02}")
}

/// The refresh machines: `PC-0001`.. seeded with their index.
pub fn refresh_specs(count: u32) -> Vec<MachineSpec> {
    (1..=count)
        .map(|index| MachineSpec {
            hostname: hostname(index),
            dir_name: format!("pc-{index:04}"),
            seed: index,
        })
        .collect()
}

/// The replace sources: `XP-R01`.., seeded apart from the refresh machines.
pub fn replace_source_specs(count: u32) -> Vec<MachineSpec> {
    (1..=count)
        .map(|index| MachineSpec {
            hostname: source_hostname(index),
            dir_name: format!("xp-r{index:02}"),
            seed: REPLACE_SEED_BASE + index,
        })
        .collect()
}

/// Generates the machines (a few at a time) with `fleetmig-worker simulate
/// gen-machine` and fingerprints each before anything touches it; returns
/// them in the order of `specs`.
pub async fn generate(
    specs: Vec<MachineSpec>,
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
    let count = specs.len();
    for (position, spec) in specs.into_iter().enumerate() {
        let root = machines_dir.join(&spec.dir_name);
        let name = format!("gen-{}", spec.dir_name);
        let log_path = fleet.log_path(&name);
        let worker = binaries.worker.clone();
        let gen_args: Vec<OsString> = vec![
            "simulate".into(),
            "gen-machine".into(),
            "--seed".into(),
            spec.seed.to_string().into(),
            "--users".into(),
            args.users.to_string().into(),
            "--files".into(),
            args.files.to_string().into(),
            "--hostname".into(),
            spec.hostname.clone().into(),
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
            anyhow::Ok((
                position,
                DemoMachine {
                    hostname: spec.hostname,
                    root,
                    expected,
                },
            ))
        });
    }
    let mut machines: Vec<(usize, DemoMachine)> = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        let (position, machine) = joined.context("machine generator task failed")??;
        output::emit(&format!(
            "generated {} ({} files to migrate)",
            machine.hostname,
            machine.expected.len()
        ))?;
        machines.push((position, machine));
    }
    machines.sort_by_key(|(position, _)| *position);
    Ok(machines.into_iter().map(|(_, machine)| machine).collect())
}

/// Every regular file under the XP profiles of `root` with its fingerprint.
pub fn fingerprint_profiles(
    root: &Path,
) -> fleetmig_state::Result<BTreeMap<String, FileFingerprint>> {
    let files = fingerprint::list_files_under(root, XP_PROFILES_DIR)?;
    fingerprint::actual(root, files.iter().map(String::as_str))
}

/// Fingerprints each source's profiles and creates its empty destination
/// machine: `W7-R01` for the first source, and so on.
///
/// The directory is named exactly like the destination's hostname (case
/// included): a root with no computername file enrolls under its
/// directory's name (`fleetmig_state::inventory::read_hostname`).
pub async fn pair_up(
    sources: Vec<DemoMachine>,
    work_dir: &Path,
) -> anyhow::Result<Vec<ReplacePair>> {
    let machines_dir = work_dir.join("machines");
    let mut pairs = Vec::with_capacity(sources.len());
    for (index, source) in (1..).zip(sources) {
        let root = source.root.clone();
        let source_before = tokio::task::spawn_blocking(move || fingerprint_profiles(&root))
            .await
            .context("fingerprint task failed")?
            .with_context(|| format!("cannot fingerprint {}", source.root.display()))?;
        let destination = destination_hostname(index);
        let destination_root = machines_dir.join(&destination);
        tokio::fs::create_dir_all(&destination_root)
            .await
            .with_context(|| format!("cannot create {}", destination_root.display()))?;
        output::emit(&format!(
            "created {destination} (empty new hardware for {})",
            source.hostname
        ))?;
        pairs.push(ReplacePair {
            source,
            source_before,
            destination,
            destination_root,
        });
    }
    Ok(pairs)
}

/// What a demo worker enrolls with: the fleet's CA and a bootstrap token.
pub struct Enrollment {
    /// The CA certificate (PEM).
    pub ca: std::path::PathBuf,
    /// The file holding the bootstrap token.
    pub token_file: std::path::PathBuf,
}

/// Starts one `fleetmig-worker agent` per (hostname, machine root).
pub fn start_agents<'a>(
    machines: impl IntoIterator<Item = (&'a str, &'a Path)>,
    binaries: &Binaries,
    controller_url: &str,
    enrollment: &Enrollment,
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    for (hostname, root) in machines {
        let args: Vec<OsString> = vec![
            "agent".into(),
            "--controller".into(),
            controller_url.into(),
            "--machine-root".into(),
            root.into(),
            "--ca".into(),
            enrollment.ca.clone().into(),
            "--bootstrap-token-file".into(),
            enrollment.token_file.clone().into(),
        ];
        let name = format!("worker-{}", hostname.to_lowercase());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_machine_has_its_own_hostname_directory_and_seed() {
        let mut specs = refresh_specs(3);
        specs.extend(replace_source_specs(2));
        assert_eq!(specs[0].hostname, "PC-0001");
        assert_eq!(specs[0].dir_name, "pc-0001");
        assert_eq!(specs[3].hostname, "XP-R01");
        assert_eq!(specs[4].dir_name, "xp-r02");
        let seeds: BTreeSet<u32> = specs.iter().map(|spec| spec.seed).collect();
        let dirs: BTreeSet<&str> = specs.iter().map(|spec| spec.dir_name.as_str()).collect();
        assert_eq!((seeds.len(), dirs.len()), (5, 5));
        assert!(
            replace_source_specs(1)[0].seed > 9999,
            "apart from every refresh seed"
        );
        assert_eq!(destination_hostname(1), "W7-R01");
        assert_eq!(destination_hostname(12), "W7-R12");
    }

    #[tokio::test]
    async fn pairs_fingerprint_the_source_and_get_an_empty_destination_named_like_its_hostname() {
        let work = tempfile::tempdir().expect("tempdir");
        let source = DemoMachine {
            hostname: source_hostname(1),
            root: work.path().join("machines/xp-r01"),
            expected: BTreeMap::new(),
        };
        std::fs::create_dir_all(source.root.join(XP_PROFILES_DIR).join("alice")).expect("profile");
        std::fs::write(
            source.root.join(XP_PROFILES_DIR).join("alice/notes.txt"),
            "x",
        )
        .expect("file");
        let pairs = pair_up(vec![source], work.path()).await.expect("create");
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].source.hostname, "XP-R01");
        assert_eq!(pairs[0].destination, "W7-R01");
        let before: Vec<&str> = pairs[0].source_before.keys().map(String::as_str).collect();
        assert_eq!(before, ["Documents and Settings/alice/notes.txt"]);
        let root = &pairs[0].destination_root;
        assert_eq!(std::fs::read_dir(root).expect("created").count(), 0);
        assert_eq!(fleetmig_state::inventory::read_hostname(root), "W7-R01");
    }
}
