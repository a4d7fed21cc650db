//! Hard-link scan and load next to `cp -al`, warm and cold cache, in one run.
//!
//! `bash scripts/bench-hardlink.sh [FILES]` builds this in release mode and runs it as
//! `bench_hardlink FILES WORK_DIR`. It generates a machine of about FILES files in
//! `WORK_DIR/pc` (WORK_DIR must be empty and on the filesystem to measure), then prints:
//!
//! - **scan**: our capture (walk, link, manifest written, sealed and fsync'd) next to
//!   `cp -al` of the same `Documents and Settings/<user>` folders into another directory;
//! - **load**: our restore of that store into the reimaged tree (manifest loaded and checked,
//!   every store file checked, linked into `Users/<user>/…`, directory modes and mtimes set)
//!   next to `cp -al` of a copy of the store's `data/` tree into a fresh directory;
//!
//! each warm (one warm-up run each, then the best of three) and cold (`sync` and
//! `echo 3 > /proc/sys/vm/drop_caches` before each of three runs; "unavailable" when that file
//! cannot be written, e.g. without root). Everything is deleted again between runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleetmig_state::{CaptureOptions, GenOptions, NoProgress, RestoreOptions};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Measured runs per figure (the best one is printed).
const ROUNDS: usize = 3;
/// Users of the generated machine.
const USERS: u32 = 4;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let files: u32 = args
        .next()
        .map(|arg| arg.parse())
        .transpose()?
        .unwrap_or(100_000);
    let work = PathBuf::from(args.next().ok_or("usage: bench_hardlink FILES WORK_DIR")?);
    fs::create_dir_all(&work)?;
    if fs::read_dir(&work)?.next().is_some() {
        return Err(format!("{} is not empty", work.display()).into());
    }
    // Absolute: the reimage takes relative preserved paths as relative to the machine root.
    let work = work.canonicalize()?;
    let bench = Bench::new(&work, files)?;

    let scan = bench.compare(
        "scan",
        |cold| bench.scan_ours(cold),
        |cold| bench.scan_cp(cold),
    )?;
    bench.prepare_load()?;
    let load = bench.compare(
        "load",
        |cold| bench.load_ours(cold),
        |cold| bench.load_cp(cold),
    )?;
    #[allow(clippy::print_stdout, reason = "the figures are this command's output")]
    for line in scan.into_iter().chain(load) {
        println!("{line}");
    }
    Ok(())
}

struct Bench {
    work: PathBuf,
    root: PathBuf,
    users: Vec<String>,
}

impl Bench {
    fn new(work: &Path, files: u32) -> Result<Self> {
        let root = work.join("pc");
        let opts = GenOptions {
            seed: 1,
            users: USERS,
            files_per_user: files / USERS,
            hostname: None,
        };
        let started = Instant::now();
        let generated = fleetmig_state::generate_machine(&root, &opts)?;
        eprintln!(
            "generated {} files ({} MB) for {} users in {:.1}s under {}",
            generated.files,
            generated.bytes >> 20,
            generated.users.len(),
            started.elapsed().as_secs_f64(),
            root.display()
        );
        Ok(Self {
            work: work.to_path_buf(),
            root,
            users: generated.users,
        })
    }

    fn store(&self) -> PathBuf {
        self.root.join("MigStore")
    }

