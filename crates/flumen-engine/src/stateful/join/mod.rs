//! Stream-stream joins (Spark's `StreamingSymmetricHashJoinExec`).
//!
//! Both sides buffer their rows in state. Each micro-batch, the new rows of the left side are
//! joined with the buffered right rows, then the new right rows with the buffered left rows
//! (which now include the batch's new left rows), so every pair meets exactly once; the join's
//! residual condition is evaluated on the candidate pairs with equal keys. Rows behind the
//! watermark are dropped on input (counted per side). After the batch, each side drops the rows
//! no future row of the other side can match (see [`condition`]); an outer join emits those that
//! never matched, null-extended, at that moment. A left semi join emits a left row once, at its
//! first match.
//!
//! The state is split into key partitions, as other operators' (`state/<op>/<p>/left` and
//! `.../right`): each batch routes both sides' rows to the partition of their join key (rows
//! whose key has a null, which match nothing, go to the first), and the partitions join and
//! evict in parallel once the batch's rows and the buffered rows are many enough (8,192). The state is written to the checkpoint each batch and
//! restored on restart; a checkpoint written when join state was one partition (only
//! `state/<op>/0/`) resumes with one.

pub(crate) mod condition;
mod side;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{concat_batches, prep_null_mask_filter};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{JoinSide, NullEquality};
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::JoinType;
use datafusion::physical_plan::execution_plan::ReplaceChildrenOptions;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use self::condition::{EventTime, StateWatermarks, event_time_of, state_watermarks};
use self::side::{Gathered, Keyed, SideState};
use super::late::LateRows;
use super::partitions::{for_each_partition, partition_of};
use super::watermark::WatermarkExec;
use super::windows::as_window_expr;
use super::{
    OperatorHandle, OperatorWatermarks, StatefulOperator, column_name, evaluate,
    single_partition_input, single_partition_properties, to_df,
};
use crate::error::{FlumenError, Result};
use crate::progress::StateOperatorProgress;

/// At most this many candidate pairs (rows with equal keys) are gathered at once.
const MAX_CANDIDATE_PAIRS: usize = 65_536;

/// Spark's name for the operator in progress reports.
pub(crate) const OPERATOR_NAME: &str = "symmetricHashJoin";

/// Per-side metrics of the last batch.
#[derive(Debug, Default, Clone, Copy)]
struct SideMetrics {
    dropped_by_watermark: u64,
    appended: u64,
    removed: u64,
}

/// One key partition's buffered rows of both sides.
struct Sides {
    left: SideState,
    right: SideState,
}

impl Sides {
    fn new(core: &Core) -> Result<Self> {
        Ok(Self {
            left: SideState::new(Arc::clone(&core.left_schema), core.left_keys.clone())?,
            right: SideState::new(Arc::clone(&core.right_schema), core.right_keys.clone())?,
        })
    }
}

impl JoinState {
    /// (rows, bytes) held by the left and the right side over all partitions.
    fn totals(&self) -> ((usize, usize), (usize, usize)) {
        self.sides.iter().fold(((0, 0), (0, 0)), |(l, r), s| {
            (
                (l.0 + s.left.len(), l.1 + s.left.memory_bytes()),
                (r.0 + s.right.len(), r.1 + s.right.memory_bytes()),
            )
        })
    }
}

/// What one key partition made of a batch.
struct PartitionOutput {
    batches: Vec<RecordBatch>,
    left: SideMetrics,
    right: SideMetrics,
    updates: std::time::Duration,
    removals: std::time::Duration,
}

/// Both sides' state per key partition and the batch's watermarks (`watermark_ms` evicts,
/// `late_events_ms` drops late input rows).
struct JoinState {
    sides: Vec<Sides>,
    watermark_ms: i64,
    late_events_ms: i64,
    evicted_at_ms: i64,
    left_metrics: SideMetrics,
    right_metrics: SideMetrics,
    updates_ms: u64,
    removals_ms: u64,
    commit_ms: u64,
    written_bytes: u64,
}

struct Core {
    join_type: JoinType,
    left_schema: SchemaRef,
    right_schema: SchemaRef,
    /// Left columns then right columns (left only for a semi join), before the projection.
    join_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    output_schema: SchemaRef,
    filter: Option<JoinFilter>,
    left_keys: Vec<Arc<dyn PhysicalExpr>>,
    right_keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Join keys in row format, the same for both sides.
    converter: RowConverter,
    left_time: Option<EventTime>,
    right_time: Option<EventTime>,
    state_watermarks: StateWatermarks,
    /// The columns of both sides (late rows of either side are recorded in it).
    input_schema: SchemaRef,
    state: Mutex<JoinState>,
    late: LateRows,
    /// Why a side's rows never leave the state, if they don't (reported in progress).
    unbounded: Option<String>,
}

