//! Writing a restore's files: fetch their chunks in batches (one batch ahead of the writers),
//! open them in parallel, write each file under a temporary name through a safely opened
//! directory, check its content hash, set mode and mtime, rename it into place. A file larger
//! than a batch is written across batches in order.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use bytes::Bytes;
use fleetmig_format::{ChunkId, FleetKey, PackedEntry};
use rayon::prelude::*;

use super::progress::Ticker;
use super::restore::{RestoreOptions, RestoreReport};
use super::safe_fs::{self, DirCache, SafeRoot};
use super::store::ChunkStore;
use crate::error::{Error, Result};

/// Chunk ids per fetch batch at most (a storage node serves at most 1024 per call).
const BATCH_CHUNKS: usize = 1024;

/// How a file gets to its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum How {
    /// Nothing was there.
    New,
    /// Its target held a different file: written as `name(n).ext`.
    Renamed,
    /// Replaces a different file (`overwrite`).
    Overwrite,
    /// Ours from an interrupted run (journal): written again in place.
    Again,
}

/// One file to write.
pub(super) struct Job<'m> {
    /// The file's manifest entry.
    pub(super) entry: &'m PackedEntry,
    /// Where it is written (its target or a collision name).
    pub(super) actual: String,
    /// How it gets there.
    pub(super) how: How,
}

/// Part of one file's chunks in one fetch batch.
#[derive(Debug, Clone, Copy)]
struct Segment {
    job: usize,
    start: usize,
    end: usize,
}

/// Chunks fetched together and the file parts they fill.
#[derive(Debug, Default)]
struct Batch {
    ids: Vec<ChunkId>,
    segments: Vec<Segment>,
    estimated_bytes: usize,
}

/// A file being written (across batches, for large files).
struct OpenFile {
    /// Its directory, for files continued in a later batch.
    dir: Option<OwnedFd>,
    file: std::fs::File,
    hasher: blake3::Hasher,
    written: u64,
}

