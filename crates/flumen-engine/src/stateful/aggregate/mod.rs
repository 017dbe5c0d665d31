//! Streaming aggregation: `group_by(..).agg(..)` whose groups live across micro-batches.
//!
//! DataFusion plans the aggregation as usual; Flumen then swaps the `AggregateExec` for a
//! [`StatefulAggregateExec`] built from the same grouping and aggregate expressions. Per batch
//! it groups the new rows, folds them into fresh accumulators (DataFusion's
//! `GroupsAccumulator`s, or row accumulators behind an adapter), merges in the stored
//! intermediate state of the groups it touched, and stores the new intermediate state. Final
//! values are computed from intermediate state whenever a group is emitted, so nothing in
//! state is ever consumed by evaluation.
//!
//! Output modes (Spark's): *update* emits the groups this batch changed; *complete* emits every
//! group, ordered by key; *append* emits a group once, when the watermark passes its window's
//! end (or its event time), and then forgets it. With a watermark on the grouping, append and
//! update evict state behind the watermark, and rows behind it are dropped and counted.
//! Sliding windows put each row in every window containing it; session windows merge
//! overlapping sessions of a key.
//!
//! Grouping a batch's rows is one of two strategies, each in its own module: [`fixed`] for
//! tumbling and sliding windows and plain keys (DataFusion's `GroupValues`), [`sessions`] for
//! session windows (merged per key with the stored sessions). Both hand the same
//! [`BatchGroups`] to the accumulation, eviction and output code here.

mod fixed;
mod sessions;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int8Array, RecordBatch, TimestampMicrosecondArray,
    UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, filter, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::Rows;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::group_values::GroupValues;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};

use super::late::{LateRows, rows_with_every_entry_dropped};
use super::partitions::{self, for_each_partition};
use super::store::{Loc, StateStore};
use super::windows::{
    WindowExpr, WindowKind, as_window_expr, event_time_micros, is_window_type, window_structs,
};
use super::{
    OperatorHandle, OperatorState, OperatorWatermarks, StatefulOperator, account_partitions,
    commit_partitions, evaluate, event_time_column, process_whole_input, restore_partitions,
    single_partition_input, single_partition_properties, sum_progress,
};
use crate::error::{FlumenError, Result};
use crate::modes::OutputMode;
use crate::progress::StateOperatorProgress;
use sessions::Session;

/// Spark's name for the operator in progress reports.
pub(crate) const OPERATOR_NAME: &str = "stateStoreSave";

/// A batch's rows grouped: what either grouping strategy hands to the accumulation.
struct BatchGroups {
    /// For each input row, its group (groups numbered in order of first appearance).
    group_ids: Vec<usize>,
    /// The groups' key columns.
    keys: Vec<ArrayRef>,
    /// The groups' keys in the store's row format.
    key_rows: Rows,
    /// Stored groups whose intermediate state merges into a group of this batch.
    merge_from: Vec<StoredGroup>,
    /// Stored keys this batch's groups replace (sessions merged into a new one).
    replaced: Vec<Box<[u8]>>,
}

/// A stored group's state, to merge into group `group` of the batch.
struct StoredGroup {
    loc: Loc,
    group: usize,
}

/// Which grouping key carries event time, and how to read its end.
#[derive(Debug, Clone, Copy)]
enum EventKey {
    /// A window struct: its `end` field.
    Window(usize),
    /// A plain timestamp.
    Timestamp(usize),
}

impl EventKey {
    fn index(&self) -> usize {
        match self {
            EventKey::Window(i) | EventKey::Timestamp(i) => *i,
        }
    }

    /// Event time (µs) per row that decides lateness and eviction: a window's end, or the
    /// timestamp itself.
    fn times(&self, keys: &[ArrayRef]) -> Result<Vec<Option<i64>>> {
        let column = &keys[self.index()];
        let times = match self {
            EventKey::Window(_) => event_time_micros(column.as_struct().column(1))?,
            EventKey::Timestamp(_) => event_time_micros(column)?,
        };
        Ok(times.iter().collect())
    }
}

