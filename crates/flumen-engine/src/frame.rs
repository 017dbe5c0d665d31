//! [`StreamFrame`]: a DataFrame that may read a stream, with Spark's transformation vocabulary.
//!
//! Transformations build a DataFusion logical plan; nothing runs until `write_stream().start()`
//! (streaming) or `collect()` (static). Like Spark's DataFrame, one type covers both: a frame
//! reading a stream rejects batch actions with Spark's message, and a static frame rejects
//! `write_stream().start()`.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Column, DFSchema};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::ViewTable;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::{Expr, Extension, JoinType, LogicalPlan, SortExpr, col};

use regex::Regex;

use crate::error::{FlumenError, Result};
use crate::plan::stream_sources;
use crate::session::StreamSession;
use crate::stateful::dedup::Deduplicate;
use crate::stateful::watermark::{EventTimeWatermark, parse_delay};
use crate::writer::DataStreamWriter;

const LEFT: &str = "__flumen_left";
const RIGHT: &str = "__flumen_right";

/// A (possibly streaming) DataFrame.
///
/// The same transformations apply to a stream and to a static table; only the actions differ:
/// a static frame is run with [`collect`](Self::collect), a streaming one by a query started
/// with [`write_stream`](Self::write_stream).
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> flumen_engine::Result<()> {
/// use std::sync::Arc;
/// use flumen_engine::datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
/// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
/// use flumen_engine::prelude::*;
///
/// let session = StreamSession::new();
/// let batch = RecordBatch::try_from_iter([
///     ("name", Arc::new(StringArray::from(vec!["Ann", "Bob", "Cid"])) as ArrayRef),
///     ("age", Arc::new(Int64Array::from(vec![34, 17, 52])) as ArrayRef),
/// ])?;
/// let people = Arc::new(MemoryStream::new("people", batch.schema()));
/// people.add_batch(batch)?;
///
/// let adults = session
///     .stream(people)?
///     .filter(col("age").gt_eq(lit(18)))?
///     .with_column("senior", col("age").gt_eq(lit(50)))?
///     .drop(&["age"])?;
/// assert!(adults.is_streaming());
/// assert!(adults.collect().await.is_err()); // a stream needs write_stream().start()
///
/// let query = adults.write_stream().memory().query_name("adults").start().await?;
/// query.process_all_available().await?;
/// query.stop().await?;
/// let rows = session.sql("SELECT * FROM adults ORDER BY name").await?.collect().await?;
/// assert_eq!(
///     pretty_format_batches(&rows)?.to_string(),
///     "+------+--------+\n\
///      | name | senior |\n\
///      +------+--------+\n\
///      | Ann  | false  |\n\
///      | Cid  | true   |\n\
///      +------+--------+"
/// );
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamFrame {
    session: StreamSession,
    df: DataFrame,
}

impl std::fmt::Debug for StreamFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamFrame")
            .field("streaming", &self.is_streaming())
            .field("columns", &self.columns())
            .finish()
    }
}

impl StreamFrame {
    pub(crate) fn new(session: StreamSession, df: DataFrame) -> Self {
        Self { session, df }
    }

    fn with_df(&self, df: DataFrame) -> Self {
        Self {
            session: self.session.clone(),
            df,
        }
    }

    /// The session this frame belongs to.
    pub fn session(&self) -> &StreamSession {
        &self.session
    }

    /// Whether the frame reads a stream (Spark's `isStreaming`).
    pub fn is_streaming(&self) -> bool {
        !stream_sources(self.df.logical_plan()).is_empty()
    }

