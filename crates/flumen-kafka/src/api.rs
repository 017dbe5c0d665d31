//! Typed builders in Spark's vocabulary: `read_stream().kafka()`, `write_stream().kafka()`,
//! `session.read_kafka()` (bounded batch read) and `write_kafka()` (batch write).
//!
//! Every typed setter writes the Spark option it stands for, so `.subscribe(["t"])` and
//! `.option("subscribe", "t")` are the same thing and go through the same validation.

use std::path::PathBuf;
use std::sync::Arc;

use flumen_engine::datafusion::dataframe::DataFrame;
use flumen_engine::options::Options;
use flumen_engine::{
    DataStreamReader, DataStreamWriter, OutputMode, Result, StreamFrame, StreamSession,
    StreamingQuery, Trigger,
};

use crate::batch::{read_range, write_dataframe};
use crate::options::{SourceConfig, StartingOffsets};
use crate::sink::KafkaSink;
use crate::source::KafkaSource;

/// Adds `.kafka()` to `session.read_stream()`.
pub trait KafkaReadStreamExt {
    /// Reads a Kafka topic as a stream.
    fn kafka(self) -> KafkaStreamReader;
}

impl KafkaReadStreamExt for DataStreamReader {
    fn kafka(self) -> KafkaStreamReader {
        KafkaStreamReader { reader: self }
    }
}

