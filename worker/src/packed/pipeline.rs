//! The capture pipeline: read and chunk files, ask the store which chunks it lacks, seal only
//! those, upload them — each stage overlapping the others.
//!
//! ```text
//! readers (N threads)        batcher (caller's thread)               uploader (1 thread)
//! read, FastCDC, chunk ids,  batches of chunks -> store.missing() ->  ChunkUpload::put
//! content hash     --mpsc--> seal the missing ones (rayon) --sync--> (one stream / files)
//! ```
//!
//! Memory is bounded by two [`Budget`]s: plaintext in flight (read but not yet sealed or
//! found present) and sealed bytes waiting for the uploader. Small files are read with one
//! `read` into one buffer whose chunks are zero-copy slices; files above
//! [`WHOLE_FILE_MAX`] are streamed chunk by chunk. Readers are plain threads (only they wait
//! for budget); rayon only seals, so it never waits on anything.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmig_format::{ChunkId, FleetKey};
use rayon::prelude::*;

use super::budget::{Budget, Permit};
use super::cache::StatKey;
use super::progress::Ticker;
use super::store::{ChunkStore, SealedChunk, UploadStats};
use crate::error::{Error, Result};

/// Files up to this size are read with one `read` and chunked in memory.
pub const WHOLE_FILE_MAX: u64 = 8 * 1024 * 1024;

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Reader threads.
    pub readers: usize,
    /// Plaintext bytes in flight at most.
    pub plaintext_budget: usize,
    /// Sealed bytes waiting for the uploader at most.
    pub sealed_budget: usize,
    /// A batch is checked against the store when it has this many chunks...
    pub batch_chunks: usize,
    /// ... or this many plaintext bytes ...
    pub batch_bytes: usize,
    /// ... or when its first chunk has waited this long.
    pub batch_wait: Duration,
    /// Record unreadable files as skipped instead of failing.
    pub continue_on_error: bool,
    /// FAULT INJECTION FOR TESTS: sleep this long after each file read.
    pub per_file_delay: Option<Duration>,
    /// FAULT INJECTION FOR TESTS: files with exactly this name fail to open (permission
    /// denied), as an unreadable file would for a non-root worker.
    pub fault_unreadable_name: Option<String>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            readers: cores.clamp(2, 4),
            plaintext_budget: 128 * 1024 * 1024,
            sealed_budget: 64 * 1024 * 1024,
            batch_chunks: 1024,
            batch_bytes: 16 * 1024 * 1024,
            batch_wait: Duration::from_millis(20),
            continue_on_error: false,
            per_file_delay: None,
            fault_unreadable_name: None,
        }
    }
}

/// A file to read.
#[derive(Debug, Clone)]
pub struct FileToRead {
    /// The caller's index of the file.
    pub index: usize,
    /// Absolute path.
    pub path: PathBuf,
    /// Its stat key from the walk (size is the expected size).
    pub key: StatKey,
    /// Its profile, for progress.
    pub user: String,
}

/// What reading one file produced.
#[derive(Debug, Clone)]
pub struct ReadFile {
    /// Bytes read.
    pub size: u64,
    /// Plain BLAKE3 of what was read.
    pub content_hash: [u8; 32],
    /// Chunk ids in order.
    pub chunks: Vec<ChunkId>,
    /// The stat key after reading, when the file did not change while it was read (only such
    /// files may go to the metadata cache).
    pub stable_key: Option<StatKey>,
    /// Modification time after reading, ns.
    pub mtime_ns: i64,
}

/// Counts of one pipeline run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Files read.
    pub files_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Chunks cut (duplicates included).
    pub chunks_cut: u64,
    /// Chunks sealed (those the store lacked, each once).
    pub chunks_sealed: u64,
    /// Sealed bytes handed to the uploader.
    pub sealed_bytes: u64,
    /// Distinct chunks the store already held.
    pub chunks_present: u64,
    /// `missing` calls made.
    pub missing_calls: u64,
    /// What the upload session did.
    pub upload: UploadStats,
}

/// What became of one file: the caller's index and the file read, or why it could not be.
pub type FileOutcome = (usize, Result<ReadFile>);

