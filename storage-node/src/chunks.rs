//! Chunk files: `chunks/<ab>/<64 hex id>` holds the 32-byte plain BLAKE3
//! checksum of the sealed bytes, then the sealed bytes. A chunk file is
//! self-verifying, so its presence means the chunk is held; there is no
//! index to keep in step.
//!
//! Writing is two-phase: [`stage`] writes a temporary file in `tmp/`;
//! [`publish`] makes a batch of staged chunks durable (data synced in
//! parallel, renamed into place without replacing, shard directories
//! synced) before anyone counts them as stored.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::durable;
use crate::layout::{ChunkId, Layout};

/// Length of the checksum header of a chunk file.
pub const CHECKSUM_LEN: usize = 32;
/// Largest sealed chunk accepted: a 4 MiB chunk plus its sealing overhead.
pub const MAX_SEALED_CHUNK_BYTES: usize = 4 * 1024 * 1024 + 64;
/// Batches with more files than this are made durable with one `syncfs`
/// instead of one sync per file (many small chunks).
const SYNCFS_THRESHOLD: usize = 64;

/// Plain BLAKE3 of sealed bytes: the checksum workers send and scrub checks.
pub fn checksum(sealed: &[u8]) -> [u8; 32] {
    blake3::hash(sealed).into()
}

/// A chunk written to `tmp/` but neither durable nor visible yet. Dropping
/// it before [`publish`] removes the temporary file.
#[derive(Debug)]
pub struct StagedChunk {
    /// The chunk.
    pub id: ChunkId,
    /// Length of the sealed bytes (without the checksum header).
    pub sealed_len: u64,
    file: Option<File>,
    tmp: PathBuf,
    published: bool,
}

impl Drop for StagedChunk {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `checksum` and `sealed` to a new temporary file (not synced).
pub fn stage(
    layout: &Layout,
    id: ChunkId,
    checksum: &[u8; 32],
    sealed: &[u8],
) -> std::io::Result<StagedChunk> {
    let tmp = layout.chunk_temp_path(&id, durable::unique());
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    // From here on, dropping `staged` removes the file.
    let mut staged = StagedChunk {
        id,
        sealed_len: sealed.len() as u64,
        file: Some(file),
        tmp,
        published: false,
    };
    let file = staged.file.as_mut().expect("just opened");
    file.write_all(checksum)?;
    file.write_all(sealed)?;
    Ok(staged)
}

/// Whether the chunk file of `id` exists.
pub fn is_present(layout: &Layout, id: &ChunkId) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(layout.chunk_path(id)) {
        Ok(meta) => Ok(meta.is_file()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Size of the chunk file of `id`, if present.
pub fn file_len(layout: &Layout, id: &ChunkId) -> std::io::Result<Option<u64>> {
    match std::fs::symlink_metadata(layout.chunk_path(id)) {
        Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// What [`publish`] did.
#[derive(Debug, Default)]
pub struct Published {
    /// Chunks now durable and visible, with their file sizes.
    pub stored: Vec<(ChunkId, u64)>,
    /// Chunks another writer put in place first (not written again).
    pub already_present: usize,
    /// The first failure, naming the chunk it happened on. Chunks in
    /// `stored` are complete even then (their data was synced before the
    /// rename); nothing else of the batch is left behind.
    pub error: Option<(ChunkId, std::io::Error)>,
}

/// Makes `staged` durable and visible: syncs every temporary file (in
/// parallel, or one `syncfs` for many), renames each into place without
/// replacing an existing chunk, then syncs each touched shard directory.
pub async fn publish(layout: &Layout, staged: Vec<StagedChunk>) -> Published {
    let mut published = Published::default();
    if staged.is_empty() {
        return published;
    }
    let ids: Vec<ChunkId> = staged.iter().map(|chunk| chunk.id).collect();

    // 1. The data of every file.
    let many = staged.len() > SYNCFS_THRESHOLD;
    let synced = if many {
        let tmp = layout.tmp_dir();
        blocking(move || durable::sync_filesystem(&tmp))
            .await
            .map_err(|err| (0, err))
            .map(|()| staged)
    } else {
        let mut staged = staged;
        let files: Vec<File> = staged
            .iter_mut()
            .map(|chunk| chunk.file.take().expect("staged chunks keep their file"))
            .collect();
        durable::in_parallel(files, File::sync_data)
            .await
            .map(|()| staged)
    };
    let staged = match synced {
        Ok(staged) => staged,
        Err((index, err)) => {
            published.error = Some((ids[index], err));
            return published;
        }
    };

    // 2. Into place. `staged` moves into the task; whatever is not renamed
    // is dropped there, removing its temporary file.
    let shards_layout = layout.clone();
    let renamed = tokio::task::spawn_blocking(move || rename_all(&shards_layout, staged)).await;
    let (renamed, mut touched_shards) = match renamed {
        Ok(outcome) => outcome,
        Err(err) => {
            published.error = Some((ids[0], std::io::Error::other(err.to_string())));
            return published;
        }
    };
    published.already_present = renamed.already_present;
    published.error = renamed.error;

    // 3. The directory entries.
    touched_shards.sort();
    touched_shards.dedup();
    let dirs_synced = if many {
        let chunks = layout.chunks_dir();
        blocking(move || durable::sync_filesystem(&chunks))
            .await
            .map_err(|err| (0, err))
    } else {
        durable::in_parallel(touched_shards.clone(), |dir: &PathBuf| {
            durable::sync_dir(dir)
        })
        .await
    };
    if let Err((index, err)) = dirs_synced {
        let shard = touched_shards.get(index).cloned().unwrap_or_default();
        let id = renamed
            .stored
            .iter()
            .find(|(id, _)| layout.shard_dir(id) == shard)
            .map_or(ids[0], |(id, _)| *id);
        published.error.get_or_insert((id, err));
    }
    published.stored = renamed.stored;
    published
}

struct Renamed {
    stored: Vec<(ChunkId, u64)>,
    already_present: usize,
    error: Option<(ChunkId, std::io::Error)>,
}

fn rename_all(layout: &Layout, staged: Vec<StagedChunk>) -> (Renamed, Vec<PathBuf>) {
    let mut renamed = Renamed {
        stored: Vec::with_capacity(staged.len()),
        already_present: 0,
        error: None,
    };
    let mut shards = Vec::new();
    for mut chunk in staged {
        if renamed.error.is_some() {
            continue; // dropped: its temporary file is removed
        }
        let target = layout.chunk_path(&chunk.id);
        match rename_no_replace(&chunk.tmp, &target) {
            Ok(true) => {
                chunk.published = true;
                renamed
                    .stored
                    .push((chunk.id, chunk.sealed_len + CHECKSUM_LEN as u64));
                shards.push(layout.shard_dir(&chunk.id));
            }
            Ok(false) => renamed.already_present += 1,
            Err(err) => renamed.error = Some((chunk.id, err)),
        }
    }
    (renamed, shards)
}

/// Renames `from` to `to` unless `to` exists. Returns whether it renamed.
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        // Filesystems without RENAME_NOREPLACE: check, then rename. Two
        // writers racing here write the same checksummed chunk.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Ok(false);
            }
            std::fs::rename(from, to).map(|()| true)
        }
        Err(errno) => Err(errno.into()),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err.to_string())))
}

