//! The Kafka sink: Spark's column contract (`key`, `value`, `topic`, `partition`, `headers`),
//! Spark's validation messages, and delivery checked before a batch counts as written.
//!
//! At-least-once by default: a batch is committed only after every record was acknowledged; a
//! batch re-run after a crash is produced again. With `exactlyOnce` each batch is one Kafka
//! transaction and a re-run batch that was already committed is skipped (see
//! [`transactional`](crate::transactional)).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flumen_engine::datafusion::arrow::array::{Array, AsArray, RecordBatch};
use flumen_engine::datafusion::arrow::compute::cast;
use flumen_engine::datafusion::arrow::datatypes::{DataType, SchemaRef};
use flumen_engine::options::Options;
use flumen_engine::sink::{SinkContext, StreamSink};
use flumen_engine::{FlumenError, OutputMode, Result};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::consumer::blocking;
use crate::options::{bootstrap_servers, client_properties};
use crate::transactional::{TransactionalConfig, TransactionalWriter};

/// Records delivery failures reported by librdkafka.
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if let Err((e, msg)) = result {
            use rdkafka::Message;
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut first) = self.first_error.lock()
                && first.is_none()
            {
                *first = Some(format!(
                    "{e} (topic {}, partition {})",
                    msg.topic(),
                    msg.partition()
                ));
            }
        }
    }
}

/// Column positions of a frame written to Kafka, checked against Spark's rules.
#[derive(Debug, Clone)]
pub(crate) struct SinkLayout {
    topic_option: Option<String>,
    topic: Option<usize>,
    key: Option<usize>,
    value: usize,
    partition: Option<usize>,
    headers: Option<usize>,
}

fn is_text_or_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
    )
}

impl SinkLayout {
    /// Checks `schema` (Spark's messages) and records where each column is.
    pub fn new(schema: &SchemaRef, topic_option: Option<String>) -> Result<Self> {
        let find = |name: &str| schema.index_of(name).ok();
        let invalid = |msg: &str| FlumenError::Sink {
            sink: "KafkaSink".into(),
            message: msg.to_string(),
        };
        let topic = find("topic");
        match topic {
            None if topic_option.is_none() => {
                return Err(invalid(
                    "topic option required when no 'topic' attribute is present. Use the topic option for setting a topic.",
                ));
            }
            Some(i)
                if topic_option.is_none()
                    && !matches!(
                        schema.field(i).data_type(),
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    ) =>
            {
                return Err(invalid("topic must be a(n) string"));
            }
            _ => {}
        }
        let value = find("value").ok_or_else(|| invalid("Required attribute 'value' not found"))?;
        if !is_text_or_binary(schema.field(value).data_type()) {
            return Err(invalid("value must be a(n) string or binary"));
        }
        let key = find("key");
        if let Some(k) = key
            && !is_text_or_binary(schema.field(k).data_type())
        {
            return Err(invalid("key must be a(n) string or binary"));
        }
        let partition = find("partition");
        if let Some(p) = partition
            && schema.field(p).data_type() != &DataType::Int32
        {
            return Err(invalid("partition must be a(n) int"));
        }
        let headers = find("headers");
        if let Some(h) = headers
            && schema.field(h).data_type() != &crate::schema::headers_type()
        {
            return Err(invalid(
                "headers must be a(n) array<struct<key:string,value:binary>>",
            ));
        }
        Ok(Self {
            topic_option,
            topic,
            key,
            value,
            partition,
            headers,
        })
    }
}

/// Creates a producer from `kafka.*` options with Flumen's defaults.
pub(crate) fn create_producer(options: &Options) -> Result<BaseProducer<DeliveryTracker>> {
    create_producer_with(options, &[])
}

/// [`create_producer`] with properties Flumen sets itself over the user's.
pub(crate) fn create_producer_with(
    options: &Options,
    overrides: &[(&str, String)],
) -> Result<BaseProducer<DeliveryTracker>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers(options)?)
        .set("message.timeout.ms", "120000")
        .set("linger.ms", "5");
    for (k, v) in client_properties(options, false)? {
        if k != "bootstrap.servers" {
            config.set(k, v);
        }
    }
    for (k, v) in overrides {
        config.set(*k, v);
    }
    config
        .create_with_context(DeliveryTracker::default())
        .map_err(|e| FlumenError::Sink {
            sink: "KafkaSink".into(),
            message: format!(
                "cannot create the Kafka producer: {}; check the kafka.* options",
                crate::consumer::client_error(&e, &config)
            ),
        })
}

