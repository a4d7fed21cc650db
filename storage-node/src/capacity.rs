//! Measuring how much space the node has for migration stores.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A point-in-time view of the node's capacity, in plain Rust types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Size of the filesystem holding the data directory.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer may still use there.
    pub free_bytes: u64,
    /// Bytes promised to sessions that have not written them yet.
    pub reserved_bytes: u64,
    /// Capture or restore sessions in progress.
    pub active_sessions: u32,
    /// Whether the node takes new captures.
    pub accepting_captures: bool,
}

/// Measures the capacity of a data directory.
///
/// Cheap to clone; measuring calls `statvfs` on a blocking thread.
#[derive(Debug, Clone)]
pub struct CapacityProbe {
    data_dir: PathBuf,
    min_free_bytes: u64,
}

impl CapacityProbe {
    /// A probe of `data_dir` that stops accepting captures below `min_free_bytes`.
    pub fn new(data_dir: PathBuf, min_free_bytes: u64) -> Self {
        Self {
            data_dir,
            min_free_bytes,
        }
    }

    /// Measures now (off the async runtime: statvfs may stall on network filesystems).
    pub async fn measure(&self) -> Result<Capacity> {
        let probe = self.clone();
        tokio::task::spawn_blocking(move || probe.measure_blocking())
            .await
            .map_err(|err| Error::Task {
                task: "capacity",
                reason: err.to_string(),
            })?
    }

    /// Measures now, blocking the calling thread.
    pub fn measure_blocking(&self) -> Result<Capacity> {
        let (total_bytes, free_bytes) = filesystem_space(&self.data_dir)?;
        Ok(Capacity {
            total_bytes,
            free_bytes,
            reserved_bytes: 0,
            active_sessions: 0,
            accepting_captures: free_bytes >= self.min_free_bytes,
        })
    }
}

/// Total and available bytes of the filesystem holding `path`.
fn filesystem_space(path: &Path) -> Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).map_err(|errno| Error::Statvfs {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    // f_frsize is the unit of the block counts; some filesystems leave it 0.
    let unit = if stat.f_frsize > 0 {
        stat.f_frsize
    } else {
        stat.f_bsize
    };
    Ok((
        stat.f_blocks.saturating_mul(unit),
        stat.f_bavail.saturating_mul(unit),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_real_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = CapacityProbe::new(dir.path().to_owned(), 0)
            .measure_blocking()
            .expect("statvfs works on a tempdir");
        assert!(capacity.total_bytes > 0);
        assert!(capacity.free_bytes <= capacity.total_bytes);
        assert!(capacity.accepting_captures);
        assert_eq!(capacity.reserved_bytes, 0);
        assert_eq!(capacity.active_sessions, 0);
    }

    #[test]
    fn refuses_captures_below_the_free_space_floor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let capacity = CapacityProbe::new(dir.path().to_owned(), u64::MAX)
            .measure_blocking()
            .expect("statvfs works on a tempdir");
        assert!(!capacity.accepting_captures);
    }

    #[test]
    fn names_the_path_when_it_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = CapacityProbe::new(missing.clone(), 0)
            .measure_blocking()
            .expect_err("missing dir");
        assert!(err.to_string().contains(&missing.display().to_string()));
    }
}
