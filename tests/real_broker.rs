//! End to end against a real Apache Kafka broker (`scripts/kafka.sh start` in CI). Runs when
//! `FLUMEN_E2E_BOOTSTRAP` names the broker (`host:port`); otherwise every test returns at once
//! and says so.

use std::sync::Arc;
use std::time::Duration;

use flumen::datafusion::arrow::array::AsArray;
use flumen::prelude::*;
use flumen_examples::titanic;
use flumen_tests::*;

fn broker() -> Option<String> {
    let servers = std::env::var("FLUMEN_E2E_BOOTSTRAP").ok();
    if servers.is_none() {
        eprintln!("FLUMEN_E2E_BOOTSTRAP is not set: skipping the real-broker suite");
    }
    servers
}

fn unique(topic: &str) -> String {
    format!(
        "{topic}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_enrichment_against_a_real_broker() {
    let Some(servers) = broker() else { return };
    let raw = unique("raw-titanic");
    let enriched_topic = unique("enriched-titanic");
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker
        .ensure_topics(&[(raw.as_str(), 2), (enriched_topic.as_str(), 1)])
        .await
        .unwrap();
    let session = StreamSession::new();
    let passengers = session.read_csv(titanic_csv()).await.unwrap();
    let schema = Arc::new(passengers.schema().as_arrow().clone());
    assert_eq!(
        titanic::load_into_kafka(passengers, &session, &servers, &raw, &[])
            .await
            .unwrap(),
        891
    );

    let options = vec![("maxOffsetsPerTrigger".to_string(), "300".to_string())];
    let stream = titanic::enriched_stream(&session, &servers, &raw, &options, schema).unwrap();
    let checkpoint = temp_dir();
    let query = titanic::to_kafka_records(&stream)
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(&servers)
        .topic(&enriched_topic)
        .checkpoint_location(checkpoint.path())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination(None).await.unwrap();
    assert_eq!(
        query
            .recent_progress()
            .iter()
            .map(|p| p.num_input_rows)
            .sum::<u64>(),
        891
    );

    let records = read_topic(&servers, &enriched_topic);
    assert_eq!(records.len(), 891);
    let expected = passengers_from_csv();
    let mut seen = std::collections::BTreeSet::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        let id = v["PassengerId"].as_i64().unwrap();
        let p = expected.iter().find(|p| p.id == id).unwrap();
        let class = ["First Class", "Second Class", "Third Class"][(p.pclass - 1) as usize];
        assert_eq!(v["ClassName"], class);
        assert_eq!(
            v["is_adult"],
            if p.age.is_some_and(|a| a >= 18.0) {
                "yes"
            } else {
                "no"
            }
        );
        assert!(seen.insert(id));
    }
    // Print the topic name for the CI script's independent (Python) cross-check.
    println!("FLUMEN_E2E_ENRICHED_TOPIC={enriched_topic}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_against_a_real_broker_continues_where_it_stopped() {
    let Some(servers) = broker() else { return };
    let input = unique("restart-in");
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker.ensure_topics(&[(input.as_str(), 1)]).await.unwrap();
    produce_values(&servers, &input, &["0", "1", "2"]);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let run = |name: &'static str| {
        let session = session.clone();
        let servers = servers.clone();
        let input = input.clone();
        let path = checkpoint.path().to_path_buf();
        async move {
            let q = values_to_memory(&session, &servers, &input, name, true, Some(&path)).await;
            q.process_all_available().await.unwrap();
            q.stop().await.unwrap();
        }
    };
    run("first_run").await;
    produce_values(&servers, &input, &["3", "4"]);
    run("second_run").await;
    assert_eq!(
        sql_table(&session, "SELECT v FROM first_run ORDER BY v").await,
        "+---+\n| v |\n+---+\n| 0 |\n| 1 |\n| 2 |\n+---+"
    );
    assert_eq!(
        sql_table(&session, "SELECT v FROM second_run ORDER BY v").await,
        "+---+\n| v |\n+---+\n| 3 |\n| 4 |\n+---+"
    );
}

