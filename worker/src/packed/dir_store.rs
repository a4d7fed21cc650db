//! A packed store in a local directory, for the offline verbs (`scan --packed`, `load`):
//!
//! ```text
//! DIR/store.json          what the store holds (kind "packed", format version, migration id,
//!                         hostname, state, manifest digest); rewritten atomically
//! DIR/manifest.fmmf       the sealed manifest (written at commit)
//! DIR/chunks/<2hex>/<id>  one sealed chunk per file, named by its id (64 hex)
//! DIR/tmp/                chunks being written
//! ```
//!
//! Chunks are written under `tmp/`, made durable in batches (one `syncfs` per batch instead of
//! one `fsync` per chunk: a capture of small files writes tens of thousands of chunks) and only
//! then renamed into `chunks/`, so a chunk file under its final name is always complete. The
//! commit syncs again, checks that every referenced chunk is there, writes the manifest (temp,
//! fsync, rename) and finally marks `store.json` committed; a store whose capture never
//! committed cannot be loaded.
//!
//! An offline store has no controller to hand out a migration key, so it is derived from the
//! fleet key and the store's migration id ([`offline_migration_key`]).

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;

use bytes::Bytes;
use fleetmig_format::{ChunkId, MigrationKey};
use rayon::prelude::*;
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::store::{ChunkStore, ChunkUpload, Commit, SealedChunk, UploadStats};
use crate::error::{Error, Result};

/// The file describing a packed store.
pub const STORE_FILE: &str = "store.json";
/// The sealed manifest.
pub const MANIFEST_FILE: &str = "manifest.fmmf";
/// Directory of sealed chunks.
pub const CHUNKS_DIR: &str = "chunks";
/// Directory of chunks being written.
pub const TEMP_DIR: &str = "tmp";
/// `kind` of a packed store in `store.json`.
pub const STORE_KIND: &str = "packed";
/// Context deriving an offline store's migration key from the fleet key and the migration id.
pub const OFFLINE_MIGRATION_KEY_CONTEXT: &str = "fleetmig offline migration key v1";
/// Chunks written between two syncs by one writer.
const SYNC_EVERY_CHUNKS: usize = 1024;
/// Bytes written between two syncs by one writer.
const SYNC_EVERY_BYTES: usize = 64 * 1024 * 1024;
/// Writer threads of an upload.
const WRITERS: usize = 2;

/// The migration key of an offline store: `blake3::derive_key(
/// "fleetmig offline migration key v1", fleet key || migration id)`.
pub fn offline_migration_key(fleet_key: &[u8; 32], migration_id: &str) -> MigrationKey {
    let mut material = Vec::with_capacity(32 + migration_id.len());
    material.extend_from_slice(fleet_key);
    material.extend_from_slice(migration_id.as_bytes());
    MigrationKey::from_bytes(blake3::derive_key(OFFLINE_MIGRATION_KEY_CONTEXT, &material))
}

/// Whether a capture into the store completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreState {
    /// A capture is being written (or was interrupted).
    Capturing,
    /// The manifest is committed: the store can be loaded.
    Committed,
}

/// `store.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// Always `packed`.
    pub kind: String,
    /// The packed format version of its chunks and manifest.
    pub format_version: u8,
    /// The migration id (also the manifest's), from which the migration key is derived.
    pub migration_id: String,
    /// Hostname of the captured machine.
    pub hostname: String,
    /// When the capture started, ms since the epoch.
    pub created_unix_ms: i64,
    /// Capturing or committed.
    pub state: StoreState,
    /// Plain BLAKE3 (hex) of `manifest.fmmf`, once committed.
    #[serde(default)]
    pub manifest_digest: String,
    /// Plaintext bytes of the capture, once committed.
    #[serde(default)]
    pub logical_bytes: u64,
    /// Distinct chunks the manifest references, once committed.
    #[serde(default)]
    pub chunks: u64,
}

/// A packed store in a directory.
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    info: Mutex<StoreInfo>,
    /// `chunks/00` .. `chunks/ff`, opened on first use: chunk files are looked up, created and
    /// read relative to them.
    subdirs: OnceLock<Arc<Vec<OwnedFd>>>,
}

impl DirStore {
    /// Whether `dir` holds a `store.json` of a packed store.
    pub fn is_packed_store(dir: &Path) -> bool {
        read_info(dir).is_ok_and(|info| info.kind == STORE_KIND)
    }

