//! `/metrics`: the session's queries in Prometheus' text exposition format (version 0.0.4).
//!
//! Every metric is named `flumen_...` and labelled with `query_name` (empty for an unnamed query)
//! and `query_id` (stable across restarts; when a query was restarted in the session, its latest
//! run is reported). Counters count from the run's start as far as the server saw it: batches of
//! runs older than the server are included as far as the query still held their progress (its
//! last 100 reports). Kafka lag is per topic and partition, from the last report's
//! `latestOffset` minus its `endOffset`.

use std::collections::BTreeMap;
use std::fmt::Write;

use flumen_engine::{StreamSession, StreamingQuery, StreamingQueryProgress};
use serde_json::Value;

use crate::history::{DURATION_BUCKETS, History, Totals, operator_names};

/// The `Content-Type` of the exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family: HELP, TYPE, then its samples (never interleaved with another family).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<String>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        self.add_suffixed("", labels, value);
    }

    fn add_suffixed(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) {
        self.samples.push(format!(
            "{}{suffix}{} {}",
            self.name,
            format_labels(labels),
            format_value(value)
        ));
    }
}

/// `{a="x",b="y"}` with Prometheus' escapes, or nothing without labels.
fn format_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        value.to_string()
    }
}

/// The latest run of each query id, in the order the queries first started.
fn latest_runs(session: &StreamSession) -> Vec<StreamingQuery> {
    let mut order: Vec<String> = Vec::new();
    let mut latest: BTreeMap<String, StreamingQuery> = BTreeMap::new();
    for query in session.queries() {
        if !latest.contains_key(query.id()) {
            order.push(query.id().to_string());
        }
        latest.insert(query.id().to_string(), query);
    }
    order.iter().filter_map(|id| latest.remove(id)).collect()
}

/// Lag per (topic, partition) from a source report's `latestOffset` and `endOffset`, when both
/// are Kafka-shaped (`{"topic":{"partition":offset}}`).
pub(crate) fn partition_lag(latest: &Value, end: &Value) -> Vec<(String, String, i64)> {
    let (Some(latest), Some(end)) = (latest.as_object(), end.as_object()) else {
        return Vec::new();
    };
    let mut lags = Vec::new();
    for (topic, partitions) in latest {
        let Some(partitions) = partitions.as_object() else {
            continue;
        };
        for (partition, offset) in partitions {
            let Some(latest) = offset.as_i64() else {
                continue;
            };
            let done = end
                .get(topic)
                .and_then(|t| t.get(partition))
                .and_then(Value::as_i64)
                .unwrap_or(latest);
            lags.push((topic.clone(), partition.clone(), (latest - done).max(0)));
        }
    }
    lags
}