    /// The output schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    /// The column names, in order.
    pub fn columns(&self) -> Vec<String> {
        self.df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// The underlying DataFusion DataFrame (its logical plan, for inspection or extension).
    pub fn dataframe(&self) -> &DataFrame {
        &self.df
    }

    /// Projects expressions.
    pub fn select(&self, exprs: impl IntoIterator<Item = Expr>) -> Result<Self> {
        Ok(self.with_df(self.df.clone().select(exprs)?))
    }

    /// Projects columns by name.
    pub fn select_columns(&self, columns: &[&str]) -> Result<Self> {
        Ok(self.with_df(self.df.clone().select_columns(columns)?))
    }

    /// Projects SQL expressions, as Spark's `selectExpr`: `"CAST(value AS STRING) AS json"`,
    /// `"data.*"` (the fields of a struct column), `"to_json(struct(*)) AS value"` (`*` inside
    /// `struct(...)` is every column of this frame).
    ///
    /// Decoding JSON values, as read from Kafka's binary `value` column:
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch};
    /// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let values = BinaryArray::from_vec(vec![
    ///     br#"{"name":"Ann","age":34}"#.as_slice(),
    ///     br#"{"name":"Bob","age":17}"#.as_slice(),
    /// ]);
    /// let batch = RecordBatch::try_from_iter([("value", Arc::new(values) as ArrayRef)])?;
    /// let input = Arc::new(MemoryStream::new("json", batch.schema()));
    /// input.add_batch(batch)?;
    ///
    /// let people = session
    ///     .stream(input)?
    ///     .select_expr(["from_json(CAST(value AS STRING), 'name STRING, age INT') AS data"])?
    ///     .select_expr(["data.*"])?
    ///     .select_expr(["name", "age >= 18 AS adult"])?;
    /// assert_eq!(people.columns(), ["name", "adult"]);
    ///
    /// let query = people.write_stream().memory().query_name("people").start().await?;
    /// query.process_all_available().await?;
    /// query.stop().await?;
    /// let rows = session.sql("SELECT * FROM people ORDER BY name").await?.collect().await?;
    /// assert_eq!(
    ///     pretty_format_batches(&rows)?.to_string(),
    ///     "+------+-------+\n\
    ///      | name | adult |\n\
    ///      +------+-------+\n\
    ///      | Ann  | true  |\n\
    ///      | Bob  | false |\n\
    ///      +------+-------+"
    /// );
    /// # Ok(()) }
    /// ```
    pub fn select_expr<S: AsRef<str>>(&self, exprs: impl IntoIterator<Item = S>) -> Result<Self> {
        let schema = self.df.schema().clone();
        let mut projected = Vec::new();
        for text in exprs {
            let text = text.as_ref();
            if let Some(expanded) = expand_star(text, &schema)? {
                projected.extend(expanded);
                continue;
            }
            let rewritten = expand_struct_star(text, &schema);
            projected.push(keep_cast_name(self.df.parse_sql_expr(&rewritten)?));
        }
        self.select(projected)
    }

    /// Adds a column, or replaces the column of that name (Spark's `withColumn`).
    pub fn with_column(&self, name: &str, expr: Expr) -> Result<Self> {
        Ok(self.with_df(self.df.clone().with_column(name, expr)?))
    }

    /// Renames a column; a no-op when it does not exist (as Spark).
    pub fn with_column_renamed(&self, old: &str, new: &str) -> Result<Self> {
        Ok(self.with_df(self.df.clone().with_column_renamed(old, new)?))
    }

    /// Keeps rows where `predicate` is true (Spark's `filter`/`where`).
    pub fn filter(&self, predicate: Expr) -> Result<Self> {
        Ok(self.with_df(self.df.clone().filter(predicate)?))
    }

    /// Keeps rows where the SQL predicate is true: `filter_expr("Age >= 18")`.
    pub fn filter_expr(&self, predicate: &str) -> Result<Self> {
        let expr = self.df.parse_sql_expr(predicate)?;
        self.filter(expr)
    }

    /// Drops columns by name; names that do not exist are ignored (as Spark).
    pub fn drop(&self, columns: &[&str]) -> Result<Self> {
        let columns: Vec<Column> = columns
            .iter()
            .map(|c| Column::new_unqualified(*c))
            .collect();
        Ok(self.with_df(self.df.clone().drop_columns(&columns)?))
    }