/// Builder of a Kafka stream; see the Spark option names on each setter.
///
/// The stream has Spark's Kafka schema (`key`, `value`, `topic`, `partition`, `offset`,
/// `timestamp`, `timestampType`), with `key` and `value` as bytes to decode:
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> flumen_engine::Result<()> {
/// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
/// use flumen_engine::prelude::*;
/// use flumen_kafka::prelude::*;
///
/// // An in-process broker; a real one is used the same way, with its bootstrap servers.
/// let kafka = EmbeddedKafka::with_topics(&[("orders", 1)])?;
/// let session = StreamSession::new();
/// let orders = r#"SELECT * FROM (VALUES ('{"item":"tea","qty":2}'), ('{"item":"cake","qty":1}'))
///                 AS t(value)"#;
/// session
///     .sql(orders)
///     .await?
///     .write_kafka()
///     .bootstrap_servers(kafka.bootstrap_servers())
///     .topic("orders")
///     .save()
///     .await?;
///
/// let query = session
///     .read_stream()
///     .kafka()
///     .bootstrap_servers(kafka.bootstrap_servers())
///     .subscribe(["orders"])
///     .starting_offsets(StartingOffsets::Earliest)
///     .max_offsets_per_trigger(1000)
///     .load()?
///     .select_expr([
///         "offset",
///         "from_json(CAST(value AS STRING), 'item STRING, qty INT') AS data",
///     ])?
///     .select_expr(["offset", "data.*"])?
///     .write_stream()
///     .memory()
///     .query_name("orders")
///     .start()
///     .await?;
/// query.process_all_available().await?;
/// query.stop().await?;
///
/// let rows = session.sql("SELECT * FROM orders ORDER BY offset").await?.collect().await?;
/// assert_eq!(
///     pretty_format_batches(&rows)?.to_string(),
///     "+--------+------+-----+\n\
///      | offset | item | qty |\n\
///      +--------+------+-----+\n\
///      | 0      | tea  | 2   |\n\
///      | 1      | cake | 1   |\n\
///      +--------+------+-----+"
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct KafkaStreamReader {
    reader: DataStreamReader,
}

/// The source setters shared by the streaming and the batch reader, each written in terms of
/// the type's own `option`.
macro_rules! source_setters {
    ($ty:ident) => {
        impl $ty {
            /// `kafka.bootstrap.servers`: `host:port[,host:port...]`. Required.
            ///
            /// The same on a stream (`read_stream().kafka()`) and a bounded read
            /// (`read_kafka()`):
            ///
            /// ```
            /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
            /// # async fn main() -> flumen_engine::Result<()> {
            /// use flumen_engine::StreamSession;
            /// use flumen_kafka::prelude::*;
            ///
            /// let kafka = EmbeddedKafka::with_topics(&[("events", 1)])?;
            /// let session = StreamSession::new();
            ///
            /// // load() checks the options; the stream connects when a query starts.
            /// let stream = session
            ///     .read_stream()
            ///     .kafka()
            ///     .bootstrap_servers(kafka.bootstrap_servers())
            ///     .subscribe(["events"])
            ///     .load()?;
            /// assert_eq!(
            ///     stream.columns(),
            ///     ["key", "value", "topic", "partition", "offset", "timestamp", "timestampType"]
            /// );
            /// assert!(session.read_stream().kafka().subscribe(["events"]).load().is_err());
            ///
            /// // A bounded read reads at once (the topic is empty).
            /// let read = session
            ///     .read_kafka()
            ///     .bootstrap_servers(kafka.bootstrap_servers())
            ///     .subscribe(["events"])
            ///     .load()
            ///     .await?;
            /// assert_eq!(read.count().await?, 0);
            /// # Ok(()) }
            /// ```
            pub fn bootstrap_servers(self, servers: impl AsRef<str>) -> Self {
                self.option("kafka.bootstrap.servers", servers.as_ref())
            }

            /// `subscribe`: read these topics (all partitions, including ones added later).
            ///
            /// The same on a stream (`read_stream().kafka()`) and a bounded read
            /// (`read_kafka()`, shown here):
            ///
            /// ```
            /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
            /// # async fn main() -> flumen_engine::Result<()> {
            /// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
            /// use flumen_engine::prelude::*;
            /// use flumen_kafka::prelude::*;
            ///
            /// let kafka = EmbeddedKafka::with_topics(&[("clicks", 1), ("views", 1)])?;
            /// let session = StreamSession::new();
            /// for topic in ["clicks", "views", "views"] {
            ///     session
            ///         .sql("SELECT 'event' AS value")
            ///         .await?
            ///         .write_kafka()
            ///         .bootstrap_servers(kafka.bootstrap_servers())
            ///         .topic(topic)
            ///         .save()
            ///         .await?;
            /// }
            ///
            /// let events = session
            ///     .read_kafka()
            ///     .bootstrap_servers(kafka.bootstrap_servers())
            ///     .subscribe(["clicks", "views"])
            ///     .load()
            ///     .await?;
            /// let per_topic = session
            ///     .frame(events)
            ///     .group_by([col("topic")])
            ///     .count()?
            ///     .order_by([col("topic")])?
            ///     .collect()
            ///     .await?;
            /// assert_eq!(
            ///     pretty_format_batches(&per_topic)?.to_string(),
            ///     "+--------+-------+\n\
            ///      | topic  | count |\n\
            ///      +--------+-------+\n\
            ///      | clicks | 1     |\n\
            ///      | views  | 2     |\n\
            ///      +--------+-------+"
            /// );
            /// # Ok(()) }
            /// ```
            pub fn subscribe<S: AsRef<str>>(self, topics: impl IntoIterator<Item = S>) -> Self {
                let list: Vec<String> =
                    topics.into_iter().map(|t| t.as_ref().to_string()).collect();
                self.option("subscribe", list.join(","))
            }

            /// `subscribePattern`: read every topic matching this regex, including new ones.
            pub fn subscribe_pattern(self, pattern: impl AsRef<str>) -> Self {
                self.option("subscribePattern", pattern.as_ref())
            }

            /// `assign`: read exactly these partitions, e.g. `[("t", vec![0, 1])]`.
            pub fn assign<S: AsRef<str>>(
                self,
                partitions: impl IntoIterator<Item = (S, Vec<i32>)>,
            ) -> Self {
                let map: serde_json::Map<String, serde_json::Value> = partitions
                    .into_iter()
                    .map(|(t, ps)| (t.as_ref().to_string(), serde_json::Value::from(ps)))
                    .collect();
                self.option("assign", serde_json::Value::Object(map).to_string())
            }

            /// `startingOffsets`: where a new query starts. Default: latest for streams,
            /// earliest for batch reads (where latest is not allowed). Ignored when restarting
            /// from a checkpoint.
            ///
            /// A stream from the earliest offsets reads the records already in the topic; one
            /// from the latest (the default) only the records written after it started:
            ///
            /// ```
            /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
            /// # async fn main() -> flumen_engine::Result<()> {
            /// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
            /// use flumen_engine::prelude::*;
            /// use flumen_kafka::prelude::*;
            ///
            /// let kafka = EmbeddedKafka::with_topics(&[("events", 1)])?;
            /// let servers = kafka.bootstrap_servers();
            /// let session = StreamSession::new();
            /// let old = session.sql("SELECT 'old' AS value").await?;
            /// old.write_kafka().bootstrap_servers(servers).topic("events").save().await?;
            ///
            /// let mut queries = Vec::new();
            /// let starts = [
            ///     ("earliest", StartingOffsets::Earliest),
            ///     ("latest", StartingOffsets::Latest),
            /// ];
            /// for (name, offsets) in starts {
            ///     let query = session
            ///         .read_stream()
            ///         .kafka()
            ///         .bootstrap_servers(servers)
            ///         .subscribe(["events"])
            ///         .starting_offsets(offsets)
            ///         .load()?
            ///         .select_expr(["CAST(value AS STRING) AS value"])?
            ///         .write_stream()
            ///         .memory()
            ///         .query_name(name)
            ///         .start()
            ///         .await?;
            ///     query.process_all_available().await?;
            ///     queries.push(query);
            /// }
            /// let new = session.sql("SELECT 'new' AS value").await?;
            /// new.write_kafka().bootstrap_servers(servers).topic("events").save().await?;
            /// for query in &queries {
            ///     query.process_all_available().await?;
            ///     query.stop().await?;
            /// }
            ///
            /// let sql = "SELECT 'earliest' AS start, value FROM earliest \
            ///            UNION ALL SELECT 'latest' AS start, value FROM latest \
            ///            ORDER BY start, value";
            /// let rows = session.sql(sql).await?.collect().await?;
            /// assert_eq!(
            ///     pretty_format_batches(&rows)?.to_string(),
            ///     "+----------+-------+\n\
            ///      | start    | value |\n\
            ///      +----------+-------+\n\
            ///      | earliest | new   |\n\
            ///      | earliest | old   |\n\
            ///      | latest   | new   |\n\
            ///      +----------+-------+"
            /// );
            /// # Ok(()) }
            /// ```
            pub fn starting_offsets(self, offsets: StartingOffsets) -> Self {
                self.option("startingOffsets", String::from(offsets))
            }

            /// `startingTimestamp`: start at the first offset at or after this time (ms since
            /// the epoch) in every partition; overrides `startingOffsets`.
            pub fn starting_timestamp(self, millis: i64) -> Self {
                self.option("startingTimestamp", millis.to_string())
            }

            /// `startingOffsetsByTimestamp`: per partition, start at the first offset at or after
            /// a time (ms since the epoch); every partition must be named. Overrides
            /// `startingOffsets`; `startingTimestamp` overrides it.
            pub fn starting_offsets_by_timestamp<'a>(
                self,
                timestamps: impl IntoIterator<Item = (&'a str, i32, i64)>,
            ) -> Self {
                self.option(
                    "startingOffsetsByTimestamp",
                    crate::offsets::to_json(&by_partition(timestamps)).to_string(),
                )
            }

            /// `startingOffsetsByTimestampStrategy`: `"error"` (the default) fails when a
            /// partition has no record at or after its starting timestamp; `"latest"` starts it
            /// at its latest offset.
            pub fn starting_offsets_by_timestamp_strategy(self, strategy: &str) -> Self {
                self.option("startingOffsetsByTimestampStrategy", strategy)
            }

            /// `failOnDataLoss`: fail when data may have been lost (default true).
            pub fn fail_on_data_loss(self, fail: bool) -> Self {
                self.option("failOnDataLoss", fail.to_string())
            }

            /// `includeHeaders`: add the `headers` column (default false).
            pub fn include_headers(self, include: bool) -> Self {
                self.option("includeHeaders", include.to_string())
            }

            /// Several Spark-style options at once.
            pub fn options<K: Into<String>, V: ToString>(
                mut self,
                options: impl IntoIterator<Item = (K, V)>,
            ) -> Self {
                for (k, v) in options {
                    self = self.option(k, v);
                }
                self
            }
        }
    };
}

/// `(topic, partition, value)` triples as Spark's per-partition JSON map.
fn by_partition<'a>(
    values: impl IntoIterator<Item = (&'a str, i32, i64)>,
) -> crate::offsets::PartitionOffsets {
    let mut map = crate::offsets::PartitionOffsets::new();
    for (topic, partition, value) in values {
        map.entry(topic.to_string())
            .or_default()
            .insert(partition, value);
    }
    map
}

/// The sink setters shared by the streaming and the batch writer.
macro_rules! sink_setters {
    ($ty:ident) => {
        impl $ty {
            /// `kafka.bootstrap.servers`. Required.
            pub fn bootstrap_servers(self, servers: impl AsRef<str>) -> Self {
                self.option("kafka.bootstrap.servers", servers.as_ref())
            }

            /// `topic`: the topic for every row; overrides a `topic` column.
            ///
            /// The same on a streaming write (`write_stream().kafka()`) and a batch write
            /// (`write_kafka()`, shown here):
            ///
            /// ```
            /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
            /// # async fn main() -> flumen_engine::Result<()> {
            /// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
            /// use flumen_engine::prelude::*;
            /// use flumen_kafka::prelude::*;
            ///
            /// let kafka = EmbeddedKafka::with_topics(&[("tea", 1), ("cake", 1), ("audit", 1)])?;
            /// let servers = kafka.bootstrap_servers();
            /// let session = StreamSession::new();
            /// let orders = "SELECT * FROM (VALUES ('tea', 'order 1'), ('cake', 'order 2')) \
            ///               AS t(topic, value)";
            ///
            /// // Without topic(), each row goes to the topic its `topic` column names...
            /// let routed = session
            ///     .sql(orders)
            ///     .await?
            ///     .write_kafka()
            ///     .bootstrap_servers(servers)
            ///     .save()
            ///     .await?;
            /// // ...with it, every row goes to that one topic.
            /// let copied = session
            ///     .sql(orders)
            ///     .await?
            ///     .write_kafka()
            ///     .bootstrap_servers(servers)
            ///     .topic("audit")
            ///     .save()
            ///     .await?;
            /// assert_eq!((routed, copied), (2, 2));
            ///
            /// let all = session
            ///     .read_kafka()
            ///     .bootstrap_servers(servers)
            ///     .subscribe(["tea", "cake", "audit"])
            ///     .load()
            ///     .await?;
            /// let rows = session
            ///     .frame(all)
            ///     .select_expr(["topic", "CAST(value AS STRING) AS value"])?
            ///     .order_by([col("topic"), col("value")])?
            ///     .collect()
            ///     .await?;
            /// assert_eq!(
            ///     pretty_format_batches(&rows)?.to_string(),
            ///     "+-------+---------+\n\
            ///      | topic | value   |\n\
            ///      +-------+---------+\n\
            ///      | audit | order 1 |\n\
            ///      | audit | order 2 |\n\
            ///      | cake  | order 2 |\n\
            ///      | tea   | order 1 |\n\
            ///      +-------+---------+"
            /// );
            /// # Ok(()) }
            /// ```
            pub fn topic(self, topic: impl AsRef<str>) -> Self {
                self.option("topic", topic.as_ref())
            }

            /// Several Spark-style options at once.
            pub fn options<K: Into<String>, V: ToString>(
                mut self,
                options: impl IntoIterator<Item = (K, V)>,
            ) -> Self {
                for (k, v) in options {
                    self = self.option(k, v);
                }
                self
            }
        }
    };
}

source_setters!(KafkaStreamReader);
source_setters!(KafkaBatchReader);
sink_setters!(KafkaStreamWriter);
sink_setters!(KafkaBatchWriter);

impl KafkaStreamReader {
    /// A Spark-style option (`kafka.*` properties pass through to librdkafka).
    pub fn option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.reader = self.reader.option(key, value);
        self
    }

    /// `maxOffsetsPerTrigger`: at most this many records per micro-batch, split over
    /// partitions by backlog. Default: no limit.
    pub fn max_offsets_per_trigger(self, records: u64) -> Self {
        self.option("maxOffsetsPerTrigger", records.to_string())
    }

    /// `minOffsetsPerTrigger`: a trigger with fewer new records than this runs no batch and
    /// waits for more, until [`max_trigger_delay`](Self::max_trigger_delay) has passed since
    /// the last batch. Ignored by available-now runs.
    pub fn min_offsets_per_trigger(self, records: u64) -> Self {
        self.option("minOffsetsPerTrigger", records.to_string())
    }

    /// `maxTriggerDelay`: the longest `minOffsetsPerTrigger` may hold back a batch (default
    /// 15 minutes).
    pub fn max_trigger_delay(self, delay: std::time::Duration) -> Self {
        self.option("maxTriggerDelay", format!("{} ms", delay.as_millis()))
    }

    /// Validates the options and returns the stream (no connection is made yet).
    pub fn load(self) -> Result<StreamFrame> {
        let config = SourceConfig::from_options(self.reader.get_options(), true)?;
        self.reader.load_source(Arc::new(KafkaSource::new(config)))
    }
}

