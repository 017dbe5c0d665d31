//! Dead letters: the records `from_json` cannot parse, handed to a side output with their whole
//! source row (for Kafka: key, value, headers, topic, partition, offset, timestamp) and the
//! parse error.
//!
//! The query's own output is unchanged: a malformed record still gives the PERMISSIVE null
//! struct, or its text in the corrupt-record column. The dead letters come *alongside*.
//!
//! How it stays cheap: every `from_json` call of the query counts the malformed records it
//! meets in a counter shared with the micro-batch loop. A batch whose count is zero (the normal case) costs
//! nothing more. Otherwise each call's argument is evaluated again over the batch's source rows
//! — at `start()` it was traced back through the projections and filters between the call and
//! the stream, so the source row of every parsed record is known — and the malformed records
//! are decoded one by one to learn why. A call whose input does not come from the stream
//! through projections and filters only (e.g. after an aggregation) is refused at `start()`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{and, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::PhysicalExpr;

use crate::error::{FlumenError, Result};
use crate::exec::SideOutput;
use crate::functions::{FromJson, JsonOptions, MalformedSignal, malformed_records};
use crate::stateful::watermark::EventTimeWatermark;

/// The column of a dead letter that says why its record could not be parsed.
pub const PARSE_ERROR_COLUMN: &str = "parse_error";

/// The schema of dead letters for a source with `source` schema: every source column, then
/// [`PARSE_ERROR_COLUMN`] (a string naming the `from_json` call and the decoder's message).
pub fn dead_letters_schema(source: &Schema) -> Result<SchemaRef> {
    if source.index_of(PARSE_ERROR_COLUMN).is_ok() {
        return Err(FlumenError::invalid_option(
            "deadLetters",
            format!(
                "the stream already has a column named {PARSE_ERROR_COLUMN}, which dead letters add; rename it"
            ),
        ));
    }
    let mut fields: Vec<Arc<Field>> = source.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        PARSE_ERROR_COLUMN,
        DataType::Utf8,
        false,
    )));
    Ok(Arc::new(Schema::new(fields)))
}

/// Makes every `from_json` call in `plan` count its malformed records in `signal`.
pub(crate) fn report_malformed_records(
    plan: LogicalPlan,
    signal: &MalformedSignal,
) -> Result<LogicalPlan> {
    let rewritten = plan.transform_up_with_subqueries(|node| {
        node.map_expressions(|expr| {
            expr.transform(|e| match &e {
                Expr::ScalarFunction(call) => match call.func.inner().downcast_ref::<FromJson>() {
                    Some(from_json) => {
                        let reporting = ScalarUDF::new_from_impl(from_json.reporting_to(signal));
                        Ok(Transformed::yes(Expr::ScalarFunction(
                            ScalarFunction::new_udf(Arc::new(reporting), call.args.clone()),
                        )))
                    }
                    None => Ok(Transformed::no(e)),
                },
                _ => Ok(Transformed::no(e)),
            })
        })
    })?;
    Ok(rewritten.data)
}

/// One `from_json` call, traced back to the stream.
struct TracedCall {
    /// The call as written, for the error column.
    call: String,
    /// Its JSON text, computed from the source row.
    text: Arc<dyn PhysicalExpr>,
    /// The filters between the stream and the call: only rows passing all of them reach it.
    filters: Vec<Arc<dyn PhysicalExpr>>,
    fields: Fields,
    options: JsonOptions,
    /// The call over the source and its filters, as text: equal keys are the same check.
    key: String,
}

/// A query's dead-letter output: its traced calls, the signal they count in, and the sink.
pub(crate) struct DeadLetters {
    calls: Vec<TracedCall>,
    signal: MalformedSignal,
    /// Where the dead letters go (its schema is [`dead_letters_schema`]'s).
    pub output: SideOutput,
}

impl DeadLetters {
    /// Traces every `from_json` call of `plan` (the query as the user wrote it) back to the
    /// stream whose rows have `source_schema`.
    pub(crate) fn new(
        plan: &LogicalPlan,
        source_schema: &SchemaRef,
        state: &SessionState,
        signal: MalformedSignal,
        output: SideOutput,
    ) -> Result<Self> {
        let source = DFSchema::try_from(source_schema.as_ref().clone())?;
        // Analyzed as the query will be (type coercion, Spark's lenient binary cast), so the
        // text evaluated again is the text the query parsed.
        let analyzed =
            state
                .analyzer()
                .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
        let mut calls: Vec<TracedCall> = Vec::new();
        find_calls(&analyzed, &[], &source, state, &mut calls)?;
        if calls.is_empty() {
            return Err(FlumenError::invalid_option(
                "deadLetters",
                "a dead-letter output collects the records from_json cannot parse, and this query calls no from_json",
            ));
        }
        Ok(Self {
            calls,
            signal,
            output,
        })
    }

