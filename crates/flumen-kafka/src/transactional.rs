//! The exactly-once mode of the Kafka sink: each micro-batch's records are one Kafka
//! transaction, which also commits a batch marker, so that a batch re-run after a crash is
//! recognised and not written twice.
//!
//! - **Identity.** The producer's `transactional.id` is `<transactionalIdPrefix><query id>-<marker
//!   topic>` (prefix default `flumen-`). The query id lives in the checkpoint, so a restart on
//!   the same checkpoint has the same transactional id; a second process started on it fences
//!   the first.
//! - **Marker.** In the batch's transaction, the producer commits the offset `N + 1` of the
//!   marker topic's partition 0 for the consumer group named like the transactional id
//!   (`send_offsets_to_transaction`, metadata `flumen batch N`). The offset is a counter of
//!   written batches, not a position in that topic: nobody consumes with that group.
//! - **Start.** `init_transactions` fences any earlier producer with the same id and aborts its
//!   open transaction (a crash before the commit leaves nothing a `read_committed` reader sees);
//!   then the committed marker says which batch was written last.
//! - **Batch N.** Already covered by the marker (a crash came between the transaction's commit
//!   and `commits/N`): nothing is written. Otherwise: begin, produce every record, commit the
//!   marker, commit the transaction. Any error aborts the transaction and fails the query; the
//!   batch is re-run on restart.
//!
//! Order within a batch, for stateful queries: the state delta of version N+1 is written first,
//! then the transaction commits, then `commits/N`. A crash between any two steps re-runs batch N
//! from `offsets/N` on the state of version N; its output is the same and is either written
//! (no marker) or skipped (marker present).

use std::sync::Arc;
use std::time::Duration;

use flumen_engine::datafusion::arrow::array::RecordBatch;
use flumen_engine::options::Options;
use flumen_engine::sink::SinkContext;
use flumen_engine::{FlumenError, Result, failpoint};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::options::{bootstrap_servers, client_properties};
use crate::sink::{DeliveryTracker, SinkLayout, create_producer_with, produce};

/// Option: `exactlyOnce` (`true`/`false`, default `false`).
pub const EXACTLY_ONCE: &str = "exactlyOnce";
/// Option: the start of the transactional id (default [`DEFAULT_TRANSACTIONAL_ID_PREFIX`]).
pub const TRANSACTIONAL_ID_PREFIX: &str = "transactionalIdPrefix";
/// Option: the topic whose partition 0 carries the batch marker (default: the `topic` option).
pub const TRANSACTION_MARKER_TOPIC: &str = "transactionMarkerTopic";
/// Default of [`TRANSACTIONAL_ID_PREFIX`].
pub const DEFAULT_TRANSACTIONAL_ID_PREFIX: &str = "flumen-";
/// Default of `kafka.transaction.timeout.ms` (librdkafka's and Kafka's default too): a
/// transaction left open longer by a dead process is aborted by the broker.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

const SINK: &str = "KafkaSink";

/// The exactly-once settings, read from the sink's options at construction.
#[derive(Debug, Clone)]
pub(crate) struct TransactionalConfig {
    prefix: String,
    marker_topic: String,
    timeout: Duration,
}

impl TransactionalConfig {
    /// `None` when `exactlyOnce` is off.
    pub(crate) fn from_options(options: &Options) -> Result<Option<Self>> {
        if !options.get_bool(EXACTLY_ONCE, false)? {
            return Ok(None);
        }
        let marker_topic = options
            .get(TRANSACTION_MARKER_TOPIC)
            .or_else(|| options.get("topic"))
            .map(str::to_string)
            .ok_or_else(|| {
                FlumenError::invalid_option(
                    TRANSACTION_MARKER_TOPIC,
                    "exactlyOnce needs a topic whose partition 0 records the last written batch: \
                     set the topic option, or transactionMarkerTopic when rows name their topic",
                )
            })?;
        let timeout_ms = match options.get("kafka.transaction.timeout.ms") {
            None => DEFAULT_TRANSACTION_TIMEOUT_MS,
            Some(text) => text.trim().parse().map_err(|_| {
                FlumenError::invalid_option(
                    "kafka.transaction.timeout.ms",
                    format!("'{text}' is not a number of milliseconds"),
                )
            })?,
        };
        Ok(Some(Self {
            prefix: options
                .get(TRANSACTIONAL_ID_PREFIX)
                .unwrap_or(DEFAULT_TRANSACTIONAL_ID_PREFIX)
                .to_string(),
            marker_topic,
            timeout: Duration::from_millis(timeout_ms),
        }))
    }

    /// The producer's `transactional.id` (and the marker's consumer group) for `query_id`.
    pub(crate) fn transactional_id(&self, query_id: &str) -> String {
        format!("{}{query_id}-{}", self.prefix, self.marker_topic)
    }
}

/// A transactional producer set up for one query run.
pub(crate) struct TransactionalWriter {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    group: Arc<ConsumerGroupMetadata>,
    config: TransactionalConfig,
    transactional_id: String,
    /// The last batch a committed transaction wrote, per the marker.
    last_written: Option<u64>,
}

