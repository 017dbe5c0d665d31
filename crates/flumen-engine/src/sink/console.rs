//! The console sink: each batch printed the way Spark's `ConsoleSink` and `Dataset.show` print
//! it — a `Batch: N` header, a `+---+` table, at most `numRows` rows (default 20), cells cut to
//! 20 characters and right-aligned unless `truncate` is false.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::StreamSink;
use crate::error::{FlumenError, Result};
use crate::modes::OutputMode;
use crate::options::Options;

/// How the console sink prints (Spark's `numRows` and `truncate` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// Rows shown per batch (default 20).
    pub num_rows: usize,
    /// Whether long cells are cut to 20 characters (default true).
    pub truncate: bool,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            num_rows: 20,
            truncate: true,
        }
    }
}

impl ConsoleOptions {
    /// Reads `numRows` and `truncate` from Spark-style options.
    pub fn from_options(options: &Options) -> Result<Self> {
        let mut parsed = Self::default();
        if let Some(n) = options.get_u64("numRows")? {
            parsed.num_rows = usize::try_from(n)
                .map_err(|_| FlumenError::invalid_option("numRows", "too large"))?;
        }
        parsed.truncate = options.get_bool("truncate", true)?;
        Ok(parsed)
    }
}

/// A writer shared by the console sink and whoever wants to read what it printed (tests).
pub type SharedWriter = Arc<Mutex<dyn Write + Send>>;

/// Prints each micro-batch to standard output (or any writer).
pub struct ConsoleSink {
    options: ConsoleOptions,
    out: SharedWriter,
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSink")
            .field("options", &self.options)
            .finish()
    }
}

impl ConsoleSink {
    /// A console sink printing to standard output.
    pub fn new(options: ConsoleOptions) -> Self {
        Self::to_writer(options, Arc::new(Mutex::new(std::io::stdout())))
    }

    /// A console sink printing to `out`.
    pub fn to_writer(options: ConsoleOptions, out: SharedWriter) -> Self {
        Self { options, out }
    }
}

#[async_trait]
impl StreamSink for ConsoleSink {
    fn description(&self) -> String {
        "ConsoleSink".to_string()
    }

    fn allows_temporary_checkpoint(&self) -> bool {
        true
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        _mode: OutputMode,
    ) -> Result<()> {
        let mut text = String::new();
        text.push_str("-------------------------------------------\n");
        text.push_str(&format!("Batch: {batch_id}\n"));
        text.push_str("-------------------------------------------\n");
        text.push_str(&format_batches(schema, &batches, self.options)?);
        text.push('\n');
        let mut out = self
            .out
            .lock()
            .map_err(|_| FlumenError::IllegalState("console writer lock poisoned".into()))?;
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| FlumenError::Sink {
                sink: "ConsoleSink".into(),
                message: format!("cannot write to the console: {e}"),
            })
    }
}

/// Renders rows like Spark's `Dataset.showString(numRows, truncate)`.
///
/// ```
/// use std::sync::Arc;
/// use datafusion::arrow::array::{RecordBatch, StringArray};
/// use datafusion::arrow::datatypes::{DataType, Field, Schema};
/// use flumen_engine::sink::{ConsoleOptions, format_batches};
///
/// let schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]));
/// let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["Hello 0"]))]).unwrap();
/// let text = format_batches(&schema, &[batch], ConsoleOptions::default()).unwrap();
/// assert_eq!(text, "+-------+\n|  value|\n+-------+\n|Hello 0|\n+-------+\n");
/// ```
pub fn format_batches(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    options: ConsoleOptions,
) -> Result<String> {
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(total.min(options.num_rows));
    'batches: for batch in batches {
        for row in 0..batch.num_rows() {
            if rows.len() == options.num_rows {
                break 'batches;
            }
            let cells = batch
                .columns()
                .iter()
                .map(|c| format_cell(c.as_ref(), row))
                .collect::<Result<Vec<_>>>()?;
            rows.push(cells);
        }
    }
    let cut = |s: String| -> String {
        const WIDTH: usize = 20;
        if !options.truncate || s.chars().count() <= WIDTH {
            s
        } else {
            let mut cut: String = s.chars().take(WIDTH - 3).collect();
            cut.push_str("...");
            cut
        }
    };
    let header: Vec<String> = header.into_iter().map(cut).collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(cut).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count().max(3)).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let separator: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(*w)))
        .collect::<String>()
        + "+\n";
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (cell, w) in cells.iter().zip(&widths) {
            let pad = " ".repeat(w - cell.chars().count());
            if options.truncate {
                s.push('|');
                s.push_str(&pad);
                s.push_str(cell);
            } else {
                s.push('|');
                s.push_str(cell);
                s.push_str(&pad);
            }
        }
        s + "|\n"
    };
    let mut out = separator.clone();
    out.push_str(&line(&header));
    out.push_str(&separator);
    for row in &rows {
        out.push_str(&line(row));
    }
    out.push_str(&separator);
    if total > options.num_rows {
        let noun = if options.num_rows == 1 { "row" } else { "rows" };
        out.push_str(&format!("only showing top {} {noun}\n", options.num_rows));
    }
    Ok(out)
}

