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
///
/// Its `Debug` output shows secret values (see [`is_secret`]) as [`REDACTED`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options {
    entries: BTreeMap<String, (String, String)>,
}

/// What a secret option's value is shown as.
pub const REDACTED: &str = "*********(redacted)";

/// Whether the option `key` holds a secret whose value must never be shown: Kafka's
/// `sasl.jaas.config`, `sasl.password`, `ssl.key.password` (with or without `kafka.`), and any
/// key containing `password` or `secret` (case-insensitive).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.ends_with("sasl.jaas.config")
}

/// `value`, or [`REDACTED`] when `key` is a secret.
pub fn redact<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) { REDACTED } else { value }
}

/// `text` with the value of every secret among `options` replaced by [`REDACTED`]: for
/// messages from libraries (librdkafka's configuration errors quote the offending value).
pub fn scrub_secrets<'a>(
    text: &str,
    options: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut scrubbed = text.to_string();
    for (key, value) in options {
        if is_secret(key) && !value.is_empty() {
            scrubbed = scrubbed.replace(value, REDACTED);
        }
    }
    scrubbed
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k, redact(k, v))))
            .finish()
    }
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

/// Parses a Spark interval string such as `10 seconds`, `1 minute`, `500 ms`, `500ms`, `2 hours`
/// or `1 day 30 minutes` into a [`Duration`], with Arrow's interval parser (the one DataFusion's
/// SQL `INTERVAL` literals use): units from weeks down to nanoseconds, singular, plural or
/// abbreviated (`w`, `d`, `h`, `m`, `s`, `ms`, `us`), fractions (`1.5 hours`) and an optional
/// leading `interval`. Months and years are refused: they have no fixed length.
///
/// ```
/// use std::time::Duration;
/// use flumen_engine::options::parse_interval;
/// assert_eq!(parse_interval("2 seconds").unwrap(), Duration::from_secs(2));
/// assert_eq!(parse_interval("1 minute 30 seconds").unwrap(), Duration::from_secs(90));
/// assert_eq!(parse_interval("250 milliseconds").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_interval("500ms").unwrap(), Duration::from_millis(500));
/// ```
pub fn parse_interval(text: &str) -> Result<Duration> {
    use datafusion::arrow::compute::kernels::cast_utils::{
        IntervalParseConfig, IntervalUnit, parse_interval_month_day_nano_config,
    };
    let bad = |why: &str| {
        FlumenError::invalid_option(
            "interval",
            format!(
                "cannot parse '{text}' as an interval ({why}); write e.g. '10 seconds' or '1 minute'"
            ),
        )
    };
    let mut tokens: Vec<&str> = text.split_whitespace().collect();
    if tokens
        .first()
        .is_some_and(|first| first.eq_ignore_ascii_case("interval"))
    {
        tokens.remove(0);
    }
    let Some(last) = tokens.last() else {
        return Err(bad("empty"));
    };
    // Arrow would read a bare number as seconds; Spark's options always name the unit.
    if !last.chars().any(|c| c.is_ascii_alphabetic()) {
        return Err(bad("missing unit"));
    }
    let interval = parse_interval_month_day_nano_config(
        &tokens.join(" "),
        IntervalParseConfig::new(IntervalUnit::Second),
    )
    .map_err(|e| bad(&e.to_string()))?;
    if interval.months != 0 {
        return Err(bad(
            "months and years have no fixed length; use weeks, days, hours, minutes or seconds",
        ));
    }
    let (Ok(days), Ok(nanos)) = (
        u64::try_from(interval.days),
        u64::try_from(interval.nanoseconds),
    ) else {
        return Err(bad("negative"));
    };
    Ok(Duration::from_secs(days * 86_400) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_redacted_in_debug_output() {
        let mut o = Options::new();
        o.set("kafka.sasl.password", "hunter2");
        o.set(
            "kafka.SASL.JAAS.CONFIG",
            "org.apache.kafka... password=\"hunter3\";",
        );
        o.set("kafka.ssl.key.password", "hunter4");
        o.set("myApiSecret", "hunter5");
        o.set("subscribe", "events");
        let shown = format!("{o:?}");
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("\"subscribe\": \"events\""), "{shown}");
        assert_eq!(shown.matches(REDACTED).count(), 4);
        assert_eq!(
            o.get("kafka.sasl.password"),
            Some("hunter2"),
            "values stay usable"
        );
    }

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
        assert_eq!(
            parse_interval("INTERVAL 1 day 30 minutes").unwrap(),
            Duration::from_secs(86_400 + 1_800)
        );
        assert_eq!(
            parse_interval("1.5 hours").unwrap(),
            Duration::from_secs(5_400)
        );
        assert_eq!(
            parse_interval("2 w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert_eq!(
            parse_interval("250 us").unwrap(),
            Duration::from_micros(250)
        );
        for (text, why) in [
            ("ten seconds", "Invalid input syntax"),
            ("3 months", "no fixed length"),
            ("10", "missing unit"),
            ("", "empty"),
            ("-5 seconds", "negative"),
            ("5 fortnights", "Invalid input syntax"),
        ] {
            let message = parse_interval(text).unwrap_err().to_string();
            assert!(message.contains(why), "{text}: {message}");
        }
    }
}
