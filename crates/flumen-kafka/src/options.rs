//! Kafka source and sink options: Spark's names, typed forms, and validation at `load()` /
//! `start()`.

use std::collections::BTreeMap;
use std::time::Duration;

use flumen_engine::options::Options;
use flumen_engine::{FlumenError, Result};
use regex::Regex;

use crate::offsets::{self, PartitionOffsets};

/// Default time allowed for one Kafka metadata, offset or fetch round (Spark's
/// `kafkaConsumer.pollTimeoutMs`, whose Spark default is 120 s).
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which partitions a source reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Subscription {
    /// These topics, all their partitions, including partitions added later.
    Subscribe(Vec<String>),
    /// Every topic whose name matches the regex (anchored), including topics created later.
    Pattern(String),
    /// Exactly these partitions.
    Assign(BTreeMap<String, Vec<i32>>),
}

impl Subscription {
    /// Spark's description, e.g. `Subscribe[demo-topic]`.
    pub fn describe(&self) -> String {
        match self {
            Self::Subscribe(topics) => format!("Subscribe[{}]", topics.join(",")),
            Self::Pattern(p) => format!("SubscribePattern[{p}]"),
            Self::Assign(parts) => {
                let list: Vec<String> = parts
                    .iter()
                    .flat_map(|(t, ps)| ps.iter().map(move |p| format!("{t}-{p}")))
                    .collect();
                format!("Assign[{}]", list.join(", "))
            }
        }
    }
}

/// Where a new query starts reading (Spark's `startingOffsets`).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StartingOffsets {
    /// The earliest offset still retained. Default for batch reads.
    Earliest,
    /// The end of each partition: only new data. Default for streaming.
    #[default]
    Latest,
    /// Per partition; `-2` means earliest and `-1` latest. Partitions not listed start at
    /// latest... except in Spark, where unlisted partitions are an error; Flumen follows Spark.
    Specific(PartitionOffsets),
}

impl StartingOffsets {
    fn to_option(&self) -> String {
        match self {
            Self::Earliest => "earliest".into(),
            Self::Latest => "latest".into(),
            Self::Specific(o) => offsets::to_json(o).to_string(),
        }
    }

    fn parse(text: &str, option: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => Ok(Self::Specific(offsets::parse(text, option)?)),
        }
    }
}

impl From<StartingOffsets> for String {
    fn from(value: StartingOffsets) -> Self {
        value.to_option()
    }
}

/// Where a batch read stops (Spark's `endingOffsets`): `latest` or per partition (`-1` =
/// latest).
pub type EndingOffsets = StartingOffsets;

/// Spark's default `maxTriggerDelay`.
pub const DEFAULT_MAX_TRIGGER_DELAY: Duration = Duration::from_secs(15 * 60);

/// What a timestamp lookup does for a partition with no record at or after the timestamp
/// (Spark's `startingOffsetsByTimestampStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampNoMatch {
    /// `error` (the default for starting timestamps): the query fails, naming the partition.
    #[default]
    Error,
    /// `latest`: the partition starts (or ends) at its latest offset. Ending timestamps always
    /// do this, as in Spark.
    Latest,
}