    /// Joins with a static DataFrame on columns present on both sides with the same names
    /// (Spark's `join(other, on=[...], how=...)`): the join columns appear once, first,
    /// followed by this frame's other columns and then `right`'s.
    ///
    /// With a stream on the left, inner, left outer, left semi and left anti joins are supported;
    /// the static side's hash table is built once per query, not per batch.
    pub fn join(&self, right: DataFrame, how: JoinType, on: &[&str]) -> Result<Self> {
        let left_names = self.columns();
        let right_names: Vec<String> = right
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for key in on {
            if !left_names.iter().any(|n| n == key) || !right_names.iter().any(|n| n == key) {
                return Err(FlumenError::invalid_option(
                    "on",
                    format!(
                        "join column '{key}' must exist on both sides (left: {left_names:?}, right: {right_names:?})"
                    ),
                ));
            }
        }
        if !matches!(
            how,
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::RightSemi | JoinType::RightAnti
        ) && let Some(clash) = left_names
            .iter()
            .find(|n| !on.contains(&n.as_str()) && right_names.contains(n))
        {
            return Err(FlumenError::invalid_option(
                "on",
                format!(
                    "column '{clash}' is on both sides of the join and is not a join column; rename it on one side first (with_column_renamed)"
                ),
            ));
        }
        let left = self.df.clone().alias(LEFT)?;
        let right = right.alias(RIGHT)?;
        let equalities = on
            .iter()
            .map(|key| col(Column::new(Some(LEFT), *key)).eq(col(Column::new(Some(RIGHT), *key))));
        let joined = left.join_on(right, how, equalities)?;
        let qualified = |side: &str, name: &str| col(Column::new(Some(side), name)).alias(name);
        let mut exprs = Vec::new();
        let semi_or_anti = matches!(
            how,
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::RightSemi | JoinType::RightAnti
        );
        if semi_or_anti {
            let (side, names) = match how {
                JoinType::LeftSemi | JoinType::LeftAnti => (LEFT, &left_names),
                _ => (RIGHT, &right_names),
            };
            exprs.extend(names.iter().map(|n| qualified(side, n)));
        } else {
            for key in on {
                exprs.push(match how {
                    JoinType::Right => qualified(RIGHT, key),
                    JoinType::Full => datafusion::functions::expr_fn::coalesce(vec![
                        col(Column::new(Some(LEFT), *key)),
                        col(Column::new(Some(RIGHT), *key)),
                    ])
                    .alias(*key),
                    _ => qualified(LEFT, key),
                });
            }
            let not_key = |n: &&String| !on.contains(&n.as_str());
            exprs.extend(
                left_names
                    .iter()
                    .filter(not_key)
                    .map(|n| qualified(LEFT, n)),
            );
            exprs.extend(
                right_names
                    .iter()
                    .filter(not_key)
                    .map(|n| qualified(RIGHT, n)),
            );
        }
        Ok(self.with_df(joined.select(exprs)?))
    }

    /// Joins with a static DataFrame on differently named columns, keeping every column of both
    /// sides (names must then be unique across the sides).
    pub fn join_on(
        &self,
        right: DataFrame,
        how: JoinType,
        left_columns: &[&str],
        right_columns: &[&str],
    ) -> Result<Self> {
        if left_columns.len() != right_columns.len() {
            return Err(FlumenError::invalid_option(
                "join_on",
                format!(
                    "{} left columns but {} right columns",
                    left_columns.len(),
                    right_columns.len()
                ),
            ));
        }
        let equalities = left_columns
            .iter()
            .zip(right_columns)
            .map(|(l, r)| col(Column::new_unqualified(*l)).eq(col(Column::new_unqualified(*r))));
        Ok(self.with_df(self.df.clone().join_on(right, how, equalities)?))
    }

