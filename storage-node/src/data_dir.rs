//! The node's data directory: creation, the stable node id, the store's
//! directories.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::Layout;

/// Name of the file holding the node id inside the data directory.
pub const NODE_ID_FILE: &str = "node-id";

/// Creates `data_dir` if needed and returns the node id kept in it,
/// generating (and durably writing) a new UUID v4 on first start.
pub fn prepare(data_dir: &Path) -> Result<uuid::Uuid> {
    std::fs::create_dir_all(data_dir).map_err(|source| Error::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => uuid::Uuid::parse_str(text.trim()).map_err(|err| Error::CorruptNodeId {
            path,
            reason: err.to_string(),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4();
            write_atomically(&path, format!("{id}\n").as_bytes())
                .map_err(|source| Error::NodeIdIo { path, source })?;
            Ok(id)
        }
        Err(source) => Err(Error::NodeIdIo { path, source }),
    }
}

pub use crate::durable::write_atomically;

/// Creates the store's directories (`chunks/` with its 256 shard
/// directories, `tmp/`, `migrations/`, `quarantine/`) and empties `tmp/` of
/// writes a previous run left unfinished. Returns how many it removed.
pub fn prepare_store(layout: &Layout) -> Result<usize> {
    let create = |path: PathBuf| {
        std::fs::create_dir_all(&path).map_err(|source| Error::DataDir { path, source })
    };
    create(layout.chunks_dir())?;
    create(layout.migrations_dir())?;
    create(layout.quarantine_dir())?;
    create(layout.tmp_dir())?;
    let mut created_shards = false;
    for shard in layout.all_shard_dirs() {
        if !shard.is_dir() {
            create(shard)?;
            created_shards = true;
        }
    }
    let sync = |path: PathBuf| {
        crate::durable::sync_dir(&path).map_err(|source| Error::DataDir { path, source })
    };
    if created_shards {
        sync(layout.chunks_dir())?;
    }
    sync(layout.root().to_owned())?;

    let tmp = layout.tmp_dir();
    let entries = std::fs::read_dir(&tmp).map_err(|source| Error::DataDir {
        path: tmp.clone(),
        source,
    })?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|source| Error::DataDir {
            path: tmp.clone(),
            source,
        })?;
        let path = entry.path();
        let outcome = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        outcome.map_err(|source| Error::DataDir { path, source })?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_stable_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("storage");
        let first = prepare(&data_dir).expect("first start");
        let second = prepare(&data_dir).expect("second start");
        assert_eq!(first, second);
        assert_eq!(first.get_version_num(), 4);
        let on_disk = std::fs::read_to_string(data_dir.join(NODE_ID_FILE)).expect("read");
        assert_eq!(on_disk, format!("{first}\n"));
    }

    #[test]
    fn refuses_a_corrupt_node_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(NODE_ID_FILE), "not a uuid").expect("write");
        let err = prepare(dir.path()).expect_err("corrupt id");
        assert!(matches!(err, Error::CorruptNodeId { .. }), "{err}");
    }

    #[test]
    fn store_directories_are_created_and_tmp_is_emptied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        assert_eq!(prepare_store(&layout).expect("first start"), 0);
        assert!(layout.chunks_dir().join("00").is_dir());
        assert!(layout.chunks_dir().join("ff").is_dir());
        std::fs::write(layout.tmp_dir().join("leftover.1"), b"half a chunk").expect("write");
        assert_eq!(prepare_store(&layout).expect("restart"), 1);
        assert_eq!(
            std::fs::read_dir(layout.tmp_dir()).expect("list").count(),
            0
        );
    }
}