/// Adds `.kafka()` to `frame.write_stream()`.
pub trait KafkaWriteStreamExt {
    /// Writes the stream to Kafka.
    fn kafka(self) -> KafkaStreamWriter;
}

impl KafkaWriteStreamExt for DataStreamWriter {
    fn kafka(self) -> KafkaStreamWriter {
        KafkaStreamWriter { writer: self }
    }
}

/// Builder of a streaming query writing to Kafka.
///
/// The frame needs a `value` column (string or binary), and may have `key`, `topic`,
/// `partition` and `headers` columns (Spark's rules); a checkpoint location is required.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> flumen_engine::Result<()> {
/// use std::sync::Arc;
/// use flumen_engine::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
/// use flumen_engine::datafusion::arrow::util::pretty::pretty_format_batches;
/// use flumen_engine::prelude::*;
/// use flumen_kafka::prelude::*;
///
/// let kafka = EmbeddedKafka::with_topics(&[("greetings", 1)])?;
/// let session = StreamSession::new();
/// let batch = RecordBatch::try_from_iter([(
///     "name",
///     Arc::new(StringArray::from(vec!["Ann", "Bob"])) as ArrayRef,
/// )])?;
/// let names = Arc::new(MemoryStream::new("names", batch.schema()));
/// names.add_batch(batch)?;
///
/// let checkpoint = tempfile::tempdir().expect("a temporary directory");
/// let query = session
///     .stream(names)?
///     .select_expr(["name AS key", "concat('Hello ', name) AS value"])?
///     .write_stream()
///     .kafka()
///     .bootstrap_servers(kafka.bootstrap_servers())
///     .topic("greetings")
///     .checkpoint_location(checkpoint.path())
///     .start()
///     .await?;
/// query.process_all_available().await?;
/// query.stop().await?;
///
/// let written = session
///     .read_kafka()
///     .bootstrap_servers(kafka.bootstrap_servers())
///     .subscribe(["greetings"])
///     .load()
///     .await?;
/// let rows = session
///     .frame(written)
///     .select_expr(["CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value"])?
///     .order_by([col("key")])?
///     .collect()
///     .await?;
/// assert_eq!(
///     pretty_format_batches(&rows)?.to_string(),
///     "+-----+-----------+\n\
///      | key | value     |\n\
///      +-----+-----------+\n\
///      | Ann | Hello Ann |\n\
///      | Bob | Hello Bob |\n\
///      +-----+-----------+"
/// );
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct KafkaStreamWriter {
    writer: DataStreamWriter,
}