/// One cell as Spark prints it: `null`, binary as `[48 65]`, structs as `{a, b}`, lists as
/// `[a, b]`, timestamps as `yyyy-MM-dd HH:mm:ss[.fff]` (UTC).
fn format_cell(array: &dyn Array, row: usize) -> Result<String> {
    if array.is_null(row) {
        return Ok("null".to_string());
    }
    Ok(match array.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let bytes: &[u8] = match array.data_type() {
                DataType::Binary => array.as_binary::<i32>().value(row),
                DataType::LargeBinary => array.as_binary::<i64>().value(row),
                _ => array.as_binary_view().value(row),
            };
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
            format!("[{}]", hex.join(" "))
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            let parts = s
                .columns()
                .iter()
                .map(|c| format_cell(c.as_ref(), row))
                .collect::<Result<Vec<_>>>()?;
            format!("{{{}}}", parts.join(", "))
        }
        DataType::List(_) => {
            let values = array.as_list::<i32>().value(row);
            let parts = (0..values.len())
                .map(|i| format_cell(values.as_ref(), i))
                .collect::<Result<Vec<_>>>()?;
            format!("[{}]", parts.join(", "))
        }
        _ => {
            let options = FormatOptions::default()
                .with_null("null")
                .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
                .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f"));
            ArrayFormatter::try_new(array, &options)?
                .value(row)
                .to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{BinaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batch(values: Vec<Option<&str>>) -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Binary, true),
            Field::new("value", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let n = values.len() as i64;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(BinaryArray::from(vec![Some(b"Hi".as_ref()); values.len()])),
                Arc::new(StringArray::from(values)),
                Arc::new(Int64Array::from_iter_values(0..n)),
            ],
        )
        .unwrap();
        (schema, batch)
    }

    #[test]
    fn truncates_long_cells_and_right_aligns() {
        let (schema, b) = batch(vec![Some("a value that is much longer than twenty"), None]);
        let text = format_batches(&schema, &[b], ConsoleOptions::default()).unwrap();
        assert_eq!(
            text,
            "+-------+--------------------+---+\n\
             |    key|               value|  n|\n\
             +-------+--------------------+---+\n\
             |[48 69]|a value that is m...|  0|\n\
             |[48 69]|                null|  1|\n\
             +-------+--------------------+---+\n"
        );
    }

    #[test]
    fn untruncated_cells_are_left_aligned_and_rows_limited() {
        let (schema, b) = batch(vec![Some("x"), Some("a value longer than twenty chars")]);
        let options = ConsoleOptions {
            num_rows: 1,
            truncate: false,
        };
        let text = format_batches(&schema, &[b], options).unwrap();
        assert_eq!(
            text,
            "+-------+-----+---+\n\
             |key    |value|n  |\n\
             +-------+-----+---+\n\
             |[48 69]|x    |0  |\n\
             +-------+-----+---+\n\
             only showing top 1 row\n"
        );
    }
}
