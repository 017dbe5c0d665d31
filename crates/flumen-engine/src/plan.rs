//! From a stream frame's logical plan to one physical plan per query.
//!
//! At `start()` the logical plan is checked for shapes streaming cannot run (with Spark's
//! messages), each stream scan is replaced by an [`InputExec`] reading from a slot of its own
//! (one per stream the query reads), and the plan is optimized and planned once. Each
//! micro-batch then puts each stream's rows in its slot and re-executes the same physical plan:
//! no SQL planning on the hot path. Hash joins keep the static side as the build side, which
//! DataFusion collects once and reuses on every re-execution; a hash join of two streams
//! becomes Flumen's stream-stream join.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableProvider, TableType, provider_as_source, source_as_provider};
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    Expr, Extension, JoinType, LogicalPlan, ScalarUDF, TableScanBuilder,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use crate::decode_once::hoist_json_decodes;
use crate::error::{FlumenError, Result};
use crate::functions::{BatchClock, BatchTimestamp};
use crate::modes::OutputMode;
use crate::source::SourceRef;
use crate::stateful::aggregate::StatefulAggregateExec;
use crate::stateful::dedup::{DedupExec, Deduplicate};
use crate::stateful::join::StreamingJoinExec;
use crate::stateful::propagation::{WatermarkOrigin, WatermarkPropagation};
use crate::stateful::watermark::{EventTimeWatermark, PARTITION_COLUMN, StatsSlot, WatermarkExec};
use crate::stateful::{OperatorHandle, WatermarkSpec};

macro_rules! unsupported {
    ($($arg:tt)*) => {
        return Err(FlumenError::Unsupported(format!($($arg)*)))
    };
}

/// The table a stream frame scans: a source definition, registered under a name or anonymous.
#[derive(Debug)]
pub struct StreamTable {
    source: SourceRef,
}

impl StreamTable {
    /// A table over `source`.
    pub fn new(source: SourceRef) -> Self {
        Self { source }
    }

    /// The source definition.
    pub fn source(&self) -> &SourceRef {
        &self.source
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        datafusion::common::plan_err!(
            "Queries with streaming sources must be executed with writeStream.start()"
        )
    }
}

/// Where a micro-batch's rows wait for the plan: split into the plan's input partitions, each
/// taken by the execution of its partition.
#[derive(Debug)]
pub(crate) struct InputSlot {
    parts: Mutex<Vec<Option<Vec<RecordBatch>>>>,
    partitions: usize,
    batch_size: usize,
}

impl InputSlot {
    fn new(partitions: usize, batch_size: usize) -> Arc<Self> {
        Arc::new(Self {
            parts: Mutex::new(Vec::new()),
            partitions: partitions.max(1),
            batch_size: batch_size.max(1),
        })
    }

    /// How many partitions the plan reads the input in.
    pub(crate) fn partitions(&self) -> usize {
        self.partitions
    }

    /// Puts one micro-batch's rows in the slot: partition `i` gets the `i`-th of
    /// `partitions` contiguous, equal row ranges, in pieces of at most the session's batch
    /// size, so every core gets an equal share and rows keep their order within a partition.
    pub(crate) fn fill(&self, input: Vec<RecordBatch>) -> Result<()> {
        let total: usize = input.iter().map(RecordBatch::num_rows).sum();
        let n = self.partitions;
        // Partition i holds rows [bounds[i], bounds[i + 1]).
        let bounds: Vec<usize> = (0..=n).map(|i| total * i / n).collect();
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        let (mut part, mut row) = (0, 0);
        for batch in input {
            let mut offset = 0;
            while offset < batch.num_rows() {
                // row < total = bounds[n], so this stops at a partition that has room.
                while row >= bounds[part + 1] {
                    part += 1;
                }
                let len = (batch.num_rows() - offset)
                    .min(bounds[part + 1] - row)
                    .min(self.batch_size);
                parts[part].push(batch.slice(offset, len));
                offset += len;
                row += len;
            }
        }
        let parts = parts.into_iter().map(Some).collect();
        *self
            .parts
            .lock()
            .map_err(|_| FlumenError::IllegalState("input slot poisoned".into()))? = parts;
        Ok(())
    }