/// The parts of the operator that the execution stream needs.
struct Core {
    groups: Vec<(Arc<dyn PhysicalExpr>, String)>,
    /// The window grouping expression, if any, and its position among the groups.
    window: Option<(usize, WindowExpr)>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Output: grouping columns then aggregate columns.
    schema: SchemaRef,
    /// Grouping columns as stored (a constant key stands in when there is no grouping).
    key_schema: SchemaRef,
    /// Intermediate state columns as stored.
    value_schema: SchemaRef,
    /// Where each aggregate's intermediate state columns start, and how many it has.
    state_ranges: Vec<std::ops::Range<usize>>,
    event: Option<EventKey>,
    mode: OutputMode,
    /// One state per key partition.
    state: Mutex<Vec<AggregateState>>,
    /// The rows the operator reads.
    input_schema: SchemaRef,
    /// Input rows dropped as late, kept for a side output.
    late: LateRows,
}

/// The evaluated input rows of one key partition.
struct PartitionInput {
    /// Position in the batch (windows expanded) of each row, ascending.
    positions: Vec<u32>,
    keys: Vec<ArrayRef>,
    values: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<ArrayRef>>,
}

/// What one key partition emits for a batch.
#[derive(Default)]
struct PartitionOutput {
    /// Update mode: the groups the batch changed, and the batch position of each group's
    /// first row (so partitions' rows are emitted in the order the batch first showed them).
    updated: Option<(RecordBatch, Vec<u32>)>,
    /// Append mode: the groups the watermark closed.
    closed: Option<RecordBatch>,
    /// Complete mode: every group, ordered by key.
    all: Option<RecordBatch>,
}

struct AggregateState {
    op: OperatorState,
    /// DataFusion's grouping of one batch's rows, reused batch to batch.
    grouping: Option<Box<dyn GroupValues>>,
    /// Session windows: the sessions of each non-window key (row bytes), as (start, end, key).
    sessions: HashMap<Box<[u8]>, Vec<Session>>,
}

/// The physical operator; see the module docs.
pub(crate) struct StatefulAggregateExec {
    core: Arc<Core>,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for StatefulAggregateExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatefulAggregateExec").finish()
    }
}

