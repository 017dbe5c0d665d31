//! [`DataFrameReader`]: static (batch) reads with Spark's options, `session.read()`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;

use crate::csv::{self, CsvOptions};
use crate::error::{FlumenError, Result};
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

    /// The file format; `csv` (the default) is the one supported.
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

    /// Reads `path` in the chosen format.
    pub async fn load(self, path: impl AsRef<Path>) -> Result<DataFrame> {
        if self.format != "csv" {
            return Err(FlumenError::Unsupported(format!(
                "the '{}' format cannot be read yet; read CSV with .csv(path)",
                self.format
            )));
        }
        self.load_csv(path.as_ref(), false, false).await
    }

    /// CSV with `header` and `inferSchema` defaulting as given.
    pub(crate) async fn load_csv(
        self,
        path: &Path,
        header: bool,
        infer_schema: bool,
    ) -> Result<DataFrame> {
        let options = CsvOptions::from_options(&self.options, header, infer_schema)?;
        let files = files_of(path)?;
        let mut batches = Vec::with_capacity(files.len());
        let mut schema = self.schema.clone();
        for file in &files {
            let bytes = std::fs::read(file).map_err(|e| FlumenError::io(file, e))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                FlumenError::io(
                    file,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("not UTF-8 text ({e}); convert the file to UTF-8"),
                    ),
                )
            })?;
            let batch = csv::read(&text, &options, schema.clone(), &file.display().to_string())?;
            // The first file's schema is every file's.
            schema.get_or_insert_with(|| batch.schema());
            batches.push(batch);
        }
        let ctx = self.session.context();
        match schema {
            Some(schema) if batches.is_empty() => Ok(ctx
                .read_empty()?
                .select(
                    schema
                        .fields()
                        .iter()
                        .map(|f| {
                            datafusion::logical_expr::cast(
                                datafusion::logical_expr::lit(
                                    datafusion::common::ScalarValue::Null,
                                ),
                                f.data_type().clone(),
                            )
                            .alias(f.name())
                        })
                        .collect::<Vec<_>>(),
                )?
                .limit(0, Some(0))?),
            _ => Ok(ctx.read_batches(batches)?),
        }
    }
}

/// `path` itself, or a directory's data files in name order.
fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    let metadata = std::fs::metadata(path).map_err(|e| FlumenError::io(path, e))?;
    if !metadata.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| FlumenError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && !n.starts_with('_'))
        })
        .collect();
    files.sort();
    Ok(files)
}
