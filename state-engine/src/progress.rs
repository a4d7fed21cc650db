//! Progress reporting for long-running operations.

use serde::{Deserialize, Serialize};

/// Which stage of a migration an operation is in (named after USMT's phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Looking at the machine: inventory, sizing.
    Scanning,
    /// Walking profiles and linking files into the store.
    Collecting,
    /// Writing and sealing the manifest.
    Saving,
    /// Linking store entries into the new profiles.
    Applying,
    /// Checking a store or a restore against the manifest.
    Verifying,
}

/// A progress snapshot. `*_total` is 0 when not known yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The current phase.
    pub phase: Phase,
    /// Files handled so far.
    pub files_done: u64,
    /// Files expected in total, 0 if unknown.
    pub files_total: u64,
    /// Bytes handled so far.
    pub bytes_done: u64,
    /// Bytes expected in total, 0 if unknown.
    pub bytes_total: u64,
    /// The user profile being worked on, if the operation is per user.
    pub current_user: Option<String>,
}

/// Receives progress snapshots. Called at a bounded rate (about every [`PROGRESS_EVERY`] files),
/// possibly from several rayon threads at once.
pub trait ProgressSink: Sync {
    /// Records one snapshot.
    fn update(&self, progress: &Progress);
}

/// A sink that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn update(&self, _progress: &Progress) {}
}

/// How many files pass between two progress updates.
pub const PROGRESS_EVERY: u64 = 1000;

/// Thread-safe counters that call a sink every [`PROGRESS_EVERY`] files.
pub(crate) struct ProgressCounter<'a> {
    sink: &'a dyn ProgressSink,
    phase: Phase,
    files_total: u64,
    bytes_total: u64,
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl<'a> ProgressCounter<'a> {
    pub(crate) fn new(
        sink: &'a dyn ProgressSink,
        phase: Phase,
        files_total: u64,
        bytes_total: u64,
    ) -> Self {
        Self {
            sink,
            phase,
            files_total,
            bytes_total,
            files: Default::default(),
            bytes: Default::default(),
        }
    }

    /// Counts one file of `bytes` bytes, reporting when a multiple of [`PROGRESS_EVERY`] is crossed.
    pub(crate) fn file_done(&self, bytes: u64, user: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let bytes_done = self.bytes.fetch_add(bytes, Relaxed) + bytes;
        let files_done = self.files.fetch_add(1, Relaxed) + 1;
        if files_done.is_multiple_of(PROGRESS_EVERY) {
            self.report(files_done, bytes_done, Some(user.to_owned()));
        }
    }

    /// Reports the current totals unconditionally (at the start and end of a phase).
    pub(crate) fn flush(&self, user: Option<&str>) {
        use std::sync::atomic::Ordering::Relaxed;
        self.report(
            self.files.load(Relaxed),
            self.bytes.load(Relaxed),
            user.map(str::to_owned),
        );
    }

    fn report(&self, files_done: u64, bytes_done: u64, current_user: Option<String>) {
        self.sink.update(&Progress {
            phase: self.phase,
            files_done,
            files_total: self.files_total,
            bytes_done,
            bytes_total: self.bytes_total,
            current_user,
        });
    }
}
