//! A wave's policy as the plan states it: batches, caps, error budget,
//! success criteria, maintenance windows, deadlines and retries.
//!
//! Plain data with serde (it is stored with the wave); `plan.rs` parses it
//! from TOML and checks it, `decide.rs` applies it. Every field has a
//! default, so a plan that states nothing gets today's behaviour: one batch
//! of the whole wave, `max_in_flight` wide, no budget, no windows.

use serde::{Deserialize, Serialize};

/// How many machines a batch admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// A number of machines.
    Count(u32),
    /// A percentage (1..=100) of the wave's machines, rounded up.
    Percent(u8),
}

impl BatchSize {
    /// The machines this size means in a wave of `total`: rounded up, at
    /// least 1 (for a non-empty wave), at most `total`.
    pub fn resolve(self, total: u32) -> u32 {
        let n = match self {
            BatchSize::Count(n) => n,
            BatchSize::Percent(p) => (u64::from(total) * u64::from(p)).div_ceil(100) as u32,
        };
        n.max(1).min(total)
    }
}

/// The wave's batches: one size for all, or a ramp whose last size repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batches {
    /// Every batch has this size (`batch = 10` or `batch = "25%"`).
    Each(BatchSize),
    /// Sizes of the first batches, the last one repeating (`batch = [1, 10, "25%", "100%"]`).
    Ramp(Vec<BatchSize>),
}

impl Default for Batches {
    fn default() -> Self {
        Batches::Each(BatchSize::Percent(100))
    }
}

impl Batches {
    /// Cumulative machines admitted by the end of batch `index` (0-based) in
    /// a wave of `total`. Sizes are per batch, not cumulative.
    pub fn admitted_through(&self, index: u32, total: u32) -> u32 {
        let mut sum: u64 = 0;
        for i in 0..=index {
            sum += u64::from(self.size_of(i, total));
            if sum >= u64::from(total) {
                return total;
            }
        }
        sum as u32
    }

    /// Size of batch `index` (0-based) in a wave of `total`.
    pub fn size_of(&self, index: u32, total: u32) -> u32 {
        match self {
            Batches::Each(size) => size.resolve(total),
            Batches::Ramp(sizes) => sizes
                .get(index as usize)
                .or(sizes.last())
                .map_or(total, |size| size.resolve(total)),
        }
    }
}

/// A failure budget: a number of machines or a percentage of the wave (or plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Failures tolerated.
    Count(u32),
    /// Failures tolerated, as a percentage (0..=100) of the machines, rounded down.
    Percent(u8),
}

impl Budget {
    /// Failures tolerated among `total` machines. The wave halts at the
    /// failure after these.
    pub fn tolerated(self, total: u32) -> u32 {
        match self {
            Budget::Count(n) => n,
            Budget::Percent(p) => (u64::from(total) * u64::from(p) / 100) as u32,
        }
    }
}

/// Whether a batch that met its criteria starts the next one by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Advance {
    /// Start the next batch once the criteria hold and the bake time passed.
    #[default]
    Auto,
    /// Wait for `fleetmig wave promote`.
    Manual,
}

/// What a batch must achieve before the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SuccessCriteria {
    /// Percentage (0..=100) of the batch's machines that must be done.
    pub min_success_percent: u8,
    /// Time the batch's last job must have been finished before the next
    /// batch starts, in milliseconds.
    pub bake_ms: u64,
    /// Automatic or manual advance.
    pub advance: Advance,
}

impl Default for SuccessCriteria {
    fn default() -> Self {
        Self {
            min_success_percent: 0,
            bake_ms: 0,
            advance: Advance::Auto,
        }
    }
}

/// A maintenance window: jobs start only when their estimated duration fits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowTimes {
    /// A weekly recurring range: on these weekdays (0 = Monday .. 6 =
    /// Sunday), from `start_minute` to `end_minute` after local midnight;
    /// an end at or before the start runs past midnight into the next day.
    Weekly {
        /// Weekdays the window opens on (0 = Monday).
        days: Vec<u8>,
        /// Opening, minutes after local midnight (0..1440).
        start_minute: u16,
        /// Closing, minutes after local midnight (0..1440).
        end_minute: u16,
    },
    /// An explicit range, Unix milliseconds.
    Range {
        /// Opening.
        from_ms: i64,
        /// Closing.
        to_ms: i64,
    },
}

/// A maintenance window and the machines it governs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// When it is open.
    pub times: WindowTimes,
    /// IANA time zone of a weekly window (e.g. `Europe/Paris`).
    pub time_zone: String,
    /// Only machines of these sites (empty: any site).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Only machines with all of these labels (empty: any).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Longest time a job may spend in a phase before it fails (retryably),
