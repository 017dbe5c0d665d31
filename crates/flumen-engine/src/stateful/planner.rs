//! Physical planning of Flumen's logical nodes (`with_watermark`, `drop_duplicates`, and the
//! once-per-record JSON decode).

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
use crate::decode_once::{JsonDecode, JsonDecodeExec};

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
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(input) = physical_inputs.first() else {
            return Ok(None);
        };
        let any = node.as_any();
        if let (Some(decode), Some(logical)) =
            (any.downcast_ref::<JsonDecode>(), logical_inputs.first())
        {
            let decodes = decode
                .decodes()
                .iter()
                .map(|(expr, name)| {
                    let physical = planner.create_physical_expr(
                        expr,
                        logical.schema(),
                        session,
                        planning_ctx,
                    )?;
                    Ok((physical, name.clone()))
                })
                .collect::<DFResult<Vec<_>>>()?;
            return Ok(Some(Arc::new(JsonDecodeExec::try_new(
                Arc::clone(input),
                decodes,
            )?)));
        }
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
