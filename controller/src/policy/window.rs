//! Maintenance windows: when a window is open, whether a job of a given
//! estimated duration fits in it, and when the next opening that fits is.
//!
//! A weekly window is resolved, in its IANA time zone, into absolute open
//! intervals (Unix milliseconds, half-open `[start, end)`) over a horizon;
//! occurrences that touch or overlap (a window open every day around the
//! clock) are merged, so a long job may span them. Local times that do not
//! exist (the hour skipped when clocks go forward) resolve to the later
//! instant, repeated ones (clocks going back) to the earlier, as
//! `jiff`'s "compatible" disambiguation does.
//!
//! Evaluation is pure and cheap after [`Windows::compile`]: the scheduler
//! compiles a wave's windows once per pass and then checks every machine
//! with integer comparisons.

use super::spec::{MaintenanceWindow, WindowTimes};
use crate::error::{Error, Result};
use jiff::civil::Date;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;

/// One day in milliseconds.
const DAY_MS: i64 = 24 * 3600 * 1000;
/// How far back an occurrence that is still open may have begun: a weekly
/// occurrence lasts at most a day, plus a DST hour.
const LOOKBACK_MS: i64 = 2 * DAY_MS;
/// How far ahead a weekly window is guaranteed to open again.
const WEEK_AHEAD_MS: i64 = 8 * DAY_MS;

/// The IANA time zone `name` (empty: UTC): the system database first, the
/// copy bundled into the binary when the host has none (or lacks the zone).
pub fn time_zone(name: &str) -> Result<TimeZone> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name)
        .or_else(|_| TimeZoneDatabase::bundled().get(name))
        .map_err(|err| Error::InvalidArgument(format!("unknown time zone {name:?}: {err}")))
}