    /// Joins with `right` (a static DataFrame or another stream's
    /// [`dataframe`](Self::dataframe)) on a condition written in SQL over the columns of both
    /// sides (Spark's `join(other, expr("..."), how)`), keeping every column of both sides
    /// (names must then be unique across the sides).
    ///
    /// Between two streams (a stream-stream join, Append output mode only), the condition
    /// should bound the event times of the two sides, so rows leave the state once no future
    /// row can match them: `clickAdId = impressionAdId AND clickTime BETWEEN impressionTime
    /// AND impressionTime + INTERVAL 1 HOUR`, with `with_watermark` on both sides. Outer and
    /// semi joins need that bound (Spark's rules); an inner join without it keeps every row.
    pub fn join_expr(&self, right: DataFrame, how: JoinType, condition: &str) -> Result<Self> {
        let left_names = self.columns();
        if let Some(clash) = right
            .schema()
            .fields()
            .iter()
            .find(|f| left_names.contains(f.name()))
        {
            return Err(FlumenError::invalid_option(
                "join_expr",
                format!(
                    "column '{}' is on both sides of the join; rename it on one side first (with_column_renamed)",
                    clash.name()
                ),
            ));
        }
        let schema = self.df.schema().join(right.schema())?;
        let state = self.df.clone().into_parts().0;
        let condition = state.create_logical_expr(condition, &schema)?;
        Ok(self.with_df(self.df.clone().join_on(right, how, [condition])?))
    }

    /// Declares `column` as event time, with rows up to `delay` late (`"10 minutes"`): stateful
    /// operators after this drop rows behind the watermark and evict state it has passed.
    /// See [`crate::stateful`] for how the watermark is computed.
    ///
    /// Counts per 10-minute window, each window written once, when the watermark (the latest
    /// event time seen minus the delay) has passed its end (append mode):
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    /// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
    /// use flumen_engine::prelude::*;
    ///
    /// let events = |rows: &[(&str, &str)]| {
    ///     let words: Vec<&str> = rows.iter().map(|(w, _)| *w).collect();
    ///     let times: Vec<&str> = rows.iter().map(|(_, t)| *t).collect();
    ///     RecordBatch::try_from_iter([
    ///         ("word", Arc::new(StringArray::from(words)) as ArrayRef),
    ///         ("time", Arc::new(StringArray::from(times)) as ArrayRef),
    ///     ])
    /// };
    /// let session = StreamSession::new();
    /// let input = Arc::new(MemoryStream::new("events", events(&[])?.schema()));
    /// let query = session
    ///     .stream(input.clone())?
    ///     .select_expr(["word", "CAST(time AS TIMESTAMP) AS ts"])?
    ///     .with_watermark("ts", "10 minutes")?
    ///     .group_by([window(col("ts"), "10 minutes"), col("word")])
    ///     .count()?
    ///     .write_stream()
    ///     .memory()
    ///     .query_name("closed_windows")
    ///     .start()
    ///     .await?;
    /// async fn closed(session: &StreamSession) -> flumen_engine::Result<String> {
    ///     let sql = "SELECT window.start AS start, word, count FROM closed_windows ORDER BY word";
    ///     let rows = session.sql(sql).await?.collect().await?;
    ///     Ok(pretty_format_batches(&rows)?.to_string())
    /// }
    ///
    /// input.add_batch(events(&[
    ///     ("dog", "2026-11-24 12:07:00"),
    ///     ("owl", "2026-11-24 12:08:00"),
    /// ])?)?;
    /// query.process_all_available().await?;
    /// assert_eq!(closed(&session).await?, "++\n++"); // the 12:00-12:10 window is still open
    ///
    /// // 12:25 moves the watermark to 12:15: the 12:00-12:10 window closes. The late dog at
    /// // 12:03 is then behind the watermark and dropped.
    /// input.add_batch(events(&[("cat", "2026-11-24 12:25:00")])?)?;
    /// query.process_all_available().await?;
    /// input.add_batch(events(&[("dog", "2026-11-24 12:03:00")])?)?;
    /// query.process_all_available().await?;
    /// assert_eq!(
    ///     closed(&session).await?,
    ///     "+---------------------+------+-------+\n\
    ///      | start               | word | count |\n\
    ///      +---------------------+------+-------+\n\
    ///      | 2026-11-24T12:00:00 | dog  | 1     |\n\
    ///      | 2026-11-24T12:00:00 | owl  | 1     |\n\
    ///      +---------------------+------+-------+"
    /// );
    /// let dropped: u64 = query
    ///     .recent_progress()
    ///     .iter()
    ///     .flat_map(|p| &p.state_operators)
    ///     .map(|s| s.num_rows_dropped_by_watermark)
    ///     .sum();
    /// assert_eq!(dropped, 1);
    /// query.stop().await?;
    /// # Ok(()) }
    /// ```
    pub fn with_watermark(&self, column: &str, delay: &str) -> Result<Self> {
        let delay_ms = parse_delay(delay)?;
        let (state, plan) = self.df.clone().into_parts();
        let node = EventTimeWatermark::try_new(plan, column.to_string(), delay_ms)?;
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        Ok(self.with_df(DataFrame::new(state, plan)))
    }