/// The physical stream-stream join.
pub(crate) struct StreamingJoinExec {
    core: Arc<Core>,
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for StreamingJoinExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingJoinExec")
            .field("join_type", &self.core.join_type)
            .finish()
    }
}

/// Spark's name of a join type.
fn spark_join_name(join_type: JoinType) -> String {
    match join_type {
        JoinType::Inner => "Inner".into(),
        JoinType::Left => "LeftOuter".into(),
        JoinType::Right => "RightOuter".into(),
        JoinType::Full => "FullOuter".into(),
        other => other.to_string(),
    }
}

/// The input of one side, read as one partition, without the batch coalescing and
/// repartitioning DataFusion put there for its own hash join.
fn side_input(input: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let mut input = Arc::clone(input);
    while input.name() == "CoalesceBatchesExec" {
        let Some(child) = input.children().first().map(|c| Arc::clone(c)) else {
            break;
        };
        input = child;
    }
    single_partition_input(input)
}

/// The event time the watermark declared under `plan` leaves in its output, if any, and the
/// column of a window over it (`window(time, ..)` under any name), if any.
fn side_event_time(plan: &Arc<dyn ExecutionPlan>) -> (Option<EventTime>, Option<usize>) {
    let schema = plan.schema();
    let mut stack = vec![Arc::clone(plan)];
    let mut window_names = Vec::new();
    let mut column = None;
    while let Some(node) = stack.pop() {
        if let Some(w) = node.as_ref().downcast_ref::<WatermarkExec>() {
            column = Some(w.column().to_string());
            break;
        }
        if let Some(projection) = node.as_ref().downcast_ref::<ProjectionExec>() {
            for p in projection.expr() {
                if let Ok(Some(window)) = as_window_expr(&p.expr) {
                    window_names.push((p.alias.clone(), window));
                }
            }
        }
        stack.extend(node.children().into_iter().map(Arc::clone));
    }
    let Some(column) = column else {
        return (None, None);
    };
    let window = window_names.iter().find_map(|(alias, w)| {
        (column_name(&w.time) == Some(column.as_str()))
            .then(|| schema.index_of(alias).ok())
            .flatten()
    });
    (event_time_of(&schema, &column, window), window)
}

impl StreamingJoinExec {
    /// The stream-stream join replacing DataFusion's hash join `join` of two streams; fails
    /// with Spark's message when the join's state could never be cleaned up although its type
    /// needs it.
    pub fn replace(join: &HashJoinExec) -> Result<Arc<dyn ExecutionPlan>> {
        let join_type = join.join_type;
        if !matches!(
            join_type,
            JoinType::Inner
                | JoinType::Left
                | JoinType::Right
                | JoinType::Full
                | JoinType::LeftSemi
        ) {
            return Err(FlumenError::Unsupported(format!(
                "{} join between two streaming DataFrames/Datasets is not supported",
                spark_join_name(join_type)
            )));
        }
        if join.null_equality() == NullEquality::NullEqualsNull {
            return Err(FlumenError::Unsupported(
                "a stream-stream join on keys compared with IS NOT DISTINCT FROM (null equal to null) is not supported; join on equal non-null keys, e.g. with coalesce(key, <a value no key has>) on both sides".into(),
            ));
        }
        let left = side_input(&join.left);
        let right = side_input(&join.right);
        let left_schema = left.schema();
        let right_schema = right.schema();
        let (left_time, left_window) = side_event_time(&left);
        let (right_time, right_window) = side_event_time(&right);
        let state_watermarks = state_watermarks(
            left_time,
            right_time,
            (left_window, right_window),
            &join.on,
            join.filter.as_ref(),
            (&left_schema, &right_schema),
        );
        let (left_expires, right_expires) = (
            state_watermarks.left.is_some(),
            state_watermarks.right.is_some(),
        );
        let valid = match join_type {
            JoinType::Left | JoinType::LeftSemi => left_expires,
            JoinType::Right => right_expires,
            JoinType::Full => left_expires || right_expires,
            _ => true,
        };
        if !valid {
            return Err(FlumenError::Unsupported(format!(
                "Stream-stream {} join between two streaming DataFrame/Datasets is not supported without a watermark in the join keys, or a watermark on the nullable side and an appropriate range condition",
                spark_join_name(join_type)
            )));
        }
        let unbounded = unbounded_state_warning(left_expires, right_expires);
        if let Some(warning) = &unbounded {
            tracing::warn!(join_type = %spark_join_name(join_type), "{warning}");
        }
        let left_keys: Vec<Arc<dyn PhysicalExpr>> =
            join.on.iter().map(|(l, _)| Arc::clone(l)).collect();
        let right_keys: Vec<Arc<dyn PhysicalExpr>> =
            join.on.iter().map(|(_, r)| Arc::clone(r)).collect();
        let mut sort_fields = Vec::with_capacity(left_keys.len());
        for (l, r) in left_keys.iter().zip(&right_keys) {
            let (lt, rt) = (l.data_type(&left_schema)?, r.data_type(&right_schema)?);
            if lt != rt {
                return Err(FlumenError::Unsupported(format!(
                    "a stream-stream join compares keys of different types ({lt} and {rt}); cast one side's key to the other's type"
                )));
            }
            sort_fields.push(SortField::new(lt));
        }
        let converter = RowConverter::new(sort_fields)?;
        let join_schema = Arc::clone(join.join_schema());
        let projection = join.projection.as_ref().map(|p| p.to_vec());
        let output_schema = join.schema();
        let mut fields: Vec<Field> = left_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for f in right_schema.fields() {
            if !fields.iter().any(|g| g.name() == f.name()) {
                fields.push(f.as_ref().clone());
            }
        }
        let input_schema = Arc::new(Schema::new(fields));
        let state = JoinState {
            sides: Vec::new(),
            watermark_ms: 0,
            late_events_ms: 0,
            evicted_at_ms: i64::MIN,
            left_metrics: SideMetrics::default(),
            right_metrics: SideMetrics::default(),
            updates_ms: 0,
            removals_ms: 0,
            commit_ms: 0,
            written_bytes: 0,
        };
        let core = Core {
            join_type,
            left_schema,
            right_schema,
            join_schema,
            projection,
            output_schema: Arc::clone(&output_schema),
            filter: join.filter.clone(),
            left_keys,
            right_keys,
            converter,
            left_time,
            right_time,
            state_watermarks,
            input_schema,
            state: Mutex::new(state),
            late: LateRows::default(),
            unbounded,
        };
        let first = Sides::new(&core)?;
        core.lock()?.sides = vec![first];
        let properties = single_partition_properties(join.properties());
        Ok(Arc::new(Self {
            core: Arc::new(core),
            left,
            right,
            properties,
        }))
    }

