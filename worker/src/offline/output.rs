//! What the offline verbs print on stdout: a summary, as text or as JSON. Nothing else goes to
//! stdout (progress and logs go to stderr).

use std::io::Write;

use serde::Serialize;

use super::exit::{Code, code_of};
use crate::error::Error;

/// The result of a verb: its exit code and its summary in both renderings.
#[derive(Debug)]
pub struct Outcome {
    /// How it ended.
    pub code: Code,
    /// The summary as a JSON object (`exit_code` and `status` are added when printed).
    pub json: serde_json::Value,
    /// The summary for people.
    pub text: String,
}

impl Outcome {
    /// An outcome from a serializable summary and its text rendering.
    pub fn new(code: Code, summary: &impl Serialize, text: String) -> Self {
        let json = serde_json::to_value(summary)
            .unwrap_or_else(|error| serde_json::json!({ "summary_error": error.to_string() }));
        Self { code, json, text }
    }

    /// The outcome of a failed verb.
    pub fn from_error(error: &Error) -> Self {
        Self {
            code: code_of(error),
            json: serde_json::json!({ "error": error.to_string() }),
            text: String::new(),
        }
    }

    /// Prints the summary on `out` (JSON when `json`), and an error line on `err` for failures
    /// that carry an error.
    pub fn print(
        &self,
        json: bool,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> std::io::Result<()> {
        if let Some(error) = self.json.get("error").and_then(|value| value.as_str()) {
            writeln!(err, "error: {error}")?;
        }
        if json {
            let mut value = self.json.clone();
            if let Some(object) = value.as_object_mut() {
                object.insert("exit_code".into(), self.code.value().into());
                object.insert("status".into(), self.code.name().into());
            }
            serde_json::to_writer_pretty(&mut *out, &value)?;
            writeln!(out)?;
        } else {
            write!(out, "{}", self.text)?;
        }
        out.flush()
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc_timestamp(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_timestamp(1_100_000_000_123_456_789),
            "2004-11-09T11:33:20Z"
        );
        assert_eq!(
            utc_timestamp(951_782_400_000_000_000),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(utc_timestamp(-1_000_000_000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn json_carries_the_exit_code() {
        let outcome = Outcome::new(
            Code::Skipped,
            &serde_json::json!({"files": 2}),
            "text\n".into(),
        );
        let (mut out, mut err) = (Vec::new(), Vec::new());
        outcome.print(true, &mut out, &mut err).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["exit_code"], 3);
        assert_eq!(value["status"], "skipped");
        assert_eq!(value["files"], 2);
        assert!(err.is_empty());
        let failed = Outcome::from_error(&Error::BadArguments("nope".into()));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        failed.print(false, &mut out, &mut err).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "error: bad arguments: nope\n"
        );
    }
}