/// `n` numbered values `"0"`, `"1"`, ... for an input topic.
fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Creates a fresh input topic holding `n` numbered values and a fresh empty output topic
/// (one partition each), named after `prefix`; returns (input, output).
async fn numbered_input_and_output(servers: &str, prefix: &str, n: usize) -> (String, String) {
    let (input, output) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
    );
    let broker = flumen_examples::Broker::connect(Some(servers.to_string())).unwrap();
    broker
        .ensure_topics(&[(input.as_str(), 1), (output.as_str(), 1)])
        .await
        .unwrap();
    let values = numbers(n);
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    produce_values(servers, &input, &refs);
    (input, output)
}

/// Starts `input → "[processed] value" → output` on `checkpoint` (the kafka_to_kafka pipeline),
/// 10 records per batch, available-now, and waits for it to finish.
async fn copy_available_now(
    servers: &str,
    input: &str,
    output: &str,
    checkpoint: &std::path::Path,
    exactly_once: bool,
) -> StreamingQuery {
    let frame = earliest_reader(&StreamSession::new(), servers, input)
        .max_offsets_per_trigger(10)
        .load()
        .unwrap()
        .select_expr(["CONCAT('[processed] ', CAST(value AS STRING)) AS value"])
        .unwrap();
    let sink = KafkaOutput {
        servers,
        topic: output,
        checkpoint,
        exactly_once,
    };
    sink.write_available_now(frame, OutputMode::Append).await
}

/// Where and how a test query writes to Kafka.
struct KafkaOutput<'a> {
    servers: &'a str,
    topic: &'a str,
    checkpoint: &'a std::path::Path,
    exactly_once: bool,
}

impl KafkaOutput<'_> {
    /// Runs `frame` into the topic with an available-now trigger and waits for it to finish.
    async fn write_available_now(&self, frame: StreamFrame, mode: OutputMode) -> StreamingQuery {
        let query = frame
            .write_stream()
            .kafka()
            .bootstrap_servers(self.servers)
            .topic(self.topic)
            .exactly_once(self.exactly_once)
            .output_mode(mode)
            .checkpoint_location(self.checkpoint)
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        query.await_termination(None).await.unwrap();
        query
    }
}

