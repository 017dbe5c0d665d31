//! The memory sink: results kept in a table named after the query, readable with
//! `session.sql("SELECT * FROM <query name>")` while the query runs and after it stops.
//!
//! Idempotent per batch id, as Spark's `MemorySink`: a batch id at or below the last one written
//! is skipped, so a batch re-run after a restart in the same session adds nothing twice.
//! Complete mode replaces the content each batch; append and update append.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use super::StreamSink;
use crate::error::{FlumenError, Result};
use crate::modes::OutputMode;

#[derive(Debug, Default)]
struct TableState {
    batches: Vec<RecordBatch>,
    last_batch_id: Option<u64>,
}

/// A table whose rows a memory sink writes; registered in the session under the query name.
#[derive(Debug)]
pub struct MemoryTable {
    schema: SchemaRef,
    state: RwLock<TableState>,
}

impl MemoryTable {
    /// An empty table with `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            state: RwLock::new(TableState::default()),
        }
    }

    /// The id of the last batch written, if any.
    pub fn last_batch_id(&self) -> Option<u64> {
        self.state.read().ok().and_then(|s| s.last_batch_id)
    }

    /// A snapshot of the rows.
    pub fn batches(&self) -> Vec<RecordBatch> {
        self.state
            .read()
            .map(|s| s.batches.clone())
            .unwrap_or_default()
    }

    /// Writes batch `batch_id`; returns false when it was skipped as already written.
    fn write(&self, batch_id: u64, batches: Vec<RecordBatch>, replace: bool) -> Result<bool> {
        let mut state = self
            .state
            .write()
            .map_err(|_| FlumenError::IllegalState("memory table lock poisoned".into()))?;
        if state.last_batch_id.is_some_and(|last| batch_id <= last) {
            return Ok(false);
        }
        if replace {
            state.batches.clear();
        }
        state
            .batches
            .extend(batches.into_iter().filter(|b| b.num_rows() > 0));
        state.last_batch_id = Some(batch_id);
        Ok(true)
    }
}

#[async_trait]
impl TableProvider for MemoryTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let batches = self.batches();
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}

/// Writes a query's results to a [`MemoryTable`] in the session.
#[derive(Debug)]
pub struct MemorySink {
    name: String,
    table: Arc<MemoryTable>,
}

impl MemorySink {
    /// A sink writing to the table `name` of `ctx`, with the query's output `schema`.
    ///
    /// A memory table of that name with the same schema, left by an earlier run of the query in
    /// this session, is reused so that a re-run batch is skipped; otherwise a new table replaces
    /// whatever had the name.
    pub async fn register(ctx: &SessionContext, name: &str, schema: SchemaRef) -> Result<Self> {
        if let Ok(provider) = ctx.table_provider(name).await
            && provider.schema() == schema
        {
            let any: Arc<dyn std::any::Any + Send + Sync> = provider;
            if let Ok(table) = any.downcast::<MemoryTable>() {
                return Ok(Self {
                    name: name.to_string(),
                    table,
                });
            }
        }
        let table = Arc::new(MemoryTable::new(schema));
        ctx.deregister_table(name)?;
        ctx.register_table(name, Arc::clone(&table) as Arc<dyn TableProvider>)?;
        Ok(Self {
            name: name.to_string(),
            table,
        })
    }

    /// The table this sink writes.
    pub fn table(&self) -> &Arc<MemoryTable> {
        &self.table
    }
}

#[async_trait]
impl StreamSink for MemorySink {
    fn description(&self) -> String {
        format!("MemorySink[{}]", self.name)
    }

    fn allows_temporary_checkpoint(&self) -> bool {
        true
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        mode: OutputMode,
    ) -> Result<()> {
        if !self
            .table
            .write(batch_id, batches, mode == OutputMode::Complete)?
        {
            tracing::info!(batch_id, table = %self.name, "skipping already committed batch");
        }
        Ok(())
    }
}
