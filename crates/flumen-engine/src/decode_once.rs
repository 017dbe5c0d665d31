//! One `from_json` decode per record, whatever the query shape.
//!
//! A user writes `from_json(json, schema) AS data` once and then reads `data.*`, `data['x']`,
//! filters or joins on parsed fields. DataFusion's optimizer treats the struct's definition as
//! an ordinary expression: it pushes field accesses towards the leaves and filters below the
//! projection, substituting `data` by `from_json(json)` in each place, so the same record was
//! decoded once per field (13 times for the Titanic schema).
//!
//! Before optimization, [`hoist_json_decodes`] moves every `from_json(...)` call out of
//! projections and filters into a [`JsonDecode`] node placed directly below them, and makes
//! the projection or filter read the decoded struct as a column. The optimizer cannot see
//! through that node (it is an extension node that blocks predicate push-down on the columns it
//! produces), so nothing can duplicate the decode; its physical form [`JsonDecodeExec`]
//! evaluates each distinct call once per input batch. Calls written twice in one projection or
//! filter are decoded once.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    Expr, ExprSchemable, Extension, Filter, LogicalPlan, Projection, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::ReplaceChildrenOptions;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// The name of the function whose calls are decoded once.
const FROM_JSON: &str = "from_json";
/// Prefix of the columns holding decoded structs.
const DECODED_PREFIX: &str = "__flumen_json_";

/// Logical node: its input's columns, followed by one column per decode expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonDecode {
    input: LogicalPlan,
    /// `(from_json call, output column name)`.
    decodes: Vec<(Expr, String)>,
    schema: DFSchemaRef,
}

impl Hash for JsonDecode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.decodes.hash(state);
    }
}

impl PartialOrd for JsonDecode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.decodes.partial_cmp(&other.decodes)
    }
}

impl JsonDecode {
    fn try_new(input: LogicalPlan, decodes: Vec<(Expr, String)>) -> DFResult<Self> {
        let mut fields: Vec<(Option<datafusion::common::TableReference>, Arc<Field>)> = input
            .schema()
            .iter()
            .map(|(q, f)| (q.cloned(), Arc::clone(f)))
            .collect();
        for (expr, name) in &decodes {
            let (_, field) = expr.to_field(input.schema())?;
            fields.push((
                None,
                Arc::new(Field::new(
                    name,
                    field.data_type().clone(),
                    field.is_nullable(),
                )),
            ));
        }
        let schema = Arc::new(DFSchema::new_with_metadata(
            fields,
            input.schema().metadata().clone(),
        )?);
        Ok(Self {
            input,
            decodes,
            schema,
        })
    }

    /// The decode expressions and their output names.
    pub(crate) fn decodes(&self) -> &[(Expr, String)] {
        &self.decodes
    }
}

impl UserDefinedLogicalNodeCore for JsonDecode {
    fn name(&self) -> &str {
        "JsonDecode"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.decodes.iter().map(|(e, _)| e.clone()).collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "JsonDecode: ")?;
        for (i, (expr, name)) in self.decodes.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{expr} AS {name}")?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let input = inputs.pop().unwrap_or_else(|| self.input.clone());
        let decodes = exprs
            .into_iter()
            .zip(self.decodes.iter().map(|(_, name)| name.clone()))
            .collect();
        Self::try_new(input, decodes)
    }

    /// Filters on the decoded columns stay above: below, they would decode again.
    fn prevent_predicate_push_down_columns(&self) -> HashSet<String> {
        self.decodes.iter().map(|(_, name)| name.clone()).collect()
    }

    /// Input columns the parent needs, plus those the decodes read.
    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let passed = self.input.schema().fields().len();
        let mut needed: Vec<usize> = output_columns
            .iter()
            .copied()
            .filter(|i| *i < passed)
            .collect();
        for (expr, _) in &self.decodes {
            for column in expr.column_refs() {
                needed.push(self.input.schema().index_of_column(column).ok()?);
            }
        }
        needed.sort_unstable();
        needed.dedup();
        Some(vec![needed])
    }
}

fn is_from_json(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(f) if f.func.name() == FROM_JSON)
}