    fn take(&self, partition: usize) -> DFResult<Vec<RecordBatch>> {
        let mut parts = self.parts.lock().map_err(|_| {
            datafusion::error::DataFusionError::Internal("input slot poisoned".into())
        })?;
        Ok(parts
            .get_mut(partition)
            .and_then(Option::take)
            .unwrap_or_default())
    }
}

/// The per-query stand-in for a stream scan: scans whatever is in its slot.
#[derive(Debug)]
struct InputTable {
    schema: SchemaRef,
    slot: Arc<InputSlot>,
}

#[async_trait]
impl TableProvider for InputTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        Ok(Arc::new(InputExec {
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&schema)),
                Partitioning::UnknownPartitioning(self.slot.partitions()),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            schema,
            projection: projection.cloned(),
            slot: Arc::clone(&self.slot),
        }))
    }
}

/// Leaf of a query's physical plan: yields the current micro-batch's rows.
#[derive(Debug)]
pub(crate) struct InputExec {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    slot: Arc<InputSlot>,
    properties: Arc<PlanProperties>,
}

impl InputExec {
    /// The columns of the source schema this scan needs (`None` = all).
    pub(crate) fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }
}

impl DisplayAs for InputExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "MicroBatchInputExec: partitions={}, projection={:?}",
            self.slot.partitions(),
            self.projection
        )
    }
}

impl ExecutionPlan for InputExec {
    fn name(&self) -> &str {
        "MicroBatchInputExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    crate::stateful::with_new_children_by_replace!();

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        // The source already applied the projection when it fetched the batch.
        let batches = self.slot.take(partition)?;
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            Arc::clone(&self.schema),
            None,
        )?))
    }
}

/// The stream scans of a plan, in plan order.
pub(crate) fn stream_sources(plan: &LogicalPlan) -> Vec<SourceRef> {
    let mut sources = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let Some(table) = stream_table(node) {
            sources.push(Arc::clone(table.source()));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    sources
}

/// The stream table `node` scans, if it is a scan of one.
pub(crate) fn stream_table(node: &LogicalPlan) -> Option<Arc<StreamTable>> {
    let LogicalPlan::TableScan(scan) = node else {
        return None;
    };
    let provider = source_as_provider(&scan.source).ok()?;
    let any: Arc<dyn std::any::Any + Send + Sync> = provider;
    any.downcast::<StreamTable>().ok()
}

fn is_streaming(plan: &LogicalPlan) -> bool {
    !stream_sources(plan).is_empty()
}

/// Spark's `UnsupportedOperationChecker`, for what this engine runs: fails with the operation's
/// name when the plan cannot run as a stream in `mode`.
pub(crate) fn check_supported(plan: &LogicalPlan, mode: OutputMode) -> Result<()> {
    let sources = stream_sources(plan);
    if sources.is_empty() {
        unsupported!(
            "Queries without streaming sources cannot be executed with writeStream.start()"
        );
    }
    let stateful = stateful_nodes(plan);
    check_chained_stateful_operators(&stateful, mode)?;
    let aggregated = stateful.iter().any(|s| s == "Aggregate");
    if mode == OutputMode::Complete && !aggregated {
        unsupported!(
            "Complete output mode not supported when there are no streaming aggregations on streaming DataFrames/Datasets"
        );
    }
    let mut error = None;
    plan.apply_with_subqueries(|node| {
        if !is_streaming(node) {
            return Ok(TreeNodeRecursion::Jump);
        }
        error = match node {
            LogicalPlan::Aggregate(aggregate)
                if aggregate
                    .group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_))) =>
            {
                Some("Grouping Sets is not supported on streaming DataFrames/Datasets".into())
            }
            LogicalPlan::Aggregate(aggregate)
                if aggregate.aggr_expr.iter().any(|e| {
                    e.exists(|e| {
                        Ok(matches!(e, Expr::AggregateFunction(f) if f.params.distinct))
                    })
                    .unwrap_or(false)
                }) =>
            {
                Some("Distinct aggregations are not supported on streaming DataFrames/Datasets. Consider using approx_count_distinct() instead.".into())
            }
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::On(_)) => Some(
                "DISTINCT ON is not supported on streaming DataFrames/Datasets; use drop_duplicates(columns)".into(),
            ),
            LogicalPlan::Sort(sort)
                if mode != OutputMode::Complete || !has_streaming_aggregate(&sort.input) =>
            {
                Some(
                    "Sorting is not supported on streaming DataFrames/Datasets, unless it is on aggregated DataFrame/Dataset in Complete output mode".into(),
                )
            }
            LogicalPlan::Limit(_) => Some(
                "Limit is not supported on streaming DataFrames/Datasets yet (it needs state across micro-batches)".into(),
            ),
            LogicalPlan::Window(_) => Some(
                "Non-time-based windows are not supported on streaming DataFrames/Datasets".into(),
            ),
            LogicalPlan::Union(u) if u.inputs.iter().any(|i| !is_streaming(i)) => Some(
                "Union between streaming and batch DataFrames/Datasets is not supported".into(),
            ),
            LogicalPlan::Join(join) => check_join(
                is_streaming(&join.left),
                is_streaming(&join.right),
                join.join_type,
                mode,
            ),
            LogicalPlan::Extension(e)
                if e.node.as_any().is::<EventTimeWatermark>()
                    || e.node.as_any().is::<Deduplicate>() =>
            {
                None
            }
            LogicalPlan::Extension(e) => Some(format!(
                "{} is not supported on streaming DataFrames/Datasets",
                e.node.name()
            )),
            LogicalPlan::RecursiveQuery(_) => Some(
                "Recursive queries are not supported on streaming DataFrames/Datasets".into(),
            ),
            _ => None,
        };
        Ok(if error.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    if let Some(message) = error {
        return Err(FlumenError::Unsupported(message));
    }
    Ok(())
}

