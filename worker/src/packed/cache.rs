//! The metadata cache of packed captures (restic's "parent snapshot"): for each file captured
//! last time, its stat key and what packing it produced, so an unchanged file is not read again.
//!
//! An entry is trusted only when every key field matches the file's current `lstat`: source
//! path, size, mtime, ctime, inode and device (ctime changes on any write, chmod, rename or
//! link, and cannot be set back by a user). The whole cache is keyed by the fleet key (a
//! keyed hash of a constant, which reveals nothing of the key) and by the machine root's
//! device and inode: another fleet key, or another machine, finds it empty. The capture still
//! asks the store whether the cached chunk ids are there, and reads the file again when one
//! is missing.
//!
//! The file lives on the captured machine (the agent state dir), never in a store: it holds
//! plaintext paths and content hashes. Binary layout, little-endian: magic `FMPC`, version
//! (u32), fleet check (32 bytes), root device and inode (u64 each), entry count (u64), then per
//! entry: path length (u32), path, size, mtime_ns, ctime_ns, inode, device (8 bytes each),
//! content hash (32 bytes), chunk count (u32), chunk ids (32 bytes each); and a BLAKE3 of all
//! of that. A cache that is unreadable, from another version or fails its hash is ignored.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use fleetmig_format::{ChunkId, FleetKey};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"FMPC";
const VERSION: u32 = 1;
/// Plaintext whose keyed id identifies the fleet key the cache was written under.
const FLEET_CHECK_PLAINTEXT: &[u8] = b"fleetmig packed metadata cache fleet check v1";

/// The stat fields that must all match for a cached entry to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatKey {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
    /// Status-change time, ns.
    pub ctime_ns: i64,
    /// Inode.
    pub ino: u64,
    /// Device.
    pub dev: u64,
}

/// What packing a file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Plain BLAKE3 of the content.
    pub content_hash: [u8; 32],
    /// Chunk ids in order.
    pub chunks: Vec<ChunkId>,
}

/// The cache of one machine under one fleet key.
#[derive(Debug, Default)]
pub struct MetadataCache {
    entries: HashMap<String, (StatKey, Packed)>,
}

/// The identity of the cache: fleet key check and machine root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fleet_check: [u8; 32],
    root_dev: u64,
    root_ino: u64,
}

fn header(fleet: &FleetKey, root: &Path) -> Header {
    use std::os::unix::fs::MetadataExt;
    let (root_dev, root_ino) = std::fs::metadata(root)
        .map(|meta| (meta.dev(), meta.ino()))
        .unwrap_or((0, 0));
    Header {
        fleet_check: ChunkId::of(fleet, FLEET_CHECK_PLAINTEXT).0,
        root_dev,
        root_ino,
    }
}

impl MetadataCache {
    /// Loads the cache at `path` for the machine at `root` under `fleet`; empty when the file
    /// is missing, damaged, or belongs to another fleet key or machine.
    pub fn load(path: &Path, fleet: &FleetKey, root: &Path) -> Self {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %error, "metadata cache unreadable; ignoring it");
                }
                return Self::default();
            }
        };
        match parse(&bytes, header(fleet, root)) {
            Ok(cache) => cache,
            Err(reason) => {
                tracing::info!(path = %path.display(), reason, "metadata cache not usable; reading every file");
                Self::default()
            }
        }
    }

    /// The cached packing of `source` if its stat key still matches exactly.
    pub fn lookup(&self, source: &str, key: &StatKey) -> Option<&Packed> {
        self.entries
            .get(source)
            .filter(|(cached, _)| cached == key)
            .map(|(_, packed)| packed)
    }

    /// Records a file.
    pub fn insert(&mut self, source: String, key: StatKey, packed: Packed) {
        self.entries.insert(source, (key, packed));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the cache to `path` atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path, fleet: &FleetKey, root: &Path) -> Result<()> {
        let header = header(fleet, root);
        let mut out = Vec::with_capacity(64 + self.entries.len() * 160);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&header.fleet_check);
        out.extend_from_slice(&header.root_dev.to_le_bytes());
        out.extend_from_slice(&header.root_ino.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (source, (key, packed)) in &self.entries {
            out.extend_from_slice(&(source.len() as u32).to_le_bytes());
            out.extend_from_slice(source.as_bytes());
            out.extend_from_slice(&key.size.to_le_bytes());
            out.extend_from_slice(&key.mtime_ns.to_le_bytes());
            out.extend_from_slice(&key.ctime_ns.to_le_bytes());
            out.extend_from_slice(&key.ino.to_le_bytes());
            out.extend_from_slice(&key.dev.to_le_bytes());
            out.extend_from_slice(&packed.content_hash);
            out.extend_from_slice(&(packed.chunks.len() as u32).to_le_bytes());
            for id in &packed.chunks {
                out.extend_from_slice(&id.0);
            }
        }
        let digest = blake3::hash(&out);
        out.extend_from_slice(digest.as_bytes());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| Error::io(parent, error))?;
        }
        let temp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temp).map_err(|error| Error::io(&temp, error))?;
        file.write_all(&out)
            .and_then(|()| file.sync_all())
            .map_err(|error| Error::io(&temp, error))?;
        std::fs::rename(&temp, path).map_err(|error| Error::io(path, error))
    }
}

