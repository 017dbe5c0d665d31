//! Event time and state: watermarks, windows, streaming aggregation, deduplication and
//! stream-stream joins.
//!
//! Stateful operators are physical plan nodes that live as long as the query: the query's one
//! physical plan is re-executed every micro-batch, and these nodes keep their state between
//! executions. The micro-batch loop drives them through a small trait: it hands each
//! batch its watermark, writes their state to the checkpoint after the batch, restores it on
//! restart, and reads their metrics for progress reports.

pub(crate) mod aggregate;
mod concat;
pub(crate) mod dedup;
pub(crate) mod join;
pub mod late;
mod partitions;
pub(crate) mod planner;
pub(crate) mod propagation;
pub(crate) mod store;
pub(crate) mod watermark;
pub mod windows;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::{CastExpr, Column, TryCastExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use self::concat::ConcatPartitionsExec;
use crate::error::{FlumenError, Result};
use crate::progress::StateOperatorProgress;

/// `with_new_children` as every Flumen plan node writes it: DataFusion's deprecated entry
/// point, delegating to the node's `replace_children`.
macro_rules! with_new_children_by_replace {
    () => {
        #[allow(deprecated)]
        fn with_new_children(
            self: std::sync::Arc<Self>,
            children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
        {
            self.replace_children(
                children,
                datafusion::physical_plan::execution_plan::ReplaceChildrenOptions::new(
                    datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Recompute,
                ),
            )
        }
    };
}

/// The `ExecutionPlan` methods every one-input Flumen operator (stateful or not) writes the same way:
/// `properties`, `children` and `with_new_children` (which delegates to `replace_children`).
/// Expects `properties` and `input` fields.
macro_rules! unary_plan_methods {
    () => {
        fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            vec![&self.input]
        }

        $crate::stateful::with_new_children_by_replace!();
    };
}
/// [`unary_plan_methods`] plus `replace_children` for operators made of a shared `core`, an
/// `input` and `properties`: a new input keeps the same core, so state survives re-planning.
macro_rules! unary_plan_methods_with_core {
    () => {
        super::unary_plan_methods!();

        fn replace_children(
            self: std::sync::Arc<Self>,
            mut children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
            _options: datafusion::physical_plan::execution_plan::ReplaceChildrenOptions,
        ) -> datafusion::error::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
        {
            let input = children
                .pop()
                .unwrap_or_else(|| std::sync::Arc::clone(&self.input));
            Ok(std::sync::Arc::new(Self {
                core: std::sync::Arc::clone(&self.core),
                input,
                properties: std::sync::Arc::clone(&self.properties),
            }))
        }
    };
}
pub(crate) use unary_plan_methods;
pub(crate) use unary_plan_methods_with_core;
pub(crate) use with_new_children_by_replace;

/// A stateful operator keeps one state, so it reads its input as one partition: the plan
/// below it (decode, projections, filters, joins) still runs on every core, and its
/// partitions are gathered in order (a coalesce or repartition the optimizer put there is
/// removed: the one would interleave them by timing, the other can run only once).
pub(crate) fn single_partition_input(input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let mut input = input;
    loop {
        input = if let Some(coalesce) = input.as_ref().downcast_ref::<CoalescePartitionsExec>()
            && coalesce.fetch().is_none()
        {
            Arc::clone(coalesce.input())
        } else if let Some(repartition) = input.as_ref().downcast_ref::<RepartitionExec>() {
            // Spreading rows over partitions only for this operator to gather them again is
            // wasted work, and a RepartitionExec runs once per instance while this plan runs
            // every micro-batch (a stateful operator feeding this one has one partition, which
            // the optimizer spreads round-robin).
            Arc::clone(repartition.input())
        } else {
            break;
        };
    }
    if input.output_partitioning().partition_count() > 1 {
        Arc::new(ConcatPartitionsExec::new(input))
    } else {
        input
    }
}

/// `properties` with one output partition.
pub(crate) fn single_partition_properties(properties: &PlanProperties) -> Arc<PlanProperties> {
    Arc::new(
        properties
            .clone()
            .with_partitioning(Partitioning::UnknownPartitioning(1)),
    )
}

/// The watermark declared with `with_watermark`: its column and delay.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WatermarkSpec {
    /// The event-time column.
    pub column: String,
    /// How late rows may be, ms.
    pub delay_ms: i64,
}

