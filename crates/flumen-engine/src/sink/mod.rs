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
