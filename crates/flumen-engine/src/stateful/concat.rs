//! [`ConcatPartitionsExec`]: the partitions of a micro-batch's plan, gathered into one in
//! partition order.
//!
//! A stateful operator keeps one state per query, so it reads one partition. DataFusion's
//! `CoalescePartitionsExec` would interleave the partitions in whatever order their batches
//! finish, which makes "which row of a key comes first" (deduplication keeps it, update mode
//! emits groups in order of first appearance) depend on thread timing. This operator runs every
//! input partition as its own task, in parallel, and yields partition 0's rows, then partition
//! 1's, and so on: the batch's input order, deterministically. A micro-batch is bounded, so
//! holding the later partitions until their turn costs at most one batch of memory.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::execution_plan::ReplaceChildrenOptions;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PhysicalExpr, PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

/// Gathers its input's partitions into one, in partition order (see the module docs).
#[derive(Debug)]
pub(crate) struct ConcatPartitionsExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl ConcatPartitionsExec {
    /// `input`'s partitions as one.
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::new(
            input
                .properties()
                .as_ref()
                .clone()
                .with_partitioning(Partitioning::UnknownPartitioning(1)),
        );
        Self { input, properties }
    }
}

impl DisplayAs for ConcatPartitionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ConcatPartitionsExec: {} partitions in order",
            self.input.output_partitioning().partition_count()
        )
    }
}

impl ExecutionPlan for ConcatPartitionsExec {
    fn name(&self) -> &str {
        "ConcatPartitionsExec"
    }

    super::unary_plan_methods!();

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

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
        Ok(Arc::new(Self::new(input)))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return datafusion::common::internal_err!(
                "ConcatPartitionsExec has one partition, not {partition}"
            );
        }
        let count = self.input.output_partitioning().partition_count();
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let stream = self.input.execute(i, Arc::clone(&context))?;
            // Dropping the output stream drops the tasks, which aborts them.
            tasks.push(SpawnedTask::spawn(async move {
                stream.try_collect::<Vec<RecordBatch>>().await
            }));
        }
        let output = futures::stream::iter(tasks)
            .then(|task| async move {
                task.join()
                    .await
                    .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
            })
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            output,
        )))
    }
}
