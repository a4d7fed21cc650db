//! A packed capture: select what the hard-link capture would, pack every file the metadata
//! cache cannot vouch for, seal the manifest and commit it to the store.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use fleetmig_format::{ChunkId, EntryKind, FleetKey, MigrationKey, PackedEntry, PackedManifest};
use fleetmig_state::{Phase, ProgressSink};
use serde::Serialize;

use super::cache::{MetadataCache, Packed, StatKey};
use super::pipeline::{self, FileToRead, PipelineConfig, PipelineStats};
use super::progress::Ticker;
use super::select::{self, Candidate};
use super::store::{ChunkStore, Commit, UploadStats};
use crate::error::Result;

/// Chunk ids asked about per `missing` call when checking the cache.
const MISSING_BATCH: usize = 4096;

/// The keys of one migration.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The fleet key: chunk ids and chunk sealing.
    pub fleet: FleetKey,
    /// The migration key: the manifest seal.
    pub migration: MigrationKey,
}

/// How to capture.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// What to capture, exactly as for a hard-link capture: user filter, selection,
    /// `continue_on_error`, `per_file_delay`; `job_id` is the migration id in the manifest.
    pub capture: fleetmig_state::CaptureOptions,
    /// The metadata cache file (on the captured machine), if any.
    pub cache: Option<PathBuf>,
    /// A directory never walked (a local store inside the machine root).
    pub skip_dir: Option<PathBuf>,
    /// Threads, memory budgets and batching of the pipeline.
    pub pipeline: PipelineConfig,
}

/// What a capture did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CaptureReport {
    /// Users captured.
    pub users: Vec<String>,
    /// Files captured.
    pub files: u64,
    /// Directories captured (profile directories included, as in a hard-link capture).
    pub dirs: u64,
    /// Symlinks recorded.
    pub symlinks: u64,
    /// Bytes in the captured files.
    pub bytes: u64,
    /// Files left out by the selection rules.
    pub excluded_files: u64,
    /// Entries that could not be captured: (source path, reason).
    pub skipped: Vec<(String, String)>,
    /// Entries given another target because theirs clashed: (source, target).
    pub renamed: Vec<(String, String)>,
    /// Plain BLAKE3 (hex) of the sealed manifest.
    pub manifest_digest: String,
    /// Size of the sealed manifest.
    pub manifest_bytes: u64,
    /// Distinct chunks the manifest references.
    pub chunks: u64,
    /// How the work was done.
    pub stats: CaptureStats,
}

/// How a capture did its work: what came from the cache, what was read, sealed, sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CaptureStats {
    /// Files taken from the metadata cache (not read).
    pub cache_hits: u64,
    /// Files read.
    pub files_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Chunks sealed (those the store lacked).
    pub chunks_sealed: u64,
    /// Sealed bytes handed to the store.
    pub sealed_bytes: u64,
    /// Distinct chunks the store already held.
    pub chunks_present: u64,
    /// Chunks the store wrote.
    pub chunks_stored: u64,
    /// Chunks sent that the store already held when they arrived (acknowledged, not written
    /// again): another capture stored the same content between our `missing` call and the
    /// upload, or a re-send repeated a chunk the store had kept.
    pub chunks_already_present: u64,
    /// Chunks sent again after a broken upload.
    pub chunks_resent: u64,
    /// `missing` calls made.
    pub missing_calls: u64,
}

impl CaptureStats {
    fn from_pipeline(pipeline: &PipelineStats, cache_hits: u64, cache_calls: u64) -> Self {
        let UploadStats {
            chunks_stored,
            chunks_already_present,
            chunks_resent,
            ..
        } = pipeline.upload;
        Self {
            cache_hits,
            files_read: pipeline.files_read,
            bytes_read: pipeline.bytes_read,
            chunks_sealed: pipeline.chunks_sealed,
            sealed_bytes: pipeline.sealed_bytes,
            chunks_present: pipeline.chunks_present,
            chunks_stored,
            chunks_already_present,
            chunks_resent,
            missing_calls: pipeline.missing_calls + cache_calls,
        }
    }
}