/// The two watermarks a stateful operator runs a batch with (Spark 3.4+, SPARK-40925): rows
/// at or behind `late_events_ms` are dropped as late, state at or behind `eviction_ms` is
/// evicted (and, in append mode, emitted).
///
/// Both are the operator's *input* watermark, propagated from the query's watermark through
/// the operators below it (see [`propagation`]): `eviction_ms` for this batch's query
/// watermark, `late_events_ms` for the previous batch's. Judging lateness by the previous
/// batch's watermark is what lets an operator read another one's output: the rows an
/// aggregation emits because the watermark just passed their window are behind the new
/// watermark, but not behind the old one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OperatorWatermarks {
    /// Rows with an event time at or before this (ms) are late.
    pub late_events_ms: i64,
    /// State with an event time at or before this (ms) is evicted.
    pub eviction_ms: i64,
}

/// What the micro-batch loop needs from a stateful operator.
///
/// Its state is split into key partitions (see [`partitions`]); the directories passed to
/// `restore` and `commit` are one per partition.
pub(crate) trait StatefulOperator: Send + Sync {
    /// Empties the state and splits it into `partitions` key partitions (before a restore).
    fn set_partitions(&self, partitions: usize) -> Result<()>;
    /// Restores the state as of `version` (the state after batch `version - 1`).
    fn restore(&self, dirs: &[PathBuf], version: u64) -> Result<()>;
    /// Sets the watermarks the next execution uses to drop late rows and evict state.
    fn begin_batch(&self, watermarks: OperatorWatermarks);
    /// Writes the state changes of the batch just executed as `version`.
    fn commit(&self, dirs: &[PathBuf], version: u64) -> Result<()>;
    /// The directories of the operator's state stores, given its partitions' `dirs` (where old
    /// versions are purged): the partitions' own by default.
    fn store_dirs(&self, dirs: &[PathBuf]) -> Vec<PathBuf> {
        dirs.to_vec()
    }
    /// Metrics of the last batch.
    fn progress(&self) -> StateOperatorProgress;
    /// Whether a batch without new data should run because the watermark moved from
    /// `current` to `next` (Spark's `shouldRunAnotherBatch`).
    fn wants_batch_for_watermark(&self, current_ms: i64, next_ms: i64) -> bool;
    /// The watermark of the rows this operator emits, given its input watermark (Spark's
    /// `produceOutputWatermark`): no row it emits has an earlier event time. An aggregation or
    /// deduplication passes its input watermark on.
    fn output_watermark(&self, input_ms: i64) -> Option<i64> {
        Some(input_ms)
    }
    /// The schema of the rows the operator reads: what a late row holds.
    fn input_schema(&self) -> SchemaRef;
    /// The late rows the operator records (see [`late`]).
    fn late_rows(&self) -> &late::LateRows;
}

/// What every stateful operator keeps between batches besides its own extras: its store, the
/// batch's watermarks (`watermark_ms` evicts, `late_events_ms` drops late rows), the
/// watermark it last evicted at, and its metrics.
pub(crate) struct OperatorState {
    pub store: store::StateStore,
    pub watermark_ms: i64,
    pub late_events_ms: i64,
    pub evicted_at_ms: i64,
    pub metrics: StateOperatorProgress,
}

impl OperatorState {
    /// A fresh state around `store`, reported as `operator_name` (Spark's names).
    pub fn new(store: store::StateStore, operator_name: &str) -> Self {
        Self {
            store,
            watermark_ms: 0,
            late_events_ms: 0,
            evicted_at_ms: i64::MIN,
            metrics: StateOperatorProgress {
                operator_name: operator_name.into(),
                ..Default::default()
            },
        }
    }

