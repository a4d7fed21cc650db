//! The wave policy section of a plan: batches, error budgets, caps, success
//! criteria, maintenance windows, deadlines and retries, parsed into
//! [`WavePolicy`] and [`PlanPolicy`].

use super::values::{self, RawList, Value, format_ms};
use super::{Problems, RawWave, shown};
use crate::model::Machine;
use crate::policy::{
    Advance, Batches, Caps, Deadlines, MaintenanceWindow, PlanPolicy, Retries, SuccessCriteria,
    WavePolicy, WindowTimes,
};
use jiff::tz::TimeZone;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// `[policy]`: plan-wide settings.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPlanPolicy {
    error_budget: Option<Value>,
    max_in_flight: Option<Value>,
}

/// `[waves.success]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSuccess {
    min_percent: Option<Value>,
    bake: Option<Value>,
    advance: Option<Value>,
}

/// `[waves.deadlines]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDeadlines {
    assigned: Option<Value>,
    capturing: Option<Value>,
    restoring: Option<Value>,
    verifying: Option<Value>,
}

/// `[waves.retries]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetries {
    max_attempts: Option<Value>,
    backoff: Option<Value>,
    max_backoff: Option<Value>,
}

/// One `[[waves.windows]]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWindow {
    days: Option<Spanned<RawList>>,
    start: Option<Value>,
    end: Option<Value>,
    from: Option<Value>,
    to: Option<Value>,
    time_zone: Option<Value>,
    sites: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// Most retry attempts a wave may ask for.
const MAX_ATTEMPTS: u32 = 100;

/// Checks `[policy]`.
pub(super) fn plan_policy(problems: &mut Problems, raw: RawPlanPolicy) -> PlanPolicy {
    PlanPolicy {
        error_budget: raw
            .error_budget
            .as_ref()
            .and_then(|v| values::budget(problems, "policy.error_budget", v)),
        max_in_flight: raw
            .max_in_flight
            .as_ref()
            .and_then(|v| values::count(problems, "policy.max_in_flight", v, 1)),
    }
}

/// Checks a wave's policy keys. `wave` is the wave's name for messages.
pub(super) fn wave_policy(problems: &mut Problems, wave: &str, raw: &RawWave) -> WavePolicy {
    let defaults = WavePolicy::default();
    let label = |key: &str| format!("wave {wave}: {key}");
    let batches = raw
        .batch
        .as_ref()
        .and_then(|batch| batches(problems, &label("batch"), batch))
        .unwrap_or(defaults.batches);
    let caps = Caps {
        per_site: raw
            .max_in_flight_per_site
            .as_ref()
            .and_then(|v| values::count(problems, &label("max_in_flight_per_site"), v, 1)),
        per_storage_node: raw
            .max_in_flight_per_storage_node
            .as_ref()
            .and_then(|v| values::count(problems, &label("max_in_flight_per_storage_node"), v, 1)),
    };
    let error_budget = raw
        .error_budget
        .as_ref()
        .and_then(|v| values::budget(problems, &label("error_budget"), v));
    let estimated_duration_ms = raw
        .estimated_duration
        .as_ref()
        .and_then(|v| values::duration_ms(problems, &label("estimated_duration"), v, false))
        .unwrap_or(0);
    let success = raw
        .success
        .as_ref()
        .map(|s| success(problems, wave, s))
        .unwrap_or_default();
    let deadlines = raw
        .deadlines
        .as_ref()
        .map(|d| deadlines(problems, wave, d))
        .unwrap_or_default();
    let retries = raw
        .retries
        .as_ref()
        .map(|r| retries(problems, wave, r))
        .unwrap_or_default();
    let mut windows = Vec::new();
    let mut longest_ms = 0u64;
    let mut all_windows_ok = true;
    for (index, raw_window) in raw.windows.iter().enumerate() {
        match window(
            problems,
            &format!("wave {wave}: window {}", index + 1),
            raw_window,
        ) {
            Some(window) => {
                longest_ms = longest_ms.max(open_ms(&window.times));
                windows.push(window);
            }
            None => all_windows_ok = false,
        }
    }
    let too_long = all_windows_ok && !windows.is_empty() && estimated_duration_ms > longest_ms;
    if let (Some(value), true) = (&raw.estimated_duration, too_long) {
        problems.at(
            value.span(),
            format!(
                "wave {wave}: estimated_duration {} is longer than the longest window ({}): no job would ever start",
                format_ms(estimated_duration_ms),
                format_ms(longest_ms)
            ),
        );
    }
    WavePolicy {
        batches,
        caps,
        error_budget,
        success,
        windows,
        estimated_duration_ms,
        deadlines,
        retries,
    }
}

