//! Streaming deduplication: `drop_duplicates(columns)` and `drop_duplicates_within_watermark`.
//!
//! The first row of each key passes; later rows with a key already seen are dropped. The keys
//! seen live in a [`StateStore`]. With a watermark whose column is among the keys, keys behind
//! the watermark are evicted and rows behind it dropped (Spark's `dropDuplicates`). Within the
//! watermark, a key is remembered until the watermark passes its first row's event time plus
//! the delay, whatever the key columns are (Spark's `dropDuplicatesWithinWatermark`).

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, TimestampMicrosecondArray,
    UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::Rows;
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};

use super::late::LateRows;
use super::partitions::{self, for_each_partition};
use super::store::StateStore;
use super::windows::event_time_micros;
use super::{
    OperatorHandle, OperatorState, OperatorWatermarks, StatefulOperator, WatermarkSpec,
    account_partitions, commit_partitions, process_whole_input, restore_partitions,
    single_partition_input, single_partition_properties, sum_progress,
};
use crate::error::{FlumenError, Result};
use crate::progress::StateOperatorProgress;

/// Logical node for deduplication (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Deduplicate {
    pub input: LogicalPlan,
    /// Key columns; empty means every column.
    pub keys: Vec<String>,
    pub within_watermark: bool,
}

impl Hash for Deduplicate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.keys.hash(state);
        self.within_watermark.hash(state);
    }
}

impl PartialOrd for Deduplicate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (&self.keys, self.within_watermark).partial_cmp(&(&other.keys, other.within_watermark))
    }
}

impl UserDefinedLogicalNodeCore for Deduplicate {
    fn name(&self) -> &str {
        if self.within_watermark {
            "DeduplicateWithinWatermark"
        } else {
            "Deduplicate"
        }
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: keys=[{}]", self.name(), self.keys.join(", "))
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        Ok(Self {
            input: inputs.pop().unwrap_or_else(|| self.input.clone()),
            keys: self.keys.clone(),
            within_watermark: self.within_watermark,
        })
    }
}

struct Core {
    input_schema: SchemaRef,
    key_indices: Vec<usize>,
    within_watermark: bool,
    /// Event-time column and, within the watermark, the delay (µs).
    event: Option<(usize, i64)>,
    key_schema: SchemaRef,
    value_schema: SchemaRef,
    /// One state per key partition.
    state: Mutex<Vec<OperatorState>>,
    /// Input rows dropped as late, kept for a side output.
    late: LateRows,
}

/// The physical operator.
pub(crate) struct DedupExec {
    core: Arc<Core>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for DedupExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupExec").finish()
    }
}

impl DedupExec {
    /// Plans `node` over `input`; the watermark is added by [`DedupExec::with_watermark`].
    pub fn try_new(node: &Deduplicate, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        Self::build(input, &node.keys, node.within_watermark, &[], &[], false)
    }

