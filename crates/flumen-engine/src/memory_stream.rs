//! [`MemoryStream`]: a replayable in-process source for tests, examples and benchmarks
//! (Spark's `MemoryStream`). Rows added with [`MemoryStream::add_batch`] get consecutive
//! offsets; a query reads them like any other source, checkpoints included.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use serde_json::{Value, json};

use crate::error::{FlumenError, Result};
use crate::source::{ReadLimit, SourceOffset, SourceReader, StreamSource};

/// An in-memory stream of record batches. Offsets count rows: `{"rows": N}`.
#[derive(Debug, Clone)]
pub struct MemoryStream {
    name: String,
    schema: SchemaRef,
    rows: Arc<RwLock<Vec<RecordBatch>>>,
    limit: ReadLimit,
}

impl MemoryStream {
    /// An empty stream of rows with `schema`.
    pub fn new(name: impl Into<String>, schema: SchemaRef) -> Self {
        Self {
            name: name.into(),
            schema,
            rows: Arc::new(RwLock::new(Vec::new())),
            limit: ReadLimit::All,
        }
    }

    /// At most `rows` rows per trigger (like Kafka's `maxOffsetsPerTrigger`).
    #[must_use]
    pub fn with_max_rows_per_trigger(mut self, rows: u64) -> Self {
        self.limit = ReadLimit::MaxRows(rows);
        self
    }

    /// Appends rows; returns the offset after them.
    pub fn add_batch(&self, batch: RecordBatch) -> Result<u64> {
        if batch.schema() != self.schema {
            return Err(FlumenError::Source {
                source_name: self.description(),
                message: format!(
                    "batch schema {} does not match the stream's schema {}",
                    batch.schema(),
                    self.schema
                ),
            });
        }
        let mut rows = self
            .rows
            .write()
            .map_err(|_| FlumenError::IllegalState("memory stream lock poisoned".into()))?;
        rows.push(batch);
        Ok(rows.iter().map(|b| b.num_rows() as u64).sum())
    }

    fn total_rows(&self) -> u64 {
        self.rows
            .read()
            .map(|r| r.iter().map(|b| b.num_rows() as u64).sum())
            .unwrap_or(0)
    }
}

fn rows_of(offset: &SourceOffset) -> Result<u64> {
    offset
        .get("rows")
        .and_then(Value::as_u64)
        .ok_or_else(|| FlumenError::Source {
            source_name: "MemoryStream".into(),
            message: format!("offset {offset} is not of the form {{\"rows\":N}}"),
        })
}

#[async_trait]
impl StreamSource for MemoryStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn description(&self) -> String {
        format!("MemoryStream[{}]", self.name)
    }

    fn read_limit(&self) -> ReadLimit {
        self.limit
    }

    async fn open(&self) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl SourceReader for MemoryStream {
    async fn initial_offset(&mut self) -> Result<SourceOffset> {
        Ok(json!({"rows": 0}))
    }

    async fn latest_offset(
        &mut self,
        start: &SourceOffset,
        limit: ReadLimit,
        cap: Option<&SourceOffset>,
    ) -> Result<SourceOffset> {
        let start = rows_of(start)?;
        let mut end = self.total_rows();
        if let ReadLimit::MaxRows(n) = limit {
            end = end.min(start + n);
        }
        if let Some(cap) = cap {
            end = end.min(rows_of(cap)?);
        }
        Ok(json!({"rows": end.max(start)}))
    }

    async fn get_batch(
        &mut self,
        start: &SourceOffset,
        end: &SourceOffset,
        projection: Option<&[usize]>,
    ) -> Result<Vec<RecordBatch>> {
        let (start, end) = (rows_of(start)? as usize, rows_of(end)? as usize);
        let rows = self
            .rows
            .read()
            .map_err(|_| FlumenError::IllegalState("memory stream lock poisoned".into()))?;
        let total: usize = rows.iter().map(RecordBatch::num_rows).sum();
        if end > total {
            return Err(FlumenError::Source {
                source_name: self.description(),
                message: format!("offset {end} is beyond the {total} rows added"),
            });
        }
        // Slice the batches overlapping [start, end) without copying rows.
        let mut out = Vec::new();
        let mut first_row = 0;
        for batch in rows.iter() {
            let last_row = first_row + batch.num_rows();
            let from = start.max(first_row);
            let to = end.min(last_row);
            if from < to {
                let slice = batch.slice(from - first_row, to - from);
                out.push(match projection {
                    Some(p) => slice.project(p)?,
                    None => slice,
                });
            }
            first_row = last_row;
        }
        Ok(out)
    }

    fn count_between(&self, start: &SourceOffset, end: &SourceOffset) -> Option<u64> {
        Some(rows_of(end).ok()? - rows_of(start).ok()?)
    }
}
