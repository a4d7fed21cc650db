//! `store ls|verify|delete` of a packed store: a directory with a `store.json`
//! ([`DirStore`]; layout in `docs/format.md`, "Local packed stores").
//!
//! - `ls` shows what is knowable without a key (`store.json`: kind, state, migration, chunk
//!   count, sizes; the chunk files on disk); with the fleet key it opens the manifest and lists
//!   its entries like `ls` of a hard-link store.
//! - `verify` (needs the fleet key) opens the manifest as `load` does (digest, AEAD, hostile
//!   entries), then opens every chunk file under `chunks/` as a restore would (AEAD tag, id),
//!   and checks that every chunk the manifest references is there. Each bad chunk is named with
//!   the files (targets) that use it. Unreferenced chunks (left by an earlier capture into the
//!   same store) are checked too: a later `scan --overwrite` would reuse them without rewriting.
//! - `delete` removes only what a packed store is made of (`store.json`, `manifest.fmmf`,
//!   chunk files under their own names, temp files), never follows a symlink, keeps anything
//!   else (and then the directory), and refuses a directory that is not a packed store.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use fleetmig_format::keys::load_key_bytes;
use fleetmig_format::{ChunkId, EntryKind, FleetKey, PackedEntry, PackedManifest};
use fleetmig_state::Phase;
use rayon::prelude::*;
use serde::Serialize;

use super::exit::Code;
use super::output::{Outcome, human_bytes, utc_timestamp};
use super::progress::Reporter;
use super::store::{ListedEntry, render_entries};
use crate::error::{Error, Result};
use crate::packed::dir_store::{
    CHUNKS_DIR, MANIFEST_FILE, STORE_FILE, STORE_KIND, StoreState, TEMP_DIR,
};
use crate::packed::progress::Ticker;
use crate::packed::{self, ChunkStore, DirStore, StoreInfo, offline_migration_key};

/// Temp names `DirStore` writes `store.json` and `manifest.fmmf` under before renaming them.
const TEMP_FILES: [&str; 2] = [".store.json.tmp", ".manifest.fmmf.tmp"];
/// Files named in a problem line before "and N more".
const FILES_SHOWN: usize = 5;

/// Whether `path` holds a `store.json` (of any content: a malformed one is reported by the
/// verb, not mistaken for a hard-link store).
pub(super) fn is_packed(path: &Path) -> bool {
    fs::symlink_metadata(path.join(STORE_FILE)).is_ok()
}

