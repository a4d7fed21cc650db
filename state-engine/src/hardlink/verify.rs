//! Checking a store against its manifest before anything destructive happens.

use std::fs;
use std::path::Path;

use rayon::prelude::*;

use super::VerifyReport;
use crate::error::Result;
use crate::fsutil::StatInfo;
use crate::manifest::{Entry, EntryKind, Manifest, join_rel};

/// Checks a store: the manifest's seal and paths are valid, every file entry exists in the store
/// with the recorded inode, size and mtime, directories are directories and symlinks carry the
/// recorded text. Where the original still exists under `root`, it must still be the same inode
/// (a missing original is fine: after a reimage only the store holds the data).
pub fn verify_store(root: &Path, store_dir: &Path) -> Result<VerifyReport> {
    let manifest = Manifest::load_sealed(store_dir)?;
    let mismatches: Vec<String> = manifest
        .entries
        .par_iter()
        .filter_map(|entry| check_entry(root, store_dir, entry))
        .collect();
    let files_checked = manifest.entries_of(EntryKind::File).count() as u64;
    if !mismatches.is_empty() {
        tracing::warn!(store = %store_dir.display(), mismatches = mismatches.len(), "store verification failed");
    }
    Ok(VerifyReport {
        files_checked,
        mismatches,
    })
}

fn check_entry(root: &Path, store_dir: &Path, entry: &Entry) -> Option<String> {
    let path = join_rel(store_dir, &entry.store);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(error) => return Some(format!("{}: missing from store: {error}", entry.store)),
    };
    match entry.kind {
        EntryKind::Dir if !meta.is_dir() => {
            Some(format!("{}: not a directory in the store", entry.store))
        }
        EntryKind::Dir => None,
        EntryKind::Symlink => {
            let text = fs::read_link(&path).ok();
            let same = text.as_deref().and_then(Path::to_str) == entry.link_target.as_deref();
            (!meta.file_type().is_symlink() || !same)
                .then(|| format!("{}: symlink differs from manifest", entry.store))
        }
        EntryKind::File => {
            let stat = StatInfo::from_metadata(&meta);
            if let Some(problem) = compare_file(entry, &stat) {
                return Some(format!("{}: {problem}", entry.store));
            }
            let original = join_rel(root, &entry.source);
            match fs::symlink_metadata(&original) {
                Ok(meta) if StatInfo::from_metadata(&meta).ino != entry.inode => Some(format!(
                    "{}: original was replaced since capture",
                    entry.source
                )),
                _ => None,
            }
        }
    }
}

/// Compares a file's stat with its manifest entry: regular file, inode, size, mode, mtime.
pub(crate) fn compare_file(entry: &Entry, stat: &StatInfo) -> Option<String> {
    if stat.mode & 0o170000 != 0o100000 {
        return Some("not a regular file".to_owned());
    }
    if stat.ino != entry.inode {
        return Some(format!("inode {} instead of {}", stat.ino, entry.inode));
    }
    if stat.size != entry.size {
        return Some(format!("size {} instead of {}", stat.size, entry.size));
    }
    if stat.mode != entry.mode {
        return Some(format!("mode {:o} instead of {:o}", stat.mode, entry.mode));
    }
    if stat.mtime_ns != entry.mtime_ns {
        return Some(format!(
            "mtime {} instead of {}",
            stat.mtime_ns, entry.mtime_ns
        ));
    }
    None
}
