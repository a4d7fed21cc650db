//! Maintenance windows: time zones, overnight windows, DST and ranges.

use super::*;

const HOUR: u64 = 3600 * 1000;
const MIN: u64 = 60 * 1000;

/// Unix ms of a local date-time (`2026-03-24T22:00`) in `tz`.
fn at(local: &str, tz: &str) -> i64 {
    local
        .parse::<jiff::civil::DateTime>()
        .unwrap()
        .to_zoned(time_zone(tz).unwrap())
        .unwrap()
        .timestamp()
        .as_millisecond()
}

fn weekly(days: &[u8], start: &str, end: &str, tz: &str) -> MaintenanceWindow {
    let minutes = |hhmm: &str| {
        let (h, m) = hhmm.split_once(':').unwrap();
        h.parse::<u16>().unwrap() * 60 + m.parse::<u16>().unwrap()
    };
    MaintenanceWindow {
        times: WindowTimes::Weekly {
            days: days.to_vec(),
            start_minute: minutes(start),
            end_minute: minutes(end),
        },
        time_zone: tz.into(),
        sites: vec![],
        labels: BTreeMap::new(),
    }
}

const WEEKDAYS: [u8; 5] = [0, 1, 2, 3, 4];
const PARIS: &str = "Europe/Paris";

#[test]
fn an_overnight_window_runs_past_midnight_into_the_next_day() {
    // 2026-03-24 is a Tuesday.
    let w = weekly(&WEEKDAYS, "20:00", "06:00", PARIS);
    assert!(fits(&w, at("2026-03-24T22:00", PARIS), 4 * HOUR).unwrap());
    assert!(fits(&w, at("2026-03-24T22:00", PARIS), 8 * HOUR).unwrap());
    assert!(!fits(&w, at("2026-03-24T22:00", PARIS), 8 * HOUR + MIN).unwrap());
    // Friday night's window carries into Saturday morning...
    assert!(fits(&w, at("2026-03-28T01:00", PARIS), 3 * HOUR).unwrap());
    // ...but no window opens on Saturday evening or Sunday morning.
    assert!(!fits(&w, at("2026-03-28T21:00", PARIS), MIN).unwrap());
    assert!(!fits(&w, at("2026-03-29T01:00", PARIS), MIN).unwrap());
    // Closed during the day; the next opening is the same evening.
    assert!(!fits(&w, at("2026-03-24T10:00", PARIS), HOUR).unwrap());
    assert_eq!(
        next_opening(&w, at("2026-03-24T10:00", PARIS), HOUR).unwrap(),
        Some(at("2026-03-24T20:00", PARIS))
    );
    // A job too long to finish tonight waits for... nothing: every night is 10 h.
    assert_eq!(
        next_opening(&w, at("2026-03-24T10:00", PARIS), 11 * HOUR).unwrap(),
        None
    );
    // Inside the window, a job that still fits may start right away.
    assert_eq!(
        next_opening(&w, at("2026-03-24T23:00", PARIS), HOUR).unwrap(),
        Some(at("2026-03-24T23:00", PARIS))
    );
    // Saturday noon: the next opening is Monday evening.
    assert_eq!(
        next_opening(&w, at("2026-03-28T12:00", PARIS), HOUR).unwrap(),
        Some(at("2026-03-30T20:00", PARIS))
    );
}

#[test]
fn daylight_saving_changes_shorten_and_lengthen_a_window() {
    // 2026-03-29 (Sunday): 02:00 CET jumps to 03:00 CEST; 01:00-05:00 is 3 h.
    let w = weekly(&[6], "01:00", "05:00", PARIS);
    let start = at("2026-03-29T01:00", PARIS);
    assert!(fits(&w, start, 3 * HOUR).unwrap());
    assert!(!fits(&w, start, 3 * HOUR + MIN).unwrap());
    // 2026-10-25 (Sunday): 03:00 CEST falls back to 02:00 CET; it is 5 h.
    let start = at("2026-10-25T01:00", PARIS);
    assert!(fits(&w, start, 5 * HOUR).unwrap());
    assert!(!fits(&w, start, 5 * HOUR + MIN).unwrap());
    // A window opening inside the skipped hour opens at the later instant.
    let gap = weekly(&[6], "02:30", "04:00", PARIS);
    let opening = next_opening(&gap, at("2026-03-28T12:00", PARIS), MIN).unwrap();
    assert_eq!(opening, Some(at("2026-03-29T03:30", PARIS)));
    let utc: Timestamp = "2026-03-29T01:30:00Z".parse().unwrap();
    assert_eq!(opening, Some(utc.as_millisecond()));
}

#[test]
fn the_same_local_hours_are_different_instants_in_other_zones() {
    let paris = weekly(&WEEKDAYS, "20:00", "22:00", PARIS);
    let new_york = weekly(&WEEKDAYS, "20:00", "22:00", "America/New_York");
    let instant = at("2026-03-24T21:00", PARIS);
    assert!(fits(&paris, instant, 30 * MIN).unwrap());
    assert!(!fits(&new_york, instant, 30 * MIN).unwrap());
    assert_eq!(
        next_opening(&new_york, instant, 30 * MIN).unwrap(),
        Some(at("2026-03-24T20:00", "America/New_York"))
    );
}