/// Why a chunk file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ChunkFault {
    /// There is no chunk file.
    #[error("the chunk file is missing")]
    Missing,
    /// The file is too short to hold a checksum and data.
    #[error("the chunk file is truncated ({0} bytes)")]
    Truncated(u64),
    /// The sealed bytes do not match the checksum header.
    #[error("its checksum does not match its content")]
    ChecksumMismatch,
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(std::io::Error),
}

/// Checks a chunk file's content: returns its sealed bytes.
pub fn verify_contents(contents: Bytes) -> Result<Bytes, ChunkFault> {
    verify_contents_with_checksum(contents).map(|(_, sealed)| sealed)
}

/// Checks a chunk file's content: returns its checksum and sealed bytes.
fn verify_contents_with_checksum(contents: Bytes) -> Result<([u8; 32], Bytes), ChunkFault> {
    if contents.len() <= CHECKSUM_LEN {
        return Err(ChunkFault::Truncated(contents.len() as u64));
    }
    let sealed = contents.slice(CHECKSUM_LEN..);
    let sum = checksum(&sealed);
    if sum != contents[..CHECKSUM_LEN] {
        return Err(ChunkFault::ChecksumMismatch);
    }
    Ok((sum, sealed))
}

/// Reads the chunk file at `path` and checks it: returns the sealed bytes.
pub fn read_verified(path: &Path) -> Result<Bytes, ChunkFault> {
    read_checked(path).map(|(_, sealed)| sealed)
}