/// Source options after validation. Its `Debug` output redacts secret client properties.
#[derive(Clone)]
pub struct SourceConfig {
    /// `kafka.bootstrap.servers`.
    pub bootstrap_servers: String,
    /// What to read.
    pub subscription: Subscription,
    /// Where a new query starts.
    pub starting: StartingOffsets,
    /// `startingTimestamp` (ms): overrides `startingOffsetsByTimestamp` and `startingOffsets`.
    pub starting_timestamp: Option<i64>,
    /// `startingOffsetsByTimestamp`: a timestamp (ms) per partition; overrides `startingOffsets`.
    pub starting_by_timestamp: Option<PartitionOffsets>,
    /// `startingOffsetsByTimestampStrategy`: what a partition with no record at or after its
    /// starting timestamp does (default: fail).
    pub starting_no_match: TimestampNoMatch,
    /// `endingTimestamp` (ms, batch reads): overrides `endingOffsetsByTimestamp` and
    /// `endingOffsets`.
    pub ending_timestamp: Option<i64>,
    /// `endingOffsetsByTimestamp` (batch reads): a timestamp (ms) per partition.
    pub ending_by_timestamp: Option<PartitionOffsets>,
    /// `endingOffsets` (batch reads).
    pub ending: EndingOffsets,
    /// `maxOffsetsPerTrigger`.
    pub max_offsets_per_trigger: Option<u64>,
    /// `minOffsetsPerTrigger`: a trigger with fewer new records waits (up to `maxTriggerDelay`).
    pub min_offsets_per_trigger: Option<u64>,
    /// `maxTriggerDelay` (default 15 minutes): how long `minOffsetsPerTrigger` may hold a batch.
    pub max_trigger_delay: Duration,
    /// `failOnDataLoss` (default true).
    pub fail_on_data_loss: bool,
    /// `includeHeaders` (default false).
    pub include_headers: bool,
    /// `kafkaConsumer.pollTimeoutMs` (default 30 s).
    pub poll_timeout: Duration,
    /// `fetchOffset.numRetries` (default 3): retries of a failed metadata or offset request.
    pub fetch_offset_retries: u32,
    /// `fetchOffset.retryIntervalMs` (default 10 ms): the pause between those retries.
    pub fetch_offset_retry_interval: Duration,
    /// `kafka.group.id`: when set, committed batch offsets are also committed to this consumer
    /// group, for lag monitoring only (the checkpoint stays the source of truth).
    pub group_id: Option<String>,
    /// Every other `kafka.*` property, passed to librdkafka.
    pub client: BTreeMap<String, String>,
}

fn unsupported_kafka_option(key: &str, source: bool) -> Option<String> {
    let k = key.to_ascii_lowercase();
    let msg = match k.as_str() {
        "auto.offset.reset" if source => {
            "Kafka option 'auto.offset.reset' is not supported. Instead set the source option 'startingOffsets' to 'earliest' or 'latest' to specify where to start. Flumen manages which offsets are consumed internally (in the checkpoint), rather than relying on the Kafka consumer to do it."
        }
        "key.deserializer" if source => {
            "Kafka option 'key.deserializer' is not supported, as keys are always read as byte arrays. Use DataFrame operations (e.g. CAST(key AS STRING)) to deserialize the keys."
        }
        "value.deserializer" if source => {
            "Kafka option 'value.deserializer' is not supported, as values are always read as byte arrays. Use DataFrame operations (e.g. CAST(value AS STRING) and from_json) to deserialize the values."
        }
        "enable.auto.commit" if source => {
            "Kafka option 'enable.auto.commit' is not supported: the Kafka source keeps its offsets in the checkpoint. Set kafka.group.id to also commit processed offsets to a consumer group for monitoring."
        }
        "interceptor.classes" => {
            "Kafka option 'interceptor.classes' is not supported, as Kafka records are exchanged as raw bytes."
        }
        "key.serializer" if !source => {
            "Kafka option 'key.serializer' is not supported, as keys are always written as bytes: give a string or binary 'key' column."
        }
        "transactional.id" if !source => {
            "Kafka option 'transactional.id' is not supported: with exactlyOnce the sink derives it from the query id (set transactionalIdPrefix to choose its start)."
        }
        "value.serializer" if !source => {
            "Kafka option 'value.serializer' is not supported, as values are always written as bytes: give a string or binary 'value' column."
        }
        _ => return None,
    };
    Some(msg.to_string())
}

/// The `kafka.*` properties (minus the prefix), with the unsupported ones rejected.
pub fn client_properties(options: &Options, source: bool) -> Result<BTreeMap<String, String>> {
    let mut props = BTreeMap::new();
    for (key, value) in options.with_prefix("kafka.") {
        if let Some(msg) = unsupported_kafka_option(key, source) {
            return Err(FlumenError::invalid_option(format!("kafka.{key}"), msg));
        }
        props.insert(key.to_string(), value.to_string());
    }
    Ok(props)
}

