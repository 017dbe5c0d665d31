//! Late rows as a side output: rows a stateful operator drops behind the watermark go to a
//! memory table, a `foreach_batch` callback or a Kafka topic, with the operator that dropped
//! them and the watermark they missed, instead of disappearing.

use std::collections::BTreeMap;
use std::sync::Arc;

use flumen::datafusion::arrow::array::{RecordBatch, StringArray, TimestampMillisecondArray};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen::prelude::*;
use flumen_tests::*;

/// 2026-11-24T12:00:00Z: event times below are minutes after this.
const BASE_MS: i64 = 1_795_521_600_000;

/// Spark's guide's stream, extended: `donkey` (12:05) arrives when the watermark is 12:11.
const GUIDE: &[&[(&str, i64)]] = &[
    &[("dog", 7), ("owl", 8)],
    &[("dog", 14), ("cat", 9)],
    &[("owl", 21)],
    &[("donkey", 5), ("cat", 16)],
    &[("fox", 35)],
];

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("word", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]))
}

fn events(rows: &[(&str, i64)]) -> RecordBatch {
    let words: Vec<&str> = rows.iter().map(|(w, _)| *w).collect();
    let times: Vec<i64> = rows.iter().map(|(_, m)| BASE_MS + m * 60_000).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(words)),
            Arc::new(TimestampMillisecondArray::from(times)),
        ],
    )
    .unwrap()
}