/// Reads the chunk file at `path` and checks it: returns its checksum (the
/// plain BLAKE3 a PutChunks message carries) and the sealed bytes.
pub fn read_checked(path: &Path) -> Result<([u8; 32], Bytes), ChunkFault> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(ChunkFault::Missing),
        Err(err) => return Err(ChunkFault::Io(err)),
    };
    let len = file.metadata().map_err(ChunkFault::Io)?.len();
    if len > (MAX_SEALED_CHUNK_BYTES + CHECKSUM_LEN) as u64 * 2 {
        // Nothing this node wrote is this large.
        return Err(ChunkFault::ChecksumMismatch);
    }
    let mut contents = Vec::with_capacity(len as usize);
    file.read_to_end(&mut contents).map_err(ChunkFault::Io)?;
    verify_contents_with_checksum(Bytes::from(contents))
}

/// A chunk file found by [`walk`].
#[derive(Debug, Clone)]
pub struct ChunkFile {
    /// The chunk.
    pub id: ChunkId,
    /// Its file.
    pub path: PathBuf,
    /// File size (checksum header included).
    pub len: u64,
    /// Modification time, milliseconds since the Unix epoch.
    pub modified_unix_ms: i64,
}

/// Every chunk file of the store, and paths in `chunks/` that are not
/// chunk files (they are left alone).
pub fn walk(layout: &Layout) -> std::io::Result<(Vec<ChunkFile>, Vec<PathBuf>)> {
    let mut found = Vec::new();
    let mut strays = Vec::new();
    for shard in layout.all_shard_dirs() {
        let entries = match std::fs::read_dir(&shard) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let shard_name = shard.file_name().unwrap_or_default().to_string_lossy();
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let id = name.to_str().and_then(ChunkId::from_hex);
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed while walking (garbage collection or quarantine).
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            };
            match id {
                Some(id) if meta.is_file() && id.shard() == shard_name => {
                    let modified_unix_ms = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                    found.push(ChunkFile {
                        id,
                        path,
                        len: meta.len(),
                        modified_unix_ms,
                    });
                }
                _ => strays.push(path),
            }
        }
    }
    Ok((found, strays))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        crate::data_dir::prepare_store(&layout).unwrap();
        (dir, layout)
    }

    fn sealed(n: u8, len: usize) -> (ChunkId, [u8; 32], Vec<u8>) {
        let data = vec![n; len];
        (ChunkId([n; 32]), checksum(&data), data)
    }

    #[tokio::test]
    async fn staged_chunks_become_visible_only_when_published() {
        let (_dir, layout) = store();
        let (id, sum, data) = sealed(1, 1000);
        let staged = stage(&layout, id, &sum, &data).unwrap();
        assert!(!is_present(&layout, &id).unwrap());
        let published = publish(&layout, vec![staged]).await;
        assert!(published.error.is_none());
        assert_eq!(published.stored, vec![(id, 1032)]);
        assert!(is_present(&layout, &id).unwrap());
        assert_eq!(
            read_verified(&layout.chunk_path(&id)).unwrap(),
            Bytes::from(data.clone())
        );
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);

        // A second writer of the same chunk does not replace it.
        let again = stage(&layout, id, &sum, &data).unwrap();
        let published = publish(&layout, vec![again]).await;
        assert!(published.stored.is_empty());
        assert_eq!(published.already_present, 1);
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn large_batches_use_one_filesystem_sync() {
        let (_dir, layout) = store();
        let staged: Vec<_> = (0..=(SYNCFS_THRESHOLD as u8 + 1))
            .map(|n| {
                let (id, sum, data) = sealed(n, 10);
                stage(&layout, id, &sum, &data).unwrap()
            })
            .collect();
        let published = publish(&layout, staged).await;
        assert!(published.error.is_none());
        assert_eq!(published.stored.len(), SYNCFS_THRESHOLD + 2);
        let (files, strays) = walk(&layout).unwrap();
        assert_eq!(files.len(), SYNCFS_THRESHOLD + 2);
        assert!(strays.is_empty());
    }

    #[test]
    fn dropping_a_staged_chunk_removes_its_temporary_file() {
        let (_dir, layout) = store();
        let (id, sum, data) = sealed(2, 10);
        drop(stage(&layout, id, &sum, &data).unwrap());
        assert_eq!(std::fs::read_dir(layout.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let (id, sum, data) = sealed(3, 100);
        let mut contents = sum.to_vec();
        contents.extend_from_slice(&data);
        assert!(verify_contents(Bytes::from(contents.clone())).is_ok());
        contents[50] ^= 1;
        assert!(matches!(
            verify_contents(Bytes::from(contents)),
            Err(ChunkFault::ChecksumMismatch)
        ));
        assert!(matches!(
            verify_contents(Bytes::from(sum.to_vec())),
            Err(ChunkFault::Truncated(32))
        ));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_verified(&dir.path().join(id.to_hex())),
            Err(ChunkFault::Missing)
        ));
    }
}