impl StatefulAggregateExec {
    /// Replaces `aggregate` (the streaming aggregation DataFusion planned) with a stateful one.
    /// `event_columns` are the input columns that carry event time: the declared watermark
    /// columns, and the event-time keys of aggregations below this one.
    pub fn replace(
        aggregate: &AggregateExec,
        event_columns: &[String],
        mode: OutputMode,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = aggregate.schema();
        // A Final aggregation reads a Partial one: take the grouping over the raw rows.
        let (source, input) = match aggregate.mode() {
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                let mut child = Arc::clone(aggregate.input());
                loop {
                    if let Some(partial) = child.as_ref().downcast_ref::<AggregateExec>() {
                        break (partial.clone(), Arc::clone(partial.input()));
                    }
                    let Some(next) = child.children().first().map(|c| Arc::clone(*c)) else {
                        return Err(FlumenError::IllegalState(
                            "a final aggregation without its partial aggregation; this is a bug in Flumen, please report it".into(),
                        ));
                    };
                    child = next;
                }
            }
            _ => (aggregate.clone(), Arc::clone(aggregate.input())),
        };
        let group_by = source.group_expr();
        if !group_by.is_single() {
            return Err(FlumenError::Unsupported(
                "Grouping Sets is not supported on streaming DataFrames/Datasets".into(),
            ));
        }
        let groups: Vec<(Arc<dyn PhysicalExpr>, String)> = group_by.expr().to_vec();
        let mut window = None;
        for (i, (expr, _)) in groups.iter().enumerate() {
            if let Some(w) = as_window_expr(expr)? {
                if window.is_some() {
                    return Err(FlumenError::Unsupported(
                        "Multiple time/session window expressions would result in a cartesian product of rows, therefore they are currently not supported.".into(),
                    ));
                }
                window = Some((i, w));
            }
        }
        if let Some((_, w)) = &window
            && matches!(w.kind, WindowKind::Session(_))
            && mode == OutputMode::Update
        {
            return Err(FlumenError::Unsupported(
                "Update output mode not supported for session window on streaming DataFrames/DataSets".into(),
            ));
        }
        let input_schema = input.schema();
        let carries_event_time = |expr: &Arc<dyn PhysicalExpr>| {
            event_time_column(expr).is_some_and(|c| event_columns.iter().any(|e| e == c))
        };
        let event = groups
            .iter()
            .enumerate()
            .find_map(|(i, (expr, _))| match &window {
                Some((wi, w)) if *wi == i => {
                    carries_event_time(&w.time).then_some(EventKey::Window(i))
                }
                // A window key of an aggregation below: its end is the event time.
                _ if carries_event_time(expr) => Some(match expr.data_type(&input_schema) {
                    Ok(t) if is_window_type(&t) => EventKey::Window(i),
                    _ => EventKey::Timestamp(i),
                }),
                _ => None,
            });
        if mode == OutputMode::Append && event.is_none() {
            return Err(FlumenError::Unsupported(
                "Append output mode not supported when there are streaming aggregations on streaming DataFrames/DataSets without watermark".into(),
            ));
        }
        let aggregates = source.aggr_expr().to_vec();
        if aggregates.iter().any(|a| a.is_distinct()) {
            return Err(FlumenError::Unsupported(
                "Distinct aggregations are not supported on streaming DataFrames/Datasets. Consider using approx_count_distinct() instead.".into(),
            ));
        }
        let key_fields: Vec<Field> = if groups.is_empty() {
            vec![Field::new("__flumen_global", DataType::Int8, false)]
        } else {
            schema.fields()[..groups.len()]
                .iter()
                .map(|f| f.as_ref().clone())
                .collect()
        };
        let key_schema = Arc::new(Schema::new(key_fields));
        let mut value_fields = Vec::new();
        let mut state_ranges = Vec::new();
        for (j, agg) in aggregates.iter().enumerate() {
            let fields = agg.state_fields()?;
            let start = value_fields.len();
            for f in fields {
                value_fields.push(
                    f.as_ref()
                        .clone()
                        .with_name(format!("{j}_{}", f.name()))
                        .with_nullable(true),
                );
            }
            state_ranges.push(start..value_fields.len());
        }
        let value_schema = Arc::new(Schema::new(value_fields));
        let core = Core {
            groups,
            window,
            aggregates,
            filters: source.filter_expr().to_vec(),
            schema: Arc::clone(&schema),
            key_schema,
            value_schema,
            state_ranges,
            event,
            mode,
            state: Mutex::new(Vec::new()),
            input_schema,
            late: LateRows::default(),
        };
        core.set_partitions(1)?;
        Ok(Arc::new(Self {
            core: Arc::new(core),
            input: single_partition_input(input),
            properties: single_partition_properties(aggregate.properties()),
        }))
    }

    /// The handle the micro-batch loop drives this operator through.
    pub fn handle(&self) -> OperatorHandle {
        Arc::new(AggregateHandle(Arc::clone(&self.core)))
    }

    /// The output column that carries event time (the window or timestamp key the watermark
    /// applies to), if any: an aggregation reading this one's rows may group by it.
    pub fn event_output_column(&self) -> Option<String> {
        let event = self.core.event?;
        Some(self.core.schema.field(event.index()).name().clone())
    }
}

impl Core {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<AggregateState>>> {
        self.state.lock().map_err(|_| {
            FlumenError::IllegalState("aggregation state poisoned by an earlier panic".into())
        })
    }

    /// Empty state in `partitions` key partitions.
    fn set_partitions(&self, partitions: usize) -> Result<()> {
        let states = (0..partitions.max(1))
            .map(|_| {
                let store =
                    StateStore::new(Arc::clone(&self.key_schema), Arc::clone(&self.value_schema))?;
                Ok(AggregateState {
                    op: OperatorState::new(store, OPERATOR_NAME),
                    grouping: None,
                    sessions: HashMap::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        *self.lock()? = states;
        Ok(())
    }

    fn new_accumulator(agg: &Arc<AggregateFunctionExpr>) -> Result<Box<dyn GroupsAccumulator>> {
        if agg.groups_accumulator_supported() {
            return Ok(agg.create_groups_accumulator()?);
        }
        let agg = Arc::clone(agg);
        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
            agg.create_accumulator()
        })))
    }

    /// Final values from intermediate state rows, one per row.
    fn finals(&self, state: &[ArrayRef], rows: usize) -> Result<Vec<ArrayRef>> {
        let groups: Vec<usize> = (0..rows).collect();
        self.aggregates
            .iter()
            .zip(&self.state_ranges)
            .map(|(agg, range)| {
                let mut acc = Self::new_accumulator(agg)?;
                acc.merge_batch(&state[range.clone()], &groups, rows)?;
                Ok(acc.evaluate(EmitTo::All)?)
            })
            .collect()
    }

