//! Physical planning of Flumen's logical nodes (`with_watermark`, `drop_duplicates`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result as DFResult;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use super::dedup::{DedupExec, Deduplicate};
use super::to_df;
use super::watermark::{EventTimeWatermark, WatermarkExec};

/// DataFusion's planner, plus Flumen's nodes.
#[derive(Debug, Default)]
pub(crate) struct FlumenQueryPlanner;

#[async_trait]
impl QueryPlanner for FlumenQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(FlumenNodes)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

struct FlumenNodes;

#[async_trait]
impl ExtensionPlanner for FlumenNodes {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(input) = physical_inputs.first() else {
            return Ok(None);
        };
        let any = node.as_any();
        if let Some(watermark) = any.downcast_ref::<EventTimeWatermark>() {
            return Ok(Some(Arc::new(WatermarkExec::try_new(
                Arc::clone(input),
                &watermark.column,
                watermark.delay_ms,
            )?)));
        }
        if let Some(dedup) = any.downcast_ref::<Deduplicate>() {
            return Ok(Some(Arc::new(
                DedupExec::try_new(dedup, Arc::clone(input)).map_err(to_df)?,
            )));
        }
        Ok(None)
    }
}
