//! Progress of packed captures and restores, fed to the same [`ProgressSink`]s as the
//! hard-link engine (the agent's heartbeat, the offline verbs' bar).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetmig_state::{Phase, Progress, ProgressSink};

/// Report at least this often while bytes move (large files).
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// And at least every this many files.
const FILES_EVERY: u64 = 1000;

/// Thread-safe counters of one phase that report to a sink at a bounded rate.
pub struct Ticker<'a> {
    sink: &'a dyn ProgressSink,
    phase: Phase,
    files_total: u64,
    bytes_total: u64,
    files: AtomicU64,
    bytes: AtomicU64,
    last: Mutex<Instant>,
}

impl<'a> Ticker<'a> {
    /// Counters for `phase` with known totals (0: unknown); reports the start at once.
    pub fn new(
        sink: &'a dyn ProgressSink,
        phase: Phase,
        files_total: u64,
        bytes_total: u64,
    ) -> Self {
        let ticker = Self {
            sink,
            phase,
            files_total,
            bytes_total,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
        };
        ticker.flush(None);
        ticker
    }

    /// Counts one file of `bytes`.
    pub fn file_done(&self, bytes: u64, user: &str) {
        let files = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let due = files.is_multiple_of(FILES_EVERY) || {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let due = last.elapsed() >= REPORT_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            self.flush(Some(user));
        }
    }

    /// Counts `files` files of `bytes` at once (e.g. taken from the cache), then reports.
    pub fn add(&self, files: u64, bytes: u64) {
        self.files.fetch_add(files, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.flush(None);
    }

    /// Reports the current counts.
    pub fn flush(&self, user: Option<&str>) {
        self.sink.update(&Progress {
            phase: self.phase,
            files_done: self.files.load(Ordering::Relaxed),
            files_total: self.files_total,
            bytes_done: self.bytes.load(Ordering::Relaxed),
            bytes_total: self.bytes_total,
            current_user: user.map(str::to_owned),
        });
    }
}
