//! The engine's error type.
//!
//! Every error names the thing that went wrong and, where there is one, what the user can do
//! about it: `checkpoint file offsets/7 is truncated ...; restore it or start a new checkpoint
//! location`. Errors from DataFusion, Arrow and I/O convert with `?`.

use std::path::PathBuf;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result type used throughout Flumen.
pub type Result<T, E = FlumenError> = std::result::Result<T, E>;

/// Everything that can go wrong in Flumen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlumenError {
    /// A DataFusion planning or execution error.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    /// An Arrow error (casts, array construction, IPC).
    #[error(transparent)]
    Arrow(#[from] ArrowError),

    /// A file system error on a named path.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint file that cannot be used: missing, truncated, corrupt or from another query.
    #[error("checkpoint file {} {reason}", file.display())]
    Checkpoint {
        /// The offending file.
        file: PathBuf,
        /// Why it cannot be used and what to do.
        reason: String,
    },

    /// An option that is missing, malformed or not allowed.
    #[error("invalid option '{option}': {reason}")]
    InvalidOption {
        /// The option's name, as the user spelt it.
        option: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A query shape or operation that streaming does not support, reported at `start()`.
    #[error("{0}")]
    Unsupported(String),

    /// A record of a file that does not fit its schema, read in `FAILFAST` mode.
    #[error("malformed record at {source_name}: {reason}: {record}")]
    MalformedRecord {
        /// The file and line, as `path:line`.
        source_name: String,
        /// The record as read.
        record: String,
        /// What does not fit, and what to do.
        reason: String,
    },

    /// A data file (of a file source, sink or static read) that cannot be read or written:
    /// not the format it should be, a column that does not convert, a bad metadata log.
    #[error("cannot use data file {}: {reason}", path.display())]
    DataFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A failure inside a source (Kafka metadata, fetch, data loss).
    #[error("source {source_name}: {message}")]
    Source {
        /// The source's description, e.g. `KafkaV2[Subscribe[demo-topic]]`.
        source_name: String,
        /// What failed.
        message: String,
    },

    /// A failure inside a sink (delivery, schema, user callback).
    #[error("sink {sink}: {message}")]
    Sink {
        /// The sink's description.
        sink: String,
        /// What failed.
        message: String,
    },

    /// A streaming query that ended with an error; the original error is kept.
    #[error("query {name} (id = {id}, runId = {run_id}) terminated with exception: {cause}")]
    QueryFailed {
        /// The query's name, or `<unnamed>`.
        name: String,
        /// The stable query id.
        id: String,
        /// The id of the run that failed.
        run_id: String,
        /// The error that stopped it.
        cause: std::sync::Arc<FlumenError>,
    },

    /// An operation on a query or session in the wrong state.
    #[error("{0}")]
    IllegalState(String),
}

impl FlumenError {
    /// An [`FlumenError::InvalidOption`] for `option`.
    pub fn invalid_option(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidOption {
            option: option.into(),
            reason: reason.into(),
        }
    }

    /// An [`FlumenError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`FlumenError::Checkpoint`] for `file`.
    pub fn checkpoint(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            file: file.into(),
            reason: reason.into(),
        }
    }
}