/// in milliseconds; `None`: no limit. Paused time does not count. A job
/// past its deadline while reimaging is never failed (the machine may be
/// mid-install); it is flagged and waits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deadlines {
    /// From admission to the worker's first report.
    pub assigned_ms: Option<u64>,
    /// Capture.
    pub capturing_ms: Option<u64>,
    /// Restore (and, for replace, waiting for the destination).
    pub restoring_ms: Option<u64>,
    /// Verification.
    pub verifying_ms: Option<u64>,
}

impl Deadlines {
    /// The limit on a job's time in `phase` (`replace`: a replace job), if
    /// any. A replace job's `Captured` phase is its wait for the destination
    /// and counts as restoring; `Reimaging` is bounded by `restoring_ms` too
    /// (the machine is away until it restores), but a job past it while
    /// reimaging is only flagged, never failed.
    pub fn for_phase(&self, phase: crate::model::Phase, replace: bool) -> Option<u64> {
        use crate::model::Phase;
        match phase {
            Phase::Assigned => self.assigned_ms,
            Phase::Capturing => self.capturing_ms,
            Phase::Captured if replace => self.restoring_ms,
            Phase::Reimaging | Phase::Restoring => self.restoring_ms,
            Phase::Verifying => self.verifying_ms,
            _ => None,
        }
    }
}

/// Retries of retryable failures, with exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Retries {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// First backoff, milliseconds.
    pub backoff_ms: u64,
    /// Largest backoff, milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_ms: 30_000,
            max_backoff_ms: 15 * 60_000,
        }
    }
}

impl Retries {
    /// Backoff before attempt `attempt + 1` after `attempt` failed ones (1-based).
    pub fn backoff_after(&self, attempt: u32) -> u64 {
        let shift = attempt.saturating_sub(1).min(20);
        self.backoff_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_backoff_ms)
    }
}

/// Nested in-flight caps below the wave's `max_in_flight`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Caps {
    /// In-flight jobs per site (across all running waves).
    pub per_site: Option<u32>,
    /// In-flight replace jobs per storage node (across all running waves).
    pub per_storage_node: Option<u32>,
}

/// A wave's whole policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WavePolicy {
    /// Batch sizes.
    pub batches: Batches,
    /// Caps per site and per storage node.
    pub caps: Caps,
    /// Failures the wave tolerates before it halts (`None`: no limit).
    pub error_budget: Option<Budget>,
    /// What a batch must achieve before the next starts.
    pub success: SuccessCriteria,
    /// Maintenance windows (empty: always open).
    pub windows: Vec<MaintenanceWindow>,
    /// Estimated job duration for window fitting, milliseconds (0: derived
    /// from the machine's profile bytes by the scheduler).
    pub estimated_duration_ms: u64,
    /// Per-phase deadlines.
    pub deadlines: Deadlines,
    /// Retries of retryable failures.
    pub retries: Retries,
}

/// Plan-wide settings above the waves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanPolicy {
    /// Failures the whole plan tolerates; past it every wave of the plan halts.
    pub error_budget: Option<Budget>,
    /// In-flight jobs across the whole controller (`None`: no global cap).
    pub max_in_flight: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_round_up_with_a_minimum_of_one() {
        assert_eq!(BatchSize::Percent(25).resolve(10), 3);
        assert_eq!(BatchSize::Percent(1).resolve(10), 1);
        assert_eq!(BatchSize::Count(0).resolve(10), 1);
        assert_eq!(BatchSize::Count(50).resolve(10), 10);
        assert_eq!(BatchSize::Percent(100).resolve(7), 7);
    }

    #[test]
    fn a_ramp_repeats_its_last_size() {
        let ramp = Batches::Ramp(vec![
            BatchSize::Count(1),
            BatchSize::Count(10),
            BatchSize::Percent(25),
        ]);
        assert_eq!(ramp.size_of(0, 100), 1);
        assert_eq!(ramp.size_of(1, 100), 10);
        assert_eq!(ramp.size_of(2, 100), 25);
        assert_eq!(ramp.size_of(7, 100), 25);
        assert_eq!(ramp.admitted_through(2, 100), 36);
        assert_eq!(ramp.admitted_through(9, 100), 100);
    }

    #[test]
    fn budgets_and_backoff() {
        assert_eq!(Budget::Percent(10).tolerated(25), 2);
        assert_eq!(Budget::Count(3).tolerated(25), 3);
        let retries = Retries {
            max_attempts: 5,
            backoff_ms: 100,
            max_backoff_ms: 350,
        };
        assert_eq!(retries.backoff_after(1), 100);
        assert_eq!(retries.backoff_after(2), 200);
        assert_eq!(retries.backoff_after(3), 350);
    }
}