/// Cuts the files to write into fetch batches, in order.
fn batches(jobs: &[Job<'_>], batch_bytes: usize) -> Vec<Batch> {
    let mut all = Vec::new();
    let mut batch = Batch::default();
    let mut seen: HashSet<ChunkId> = HashSet::new();
    for (index, job) in jobs.iter().enumerate() {
        let chunks = &job.entry.chunks;
        let per_chunk = if chunks.is_empty() {
            0
        } else {
            (job.entry.size as usize).div_ceil(chunks.len())
        };
        let mut start = 0;
        for (position, id) in chunks.iter().enumerate() {
            let full = batch.ids.len() >= BATCH_CHUNKS || batch.estimated_bytes >= batch_bytes;
            if full && !seen.contains(id) {
                if position > start {
                    batch.segments.push(Segment {
                        job: index,
                        start,
                        end: position,
                    });
                }
                all.push(std::mem::take(&mut batch));
                seen.clear();
                start = position;
            }
            if seen.insert(*id) {
                batch.ids.push(*id);
                batch.estimated_bytes += per_chunk;
            }
        }
        batch.segments.push(Segment {
            job: index,
            start,
            end: chunks.len(),
        });
    }
    if !batch.segments.is_empty() {
        all.push(batch);
    }
    all
}

/// Fetches, opens and writes every job's chunks (fetching one batch ahead).
pub(super) fn write_files(
    store: &dyn ChunkStore,
    fleet: &FleetKey,
    safe: &SafeRoot,
    jobs: &[Job<'_>],
    opts: &RestoreOptions,
    ticker: &Ticker<'_>,
    report: &mut RestoreReport,
) -> Result<()> {
    let batches = batches(jobs, opts.batch_bytes);
    let open_files: Mutex<HashMap<usize, OpenFile>> = Mutex::new(HashMap::new());
    let failed: Mutex<HashMap<usize, String>> = Mutex::new(HashMap::new());
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|scope| -> Result<()> {
        type Fetched = std::result::Result<(usize, HashMap<ChunkId, Bytes>), (usize, Error)>;
        let (sender, receiver) = mpsc::sync_channel::<Fetched>(1);
        let (batches_ref, stop_ref) = (&batches, &stop);
        scope.spawn(move || {
            for (index, batch) in batches_ref.iter().enumerate() {
                if stop_ref.load(Ordering::Relaxed) {
                    return;
                }
                let mut sealed = HashMap::with_capacity(batch.ids.len());
                let fetched = if batch.ids.is_empty() {
                    Ok(())
                } else {
                    store.fetch(&batch.ids, &mut |id, bytes| {
                        sealed.insert(id, bytes);
                        Ok(())
                    })
                };
                let message = match fetched {
                    Ok(()) => Ok((index, sealed)),
                    Err(error) => Err((index, error)),
                };
                let failed = message.is_err();
                if sender.send(message).is_err() || failed {
                    return;
                }
            }
        });
        let outcome = (|| {
            for message in &receiver {
                let (index, sealed) = message
                    .map_err(|(index, error)| name_the_file(error, jobs, &batches[index], None))?;
                let batch = &batches[index];
                report.chunks_fetched += batch.ids.len() as u64;
                report.sealed_bytes_fetched +=
                    sealed.values().map(|bytes| bytes.len() as u64).sum::<u64>();
                let plain = open_batch(fleet, batch, &sealed, jobs)?;
                drop(sealed);
                batch.segments.par_iter().try_for_each_init(
                    || DirCache::new(safe),
                    |cache, segment| {
                        write_segment(
                            cache,
                            safe,
                            jobs,
                            segment,
                            &plain,
                            &open_files,
                            &failed,
                            opts,
                            ticker,
                        )
                    },
                )?;
            }
            Ok(())
        })();
        if outcome.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(receiver);
        outcome
    });
    // Leave no temporary file of a failed or unfinished file behind.
    for (index, open) in open_files.into_inner().unwrap_or_else(|p| p.into_inner()) {
        let name = safe_fs::temp_name(&jobs[index].actual);
        if let Some(dir) = open.dir {
            let _ = rustix::fs::unlinkat(dir.as_fd(), name.as_str(), rustix::fs::AtFlags::empty());
        }
    }
    result?;
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    for (index, job) in jobs.iter().enumerate() {
        if let Some(reason) = failed.get(&index) {
            report
                .skipped
                .push((job.entry.target.clone(), reason.clone()));
            continue;
        }
        report.files_written += 1;
        report.bytes_written += job.entry.size;
        match job.how {
            How::Renamed => report
                .renamed
                .push((job.entry.target.clone(), job.actual.clone())),
            How::Overwrite => report.overwritten.push(job.entry.target.clone()),
            How::Again if job.actual != job.entry.target => {
                report
                    .renamed
                    .push((job.entry.target.clone(), job.actual.clone()));
            }
            How::New | How::Again => {}
        }
    }
    report.skipped.sort();
    Ok(())
}

/// Opens every chunk of a batch in parallel; a failure names a file that needed the chunk.
fn open_batch(
    fleet: &FleetKey,
    batch: &Batch,
    sealed: &HashMap<ChunkId, Bytes>,
    jobs: &[Job<'_>],
) -> Result<HashMap<ChunkId, Bytes>> {
    batch
        .ids
        .par_iter()
        .map(|id| {
            let Some(bytes) = sealed.get(id) else {
                let error = Error::CorruptChunk {
                    path: String::new(),
                    chunk: id.to_hex(),
                    reason: "the store did not return it".to_owned(),
                };
                return Err(name_the_file(error, jobs, batch, Some(id)));
            };
            match fleetmig_format::open_chunk(fleet, id, bytes) {
                Ok(plain) => Ok((*id, Bytes::from(plain))),
                Err(error) => {
                    let error = Error::CorruptChunk {
                        path: String::new(),
                        chunk: id.to_hex(),
                        reason: error.to_string(),
                    };
                    Err(name_the_file(error, jobs, batch, Some(id)))
                }
            }
        })
        .collect()
}

/// Fills in the file (target path) of a chunk error: the first file of the batch needing
/// `id` (or the batch's first file when the chunk is not known).
fn name_the_file(error: Error, jobs: &[Job<'_>], batch: &Batch, id: Option<&ChunkId>) -> Error {
    let chunk_of_error = match &error {
        Error::CorruptChunk { chunk, .. } => chunk.parse::<ChunkId>().ok(),
        _ => None,
    };
    let wanted = id.copied().or(chunk_of_error);
    let file = batch
        .segments
        .iter()
        .find(|segment| {
            wanted.is_none_or(|wanted| {
                jobs[segment.job].entry.chunks[segment.start..segment.end].contains(&wanted)
            })
        })
        .map(|segment| jobs[segment.job].entry.target.clone())
        .unwrap_or_default();
    match error {
        Error::CorruptChunk {
            path,
            chunk,
            reason,
        } if path.is_empty() => Error::CorruptChunk {
            path: file,
            chunk,
            reason,
        },
        Error::NodeDataLoss { node, message } => Error::CorruptChunk {
            path: file,
            chunk: wanted.map_or_else(|| "of this batch".to_owned(), |id| id.to_hex()),
            reason: format!("storage node {node} lost it: {message}"),
        },
        other => other,
    }
}

/// Writes one part of one file; opens it on its first part, finishes it on its last.
#[allow(clippy::too_many_arguments)]
fn write_segment(
    cache: &mut DirCache<'_>,
    safe: &SafeRoot,
    jobs: &[Job<'_>],
    segment: &Segment,
    plain: &HashMap<ChunkId, Bytes>,
    open_files: &Mutex<HashMap<usize, OpenFile>>,
    failed: &Mutex<HashMap<usize, String>>,
    opts: &RestoreOptions,
    ticker: &Ticker<'_>,
) -> Result<()> {
    let job = &jobs[segment.job];
    if failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&segment.job)
    {
        return Ok(());
    }
    let path = safe.path().join(&job.actual);
    let result = (|| -> Result<Option<OpenFile>> {
        let (parent, _) = safe_fs::split_parent(&job.actual);
        let last = segment.end == job.entry.chunks.len();
        let mut open = if segment.start == 0 {
            let dir = cache.get(parent)?;
            let temp = safe_fs::temp_name(&job.actual);
            let file = safe_fs::create_temp(dir, &temp).map_err(|error| Error::io(&path, error))?;
            // A file continued in a later batch keeps its own handle on its directory.
            let dir = if last {
                None
            } else {
                Some(
                    dir.try_clone_to_owned()
                        .map_err(|error| Error::io(&path, error))?,
                )
            };
            OpenFile {
                dir,
                file,
                hasher: blake3::Hasher::new(),
                written: 0,
            }
        } else {
            open_files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&segment.job)
                .expect("a file's earlier part was written before")
        };
        for id in &job.entry.chunks[segment.start..segment.end] {
            let data = plain.get(id).expect("every chunk of the batch was opened");
            open.file
                .write_all(data)
                .map_err(|error| Error::io(&path, error))?;
            open.hasher.update(data);
            open.written += data.len() as u64;
        }
        if !last {
            return Ok(Some(open));
        }
        let OpenFile {
            dir,
            file,
            hasher,
            written,
        } = open;
        let dir = match &dir {
            Some(dir) => dir.as_fd(),
            None => cache.get(parent)?,
        };
        finish_file(job, dir, file, hasher, written, &path)?;
        ticker.file_done(job.entry.size, &job.entry.user);
        Ok(None)
    })();
    match result {
        Ok(Some(open)) => {
            open_files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(segment.job, open);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(error @ (Error::Format(_) | Error::CorruptChunk { .. })) => Err(error),
        Err(error) if opts.continue_on_error => {
            tracing::warn!(target = %job.entry.target, %error, "skipping file");
            failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(segment.job, error.to_string());
            if let Ok(dir) = safe.open_dir(safe_fs::split_parent(&job.actual).0) {
                let name = safe_fs::temp_name(&job.actual);
                let _ =
                    rustix::fs::unlinkat(dir.as_fd(), name.as_str(), rustix::fs::AtFlags::empty());
            }
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Checks a completely written file, sets its mode and mtime and renames it into place.
fn finish_file(
    job: &Job<'_>,
    dir: BorrowedFd<'_>,
    file: std::fs::File,
    hasher: blake3::Hasher,
    written: u64,
    path: &Path,
) -> Result<()> {
    let temp = safe_fs::temp_name(&job.actual);
    let actual = hasher.finalize().to_hex().to_string();
    if written != job.entry.size || !actual.eq_ignore_ascii_case(&job.entry.content_hash) {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), rustix::fs::AtFlags::empty());
        return Err(fleetmig_format::Error::ContentHashMismatch {
            path: PathBuf::from(&job.entry.target),
            expected: job.entry.content_hash.clone(),
            actual: format!(
                "{actual} ({written} bytes, manifest says {})",
                job.entry.size
            ),
        }
        .into());
    }
    safe_fs::set_mode_and_mtime(file.as_fd(), job.entry.mode, job.entry.mtime_ns)
        .map_err(|error| Error::io(path, error))?;
    drop(file);
    let (_, name) = safe_fs::split_parent(&job.actual);
    rustix::fs::renameat(dir, temp.as_str(), dir, name)
        .map_err(|errno| Error::io(path, errno.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmig_format::EntryKind;

    fn entry(target: &str, chunks: Vec<ChunkId>, size: u64) -> PackedEntry {
        PackedEntry {
            kind: EntryKind::File,
            user: "alice".into(),
            source: String::new(),
            target: target.into(),
            size,
            mtime_ns: 0,
            mode: 0o100644,
            link_target: None,
            content_hash: String::new(),
            chunks,
        }
    }

    #[test]
    fn batches_split_large_files_and_share_chunks() {
        let id = |n: u8| ChunkId([n; 32]);
        let entries = [
            entry("a", vec![id(1), id(2), id(3)], 3 * 1024),
            entry("b", vec![], 0),
            entry("c", vec![id(1), id(4)], 2 * 1024),
        ];
        let jobs: Vec<Job<'_>> = entries
            .iter()
            .map(|entry| Job {
                entry,
                actual: entry.target.clone(),
                how: How::New,
            })
            .collect();
        // 2 KiB per batch: a's chunks split over two batches.
        let all = batches(&jobs, 2048);
        type Shape = (Vec<u8>, Vec<(usize, usize, usize)>);
        let shape: Vec<Shape> = all
            .iter()
            .map(|batch| {
                (
                    batch.ids.iter().map(|id| id.0[0]).collect(),
                    batch
                        .segments
                        .iter()
                        .map(|s| (s.job, s.start, s.end))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (vec![1, 2], vec![(0, 0, 2)]),
                (vec![3, 1], vec![(0, 2, 3), (1, 0, 0), (2, 0, 1)]),
                (vec![4], vec![(2, 1, 2)]),
            ]
        );
    }
}
