//! (b) End to end: embedded Kafka → parse → CASE WHEN → static join → Kafka sink
//! (delivery-acked), against a hand-written consume → produce passthrough of the same bytes
//! with the same client settings. A producer runs alongside, kept at most `AHEAD` records
//! ahead of the pipeline, because the mock broker keeps only ~5 MiB per partition.
//!
//! (i) Exactly-once vs at-least-once: the same enrichment into Kafka with either sink, on
//! Apache Kafka when `FLUMEN_BENCH_KAFKA` (or `FLUMEN_E2E_BOOTSTRAP`) names one, since only a
//! real broker keeps transactions (the mock's are cheaper); else on the embedded broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flumen::StreamingQueryListener;
use flumen::listener::QueryProgressEvent;
use flumen::prelude::*;
use flumen_examples::titanic;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::data::titanic_messages;
use crate::measure::{Figure, Sample, median, time_async};

const PARTITIONS: i32 = 2;
/// How far the input producer may run ahead of the pipeline's output (the mock broker's limit).
const AHEAD: u64 = 20_000;
/// The same on Apache Kafka for (i)'s second figure, which lets batches grow larger: a
/// transaction's cost is mostly fixed, so the ratio depends on the batch size.
const AHEAD_LARGE_BATCHES: u64 = 200_000;

/// Settings both pipelines' clients share.
fn client(servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers)
        .set("linger.ms", "5")
        .set("fetch.wait.max.ms", "10");
    c
}

/// The Kafka a run uses: a fresh embedded broker, or fresh topics on an external one.
struct Topics {
    _embedded: Option<EmbeddedKafka>,
    servers: String,
    raw: String,
    out: String,
}

impl Topics {
    /// An input and an output topic of `PARTITIONS` partitions each, new for this run.
    async fn new(external: Option<&str>) -> Topics {
        static RUN: AtomicU64 = AtomicU64::new(0);
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        match external {
            None => {
                let (raw, out) = ("e2e-raw".to_string(), "e2e-out".to_string());
                let kafka = EmbeddedKafka::with_topics(&[(&raw, PARTITIONS), (&out, PARTITIONS)])
                    .expect("broker");
                Topics {
                    servers: kafka.bootstrap_servers().to_string(),
                    _embedded: Some(kafka),
                    raw,
                    out,
                }
            }
            Some(servers) => {
                let id = format!("{}-{run}", std::process::id());
                let (raw, out) = (format!("bench-raw-{id}"), format!("bench-out-{id}"));
                flumen_examples::Broker::connect(Some(servers.to_string()))
                    .expect("broker")
                    .ensure_topics(&[(&raw, PARTITIONS), (&out, PARTITIONS)])
                    .await
                    .expect("create the benchmark's topics");
                Topics {
                    _embedded: None,
                    servers: servers.to_string(),
                    raw,
                    out,
                }
            }
        }
    }
}

/// The external Kafka for (i), if one is named.
fn external_kafka() -> Option<String> {
    ["FLUMEN_BENCH_KAFKA", "FLUMEN_E2E_BOOTSTRAP"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// Produces the messages round-robin over the partitions, never more than `ahead` records
/// ahead of `done`.
fn feed(
    servers: String,
    topic: String,
    messages: Arc<Vec<Vec<u8>>>,
    done: Arc<AtomicU64>,
    ahead: u64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let producer: BaseProducer = client(&servers).create().expect("producer");
        for (i, m) in messages.iter().enumerate() {
            while i as u64 > done.load(Ordering::Relaxed) + ahead {
                producer.poll(Duration::from_millis(1));
            }
            let mut record = BaseRecord::<[u8], [u8]>::to(&topic)
                .payload(m)
                .partition(i as i32 % PARTITIONS);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).expect("flush");
    })
}

/// Counts the rows the sink wrote and the batches that wrote some.
struct SinkRows(Arc<AtomicU64>, Arc<AtomicU64>);