fn check_join(left: bool, right: bool, join_type: JoinType, mode: OutputMode) -> Option<String> {
    use JoinType::*;
    match (left, right) {
        (true, true) if mode != OutputMode::Append => Some(format!(
            "Join between two streaming DataFrames/Datasets is not supported in {mode} output mode, only in Append output mode"
        )),
        (true, true) => match join_type {
            Inner | Left | Right | Full | LeftSemi => None,
            LeftAnti => Some(
                "LeftAnti join between two streaming DataFrames/Datasets is not supported".into(),
            ),
            RightSemi | RightAnti | LeftMark | RightMark => Some(format!(
                "{join_type} join between two streaming DataFrames/Datasets is not supported; use an inner, left/right/full outer or left semi join"
            )),
        },
        (true, false) => match join_type {
            Inner | Left | LeftSemi | LeftAnti | LeftMark => None,
            Right | RightSemi | RightAnti | RightMark => Some(
                "RightOuter join with a streaming DataFrame/Dataset on the left and a static DataFrame/DataSet on the right not supported".into(),
            ),
            Full => Some(
                "FullOuter joins with streaming DataFrames/Datasets on the left and a static DataFrame/Dataset on the right is not supported".into(),
            ),
        },
        (false, true) => match join_type {
            Inner | Right | RightSemi | RightAnti | RightMark => None,
            Left | LeftMark => Some(
                "LeftOuter join with a streaming DataFrame/Dataset on the right and a static DataFrame/Dataset on the left is not supported".into(),
            ),
            LeftSemi => Some(
                "LeftSemi join with a streaming DataFrame/Dataset on the right and a static DataFrame/Dataset on the left is not supported".into(),
            ),
            LeftAnti => Some(
                "LeftAnti joins with a streaming DataFrame/Dataset on the right are not supported".into(),
            ),
            Full => Some(
                "FullOuter joins with streaming DataFrames/Datasets on the right and a static DataFrame/Dataset on the left is not supported".into(),
            ),
        },
        (false, false) => None,
    }
}

