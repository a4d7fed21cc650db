//! `scan --packed` and `load` of a packed store: the replace scenario's format in a local
//! directory ([`DirStore`]), keyed by a fleet key file.
//!
//! The key file must exist unless `--create-key` is given (then a new random key is written
//! with mode 0600, and the summary says so): a typo in the path must not silently produce a
//! store nobody can open. The store's migration key is derived from the fleet key and its
//! migration id ([`crate::packed::offline_migration_key`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fleetmig_format::keys::{generate_key_bytes, load_key_bytes, write_key_file};
use fleetmig_format::{EntryKind, FleetKey};
use fleetmig_state::Selection;
use fleetmig_state::layout::XP_PROFILES_DIR;
use fleetmig_state::users::UserFilter;
use serde::Serialize;

use super::args::{LoadArgs, ScanArgs};
use super::exit::Code;
use super::load::Renamed;
use super::output::{Outcome, human_bytes};
use super::progress::Reporter;
use super::scan::{ScanSummary, Skipped};
use crate::error::{Error, Result};
use crate::identity::AGENT_DIR;
use crate::packed::{self, DirStore, Keys, offline_migration_key};

/// File name of the metadata cache in the machine's agent directory (shared with the agent).
pub const CACHE_FILE: &str = "packcache.bin";

/// The summary of `scan --packed`: the scan summary plus what the packed store did.
#[derive(Debug, Clone, Serialize)]
pub struct PackedScanSummary {
    /// Users, files, bytes, skipped... as for every scan.
    #[serde(flatten)]
    pub scan: ScanSummary,
    /// The fleet key file.
    pub key_file: PathBuf,
    /// Whether the key file was created by this scan (`--create-key`).
    pub key_created: bool,
    /// The store's migration id.
    pub migration_id: String,
    /// Distinct chunks the manifest references.
    pub chunks: u64,
    /// Chunks written to the store by this scan (the others were there already).
    pub chunks_written: u64,
    /// Sealed bytes written by this scan.
    pub sealed_bytes_written: u64,
    /// Size of the sealed manifest.
    pub manifest_bytes: u64,
    /// Files taken from the metadata cache without reading them.
    pub cache_hits: u64,
    /// Files read.
    pub files_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Entries whose target clashed with another's, restored under another name.
    pub renamed: Vec<Renamed>,
}