impl StreamingQueryListener for SinkRows {
    fn on_query_progress(&self, event: &QueryProgressEvent) {
        let rows = event.progress.sink.num_output_rows.max(0) as u64;
        self.0.fetch_add(rows, Ordering::Relaxed);
        if rows > 0 {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The engine: the Titanic enrichment from the examples, from the input topic into the output
/// topic, at-least-once or exactly-once. Returns the rows written and the number of batches that
/// wrote them.
async fn engine(
    messages: Arc<Vec<Vec<u8>>>,
    exactly_once: bool,
    topics: Topics,
    ahead: u64,
) -> (u64, u64) {
    let rows = messages.len() as u64;
    let servers = topics.servers.clone();
    let session = StreamSession::new();
    let written = Arc::new(AtomicU64::new(0));
    let batches = Arc::new(AtomicU64::new(0));
    session.add_listener(Arc::new(SinkRows(
        Arc::clone(&written),
        Arc::clone(&batches),
    )));
    let options = vec![("kafka.fetch.wait.max.ms".to_string(), "10".to_string())];
    let enriched =
        titanic::enriched_stream(&session, &servers, &topics.raw, &options, titanic::schema())
            .expect("stream");
    let query = titanic::to_kafka_records(&enriched)
        .expect("records")
        .write_stream()
        .kafka()
        .bootstrap_servers(&servers)
        .option("kafka.linger.ms", "5")
        .topic(&topics.out)
        .exactly_once(exactly_once)
        .checkpoint_location(tempfile::tempdir().expect("tmp").keep())
        .start()
        .await
        .expect("start");
    let producer = feed(
        servers,
        topics.raw.clone(),
        messages,
        Arc::clone(&written),
        ahead,
    );
    while written.load(Ordering::Relaxed) < rows {
        if let Some(e) = query.exception() {
            panic!("the query failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    query.stop().await.expect("stop");
    producer.join().expect("producer");
    (
        written.load(Ordering::Relaxed),
        batches.load(Ordering::Relaxed),
    )
}

/// The passthrough: consume both partitions, produce each value unchanged, count acks.
async fn passthrough(messages: Arc<Vec<Vec<u8>>>, topics: Topics) -> u64 {
    let rows = messages.len() as u64;
    let servers = topics.servers.clone();
    let (raw, out) = (topics.raw.clone(), topics.out.clone());
    let done = Arc::new(AtomicU64::new(0));
    let producer_thread = feed(
        servers.clone(),
        raw.clone(),
        messages,
        Arc::clone(&done),
        AHEAD,
    );
    let finished = Arc::new(AtomicBool::new(false));
    let worker = {
        let done = Arc::clone(&done);
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let consumer: BaseConsumer = client(&servers)
                .set("group.id", "bench-passthrough")
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(&raw, p, Offset::Beginning)
                    .expect("assign");
            }
            consumer.assign(&tpl).expect("assign");
            let producer: BaseProducer = client(&servers).create().expect("producer");
            let mut sent = 0u64;
            while sent < rows {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
                    let mut record =
                        BaseRecord::<[u8], [u8]>::to(&out).payload(m.payload().unwrap_or_default());
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, r)) => {
                                record = r;
                                producer.poll(Duration::from_millis(1));
                            }
                        }
                    }
                    sent += 1;
                    // Acknowledged = sent minus still in flight.
                    done.store(
                        sent.saturating_sub(producer.in_flight_count().max(0) as u64),
                        Ordering::Relaxed,
                    );
                }
                producer.poll(Duration::ZERO);
            }
            producer.flush(Duration::from_secs(60)).expect("flush");
            done.store(sent, Ordering::Relaxed);
            finished.store(true, Ordering::Relaxed);
        })
    };
    while !finished.load(Ordering::Relaxed) && !worker.is_finished() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    worker.join().expect("passthrough");
    producer_thread.join().expect("producer");
    done.load(Ordering::Relaxed)
}