/// A chunk cut by a reader.
struct Cut {
    id: ChunkId,
    data: Bytes,
    /// Keeps the plaintext budget taken for the buffer `data` slices.
    _permit: Arc<Permit>,
}

/// What readers send to the batcher, in order per file.
enum Event {
    Chunk(Cut),
    Done(usize, ReadFile),
    Failed(usize, Error),
}

/// Runs the pipeline over `files`; chunks in `known_present` are not asked for again.
/// Returns each file's outcome (by the caller's index) in no particular order.
pub fn run(
    store: &dyn ChunkStore,
    fleet: &FleetKey,
    files: &[FileToRead],
    known_present: &mut HashSet<ChunkId>,
    config: &PipelineConfig,
    ticker: &Ticker<'_>,
) -> Result<(Vec<FileOutcome>, PipelineStats)> {
    let plaintext = Budget::new(config.plaintext_budget);
    let sealed_budget = Budget::new(config.sealed_budget);
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let (events_tx, events_rx) = mpsc::channel::<Event>();
    let (sealed_tx, sealed_rx) = mpsc::sync_channel::<(SealedChunk, Permit)>(1024);

    std::thread::scope(|scope| {
        let mut readers = Vec::new();
        for _ in 0..config.readers.max(1) {
            let events = events_tx.clone();
            let (plaintext, next, abort) = (&plaintext, &next, &abort);
            readers.push(scope.spawn(move || {
                reader(
                    files, fleet, plaintext, next, abort, config, &events, ticker,
                );
            }));
        }
        drop(events_tx);
        let sealed_for_uploader = &sealed_budget;
        let uploader = scope.spawn(move || -> Result<UploadStats> {
            let uploaded = (|| {
                let mut upload = store.upload()?;
                for (chunk, permit) in &sealed_rx {
                    upload.put(chunk)?;
                    drop(permit);
                }
                upload.finish()
            })();
            if uploaded.is_err() {
                // Wake the batcher if it waits for room that will never be given back.
                sealed_for_uploader.close();
            }
            uploaded
        });

        let mut batcher = Batcher {
            store,
            fleet,
            known_present,
            sent: HashSet::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            sealed_tx: Some(sealed_tx),
            sealed_budget: &sealed_budget,
            stats: PipelineStats::default(),
            results: Vec::with_capacity(files.len()),
        };
        let batched = batcher.run(&events_rx, config);
        // Stop the readers (on failure) and let the uploader drain and finish.
        if batched.is_err() {
            abort.store(true, Ordering::Relaxed);
            plaintext.close();
            sealed_budget.close();
        }
        drop(events_rx);
        batcher.sealed_tx = None;
        let upload = uploader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        for reader in readers {
            reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
        let Batcher {
            mut stats, results, ..
        } = batcher;
        match (batched, upload) {
            // The upload's own error explains a failed hand-over best.
            (Err(_), Err(upload_error)) => Err(upload_error),
            (Err(error), Ok(_)) | (Ok(()), Err(error)) => Err(error),
            (Ok(()), Ok(upload)) => {
                stats.upload = upload;
                Ok((results, stats))
            }
        }
    })
}

/// One reader thread: takes the next file until none are left or the run is aborted.
#[allow(clippy::too_many_arguments)]
fn reader(
    files: &[FileToRead],
    fleet: &FleetKey,
    budget: &Arc<Budget>,
    next: &AtomicUsize,
    abort: &AtomicBool,
    config: &PipelineConfig,
    events: &mpsc::Sender<Event>,
    ticker: &Ticker<'_>,
) {
    loop {
        if abort.load(Ordering::Relaxed) {
            return;
        }
        let Some(file) = files.get(next.fetch_add(1, Ordering::Relaxed)) else {
            return;
        };
        let emit = |cut: Cut| events.send(Event::Chunk(cut)).is_ok();
        let unreadable = config
            .fault_unreadable_name
            .as_deref()
            .is_some_and(|name| file.path.file_name().is_some_and(|n| n == name));
        let read = if unreadable {
            Err(fleetmig_state::Error::Io {
                path: file.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }
            .into())
        } else {
            read_file(file, fleet, budget, emit)
        };
        let event = match read {
            Ok(Some(read)) => {
                ticker.file_done(read.size, &file.user);
                Event::Done(file.index, read)
            }
            Ok(None) => return, // aborted
            Err(error) => Event::Failed(file.index, error),
        };
        if events.send(event).is_err() {
            return;
        }
        if let Some(delay) = config.per_file_delay {
            std::thread::sleep(delay);
        }
    }
}

/// Reads one file, handing its chunks to `emit` in order. `Ok(None)` when the run was aborted.
fn read_file(
    file: &FileToRead,
    fleet: &FleetKey,
    budget: &Arc<Budget>,
    mut emit: impl FnMut(Cut) -> bool,
) -> Result<Option<ReadFile>> {
    let io = |error: std::io::Error| -> Error {
        fleetmig_state::Error::Io {
            path: file.path.clone(),
            source: error,
        }
        .into()
    };
    let flags =
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
    let fd = rustix::fs::open(&file.path, flags, rustix::fs::Mode::empty())
        .map_err(|errno| io(errno.into()))?;
    let mut handle = File::from(fd);
    let mut chunks = Vec::new();
    let fstat = |handle: &File| -> Result<StatKey> {
        rustix::fs::fstat(handle)
            .map(|stat| stat_key(&stat))
            .map_err(|errno| io(errno.into()))
    };
    let (size, content_hash, after) = if file.key.size <= WHOLE_FILE_MAX {
        let Some(mut permit) = budget.acquire(file.key.size as usize) else {
            return Ok(None);
        };
        // One `read` for the expected size (`read_to_end` would probe before and after)...
        let mut buffer = vec![0u8; file.key.size as usize];
        let mut filled = 0;
        while filled < buffer.len() {
            match handle.read(&mut buffer[filled..]) {
                Ok(0) => break, // shrank since the walk
                Ok(read) => filled += read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(io(error)),
            }
        }
        buffer.truncate(filled);
        // ... and the rest only if the file grew since the walk.
        let mut after = fstat(&handle)?;
        if after.size > file.key.size {
            handle.read_to_end(&mut buffer).map_err(io)?;
            after = fstat(&handle)?;
        }
        permit.shrink_to(buffer.len());
        let content_hash = *blake3::hash(&buffer).as_bytes();
        let data = Bytes::from(buffer);
        let permit = Arc::new(permit);
        for range in fleetmig_format::chunks(&data) {
            let id = ChunkId::of(fleet, &data[range.clone()]);
            chunks.push(id);
            let cut = Cut {
                id,
                data: data.slice(range),
                _permit: Arc::clone(&permit),
            };
            if !emit(cut) {
                return Ok(None);
            }
        }
        (data.len() as u64, content_hash, after)
    } else {
        let mut whole = blake3::Hasher::new();
        let mut size = 0u64;
        for piece in fleetmig_format::stream_chunks(&mut handle) {
            let piece = piece.map_err(io)?;
            let Some(permit) = budget.acquire(piece.len()) else {
                return Ok(None);
            };
            whole.update(&piece);
            size += piece.len() as u64;
            let id = ChunkId::of(fleet, &piece);
            chunks.push(id);
            let cut = Cut {
                id,
                data: Bytes::from(piece),
                _permit: Arc::new(permit),
            };
            if !emit(cut) {
                return Ok(None);
            }
        }
        (size, *whole.finalize().as_bytes(), fstat(&handle)?)
    };
    let stable = after == file.key && after.size == size;
    if !stable {
        tracing::warn!(path = %file.path.display(), "file changed while it was read; captured as read");
    }
    Ok(Some(ReadFile {
        size,
        content_hash,
        chunks,
        stable_key: stable.then_some(after),
        mtime_ns: after.mtime_ns,
    }))
}

/// The stat key of a rustix stat.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
pub fn stat_key(stat: &rustix::fs::Stat) -> StatKey {
    StatKey {
        size: stat.st_size.max(0) as u64,
        mtime_ns: (stat.st_mtime as i64) * 1_000_000_000 + stat.st_mtime_nsec as i64,
        ctime_ns: (stat.st_ctime as i64) * 1_000_000_000 + stat.st_ctime_nsec as i64,
        ino: stat.st_ino as u64,
        dev: stat.st_dev as u64,
    }
}

/// The batcher's state: collects chunks, asks the store, seals what it lacks.
struct Batcher<'a> {
    store: &'a dyn ChunkStore,
    fleet: &'a FleetKey,
    /// Chunks the store is known to hold.
    known_present: &'a mut HashSet<ChunkId>,
    /// Chunks sealed and handed to the uploader by this run.
    sent: HashSet<ChunkId>,
    pending: Vec<Cut>,
    pending_bytes: usize,
    sealed_tx: Option<mpsc::SyncSender<(SealedChunk, Permit)>>,
    sealed_budget: &'a Arc<Budget>,
    stats: PipelineStats,
    results: Vec<FileOutcome>,
}

