//! File sources and sinks: directories of JSON Lines, CSV or Parquet files as streams, and
//! exactly-once file output, with Spark's layouts so either side can be read by the other.
//!
//! - [`FileSource`] (`read_stream().format("json").schema(..).load(dir)`) lists the directory
//!   each trigger, takes files it has not seen in modification-time order (at most
//!   `maxFilesPerTrigger`), and records the files of each batch in the checkpoint's file log
//!   (`<checkpoint>/sources/0/files/<n>`, as Spark's `FileStreamSourceLog`) *before* the
//!   batch's offsets are logged. A batch re-run after a crash reads exactly the logged files,
//!   and a restarted query never takes a logged file again.
//! - [`FileSink`] (`write_stream().format("parquet").option("path", dir)`) writes each batch's
//!   files under hidden temporary names, renames them into place, then commits the batch by
//!   writing `<dir>/_spark_metadata/<batchId>` (Spark's `FileStreamSinkLog` format). Readers
//!   that honour the metadata log — this module's batch reader and file source, and Spark —
//!   see exactly the files of committed batches; a batch whose metadata entry exists is skipped
//!   when re-run.
//!
//! The pieces: [`listing`] (which files a directory holds, hidden and in-progress files left
//! out, `_spark_metadata` honoured, `key=value` partition directories), [`log`] (the two
//! metadata logs), [`read`] and [`write`](mod@write) (one file in and out, per format),
//! [`batch`] (static reads), [`source`] and [`sink`].

pub mod batch;
pub mod listing;
pub mod log;
pub mod read;
pub mod sink;
pub mod source;
pub mod write;

use std::str::FromStr;

pub use sink::FileSink;
pub use source::{FileSource, FileSourceOptions};

use crate::error::{FlumenError, Result};

/// A file format Flumen reads and writes (Spark's `format(..)` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    /// JSON Lines: one JSON object per line (Spark's `json` with `multiLine = false`).
    Json,
    /// Comma-separated values, with Spark's CSV options.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// Spark's name of the format: `json`, `csv` or `parquet`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }

    /// The extension of the files the sink writes, after `.c000`: Spark's names.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Parquet => "snappy.parquet",
        }
    }
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FileFormat {
    type Err = FlumenError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            other => Err(FlumenError::invalid_option(
                "format",
                format!(
                    "'{other}' is not a file format Flumen reads or writes; use json, csv or parquet"
                ),
            )),
        }
    }
}

/// The option naming the column that receives a malformed record's text (JSON and CSV).
pub(crate) const CORRUPT_RECORD_OPTION: &str = "columnNameOfCorruptRecord";

/// Spark's message when a streaming file source has no schema.
pub const SCHEMA_REQUIRED: &str = "Schema must be specified when creating a streaming source DataFrame. If some files already exist in the directory, then depending on the file format you may be able to create a static DataFrame on that directory with 'spark.read.load(directory)' and infer schema from it.";
