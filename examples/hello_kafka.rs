//! The notebook's first two cells: produce `Hello 0..4` to `demo-topic`, then consume the topic
//! from the earliest offset until it has been idle for one second.
//!
//! Uses the Kafka client directly (as the notebook uses kafka-python), no streaming engine yet.
//!
//! ```text
//! cargo run --release --example hello_kafka                       # embedded broker
//! cargo run --release --example hello_kafka -- --bootstrap-servers localhost:9092
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use flumen_examples::{Broker, KafkaArgs};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Produce five greetings to demo-topic and read them back.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic to write and read.
    #[arg(long, default_value = "demo-topic")]
    topic: String,
    /// Pause between messages, as the notebook's time.sleep(1).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop consuming after this long without a new message (the notebook's consumer_timeout_ms).
    #[arg(long, default_value_t = 1000)]
    idle_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::from_args(&args.kafka)?;
    broker.ensure_topics(&[(args.topic.as_str(), 1)]).await?;

    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", broker.servers());
    for (k, v) in &args.kafka.kafka_options {
        config.set(k, v);
    }
    let producer: FutureProducer = config.create()?;
    for i in 0..5 {
        let msg = format!("Hello {i}");
        producer
            .send(
                FutureRecord::<(), _>::to(&args.topic).payload(msg.as_bytes()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)?;
        println!("Sent: {msg}");
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }

    config
        .set("group.id", "hello-kafka")
        .set("enable.auto.commit", "false");
    let topic = args.topic.clone();
    let idle = Duration::from_millis(args.idle_timeout_ms);
    tokio::task::spawn_blocking(move || consume_from_earliest(config, &topic, idle)).await??;
    Ok(())
}

/// Reads every partition of `topic` from the beginning until `idle` passes without a message.
fn consume_from_earliest(config: ClientConfig, topic: &str, idle: Duration) -> anyhow::Result<()> {
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut last = Instant::now();
    while last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                let value = msg
                    .payload()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                println!("Received: {value}");
                last = Instant::now();
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(())
}