    /// The handle the micro-batch loop drives this operator through.
    pub fn handle(&self) -> OperatorHandle {
        Arc::new(JoinHandle(Arc::clone(&self.core)))
    }
}

/// Rows to emit, in the join's unprojected schema.
struct Output {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl Output {
    fn push(&mut self, columns: Vec<ArrayRef>, rows: usize) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        self.batches.push(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?);
        Ok(())
    }
}

fn take(columns: &[ArrayRef], positions: &[u32]) -> Result<Vec<ArrayRef>> {
    super::partitions::take_rows(columns, &UInt32Array::from(positions.to_vec()))
}

fn nulls(schema: &Schema, rows: usize) -> Vec<ArrayRef> {
    schema
        .fields()
        .iter()
        .map(|f| new_null_array(f.data_type(), rows))
        .collect()
}

/// The positions where `mask` is set (all of them without a mask).
fn selected(mask: Option<&BooleanArray>, len: usize) -> Vec<u32> {
    match mask {
        None => (0..len as u32).collect(),
        Some(mask) => (0..len)
            .filter(|&i| mask.value(i))
            .map(|i| i as u32)
            .collect(),
    }
}

impl Core {
    fn lock(&self) -> Result<MutexGuard<'_, JoinState>> {
        self.state.lock().map_err(|_| {
            FlumenError::IllegalState("join state poisoned by an earlier panic".into())
        })
    }

    fn preserves_left(&self) -> bool {
        matches!(self.join_type, JoinType::Left | JoinType::Full)
    }

    fn preserves_right(&self) -> bool {
        matches!(self.join_type, JoinType::Right | JoinType::Full)
    }

    fn semi(&self) -> bool {
        self.join_type == JoinType::LeftSemi
    }

    /// Which candidate pairs satisfy the residual condition (`None`: all).
    fn condition(
        &self,
        left: &[ArrayRef],
        right: &[ArrayRef],
        rows: usize,
    ) -> Result<Option<BooleanArray>> {
        let Some(filter) = &self.filter else {
            return Ok(None);
        };
        let columns = filter
            .column_indices()
            .iter()
            .map(|c| {
                let side = match c.side {
                    JoinSide::Left => left,
                    _ => right,
                };
                side.get(c.index).cloned().ok_or_else(|| {
                    FlumenError::IllegalState(format!(
                        "join condition reads column {} of the {:?} side, which has {}; this is a bug in Flumen, please report it",
                        c.index,
                        c.side,
                        side.len()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let batch =
            RecordBatch::try_new_with_options(Arc::clone(filter.schema()), columns, &options)?;
        let mask = evaluate(filter.expression(), &batch)?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| {
                FlumenError::IllegalState(format!(
                    "the join condition is of type {}, not boolean",
                    mask.data_type()
                ))
            })?;
        // A null condition is false (prep_null_mask_filter expects nulls).
        Ok(Some(if mask.null_count() == 0 {
            mask.clone()
        } else {
            prep_null_mask_filter(mask)
        }))
    }

    /// Drops the rows of one side behind the watermark (recording them as late); returns the
    /// rest and how many were dropped.
    fn drop_late(
        &self,
        batch: RecordBatch,
        time: Option<EventTime>,
        watermark_us: i64,
    ) -> Result<(RecordBatch, u64)> {
        let Some(time) = time else {
            return Ok((batch, 0));
        };
        if batch.num_rows() == 0 {
            return Ok((batch, 0));
        }
        // Late: event time at or before the watermark.
        if !SideState::any_below(&batch, time, watermark_us.saturating_add(1))? {
            return Ok((batch, 0));
        }
        let times = side_times(&batch, time)?;
        let late: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t <= watermark_us)))
            .collect();
        let dropped = late.true_count() as u64;
        if self.late.capturing() {
            let widened = self.widen(&batch)?;
            self.late.record(&widened, &late)?;
        }
        let keep = datafusion::arrow::compute::not(&late)?;
        Ok((
            datafusion::arrow::compute::filter_record_batch(&batch, &keep)?,
            dropped,
        ))
    }

    /// One side's rows in [`Core::input_schema`] (the other side's columns null), for the
    /// late-rows output.
    fn widen(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .input_schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Arc::clone(c),
                _ => new_null_array(f.data_type(), batch.num_rows()),
            })
            .collect();
        let nullable = Arc::new(Schema::new(
            self.input_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        Ok(RecordBatch::try_new(nullable, columns)?)
    }

    /// One micro-batch: see the module docs.
    fn process(
        &self,
        left: Vec<RecordBatch>,
        right: Vec<RecordBatch>,
        ctx: &TaskContext,
    ) -> Result<RecordBatch> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let watermark_us = state.watermark_ms.saturating_mul(1000);
        let late_us = state.late_events_ms.saturating_mul(1000);
        let left = concat_batches(&self.left_schema, &left)?;
        let right = concat_batches(&self.right_schema, &right)?;
        let (left, left_dropped) = self.drop_late(left, self.left_time, late_us)?;
        let (right, right_dropped) = self.drop_late(right, self.right_time, late_us)?;
        // The watermark moved since the last eviction: every partition evicts.
        let evict_all = state.watermark_ms > state.evicted_at_ms;
        let partitions = state.sides.len();
        let work = left.num_rows()
            + right.num_rows()
            + state
                .sides
                .iter()
                .map(|s| s.left.len() + s.right.len())
                .sum::<usize>();
        let inputs: Vec<(RecordBatch, RecordBatch)> = if partitions <= 1 {
            vec![(left, right)]
        } else {
            self.route(left, &self.left_keys, partitions)?
                .into_iter()
                .zip(self.route(right, &self.right_keys, partitions)?)
                .collect()
        };
        let outputs = for_each_partition(&mut state.sides, inputs, work, |sides, (l, r)| {
            self.process_partition(sides, l, r, watermark_us, evict_all)
        })?;
        let mut left_metrics = SideMetrics {
            dropped_by_watermark: left_dropped,
            ..Default::default()
        };
        let mut right_metrics = SideMetrics {
            dropped_by_watermark: right_dropped,
            ..Default::default()
        };
        let (mut updates, mut removals) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        let mut batches = Vec::new();
        for output in outputs {
            batches.extend(output.batches);
            left_metrics.appended += output.left.appended;
            left_metrics.removed += output.left.removed;
            right_metrics.appended += output.right.appended;
            right_metrics.removed += output.right.removed;
            updates += output.updates;
            removals += output.removals;
        }
        state.left_metrics = left_metrics;
        state.right_metrics = right_metrics;
        state.updates_ms = updates.as_millis() as u64;
        state.removals_ms = removals.as_millis() as u64;
        if evict_all {
            state.evicted_at_ms = state.watermark_ms;
        }
        self.account(state, ctx)?;

        let batch = concat_batches(&self.join_schema, &batches)?;
        Ok(match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        })
    }

    /// `batch` (rows of one side, joined on `keys`) split by key partition; rows whose key
    /// has a null go to the first partition.
    fn route(
        &self,
        batch: RecordBatch,
        keys: &[Arc<dyn PhysicalExpr>],
        partitions: usize,
    ) -> Result<Vec<RecordBatch>> {
        let columns = keys
            .iter()
            .map(|e| evaluate(e, &batch))
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let rows = self.converter.convert_columns(&columns)?;
        let nulls = columns.iter().fold(None, |acc: Option<NullBuffer>, c| {
            NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref())
        });
        let mut routed = vec![Vec::new(); partitions];
        for (row, key) in rows.iter().enumerate() {
            let partition = match &nulls {
                Some(n) if n.is_null(row) => 0,
                _ => partition_of(key.data(), partitions),
            };
            routed[partition].push(row as u32);
        }
        routed
            .into_iter()
            .map(|positions| {
                Ok(datafusion::arrow::compute::take_record_batch(
                    &batch,
                    &UInt32Array::from(positions),
                )?)
            })
            .collect()
    }

    /// One key partition's part of a batch: its new rows of both sides joined with its
    /// buffered rows, then its eviction (`evict_all`: the watermark moved).
    fn process_partition(
        &self,
        sides: &mut Sides,
        left: RecordBatch,
        right: RecordBatch,
        watermark_us: i64,
        evict_all: bool,
    ) -> Result<PartitionOutput> {
        let started = Instant::now();
        let mut left_metrics = SideMetrics::default();
        let mut right_metrics = SideMetrics::default();
        let mut out = Output {
            schema: Arc::clone(&self.join_schema),
            batches: Vec::new(),
        };
        let left = sides.left.keyed(left, &self.converter)?;
        let right = sides.right.keyed(right, &self.converter)?;

        // New left rows with the buffered right rows, a chunk of candidate pairs at a time
        // (a busy key would otherwise gather every pair at once).
        let mut left_matched = vec![false; left.batch.num_rows()];
        let mut right_matched_seqs = Vec::new();
        let mut start = (0, 0);
        while start.0 < left.batch.num_rows() {
            let (positions, seqs, next) = sides.right.candidates(&left, start, MAX_CANDIDATE_PAIRS);
            start = next;
            if positions.is_empty() {
                continue;
            }
            let buffered = sides.right.gather(&seqs)?;
            let left_columns = take(left.batch.columns(), &positions)?;
            let mask = self.condition(&left_columns, &buffered.columns, positions.len())?;
            let pairs = selected(mask.as_ref(), positions.len());
            for &p in &pairs {
                left_matched[positions[p as usize] as usize] = true;
            }
            if !self.semi() {
                let mut columns = take(&left_columns, &pairs)?;
                columns.extend(take(&buffered.columns, &pairs)?);
                out.push(columns, pairs.len())?;
            }
            if self.preserves_right() {
                right_matched_seqs.extend(pairs.iter().map(|&p| seqs[p as usize]));
            }
        }
        if self.semi() {
            let first: Vec<u32> = (0..left_matched.len() as u32)
                .filter(|&i| left_matched[i as usize])
                .collect();
            out.push(take(left.batch.columns(), &first)?, first.len())?;
        }
        if self.preserves_right() {
            sides.right.set_matched(&right_matched_seqs)?;
        }
        // Buffer the new left rows (a semi join's matched rows are done).
        let left = if self.semi() && left_matched.iter().any(|m| *m) {
            let keep: BooleanArray = left_matched.iter().map(|m| Some(!m)).collect();
            left_matched.retain(|m| !m);
            let kept = datafusion::arrow::compute::filter_record_batch(&left.batch, &keep)?;
            sides.left.keyed(kept, &self.converter)?
        } else {
            left
        };
        let (left, left_matched) = if self.preserves_left() {
            (left, left_matched)
        } else {
            without_null_keys(&sides.left, left, left_matched, &self.converter)?
        };
        left_metrics.appended = left.batch.num_rows() as u64;
        sides.left.append(&left, left_matched)?;

        // New right rows with the buffered left rows (the new ones included).
        let mut right_matched = vec![false; right.batch.num_rows()];
        let mut left_matched_seqs = Vec::new();
        // A semi join emits each left row once: at its first match.
        let mut emitted = std::collections::HashSet::new();
        let mut start = (0, 0);
        while start.0 < right.batch.num_rows() {
            let (positions, seqs, next) = sides.left.candidates(&right, start, MAX_CANDIDATE_PAIRS);
            start = next;
            if positions.is_empty() {
                continue;
            }
            let buffered = sides.left.gather(&seqs)?;
            let right_columns = take(right.batch.columns(), &positions)?;
            let mask = self.condition(&buffered.columns, &right_columns, positions.len())?;
            let pairs = selected(mask.as_ref(), positions.len());
            for &p in &pairs {
                right_matched[positions[p as usize] as usize] = true;
            }
            if self.semi() {
                let first: Vec<u32> = pairs
                    .iter()
                    .copied()
                    .filter(|&p| {
                        let i = p as usize;
                        !(buffered.matched.is_valid(i) && buffered.matched.value(i))
                            && emitted.insert(seqs[i])
                    })
                    .collect();
                out.push(take(&buffered.columns, &first)?, first.len())?;
            } else {
                let mut columns = take(&buffered.columns, &pairs)?;
                columns.extend(take(&right_columns, &pairs)?);
                out.push(columns, pairs.len())?;
            }
            if self.preserves_left() || self.semi() {
                left_matched_seqs.extend(pairs.iter().map(|&p| seqs[p as usize]));
            }
        }
        if self.preserves_left() || self.semi() {
            sides.left.set_matched(&left_matched_seqs)?;
        }
        let (right, right_matched) = if self.preserves_right() {
            (right, right_matched)
        } else {
            without_null_keys(&sides.right, right, right_matched, &self.converter)?
        };
        right_metrics.appended = right.batch.num_rows() as u64;
        let new_right_expire = match self.state_watermarks.right {
            Some((time, offset)) => {
                SideState::any_below(&right.batch, time, watermark_us.saturating_add(offset))?
            }
            None => false,
        };
        let new_left_expire = match self.state_watermarks.left {
            Some((time, offset)) => {
                SideState::any_below(&left.batch, time, watermark_us.saturating_add(offset))?
            }
            None => false,
        };
        sides.right.append(&right, right_matched)?;
        let updates = started.elapsed();

        // Evict what no future row can match; outer rows that never matched are emitted.
        let removal = Instant::now();
        let due = evict_all || new_left_expire || new_right_expire;
        if due {
            if let Some((time, offset)) = self.state_watermarks.left {
                let gone =
                    sides
                        .left
                        .evict(time, watermark_us.saturating_add(offset), &self.converter)?;
                left_metrics.removed = gone.matched.len() as u64;
                if self.preserves_left() {
                    let unmatched = unmatched(&gone);
                    let mut columns = take(&gone.columns, &unmatched)?;
                    columns.extend(nulls(&self.right_schema, unmatched.len()));
                    out.push(columns, unmatched.len())?;
                }
            }
            if let Some((time, offset)) = self.state_watermarks.right {
                let gone = sides.right.evict(
                    time,
                    watermark_us.saturating_add(offset),
                    &self.converter,
                )?;
                right_metrics.removed = gone.matched.len() as u64;
                if self.preserves_right() {
                    let unmatched = unmatched(&gone);
                    let mut columns = nulls(&self.left_schema, unmatched.len());
                    columns.extend(take(&gone.columns, &unmatched)?);
                    out.push(columns, unmatched.len())?;
                }
            }
        }
        Ok(PartitionOutput {
            batches: out.batches,
            left: left_metrics,
            right: right_metrics,
            updates,
            removals: removal.elapsed(),
        })
    }

    /// Charges both sides' state, every partition's, to the session's memory pool.
    fn account(&self, state: &mut JoinState, ctx: &TaskContext) -> Result<()> {
        let (left, right) = state.totals();
        let bytes = left.1 + right.1;
        let rows = left.0 + right.0;
        match state.sides.first_mut() {
            Some(first) => first
                .left
                .store_mut()
                .reserve(ctx, "stream-stream join", bytes, rows),
            None => Ok(()),
        }
    }

    fn progress(&self) -> StateOperatorProgress {
        let Ok(state) = self.state.lock() else {
            return StateOperatorProgress::default();
        };
        let (l, r) = (&state.left_metrics, &state.right_metrics);
        let ((left_rows, left_bytes), (right_rows, right_bytes)) = state.totals();
        let (left_rows, left_bytes) = (left_rows as u64, left_bytes as u64);
        let (right_rows, right_bytes) = (right_rows as u64, right_bytes as u64);
        let partitions = state.sides.len().max(1) as u64;
        let mut custom = std::collections::BTreeMap::new();
        for (side, rows, bytes, m) in [
            ("left", left_rows, left_bytes, l),
            ("right", right_rows, right_bytes, r),
        ] {
            custom.insert(format!("{side}.numRowsTotal"), rows);
            custom.insert(format!("{side}.memoryUsedBytes"), bytes);
            custom.insert(
                format!("{side}.numRowsDroppedByWatermark"),
                m.dropped_by_watermark,
            );
            custom.insert(format!("{side}.numRowsRemoved"), m.removed);
        }
        custom.insert("stateOnCurrentVersionSizeBytes".into(), state.written_bytes);
        StateOperatorProgress {
            operator_name: OPERATOR_NAME.into(),
            num_rows_total: left_rows + right_rows,
            num_rows_updated: l.appended + r.appended,
            all_updates_time_ms: state.updates_ms,
            num_rows_removed: l.removed + r.removed,
            all_removals_time_ms: state.removals_ms,
            commit_time_ms: state.commit_ms,
            memory_used_bytes: left_bytes + right_bytes,
            num_rows_dropped_by_watermark: l.dropped_by_watermark + r.dropped_by_watermark,
            num_shuffle_partitions: partitions,
            num_state_store_instances: 2 * partitions,
            custom_metrics: custom,
            warnings: self.unbounded.iter().cloned().collect(),
        }
    }
}

