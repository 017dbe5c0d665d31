//! [`StreamSession`]: the entry point, wrapping a DataFusion `SessionContext` configured for
//! micro-batch execution and Spark-compatible functions.

use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::SessionStateDefaults;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::Result;
use crate::frame::StreamFrame;
use crate::functions::{self, LenientBinaryCast, SparkStructPlanner};
use crate::plan::StreamTable;
use crate::query::StreamingQuery;
use crate::reader::DataStreamReader;
use crate::source::SourceRef;
use crate::stateful::planner::FlumenQueryPlanner;

/// A session: static DataFrames and SQL as in DataFusion, plus streams and streaming queries.
///
/// Cheap to clone; clones share the catalog and the list of queries.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> flumen_engine::Result<()> {
/// use flumen_engine::StreamSession;
/// let session = StreamSession::new();
/// let df = session.sql("SELECT concat('a', NULL) AS x").await?.collect().await?;
/// assert_eq!(df[0].column(0).null_count(), 1); // Spark's concat: null in, null out
/// # Ok(()) }
/// ```
///
/// Streams live in the same catalog: a query's memory sink is a table that SQL reads, and the
/// session keeps track of the queries started from its frames.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> flumen_engine::Result<()> {
/// use std::sync::Arc;
/// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
/// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
/// use flumen_engine::prelude::*;
///
/// let session = StreamSession::new();
/// let batch = RecordBatch::try_from_iter([(
///     "word",
///     Arc::new(StringArray::from(vec!["spark", "flumen"])) as ArrayRef,
/// )])?;
/// let words = Arc::new(MemoryStream::new("words", batch.schema()));
/// words.add_batch(batch)?;
///
/// let query = session
///     .stream(words)?
///     .select_expr(["upper(word) AS word"])?
///     .write_stream()
///     .memory()
///     .query_name("loud_words")
///     .start()
///     .await?;
/// query.process_all_available().await?;
/// assert_eq!(session.active_queries().len(), 1);
///
/// let rows = session.sql("SELECT word FROM loud_words ORDER BY word").await?.collect().await?;
/// assert_eq!(
///     pretty_format_batches(&rows)?.to_string(),
///     "+--------+\n\
///      | word   |\n\
///      +--------+\n\
///      | FLUMEN |\n\
///      | SPARK  |\n\
///      +--------+"
/// );
/// session.stop_all().await?;
/// assert!(session.active_queries().is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamSession {
    inner: Arc<SessionInner>,
}

struct SessionInner {
    ctx: SessionContext,
    queries: Mutex<Vec<StreamingQuery>>,
    listeners: Arc<crate::listener::ListenerBus>,
}

impl std::fmt::Debug for StreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSession")
            .field("session_id", &self.inner.ctx.session_id())
            .finish()
    }
}

impl Default for StreamSession {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamSession {
    /// A session with Flumen's defaults: each micro-batch split over `target_partitions`
    /// partitions (DataFusion's setting; default: the number of cores), case-sensitive
    /// identifiers (column names are matched as written, e.g. `PassengerId`), SQL `STRING` as
    /// Arrow `Utf8`, no dynamic join filters, and the Spark-compatible functions registered.
    pub fn new() -> Self {
        Self::with_config(SessionConfig::new())
    }

    /// A session from a DataFusion config; Flumen's required settings are applied on top.
    pub fn with_config(config: SessionConfig) -> Self {
        Self::with_config_and_runtime(config, Arc::new(RuntimeEnv::default()))
    }

