//! Removing a store without touching anything it did not make.

use std::fs;
use std::path::Path;

use crate::error::{IoResultExt, Result};
use crate::fsutil::remove_tree;
use crate::manifest::{DATA_DIR, MANIFEST_FILE, SEAL_FILE};

/// Names a store may contain besides `data/`: the manifest, the seal and their temp files.
const STORE_FILES: &[&str] = &[
    MANIFEST_FILE,
    SEAL_FILE,
    ".manifest.json.tmp",
    ".manifest.seal.tmp",
];

/// Deletes a store: its `data/` tree, manifest, seal, leftover temp and probe files, then the
/// store directory itself if nothing else is in it. Anything else found in the directory is
/// left alone. Symlinks are removed, never followed; read-only directories are made writable
/// first (removing a hard link needs write permission on its directory only, so the originals'
/// modes are never touched). A missing store is not an error.
pub fn delete_store(store_dir: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(store_dir) {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).at(store_dir),
    };
    if !meta.is_dir() {
        // A file or symlink where a store should be is not ours to delete.
        return Ok(());
    }
    remove_tree(&store_dir.join(DATA_DIR))?;
    for entry in fs::read_dir(store_dir).at(store_dir)? {
        let entry = entry.at(store_dir)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if STORE_FILES.contains(&name.as_ref()) || name.starts_with(".fleetmig-link-probe-") {
            fs::remove_file(entry.path()).at(entry.path())?;
        }
    }
    match fs::remove_dir(store_dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            tracing::warn!(store = %store_dir.display(), "store directory kept: it holds files the store did not make");
        }
        Err(error) => return Err(error).at(store_dir),
    }
    tracing::info!(store = %store_dir.display(), "store deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn removes_only_store_content_and_never_follows_links() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), b"keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let data = store.join("data/alice/My Documents");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("ro.doc"), b"x").unwrap();
        fs::set_permissions(data.join("ro.doc"), fs::Permissions::from_mode(0o444)).unwrap();
        std::os::unix::fs::symlink(outside.path(), data.join("escape")).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o555)).unwrap();
        fs::write(store.join(MANIFEST_FILE), b"{}").unwrap();
        fs::write(store.join(SEAL_FILE), b"x").unwrap();
        fs::write(store.join("notes.txt"), b"not ours").unwrap();

        delete_store(&store).unwrap();
        assert!(!store.join("data").exists());
        assert!(!store.join(MANIFEST_FILE).exists());
        assert!(store.join("notes.txt").exists());
        assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"keep");

        fs::remove_file(store.join("notes.txt")).unwrap();
        delete_store(&store).unwrap();
        assert!(!store.exists());
        delete_store(&store).unwrap();
    }
}
