//! Reading one data file as rows of a given schema: JSON Lines, CSV or Parquet, plus the
//! partition columns its directory names give.
//!
//! Every outcome is defined, never a panic:
//!
//! - **JSON Lines**: each non-blank line is one record, decoded with `from_json`'s decoder. A
//!   line that is not one JSON object of the schema's types is malformed: with `mode`
//!   `PERMISSIVE` (the default) it is a row of nulls whose corrupt-record column (the
//!   `columnNameOfCorruptRecord` option, default `_corrupt_record`, when the schema has such a
//!   string column) holds the line; `DROPMALFORMED` leaves it out; `FAILFAST` fails naming
//!   `file:line`. Bytes that are not UTF-8 are read as U+FFFD, as Spark's reader does.
//! - **CSV**: the engine's CSV reader with Spark's options (`sep`, `header`, `mode`, …); a file
//!   that is not UTF-8 text is an error naming it.
//! - **Parquet**: columns are matched by name, missing ones are null, others are cast to the
//!   schema's type; a file that is not Parquet, or a column that cannot be cast, is an error
//!   naming the file (and the column).

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, StringArray, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, can_cast_types, cast_with_options, filter};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::util::display::FormatOptions;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{CORRUPT_RECORD_OPTION, FileFormat};
use crate::csv::{self, CsvOptions, ParseMode};
use crate::error::{FlumenError, Result};
use crate::functions::{DEFAULT_CORRUPT_RECORD_COLUMN, JsonOptions, decode_json_column};
use crate::options::Options;

/// The name of the column that tracks malformed JSON lines when the schema has none.
const INTERNAL_CORRUPT_COLUMN: &str = "__flumen_corrupt_record";

/// How Parquet files are read in pieces.
const PARQUET_BATCH_SIZE: usize = 8192;

/// How to read files of one format, with its options validated once.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    format: FileFormat,
    csv: CsvOptions,
    mode: ParseMode,
    corrupt_column: String,
}

impl ReadOptions {
    /// Validates the options of `format`: Spark's CSV options, and for JSON `mode`
    /// (`PERMISSIVE`, `DROPMALFORMED`, `FAILFAST`) and `columnNameOfCorruptRecord`.
    pub fn from_options(format: FileFormat, options: &Options) -> Result<Self> {
        Self::with_csv_defaults(format, options, false, false)
    }

    /// [`Self::from_options`], with CSV's `header` and `inferSchema` defaulting as given
    /// (`session.read_csv` defaults both to true, as the notebook's `read.csv(..)` call does).
    pub fn with_csv_defaults(
        format: FileFormat,
        options: &Options,
        header: bool,
        infer_schema: bool,
    ) -> Result<Self> {
        let csv = CsvOptions::from_options(options, header, infer_schema)?;
        Ok(Self {
            format,
            mode: csv.mode,
            corrupt_column: options
                .get(CORRUPT_RECORD_OPTION)
                .unwrap_or(DEFAULT_CORRUPT_RECORD_COLUMN)
                .to_string(),
            csv,
        })
    }

    /// The format.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The CSV options.
    pub(crate) fn csv(&self) -> &CsvOptions {
        &self.csv
    }

    /// The column that receives malformed records' text, when the schema has it.
    pub fn corrupt_column(&self) -> &str {
        &self.corrupt_column
    }
}

/// `schema` with every top-level field nullable: files can always miss a value (Spark forces
/// file sources' schemas nullable too).
pub fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Fields>(),
    ))
}

/// Reads `path` as rows of `schema` (nullable; see [`nullable`]): the columns named by
/// `partition_values` come from the path, the others from the file.
pub fn read_file(
    path: &Path,
    partition_values: &[(String, Option<String>)],
    schema: &SchemaRef,
    options: &ReadOptions,
) -> Result<Vec<RecordBatch>> {
    let from_path = |name: &str| {
        partition_values
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let data_fields: Fields = schema
        .fields()
        .iter()
        .filter(|f| from_path(f.name()).is_none())
        .cloned()
        .collect();
    let data_schema = Arc::new(Schema::new(data_fields));
    let batches = match options.format {
        FileFormat::Json => vec![read_json(path, &data_schema, options)?],
        FileFormat::Csv => vec![read_csv(path, &data_schema, options)?],
        FileFormat::Parquet => read_parquet(path, &data_schema)?,
    };
    if data_schema.fields().len() == schema.fields().len() {
        return Ok(batches);
    }
    // Put the partition columns in their places.
    batches
        .into_iter()
        .map(|batch| {
            let rows = batch.num_rows();
            let mut data = batch.columns().iter();
            let mut columns = Vec::with_capacity(schema.fields().len());
            for field in schema.fields() {
                match from_path(field.name()) {
                    Some(value) => columns.push(partition_column(path, field, value, rows)?),
                    None => columns.push(Arc::clone(data.next().ok_or_else(|| {
                        FlumenError::IllegalState("a file's batch lost a column".into())
                    })?)),
                }
            }
            Ok(RecordBatch::try_new_with_options(
                Arc::clone(schema),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(rows)),
            )?)
        })
        .collect()
}

