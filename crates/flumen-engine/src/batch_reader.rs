//! [`DataFrameReader`]: static (batch) reads with Spark's options, `session.read()`.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;

use crate::error::{FlumenError, Result};
use crate::files::{self, FileFormat};
use crate::options::Options;
use crate::session::StreamSession;

/// Reads files into static DataFrames (Spark's `DataFrameReader`): the format, options and
/// schema, then the path.
///
/// CSV takes Spark's options: `sep` (or `delimiter`), `quote`, `escape`, `header`, `inferSchema`,
/// `nullValue`, `dateFormat`, `timestampFormat`, `mode` (`PERMISSIVE`, `DROPMALFORMED`,
/// `FAILFAST`) and `columnNameOfCorruptRecord`. One deliberate difference: without an `escape`
/// option, quotes inside quoted fields are doubled (RFC 4180), where Spark's default escape is a
/// backslash; `.option("escape", "\\")` reads exactly as Spark does.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> flumen_engine::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("people.csv");
/// std::fs::write(&path, "name;age\n\"Kelly, Mr. James \"\"Jim\"\"\";34\nAnna;NA\n").unwrap();
/// let session = flumen_engine::StreamSession::new();
/// let people = session
///     .read()
///     .option("header", true)
///     .option("inferSchema", true)
///     .option("sep", ";")
///     .option("nullValue", "NA")
///     .csv(&path)
///     .await?;
/// let people = session.frame(people);
/// assert_eq!(
///     people.show_string(20, false).await?,
///     "+----------------------+----+\n\
///      |name                  |age |\n\
///      +----------------------+----+\n\
///      |Kelly, Mr. James \"Jim\"|34  |\n\
///      |Anna                  |null|\n\
///      +----------------------+----+\n"
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DataFrameReader {
    session: StreamSession,
    format: String,
    options: Options,
    schema: Option<SchemaRef>,
}

impl DataFrameReader {
    pub(crate) fn new(session: StreamSession) -> Self {
        Self {
            session,
            format: "csv".into(),
            options: Options::new(),
            schema: None,
        }
    }

    /// The file format: `csv` (the default), `json` (JSON Lines) or `parquet`.
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.to_ascii_lowercase();
        self
    }

    /// Sets an option (case-insensitive key, as Spark).
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// Sets several options.
    pub fn options<K: Into<String>, V: Into<String>>(
        mut self,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in options {
            self.options.set(k, v);
        }
        self
    }

    /// Reads with this schema instead of the header's names and inferred (or string) types. A
    /// string column named by `columnNameOfCorruptRecord` (default `_corrupt_record`) receives
    /// the lines that do not fit, in `PERMISSIVE` mode.
    pub fn schema(mut self, schema: SchemaRef) -> Self {
        self.schema = Some(schema);
        self
    }

    /// [`schema`](Self::schema) from a DDL string, e.g. `"id BIGINT, name STRING"`.
    pub fn schema_ddl(self, ddl: &str) -> Result<Self> {
        let schema = crate::functions::parse_ddl_schema(ddl)?;
        Ok(self.schema(Arc::new(schema)))
    }

    /// Reads a CSV file, or every file of a directory (names starting with `.` or `_` skipped,
    /// in name order). Spark's defaults: no header, every column a string.
    pub async fn csv(self, path: impl AsRef<Path>) -> Result<DataFrame> {
        self.format("csv").load(path).await
    }

    /// Reads JSON Lines: a file, or a directory's data files (hidden and in-progress files left
    /// out, partition directories read as columns).
    ///
    /// Without a [`schema`](Self::schema) the schema is inferred from every record as Spark
    /// infers it: fields sorted by name, and a `_corrupt_record` column when some line is not
    /// a JSON object. Options `mode` (`PERMISSIVE`, `DROPMALFORMED`, `FAILFAST`) and
    /// `columnNameOfCorruptRecord`, as for a streaming JSON source.
    ///
    /// A directory written by a streaming file sink is read as its `_spark_metadata` log says:
    /// only the files of committed batches.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> flumen_engine::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// std::fs::create_dir_all(dir.path().join("day=2")).unwrap();
    /// std::fs::write(dir.path().join("a.json"), "{\"name\":\"Ann\",\"age\":34}\n{\"age\":\n").unwrap();
    /// std::fs::write(dir.path().join("day=2/b.json"), "{\"name\":\"Bob\"}\n").unwrap();
    /// let session = flumen_engine::StreamSession::new();
    /// let people = session.frame(session.read().json(dir.path()).await?);
    /// assert_eq!(
    ///     people.show_string(20, false).await?,
    ///     "+----+----+---------------+----+\n\
    ///      |age |name|_corrupt_record|day |\n\
    ///      +----+----+---------------+----+\n\
    ///      |34  |Ann |null           |null|\n\
    ///      |null|null|{\"age\":        |null|\n\
    ///      |null|Bob |null           |2   |\n\
    ///      +----+----+---------------+----+\n"
    /// );
    /// # Ok(()) }
    /// ```
    pub async fn json(self, path: impl AsRef<Path>) -> Result<DataFrame> {
        self.format("json").load(path).await
    }

    /// Reads Parquet: a file, or a directory's data files (only committed ones when a file
    /// sink wrote it). Columns are matched by name to the [`schema`](Self::schema) and cast
    /// to its types; without one, the first file's schema is used.
    pub async fn parquet(self, path: impl AsRef<Path>) -> Result<DataFrame> {
        self.format("parquet").load(path).await
    }

    /// Reads `path` in the chosen format.
    pub async fn load(self, path: impl AsRef<Path>) -> Result<DataFrame> {
        match self.format.parse::<FileFormat>()? {
            FileFormat::Csv => self.load_csv(path.as_ref(), false, false).await,
            format => {
                let path = path.as_ref().to_path_buf();
                let ctx = self.session.context().clone();
                let (schema, options) = (self.schema, self.options);
                tokio::task::spawn_blocking(move || {
                    files::batch::read(&ctx, format, &path, schema, &options)
                })
                .await
                .map_err(|e| {
                    FlumenError::IllegalState(format!("a file reader thread failed: {e}"))
                })?
            }
        }
    }

    /// CSV with `header` and `inferSchema` defaulting as given: a file, or a directory's data
    /// files as the other formats read them (only committed files of a file sink's output, and
    /// the columns of its `partition_by` directories).
    pub(crate) async fn load_csv(
        self,
        path: &Path,
        header: bool,
        infer_schema: bool,
    ) -> Result<DataFrame> {
        let read_options = files::read::ReadOptions::with_csv_defaults(
            FileFormat::Csv,
            &self.options,
            header,
            infer_schema,
        )?;
        let path = path.to_path_buf();
        let ctx = self.session.context().clone();
        let schema = self.schema;
        tokio::task::spawn_blocking(move || {
            files::batch::read_with(&ctx, &read_options, &path, schema)
        })
        .await
        .map_err(|e| FlumenError::IllegalState(format!("a file reader thread failed: {e}")))?
    }
}