    /// Groups rows for an aggregation: `group_by([window(col("t"), "1 minute")]).count()`.
    ///
    /// On a stream the aggregate is state kept across micro-batches: a running word count,
    /// rewritten in full after every batch (complete mode):
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    /// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
    /// use flumen_engine::prelude::*;
    ///
    /// let words = |list: Vec<&str>| {
    ///     RecordBatch::try_from_iter([("word", Arc::new(StringArray::from(list)) as ArrayRef)])
    /// };
    /// let session = StreamSession::new();
    /// let input = Arc::new(MemoryStream::new("words", words(vec![])?.schema()));
    /// let query = session
    ///     .stream(input.clone())?
    ///     .group_by([col("word")])
    ///     .count()?
    ///     .write_stream()
    ///     .output_mode(OutputMode::Complete)
    ///     .memory()
    ///     .query_name("word_counts")
    ///     .start()
    ///     .await?;
    ///
    /// input.add_batch(words(vec!["a", "b", "a"])?)?;
    /// query.process_all_available().await?;
    /// input.add_batch(words(vec!["c", "a"])?)?;
    /// query.process_all_available().await?;
    /// query.stop().await?;
    ///
    /// let rows = session.sql("SELECT * FROM word_counts ORDER BY word").await?.collect().await?;
    /// assert_eq!(
    ///     pretty_format_batches(&rows)?.to_string(),
    ///     "+------+-------+\n\
    ///      | word | count |\n\
    ///      +------+-------+\n\
    ///      | a    | 3     |\n\
    ///      | b    | 1     |\n\
    ///      | c    | 1     |\n\
    ///      +------+-------+"
    /// );
    /// # Ok(()) }
    /// ```
    pub fn group_by(&self, keys: impl IntoIterator<Item = Expr>) -> GroupedFrame {
        GroupedFrame {
            frame: self.clone(),
            keys: keys.into_iter().collect(),
        }
    }

    /// Sorts by the given columns, ascending (on a stream: only after an aggregation in
    /// complete mode, as in Spark).
    pub fn order_by(&self, columns: impl IntoIterator<Item = Expr>) -> Result<Self> {
        self.sort(columns.into_iter().map(|c| c.sort(true, true)).collect())
    }

    /// Sorts by DataFusion sort expressions (`col("n").sort(false, true)` for descending).
    pub fn sort(&self, exprs: Vec<SortExpr>) -> Result<Self> {
        Ok(self.with_df(self.df.clone().sort(exprs)?))
    }