/// `batch = 10`, `batch = "25%"` or `batch = [1, 10, "25%", "100%"]`.
fn batches(problems: &mut Problems, label: &str, raw: &Spanned<RawList>) -> Option<Batches> {
    match raw.get_ref() {
        RawList::One(value) => {
            let value = Spanned::new(raw.span(), value.clone());
            values::batch_size(problems, label, &value).map(Batches::Each)
        }
        RawList::Many(items) if items.is_empty() => {
            problems.at(
                raw.span(),
                format!("{label} is an empty list: give at least one batch size"),
            );
            None
        }
        RawList::Many(items) => {
            let mut sizes = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                sizes.push(values::batch_size(
                    problems,
                    &format!("{label}[{index}]"),
                    item,
                ));
            }
            sizes
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(Batches::Ramp)
        }
    }
}

fn success(problems: &mut Problems, wave: &str, raw: &RawSuccess) -> SuccessCriteria {
    let defaults = SuccessCriteria::default();
    let label = |key: &str| format!("wave {wave}: success.{key}");
    let advance = raw.advance.as_ref().and_then(|value| {
        match values::string(problems, &label("advance"), value)? {
            "auto" => Some(Advance::Auto),
            "manual" => Some(Advance::Manual),
            other => {
                problems.at(
                    value.span(),
                    format!(
                        "wave {wave}: success.advance must be \"auto\" or \"manual\", got {:?}",
                        shown(other)
                    ),
                );
                None
            }
        }
    });
    SuccessCriteria {
        min_success_percent: raw
            .min_percent
            .as_ref()
            .and_then(|v| values::percent(problems, &label("min_percent"), v, 0))
            .unwrap_or(defaults.min_success_percent),
        bake_ms: raw
            .bake
            .as_ref()
            .and_then(|v| values::duration_ms(problems, &label("bake"), v, true))
            .unwrap_or(defaults.bake_ms),
        advance: advance.unwrap_or(defaults.advance),
    }
}

fn deadlines(problems: &mut Problems, wave: &str, raw: &RawDeadlines) -> Deadlines {
    let mut one = |key: &str, value: &Option<Value>| {
        value.as_ref().and_then(|v| {
            values::duration_ms(problems, &format!("wave {wave}: deadlines.{key}"), v, false)
        })
    };
    Deadlines {
        assigned_ms: one("assigned", &raw.assigned),
        capturing_ms: one("capturing", &raw.capturing),
        restoring_ms: one("restoring", &raw.restoring),
        verifying_ms: one("verifying", &raw.verifying),
    }
}

fn retries(problems: &mut Problems, wave: &str, raw: &RawRetries) -> Retries {
    let defaults = Retries::default();
    let label = |key: &str| format!("wave {wave}: retries.{key}");
    let max_attempts = raw
        .max_attempts
        .as_ref()
        .and_then(|value| {
            let n = values::count(problems, &label("max_attempts"), value, 1)?;
            if n > MAX_ATTEMPTS {
                problems.at(
                    value.span(),
                    format!(
                        "wave {wave}: retries.max_attempts must be at most {MAX_ATTEMPTS}, got {n}"
                    ),
                );
                return None;
            }
            Some(n)
        })
        .unwrap_or(defaults.max_attempts);
    let backoff = raw
        .backoff
        .as_ref()
        .and_then(|v| values::duration_ms(problems, &label("backoff"), v, true));
    let max_backoff = raw
        .max_backoff
        .as_ref()
        .and_then(|v| values::duration_ms(problems, &label("max_backoff"), v, true));
    let backoff_ms = backoff.unwrap_or(defaults.backoff_ms);
    let max_backoff_ms = max_backoff.unwrap_or(defaults.max_backoff_ms);
    if backoff_ms > max_backoff_ms
        && (raw.backoff.is_none() || backoff.is_some())
        && (raw.max_backoff.is_none() || max_backoff.is_some())
    {
        let value = raw
            .backoff
            .as_ref()
            .or(raw.max_backoff.as_ref())
            .map_or(0..0, Spanned::span);
        problems.at(
            value,
            format!(
                "wave {wave}: retries.backoff ({}) is longer than retries.max_backoff ({})",
                format_ms(backoff_ms),
                format_ms(max_backoff_ms)
            ),
        );
    }
    Retries {
        max_attempts,
        backoff_ms,
        max_backoff_ms,
    }
}

/// Day names, Monday first (index = the spec's weekday number).
const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// `mon` or `monday` (any case) as 0..=6.
fn weekday(name: &str) -> Option<u8> {
    let name = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|day| name == *day || (name.len() == 3 && day.starts_with(&name)))
        .map(|index| index as u8)
}