    /// Prepares `dir` for a new capture with `migration_id`: creates it, or reuses an existing
    /// packed store when `overwrite` (its chunks stay and dedup against the new capture; its
    /// manifest is dropped). Refuses any other non-empty directory.
    pub fn create(dir: &Path, migration_id: &str, hostname: &str, overwrite: bool) -> Result<Self> {
        let info = StoreInfo {
            kind: STORE_KIND.to_owned(),
            format_version: fleetmig_format::FORMAT_VERSION,
            migration_id: migration_id.to_owned(),
            hostname: hostname.to_owned(),
            created_unix_ms: now_ms(),
            state: StoreState::Capturing,
            manifest_digest: String::new(),
            logical_bytes: 0,
            chunks: 0,
        };
        let exists = dir.is_dir()
            && fs::read_dir(dir)
                .map_err(|error| Error::io(dir, error))?
                .next()
                .is_some();
        if exists {
            if !Self::is_packed_store(dir) {
                if overwrite {
                    return Err(Error::BadArguments(format!(
                        "{} is not empty and is not a packed store; --overwrite only replaces a packed store's capture",
                        dir.display()
                    )));
                }
                return Err(fleetmig_state::Error::NotEmpty {
                    path: dir.to_path_buf(),
                }
                .into());
            }
            if !overwrite {
                return Err(Error::PackedStoreExists(dir.to_path_buf()));
            }
            // Capturing before the old manifest goes: a crash in between must not leave a
            // store that says committed without its manifest.
            write_info(dir, &info)?;
            remove_if_present(&dir.join(MANIFEST_FILE))?;
            let temp = dir.join(TEMP_DIR);
            if temp.is_dir() {
                fs::remove_dir_all(&temp).map_err(|error| Error::io(&temp, error))?;
            }
        }
        for path in [dir.to_path_buf(), dir.join(TEMP_DIR), dir.join(CHUNKS_DIR)] {
            fs::create_dir_all(&path).map_err(|error| Error::io(&path, error))?;
        }
        for prefix in 0..=255u8 {
            let sub = dir.join(CHUNKS_DIR).join(format!("{prefix:02x}"));
            match fs::create_dir(&sub) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(Error::io(&sub, error)),
            }
        }
        write_info(dir, &info)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            info: Mutex::new(info),
            subdirs: OnceLock::new(),
        })
    }

    /// Opens an existing packed store whose capture was committed (to restore from it).
    pub fn open(dir: &Path) -> Result<Self> {
        let info = read_info(dir)?;
        if info.kind != STORE_KIND {
            return Err(invalid(
                dir,
                format!("{STORE_FILE} says kind {:?}", info.kind),
            ));
        }
        if info.format_version != fleetmig_format::FORMAT_VERSION {
            return Err(invalid(
                dir,
                format!("unsupported packed format version {}", info.format_version),
            ));
        }
        if info.state != StoreState::Committed {
            return Err(invalid(
                dir,
                "the capture into this store never completed (not committed)".to_owned(),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            info: Mutex::new(info),
            subdirs: OnceLock::new(),
        })
    }

    /// What `store.json` says.
    pub fn info(&self) -> StoreInfo {
        self.info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the chunk `id` lives.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        chunk_path(&self.dir, id)
    }

    /// The open `chunks/<prefix>` directories.
    fn subdirs(&self) -> Result<&Arc<Vec<OwnedFd>>> {
        if let Some(subdirs) = self.subdirs.get() {
            return Ok(subdirs);
        }
        let opened = open_subdirs(&self.dir)?;
        Ok(self.subdirs.get_or_init(|| opened))
    }

    /// Chunk files in the store.
    pub fn chunk_files(&self) -> Result<u64> {
        let chunks = self.dir.join(CHUNKS_DIR);
        let mut count = 0;
        for sub in fs::read_dir(&chunks).map_err(|error| Error::io(&chunks, error))? {
            let sub = sub.map_err(|error| Error::io(&chunks, error))?.path();
            if sub.is_dir() {
                count += fs::read_dir(&sub)
                    .map_err(|error| Error::io(&sub, error))?
                    .count() as u64;
            }
        }
        Ok(count)
    }
}

impl ChunkStore for DirStore {
    fn location(&self) -> String {
        format!("dir:{}", self.dir.display())
    }

    fn missing(&self, ids: &[ChunkId]) -> Result<Vec<u32>> {
        let subdirs = self.subdirs()?;
        let absent = |id: &ChunkId| {
            let dir = subdirs[usize::from(id.0[0])].as_fd();
            rustix::fs::statat(dir, id.to_hex().as_str(), AtFlags::SYMLINK_NOFOLLOW).is_err()
        };
        Ok(ids
            .par_iter()
            .with_min_len(256)
            .enumerate()
            .filter(|(_, id)| absent(id))
            .map(|(index, _)| index as u32)
            .collect())
    }