/// The warning for a join whose rows of a side never leave the state (`None` when both
/// sides' rows do).
fn unbounded_state_warning(left_expires: bool, right_expires: bool) -> Option<String> {
    let sides = match (left_expires, right_expires) {
        (true, true) => return None,
        (false, false) => "both sides",
        (false, true) => "the left side",
        (true, false) => "the right side",
    };
    Some(format!(
        "the state of this stream-stream join keeps the rows of {sides} forever and grows without bound: declare watermarks on both sides and bound the event times in the condition (e.g. r.t BETWEEN l.t AND l.t + INTERVAL 1 HOUR) so old rows leave the state"
    ))
}

/// Event times (µs) of a side's rows.
fn side_times(batch: &RecordBatch, time: EventTime) -> Result<Vec<Option<i64>>> {
    let column = batch.column(time.index());
    let times = match time {
        EventTime::Column(_) => super::windows::event_time_micros(column)?,
        EventTime::WindowEnd(_) => {
            let end = datafusion::arrow::array::AsArray::as_struct_opt(column.as_ref())
                .and_then(|s| s.column_by_name("end"))
                .ok_or_else(|| {
                    FlumenError::IllegalState(
                        "join window column lacks an end; this is a bug in Flumen, please report it"
                            .into(),
                    )
                })?;
            super::windows::event_time_micros(end)?
        }
    };
    Ok(times.iter().collect())
}

