//! Flumen's engine: stream frames, micro-batch execution over one long-lived DataFusion plan,
//! checkpoints, and the console, memory and `foreach_batch` sinks.
//!
//! Most users depend on the `flumen` facade crate, which adds the Kafka connector. This crate
//! runs on its own with the in-process [`MemoryStream`] source:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> flumen_engine::Result<()> {
//! use std::sync::Arc;
//! use datafusion::arrow::array::{RecordBatch, StringArray};
//! use datafusion::arrow::datatypes::{DataType, Field, Schema};
//! use flumen_engine::prelude::*;
//!
//! let session = StreamSession::new();
//! let schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]));
//! let input = MemoryStream::new("words", schema.clone());
//! input.add_batch(RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["a", "b"]))])?)?;
//!
//! let query = session
//!     .stream(Arc::new(input))?
//!     .with_column("tagged", concat([lit("[processed] "), col("value")]))?
//!     .write_stream()
//!     .memory()
//!     .query_name("tagged")
//!     .start()
//!     .await?;
//! query.process_all_available().await?;
//! query.stop().await?;
//!
//! let rows = session.sql("SELECT tagged FROM tagged ORDER BY tagged").await?.collect().await?;
//! let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)?.to_string();
//! assert!(text.contains("[processed] a") && text.contains("[processed] b"));
//! # Ok(()) }
//! ```

mod batch_reader;
pub mod checkpoint;
mod csv;
pub mod dead_letters;
mod decode_once;
mod error;
mod exec;
pub mod failpoint;
pub mod files;
mod frame;
pub mod functions;
pub mod listener;
mod memory_stream;
mod modes;
pub mod options;
mod plan;
pub mod progress;
mod query;
mod query_shared;
mod reader;
mod session;
pub mod sink;
pub mod source;
pub mod stateful;
mod writer;

pub use batch_reader::DataFrameReader;
pub use csv::ParseMode;
pub use error::{FlumenError, Result};
pub use files::{FileFormat, FileSink, FileSource};
pub use frame::{GroupedFrame, StreamFrame};
pub use memory_stream::MemoryStream;
pub use modes::{OutputMode, Trigger};
pub use plan::StreamTable;
pub use progress::{
    SinkProgress, SourceProgress, StateOperatorProgress, StreamingQueryProgress,
    StreamingQueryStatus,
};
pub use query::{RECENT_PROGRESS_RETAINED, StreamingQuery};
pub use reader::DataStreamReader;
pub use session::StreamSession;
pub use writer::DataStreamWriter;

pub use listener::{ListenerId, StreamingQueryListener};

/// Re-exports of DataFusion and Arrow, at the versions Flumen is built with.
pub use datafusion;

/// The names most programs need: `use flumen_engine::prelude::*;`.
pub mod prelude {
    pub use crate::functions::{
        avg, cast, cast_string, col, concat, count, current_timestamp, from_json,
        from_json_with_options, interval, lit, max, min, session_window, sliding_window, struct_,
        sum, to_json, when, window, window_time, window_with_start,
    };
    pub use crate::{
        DataStreamWriter, FlumenError, GroupedFrame, MemoryStream, OutputMode, StreamFrame,
        StreamSession, StreamingQuery, StreamingQueryProgress, Trigger,
    };
    pub use datafusion::logical_expr::JoinType;
}
