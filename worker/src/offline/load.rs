//! `load`: restore a store into the Windows 7 layout, then verify every restored file. A packed
//! store (it has a `store.json`) goes to [`super::packed::load`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use fleetmig_state::manifest::Manifest;
use fleetmig_state::{Phase, Progress, ProgressSink, RestoreOptions};
use serde::Serialize;

use super::args::LoadArgs;
use super::exit::Code;
use super::output::{Outcome, human_bytes};
use super::progress::Reporter;
use super::scan::Skipped;
use crate::error::{Error, Result};

/// A file restored under another name because a different file held its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Renamed {
    /// Where it belonged.
    pub target: String,
    /// Where it went (`name(1).ext`).
    pub actual: String,
}

/// The summary of `load`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadSummary {
    /// The store, as given.
    pub store: PathBuf,
    /// The machine root, as given.
    pub machine_root: PathBuf,
    /// Profiles restored, under their new names.
    pub users: Vec<String>,
    /// Profile renames applied (old → new).
    pub user_map: BTreeMap<String, String>,
    /// Files linked into place.
    pub files_linked: u64,
    /// Files that were already in place.
    pub files_already_present: u64,
    /// Bytes of the restored files.
    pub bytes: u64,
    /// Directories applied.
    pub dirs: u64,
    /// Symlinks recreated.
    pub symlinks: u64,
    /// Symlinks not recreated because they point outside their profile.
    pub symlinks_skipped: Vec<String>,
    /// Files restored under a collision name.
    pub renamed: Vec<Renamed>,
    /// Different files replaced (`--overwrite`).
    pub overwritten: Vec<String>,
    /// Files not restored (`--continue-on-error`), by target path.
    pub skipped: Vec<Skipped>,
    /// Files checked after the restore.
    pub files_checked: u64,
    /// Restored files that do not match the store (one line each).
    pub mismatches: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Runs `load`.
pub fn run(args: &LoadArgs, reporter: &Reporter) -> Result<Outcome> {
    let started = Instant::now();
    if !args.store.is_dir() {
        return Err(Error::BadArguments(format!(
            "store {} does not exist or is not a directory",
            args.store.display()
        )));
    }
    if !args.machine_root.is_dir() {
        return Err(Error::BadArguments(format!(
            "machine root {} does not exist or is not a directory",
            args.machine_root.display()
        )));
    }
    // Any `store.json` means a packed store: a malformed one or one of another kind is then
    // reported as such (13), not as a hard-link store without a seal.
    if super::packed_store::is_packed(&args.store) {
        return super::packed::load(args, reporter);
    }
    if args.key_file.is_some() {
        tracing::warn!(store = %args.store.display(), "--key-file ignored: not a packed store");
    }
    let manifest = Manifest::load_sealed(&args.store)?;
    let user_map = user_map(&args.user_map, &manifest.users)?;
    let options = RestoreOptions {
        overwrite: args.overwrite,
        continue_on_error: args.continue_on_error,
        user_map: user_map.clone(),
        ..RestoreOptions::default()
    };
    let report = fleetmig_state::restore(&args.store, &args.machine_root, &options, reporter)?;
    reporter.update(&Progress {
        phase: Phase::Verifying,
        files_done: 0,
        files_total: report.files_linked + report.files_already_present,
        bytes_done: 0,
        bytes_total: 0,
        current_user: None,
    });
    let verified = fleetmig_state::verify_restore_with(&args.store, &args.machine_root, &options)?;
    // Files skipped on purpose are missing on purpose: they are listed as skipped instead.
    let mismatches: Vec<String> = verified
        .mismatches
        .into_iter()
        .filter(|line| {
            !report
                .skipped
                .iter()
                .any(|(target, _)| line.starts_with(&format!("{target}: ")))
        })
        .collect();
    let summary = LoadSummary {
        store: args.store.clone(),
        machine_root: args.machine_root.clone(),
        users: report.users,
        user_map,
        files_linked: report.files_linked,
        files_already_present: report.files_already_present,
        bytes: report.bytes,
        dirs: report.dirs,
        symlinks: report.symlinks,
        symlinks_skipped: report.symlinks_skipped,
        renamed: report
            .renamed
            .into_iter()
            .map(|(target, actual)| Renamed { target, actual })
            .collect(),
        overwritten: report.overwritten,
        skipped: report
            .skipped
            .into_iter()
            .map(|(path, reason)| Skipped { path, reason })
            .collect(),
        files_checked: verified.files_checked,
        mismatches,
        seconds: started.elapsed().as_secs_f64(),
    };
    let code = if !summary.mismatches.is_empty() {
        Code::VerifyFailed
    } else if !summary.skipped.is_empty() {
        Code::Skipped
    } else {
        Code::Success
    };
    let text = render(&summary);
    Ok(Outcome::new(code, &summary, text))
}