impl TransactionalWriter {
    /// Fences earlier producers of this query, aborts their open transaction and reads the
    /// marker. Blocking.
    pub(crate) fn open(
        options: &Options,
        config: TransactionalConfig,
        context: &SinkContext,
    ) -> Result<Self> {
        let transactional_id = config.transactional_id(&context.query_id);
        let timeout_ms = config.timeout.as_millis().to_string();
        let mut overrides = vec![
            ("transactional.id", transactional_id.clone()),
            ("transaction.timeout.ms", timeout_ms.clone()),
        ];
        if !options.contains("kafka.message.timeout.ms") {
            // librdkafka requires message.timeout.ms <= transaction.timeout.ms.
            overrides.push(("message.timeout.ms", timeout_ms));
        }
        let producer = create_producer_with(options, &overrides)?;
        producer
            .init_transactions(config.timeout)
            .map_err(|e| transaction_error(&transactional_id, "initialise transactions", &e))?;

        let consumer = marker_consumer(options, &transactional_id)?;
        let group = consumer.group_metadata().ok_or_else(|| FlumenError::Sink {
            sink: SINK.into(),
            message: format!(
                "no consumer group metadata for group '{transactional_id}'; this is a bug in Flumen"
            ),
        })?;
        let last_written = read_marker(&consumer, &config, &transactional_id)?;
        let committed = context.last_committed_batch;
        // The marker may be one batch ahead of the commit log (a crash between the
        // transaction's commit and commits/N, batch 0 included), never more.
        if let Some(written) = last_written
            && written > committed.map_or(0, |c| c + 1)
        {
            return Err(FlumenError::Sink {
                sink: SINK.into(),
                message: format!(
                    "Kafka says batch {written} of query {} was written (transactional.id \
                     {transactional_id}), but the checkpoint's last committed batch is {}: the \
                     checkpoint is older than the output. Restore the checkpoint that wrote it, \
                     or start with a new checkpoint location (a new query id)",
                    context.query_id,
                    committed.map_or_else(|| "none".to_string(), |c| c.to_string()),
                ),
            });
        }
        tracing::info!(
            %transactional_id,
            last_written_batch = ?last_written,
            "exactly-once Kafka sink ready"
        );
        Ok(Self {
            producer: Arc::new(producer),
            group: Arc::new(group),
            config,
            transactional_id,
            last_written,
        })
    }

    /// Whether batch `batch_id` was already written by a committed transaction.
    pub(crate) fn already_written(&self, batch_id: u64) -> bool {
        self.last_written.is_some_and(|last| batch_id <= last)
    }

    /// Writes batch `batch_id` as one transaction. Returns the rows written.
    pub(crate) async fn write(
        &mut self,
        batch_id: u64,
        layout: SinkLayout,
        batches: Vec<RecordBatch>,
    ) -> Result<u64> {
        let producer = Arc::clone(&self.producer);
        let group = Arc::clone(&self.group);
        let config = self.config.clone();
        let transactional_id = self.transactional_id.clone();
        let rows = crate::consumer::blocking(move || {
            write_transaction(
                &producer,
                &group,
                &config,
                &transactional_id,
                batch_id,
                &layout,
                &batches,
            )
        })
        .await?;
        self.last_written = Some(batch_id);
        Ok(rows)
    }
}

/// Begin, produce, commit the marker, commit; abort on any error.
fn write_transaction(
    producer: &BaseProducer<DeliveryTracker>,
    group: &ConsumerGroupMetadata,
    config: &TransactionalConfig,
    transactional_id: &str,
    batch_id: u64,
    layout: &SinkLayout,
    batches: &[RecordBatch],
) -> Result<u64> {
    producer
        .begin_transaction()
        .map_err(|e| transaction_error(transactional_id, "begin a transaction", &e))?;
    let written = produce(producer, layout, batches).and_then(|rows| {
        failpoint::check("before-transaction-commit", batch_id);
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&config.marker_topic, 0, Offset::Offset(batch_id as i64 + 1))
            .and_then(|()| {
                marker
                    .find_partition(&config.marker_topic, 0)
                    .map_or(Ok(()), |mut element| {
                        element.set_metadata(format!("flumen batch {batch_id}"));
                        Ok(())
                    })
            })
            .map_err(|e| transaction_error(transactional_id, "build the batch marker", &e))?;
        producer
            .send_offsets_to_transaction(&marker, group, config.timeout)
            .map_err(|e| transaction_error(transactional_id, "commit the batch marker", &e))?;
        producer
            .commit_transaction(config.timeout)
            .map_err(|e| transaction_error(transactional_id, "commit the transaction", &e))?;
        Ok(rows)
    });
    if written.is_err() {
        // A fenced producer fails its queued records first ("purged"); say why instead.
        if let Some((code, reason)) = producer.client().fatal_error()
            && is_fenced(code)
        {
            return Err(fenced_error(transactional_id, &reason));
        }
        // A fenced or fatally failed producer cannot abort; the broker aborts on its own then.
        if let Err(e) = producer.abort_transaction(config.timeout) {
            if e.rdkafka_error_code().is_some_and(is_fenced) {
                return Err(fenced_error(transactional_id, &e.to_string()));
            }
            tracing::warn!(%transactional_id, error = %e, "could not abort the transaction");
        }
    }
    written
}

fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
    )
}

fn fenced_error(transactional_id: &str, reason: &str) -> FlumenError {
    FlumenError::Sink {
        sink: SINK.into(),
        message: format!(
            "this query was fenced: another process started it on the same checkpoint \
             (transactional.id {transactional_id}) and only the newest one may write, or a batch \
             took longer than kafka.transaction.timeout.ms and the broker aborted it. This run \
             stops; stop the other process first, or raise the timeout ({reason})"
        ),
    }
}

/// A consumer in the marker's group, only to read and commit the marker.
fn marker_consumer(options: &Options, group_id: &str) -> Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers(options)?);
    // Connection and security settings apply to this client too; producer-only ones do not,
    // and the group and isolation settings below are the protocol's, not the user's.
    for (key, value) in client_properties(options, false)? {
        let not_for_this_client = key.starts_with("transaction")
            || key.starts_with("message.")
            || key.starts_with("delivery.")
            || key.starts_with("linger")
            || key.starts_with("batch.")
            || key.starts_with("queue.buffering")
            || matches!(
                key.as_str(),
                "bootstrap.servers"
                    | "acks"
                    | "request.required.acks"
                    | "request.timeout.ms"
                    | "partitioner"
                    | "enable.idempotence"
                    | "compression.type"
                    | "compression.codec"
                    | "retries"
                    | "max.in.flight.requests.per.connection"
                    | "group.id"
                    | "group.instance.id"
                    | "isolation.level"
                    | "enable.auto.commit"
            );
        if !not_for_this_client {
            config.set(key, value);
        }
    }
    // read_committed makes librdkafka ask for stable offsets (KIP-447): a marker still in a
    // transaction being settled is waited for, not read as missing.
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    config.create().map_err(|e| FlumenError::Sink {
        sink: SINK.into(),
        message: format!(
            "cannot create the consumer that reads the batch marker: {}",
            crate::consumer::client_error(&e, &config)
        ),
    })
}

/// The last batch the marker records as written, if any.
fn read_marker(
    consumer: &BaseConsumer,
    config: &TransactionalConfig,
    transactional_id: &str,
) -> Result<Option<u64>> {
    let mut partition = TopicPartitionList::new();
    partition.add_partition(&config.marker_topic, 0);
    let committed = consumer
        .committed_offsets(partition, config.timeout)
        .map_err(|e| transaction_error(transactional_id, "read the batch marker", &e))?;
    let element = committed.find_partition(&config.marker_topic, 0);
    if let Some(Err(error)) = element.as_ref().map(|e| e.error()) {
        // Unreadable is not "nothing written": guessing would write a batch twice.
        return Err(transaction_error(
            transactional_id,
            &format!("read the batch marker of {}-0", config.marker_topic),
            &error,
        ));
    }
    let offset = element.map(|element| element.offset());
    Ok(match offset {
        Some(Offset::Offset(n)) if n > 0 => Some(n as u64 - 1),
        _ => None,
    })
}

/// A sink error naming what failed; fencing gets its own explanation.
fn transaction_error(transactional_id: &str, doing: &str, error: &KafkaError) -> FlumenError {
    if error.rdkafka_error_code().is_some_and(is_fenced) {
        return fenced_error(transactional_id, &error.to_string());
    }
    FlumenError::Sink {
        sink: SINK.into(),
        message: format!(
            "cannot {doing} (exactly-once, transactional.id {transactional_id}): {error}; \
             exactly-once needs brokers with transactions (a one-broker cluster also needs \
             transaction.state.log.replication.factor=1 and transaction.state.log.min.isr=1)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> Options {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    #[test]
    fn the_transactional_id_comes_from_the_prefix_the_query_and_the_marker_topic() {
        let config = TransactionalConfig::from_options(&options(&[
            ("exactlyOnce", "true"),
            ("topic", "out"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.transactional_id("q1"), "flumen-q1-out");
        assert_eq!(config.timeout, Duration::from_secs(60));
        let config = TransactionalConfig::from_options(&options(&[
            ("exactlyOnce", "true"),
            ("transactionMarkerTopic", "markers"),
            ("transactionalIdPrefix", "app-"),
            ("kafka.transaction.timeout.ms", "15000"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(config.transactional_id("q1"), "app-q1-markers");
        assert_eq!(config.timeout, Duration::from_secs(15));
        assert!(
            TransactionalConfig::from_options(&options(&[("topic", "out")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn exactly_once_without_a_marker_topic_is_an_error_saying_what_to_set() {
        let error = TransactionalConfig::from_options(&options(&[("exactlyOnce", "true")]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("transactionMarkerTopic"), "{error}");
    }
}