/// Whether `path` is what a packed capture leaves when interrupted before its `store.json` was
/// written: nothing but `chunks/` (only `00`..`ff` directories), `tmp/` and temp files.
pub(super) fn looks_like_interrupted(path: &Path) -> Result<bool> {
    let chunks = path.join(CHUNKS_DIR);
    if !fs::symlink_metadata(&chunks).is_ok_and(|meta| meta.is_dir()) {
        return Ok(false);
    }
    for entry in fs::read_dir(path).map_err(|error| Error::io(path, error))? {
        let entry = entry.map_err(|error| Error::io(path, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        let ours = (is_dir && (name == CHUNKS_DIR || name == TEMP_DIR))
            || TEMP_FILES.contains(&name.as_str());
        if !ours {
            return Ok(false);
        }
    }
    for entry in fs::read_dir(&chunks).map_err(|error| Error::io(&chunks, error))? {
        let entry = entry.map_err(|error| Error::io(&chunks, error))?;
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if !is_dir || !is_prefix(&entry.file_name().to_string_lossy()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn invalid(store: &Path, reason: impl Into<String>) -> Error {
    Error::PackedStoreInvalid {
        path: store.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads `store.json`, refusing a malformed one or one of another kind.
fn read_info(store: &Path) -> Result<StoreInfo> {
    let path = store.join(STORE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(
                store,
                format!(
                    "no {STORE_FILE}: a packed capture interrupted before it began (`store delete` removes it)"
                ),
            ));
        }
        Err(error) => return Err(Error::io(&path, error)),
    };
    let not_valid =
        |error: serde_json::Error| invalid(store, format!("{STORE_FILE} is not valid: {error}"));
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(not_valid)?;
    // The kind first: a `store.json` of something else is not ours, whatever else it holds.
    match value.get("kind").and_then(serde_json::Value::as_str) {
        Some(STORE_KIND) => {}
        kind => {
            return Err(invalid(
                store,
                format!(
                    "{STORE_FILE} has kind {}, not {STORE_KIND:?}: not a fleetmig packed store",
                    kind.map_or_else(|| "none".to_owned(), |kind| format!("{kind:?}"))
                ),
            ));
        }
    }
    serde_json::from_value(value).map_err(not_valid)
}

/// `00` .. `ff`.
fn is_prefix(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(is_lower_hex)
}

fn is_lower_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

/// The chunk id a file named `name` holds, if that is a chunk file name (64 lowercase hex).
fn chunk_name(name: &str) -> Option<ChunkId> {
    if name.len() != 64 || !name.bytes().all(is_lower_hex) {
        return None;
    }
    name.parse().ok()
}

/// What `chunks/` holds.
#[derive(Debug, Default)]
struct ChunkFiles {
    /// Chunk files (regular files named by their id under their prefix) and their sizes.
    chunks: BTreeMap<ChunkId, u64>,
    /// Anything else, relative to the store: foreign files, symlinks, misplaced names.
    foreign: Vec<String>,
}

impl ChunkFiles {
    fn sealed_bytes(&self) -> u64 {
        self.chunks.values().sum()
    }
}

/// Lists `chunks/` without following any symlink.
fn scan_chunks(store: &Path) -> Result<ChunkFiles> {
    let dir = store.join(CHUNKS_DIR);
    let mut found = ChunkFiles::default();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(Error::io(&dir, error)),
    };
    for entry in entries {
        let entry = entry.map_err(|error| Error::io(&dir, error))?;
        let prefix = entry.file_name().to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .map_err(|error| Error::io(entry.path(), error))?;
        if !kind.is_dir() || !is_prefix(&prefix) {
            found.foreign.push(format!("{CHUNKS_DIR}/{prefix}"));
            continue;
        }
        let sub = entry.path();
        for chunk in fs::read_dir(&sub).map_err(|error| Error::io(&sub, error))? {
            let chunk = chunk.map_err(|error| Error::io(&sub, error))?;
            let name = chunk.file_name().to_string_lossy().into_owned();
            // `DirEntry::metadata` does not follow a symlink.
            let meta = chunk
                .metadata()
                .map_err(|error| Error::io(chunk.path(), error))?;
            match chunk_name(&name) {
                Some(id) if meta.is_file() && name.starts_with(&prefix) => {
                    found.chunks.insert(id, meta.len());
                }
                _ => found.foreign.push(format!("{CHUNKS_DIR}/{prefix}/{name}")),
            }
        }
    }
    found.foreign.sort();
    Ok(found)
}

/// Bytes of the sealed manifest, 0 when there is none.
fn manifest_bytes(store: &Path) -> u64 {
    fs::symlink_metadata(store.join(MANIFEST_FILE)).map_or(0, |meta| meta.len())
}

/// A committed packed store opened with its fleet key.
struct Opened {
    store: DirStore,
    fleet: FleetKey,
    manifest: PackedManifest,
    digest: String,
}

/// Opens a committed store and its manifest with the fleet key in `key_file`, as `load` does:
/// a bad key file is a bad argument (11), an uncommitted store or a manifest that does not
/// match `store.json` is invalid (13), a key that does not open the manifest is the wrong key
/// (14), hostile entries are invalid (13).
fn open_with_key(store: &Path, key_file: &Path) -> Result<Opened> {
    let fleet = load_key_bytes(key_file)?;
    let dir_store = DirStore::open(store)?;
    let migration = offline_migration_key(&fleet, &dir_store.info().migration_id);
    let (manifest, digest) = packed::fetch_manifest(&dir_store, &migration)?;
    Ok(Opened {
        store: dir_store,
        fleet: FleetKey::from_bytes(fleet),
        manifest,
        digest,
    })
}

/// `store ls` of a packed store.
#[derive(Debug, Clone, Serialize)]
pub struct PackedListing {
    /// The store.
    pub store: PathBuf,
    /// `packed`.
    pub store_kind: &'static str,
    /// Packed format version of its chunks and manifest.
    pub format_version: u8,
    /// `capturing` (never committed: cannot be loaded) or `committed`.
    pub state: StoreState,
    /// The store's migration id (the migration key is derived from it).
    pub migration_id: String,
    /// The captured machine's hostname.
    pub hostname: String,
    /// When the capture started, UTC.
    pub created: String,
    /// Plain BLAKE3 of the sealed manifest (empty until committed).
    pub manifest_digest: String,
    /// Size of the sealed manifest (0 when there is none).
    pub manifest_bytes: u64,
    /// Plaintext bytes of the captured files (from `store.json`).
    pub logical_bytes: u64,
    /// Distinct chunks the manifest references (from `store.json`).
    pub chunks: u64,
    /// Chunk files on disk (an earlier capture into the same store may have left more).
    pub chunk_files: u64,
    /// Sealed bytes of the chunk files on disk.
    pub sealed_bytes: u64,
    /// Users in the store (only with the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Every manifest entry, in order (only with the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<Vec<ListedEntry>>,
    /// Why entries are not listed, when they are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn listed(entry: &PackedEntry) -> ListedEntry {
    ListedEntry {
        kind: match entry.kind {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        },
        size: entry.size,
        mtime: utc_timestamp(entry.mtime_ns),
        mtime_ns: entry.mtime_ns,
        mode: format!("{:04o}", entry.mode & 0o7777),
        source: entry.source.clone(),
        target: entry.target.clone(),
        link_target: entry.link_target.clone(),
        chunks: (entry.kind == EntryKind::File).then_some(entry.chunks.len()),
    }
}

/// `store ls` of a packed store: what `store.json` and the chunk files say, and with
/// `key_file` the manifest's entries. An uncommitted store is shown but exits with 13.
pub(super) fn list(store: &Path, key_file: Option<&Path>) -> Result<Outcome> {
    let info = read_info(store)?;
    let on_disk = scan_chunks(store)?;
    let mut listing = PackedListing {
        store: store.to_path_buf(),
        store_kind: STORE_KIND,
        format_version: info.format_version,
        state: info.state,
        migration_id: info.migration_id.clone(),
        hostname: info.hostname.clone(),
        created: utc_timestamp(info.created_unix_ms.saturating_mul(1_000_000)),
        manifest_digest: info.manifest_digest.clone(),
        manifest_bytes: manifest_bytes(store),
        logical_bytes: info.logical_bytes,
        chunks: info.chunks,
        chunk_files: on_disk.chunks.len() as u64,
        sealed_bytes: on_disk.sealed_bytes(),
        users: None,
        entries: None,
        note: None,
    };
    let code = if info.state != StoreState::Committed {
        listing.note = Some(
            "the capture into this store never completed (not committed): it has no manifest and cannot be loaded"
                .to_owned(),
        );
        Code::StoreInvalid
    } else if let Some(key_file) = key_file {
        let opened = open_with_key(store, key_file)?;
        listing.manifest_digest = opened.digest;
        listing.users = Some(opened.manifest.users.clone());
        listing.entries = Some(opened.manifest.entries.iter().map(listed).collect());
        Code::Success
    } else {
        listing.note = Some(
            "the manifest is sealed: pass --key-file FILE (the fleet key the store was written with) to list its entries"
                .to_owned(),
        );
        Code::Success
    };
    let text = render_listing(&listing);
    Ok(Outcome::new(code, &listing, text))
}

fn render_listing(listing: &PackedListing) -> String {
    let state = match listing.state {
        StoreState::Committed => "committed",
        StoreState::Capturing => "capturing, never committed",
    };
    let mut text = format!(
        "packed store {} (migration {}, {}, created {}, {state})\n",
        listing.store.display(),
        listing.migration_id,
        listing.hostname,
        listing.created
    );
    let _ = writeln!(
        text,
        "format version {}, {} chunks referenced, {} captured; on disk: {} chunk files ({} sealed), manifest {}",
        listing.format_version,
        listing.chunks,
        human_bytes(listing.logical_bytes),
        listing.chunk_files,
        human_bytes(listing.sealed_bytes),
        human_bytes(listing.manifest_bytes)
    );
    if !listing.manifest_digest.is_empty() {
        let _ = writeln!(text, "manifest digest {}", listing.manifest_digest);
    }
    if let (Some(users), Some(entries)) = (&listing.users, &listing.entries) {
        let _ = writeln!(
            text,
            "users: {} ({} entries)",
            users.join(", "),
            entries.len()
        );
        render_entries(&mut text, entries);
    }
    if let Some(note) = &listing.note {
        let _ = writeln!(text, "entries: {note}");
    }
    text
}

/// A chunk that fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadChunk {
    /// The chunk id, hex.
    pub chunk: String,
    /// What is wrong: missing, unreadable, malformed, authentication failed, id mismatch.
    pub problem: String,
    /// Targets of the manifest's files that use it (empty: not referenced by the manifest).
    pub files: Vec<String>,
}

/// The summary of `store verify` of a packed store.
#[derive(Debug, Clone, Serialize)]
pub struct PackedVerifySummary {
    /// The store.
    pub store: PathBuf,
    /// `packed`.
    pub store_kind: &'static str,
    /// The store's migration id.
    pub migration_id: String,
    /// The captured machine's hostname.
    pub hostname: String,
    /// Plain BLAKE3 of the sealed manifest.
    pub manifest_digest: String,
    /// Users in the store.
    pub users: Vec<String>,
    /// Manifest entries.
    pub entries: usize,
    /// File entries.
    pub files: u64,
    /// Distinct chunks the manifest references.
    pub chunks_referenced: u64,
    /// Chunk files checked (every one on disk).
    pub chunk_files: u64,
    /// Sealed bytes checked.
    pub sealed_bytes: u64,
    /// Chunk files the manifest does not reference (an earlier capture's).
    pub unreferenced_chunks: u64,
    /// Chunks that are missing or fail to open, with the files that use them.
    pub bad_chunks: Vec<BadChunk>,
    /// One line per problem (bad chunks, foreign files, `store.json` disagreeing).
    pub mismatches: Vec<String>,
}

/// Opens one chunk file as a restore would: read through the store (no symlink followed),
/// then AEAD tag, decompression and id. Returns the problem, if any.
fn check_chunk(store: &DirStore, fleet: &FleetKey, id: &ChunkId) -> Option<String> {
    let mut sealed = None;
    let fetched = store.fetch(std::slice::from_ref(id), &mut |_, bytes| {
        sealed = Some(bytes);
        Ok(())
    });
    if let Err(error) = fetched {
        return Some(match error {
            Error::CorruptChunk { reason, .. } => reason,
            other => other.to_string(),
        });
    }
    let Some(bytes) = sealed else {
        return Some("the store did not return it".to_owned());
    };
    let error = fleetmig_format::open_chunk(fleet, id, &bytes).err()?;
    // The format's messages start with "chunk <id>: "; the summary names the chunk itself.
    let message = error.to_string();
    let prefix = format!("chunk {id}: ");
    Some(message.strip_prefix(&prefix).unwrap_or(&message).to_owned())
}

/// `store verify` of a packed store, with the fleet key in `key_file`.
pub(super) fn verify(
    store: &Path,
    key_file: Option<&Path>,
    reporter: &Reporter,
) -> Result<Outcome> {
    let key_file = key_file.ok_or_else(|| {
        Error::BadArguments(format!(
            "{} is a packed store: pass --key-file FILE (the fleet key it was written with) to verify it",
            store.display()
        ))
    })?;
    read_info(store)?;
    let opened = open_with_key(store, key_file)?;
    let info = opened.store.info();
    let manifest = &opened.manifest;
    let on_disk = scan_chunks(store)?;

    // Which files use each chunk, in manifest order.
    let mut used_by: HashMap<ChunkId, Vec<&str>> = HashMap::new();
    for entry in &manifest.entries {
        for id in &entry.chunks {
            let files = used_by.entry(*id).or_default();
            if files.last() != Some(&entry.target.as_str()) {
                files.push(&entry.target);
            }
        }
    }
    let files_of = |id: &ChunkId| -> Vec<String> {
        used_by
            .get(id)
            .map(|files| files.iter().map(|file| (*file).to_owned()).collect())
            .unwrap_or_default()
    };

    let sealed_bytes = on_disk.sealed_bytes();
    let ticker = Ticker::new(
        reporter,
        Phase::Verifying,
        on_disk.chunks.len() as u64,
        sealed_bytes,
    );
    let chunks: Vec<(&ChunkId, &u64)> = on_disk.chunks.iter().collect();
    let mut bad: Vec<BadChunk> = chunks
        .par_iter()
        .filter_map(|(id, size)| {
            let problem = check_chunk(&opened.store, &opened.fleet, id);
            ticker.file_done(**size, "");
            problem.map(|problem| BadChunk {
                chunk: id.to_hex(),
                problem,
                files: files_of(id),
            })
        })
        .collect();
    ticker.flush(None);
    let referenced = manifest.chunk_ids();
    bad.extend(
        referenced
            .iter()
            .filter(|id| !on_disk.chunks.contains_key(*id))
            .map(|id| BadChunk {
                chunk: id.to_hex(),
                problem: "missing".to_owned(),
                files: files_of(id),
            }),
    );
    bad.sort_by(|a, b| a.chunk.cmp(&b.chunk));

    let mut mismatches: Vec<String> = bad.iter().map(problem_line).collect();
    mismatches.extend(
        on_disk
            .foreign
            .iter()
            .map(|path| format!("{path}: not a chunk file (unexpected in {CHUNKS_DIR}/)")),
    );
    if info.chunks != referenced.len() as u64 {
        mismatches.push(format!(
            "{STORE_FILE} says {} chunks, the manifest references {}",
            info.chunks,
            referenced.len()
        ));
    }
    let file_bytes: u64 = manifest
        .entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::File)
        .map(|entry| entry.size)
        .sum();
    if info.logical_bytes != file_bytes {
        mismatches.push(format!(
            "{STORE_FILE} says {} bytes were captured, the manifest's files hold {file_bytes}",
            info.logical_bytes
        ));
    }
    let unreferenced = on_disk
        .chunks
        .keys()
        .filter(|id| !used_by.contains_key(*id))
        .count() as u64;
    let summary = PackedVerifySummary {
        store: store.to_path_buf(),
        store_kind: STORE_KIND,
        migration_id: info.migration_id,
        hostname: info.hostname,
        manifest_digest: opened.digest.clone(),
        users: manifest.users.clone(),
        entries: manifest.entries.len(),
        files: manifest
            .entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::File)
            .count() as u64,
        chunks_referenced: referenced.len() as u64,
        chunk_files: on_disk.chunks.len() as u64,
        sealed_bytes,
        unreferenced_chunks: unreferenced,
        bad_chunks: bad,
        mismatches,
    };
    let code = if summary.mismatches.is_empty() {
        Code::Success
    } else {
        Code::StoreInvalid
    };
    if code != Code::Success {
        tracing::debug!(store = %store.display(), problems = summary.mismatches.len(), "packed store does not verify");
    }
    let text = render_verify(&summary);
    Ok(Outcome::new(code, &summary, text))
}

/// `chunk <id>: <problem>; used by <files>` (or: not referenced by the manifest).
fn problem_line(bad: &BadChunk) -> String {
    let mut line = format!("chunk {}: {}; ", bad.chunk, bad.problem);
    if bad.files.is_empty() {
        line.push_str(
            "not referenced by the manifest (a later capture into this store would reuse it)",
        );
        return line;
    }
    line.push_str("used by ");
    line.push_str(
        &bad.files
            .iter()
            .take(FILES_SHOWN)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    );
    if bad.files.len() > FILES_SHOWN {
        let _ = write!(line, " and {} more", bad.files.len() - FILES_SHOWN);
    }
    line
}

fn render_verify(summary: &PackedVerifySummary) -> String {
    let mut text = format!(
        "packed store {} (migration {}, {}, users: {})\n",
        summary.store.display(),
        summary.migration_id,
        summary.hostname,
        summary.users.join(", ")
    );
    if summary.mismatches.is_empty() {
        let _ = writeln!(
            text,
            "valid: {} chunk files ({}) open under the fleet key, all {} chunks of {} files present ({} entries)",
            summary.chunk_files,
            human_bytes(summary.sealed_bytes),
            summary.chunks_referenced,
            summary.files,
            summary.entries
        );
    } else {
        let _ = writeln!(
            text,
            "INVALID: {} problems ({} bad chunks) in {} chunk files",
            summary.mismatches.len(),
            summary.bad_chunks.len(),
            summary.chunk_files
        );
        for line in &summary.mismatches {
            let _ = writeln!(text, "  {line}");
        }
    }
    if summary.unreferenced_chunks > 0 {
        let _ = writeln!(
            text,
            "{} chunk files are not referenced by the manifest (an earlier capture's)",
            summary.unreferenced_chunks
        );
    }
    text
}

/// The summary of `store delete` of a packed store.
#[derive(Debug, Clone, Serialize)]
pub struct PackedDeleteSummary {
    /// The store.
    pub store: PathBuf,
    /// `packed`.
    pub store_kind: &'static str,
    /// The store's migration id (none when its capture was interrupted before it began).
    pub migration_id: Option<String>,
    /// Its state when deleted.
    pub state: Option<StoreState>,
    /// Chunk files removed (temp chunk files included).
    pub chunks_removed: u64,
    /// Bytes of the chunk files removed.
    pub bytes_removed: u64,
    /// Whether the store directory itself is gone (it is kept when it holds foreign files).
    pub removed_dir: bool,
    /// What was kept because the store did not make it (relative to the store).
    pub kept: Vec<String>,
}

/// What a removal pass did.
#[derive(Debug, Default)]
struct Removed {
    chunks: u64,
    bytes: u64,
    kept: Vec<String>,
}

impl Removed {
    fn add(mut self, other: Removed) -> Removed {
        self.chunks += other.chunks;
        self.bytes += other.bytes;
        self.kept.extend(other.kept);
        self
    }
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io(path, error)),
    }
}

