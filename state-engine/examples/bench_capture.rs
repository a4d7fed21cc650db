//! Times generate, `cp -al`, capture, verify, reimage and restore on a generated machine.
//!
//! `cargo run --release -p fleetmig-state --example bench_capture -- [files_total] [users]`

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use fleetmig_state::{CaptureOptions, GenOptions, NoProgress, RestoreOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: u32 = args
        .next()
        .map(|arg| arg.parse())
        .transpose()?
        .unwrap_or(100_000);
    let users: u32 = args.next().map(|arg| arg.parse()).transpose()?.unwrap_or(4);
    // With a third argument, the machine is kept there and reused, and only capture is timed.
    let keep: Option<PathBuf> = args.next().map(PathBuf::from);
    let temp = tempfile::tempdir()?;
    let base = keep.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let root = base.join("pc");
    let opts = GenOptions {
        seed: 1,
        users,
        files_per_user: total / users,
        hostname: None,
    };

    if !root.exists() {
        let started = Instant::now();
        let generated = fleetmig_state::generate_machine(&root, &opts)?;
        eprintln!(
            "generate: {} files, {} MB in {:?}",
            generated.files,
            generated.bytes >> 20,
            started.elapsed()
        );
    }
    // Fresh names each run: deleting big trees right before makes ext4 inode allocation slow.
    let run = std::process::id();

    let started = Instant::now();
    let status = Command::new("cp")
        .arg("-al")
        .arg(root.join("Documents and Settings"))
        .arg(base.join(format!("cp-al-{run}")))
        .status()?;
    let cp_al = started.elapsed();
    eprintln!("cp -al: {cp_al:?} ({status})");

    let store: PathBuf = root.join(format!("MigStore-{run}"));
    let started = Instant::now();
    let report =
        fleetmig_state::capture(&root, &store, &CaptureOptions::new("bench"), &NoProgress)?;
    let capture = started.elapsed();
    eprintln!(
        "capture: {} files, {} excluded in {capture:?} ({:.2}x cp -al)",
        report.files,
        report.excluded_files,
        capture.as_secs_f64() / cp_al.as_secs_f64()
    );

    let started = Instant::now();
    let manifest = fleetmig_state::Manifest::load_sealed(&store)?;
    eprintln!(
        "load_sealed: {} entries in {:?}",
        manifest.entries.len(),
        started.elapsed()
    );
    let started = Instant::now();
    let bytes = manifest.to_json()?;
    eprintln!(
        "serialize: {} MB in {:?}",
        bytes.len() >> 20,
        started.elapsed()
    );
    let scratch = tempfile::tempdir_in(&base)?;
    let started = Instant::now();
    manifest.write_sealed(scratch.path())?;
    eprintln!("write_sealed: {:?}", started.elapsed());
    if keep.is_some() {
        return Ok(());
    }

    let started = Instant::now();
    let verified = fleetmig_state::verify_store(&root, &store)?;
    eprintln!(
        "verify_store: ok={} in {:?}",
        verified.is_ok(),
        started.elapsed()
    );

    let started = Instant::now();
    fleetmig_state::simulate_reimage(&root, std::slice::from_ref(&store))?;
    eprintln!("reimage: {:?}", started.elapsed());

    let started = Instant::now();
    let restored = fleetmig_state::restore(&store, &root, &RestoreOptions::default(), &NoProgress)?;
    eprintln!(
        "restore: {} files in {:?}",
        restored.files_linked,
        started.elapsed()
    );

    let started = Instant::now();
    let verified = fleetmig_state::restore::verify_restore(&store, &root)?;
    eprintln!(
        "verify_restore: ok={} in {:?}",
        verified.is_ok(),
        started.elapsed()
    );
    Ok(())
}
