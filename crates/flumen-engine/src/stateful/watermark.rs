//! `with_watermark(column, delay)`: the event-time watermark.
//!
//! The logical node [`EventTimeWatermark`] marks the column; its physical form
//! [`WatermarkExec`] passes rows through unchanged and records, per micro-batch, the largest
//! event time seen in each source partition (a hidden column carries the partition through the
//! plan below it) plus min/max/avg for progress. After each batch the micro-batch loop feeds
//! those into a [`WatermarkTracker`]: per partition, max event time minus the delay; the query's
//! watermark is the minimum over the partitions that are not idle (no rows for the idle
//! timeout), and it never goes back. The new watermark applies from the next batch, as in
//! Spark, and is stored in the offset and commit logs.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PhysicalExpr,
    PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::windows::event_time_micros;
use crate::error::{FlumenError, Result};

/// The hidden column carrying the source partition of each row up to the watermark.
pub(crate) const PARTITION_COLUMN: &str = "__flumen_partition";

/// Logical node of `with_watermark`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventTimeWatermark {
    pub input: LogicalPlan,
    pub column: String,
    pub delay_ms: i64,
    schema: DFSchemaRef,
}

impl Hash for EventTimeWatermark {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.column.hash(state);
        self.delay_ms.hash(state);
    }
}

impl PartialOrd for EventTimeWatermark {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (&self.column, self.delay_ms).partial_cmp(&(&other.column, other.delay_ms))
    }
}

impl EventTimeWatermark {
    /// Marks `column` of `input` as event time, `delay_ms` late at most.
    pub fn try_new(input: LogicalPlan, column: String, delay_ms: i64) -> DFResult<Self> {
        let field = input
            .schema()
            .fields()
            .iter()
            .find(|f| f.name() == &column)
            .cloned()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(format!(
                    "Cannot resolve column name \"{column}\" for with_watermark among ({})",
                    input.schema().field_names().join(", ")
                ))
            })?;
        if !matches!(
            field.data_type(),
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
        ) {
            return datafusion::common::plan_err!(
                "Event time must be defined on a window or a timestamp, but {column} is of type {}",
                field.data_type()
            );
        }
        // Everything but the hidden partition column.
        let fields: Vec<_> = input
            .schema()
            .iter()
            .filter(|(_, f)| f.name() != PARTITION_COLUMN)
            .map(|(q, f)| (q.cloned(), Arc::clone(f)))
            .collect();
        let schema = Arc::new(DFSchema::new_with_metadata(
            fields,
            input.schema().metadata().clone(),
        )?);
        Ok(Self {
            input,
            column,
            delay_ms,
            schema,
        })
    }
}

impl UserDefinedLogicalNodeCore for EventTimeWatermark {
    fn name(&self) -> &str {
        "EventTimeWatermark"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "EventTimeWatermark: {}, delay={}ms",
            self.column, self.delay_ms
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let input = inputs.pop().unwrap_or_else(|| self.input.clone());
        Self::try_new(input, self.column.clone(), self.delay_ms)
    }
}

/// Event times seen by one execution (one micro-batch), µs.
#[derive(Debug, Default, Clone)]
pub(crate) struct EventTimeStats {
    /// Largest event time per source partition (`""` without partition information).
    pub max_by_partition: HashMap<String, i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub sum: i128,
    pub count: u64,
}

impl EventTimeStats {
    fn observe(&mut self, partition: &str, time: i64) {
        match self.max_by_partition.get_mut(partition) {
            Some(max) => *max = (*max).max(time),
            None => {
                self.max_by_partition.insert(partition.to_string(), time);
            }
        }
        self.min = Some(self.min.map_or(time, |m| m.min(time)));
        self.max = Some(self.max.map_or(time, |m| m.max(time)));
        self.sum += time as i128;
        self.count += 1;
    }
}

/// Shared between a [`WatermarkExec`] and the micro-batch loop.
pub(crate) type StatsSlot = Arc<Mutex<EventTimeStats>>;

/// Physical form of [`EventTimeWatermark`].
#[derive(Debug)]
pub(crate) struct WatermarkExec {
    input: Arc<dyn ExecutionPlan>,
    time_index: usize,
    partition_index: Option<usize>,
    output_indices: Vec<usize>,
    schema: SchemaRef,
    stats: StatsSlot,
    properties: Arc<PlanProperties>,
    delay_ms: i64,
    column: String,
}

impl WatermarkExec {
    /// Watermark on `column` of `input`.
    pub fn try_new(input: Arc<dyn ExecutionPlan>, column: &str, delay_ms: i64) -> DFResult<Self> {
        let in_schema = input.schema();
        let time_index = in_schema.index_of(column)?;
        let partition_index = in_schema.index_of(PARTITION_COLUMN).ok();
        let output_indices: Vec<usize> = (0..in_schema.fields().len())
            .filter(|i| Some(*i) != partition_index)
            .collect();
        let schema = Arc::new(in_schema.project(&output_indices)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            input,
            time_index,
            partition_index,
            output_indices,
            schema,
            stats: Arc::new(Mutex::new(EventTimeStats::default())),
            properties,
            delay_ms,
            column: column.to_string(),
        })
    }

    /// The event-time column.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// How late rows may be, ms.
    pub fn delay_ms(&self) -> i64 {
        self.delay_ms
    }

    /// Where each execution leaves its event-time statistics.
    pub fn stats(&self) -> StatsSlot {
        Arc::clone(&self.stats)
    }
}

impl DisplayAs for WatermarkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WatermarkExec: {}, delay={}ms",
            self.column, self.delay_ms
        )
    }
}

impl ExecutionPlan for WatermarkExec {
    fn name(&self) -> &str {
        "WatermarkExec"
    }