/// A column holding one partition value, cast to the field's type.
fn partition_column(
    path: &Path,
    field: &Field,
    value: Option<String>,
    rows: usize,
) -> Result<ArrayRef> {
    let Some(value) = value else {
        return Ok(new_null_array(field.data_type(), rows));
    };
    let text: ArrayRef = Arc::new(StringArray::from(vec![value.as_str(); rows]));
    let strict = CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    };
    cast_with_options(&text, field.data_type(), &strict).map_err(|_| FlumenError::DataFile {
        path: path.to_path_buf(),
        reason: format!(
            "Failed to cast value `{value}` to `{}` for partition column `{}`; fix the directory name or the schema",
            field.data_type(),
            field.name()
        ),
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| FlumenError::io(path, e))
}

/// JSON Lines as rows of `schema` (see the module docs).
fn read_json(path: &Path, schema: &SchemaRef, options: &ReadOptions) -> Result<RecordBatch> {
    let bytes = read_bytes(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    json_lines(path, &lines, schema, options)
}

/// Decodes `(line number, text)` records as rows of `schema`.
pub(crate) fn json_lines(
    path: &Path,
    lines: &[(usize, &str)],
    schema: &SchemaRef,
    options: &ReadOptions,
) -> Result<RecordBatch> {
    // Malformed lines are found through a corrupt-record column: the schema's own when it has
    // one, else an internal one dropped at the end.
    let own = schema
        .fields()
        .iter()
        .position(|f| f.name() == &options.corrupt_column && f.data_type() == &DataType::Utf8);
    let (fields, corrupt_name) = match own {
        Some(_) => (schema.fields().clone(), options.corrupt_column.clone()),
        None => {
            let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(Field::new(
                INTERNAL_CORRUPT_COLUMN,
                DataType::Utf8,
                true,
            )));
            (Fields::from(fields), INTERNAL_CORRUPT_COLUMN.to_string())
        }
    };
    let corrupt_index = own.unwrap_or(fields.len() - 1);
    let input: ArrayRef = Arc::new(StringArray::from(
        lines.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
    ));
    let decoded = decode_json_column(
        &input,
        &fields,
        &JsonOptions {
            mode: crate::functions::ParseMode::Permissive,
            corrupt_record_column: corrupt_name,
        },
    )
    .map_err(|e| FlumenError::DataFile {
        path: path.to_path_buf(),
        reason: format!("cannot be decoded as JSON of the schema ({e})"),
    })?;
    let malformed = decoded.column(corrupt_index).clone();
    if options.mode == ParseMode::FailFast
        && let Some(row) = (0..malformed.len()).find(|&i| malformed.is_valid(i))
    {
        let (line, record) = lines[row];
        return Err(FlumenError::MalformedRecord {
            source_name: format!("{}:{line}", path.display()),
            record: record.to_string(),
            reason: "not one JSON object of the schema's types (Parse Mode: FAILFAST); set the option mode to PERMISSIVE to read such records as nulls, or DROPMALFORMED to skip them".into(),
        });
    }
    let mut columns = decoded.columns().to_vec();
    if own.is_none() {
        columns.pop();
    }
    let rows = decoded.len();
    let batch = RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?;
    if options.mode == ParseMode::DropMalformed && malformed.null_count() < malformed.len() {
        let keep: BooleanArray = (0..malformed.len())
            .map(|i| Some(malformed.is_null(i)))
            .collect();
        let columns = batch
            .columns()
            .iter()
            .map(|c| filter(c.as_ref(), &keep))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let kept = keep.true_count();
        return Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(kept)),
        )?);
    }
    Ok(batch)
}

/// A CSV file as rows of `schema`, with the engine's CSV reader.
fn read_csv(path: &Path, schema: &SchemaRef, options: &ReadOptions) -> Result<RecordBatch> {
    let bytes = read_bytes(path)?;
    let text = String::from_utf8(bytes).map_err(|e| FlumenError::DataFile {
        path: path.to_path_buf(),
        reason: format!("is not UTF-8 text ({e}); convert the file to UTF-8"),
    })?;
    csv::read(
        &text,
        &options.csv,
        Some(Arc::clone(schema)),
        &path.display().to_string(),
    )
}

