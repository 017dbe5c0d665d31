//! Column functions in Spark's vocabulary.
//!
//! Everything here builds a DataFusion [`Expr`], so these mix freely with DataFusion's own
//! expression API (`col("a").gt_eq(lit(18))`). The SQL forms (`from_json`, `to_json`, `struct`,
//! `concat`, `current_timestamp`) are registered in every [`crate::StreamSession`] and can be
//! used in `select_expr` and `session.sql`.

mod ddl;
mod json;
mod spark;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, ScalarUDF};

pub use datafusion::functions::expr_fn::named_struct;
pub use datafusion::logical_expr::{cast, lit, when};
pub use ddl::parse_ddl_schema;
pub use json::{
    DEFAULT_CORRUPT_RECORD_COLUMN, FromJson, JsonOptions, ParseMode, ToJson, decode_json_column,
    encode_json_column,
};
pub use spark::{
    BatchTimestamp, BinaryToString, LenientBinaryCast, SparkConcat, SparkStructPlanner,
    binary_to_string_lossy,
};

pub(crate) use json::{MalformedSignal, malformed_records};
pub(crate) use spark::BatchClock;

pub use crate::stateful::windows::{
    session_window, sliding_window, window, window_time, window_with_start,
};
pub use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};

use crate::error::Result;

/// A column by name, matched exactly as written (`col("Age")` is the column `Age`).
///
/// DataFusion's own `col` lower-cases unquoted names; Flumen's sessions match identifiers as
/// written, so this `col` does too. `col("t.a")` is column `a` of relation `t`.
pub fn col(name: impl AsRef<str>) -> Expr {
    Expr::Column(datafusion::common::Column::from_qualified_name_ignore_case(
        name.as_ref(),
    ))
}

/// A schema for [`from_json`]: an Arrow schema, or a Spark DDL string.
pub trait IntoJsonSchema {
    /// Converts into an Arrow schema.
    fn into_json_schema(self) -> Result<SchemaRef>;
}

impl IntoJsonSchema for SchemaRef {
    fn into_json_schema(self) -> Result<SchemaRef> {
        Ok(self)
    }
}

impl IntoJsonSchema for Schema {
    fn into_json_schema(self) -> Result<SchemaRef> {
        Ok(Arc::new(self))
    }
}

impl IntoJsonSchema for &Schema {
    fn into_json_schema(self) -> Result<SchemaRef> {
        Ok(Arc::new(self.clone()))
    }
}

impl IntoJsonSchema for &datafusion::common::DFSchema {
    fn into_json_schema(self) -> Result<SchemaRef> {
        Ok(Arc::new(self.as_arrow().clone()))
    }
}

impl IntoJsonSchema for &str {
    fn into_json_schema(self) -> Result<SchemaRef> {
        parse_ddl_schema(self).map(Arc::new)
    }
}

/// Parses a JSON string column into a struct with `schema` (Spark's PERMISSIVE mode: a malformed
/// record gives a struct whose fields are all null; see [`from_json_with_options`] for the
/// corrupt-record column and FAILFAST).
///
/// ```
/// use flumen_engine::functions::{col, from_json};
/// let parsed = from_json(col("json"), "PassengerId BIGINT, Name STRING").unwrap();
/// ```
pub fn from_json(json: Expr, schema: impl IntoJsonSchema) -> Result<Expr> {
    from_json_with_options(json, schema, JsonOptions::default())
}

/// [`from_json`] with options: the parse mode, and the schema field that receives the raw text
/// of malformed records (`_corrupt_record` by default; add a nullable `Utf8` field with that
/// name to the schema to keep it).
pub fn from_json_with_options(
    json: Expr,
    schema: impl IntoJsonSchema,
    options: JsonOptions,
) -> Result<Expr> {
    let udf = ScalarUDF::from(FromJson::with_schema(schema.into_json_schema()?, options));
    Ok(Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(udf),
        vec![json],
    )))
}

/// Formats a struct column as a JSON object per row; null fields are omitted (Spark's default).
///
/// ```
/// use flumen_engine::functions::{col, struct_, to_json};
/// let value = to_json(struct_([col("PassengerId"), col("Name")]));
/// ```
pub fn to_json(value: Expr) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::from(ToJson::default())),
        vec![value],
    ))
}

/// A struct of columns, each field named after its column or alias (Spark's `struct`).
pub fn struct_(columns: impl IntoIterator<Item = Expr>) -> Expr {
    spark::spark_struct(columns.into_iter().collect())
}

/// Concatenates the arguments as strings; null when any argument is null (Spark's `concat`).
///
/// ```
/// use flumen_engine::functions::{col, concat, lit};
/// let tagged = concat([lit("[processed] "), col("value")]);
/// ```
pub fn concat(parts: impl IntoIterator<Item = Expr>) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::from(SparkConcat::default())),
        parts.into_iter().collect(),
    ))
}

/// The current micro-batch's timestamp (Spark's `current_timestamp()`).
pub fn current_timestamp() -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(ScalarUDF::from(BatchTimestamp::default())),
        vec![],
    ))
}

/// Casts to a string, decoding binary leniently (invalid UTF-8 becomes U+FFFD).
pub fn cast_string(value: Expr) -> Expr {
    cast(value, DataType::Utf8)
}

/// An interval literal from Spark's text form, e.g. `interval("5 seconds")`, for timestamp
/// arithmetic: `col("ts") + interval("1 minute")?`.
pub fn interval(text: &str) -> Result<Expr> {
    let duration = crate::options::parse_interval(text)?;
    let nanos = i64::try_from(duration.as_nanos()).map_err(|_| {
        crate::FlumenError::invalid_option("interval", format!("'{text}' is too long"))
    })?;
    Ok(lit(datafusion::common::ScalarValue::IntervalMonthDayNano(
        Some(datafusion::arrow::datatypes::IntervalMonthDayNano::new(
            0, 0, nanos,
        )),
    )))
}

/// Registers the Spark-compatible functions of this module in a DataFusion session.
pub(crate) fn register(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_udf(ScalarUDF::from(FromJson::sql()));
    ctx.register_udf(ScalarUDF::from(ToJson::default()));
    ctx.register_udf(ScalarUDF::from(SparkConcat::default()));
    ctx.register_udf(ScalarUDF::from(BatchTimestamp::default()));
    ctx.register_udf(ScalarUDF::from(BinaryToString::default()));
    ctx.register_udf(ScalarUDF::from(
        crate::stateful::windows::TimeWindow::default(),
    ));
    ctx.register_udf(ScalarUDF::from(
        crate::stateful::windows::SessionWindow::default(),
    ));
    ctx.register_udf(ScalarUDF::from(
        crate::stateful::windows::WindowTime::default(),
    ));
}
