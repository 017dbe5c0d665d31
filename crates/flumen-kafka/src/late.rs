//! Late rows to a Kafka topic: the rows a stateful operator drops behind the watermark, each as
//! one JSON object (its columns, `late_operator`, `late_watermark`) in a record's value.
//!
//! The records go through a [`KafkaSink`] with the query's `kafka.*` options, so they are
//! at-least-once, or exactly-once when the query's Kafka sink is (the late topic is then its own
//! transaction marker topic, so its producer has its own transactional id).

use std::sync::Arc;

use async_trait::async_trait;
use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StructArray};
use flumen_engine::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use flumen_engine::functions::encode_json_column;
use flumen_engine::options::Options;
use flumen_engine::sink::{SinkContext, StreamSink};
use flumen_engine::{OutputMode, Result};

use crate::sink::{KafkaSink, side_output_sink};

/// A [`StreamSink`] writing late rows as JSON values to one topic.
pub struct LateRowsToKafka {
    topic: String,
    value_schema: SchemaRef,
    inner: KafkaSink,
}

impl std::fmt::Debug for LateRowsToKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateRowsToKafka")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl LateRowsToKafka {
    /// A sink to `topic` with the query's options (`kafka.bootstrap.servers`, `kafka.*`,
    /// `exactlyOnce`, `transactionalIdPrefix`).
    pub fn new(topic: &str, query_options: &Options) -> Result<Self> {
        let value_schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]));
        Ok(Self {
            topic: topic.to_string(),
            inner: side_output_sink(topic, query_options, &value_schema)?,
            value_schema,
        })
    }
}

#[async_trait]
impl StreamSink for LateRowsToKafka {
    fn description(&self) -> String {
        format!("LateRows[KafkaSink[{}]]", self.topic)
    }

    async fn open(&mut self, context: &SinkContext) -> Result<()> {
        self.inner.open(context).await
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        _mode: OutputMode,
    ) -> Result<()> {
        let values = batches
            .iter()
            .map(|batch| {
                let json = encode_json_column(&StructArray::from(batch.clone()))?;
                Ok(RecordBatch::try_new(
                    Arc::clone(&self.value_schema),
                    vec![Arc::new(json) as ArrayRef],
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        self.inner
            .add_batch(batch_id, &self.value_schema, values, OutputMode::Append)
            .await
    }
}