/// Which stateful operators may follow each other in one query (`stateful` from the output
/// towards the source). Spark (3.4+) runs chains of stateful operators in append mode only,
/// each operator judging lateness and evicting by its own watermarks (see
/// [`crate::stateful::propagation`]). Which operator may read which is checked on the
/// physical plan ([`check_operator_inputs`]).
fn check_chained_stateful_operators(stateful: &[String], mode: OutputMode) -> Result<()> {
    if stateful.len() > 1 && mode != OutputMode::Append {
        unsupported!(
            "Multiple stateful operators in one query are supported only in Append output mode (this query has {} in {mode:?} mode); use append, or split it into queries connected by a Kafka topic",
            stateful.join(", ")
        );
    }
    Ok(())
}

/// Flumen's limit on chains: a stream-stream join reads streams, not another stateful
/// operator's output (an aggregation or deduplication may read any operator's).
fn check_operator_inputs(
    operators: &[OperatorHandle],
    propagation: &WatermarkPropagation,
) -> Result<()> {
    for (i, operator) in operators.iter().enumerate() {
        let name = operator.progress().operator_name;
        if propagation.reads_an_operator(i) && name == crate::stateful::join::OPERATOR_NAME {
            unsupported!("{JOIN_OVER_OPERATOR}");
        }
    }
    Ok(())
}