/// Positions of the evicted rows that never matched.
fn unmatched(gone: &Gathered) -> Vec<u32> {
    (0..gone.matched.len())
        .filter(|&i| !(gone.matched.is_valid(i) && gone.matched.value(i)))
        .map(|i| i as u32)
        .collect()
}

/// `rows` without those whose join key has a null: on a side whose unmatched rows are never
/// emitted, they can neither match nor be output, so buffering them would only hold memory.
fn without_null_keys(
    side: &SideState,
    rows: Keyed,
    matched: Vec<bool>,
    converter: &RowConverter,
) -> Result<(Keyed, Vec<bool>)> {
    let Some(valid) = rows.null_keys.as_ref().filter(|n| n.null_count() > 0) else {
        return Ok((rows, matched));
    };
    let keep = BooleanArray::new(valid.inner().clone(), None);
    let matched = matched
        .into_iter()
        .enumerate()
        .filter(|(i, _)| valid.is_valid(*i))
        .map(|(_, m)| m)
        .collect();
    let kept = datafusion::arrow::compute::filter_record_batch(&rows.batch, &keep)?;
    Ok((side.keyed(kept, converter)?, matched))
}

struct JoinHandle(Arc<Core>);

impl JoinHandle {
    /// The `left` and `right` directories of the partitions in `dirs` (the first
    /// `partitions` of them).
    fn side_dirs(dirs: &[PathBuf], partitions: usize) -> Result<Vec<(PathBuf, PathBuf)>> {
        if dirs.len() < partitions {
            return Err(FlumenError::IllegalState(format!(
                "{partitions} join state partitions but {} state directories; this is a bug in Flumen, please report it",
                dirs.len()
            )));
        }
        Ok(dirs[..partitions]
            .iter()
            .map(|d| (d.join("left"), d.join("right")))
            .collect())
    }
}