/// Captures the XP machine at `root` into `store` (see the [module docs](super)).
pub fn capture(
    root: &Path,
    store: &dyn ChunkStore,
    keys: &Keys,
    opts: &CaptureOptions,
    progress: &dyn ProgressSink,
) -> Result<CaptureReport> {
    let started = Instant::now();
    let scanning = Ticker::new(progress, Phase::Scanning, 0, 0);
    let selected = select::select(root, &opts.capture, opts.skip_dir.as_deref())?;
    let entries = &selected.entries;
    let files: Vec<usize> = (0..entries.len())
        .filter(|&index| entries[index].kind == EntryKind::File)
        .collect();
    scanning.add(
        files.len() as u64,
        files.iter().map(|&i| entries[i].size).sum(),
    );
    tracing::info!(root = %root.display(), store = %store.location(), users = selected.users.len(), files = files.len(), "packed capture started");

    // Files the cache vouches for, as long as the store still holds their chunks.
    let cache = opts
        .cache
        .as_deref()
        .map(|path| MetadataCache::load(path, &keys.fleet, root))
        .unwrap_or_default();
    let mut packed: Vec<Option<Packed>> = vec![None; entries.len()];
    for &index in &files {
        let entry = &entries[index];
        packed[index] = cache.lookup(&entry.source, &stat_key(entry)).cloned();
    }
    let (known_present, cache_calls) = check_cached_chunks(store, &mut packed)?;
    let mut known_present = known_present;
    let to_read: Vec<FileToRead> = files
        .iter()
        .filter(|&&index| packed[index].is_none())
        .map(|&index| {
            let entry = &entries[index];
            FileToRead {
                index,
                path: select::join(root, &entry.source),
                key: stat_key(entry),
                user: entry.user.clone(),
            }
        })
        .collect();
    let cache_hits = (files.len() - to_read.len()) as u64;

    let collecting = Ticker::new(
        progress,
        Phase::Collecting,
        files.len() as u64,
        files.iter().map(|&i| entries[i].size).sum(),
    );
    let cached_bytes = files
        .iter()
        .filter(|&&index| packed[index].is_some())
        .map(|&index| entries[index].size)
        .sum();
    collecting.add(cache_hits, cached_bytes);
    let config = PipelineConfig {
        continue_on_error: opts.capture.continue_on_error,
        per_file_delay: opts.capture.per_file_delay,
        fault_unreadable_name: opts.capture.fault_unreadable_name.clone(),
        ..opts.pipeline.clone()
    };
    let (results, pipeline_stats) = pipeline::run(
        store,
        &keys.fleet,
        &to_read,
        &mut known_present,
        &config,
        &collecting,
    )?;
    collecting.flush(None);

    let saving = Ticker::new(progress, Phase::Saving, 0, 0);
    let mut report = CaptureReport {
        users: selected.users.clone(),
        dirs: selected.dirs,
        excluded_files: selected.excluded_files,
        skipped: selected.skipped.clone(),
        renamed: selected.renamed.clone(),
        stats: CaptureStats::from_pipeline(&pipeline_stats, cache_hits, cache_calls),
        ..CaptureReport::default()
    };
    let mut read: Vec<Option<pipeline::ReadFile>> = vec![None; entries.len()];
    let mut new_cache = MetadataCache::default();
    for (index, outcome) in results {
        match outcome {
            Ok(file) => read[index] = Some(file),
            Err(error) => report
                .skipped
                .push((entries[index].source.clone(), error.to_string())),
        }
    }
    report.skipped.sort();

    let mut manifest = PackedManifest::new(
        &opts.capture.job_id,
        &fleetmig_state::inventory::read_hostname(root),
    );
    manifest.users = selected.users.clone();
    manifest.entries.reserve(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let mut packed_entry = PackedEntry {
            kind: entry.kind,
            user: entry.user.clone(),
            source: entry.source.clone(),
            target: entry.target.clone(),
            size: 0,
            mtime_ns: entry.mtime_ns,
            mode: entry.mode,
            link_target: entry.link_target.clone(),
            content_hash: String::new(),
            chunks: Vec::new(),
        };
        match entry.kind {
            EntryKind::Dir => {}
            EntryKind::Symlink => report.symlinks += 1,
            EntryKind::File => {
                let (size, hash, chunks) = if let Some(cached) = packed[index].take() {
                    new_cache.insert(entry.source.clone(), stat_key(entry), cached.clone());
                    (entry.size, cached.content_hash, cached.chunks)
                } else if let Some(file) = read[index].take() {
                    packed_entry.mtime_ns = file.mtime_ns;
                    if let Some(key) = file.stable_key {
                        let cached = Packed {
                            content_hash: file.content_hash,
                            chunks: file.chunks.clone(),
                        };
                        new_cache.insert(entry.source.clone(), key, cached);
                    }
                    (file.size, file.content_hash, file.chunks)
                } else {
                    continue; // skipped
                };
                packed_entry.size = size;
                packed_entry.content_hash = blake3::Hash::from(hash).to_hex().to_string();
                packed_entry.chunks = chunks;
                report.files += 1;
                report.bytes += size;
            }
        }
        manifest.entries.push(packed_entry);
    }
    let sealed = Bytes::from(fleetmig_format::seal_manifest(&keys.migration, &manifest)?);
    let chunk_ids = manifest.chunk_ids();
    report.chunks = chunk_ids.len() as u64;
    report.manifest_bytes = sealed.len() as u64;
    report.manifest_digest = blake3::hash(&sealed).to_hex().to_string();
    store.commit(&Commit {
        manifest: sealed,
        manifest_digest: report.manifest_digest.clone(),
        chunk_ids,
        logical_bytes: report.bytes,
    })?;
    saving.flush(None);
    if let Some(path) = &opts.cache {
        if let Err(error) = new_cache.save(path, &keys.fleet, root) {
            tracing::warn!(path = %path.display(), %error, "cannot save the metadata cache; the next capture reads every file");
        }
    }
    tracing::info!(
        store = %store.location(),
        files = report.files,
        bytes = report.bytes,
        cache_hits = report.stats.cache_hits,
        files_read = report.stats.files_read,
        chunks = report.chunks,
        chunks_sealed = report.stats.chunks_sealed,
        sealed_bytes = report.stats.sealed_bytes,
        seconds = started.elapsed().as_secs_f64(),
        digest = %report.manifest_digest,
        "packed capture committed"
    );
    Ok(report)
}