impl KafkaStreamWriter {
    /// A Spark-style option (`kafka.*` producer properties pass through to librdkafka).
    pub fn option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.writer = self.writer.option(key, value);
        self
    }

    /// `exactlyOnce`: write each micro-batch as one Kafka transaction, so that readers with
    /// `isolation.level=read_committed` see every output row once, across crashes and restarts
    /// (default: at-least-once, as Spark). Needs brokers with transactions, and the `topic`
    /// option or [`transaction_marker_topic`](Self::transaction_marker_topic). A second process
    /// started on the same checkpoint fences the first, which fails saying so. See
    /// [`transactional`](crate::transactional) for the protocol.
    pub fn exactly_once(self, enabled: bool) -> Self {
        self.option(crate::transactional::EXACTLY_ONCE, enabled)
    }

    /// `transactionalIdPrefix`: the start of the producer's `transactional.id`, which is
    /// `<prefix><query id>-<marker topic>` (default prefix `flumen-`). Give each application
    /// its own when transactional ids are restricted by ACLs.
    pub fn transactional_id_prefix(self, prefix: impl AsRef<str>) -> Self {
        self.option(
            crate::transactional::TRANSACTIONAL_ID_PREFIX,
            prefix.as_ref(),
        )
    }

    /// `kafka.transaction.timeout.ms`: how long the broker keeps a transaction of a dead
    /// process open before aborting it (default 60 s). Also bounds each batch's transaction.
    pub fn transaction_timeout(self, timeout: std::time::Duration) -> Self {
        self.option("kafka.transaction.timeout.ms", timeout.as_millis())
    }

    /// `transactionMarkerTopic`: the topic whose partition 0 records, in each transaction, the
    /// batch it wrote (default: the `topic` option). Needed when rows name their own topic.
    pub fn transaction_marker_topic(self, topic: impl AsRef<str>) -> Self {
        self.option(
            crate::transactional::TRANSACTION_MARKER_TOPIC,
            topic.as_ref(),
        )
    }

    /// See [`DataStreamWriter::output_mode`].
    pub fn output_mode(mut self, mode: OutputMode) -> Self {
        self.writer = self.writer.output_mode(mode);
        self
    }

    /// Writes the rows the query's stateful operator drops as late (behind the watermark) to
    /// `topic`, each as one JSON object in a record's value: the operator's input columns,
    /// `late_operator` and `late_watermark` (see
    /// [`DataStreamWriter::late_rows_to_memory`]). Same brokers and `kafka.*` options as the
    /// query's output; exactly-once when the output is.
    pub fn late_rows_to_kafka(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.writer = self.writer.late_rows_sink_factory(move |_, _, options| {
            Ok(Box::new(crate::late::LateRowsToKafka::new(
                &topic, options,
            )?))
        });
        self
    }

    /// Writes the records `from_json` could not parse to `topic`, alongside the query's own
    /// output (see [`DataStreamWriter::dead_letters_to_memory`]): the original key, value and
    /// headers, plus the headers `flumen.source.topic`, `flumen.source.partition`,
    /// `flumen.source.offset`, `flumen.source.timestamp`, `flumen.source.timestampType` and
    /// `flumen.parse_error` (see [`crate::dead_letters`]). Same brokers and `kafka.*` options as
    /// the query's output; exactly-once when the output is.
    pub fn dead_letters_to_kafka(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.writer = self.writer.dead_letters_sink_factory(move |_, _, options| {
            Ok(Box::new(crate::dead_letters::DeadLettersToKafka::new(
                &topic, options,
            )?))
        });
        self
    }

    /// See [`DataStreamWriter::trigger`].
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.writer = self.writer.trigger(trigger);
        self
    }

    /// See [`DataStreamWriter::query_name`].
    pub fn query_name(mut self, name: impl Into<String>) -> Self {
        self.writer = self.writer.query_name(name);
        self
    }

    /// See [`DataStreamWriter::checkpoint_location`]. Required for the Kafka sink.
    pub fn checkpoint_location(mut self, path: impl Into<PathBuf>) -> Self {
        self.writer = self.writer.checkpoint_location(path);
        self
    }

    /// Validates and starts the query.
    pub async fn start(self) -> Result<StreamingQuery> {
        self.writer
            .sink_factory(|_, schema, options| Ok(Box::new(KafkaSink::new(schema, options)?)))
            .start()
            .await
    }
}