impl Batcher<'_> {
    fn run(&mut self, events: &mpsc::Receiver<Event>, config: &PipelineConfig) -> Result<()> {
        let mut first_at: Option<Instant> = None;
        loop {
            let event = match first_at {
                None => match events.recv() {
                    Ok(event) => event,
                    Err(mpsc::RecvError) => break,
                },
                Some(first) => {
                    let wait = config.batch_wait.saturating_sub(first.elapsed());
                    match events.recv_timeout(wait) {
                        Ok(event) => event,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.flush()?;
                            first_at = None;
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match event {
                Event::Chunk(cut) => {
                    self.stats.chunks_cut += 1;
                    self.pending_bytes += cut.data.len();
                    self.pending.push(cut);
                    first_at.get_or_insert_with(Instant::now);
                    if self.pending.len() >= config.batch_chunks
                        || self.pending_bytes >= config.batch_bytes
                    {
                        self.flush()?;
                        first_at = None;
                    }
                }
                Event::Done(index, read) => {
                    self.stats.files_read += 1;
                    self.stats.bytes_read += read.size;
                    self.results.push((index, Ok(read)));
                }
                Event::Failed(index, error) => {
                    if !config.continue_on_error {
                        return Err(error);
                    }
                    self.results.push((index, Err(error)));
                }
            }
        }
        self.flush()
    }

    /// Checks the pending chunks against the store, seals the missing ones and hands them over.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut asked = HashSet::new();
        let query: Vec<ChunkId> = self
            .pending
            .iter()
            .map(|cut| cut.id)
            .filter(|id| {
                !self.known_present.contains(id) && !self.sent.contains(id) && asked.insert(*id)
            })
            .collect();
        let missing: HashSet<ChunkId> = if query.is_empty() {
            HashSet::new()
        } else {
            self.stats.missing_calls += 1;
            let indexes = self.store.missing(&query)?;
            indexes
                .into_iter()
                .filter_map(|index| query.get(index as usize).copied())
                .collect()
        };
        for id in &query {
            if !missing.contains(id) {
                self.known_present.insert(*id);
                self.stats.chunks_present += 1;
            }
        }
        let to_seal: Vec<&Cut> = self
            .pending
            .iter()
            .filter(|cut| missing.contains(&cut.id) && self.sent.insert(cut.id))
            .collect();
        let fleet = self.fleet;
        let sealed: Vec<SealedChunk> = to_seal
            .par_iter()
            .map(|cut| SealedChunk::seal(fleet, &cut.data))
            .collect();
        self.pending.clear();
        self.pending_bytes = 0;
        for chunk in sealed {
            let size = chunk.bytes.len();
            let Some(permit) = self.sealed_budget.acquire(size) else {
                return Err(upload_stopped());
            };
            self.stats.chunks_sealed += 1;
            self.stats.sealed_bytes += size as u64;
            let sender = self.sealed_tx.as_ref().ok_or_else(upload_stopped)?;
            sender.send((chunk, permit)).map_err(|_| upload_stopped())?;
        }
        Ok(())
    }
}

fn upload_stopped() -> Error {
    Error::VerificationFailed {
        what: "packed upload",
        details: "the upload stopped".to_owned(),
    }
}
