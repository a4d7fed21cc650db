//! `store verify|ls|delete`: look after a store (like USMT UsmtUtils). A directory with a
//! `store.json` is a packed store and goes to [`super::packed_store`]; anything else is treated
//! as a hard-link store.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use fleetmig_state::manifest::{DATA_DIR, EntryKind, MANIFEST_FILE, Manifest, SEAL_FILE};
use serde::Serialize;

use super::args::StoreCommand;
use super::exit::Code;
use super::output::{Outcome, human_bytes, utc_timestamp};
use super::packed_store;
use super::progress::Reporter;
use crate::error::{Error, Result};

/// Runs a `store` subcommand on a store of either kind.
pub fn run(command: &StoreCommand, reporter: &Reporter) -> Result<Outcome> {
    let path = match command {
        StoreCommand::Verify { path, .. }
        | StoreCommand::Ls { path, .. }
        | StoreCommand::Delete { path, .. } => path,
    };
    require_dir(path)?;
    if matches!(command, StoreCommand::Delete { .. }) {
        refuse_symlink(path)?;
    }
    if packed_store::is_packed(path) || packed_store::looks_like_interrupted(path)? {
        return match command {
            StoreCommand::Verify {
                machine_root,
                key_file,
                ..
            } => {
                if machine_root.is_some() {
                    tracing::warn!(store = %path.display(), "--machine-root ignored: a packed store holds no links to originals");
                }
                packed_store::verify(path, key_file.as_deref(), reporter)
            }
            StoreCommand::Ls { key_file, .. } => packed_store::list(path, key_file.as_deref()),
            StoreCommand::Delete { .. } => packed_store::delete(path),
        };
    }
    let key_file = match command {
        StoreCommand::Verify { key_file, .. } | StoreCommand::Ls { key_file, .. } => {
            key_file.as_ref()
        }
        StoreCommand::Delete { .. } => None,
    };
    if key_file.is_some() {
        tracing::warn!(store = %path.display(), "--key-file ignored: not a packed store");
    }
    match command {
        StoreCommand::Verify { machine_root, .. } => verify(path, machine_root.as_deref()),
        StoreCommand::Ls { .. } => list(path),
        StoreCommand::Delete { .. } => delete(path),
    }
}

