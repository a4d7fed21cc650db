//! Times rule evaluation alone (no filesystem work) over the profiles of a generated machine.
//!
//! `cargo run --release -p fleetmig-state --example bench_rules -- <machine root> [rules.xml...]`
//!
//! Walks `Documents and Settings/*` once, then decides every directory and file with the
//! selection (the built-in rules, merged with any given files) through the public API.

use std::path::PathBuf;
use std::time::Instant;

use fleetmig_state::Selection;
use fleetmig_state::layout::{DirDecision, XP_PROFILES_DIR, is_system_profile};
use fleetmig_state::rules::RuleSet;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(
        args.next()
            .ok_or("usage: bench_rules <machine root> [rules.xml...]")?,
    );
    let mut sets = vec![RuleSet::builtin()];
    for path in args {
        let (set, warnings) = RuleSet::load(std::path::Path::new(&path))?;
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
        sets.push(set);
    }
    let selection = Selection::from_rules(RuleSet::merge(sets));

    let profiles = root.join(XP_PROFILES_DIR);
    let mut dirs: Vec<(String, String)> = Vec::new();
    let mut files: Vec<(String, String)> = Vec::new();
    for profile in std::fs::read_dir(&profiles)? {
        let profile = profile?;
        let user = profile.file_name().to_string_lossy().into_owned();
        if is_system_profile(&user) || !profile.file_type()?.is_dir() {
            continue;
        }
        for entry in walkdir::WalkDir::new(profile.path()).min_depth(1) {
            let entry = entry?;
            let rel = entry
                .path()
                .strip_prefix(profile.path())?
                .to_string_lossy()
                .into_owned();
            if entry.file_type().is_dir() {
                dirs.push((user.clone(), rel));
            } else {
                files.push((user.clone(), rel));
            }
        }
    }

    let started = Instant::now();
    let walked = dirs
        .iter()
        .filter(|(user, rel)| matches!(selection.decide_user_dir(user, rel), DirDecision::Walk(_)))
        .count();
    let dir_time = started.elapsed();
    let started = Instant::now();
    let included = files
        .iter()
        .filter(|(user, rel)| selection.decide_user_file(user, rel).is_some())
        .count();
    let file_time = started.elapsed();
    eprintln!(
        "dirs: {} ({walked} walked) in {dir_time:?} ({:.0} ns each)",
        dirs.len(),
        dir_time.as_nanos() as f64 / dirs.len().max(1) as f64
    );
    eprintln!(
        "files: {} ({included} included) in {file_time:?} ({:.0} ns each, single thread)",
        files.len(),
        file_time.as_nanos() as f64 / files.len().max(1) as f64
    );
    Ok(())
}