    /// An output batch from stored keys and intermediate state.
    fn output(&self, keys: &[ArrayRef], state: &[ArrayRef]) -> Result<RecordBatch> {
        let rows = keys.first().map_or(0, |k| k.len());
        let mut columns: Vec<ArrayRef> = if self.groups.is_empty() {
            Vec::new()
        } else {
            keys.to_vec()
        };
        columns.extend(self.finals(state, rows)?);
        let columns = columns
            .into_iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    Ok(datafusion::arrow::compute::cast(&c, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    /// Keys, aggregate inputs and filters of the input rows, windows expanded, late rows
    /// removed (their count is returned last).
    #[allow(clippy::type_complexity)]
    fn evaluate_input(
        &self,
        batch: &RecordBatch,
        late_events_ms: i64,
    ) -> Result<(
        Vec<ArrayRef>,
        Vec<Vec<ArrayRef>>,
        Vec<Option<ArrayRef>>,
        u64,
    )> {
        let rows = batch.num_rows();
        let mut keys: Vec<ArrayRef> = Vec::with_capacity(self.groups.len().max(1));
        for (i, (expr, _)) in self.groups.iter().enumerate() {
            keys.push(match &self.window {
                Some((wi, w)) if *wi == i => evaluate(&w.time, batch)?,
                _ => evaluate(expr, batch)?,
            });
        }
        if self.groups.is_empty() {
            keys.push(Arc::new(Int8Array::from(vec![0i8; rows])));
        }
        let mut values: Vec<Vec<ArrayRef>> = self
            .aggregates
            .iter()
            .map(|a| a.expressions().iter().map(|e| evaluate(e, batch)).collect())
            .collect::<DFResult<_>>()?;
        let mut filters: Vec<Option<ArrayRef>> = self
            .filters
            .iter()
            .map(|f| f.as_ref().map(|f| evaluate(f, batch)).transpose())
            .collect::<DFResult<_>>()?;

        // The input row of each evaluated row, when windows made them differ.
        let mut entry_rows: Option<Vec<u32>> = None;
        if let Some((wi, w)) = &self.window {
            // Windows: one output row per (row, window); rows without event time have none.
            let times = event_time_micros(&keys[*wi])?;
            let mut indices: Vec<u32> = Vec::with_capacity(rows);
            let mut starts = Vec::with_capacity(rows);
            let mut ends = Vec::with_capacity(rows);
            for (row, time) in times.iter().enumerate() {
                let Some(t) = time else { continue };
                match w.kind {
                    WindowKind::Time(spec) => spec.for_each_window(t, |s| {
                        indices.push(row as u32);
                        starts.push(s);
                        ends.push(s + spec.duration_us);
                    }),
                    WindowKind::Session(gap) => {
                        indices.push(row as u32);
                        starts.push(t);
                        ends.push(t + gap);
                    }
                }
            }
            // Tumbling windows over rows that all have a time keep every row once, in order.
            let identity =
                indices.len() == rows && indices.iter().enumerate().all(|(i, &r)| r as usize == i);
            if !identity {
                if self.late.capturing() {
                    entry_rows = Some(indices.clone());
                }
                let indices = UInt32Array::from(indices);
                let pick = |a: &ArrayRef| -> Result<ArrayRef> { Ok(take(a, &indices, None)?) };
                for (i, key) in keys.iter_mut().enumerate() {
                    if i != *wi {
                        *key = pick(key)?;
                    }
                }
                for v in values.iter_mut().flatten() {
                    *v = pick(v)?;
                }
                for f in filters.iter_mut().flatten() {
                    *f = pick(f)?;
                }
            }
            // Time windows are grouped by their start (the struct is built per group, later);
            // sessions need both ends to merge.
            keys[*wi] = match w.kind {
                WindowKind::Time(_) => Arc::new(TimestampMicrosecondArray::from(starts)),
                WindowKind::Session(_) => {
                    window_structs(self.key_schema.field(*wi).data_type(), &starts, &ends, None)?
                }
            };
        }

        // Complete mode keeps every group forever, so nothing is late for it (Spark's rule).
        let mut dropped = 0;
        if let Some(event) = self.event
            && self.mode != OutputMode::Complete
        {
            let watermark_us = late_events_ms.saturating_mul(1000);
            let keep: BooleanArray = self
                .input_event_times(event, &keys)?
                .into_iter()
                .map(|t| Some(t.is_none_or(|t| t > watermark_us)))
                .collect();
            dropped = keep.false_count() as u64;
            if dropped > 0 {
                if self.late.capturing() {
                    let late = match &entry_rows {
                        Some(entry_rows) => rows_with_every_entry_dropped(rows, entry_rows, &keep),
                        None => datafusion::arrow::compute::not(&keep)?,
                    };
                    self.late.record(batch, &late)?;
                }
                let pick = |a: &ArrayRef| -> Result<ArrayRef> { Ok(filter(a, &keep)?) };
                for key in keys.iter_mut() {
                    *key = pick(key)?;
                }
                for v in values.iter_mut().flatten() {
                    *v = pick(v)?;
                }
                for f in filters.iter_mut().flatten() {
                    *f = pick(f)?;
                }
            }
        }
        Ok((keys, values, filters, dropped))
    }

    /// Event times (µs) of evaluated input rows: a time window is still its start there.
    fn input_event_times(&self, event: EventKey, keys: &[ArrayRef]) -> Result<Vec<Option<i64>>> {
        match (&self.window, event) {
            (Some((wi, w)), EventKey::Window(i)) if *wi == i => {
                if let WindowKind::Time(spec) = w.kind {
                    let starts = event_time_micros(&keys[i])?;
                    return Ok(starts
                        .iter()
                        .map(|s| s.map(|s| s + spec.duration_us))
                        .collect());
                }
                event.times(keys)
            }
            _ => event.times(keys),
        }
    }

    /// Turns the window starts of grouped keys back into window structs.
    fn window_keys(&self, mut keys: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        if let Some((wi, w)) = &self.window
            && let WindowKind::Time(spec) = w.kind
        {
            let starts = event_time_micros(&keys[*wi])?;
            let starts: Vec<i64> = starts.values().to_vec();
            let ends: Vec<i64> = starts.iter().map(|s| s + spec.duration_us).collect();
            keys[*wi] =
                window_structs(self.key_schema.field(*wi).data_type(), &starts, &ends, None)?;
        }
        Ok(keys)
    }

    /// Runs one micro-batch; returns the rows to emit.
    fn process(
        &self,
        input: Vec<RecordBatch>,
        input_schema: &SchemaRef,
        ctx: &TaskContext,
    ) -> Result<RecordBatch> {
        let mut states = self.lock()?;
        let batch = concat_batches(input_schema, &input)?;
        let late_events_ms = states.first().map_or(0, |s| s.op.late_events_ms);
        let (keys, values, filters, dropped) = self.evaluate_input(&batch, late_events_ms)?;
        let inputs = self.route(keys, values, filters, states.len())?;
        let stored: usize = states.iter().map(|s| s.op.store.len()).sum();
        let outputs = for_each_partition(
            &mut states,
            inputs,
            batch.num_rows() + stored,
            |state, input| self.process_partition(state, input),
        )?;
        if let Some(first) = states.first_mut() {
            first.op.metrics.num_rows_dropped_by_watermark = dropped;
        }
        account_partitions(states.iter_mut().map(|s| &mut s.op), ctx, "aggregation")?;
        self.combine(outputs)
    }

    /// Splits the evaluated rows by key partition: sessions by their non-window keys (a key's
    /// sessions merge with each other), everything else by all its grouping keys.
    fn route(
        &self,
        keys: Vec<ArrayRef>,
        values: Vec<Vec<ArrayRef>>,
        filters: Vec<Option<ArrayRef>>,
        partitions: usize,
    ) -> Result<Vec<PartitionInput>> {
        let rows = keys[0].len();
        if partitions <= 1 {
            return Ok(vec![PartitionInput {
                positions: Vec::new(),
                keys,
                values,
                filters,
            }]);
        }
        let routing = match &self.window {
            Some((wi, w)) if matches!(w.kind, WindowKind::Session(_)) => {
                self.other_key_rows(&sessions::without(&keys, *wi), rows)?
            }
            _ => partitions::key_rows(&keys)?,
        };
        partitions::route(&routing, partitions)
            .into_iter()
            .map(|positions| {
                let picked = UInt32Array::from(positions);
                Ok(PartitionInput {
                    keys: partitions::take_rows(&keys, &picked)?,
                    values: values
                        .iter()
                        .map(|v| partitions::take_rows(v, &picked))
                        .collect::<Result<_>>()?,
                    filters: filters
                        .iter()
                        .map(|f| f.as_ref().map(|f| Ok(take(f, &picked, None)?)).transpose())
                        .collect::<Result<_>>()?,
                    positions: picked.values().to_vec(),
                })
            })
            .collect()
    }

    /// Folds one partition's rows into its state, evicts what the watermark passed, and says
    /// what to emit.
    fn process_partition(
        &self,
        state: &mut AggregateState,
        input: PartitionInput,
    ) -> Result<PartitionOutput> {
        let started = Instant::now();
        let PartitionInput {
            positions,
            keys,
            values,
            filters,
        } = input;
        let mut out = PartitionOutput::default();

        // Group the rows: local group ids, in order of first appearance.
        let BatchGroups {
            group_ids,
            keys: group_keys,
            key_rows: group_rows,
            merge_from,
            replaced,
        } = match &self.window {
            Some((wi, w)) if matches!(w.kind, WindowKind::Session(_)) => {
                self.assign_sessions(state, &keys, *wi)?
            }
            _ => self.group_fixed(state, keys)?,
        };
        let groups = group_keys[0].len();

        let mut new_state: Vec<ArrayRef> = Vec::new();
        if groups > 0 {
            let locs: Vec<Loc> = merge_from.iter().map(|m| m.loc).collect();
            let targets: Vec<usize> = merge_from.iter().map(|m| m.group).collect();
            let old = state.op.store.gather_values(&locs)?;
            for (j, agg) in self.aggregates.iter().enumerate() {
                let mut acc = Self::new_accumulator(agg)?;
                let filter = filters[j].as_ref().map(|f| f.as_boolean());
                acc.update_batch(&values[j], &group_ids, filter, groups)?;
                if !locs.is_empty() {
                    acc.merge_batch(&old[self.state_ranges[j].clone()], &targets, groups)?;
                }
                new_state.extend(acc.state(EmitTo::All)?);
            }
            state.op.store.remove_keys(&replaced)?;
            state
                .op
                .store
                .upsert(group_keys.clone(), &group_rows, new_state.clone());
        }
        let updates_ms = started.elapsed().as_millis() as u64;

        if self.mode == OutputMode::Update && groups > 0 {
            let mut first_positions = vec![u32::MAX; groups];
            for (row, &group) in group_ids.iter().enumerate() {
                if first_positions[group] == u32::MAX {
                    first_positions[group] = positions.get(row).copied().unwrap_or(row as u32);
                }
            }
            out.updated = Some((self.output(&group_keys, &new_state)?, first_positions));
        }

        // Evict what the watermark has passed (never in complete mode).
        let removal_start = Instant::now();
        let mut removed = 0u64;
        if let Some(event) = self.event
            && self.mode != OutputMode::Complete
            && state.op.eviction_due()
        {
            let watermark_us = state.op.watermark_ms.saturating_mul(1000);
            let (keys, values) = state.op.store.remove_where(|keys, _| {
                Ok(event
                    .times(keys)?
                    .into_iter()
                    .map(|t| Some(t.is_some_and(|t| t <= watermark_us)))
                    .collect())
            })?;
            state.op.evicted_at_ms = state.op.watermark_ms;
            removed = keys[0].len() as u64;
            if removed > 0
                && self
                    .window
                    .as_ref()
                    .is_some_and(|(_, w)| matches!(w.kind, WindowKind::Session(_)))
            {
                self.forget_sessions(state, &keys)?;
            }
            if self.mode == OutputMode::Append && removed > 0 {
                out.closed = Some(self.output(&keys, &values)?);
            }
        }
        let removals_ms = removal_start.elapsed().as_millis() as u64;
        if self.mode == OutputMode::Complete {
            let (keys, values) = state.op.store.all_sorted()?;
            out.all = Some(self.output(&keys, &values)?);
        }
        state.op.store.maybe_compact()?;

        let m = &mut state.op.metrics;
        m.num_rows_total = state.op.store.len() as u64;
        m.num_rows_updated = groups as u64;
        m.num_rows_removed = removed;
        m.num_rows_dropped_by_watermark = 0;
        m.all_updates_time_ms = updates_ms;
        m.all_removals_time_ms = removals_ms;
        Ok(out)
    }

    /// The batch's output from its partitions' outputs, in the order one state would give:
    /// updated groups in order of their first row in the batch, closed groups as found, and
    /// in complete mode every group ordered by key.
    fn combine(&self, outputs: Vec<PartitionOutput>) -> Result<RecordBatch> {
        let several = outputs.len() > 1;
        let mut updated = Vec::new();
        let mut first_positions = Vec::new();
        let mut closed = Vec::new();
        let mut all = Vec::new();
        for output in outputs {
            if let Some((batch, positions)) = output.updated {
                updated.push(batch);
                first_positions.extend(positions);
            }
            closed.extend(output.closed);
            all.extend(output.all);
        }
        let mut out = Vec::new();
        if !updated.is_empty() {
            let batch = concat_batches(&self.schema, &updated)?;
            out.push(if several {
                self.reordered(&batch, |columns| {
                    partitions::sort_rows_by(columns, &first_positions)
                })?
            } else {
                batch
            });
        }
        if !closed.is_empty() {
            let batch = concat_batches(&self.schema, &closed)?;
            out.push(if several {
                self.reordered(&batch, |columns| {
                    partitions::sort_rows_by_key(columns, self.groups.len())
                })?
            } else {
                batch
            });
        }
        if !all.is_empty() {
            let batch = concat_batches(&self.schema, &all)?;
            out.push(if several {
                self.reordered(&batch, |columns| {
                    partitions::sort_rows_by_key(columns, self.groups.len())
                })?
            } else {
                batch
            });
        }
        Ok(concat_batches(&self.schema, &out)?)
    }

    /// `batch` with its rows reordered by `order`.
    fn reordered(
        &self,
        batch: &RecordBatch,
        order: impl FnOnce(&[ArrayRef]) -> Result<Vec<ArrayRef>>,
    ) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            order(batch.columns())?,
            &datafusion::arrow::array::RecordBatchOptions::new()
                .with_row_count(Some(batch.num_rows())),
        )?)
    }
}