/// The distinct `from_json` calls in `exprs` whose arguments hold no other call.
fn innermost_calls<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> Vec<Expr> {
    let mut calls: Vec<Expr> = Vec::new();
    for expr in exprs {
        let _ = expr.apply(|e| {
            if is_from_json(e) && !e.exists(|inner| Ok(inner != e && is_from_json(inner)))? {
                if !calls.contains(e) {
                    calls.push(e.clone());
                }
                return Ok(TreeNodeRecursion::Jump);
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
    calls
}

/// Replaces each call by its decoded column, keeping the expression's output name.
fn read_decoded(expr: Expr, calls: &[(Expr, String)], keep_name: bool) -> DFResult<Expr> {
    let (qualifier, name) = expr.qualified_name();
    let rewritten = expr.transform_down(|e| match calls.iter().find(|(call, _)| *call == e) {
        Some((_, column)) => Ok(Transformed::new(
            Expr::Column(Column::from_name(column)),
            true,
            TreeNodeRecursion::Jump,
        )),
        None => Ok(Transformed::no(e)),
    })?;
    if !rewritten.transformed || !keep_name {
        return Ok(rewritten.data);
    }
    let expr = rewritten.data;
    Ok(match expr {
        Expr::Alias(_) => expr,
        other => other.alias_qualified(qualifier, name),
    })
}

/// Moves the `from_json` calls of projections and filters into [`JsonDecode`] nodes (see the
/// module docs).
pub(crate) fn hoist_json_decodes(plan: LogicalPlan) -> DFResult<LogicalPlan> {
    let mut next = 0usize;
    let mut name = || {
        next += 1;
        format!("{DECODED_PREFIX}{}", next - 1)
    };
    Ok(plan
        .transform_up_with_subqueries(|node| {
            let mut node = node;
            let mut changed = false;
            // Nested calls (`from_json` of a decoded field) take one round per level.
            loop {
                let calls = match &node {
                    LogicalPlan::Projection(p) => innermost_calls(&p.expr),
                    LogicalPlan::Filter(f) => innermost_calls([&f.predicate]),
                    _ => Vec::new(),
                };
                if calls.is_empty() {
                    break;
                }
                let calls: Vec<(Expr, String)> = calls.into_iter().map(|c| (c, name())).collect();
                node = match node {
                    LogicalPlan::Projection(p) => {
                        let input = decode_node(Arc::unwrap_or_clone(p.input), calls.clone())?;
                        let exprs = p
                            .expr
                            .into_iter()
                            .map(|e| read_decoded(e, &calls, true))
                            .collect::<DFResult<Vec<_>>>()?;
                        LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?)
                    }
                    LogicalPlan::Filter(f) => {
                        let columns: Vec<Expr> = f
                            .input
                            .schema()
                            .columns()
                            .into_iter()
                            .map(Expr::Column)
                            .collect();
                        let input = decode_node(Arc::unwrap_or_clone(f.input), calls.clone())?;
                        let predicate = read_decoded(f.predicate, &calls, false)?;
                        let filter =
                            LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?);
                        // The filter's output is its input's: the decoded columns go.
                        LogicalPlan::Projection(Projection::try_new(columns, Arc::new(filter))?)
                    }
                    other => other,
                };
                changed = true;
            }
            Ok(if changed {
                Transformed::yes(node)
            } else {
                Transformed::no(node)
            })
        })?
        .data)
}

fn decode_node(input: LogicalPlan, calls: Vec<(Expr, String)>) -> DFResult<LogicalPlan> {
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(JsonDecode::try_new(input, calls)?),
    }))
}

/// Physical form of [`JsonDecode`]: appends each decode expression's value to every batch.
#[derive(Debug)]
pub(crate) struct JsonDecodeExec {
    input: Arc<dyn ExecutionPlan>,
    decodes: Vec<(Arc<dyn PhysicalExpr>, String)>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl JsonDecodeExec {
    /// Decodes `decodes` over `input`; the output schema is `schema` (the logical node's).
    pub(crate) fn try_new(
        input: Arc<dyn ExecutionPlan>,
        decodes: Vec<(Arc<dyn PhysicalExpr>, String)>,
    ) -> DFResult<Self> {
        let input_schema = input.schema();
        let mut fields: Vec<Arc<Field>> = input_schema.fields().iter().cloned().collect();
        for (expr, name) in &decodes {
            fields.push(Arc::new(Field::new(
                name,
                expr.data_type(&input_schema)?,
                expr.nullable(&input_schema)?,
            )));
        }
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            input_schema.metadata().clone(),
        ));
        let input_properties = input.properties();
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            input_properties.output_partitioning().clone(),
            input_properties.emission_type,
            input_properties.boundedness,
        ));
        Ok(Self {
            input,
            decodes,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for JsonDecodeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "JsonDecodeExec: ")?;
        for (i, (expr, name)) in self.decodes.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{expr} AS {name}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for JsonDecodeExec {
    fn name(&self) -> &str {
        "JsonDecodeExec"
    }

    crate::stateful::unary_plan_methods!();

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        for (expr, _) in &self.decodes {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children.pop().unwrap_or_else(|| Arc::clone(&self.input));
        Ok(Arc::new(Self::try_new(input, self.decodes.clone())?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let decodes: Vec<Arc<dyn PhysicalExpr>> =
            self.decodes.iter().map(|(e, _)| Arc::clone(e)).collect();
        let schema = Arc::clone(&self.schema);
        let out_schema = Arc::clone(&schema);
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let output = input.map(move |batch| {
            let batch = batch?;
            let timer = metrics.elapsed_compute().timer();
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            for expr in &decodes {
                columns.push(expr.evaluate(&batch)?.into_array(batch.num_rows())?);
            }
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            let out =
                RecordBatch::try_new_with_options(Arc::clone(&out_schema), columns, &options)?;
            timer.done();
            metrics.record_output(out.num_rows());
            Ok(out)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
