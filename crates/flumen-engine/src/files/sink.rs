//! The streaming file sink: exactly-once JSON Lines, CSV or Parquet files in a directory.
//!
//! A batch is written in two steps. First its files: each under a hidden temporary name,
//! fsynced and renamed to Spark's name (`part-00000-<uuid>.c000.json`), in `col=value/`
//! directories with `partition_by`. Then its commit: `_spark_metadata/<batchId>` listing the
//! files, written atomically. A crash between the two leaves files no metadata entry lists;
//! readers that honour the log (Flumen's, Spark's) never see them, and the re-run batch writes
//! new files. A re-run batch whose entry exists (the crash came after the commit, before the
//! checkpoint's `commits/N`) is skipped, as Spark's `FileStreamSink` skips it. Append mode
//! only, as in Spark.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::FileFormat;
use super::listing::{DEFAULT_PARTITION_NAME, SINK_METADATA_DIR, escape_path_name};
use super::log::{SinkFileEntry, SinkLog, write_file_atomic};
use super::write::WriteOptions;
use crate::error::{FlumenError, Result};
use crate::modes::OutputMode;
use crate::options::Options;
use crate::sink::{SinkContext, StreamSink};

#[derive(Debug)]
struct Target {
    /// The output directory (absolute once the sink is open).
    dir: PathBuf,
    partition_by: Vec<String>,
    write: WriteOptions,
}

/// Writes each micro-batch as files in a directory, committed through `_spark_metadata` (see
/// the module docs).
#[derive(Debug)]
pub struct FileSink {
    target: Arc<Target>,
    /// The last batch committed to `_spark_metadata` (read when the query starts).
    latest_committed: Option<u64>,
}

impl FileSink {
    /// A sink writing `format` files to the directory of the `path` option (required: Spark's
    /// `'path' is not specified` otherwise), partitioned by the `partition_by` columns, with
    /// the format's options (CSV: `sep`, `quote`, `escape`, `header`, `nullValue`).
    pub fn new(format: FileFormat, options: &Options, partition_by: Vec<String>) -> Result<Self> {
        let Some(path) = options.get("path").filter(|p| !p.trim().is_empty()) else {
            return Err(FlumenError::invalid_option(
                "path",
                "'path' is not specified; give the output directory with .option(\"path\", dir)",
            ));
        };
        Ok(Self {
            target: Arc::new(Target {
                dir: PathBuf::from(path),
                partition_by,
                write: WriteOptions::from_options(format, options)?,
            }),
            latest_committed: None,
        })
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.target.dir
    }
}

#[async_trait]
impl StreamSink for FileSink {
    fn description(&self) -> String {
        format!("FileSink[{}]", self.target.dir.display())
    }

    fn validate(&self, schema: &SchemaRef, mode: OutputMode) -> Result<()> {
        let format = self.target.write.format();
        if mode != OutputMode::Append {
            return Err(FlumenError::Unsupported(format!(
                "Data source {format} does not support {mode} output mode"
            )));
        }
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let partition_by = &self.target.partition_by;
        if let Some(twice) = partition_by
            .iter()
            .enumerate()
            .find_map(|(i, c)| partition_by[..i].contains(c).then_some(c))
        {
            return Err(FlumenError::invalid_option(
                "partitionBy",
                format!("Found duplicate column(s) in the partition schema: `{twice}`"),
            ));
        }
        if matches!(self.target.write.format(), FileFormat::Csv)
            && let Some(nested) = schema.fields().iter().find(|f| f.data_type().is_nested())
        {
            return Err(FlumenError::Unsupported(format!(
                "The CSV datasource doesn't support the column `{}` of the type {}; write it as text with to_json(..), or use the json or parquet format",
                nested.name(),
                nested.data_type()
            )));
        }
        for column in &self.target.partition_by {
            if !columns.contains(&column.as_str()) {
                return Err(FlumenError::invalid_option(
                    "partitionBy",
                    format!(
                        "Partition column `{column}` not found in schema ({}); partition by columns of the query's output",
                        columns.join(", ")
                    ),
                ));
            }
        }
        if !columns.is_empty() && self.target.partition_by.len() >= columns.len() {
            return Err(FlumenError::invalid_option(
                "partitionBy",
                "Cannot use all columns for partition columns; leave at least one column for the files",
            ));
        }
        Ok(())
    }

    /// Creates the directory and reads its metadata log. A log that goes beyond the batches
    /// this query has planned (its last `offsets/N`) was written by another query: its batch
    /// ids would make this query's batches look written, so the query is refused (Spark would
    /// skip them).
    async fn open(&mut self, context: &SinkContext) -> Result<()> {
        let dir = self.target.dir.clone();
        let metadata = dir.join(SINK_METADATA_DIR);
        std::fs::create_dir_all(&metadata).map_err(|e| FlumenError::io(&metadata, e))?;
        let absolute = dir.canonicalize().map_err(|e| FlumenError::io(&dir, e))?;
        self.target = Arc::new(Target {
            dir: absolute,
            partition_by: self.target.partition_by.clone(),
            write: self.target.write.clone(),
        });
        let log = SinkLog::new(self.target.dir.join(SINK_METADATA_DIR));
        let latest = log.latest_batch_id()?;
        if let Some(latest) = latest
            && context
                .last_planned_batch
                .is_none_or(|planned| latest > planned)
        {
            let committed = context
                .last_committed_batch
                .map_or("no batch".to_string(), |c| format!("batches up to {c}"));
            return Err(FlumenError::Sink {
                sink: self.description(),
                message: format!(
                    "{} lists batches up to {latest}, but this query's checkpoint has committed {committed}: another query wrote this directory, and this query's batches would be skipped as already written. Write to a new directory, or restart with the checkpoint that wrote it",
                    log.dir().display()
                ),
            });
        }
        self.latest_committed = latest;
        Ok(())
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        _mode: OutputMode,
    ) -> Result<()> {
        if self
            .latest_committed
            .is_some_and(|latest| batch_id <= latest)
        {
            tracing::info!(batch_id, dir = %self.target.dir.display(), "skipping already committed batch");
            return Ok(());
        }
        let target = Arc::clone(&self.target);
        tokio::task::spawn_blocking(move || write_batch(&target, batch_id, batches))
            .await
            .map_err(|e| {
                FlumenError::IllegalState(format!("a file sink worker thread failed: {e}"))
            })??;
        self.latest_committed = Some(batch_id);
        Ok(())
    }
}