struct AggregateHandle(Arc<Core>);

impl StatefulOperator for AggregateHandle {
    fn set_partitions(&self, partitions: usize) -> Result<()> {
        self.0.set_partitions(partitions)
    }

    fn restore(&self, dirs: &[PathBuf], version: u64) -> Result<()> {
        let mut states = self.0.lock()?;
        restore_partitions(&mut states, dirs, version, |state, dir, version| {
            state.op.restore(dir, version)?;
            self.0.rebuild_sessions(state)
        })
    }

    fn begin_batch(&self, watermarks: OperatorWatermarks) {
        self.0.late.clear();
        if let Ok(mut states) = self.0.state.lock() {
            for state in states.iter_mut() {
                state.op.begin_batch(watermarks);
            }
        }
    }

    fn commit(&self, dirs: &[PathBuf], version: u64) -> Result<()> {
        let mut states = self.0.lock()?;
        let mut ops: Vec<&mut OperatorState> = states.iter_mut().map(|s| &mut s.op).collect();
        commit_partitions(&mut ops, dirs, version)
    }

    fn progress(&self) -> StateOperatorProgress {
        self.0
            .state
            .lock()
            .map(|s| sum_progress(s.iter().map(|s| &s.op.metrics)))
            .unwrap_or_default()
    }