    /// Whether the watermark moved since state was last evicted.
    pub fn eviction_due(&self) -> bool {
        self.watermark_ms > self.evicted_at_ms
    }

    /// See [`StatefulOperator::restore`].
    pub fn restore(&mut self, dir: &Path, version: u64) -> Result<()> {
        self.store.load(dir, version)?;
        self.metrics.num_rows_total = self.store.len() as u64;
        self.metrics.memory_used_bytes = self.store.memory_bytes() as u64;
        Ok(())
    }

    /// See [`StatefulOperator::begin_batch`]: the watermarks, and the per-batch metrics zeroed.
    pub fn begin_batch(&mut self, watermarks: OperatorWatermarks) {
        self.watermark_ms = watermarks.eviction_ms;
        self.late_events_ms = watermarks.late_events_ms;
        let m = &mut self.metrics;
        m.num_rows_updated = 0;
        m.num_rows_removed = 0;
        m.num_rows_dropped_by_watermark = 0;
        m.all_updates_time_ms = 0;
        m.all_removals_time_ms = 0;
    }

    /// See [`StatefulOperator::commit`].
    pub fn commit(&mut self, dir: &Path, version: u64) -> Result<()> {
        let started = std::time::Instant::now();
        let bytes = self.store.commit(dir, version)?;
        self.metrics.commit_time_ms = started.elapsed().as_millis() as u64;
        self.metrics
            .custom_metrics
            .insert("stateOnCurrentVersionSizeBytes".into(), bytes);
        Ok(())
    }
}

/// The partition of each state in `states` paired with its directory: fails when the counts
/// differ (the loop sets the partitions before it restores or commits).
fn with_dirs<'a, S>(
    states: &'a mut [S],
    dirs: &'a [PathBuf],
) -> Result<Vec<(&'a mut S, &'a PathBuf)>> {
    if states.len() != dirs.len() {
        return Err(FlumenError::IllegalState(format!(
            "{} state partitions but {} state directories; this is a bug in Flumen, please report it",
            states.len(),
            dirs.len()
        )));
    }
    Ok(states.iter_mut().zip(dirs).collect())
}

/// Restores every partition's state from its directory.
pub(crate) fn restore_partitions<S: Send>(
    states: &mut [S],
    dirs: &[PathBuf],
    version: u64,
    restore: impl Fn(&mut S, &Path, u64) -> Result<()> + Sync,
) -> Result<()> {
    let n = states.len();
    let pairs = with_dirs(states, dirs)?;
    let mut slots: Vec<()> = vec![(); n];
    partitions::for_each_partition(&mut slots, pairs, usize::MAX, |_, (state, dir)| {
        restore(state, dir, version)
    })?;
    Ok(())
}

/// Writes every partition's changes as `version`, the partitions in parallel (their fsyncs
/// overlap).
pub(crate) fn commit_partitions(
    states: &mut [&mut OperatorState],
    dirs: &[PathBuf],
    version: u64,
) -> Result<()> {
    let n = states.len();
    let pairs = with_dirs(states, dirs)?;
    let mut slots: Vec<()> = vec![(); n];
    partitions::for_each_partition(&mut slots, pairs, usize::MAX, |_, (state, dir)| {
        state.commit(dir, version)
    })?;
    Ok(())
}

/// Charges the state of all an operator's partitions to the session's memory pool (as one
/// reservation, so the error of a state that does not fit tells its whole size) and records
/// each partition's bytes in its metrics.
pub(crate) fn account_partitions<'a>(
    states: impl Iterator<Item = &'a mut OperatorState>,
    ctx: &TaskContext,
    operator: &str,
) -> Result<()> {
    let mut states: Vec<&mut OperatorState> = states.collect();
    let (mut bytes, mut keys) = (0, 0);
    for state in states.iter_mut() {
        let held = state.store.memory_bytes();
        state.metrics.memory_used_bytes = held as u64;
        bytes += held;
        keys += state.store.len();
    }
    match states.first_mut() {
        Some(first) => first.store.reserve(ctx, operator, bytes, keys),
        None => Ok(()),
    }
}