/// Milliseconds since the epoch of an ISO-8601 timestamp.
fn epoch_seconds(timestamp: &str) -> Option<f64> {
    chrono::DateTime::parse_from_rfc3339(timestamp)
        .ok()
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// What the exposition needs of one query run.
struct QueryView {
    name: String,
    id: String,
    active: bool,
    failed: bool,
    totals: Totals,
    last: Option<StreamingQueryProgress>,
}

/// The whole exposition.
pub(crate) fn render(session: &StreamSession, history: &History) -> String {
    let queries: Vec<QueryView> = latest_runs(session)
        .into_iter()
        .map(|q| QueryView {
            name: q.name().unwrap_or("").to_string(),
            id: q.id().to_string(),
            active: q.is_active(),
            failed: q.exception().is_some(),
            totals: history.totals(q.run_id()),
            last: q.last_progress(),
        })
        .collect();
    render_queries(&queries, session.dropped_listener_events())
}

fn render_queries(queries: &[QueryView], dropped_events: u64) -> String {
    let mut active_count = Family::new(
        "flumen_queries_active",
        "gauge",
        "Streaming queries of the session that are running.",
    );
    let mut active = Family::new(
        "flumen_query_active",
        "gauge",
        "1 while the query runs, 0 once it has stopped or failed.",
    );
    let mut failed = Family::new(
        "flumen_query_failed",
        "gauge",
        "1 if the query ended with an error (see /api/queries for it).",
    );
    let mut batches = Family::new(
        "flumen_query_batches_total",
        "counter",
        "Micro-batches run (triggers that found data).",
    );
    let mut input = Family::new(
        "flumen_query_input_rows_total",
        "counter",
        "Rows read from the sources.",
    );
    let mut output = Family::new(
        "flumen_query_output_rows_total",
        "counter",
        "Rows written to the sink.",
    );
    let mut last_batch = Family::new(
        "flumen_query_last_batch_id",
        "gauge",
        "Id of the latest micro-batch.",
    );
    let mut input_rate = Family::new(
        "flumen_query_input_rows_per_second",
        "gauge",
        "Input rate of the latest trigger: its rows over the time since the previous trigger.",
    );
    let mut processed_rate = Family::new(
        "flumen_query_processed_rows_per_second",
        "gauge",
        "Processing rate of the latest trigger: its rows over its own duration.",
    );
    let mut duration = Family::new(
        "flumen_query_batch_duration_seconds",
        "histogram",
        "Wall time of each micro-batch (triggerExecution).",
    );
    let mut phase_total = Family::new(
        "flumen_query_phase_duration_seconds_total",
        "counter",
        "Time spent per phase of the micro-batches (Spark's durationMs names).",
    );
    let mut phase_last = Family::new(
        "flumen_query_last_batch_phase_duration_seconds",
        "gauge",
        "Time per phase of the latest trigger.",
    );
    let mut lag = Family::new(
        "flumen_source_offsets_behind_latest",
        "gauge",
        "Kafka records not yet read, per topic and partition (latest offset minus the end of the latest batch).",
    );
    let mut watermark = Family::new(
        "flumen_query_watermark_seconds",
        "gauge",
        "The query's event-time watermark, seconds since the Unix epoch (queries with a watermark only).",
    );
    let mut state_rows = Family::new(
        "flumen_state_rows",
        "gauge",
        "Rows (keys) held by a stateful operator.",
    );
    let mut state_bytes = Family::new(
        "flumen_state_memory_used_bytes",
        "gauge",
        "Memory held by a stateful operator's state, bytes.",
    );
    let mut state_dropped = Family::new(
        "flumen_state_rows_dropped_by_watermark_total",
        "counter",
        "Input rows a stateful operator ignored because they were behind the watermark.",
    );
    let mut dropped = Family::new(
        "flumen_listener_events_dropped_total",
        "counter",
        "Listener events the session dropped because a listener fell behind.",
    );

    let mut running = 0u64;
    for query in queries {
        let totals = &query.totals;
        let l = [
            ("query_name", query.name.as_str()),
            ("query_id", query.id.as_str()),
        ];
        running += u64::from(query.active);
        active.add(&l, f64::from(u8::from(query.active)));
        failed.add(&l, f64::from(u8::from(query.failed)));
        batches.add(&l, totals.batches as f64);
        input.add(&l, totals.input_rows as f64);
        output.add(&l, totals.output_rows as f64);

        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += totals.duration_buckets[i];
            let le = format_value(*le);
            duration.add_suffixed("_bucket", &[l[0], l[1], ("le", &le)], cumulative as f64);
        }
        cumulative += totals.duration_buckets[DURATION_BUCKETS.len()];
        duration.add_suffixed("_bucket", &[l[0], l[1], ("le", "+Inf")], cumulative as f64);
        duration.add_suffixed("_sum", &l, totals.duration_sum_seconds);
        duration.add_suffixed("_count", &l, cumulative as f64);
        for (phase, ms) in &totals.phase_ms {
            phase_total.add(&[l[0], l[1], ("phase", phase)], *ms as f64 / 1000.0);
        }
        for (operator, rows) in &totals.dropped_by_watermark {
            state_dropped.add(&[l[0], l[1], ("operator", operator)], *rows as f64);
        }

        let Some(last) = &query.last else {
            continue;
        };
        last_batch.add(&l, last.batch_id as f64);
        input_rate.add(&l, last.input_rows_per_second.unwrap_or(0.0));
        processed_rate.add(&l, last.processed_rows_per_second.unwrap_or(0.0));
        for (phase, ms) in &last.duration_ms {
            phase_last.add(&[l[0], l[1], ("phase", phase)], *ms as f64 / 1000.0);
        }
        for source in &last.sources {
            for (topic, partition, behind) in
                partition_lag(&source.latest_offset, &source.end_offset)
            {
                lag.add(
                    &[
                        l[0],
                        l[1],
                        ("source", &source.description),
                        ("topic", &topic),
                        ("partition", &partition),
                    ],
                    behind as f64,
                );
            }
        }
        if let Some(seconds) = last
            .event_time
            .get("watermark")
            .and_then(|t| epoch_seconds(t))
        {
            watermark.add(&l, seconds);
        }
        for (operator, op) in operator_names(last) {
            let labels = [l[0], l[1], ("operator", operator.as_str())];
            state_rows.add(&labels, op.num_rows_total as f64);
            state_bytes.add(&labels, op.memory_used_bytes as f64);
        }
    }
    active_count.add(&[], running as f64);
    dropped.add(&[], dropped_events as f64);

    let mut out = String::new();
    for family in [
        active_count,
        active,
        failed,
        batches,
        input,
        output,
        last_batch,
        input_rate,
        processed_rate,
        duration,
        phase_total,
        phase_last,
        lag,
        watermark,
        state_rows,
        state_bytes,
        state_dropped,
        dropped,
    ] {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for sample in family.samples {
            out.push_str(&sample);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lag_per_partition_from_latest_and_end_offsets() {
        let latest = json!({"t": {"0": 10, "1": 5}, "u": {"0": 3}});
        let end = json!({"t": {"0": 4, "1": 5}});
        assert_eq!(
            partition_lag(&latest, &end),
            [
                ("t".to_string(), "0".to_string(), 6),
                ("t".to_string(), "1".to_string(), 0),
                ("u".to_string(), "0".to_string(), 0),
            ]
        );
        assert!(partition_lag(&json!({"rows": 3}), &json!({"rows": 1})).is_empty());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            format_labels(&[("a", "x\"y\\z\nw"), ("b", "")]),
            r#"{a="x\"y\\z\nw",b=""}"#
        );
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(2.5), "2.5");
        assert_eq!(format_value(3.0), "3");
    }

    #[test]
    fn watermark_as_epoch_seconds() {
        assert_eq!(
            epoch_seconds("2026-01-01T00:00:10.500Z"),
            Some(1_767_225_610.5)
        );
        assert_eq!(epoch_seconds("not a time"), None);
    }
}

