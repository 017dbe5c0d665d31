//! Kafka offsets in Spark's JSON shape: `{"topic":{"0":23,"1":-1}}`.

use std::collections::BTreeMap;

use flumen_engine::{FlumenError, Result};
use serde_json::{Map, Value};

/// Offsets per topic and partition.
pub type PartitionOffsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Spark's JSON for offsets (partition numbers as string keys).
pub fn to_json(offsets: &PartitionOffsets) -> Value {
    let mut topics = Map::new();
    for (topic, partitions) in offsets {
        let mut parts = Map::new();
        for (p, o) in partitions {
            parts.insert(p.to_string(), Value::from(*o));
        }
        topics.insert(topic.clone(), Value::Object(parts));
    }
    Value::Object(topics)
}

/// Parses Spark's offsets JSON; `what` names the option or checkpoint entry for errors.
pub fn from_json(value: &Value, what: &str) -> Result<PartitionOffsets> {
    let bad = |why: String| {
        FlumenError::invalid_option(
            what,
            format!("{why}; expected JSON like {{\"topicA\":{{\"0\":23,\"1\":-1}}}}, got {value}"),
        )
    };
    let Value::Object(topics) = value else {
        return Err(bad("not a JSON object".into()));
    };
    let mut offsets = PartitionOffsets::new();
    for (topic, partitions) in topics {
        let Value::Object(partitions) = partitions else {
            return Err(bad(format!(
                "the value for topic '{topic}' is not an object"
            )));
        };
        let entry = offsets.entry(topic.clone()).or_default();
        for (p, o) in partitions {
            let partition: i32 = p
                .parse()
                .map_err(|_| bad(format!("partition '{p}' of '{topic}' is not a number")))?;
            let offset = o
                .as_i64()
                .ok_or_else(|| bad(format!("offset of {topic}-{p} is not an integer")))?;
            entry.insert(partition, offset);
        }
    }
    Ok(offsets)
}

/// Parses offsets JSON text.
pub fn parse(text: &str, what: &str) -> Result<PartitionOffsets> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        FlumenError::invalid_option(what, format!("is not valid JSON ({e}): {text}"))
    })?;
    from_json(&value, what)
}

/// The offset of `topic`-`partition` in `offsets`; an error naming the partition when absent
/// (e.g. the broker answered an offset request without it).
pub fn offset_of(offsets: &PartitionOffsets, topic: &str, partition: i32) -> Result<i64> {
    offsets
        .get(topic)
        .and_then(|p| p.get(&partition))
        .copied()
        .ok_or_else(|| FlumenError::Source {
            source_name: format!("Kafka {topic}-{partition}"),
            message: format!(
                "no offset known for partition {topic}-{partition}; the broker did not report it"
            ),
        })
}

/// Number of records between two offset maps (partitions missing from `start` count from 0).
pub fn count_between(start: &PartitionOffsets, end: &PartitionOffsets) -> u64 {
    let mut total = 0u64;
    for (topic, partitions) in end {
        for (p, to) in partitions {
            let from = start
                .get(topic)
                .and_then(|s| s.get(p))
                .copied()
                .unwrap_or(0);
            total += (to - from).max(0) as u64;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_spark_json() {
        let parsed = parse(r#"{"a":{"0":23,"1":-1},"b":{"0":-2}}"#, "startingOffsets").unwrap();
        assert_eq!(parsed["a"][&1], -1);
        assert_eq!(
            to_json(&parsed).to_string(),
            r#"{"a":{"0":23,"1":-1},"b":{"0":-2}}"#
        );
        assert!(parse(r#"{"a":{"x":1}}"#, "startingOffsets").is_err());
    }
}