    /// Keeps the first row of each distinct combination of `columns` (all columns when empty).
    ///
    /// On a stream the keys seen are state: kept forever, unless a watermark is declared on a
    /// column among `columns`, in which case keys behind the watermark are evicted and rows
    /// behind it dropped.
    pub fn drop_duplicates(&self, columns: &[&str]) -> Result<Self> {
        self.deduplicate(columns, false)
    }

    /// Keeps the first row of each distinct combination of `columns`, remembering each key
    /// until the watermark passes its first row's event time plus the watermark delay. Needs
    /// `with_watermark` first; the event-time column need not be among `columns`.
    pub fn drop_duplicates_within_watermark(&self, columns: &[&str]) -> Result<Self> {
        if !self.is_streaming() {
            return Err(FlumenError::Unsupported(
                "dropDuplicatesWithinWatermark is not supported with batch DataFrames/DataSets"
                    .into(),
            ));
        }
        self.deduplicate(columns, true)
    }

    fn deduplicate(&self, columns: &[&str], within_watermark: bool) -> Result<Self> {
        let schema = self.df.schema();
        for c in columns {
            if !schema.fields().iter().any(|f| f.name() == c) {
                return Err(FlumenError::invalid_option(
                    "drop_duplicates",
                    format!(
                        "Cannot resolve column name \"{c}\" among ({})",
                        schema.field_names().join(", ")
                    ),
                ));
            }
        }
        let (state, plan) = self.df.clone().into_parts();
        let node = Deduplicate {
            input: plan,
            keys: columns.iter().map(|c| c.to_string()).collect(),
            within_watermark,
        };
        let plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
        Ok(self.with_df(DataFrame::new(state, plan)))
    }

    /// Registers the frame under `name` for SQL: `session.sql("SELECT ... FROM name")` then
    /// reads it (as a stream when this frame is one).
    pub fn create_or_replace_temp_view(&self, name: &str) -> Result<()> {
        let ctx = self.session.context();
        ctx.deregister_table(name)?;
        let view = ViewTable::new(self.df.logical_plan().clone(), None);
        ctx.register_table(name, Arc::new(view))?;
        Ok(())
    }

    /// Starts describing a streaming query over this frame.
    pub fn write_stream(&self) -> DataStreamWriter {
        DataStreamWriter::new(self.clone())
    }

    /// Runs a static frame and returns its rows. A streaming frame fails with Spark's message.
    pub async fn collect(&self) -> Result<Vec<RecordBatch>> {
        Ok(self.clone().into_dataframe()?.collect().await?)
    }

    /// Prints the first `num_rows` rows as a table, as Spark's `df.show(numRows)` (cells longer
    /// than 20 characters cut, right-aligned; "only showing top N rows" when there are more), in
    /// the console sink's format. Static frames only: a streaming frame fails with Spark's
    /// message (show a stream with `write_stream().console()`). Inside
    /// [`foreach_batch`](crate::DataStreamWriter::foreach_batch), wrap the batch's DataFrame
    /// with [`StreamSession::frame`] to show it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// let session = flumen_engine::StreamSession::new();
    /// let frame = session.sql("SELECT 1 AS id, 'First Class' AS class").await?;
    /// frame.show(20).await?;
    /// assert_eq!(
    ///     frame.show_string(20, true).await?,
    ///     "+---+-----------+\n| id|      class|\n+---+-----------+\n|  1|First Class|\n+---+-----------+\n"
    /// );
    /// # Ok(()) }
    /// ```
    pub async fn show(&self, num_rows: usize) -> Result<()> {
        print!("{}", self.show_string(num_rows, true).await?);
        Ok(())
    }