/// Runs `scan --packed` after the common checks and the Scanning walk of `scan`.
pub(super) fn scan(
    args: &ScanArgs,
    mut summary: ScanSummary,
    selection: Selection,
    filter: &UserFilter,
    reporter: &Reporter,
    started: Instant,
) -> Result<Outcome> {
    let key_file = args.key_file.as_ref().ok_or_else(|| {
        Error::BadArguments(
            "--packed needs --key-file FILE (the fleet key; add --create-key to make a new one)"
                .to_owned(),
        )
    })?;
    let (fleet_key, key_created) = load_or_create_key(key_file, args.create_key)?;
    refuse_store_in_profiles(&args.machine_root, &args.store)?;
    let migration_id = format!("scan-{}", uuid::Uuid::now_v7());
    let store = DirStore::create(
        &args.store,
        &migration_id,
        &summary.hostname,
        args.overwrite,
    )?;
    let keys = Keys {
        fleet: FleetKey::from_bytes(fleet_key),
        migration: offline_migration_key(&fleet_key, &migration_id),
    };
    let cache = (!args.no_cache).then(|| {
        args.cache_file
            .clone()
            .unwrap_or_else(|| args.machine_root.join(AGENT_DIR).join(CACHE_FILE))
    });
    let options = packed::CaptureOptions {
        capture: fleetmig_state::CaptureOptions {
            continue_on_error: args.continue_on_error,
            include_users: args.user_include.clone(),
            exclude_users: args.user_exclude.clone(),
            exclude_users_older_than: filter.exclude_older_than,
            selection,
            ..fleetmig_state::CaptureOptions::new(migration_id.clone())
        },
        cache,
        skip_dir: Some(args.store.clone()),
        pipeline: packed::PipelineConfig::default(),
    };
    reporter.set_totals(summary.files, summary.bytes);
    let report = packed::capture(&args.machine_root, &store, &keys, &options, reporter)?;
    summary.users = report.users.clone();
    summary.files = report.files;
    summary.bytes = report.bytes;
    summary.dirs = report.dirs;
    summary.symlinks = report.symlinks;
    summary.excluded_files = report.excluded_files;
    summary.skipped = report
        .skipped
        .iter()
        .map(|(path, reason)| Skipped {
            path: path.clone(),
            reason: reason.clone(),
        })
        .collect();
    summary.manifest_digest = Some(report.manifest_digest.clone());
    if let Some(list) = &args.list_files {
        let (manifest, _) = packed::fetch_manifest(&store, &keys.migration)?;
        let captured = manifest
            .entries
            .iter()
            .filter(|entry| entry.kind != EntryKind::Dir)
            .map(|entry| entry.source.as_str());
        super::scan::write_list(list, &args.machine_root, captured)?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    let code = if summary.skipped.is_empty() {
        Code::Success
    } else {
        Code::Skipped
    };
    let packed_summary = PackedScanSummary {
        scan: summary,
        key_file: key_file.clone(),
        key_created,
        migration_id,
        chunks: report.chunks,
        chunks_written: report.stats.chunks_stored,
        sealed_bytes_written: report.stats.sealed_bytes,
        manifest_bytes: report.manifest_bytes,
        cache_hits: report.stats.cache_hits,
        files_read: report.stats.files_read,
        bytes_read: report.stats.bytes_read,
        renamed: report
            .renamed
            .iter()
            .map(|(source, target)| Renamed {
                target: source.clone(),
                actual: target.clone(),
            })
            .collect(),
    };
    let text = render_scan(&packed_summary);
    Ok(Outcome::new(code, &packed_summary, text))
}

/// Reads the fleet key, or creates it when asked to. Returns the key and whether it was made.
fn load_or_create_key(path: &Path, create: bool) -> Result<([u8; 32], bool)> {
    if path.exists() || !create {
        if !path.exists() {
            return Err(fleetmig_format::Error::KeyFile {
                path: path.to_path_buf(),
                reason: "does not exist (pass --create-key to create a new fleet key)".to_owned(),
            }
            .into());
        }
        return Ok((load_key_bytes(path)?, false));
    }
    let bytes = generate_key_bytes();
    write_key_file(path, &bytes)?;
    tracing::warn!(path = %path.display(), "created a new fleet key file: keep it, the store cannot be loaded without it");
    Ok((bytes, true))
}

/// A store inside the profiles would be captured into itself: refused, as for hard-link stores.
fn refuse_store_in_profiles(root: &Path, store: &Path) -> Result<()> {
    let Ok(profiles) = root.join(XP_PROFILES_DIR).canonicalize() else {
        return Ok(());
    };
    // Resolve the part of the store path that exists; the rest follows as given.
    let mut existing = store;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    let rest = store.strip_prefix(existing).unwrap_or(store);
    let resolved = existing
        .canonicalize()
        .map_err(|error| Error::io(existing, error))?
        .join(rest);
    if resolved.starts_with(&profiles) {
        return Err(fleetmig_state::Error::StoreInsideProfiles {
            store: resolved,
            profiles,
        }
        .into());
    }
    Ok(())
}

fn render_scan(summary: &PackedScanSummary) -> String {
    let mut text = super::scan::render(&summary.scan);
    // The generic summary ends with the wall time; the packed details go before it.
    let took = text.rfind("took ").map_or(text.len(), |at| at);
    let tail = text.split_off(took);
    let _ = writeln!(
        text,
        "packed: {} chunks referenced, {} written ({} sealed), manifest {}",
        summary.chunks,
        summary.chunks_written,
        human_bytes(summary.sealed_bytes_written),
        human_bytes(summary.manifest_bytes)
    );
    let _ = writeln!(
        text,
        "files read: {} ({}), unchanged since the last scan: {}",
        summary.files_read,
        human_bytes(summary.bytes_read),
        summary.cache_hits
    );
    for renamed in &summary.renamed {
        let _ = writeln!(
            text,
            "  target taken: {} -> {}",
            renamed.target, renamed.actual
        );
    }
    let _ = writeln!(
        text,
        "key file: {}{}",
        summary.key_file.display(),
        if summary.key_created {
            " (created by this scan: keep it)"
        } else {
            ""
        }
    );
    text.push_str(&tail);
    text
}

/// The summary of `load` from a packed store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PackedLoadSummary {
    /// The store, as given.
    pub store: PathBuf,
    /// `packed`.
    pub store_kind: String,
    /// The machine root, as given.
    pub machine_root: PathBuf,
    /// The captured machine's hostname.
    pub hostname: String,
    /// The store's migration id.
    pub migration_id: String,
    /// Plain BLAKE3 of the sealed manifest.
    pub manifest_digest: String,
    /// Profiles restored, under their new names.
    pub users: Vec<String>,
    /// Profile renames applied (old → new).
    pub user_map: BTreeMap<String, String>,
    /// Files written by this load.
    pub files_written: u64,
    /// Files already in place (an earlier, interrupted load), not written again.
    pub files_already_present: u64,
    /// Bytes of the restored files.
    pub bytes: u64,
    /// Bytes written by this load.
    pub bytes_written: u64,
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
    /// Chunks fetched from the store.
    pub chunks_fetched: u64,
    /// Files checked after the restore.
    pub files_checked: u64,
    /// Restored files that do not match the manifest (one line each).
    pub mismatches: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Runs `load` for a packed store: restore, then verify every file.
pub(super) fn load(args: &LoadArgs, reporter: &Reporter) -> Result<Outcome> {
    let started = Instant::now();
    let key_file = args.key_file.as_ref().ok_or_else(|| {
        Error::BadArguments(format!(
            "{} is a packed store: pass --key-file FILE (the fleet key it was written with)",
            args.store.display()
        ))
    })?;
    let fleet_key = load_key_bytes(key_file)?;
    let store = DirStore::open(&args.store)?;
    let info = store.info();
    let keys = Keys {
        fleet: FleetKey::from_bytes(fleet_key),
        migration: offline_migration_key(&fleet_key, &info.migration_id),
    };
    let (manifest, manifest_digest) = packed::fetch_manifest(&store, &keys.migration)?;
    let user_map = super::load::user_map(&args.user_map, &manifest.users)?;
    let journal = args
        .machine_root
        .join(AGENT_DIR)
        .join(format!("packed-restore-{}.json", info.migration_id));
    let options = packed::RestoreOptions {
        overwrite: args.overwrite,
        continue_on_error: args.continue_on_error,
        user_map: user_map.clone(),
        journal: Some(journal.clone()),
        ..packed::RestoreOptions::default()
    };
    let report = packed::restore(
        &store,
        &args.machine_root,
        &keys.fleet,
        &manifest,
        &options,
        reporter,
    )?;
    let mapped = packed::map_users(manifest, &user_map)?;
    let verified = packed::verify(&args.machine_root, &mapped, reporter)?;
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
    if mismatches.is_empty() {
        packed::journal::RestoreJournal::remove(&journal)?;
        if let Some(dir) = journal.parent() {
            // Only when empty: the machine's agent may keep its own state there.
            let _ = std::fs::remove_dir(dir);
        }
    }
    let summary = PackedLoadSummary {
        store: args.store.clone(),
        store_kind: "packed".to_owned(),
        machine_root: args.machine_root.clone(),
        hostname: info.hostname,
        migration_id: info.migration_id,
        manifest_digest,
        users: report.users,
        user_map,
        files_written: report.files_written,
        files_already_present: report.files_already_present,
        bytes: report.bytes,
        bytes_written: report.bytes_written,
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
        chunks_fetched: report.chunks_fetched,
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
    let text = render_load(&summary);
    Ok(Outcome::new(code, &summary, text))
}

fn render_load(summary: &PackedLoadSummary) -> String {
    super::load::render_text(&super::load::LoadText {
        header: format!(
            "load of {} [packed store, {} from {}] into {}",
            summary.store.display(),
            summary.migration_id,
            summary.hostname,
            summary.machine_root.display()
        ),
        users: &summary.users,
        user_map: &summary.user_map,
        files_verb: "written",
        files: summary.files_written,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_created_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.key");
        let error = load_or_create_key(&path, false).unwrap_err();
        assert_eq!(super::super::exit::code_of(&error), Code::BadArguments);
        assert!(error.to_string().contains("fleet.key"), "{error}");
        let (created, made) = load_or_create_key(&path, true).unwrap();
        assert!(made);
        let (loaded, made) = load_or_create_key(&path, true).unwrap();
        assert!(!made);
        assert_eq!(created, loaded);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_store_inside_the_profiles_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(XP_PROFILES_DIR).join("alice")).unwrap();
        let inside = dir.path().join(XP_PROFILES_DIR).join("alice/store");
        assert!(refuse_store_in_profiles(dir.path(), &inside).is_err());
        assert!(refuse_store_in_profiles(dir.path(), &dir.path().join("StateStore/x")).is_ok());
    }
}