impl JoinHandle {
    /// Whether a checkpoint's join state is in its first partition only (written before join
    /// state was key-partitioned: no [`PARTITIONED_MARKER`] and nothing beyond `0/`). Fails
    /// when some partitions are missing: restoring the others would silently lose rows.
    fn holds_one_partition(dirs: &[PathBuf]) -> Result<bool> {
        let exists = |path: &Path| path.try_exists().map_err(|e| FlumenError::io(path, e));
        let Some(first) = dirs.first() else {
            return Ok(false);
        };
        let marked = exists(&first.join(PARTITIONED_MARKER))?;
        let mut missing = Vec::new();
        for dir in dirs {
            let left = dir.join("left");
            if !exists(&left)? {
                missing.push(left.display().to_string());
            }
        }
        if missing.is_empty() {
            return Ok(false);
        }
        if !marked && missing.len() == dirs.len() - 1 && exists(&first.join("left"))? {
            return Ok(true);
        }
        Err(FlumenError::checkpoint(
            first.parent().unwrap_or(first),
            format!(
                "holds the join state of some key partitions but not of {}; restore the missing directories or start a new checkpoint location",
                missing.join(", ")
            ),
        ))
    }
}

/// A file in the first partition's directory of a key-partitioned join's state (absent from
/// checkpoints written when join state was one partition).
const PARTITIONED_MARKER: &str = "partitioned";

