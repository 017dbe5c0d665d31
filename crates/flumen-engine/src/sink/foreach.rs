//! `foreach_batch`: hands each micro-batch to user code as a DataFusion `DataFrame`, with its
//! batch id. At-least-once like Spark's: a batch that was not committed is handed over again
//! after a restart, with the same id and the same rows, so code that writes idempotently by batch
//! id gets exactly-once.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;
use datafusion::prelude::SessionContext;

use super::StreamSink;
use crate::error::{FlumenError, Result};
use crate::query::OutputMode;

type BoxFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;
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
        let table = datafusion::datasource::MemTable::try_new(schema.clone(), vec![batches])?;
        let df = self.ctx.read_table(std::sync::Arc::new(table))?;
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
