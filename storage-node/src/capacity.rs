//! Measuring how much space the node has for migration stores, and the
//! arithmetic deciding whether a reservation fits.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A point-in-time view of the node's capacity, in plain Rust types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Size of the filesystem holding the data directory.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer may still use there.
    pub free_bytes: u64,
    /// Bytes promised to open captures that they have not written yet.
    pub reserved_bytes: u64,
    /// Capture or restore sessions in progress.
    pub active_sessions: u32,
    /// Whether the node takes new captures (false with `--restore-only`).
    pub accepting_captures: bool,
    /// Bytes of chunk files held (after dedup).
    pub stored_bytes: u64,
    /// Migrations held, in any state.
    pub migrations: u32,
    /// What a new reservation may take: free bytes minus reservations
    /// minus the node's minimum free space.
    pub available_bytes: u64,
}

/// Measures the filesystem holding a data directory.
///
/// Cheap to clone; measuring calls `statvfs` on a blocking thread.
#[derive(Debug, Clone)]
pub struct CapacityProbe {
    data_dir: PathBuf,
}

impl CapacityProbe {
    /// A probe of `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self { data_dir }
    }

    /// Total and free bytes now (off the async runtime: statvfs may stall
    /// on network filesystems).
    pub async fn space(&self) -> Result<Space> {
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || filesystem_space(&data_dir))
            .await
            .map_err(|err| Error::Task {
                task: "capacity",
                reason: err.to_string(),
            })?
    }

    /// Total and free bytes now, blocking the calling thread.
    pub fn space_blocking(&self) -> Result<Space> {
        filesystem_space(&self.data_dir)
    }
}

/// Size and free space of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
}

/// How much free space the node keeps: `--min-free-bytes` or
/// `--min-free-percent` of the filesystem, whichever is larger.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreeSpaceFloor {
    /// `--min-free-bytes`.
    pub min_free_bytes: u64,
    /// `--min-free-percent` (0–100).
    pub min_free_percent: f64,
}

impl FreeSpaceFloor {
    /// The floor in bytes on a filesystem of `total_bytes`.
    pub fn bytes(&self, total_bytes: u64) -> u64 {
        let percent = self.min_free_percent.clamp(0.0, 100.0);
        let by_percent = (total_bytes as f64 * percent / 100.0).ceil() as u64;
        self.min_free_bytes.max(by_percent)
    }
}

/// The reservation arithmetic: what a reservation may take is the free
/// space minus what others have reserved minus the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Free bytes of the filesystem.
    pub free_bytes: u64,
    /// Outstanding reservations of other migrations.
    pub reserved_by_others: u64,
    /// Free space the node never hands out.
    pub floor_bytes: u64,
}

impl Budget {
    /// Bytes a reservation may take.
    pub fn available(&self) -> u64 {
        self.free_bytes
            .saturating_sub(self.reserved_by_others)
            .saturating_sub(self.floor_bytes)
    }

    /// Whether a reservation of `bytes` fits. Even an empty reservation
    /// needs some room: a node with nothing available takes no capture.
    pub fn admits(&self, bytes: u64) -> bool {
        self.available() >= bytes.max(1)
    }
}

/// Total and available bytes of the filesystem holding `path`.
fn filesystem_space(path: &Path) -> Result<Space> {
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
    Ok(Space {
        total_bytes: stat.f_blocks.saturating_mul(unit),
        free_bytes: stat.f_bavail.saturating_mul(unit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_real_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let space = CapacityProbe::new(dir.path().to_owned())
            .space_blocking()
            .expect("statvfs works on a tempdir");
        assert!(space.total_bytes > 0);
        assert!(space.free_bytes <= space.total_bytes);
    }

    #[test]
    fn names_the_path_when_it_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = CapacityProbe::new(missing.clone())
            .space_blocking()
            .expect_err("missing dir");
        assert!(err.to_string().contains(&missing.display().to_string()));
    }

    #[test]
    fn the_floor_is_the_larger_of_bytes_and_percent() {
        let floor = FreeSpaceFloor {
            min_free_bytes: 100,
            min_free_percent: 5.0,
        };
        assert_eq!(floor.bytes(1_000), 100);
        assert_eq!(floor.bytes(10_000), 500);
        let none = FreeSpaceFloor {
            min_free_bytes: 0,
            min_free_percent: 0.0,
        };
        assert_eq!(none.bytes(u64::MAX), 0);
    }

    #[test]
    fn reservations_fit_only_within_free_minus_others_minus_floor() {
        let budget = Budget {
            free_bytes: 1_000,
            reserved_by_others: 300,
            floor_bytes: 200,
        };
        assert_eq!(budget.available(), 500);
        assert!(budget.admits(500));
        assert!(!budget.admits(501));
        assert!(budget.admits(0));
        let full = Budget {
            free_bytes: 1_000,
            reserved_by_others: 900,
            floor_bytes: 200,
        };
        assert_eq!(full.available(), 0, "saturates instead of wrapping");
        assert!(!full.admits(0), "no room at all refuses even empty ones");
    }
}