/// The cache key of a walked file.
fn stat_key(entry: &Candidate) -> StatKey {
    StatKey {
        size: entry.size,
        mtime_ns: entry.mtime_ns,
        ctime_ns: entry.ctime_ns,
        ino: entry.ino,
        dev: entry.dev,
    }
}

/// Asks the store about every chunk the cache vouches for; forgets the cached packing of files
/// with a missing chunk (they are read again). Returns the chunks known present and the number
/// of calls made.
fn check_cached_chunks(
    store: &dyn ChunkStore,
    packed: &mut [Option<Packed>],
) -> Result<(HashSet<ChunkId>, u64)> {
    let mut seen = HashSet::new();
    let ids: Vec<ChunkId> = packed
        .iter()
        .flatten()
        .flat_map(|cached| cached.chunks.iter().copied())
        .filter(|id| seen.insert(*id))
        .collect();
    let mut missing = HashSet::new();
    let mut calls = 0;
    for batch in ids.chunks(MISSING_BATCH) {
        calls += 1;
        for index in store.missing(batch)? {
            if let Some(id) = batch.get(index as usize) {
                missing.insert(*id);
            }
        }
    }
    if !missing.is_empty() {
        tracing::info!(
            chunks = missing.len(),
            "the store lacks chunks the metadata cache knew; reading their files again"
        );
        for slot in packed.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|cached| cached.chunks.iter().any(|id| missing.contains(id)))
            {
                *slot = None;
            }
        }
    }
    let present = ids.into_iter().filter(|id| !missing.contains(id)).collect();
    Ok((present, calls))
}
