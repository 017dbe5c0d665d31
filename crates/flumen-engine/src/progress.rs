//! Progress reports, shaped and named like Spark's `StreamingQueryProgress` so tools that read
//! Spark's JSON read Flumen's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a query reports after each trigger (Spark's `StreamingQueryProgress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingQueryProgress {
    /// The query id (stable across restarts).
    pub id: String,
    /// The id of this run.
    pub run_id: String,
    /// The query name, if any.
    pub name: Option<String>,
    /// When the trigger started, ISO-8601 UTC.
    pub timestamp: String,
    /// The batch id (does not advance for a trigger that found no data).
    pub batch_id: u64,
    /// Wall time of the whole trigger, ms.
    pub batch_duration: u64,
    /// Rows read in this trigger, over all sources.
    pub num_input_rows: u64,
    /// Rows per second since the previous trigger; omitted when undefined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_rows_per_second: Option<f64>,
    /// Rows per second of this trigger's processing time; omitted when undefined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_rows_per_second: Option<f64>,
    /// Time per phase, ms: `latestOffset`, `walCommit`, `getBatch`, `queryPlanning`,
    /// `addBatch`, `commitOffsets`, `triggerExecution`.
    pub duration_ms: BTreeMap<String, u64>,
    /// Event-time statistics (`watermark`, `min`, `max`, `avg`); empty without event time.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub event_time: BTreeMap<String, String>,
    /// Stateful operators (none for stateless queries).
    #[serde(default)]
    pub state_operators: Vec<StateOperatorProgress>,
    /// One entry per source.
    pub sources: Vec<SourceProgress>,
    /// The sink.
    pub sink: SinkProgress,
}

impl StreamingQueryProgress {
    /// The report as Spark-shaped JSON text.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The report as indented JSON text (Spark's `prettyJson`).
    pub fn pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Progress of one stateful operator (Spark's `StateOperatorProgress`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateOperatorProgress {
    /// E.g. `stateStoreSave` (aggregation) or `dedupe`.
    pub operator_name: String,
    /// Rows (keys) held in state after the batch.
    pub num_rows_total: u64,
    /// Rows (keys) created or changed by the batch.
    pub num_rows_updated: u64,
    /// Time spent updating state, ms.
    pub all_updates_time_ms: u64,
    /// Rows (keys) evicted by the watermark in this batch.
    pub num_rows_removed: u64,
    /// Time spent evicting, ms.
    pub all_removals_time_ms: u64,
    /// Time spent writing the state to the checkpoint, ms.
    pub commit_time_ms: u64,
    /// Bytes of memory the state holds (keys, accumulators and index).
    pub memory_used_bytes: u64,
    /// Input rows ignored because they were behind the watermark.
    pub num_rows_dropped_by_watermark: u64,
    /// Key partitions the operator's state is split into (the checkpoint's
    /// `flumen.state.partitions`; Spark's `spark.sql.shuffle.partitions`).
    pub num_shuffle_partitions: u64,
    /// State stores of the operator: one per key partition.
    pub num_state_store_instances: u64,
    /// Store-specific metrics, e.g. `stateOnCurrentVersionSizeBytes`.
    #[serde(default)]
    pub custom_metrics: BTreeMap<String, u64>,
    /// What is wrong with the operator's configuration while the query runs (Flumen's own
    /// field, omitted when empty), e.g. a stream-stream join whose state never shrinks.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub warnings: Vec<String>,
}

/// Progress of one source (Spark's `SourceProgress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    /// E.g. `KafkaV2[Subscribe[demo-topic]]`.
    pub description: String,
    /// Where the batch started (null for the first batch of a new query, as Spark).
    pub start_offset: Value,
    /// Where it ended (exclusive).
    pub end_offset: Value,
    /// The latest offset the source reported.
    pub latest_offset: Value,
    /// Rows read from this source.
    pub num_input_rows: u64,
    /// See [`StreamingQueryProgress::input_rows_per_second`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_rows_per_second: Option<f64>,
    /// See [`StreamingQueryProgress::processed_rows_per_second`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processed_rows_per_second: Option<f64>,
    /// Source metrics, e.g. Kafka's `minOffsetsBehindLatest`.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty", default)]
    pub metrics: serde_json::Map<String, Value>,
}

/// Progress of the sink (Spark's `SinkProgress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkProgress {
    /// E.g. `ConsoleSink`.
    pub description: String,
    /// Rows written in this trigger.
    pub num_output_rows: i64,
}

/// What a query is doing now (Spark's `StreamingQueryStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingQueryStatus {
    /// E.g. `Waiting for data to arrive`.
    pub message: String,
    /// Whether the last trigger found data.
    pub is_data_available: bool,
    /// Whether a trigger is running.
    pub is_trigger_active: bool,
}

impl StreamingQueryStatus {
    pub(crate) fn new(message: &str, data: bool, active: bool) -> Self {
        Self {
            message: message.to_string(),
            is_data_available: data,
            is_trigger_active: active,
        }
    }
}

/// Rows per second, or `None` when the duration is zero (Spark omits NaN/Infinity).
pub(crate) fn rate(rows: u64, millis: f64) -> Option<f64> {
    (millis > 0.0).then(|| rows as f64 * 1000.0 / millis)
}
