//! `foreach_batch`: hands each micro-batch to user code as a DataFusion `DataFrame`, with its
//! batch id. At-least-once like Spark's: a batch that was not committed is handed over again
//! after a restart, with the same id and the same rows, so code that writes idempotently by batch
//! id gets exactly-once.
//!
//! The frame scans the batch's rows as one partition that DataFusion does not split (a memory
//! table would be re-split and its rows reordered by size), so `collect()` returns them in the
//! order the query wrote them; operations the callback adds follow DataFusion's usual rules.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::dataframe::DataFrame;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;

use super::StreamSink;
use crate::error::{FlumenError, Result};
use crate::modes::OutputMode;

type BoxFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A micro-batch's rows, replayable (the callback may read its frame more than once).
#[derive(Debug)]
struct OrderedRows {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl PartitionStream for OrderedRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = self.batches.clone();
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches.into_iter().map(Ok)),
        ))
    }
}
type BatchFn = Box<dyn FnMut(DataFrame, u64) -> BoxFuture + Send>;

/// A sink that calls a closure with each batch.
pub struct ForeachBatchSink {
    ctx: SessionContext,
    callback: std::sync::Mutex<BatchFn>,
}

impl std::fmt::Debug for ForeachBatchSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForeachBatchSink")
    }
}

impl ForeachBatchSink {
    /// A sink calling `callback(batch, batch_id)` for each micro-batch.
    pub fn new<F, Fut>(ctx: SessionContext, mut callback: F) -> Self
    where
        F: FnMut(DataFrame, u64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        Self {
            ctx,
            callback: std::sync::Mutex::new(Box::new(move |df, id| Box::pin(callback(df, id)))),
        }
    }
}

#[async_trait]
impl StreamSink for ForeachBatchSink {
    fn description(&self) -> String {
        "ForeachBatchSink".to_string()
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        _mode: OutputMode,
    ) -> Result<()> {
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(schema.clone())]
        } else {
            batches
        };
        let rows = Arc::new(OrderedRows {
            schema: schema.clone(),
            batches,
        });
        let table = StreamingTable::try_new(schema.clone(), vec![rows])?;
        let df = self.ctx.read_table(Arc::new(table))?;
        let future = {
            let mut callback = self
                .callback
                .lock()
                .map_err(|_| FlumenError::IllegalState("foreach_batch callback poisoned".into()))?;
            (callback)(df, batch_id)
        };
        future.await.map_err(|e| FlumenError::Sink {
            sink: "ForeachBatchSink".into(),
            message: format!("batch {batch_id} failed in user code: {e}"),
        })
    }
}
