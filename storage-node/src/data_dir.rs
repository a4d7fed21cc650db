//! The node's data directory: creation, the stable node id, atomic writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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

/// Writes `contents` to `path` so readers see either nothing or all of it:
/// a temporary sibling is written, synced and renamed over `path`.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable; not all filesystems allow this.
            if let Ok(dir) = std::fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
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
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ready");
        write_atomically(&path, b"one").expect("write");
        write_atomically(&path, b"two").expect("overwrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let entries = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(entries, 1);
    }
}