/// Adds `session.read_kafka()`: a bounded read of Kafka as a static DataFrame.
pub trait KafkaSessionExt {
    /// Reads a range of Kafka (default: earliest to latest) as a DataFrame.
    fn read_kafka(&self) -> KafkaBatchReader;
}

impl KafkaSessionExt for StreamSession {
    fn read_kafka(&self) -> KafkaBatchReader {
        KafkaBatchReader {
            session: self.clone(),
            options: Options::new(),
        }
    }
}

/// Builder of a bounded Kafka read (Spark's `spark.read.format("kafka")`).
#[derive(Debug, Clone)]
#[must_use]
pub struct KafkaBatchReader {
    session: StreamSession,
    options: Options,
}

impl KafkaBatchReader {
    /// A Spark-style option.
    pub fn option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// `endingOffsets` (default latest; exclusive).
    pub fn ending_offsets(self, offsets: StartingOffsets) -> Self {
        self.option("endingOffsets", String::from(offsets))
    }

    /// `endingTimestamp`: end every partition before the first record at or after this time
    /// (ms since the epoch; partitions without one end at latest). Overrides
    /// `endingOffsetsByTimestamp` and `endingOffsets`.
    pub fn ending_timestamp(self, millis: i64) -> Self {
        self.option("endingTimestamp", millis.to_string())
    }

