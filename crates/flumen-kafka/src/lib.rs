//! Kafka for Flumen: a streaming source and sink with Spark's options and schema, bounded batch
//! reads and writes, and [`EmbeddedKafka`], an in-process broker for examples and tests.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> flumen_engine::Result<()> {
//! use flumen_engine::prelude::*;
//! use flumen_kafka::prelude::*;
//!
//! let kafka = EmbeddedKafka::with_topics(&[("demo-topic", 1)])?;
//! let session = StreamSession::new();
//! let hello = session.sql("SELECT 'Hello 0' AS value").await?;
//! hello.write_kafka().bootstrap_servers(kafka.bootstrap_servers()).topic("demo-topic").save().await?;
//!
//! let query = session
//!     .read_stream()
//!     .kafka()
//!     .bootstrap_servers(kafka.bootstrap_servers())
//!     .subscribe(["demo-topic"])
//!     .starting_offsets(StartingOffsets::Earliest)
//!     .load()?
//!     .select_expr(["CAST(value AS STRING) AS value"])?
//!     .write_stream()
//!     .memory()
//!     .query_name("greetings")
//!     .start()
//!     .await?;
//! query.process_all_available().await?;
//! query.stop().await?;
//! let rows = session.sql("SELECT value FROM greetings").await?.collect().await?;
//! assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
//! # Ok(()) }
//! ```

mod api;
mod batch;
mod broker;
mod consumer;
pub mod dead_letters;
mod late;
pub mod offsets;
pub mod options;
pub mod schema;
pub mod side_output;
mod sink;
mod source;
pub mod transactional;

pub use api::{
    KafkaBatchReader, KafkaBatchWriter, KafkaDataFrameExt, KafkaReadStreamExt, KafkaSessionExt,
    KafkaStreamReader, KafkaStreamWriter, KafkaWriteStreamExt,
};
pub use broker::EmbeddedKafka;
pub use late::{LateRowsAsJson, LateRowsToKafka};
pub use options::{EndingOffsets, SourceConfig, StartingOffsets, Subscription};
pub use schema::kafka_schema;
pub use sink::KafkaSink;
pub use source::KafkaSource;

/// `use flumen_kafka::prelude::*;` brings the Kafka builders into scope.
pub mod prelude {
    pub use crate::{
        EmbeddedKafka, KafkaDataFrameExt, KafkaReadStreamExt, KafkaSessionExt, KafkaWriteStreamExt,
        StartingOffsets,
    };
}
