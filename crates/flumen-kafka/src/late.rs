//! Late rows to a Kafka topic: the rows a stateful operator drops behind the watermark, each as
//! one JSON object (its columns, `late_operator`, `late_watermark`) in a record's value;
//! at-least-once, or exactly-once when the query's Kafka sink is (see
//! [`side_output`](crate::side_output)).

use std::sync::Arc;

use flumen_engine::Result;
use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StructArray};
use flumen_engine::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use flumen_engine::functions::encode_json_column;
use flumen_engine::options::Options;

use crate::side_output::{SideOutputToKafka, ToRecords};

/// Late rows as records whose value is the row as JSON.
pub struct LateRowsAsJson {
    value_schema: SchemaRef,
}

impl ToRecords for LateRowsAsJson {
    const LABEL: &'static str = "LateRows";

    fn record_schema(&self) -> SchemaRef {
        Arc::clone(&self.value_schema)
    }

    fn records(&self, rows: &RecordBatch) -> Result<RecordBatch> {
        let json = encode_json_column(&StructArray::from(rows.clone()))?;
        Ok(RecordBatch::try_new(
            Arc::clone(&self.value_schema),
            vec![Arc::new(json) as ArrayRef],
        )?)
    }
}

/// A [`StreamSink`](flumen_engine::sink::StreamSink) writing late rows as JSON values to one
/// topic.
pub type LateRowsToKafka = SideOutputToKafka<LateRowsAsJson>;

impl LateRowsToKafka {
    /// A sink to `topic` with the query's options (`kafka.bootstrap.servers`, `kafka.*`,
    /// `exactlyOnce`, `transactionalIdPrefix`).
    pub fn new(topic: &str, query_options: &Options) -> Result<Self> {
        let value_schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]));
        Self::with(topic, query_options, LateRowsAsJson { value_schema })
    }
}