/// Parquet as rows of `schema`: columns by name, cast to the schema's types.
fn read_parquet(path: &Path, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let bad = |reason: String| FlumenError::DataFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| FlumenError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        bad(format!(
            "is not a readable Parquet file ({e}); replace it with a valid file or move it out of the directory"
        ))
    })?;
    let file_schema = Arc::clone(builder.schema());
    let wanted: Vec<usize> = file_schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| schema.field_with_name(f.name()).is_ok())
        .map(|(i, _)| i)
        .collect();
    for field in schema.fields() {
        if let Ok(found) = file_schema.field_with_name(field.name())
            && !can_cast_types(found.data_type(), field.data_type())
        {
            return Err(bad(format!(
                "Parquet column cannot be converted. Column: {}, Expected: {}, Found: {}; fix the schema or the file",
                field.name(),
                field.data_type(),
                found.data_type()
            )));
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(PARQUET_BATCH_SIZE)
        .build()
        .map_err(|e| bad(format!("cannot be read as Parquet ({e})")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| {
            bad(format!(
                "is a damaged Parquet file ({e}); replace it with a valid file or move it out of the directory"
            ))
        })?;
        out.push(conform(path, &batch, schema)?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(Arc::clone(schema)));
    }
    Ok(out)
}

/// `batch` with `schema`'s columns: matched by name, cast to the schema's types, null where
/// missing.
fn conform(path: &Path, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            None => Ok(new_null_array(field.data_type(), rows)),
            Some(column) if column.data_type() == field.data_type() => Ok(Arc::clone(column)),
            Some(column) => {
                // Not a "safe" cast: a value that does not fit is an error, never a null.
                let strict = CastOptions {
                    safe: false,
                    ..CastOptions::default()
                };
                cast_with_options(column, field.data_type(), &strict).map_err(
                    |e| FlumenError::DataFile {
                        path: path.to_path_buf(),
                        reason: format!(
                            "Parquet column cannot be converted. Column: {}, Expected: {}, Found: {} ({e}); fix the schema or the file",
                            field.name(),
                            field.data_type(),
                            column.data_type()
                        ),
                    },
                )
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
        nullable(&Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), false))
                .collect::<Vec<_>>(),
        ))
    }

    fn options(pairs: &[(&str, &str)]) -> ReadOptions {
        let options: Options = pairs.iter().copied().collect();
        ReadOptions::from_options(FileFormat::Json, &options).unwrap()
    }

    const LINES: [(usize, &str); 3] = [(1, r#"{"a":1}"#), (2, r#"{"a":"#), (4, r#"{"a":3}"#)];

    #[test]
    fn json_modes_keep_drop_or_name_malformed_lines() {
        let path = Path::new("/in/x.json");
        let s = schema(&[("a", DataType::Int64)]);
        let kept = json_lines(path, &LINES, &s, &options(&[])).unwrap();
        assert_eq!(kept.num_rows(), 3);
        assert_eq!(kept.column(0).null_count(), 1);
        assert!(kept.schema().fields().iter().all(|f| f.is_nullable()));
        let dropped = json_lines(path, &LINES, &s, &options(&[("mode", "dropmalformed")])).unwrap();
        assert_eq!(dropped.num_rows(), 2);
        let err = json_lines(path, &LINES, &s, &options(&[("mode", "FAILFAST")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/in/x.json:2") && err.contains("{\"a\":"),
            "{err}"
        );

        let with_corrupt = schema(&[("a", DataType::Int64), ("bad", DataType::Utf8)]);
        let batch = json_lines(
            path,
            &LINES,
            &with_corrupt,
            &options(&[("columnNameOfCorruptRecord", "bad")]),
        )
        .unwrap();
        assert_eq!(
            pretty_format_batches(&[batch]).unwrap().to_string(),
            "+---+-------+\n\
             | a | bad   |\n\
             +---+-------+\n\
             | 1 |       |\n\
             |   | {\"a\": |\n\
             | 3 |       |\n\
             +---+-------+"
        );
    }

    #[test]
    fn partition_values_fill_their_columns_or_fail_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, "{\"a\":1,\"day\":99}\n").unwrap();
        let s = schema(&[("a", DataType::Int64), ("day", DataType::Int32)]);
        let batches = read_file(
            &path,
            &[("day".into(), Some("7".into()))],
            &s,
            &options(&[]),
        )
        .unwrap();
        assert_eq!(
            pretty_format_batches(&batches).unwrap().to_string(),
            "+---+-----+\n| a | day |\n+---+-----+\n| 1 | 7   |\n+---+-----+"
        );
        let null = read_file(&path, &[("day".into(), None)], &s, &options(&[])).unwrap();
        assert_eq!(null[0].column(1).null_count(), 1);
        let err = read_file(
            &path,
            &[("day".into(), Some("x".into()))],
            &s,
            &options(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("x.json") && err.contains("partition column `day`"),
            "{err}"
        );
    }
}
