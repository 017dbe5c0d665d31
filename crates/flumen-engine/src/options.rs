//! Case-insensitive string options, the way Spark's `option(key, value)` works.
//!
//! Typed builder setters write into the same map, so a typed setter and its Spark option string
//! go through one validation path when the source or sink is created.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{FlumenError, Result};

/// A set of string options with case-insensitive keys (Spark's `CaseInsensitiveMap`).
///
/// Keys keep the spelling they were given for error messages and for `kafka.*` pass-through,
/// where librdkafka property names are case-sensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    entries: BTreeMap<String, (String, String)>,
}

impl Options {
    /// An empty option set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing any earlier value under any spelling of the key.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        self.entries
            .insert(key.to_ascii_lowercase(), (key, value.into()));
    }

    /// Removes `key`; returns its value if it was set.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries
            .remove(&key.to_ascii_lowercase())
            .map(|(_, v)| v)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .get(&key.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is set.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(&key.to_ascii_lowercase())
    }

    /// Every option as `(key as given, value)`, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.values().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Options whose key starts with `prefix` (case-insensitive), with the prefix stripped and the
    /// rest of the key kept as given, e.g. `kafka.bootstrap.servers` → `bootstrap.servers`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        let lower = prefix.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(move |(lk, _)| lk.starts_with(&lower))
            .map(move |(_, (k, v))| (&k[prefix.len()..], v.as_str()))
    }

    /// A boolean option (`true`/`false`, any case); `default` when unset.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(FlumenError::invalid_option(
                    key,
                    format!("'{v}' is not a boolean; use true or false"),
                )),
            },
        }
    }

    /// A non-negative integer option; `None` when unset.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    FlumenError::invalid_option(key, format!("'{v}' is not a non-negative integer"))
                })
            })
            .transpose()
    }

    /// A positive integer option; `None` when unset, an error for zero.
    pub fn get_positive(&self, key: &str) -> Result<Option<u64>> {
        match self.get_u64(key)? {
            Some(0) => Err(FlumenError::invalid_option(key, "must be greater than 0")),
            other => Ok(other),
        }
    }

    /// A duration option given in milliseconds; `None` when unset.
    pub fn get_millis(&self, key: &str) -> Result<Option<Duration>> {
        Ok(self.get_u64(key)?.map(Duration::from_millis))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Options {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut options = Options::new();
        for (k, v) in iter {
            options.set(k, v);
        }
        options
    }
}

/// Parses a Spark interval string such as `10 seconds`, `1 minute`, `500 ms`, `2 hours` or
/// `1 day 30 minutes` into a [`Duration`].
///
/// ```
/// use std::time::Duration;
/// use flumen_engine::options::parse_interval;
/// assert_eq!(parse_interval("2 seconds").unwrap(), Duration::from_secs(2));
/// assert_eq!(parse_interval("1 minute 30 seconds").unwrap(), Duration::from_secs(90));
/// assert_eq!(parse_interval("250 milliseconds").unwrap(), Duration::from_millis(250));
/// ```
pub fn parse_interval(text: &str) -> Result<Duration> {
    let bad = |why: &str| {
        FlumenError::invalid_option(
            "interval",
            format!(
                "cannot parse '{text}' as an interval ({why}); write e.g. '10 seconds' or '1 minute'"
            ),
        )
    };
    let trimmed = text.trim();
    let trimmed = trimmed
        .strip_prefix("interval ")
        .or_else(|| trimmed.strip_prefix("INTERVAL "))
        .unwrap_or(trimmed);
    let tokens: Vec<&str> = trimmed.split_whitespace().collect();
    if tokens.is_empty() {
        return Err(bad("empty"));
    }
    let mut total_micros: u128 = 0;
    let mut i = 0;
    while i < tokens.len() {
        // Accept both "10 seconds" and "10s"/"500ms".
        let (number, unit) = match tokens[i].find(|c: char| c.is_ascii_alphabetic()) {
            Some(pos) if pos > 0 => (&tokens[i][..pos], &tokens[i][pos..]),
            _ => {
                let unit = tokens.get(i + 1).ok_or_else(|| bad("missing unit"))?;
                i += 1;
                (tokens[i - 1], *unit)
            }
        };
        i += 1;
        let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
        if value < 0.0 || !value.is_finite() {
            return Err(bad("negative or not finite"));
        }
        let unit_micros: f64 = match unit.to_ascii_lowercase().as_str() {
            "w" | "week" | "weeks" => 7.0 * 86_400e6,
            "d" | "day" | "days" => 86_400e6,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600e6,
            "m" | "min" | "mins" | "minute" | "minutes" => 60e6,
            "s" | "sec" | "secs" | "second" | "seconds" => 1e6,
            "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1e3,
            "us" | "micro" | "micros" | "microsecond" | "microseconds" => 1.0,
            _ => {
                return Err(bad(
                    "unknown unit; use week, day, hour, minute, second, millisecond or microsecond",
                ));
            }
        };
        total_micros += (value * unit_micros).round() as u128;
    }
    Ok(Duration::from_micros(total_micros as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_and_keep_spelling() {
        let mut o = Options::new();
        o.set("kafka.bootstrap.servers", "a:1");
        o.set("startingOffsets", "earliest");
        assert_eq!(o.get("STARTINGOFFSETS"), Some("earliest"));
        let kafka: Vec<_> = o.with_prefix("kafka.").collect();
        assert_eq!(kafka, vec![("bootstrap.servers", "a:1")]);
    }

    #[test]
    fn intervals_parse_spark_forms() {
        assert_eq!(
            parse_interval("500 ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_interval("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_interval("1 hour").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_interval("1 m").unwrap(), Duration::from_secs(60));
        assert!(parse_interval("ten seconds").is_err());
        assert!(parse_interval("3 months").is_err());
    }
}