    /// `watermarks` are the query's declared watermarks, `event_columns` the input columns
    /// that carry event time (their columns, and the event-time keys of aggregations below).
    fn build(
        input: Arc<dyn ExecutionPlan>,
        keys: &[String],
        within_watermark: bool,
        watermarks: &[WatermarkSpec],
        event_columns: &[String],
        streaming: bool,
    ) -> Result<Self> {
        let input = single_partition_input(input);
        let schema = input.schema();
        let key_indices: Vec<usize> = if keys.is_empty() {
            (0..schema.fields().len()).collect()
        } else {
            keys.iter()
                .map(|k| {
                    schema.index_of(k).map_err(|_| FlumenError::InvalidOption {
                        option: "drop_duplicates".into(),
                        reason: format!(
                            "Cannot resolve column name \"{k}\" among ({})",
                            schema
                                .fields()
                                .iter()
                                .map(|f| f.name().as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
                })
                .collect::<Result<_>>()?
        };
        let event = if within_watermark {
            // The first column carrying event time, with its watermark's delay (an
            // aggregation's window key carries the delay of the watermark it was made under).
            event_columns.iter().find_map(|column| {
                let i = schema.index_of(column).ok()?;
                let delay_ms = watermarks
                    .iter()
                    .find(|w| &w.column == column)
                    .or(watermarks.first())?
                    .delay_ms;
                Some((i, delay_ms.saturating_mul(1000)))
            })
        } else {
            // The first key that carries event time.
            key_indices
                .iter()
                .copied()
                .find(|&i| event_columns.contains(schema.field(i).name()))
                .map(|i| (i, 0))
        };
        if streaming && within_watermark && event.is_none() {
            return Err(FlumenError::Unsupported(
                "dropDuplicatesWithinWatermark is not supported on streaming DataFrames/DataSets without watermark".into(),
            ));
        }
        let key_schema = Arc::new(schema.project(&key_indices)?);
        let value_schema = Arc::new(Schema::new(vec![Field::new(
            "expires_us",
            DataType::Int64,
            true,
        )]));
        let properties = single_partition_properties(input.properties());
        let core = Core {
            input_schema: schema,
            key_indices,
            within_watermark,
            event,
            key_schema,
            value_schema,
            state: Mutex::new(Vec::new()),
            late: LateRows::default(),
        };
        core.set_partitions(1)?;
        Ok(Self {
            core: Arc::new(core),
            input,
            properties,
        })
    }

    /// The same operator, aware of the query's watermark.
    pub fn with_watermark(
        &self,
        watermarks: &[WatermarkSpec],
        event_columns: &[String],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = &self.core.input_schema;
        let keys: Vec<String> = self
            .core
            .key_indices
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect();
        Ok(Arc::new(Self::build(
            Arc::clone(&self.input),
            &keys,
            self.core.within_watermark,
            watermarks,
            event_columns,
            true,
        )?))
    }

    /// The handle the micro-batch loop drives this operator through.
    pub fn handle(&self) -> OperatorHandle {
        Arc::new(DedupHandle(Arc::clone(&self.core)))
    }
}

impl Core {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<OperatorState>>> {
        self.state.lock().map_err(|_| {
            FlumenError::IllegalState("deduplication state poisoned by an earlier panic".into())
        })
    }

    /// Empty state in `partitions` key partitions.
    fn set_partitions(&self, partitions: usize) -> Result<()> {
        let name = if self.within_watermark {
            "dedupeWithinWatermark"
        } else {
            "dedupe"
        };
        let states = (0..partitions.max(1))
            .map(|_| {
                let store =
                    StateStore::new(Arc::clone(&self.key_schema), Arc::clone(&self.value_schema))?;
                Ok(OperatorState::new(store, name))
            })
            .collect::<Result<Vec<_>>>()?;
        *self.lock()? = states;
        Ok(())
    }

    /// Keeps each key's first row (rows behind the watermark dropped), in batch order.
    fn process(&self, input: Vec<RecordBatch>, ctx: &TaskContext) -> Result<RecordBatch> {
        let mut states = self.lock()?;
        let batch = concat_batches(&self.input_schema, &input)?;
        let keys: Vec<ArrayRef> = self
            .key_indices
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let rows = partitions::key_rows(&keys)?;
        let times = match self.event {
            Some((i, _)) => Some(event_time_micros(batch.column(i))?),
            None => None,
        };
        let watermark_us = states
            .first()
            .map_or(0, |s| s.late_events_ms)
            .saturating_mul(1000);
        let count = states.len();
        let mut routed = vec![Vec::new(); count];
        let mut dropped = 0u64;
        let capturing = self.late.capturing();
        let mut late = vec![false; if capturing { batch.num_rows() } else { 0 }];
        for i in 0..batch.num_rows() {
            if let Some(times) = &times
                && times.is_valid(i)
                && times.value(i) <= watermark_us
            {
                dropped += 1;
                if capturing {
                    late[i] = true;
                }
                continue;
            }
            routed[partitions::partition_of(rows.row(i).data(), count)].push(i as u32);
        }
        let stored: usize = states.iter().map(|s| s.store.len()).sum();
        let work = |state: &mut OperatorState, positions: Vec<u32>| {
            self.process_partition(state, &positions, &keys, &rows, times.as_ref())
        };
        let kept = for_each_partition(&mut states, routed, batch.num_rows() + stored, work)?;
        if let Some(first) = states.first_mut() {
            first.metrics.num_rows_dropped_by_watermark = dropped;
        }
        if capturing && dropped > 0 {
            self.late.record(&batch, &BooleanArray::from(late))?;
        }
        account_partitions(states.iter_mut(), ctx, "deduplication")?;
        let mut keep = vec![false; batch.num_rows()];
        for position in kept.into_iter().flatten() {
            keep[position as usize] = true;
        }
        Ok(filter_record_batch(&batch, &BooleanArray::from(keep))?)
    }

    /// Stores the keys of one partition's rows (at `positions` of the batch) not seen before,
    /// evicts expired keys, and returns the positions of the rows to keep.
    fn process_partition(
        &self,
        state: &mut OperatorState,
        positions: &[u32],
        keys: &[ArrayRef],
        rows: &Rows,
        times: Option<&TimestampMicrosecondArray>,
    ) -> Result<Vec<u32>> {
        let started = Instant::now();
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let mut first_rows: Vec<u32> = Vec::new();
        for &i in positions {
            let key = rows.row(i as usize).data();
            if state.store.get(key).is_none() && seen.insert(key) {
                first_rows.push(i);
            }
        }
        let first = UInt32Array::from(first_rows);
        let new_keys = partitions::take_rows(keys, &first)?;
        let expires: Int64Array = match (times, self.event) {
            (Some(times), Some((_, delay_us))) => first
                .values()
                .iter()
                .map(|&r| {
                    times
                        .is_valid(r as usize)
                        .then(|| times.value(r as usize) + delay_us)
                })
                .collect(),
            _ => first.values().iter().map(|_| None).collect(),
        };
        let new_rows = state.store.key_rows(&new_keys)?;
        let added = new_rows.num_rows() as u64;
        state
            .store
            .upsert(new_keys, &new_rows, vec![Arc::new(expires)]);
        let updates_ms = started.elapsed().as_millis() as u64;

        let removal = Instant::now();
        let mut removed = 0;
        let watermark_us = state.watermark_ms.saturating_mul(1000);
        if self.event.is_some() && state.eviction_due() {
            let (gone, _) = state.store.remove_where(|_, values| {
                let expires = values[0].as_primitive::<Int64Type>();
                Ok(expires
                    .iter()
                    .map(|e| Some(e.is_some_and(|e| e <= watermark_us)))
                    .collect())
            })?;
            removed = gone.first().map_or(0, |g| g.len() as u64);
            state.evicted_at_ms = state.watermark_ms;
        }
        state.store.maybe_compact()?;
        let m = &mut state.metrics;
        m.num_rows_total = state.store.len() as u64;
        m.num_rows_updated = added;
        m.num_rows_removed = removed;
        m.num_rows_dropped_by_watermark = 0;
        m.all_updates_time_ms = updates_ms;
        m.all_removals_time_ms = removal.elapsed().as_millis() as u64;
        Ok(first.values().to_vec())
    }
}

struct DedupHandle(Arc<Core>);

impl StatefulOperator for DedupHandle {
    fn set_partitions(&self, partitions: usize) -> Result<()> {
        self.0.set_partitions(partitions)
    }

    fn restore(&self, dirs: &[PathBuf], version: u64) -> Result<()> {
        let mut states = self.0.lock()?;
        restore_partitions(&mut states, dirs, version, |state, dir, version| {
            state.restore(dir, version)
        })
    }

    fn begin_batch(&self, watermarks: OperatorWatermarks) {
        self.0.late.clear();
        if let Ok(mut states) = self.0.state.lock() {
            for state in states.iter_mut() {
                state.begin_batch(watermarks);
            }
        }
    }

    fn commit(&self, dirs: &[PathBuf], version: u64) -> Result<()> {
        let mut states = self.0.lock()?;
        let mut ops: Vec<&mut OperatorState> = states.iter_mut().collect();
        commit_partitions(&mut ops, dirs, version)
    }

    fn progress(&self) -> StateOperatorProgress {
        self.0
            .state
            .lock()
            .map(|s| sum_progress(s.iter().map(|s| &s.metrics)))
            .unwrap_or_default()
    }

    fn wants_batch_for_watermark(&self, current_ms: i64, next_ms: i64) -> bool {
        self.0.event.is_some() && next_ms > current_ms
    }

    fn input_schema(&self) -> SchemaRef {
        Arc::clone(&self.0.input_schema)
    }

    fn late_rows(&self) -> &LateRows {
        &self.0.late
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DedupExec: keys={:?}, within_watermark={}",
            self.core.key_indices, self.core.within_watermark
        )
    }
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &str {
        "DedupExec"
    }

    super::unary_plan_methods_with_core!();

    /// One state, so one input partition (the optimizer merges the input's partitions).
    fn required_input_distribution(&self) -> Vec<datafusion::physical_plan::Distribution> {
        vec![datafusion::physical_plan::Distribution::SinglePartition]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let core = Arc::clone(&self.core);
        Ok(process_whole_input(
            input,
            Arc::clone(&self.core.input_schema),
            move |batches| core.process(batches, &context),
        ))
    }
}
