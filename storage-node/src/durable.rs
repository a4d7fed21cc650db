//! Making writes durable: atomic file replacement, directory syncs, and
//! syncing many files at once.
//!
//! An fsync on the node's disks costs milliseconds, so anything that syncs
//! more than one file does it in parallel on the blocking pool (concurrent
//! syncs share the filesystem's journal commits) or, for large groups, with
//! one `syncfs`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most blocking tasks one parallel sync uses.
const SYNC_PARALLELISM: usize = 16;

/// Distinguishes temporary files of concurrent writers in this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A number no other caller in this process gets, for temporary names.
pub fn unique() -> u64 {
    TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Writes `contents` to `path` so readers see either nothing or all of it,
/// durably: a temporary sibling is written and synced, renamed over `path`,
/// and the directory is synced so the rename survives a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `contents` to a synced temporary sibling of `path` and renames it
/// into place, without syncing the directory (the caller syncs it once for
/// several files).
pub fn write_synced_then_rename(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is a temporary left by [`write_atomically`] (cleaned up at
/// startup).
pub fn is_temporary_name(name: &str) -> bool {
    name.contains(".tmp.")
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{}", std::process::id(), unique()));
    path.with_file_name(name)
}

/// Syncs directory `dir`, making renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs `sync` over `items` on up to [`SYNC_PARALLELISM`] blocking tasks.
/// On failure returns the first failing item's index and its error.
pub async fn in_parallel<T, F>(items: Vec<T>, sync: F) -> Result<(), (usize, std::io::Error)>
where
    T: Send + 'static,
    F: Fn(&T) -> std::io::Result<()> + Send + Sync + Copy + 'static,
{
    if items.is_empty() {
        return Ok(());
    }
    let groups = items.len().min(SYNC_PARALLELISM);
    let mut buckets: Vec<Vec<(usize, T)>> = (0..groups).map(|_| Vec::new()).collect();
    for (index, item) in items.into_iter().enumerate() {
        buckets[index % groups].push((index, item));
    }
    let tasks: Vec<_> = buckets
        .into_iter()
        .map(|bucket| {
            tokio::task::spawn_blocking(move || {
                for (index, item) in &bucket {
                    sync(item).map_err(|err| (*index, err))?;
                }
                Ok(())
            })
        })
        .collect();
    let mut first_error: Option<(usize, std::io::Error)> = None;
    for joined in futures::future::join_all(tasks).await {
        let outcome = joined.unwrap_or_else(|err| {
            Err((0, std::io::Error::other(format!("sync task failed: {err}"))))
        });
        if let Err((index, err)) = outcome {
            if first_error.as_ref().is_none_or(|(first, _)| index < *first) {
                first_error = Some((index, err));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Syncs the whole filesystem holding `dir` (one `syncfs`).
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    let dir = File::open(dir)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn parallel_sync_reports_the_first_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths: Vec<PathBuf> = (0..40)
            .map(|n| {
                let path = dir.path().join(format!("f{n}"));
                std::fs::write(&path, b"x").expect("write");
                path
            })
            .collect();
        in_parallel(paths.clone(), |path: &PathBuf| {
            File::open(path)?.sync_data()
        })
        .await
        .expect("all sync");
        paths[33] = dir.path().join("missing");
        paths[35] = dir.path().join("missing too");
        let (index, _) = in_parallel(paths, |path: &PathBuf| File::open(path)?.sync_data())
            .await
            .expect_err("a missing file");
        assert_eq!(index, 33);
    }
}