#[test]
fn explicit_ranges() {
    let from = at("2026-12-01T20:00", PARIS);
    let to = at("2026-12-02T06:00", PARIS);
    let w = MaintenanceWindow {
        times: WindowTimes::Range {
            from_ms: from,
            to_ms: to,
        },
        time_zone: PARIS.into(),
        sites: vec![],
        labels: BTreeMap::new(),
    };
    assert!(fits(&w, from, 10 * HOUR).unwrap());
    assert!(!fits(&w, from, 10 * HOUR + 1).unwrap());
    assert!(!fits(&w, from - 1, MIN).unwrap());
    assert!(!fits(&w, to, MIN).unwrap());
    assert_eq!(next_opening(&w, from - DAY_MS, HOUR).unwrap(), Some(from));
    assert_eq!(
        next_opening(&w, to - HOUR as i64, HOUR).unwrap(),
        Some(to - HOUR as i64),
        "just fits before the end"
    );
    assert_eq!(next_opening(&w, to - HOUR as i64 + 1, HOUR).unwrap(), None);
    assert_eq!(next_opening(&w, to + 1, MIN).unwrap(), None);
}

#[test]
fn a_range_weeks_ahead_is_shown_as_the_next_opening() {
    let from = at("2026-12-01T20:00", PARIS);
    let windows = [MaintenanceWindow {
        times: WindowTimes::Range {
            from_ms: from,
            to_ms: from + 10 * HOUR as i64,
        },
        time_zone: PARIS.into(),
        sites: vec![],
        labels: BTreeMap::new(),
    }];
    let now = at("2026-11-01T12:00", PARIS);
    let compiled = Windows::compile(&windows, now, HOUR);
    assert_eq!(
        compiled.verdict("x", &BTreeMap::new(), now, HOUR),
        Verdict::Until(from, PARIS)
    );
}

#[test]
fn back_to_back_days_merge_so_long_jobs_fit() {
    // Every day, midnight to midnight: always open; a three-day job fits.
    let w = weekly(&[0, 1, 2, 3, 4, 5, 6], "00:00", "00:00", "UTC");
    assert!(fits(&w, at("2026-03-24T13:37", "UTC"), 72 * HOUR).unwrap());
    // Monday and Tuesday only: a job may not run into Wednesday.
    let w = weekly(&[0, 1], "00:00", "00:00", "UTC");
    assert!(fits(&w, at("2026-03-23T00:00", "UTC"), 48 * HOUR).unwrap());
    assert!(!fits(&w, at("2026-03-23T00:00", "UTC"), 48 * HOUR + 1).unwrap());
}

#[test]
fn windows_govern_by_site_and_labels() {
    let mut w = weekly(&WEEKDAYS, "20:00", "06:00", PARIS);
    w.sites = vec!["paris".into()];
    w.labels.insert("tier".into(), "office".into());
    let office: BTreeMap<String, String> = [("tier".to_string(), "office".to_string())].into();
    assert!(governs(&w, "paris", &office));
    assert!(!governs(&w, "lyon", &office));
    assert!(!governs(&w, "paris", &BTreeMap::new()));

    let windows = [w];
    let noon = at("2026-03-24T12:00", PARIS);
    let compiled = Windows::compile(&windows, noon, 4 * HOUR);
    // Not governed: always open.
    assert_eq!(compiled.verdict("lyon", &office, noon, HOUR), Verdict::Open);
    match compiled.verdict("paris", &office, noon, HOUR) {
        Verdict::Until(when, tz) => {
            assert_eq!(when, at("2026-03-24T20:00", PARIS));
            assert_eq!(local_time(when, tz), "2026-03-24 20:00 Europe/Paris");
        }
        other => panic!("expected a later opening, got {other:?}"),
    }
    let evening = at("2026-03-24T21:00", PARIS);
    let compiled = Windows::compile(&windows, evening, 4 * HOUR);
    assert_eq!(
        compiled.verdict("paris", &office, evening, 4 * HOUR),
        Verdict::Open
    );
    assert!(matches!(
        compiled.verdict("paris", &office, evening, 11 * HOUR),
        Verdict::Never(reason) if reason.contains("11 h 00 min")
    ));
}

#[test]
fn any_governing_window_that_fits_is_enough() {
    let mut night = weekly(&WEEKDAYS, "20:00", "06:00", PARIS);
    night.sites = vec!["paris".into()];
    let mut lunch = weekly(&WEEKDAYS, "12:00", "14:00", PARIS);
    lunch.sites = vec!["paris".into()];
    let windows = [night, lunch];
    let noon = at("2026-03-24T12:30", PARIS);
    let compiled = Windows::compile(&windows, noon, 8 * HOUR);
    assert_eq!(
        compiled.verdict("paris", &BTreeMap::new(), noon, HOUR),
        Verdict::Open
    );
    // Two hours do not fit at lunch; the night window is the next fit.
    assert_eq!(
        compiled.verdict("paris", &BTreeMap::new(), noon, 2 * HOUR),
        Verdict::Until(at("2026-03-24T20:00", PARIS), PARIS)
    );
}

#[test]
fn an_unknown_time_zone_never_opens_and_says_why() {
    assert!(time_zone("Mars/Olympus_Mons").is_err());
    assert_eq!(time_zone("").unwrap(), TimeZone::UTC);
    let windows = [weekly(&WEEKDAYS, "20:00", "06:00", "Mars/Olympus_Mons")];
    let compiled = Windows::compile(&windows, 0, HOUR);
    match compiled.verdict("x", &BTreeMap::new(), 0, HOUR) {
        Verdict::Never(reason) => assert!(reason.contains("Mars/Olympus_Mons"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_bundled_database_has_the_zones_plans_use() {
    let bundled = TimeZoneDatabase::bundled();
    for name in [PARIS, "America/New_York", "Asia/Kolkata", "UTC"] {
        assert!(bundled.get(name).is_ok(), "{name} missing from the bundle");
    }
}

#[test]
fn durations_read_like_a_person_wrote_them() {
    assert_eq!(human_duration(30_000), "30 s");
    assert_eq!(human_duration(45 * MIN), "45 min");
    assert_eq!(human_duration(2 * HOUR + 5 * MIN), "2 h 05 min");
}