impl StatefulOperator for JoinHandle {
    fn set_partitions(&self, partitions: usize) -> Result<()> {
        let core = &self.0;
        let sides = (0..partitions.max(1))
            .map(|_| Sides::new(core))
            .collect::<Result<Vec<_>>>()?;
        core.lock()?.sides = sides;
        Ok(())
    }

    fn restore(&self, dirs: &[PathBuf], version: u64) -> Result<()> {
        let core = &self.0;
        let mut state = core.lock()?;
        // Join state was one partition before it was key-partitioned: such a checkpoint
        // holds `0/left` only, and resumes with one partition.
        if version > 0 && state.sides.len() > 1 && Self::holds_one_partition(dirs)? {
            tracing::info!(
                "this checkpoint's join state is one partition (written before join state was key-partitioned); it resumes with one"
            );
            state.sides = vec![Sides::new(core)?];
        }
        let dirs = Self::side_dirs(dirs, state.sides.len())?;
        // The partitions in parallel, as other operators restore theirs.
        for_each_partition(
            &mut state.sides,
            dirs,
            usize::MAX,
            |sides, (left, right)| {
                sides.left.restore(&left, version, &core.converter)?;
                sides.right.restore(&right, version, &core.converter)
            },
        )?;
        state.evicted_at_ms = i64::MIN;
        Ok(())
    }