/// Checks `--user-map` pairs: each old name is a captured user, mapped once, to a plain name.
pub(super) fn user_map(
    pairs: &[(String, String)],
    captured: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (old, new) in pairs {
        if !captured.contains(old) {
            return Err(Error::BadArguments(format!(
                "--user-map {old}={new}: the store has no user {old:?} (it has: {})",
                captured.join(", ")
            )));
        }
        let plain = !new.is_empty()
            && new != "."
            && new != ".."
            && !new.contains(['/', '\\', '\0'])
            && !fleetmig_state::layout::is_system_profile(new);
        if !plain {
            return Err(Error::BadArguments(format!(
                "--user-map {old}={new}: {new:?} is not a usable profile name"
            )));
        }
        if map.insert(old.clone(), new.clone()).is_some() {
            return Err(Error::BadArguments(format!(
                "--user-map: {old:?} is mapped more than once"
            )));
        }
    }
    Ok(map)
}

fn render(summary: &LoadSummary) -> String {
    render_text(&LoadText {
        header: format!(
            "load of {} into {}",
            summary.store.display(),
            summary.machine_root.display()
        ),
        users: &summary.users,
        user_map: &summary.user_map,
        files_verb: "linked",
        files: summary.files_linked,
        files_already_present: summary.files_already_present,
        bytes: summary.bytes,
        dirs: summary.dirs,
        symlinks: summary.symlinks,
        symlinks_skipped: &summary.symlinks_skipped,
        renamed: &summary.renamed,
        overwritten: &summary.overwritten,
        skipped: &summary.skipped,
        files_checked: summary.files_checked,
        mismatches: &summary.mismatches,
        seconds: summary.seconds,
    })
}

/// What the text summary of a load shows, for both kinds of store.
pub(super) struct LoadText<'a> {
    /// The first line: what was loaded from where into where.
    pub header: String,
    pub users: &'a [String],
    pub user_map: &'a BTreeMap<String, String>,
    /// "linked" (hard-link store) or "written" (packed store).
    pub files_verb: &'static str,
    pub files: u64,
    pub files_already_present: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub symlinks_skipped: &'a [String],
    pub renamed: &'a [Renamed],
    pub overwritten: &'a [String],
    pub skipped: &'a [Skipped],
    pub files_checked: u64,
    pub mismatches: &'a [String],
    pub seconds: f64,
}

/// The text summary of a load.
pub(super) fn render_text(summary: &LoadText<'_>) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{}", summary.header);
    let _ = writeln!(text, "users: {}", summary.users.join(", "));
    for (old, new) in summary.user_map {
        let _ = writeln!(text, "  {old} restored as {new}");
    }
    let _ = writeln!(
        text,
        "files: {} {}, {} already in place ({}), directories: {}, symlinks: {}",
        summary.files,
        summary.files_verb,
        summary.files_already_present,
        human_bytes(summary.bytes),
        summary.dirs,
        summary.symlinks
    );
    for renamed in summary.renamed {
        let _ = writeln!(text, "  renamed: {} -> {}", renamed.target, renamed.actual);
    }
    for target in summary.overwritten {
        let _ = writeln!(text, "  overwritten: {target}");
    }
    for target in summary.symlinks_skipped {
        let _ = writeln!(text, "  symlink not recreated (points outside): {target}");
    }
    if !summary.skipped.is_empty() {
        let _ = writeln!(text, "skipped: {}", summary.skipped.len());
        for skipped in summary.skipped {
            let _ = writeln!(text, "  {}: {}", skipped.path, skipped.reason);
        }
    }
    if summary.mismatches.is_empty() {
        let _ = writeln!(text, "verified: {} files match", summary.files_checked);
    } else {
        let _ = writeln!(
            text,
            "verification FAILED: {} of {} files do not match",
            summary.mismatches.len(),
            summary.files_checked
        );
        for line in summary.mismatches {
            let _ = writeln!(text, "  {line}");
        }
    }
    let _ = writeln!(text, "took {:.2}s", summary.seconds);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_maps_are_checked() {
        let captured = vec!["alice".to_owned(), "bob".to_owned()];
        let pair = |old: &str, new: &str| (old.to_owned(), new.to_owned());
        let map = user_map(&[pair("alice", "asmith")], &captured).unwrap();
        assert_eq!(map["alice"], "asmith");
        for bad in [
            vec![pair("carol", "x")],
            vec![pair("alice", "..")],
            vec![pair("alice", "a/b")],
            vec![pair("alice", "Public")],
            vec![pair("alice", "x"), pair("alice", "y")],
        ] {
            assert!(user_map(&bad, &captured).is_err(), "{bad:?}");
        }
    }
}
