//! Bad input and faults: every case has a defined outcome, and nothing is lost silently.

use std::time::{Duration, Instant};

use flumen::prelude::*;
use flumen_tests::*;

async fn memory_query(frame: StreamFrame, name: &str) -> StreamingQuery {
    let query = frame
        .write_stream()
        .memory()
        .query_name(name)
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query
}

fn earliest(session: &StreamSession, servers: &str, topic: &str) -> StreamFrame {
    earliest_reader(session, servers, topic).load().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gives_null_fields_and_keeps_the_raw_text() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(
        kafka.bootstrap_servers(),
        "t",
        &[
            r#"{"id":1,"name":"ok"}"#,
            r#"{"id":2,"name":"#,
            "not json",
            r#"{"id":"three"}"#,
            r#"{"id":4}"#,
        ],
    );
    produce(kafka.bootstrap_servers(), "t", &[(None, None)]);
    let session = StreamSession::new();
    let parsed = earliest(&session, kafka.bootstrap_servers(), "t")
        .select_expr(["offset", "from_json(CAST(value AS STRING), 'id BIGINT, name STRING, _corrupt_record STRING') AS data"])
        .unwrap()
        .select_expr(["offset", "data.*"])
        .unwrap();
    let query = memory_query(parsed, "parsed").await;
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT * FROM parsed ORDER BY \"offset\"").await,
        "+--------+----+------+-----------------+\n\
         | offset | id | name | _corrupt_record |\n\
         +--------+----+------+-----------------+\n\
         | 0      | 1  | ok   |                 |\n\
         | 1      |    |      | {\"id\":2,\"name\": |\n\
         | 2      |    |      | not json        |\n\
         | 3      |    |      | {\"id\":\"three\"}  |\n\
         | 4      | 4  |      |                 |\n\
         | 5      |    |      |                 |\n\
         +--------+----+------+-----------------+"
    );
    // A malformed record is a struct of nulls (Spark 3); a null value is a null struct.
    assert_eq!(
        sql_table(&session, "SELECT \"offset\", id IS NULL AS no_id FROM parsed WHERE \"offset\" IN (2, 5) ORDER BY \"offset\"").await,
        "+--------+-------+\n| offset | no_id |\n+--------+-------+\n| 2      | true  |\n| 5      | true  |\n+--------+-------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failfast_json_stops_the_query_naming_the_record() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["{\"a\":1}", "{broken"]);
    let session = StreamSession::new();
    let frame = earliest(&session, kafka.bootstrap_servers(), "t")
        .select([from_json_with_options(
            cast_string(col("value")),
            "a INT",
            flumen::functions::JsonOptions {
                mode: flumen::functions::ParseMode::FailFast,
                ..Default::default()
            },
        )
        .unwrap()
        .alias("data")])
        .unwrap();
    let query = frame
        .write_stream()
        .memory()
        .query_name("ff")
        .start()
        .await
        .unwrap();
    let err = query
        .await_termination(Some(Duration::from_secs(30)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Malformed records are detected in record parsing. Parse Mode: FAILFAST. Record: {broken"), "{err}");
    assert!(query.exception().is_some());
    assert!(
        query
            .status()
            .message
            .starts_with("Terminated with exception: Execution error: Malformed records"),
        "{}",
        query.status().message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_becomes_replacement_characters_and_raw_bytes_stay() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce(
        kafka.bootstrap_servers(),
        "t",
        &[(Some(&[0xff, 0x41]), Some(&[0x48, 0x69, 0xc3]))],
    );
    let session = StreamSession::new();
    let frame = earliest(&session, kafka.bootstrap_servers(), "t")
        .select_expr([
            "CAST(key AS STRING) AS k",
            "CAST(value AS STRING) AS v",
            "value",
        ])
        .unwrap();
    let query = memory_query(frame, "utf8").await;
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT k, v, value FROM utf8").await,
        "+----+-----+--------+\n| k  | v   | value  |\n+----+-----+--------+\n| \u{FFFD}A | Hi\u{FFFD} | 4869c3 |\n+----+-----+--------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_keys_and_values_stay_null() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce(
        kafka.bootstrap_servers(),
        "t",
        &[(None, Some(b"v")), (Some(b"k"), None), (None, None)],
    );
    let session = StreamSession::new();
    let frame = earliest(&session, kafka.bootstrap_servers(), "t")
        .select_expr([
            "\"offset\"",
            "CAST(key AS STRING) AS k",
            "CAST(value AS STRING) AS v",
        ])
        .unwrap();
    let query = memory_query(frame, "nulls").await;
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(
            &session,
            "SELECT k IS NULL AS null_key, v IS NULL AS null_value FROM nulls ORDER BY \"offset\""
        )
        .await,
        "+----------+------------+\n| null_key | null_value |\n+----------+------------+\n| true     | false      |\n| false    | true       |\n| true     | true       |\n+----------+------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_topic_runs_no_batches() {
    let kafka = EmbeddedKafka::with_topics(&[("empty", 3)]).unwrap();
    let session = StreamSession::new();
    let query = memory_query(
        earliest(&session, kafka.bootstrap_servers(), "empty"),
        "empty_out",
    )
    .await;
    assert_eq!(query.status().message, "Waiting for data to arrive");
    assert!(!query.status().is_data_available);
    assert!(query.recent_progress().is_empty(), "no data, no batch");
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT count(*) AS c FROM empty_out").await,
        "+---+\n| c |\n+---+\n| 0 |\n+---+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_does_not_exist_yet_is_waited_for() {
    let kafka = EmbeddedKafka::start().unwrap();
    let session = StreamSession::new();
    let frame = earliest(&session, kafka.bootstrap_servers(), "later")
        .select_expr(["CAST(value AS STRING) AS v"])
        .unwrap();
    let query = memory_query(frame, "later_out").await;
    assert!(query.is_active());
    kafka.create_topic("later", 1).unwrap();
    produce_values(kafka.bootstrap_servers(), "later", &["first"]);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT v FROM later_out").await,
        "+-------+\n| v     |\n+-------+\n| first |\n+-------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_a_missing_partition_fails_naming_it() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    let session = StreamSession::new();
    let query = session
        .read_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .assign([("t", vec![0, 7])])
        .load()
        .unwrap()
        .write_stream()
        .memory()
        .query_name("assign_out")
        .start()
        .await
        .unwrap();
    let err = query
        .await_termination(Some(Duration::from_secs(30)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("assigned partition t-7 does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_fails_within_the_poll_timeout() {
    // Nothing listens on a port we bound and closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let servers = format!("127.0.0.1:{port}");
    let session = StreamSession::new();
    let started = Instant::now();
    let query = session
        .read_stream()
        .kafka()
        .bootstrap_servers(&servers)
        .subscribe(["t"])
        .option("kafkaConsumer.pollTimeoutMs", 2000)
        .load()
        .unwrap()
        .write_stream()
        .memory()
        .query_name("unreachable")
        .start()
        .await
        .unwrap();
    let err = query
        .await_termination(Some(Duration::from_secs(60)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "cannot read topic metadata from Kafka at {servers} within 2s"
        )),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the 2 s poll timeout, not a hang"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_checkpoint_fails_at_start_naming_it() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    let dir = temp_dir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let session = StreamSession::new();
    let err = earliest(&session, kafka.bootstrap_servers(), "t")
        .write_stream()
        .memory()
        .query_name("cp")
        .checkpoint_location(file.join("checkpoint"))
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&file.join("checkpoint").display().to_string()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_checkpoint_fails_at_start_naming_the_file() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["1"]);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let q = earliest(&session, kafka.bootstrap_servers(), "t")
        .write_stream()
        .memory()
        .query_name("cp1")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    q.process_all_available().await.unwrap();
    q.stop().await.unwrap();
    std::fs::write(
        checkpoint.path().join("offsets/0"),
        "v1\n{\"batchWatermarkMs\":0,\"batchTim",
    )
    .unwrap();
    let err = earliest(&session, kafka.bootstrap_servers(), "t")
        .write_stream()
        .memory()
        .query_name("cp2")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap_err()
        .to_string();
    let file = checkpoint.path().join("offsets/0");
    assert!(
        err.starts_with(&format!("checkpoint file {} is corrupt", file.display())),
        "{err}"
    );
    assert!(
        err.contains("restore it or start a new checkpoint location"),
        "{err}"
    );

    std::fs::write(checkpoint.path().join("offsets/0"), "").unwrap();
    let err = earliest(&session, kafka.bootstrap_servers(), "t")
        .write_stream()
        .memory()
        .query_name("cp3")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("offsets/0 is truncated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_subscription_of_a_checkpoint_is_refused() {
    let kafka = EmbeddedKafka::with_topics(&[("a", 1), ("b", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "a", &["1"]);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let q = earliest(&session, kafka.bootstrap_servers(), "a")
        .write_stream()
        .memory()
        .query_name("sub1")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    q.process_all_available().await.unwrap();
    q.stop().await.unwrap();
    let err = earliest(&session, kafka.bootstrap_servers(), "b")
        .write_stream()
        .memory()
        .query_name("sub2")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "was written with flumen.source = Subscribe[a], but this query has Subscribe[b]"
        ),
        "{err}"
    );
}

/// Fills partition 0 of `topic` past the mock broker's 5 MiB retention, so its oldest records
/// are deleted; returns the earliest offset left.
fn age_out_records(servers: &str, topic: &str) -> i64 {
    let value = vec![b'x'; 1024];
    let records: Vec<KeyValue<'_>> = (0..6000).map(|_| (None, Some(value.as_slice()))).collect();
    produce(servers, topic, &records);
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(high, 6000);
    assert!(
        low > 0,
        "the mock broker should have dropped the oldest records"
    );
    low
}

fn from_offset_zero(
    session: &StreamSession,
    servers: &str,
    fail_on_data_loss: bool,
) -> StreamFrame {
    session
        .read_stream()
        .kafka()
        .bootstrap_servers(servers)
        .subscribe(["t"])
        .starting_offsets(StartingOffsets::Specific(
            [("t".to_string(), [(0, 0)].into())].into(),
        ))
        .fail_on_data_loss(fail_on_data_loss)
        .load()
        .unwrap()
        .select_expr(["offset"])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_lost_before_they_were_read_fail_the_query_by_default() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    age_out_records(kafka.bootstrap_servers(), "t");
    let session = StreamSession::new();
    let query = from_offset_zero(&session, kafka.bootstrap_servers(), true)
        .write_stream()
        .memory()
        .query_name("lossy")
        .start()
        .await
        .unwrap();
    let err = query
        .await_termination(Some(Duration::from_secs(60)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Some data may have been lost"), "{err}");
    assert!(err.contains("failOnDataLoss"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_on_data_loss_false_skips_to_the_earliest_record_left() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    let low = age_out_records(kafka.bootstrap_servers(), "t");
    let session = StreamSession::new();
    let query = memory_query(
        from_offset_zero(&session, kafka.bootstrap_servers(), false),
        "skipped",
    )
    .await;
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(
            &session,
            "SELECT min(\"offset\") AS first, max(\"offset\") AS last, count(*) AS n FROM skipped"
        )
        .await,
        format!(
            "+-------+------+------+\n| first | last | n    |\n+-------+------+------+\n| {low:<5} | 5999 | {:<4} |\n+-------+------+------+",
            6000 - low
        )
    );
}