/// Feeds `batches` one trigger at a time to a query built by `build` and `write`, then stops it.
async fn feed(
    session: &StreamSession,
    batches: &[&[(&str, i64)]],
    build: impl Fn(StreamFrame) -> flumen::Result<StreamFrame>,
    write: impl FnOnce(DataStreamWriter) -> DataStreamWriter,
) -> StreamingQuery {
    let input = Arc::new(MemoryStream::new("events", schema()));
    let frame = build(session.stream(input.clone()).unwrap()).unwrap();
    let query = write(frame.write_stream()).start().await.unwrap();
    for batch in batches {
        input.add_batch(events(batch)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    query
}

fn windowed_counts(frame: StreamFrame) -> flumen::Result<StreamFrame> {
    frame
        .with_watermark("ts", "10 minutes")?
        .group_by([window(col("ts"), "10 minutes"), col("word")])
        .count()
}

const LATE_SQL: &str = "SELECT word, CAST(ts AS STRING) AS ts, late_operator, \
     CAST(late_watermark AS STRING) AS missed FROM late_events ORDER BY ts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_windowed_count_drops_go_to_a_memory_table_with_the_watermark_they_missed() {
    for mode in [OutputMode::Update, OutputMode::Append] {
        let session = StreamSession::new();
        let query = feed(&session, GUIDE, windowed_counts, |w| {
            w.output_mode(mode)
                .memory()
                .query_name("counts")
                .late_rows_to_memory("late_events")
        })
        .await;
        assert_eq!(
            sql_table(&session, LATE_SQL).await,
            "+--------+---------------------+----------------+----------------------+\n\
             | word   | ts                  | late_operator  | missed               |\n\
             +--------+---------------------+----------------+----------------------+\n\
             | donkey | 2026-11-24T12:05:00 | stateStoreSave | 2026-11-24T12:11:00Z |\n\
             +--------+---------------------+----------------+----------------------+",
            "{mode:?}"
        );
        let dropped: u64 = query
            .recent_progress()
            .iter()
            .flat_map(|p| p.state_operators.iter())
            .map(|s| s.num_rows_dropped_by_watermark)
            .sum();
        assert_eq!(dropped, 1, "{mode:?}: the same row is counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_still_counted_in_one_sliding_window_is_not_late() {
    let session = StreamSession::new();
    let sliding = |frame: StreamFrame| {
        frame
            .with_watermark("ts", "10 minutes")?
            .group_by([sliding_window(col("ts"), "10 minutes", "5 minutes")])
            .count()
    };
    // After 12:21 the watermark is 12:11. 12:03 falls in 11:55-12:05 and 12:00-12:10, both
    // passed; 12:08 still counts in 12:05-12:15.
    let batches: &[&[(&str, i64)]] = &[&[("owl", 21)], &[("donkey", 3), ("eel", 8)]];
    feed(&session, batches, sliding, |w| {
        w.output_mode(OutputMode::Update)
            .memory()
            .query_name("counts")
            .late_rows_to_memory("late_events")
    })
    .await;
    // The count reads only `ts`, so that is what a late row holds.
    assert_eq!(
        sql_table(&session, "SELECT CAST(ts AS STRING) AS ts FROM late_events").await,
        "+---------------------+\n\
         | ts                  |\n\
         +---------------------+\n\
         | 2026-11-24T12:03:00 |\n\
         +---------------------+"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplication_hands_its_late_rows_to_a_callback_once_per_batch() {
    let session = StreamSession::new();
    let late: RowsByBatch = Arc::default();
    let dedup = |frame: StreamFrame| {
        frame
            .with_watermark("ts", "10 minutes")?
            .drop_duplicates(&["word", "ts"])
    };
    let query = feed(&session, GUIDE, dedup, |w| {
        w.memory()
            .query_name("unique")
            .late_rows_foreach_batch(record_rows(Arc::clone(&late), &["word", "late_operator"]))
    })
    .await;
    let progress = query.recent_progress();
    let dropping: Vec<u64> = progress
        .iter()
        .filter(|p| p.state_operators[0].num_rows_dropped_by_watermark > 0)
        .map(|p| p.batch_id)
        .collect();
    let late = late.lock().unwrap().clone();
    let with_rows: BTreeMap<u64, Vec<String>> = late
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(dropping.len(), 1, "{progress:?}");
    assert_eq!(
        with_rows,
        BTreeMap::from([(dropping[0], vec!["donkey dedupe".to_string()])])
    );
    let batches: Vec<u64> = progress.iter().map(|p| p.batch_id).collect();
    assert_eq!(
        late.keys().copied().collect::<Vec<_>>(),
        batches,
        "called for every batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_re_run_after_a_crash_hands_over_the_same_late_rows_with_the_same_id() {
    let checkpoint = temp_dir();
    let late: RowsByBatch = Arc::default();
    let write = |late: RowsByBatch| {
        let callback = record_rows(late, &["word", "late_operator"]);
        let path = checkpoint.path().to_path_buf();
        move |w: DataStreamWriter| {
            w.output_mode(OutputMode::Update)
                .foreach_batch(|_, _| async { Ok(()) })
                .checkpoint_location(path)
                .late_rows_foreach_batch(callback)
        }
    };
    // The guide up to donkey's batch (its last: the watermark does not move there), then a
    // crash before that batch's commits/N was written.
    feed(
        &StreamSession::new(),
        &GUIDE[..4],
        windowed_counts,
        write(Arc::clone(&late)),
    )
    .await;
    let (last, first) = late
        .lock()
        .unwrap()
        .last_key_value()
        .map(|(k, v)| (*k, v.clone()))
        .unwrap();
    assert_eq!(first, vec!["donkey stateStoreSave".to_string()]);
    std::fs::remove_file(checkpoint.path().join("commits").join(last.to_string())).unwrap();

    let rerun: RowsByBatch = Arc::default();
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", schema()));
    for batch in &GUIDE[..4] {
        input.add_batch(events(batch)).unwrap();
    }
    let query = write(Arc::clone(&rerun))(
        windowed_counts(session.stream(input).unwrap())
            .unwrap()
            .write_stream(),
    )
    .start()
    .await
    .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        rerun.lock().unwrap().clone(),
        BTreeMap::from([(last, first)]),
        "only the uncommitted batch re-ran, with the same late row"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_go_to_a_kafka_topic_as_json() {
    let kafka = EmbeddedKafka::with_topics(&[("counts", 1), ("late", 1)]).unwrap();
    let servers = kafka.bootstrap_servers().to_string();
    let checkpoint = temp_dir();
    let build = |frame: StreamFrame| {
        windowed_counts(frame)?.select_expr(["CONCAT(word, ' ', CAST(count AS STRING)) AS value"])
    };
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", schema()));
    let query = build(session.stream(input.clone()).unwrap())
        .unwrap()
        .write_stream()
        .output_mode(OutputMode::Update)
        .kafka()
        .bootstrap_servers(&servers)
        .topic("counts")
        .late_rows_to_kafka("late")
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    for batch in GUIDE {
        input.add_batch(events(batch)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    let late: Vec<String> = read_topic(&servers, "late")
        .iter()
        .map(|r| r.value_text().unwrap())
        .collect();
    assert_eq!(
        late,
        [
            r#"{"word":"donkey","ts":"2026-11-24T12:05:00","late_operator":"stateStoreSave","late_watermark":"2026-11-24T12:11:00Z"}"#
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_rows_output_needs_a_stateful_operator() {
    let session = StreamSession::new();
    let input = Arc::new(MemoryStream::new("events", schema()));
    let error = session
        .stream(input)
        .unwrap()
        .write_stream()
        .memory()
        .query_name("plain")
        .late_rows_to_memory("late_events")
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("a late rows output needs a stateful operator"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_chain_the_operator_nearest_the_source_reports_its_late_rows() {
    let session = StreamSession::new();
    let chain = |frame: StreamFrame| {
        frame
            .with_watermark("ts", "10 minutes")?
            .drop_duplicates(&["word", "ts"])?
            .group_by([window(col("ts"), "10 minutes"), col("word")])
            .count()
    };
    feed(&session, GUIDE, chain, |w| {
        w.output_mode(OutputMode::Append)
            .memory()
            .query_name("counts")
            .late_rows_to_memory("late_events")
    })
    .await;
    assert_eq!(
        sql_table(&session, LATE_SQL).await,
        "+--------+---------------------+---------------+----------------------+\n\
         | word   | ts                  | late_operator | missed               |\n\
         +--------+---------------------+---------------+----------------------+\n\
         | donkey | 2026-11-24T12:05:00 | dedupe        | 2026-11-24T12:11:00Z |\n\
         +--------+---------------------+---------------+----------------------+"
    );
}