/// Refuses a store path that is a symlink (bad arguments): `delete` never follows one, and
/// would otherwise find nothing of its own to remove.
pub(super) fn refuse_symlink(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|error| Error::io(path, error))?;
    if meta.is_symlink() {
        return Err(Error::BadArguments(format!(
            "store {} is a symlink: pass the store directory itself (a symlink is never followed to delete)",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a store path that is not an existing directory (bad arguments).
pub(super) fn require_dir(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    Err(Error::BadArguments(format!(
        "store {} does not exist or is not a directory",
        path.display()
    )))
}

/// The summary of `store verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifySummary {
    /// The store.
    pub store: PathBuf,
    /// Its manifest seal.
    pub manifest_digest: String,
    /// The capture's job id.
    pub job_id: String,
    /// The captured machine's hostname.
    pub hostname: String,
    /// Users in the store.
    pub users: Vec<String>,
    /// Manifest entries.
    pub entries: usize,
    /// File entries checked.
    pub files_checked: u64,
    /// The machine whose originals were checked too, if any.
    pub machine_root: Option<PathBuf>,
    /// One line per problem.
    pub mismatches: Vec<String>,
}

fn verify(store: &Path, machine_root: Option<&Path>) -> Result<Outcome> {
    let manifest = Manifest::load_sealed(store)?;
    let recorded = PathBuf::from(&manifest.source_root);
    let root = match machine_root {
        Some(root) => Some(root.to_path_buf()),
        None => (recorded.is_absolute() && recorded.is_dir()).then_some(recorded),
    };
    // Without a machine, point the original checks at a path that does not exist: a missing
    // original is fine (after a reimage only the store holds the data).
    let checked_root = root
        .clone()
        .unwrap_or_else(|| store.join(".fleetmig-no-machine-root"));
    let report = fleetmig_state::verify_store(&checked_root, store)?;
    let summary = VerifySummary {
        store: store.to_path_buf(),
        manifest_digest: Manifest::read_seal(store)?,
        job_id: manifest.job_id,
        hostname: manifest.hostname,
        users: manifest.users,
        entries: manifest.entries.len(),
        files_checked: report.files_checked,
        machine_root: root,
        mismatches: report.mismatches,
    };
    let mut text = format!(
        "store {} (job {}, {}, users: {})\n",
        summary.store.display(),
        summary.job_id,
        summary.hostname,
        summary.users.join(", ")
    );
    if summary.mismatches.is_empty() {
        let _ = writeln!(
            text,
            "valid: {} entries, {} files match the manifest",
            summary.entries, summary.files_checked
        );
    } else {
        let _ = writeln!(
            text,
            "INVALID: {} problems in {} files",
            summary.mismatches.len(),
            summary.files_checked
        );
        for line in &summary.mismatches {
            let _ = writeln!(text, "  {line}");
        }
    }
    let code = if summary.mismatches.is_empty() {
        Code::Success
    } else {
        Code::StoreInvalid
    };
    Ok(Outcome::new(code, &summary, text))
}

/// One line of `store ls` (either kind of store).
#[derive(Debug, Clone, Serialize)]
pub struct ListedEntry {
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    /// Bytes (files).
    pub size: u64,
    /// Modification time, UTC.
    pub mtime: String,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Permission bits, octal.
    pub mode: String,
    /// Source path on the captured machine.
    pub source: String,
    /// Target path on Windows 7.
    pub target: String,
    /// Link text of a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// Chunks of a file of a packed store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<usize>,
}

/// The text lines of `store ls` for `entries`, one per entry.
pub(super) fn render_entries(text: &mut String, entries: &[ListedEntry]) {
    for entry in entries {
        let kind = match entry.kind {
            "symlink" => "link",
            other => other,
        };
        let _ = write!(
            text,
            "{kind:<4} {:>10} {} {} {} -> {}",
            human_bytes(entry.size),
            entry.mtime,
            entry.mode,
            entry.source,
            entry.target
        );
        if let Some(link) = &entry.link_target {
            let _ = write!(text, " (symlink to {link})");
        }
        text.push('\n');
    }
}

/// The output of `store ls`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The store.
    pub store: PathBuf,
    /// Its manifest seal.
    pub manifest_digest: String,
    /// The capture's job id.
    pub job_id: String,
    /// The captured machine's hostname.
    pub hostname: String,
    /// When the capture was sealed, UTC.
    pub created: String,
    /// Users in the store.
    pub users: Vec<String>,
    /// Every entry, in manifest order.
    pub entries: Vec<ListedEntry>,
}

fn list(store: &Path) -> Result<Outcome> {
    let manifest = Manifest::load_sealed(store)?;
    let listing = Listing {
        store: store.to_path_buf(),
        manifest_digest: Manifest::read_seal(store)?,
        created: utc_timestamp(manifest.created_unix_ms.saturating_mul(1_000_000)),
        job_id: manifest.job_id,
        hostname: manifest.hostname,
        users: manifest.users,
        entries: manifest
            .entries
            .into_iter()
            .map(|entry| ListedEntry {
                kind: match entry.kind {
                    EntryKind::File => "file",
                    EntryKind::Dir => "dir",
                    EntryKind::Symlink => "symlink",
                },
                size: entry.size,
                mtime: utc_timestamp(entry.mtime_ns),
                mtime_ns: entry.mtime_ns,
                mode: format!("{:04o}", entry.mode & 0o7777),
                source: entry.source,
                target: entry.target,
                link_target: entry.link_target,
                chunks: None,
            })
            .collect(),
    };
    let mut text = format!(
        "store {} (job {}, {}, created {}, users: {}, {} entries)\n",
        listing.store.display(),
        listing.job_id,
        listing.hostname,
        listing.created,
        listing.users.join(", "),
        listing.entries.len()
    );
    render_entries(&mut text, &listing.entries);
    Ok(Outcome::new(Code::Success, &listing, text))
}

/// The summary of `store delete`.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteSummary {
    /// The store.
    pub store: PathBuf,
    /// Manifest entries of the deleted store (0 when its manifest was unreadable).
    pub entries: usize,
    /// Whether the store directory itself is gone (it is kept when it holds foreign files).
    pub removed_dir: bool,
}

/// Names that may sit in a store directory besides the manifest and seal (temp and probe files).
fn is_store_file(name: &str) -> bool {
    name == DATA_DIR
        || name == MANIFEST_FILE
        || name == SEAL_FILE
        || name == ".manifest.json.tmp"
        || name == ".manifest.seal.tmp"
        || name.starts_with(".fleetmig-link-probe-")
}

/// Whether `path` looks like a store: it has a manifest or seal, or it holds only what an
/// interrupted capture leaves (`data/`, temp and probe files). Anything else is refused, so a
/// mistyped path never loses a `data` directory.
fn looks_like_store(path: &Path) -> Result<bool> {
    if path.join(MANIFEST_FILE).is_file() || path.join(SEAL_FILE).is_file() {
        return Ok(true);
    }
    if !path.join(DATA_DIR).is_dir() {
        return Ok(false);
    }
    for entry in std::fs::read_dir(path).map_err(|error| Error::io(path, error))? {
        let entry = entry.map_err(|error| Error::io(path, error))?;
        if !is_store_file(&entry.file_name().to_string_lossy()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn delete(store: &Path) -> Result<Outcome> {
    require_dir(store)?;
    refuse_symlink(store)?;
    if !looks_like_store(store)? {
        return Err(Error::NotAStore(store.to_path_buf()));
    }
    let entries = Manifest::load_sealed(store)
        .map(|manifest| manifest.entries.len())
        .unwrap_or(0);
    fleetmig_state::delete_store(store)?;
    let summary = DeleteSummary {
        store: store.to_path_buf(),
        entries,
        removed_dir: !store.exists(),
    };
    let text = if summary.removed_dir {
        format!("deleted store {} ({entries} entries)\n", store.display())
    } else {
        format!(
            "deleted store {} ({entries} entries); the directory was kept: it holds files the store did not make\n",
            store.display()
        )
    };
    Ok(Outcome::new(Code::Success, &summary, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_store_like_directories_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("data/precious")).unwrap();
        std::fs::write(home.join("notes.txt"), b"x").unwrap();
        assert!(!looks_like_store(&home).unwrap());
        let error = delete(&home).unwrap_err();
        assert_eq!(super::super::exit::code_of(&error), Code::StoreInvalid);
        assert!(home.join("data/precious").is_dir());

        let interrupted = dir.path().join("store");
        std::fs::create_dir_all(interrupted.join("data/alice")).unwrap();
        assert!(looks_like_store(&interrupted).unwrap());
        let outcome = delete(&interrupted).unwrap();
        assert_eq!(outcome.code, Code::Success);
        assert!(!interrupted.exists());
    }
}