    fn begin_batch(&self, watermarks: OperatorWatermarks) {
        self.0.late.clear();
        if let Ok(mut state) = self.0.state.lock() {
            state.watermark_ms = watermarks.eviction_ms;
            state.late_events_ms = watermarks.late_events_ms;
        }
    }

    /// Spark's rule: the minimum of both sides' state watermarks and the input watermark. A
    /// side's rows leave the state once nothing newer than the watermark can match them, so
    /// no joined row is older than either side's state watermark (a range join emits clicks
    /// an hour older than the watermark, say).
    fn output_watermark(&self, input_ms: i64) -> Option<i64> {
        let w = &self.0.state_watermarks;
        let state_ms = |side: Option<(EventTime, i64)>| {
            side.map(|(_, offset_us)| input_ms.saturating_add(offset_us.div_euclid(1000)))
        };
        [state_ms(w.left), state_ms(w.right), Some(input_ms)]
            .into_iter()
            .flatten()
            .min()
    }

    fn commit(&self, dirs: &[PathBuf], version: u64) -> Result<()> {
        let mut state = self.0.lock()?;
        if state.sides.len() > 1
            && let Some(first) = dirs.first()
        {
            // Before any partition's state: a restart must never take a partitioned state
            // for one written when join state was one partition.
            let marker = first.join(PARTITIONED_MARKER);
            if !marker.exists() {
                std::fs::create_dir_all(first).map_err(|e| FlumenError::io(first, e))?;
                crate::checkpoint::write_durably(&marker, b"")
                    .map_err(|e| FlumenError::io(&marker, e))?;
            }
        }
        let dirs = Self::side_dirs(dirs, state.sides.len())?;
        let started = Instant::now();
        // The partitions in parallel: their fsyncs overlap.
        let written = for_each_partition(&mut state.sides, dirs, usize::MAX, |sides, dirs| {
            Ok(sides.left.commit(&dirs.0, version)? + sides.right.commit(&dirs.1, version)?)
        })?;
        state.commit_ms = started.elapsed().as_millis() as u64;
        state.written_bytes = written.iter().sum();
        Ok(())
    }

    fn store_dirs(&self, dirs: &[PathBuf]) -> Vec<PathBuf> {
        let partitions = self.0.state.lock().map_or(1, |s| s.sides.len());
        Self::side_dirs(dirs, partitions)
            .map(|d| d.into_iter().flat_map(|(l, r)| [l, r]).collect())
            .unwrap_or_default()
    }

    fn progress(&self) -> StateOperatorProgress {
        self.0.progress()
    }

    fn wants_batch_for_watermark(&self, current_ms: i64, next_ms: i64) -> bool {
        let w = &self.0.state_watermarks;
        next_ms > current_ms && (w.left.is_some() || w.right.is_some())
    }

    fn input_schema(&self) -> SchemaRef {
        Arc::clone(&self.0.input_schema)
    }

    fn late_rows(&self) -> &LateRows {
        &self.0.late
    }
}

impl DisplayAs for StreamingJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let w = &self.core.state_watermarks;
        write!(
            f,
            "StreamingSymmetricHashJoinExec: join_type={}, left_state_watermark={:?}, right_state_watermark={:?}",
            spark_join_name(self.core.join_type),
            w.left,
            w.right
        )
    }
}

impl ExecutionPlan for StreamingJoinExec {
    fn name(&self) -> &str {
        "StreamingSymmetricHashJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let mut children = children.into_iter();
        let left = children.next().unwrap_or_else(|| Arc::clone(&self.left));
        let right = children.next().unwrap_or_else(|| Arc::clone(&self.right));
        Ok(Arc::new(Self {
            core: Arc::clone(&self.core),
            left,
            right,
            properties: Arc::clone(&self.properties),
        }))
    }

    super::with_new_children_by_replace!();

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let left = self.left.execute(0, Arc::clone(&context))?;
        let right = self.right.execute(0, Arc::clone(&context))?;
        let core = Arc::clone(&self.core);
        let output = futures::stream::once(async move {
            let (left, right): (Vec<RecordBatch>, Vec<RecordBatch>) =
                futures::try_join!(left.try_collect(), right.try_collect())?;
            core.process(left, right, &context).map_err(to_df)
        })
        .filter(|r| futures::future::ready(!matches!(r, Ok(b) if b.num_rows() == 0)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.core.output_schema),
            output,
        )))
    }
}