/// Produces every row of `batches` and waits until each is acknowledged. Returns the row count.
pub(crate) fn produce(
    producer: &BaseProducer<DeliveryTracker>,
    layout: &SinkLayout,
    batches: &[RecordBatch],
) -> Result<u64> {
    let sink_error = |message: String| FlumenError::Sink {
        sink: "KafkaSink".into(),
        message,
    };
    let failed_before = producer.context().failed.load(Ordering::SeqCst);
    let mut rows = 0u64;
    for batch in batches {
        let value = cast(batch.column(layout.value), &DataType::Binary)?;
        let value = value.as_binary::<i32>();
        let key = layout
            .key
            .map(|k| cast(batch.column(k), &DataType::Binary))
            .transpose()?;
        let key = key.as_ref().map(|k| k.as_binary::<i32>());
        let topic = match (&layout.topic_option, layout.topic) {
            (None, Some(t)) => Some(cast(batch.column(t), &DataType::Utf8)?),
            _ => None,
        };
        let topic = topic.as_ref().map(|t| t.as_string::<i32>());
        let partition = layout.partition.map(|p| {
            batch
                .column(p)
                .as_primitive::<flumen_engine::datafusion::arrow::datatypes::Int32Type>()
        });
        let headers = layout.headers.map(|h| batch.column(h).as_list::<i32>());
        for row in 0..batch.num_rows() {
            let topic_name = match (&layout.topic_option, topic) {
                (Some(t), _) => t.as_str(),
                (None, Some(col)) if col.is_valid(row) => col.value(row),
                _ => {
                    return Err(sink_error(format!(
                        "null topic present in the data (row {row}). Use the topic option for setting a topic."
                    )));
                }
            };
            let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(topic_name);
            if value.is_valid(row) {
                record = record.payload(value.value(row));
            }
            if let Some(k) = key
                && k.is_valid(row)
            {
                record = record.key(k.value(row));
            }
            if let Some(p) = partition
                && p.is_valid(row)
            {
                record = record.partition(p.value(row));
            }
            if let Some(h) = headers
                && h.is_valid(row)
            {
                let entries = h.value(row);
                let entries = entries.as_struct();
                let keys = entries.column(0).as_string::<i32>();
                let values = entries.column(1).as_binary::<i32>();
                let mut owned = OwnedHeaders::new_with_capacity(entries.len());
                for i in 0..entries.len() {
                    owned = owned.insert(Header {
                        key: keys.value(i),
                        value: values.is_valid(i).then(|| values.value(i)),
                    });
                }
                record = record.headers(owned);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        return Err(sink_error(format!(
                            "cannot produce to topic {topic_name}: {e}"
                        )));
                    }
                }
            }
            rows += 1;
            if rows.is_multiple_of(1024) {
                producer.poll(Duration::ZERO);
            }
        }
    }
    wait_for_deliveries(producer);
    let tracker = producer.context();
    let failed = tracker.failed.load(Ordering::SeqCst) - failed_before;
    if failed > 0 {
        let first = tracker
            .first_error
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .unwrap_or_default();
        return Err(sink_error(format!(
            "{failed} of {rows} records were not delivered; first error: {first}"
        )));
    }
    Ok(rows)
}

/// Waits until every produced record is acknowledged or has failed (librdkafka fails it after
/// `message.timeout.ms`, so this ends). rdkafka's own `flush` polls in 100 ms slices, which
/// would put a 100 ms floor under every micro-batch; this serves delivery reports as they come.
fn wait_for_deliveries(producer: &BaseProducer<DeliveryTracker>) {
    loop {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return;
        }
        producer.poll(Duration::from_millis(1));
    }
}

/// The streaming Kafka sink.
pub struct KafkaSink {
    options: Options,
    layout: SinkLayout,
    description: String,
    delivery: Delivery,
}

/// How batches reach Kafka.
enum Delivery {
    /// Plain produce, acknowledged before the batch commits.
    AtLeastOnce(Arc<BaseProducer<DeliveryTracker>>),
    /// One transaction per batch; the writer is set up when the query run opens the sink.
    ExactlyOnce {
        config: TransactionalConfig,
        writer: Option<TransactionalWriter>,
    },
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl KafkaSink {
    /// A sink for a query with output `schema`, from Spark-style options (`kafka.bootstrap.servers`,
    /// `topic`, `kafka.*`; `exactlyOnce`, `transactionalIdPrefix`, `transactionMarkerTopic`).
    pub fn new(schema: &SchemaRef, options: &Options) -> Result<Self> {
        let topic = options.get("topic").map(str::to_string);
        let layout = SinkLayout::new(schema, topic.clone())?;
        let delivery = match TransactionalConfig::from_options(options)? {
            Some(config) => Delivery::ExactlyOnce {
                config,
                writer: None,
            },
            None => Delivery::AtLeastOnce(Arc::new(create_producer(options)?)),
        };
        Ok(Self {
            options: options.clone(),
            layout,
            description: format!(
                "KafkaSink[{}]",
                topic.unwrap_or_else(|| "topic column".into())
            ),
            delivery,
        })
    }
}

#[async_trait]
impl StreamSink for KafkaSink {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn validate(&self, schema: &SchemaRef, _mode: OutputMode) -> Result<()> {
        SinkLayout::new(schema, self.layout.topic_option.clone()).map(|_| ())
    }

    async fn open(&mut self, context: &SinkContext) -> Result<()> {
        if let Delivery::ExactlyOnce { config, writer } = &mut self.delivery {
            let options = self.options.clone();
            let config = config.clone();
            let context = context.clone();
            *writer = Some(
                blocking(move || TransactionalWriter::open(&options, config, &context)).await?,
            );
        }
        Ok(())
    }

    async fn add_batch(
        &mut self,
        batch_id: u64,
        _schema: &SchemaRef,
        batches: Vec<RecordBatch>,
        _mode: OutputMode,
    ) -> Result<()> {
        let layout = self.layout.clone();
        match &mut self.delivery {
            Delivery::AtLeastOnce(producer) => {
                let producer = Arc::clone(producer);
                blocking(move || produce(&producer, &layout, &batches)).await?;
            }
            Delivery::ExactlyOnce { writer, .. } => {
                let writer = writer.as_mut().ok_or_else(|| {
                    FlumenError::IllegalState(
                        "the exactly-once Kafka sink got a batch before the query opened it; \
                         this is a bug in Flumen"
                            .into(),
                    )
                })?;
                if writer.already_written(batch_id) {
                    tracing::info!(
                        batch = batch_id,
                        "batch already committed to Kafka by an earlier run; not writing it again"
                    );
                } else {
                    writer.write(batch_id, layout, batches).await?;
                }
            }
        }
        Ok(())
    }
}