    /// A session from a DataFusion config and runtime, e.g. one with a memory limit
    /// (`RuntimeEnvBuilder::new().with_memory_limit(..)`): the state of streaming
    /// aggregations and deduplication is charged to its memory pool.
    pub fn with_config_and_runtime(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> Self {
        let config = config
            // A static table joined with a stream is always the collected build side: the
            // stream's partitions then flow through the join in order, never re-hashed.
            .set_usize(
                "datafusion.optimizer.hash_join_single_partition_threshold",
                usize::MAX,
            )
            .set_usize(
                "datafusion.optimizer.hash_join_single_partition_threshold_rows",
                usize::MAX,
            )
            .set_bool("datafusion.sql_parser.enable_ident_normalization", false)
            // CAST(x AS STRING) gives Utf8, Spark's one string type.
            .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
            .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false)
            .set_bool(
                "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
                false,
            )
            .set_bool("datafusion.execution.coalesce_batches", false);
        let mut planners = vec![Arc::new(SparkStructPlanner) as _];
        planners.extend(SessionStateDefaults::default_expr_planners());
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_expr_planners(planners)
            .with_query_planner(Arc::new(FlumenQueryPlanner))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.add_analyzer_rule(Arc::new(LenientBinaryCast));
        functions::register(&ctx);
        Self {
            inner: Arc::new(SessionInner {
                ctx,
                queries: Mutex::new(Vec::new()),
                listeners: Arc::new(crate::listener::ListenerBus::new()),
            }),
        }
    }

    /// The DataFusion context: register tables, run batch SQL, read files as usual.
    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    /// Starts describing a streaming source (`read_stream().kafka()...load()` with the Kafka
    /// connector).
    pub fn read_stream(&self) -> DataStreamReader {
        DataStreamReader::new(self.clone())
    }

