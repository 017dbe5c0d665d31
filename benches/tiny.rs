//! (d) Tiny batches: the per-batch cost of re-executing the query's one physical plan against
//! planning it again per batch and against the same work hand-coded on Arrow arrays; and the
//! Kafka round trip of one record through a query against a hand-written echo.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flumen::datafusion::arrow::array::{BooleanArray, Int64Array, RecordBatch};
use flumen::datafusion::arrow::compute::{filter_record_batch, kernels::cmp};
use flumen::datafusion::datasource::MemTable;
use flumen::prelude::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::measure::{Figure, Sample, median, time, time_async};
use crate::window::events;

const SQL: &str = "SELECT key, ts, key > 5 AS big FROM t WHERE key >= 0";

/// The engine: `batches` one-row micro-batches through one plan into the memory sink.
async fn engine(batches: &[RecordBatch], checkpoint: &std::path::Path) -> (usize, Vec<u64>) {
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("t", batches[0].schema()).with_max_rows_per_trigger(1));
    for b in batches {
        input.add_batch(b.clone()).expect("add");
    }
    let query = session
        .stream(input)
        .expect("stream")
        .filter(col("key").gt_eq(lit(0i64)))
        .expect("filter")
        .with_column("big", col("key").gt(lit(5i64)))
        .expect("column")
        .write_stream()
        .memory()
        .query_name("tiny")
        .checkpoint_location(checkpoint)
        .start()
        .await
        .expect("start");
    query.process_all_available().await.expect("run");
    let add_batch_us: Vec<u64> = query
        .recent_progress()
        .iter()
        .filter_map(|p| p.duration_ms.get("addBatch").copied())
        .collect();
    query.stop().await.expect("stop");
    let rows = session
        .sql("SELECT count(*) FROM tiny")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("count");
    let n = rows[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .map_or(0, |a| a.value(0));
    (n as usize, add_batch_us)
}

/// The anti-pattern: SQL → logical → physical plan for every batch.
async fn replan(batches: &[RecordBatch]) -> usize {
    let session = StreamSession::new();
    let ctx = session.context();
    let mut rows = 0;
    for b in batches {
        let table = MemTable::try_new(b.schema(), vec![vec![b.clone()]]).expect("table");
        ctx.deregister_table("t").expect("deregister");
        ctx.register_table("t", Arc::new(table)).expect("register");
        let out = ctx
            .sql(SQL)
            .await
            .expect("sql")
            .collect()
            .await
            .expect("collect");
        rows += out.iter().map(RecordBatch::num_rows).sum::<usize>();
    }
    rows
}

/// The same transformation with Arrow kernels, no DataFusion.
fn hand_coded(batches: &[RecordBatch]) -> usize {
    let mut rows = 0;
    for b in batches {
        let key = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("key");
        let keep: BooleanArray = cmp::gt_eq(key, &Int64Array::new_scalar(0)).expect("cmp");
        let kept = filter_record_batch(b, &keep).expect("filter");
        let key = kept
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("key");
        let big = cmp::gt(key, &Int64Array::new_scalar(5)).expect("cmp");
        rows += std::hint::black_box(big).len();
    }
    rows
}

/// Runs (d)'s per-batch part.
pub async fn per_batch(
    count: usize,
    replans: usize,
    reps: usize,
    scratch: &std::path::Path,
) -> Vec<Figure> {
    let one_row: Vec<RecordBatch> = events(count, 1000)
        .iter()
        .flat_map(|b| (0..b.num_rows()).map(|i| b.slice(i, 1)).collect::<Vec<_>>())
        .take(count)
        .collect();
    let mut samples: [Vec<Sample>; 3] = Default::default();
    let mut add_batch = Vec::new();
    for rep in 0..reps {
        let ((n, phases), s) =
            time_async(engine(&one_row, &scratch.join(format!("tiny-{rep}")))).await;
        assert_eq!(n, count);
        add_batch = phases;
        samples[0].push(s);
        let (n, s) = time_async(replan(&one_row[..replans])).await;
        assert_eq!(n, replans);
        samples[1].push(s);
        let (n, s) = time(|| hand_coded(&one_row));
        assert_eq!(n, count);
        samples[2].push(s);
    }
    let [e, r, h] = samples.map(|s| median(&s));
    let per = |s: Sample, n: usize| s.wall.as_secs_f64() * 1e6 / n as f64;
    let (e_us, r_us, h_us) = (per(e, count), per(r, replans), per(h, count));
    add_batch.sort_unstable();
    let add_batch_p50 = add_batch.get(add_batch.len() / 2).copied().unwrap_or(0);
    let per_batch_figure = |name: &str, baseline: &str, ratio: f64| Figure {
        name: name.into(),
        engine: "reused plan, 1-row micro-batches".into(),
        baseline: baseline.into(),
        ratio,
        rows: count as u64,
        rows_per_s: count as f64 / e.wall.as_secs_f64(),
        cpu_s: e.cpu.as_secs_f64(),
        notes: String::new(),
        target: String::new(),
        met: None,
    };
    vec![
        per_batch_figure("d: per batch vs re-planning", "SQL + physical plan per batch", r_us / e_us)
            .at_least(20.0)
            .note(format!(
                "engine {e_us:.0} µs per trigger (offsets + commit on {}, addBatch p50 {add_batch_p50} ms), re-planning {r_us:.0} µs per batch",
                scratch.display()
            )),
        per_batch_figure("d: per batch vs hand-coded", "Arrow kernels, no DataFusion", e_us / h_us)
            .at_most(10.0)
            .note(format!("hand-coded {h_us:.2} µs per batch; ratio = engine / hand-coded")),
    ]
}

