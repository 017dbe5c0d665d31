//! Streaming sinks: the contract and the built-in console, memory and `foreach_batch` sinks.
//!
//! A sink receives each micro-batch's rows with the batch id. Because a batch that was not
//! committed is re-run after a restart with the same id and the same rows, a sink that skips
//! batch ids it has already written (memory) or writes idempotently is exactly-once end to end.

pub(crate) mod console;
mod foreach;
mod memory;

use std::fmt::Debug;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

pub use console::{ConsoleOptions, ConsoleSink, format_batches};
pub use foreach::ForeachBatchSink;
pub use memory::{MemorySink, MemoryTable};

use crate::error::Result;
use crate::modes::OutputMode;

/// What a sink learns about its query when the query starts (or restarts on its checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkContext {
    /// The query's id: kept in the checkpoint, so the same across restarts.
    pub query_id: String,
    /// This run's id: new on every start.
    pub run_id: String,
    /// The last batch whose `commits/N` is written, if any: batches after it may be re-run.
    pub last_committed_batch: Option<u64>,
    /// The last batch whose `offsets/N` is written, if any: the only batch after
    /// `last_committed_batch` that can be re-run (a sink's log that goes further was written
    /// by someone else).
    pub last_planned_batch: Option<u64>,
}

impl SinkContext {
    /// A context for a query `query_id` in run `run_id`.
    pub fn new(
        query_id: impl Into<String>,
        run_id: impl Into<String>,
        last_committed_batch: Option<u64>,
    ) -> Self {
        Self {
            query_id: query_id.into(),
            run_id: run_id.into(),
            last_committed_batch,
            last_planned_batch: last_committed_batch,
        }
    }

    /// The same context, with the last batch whose offsets are logged.
    pub fn with_last_planned_batch(mut self, last_planned_batch: Option<u64>) -> Self {
        self.last_planned_batch = last_planned_batch;
        self
    }
}

/// Where a streaming query's results go.
#[async_trait]
pub trait StreamSink: Debug + Send + Sync {
    /// A description for progress reports, e.g. `ConsoleSink` or `KafkaSink[topic]`.
    fn description(&self) -> String;

    /// Checks the query's output schema and mode at `start()`, before any data is read.
    fn validate(&self, schema: &SchemaRef, mode: OutputMode) -> Result<()> {
        let _ = (schema, mode);
        Ok(())
    }

    /// Whether the sink can run without a checkpoint location (Spark: console and memory only).
    fn allows_temporary_checkpoint(&self) -> bool {
        false
    }

    /// Called once when the query's run starts, before any batch (including the re-run of an
    /// uncommitted one): a transactional sink sets up and recovers here.
    async fn open(&mut self, context: &SinkContext) -> Result<()> {
        let _ = context;
        Ok(())
    }

    /// Writes batch `batch_id`. Called once per batch, in order, possibly again for the last
    /// batch after a restart.
    async fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        mode: OutputMode,
    ) -> Result<()>;
}