#[cfg(test)]
mod golden {
    use std::collections::BTreeMap;

    use flumen_engine::{SinkProgress, SourceProgress, StateOperatorProgress};
    use serde_json::json;

    use super::*;

    fn stateful_progress() -> StreamingQueryProgress {
        StreamingQueryProgress {
            id: "q-1".into(),
            run_id: "r-1".into(),
            name: Some("counts".into()),
            timestamp: "2026-01-01T00:00:05.000Z".into(),
            batch_id: 7,
            batch_duration: 40,
            num_input_rows: 12,
            input_rows_per_second: Some(6.0),
            processed_rows_per_second: Some(300.0),
            duration_ms: BTreeMap::from([
                ("addBatch".to_string(), 30),
                ("triggerExecution".to_string(), 40),
            ]),
            event_time: BTreeMap::from([(
                "watermark".to_string(),
                "2026-01-01T00:00:00.000Z".to_string(),
            )]),
            state_operators: vec![StateOperatorProgress {
                operator_name: "stateStoreSave".into(),
                num_rows_total: 4,
                memory_used_bytes: 2048,
                num_rows_dropped_by_watermark: 3,
                ..Default::default()
            }],
            sources: vec![SourceProgress {
                description: "KafkaV2[Subscribe[t]]".into(),
                start_offset: json!({"t": {"0": 0, "1": 0}}),
                end_offset: json!({"t": {"0": 8, "1": 4}}),
                latest_offset: json!({"t": {"0": 10, "1": 4}}),
                num_input_rows: 12,
                input_rows_per_second: Some(6.0),
                processed_rows_per_second: Some(300.0),
                metrics: serde_json::Map::new(),
            }],
            sink: SinkProgress {
                description: "MemorySink[counts]".into(),
                num_output_rows: 2,
            },
        }
    }