    /// `endingOffsetsByTimestamp`: per partition, end before the first record at or after a
    /// time (ms since the epoch); every partition must be named. Overrides `endingOffsets`.
    pub fn ending_offsets_by_timestamp<'a>(
        self,
        timestamps: impl IntoIterator<Item = (&'a str, i32, i64)>,
    ) -> Self {
        self.option(
            "endingOffsetsByTimestamp",
            crate::offsets::to_json(&by_partition(timestamps)).to_string(),
        )
    }

    /// Reads the range and returns it as a DataFrame with the Kafka schema.
    pub async fn load(self) -> Result<DataFrame> {
        let config = SourceConfig::from_options(&self.options, false)?;
        let batches = read_range(config).await?;
        let schema = crate::schema::kafka_schema(config_headers(&self.options)?);
        let table =
            flumen_engine::datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        Ok(self
            .session
            .context()
            .read_table(std::sync::Arc::new(table))?)
    }
}

fn config_headers(options: &Options) -> Result<bool> {
    options.get_bool("includeHeaders", false)
}

/// Adds `.write_kafka()` to static DataFrames: Spark's `df.write.format("kafka").save()`.
pub trait KafkaDataFrameExt {
    /// Writes every row to Kafka.
    fn write_kafka(self) -> KafkaBatchWriter;
}

impl KafkaDataFrameExt for DataFrame {
    fn write_kafka(self) -> KafkaBatchWriter {
        KafkaBatchWriter {
            df: Ok(self),
            options: Options::new(),
        }
    }
}

impl KafkaDataFrameExt for StreamFrame {
    fn write_kafka(self) -> KafkaBatchWriter {
        KafkaBatchWriter {
            df: self.into_dataframe(),
            options: Options::new(),
        }
    }
}

/// Builder of a batch write to Kafka.
#[must_use]
pub struct KafkaBatchWriter {
    df: Result<DataFrame>,
    options: Options,
}

impl std::fmt::Debug for KafkaBatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBatchWriter")
            .field("options", &self.options)
            .finish()
    }
}

impl KafkaBatchWriter {
    /// A Spark-style option (`kafka.*` producer properties pass through).
    pub fn option(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.options.set(key, value.to_string());
        self
    }

    /// Writes every row and waits until each is acknowledged; returns the number of rows.
    pub async fn save(self) -> Result<u64> {
        write_dataframe(self.df?, &self.options).await
    }
}