    /// A stream frame over a source definition (used by connectors): a [`MemoryStream`]
    /// in tests and examples, the Kafka source through `read_stream().kafka()...load()`.
    ///
    /// Nothing is read until a query over the frame starts; rows added to the source later are
    /// read by the next micro-batch.
    ///
    /// [`MemoryStream`]: crate::MemoryStream
    ///
    /// ```
    /// # fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    /// use flumen_engine::datafusion::arrow::array::StringArray;
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let batch = RecordBatch::try_from_iter([
    ///     ("name", Arc::new(StringArray::from(vec!["Ann", "Bob"])) as ArrayRef),
    ///     ("age", Arc::new(Int64Array::from(vec![34, 17])) as ArrayRef),
    /// ])?;
    /// let people = Arc::new(MemoryStream::new("people", batch.schema()));
    /// people.add_batch(batch)?;
    ///
    /// let frame = session.stream(people)?;
    /// assert!(frame.is_streaming());
    /// assert_eq!(frame.columns(), ["name", "age"]);
    /// # Ok(()) }
    /// ```
    pub fn stream(&self, source: SourceRef) -> Result<StreamFrame> {
        let df = self
            .inner
            .ctx
            .read_table(Arc::new(StreamTable::new(source)))?;
        Ok(StreamFrame::new(self.clone(), df))
    }

    /// Wraps a DataFusion DataFrame (e.g. from [`StreamSession::read_csv`]) as a frame, to use
    /// Spark-style methods such as `select_expr` on it.
    pub fn frame(&self, df: DataFrame) -> StreamFrame {
        StreamFrame::new(self.clone(), df)
    }

    /// Runs SQL. The result is a streaming frame when the query reads a registered stream (see
    /// [`StreamFrame::create_or_replace_temp_view`]), a static one otherwise.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    /// use flumen_engine::datafusion::arrow::array::StringArray;
    /// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let batch = RecordBatch::try_from_iter([
    ///     ("name", Arc::new(StringArray::from(vec!["Ann", "Bob"])) as ArrayRef),
    ///     ("age", Arc::new(Int64Array::from(vec![34, 17])) as ArrayRef),
    /// ])?;
    /// let people = Arc::new(MemoryStream::new("people", batch.schema()));
    /// people.add_batch(batch)?;
    /// session.stream(people)?.create_or_replace_temp_view("people")?;
    ///
    /// // Reads the stream: a streaming frame, run by a query.
    /// let adults = session.sql("SELECT name FROM people WHERE age >= 18").await?;
    /// assert!(adults.is_streaming());
    /// let query = adults.write_stream().memory().query_name("adults").start().await?;
    /// query.process_all_available().await?;
    /// query.stop().await?;
    ///
    /// // Reads the memory sink's table: a static frame, collected at once.
    /// let rows = session.sql("SELECT name FROM adults").await?.collect().await?;
    /// assert_eq!(
    ///     pretty_format_batches(&rows)?.to_string(),
    ///     "+------+\n\
    ///      | name |\n\
    ///      +------+\n\
    ///      | Ann  |\n\
    ///      +------+"
    /// );
    /// # Ok(()) }
    /// ```
    pub async fn sql(&self, sql: &str) -> Result<StreamFrame> {
        let df = self.inner.ctx.sql(sql).await?;
        Ok(StreamFrame::new(self.clone(), df))
    }

    /// Reads a CSV file with a header row and inferred column types (Spark's
    /// `read.csv(path, header=True, inferSchema=True)`); empty fields are null, quotes inside
    /// quoted fields are doubled (RFC 4180). For Spark's other CSV options use
    /// [`read`](Self::read).
    pub async fn read_csv(&self, path: impl AsRef<Path>) -> Result<DataFrame> {
        self.read().load_csv(path.as_ref(), true, true).await
    }

    /// Starts a static read with options (Spark's `spark.read`), e.g.
    /// `session.read().option("header", true).csv(path)`; see [`DataFrameReader`](crate::DataFrameReader).
    pub fn read(&self) -> crate::DataFrameReader {
        crate::DataFrameReader::new(self.clone())
    }

    /// A static DataFrame from record batches.
    pub fn create_data_frame(&self, batch: RecordBatch) -> Result<DataFrame> {
        Ok(self.inner.ctx.read_batch(batch)?)
    }

    /// The queries started in this session that are still running.
    pub fn active_queries(&self) -> Vec<StreamingQuery> {
        self.inner
            .queries
            .lock()
            .map(|q| q.iter().filter(|q| q.is_active()).cloned().collect())
            .unwrap_or_default()
    }

    /// Every query started in this session, running or not.
    pub fn queries(&self) -> Vec<StreamingQuery> {
        self.inner
            .queries
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default()
    }

    /// Fails when an active query has `name` or `id` (Spark's rule).
    fn check_free(queries: &[StreamingQuery], name: Option<&str>, id: Option<&str>) -> Result<()> {
        for active in queries.iter().filter(|q| q.is_active()) {
            if let Some(name) = name
                && active.name() == Some(name)
            {
                return Err(crate::FlumenError::IllegalState(format!(
                    "Cannot start query with name {name} as a query with that name is already active in this session"
                )));
            }
            if let Some(id) = id
                && active.id() == id
            {
                return Err(crate::FlumenError::IllegalState(format!(
                    "Cannot start query with id {id} as another query with same id is already active. \
                     Perhaps you are attempting to restart a query from checkpoint that is already active."
                )));
            }
        }
        Ok(())
    }

    fn lock_queries(&self) -> Result<std::sync::MutexGuard<'_, Vec<StreamingQuery>>> {
        self.inner
            .queries
            .lock()
            .map_err(|_| crate::FlumenError::IllegalState("query list lock poisoned".into()))
    }

    /// Fails early when an active query already has `name` (before a sink claims the name).
    pub(crate) fn ensure_name_free(&self, name: &str) -> Result<()> {
        Self::check_free(&self.lock_queries()?, Some(name), None)
    }

    /// Adds a query unless an active one has the same name or id; checked and added under one
    /// lock, so two concurrent starts cannot both pass.
    pub(crate) fn register_query(&self, query: &StreamingQuery) -> Result<()> {
        let mut queries = self.lock_queries()?;
        Self::check_free(&queries, query.name(), Some(query.id()))?;
        queries.push(query.clone());
        query.shared.attach_events(
            Arc::clone(&self.inner.listeners) as Arc<dyn crate::query_shared::QueryEvents>
        );
        Ok(())
    }

    /// The session's query listeners (see `listener.rs`).
    pub(crate) fn listener_bus(&self) -> &crate::listener::ListenerBus {
        &self.inner.listeners
    }

    /// Stops every running query of the session.
    pub async fn stop_all(&self) -> Result<()> {
        for query in self.active_queries() {
            query.stop().await?;
        }
        Ok(())
    }
}