    /// The dead letters of the batch whose source rows are `source_rows` (all source columns),
    /// after the plan ran over it. Nothing to do when no `from_json` call met a malformed record.
    pub(crate) fn collect(&self, source_rows: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        if self.signal.take() == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for batch in source_rows {
            for call in &self.calls {
                let reached = match reached_rows(batch, &call.filters)? {
                    Some(reached) => reached,
                    None => continue,
                };
                let text = call
                    .text
                    .evaluate(&reached)?
                    .into_array(reached.num_rows())?;
                let malformed = malformed_records(&text, &call.fields, &call.options)?;
                if malformed.is_empty() {
                    continue;
                }
                let indices: UInt32Array = malformed.iter().map(|(i, _)| *i as u32).collect();
                let mut columns = reached
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &indices, None))
                    .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
                let errors: StringArray = malformed
                    .iter()
                    .map(|(_, reason)| Some(format!("{}: {reason}", call.call)))
                    .collect();
                columns.push(Arc::new(errors));
                out.push(RecordBatch::try_new(
                    Arc::clone(&self.output.schema),
                    columns,
                )?);
            }
        }
        Ok(out)
    }
}

/// A filter above a node: its predicate and the plan it filters.
type FilterAbove<'a> = (&'a Expr, &'a LogicalPlan);

/// Traces the `from_json` calls in `node` and below, `above` being the filters on the way from
/// the query's output down to `node`.
fn find_calls<'a>(
    node: &'a LogicalPlan,
    above: &[FilterAbove<'a>],
    source: &DFSchema,
    state: &SessionState,
    calls: &mut Vec<TracedCall>,
) -> Result<()> {
    let (found, input) = match node {
        LogicalPlan::Projection(p) => (from_json_calls(&p.expr), Some(p.input.as_ref())),
        LogicalPlan::Filter(f) => (from_json_calls([&f.predicate]), Some(f.input.as_ref())),
        other => (from_json_calls(other.expressions().iter()), None),
    };
    for call in found {
        let Some(input) = input else {
            return Err(untraceable(&call, node));
        };
        let traced = trace_call(&call, input, above, source, state)?;
        // The same call over the same rows, written in two places, is one check.
        if !calls.iter().any(|c| c.key == traced.key) {
            calls.push(traced);
        }
    }
    let mut below: Vec<FilterAbove<'a>> = above.to_vec();
    if let LogicalPlan::Filter(f) = node {
        below.push((&f.predicate, f.input.as_ref()));
    }
    for child in node.inputs() {
        find_calls(child, &below, source, state, calls)?;
    }
    Ok(())
}

/// The rows of `batch` that pass every filter (`None` when none does).
fn reached_rows(
    batch: &RecordBatch,
    filters: &[Arc<dyn PhysicalExpr>],
) -> Result<Option<RecordBatch>> {
    let mut mask: Option<BooleanArray> = None;
    for filter in filters {
        let value = filter.evaluate(batch)?.into_array(batch.num_rows())?;
        let Some(passed) = value.as_any().downcast_ref::<BooleanArray>() else {
            return Err(FlumenError::IllegalState(format!(
                "a filter before from_json gave {} values instead of booleans",
                value.data_type()
            )));
        };
        mask = Some(match mask {
            Some(m) => and(&m, passed)?,
            None => passed.clone(),
        });
    }
    let reached = match mask {
        Some(mask) => filter_record_batch(batch, &mask)?,
        None => batch.clone(),
    };
    Ok((reached.num_rows() > 0).then_some(reached))
}

