//! A query's side outputs (late rows, dead letters) written to a Kafka topic.
//!
//! Each side output turns its rows into Kafka records its own way ([`ToRecords`]); the records
//! go through a [`KafkaSink`] with the query's brokers and `kafka.*` options, so they are
//! at-least-once, or exactly-once when the query's Kafka sink is (the side topic is then its own
//! transaction marker topic, so its producer has a transactional id of its own).

use async_trait::async_trait;
use flumen_engine::datafusion::arrow::array::RecordBatch;
use flumen_engine::datafusion::arrow::datatypes::SchemaRef;
use flumen_engine::options::Options;
use flumen_engine::sink::{SinkContext, StreamSink};
use flumen_engine::{OutputMode, Result};

use crate::sink::KafkaSink;

/// How a side output's rows become Kafka records.
pub trait ToRecords: Send + Sync + 'static {
    /// What the sink is called in progress reports (`LateRows`, `DeadLetters`).
    const LABEL: &'static str;

    /// The schema of the records: Kafka sink columns (`key`, `value`, `headers`, ...).
    fn record_schema(&self) -> SchemaRef;

    /// The records of one batch of side-output rows.
    fn records(&self, rows: &RecordBatch) -> Result<RecordBatch>;
}

/// A [`StreamSink`] writing a side output's rows, as records, to one topic.
pub struct SideOutputToKafka<T: ToRecords> {
    topic: String,
    to_records: T,
    inner: KafkaSink,
}

impl<T: ToRecords> std::fmt::Debug for SideOutputToKafka<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(T::LABEL)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<T: ToRecords> SideOutputToKafka<T> {
    /// A sink to `topic` with the query's options (`kafka.bootstrap.servers`, `kafka.*`,
    /// `exactlyOnce`, `transactionalIdPrefix`).
    pub(crate) fn with(topic: &str, query_options: &Options, to_records: T) -> Result<Self> {
        let mut options = query_options.clone();
        options.set("topic", topic);
        options.remove(crate::transactional::TRANSACTION_MARKER_TOPIC);
        Ok(Self {
            topic: topic.to_string(),
            inner: KafkaSink::new(&to_records.record_schema(), &options)?,
            to_records,
        })
    }
}

#[async_trait]
impl<T: ToRecords> StreamSink for SideOutputToKafka<T> {
    fn description(&self) -> String {
        format!("{}[KafkaSink[{}]]", T::LABEL, self.topic)
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
        let records = batches
            .iter()
            .map(|rows| self.to_records.records(rows))
            .collect::<Result<Vec<_>>>()?;
        let schema = self.to_records.record_schema();
        self.inner
            .add_batch(batch_id, &schema, records, OutputMode::Append)
            .await
    }
}