    /// Warm and cold figures for one operation; returns the printed lines.
    fn compare(
        &self,
        what: &str,
        mut ours: impl FnMut(bool) -> Result<Duration>,
        mut cp_al: impl FnMut(bool) -> Result<Duration>,
    ) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        // Warm-up, not measured.
        ours(false)?;
        cp_al(false)?;
        let (mut best_ours, mut best_cp) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            best_ours = best_ours.min(ours(false)?);
            best_cp = best_cp.min(cp_al(false)?);
        }
        lines.push(line(what, "warm", best_ours, best_cp));
        eprintln!("{}", lines[0]);

        if let Err(error) = drop_caches() {
            lines.push(format!("{what:5} cold: unavailable ({error})"));
            return Ok(lines);
        }
        let (mut best_ours, mut best_cp) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            best_ours = best_ours.min(ours(true)?);
            best_cp = best_cp.min(cp_al(true)?);
        }
        lines.push(line(what, "cold", best_ours, best_cp));
        eprintln!("{}", lines[1]);
        Ok(lines)
    }

    fn scan_ours(&self, cold: bool) -> Result<Duration> {
        let store = self.store();
        settle(cold)?;
        let started = Instant::now();
        fleetmig_state::capture(
            &self.root,
            &store,
            &CaptureOptions::new("bench"),
            &NoProgress,
        )?;
        let elapsed = started.elapsed();
        fleetmig_state::delete_store(&store)?;
        Ok(elapsed)
    }

    fn scan_cp(&self, cold: bool) -> Result<Duration> {
        let profiles = self.root.join("Documents and Settings");
        let sources: Vec<PathBuf> = self.users.iter().map(|user| profiles.join(user)).collect();
        self.time_cp_al(&sources, cold)
    }

    /// One capture kept as the load source, a `cp -al` copy of its data tree, then the reimage.
    fn prepare_load(&self) -> Result<()> {
        let store = self.store();
        let report = fleetmig_state::capture(
            &self.root,
            &store,
            &CaptureOptions::new("bench"),
            &NoProgress,
        )?;
        eprintln!(
            "captured {} files ({} excluded, {} symlinks)",
            report.files, report.excluded_files, report.symlinks
        );
        let data: Vec<PathBuf> = self
            .users
            .iter()
            .map(|user| store.join("data").join(user))
            .collect();
        cp_al(&data, &self.work.join("data-copy"))?;
        fleetmig_state::simulate_reimage(&self.root, std::slice::from_ref(&store))?;
        Ok(())
    }

    fn load_ours(&self, cold: bool) -> Result<Duration> {
        settle(cold)?;
        let started = Instant::now();
        let report = fleetmig_state::restore(
            &self.store(),
            &self.root,
            &RestoreOptions::default(),
            &NoProgress,
        )?;
        let elapsed = started.elapsed();
        let verified = fleetmig_state::verify_restore(&self.store(), &self.root)?;
        if !verified.is_ok() || report.files_linked != verified.files_checked {
            return Err(format!(
                "restore is wrong: {} linked, {} checked, mismatches {:?}",
                report.files_linked,
                verified.files_checked,
                &verified.mismatches[..verified.mismatches.len().min(5)]
            )
            .into());
        }
        for user in &self.users {
            fs::remove_dir_all(self.root.join("Users").join(user))?;
        }
        Ok(elapsed)
    }

    fn load_cp(&self, cold: bool) -> Result<Duration> {
        let data = self.work.join("data-copy");
        let sources: Vec<PathBuf> = self.users.iter().map(|user| data.join(user)).collect();
        self.time_cp_al(&sources, cold)
    }

    /// Times `cp -al SOURCES... FRESH_DIR`, then deletes the copy.
    fn time_cp_al(&self, sources: &[PathBuf], cold: bool) -> Result<Duration> {
        let dest = self.work.join("cp-al");
        settle(cold)?;
        let started = Instant::now();
        cp_al(sources, &dest)?;
        let elapsed = started.elapsed();
        fs::remove_dir_all(&dest)?;
        Ok(elapsed)
    }
}

/// `cp -al SOURCES... DEST/` with DEST created first.
fn cp_al(sources: &[PathBuf], dest: &Path) -> Result<()> {
    fs::create_dir(dest)?;
    let status = Command::new("cp")
        .arg("-al")
        .args(sources)
        .arg(dest)
        .status()?;
    if !status.success() {
        return Err(format!("cp -al into {} failed: {status}", dest.display()).into());
    }
    Ok(())
}

/// Flushes dirty data left by the previous run (so it is not billed to the next one) and, for
/// cold runs, empties the page, dentry and inode caches.
fn settle(cold: bool) -> Result<()> {
    rustix::fs::sync();
    if cold {
        drop_caches()?;
    }
    Ok(())
}

fn drop_caches() -> Result<()> {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|error| format!("cannot write /proc/sys/vm/drop_caches: {error}"))?;
    Ok(())
}

fn line(what: &str, cache: &str, ours: Duration, cp_al: Duration) -> String {
    format!(
        "{what:5} {cache}: fleetmig {:.2}s  cp -al {:.2}s  ratio {:.2}",
        ours.as_secs_f64(),
        cp_al.as_secs_f64(),
        ours.as_secs_f64() / cp_al.as_secs_f64()
    )
}