    /// The table [`show`](Self::show) prints (Spark's `showString`): the first `num_rows` rows,
    /// cells cut at 20 characters when `truncate`, left-aligned and whole otherwise.
    pub async fn show_string(&self, num_rows: usize, truncate: bool) -> Result<String> {
        let schema = self.schema();
        // One row more than shown tells whether to say "only showing top N rows".
        let rows = self
            .clone()
            .into_dataframe()?
            .limit(0, Some(num_rows.saturating_add(1)))?
            .collect()
            .await?;
        crate::sink::format_batches(
            &schema,
            &rows,
            crate::sink::ConsoleOptions { num_rows, truncate },
        )
    }

    /// The frame as a plain DataFusion DataFrame (static frames only).
    pub fn into_dataframe(self) -> Result<DataFrame> {
        if self.is_streaming() {
            return Err(FlumenError::Unsupported(
                "Queries with streaming sources must be executed with writeStream.start()".into(),
            ));
        }
        Ok(self.df)
    }
}

/// A frame grouped by keys, waiting for its aggregates ([`StreamFrame::group_by`]).
#[derive(Debug, Clone)]
pub struct GroupedFrame {
    frame: StreamFrame,
    keys: Vec<Expr>,
}

impl GroupedFrame {
    /// Rows per group, in a column named `count` (Spark's).
    pub fn count(&self) -> Result<StreamFrame> {
        self.agg([
            datafusion::functions_aggregate::expr_fn::count(datafusion::logical_expr::lit(1))
                .alias("count"),
        ])
    }

    /// The given aggregates per group (`sum(col("x")).alias("total")`, `avg`, `min`, `max`,
    /// and any DataFusion aggregate whose state can be merged).
    pub fn agg(&self, aggregates: impl IntoIterator<Item = Expr>) -> Result<StreamFrame> {
        let df = self
            .frame
            .df
            .clone()
            .aggregate(self.keys.clone(), aggregates.into_iter().collect())?;
        Ok(self.frame.with_df(df))
    }
}

/// Spark names `CAST(x AS type)` after `x`; DataFusion would name it `CAST(x AS Utf8)`.
fn keep_cast_name(expr: Expr) -> Expr {
    let inner = match &expr {
        Expr::Cast(c) => c.expr.as_ref(),
        Expr::TryCast(c) => c.expr.as_ref(),
        _ => return expr,
    };
    match inner {
        Expr::Column(c) => {
            let name = c.name.clone();
            expr.alias(name)
        }
        _ => expr,
    }
}

/// `name.*` where `name` is a struct column → one expression per field; `*` → every column.
fn expand_star(text: &str, schema: &DFSchema) -> Result<Option<Vec<Expr>>> {
    let trimmed = text.trim();
    if trimmed == "*" {
        return Ok(Some(
            schema.columns().into_iter().map(Expr::Column).collect(),
        ));
    }
    let Some(name) = trimmed.strip_suffix(".*") else {
        return Ok(None);
    };
    let name = name.trim().trim_matches('`').trim_matches('"');
    let Some((qualifier, field)) = schema.iter().find(|(_, f)| f.name() == name) else {
        return Ok(None);
    };
    let DataType::Struct(children) = field.data_type() else {
        return Err(FlumenError::invalid_option(
            "select_expr",
            format!("'{text}': {name} is not a struct column, so it has no fields to expand"),
        ));
    };
    let column = Expr::Column(Column::new(qualifier.cloned(), name));
    Ok(Some(
        children
            .iter()
            .map(|child| get_field(column.clone(), child.name().as_str()).alias(child.name()))
            .collect(),
    ))
}

/// Rewrites `struct(*)` into `struct("a", "b", ...)` over the frame's columns.
fn expand_struct_star(text: &str, schema: &DFSchema) -> String {
    static PATTERN: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        Regex::new(r"(?i)\bstruct\s*\(\s*\*\s*\)").expect("a valid constant regex")
    });
    if !pattern.is_match(text) {
        return text.to_string();
    }
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name().replace('"', "\"\"")))
        .collect();
    let replacement = format!("struct({})", columns.join(", "));
    pattern.replace_all(text, replacement.as_str()).into_owned()
}