/// The outermost `from_json` calls in `exprs` (an inner call is traced with its outer one).
fn from_json_calls<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> Vec<Expr> {
    let mut calls: Vec<Expr> = Vec::new();
    for expr in exprs {
        let _ = expr.apply(|e| {
            if let Expr::ScalarFunction(call) = e
                && call.func.inner().downcast_ref::<FromJson>().is_some()
            {
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

fn untraceable(call: &Expr, node: &LogicalPlan) -> FlumenError {
    FlumenError::Unsupported(format!(
        "dead letters need each from_json call to read the stream's columns through projections and filters only, \
         so that every malformed record is known with its source row; {call} reads the output of {}. \
         Parse the JSON before that step, or drop the dead-letter output",
        node.display()
    ))
}

/// Traces `call` (evaluated over the rows of `input`) back to the source.
///
/// Its rows are those that pass the filters between the stream and the call, and the filters
/// above it that do not read a parsed value: the optimizer may move those below the parse, so
/// rows they remove are never parsed (a filter on a parsed field keeps the record a dead letter).
fn trace_call(
    call: &Expr,
    input: &LogicalPlan,
    above: &[FilterAbove<'_>],
    source: &DFSchema,
    state: &SessionState,
) -> Result<TracedCall> {
    let Expr::ScalarFunction(function) = call else {
        return Err(untraceable(call, input));
    };
    let Some(from_json) = function.func.inner().downcast_ref::<FromJson>() else {
        return Err(untraceable(call, input));
    };
    let mut filters = Vec::new();
    let at_source = to_source(call.clone(), input, &mut filters)?;
    for (predicate, filtered) in above {
        let mut passed = Vec::new();
        if let Ok(at_source) = to_source((*predicate).clone(), filtered, &mut passed)
            && from_json_calls([&at_source]).is_empty()
        {
            filters.push(at_source);
        }
    }
    let DataType::Struct(fields) = at_source.get_type(source)? else {
        return Err(FlumenError::IllegalState(format!(
            "{call} does not return a struct"
        )));
    };
    let Expr::ScalarFunction(resolved) = &at_source else {
        return Err(untraceable(call, input));
    };
    let key = format!("{at_source} where {filters:?}");
    let text = resolved
        .args
        .first()
        .cloned()
        .ok_or_else(|| FlumenError::IllegalState(format!("{call} has no argument")))?;
    Ok(TracedCall {
        call: call.schema_name().to_string(),
        text: state.create_physical_expr(text, source)?,
        filters: filters
            .into_iter()
            .map(|f| state.create_physical_expr(f, source))
            .collect::<std::result::Result<_, _>>()?,
        fields,
        options: from_json.options().clone(),
        key,
    })
}

/// Rewrites `expr`, over the rows of `plan`, as an expression over the stream's columns,
/// adding the filters it passes on the way to `filters`.
fn to_source(expr: Expr, plan: &LogicalPlan, filters: &mut Vec<Expr>) -> Result<Expr> {
    match plan {
        LogicalPlan::Projection(p) => {
            let rewritten = replace_columns(expr, |column| {
                let index = p.schema.index_of_column(column)?;
                match p.expr.get(index) {
                    Some(defined) => Ok(defined.clone().unalias_nested().data),
                    None => datafusion::common::internal_err!(
                        "projection has no expression for column {column}"
                    ),
                }
            })?;
            to_source(rewritten, &p.input, filters)
        }
        LogicalPlan::Filter(f) => {
            let predicate = to_source(f.predicate.clone(), &f.input, filters)?;
            filters.push(predicate);
            to_source(expr, &f.input, filters)
        }
        LogicalPlan::SubqueryAlias(a) => {
            let rewritten = same_columns_below(expr, plan, &a.input)?;
            to_source(rewritten, &a.input, filters)
        }
        LogicalPlan::Extension(e) if e.node.as_any().is::<EventTimeWatermark>() => {
            let input = e.node.inputs()[0];
            let rewritten = same_columns_below(expr, plan, input)?;
            to_source(rewritten, input, filters)
        }
        LogicalPlan::TableScan(_) if crate::plan::stream_table(plan).is_some() => {
            replace_columns(expr, |column| {
                Ok(Expr::Column(Column::new_unqualified(column.name.clone())))
            })
        }
        other => Err(FlumenError::Unsupported(format!(
            "dead letters need each from_json call to read the stream's columns through projections and filters only, \
             so that every malformed record is known with its source row; {expr} reads the output of {}. \
             Parse the JSON before that step, or drop the dead-letter output",
            other.display()
        ))),
    }
}

/// For a node whose columns are its input's (an alias, a watermark): the same column below.
fn same_columns_below(expr: Expr, node: &LogicalPlan, input: &LogicalPlan) -> Result<Expr> {
    replace_columns(expr, |column| {
        let index = node.schema().index_of_column(column)?;
        let (qualifier, field) = input.schema().qualified_field(index);
        Ok(Expr::Column(Column::new(qualifier.cloned(), field.name())))
    })
}

fn replace_columns(
    expr: Expr,
    mut replace: impl FnMut(&Column) -> datafusion::error::Result<Expr>,
) -> Result<Expr> {
    Ok(expr
        .transform_down(|e| match &e {
            Expr::Column(column) => Ok(Transformed::new(
                replace(column)?,
                true,
                TreeNodeRecursion::Jump,
            )),
            _ => Ok(Transformed::no(e)),
        })?
        .data)
}