/// Creates `dir` (a partition directory below `root`) if it is missing, and fsyncs the parent
/// of each directory it creates: a committed log entry must never name a file whose directory
/// a power loss could forget.
fn create_dir_durably(root: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| FlumenError::io(dir, e))?;
    let mut created = dir;
    while created != root {
        let Some(parent) = created.parent() else {
            break;
        };
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| FlumenError::io(parent, e))?;
        created = parent;
    }
    Ok(())
}

/// Writes batch `batch_id`'s files, then commits them to the metadata log.
fn write_batch(target: &Target, batch_id: u64, batches: Vec<RecordBatch>) -> Result<()> {
    let log = SinkLog::new(target.dir.join(SINK_METADATA_DIR));
    let groups = partition(&target.partition_by, batches)?;
    let job = uuid::Uuid::new_v4();
    let mut entries = Vec::with_capacity(groups.len());
    for (part, (directory, batches)) in groups.into_iter().enumerate() {
        let dir = target.dir.join(&directory);
        create_dir_durably(&target.dir, &dir)?;
        let name = format!(
            "part-{part:05}-{job}.c000.{}",
            target.write.format().extension()
        );
        let path = dir.join(name);
        let bytes = target.write.encode(&batches)?;
        write_file_atomic(&path, &bytes)?;
        let metadata = std::fs::metadata(&path).map_err(|e| FlumenError::io(&path, e))?;
        entries.push(SinkFileEntry::add(
            &path,
            metadata.len(),
            super::listing::modification_ms(&metadata),
        ));
    }
    log.add(batch_id, &entries)?;
    tracing::debug!(
        batch_id,
        files = entries.len(),
        "file sink committed a batch"
    );
    Ok(())
}

/// The batches' non-empty rows grouped by partition directory (`a=1/b=x`, or `""` without
/// partition columns), in the order the directories first appear; partition columns are left
/// out of the rows.
fn partition(
    columns: &[String],
    batches: Vec<RecordBatch>,
) -> Result<Vec<(PathBuf, Vec<RecordBatch>)>> {
    let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
    if columns.is_empty() {
        return Ok(if batches.is_empty() {
            Vec::new()
        } else {
            vec![(PathBuf::new(), batches)]
        });
    }
    let mut order: Vec<PathBuf> = Vec::new();
    let mut groups: BTreeMap<PathBuf, Vec<RecordBatch>> = BTreeMap::new();
    let format = FormatOptions::default();
    for batch in batches {
        let schema = batch.schema();
        let indices: Vec<usize> = columns
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<std::result::Result<_, _>>()?;
        let data: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !indices.contains(i))
            .collect();
        let formatters = indices
            .iter()
            .map(|&i| ArrayFormatter::try_new(batch.column(i).as_ref(), &format))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut rows: BTreeMap<PathBuf, Vec<u32>> = BTreeMap::new();
        for row in 0..batch.num_rows() {
            let mut directory = PathBuf::new();
            for ((column, &i), formatter) in columns.iter().zip(&indices).zip(&formatters) {
                let value = if batch.column(i).is_null(row) {
                    String::new()
                } else {
                    formatter.value(row).to_string()
                };
                let value = if value.is_empty() {
                    DEFAULT_PARTITION_NAME.to_string()
                } else {
                    escape_path_name(&value)
                };
                directory.push(format!("{}={value}", escape_path_name(column)));
            }
            if !groups.contains_key(&directory) && !rows.contains_key(&directory) {
                order.push(directory.clone());
            }
            rows.entry(directory).or_default().push(row as u32);
        }
        for (directory, rows) in rows {
            let taken = take_record_batch(&batch, &UInt32Array::from(rows))?;
            groups
                .entry(directory)
                .or_default()
                .push(taken.project(&data)?);
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|d| groups.remove(&d).map(|b| (d, b)))
        .collect())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    #[test]
    fn rows_are_grouped_by_hive_directories_without_their_partition_columns() {
        let batch = RecordBatch::try_from_iter([
            (
                "city",
                Arc::new(StringArray::from(vec![
                    Some("Oslo"),
                    Some("a/b"),
                    None,
                    Some("Oslo"),
                ])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
        ])
        .unwrap();
        let groups = partition(&["city".to_string()], vec![batch]).unwrap();
        let summary: Vec<(String, Vec<i64>)> = groups
            .iter()
            .map(|(d, batches)| {
                let values = batches
                    .iter()
                    .flat_map(|b| {
                        assert_eq!(b.num_columns(), 1);
                        b.column(0)
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .values()
                            .to_vec()
                    })
                    .collect();
                (d.display().to_string(), values)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("city=Oslo".to_string(), vec![1, 4]),
                ("city=a%2Fb".to_string(), vec![2]),
                ("city=__HIVE_DEFAULT_PARTITION__".to_string(), vec![3]),
            ]
        );
    }
}