/// One operator's progress from its partitions' metrics: counts, bytes and times summed.
pub(crate) fn sum_progress<'a>(
    partitions: impl ExactSizeIterator<Item = &'a StateOperatorProgress>,
) -> StateOperatorProgress {
    let count = partitions.len() as u64;
    let mut total = StateOperatorProgress {
        num_shuffle_partitions: count,
        num_state_store_instances: count,
        ..Default::default()
    };
    for m in partitions {
        if total.operator_name.is_empty() {
            total.operator_name.clone_from(&m.operator_name);
        }
        total.num_rows_total += m.num_rows_total;
        total.num_rows_updated += m.num_rows_updated;
        total.all_updates_time_ms += m.all_updates_time_ms;
        total.num_rows_removed += m.num_rows_removed;
        total.all_removals_time_ms += m.all_removals_time_ms;
        total.commit_time_ms += m.commit_time_ms;
        total.memory_used_bytes += m.memory_used_bytes;
        total.num_rows_dropped_by_watermark += m.num_rows_dropped_by_watermark;
        for (name, value) in &m.custom_metrics {
            *total.custom_metrics.entry(name.clone()).or_default() += value;
        }
        for warning in &m.warnings {
            if !total.warnings.contains(warning) {
                total.warnings.push(warning.clone());
            }
        }
    }
    total
}

/// A shared handle to a stateful operator of a query's plan.
pub(crate) type OperatorHandle = Arc<dyn StatefulOperator>;

/// The column a physical expression reads, looking through casts.
pub(crate) fn column_name(expr: &Arc<dyn PhysicalExpr>) -> Option<&str> {
    let any = expr.as_ref();
    if let Some(c) = any.downcast_ref::<Column>() {
        return Some(c.name());
    }
    if let Some(c) = any.downcast_ref::<CastExpr>() {
        return column_name(c.expr());
    }
    if let Some(c) = any.downcast_ref::<TryCastExpr>() {
        return column_name(c.expr());
    }
    None
}

/// The column whose event time `expr` reads: [`column_name`], also through `window_time(..)`
/// (the event time of an earlier aggregation's window).
pub(crate) fn event_time_column(expr: &Arc<dyn PhysicalExpr>) -> Option<&str> {
    match windows::window_time_argument(expr) {
        Some(window) => event_time_column(window),
        None => column_name(expr),
    }
}

/// Evaluates `expr` over `batch` as an array.
pub(crate) fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> DFResult<ArrayRef> {
    expr.evaluate(batch)?.into_array(batch.num_rows())
}

/// A stream that collects its whole input (one micro-batch), then yields what `process`
/// makes of it as one batch.
pub(crate) fn process_whole_input<F>(
    input: SendableRecordBatchStream,
    schema: SchemaRef,
    process: F,
) -> SendableRecordBatchStream
where
    F: FnOnce(Vec<RecordBatch>) -> Result<RecordBatch> + Send + 'static,
{
    let output = futures::stream::once(async move {
        let batches: Vec<RecordBatch> = input.try_collect().await?;
        process(batches).map_err(to_df)
    })
    .filter(|r| futures::future::ready(!matches!(r, Ok(b) if b.num_rows() == 0)));
    Box::pin(RecordBatchStreamAdapter::new(schema, output))
}

/// A Flumen error inside DataFusion execution (unwrapped again by the micro-batch loop).
pub(crate) fn to_df(e: FlumenError) -> DataFusionError {
    match e {
        FlumenError::DataFusion(e) => e,
        other => DataFusionError::External(Box::new(other)),
    }
}

/// Milliseconds since the epoch as Spark's ISO-8601 text.
pub(crate) fn iso_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
