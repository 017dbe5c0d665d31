//! [`DataStreamWriter`]: `frame.write_stream()` — sink, output mode, trigger, query name and
//! checkpoint, then `start()`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;

use crate::checkpoint::{Checkpoint, STATE_PARTITIONS_CONF, StateLayout};
use crate::dead_letters::{DeadLetters, dead_letters_schema, report_malformed_records};
use crate::error::{FlumenError, Result};
use crate::exec::{Execution, SideOutput};

use crate::files::{FileFormat, FileSink};
use crate::frame::StreamFrame;
use crate::modes::{OutputMode, Trigger};
use crate::options::Options;
use crate::plan::plan_query;
use crate::query::StreamingQuery;
use crate::query_shared::QueryShared;
use crate::sink::console::SharedWriter;
use crate::sink::{ConsoleOptions, ConsoleSink, ForeachBatchSink, MemorySink, StreamSink};
use crate::stateful::late::late_rows_schema;

type SinkFactory =
    Box<dyn FnOnce(&StreamFrame, &SchemaRef, &Options) -> Result<Box<dyn StreamSink>> + Send>;

/// Where a side output (late rows, dead letters) goes.
enum SideOutputChoice {
    Memory(String),
    Factory(SinkFactory),
}

impl SideOutputChoice {
    /// Builds the side output's sink for rows of `schema`.
    async fn build(
        self,
        frame: &StreamFrame,
        schema: &SchemaRef,
        options: &Options,
    ) -> Result<SideOutput> {
        let sink: Box<dyn StreamSink> = match self {
            Self::Memory(table) => Box::new(
                MemorySink::register(frame.session().context(), &table, Arc::clone(schema)).await?,
            ),
            Self::Factory(factory) => factory(frame, schema, options)?,
        };
        sink.validate(schema, OutputMode::Append)?;
        Ok(SideOutput {
            sink,
            schema: Arc::clone(schema),
        })
    }
}

enum SinkChoice {
    None,
    Console(Option<SharedWriter>),
    Memory,
    File(FileFormat),
    Factory(SinkFactory),
}

/// How long a source partition may go without rows before it stops holding the watermark back
/// (option `watermarkIdleTimeout`; `none` disables idleness).
pub const DEFAULT_WATERMARK_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Builder for a streaming query.
///
/// Every setter has a Spark-style option of the same meaning, so a query can be described
/// with typed setters or with `format` and `option` as in Spark:
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
///     Arc::new(StringArray::from(vec!["a", "b", "a"])) as ArrayRef,
/// )])?;
/// let input = Arc::new(MemoryStream::new("words", batch.schema()));
/// input.add_batch(batch)?;
/// let counts = session.stream(input)?.group_by([col("word")]).count()?;
///
/// let typed = counts
///     .write_stream()
///     .memory()
///     .query_name("typed")
///     .output_mode(OutputMode::Complete)
///     .trigger(Trigger::processing_time("100 milliseconds")?)
///     .start()
///     .await?;
/// let spark_style = counts
///     .write_stream()
///     .format("memory")
///     .option("queryName", "spark_style")
///     .option("outputMode", "complete")
///     .start()
///     .await?;
/// for query in [&typed, &spark_style] {
///     query.process_all_available().await?;
///     query.stop().await?;
/// }
///
/// let typed_rows = session.sql("SELECT * FROM typed ORDER BY word").await?.collect().await?;
/// let spark_rows = session.sql("SELECT * FROM spark_style ORDER BY word").await?.collect().await?;
/// assert_eq!(typed_rows, spark_rows);
/// assert_eq!(
///     pretty_format_batches(&typed_rows)?.to_string(),
///     "+------+-------+\n\
///      | word | count |\n\
///      +------+-------+\n\
///      | a    | 2     |\n\
///      | b    | 1     |\n\
///      +------+-------+"
/// );
/// # Ok(()) }
/// ```
pub struct DataStreamWriter {
    frame: StreamFrame,
    options: Options,
    output_mode: Option<OutputMode>,
    trigger: Trigger,
    query_name: Option<String>,
    sink: SinkChoice,
    late_rows: Option<SideOutputChoice>,
    dead_letters: Option<SideOutputChoice>,
    partition_by: Vec<String>,
    error: Option<FlumenError>,
}