/// A little-endian reader over the cache bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> std::result::Result<&'a [u8], &'static str> {
        if self.bytes.len() < len {
            return Err("truncated");
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], &'static str> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> std::result::Result<u64, &'static str> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> std::result::Result<i64, &'static str> {
        self.array().map(i64::from_le_bytes)
    }
}

fn parse(bytes: &[u8], expected: Header) -> std::result::Result<MetadataCache, &'static str> {
    if bytes.len() < 32 {
        return Err("truncated");
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != digest {
        return Err("damaged (hash mismatch)");
    }
    let mut reader = Reader { bytes: body };
    if reader.take(4)? != MAGIC || reader.u32()? != VERSION {
        return Err("not a cache of this version");
    }
    let found = Header {
        fleet_check: reader.array()?,
        root_dev: reader.u64()?,
        root_ino: reader.u64()?,
    };
    if found.fleet_check != expected.fleet_check {
        return Err("written under another fleet key");
    }
    if (found.root_dev, found.root_ino) != (expected.root_dev, expected.root_ino) {
        return Err("written for another machine root");
    }
    let count = reader.u64()?;
    let mut entries = HashMap::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 24));
    for _ in 0..count {
        let len = reader.u32()? as usize;
        let source = std::str::from_utf8(reader.take(len)?)
            .map_err(|_| "path not utf-8")?
            .to_owned();
        let key = StatKey {
            size: reader.u64()?,
            mtime_ns: reader.i64()?,
            ctime_ns: reader.i64()?,
            ino: reader.u64()?,
            dev: reader.u64()?,
        };
        let content_hash = reader.array()?;
        let chunk_count = reader.u32()? as usize;
        let mut chunks = Vec::with_capacity(chunk_count.min(1 << 20));
        for _ in 0..chunk_count {
            chunks.push(ChunkId(reader.array()?));
        }
        entries.insert(
            source,
            (
                key,
                Packed {
                    content_hash,
                    chunks,
                },
            ),
        );
    }
    if !reader.bytes.is_empty() {
        return Err("trailing bytes");
    }
    Ok(MetadataCache { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(size: u64) -> StatKey {
        StatKey {
            size,
            mtime_ns: 1_100_000_000_000_000_000,
            ctime_ns: 1_700_000_000_000_000_000,
            ino: 42,
            dev: 7,
        }
    }

    #[test]
    fn round_trip_and_exact_match_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("_fleetmig/packcache.bin");
        let fleet = FleetKey::from_bytes([1; 32]);
        let mut cache = MetadataCache::default();
        let packed = Packed {
            content_hash: [9; 32],
            chunks: vec![ChunkId([1; 32]), ChunkId([2; 32])],
        };
        cache.insert(
            "Documents and Settings/alice/a.doc".into(),
            key(10),
            packed.clone(),
        );
        cache.save(&path, &fleet, dir.path()).unwrap();

        let loaded = MetadataCache::load(&path, &fleet, dir.path());
        assert_eq!(loaded.len(), 1);
        let source = "Documents and Settings/alice/a.doc";
        assert_eq!(loaded.lookup(source, &key(10)), Some(&packed));
        assert_eq!(loaded.lookup(source, &key(11)), None);
        let mut other = key(10);
        other.ctime_ns += 1;
        assert_eq!(
            loaded.lookup(source, &other),
            None,
            "ctime is part of the key"
        );
        assert_eq!(loaded.lookup("other", &key(10)), None);

        // Another fleet key or another machine root: the cache is empty.
        let other_fleet = FleetKey::from_bytes([2; 32]);
        assert!(MetadataCache::load(&path, &other_fleet, dir.path()).is_empty());
        let other_root = tempfile::tempdir().unwrap();
        assert!(MetadataCache::load(&path, &fleet, other_root.path()).is_empty());

        // A damaged cache is ignored.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[60] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(MetadataCache::load(&path, &fleet, dir.path()).is_empty());
        assert!(MetadataCache::load(&dir.path().join("missing"), &fleet, dir.path()).is_empty());
    }
}