/// Reads `kafka.bootstrap.servers`.
pub fn bootstrap_servers(options: &Options) -> Result<String> {
    options
        .get("kafka.bootstrap.servers")
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            FlumenError::invalid_option(
                "kafka.bootstrap.servers",
                "Option 'kafka.bootstrap.servers' must be specified for configuring Kafka consumer/producer (e.g. .bootstrap_servers(\"localhost:9092\"))",
            )
        })
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client: BTreeMap<&str, &str> = self
            .client
            .iter()
            .map(|(k, v)| (k.as_str(), flumen_engine::options::redact(k, v)))
            .collect();
        f.debug_struct("SourceConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("subscription", &self.subscription)
            .field("starting", &self.starting)
            .field("starting_timestamp", &self.starting_timestamp)
            .field("starting_by_timestamp", &self.starting_by_timestamp)
            .field("starting_no_match", &self.starting_no_match)
            .field("ending_timestamp", &self.ending_timestamp)
            .field("ending_by_timestamp", &self.ending_by_timestamp)
            .field("ending", &self.ending)
            .field("max_offsets_per_trigger", &self.max_offsets_per_trigger)
            .field("min_offsets_per_trigger", &self.min_offsets_per_trigger)
            .field("max_trigger_delay", &self.max_trigger_delay)
            .field("fail_on_data_loss", &self.fail_on_data_loss)
            .field("include_headers", &self.include_headers)
            .field("poll_timeout", &self.poll_timeout)
            .field("group_id", &self.group_id)
            .field("client", &client)
            .finish_non_exhaustive()
    }
}