    fn upload(&self) -> Result<Box<dyn ChunkUpload + '_>> {
        Ok(Box::new(DirUpload::start(
            &self.dir,
            Arc::clone(self.subdirs()?),
        )?))
    }

    fn commit(&self, commit: &Commit) -> Result<()> {
        sync_filesystem(&self.dir)?;
        let missing = self.missing(&commit.chunk_ids)?;
        if let Some(&first) = missing.first() {
            return Err(invalid(
                &self.dir,
                format!(
                    "{} referenced chunks are missing (first: {})",
                    missing.len(),
                    commit.chunk_ids[first as usize]
                ),
            ));
        }
        write_atomic(&self.dir, MANIFEST_FILE, &commit.manifest)?;
        let mut info = self
            .info
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        info.state = StoreState::Committed;
        info.manifest_digest = commit.manifest_digest.clone();
        info.logical_bytes = commit.logical_bytes;
        info.chunks = commit.chunk_ids.len() as u64;
        write_info(&self.dir, &info)
    }

    fn manifest(&self) -> Result<Bytes> {
        let path = self.dir.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(|error| Error::io(&path, error))?;
        let expected = self.info().manifest_digest;
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != expected {
            return Err(invalid(
                &self.dir,
                format!("{MANIFEST_FILE} has digest {actual}, {STORE_FILE} says {expected}"),
            ));
        }
        Ok(Bytes::from(bytes))
    }

    fn fetch(
        &self,
        ids: &[ChunkId],
        sink: &mut dyn FnMut(ChunkId, Bytes) -> Result<()>,
    ) -> Result<()> {
        let subdirs = self.subdirs()?;
        let read_chunk = |id: &ChunkId| -> std::io::Result<Vec<u8>> {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let dir = subdirs[usize::from(id.0[0])].as_fd();
            let fd = rustix::fs::openat(dir, id.to_hex().as_str(), flags, Mode::empty())?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut fs::File::from(fd), &mut bytes)?;
            Ok(bytes)
        };
        let read: Vec<(ChunkId, Bytes)> = ids
            .par_iter()
            .map(|id| match read_chunk(id) {
                Ok(bytes) => Ok((*id, Bytes::from(bytes))),
                Err(error) => Err(Error::CorruptChunk {
                    path: String::new(),
                    chunk: id.to_hex(),
                    reason: format!("cannot read it from {}: {error}", self.dir.display()),
                }),
            })
            .collect::<Result<_>>()?;
        for (id, bytes) in read {
            sink(id, bytes)?;
        }
        Ok(())
    }

    fn release(&self) -> Result<()> {
        Ok(())
    }
}

/// An upload into a directory: [`WRITERS`] threads write chunks to `tmp/`, sync in batches and
/// rename them into `chunks/`.
struct DirUpload {
    senders: Vec<mpsc::SyncSender<SealedChunk>>,
    writers: Vec<JoinHandle<Result<UploadStats>>>,
    next: usize,
}

impl DirUpload {
    fn start(dir: &Path, subdirs: Arc<Vec<OwnedFd>>) -> Result<Self> {
        let mut senders = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..WRITERS {
            let (sender, receiver) = mpsc::sync_channel::<SealedChunk>(64);
            let writer = ChunkWriter::open(dir, Arc::clone(&subdirs))?;
            senders.push(sender);
            writers.push(std::thread::spawn(move || writer.run(receiver)));
        }
        Ok(Self {
            senders,
            writers,
            next: 0,
        })
    }

