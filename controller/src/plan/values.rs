//! Reading the plan's scalar values leniently: every value arrives as a
//! located [`toml::Value`], so a wrong type is one located problem among the
//! others instead of a parse error that hides everything after it.

use super::{Problems, shown};
use crate::policy::{BatchSize, Budget};
use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use std::fmt;
use toml::Spanned;

/// A value with its location.
pub(super) type Value = Spanned<toml::Value>;

/// Longest duration a plan may state: a year and a day. Anything longer is
/// a typo (and would overflow millisecond arithmetic sooner or later).
pub(super) const MAX_DURATION_MS: u64 = 366 * 24 * 3600 * 1000;

/// A value that may be one item or an array of items, each item located
/// (`batch = 10` or `batch = [1, 10, "25%"]`; `days = "mon-fri"` or
/// `days = ["mon", "wed"]`).
#[derive(Debug)]
pub(super) enum RawList {
    /// A single value (located by the enclosing `Spanned`).
    One(toml::Value),
    /// An array.
    Many(Vec<Value>),
}

impl<'de> Deserialize<'de> for RawList {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawListVisitor)
    }
}

struct RawListVisitor;

impl<'de> Visitor<'de> for RawListVisitor {
    type Value = RawList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value or an array of values")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawList, E> {
        Ok(RawList::One(toml::Value::Boolean(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawList, E> {
        Ok(RawList::One(toml::Value::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawList, E> {
        i64::try_from(v)
            .map(|v| RawList::One(toml::Value::Integer(v)))
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawList, E> {
        Ok(RawList::One(toml::Value::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawList, E> {
        Ok(RawList::One(toml::Value::String(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<RawList, E> {
        Ok(RawList::One(toml::Value::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawList, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(RawList::Many(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawList, A::Error> {
        // A table, or a TOML date-time (which serde sees as a special map).
        toml::Value::deserialize(de::value::MapAccessDeserializer::new(map)).map(RawList::One)
    }
}

/// How a value reads in a message: its type, and itself when short.
pub(super) fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {:?}", shown(s)),
        toml::Value::Integer(n) => format!("the integer {n}"),
        toml::Value::Float(x) => format!("the number {x}"),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(d) => format!("the date-time {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

/// A whole number `min..=u32::MAX`.
pub(super) fn count(problems: &mut Problems, label: &str, value: &Value, min: u32) -> Option<u32> {
    match value.get_ref() {
        toml::Value::Integer(n) if *n < i64::from(min) => {
            problems.at(
                value.span(),
                format!("{label} must be at least {min}, got {n}"),
            );
            None
        }
        toml::Value::Integer(n) => match u32::try_from(*n) {
            Ok(n) => Some(n),
            Err(_) => {
                problems.at(
                    value.span(),
                    format!("{label} must be at most {}, got {n}", u32::MAX),
                );
                None
            }
        },
        other => {
            problems.at(
                value.span(),
                format!("{label} must be a whole number, got {}", describe(other)),
            );
            None
        }
    }
}

/// A replication factor: a whole number 1 to
/// [`MAX_REPLICATION`](crate::placement::MAX_REPLICATION).
pub(super) fn replication(problems: &mut Problems, label: &str, value: &Value) -> Option<u32> {
    let max = crate::placement::MAX_REPLICATION;
    match value.get_ref() {
        toml::Value::Integer(n) if !(1..=i64::from(max)).contains(n) => {
            problems.at(
                value.span(),
                format!("{label} must be 1 to {max} copies, got {n}"),
            );
            None
        }
        toml::Value::String(s) if s.trim().parse::<u32>().is_ok() => {
            problems.at(
                value.span(),
                format!(
                    "{label} must be a whole number of copies: write {} without quotes",
                    s.trim()
                ),
            );
            None
        }
        _ => count(problems, label, value, 1),
    }
}

/// `"N%"` as `N`, when `text` is written as a percentage at all
/// (`None`: no `%` suffix). `Err` when the number is not a whole number in
/// `0..=255`.
fn percent_text(text: &str) -> Option<Result<u32, String>> {
    let number = text.trim().strip_suffix('%')?.trim_end();
    Some(
        if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
            number
                .parse::<u32>()
                .map_err(|_| format!("{:?} is not a percentage", shown(text)))
        } else {
            Err(format!(
                "{:?} is not a whole percentage like \"25%\"",
                shown(text)
            ))
        },
    )
}

/// A percentage `low..=100`, written as an integer (`95`) or a string (`"95%"`).
pub(super) fn percent(problems: &mut Problems, label: &str, value: &Value, low: u8) -> Option<u8> {
    let number = match value.get_ref() {
        toml::Value::Integer(n) => Ok(*n),
        toml::Value::String(s) => match percent_text(s) {
            Some(Ok(n)) => Ok(i64::from(n)),
            Some(Err(message)) => Err(message),
            None => Err(format!(
                "{} is not a percentage like \"95%\"",
                describe(value.get_ref())
            )),
        },
        other => Err(format!("expected a percentage, got {}", describe(other))),
    };
    match number {
        Ok(n) if (i64::from(low)..=100).contains(&n) => Some(n as u8),
        Ok(n) => {
            problems.at(
                value.span(),
                format!("{label} must be {low}% to 100%, got {n}%"),
            );
            None
        }
        Err(message) => {
            problems.at(value.span(), format!("{label}: {message}"));
            None
        }
    }
}

/// A batch size: a count ≥ 1 (`10`) or a percentage 1..=100 (`"25%"`).
pub(super) fn batch_size(problems: &mut Problems, label: &str, value: &Value) -> Option<BatchSize> {
    match value.get_ref() {
        toml::Value::Integer(_) => count(problems, label, value, 1).map(BatchSize::Count),
        toml::Value::String(s) => match percent_text(s) {
            Some(Ok(n)) if (1..=100).contains(&n) => Some(BatchSize::Percent(n as u8)),
            Some(Ok(n)) => {
                problems.at(
                    value.span(),
                    format!("{label} must be 1% to 100%, got {n}%"),
                );
                None
            }
            Some(Err(message)) => {
                problems.at(value.span(), format!("{label}: {message}"));
                None
            }
            None => {
                let hint = if s.trim().parse::<u64>().is_ok() {
                    format!(
                        "write {} without quotes for a number of machines, or {:?} for a percentage",
                        s.trim(),
                        format!("{}%", s.trim())
                    )
                } else {
                    "write a number of machines like 10 or a percentage like \"25%\"".to_string()
                };
                problems.at(
                    value.span(),
                    format!("{label}: {:?} is not a batch size; {hint}", shown(s)),
                );
                None
            }
        },
        other => {
            problems.at(
                value.span(),
                format!(
                    "{label} must be a number of machines like 10 or a percentage like \"25%\", got {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// An error budget: failures tolerated, a count ≥ 0 (`2`) or a percentage
/// 0..=100 (`"5%"`).
pub(super) fn budget(problems: &mut Problems, label: &str, value: &Value) -> Option<Budget> {
    match value.get_ref() {
        toml::Value::Integer(_) => count(problems, label, value, 0).map(Budget::Count),
        toml::Value::String(_) => percent(problems, label, value, 0).map(Budget::Percent),
        other => {
            problems.at(
                value.span(),
                format!(
                    "{label} must be a number of failures like 2 or a percentage like \"5%\", got {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// A duration in milliseconds, written humantime-style (`"45m"`,
/// `"2h 30m"`, `"1d"`), at most [`MAX_DURATION_MS`]; zero only when
/// `allow_zero`.
pub(super) fn duration_ms(
    problems: &mut Problems,
    label: &str,
    value: &Value,
    allow_zero: bool,
) -> Option<u64> {
    let text = match value.get_ref() {
        toml::Value::String(text) => text,
        toml::Value::Integer(n) => {
            problems.at(
                value.span(),
                format!("{label} needs a unit: write \"{n}s\", \"{n}m\" or \"{n}h\""),
            );
            return None;
        }
        other => {
            problems.at(
                value.span(),
                format!(
                    "{label} must be a duration like \"45m\" or \"2h 30m\", got {}",
                    describe(other)
                ),
            );
            return None;
        }
    };
    let parsed = match humantime::parse_duration(text.trim()) {
        Ok(parsed) => parsed,
        Err(err) => {
            problems.at(
                value.span(),
                format!(
                    "{label}: {:?} is not a duration ({err}); write e.g. \"45m\", \"2h 30m\" or \"1d\"",
                    shown(text)
                ),
            );
            return None;
        }
    };
    let ms = u64::try_from(parsed.as_millis()).unwrap_or(u64::MAX);
    if ms > MAX_DURATION_MS {
        problems.at(
            value.span(),
            format!("{label}: {:?} is longer than 366 days", shown(text)),
        );
        None
    } else if ms == 0 && !allow_zero {
        problems.at(
            value.span(),
            format!("{label} must be longer than zero, got {:?}", shown(text)),
        );
        None
    } else {
        Some(ms)
    }
}

/// A string value.
pub(super) fn string<'v>(
    problems: &mut Problems,
    label: &str,
    value: &'v Value,
) -> Option<&'v str> {
    match value.get_ref() {
        toml::Value::String(text) => Some(text),
        other => {
            problems.at(
                value.span(),
                format!("{label} must be a string, got {}", describe(other)),
            );
            None
        }
    }
}

/// A duration in milliseconds as operators write it (`"45m"`, `"2h 30m"`).
pub(super) fn format_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}
