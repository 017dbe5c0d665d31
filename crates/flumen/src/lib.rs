//! # Flumen — structured streaming for Rust
//!
//! Kafka in, Arrow micro-batches through DataFusion plans, Kafka/console/memory out, with
//! checkpointed offsets — Spark Structured Streaming's semantics and vocabulary, as a library,
//! without a JVM or a cluster.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> flumen::Result<()> {
//! use flumen::prelude::*;
//!
//! // An in-process Kafka broker (librdkafka's mock cluster); any Kafka works the same way.
//! let kafka = EmbeddedKafka::with_topics(&[("demo-topic", 1), ("demo-topic-2", 1)])?;
//! let session = StreamSession::new();
//! session
//!     .sql("SELECT 'Hello ' || CAST(i AS STRING) AS value FROM (VALUES (0), (1), (2)) AS t(i)")
//!     .await?
//!     .write_kafka()
//!     .bootstrap_servers(kafka.bootstrap_servers())
//!     .topic("demo-topic")
//!     .save()
//!     .await?;
//!
//! // Stream demo-topic, tag every value, write to demo-topic-2 (the notebook's third cell).
//! let checkpoint = std::env::temp_dir().join(format!("flumen-doc-{}", std::process::id()));
//! let query = session
//!     .read_stream()
//!     .kafka()
//!     .bootstrap_servers(kafka.bootstrap_servers())
//!     .subscribe(["demo-topic"])
//!     .starting_offsets(StartingOffsets::Earliest)
//!     .load()?
//!     .select_expr(["CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value"])?
//!     .with_column("value", concat([lit("[processed] "), col("value")]))?
//!     .write_stream()
//!     .kafka()
//!     .bootstrap_servers(kafka.bootstrap_servers())
//!     .topic("demo-topic-2")
//!     .checkpoint_location(&checkpoint)
//!     .start()
//!     .await?;
//! query.process_all_available().await?;
//! assert_eq!(query.last_progress().map(|p| p.num_input_rows), Some(3));
//! query.stop().await?;
//!
//! // Read the output back as a bounded batch.
//! let out = session.read_kafka().bootstrap_servers(kafka.bootstrap_servers())
//!     .subscribe(["demo-topic-2"]).load().await?;
//! assert_eq!(out.count().await?, 3);
//! # std::fs::remove_dir_all(&checkpoint).ok();
//! # Ok(()) }
//! ```
//!
//! Query listeners (`session.add_listener(...)`, see the `listener` module) report every
//! query's start, progress, idleness and end. The optional feature `ui` adds
//! `flumen::MonitorServer`: a JSON API, Prometheus metrics and a live page for a session's
//! queries on `http://127.0.0.1:4040/`.
//!
//! See the repository's README for the examples, and its `docs/` pages for the API guide, event
//! time and state, monitoring, the checkpoint layout, Kafka and the differences from Spark.

pub use flumen_engine::*;

/// The Kafka connector.
#[cfg(feature = "kafka")]
pub use flumen_kafka as kafka;

#[cfg(feature = "kafka")]
pub use flumen_kafka::{EmbeddedKafka, StartingOffsets};

/// The monitoring server: JSON API, Prometheus metrics and a live page for a session's
/// queries (feature `ui`).
#[cfg(feature = "ui")]
pub use flumen_monitor as monitor;

#[cfg(feature = "ui")]
pub use flumen_monitor::MonitorServer;

/// Everything a streaming program usually needs: `use flumen::prelude::*;`.
pub mod prelude {
    pub use flumen_engine::prelude::*;
    #[cfg(feature = "kafka")]
    pub use flumen_kafka::prelude::*;
}