    /// Joins the writers, returning the first error or the summed counts.
    fn join(writers: Vec<JoinHandle<Result<UploadStats>>>) -> Result<UploadStats> {
        let mut total = UploadStats::default();
        let mut first_error = None;
        for writer in writers {
            match writer.join() {
                Ok(Ok(stats)) => total.add(stats),
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(total),
        }
    }
}

impl ChunkUpload for DirUpload {
    fn put(&mut self, chunk: SealedChunk) -> Result<()> {
        let index = self.next % self.senders.len();
        self.next += 1;
        if self.senders[index].send(chunk).is_err() {
            // The writer stopped: its error says why.
            self.senders.clear();
            Self::join(std::mem::take(&mut self.writers))?;
            return Err(Error::VerificationFailed {
                what: "packed store",
                details: "a chunk writer stopped".to_owned(),
            });
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<UploadStats> {
        self.senders.clear();
        Self::join(std::mem::take(&mut self.writers))
    }
}

/// One writer thread of a [`DirUpload`].
struct ChunkWriter {
    chunks: PathBuf,
    temp_path: PathBuf,
    temp: OwnedFd,
    /// `chunks/00` .. `chunks/ff`, open (shared by the writers of an upload).
    subdirs: Arc<Vec<OwnedFd>>,
    /// Written to `tmp/`, not yet synced and renamed.
    pending: Vec<ChunkId>,
    pending_bytes: usize,
    stats: UploadStats,
}

impl ChunkWriter {
    fn open(dir: &Path, subdirs: Arc<Vec<OwnedFd>>) -> Result<Self> {
        let temp_path = dir.join(TEMP_DIR);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let temp = rustix::fs::open(&temp_path, flags, Mode::empty())
            .map_err(|errno| Error::io(&temp_path, errno.into()))?;
        Ok(Self {
            chunks: dir.join(CHUNKS_DIR),
            temp_path,
            temp,
            subdirs,
            pending: Vec::new(),
            pending_bytes: 0,
            stats: UploadStats::default(),
        })
    }

    fn run(mut self, receiver: mpsc::Receiver<SealedChunk>) -> Result<UploadStats> {
        for chunk in receiver {
            self.write(&chunk)?;
            if self.pending.len() >= SYNC_EVERY_CHUNKS || self.pending_bytes >= SYNC_EVERY_BYTES {
                self.flush()?;
            }
        }
        self.flush()?;
        Ok(self.stats)
    }

    fn write(&mut self, chunk: &SealedChunk) -> Result<()> {
        // The capture asked `missing` first: a chunk arriving here is written (a copy that
        // appeared meanwhile is replaced by identical bytes).
        let name = chunk.id.to_hex();
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(
            self.temp.as_fd(),
            name.as_str(),
            flags,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|errno| Error::io(self.temp_path.join(&name), errno.into()))?;
        let mut file = fs::File::from(fd);
        file.write_all(&chunk.bytes)
            .map_err(|error| Error::io(self.temp_path.join(&name), error))?;
        self.pending.push(chunk.id);
        self.pending_bytes += chunk.bytes.len();
        self.stats.chunks_stored += 1;
        self.stats.bytes_written += chunk.bytes.len() as u64;
        Ok(())
    }

    /// Makes the pending chunks durable, then moves them under their final names.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        rustix::fs::syncfs(&self.temp).map_err(|errno| Error::io(&self.temp_path, errno.into()))?;
        for id in std::mem::take(&mut self.pending) {
            let name = id.to_hex();
            let subdir = self.subdirs[usize::from(id.0[0])].as_fd();
            rustix::fs::renameat(&self.temp, name.as_str(), subdir, name.as_str()).map_err(
                |errno| Error::io(self.chunks.join(&name[..2]).join(&name), errno.into()),
            )?;
        }
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Opens `chunks/00` .. `chunks/ff`.
fn open_subdirs(dir: &Path) -> Result<Arc<Vec<OwnedFd>>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    (0..=255u8)
        .map(|prefix| {
            let path = dir.join(CHUNKS_DIR).join(format!("{prefix:02x}"));
            rustix::fs::open(&path, flags, Mode::empty())
                .map_err(|errno| Error::io(&path, errno.into()))
        })
        .collect::<Result<Vec<_>>>()
        .map(Arc::new)
}

fn chunk_path(dir: &Path, id: &ChunkId) -> PathBuf {
    let name = id.to_hex();
    dir.join(CHUNKS_DIR).join(&name[..2]).join(name)
}

fn invalid(dir: &Path, reason: String) -> Error {
    Error::PackedStoreInvalid {
        path: dir.to_path_buf(),
        reason,
    }
}

fn read_info(dir: &Path) -> Result<StoreInfo> {
    let path = dir.join(STORE_FILE);
    let bytes = fs::read(&path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            Error::NotAStore(dir.to_path_buf())
        } else {
            Error::io(&path, error)
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|error| invalid(dir, format!("{STORE_FILE} is not valid: {error}")))
}

fn write_info(dir: &Path, info: &StoreInfo) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(info).expect("store info serializes");
    write_atomic(dir, STORE_FILE, &bytes)
}

/// Writes `dir/name` atomically and durably: temp file, fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = fs::File::create(&temp).map_err(|error| Error::io(&temp, error))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| Error::io(&temp, error))?;
    fs::rename(&temp, &target).map_err(|error| Error::io(&target, error))?;
    fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| Error::io(dir, error))
}