/// Runs (b).
pub async fn run(rows: usize, reps: usize) -> Vec<Figure> {
    let messages = Arc::new(titanic_messages(rows));
    let mut samples: [Vec<Sample>; 2] = Default::default();
    for _ in 0..reps {
        let topics = Topics::new(None).await;
        let ((n, _), s) = time_async(engine(Arc::clone(&messages), false, topics, AHEAD)).await;
        assert_eq!(n, rows as u64);
        samples[0].push(s);
        let topics = Topics::new(None).await;
        let (n, s) = time_async(passthrough(Arc::clone(&messages), topics)).await;
        assert_eq!(n, rows as u64);
        samples[1].push(s);
    }
    let [e, p] = samples.map(|s| median(&s));
    let per_cpu = rows as f64 / e.cpu.as_secs_f64().max(1e-9);
    let passthrough_per_cpu = rows as f64 / p.cpu.as_secs_f64().max(1e-9);
    vec![
        Figure::rate(
            "b: end to end vs passthrough",
            "parse → CASE WHEN → join → Kafka",
            "rdkafka consume → produce",
            rows as u64,
            e,
            p,
        )
        .at_least(0.7),
        Figure {
            name: "b: end to end rows per CPU-second".into(),
            engine: "parse → CASE WHEN → join → Kafka".into(),
            baseline: "(absolute)".into(),
            ratio: per_cpu,
            rows: rows as u64,
            rows_per_s: rows as f64 / e.wall.as_secs_f64(),
            cpu_s: e.cpu.as_secs_f64(),
            notes: format!(
                "process CPU, including the input producer and the mock broker; passthrough {passthrough_per_cpu:.0} rows per CPU-second, engine/passthrough CPU per row {:.2}",
                e.cpu.as_secs_f64() / p.cpu.as_secs_f64().max(1e-9)
            ),
            target: String::new(),
            met: None,
        }
        .target("≥ 200,000", per_cpu >= 200_000.0),
    ]
}

/// (i) The same enrichment into Kafka with the exactly-once sink (one transaction per
/// micro-batch) against the at-least-once sink, interleaved, on Apache Kafka when one is named
/// (see the module docs), else on the embedded broker. On Apache Kafka a second figure lets the
/// producer run further ahead, so that batches are larger.
pub async fn exactly_once(rows: usize, reps: usize) -> Vec<Figure> {
    let messages = Arc::new(titanic_messages(rows));
    let external = external_kafka();
    let mut figures = vec![exactly_once_at(&messages, reps, external.as_deref(), AHEAD).await];
    if external.is_some() {
        figures
            .push(exactly_once_at(&messages, reps, external.as_deref(), AHEAD_LARGE_BATCHES).await);
    }
    figures
}

async fn exactly_once_at(
    messages: &Arc<Vec<Vec<u8>>>,
    reps: usize,
    external: Option<&str>,
    ahead: u64,
) -> Figure {
    let rows = messages.len();
    let mut samples: [Vec<Sample>; 2] = Default::default();
    let mut batches = [0u64; 2];
    for _ in 0..reps {
        for (i, exactly_once) in [true, false].into_iter().enumerate() {
            let topics = Topics::new(external).await;
            let ((n, b), s) =
                time_async(engine(Arc::clone(messages), exactly_once, topics, ahead)).await;
            assert_eq!(n, rows as u64);
            samples[i].push(s);
            batches[i] += b;
        }
    }
    let [eo, alo] = samples.map(|s| median(&s));
    let per_batch = |b: u64| (rows as u64 * reps as u64) / b.max(1);
    let name = if ahead == AHEAD {
        "i: exactly-once vs at-least-once"
    } else {
        "i: exactly-once vs at-least-once, larger batches"
    };
    let mut figure = Figure::rate(
        name,
        "enrichment → Kafka, exactlyOnce",
        "same, at-least-once",
        rows as u64,
        eo,
        alo,
    )
    .at_least(0.8);
    figure.notes = format!(
        "{}; mean batch {} rows exactly-once, {} at-least-once (batches as the input producer \
         keeps up, at most {ahead} records ahead); {}",
        figure.notes,
        per_batch(batches[0]),
        per_batch(batches[1]),
        match external {
            Some(servers) => format!("Apache Kafka at {servers}"),
            None => "embedded mock broker (set FLUMEN_BENCH_KAFKA for Apache Kafka)".into(),
        }
    );
    figure
}
