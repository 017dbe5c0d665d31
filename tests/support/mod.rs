//! Helpers shared by Flumen's integration tests: an independent Kafka client (plain rdkafka, not
//! Flumen's source or sink) to write inputs and read outputs, the Titanic CSV, and captures.

mod log_capture;

pub use log_capture::{CapturedLogs, captured_logs};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flumen::datafusion::arrow::array::RecordBatch;
use flumen::datafusion::arrow::util::pretty::pretty_format_batches;
use flumen::prelude::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// A record as the independent client sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The key as UTF-8 text.
    pub fn key_text(&self) -> Option<String> {
        self.key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The value as UTF-8 text.
    pub fn value_text(&self) -> Option<String> {
        self.value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A record to produce: optional key and value bytes.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Produces records with a plain rdkafka producer and waits for their delivery.
pub fn produce(servers: &str, topic: &str, records: &[KeyValue<'_>]) {
    produce_to(servers, topic, None, records, &[]);
}

/// Produces records to an optional partition, each with `headers`.
pub fn produce_to(
    servers: &str,
    topic: &str,
    partition: Option<i32>,
    records: &[KeyValue<'_>],
    headers: &[(&str, Option<&[u8]>)],
) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("producer");
    for (key, value) in records {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(k) = key {
            record = record.key(*k);
        }
        if let Some(v) = value {
            record = record.payload(*v);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new();
            for (k, v) in headers {
                owned = owned.insert(Header { key: k, value: *v });
            }
            record = record.headers(owned);
        }
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Produces text values (no keys).
pub fn produce_values(servers: &str, topic: &str, values: &[&str]) {
    let records: Vec<KeyValue<'_>> = values.iter().map(|v| (None, Some(v.as_bytes()))).collect();
    produce(servers, topic, &records);
}

/// Reads every record of `topic` with a plain rdkafka consumer, ordered by partition and offset.
pub fn read_topic(servers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "flumen-tests-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            if high > low {
                ends.insert(p.id(), high);
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))
                    .expect("tpl");
            }
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ends.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out reading {topic}"
        );
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.expect("message");
            records.push(Record {
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                value: msg.payload().map(<[u8]>::to_vec),
                headers: msg
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
            if ends
                .get(&msg.partition())
                .is_some_and(|end| msg.offset() + 1 >= *end)
            {
                ends.remove(&msg.partition());
            }
        }
    }
    records.sort();
    records
}

/// A Kafka stream reader of `topic` starting at the earliest offset; add options, then `load()`.
pub fn earliest_reader(
    session: &StreamSession,
    servers: &str,
    topic: &str,
) -> flumen::kafka::KafkaStreamReader {
    session
        .read_stream()
        .kafka()
        .bootstrap_servers(servers)
        .subscribe([topic])
        .starting_offsets(StartingOffsets::Earliest)
}

/// The Titanic CSV: `FLUMEN_TITANIC_CSV`, else the repository's `data/titanic.csv`.
pub fn titanic_csv() -> PathBuf {
    let path = std::env::var_os("FLUMEN_TITANIC_CSV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/titanic.csv"));
    assert!(
        path.exists(),
        "the Titanic CSV is not at {}; set FLUMEN_TITANIC_CSV to its path",
        path.display()
    );
    path
}

/// One passenger as read straight from the CSV by a hand-written parser (independent of
/// DataFusion's CSV reader).
#[derive(Debug, Clone, PartialEq)]
pub struct Passenger {
    /// PassengerId.
    pub id: i64,
    /// Survived.
    pub survived: i64,
    /// Pclass.
    pub pclass: i64,
    /// Name.
    pub name: String,
    /// Age, when known.
    pub age: Option<f64>,
}

/// Parses the Titanic CSV (quoted fields with commas and doubled quotes).
pub fn passengers_from_csv() -> Vec<Passenger> {
    let text = std::fs::read_to_string(titanic_csv()).expect("csv");
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        out.push(Passenger {
            id: fields[0].parse().expect("id"),
            survived: fields[1].parse().expect("survived"),
            pclass: fields[2].parse().expect("pclass"),
            name: fields[3].clone(),
            age: fields[5].parse().ok(),
        });
    }
    out
}