impl SourceConfig {
    /// Validates Spark-style source options. `streaming` selects the defaults and checks of
    /// `readStream` (starting at latest) or `read` (earliest → latest).
    pub fn from_options(options: &Options, streaming: bool) -> Result<Self> {
        let bootstrap_servers = bootstrap_servers(options)?;
        let given: Vec<&str> = ["subscribe", "subscribePattern", "assign"]
            .into_iter()
            .filter(|k| options.contains(k))
            .collect();
        let subscription = match given.as_slice() {
            ["subscribe"] => {
                let topics: Vec<String> = options
                    .get("subscribe")
                    .unwrap_or_default()
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
                if topics.is_empty() {
                    return Err(FlumenError::invalid_option(
                        "subscribe",
                        "No topics to subscribe to as specified value for option 'subscribe' is empty",
                    ));
                }
                Subscription::Subscribe(topics)
            }
            ["subscribePattern"] => {
                let pattern = options.get("subscribePattern").unwrap_or_default().trim();
                if pattern.is_empty() {
                    return Err(FlumenError::invalid_option(
                        "subscribePattern",
                        "Pattern to subscribe is empty as specified value for option 'subscribePattern' is ''",
                    ));
                }
                Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    FlumenError::invalid_option("subscribePattern", format!("invalid regex: {e}"))
                })?;
                Subscription::Pattern(pattern.to_string())
            }
            ["assign"] => {
                Subscription::Assign(parse_assign(options.get("assign").unwrap_or_default())?)
            }
            [] => {
                return Err(FlumenError::invalid_option(
                    "subscribe",
                    "One of the following options must be specified for Kafka source: subscribe, subscribePattern, assign. See the docs for more details.",
                ));
            }
            several => {
                return Err(FlumenError::invalid_option(
                    several.join(", "),
                    "Only one of the following options can be specified for Kafka source: subscribe, subscribePattern, assign. See the docs for more details.",
                ));
            }
        };
        let starting = match options.get("startingOffsets") {
            Some(text) => StartingOffsets::parse(text, "startingOffsets")?,
            None if streaming => StartingOffsets::Latest,
            None => StartingOffsets::Earliest,
        };
        if !streaming && starting == StartingOffsets::Latest {
            return Err(FlumenError::invalid_option(
                "startingOffsets",
                "starting offset can't be latest for batch queries on Kafka",
            ));
        }
        let ending = match options.get("endingOffsets") {
            Some(_) if streaming => {
                return Err(FlumenError::invalid_option(
                    "endingOffsets",
                    "ending offset not valid in streaming queries",
                ));
            }
            Some(text) => StartingOffsets::parse(text, "endingOffsets")?,
            None => StartingOffsets::Latest,
        };
        if ending == StartingOffsets::Earliest
            || matches!(&ending, StartingOffsets::Specific(o) if o.values().flat_map(|p| p.values()).any(|v| *v == -2))
        {
            return Err(FlumenError::invalid_option(
                "endingOffsets",
                "ending offset can't be earliest (-2) for batch queries on Kafka",
            ));
        }
        let starting_timestamp = options
            .get("startingTimestamp")
            .map(|t| {
                t.trim().parse::<i64>().map_err(|_| {
                    FlumenError::invalid_option(
                        "startingTimestamp",
                        format!("'{t}' is not a timestamp in milliseconds since the epoch"),
                    )
                })
            })
            .transpose()?;
        let by_timestamp = |key: &str| -> Result<Option<PartitionOffsets>> {
            options
                .get(key)
                .map(|text| {
                    let parsed = offsets::parse(text, key)?;
                    match parsed.values().flat_map(|p| p.values()).find(|ts| **ts < 0) {
                        Some(ts) => Err(FlumenError::invalid_option(
                            key,
                            format!(
                                "timestamp {ts} is negative; give milliseconds since the epoch"
                            ),
                        )),
                        None => Ok(parsed),
                    }
                })
                .transpose()
        };
        let starting_by_timestamp = by_timestamp("startingOffsetsByTimestamp")?;
        let starting_no_match = match options
            .get("startingOffsetsByTimestampStrategy")
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("error") => TimestampNoMatch::Error,
            Some("latest") => TimestampNoMatch::Latest,
            Some(other) => {
                return Err(FlumenError::invalid_option(
                    "startingOffsetsByTimestampStrategy",
                    format!("'{other}' is not a strategy; use 'error' (the default) or 'latest'"),
                ));
            }
        };
        let ending_timestamp = options
            .get("endingTimestamp")
            .map(|t| {
                t.trim().parse::<i64>().map_err(|_| {
                    FlumenError::invalid_option(
                        "endingTimestamp",
                        format!("'{t}' is not a timestamp in milliseconds since the epoch"),
                    )
                })
            })
            .transpose()?;
        let ending_by_timestamp = by_timestamp("endingOffsetsByTimestamp")?;
        if streaming {
            for key in ["endingTimestamp", "endingOffsetsByTimestamp"] {
                if options.contains(key) {
                    return Err(FlumenError::invalid_option(
                        key,
                        "ending offset not valid in streaming queries",
                    ));
                }
            }
        }
        let max_offsets_per_trigger = options.get_positive("maxOffsetsPerTrigger")?;
        let min_offsets_per_trigger = options.get_positive("minOffsetsPerTrigger")?;
        if let (Some(min), Some(max)) = (min_offsets_per_trigger, max_offsets_per_trigger)
            && min > max
        {
            return Err(FlumenError::invalid_option(
                "minOffsetsPerTrigger",
                format!(
                    "minOffsetsPerTrigger ({min}) must not be greater than maxOffsetsPerTrigger ({max})"
                ),
            ));
        }
        let max_trigger_delay = match options.get("maxTriggerDelay") {
            None => DEFAULT_MAX_TRIGGER_DELAY,
            Some(text) => flumen_engine::options::parse_interval(text).map_err(|_| {
                FlumenError::invalid_option(
                    "maxTriggerDelay",
                    format!("'{text}' is not a duration; write e.g. '15m' or '30 seconds'"),
                )
            })?,
        };
        if !streaming && min_offsets_per_trigger.is_some() {
            tracing::warn!("minOffsetsPerTrigger is ignored by batch reads");
        }
        if !streaming && max_offsets_per_trigger.is_some() {
            tracing::warn!("maxOffsetsPerTrigger is ignored by batch reads");
        }
        let mut client = client_properties(options, true)?;
        client.remove("bootstrap.servers");
        let group_id = client.remove("group.id");
        Ok(Self {
            bootstrap_servers,
            subscription,
            starting,
            starting_timestamp,
            starting_by_timestamp,
            starting_no_match,
            ending_timestamp,
            ending_by_timestamp,
            ending,
            max_offsets_per_trigger,
            min_offsets_per_trigger,
            max_trigger_delay,
            fail_on_data_loss: options.get_bool("failOnDataLoss", true)?,
            include_headers: options.get_bool("includeHeaders", false)?,
            poll_timeout: options
                .get_millis("kafkaConsumer.pollTimeoutMs")?
                .unwrap_or(DEFAULT_POLL_TIMEOUT),
            fetch_offset_retries: u32::try_from(
                options.get_u64("fetchOffset.numRetries")?.unwrap_or(3),
            )
            .map_err(|_| FlumenError::invalid_option("fetchOffset.numRetries", "too large"))?,
            fetch_offset_retry_interval: options
                .get_millis("fetchOffset.retryIntervalMs")?
                .unwrap_or(Duration::from_millis(10)),
            group_id,
            client,
        })
    }
}