    #[test]
    fn exposition_of_a_stateful_kafka_query() {
        let progress = stateful_progress();
        let mut totals = Totals::default();
        totals.add(&progress);
        let text = render_queries(
            &[QueryView {
                name: "counts".into(),
                id: "q-1".into(),
                active: true,
                failed: false,
                totals,
                last: Some(progress),
            }],
            0,
        );
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let l = r#"query_name="counts",query_id="q-1""#;
        for expected in [
            "flumen_queries_active 1".to_string(),
            format!("flumen_query_active{{{l}}} 1"),
            format!("flumen_query_failed{{{l}}} 0"),
            format!("flumen_query_batches_total{{{l}}} 1"),
            format!("flumen_query_input_rows_total{{{l}}} 12"),
            format!("flumen_query_output_rows_total{{{l}}} 2"),
            format!("flumen_query_last_batch_id{{{l}}} 7"),
            format!("flumen_query_input_rows_per_second{{{l}}} 6"),
            format!("flumen_query_processed_rows_per_second{{{l}}} 300"),
            format!("flumen_query_batch_duration_seconds_bucket{{{l},le=\"0.025\"}} 0"),
            format!("flumen_query_batch_duration_seconds_bucket{{{l},le=\"0.05\"}} 1"),
            format!("flumen_query_batch_duration_seconds_bucket{{{l},le=\"+Inf\"}} 1"),
            format!("flumen_query_batch_duration_seconds_sum{{{l}}} 0.04"),
            format!("flumen_query_batch_duration_seconds_count{{{l}}} 1"),
            format!("flumen_query_phase_duration_seconds_total{{{l},phase=\"addBatch\"}} 0.03"),
            format!(
                "flumen_query_last_batch_phase_duration_seconds{{{l},phase=\"triggerExecution\"}} 0.04"
            ),
            format!(
                "flumen_source_offsets_behind_latest{{{l},source=\"KafkaV2[Subscribe[t]]\",topic=\"t\",partition=\"0\"}} 2"
            ),
            format!(
                "flumen_source_offsets_behind_latest{{{l},source=\"KafkaV2[Subscribe[t]]\",topic=\"t\",partition=\"1\"}} 0"
            ),
            format!("flumen_query_watermark_seconds{{{l}}} 1767225600"),
            format!("flumen_state_rows{{{l},operator=\"stateStoreSave\"}} 4"),
            format!("flumen_state_memory_used_bytes{{{l},operator=\"stateStoreSave\"}} 2048"),
            format!(
                "flumen_state_rows_dropped_by_watermark_total{{{l},operator=\"stateStoreSave\"}} 3"
            ),
            "flumen_listener_events_dropped_total 0".to_string(),
        ] {
            assert!(
                samples.contains(&expected.as_str()),
                "missing {expected} in\n{text}"
            );
        }
        // Every family: HELP then TYPE, then only its own samples.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                family = rest.split(' ').next().unwrap_or_default();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(rest.starts_with(family), "{line}");
            } else {
                assert!(
                    line.starts_with(family),
                    "{line} outside its family {family}"
                );
            }
        }
    }
}