/// `"mon"` or a range `"mon-fri"` (wrapping past Sunday: `"fri-mon"`).
fn weekdays(text: &str) -> Result<Vec<u8>, String> {
    let unknown = |name: &str| {
        format!(
            "{:?} is not a day; write mon, tue, wed, thu, fri, sat, sun (or the full name)",
            shown(name.trim())
        )
    };
    match text.split_once('-') {
        None => weekday(text)
            .map(|day| vec![day])
            .ok_or_else(|| unknown(text)),
        Some((first, last)) => {
            let first = weekday(first).ok_or_else(|| unknown(first))?;
            let last = weekday(last).ok_or_else(|| unknown(last))?;
            let mut days = vec![first];
            let mut day = first;
            while day != last {
                day = (day + 1) % 7;
                days.push(day);
            }
            Ok(days)
        }
    }
}

/// `days`: a day, a range, or an array of them. Absent: every day.
fn days(problems: &mut Problems, label: &str, raw: Option<&Spanned<RawList>>) -> Option<Vec<u8>> {
    let Some(raw) = raw else {
        return Some((0..7).collect());
    };
    let items: Vec<Value> = match raw.get_ref() {
        RawList::One(value) => vec![Spanned::new(raw.span(), value.clone())],
        RawList::Many(items) if items.is_empty() => {
            problems.at(
                raw.span(),
                format!("{label}: days is an empty list; leave it out for every day"),
            );
            return None;
        }
        RawList::Many(items) => items.clone(),
    };
    let mut days = Vec::new();
    let mut ok = true;
    for item in &items {
        let Some(text) = values::string(problems, &format!("{label}: days"), item) else {
            ok = false;
            continue;
        };
        match weekdays(text) {
            Ok(found) => days.extend(found),
            Err(message) => {
                problems.at(item.span(), format!("{label}: {message}"));
                ok = false;
            }
        }
    }
    days.sort_unstable();
    days.dedup();
    ok.then_some(days)
}