/// Names of the stateful operations over a stream in `plan`.
fn stateful_nodes(plan: &LogicalPlan) -> Vec<String> {
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if !is_streaming(node) {
            return Ok(TreeNodeRecursion::Jump);
        }
        match node {
            LogicalPlan::Aggregate(_) => found.push("Aggregate".to_string()),
            LogicalPlan::Distinct(_) => found.push("Distinct".to_string()),
            LogicalPlan::Join(join) if is_streaming(&join.left) && is_streaming(&join.right) => {
                found.push("StreamingJoin".to_string())
            }
            LogicalPlan::Extension(e) if e.node.as_any().is::<Deduplicate>() => {
                found.push(e.node.name().to_string())
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn has_streaming_aggregate(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        found |= matches!(node, LogicalPlan::Aggregate(_)) && is_streaming(node);
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The watermarks declared in `plan`, in plan order: one per stream at most (a stream under
/// two `with_watermark` calls is refused).
fn watermarks_of(plan: &LogicalPlan) -> Result<Vec<WatermarkSpec>> {
    let mut found: Vec<WatermarkSpec> = Vec::new();
    let mut stacked: Option<Vec<String>> = None;
    plan.apply_with_subqueries(|node| {
        if let Some(w) = watermark_node(node) {
            let mut columns = vec![w.column.clone()];
            w.input.apply(|inner| {
                if let Some(inner) = watermark_node(inner) {
                    columns.push(inner.column.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            if columns.len() > 1 {
                stacked = Some(columns);
                return Ok(TreeNodeRecursion::Stop);
            }
            found.push(WatermarkSpec {
                column: w.column.clone(),
                delay_ms: w.delay_ms,
            });
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if let Some(columns) = stacked {
        unsupported!(
            "with_watermark was called {} times on the same stream ({}); declare one watermark per stream",
            columns.len(),
            columns.join(", ")
        );
    }
    Ok(found)
}

fn watermark_node(node: &LogicalPlan) -> Option<&EventTimeWatermark> {
    match node {
        LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<EventTimeWatermark>(),
        _ => None,
    }
}

/// Gives every stream scan under a watermark a hidden column with each row's source partition,
/// carried up to the watermark node, which records per-partition event times and drops it.
fn add_partition_columns(plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up_with_subqueries(|node| {
            let Some(w) = watermark_node(&node) else {
                return Ok(Transformed::no(node));
            };
            let mut added = false;
            let input = w
                .input
                .clone()
                .transform_up(|scan| {
                    let Some(key) = stream_table(&scan).and_then(|t| t.source().partition_key())
                    else {
                        return Ok(Transformed::no(scan));
                    };
                    added = true;
                    let mut exprs: Vec<Expr> = scan
                        .schema()
                        .columns()
                        .into_iter()
                        .map(Expr::Column)
                        .collect();
                    exprs.push(key.alias(PARTITION_COLUMN));
                    let projected =
                        datafusion::logical_expr::Projection::try_new(exprs, Arc::new(scan))?;
                    Ok(Transformed::yes(LogicalPlan::Projection(projected)))
                })?
                .data;
            if !added {
                return Ok(Transformed::no(node));
            }
            let input = carry_partition_to_watermark(input)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            let replaced = EventTimeWatermark::try_new(input, w.column.clone(), w.delay_ms)?;
            Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                node: Arc::new(replaced),
            })))
        })?
        .data)
}

/// `SELECT DISTINCT` over a stream is Spark's `dropDuplicates()`.
fn distinct_as_deduplicate(plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input))
                if is_streaming(&input) =>
            {
                Ok(Transformed::yes(LogicalPlan::Extension(Extension {
                    node: Arc::new(Deduplicate {
                        input: Arc::unwrap_or_clone(input),
                        keys: Vec::new(),
                        within_watermark: false,
                    }),
                })))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

/// Carries the source partition of each row (hidden column) from the scan up to the
/// watermark node, which records per-partition event times and drops the column.
fn carry_partition_to_watermark(plan: LogicalPlan) -> Result<LogicalPlan> {
    let has_hidden = |p: &LogicalPlan| {
        p.schema()
            .fields()
            .iter()
            .any(|f| f.name() == PARTITION_COLUMN)
    };
    Ok(plan
        .transform_up_with_subqueries(|node| {
            if has_hidden(&node) || !node.inputs().iter().any(|i| has_hidden(i)) {
                return Ok(Transformed::no(node));
            }
            match node {
                LogicalPlan::Projection(p) => {
                    let mut exprs = p.expr.clone();
                    exprs.push(Expr::Column(datafusion::common::Column::from_name(
                        PARTITION_COLUMN,
                    )));
                    Ok(Transformed::yes(LogicalPlan::Projection(
                        datafusion::logical_expr::Projection::try_new(exprs, Arc::clone(&p.input))?,
                    )))
                }
                LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) => Ok(Transformed::no(node)),
                other => Ok(Transformed::yes(other.recompute_schema()?)),
            }
        })?
        .data)
}

/// One stream a query reads: its definition, the slot its micro-batches go into, and the
/// columns the plan reads from it (`None` = all), so the source decodes only those.
pub(crate) struct PlannedSource {
    pub source: SourceRef,
    pub slot: Arc<InputSlot>,
    pub projection: Option<Vec<usize>>,
}

/// One `with_watermark` of a query: the declaration, where the plan leaves each batch's
/// event-time statistics, and the source whose rows it sees.
pub(crate) struct PlannedWatermark {
    pub spec: WatermarkSpec,
    pub stats: StatsSlot,
    pub source: usize,
}

/// A query's planned form: one physical plan and, per stream, the slot its micro-batches go
/// into.
pub(crate) struct QueryPlan {
    pub physical: Arc<dyn ExecutionPlan>,
    pub task_ctx: Arc<TaskContext>,
    /// The streams, in plan order (their index names their `sources/<i>` directory and their
    /// line in `offsets/N`).
    pub sources: Vec<PlannedSource>,
    pub output_schema: SchemaRef,
    /// The declared watermarks (one per stream at most); the query's watermark is the
    /// minimum of theirs (Spark's default `multipleWatermarkPolicy`, `min`).
    pub watermarks: Vec<PlannedWatermark>,
    /// The stateful operators, in plan order (their index names their state directory).
    pub operators: Vec<OperatorHandle>,
    /// Which operators read which: how the query's watermark reaches each operator.
    pub propagation: WatermarkPropagation,
    /// The batch timestamp `current_timestamp()` returns in this query.
    pub clock: BatchClock,
    /// The session's `target_partitions`: how many key partitions a new checkpoint's state
    /// gets.
    pub target_partitions: usize,
}

impl QueryPlan {
    /// The fingerprint of the query's streams, compared on restart: the source's own for one
    /// stream, joined with ` | ` for several.
    pub fn sources_fingerprint(&self) -> String {
        self.sources
            .iter()
            .map(|s| s.source.fingerprint())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl fmt::Debug for QueryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryPlan")
            .field(
                "sources",
                &self
                    .sources
                    .iter()
                    .map(|s| s.source.description())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Checks and plans `plan` for a streaming query in `mode`.
pub(crate) async fn plan_query(
    state: &datafusion::execution::SessionState,
    plan: &LogicalPlan,
    mode: OutputMode,
) -> Result<QueryPlan> {
    check_supported(plan, mode)?;
    let watermark_specs = watermarks_of(plan)?;
    let plan = distinct_as_deduplicate(plan.clone())?;
    let plan = add_partition_columns(plan)?;
    let partitions = state.config().target_partitions();
    let mut sources: Vec<(SourceRef, Arc<InputSlot>)> = Vec::new();
    let rewritten = plan
        .transform_up_with_subqueries(|node| {
            let Some(table) = stream_table(&node) else {
                return Ok(Transformed::no(node));
            };
            let LogicalPlan::TableScan(scan) = node else {
                return Ok(Transformed::no(node));
            };
            // Every scan is a stream of its own (a stream joined with itself is read twice,
            // as in Spark).
            let slot = InputSlot::new(partitions, state.config().batch_size());
            sources.push((Arc::clone(table.source()), Arc::clone(&slot)));
            let input = Arc::new(InputTable {
                schema: table.source().schema(),
                slot,
            });
            let replaced =
                TableScanBuilder::new(scan.table_name.clone(), provider_as_source(input))
                    .with_projection(scan.projection.clone())
                    .with_filters(scan.filters.clone())
                    .with_fetch(scan.fetch)
                    .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(replaced)))
        })?
        .data;
    let rewritten = hoist_json_decodes(rewritten)?;
    let clock = BatchClock::default();
    let rewritten = bind_batch_clock(rewritten, &clock)?;
    if sources.is_empty() {
        unsupported!(
            "Queries without streaming sources cannot be executed with writeStream.start()"
        );
    }
    let physical = state.create_physical_plan(&rewritten).await?;
    let physical = keep_stream_on_probe_side(physical)?;
    let physical = make_stateful(physical, &watermark_specs, mode)?;
    let output_schema = physical.schema();
    let StatefulParts {
        operators,
        watermark_nodes,
        propagation,
    } = stateful_parts(&physical)?;
    check_operator_inputs(&operators, &propagation)?;
    let source_of = |slot: &Arc<InputSlot>| sources.iter().position(|(_, s)| Arc::ptr_eq(s, slot));
    let mut watermarks = Vec::new();
    for node in watermark_nodes {
        let Some(exec) = node.as_ref().downcast_ref::<WatermarkExec>() else {
            continue;
        };
        let source = find_input(&node).and_then(|i| source_of(&i.slot));
        let spec = watermark_specs
            .iter()
            .find(|w| w.column == exec.column() && w.delay_ms == exec.delay_ms());
        if let (Some(source), Some(spec)) = (source, spec) {
            watermarks.push(PlannedWatermark {
                spec: spec.clone(),
                stats: exec.stats(),
                source,
            });
        }
    }
    let mut inputs = Vec::new();
    collect_inputs(&physical, &mut inputs);
    let sources = sources
        .into_iter()
        .map(|(source, slot)| {
            let projection = inputs
                .iter()
                .find(|i| Arc::ptr_eq(&i.slot, &slot))
                .and_then(|i| i.projection().map(<[usize]>::to_vec));
            PlannedSource {
                source,
                slot,
                projection,
            }
        })
        .collect();
    Ok(QueryPlan {
        physical,
        task_ctx: Arc::new(TaskContext::from(state)),
        sources,
        output_schema,
        watermarks,
        operators,
        propagation,
        clock,
        target_partitions: partitions,
    })
}

/// Makes `current_timestamp()` / `now()` in `plan` read this query's batch clock.
fn bind_batch_clock(plan: LogicalPlan, clock: &BatchClock) -> Result<LogicalPlan> {
    let udf = Arc::new(ScalarUDF::new_from_impl(BatchTimestamp::with_clock(
        clock.clone(),
    )));
    Ok(plan
        .transform_up_with_subqueries(|node| {
            node.map_expressions(|expr| {
                expr.transform_up(|e| match &e {
                    Expr::ScalarFunction(f)
                        if f.func.inner().downcast_ref::<BatchTimestamp>().is_some() =>
                    {
                        Ok(Transformed::yes(Expr::ScalarFunction(
                            datafusion::logical_expr::expr::ScalarFunction::new_udf(
                                Arc::clone(&udf),
                                f.args.clone(),
                            ),
                        )))
                    }
                    _ => Ok(Transformed::no(e)),
                })
            })
        })?
        .data)
}

/// Swaps the streaming aggregation DataFusion planned for Flumen's stateful one, a hash join
/// of two streams for the stream-stream join, and tells deduplication which columns carry
/// event time.
///
/// The plan is rewritten from the sources up, so an operator over another one sees it
/// already replaced and knows which of its input columns carry event time (see
/// [`event_columns`]).
fn make_stateful(
    plan: Arc<dyn ExecutionPlan>,
    watermarks: &[WatermarkSpec],
    mode: OutputMode,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut error = None;
    let result = plan.transform_up(|node| {
        if error.is_some() || !contains_input(&node) {
            return Ok(Transformed::no(node));
        }
        let replaced = if let Some(aggregate) = node.as_ref().downcast_ref::<AggregateExec>() {
            // The final aggregation above replaces the pair.
            if *aggregate.mode() == AggregateMode::Partial {
                return Ok(Transformed::no(node));
            }
            StatefulAggregateExec::replace(aggregate, &event_columns(aggregate.input()), mode)
        } else if let Some(dedup) = node.as_ref().downcast_ref::<DedupExec>() {
            let below = node
                .children()
                .first()
                .map(|input| event_columns(input))
                .unwrap_or_default();
            dedup.with_watermark(watermarks, &below)
        } else if let Some(join) = node.as_ref().downcast_ref::<HashJoinExec>()
            && contains_input(join.left())
            && contains_input(join.right())
        {
            if contains_stateful(join.left()) || contains_stateful(join.right()) {
                Err(FlumenError::Unsupported(JOIN_OVER_OPERATOR.into()))
            } else {
                StreamingJoinExec::replace(join)
            }
        } else {
            return Ok(Transformed::no(node));
        };
        match replaced {
            Ok(new) => Ok(Transformed::yes(new)),
            Err(e) => {
                error = Some(e);
                Ok(Transformed::no(node))
            }
        }
    })?;
    if let Some(e) = error {
        return Err(e);
    }
    Ok(result.data)
}

/// Flumen's limit on chains: a stream-stream join reads streams.
const JOIN_OVER_OPERATOR: &str = "Flumen runs a stream-stream join only over streams, but in this query one reads another stateful operator's output; aggregate or deduplicate after the join instead, or split the query into queries connected by a Kafka topic";

/// The columns of `plan`'s rows that carry event time (Spark follows the watermark's
/// metadata; Flumen goes by name): a watermark's column, passed up through stateless nodes,
/// deduplications and joins; above an aggregation, only its window or timestamp key (its
/// other columns, `max(ts)` say, carry no event time even when named like one).
fn event_columns(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let any = plan.as_ref();
    if let Some(aggregate) = any.downcast_ref::<StatefulAggregateExec>() {
        return aggregate.event_output_column().into_iter().collect();
    }
    if let Some(watermark) = any.downcast_ref::<WatermarkExec>() {
        return vec![watermark.column().to_string()];
    }
    let mut columns: Vec<String> = Vec::new();
    for child in plan.children() {
        for column in event_columns(child) {
            if !columns.contains(&column) {
                columns.push(column);
            }
        }
    }
    columns
}

/// Whether `plan` holds a (replaced) stateful operator.
fn contains_stateful(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let any = plan.as_ref();
    any.downcast_ref::<StatefulAggregateExec>().is_some()
        || any.downcast_ref::<DedupExec>().is_some()
        || any.downcast_ref::<StreamingJoinExec>().is_some()
        || plan.children().into_iter().any(contains_stateful)
}

/// The stateful operators of a physical plan, in pre-order (an operator before the ones it
/// reads), with what feeds each one.
struct StatefulParts {
    operators: Vec<OperatorHandle>,
    /// The watermark nodes.
    watermark_nodes: Vec<Arc<dyn ExecutionPlan>>,
    propagation: WatermarkPropagation,
}

/// See [`StatefulParts`]; fails when a watermark is declared over a stateful operator's
/// output (Spark 3.4+ refuses redefining the watermark: the operator below would never see
/// one).
fn stateful_parts(plan: &Arc<dyn ExecutionPlan>) -> Result<StatefulParts> {
    let mut parts = StatefulParts {
        operators: Vec::new(),
        watermark_nodes: Vec::new(),
        propagation: WatermarkPropagation::default(),
    };
    collect_stateful(plan, &mut parts)?;
    Ok(parts)
}

/// Walks `node` for [`stateful_parts`]; returns the watermark origins its output carries.
fn collect_stateful(
    node: &Arc<dyn ExecutionPlan>,
    parts: &mut StatefulParts,
) -> Result<Vec<WatermarkOrigin>> {
    let any = node.as_ref();
    let handle = if let Some(a) = any.downcast_ref::<StatefulAggregateExec>() {
        Some(a.handle())
    } else if let Some(d) = any.downcast_ref::<DedupExec>() {
        Some(d.handle())
    } else {
        any.downcast_ref::<StreamingJoinExec>().map(|j| j.handle())
    };
    let operator = handle.map(|h| {
        parts.operators.push(h);
        parts.propagation.add_operator()
    });
    let is_watermark = any.downcast_ref::<WatermarkExec>().is_some();
    if is_watermark {
        parts.watermark_nodes.push(Arc::clone(node));
    }
    let mut below = Vec::new();
    for child in node.children() {
        below.extend(collect_stateful(child, parts)?);
    }
    Ok(match operator {
        Some(index) => {
            parts.propagation.set_inputs(index, below);
            vec![WatermarkOrigin::Operator(index)]
        }
        None if is_watermark => {
            if below
                .iter()
                .any(|o| matches!(o, WatermarkOrigin::Operator(_)))
            {
                unsupported!(
                    "Redefining watermark is disallowed: with_watermark is applied to the output of a stateful operator, which then never sees a watermark; declare the watermark on the stream, before its first stateful operator"
                );
            }
            vec![WatermarkOrigin::Declared]
        }
        None => below,
    })
}

fn find_input(plan: &Arc<dyn ExecutionPlan>) -> Option<&InputExec> {
    if let Some(input) = plan.as_ref().downcast_ref::<InputExec>() {
        return Some(input);
    }
    plan.children().into_iter().find_map(find_input)
}

fn collect_inputs<'a>(plan: &'a Arc<dyn ExecutionPlan>, out: &mut Vec<&'a InputExec>) {
    if let Some(input) = plan.as_ref().downcast_ref::<InputExec>() {
        out.push(input);
    }
    for child in plan.children() {
        collect_inputs(child, out);
    }
}

fn contains_input(plan: &Arc<dyn ExecutionPlan>) -> bool {
    find_input(plan).is_some()
}

/// Makes sure no join buffers the stream as its build side: the build side is collected once
/// and cached across re-executions, which is right for a static table and wrong for a stream.
fn keep_stream_on_probe_side(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let result = plan.transform_up(|node| {
        let Some(join) = node.as_ref().downcast_ref::<HashJoinExec>() else {
            let buffers_left = matches!(node.name(), "NestedLoopJoinExec" | "CrossJoinExec");
            if buffers_left && node.children().first().is_some_and(|l| contains_input(l)) {
                return datafusion::common::not_impl_err!(
                    "a join without equality keys that buffers the stream ({}) is not supported; join a stream on equal keys",
                    node.name()
                );
            }
            return Ok(Transformed::no(node));
        };
        if join.null_aware && contains_input(join.left()) {
            return datafusion::common::not_impl_err!(
                "NOT IN (subquery) over a stream is not supported; use a left anti join (JoinType::LeftAnti) on a non-null key"
            );
        }
        if contains_input(join.left()) && !contains_input(join.right()) {
            return Ok(Transformed::yes(join.swap_inputs(PartitionMode::CollectLeft)?));
        }
        Ok(Transformed::no(node))
    })?;
    Ok(result.data)
}