    super::unary_plan_methods!();

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children.pop().unwrap_or_else(|| Arc::clone(&self.input));
        let mut replaced = Self::try_new(input, &self.column, self.delay_ms)?;
        replaced.stats = Arc::clone(&self.stats);
        Ok(Arc::new(replaced))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        // The micro-batch loop clears the statistics before each batch: every partition of
        // the batch adds to them.
        let input = self.input.execute(partition, context)?;
        let stats = Arc::clone(&self.stats);
        let time_index = self.time_index;
        let partition_index = self.partition_index;
        let indices = self.output_indices.clone();
        let output = input.map(move |batch| {
            let batch: RecordBatch = batch?;
            let times = event_time_micros(batch.column(time_index))?;
            let partitions = match partition_index {
                Some(i) => Some(cast(batch.column(i), &DataType::Utf8)?),
                None => None,
            };
            let partitions = partitions.as_ref().map(|p| p.as_string::<i32>());
            if let Ok(mut stats) = stats.lock() {
                for row in 0..times.len() {
                    if times.is_valid(row) {
                        let p = partitions.map_or("", |p| p.value(row));
                        stats.observe(p, times.value(row));
                    }
                }
            }
            Ok(batch.project(&indices)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            output,
        )))
    }
}

/// The query's watermark, from per-partition event times (see the module docs).
#[derive(Debug)]
pub(crate) struct WatermarkTracker {
    delay_ms: i64,
    idle_timeout: Option<Duration>,
    /// Per partition: max event time (ms, `None` before its first row) and when it last had
    /// rows (or was first seen).
    partitions: HashMap<String, (Option<i64>, Instant)>,
    watermark_ms: i64,
}

impl WatermarkTracker {
    /// Starts at `watermark_ms` (restored from the checkpoint, or 0).
    pub fn new(delay_ms: i64, idle_timeout: Option<Duration>, watermark_ms: i64) -> Self {
        Self {
            delay_ms,
            idle_timeout,
            partitions: HashMap::new(),
            watermark_ms,
        }
    }

    /// The current watermark, ms.
    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    /// Notes partitions the source reads; one without rows yet holds the watermark back until
    /// it has been idle for the timeout.
    pub fn register(&mut self, partitions: impl IntoIterator<Item = String>, now: Instant) {
        for p in partitions {
            self.partitions.entry(p).or_insert((None, now));
        }
    }

    /// Folds in a batch's statistics.
    pub fn observe(&mut self, stats: &EventTimeStats, now: Instant) {
        for (partition, &max_us) in &stats.max_by_partition {
            let max_ms = max_us.div_euclid(1000);
            let entry = self
                .partitions
                .entry(partition.clone())
                .or_insert((Some(max_ms), now));
            entry.0 = Some(entry.0.map_or(max_ms, |m| m.max(max_ms)));
            entry.1 = now;
        }
    }

    /// Recomputes the watermark at `now`; returns whether it advanced.
    pub fn advance(&mut self, now: Instant) -> bool {
        let active: Vec<Option<i64>> = self
            .partitions
            .values()
            .filter(|(_, seen)| {
                self.idle_timeout
                    .is_none_or(|t| now.duration_since(*seen) < t)
            })
            .map(|(max, _)| *max)
            .collect();
        let candidate = if active.is_empty() {
            // Everything idle: nothing holds the watermark back but the data itself.
            self.partitions.values().filter_map(|(max, _)| *max).min()
        } else if active.iter().any(Option::is_none) {
            // An active partition has not delivered rows yet.
            None
        } else {
            active.into_iter().flatten().min()
        };
        match candidate.map(|c| c - self.delay_ms) {
            Some(c) if c > self.watermark_ms => {
                self.watermark_ms = c;
                true
            }
            _ => false,
        }
    }
}

/// Checks a declared delay.
pub(crate) fn parse_delay(delay: &str) -> Result<i64> {
    let lower = delay.to_ascii_lowercase();
    if lower.contains("month") || lower.contains("year") {
        return Err(FlumenError::invalid_option(
            "delayThreshold",
            format!(
                "'{delay}' uses months or years, which have no fixed length; use days, hours, minutes or seconds"
            ),
        ));
    }
    let d = crate::options::parse_interval(delay)?;
    Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_partitions_and_never_backwards() {
        let t0 = Instant::now();
        let mut w = WatermarkTracker::new(1_000, Some(Duration::from_secs(10)), 0);
        let stats = |pairs: &[(&str, i64)]| EventTimeStats {
            max_by_partition: pairs
                .iter()
                .map(|&(p, ms)| (p.to_string(), ms * 1000))
                .collect(),
            ..Default::default()
        };
        // A partition without rows yet holds the watermark back.
        w.register(["0".to_string(), "1".to_string()], t0);
        w.observe(&stats(&[("0", 50_000)]), t0);
        assert!(!w.advance(t0));
        w.observe(&stats(&[("0", 50_000), ("1", 20_000)]), t0);
        assert!(w.advance(t0));
        assert_eq!(w.watermark_ms(), 19_000);
        // Partition 1 goes quiet; after the idle timeout only partition 0 counts.
        w.observe(&stats(&[("0", 60_000)]), t0 + Duration::from_secs(5));
        assert!(!w.advance(t0 + Duration::from_secs(5)));
        assert!(w.advance(t0 + Duration::from_secs(11)));
        assert_eq!(w.watermark_ms(), 59_000);
        // Partition 1 wakes up far behind: the watermark does not go back.
        w.observe(&stats(&[("1", 21_000)]), t0 + Duration::from_secs(12));
        assert!(!w.advance(t0 + Duration::from_secs(12)));
        assert_eq!(w.watermark_ms(), 59_000);
    }
}
