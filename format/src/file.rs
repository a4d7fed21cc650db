//! Packing a file into sealed chunks, and rebuilding it from them.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::chunk::{ChunkId, SealedChunk, open_chunk, seal_chunk};
use crate::chunker::stream_chunks;
use crate::error::{Error, Result};
use crate::keys::FleetKey;

/// What packing one file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedFile {
    /// The file's chunk ids, in order (empty for an empty file).
    pub chunks: Vec<ChunkId>,
    /// Hex plain BLAKE3 of the whole content, for [`crate::PackedEntry::content_hash`].
    pub content_hash: String,
    /// Bytes read.
    pub size: u64,
}

/// Reads `reader` in content-defined chunks, seals each one and hands it to `sink` (which may
/// upload it, or skip it when the storage node already has the id). Memory stays bounded by a
/// few chunks whatever the size of the input. `path` only names the source in errors.
pub fn pack_reader<R, S>(
    fleet: &FleetKey,
    reader: R,
    path: &Path,
    mut sink: S,
) -> Result<PackedFile>
where
    R: Read,
    S: FnMut(SealedChunk) -> Result<()>,
{
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for plaintext in stream_chunks(reader) {
        let plaintext = plaintext.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        whole.update(&plaintext);
        size += plaintext.len() as u64;
        let sealed = seal_chunk(fleet, &plaintext);
        chunks.push(sealed.id);
        sink(sealed)?;
    }
    Ok(PackedFile {
        chunks,
        content_hash: whole.finalize().to_hex().to_string(),
        size,
    })
}

/// Packs the file at `path`, keeping every sealed chunk in memory. Convenient for small files
/// and tests; captures should prefer [`pack_reader`] with a sink that uploads.
pub fn pack_file(fleet: &FleetKey, path: &Path) -> Result<(PackedFile, Vec<SealedChunk>)> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut sealed = Vec::new();
    let packed = pack_reader(fleet, file, path, |chunk| {
        sealed.push(chunk);
        Ok(())
    })?;
    Ok((packed, sealed))
}

/// Rebuilds a file at `dest` from its chunks: `fetch` returns the sealed bytes of a chunk id,
/// each chunk is opened and verified, and the whole content must hash to `content_hash`. The
/// file is written beside `dest` under a temporary name and renamed into place only once
/// verified, so a failed restore never leaves a half-written file at `dest`. Returns the size.
pub fn unpack_into<F>(
    fleet: &FleetKey,
    chunks: &[ChunkId],
    content_hash: &str,
    mut fetch: F,
    dest: &Path,
) -> Result<u64>
where
    F: FnMut(&ChunkId) -> Result<Vec<u8>>,
{
    let partial = partial_path(dest);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let result = (|| {
        let mut out = BufWriter::new(File::create(&partial).map_err(io(&partial))?);
        let mut whole = blake3::Hasher::new();
        let mut size = 0u64;
        for id in chunks {
            let sealed = fetch(id)?;
            let plaintext = open_chunk(fleet, id, &sealed)?;
            whole.update(&plaintext);
            size += plaintext.len() as u64;
            out.write_all(&plaintext).map_err(io(&partial))?;
        }
        let actual = whole.finalize().to_hex().to_string();
        if !actual.eq_ignore_ascii_case(content_hash) {
            return Err(Error::ContentHashMismatch {
                path: dest.to_path_buf(),
                expected: content_hash.to_owned(),
                actual,
            });
        }
        let file = out.into_inner().map_err(|error| Error::Io {
            path: partial.clone(),
            source: error.into_error(),
        })?;
        file.sync_all().map_err(io(&partial))?;
        std::fs::rename(&partial, dest).map_err(io(dest))?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".fleetmig-partial");
    dest.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunker::pseudo_random_bytes;
    use std::collections::HashMap;

    #[test]
    fn pack_and_unpack_a_multi_chunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = FleetKey::from_bytes([8; 32]);
        let mut content = pseudo_random_bytes(5, 3 * 1024 * 1024);
        content.extend(b"compressible tail ".repeat(200_000));
        let source = dir.path().join("big.pst");
        std::fs::write(&source, &content).unwrap();

        let (packed, sealed) = pack_file(&fleet, &source).unwrap();
        assert!(packed.chunks.len() >= 2, "{} chunks", packed.chunks.len());
        assert_eq!(packed.size, content.len() as u64);
        assert_eq!(
            packed.content_hash,
            blake3::hash(&content).to_hex().to_string()
        );
        assert!(
            sealed.iter().any(|c| c.is_compressed()) && sealed.iter().any(|c| !c.is_compressed())
        );

        let store: HashMap<ChunkId, Vec<u8>> =
            sealed.into_iter().map(|c| (c.id, c.bytes)).collect();
        let fetch = |id: &ChunkId| Ok(store[id].clone());
        let dest = dir.path().join("restored.pst");
        let size = unpack_into(&fleet, &packed.chunks, &packed.content_hash, fetch, &dest).unwrap();
        assert_eq!(size, content.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), content);

        // A manifest promising other content: refused, and nothing left behind.
        let wrong = blake3::hash(b"other").to_hex().to_string();
        let dest2 = dir.path().join("wrong.pst");
        let error = unpack_into(&fleet, &packed.chunks, &wrong, fetch, &dest2).unwrap_err();
        assert!(
            matches!(error, Error::ContentHashMismatch { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("wrong.pst"));
        assert!(!dest2.exists() && !partial_path(&dest2).exists());
    }

    #[test]
    fn empty_file_has_no_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = FleetKey::from_bytes([8; 32]);
        let source = dir.path().join("empty.txt");
        std::fs::write(&source, b"").unwrap();
        let (packed, sealed) = pack_file(&fleet, &source).unwrap();
        assert!(packed.chunks.is_empty() && sealed.is_empty());
        let dest = dir.path().join("out.txt");
        let fetch = |_: &ChunkId| -> Result<Vec<u8>> { unreachable!() };
        unpack_into(&fleet, &[], &packed.content_hash, fetch, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"");
    }

    #[test]
    fn missing_file_names_the_path() {
        let fleet = FleetKey::from_bytes([8; 32]);
        let error = pack_file(&fleet, Path::new("/nonexistent/fleetmig.doc")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/fleetmig.doc"),
            "{error}"
        );
    }
}
