//! Restarts and crashes: the checkpoint protocol gives exactly the uninterrupted output.

use std::sync::{Arc, Mutex};

use flumen::prelude::*;
use flumen_tests::*;

fn numbers(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| i.to_string()).collect()
}

fn produce_numbers(servers: &str, topic: &str, from: usize, to: usize) {
    let values = numbers(from, to);
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    produce_values(servers, topic, &values);
}

async fn stream_of(
    session: &StreamSession,
    servers: &str,
    topic: &str,
    per_trigger: u64,
) -> StreamFrame {
    session
        .read_stream()
        .kafka()
        .bootstrap_servers(servers)
        .subscribe([topic])
        .starting_offsets(StartingOffsets::Earliest)
        .max_offsets_per_trigger(per_trigger)
        .load()
        .unwrap()
        .select_expr(["CAST(CAST(value AS STRING) AS BIGINT) AS n"])
        .unwrap()
}

type Seen = Arc<Mutex<Vec<(u64, Vec<i64>)>>>;

/// A foreach_batch sink recording (batch id, values); it "crashes" once, after writing batch
/// `crash_at` and before the engine commits it.
fn recording_sink(writer: DataStreamWriter, seen: Seen, crash_at: Option<u64>) -> DataStreamWriter {
    let crashed = Arc::new(Mutex::new(false));
    writer.foreach_batch(move |df, id| {
        let seen = Arc::clone(&seen);
        let crashed = Arc::clone(&crashed);
        async move {
            let batches = df.collect().await?;
            let mut values = Vec::new();
            for b in &batches {
                let col = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<flumen::datafusion::arrow::array::Int64Array>()
                    .unwrap();
                values.extend(col.values().iter().copied());
            }
            seen.lock().unwrap().push((id, values));
            let mut crashed = crashed.lock().unwrap();
            if crash_at == Some(id) && !*crashed {
                *crashed = true;
                return Err(FlumenError::IllegalState(
                    "simulated crash after the sink wrote the batch".into(),
                ));
            }
            Ok(())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_crash_between_offsets_and_commit() {
    let kafka = EmbeddedKafka::with_topics(&[("numbers", 1)]).unwrap();
    produce_numbers(kafka.bootstrap_servers(), "numbers", 0, 10);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let seen: Seen = Arc::default();

    // Run 1 crashes in batch 1, after the sink saw it and before commits/1.
    let query = recording_sink(
        stream_of(&session, kafka.bootstrap_servers(), "numbers", 4)
            .await
            .write_stream(),
        Arc::clone(&seen),
        Some(1),
    )
    .checkpoint_location(checkpoint.path())
    .start()
    .await
    .unwrap();
    let err = query.await_termination(None).await.unwrap_err().to_string();
    assert!(err.contains("simulated crash"), "{err}");
    assert!(checkpoint.path().join("offsets/1").exists());
    assert!(!checkpoint.path().join("commits/1").exists());

    // Run 2 re-runs batch 1 with the same offsets and id, then continues.
    produce_numbers(kafka.bootstrap_servers(), "numbers", 10, 12);
    let query = recording_sink(
        stream_of(&session, kafka.bootstrap_servers(), "numbers", 4)
            .await
            .write_stream(),
        Arc::clone(&seen),
        None,
    )
    .checkpoint_location(checkpoint.path())
    .start()
    .await
    .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (0, vec![0, 1, 2, 3]),
            (1, vec![4, 5, 6, 7]),
            (1, vec![4, 5, 6, 7]), // the same batch again: same id, same rows
            (2, vec![8, 9, 10, 11]),
        ]
    );
    // Deduplicated by batch id, the output is exactly the input: no loss, no duplicates.
    let mut by_id = std::collections::BTreeMap::new();
    for (id, values) in seen {
        by_id.insert(id, values);
    }
    let all: Vec<i64> = by_id.into_values().flatten().collect();
    assert_eq!(all, (0..12).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sink_skips_a_rerun_batch_after_restart() {
    let kafka = EmbeddedKafka::with_topics(&[("numbers", 1)]).unwrap();
    produce_numbers(kafka.bootstrap_servers(), "numbers", 0, 6);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let start = |session: StreamSession, servers: String, path: std::path::PathBuf| async move {
        stream_of(&session, &servers, "numbers", 3)
            .await
            .write_stream()
            .memory()
            .query_name("numbers_out")
            .checkpoint_location(path)
            .start()
            .await
            .unwrap()
    };
    let query = start(
        session.clone(),
        kafka.bootstrap_servers().into(),
        checkpoint.path().into(),
    )
    .await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let uninterrupted = sql_table(&session, "SELECT n FROM numbers_out ORDER BY n").await;

    // The process died after the sink wrote batch 1 but before commits/1 was written.
    std::fs::remove_file(checkpoint.path().join("commits/1")).unwrap();
    let query = start(
        session.clone(),
        kafka.bootstrap_servers().into(),
        checkpoint.path().into(),
    )
    .await;
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT n FROM numbers_out ORDER BY n").await,
        uninterrupted
    );
    assert_eq!(
        sql_table(&session, "SELECT count(*) AS c FROM numbers_out").await,
        "+---+\n| c |\n+---+\n| 6 |\n+---+"
    );
    assert!(
        checkpoint.path().join("commits/1").exists(),
        "the re-run batch is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_query_id_and_ignores_starting_offsets() {
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_numbers(kafka.bootstrap_servers(), "t", 0, 3);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let q1 = stream_of(&session, kafka.bootstrap_servers(), "t", 100)
        .await
        .write_stream()
        .memory()
        .query_name("ids")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    q1.process_all_available().await.unwrap();
    q1.stop().await.unwrap();
    produce_numbers(kafka.bootstrap_servers(), "t", 3, 5);
    // Restart with startingOffsets=latest: ignored, the checkpoint decides.
    let q2 = session
        .read_stream()
        .kafka()
        .bootstrap_servers(kafka.bootstrap_servers())
        .subscribe(["t"])
        .starting_offsets(StartingOffsets::Latest)
        .load()
        .unwrap()
        .select_expr(["CAST(CAST(value AS STRING) AS BIGINT) AS n"])
        .unwrap()
        .write_stream()
        .memory()
        .query_name("ids")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    q2.process_all_available().await.unwrap();
    q2.stop().await.unwrap();
    assert_eq!(q1.id(), q2.id(), "the query id lives in the checkpoint");
    assert_ne!(q1.run_id(), q2.run_id());
    let metadata = std::fs::read_to_string(checkpoint.path().join("metadata")).unwrap();
    assert_eq!(metadata, format!(r#"{{"id":"{}"}}"#, q1.id()));
    assert_eq!(
        sql_table(&session, "SELECT n FROM ids ORDER BY n").await,
        "+---+\n| n |\n+---+\n| 0 |\n| 1 |\n| 2 |\n| 3 |\n| 4 |\n+---+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_rerun_is_at_least_once_without_loss() {
    let kafka = EmbeddedKafka::with_topics(&[("in", 1), ("out", 1)]).unwrap();
    produce_numbers(kafka.bootstrap_servers(), "in", 0, 4);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let run = || async {
        let q = stream_of(&session, kafka.bootstrap_servers(), "in", 2)
            .await
            .select_expr(["CAST(n AS STRING) AS value"])
            .unwrap()
            .write_stream()
            .kafka()
            .bootstrap_servers(kafka.bootstrap_servers())
            .topic("out")
            .checkpoint_location(checkpoint.path())
            .start()
            .await
            .unwrap();
        q.process_all_available().await.unwrap();
        q.stop().await.unwrap();
    };
    run().await;
    std::fs::remove_file(checkpoint.path().join("commits/1")).unwrap();
    run().await;
    let values: Vec<String> = read_topic(kafka.bootstrap_servers(), "out")
        .iter()
        .map(|r| r.value_text().unwrap())
        .collect();
    // Batch 1 (2, 3) was produced, then produced again when re-run: at-least-once.
    assert_eq!(values, ["0", "1", "2", "3", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stream_source_checkpoints_like_kafka() {
    use flumen::datafusion::arrow::array::{Int64Array, RecordBatch};
    use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let input = MemoryStream::new("n", schema.clone()).with_max_rows_per_trigger(2);
    input
        .add_batch(
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap(),
        )
        .unwrap();
    let session = StreamSession::new();
    let checkpoint = temp_dir();
    let query = session
        .stream(Arc::new(input))
        .unwrap()
        .filter(col("n").gt(lit(1)))
        .unwrap()
        .write_stream()
        .memory()
        .query_name("mem")
        .checkpoint_location(checkpoint.path())
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination(None).await.unwrap();
    assert_eq!(query.recent_progress().len(), 2);
    let offsets = std::fs::read_to_string(checkpoint.path().join("offsets/1")).unwrap();
    assert!(offsets.ends_with("\n{\"rows\":3}"), "{offsets}");
    assert_eq!(
        sql_table(&session, "SELECT n FROM mem ORDER BY n").await,
        "+---+\n| n |\n+---+\n| 2 |\n| 3 |\n+---+"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_version_1_checkpoint_fixture() {
    // tests/fixtures/checkpoint-v1: batch 0 read topic t up to offset 2 and was committed.
    let kafka = EmbeddedKafka::with_topics(&[("t", 1)]).unwrap();
    produce_numbers(kafka.bootstrap_servers(), "t", 0, 4);
    let dir = temp_dir();
    let checkpoint = dir.path().join("checkpoint");
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/checkpoint-v1"),
        &checkpoint,
    );
    let session = StreamSession::new();
    let query = stream_of(&session, kafka.bootstrap_servers(), "t", 100)
        .await
        .write_stream()
        .memory()
        .query_name("fixture")
        .checkpoint_location(&checkpoint)
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(query.id(), "5f1c2e3a-0d4b-4c8e-9a7f-2b6d8e1f0a11");
    let progress = query.recent_progress();
    assert_eq!(progress.len(), 1);
    assert_eq!(
        progress[0].batch_id, 1,
        "the next batch after the fixture's committed batch 0"
    );
    assert_eq!(
        sql_table(&session, "SELECT n FROM fixture ORDER BY n").await,
        "+---+\n| n |\n+---+\n| 2 |\n| 3 |\n+---+"
    );
}

/// The Titanic enrichment into a memory table, optionally crashing once after the sink wrote
/// batch 1; returns the table's rows, ordered.
async fn titanic_to_memory(per_trigger: Option<u64>, crash: bool) -> String {
    use flumen_examples::titanic;
    let kafka = EmbeddedKafka::with_topics(&[(titanic::RAW_TOPIC, 1)]).unwrap();
    let session = StreamSession::new();
    let passengers = session.read_csv(titanic_csv()).await.unwrap();
    let schema = Arc::new(passengers.schema().as_arrow().clone());
    titanic::load_into_kafka(
        passengers,
        &session,
        kafka.bootstrap_servers(),
        titanic::RAW_TOPIC,
        &[],
    )
    .await
    .unwrap();
    let options: Vec<(String, String)> = per_trigger
        .map(|n| vec![("maxOffsetsPerTrigger".to_string(), n.to_string())])
        .unwrap_or_default();
    let enriched = titanic::enriched_stream(
        &session,
        kafka.bootstrap_servers(),
        titanic::RAW_TOPIC,
        &options,
        schema,
    )
    .unwrap()
    .select_columns(&titanic::PRETTY_COLUMNS)
    .unwrap();
    let checkpoint = temp_dir();
    let run = || async {
        let query = enriched
            .write_stream()
            .memory()
            .query_name("enriched")
            .checkpoint_location(checkpoint.path())
            .trigger(Trigger::AvailableNow)
            .start()
            .await
            .unwrap();
        query.await_termination(None).await.unwrap();
    };
    run().await;
    if crash {
        // Killed after the sink wrote batch 1, before commits/1: restart re-runs batch 1 and
        // the rest.
        std::fs::remove_file(checkpoint.path().join("commits/1")).unwrap();
        for n in 2..20 {
            let _ = std::fs::remove_file(checkpoint.path().join(format!("commits/{n}")));
            let _ = std::fs::remove_file(checkpoint.path().join(format!("offsets/{n}")));
        }
        run().await;
    }
    sql_table(&session, "SELECT * FROM enriched ORDER BY PassengerId").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_gives_the_same_rows_straight_in_small_batches_and_after_a_crash() {
    let straight = titanic_to_memory(None, false).await;
    assert_eq!(
        straight.lines().count(),
        891 + 4,
        "891 rows plus the table's borders"
    );
    assert!(
        straight.contains("| 1           | Braund, Mr. Owen Harris"),
        "{}",
        &straight[..600]
    );
    assert_eq!(titanic_to_memory(Some(100), false).await, straight);
    assert_eq!(titanic_to_memory(Some(100), true).await, straight);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_from_inside_foreach_batch_ends_the_query_after_that_batch() {
    let kafka = EmbeddedKafka::with_topics(&[("numbers", 1)]).unwrap();
    produce_numbers(kafka.bootstrap_servers(), "numbers", 0, 6);
    let checkpoint = temp_dir();
    let session = StreamSession::new();
    let handle: Arc<Mutex<Option<StreamingQuery>>> = Arc::default();
    let seen: Seen = Arc::default();
    let (inner_handle, inner_seen) = (Arc::clone(&handle), Arc::clone(&seen));
    let query = stream_of(&session, kafka.bootstrap_servers(), "numbers", 2)
        .await
        .write_stream()
        .checkpoint_location(checkpoint.path())
        .foreach_batch(move |_df, id| {
            let handle = Arc::clone(&inner_handle);
            let seen = Arc::clone(&inner_seen);
            async move {
                seen.lock().unwrap().push((id, vec![]));
                let query = handle.lock().unwrap().clone();
                if id == 1
                    && let Some(query) = query
                {
                    query.stop().await?;
                }
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    *handle.lock().unwrap() = Some(query.clone());
    assert!(
        query
            .await_termination(Some(std::time::Duration::from_secs(60)))
            .await
            .unwrap()
    );
    let ids: Vec<u64> = seen.lock().unwrap().iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        [0, 1],
        "the query stops after the batch that asked for it"
    );
    assert!(
        checkpoint.path().join("commits/1").exists(),
        "that batch is still committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_time_trigger_runs_batches_on_its_interval() {
    let kafka = EmbeddedKafka::with_topics(&[("numbers", 1)]).unwrap();
    produce_numbers(kafka.bootstrap_servers(), "numbers", 0, 3);
    let session = StreamSession::new();
    let query = stream_of(&session, kafka.bootstrap_servers(), "numbers", 100)
        .await
        .write_stream()
        .memory()
        .query_name("interval")
        .trigger(Trigger::processing_time("200 milliseconds").unwrap())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    produce_numbers(kafka.bootstrap_servers(), "numbers", 3, 5);
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let progress = query.recent_progress();
    assert_eq!(progress.iter().map(|p| p.num_input_rows).sum::<u64>(), 5);
    assert_eq!(progress.last().map(|p| p.batch_id), Some(1));
    assert_eq!(
        sql_table(&session, "SELECT count(*) AS c FROM interval").await,
        "+---+\n| c |\n+---+\n| 5 |\n+---+"
    );
}