/// `"HH:MM"` (24-hour) as minutes after midnight.
fn clock(text: &str) -> Option<u16> {
    let (hours, minutes) = text.trim().split_once(':')?;
    let digits = |s: &str, lengths: &[usize]| {
        lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(hours, &[1, 2]) || !digits(minutes, &[2]) {
        return None;
    }
    let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(hours * 60 + minutes)
}

fn clock_value(problems: &mut Problems, label: &str, value: &Value) -> Option<u16> {
    let text = values::string(problems, label, value)?;
    let minute = clock(text);
    if minute.is_none() {
        problems.at(
            value.span(),
            format!(
                "{label}: {:?} is not a time of day; write \"HH:MM\" from 00:00 to 23:59",
                shown(text)
            ),
        );
    }
    minute
}

/// `from`/`to`: a local date-time (a string like `"2026-12-01T20:00"` or a
/// TOML local date-time) in `zone`, as Unix milliseconds.
fn instant_ms(
    problems: &mut Problems,
    label: &str,
    value: &Value,
    zone: Option<&TimeZone>,
) -> Option<i64> {
    let text = match value.get_ref() {
        toml::Value::String(text) => text.trim().to_string(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        other => {
            problems.at(
                value.span(),
                format!(
                    "{label} must be a local date-time like \"2026-12-01T20:00\", got {}",
                    values::describe(other)
                ),
            );
            return None;
        }
    };
    if text.parse::<jiff::Timestamp>().is_ok() || text.contains('[') {
        problems.at(
            value.span(),
            format!(
                "{label}: {:?} has a time zone or offset; write the local date-time (\"2026-12-01T20:00\") and set time_zone",
                shown(&text)
            ),
        );
        return None;
    }
    let civil = match text.parse::<jiff::civil::DateTime>() {
        Ok(civil) => civil,
        Err(err) => {
            problems.at(
                value.span(),
                format!(
                    "{label}: {:?} is not a date-time like \"2026-12-01T20:00\" ({err})",
                    shown(&text)
                ),
            );
            return None;
        }
    };
    let zone = zone?;
    match civil.to_zoned(zone.clone()) {
        Ok(zoned) => Some(zoned.timestamp().as_millisecond()),
        Err(err) => {
            problems.at(
                value.span(),
                format!("{label}: {text} in this time zone: {err}"),
            );
            None
        }
    }
}

/// One `[[waves.windows]]`: weekly (`days`, `start`, `end`) or a date range
/// (`from`, `to`), always with a `time_zone`.
fn window(
    problems: &mut Problems,
    label: &str,
    raw: &Spanned<RawWindow>,
) -> Option<MaintenanceWindow> {
    let span = raw.span();
    let raw = raw.get_ref();
    let before = problems.found.len();
    let zone = match &raw.time_zone {
        None => {
            problems.at(
                span.clone(),
                format!("{label} has no time_zone: name an IANA zone like \"Europe/Paris\" or \"UTC\""),
            );
            None
        }
        Some(value) => values::string(problems, &format!("{label}: time_zone"), value).and_then(
            |name| match TimeZone::get(name.trim()) {
                Ok(zone) => Some((zone, name.trim())),
                Err(_) => {
                    problems.at(
                        value.span(),
                        format!(
                            "{label}: time_zone {:?} is not an IANA time zone (like \"Europe/Paris\", \"America/New_York\" or \"UTC\")",
                            shown(name)
                        ),
                    );
                    None
                }
            },
        ),
    };
    let weekly = raw.days.is_some() || raw.start.is_some() || raw.end.is_some();
    let range = raw.from.is_some() || raw.to.is_some();
    let times = match (weekly, range) {
        (true, true) => {
            problems.at(
                span.clone(),
                format!(
                    "{label} mixes a weekly window (days, start, end) with a date range (from, to): split it into two windows"
                ),
            );
            None
        }
        (false, false) => {
            problems.at(
                span.clone(),
                format!(
                    "{label} is empty: give start and end (and optionally days) for a weekly window, or from and to for a date range"
                ),
            );
            None
        }
        (true, false) => {
            let days = days(problems, label, raw.days.as_ref());
            let mut bound = |key: &str, value: &Option<Value>| match value {
                Some(value) => clock_value(problems, &format!("{label}: {key}"), value),
                None => {
                    problems.at(
                        span.clone(),
                        format!(
                            "{label} has no {key}: a weekly window needs start and end (\"HH:MM\")"
                        ),
                    );
                    None
                }
            };
            let start = bound("start", &raw.start);
            let end = bound("end", &raw.end);
            Some(WindowTimes::Weekly {
                days: days?,
                start_minute: start?,
                end_minute: end?,
            })
        }
        (false, true) => {
            let zone_ref = zone.as_ref().map(|(zone, _)| zone);
            let mut bound = |key: &str, value: &Option<Value>| match value {
                Some(value) => instant_ms(problems, &format!("{label}: {key}"), value, zone_ref),
                None => {
                    problems.at(
                        span.clone(),
                        format!("{label} has no {key}: a date range needs from and to"),
                    );
                    None
                }
            };
            let from_ms = bound("from", &raw.from);
            let to_ms = bound("to", &raw.to);
            match (from_ms, to_ms) {
                (Some(from_ms), Some(to_ms)) if from_ms >= to_ms => {
                    let at = raw.to.as_ref().map_or(span.clone(), Spanned::span);
                    problems.at(at, format!("{label}: to must be later than from"));
                    None
                }
                (Some(from_ms), Some(to_ms)) => Some(WindowTimes::Range { from_ms, to_ms }),
                _ => None,
            }
        }
    };
    if problems.found.len() != before {
        return None;
    }
    let (zone, _) = zone?;
    Some(MaintenanceWindow {
        times: times?,
        time_zone: zone
            .iana_name()
            .map_or_else(|| raw_zone_name(raw), str::to_string),
        sites: raw.sites.clone(),
        labels: raw.labels.clone(),
    })
}

fn raw_zone_name(raw: &RawWindow) -> String {
    match raw.time_zone.as_ref().map(Spanned::get_ref) {
        Some(toml::Value::String(name)) => name.trim().to_string(),
        _ => String::new(),
    }
}

/// How long a window stays open each time it opens, in milliseconds.
fn open_ms(times: &WindowTimes) -> u64 {
    match times {
        WindowTimes::Weekly {
            start_minute,
            end_minute,
            ..
        } => {
            let minutes = if end_minute > start_minute {
                end_minute - start_minute
            } else {
                end_minute + 1440 - start_minute
            };
            u64::from(minutes) * 60_000
        }
        WindowTimes::Range { from_ms, to_ms } => to_ms.saturating_sub(*from_ms).max(0) as u64,
    }
}

/// Whether `window` governs `machine` (its sites and labels match).
fn window_applies(window: &MaintenanceWindow, machine: &Machine) -> bool {
    (window.sites.is_empty() || window.sites.contains(&machine.inventory.site))
        && window
            .labels
            .iter()
            .all(|(key, value)| machine.inventory.labels.get(key) == Some(value))
}

/// A wave with windows starts a machine only inside a window that applies
/// to it: a selected machine no window applies to would never start.
pub(super) fn check_window_coverage<'m>(
    problems: &mut Problems,
    wave: &str,
    windows: &[MaintenanceWindow],
    at: Range<usize>,
    machines: impl Iterator<Item = &'m Machine>,
) {
    for machine in machines {
        if !windows.iter().any(|window| window_applies(window, machine)) {
            let site = &machine.inventory.site;
            problems.at(
                at.clone(),
                format!(
                    "wave {wave}: machine {} (site {:?}) is outside every window's sites and labels: it would never start",
                    shown(&machine.inventory.hostname),
                    shown(site)
                ),
            );
        }
    }
}
