//! Progress of the offline verbs on stderr: an indicatif bar on a terminal, otherwise a tracing
//! line at each phase change and at most every [`LOG_EVERY`].

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fleetmig_state::{Phase, Progress, ProgressSink};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Least time between two progress log lines within a phase.
pub const LOG_EVERY: Duration = Duration::from_secs(2);

/// Shows engine progress on stderr. Shared by rayon threads, hence the mutex.
pub struct Reporter {
    /// The bar, when stderr is a terminal.
    bar: Option<ProgressBar>,
    /// Totals to use when the engine does not know them (capture learns them from the scan).
    /// Guarded together with the last logged phase and time.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    files_total: u64,
    bytes_total: u64,
    last_phase: Option<Phase>,
    last_log: Option<Instant>,
}

impl Reporter {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {percent:>3}% {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        Self {
            bar,
            state: Mutex::default(),
        }
    }

    /// Sets the totals assumed when an update carries none.
    pub fn set_totals(&self, files: u64, bytes: u64) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.files_total = files;
        state.bytes_total = bytes;
    }

    /// Removes the bar (before the summary is printed).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Default for Reporter {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressSink for Reporter {
    fn update(&self, progress: &Progress) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let files_total = nonzero_or(progress.files_total, state.files_total);
        let bytes_total = nonzero_or(progress.bytes_total, state.bytes_total);
        let percent = percent(progress.bytes_done, bytes_total)
            .or_else(|| percent(progress.files_done, files_total));
        let user = progress.current_user.as_deref().unwrap_or("");
        let phase = format!("{:?}", progress.phase);
        if let Some(bar) = &self.bar {
            bar.set_prefix(phase);
            bar.set_length(100);
            bar.set_position(percent.unwrap_or(0));
            bar.set_message(format!(
                "{}/{} files, {} {user}",
                progress.files_done,
                files_total,
                super::output::human_bytes(progress.bytes_done)
            ));
            return;
        }
        let now = Instant::now();
        let new_phase = state.last_phase != Some(progress.phase);
        let due = state
            .last_log
            .is_none_or(|last| now.duration_since(last) >= LOG_EVERY);
        if new_phase || due {
            state.last_phase = Some(progress.phase);
            state.last_log = Some(now);
            tracing::info!(
                phase = %phase,
                files = progress.files_done,
                files_total,
                bytes = progress.bytes_done,
                bytes_total,
                percent = percent.unwrap_or(0),
                user,
                "progress"
            );
        }
    }
}

fn nonzero_or(value: u64, fallback: u64) -> u64 {
    if value == 0 { fallback } else { value }
}

/// `done / total` as a whole percentage (capped at 100), `None` without a total.
fn percent(done: u64, total: u64) -> Option<u64> {
    (total > 0).then(|| (done.saturating_mul(100) / total).min(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(percent(5, 0), None);
        assert_eq!(percent(50, 200), Some(25));
        assert_eq!(percent(300, 200), Some(100));
    }
}
