//! Spark-compatible replacements for a few DataFusion functions, registered in every
//! [`crate::StreamSession`]:
//!
//! - `concat(a, b, ...)` is null when any argument is null (Spark/Hive), where DataFusion's treats
//!   null as an empty string;
//! - `current_timestamp()` / `now()` return the micro-batch's timestamp (one value for every row
//!   of a batch, as Spark does), not the time the plan was built; outside a micro-batch they
//!   return the wall-clock time of the call;
//! - `CAST(binary AS STRING)` decodes UTF-8 leniently: invalid sequences become U+FFFD instead
//!   of failing the query (Arrow strings must be valid UTF-8; the raw bytes stay in the binary
//!   column);
//! - `struct(a, b)` names its fields after its arguments (`a`, `b`; `colN` for unnamed
//!   expressions), as Spark does, instead of DataFusion's `c0`, `c1`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result as DFResult, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility, lit,
};
use datafusion::optimizer::AnalyzerRule;

/// The timestamp (ms since the epoch) of the micro-batch a query is running: set by the query's
/// loop before each batch, read by every partition of the batch's plan (whatever thread runs
/// it).
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchClock(Arc<AtomicI64>);

impl BatchClock {
    /// Sets the running batch's timestamp.
    pub(crate) fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::Release);
    }

    fn get(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

impl PartialEq for BatchClock {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for BatchClock {}

impl std::hash::Hash for BatchClock {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// Spark's `concat`: the concatenation of its arguments as strings, null if any is null.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SparkConcat {
    signature: Signature,
}

impl Default for SparkConcat {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SparkConcat {
    fn name(&self) -> &str {
        "concat"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DFResult<Vec<DataType>> {
        if arg_types.is_empty() {
            return datafusion::common::plan_err!("concat needs at least one argument");
        }
        Ok(vec![DataType::Utf8; arg_types.len()])
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| Ok(cast(&a.to_array(rows)?, &DataType::Utf8)?))
            .collect::<DFResult<_>>()?;
        let strings: Vec<&StringArray> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
        let mut out = StringBuilder::with_capacity(rows, rows * 16);
        let mut row_text = String::new();
        'rows: for row in 0..rows {
            row_text.clear();
            for s in &strings {
                if s.is_null(row) {
                    out.append_null();
                    continue 'rows;
                }
                row_text.push_str(s.value(row));
            }
            out.append_value(&row_text);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `current_timestamp()` / `now()`: the micro-batch timestamp (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BatchTimestamp {
    signature: Signature,
    aliases: Vec<String>,
    /// The query's clock; `None` in the session's registry (batch queries: wall-clock time).
    clock: Option<BatchClock>,
}

impl Default for BatchTimestamp {
    fn default() -> Self {
        Self {
            // Volatile keeps the optimizer from folding it into a constant at planning time.
            signature: Signature::nullary(Volatility::Volatile),
            aliases: vec!["now".to_string()],
            clock: None,
        }
    }
}

impl BatchTimestamp {
    /// The return type: nanosecond UTC timestamps, like DataFusion's `now()`.
    pub fn data_type() -> DataType {
        DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from("+00:00")))
    }

    /// The function bound to one query's clock.
    pub(crate) fn with_clock(clock: BatchClock) -> Self {
        Self {
            clock: Some(clock),
            ..Self::default()
        }
    }
}

impl ScalarUDFImpl for BatchTimestamp {
    fn name(&self) -> &str {
        "current_timestamp"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(Self::data_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let ms = self
            .clock
            .as_ref()
            .map_or_else(|| chrono::Utc::now().timestamp_millis(), BatchClock::get);
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
            Some(ms * 1_000_000),
            Some(Arc::from("+00:00")),
        )))
    }
}

/// Lenient binary → string decoding used for `CAST(binary AS STRING)` (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct BinaryToString {
    signature: Signature,
}

impl Default for BinaryToString {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for BinaryToString {
    fn name(&self) -> &str {
        "binary_to_string"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let rows = args.number_rows;
        let input = args.args[0].to_array(rows)?;
        Ok(ColumnarValue::Array(binary_to_string_lossy(&input)?))
    }
}

/// Decodes a binary column as UTF-8, replacing invalid sequences with U+FFFD.
///
/// Valid input (the usual case) is converted by one validating cast without copying per row.
pub fn binary_to_string_lossy(input: &ArrayRef) -> DFResult<ArrayRef> {
    let strict = datafusion::arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    if let Ok(valid) =
        datafusion::arrow::compute::cast_with_options(input, &DataType::Utf8, &strict)
    {
        return Ok(valid);
    }
    let binary = cast(input, &DataType::LargeBinary)?;
    let binary = binary.as_binary::<i64>();
    let mut out = StringBuilder::with_capacity(binary.len(), binary.values().len());
    for value in binary.iter() {
        match value {
            Some(bytes) => out.append_value(String::from_utf8_lossy(bytes)),
            None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_)
    )
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Rewrites `CAST(binary AS STRING)` into the lenient [`BinaryToString`].
#[derive(Debug, Default)]
pub struct LenientBinaryCast;

impl AnalyzerRule for LenientBinaryCast {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DFResult<LogicalPlan> {
        let udf = Arc::new(ScalarUDF::from(BinaryToString::default()));
        plan.transform_up_with_subqueries(|node| {
            let mut schema = DFSchema::empty();
            for input in node.inputs() {
                schema.merge(input.schema());
            }
            node.map_expressions(|e| {
                e.transform_up(|e| {
                    let (inner, target) = match &e {
                        Expr::Cast(c) => (&c.expr, c.field.data_type()),
                        Expr::TryCast(c) => (&c.expr, c.field.data_type()),
                        _ => return Ok(Transformed::no(e)),
                    };
                    if !is_string(target) {
                        return Ok(Transformed::no(e));
                    }
                    let Ok(source) = inner.get_type(&schema) else {
                        return Ok(Transformed::no(e));
                    };
                    if !is_binary(&source) {
                        return Ok(Transformed::no(e));
                    }
                    let decoded = Expr::ScalarFunction(ScalarFunction::new_udf(
                        Arc::clone(&udf),
                        vec![inner.as_ref().clone()],
                    ));
                    let target = target.clone();
                    let rewritten = if target == DataType::Utf8 {
                        decoded
                    } else {
                        Expr::Cast(datafusion::logical_expr::Cast::new(
                            Box::new(decoded),
                            target,
                        ))
                    };
                    // Keep the original output name (e.g. `CAST(value AS Utf8)` aliased `value`).
                    let name = e.schema_name().to_string();
                    Ok(Transformed::yes(rewritten.alias_if_changed(name)?))
                })
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "flumen_lenient_binary_cast"
    }
}

/// Plans `struct(a, b)` with Spark's field names.
#[derive(Debug, Default)]
pub struct SparkStructPlanner;

impl ExprPlanner for SparkStructPlanner {
    fn plan_struct_literal(
        &self,
        args: Vec<Expr>,
        is_named_struct: bool,
    ) -> DFResult<PlannerResult<Vec<Expr>>> {
        if is_named_struct {
            return Ok(PlannerResult::Original(args));
        }
        Ok(PlannerResult::Planned(spark_struct(args)))
    }

    fn plan_field_access(
        &self,
        expr: datafusion::logical_expr::planner::RawFieldAccessExpr,
        _schema: &DFSchema,
    ) -> DFResult<PlannerResult<datafusion::logical_expr::planner::RawFieldAccessExpr>> {
        Self::plan_access(expr)
    }
}

impl SparkStructPlanner {
    fn field(expr: Expr, name: ScalarValue) -> Expr {
        datafusion::functions::core::get_field().call(vec![expr, lit(name)])
    }
}

/// `struct_col['field']` and `struct_col.field` in SQL (without DataFusion's nested-types
/// feature, which Flumen does not compile in).
impl SparkStructPlanner {
    fn plan_access(
        expr: datafusion::logical_expr::planner::RawFieldAccessExpr,
    ) -> DFResult<PlannerResult<datafusion::logical_expr::planner::RawFieldAccessExpr>> {
        use datafusion::logical_expr::GetFieldAccess;
        match expr.field_access {
            GetFieldAccess::NamedStructField { name } => {
                Ok(PlannerResult::Planned(Self::field(expr.expr, name)))
            }
            other => Ok(PlannerResult::Original(
                datafusion::logical_expr::planner::RawFieldAccessExpr {
                    field_access: other,
                    expr: expr.expr,
                },
            )),
        }
    }
}

/// A struct of `args`, fields named after plain columns and aliases, `colN` otherwise (1-based,
/// as Spark).
pub fn spark_struct(args: Vec<Expr>) -> Expr {
    let mut named = Vec::with_capacity(args.len() * 2);
    for (i, arg) in args.into_iter().enumerate() {
        let name = match &arg {
            Expr::Column(c) => c.name.clone(),
            Expr::Alias(a) => a.name.clone(),
            _ => format!("col{}", i + 1),
        };
        let value = match arg {
            Expr::Alias(a) => *a.expr,
            other => other,
        };
        named.push(lit(name));
        named.push(value);
    }
    datafusion::functions::core::named_struct().call(named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::BinaryArray;

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let input: ArrayRef = Arc::new(BinaryArray::from(vec![
            Some(b"ok".as_ref()),
            Some(&[0x66, 0xff, 0x6f][..]),
            None,
        ]));
        let out = binary_to_string_lossy(&input).unwrap();
        let out = out.as_string::<i32>();
        assert_eq!(out.value(0), "ok");
        assert_eq!(out.value(1), "f\u{FFFD}o");
        assert!(out.is_null(2));
    }
}