/// Removes `dir` when empty; true when it is gone.
fn remove_dir_if_empty(dir: &Path) -> Result<bool> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(Error::io(dir, error)),
    }
}

/// Removes the chunk files of `dir` (`rel` relative to the store) whose names are chunk ids
/// (starting with `prefix`, when given), then `dir` itself if that emptied it. Symlinks are
/// removed only as links; nothing is followed. Anything else is kept.
fn remove_chunk_files(dir: &Path, rel: &str, prefix: Option<&str>) -> Result<Removed> {
    let mut removed = Removed::default();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(error) => return Err(Error::io(dir, error)),
    };
    for entry in entries {
        let entry = entry.map_err(|error| Error::io(dir, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry
            .metadata()
            .map_err(|error| Error::io(entry.path(), error))?;
        let ours = !meta.is_dir()
            && chunk_name(&name).is_some()
            && prefix.is_none_or(|prefix| name.starts_with(prefix));
        if !ours {
            removed.kept.push(format!("{rel}/{name}"));
            continue;
        }
        fs::remove_file(entry.path()).map_err(|error| Error::io(entry.path(), error))?;
        removed.chunks += 1;
        removed.bytes += meta.len();
    }
    remove_dir_if_empty(dir)?;
    Ok(removed)
}

/// Removes `chunks/<prefix>/<id>` files and the emptied directories, in parallel over the
/// prefixes.
fn remove_chunks(store: &Path) -> Result<Removed> {
    let chunks = store.join(CHUNKS_DIR);
    match fs::symlink_metadata(&chunks) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Ok(Removed {
                kept: vec![CHUNKS_DIR.to_owned()],
                ..Removed::default()
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Removed::default());
        }
        Err(error) => return Err(Error::io(&chunks, error)),
    }
    let mut subdirs = Vec::new();
    let mut removed = Removed::default();
    for entry in fs::read_dir(&chunks).map_err(|error| Error::io(&chunks, error))? {
        let entry = entry.map_err(|error| Error::io(&chunks, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry
            .file_type()
            .map_err(|error| Error::io(entry.path(), error))?
            .is_dir();
        if is_dir && is_prefix(&name) {
            subdirs.push(name);
        } else {
            removed.kept.push(format!("{CHUNKS_DIR}/{name}"));
        }
    }
    let removed = subdirs
        .par_iter()
        .map(|prefix| {
            remove_chunk_files(
                &chunks.join(prefix),
                &format!("{CHUNKS_DIR}/{prefix}"),
                Some(prefix),
            )
        })
        .try_reduce(Removed::default, |a, b| Ok(a.add(b)))?
        .add(removed);
    remove_dir_if_empty(&chunks)?;
    Ok(removed)
}

/// `store delete` of a packed store (or of one whose capture was interrupted before its
/// `store.json` was written). `store.json` goes last, so an interrupted delete can be run
/// again.
pub(super) fn delete(store: &Path) -> Result<Outcome> {
    super::store::refuse_symlink(store)?;
    let info = if is_packed(store) {
        Some(read_info(store)?)
    } else if looks_like_interrupted(store)? {
        None
    } else {
        return Err(Error::NotAStore(store.to_path_buf()));
    };
    remove_file_if_present(&store.join(MANIFEST_FILE))?;
    let mut removed = remove_chunks(store)?;
    let temp = store.join(TEMP_DIR);
    if fs::symlink_metadata(&temp).is_ok_and(|meta| meta.is_dir()) {
        removed = removed.add(remove_chunk_files(&temp, TEMP_DIR, None)?);
    }
    for name in TEMP_FILES {
        remove_file_if_present(&store.join(name))?;
    }
    remove_file_if_present(&store.join(STORE_FILE))?;
    // Whatever is left at the top was not made by the store (chunks/ and tmp/ are accounted).
    for entry in fs::read_dir(store).map_err(|error| Error::io(store, error))? {
        let entry = entry.map_err(|error| Error::io(store, error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let accounted = (name == CHUNKS_DIR || name == TEMP_DIR)
            && entry.file_type().is_ok_and(|kind| kind.is_dir());
        if !accounted {
            removed.kept.push(name);
        }
    }
    removed.kept.sort();
    let removed_dir = remove_dir_if_empty(store)?;
    if removed_dir {
        tracing::info!(store = %store.display(), chunks = removed.chunks, "packed store deleted");
    } else {
        tracing::warn!(store = %store.display(), kept = removed.kept.len(), "packed store deleted; its directory was kept: it holds files the store did not make");
    }
    let summary = PackedDeleteSummary {
        store: store.to_path_buf(),
        store_kind: STORE_KIND,
        migration_id: info.as_ref().map(|info| info.migration_id.clone()),
        state: info.as_ref().map(|info| info.state),
        chunks_removed: removed.chunks,
        bytes_removed: removed.bytes,
        removed_dir,
        kept: removed.kept,
    };
    let mut text = format!(
        "deleted packed store {} ({} chunk files, {})\n",
        store.display(),
        summary.chunks_removed,
        human_bytes(summary.bytes_removed)
    );
    if !summary.removed_dir {
        let _ = writeln!(
            text,
            "the directory was kept: it holds files the store did not make"
        );
        for kept in &summary.kept {
            let _ = writeln!(text, "  kept: {kept}");
        }
    }
    Ok(Outcome::new(Code::Success, &summary, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_are_strict() {
        let id = "ab".repeat(32);
        assert!(chunk_name(&id).is_some());
        assert!(chunk_name(&id.to_uppercase()).is_none());
        assert!(chunk_name(&id[..63]).is_none());
        assert!(chunk_name(&format!("{}x", &id[..63])).is_none());
        assert!(is_prefix("0f") && !is_prefix("0F") && !is_prefix("0") && !is_prefix("zz"));
    }

    #[test]
    fn foreign_directories_are_neither_packed_nor_interrupted_stores() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        fs::create_dir_all(home.join("chunks/ab")).unwrap();
        assert!(looks_like_interrupted(home).unwrap());
        fs::write(home.join("notes.txt"), b"x").unwrap();
        assert!(!looks_like_interrupted(home).unwrap());
        assert!(matches!(delete(home).unwrap_err(), Error::NotAStore(_)));
        assert!(home.join("notes.txt").exists());
        fs::remove_file(home.join("notes.txt")).unwrap();
        fs::create_dir_all(home.join("chunks/photos")).unwrap();
        assert!(!looks_like_interrupted(home).unwrap());

        let other = dir.path().join("other");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join(STORE_FILE), br#"{"kind":"something else"}"#).unwrap();
        assert!(is_packed(&other));
        let error = delete(&other).unwrap_err();
        assert_eq!(super::super::exit::code_of(&error), Code::StoreInvalid);
        assert!(other.join(STORE_FILE).exists());
    }

    #[test]
    fn an_interrupted_capture_is_deleted_but_foreign_files_in_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let id = "cd".repeat(32);
        fs::create_dir_all(store.join("chunks/cd")).unwrap();
        fs::create_dir_all(store.join("tmp")).unwrap();
        fs::write(store.join("chunks/cd").join(&id), b"sealed").unwrap();
        fs::write(store.join("tmp").join("ef".repeat(32)), b"half").unwrap();
        let outcome = delete(&store).unwrap();
        assert_eq!(outcome.code, Code::Success);
        assert_eq!(outcome.json["chunks_removed"], 2);
        assert_eq!(outcome.json["removed_dir"], true);
        assert!(!store.exists());

        // A chunk-named file in the wrong prefix, and a symlink to a precious directory.
        let precious = dir.path().join("precious");
        fs::create_dir_all(&precious).unwrap();
        fs::write(precious.join(&id), b"keep").unwrap();
        fs::create_dir_all(store.join("chunks/ab")).unwrap();
        fs::write(store.join("chunks/ab").join(&id), b"misplaced").unwrap();
        fs::create_dir_all(store.join("tmp")).unwrap();
        std::os::unix::fs::symlink(&precious, store.join("chunks/cd")).unwrap();
        fs::write(
            store.join(STORE_FILE),
            serde_json::to_vec(&serde_json::json!({
                "kind": "packed", "format_version": 1, "migration_id": "scan-x",
                "hostname": "PC", "created_unix_ms": 0, "state": "capturing"
            }))
            .unwrap(),
        )
        .unwrap();
        let outcome = delete(&store).unwrap();
        assert_eq!(outcome.json["removed_dir"], false);
        let kept: Vec<&str> = outcome.json["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kept| kept.as_str().unwrap())
            .collect();
        let misplaced = format!("chunks/ab/{id}");
        assert_eq!(kept, [misplaced.as_str(), "chunks/cd"]);
        assert_eq!(fs::read(precious.join(&id)).unwrap(), b"keep");
        assert!(!store.join(STORE_FILE).exists());
        assert!(!store.join("tmp").exists());
    }
}