    fn wants_batch_for_watermark(&self, current_ms: i64, next_ms: i64) -> bool {
        self.0.event.is_some() && self.0.mode != OutputMode::Complete && next_ms > current_ms
    }

    fn input_schema(&self) -> SchemaRef {
        Arc::clone(&self.0.input_schema)
    }

    fn late_rows(&self) -> &LateRows {
        &self.0.late
    }
}

impl DisplayAs for StatefulAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let groups: Vec<&str> = self.core.groups.iter().map(|(_, n)| n.as_str()).collect();
        let aggs: Vec<&str> = self.core.aggregates.iter().map(|a| a.name()).collect();
        write!(
            f,
            "StatefulAggregateExec: mode={:?}, group_by=[{}], aggr=[{}]",
            self.core.mode,
            groups.join(", "),
            aggs.join(", ")
        )
    }
}

impl ExecutionPlan for StatefulAggregateExec {
    fn name(&self) -> &str {
        "StatefulAggregateExec"
    }

    super::unary_plan_methods_with_core!();

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        for (expr, _) in &self.core.groups {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let core = Arc::clone(&self.core);
        let input_schema = self.input.schema();
        Ok(process_whole_input(
            input,
            Arc::clone(&self.core.schema),
            move |batches| core.process(batches, &input_schema, &context),
        ))
    }
}