/// Parses Spark's `assign` JSON: `{"topicA":[0,1],"topicB":[2,4]}`.
pub fn parse_assign(text: &str) -> Result<BTreeMap<String, Vec<i32>>> {
    let bad = |why: &str| {
        FlumenError::invalid_option(
            "assign",
            format!("{why}; expected JSON like {{\"topicA\":[0,1],\"topicB\":[2,4]}}, got {text}"),
        )
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| bad("not valid JSON"))?;
    let obj = value.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let mut assign = BTreeMap::new();
    for (topic, parts) in obj {
        let parts = parts
            .as_array()
            .ok_or_else(|| bad("partitions must be a list"))?
            .iter()
            .map(|p| {
                p.as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| bad("partitions must be non-negative integers"))
            })
            .collect::<Result<Vec<i32>>>()?;
        assign.insert(topic.clone(), parts);
    }
    if assign.values().all(Vec::is_empty) {
        return Err(bad("no partitions"));
    }
    Ok(assign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Options {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn requires_exactly_one_subscription() {
        let err = SourceConfig::from_options(&opts(&[("kafka.bootstrap.servers", "a:1")]), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("One of the following options must be specified"),
            "{err}"
        );
        let err = SourceConfig::from_options(
            &opts(&[
                ("kafka.bootstrap.servers", "a:1"),
                ("subscribe", "t"),
                ("assign", r#"{"t":[0]}"#),
            ]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("Only one of the following options"), "{err}");
    }

    #[test]
    fn rejects_forbidden_kafka_keys() {
        let err = SourceConfig::from_options(
            &opts(&[
                ("kafka.bootstrap.servers", "a:1"),
                ("subscribe", "t"),
                ("kafka.auto.offset.reset", "earliest"),
            ]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'startingOffsets'"), "{err}");
    }

    #[test]
    fn parses_spark_forms() {
        let c = SourceConfig::from_options(
            &opts(&[
                ("kafka.bootstrap.servers", "a:1"),
                ("assign", r#"{"t":[0,1]}"#),
                ("startingOffsets", r#"{"t":{"0":5,"1":-2}}"#),
                ("maxOffsetsPerTrigger", "100"),
                ("kafka.fetch.wait.max.ms", "5"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(c.subscription.describe(), "Assign[t-0, t-1]");
        assert_eq!(c.max_offsets_per_trigger, Some(100));
        assert_eq!(
            c.client.get("fetch.wait.max.ms").map(String::as_str),
            Some("5")
        );
        let StartingOffsets::Specific(o) = c.starting else {
            panic!()
        };
        assert_eq!(o["t"][&1], -2);
    }
}