/// `[processed] 0` .. `[processed] n-1`, sorted as text.
fn processed(n: usize) -> Vec<String> {
    let mut values: Vec<String> = (0..n).map(|i| format!("[processed] {i}")).collect();
    values.sort();
    values
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_sink_does_not_rewrite_a_batch_whose_transaction_committed() {
    let Some(servers) = broker() else { return };
    for exactly_once in [true, false] {
        let (input, output) = numbered_input_and_output(&servers, "eos", 30).await;
        let checkpoint = temp_dir();
        let first =
            copy_available_now(&servers, &input, &output, checkpoint.path(), exactly_once).await;
        assert_eq!(first.recent_progress().len(), 3);

        // A crash after batch 2's output reached Kafka but before commits/2 was written.
        std::fs::remove_file(checkpoint.path().join("commits").join("2")).unwrap();
        let rerun =
            copy_available_now(&servers, &input, &output, checkpoint.path(), exactly_once).await;
        let batches: Vec<(u64, u64)> = rerun
            .recent_progress()
            .iter()
            .map(|p| (p.batch_id, p.num_input_rows))
            .collect();
        assert_eq!(batches, vec![(2, 10)], "batch 2 ran again with its 10 rows");

        let seen = sorted(read_committed_values(&servers, &output));
        if exactly_once {
            assert_eq!(seen, processed(30), "each row once");
        } else {
            // At-least-once, as Spark: the re-run batch is written twice.
            let mut expected = processed(30);
            expected.extend((20..30).map(|i| format!("[processed] {i}")));
            assert_eq!(seen, sorted(expected));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_sink_aborts_the_open_transaction_of_a_dead_run_and_fences_it() {
    let Some(servers) = broker() else { return };
    let (input, output) = numbered_input_and_output(&servers, "eos-zombie", 20).await;
    let checkpoint = temp_dir();
    copy_available_now(&servers, &input, &output, checkpoint.path(), true).await;

    // A run that died mid-batch: its producer (same transactional id) has an open transaction
    // with records in it.
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(checkpoint.path().join("metadata")).unwrap())
            .unwrap();
    let query_id = metadata["id"].as_str().unwrap().to_string();
    let zombie: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("transactional.id", format!("flumen-{query_id}-{output}"))
        .create()
        .unwrap();
    use rdkafka::producer::Producer;
    zombie.init_transactions(Duration::from_secs(30)).unwrap();
    zombie.begin_transaction().unwrap();
    zombie
        .send(rdkafka::producer::BaseRecord::<(), str>::to(&output).payload("zombie"))
        .unwrap();
    zombie.flush(Duration::from_secs(10)).unwrap();

    produce_values(&servers, &input, &["20", "21"]);
    let restarted = copy_available_now(&servers, &input, &output, checkpoint.path(), true).await;
    assert_eq!(
        restarted
            .recent_progress()
            .iter()
            .map(|p| p.num_input_rows)
            .sum::<u64>(),
        2
    );
    // The restart fenced the zombie: it can no longer commit.
    let error = zombie
        .commit_transaction(Duration::from_secs(30))
        .unwrap_err();
    assert!(
        matches!(
            error.rdkafka_error_code(),
            Some(
                rdkafka::types::RDKafkaErrorCode::Fenced
                    | rdkafka::types::RDKafkaErrorCode::ProducerFenced
                    | rdkafka::types::RDKafkaErrorCode::InvalidProducerEpoch
            )
        ),
        "{error}"
    );
    assert_eq!(
        sorted(read_committed_values(&servers, &output)),
        processed(22),
        "the zombie's record is not visible to read_committed readers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_checkpoint_fences_the_first() {
    let Some(servers) = broker() else { return };
    let (input, output) = numbered_input_and_output(&servers, "eos-fence", 2).await;
    let checkpoint = temp_dir();
    let start = |session: StreamSession| {
        let (servers, input, output) = (servers.clone(), input.clone(), output.clone());
        let path = checkpoint.path().to_path_buf();
        async move {
            earliest_reader(&session, &servers, &input)
                .load()
                .unwrap()
                .select_expr(["CONCAT('[processed] ', CAST(value AS STRING)) AS value"])
                .unwrap()
                .write_stream()
                .kafka()
                .bootstrap_servers(&servers)
                .topic(&output)
                .exactly_once(true)
                .checkpoint_location(path)
                .start()
                .await
                .unwrap()
        }
    };
    let first = start(StreamSession::new()).await;
    first.process_all_available().await.unwrap();
    // A second process on the same checkpoint (here: another session) fences the first.
    let second = start(StreamSession::new()).await;
    second.process_all_available().await.unwrap();
    produce_values(&servers, &input, &["2"]);
    let ended = first.await_termination(Some(Duration::from_secs(60))).await;
    let message = match ended {
        Err(error) => error.to_string(),
        Ok(finished) => panic!("the fenced run did not fail (finished: {finished})"),
    };
    assert!(
        message.contains("fenced") && message.contains("same checkpoint"),
        "{message}"
    );
    second.process_all_available().await.unwrap();
    second.stop().await.unwrap();
    assert_eq!(
        sorted(read_committed_values(&servers, &output)),
        processed(3)
    );
}

/// Runs the kafka_to_kafka example once; returns whether it was aborted by the failpoint.
fn run_example(
    servers: &str,
    input: &str,
    output: &str,
    checkpoint: &std::path::Path,
    exactly_once: bool,
    failpoint: Option<&str>,
) -> bool {
    let mut command = std::process::Command::new(example_binary("kafka_to_kafka"));
    command
        .args([
            "--bootstrap-servers",
            servers,
            "--input",
            input,
            "--output",
            output,
        ])
        .arg("--checkpoint")
        .arg(checkpoint)
        .args(["--max-offsets-per-trigger", "10", "--available-now"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if exactly_once {
        command.arg("--exactly-once");
    }
    match failpoint {
        Some(point) => command.env("FLUMEN_FAILPOINT", point),
        None => command.env_remove("FLUMEN_FAILPOINT"),
    };
    let outcome = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    if outcome.status.success() {
        return false;
    }
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        outcome.status.signal(),
        Some(6),
        "the example failed instead of aborting at the failpoint: {stderr}"
    );
    assert!(stderr.contains("FLUMEN_FAILPOINT: aborting at"), "{stderr}");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failpoints_in_a_real_process_lose_nothing_and_duplicate_only_without_exactly_once() {
    let Some(servers) = broker() else { return };
    // (failpoint, whether it fires without exactly-once, first duplicated value without it)
    let cases = [
        ("after-fetch@1", true, None),
        ("after-state-commit@1", true, None),
        ("before-transaction-commit@0", false, None),
        ("before-transaction-commit@1", false, None),
        ("after-sink-write@0", true, Some(0)),
        ("after-sink-write@1", true, Some(10)),
    ];
    for (failpoint, fires_without_transactions, duplicated_from) in cases {
        for exactly_once in [true, false] {
            let (input, output) = numbered_input_and_output(&servers, "fail", 30).await;
            let checkpoint = temp_dir();
            let path = checkpoint.path().join("cp");
            let aborted = run_example(
                &servers,
                &input,
                &output,
                &path,
                exactly_once,
                Some(failpoint),
            );
            assert_eq!(
                aborted,
                exactly_once || fires_without_transactions,
                "{failpoint}, exactly-once {exactly_once}"
            );
            assert!(!run_example(
                &servers,
                &input,
                &output,
                &path,
                exactly_once,
                None
            ));
            let seen = sorted(read_committed_values(&servers, &output));
            let mut expected = processed(30);
            if let Some(first) = duplicated_from
                && !exactly_once
            {
                // At-least-once re-writes the batch the crash interrupted: 10 rows.
                expected.extend((first..first + 10).map(|i| format!("[processed] {i}")));
            }
            assert_eq!(
                seen,
                sorted(expected),
                "{failpoint}, exactly-once {exactly_once}"
            );
        }
    }
}

/// Produces `(partition, timestamp ms, value)` records with explicit create times.
fn produce_at(servers: &str, topic: &str, records: &[(i32, i64, &str)]) {
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    for (partition, timestamp, value) in records {
        producer
            .send(
                rdkafka::producer::BaseRecord::<(), str>::to(topic)
                    .partition(*partition)
                    .timestamp(*timestamp)
                    .payload(*value),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_timestamp_start_and_end_reads_as_spark_does() {
    let Some(servers) = broker() else { return };
    let topic = unique("by-time");
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker.ensure_topics(&[(topic.as_str(), 2)]).await.unwrap();
    produce_at(
        &servers,
        &topic,
        &[
            (0, 1000, "a0"),
            (0, 2000, "a1"),
            (0, 3000, "a2"),
            (1, 1500, "b0"),
            (1, 2500, "b1"),
        ],
    );
    let session = StreamSession::new();
    let read = |reader: flumen::kafka::KafkaBatchReader| {
        let session = session.clone();
        async move {
            let frame = session.frame(reader.load().await?);
            let batches = frame
                .select_expr(["CAST(value AS STRING) AS v"])?
                .order_by([col("v")])?
                .collect()
                .await?;
            let mut values = Vec::new();
            for batch in batches {
                let column = batch.column(0).as_string::<i32>().clone();
                values.extend(column.iter().map(|v| v.unwrap_or_default().to_string()));
            }
            Ok::<_, FlumenError>(values)
        }
    };
    let base = || {
        session
            .read_kafka()
            .bootstrap_servers(&servers)
            .subscribe([topic.as_str()])
    };
    assert_eq!(
        read(base().starting_timestamp(2000)).await.unwrap(),
        ["a1", "a2", "b1"]
    );
    // p0 from 3000; p1 from 0; p0 has no record at 9999 (ends at latest); p1 ends before 2500.
    assert_eq!(
        read(
            base()
                .starting_offsets_by_timestamp([(topic.as_str(), 0, 3000), (topic.as_str(), 1, 0)])
                .ending_offsets_by_timestamp([
                    (topic.as_str(), 0, 9999),
                    (topic.as_str(), 1, 2500)
                ])
        )
        .await
        .unwrap(),
        ["a2", "b0"]
    );
    assert_eq!(
        read(base().ending_timestamp(2500)).await.unwrap(),
        ["a0", "a1", "b0"]
    );
    let error = read(base().starting_offsets_by_timestamp([(topic.as_str(), 0, 0)]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("you must specify all TopicPartitions") && error.contains("-1"),
        "{error}"
    );

    // Streaming: a partition without a record at or after its timestamp fails the query by
    // default and starts at latest with the "latest" strategy.
    let stream = |strategy: &'static str| {
        let (session, servers, topic) = (session.clone(), servers.clone(), topic.clone());
        async move {
            let query = session
                .read_stream()
                .kafka()
                .bootstrap_servers(&servers)
                .subscribe([topic.as_str()])
                .starting_offsets_by_timestamp([(topic.as_str(), 0, 5000), (topic.as_str(), 1, 0)])
                .starting_offsets_by_timestamp_strategy(strategy)
                .load()
                .unwrap()
                .select_expr(["CAST(value AS STRING) AS v"])
                .unwrap()
                .write_stream()
                .memory()
                .query_name(format!("by_time_{strategy}"))
                .trigger(Trigger::AvailableNow)
                .start()
                .await
                .unwrap();
            query.await_termination(None).await
        }
    };
    let error = stream("error").await.unwrap_err().to_string();
    assert!(
        error.contains("No offset matched") && error.contains("5000"),
        "{error}"
    );
    stream("latest").await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT v FROM by_time_latest ORDER BY v").await,
        "+----+\n| v  |\n+----+\n| b0 |\n| b1 |\n+----+"
    );
}

/// A windowed count of `input` (10-second windows on the records' Kafka timestamps) written to
/// `output` as `window start → count`, exactly-once or not, 10 records per batch, available-now.
async fn windowed_count_to_kafka(
    servers: &str,
    input: &str,
    output: &str,
    checkpoint: &std::path::Path,
    mode: OutputMode,
    exactly_once: bool,
) -> StreamingQuery {
    let frame = earliest_reader(&StreamSession::new(), servers, input)
        .max_offsets_per_trigger(10)
        .load()
        .unwrap()
        .with_watermark("timestamp", "0 seconds")
        .unwrap()
        .group_by([window(col("timestamp"), "10 seconds")])
        .count()
        .unwrap()
        .select_expr([
            "CAST(window.start AS STRING) AS key",
            "CONCAT(CAST(window.start AS STRING), ' ', CAST(count AS STRING)) AS value",
        ])
        .unwrap();
    let sink = KafkaOutput {
        servers,
        topic: output,
        checkpoint,
        exactly_once,
    };
    sink.write_available_now(frame, mode).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_count_crashed_after_its_transaction_ends_as_an_uninterrupted_run() {
    let Some(servers) = broker() else { return };
    // An hour ago, on a window boundary (Kafka refuses create times more than an hour ahead).
    let now_ms = chrono::Utc::now().timestamp_millis();
    let base = (now_ms - 3_600_000) / 10_000 * 10_000;
    for mode in [OutputMode::Update, OutputMode::Append] {
        let input = unique("window-in");
        let (reference, crashed) = (unique("window-ref"), unique("window-crash"));
        let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
        broker
            .ensure_topics(&[
                (input.as_str(), 1),
                (reference.as_str(), 1),
                (crashed.as_str(), 1),
            ])
            .await
            .unwrap();
        let values = numbers(35);
        let records: Vec<(i32, i64, &str)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (0, base + i as i64 * 1000, v.as_str()))
            .collect();
        produce_at(&servers, &input, &records);

        let uninterrupted = temp_dir();
        let reference_run = windowed_count_to_kafka(
            &servers,
            &input,
            &reference,
            uninterrupted.path(),
            mode,
            true,
        )
        .await;
        let expected = sorted(read_committed_values(&servers, &reference));
        let written: Vec<(u64, u64, i64)> = reference_run
            .recent_progress()
            .iter()
            .map(|p| (p.batch_id, p.num_input_rows, p.sink.num_output_rows))
            .collect();
        assert!(!expected.is_empty(), "{mode:?}: {written:?}");

        // Crash after each batch's transaction committed but before its commits/N, resume.
        let checkpoint = temp_dir();
        windowed_count_to_kafka(&servers, &input, &crashed, checkpoint.path(), mode, true).await;
        let commits = checkpoint.path().join("commits");
        let last: u64 = std::fs::read_dir(&commits)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
            .max()
            .unwrap();
        std::fs::remove_file(commits.join(last.to_string())).unwrap();
        windowed_count_to_kafka(&servers, &input, &crashed, checkpoint.path(), mode, true).await;

        assert_eq!(
            sorted(read_committed_values(&servers, &crashed)),
            expected,
            "{mode:?}: the crashed and resumed run wrote what the uninterrupted one wrote"
        );
    }
}

fn admin(servers: &str) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap()
}

/// A memory-sink query of `topic`'s values (as strings) named `name`.
async fn values_to_memory(
    session: &StreamSession,
    servers: &str,
    topic: &str,
    name: &str,
    fail_on_data_loss: bool,
    checkpoint: Option<&std::path::Path>,
) -> StreamingQuery {
    let mut writer = earliest_reader(session, servers, topic)
        .fail_on_data_loss(fail_on_data_loss)
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS v"])
        .unwrap()
        .write_stream()
        .memory()
        .query_name(name);
    if let Some(path) = checkpoint {
        writer = writer.checkpoint_location(path);
    }
    writer.start().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_a_subscribed_topic_are_read_from_their_earliest_offset() {
    let Some(servers) = broker() else { return };
    let topic = unique("grow");
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker.ensure_topics(&[(topic.as_str(), 1)]).await.unwrap();
    produce_at(&servers, &topic, &[(0, 1000, "p0-first")]);
    let session = StreamSession::new();
    let query = values_to_memory(&session, &servers, &topic, "grown", true, None).await;
    query.process_all_available().await.unwrap();

    admin(&servers)
        .create_partitions(
            &[rdkafka::admin::NewPartitions::new(&topic, 2)],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap()
        .into_iter()
        .for_each(|result| {
            result.unwrap();
        });
    // Written before the query sees the partition: read from its earliest offset, not skipped.
    produce_at(
        &servers,
        &topic,
        &[(1, 2000, "p1-first"), (1, 3000, "p1-second")],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        query.process_all_available().await.unwrap();
        let table = sql_table(&session, "SELECT v FROM grown ORDER BY v").await;
        if table.contains("p1-second") {
            assert_eq!(
                table,
                "+-----------+\n| v         |\n+-----------+\n| p0-first  |\n| p1-first  |\n| p1-second |\n+-----------+"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new partition was not read: {table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    query.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topic_fails_the_query_unless_fail_on_data_loss_is_off() {
    let Some(servers) = broker() else { return };
    for fail_on_data_loss in [true, false] {
        let topic = unique("deleted");
        let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
        broker.ensure_topics(&[(topic.as_str(), 1)]).await.unwrap();
        produce_values(&servers, &topic, &["x"]);
        let session = StreamSession::new();
        let name = format!("deleted_{fail_on_data_loss}");
        let query =
            values_to_memory(&session, &servers, &topic, &name, fail_on_data_loss, None).await;
        query.process_all_available().await.unwrap();
        admin(&servers)
            .delete_topics(&[topic.as_str()], &rdkafka::admin::AdminOptions::new())
            .await
            .unwrap()
            .into_iter()
            .for_each(|result| {
                result.unwrap();
            });
        let ended = query.await_termination(Some(Duration::from_secs(30))).await;
        if fail_on_data_loss {
            let message = ended.expect_err("the query must fail").to_string();
            assert!(
                message.contains("failOnDataLoss") && message.contains(&topic),
                "{message}"
            );
        } else {
            assert!(
                matches!(ended, Ok(false)),
                "with failOnDataLoss=false the query keeps running; it ended with {ended:?}"
            );
            assert!(query.exception().is_none());
            query.stop().await.unwrap();
        }
        assert_eq!(
            sql_table(&session, &format!("SELECT v FROM {name}")).await,
            "+---+\n| v |\n+---+\n| x |\n+---+"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_offsets_per_trigger_waits_for_records_until_max_trigger_delay() {
    let Some(servers) = broker() else { return };
    let topic = unique("min-offsets");
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker.ensure_topics(&[(topic.as_str(), 1)]).await.unwrap();
    produce_values(&servers, &topic, &["0", "1", "2"]);
    let session = StreamSession::new();
    let query = earliest_reader(&session, &servers, &topic)
        .min_offsets_per_trigger(5)
        .max_trigger_delay(Duration::from_secs(4))
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS v"])
        .unwrap()
        .write_stream()
        .memory()
        .query_name("min_offsets")
        .start()
        .await
        .unwrap();
    let batches = |query: &StreamingQuery| -> Vec<u64> {
        query
            .recent_progress()
            .iter()
            .filter(|p| p.num_input_rows > 0)
            .map(|p| p.num_input_rows)
            .collect()
    };
    let wait_for = |query: &StreamingQuery, wanted: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while batches(query).len() < wanted {
            assert!(std::time::Instant::now() < deadline, "{:?}", batches(query));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The run's first batch does not wait.
    wait_for(&query, 1);
    let first_done = std::time::Instant::now();
    // 2 < 5 new records: held back until 4 s after the first batch.
    produce_values(&servers, &topic, &["3", "4"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(batches(&query), vec![3], "2 records must wait for more");
    wait_for(&query, 2);
    assert!(
        first_done.elapsed() >= Duration::from_secs(3),
        "the delayed batch ran after {:?}",
        first_done.elapsed()
    );
    // 5 new records are enough at once.
    produce_values(&servers, &topic, &["5", "6", "7", "8", "9"]);
    wait_for(&query, 3);
    assert_eq!(batches(&query), vec![3, 2, 5]);
    query.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_offsets_committed_to_a_group_give_monitoring_tools_the_lag() {
    let Some(servers) = broker() else { return };
    let (topic, group) = (unique("lag"), unique("flumen-lag-group"));
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker.ensure_topics(&[(topic.as_str(), 3)]).await.unwrap();
    let produce_numbers = |partition: i32, from: usize, to: usize| {
        let values: Vec<String> = (from..to).map(|i| i.to_string()).collect();
        let records: Vec<KeyValue<'_>> =
            values.iter().map(|v| (None, Some(v.as_bytes()))).collect();
        produce_to(&servers, &topic, Some(partition), &records, &[]);
    };
    for partition in 0..3 {
        produce_numbers(partition, 0, 10);
    }
    let checkpoint = temp_dir();
    let run = || async {
        let session = StreamSession::new();
        let query = earliest_reader(&session, &servers, &topic)
            .option("kafka.group.id", &group)
            .max_offsets_per_trigger(7)
            .load()
            .unwrap()
            .select_expr(["CAST(value AS STRING) AS v"])
            .unwrap()
            .write_stream()
            .memory()
            .query_name("lag")
            .checkpoint_location(checkpoint.path())
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        query.await_termination(None).await.unwrap();
        query
    };
    let query = run().await;
    assert_eq!(
        query
            .recent_progress()
            .iter()
            .map(|p| p.num_input_rows)
            .sum::<u64>(),
        30
    );
    // What the group has committed, as a monitoring tool reads it (polled until `expected`).
    let committed_now = |expected: [Option<i64>; 3]| {
        let (s, t, g) = (servers.clone(), topic.clone(), group.clone());
        tokio::task::spawn_blocking(move || committed_offsets(&s, &g, &t, &expected))
    };
    let committed = committed_now([Some(10), Some(10), Some(10)]).await.unwrap();
    assert_eq!(committed, [Some(10), Some(10), Some(10)]);

    // Records arrive while the query is down: a lag tool (log end - committed) sees them.
    produce_numbers(1, 10, 15);
    let (s, t, g) = (servers.clone(), topic.clone(), group.clone());
    let lag = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let committed = committed_offsets(&s, &g, &t, &[Some(10), Some(10), Some(10)]);
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &s)
            .create()
            .unwrap();
        (0..3)
            .map(|p| {
                let (_, end) = consumer
                    .fetch_watermarks(&t, p, Duration::from_secs(10))
                    .unwrap();
                end - committed[p as usize].unwrap()
            })
            .collect::<Vec<i64>>()
    })
    .await
    .unwrap();
    assert_eq!(lag, [0, 5, 0]);

    // The restarted query catches up and commits the new end.
    let query = run().await;
    assert_eq!(
        query
            .recent_progress()
            .iter()
            .map(|p| p.num_input_rows)
            .sum::<u64>(),
        5
    );
    let committed = committed_now([Some(10), Some(15), Some(10)]).await.unwrap();
    assert_eq!(committed, [Some(10), Some(15), Some(10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_reach_their_topic_exactly_once_when_the_output_is_exactly_once() {
    let Some(servers) = broker() else { return };
    let (input, output, dlq) = (unique("dlq-in"), unique("dlq-out"), unique("dlq"));
    let broker = flumen_examples::Broker::connect(Some(servers.clone())).unwrap();
    broker
        .ensure_topics(&[(input.as_str(), 1), (output.as_str(), 1), (dlq.as_str(), 1)])
        .await
        .unwrap();
    // 30 records, every seventh broken: 0, 7, 14, 21, 28.
    let values: Vec<String> = (0..30)
        .map(|i| {
            if i % 7 == 0 {
                format!("{{\"n\": {i}")
            } else {
                format!("{{\"n\": {i}}}")
            }
        })
        .collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    produce_values(&servers, &input, &refs);
    let checkpoint = temp_dir();
    let run = || async {
        let query = earliest_reader(&StreamSession::new(), &servers, &input)
            .max_offsets_per_trigger(10)
            .load()
            .unwrap()
            .select_expr(["CAST(value AS STRING) AS json"])
            .unwrap()
            .select([flumen::functions::from_json(col("json"), "n INT")
                .unwrap()
                .alias("data")])
            .unwrap()
            .select_expr(["COALESCE(CAST(data.n AS STRING), 'malformed') AS value"])
            .unwrap()
            .write_stream()
            .kafka()
            .bootstrap_servers(&servers)
            .topic(&output)
            .exactly_once(true)
            .dead_letters_to_kafka(&dlq)
            .checkpoint_location(checkpoint.path())
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        query.await_termination(None).await.unwrap();
        query
    };
    assert_eq!(run().await.recent_progress().len(), 3);
    // A crash after batch 2's transactions committed but before commits/2 was written.
    std::fs::remove_file(checkpoint.path().join("commits").join("2")).unwrap();
    let rerun = run().await;
    let batches: Vec<u64> = rerun.recent_progress().iter().map(|p| p.batch_id).collect();
    assert_eq!(batches, vec![2], "batch 2 ran again");

    let mut expected: Vec<String> = (0..30)
        .map(|i| {
            if i % 7 == 0 {
                "malformed".to_string()
            } else {
                i.to_string()
            }
        })
        .collect();
    expected.sort();
    assert_eq!(sorted(read_committed_values(&servers, &output)), expected);
    let broken: Vec<String> = (0..30)
        .filter(|i| i % 7 == 0)
        .map(|i| format!("{{\"n\": {i}"))
        .collect();
    assert_eq!(
        sorted(read_committed_values(&servers, &dlq)),
        sorted(broken),
        "each broken record once in the dead-letter topic"
    );
}
