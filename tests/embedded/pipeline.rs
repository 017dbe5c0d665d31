//! The notebook's pipelines end to end, with golden outputs.

use std::sync::Arc;

use flumen::prelude::*;
use flumen_examples::titanic::{self, ENRICHED_TOPIC, RAW_TOPIC};
use flumen_tests::*;

/// Loads the real CSV into raw-titanic and runs the enrichment into enriched-titanic with an
/// available-now trigger; returns the records read back by an independent consumer.
async fn run_titanic(max_per_trigger: Option<u64>) -> (Vec<Record>, Vec<StreamingQueryProgress>) {
    let kafka = EmbeddedKafka::with_topics(&[(RAW_TOPIC, 2), (ENRICHED_TOPIC, 1)]).unwrap();
    let session = StreamSession::new();
    let passengers = session.read_csv(titanic_csv()).await.unwrap();
    let schema = Arc::new(passengers.schema().as_arrow().clone());
    let loaded = titanic::load_into_kafka(
        passengers,
        &session,
        kafka.bootstrap_servers(),
        RAW_TOPIC,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(loaded, 891);

    let options: Vec<(String, String)> = max_per_trigger
        .map(|n| vec![("maxOffsetsPerTrigger".to_string(), n.to_string())])
        .unwrap_or_default();
    let enriched = titanic::enriched_stream(
        &session,
        kafka.bootstrap_servers(),
        RAW_TOPIC,
        &options,
        schema,
    )
    .unwrap();
    let checkpoint = temp_dir();
    let query = titanic::to_kafka_records(&enriched)
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .topic(ENRICHED_TOPIC)
        .checkpoint_location(checkpoint.path())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    assert!(query.await_termination(None).await.unwrap());
    (
        read_topic(kafka.bootstrap_servers(), ENRICHED_TOPIC),
        query.recent_progress(),
    )
}

fn check_enriched(records: &[Record]) {
    let expected = passengers_from_csv();
    assert_eq!(expected.len(), 891);
    assert_eq!(records.len(), 891, "one enriched record per passenger");
    let mut by_id = std::collections::BTreeMap::new();
    for r in records {
        let value: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        let id = value["PassengerId"].as_i64().unwrap();
        assert_eq!(r.key_text(), Some(id.to_string()), "key = PassengerId");
        assert!(
            by_id.insert(id, value).is_none(),
            "passenger {id} written twice"
        );
    }
    for p in &expected {
        let v = &by_id[&p.id];
        let class = match p.pclass {
            1 => "First Class",
            2 => "Second Class",
            _ => "Third Class",
        };
        assert_eq!(v["ClassName"], class, "ClassName of passenger {}", p.id);
        let adult = if p.age.is_some_and(|a| a >= 18.0) {
            "yes"
        } else {
            "no"
        };
        assert_eq!(v["is_adult"], adult, "is_adult of passenger {}", p.id);
        assert_eq!(v["Name"], p.name.as_str());
        assert_eq!(v["Survived"], p.survived);
        assert_eq!(v["Pclass"], p.pclass);
        match p.age {
            Some(age) => assert_eq!(v["Age"].as_f64(), Some(age)),
            None => assert!(
                v.get("Age").is_none(),
                "a null Age is omitted, as Spark's to_json"
            ),
        }
    }
    // Spark's column order for a USING join: the key first, then the left's, then the right's.
    let first = records
        .iter()
        .find(|r| r.key_text().as_deref() == Some("1"))
        .and_then(Record::value_text)
        .unwrap();
    assert_eq!(
        first,
        r#"{"Pclass":3,"PassengerId":1,"Survived":0,"Name":"Braund, Mr. Owen Harris","Sex":"male","Age":22.0,"SibSp":1,"Parch":0,"Ticket":"A/5 21171","Fare":7.25,"Embarked":"S","is_adult":"yes","ClassName":"Third Class"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_enrichment_gives_every_passenger_class_and_adulthood() {
    let (records, progress) = run_titanic(None).await;
    check_enriched(&records);
    let adults = records
        .iter()
        .filter(|r| r.value_text().unwrap().contains(r#""is_adult":"yes""#))
        .count();
    assert_eq!(
        adults, 601,
        "passengers aged 18 or more in the Kaggle training set"
    );
    assert_eq!(progress.iter().map(|p| p.num_input_rows).sum::<u64>(), 891);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_enrichment_is_the_same_in_small_micro_batches() {
    let (records, progress) = run_titanic(Some(100)).await;
    check_enriched(&records);
    assert_eq!(progress.len(), 9, "891 rows at 100 per trigger");
    assert!(progress.iter().all(|p| p.num_input_rows <= 100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sink_prints_batches_like_spark() {
    let kafka = EmbeddedKafka::with_topics(&[("demo-topic", 1)]).unwrap();
    let values: Vec<String> = (0..5).map(|i| format!("Hello {i}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    produce_values(kafka.bootstrap_servers(), "demo-topic", &values);
    produce(
        kafka.bootstrap_servers(),
        "demo-topic",
        &[(
            Some(b"k"),
            Some(b"a value much longer than twenty characters"),
        )],
    );
    let session = StreamSession::new();
    let capture = Capture::default();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "demo-topic")
        .load()
        .unwrap()
        .select_expr(["CAST(key AS STRING)", "CAST(value AS STRING)"])
        .unwrap()
        .write_stream()
        .console_to(capture.writer())
        .option("numRows", 5)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination(None).await.unwrap();
    assert_eq!(
        capture.text(),
        "-------------------------------------------\n\
         Batch: 0\n\
         -------------------------------------------\n\
         +----+-------+\n\
         | key|  value|\n\
         +----+-------+\n\
         |null|Hello 0|\n\
         |null|Hello 1|\n\
         |null|Hello 2|\n\
         |null|Hello 3|\n\
         |null|Hello 4|\n\
         +----+-------+\n\
         only showing top 5 rows\n\
         \n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_kafka_prefixes_every_value() {
    let kafka = EmbeddedKafka::with_topics(&[("demo-topic", 2), ("demo-topic-2", 1)]).unwrap();
    produce(
        kafka.bootstrap_servers(),
        "demo-topic",
        &[
            (Some(b"a"), Some(b"Hello 0")),
            (None, Some(b"Hello 1")),
            (Some(b"c"), None),
        ],
    );
    let session = StreamSession::new();
    let checkpoint = temp_dir();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "demo-topic")
        .load()
        .unwrap()
        .select_expr([
            "CAST(key AS STRING) AS key",
            "CAST(value AS STRING) AS value",
        ])
        .unwrap()
        .with_column("value", concat([lit("[processed] "), col("value")]))
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .topic("demo-topic-2")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let mut out: Vec<(Option<String>, Option<String>)> =
        read_topic(kafka.bootstrap_servers(), "demo-topic-2")
            .iter()
            .map(|r| (r.key_text(), r.value_text()))
            .collect();
    out.sort();
    assert_eq!(
        out,
        vec![
            (None, Some("[processed] Hello 1".into())),
            (Some("a".into()), Some("[processed] Hello 0".into())),
            // concat with a null value is null, as in Spark: a tombstone stays a tombstone.
            (Some("c".into()), None),
        ]
    );
    let offsets = std::fs::read_to_string(checkpoint.path().join("offsets/0")).unwrap();
    let lines: Vec<&str> = offsets.lines().collect();
    assert_eq!(lines[0], "v1");
    let end: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    let total: i64 = end["demo-topic"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(
        total, 3,
        "the offset log records the exclusive end offsets of batch 0"
    );
    assert!(checkpoint.path().join("commits/0").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_queries_run_side_by_side_from_one_source_definition() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["1", "2", "3"]);
    let session = StreamSession::new();
    let stream = earliest_reader(&session, kafka.bootstrap_servers(), "t")
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS v"])
        .unwrap();
    let doubled = stream.select_expr(["CAST(v AS BIGINT) * 2 AS v"]).unwrap();
    let q1 = stream
        .write_stream()
        .memory()
        .query_name("plain")
        .start()
        .await
        .unwrap();
    let q2 = doubled
        .write_stream()
        .memory()
        .query_name("doubled")
        .start()
        .await
        .unwrap();
    q1.process_all_available().await.unwrap();
    q2.process_all_available().await.unwrap();
    assert_ne!(q1.id(), q2.id());
    assert_eq!(session.active_queries().len(), 2);
    produce_values(kafka.bootstrap_servers(), "t", &["4"]);
    q1.process_all_available().await.unwrap();
    q2.process_all_available().await.unwrap();
    session.stop_all().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT v FROM plain ORDER BY v").await,
        "+---+\n| v |\n+---+\n| 1 |\n| 2 |\n| 3 |\n| 4 |\n+---+"
    );
    assert_eq!(
        sql_table(&session, "SELECT v FROM doubled ORDER BY v").await,
        "+---+\n| v |\n+---+\n| 2 |\n| 4 |\n| 6 |\n| 8 |\n+---+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_a_registered_stream_is_a_stream() {
    let kafka = EmbeddedKafka::with_topics(&[("people", 1)]).unwrap();
    produce_values(
        kafka.bootstrap_servers(),
        "people",
        &[
            r#"{"name":"Ann","age":31}"#,
            r#"{"name":"Bo","age":12}"#,
            r#"{"name":"Cy","age":18}"#,
        ],
    );
    let session = StreamSession::new();
    earliest_reader(&session, kafka.bootstrap_servers(), "people")
        .load()
        .unwrap()
        .create_or_replace_temp_view("people_raw")
        .unwrap();
    let adults = session
        .sql(
            "SELECT p['name'] AS name, p['age'] AS age FROM \
             (SELECT from_json(CAST(value AS STRING), 'name STRING, age INT') AS p FROM people_raw) \
             WHERE p['age'] >= 18",
        )
        .await
        .unwrap();
    assert!(adults.is_streaming());
    let err = adults.collect().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "Queries with streaming sources must be executed with writeStream.start()"
    );
    let query = adults
        .write_stream()
        .memory()
        .query_name("adults")
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT * FROM adults ORDER BY name").await,
        "+------+-----+\n| name | age |\n+------+-----+\n| Ann  | 31  |\n| Cy   | 18  |\n+------+-----+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreach_batch_gets_each_batch_with_its_id() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["a", "b", "c", "d", "e"]);
    let session = StreamSession::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let checkpoint = temp_dir();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "t")
        .max_offsets_per_trigger(2)
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS v"])
        .unwrap()
        .write_stream()
        .checkpoint_location(checkpoint.path())
        .trigger(Trigger::AvailableNow)
        .foreach_batch(move |df, id| {
            let sink = Arc::clone(&sink);
            async move {
                let rows = df.collect().await?;
                let text = flumen::datafusion::arrow::util::pretty::pretty_format_batches(&rows)?
                    .to_string();
                let values: Vec<String> = text
                    .lines()
                    .skip(3)
                    .filter(|l| l.starts_with("| "))
                    .map(|l| l.trim_matches(|c| c == '|' || c == ' ').to_string())
                    .collect();
                sink.lock().unwrap().push((id, values));
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    query.await_termination(None).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (0, vec!["a".to_string(), "b".to_string()]),
            (1, vec!["c".to_string(), "d".to_string()]),
            (2, vec!["e".to_string()]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_takes_a_bounded_range() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["0", "1", "2", "3", "4"]);
    let session = StreamSession::new();
    let df = session
        .read_kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .subscribe(["t"])
        .starting_offsets(StartingOffsets::Specific(
            [("t".to_string(), [(0, 1)].into())].into(),
        ))
        .ending_offsets(StartingOffsets::Specific(
            [("t".to_string(), [(0, 4)].into())].into(),
        ))
        .load()
        .await
        .unwrap();
    let frame = session
        .frame(df)
        .select_expr(["CAST(value AS STRING) AS v", "offset"])
        .unwrap();
    let rows = frame.collect().await.unwrap();
    assert_eq!(
        flumen::datafusion::arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string(),
        "+---+--------+\n| v | offset |\n+---+--------+\n| 1 | 1      |\n| 2 | 2      |\n| 3 | 3      |\n+---+--------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_read_and_written() {
    let kafka = EmbeddedKafka::with_topics(&[("in", 1), ("out", 1)]).unwrap();
    produce_to(
        kafka.bootstrap_servers(),
        "in",
        None,
        &[(None, Some(b"v"))],
        &[("trace", Some(b"abc")), ("empty", None)],
    );
    produce(kafka.bootstrap_servers(), "in", &[(None, Some(b"w"))]);
    let session = StreamSession::new();
    let checkpoint = temp_dir();
    let stream = earliest_reader(&session, kafka.bootstrap_servers(), "in")
        .include_headers(true)
        .load()
        .unwrap();
    assert_eq!(
        stream.columns(),
        [
            "key",
            "value",
            "topic",
            "partition",
            "offset",
            "timestamp",
            "timestampType",
            "headers"
        ]
    );
    let query = stream
        .select_columns(&["value", "headers"])
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .topic("out")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let out = read_topic(kafka.bootstrap_servers(), "out");
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].headers,
        vec![
            ("trace".to_string(), Some(b"abc".to_vec())),
            ("empty".to_string(), None)
        ]
    );
    assert!(out[1].headers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_are_spark_shaped() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 2)]).unwrap();
    produce_to(
        kafka.bootstrap_servers(),
        "t",
        Some(0),
        &[(None, Some(b"a")), (None, Some(b"b"))],
        &[],
    );
    produce_to(
        kafka.bootstrap_servers(),
        "t",
        Some(1),
        &[(None, Some(b"c"))],
        &[],
    );
    let session = StreamSession::new();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "t")
        .load()
        .unwrap()
        .write_stream()
        .memory()
        .query_name("progress_check")
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    let progress = query.last_progress().unwrap();
    query.stop().await.unwrap();
    assert_eq!(progress.batch_id, 0);
    assert_eq!(progress.num_input_rows, 3);
    assert_eq!(progress.name.as_deref(), Some("progress_check"));
    let json: serde_json::Value = serde_json::from_str(&progress.json()).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "id",
        "runId",
        "name",
        "timestamp",
        "batchId",
        "numInputRows",
        "durationMs",
        "sources",
        "sink",
    ] {
        assert!(keys.contains(&key), "{key} missing from {json}");
    }
    assert_eq!(json["sources"][0]["description"], "KafkaV2[Subscribe[t]]");
    assert_eq!(
        json["sources"][0]["startOffset"],
        serde_json::json!({"t": {"0": 0, "1": 0}})
    );
    assert_eq!(
        json["sources"][0]["endOffset"],
        serde_json::json!({"t": {"0": 2, "1": 1}})
    );
    assert_eq!(json["sources"][0]["metrics"]["maxOffsetsBehindLatest"], "0");
    assert_eq!(
        json["sink"],
        serde_json::json!({"description": "MemorySink[progress_check]", "numOutputRows": 3})
    );
    for phase in [
        "latestOffset",
        "walCommit",
        "getBatch",
        "addBatch",
        "commitOffsets",
        "triggerExecution",
    ] {
        assert!(
            json["durationMs"].get(phase).is_some(),
            "durationMs.{phase} missing"
        );
    }
    assert_eq!(query.status().message, "Stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_pattern_picks_up_topics_created_later() {
    let kafka = EmbeddedKafka::with_topics(&[("events-a", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "events-a", &["a"]);
    let session = StreamSession::new();
    let query = session
        .read_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .subscribe_pattern("events-.*")
        .starting_offsets(StartingOffsets::Earliest)
        .load()
        .unwrap()
        .select_expr(["topic", "CAST(value AS STRING) AS v"])
        .unwrap()
        .write_stream()
        .memory()
        .query_name("pattern")
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    kafka.create_topic("events-b", 1).unwrap();
    kafka.create_topic("other", 1).unwrap();
    produce_values(kafka.bootstrap_servers(), "events-b", &["b"]);
    produce_values(kafka.bootstrap_servers(), "other", &["x"]);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT * FROM pattern ORDER BY v").await,
        "+----------+---+\n| topic    | v |\n+----------+---+\n| events-a | a |\n| events-b | b |\n+----------+---+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_join_builds_its_hash_table_once_per_query() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    let session = StreamSession::new();
    let classes = titanic::class_names(&session).unwrap();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "t")
        .load()
        .unwrap()
        .select_expr(["CAST(CAST(value AS STRING) AS BIGINT) AS Pclass"])
        .unwrap()
        .join(classes, JoinType::Left, &["Pclass"])
        .unwrap()
        .write_stream()
        .memory()
        .query_name("joined")
        .start()
        .await
        .unwrap();
    for batch in [["1", "2"], ["3", "4"], ["2", "2"]] {
        produce_values(kafka.bootstrap_servers(), "t", &batch);
        query.process_all_available().await.unwrap();
    }
    let plan = query.explain();
    query.stop().await.unwrap();
    assert_eq!(query.recent_progress().len(), 3, "three micro-batches");
    assert!(
        plan.contains("HashJoinExec: mode=CollectLeft, join_type=Right"),
        "{plan}"
    );
    // The static side (3 rows) was collected once for the three batches, not three times.
    assert!(plan.contains("build_input_rows=3,"), "{plan}");
    assert_eq!(
        sql_table(&session, "SELECT * FROM joined ORDER BY Pclass").await,
        "+--------+--------------+\n\
         | Pclass | ClassName    |\n\
         +--------+--------------+\n\
         | 1      | First Class  |\n\
         | 2      | Second Class |\n\
         | 2      | Second Class |\n\
         | 2      | Second Class |\n\
         | 3      | Third Class  |\n\
         | 4      |              |\n\
         +--------+--------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_timestamp_is_the_batch_timestamp() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["a", "b", "c"]);
    let session = StreamSession::new();
    let checkpoint = temp_dir();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "t")
        .load()
        .unwrap()
        .select([
            current_timestamp().alias("now"),
            (current_timestamp() + interval("5 seconds").unwrap()).alias("later"),
        ])
        .unwrap()
        .write_stream()
        .memory()
        .query_name("stamps")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let offsets = std::fs::read_to_string(checkpoint.path().join("offsets/0")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(offsets.lines().nth(1).unwrap()).unwrap();
    let batch_ms = meta["batchTimestampMs"].as_i64().unwrap();
    let table = sql_table(
        &session,
        "SELECT count(DISTINCT now) AS distinct_now, \
                min(CAST(now AS BIGINT)) / 1000000 AS now_ms, \
                min(CAST(later AS BIGINT) - CAST(now AS BIGINT)) / 1000000 AS diff_ms FROM stamps",
    )
    .await;
    assert_eq!(
        table,
        format!(
            "+--------------+---------------+---------+\n\
             | distinct_now | now_ms        | diff_ms |\n\
             +--------------+---------------+---------+\n\
             | 1            | {batch_ms} | 5000    |\n\
             +--------------+---------------+---------+"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_routes_by_topic_and_partition_columns() {
    let kafka = EmbeddedKafka::with_topics(&[("in", 1), ("even", 2), ("odd", 2)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "in", &["1", "2", "3", "4"]);
    let session = StreamSession::new();
    let checkpoint = temp_dir();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "in")
        .load()
        .unwrap()
        .select_expr([
            "CASE WHEN CAST(CAST(value AS STRING) AS INT) % 2 = 0 THEN 'even' ELSE 'odd' END AS topic",
            "CAST(1 AS INT) AS partition",
            "value",
        ])
        .unwrap()
        .write_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let read = |topic: &str| -> Vec<(i32, String)> {
        read_topic(kafka.bootstrap_servers(), topic)
            .iter()
            .map(|r| (r.partition, r.value_text().unwrap()))
            .collect()
    };
    assert_eq!(read("even"), [(1, "2".to_string()), (1, "4".to_string())]);
    assert_eq!(read("odd"), [(1, "1".to_string()), (1, "3".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_offsets_are_committed_to_the_group_for_monitoring() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["a", "b", "c"]);
    let session = StreamSession::new();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "t")
        .option("kafka.group.id", "flumen-monitor")
        .load()
        .unwrap()
        .write_stream()
        .memory()
        .query_name("monitored")
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    // An independent client asks the group coordinator what the group has committed.
    let servers = kafka.bootstrap_servers().to_string();
    let committed = tokio::task::spawn_blocking(move || {
        committed_offsets(&servers, "flumen-monitor", "t", &[Some(3)])
    })
    .await
    .unwrap();
    assert_eq!(committed, [Some(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_once_reads_everything_available_in_one_batch_then_stops() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_values(kafka.bootstrap_servers(), "t", &["a", "b", "c", "d"]);
    let session = StreamSession::new();
    let query = earliest_reader(&session, kafka.bootstrap_servers(), "t")
        .max_offsets_per_trigger(1)
        .load()
        .unwrap()
        .write_stream()
        .memory()
        .query_name("once")
        .trigger(Trigger::Once)
        .start()
        .await
        .unwrap();
    assert!(
        query
            .await_termination(Some(std::time::Duration::from_secs(60)))
            .await
            .unwrap()
    );
    let progress = query.recent_progress();
    assert_eq!(progress.len(), 1);
    assert_eq!(
        progress[0].num_input_rows, 4,
        "Once ignores maxOffsetsPerTrigger, as in Spark"
    );
    assert!(!query.is_active());
}