impl std::fmt::Debug for DataStreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStreamWriter")
            .field("options", &self.options)
            .field("output_mode", &self.output_mode)
            .field("trigger", &self.trigger)
            .field("query_name", &self.query_name)
            .field("partition_by", &self.partition_by)
            .finish()
    }
}

impl DataStreamWriter {
    pub(crate) fn new(frame: StreamFrame) -> Self {
        Self {
            frame,
            options: Options::new(),
            output_mode: None,
            trigger: Trigger::default(),
            query_name: None,
            sink: SinkChoice::None,
            late_rows: None,
            dead_letters: None,
            partition_by: Vec::new(),
            error: None,
        }
    }

    /// The frame being written.
    pub fn frame(&self) -> &StreamFrame {
        &self.frame
    }

    /// Sets a Spark-style option (`checkpointLocation`, `queryName`, `outputMode`, `numRows`,
    /// `truncate`, ...). Keys are case-insensitive.
    #[must_use]
    pub fn option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// The options set so far.
    pub fn get_options(&self) -> &Options {
        &self.options
    }

    /// The output mode. Default: append.
    #[must_use]
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.output_mode = Some(mode);
        self
    }

    /// The output mode from Spark's names (`append`, `update`, `complete`).
    #[must_use]
    pub fn output_mode_str(mut self, mode: &str) -> Self {
        match mode.parse() {
            Ok(mode) => self.output_mode = Some(mode),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// When batches run. Default: as fast as possible.
    ///
    /// [`Trigger::AvailableNow`] processes what the source holds when the query starts, in as
    /// many batches as the source's rate limit needs, then stops the query:
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let batch = RecordBatch::try_from_iter([(
    ///     "n",
    ///     Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])) as ArrayRef,
    /// )])?;
    /// let input = MemoryStream::new("numbers", batch.schema()).with_max_rows_per_trigger(2);
    /// input.add_batch(batch)?;
    ///
    /// let query = session
    ///     .stream(Arc::new(input))?
    ///     .write_stream()
    ///     .trigger(Trigger::AvailableNow)
    ///     .memory()
    ///     .query_name("numbers")
    ///     .start()
    ///     .await?;
    /// assert!(query.await_termination(None).await?); // ended on its own
    /// let progress = query.recent_progress();
    /// let batch_sizes: Vec<u64> = progress.iter().map(|p| p.num_input_rows).collect();
    /// assert_eq!(batch_sizes, [2, 2, 1]);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// The query's name; for the memory sink, also the name of its table. Default: none.
    #[must_use]
    pub fn query_name(mut self, name: impl Into<String>) -> Self {
        self.query_name = Some(name.into());
        self
    }

    /// Where offsets and commits are kept. Required except for console and memory sinks, which
    /// default to a temporary directory removed after a clean stop.
    ///
    /// A query restarted on the same checkpoint continues after the last committed batch:
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    /// use flumen_engine::prelude::*;
    ///
    /// let numbers = |values: Vec<i64>| {
    ///     RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(values)) as ArrayRef)])
    /// };
    /// let session = StreamSession::new();
    /// let input = Arc::new(MemoryStream::new("numbers", numbers(vec![])?.schema()));
    /// let checkpoint = tempfile::tempdir().expect("a temporary directory");
    /// let run = async || {
    ///     let query = session
    ///         .stream(input.clone())?
    ///         .write_stream()
    ///         .memory()
    ///         .query_name("numbers")
    ///         .checkpoint_location(checkpoint.path())
    ///         .start()
    ///         .await?;
    ///     query.process_all_available().await?;
    ///     query.stop().await?;
    ///     Ok::<_, flumen_engine::FlumenError>(query.last_progress().map(|p| (p.batch_id, p.num_input_rows)))
    /// };
    ///
    /// input.add_batch(numbers(vec![1, 2, 3])?)?;
    /// assert_eq!(run().await?, Some((0, 3)));
    /// input.add_batch(numbers(vec![4])?)?;
    /// assert_eq!(run().await?, Some((1, 1))); // only the new row, in the next batch
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn checkpoint_location(mut self, path: impl Into<PathBuf>) -> Self {
        self.options.set(
            "checkpointLocation",
            path.into().to_string_lossy().to_string(),
        );
        self
    }

    /// Chooses a built-in sink by Spark's format name: `console`, `memory`, or a file sink:
    /// `json`, `csv` or `parquet` (see [`FileSink`](crate::FileSink)).
    ///
    /// A file sink writes each micro-batch's files into the directory of the `path` option
    /// and commits them in `<path>/_spark_metadata/<batchId>`, so readers that honour that log
    /// (`session.read().json(path)`, a file source, Spark) see every row exactly once, even
    /// across crashes and restarts. Append mode only; a checkpoint location is required.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let batch = RecordBatch::try_from_iter([
    ///     ("city", Arc::new(StringArray::from(vec!["Oslo", "Rome", "Oslo"])) as ArrayRef),
    ///     ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
    /// ])?;
    /// let input = Arc::new(MemoryStream::new("events", batch.schema()));
    /// input.add_batch(batch)?;
    /// let (out, checkpoint) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ///
    /// let query = session
    ///     .stream(input)?
    ///     .write_stream()
    ///     .format("json")
    ///     .option("path", out.path().display())
    ///     .partition_by(["city"])
    ///     .checkpoint_location(checkpoint.path())
    ///     .start()
    ///     .await?;
    /// query.process_all_available().await?;
    /// query.stop().await?;
    ///
    /// assert!(out.path().join("_spark_metadata/0").exists());
    /// assert!(out.path().join("city=Oslo").is_dir() && out.path().join("city=Rome").is_dir());
    /// let read = session.frame(session.read().json(out.path()).await?);
    /// assert_eq!(
    ///     read.order_by([col("n")])?.show_string(20, false).await?,
    ///     "+---+----+\n\
    ///      |n  |city|\n\
    ///      +---+----+\n\
    ///      |1  |Oslo|\n\
    ///      |2  |Rome|\n\
    ///      |3  |Oslo|\n\
    ///      +---+----+\n"
    /// );
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn format(mut self, format: &str) -> Self {
        match format.to_ascii_lowercase().as_str() {
            "console" => self.sink = SinkChoice::Console(None),
            "memory" => self.sink = SinkChoice::Memory,
            other => match other.parse::<FileFormat>() {
                Ok(file) => self.sink = SinkChoice::File(file),
                Err(_) => {
                    self.error = Some(FlumenError::invalid_option(
                        "format",
                        format!(
                            "unknown sink format '{other}'; use console, memory, json, csv, parquet, .kafka() or .foreach_batch(...)"
                        ),
                    ))
                }
            },
        }
        self
    }

    /// The directory a file sink writes (the `path` option).
    #[must_use]
    pub fn path(self, dir: impl AsRef<std::path::Path>) -> Self {
        let dir = dir.as_ref().to_string_lossy().to_string();
        self.option("path", dir)
    }

    /// Partitions a file sink's output by these columns, Hive style: rows go to
    /// `col=value/` directories (nulls and empty strings to `col=__HIVE_DEFAULT_PARTITION__`)
    /// and the files leave the columns out; readers add them back from the directory names.
    /// Default: no partitioning.
    #[must_use]
    pub fn partition_by<S: AsRef<str>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.partition_by = columns
            .into_iter()
            .map(|c| c.as_ref().to_string())
            .collect();
        self
    }

    /// Prints each batch to standard output (options `numRows`, default 20, and `truncate`,
    /// default true).
    #[must_use]
    pub fn console(self) -> Self {
        self.format("console")
    }

    /// Prints each batch to `out` instead of standard output.
    #[must_use]
    pub fn console_to(mut self, out: SharedWriter) -> Self {
        self.sink = SinkChoice::Console(Some(out));
        self
    }

    /// Keeps the results in a table named after the query (`query_name` is required).
    #[must_use]
    pub fn memory(self) -> Self {
        self.format("memory")
    }

    /// Calls `f(batch, batch_id)` with each micro-batch as a DataFusion DataFrame.
    ///
    /// The function may write the batch anywhere, with any batch API; a batch whose function
    /// fails is not committed, and runs again with the same id when the query restarts. Needs
    /// a [`checkpoint_location`](Self::checkpoint_location).
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::{Arc, Mutex};
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    /// use flumen_engine::prelude::*;
    ///
    /// let names = |list: Vec<&str>| {
    ///     RecordBatch::try_from_iter([("name", Arc::new(StringArray::from(list)) as ArrayRef)])
    /// };
    /// let session = StreamSession::new();
    /// let input = Arc::new(MemoryStream::new("names", names(vec![])?.schema()));
    /// let checkpoint = tempfile::tempdir().expect("a temporary directory");
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&seen);
    /// let query = session
    ///     .stream(input.clone())?
    ///     .write_stream()
    ///     .foreach_batch(move |batch, batch_id| {
    ///         let sink = Arc::clone(&sink);
    ///         async move {
    ///             let rows = batch.count().await?;
    ///             sink.lock().expect("not poisoned").push((batch_id, rows));
    ///             Ok(())
    ///         }
    ///     })
    ///     .checkpoint_location(checkpoint.path())
    ///     .start()
    ///     .await?;
    ///
    /// input.add_batch(names(vec!["Ann", "Bob"])?)?;
    /// query.process_all_available().await?;
    /// input.add_batch(names(vec!["Cid"])?)?;
    /// query.process_all_available().await?;
    /// query.stop().await?;
    /// assert_eq!(*seen.lock().expect("not poisoned"), [(0, 2), (1, 1)]);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn foreach_batch<F, Fut>(mut self, f: F) -> Self
    where
        F: FnMut(DataFrame, u64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.sink = SinkChoice::Factory(Box::new(move |frame, _, _| {
            Ok(Box::new(ForeachBatchSink::new(
                frame.session().context().clone(),
                f,
            )))
        }));
        self
    }

    /// Uses a sink built at `start()` from the frame, the query's output schema and the options
    /// (how connectors plug in their sinks).
    #[must_use]
    pub fn sink_factory(
        mut self,
        factory: impl FnOnce(&StreamFrame, &SchemaRef, &Options) -> Result<Box<dyn StreamSink>>
        + Send
        + 'static,
    ) -> Self {
        self.sink = SinkChoice::Factory(Box::new(factory));
        self
    }

    /// Keeps the rows the query's stateful operator drops as late (behind the watermark) in the
    /// memory table `table` instead of losing them: each holds the operator's input columns
    /// (the columns the aggregation or deduplication reads), `late_operator` (the operator's
    /// name in progress reports: `stateStoreSave`, `dedupe`, `dedupeWithinWatermark`) and
    /// `late_watermark` (the watermark the row missed). A re-run batch adds its late rows once.
    /// Spark has no such output: late rows are only counted (`numRowsDroppedByWatermark`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let events = |words: Vec<&str>, seconds: Vec<i64>| {
    ///     let times: Vec<i64> = seconds.iter().map(|s| s * 1000).collect();
    ///     RecordBatch::try_from_iter([
    ///         ("word", Arc::new(StringArray::from(words)) as ArrayRef),
    ///         ("time", Arc::new(TimestampMillisecondArray::from(times)) as ArrayRef),
    ///     ])
    /// };
    /// let input = Arc::new(MemoryStream::new("events", events(vec![], vec![])?.schema()));
    /// let query = session
    ///     .stream(input.clone())?
    ///     .with_watermark("time", "10 seconds")?
    ///     .group_by([window(col("time"), "10 seconds"), col("word")])
    ///     .count()?
    ///     .write_stream()
    ///     .output_mode(OutputMode::Update)
    ///     .memory()
    ///     .query_name("counts")
    ///     .late_rows_to_memory("late_words")
    ///     .start()
    ///     .await?;
    /// input.add_batch(events(vec!["owl"], vec![100])?)?; // the watermark moves to 90 s
    /// query.process_all_available().await?;
    /// input.add_batch(events(vec!["dog"], vec![5])?)?; // its window ended long before 90 s
    /// query.process_all_available().await?;
    /// let late = session.sql("SELECT word, late_operator, CAST(late_watermark AS STRING) AS missed FROM late_words").await?.collect().await?;
    /// let text = flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches(&late)?.to_string();
    /// assert!(text.contains("| dog  | stateStoreSave | 1970-01-01T00:01:30Z |"), "{text}");
    /// query.stop().await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn late_rows_to_memory(mut self, table: impl Into<String>) -> Self {
        self.late_rows = Some(SideOutputChoice::Memory(table.into()));
        self
    }

    /// Hands the rows the stateful operator drops as late (see [`Self::late_rows_to_memory`]
    /// for their columns) to `f` with the batch's id, as a DataFrame, once per batch (also
    /// when there are none). A re-run batch calls it again with the same id.
    #[must_use]
    pub fn late_rows_foreach_batch<F, Fut>(mut self, f: F) -> Self
    where
        F: FnMut(DataFrame, u64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.late_rows = Some(SideOutputChoice::Factory(Box::new(move |frame, _, _| {
            Ok(Box::new(ForeachBatchSink::new(
                frame.session().context().clone(),
                f,
            )))
        })));
        self
    }

    /// Sends the rows the stateful operator drops as late to a sink built at `start()` from
    /// the frame, the late rows' schema and the query's options (how connectors offer a late
    /// rows output, e.g. a Kafka topic).
    #[must_use]
    pub fn late_rows_sink_factory(
        mut self,
        factory: impl FnOnce(&StreamFrame, &SchemaRef, &Options) -> Result<Box<dyn StreamSink>>
        + Send
        + 'static,
    ) -> Self {
        self.late_rows = Some(SideOutputChoice::Factory(Box::new(factory)));
        self
    }

    /// Collects the records `from_json` cannot parse (malformed JSON, or values of the wrong
    /// type) in the memory table `table`, alongside the query's own output, which still gets
    /// the PERMISSIVE null struct or the corrupt-record column for them. Each dead letter is
    /// the record's whole source row (for Kafka: `key`, `value`, `topic`, `partition`,
    /// `offset`, `timestamp`, `timestampType`, and `headers` when the source includes them)
    /// plus `parse_error`, which names the `from_json` call and says why the record failed.
    /// Spark has no such output; see the module docs of [`crate::dead_letters`] for its cost.
    ///
    /// Every `from_json` call must read the stream's columns through projections and filters
    /// only (the usual `CAST(value AS STRING)` then `from_json`), so that the source row of a
    /// malformed record is known; other shapes are refused at `start()`. A re-run batch hands
    /// over the same dead letters with the same batch id.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    /// use flumen_engine::functions::from_json;
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let lines = |texts: Vec<&str>| {
    ///     RecordBatch::try_from_iter([("line", Arc::new(StringArray::from(texts)) as ArrayRef)])
    /// };
    /// let input = Arc::new(MemoryStream::new("lines", lines(vec![])?.schema()));
    /// let query = session
    ///     .stream(input.clone())?
    ///     .select([from_json(col("line"), "id INT")?.alias("data")])?
    ///     .select_expr(["data.id AS id"])?
    ///     .write_stream()
    ///     .memory()
    ///     .query_name("ids")
    ///     .dead_letters_to_memory("bad_lines")
    ///     .start()
    ///     .await?;
    /// input.add_batch(lines(vec![r#"{"id": 1}"#, "{oops", r#"{"id": "two"}"#])?)?;
    /// query.process_all_available().await?;
    /// let ids = session.sql("SELECT count(*) AS n, count(id) AS parsed FROM ids").await?.collect().await?;
    /// let text = flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches(&ids)?.to_string();
    /// assert!(text.contains("| 3 | 1      |"), "{text}"); // the null rows stay
    /// let bad = session.sql("SELECT line FROM bad_lines ORDER BY line").await?.collect().await?;
    /// let text = flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches(&bad)?.to_string();
    /// assert!(text.contains("| {oops         |") && text.contains(r#"| {"id": "two"} |"#), "{text}");
    /// query.stop().await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn dead_letters_to_memory(mut self, table: impl Into<String>) -> Self {
        self.dead_letters = Some(SideOutputChoice::Memory(table.into()));
        self
    }

    /// Hands the records `from_json` cannot parse (see [`Self::dead_letters_to_memory`] for
    /// their columns) to `f` with the batch's id, as a DataFrame, once per batch (also when
    /// there are none). A re-run batch calls it again with the same id and rows.
    #[must_use]
    pub fn dead_letters_foreach_batch<F, Fut>(mut self, f: F) -> Self
    where
        F: FnMut(DataFrame, u64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.dead_letters = Some(SideOutputChoice::Factory(Box::new(move |frame, _, _| {
            Ok(Box::new(ForeachBatchSink::new(
                frame.session().context().clone(),
                f,
            )))
        })));
        self
    }

    /// Sends the records `from_json` cannot parse to a sink built at `start()` from the frame,
    /// the dead letters' schema and the query's options (how connectors offer a dead-letter
    /// output, e.g. a Kafka topic).
    #[must_use]
    pub fn dead_letters_sink_factory(
        mut self,
        factory: impl FnOnce(&StreamFrame, &SchemaRef, &Options) -> Result<Box<dyn StreamSink>>
        + Send
        + 'static,
    ) -> Self {
        self.dead_letters = Some(SideOutputChoice::Factory(Box::new(factory)));
        self
    }

    /// Starts the query: checks and plans it, opens the checkpoint, and runs micro-batches in a
    /// background task. Errors in the query's shape, options or checkpoint are reported here.
    ///
    /// ```
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// use std::sync::Arc;
    /// use flumen_engine::datafusion::arrow::datatypes::{DataType, Field, Schema};
    /// use flumen_engine::prelude::*;
    ///
    /// let session = StreamSession::new();
    /// let schema = Arc::new(Schema::new(vec![Field::new("word", DataType::Utf8, false)]));
    /// let words = session.stream(Arc::new(MemoryStream::new("words", schema)))?;
    ///
    /// // A memory sink is a table named after the query.
    /// let error = words.write_stream().memory().start().await.unwrap_err();
    /// assert!(error.to_string().contains("queryName must be specified for memory sink"));
    /// // Spark's rule: complete mode needs an aggregation.
    /// let error = words
    ///     .write_stream()
    ///     .output_mode(OutputMode::Complete)
    ///     .memory()
    ///     .query_name("words")
    ///     .start()
    ///     .await
    ///     .unwrap_err();
    /// assert!(error.to_string().contains("Complete output mode not supported"));
    ///
    /// let query = words.write_stream().memory().query_name("words").start().await?;
    /// assert!(query.is_active());
    /// query.stop().await?;
    /// assert!(!query.is_active());
    /// # Ok(()) }
    /// ```
    pub async fn start(self) -> Result<StreamingQuery> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let session = self.frame.session().clone();
        let mode = match (self.output_mode, self.options.get("outputMode")) {
            (Some(mode), _) => mode,
            (None, Some(text)) => text.parse()?,
            (None, None) => OutputMode::Append,
        };
        let name = self
            .query_name
            .or_else(|| self.options.get("queryName").map(str::to_string));
        if let Some(name) = &name {
            session.ensure_name_free(name)?;
        }

        let state = self.frame.dataframe().clone().into_parts().0;
        let written = self.frame.dataframe().logical_plan();
        let signal = crate::functions::MalformedSignal::default();
        let plan = match self.dead_letters {
            Some(_) => {
                let reporting = report_malformed_records(written.clone(), &signal)?;
                plan_query(&state, &reporting, mode).await?
            }
            None => plan_query(&state, written, mode).await?,
        };
        let schema = Arc::clone(&plan.output_schema);

        let sink: Box<dyn StreamSink> = match self.sink {
            SinkChoice::None => {
                return Err(FlumenError::invalid_option(
                    "format",
                    "no sink chosen; call .console(), .memory(), .format(\"json\"), .foreach_batch(...) or .kafka() before start()",
                ));
            }
            SinkChoice::Console(out) => {
                let options = ConsoleOptions::from_options(&self.options)?;
                Box::new(match out {
                    Some(out) => ConsoleSink::to_writer(options, out),
                    None => ConsoleSink::new(options),
                })
            }
            SinkChoice::Memory => {
                let Some(name) = &name else {
                    return Err(FlumenError::invalid_option(
                        "queryName",
                        "queryName must be specified for memory sink",
                    ));
                };
                Box::new(MemorySink::register(session.context(), name, Arc::clone(&schema)).await?)
            }
            SinkChoice::File(format) => Box::new(FileSink::new(
                format,
                &self.options,
                self.partition_by.clone(),
            )?),
            SinkChoice::Factory(factory) => factory(&self.frame, &schema, &self.options)?,
        };
        sink.validate(&schema, mode)?;
        let late_rows = match self.late_rows {
            None => None,
            Some(choice) => {
                // The operator nearest the source (the last found from the output down).
                let Some(operator) = plan.operators.last() else {
                    return Err(FlumenError::invalid_option(
                        "lateRows",
                        "a late rows output needs a stateful operator (an aggregation or dropDuplicates) with a watermark; this query has none",
                    ));
                };
                let late_schema = late_rows_schema(&operator.input_schema())?;
                let output = choice
                    .build(&self.frame, &late_schema, &self.options)
                    .await?;
                for operator in &plan.operators {
                    operator.late_rows().set_capturing(true);
                }
                Some(output)
            }
        };
        let dead_letters = match self.dead_letters {
            None => None,
            Some(choice) => {
                let [stream] = plan.sources.as_slice() else {
                    return Err(FlumenError::Unsupported(format!(
                        "dead letters need a query that reads one stream, so that every malformed record is known with its source row; this query reads {}",
                        plan.sources.len()
                    )));
                };
                let source_schema = stream.source.schema();
                let schema = dead_letters_schema(&source_schema)?;
                let output = choice.build(&self.frame, &schema, &self.options).await?;
                Some(DeadLetters::new(
                    written,
                    &source_schema,
                    &state,
                    signal,
                    output,
                )?)
            }
        };

        let checkpoint = match self.options.get("checkpointLocation") {
            Some(path) => Checkpoint::open(path)?,
            None if sink.allows_temporary_checkpoint() => Checkpoint::temporary()?,
            None => {
                return Err(FlumenError::invalid_option(
                    "checkpointLocation",
                    "checkpointLocation must be specified either through option(\"checkpointLocation\", ...) or .checkpoint_location(...)",
                ));
            }
        };
        let id = checkpoint.query_id()?;
        // Read the commit log now, so a corrupt checkpoint fails here, naming its file (the
        // offset log is read by the settings check below).
        checkpoint.latest_commit()?;

        let mut conf = BTreeMap::new();
        conf.insert("flumen.source".to_string(), plan.sources_fingerprint());
        crate::exec::check_conf_unchanged(&checkpoint, &conf)?;
        // State partitions: the checkpoint's count wins over the session's (Spark restores
        // `spark.sql.shuffle.partitions` the same way), so every key finds its state again.
        let state_layout = checkpoint.state_layout(plan.target_partitions)?;
        if let StateLayout::Partitioned(n) = state_layout {
            conf.insert(STATE_PARTITIONS_CONF.to_string(), n.to_string());
        }
        for operator in &plan.operators {
            operator.set_partitions(state_layout.partitions())?;
        }
        let read_limits = plan.sources.iter().map(|s| s.source.read_limit()).collect();
        let watermark_idle_timeout = match self.options.get("watermarkIdleTimeout") {
            None => Some(DEFAULT_WATERMARK_IDLE_TIMEOUT),
            Some(v) if v.trim().eq_ignore_ascii_case("none") => None,
            Some(v) => Some(crate::options::parse_interval(v).map_err(|_| {
                FlumenError::invalid_option(
                    "watermarkIdleTimeout",
                    format!("'{v}' is not an interval; write e.g. '30 seconds', or 'none' to let idle partitions hold the watermark back"),
                )
            })?),
        };
        let shared = Arc::new(QueryShared::new(id, name));
        if let Ok(mut slot) = shared.plan.lock() {
            *slot = Some(Arc::clone(&plan.physical));
        }
        let execution = Execution {
            shared: Arc::clone(&shared),
            plan,
            sink,
            checkpoint,
            mode,
            trigger: self.trigger,
            read_limits,
            conf,
            state_layout,
            watermark_idle_timeout,
            trackers: Vec::new(),
            run_no_data_batch: false,
            late_rows,
            dead_letters,
        };
        let query = StreamingQuery {
            shared: Arc::clone(&shared),
        };
        // Checked and registered under one lock, so two concurrent starts of the same name or
        // checkpoint cannot both run.
        session.register_query(&query)?;
        let task = tokio::spawn(execution.run());
        if let Ok(mut id) = shared.task_id.lock() {
            *id = Some(task.id());
        }
        if let Ok(mut slot) = shared.task.lock() {
            *slot = Some(task);
        }
        tracing::info!(id = %query.id(), run_id = %query.run_id(), name = ?query.name(), "started streaming query");
        Ok(query)
    }
}