fn client(servers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers)
        .set("linger.ms", "0")
        .set("fetch.wait.max.ms", "5");
    c
}

fn consumer_from_start(servers: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client(servers)
        .set("group.id", "bench-rtt")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assign");
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Ping-pong: send one record, wait for it on `output`; returns round-trip times.
fn round_trips(
    servers: &str,
    input: &str,
    output: &str,
    round: usize,
    count: usize,
) -> Vec<Duration> {
    let producer: BaseProducer = client(servers).create().expect("producer");
    // From the start: earlier rounds' records are skipped by their payloads.
    let consumer = consumer_from_start(servers, output);
    // Let the assignment settle before measuring.
    let _ = consumer.poll(Duration::from_millis(200));
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let payload = format!("ping-{round}-{i}");
        let start = Instant::now();
        producer
            .send(BaseRecord::<(), str>::to(input).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("send");
        producer.poll(Duration::ZERO);
        loop {
            if start.elapsed() > Duration::from_secs(10) {
                panic!("record {i} did not come back within 10 s");
            }
            match consumer.poll(Duration::from_millis(1)) {
                Some(Ok(m)) if m.payload() == Some(payload.as_bytes()) => break,
                _ => producer.poll(Duration::ZERO),
            }
        }
        times.push(start.elapsed());
    }
    let _ = producer.flush(Duration::from_secs(5));
    times
}

/// A hand-written echo: consume `input`, produce each value to `output`.
fn echo(
    servers: String,
    input: &str,
    output: &str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (input, output) = (input.to_string(), output.to_string());
    std::thread::spawn(move || {
        let consumer: BaseConsumer = client(&servers)
            .set("group.id", "bench-echo")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&input, 0, Offset::Beginning)
            .expect("assign");
        consumer.assign(&tpl).expect("assign");
        let producer: BaseProducer = client(&servers).create().expect("producer");
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(1)) {
                let record =
                    BaseRecord::<[u8], [u8]>::to(&output).payload(m.payload().unwrap_or_default());
                let _ = producer.send(record);
            }
            producer.poll(Duration::ZERO);
        }
        let _ = producer.flush(Duration::from_secs(5));
    })
}

fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[i].as_secs_f64() * 1000.0
}

/// Runs (d)'s Kafka round trip.
pub async fn kafka_round_trip(count: usize) -> Vec<Figure> {
    let kafka = EmbeddedKafka::with_topics(&[
        ("rtt-in", 1),
        ("rtt-out", 1),
        ("echo-in", 1),
        ("echo-out", 1),
    ])
    .expect("broker");
    let servers = kafka.bootstrap_servers().to_string();
    let session = StreamSession::new();
    let query = session
        .read_stream()
        .kafka()
        .bootstrap_servers(&servers)
        .subscribe(["rtt-in"])
        .starting_offsets(StartingOffsets::Earliest)
        .load()
        .expect("source")
        .select_expr(["value"])
        .expect("select")
        .write_stream()
        .kafka()
        .bootstrap_servers(&servers)
        .option("kafka.linger.ms", "0")
        .topic("rtt-out")
        .checkpoint_location(tempfile::tempdir().expect("tmp").keep())
        .start()
        .await
        .expect("start");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echo_thread = echo(servers.clone(), "echo-in", "echo-out", Arc::clone(&stop));
    let (s1, s2) = (servers.clone(), servers.clone());
    // Interleave: half the engine's pings, half the echo's, twice.
    let half = count / 2;
    let mut engine_times = Vec::new();
    let mut echo_times = Vec::new();
    for round in 0..2 {
        let s = s1.clone();
        engine_times.extend(
            tokio::task::spawn_blocking(move || round_trips(&s, "rtt-in", "rtt-out", round, half))
                .await
                .expect("engine pings"),
        );
        let s = s2.clone();
        echo_times.extend(
            tokio::task::spawn_blocking(move || {
                round_trips(&s, "echo-in", "echo-out", round, half)
            })
            .await
            .expect("echo pings"),
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = echo_thread.join();
    query.stop().await.expect("stop");
    let (e50, e99) = (
        percentile(&mut engine_times, 0.5),
        percentile(&mut engine_times, 0.99),
    );
    let (b50, b99) = (
        percentile(&mut echo_times, 0.5),
        percentile(&mut echo_times, 0.99),
    );
    let figure = |name: &str, ratio: f64| Figure {
        name: name.into(),
        engine: "Kafka → query → Kafka".into(),
        baseline: "BaseConsumer → BaseProducer echo".into(),
        ratio,
        rows: engine_times.len() as u64,
        rows_per_s: 0.0,
        cpu_s: 0.0,
        notes: format!(
            "engine p50 {e50:.2} ms p99 {e99:.2} ms; echo p50 {b50:.2} ms p99 {b99:.2} ms"
        ),
        target: String::new(),
        met: None,
    };
    vec![
        figure("d: Kafka round trip p99 (ms)", e99).at_most(20.0),
        figure("d: Kafka p99 minus echo p99 (ms)", e99 - b99).at_most(1.0),
    ]
}