/// Whether `window` governs a machine at `site` carrying `labels`: its
/// sites (if any) include the site and the machine has all its labels.
pub fn governs(window: &MaintenanceWindow, site: &str, labels: &BTreeMap<String, String>) -> bool {
    (window.sites.is_empty() || window.sites.iter().any(|s| s == site))
        && window
            .labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// Open intervals of `window` that intersect `[from_ms, to_ms)`, sorted and
/// merged (touching occurrences form one interval).
pub fn open_intervals(
    window: &MaintenanceWindow,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, i64)>> {
    let mut intervals = match &window.times {
        WindowTimes::Range {
            from_ms: s,
            to_ms: e,
        } => vec![(*s, *e)],
        WindowTimes::Weekly {
            days,
            start_minute,
            end_minute,
        } => {
            let tz = time_zone(&window.time_zone)?;
            weekly(&tz, days, *start_minute, *end_minute, from_ms, to_ms)?
        }
    };
    intervals.retain(|(s, e)| s < e && *e > from_ms && *s < to_ms);
    intervals.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(intervals.len());
    for (s, e) in intervals {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Ok(merged)
}

/// Occurrences of a weekly window whose opening day is within the horizon
/// (widened by a day on each side, for overnight windows and DST).
fn weekly(
    tz: &TimeZone,
    days: &[u8],
    start_minute: u16,
    end_minute: u16,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<(i64, i64)>> {
    let err = |e: jiff::Error| Error::InvalidArgument(format!("maintenance window: {e}"));
    let local_date = |ms: i64| -> Result<Date> {
        Ok(Timestamp::from_millisecond(ms)
            .map_err(err)?
            .to_zoned(tz.clone())
            .date())
    };
    let at = |date: Date, minutes: u16| -> Result<i64> {
        Ok(date
            .to_datetime(jiff::civil::Time::midnight())
            .checked_add(SignedDuration::from_mins(i64::from(minutes)))
            .map_err(err)?
            .to_zoned(tz.clone())
            .map_err(err)?
            .timestamp()
            .as_millisecond())
    };
    let mut date = local_date(from_ms)?.yesterday().map_err(err)?;
    let last = local_date(to_ms)?.tomorrow().map_err(err)?;
    let mut out = Vec::new();
    while date <= last {
        let weekday = date.weekday().to_monday_zero_offset();
        if days.iter().any(|d| i16::from(*d) == i16::from(weekday)) {
            let start = at(date, start_minute)?;
            let end_date = if end_minute <= start_minute {
                date.tomorrow().map_err(err)?
            } else {
                date
            };
            let end = at(end_date, end_minute)?;
            out.push((start, end));
        }
        date = date.tomorrow().map_err(err)?;
    }
    Ok(out)
}

/// Whether a job of `duration_ms` started at `start_ms` ends before the
/// window closes (it must start inside an open interval).
pub fn fits(window: &MaintenanceWindow, start_ms: i64, duration_ms: u64) -> Result<bool> {
    let end = start_ms.saturating_add(duration_ms.min(i64::MAX as u64) as i64);
    let intervals = open_intervals(window, start_ms - LOOKBACK_MS, end.saturating_add(DAY_MS))?;
    Ok(fits_in(&intervals, start_ms, end))
}

/// The earliest instant at or after `after_ms` when a job of `duration_ms`
/// fits in `window`, if any (a weekly window that is never long enough, or
/// a range already past, has none).
pub fn next_opening(
    window: &MaintenanceWindow,
    after_ms: i64,
    duration_ms: u64,
) -> Result<Option<i64>> {
    let duration = duration_ms.min(i64::MAX as u64 / 2) as i64;
    let horizon = match window.times {
        WindowTimes::Range { to_ms, .. } => to_ms.max(after_ms),
        WindowTimes::Weekly { .. } => after_ms + WEEK_AHEAD_MS + duration,
    };
    let intervals = open_intervals(
        window,
        after_ms - LOOKBACK_MS,
        horizon.saturating_add(DAY_MS),
    )?;
    Ok(first_fit(&intervals, after_ms, duration))
}

fn fits_in(intervals: &[(i64, i64)], start: i64, end: i64) -> bool {
    intervals.iter().any(|(s, e)| *s <= start && end <= *e)
}

fn first_fit(intervals: &[(i64, i64)], after: i64, duration: i64) -> Option<i64> {
    intervals.iter().find_map(|(s, e)| {
        let start = (*s).max(after);
        (start.saturating_add(duration) <= *e).then_some(start)
    })
}

/// A wave's windows resolved for one scheduling pass at `now`: answers
/// "may this machine start a job of this length now, and if not, when?"
/// with integer comparisons only.
#[derive(Debug, Clone)]
pub struct Windows<'a> {
    windows: Vec<Compiled<'a>>,
}

#[derive(Debug, Clone)]
struct Compiled<'a> {
    window: &'a MaintenanceWindow,
    /// Open intervals over the pass's horizon; `Err` (why) when the window
    /// cannot be evaluated (an unknown time zone): it then never opens.
    intervals: std::result::Result<Vec<(i64, i64)>, String>,
}

/// What the windows governing a machine say about starting now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No window governs the machine, or one fits the job now.
    Open,
    /// Closed now; the earliest fitting opening (in the pass's horizon) and
    /// the time zone to show it in.
    Until(i64, &'a str),
    /// No governing window will fit the job within a week (or ever).
    Never(String),
}

impl<'a> Windows<'a> {
    /// Resolves `windows` for jobs of at most `longest_ms` starting from `now_ms`.
    pub fn compile(windows: &'a [MaintenanceWindow], now_ms: i64, longest_ms: u64) -> Self {
        let longest = longest_ms.min(i64::MAX as u64 / 4) as i64;
        let to = now_ms
            .saturating_add(WEEK_AHEAD_MS)
            .saturating_add(longest)
            .saturating_add(DAY_MS);
        Windows {
            windows: windows
                .iter()
                .map(|window| Compiled {
                    window,
                    // A date range is kept whole, so a far opening is still shown.
                    intervals: open_intervals(
                        window,
                        now_ms - LOOKBACK_MS,
                        match window.times {
                            WindowTimes::Range { to_ms, .. } => to.max(to_ms),
                            WindowTimes::Weekly { .. } => to,
                        },
                    )
                    .map_err(|err| match err {
                        Error::InvalidArgument(why) => why,
                        other => other.to_string(),
                    }),
                })
                .collect(),
        }
    }

    /// Whether there are no windows at all (every machine may start any time).
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether a machine at `site` with `labels` may start a job of
    /// `duration_ms` at `now_ms` (the instant the set was compiled for).
    pub fn verdict(
        &self,
        site: &str,
        labels: &BTreeMap<String, String>,
        now_ms: i64,
        duration_ms: u64,
    ) -> Verdict<'a> {
        let duration = duration_ms.min(i64::MAX as u64 / 4) as i64;
        let end = now_ms.saturating_add(duration);
        let mut governed = false;
        let mut earliest: Option<(i64, &'a str)> = None;
        let mut problem = None;
        for compiled in &self.windows {
            let window: &'a MaintenanceWindow = compiled.window;
            if !governs(window, site, labels) {
                continue;
            }
            governed = true;
            let intervals = match &compiled.intervals {
                Ok(intervals) => intervals,
                Err(err) => {
                    problem = Some(err.clone());
                    continue;
                }
            };
            if fits_in(intervals, now_ms, end) {
                return Verdict::Open;
            }
            if let Some(at) = first_fit(intervals, now_ms, duration)
                && earliest.is_none_or(|(best, _)| at < best)
            {
                earliest = Some((at, window.time_zone.as_str()));
            }
        }
        match (governed, earliest) {
            (false, _) => Verdict::Open,
            (true, Some((at, tz))) => Verdict::Until(at, tz),
            (true, None) => Verdict::Never(problem.unwrap_or_else(|| {
                format!(
                    "no maintenance window fits its estimated {}",
                    human_duration(duration_ms)
                )
            })),
        }
    }
}

/// `ms` in the time zone `tz` as `2026-12-01 20:00 Europe/Paris` (UTC
/// when the zone is empty or unknown).
pub fn local_time(ms: i64, tz: &str) -> String {
    let zone = time_zone(tz).unwrap_or(TimeZone::UTC);
    let shown = if tz.trim().is_empty() {
        "UTC"
    } else {
        tz.trim()
    };
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => format!("{} {shown}", ts.to_zoned(zone).strftime("%Y-%m-%d %H:%M")),
        Err(_) => format!("{ms} ms"),
    }
}

/// A duration as `2 h 05 min` or `45 min` or `30 s`.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs < 60 {
        return format!("{secs} s");
    }
    let mins = secs.div_ceil(60);
    if mins < 60 {
        format!("{mins} min")
    } else {
        format!("{} h {:02} min", mins / 60, mins % 60)
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
