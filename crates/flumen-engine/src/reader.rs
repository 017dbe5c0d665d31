//! [`DataStreamReader`]: `session.read_stream()`. Connectors add typed entry points
//! (`.kafka()` in `flumen-kafka`); the reader itself carries Spark-style string options, and
//! reads directories of files (`.format("json").schema(..).load(dir)`, `.json(dir)`, ...).

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{FlumenError, Result};
use crate::files::{FileFormat, FileSource};
use crate::frame::StreamFrame;
use crate::options::Options;
use crate::session::StreamSession;
use crate::source::SourceRef;

/// Builder for a streaming source; options are validated when the source is created.
///
/// A directory of files is a stream of the files that appear in it (Spark's file source):
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> flumen_engine::Result<()> {
/// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
/// use flumen_engine::prelude::*;
///
/// let input = tempfile::tempdir().expect("a temporary directory");
/// std::fs::write(input.path().join("a.json"), "{\"item\":\"tea\",\"qty\":2}\n").unwrap();
/// std::fs::write(input.path().join("b.json"), "{\"item\":\"cake\",\"qty\":1}\n").unwrap();
///
/// let session = StreamSession::new();
/// let query = session
///     .read_stream()
///     .schema_ddl("item STRING, qty INT")?   // required, as in Spark
///     .max_files_per_trigger(1)
///     .json(input.path())?
///     .write_stream()
///     .memory()
///     .query_name("orders")
///     .trigger(Trigger::AvailableNow)
///     .start()
///     .await?;
/// query.await_termination(None).await?;
/// assert_eq!(query.recent_progress().len(), 2); // one file per batch
///
/// let rows = session.sql("SELECT * FROM orders").await?.collect().await?;
/// assert_eq!(
///     pretty_format_batches(&rows)?.to_string(),
///     "+------+-----+\n\
///      | item | qty |\n\
///      +------+-----+\n\
///      | tea  | 2   |\n\
///      | cake | 1   |\n\
///      +------+-----+"
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DataStreamReader {
    session: StreamSession,
    options: Options,
    format: Option<String>,
    schema: Option<SchemaRef>,
}

impl DataStreamReader {
    pub(crate) fn new(session: StreamSession) -> Self {
        Self {
            session,
            options: Options::new(),
            format: None,
            schema: None,
        }
    }

    /// Sets a Spark-style option (keys are case-insensitive).
    #[must_use]
    pub fn option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// Sets several options.
    #[must_use]
    pub fn options<K: Into<String>, V: ToString>(
        mut self,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in options {
            self.options.set(k, v.to_string());
        }
        self
    }

    /// The options set so far.
    pub fn get_options(&self) -> &Options {
        &self.options
    }

    /// The session.
    pub fn session(&self) -> &StreamSession {
        &self.session
    }

    /// A stream frame over a source built by a connector.
    pub fn load_source(&self, source: SourceRef) -> Result<StreamFrame> {
        self.session.stream(source)
    }

    /// The format [`load`](Self::load) reads: `json` (JSON Lines), `csv` or `parquet`.
    /// Default: `parquet`, as Spark's `spark.sql.sources.default`. (Kafka is read with
    /// `.kafka()` from `flumen-kafka`.)
    #[must_use]
    pub fn format(mut self, format: &str) -> Self {
        self.format = Some(format.to_string());
        self
    }

    /// The schema of the rows (required for files, as in Spark: the directory may be empty
    /// when the query starts). Every column is read as nullable. A string column named by
    /// `columnNameOfCorruptRecord` (default `_corrupt_record`) receives the text of JSON and
    /// CSV records that do not fit.
    #[must_use]
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// [`schema`](Self::schema) from a DDL string, e.g. `"id BIGINT, name STRING"`.
    pub fn schema_ddl(self, ddl: &str) -> Result<Self> {
        let schema = crate::functions::parse_ddl_schema(ddl)?;
        Ok(self.schema(Arc::new(schema)))
    }

    /// `maxFilesPerTrigger`: at most `files` new files per micro-batch. Default: no limit.
    #[must_use]
    pub fn max_files_per_trigger(self, files: u64) -> Self {
        self.option("maxFilesPerTrigger", files)
    }

    /// `latestFirst`: take the newest files first (useful with a backlog and
    /// `maxFilesPerTrigger`). Default: false, oldest first.
    #[must_use]
    pub fn latest_first(self, latest_first: bool) -> Self {
        self.option("latestFirst", latest_first)
    }

    /// `maxFileAge`: ignore files older than the newest file taken so far by more than this,
    /// in Spark's form (`7d`, `12h`, `30 minutes`, or milliseconds). Default: `7d`. The first
    /// batch takes every file; ignored with `latestFirst` and `maxFilesPerTrigger`.
    #[must_use]
    pub fn max_file_age(self, age: &str) -> Self {
        self.option("maxFileAge", age)
    }

    /// `fileNameOnly`: a file counts as seen by its name, wherever it is. Default: false.
    #[must_use]
    pub fn file_name_only(self, name_only: bool) -> Self {
        self.option("fileNameOnly", name_only)
    }

    /// A stream of the files appearing in the directory `path`, in the chosen
    /// [`format`](Self::format) (see [`FileSource`]). Fails without a schema, with Spark's
    /// message, and when the directory does not exist.
    pub fn load(self, path: impl AsRef<Path>) -> Result<StreamFrame> {
        let format = self.format.as_deref().unwrap_or("parquet");
        if format.eq_ignore_ascii_case("kafka") {
            return Err(FlumenError::invalid_option(
                "format",
                "read Kafka with .kafka() (flumen-kafka's KafkaReadStreamExt), not load(path)",
            ));
        }
        let format: FileFormat = format.parse()?;
        let source = FileSource::new(format, path, self.schema.clone(), &self.options)?;
        self.session.stream(source.into_ref())
    }

    /// A stream of the JSON Lines files appearing in `path`: one JSON object per line; a line
    /// that does not fit the schema is a row of nulls with its text in the corrupt-record
    /// column (`mode` `PERMISSIVE`, the default), left out (`DROPMALFORMED`) or an error
    /// naming `file:line` (`FAILFAST`).
    pub fn json(self, path: impl AsRef<Path>) -> Result<StreamFrame> {
        self.format("json").load(path)
    }

    /// A stream of the CSV files appearing in `path`, with Spark's CSV options (`header`,
    /// `sep`, `quote`, `escape`, `nullValue`, `mode`, ...; see
    /// [`DataFrameReader`](crate::DataFrameReader)).
    pub fn csv(self, path: impl AsRef<Path>) -> Result<StreamFrame> {
        self.format("csv").load(path)
    }

    /// A stream of the Parquet files appearing in `path`; columns are matched by name and
    /// cast to the schema's types.
    pub fn parquet(self, path: impl AsRef<Path>) -> Result<StreamFrame> {
        self.format("parquet").load(path)
    }
}