/// Flushes everything written to the filesystem holding `dir`.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let handle = fs::File::open(dir).map_err(|error| Error::io(dir, error))?;
    rustix::fs::syncfs(&handle).map_err(|errno| Error::io(dir, errno.into()))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io(path, error)),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_commit_checks_references() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = DirStore::create(&path, "m-1", "PC-01", false).unwrap();
        let fleet = fleetmig_format::FleetKey::from_bytes([3; 32]);
        let chunks: Vec<SealedChunk> = (0..5u8)
            .map(|n| SealedChunk::seal(&fleet, &vec![n; 1000 + usize::from(n)]))
            .collect();
        let ids: Vec<ChunkId> = chunks.iter().map(|chunk| chunk.id).collect();
        assert_eq!(store.missing(&ids).unwrap(), vec![0, 1, 2, 3, 4]);
        let mut upload = store.upload().unwrap();
        for chunk in chunks.iter().take(3).cloned() {
            upload.put(chunk).unwrap();
        }
        let stats = upload.finish().unwrap();
        assert_eq!(stats.chunks_stored, 3);
        assert_eq!(store.missing(&ids).unwrap(), vec![3, 4]);
        assert_eq!(store.chunk_files().unwrap(), 3);
        assert!(fs::read_dir(path.join(TEMP_DIR)).unwrap().next().is_none());

        let commit = Commit {
            manifest: Bytes::from_static(b"sealed manifest"),
            manifest_digest: blake3::hash(b"sealed manifest").to_hex().to_string(),
            chunk_ids: ids.clone(),
            logical_bytes: 10,
        };
        let error = store.commit(&commit).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("2 referenced chunks are missing"),
            "{error}"
        );
        assert!(DirStore::open(&path).is_err(), "not committed yet");
        let commit = Commit {
            chunk_ids: ids[..3].to_vec(),
            ..commit
        };
        store.commit(&commit).unwrap();

        let reopened = DirStore::open(&path).unwrap();
        assert_eq!(reopened.manifest().unwrap(), commit.manifest);
        let mut fetched = Vec::new();
        reopened
            .fetch(&ids[..3], &mut |id, bytes| {
                fetched.push((id, bytes));
                Ok(())
            })
            .unwrap();
        assert_eq!(fetched.len(), 3);
        for (id, bytes) in fetched {
            let original = chunks.iter().find(|chunk| chunk.id == id).unwrap();
            assert_eq!(bytes, original.bytes);
        }
        let error = reopened.fetch(&ids[3..], &mut |_, _| Ok(())).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&ids[3].to_hex()) || message.contains(&ids[4].to_hex()),
            "{message}"
        );

        // An existing store is refused without overwrite, reused with it.
        let error = DirStore::create(&path, "m-2", "PC-01", false).unwrap_err();
        assert!(matches!(error, Error::PackedStoreExists(_)), "{error}");
        let again = DirStore::create(&path, "m-2", "PC-01", true).unwrap();
        assert_eq!(again.chunk_files().unwrap(), 3, "chunks are kept for dedup");
        assert!(!path.join(MANIFEST_FILE).exists());
        assert!(DirStore::open(&path).is_err(), "capturing again");
    }

    #[test]
    fn offline_keys_depend_on_fleet_and_migration() {
        let a = offline_migration_key(&[1; 32], "scan-1");
        let manifest = fleetmig_format::PackedManifest::new("scan-1", "PC");
        let sealed = fleetmig_format::seal_manifest(&a, &manifest).unwrap();
        assert!(
            fleetmig_format::open_manifest(&offline_migration_key(&[1; 32], "scan-1"), &sealed)
                .is_ok()
        );
        assert!(
            fleetmig_format::open_manifest(&offline_migration_key(&[1; 32], "scan-2"), &sealed)
                .is_err()
        );
        assert!(
            fleetmig_format::open_manifest(&offline_migration_key(&[2; 32], "scan-1"), &sealed)
                .is_err()
        );
    }

    #[test]
    fn a_foreign_directory_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let error = DirStore::create(dir.path(), "m", "h", false).unwrap_err();
        assert!(
            matches!(error, Error::State(fleetmig_state::Error::NotEmpty { .. })),
            "{error}"
        );
        let error = DirStore::create(dir.path(), "m", "h", true).unwrap_err();
        assert!(error.to_string().contains("not a packed store"), "{error}");
        assert!(dir.path().join("notes.txt").exists());
    }
}
