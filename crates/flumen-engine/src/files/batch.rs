//! Static reads of JSON Lines, CSV and Parquet files (`session.read().json(path)`,
//! `.csv(path)`, `.parquet(path)`, `session.read_csv(path)`): a file, or a directory's data files as [`listing`](super::listing) finds
//! them — only committed files when a file sink wrote the directory (`_spark_metadata`).
//!
//! Without a schema, JSON's is inferred from every record as Spark infers it (fields sorted by
//! name; a `_corrupt_record` string column added when some line is malformed) and Parquet's is
//! the first file's, CSV's the first file's header (typed with `inferSchema`). Partition directories (`key=value`) add their columns after the data
//! columns, typed `Int64`, `Float64` or `Utf8` from their values, unless the schema names them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::dataframe::DataFrame;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::SessionContext;

use super::FileFormat;
use super::listing::{FileStatus, list_data_files};
use super::read::{ReadOptions, nullable, read_file};
use crate::error::{FlumenError, Result};
use crate::options::Options;

/// The data files at `path` (a file, or a directory's data files).
pub fn data_files(path: &Path) -> Result<Vec<FileStatus>> {
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            FlumenError::invalid_option("path", format!("Path does not exist: {}", path.display()))
        }
        _ => FlumenError::io(path, e),
    })?;
    if metadata.is_dir() {
        return list_data_files(path);
    }
    Ok(vec![FileStatus {
        path: path.to_path_buf(),
        size: metadata.len(),
        modification_ms: super::listing::modification_ms(&metadata),
        partition_values: Vec::new(),
    }])
}

/// Reads `path` as a static DataFrame of `format` files (JSON Lines or Parquet).
pub fn read(
    ctx: &SessionContext,
    format: FileFormat,
    path: &Path,
    schema: Option<SchemaRef>,
    options: &Options,
) -> Result<DataFrame> {
    read_with(
        ctx,
        &ReadOptions::from_options(format, options)?,
        path,
        schema,
    )
}

/// Reads `path` (a file, or a directory's data files) with `read_options`; see [`read`].
pub fn read_with(
    ctx: &SessionContext,
    read_options: &ReadOptions,
    path: &Path,
    schema: Option<SchemaRef>,
) -> Result<DataFrame> {
    let read_options = read_options.clone();
    let format = read_options.format();
    let files = data_files(path)?;
    let schema = match schema {
        Some(schema) => nullable(&schema),
        None => {
            let data = match format {
                FileFormat::Json => infer_json(&files, &read_options)?,
                FileFormat::Parquet => parquet_schema(&files)?,
                FileFormat::Csv => csv_schema(&files, &read_options)?,
            };
            with_partition_columns(&data, &files)
        }
    };
    let mut batches: Vec<RecordBatch> = Vec::new();
    for file in &files {
        batches.extend(
            read_file(&file.path, &file.partition_values, &schema, &read_options)?
                .into_iter()
                .filter(|b| b.num_rows() > 0),
        );
    }
    if batches.is_empty() {
        return Ok(ctx.read_batch(RecordBatch::new_empty(schema))?);
    }
    Ok(ctx.read_batches(batches)?)
}

/// The schema of every JSON record of `files`, as Spark infers it.
fn infer_json(files: &[FileStatus], options: &ReadOptions) -> Result<Schema> {
    let mut values = Vec::new();
    let mut malformed = false;
    for file in files {
        let bytes = std::fs::read(&file.path).map_err(|e| FlumenError::io(&file.path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(value @ serde_json::Value::Object(_)) => values.push(value),
                _ => malformed = true,
            }
        }
    }
    let inferred = arrow_json::reader::infer_json_schema_from_iterator(values.iter().map(Ok))
        .map_err(|e| FlumenError::DataFile {
            path: files.first().map(|f| f.path.clone()).unwrap_or_default(),
            reason: format!("its records' types cannot be reconciled into one schema ({e}); give a schema with .schema(..)"),
        })?;
    let mut fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| {
            // A field that is only ever null is a string, as in Spark.
            let f = f.as_ref().clone().with_nullable(true);
            if f.data_type() == &DataType::Null {
                f.with_data_type(DataType::Utf8)
            } else {
                f
            }
        })
        .collect();
    fields.sort_by(|a, b| a.name().cmp(b.name()));
    let corrupt = options.corrupt_column();
    if malformed && !fields.iter().any(|f| f.name() == corrupt) {
        fields.push(Field::new(corrupt, DataType::Utf8, true));
    }
    Ok(Schema::new(fields))
}

/// The first CSV file's schema: its header's names (or `_c0`, `_c1`, ...), typed as
/// `inferSchema` says (an empty schema when there is no file).
fn csv_schema(files: &[FileStatus], options: &ReadOptions) -> Result<Schema> {
    let Some(first) = files.first() else {
        return Ok(Schema::empty());
    };
    let bytes = std::fs::read(&first.path).map_err(|e| FlumenError::io(&first.path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| FlumenError::DataFile {
        path: first.path.clone(),
        reason: format!("is not UTF-8 text ({e}); convert the file to UTF-8"),
    })?;
    let batch = crate::csv::read(
        &text,
        options.csv(),
        None,
        &first.path.display().to_string(),
    )?;
    Ok(batch.schema().as_ref().clone())
}

/// The schema of the first Parquet file (an empty schema when there is none).
fn parquet_schema(files: &[FileStatus]) -> Result<Schema> {
    let Some(first) = files.first() else {
        return Ok(Schema::empty());
    };
    let file = std::fs::File::open(&first.path).map_err(|e| FlumenError::io(&first.path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        FlumenError::DataFile {
            path: first.path.clone(),
            reason: format!("is not a readable Parquet file ({e}); replace it with a valid file or move it out of the directory"),
        }
    })?;
    Ok(builder.schema().as_ref().clone())
}

/// `data` with the partition columns of `files` appended (those `data` does not have),
/// typed from their values.
fn with_partition_columns(data: &Schema, files: &[FileStatus]) -> SchemaRef {
    let mut values: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for file in files {
        for (key, value) in &file.partition_values {
            let next = values.len();
            let entry = values.entry(key.clone()).or_insert((next, Vec::new()));
            entry.1.extend(value.clone());
        }
    }
    let mut partition: Vec<(usize, String, Vec<String>)> = values
        .into_iter()
        .filter(|(key, _)| data.field_with_name(key).is_err())
        .map(|(key, (order, values))| (order, key, values))
        .collect();
    partition.sort();
    let mut fields: Vec<Field> = data
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    for (_, key, values) in partition {
        let data_type = if values.is_empty() {
            DataType::Utf8
        } else if values.iter().all(|v| v.parse::<i64>().is_ok()) {
            DataType::Int64
        } else if values.iter().all(|v| v.parse::<f64>().is_ok()) {
            DataType::Float64
        } else {
            DataType::Utf8
        };
        fields.push(Field::new(key, data_type, true));
    }
    Arc::new(Schema::new(fields))
}