/// A writer the console sink can print to, readable afterwards.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }

    /// A handle for `write_stream().console_to(...)`.
    pub fn writer(&self) -> Arc<Mutex<dyn Write + Send>> {
        Arc::new(Mutex::new(self.clone()))
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pretty-printed rows of a SQL query, for golden comparisons.
pub async fn sql_table(session: &StreamSession, sql: &str) -> String {
    let batches: Vec<RecordBatch> = session
        .sql(sql)
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    pretty_format_batches(&batches).expect("format").to_string()
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Every value of `topic` a `read_committed` consumer sees (records of aborted transactions
/// are skipped), ordered by partition and offset; reads until nothing new came for 3 s.
pub fn read_committed_values(servers: &str, topic: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "flumen-tests-committed-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("tpl");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut records = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.expect("message");
            let value = String::from_utf8_lossy(msg.payload().unwrap_or_default()).to_string();
            records.push((msg.partition(), msg.offset(), value));
            last = std::time::Instant::now();
        }
    }
    records.sort();
    records.into_iter().map(|(_, _, value)| value).collect()
}

/// The path of a built example (`cargo test` builds the examples next to the test binaries).
pub fn example_binary(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test binary>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --examples` (cargo test builds it)",
        path.display()
    );
    path
}

/// The offsets consumer group `group` has committed for `topic`'s partitions `0..partitions`, as
/// an independent client (a monitoring tool computing lag) sees them through the group
/// coordinator; `None` where nothing is committed. Polls until they equal `expected` or 20 s
/// pass, and returns the last answer.
pub fn committed_offsets(
    servers: &str,
    group: &str,
    topic: &str,
    expected: &[Option<i64>],
) -> Vec<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for partition in 0..expected.len() {
        tpl.add_partition(topic, partition as i32);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let committed: Vec<Option<i64>> = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .expect("committed offsets")
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            })
            .collect();
        if committed == expected || std::time::Instant::now() > deadline {
            return committed;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rows recorded per batch id by [`record_rows`].
pub type RowsByBatch = Arc<Mutex<BTreeMap<u64, Vec<String>>>>;

/// A `foreach_batch`-style callback (for side outputs such as late rows or dead letters)
/// recording, under each batch id, every row of the string expressions `exprs`, joined by
/// spaces (a null as the empty string).
pub fn record_rows(
    into: RowsByBatch,
    exprs: &'static [&'static str],
) -> impl FnMut(
    flumen::datafusion::dataframe::DataFrame,
    u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = flumen::Result<()>> + Send>>
+ Send
+ 'static {
    move |df, batch_id| {
        let into = Arc::clone(&into);
        Box::pin(async move {
            use flumen::datafusion::arrow::array::{Array, AsArray};
            let batches = df.select_exprs(exprs)?.collect().await?;
            let mut rows = Vec::new();
            for batch in batches {
                for i in 0..batch.num_rows() {
                    let values: Vec<&str> = batch
                        .columns()
                        .iter()
                        .map(|c| {
                            let text = c.as_string::<i32>();
                            if text.is_valid(i) { text.value(i) } else { "" }
                        })
                        .collect();
                    rows.push(values.join(" "));
                }
            }
            into.lock().unwrap().insert(batch_id, rows);
            Ok(())
        })
    }
}

/// The error `start()` fails with for `writer` (panics when the query starts).
pub async fn start_error(writer: flumen::DataStreamWriter) -> String {
    match writer.start().await {
        Ok(_) => panic!("the query started, but it should have been refused"),
        Err(e) => e.to_string(),
    }
}

/// The operator names of a progress report's `stateOperators`, output side first.
pub fn operator_names(progress: &flumen::StreamingQueryProgress) -> Vec<String> {
    progress
        .state_operators
        .iter()
        .map(|s| s.operator_name.clone())
        .collect()
}

/// Rows each of the first `operators` stateful operators dropped as late over `progress`.
pub fn dropped_per_operator(
    progress: &[flumen::StreamingQueryProgress],
    operators: usize,
) -> Vec<u64> {
    (0..operators)
        .map(|i| {
            progress
                .iter()
                .filter_map(|p| p.state_operators.get(i))
                .map(|s| s.num_rows_dropped_by_watermark)
                .sum()
        })
        .collect()
}
