//! Event time over Kafka: the notebook's windowed count and chart on the real Titanic data,
//! and per-partition watermarks with idle partitions.

use std::sync::Arc;
use std::time::Duration;

use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use flumen::prelude::*;
use flumen_examples::chart::{BarChart, find_font};
use flumen_examples::titanic::{self, RAW_TOPIC};
use flumen_tests::*;

/// Every window of 1 minute over `base + 5 s × PassengerId`, PassengerId 1..=891, with the
/// base on a minute: ids 1–11 in the first window, then 12 per window, 4 in the last.
fn expected_windows() -> Vec<String> {
    let mut rows = Vec::new();
    for minute in 0..75 {
        let count = match minute {
            0 => 11,
            74 => 4,
            _ => 12,
        };
        rows.push(format!(
            "| {{start: 2026-01-01T{:02}:{:02}:00Z, end: 2026-01-01T{:02}:{:02}:00Z}} | {count} |",
            minute / 60,
            minute % 60,
            (minute + 1) / 60,
            (minute + 1) % 60
        ));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_windowed_counts_with_a_fixed_base_time() {
    let kafka = EmbeddedKafka::with_topics(&[(RAW_TOPIC, 2)]).unwrap();
    let session = StreamSession::new();
    let passengers = session.read_csv(titanic_csv()).await.unwrap();
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let with_time = titanic::with_event_time(&session, passengers, base).unwrap();
    let schema = Arc::new(with_time.schema().as_arrow().clone());
    let loaded = titanic::load_into_kafka(
        with_time,
        &session,
        kafka.bootstrap_servers(),
        RAW_TOPIC,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(loaded, 891);

    // In 100-row micro-batches, so windows are updated across batches.
    let options = vec![("maxOffsetsPerTrigger".to_string(), "100".to_string())];
    let parsed = titanic::parsed_stream(
        &session,
        kafka.bootstrap_servers(),
        RAW_TOPIC,
        &options,
        schema,
    )
    .unwrap();
    let query = titanic::windowed_counts(&parsed)
        .unwrap()
        .write_stream()
        .memory()
        .query_name("windows")
        .output_mode(OutputMode::Complete)
        .trigger(Trigger::AvailableNow)
        .start()
        .await
        .unwrap();
    query.await_termination(None).await.unwrap();
    let progress = query.recent_progress();
    assert_eq!(progress.len(), 9, "891 rows in batches of at most 100");
    assert_eq!(
        progress.last().unwrap().state_operators[0].num_rows_total,
        75
    );

    let table = sql_table(&session, "SELECT window, count FROM windows").await;
    let rendered: Vec<String> = table
        .lines()
        .filter(|l| l.starts_with("| {"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            format!("| {} | {} |", cells[1], cells[2])
        })
        .collect();
    assert_eq!(rendered, expected_windows());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn titanic_chart_counts_adults_into_agg_table_and_draws_them() {
    let kafka = EmbeddedKafka::with_topics(&[(RAW_TOPIC, 1)]).unwrap();
    let session = StreamSession::new();
    let passengers = session.read_csv(titanic_csv()).await.unwrap();
    let schema = Arc::new(passengers.schema().as_arrow().clone());
    titanic::load_into_kafka(
        passengers,
        &session,
        kafka.bootstrap_servers(),
        RAW_TOPIC,
        &[],
    )
    .await
    .unwrap();
    let parsed =
        titanic::parsed_stream(&session, kafka.bootstrap_servers(), RAW_TOPIC, &[], schema)
            .unwrap();
    let query = titanic::is_adult_counts(&parsed)
        .unwrap()
        .write_stream()
        .memory()
        .query_name("agg_table")
        .output_mode(OutputMode::Complete)
        .start()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), query.process_all_available())
        .await
        .unwrap()
        .unwrap();
    query.stop().await.unwrap();
    assert_eq!(
        sql_table(&session, "SELECT * FROM agg_table ORDER BY is_adult").await,
        "+----------+-------+\n\
         | is_adult | count |\n\
         +----------+-------+\n\
         | no       | 290   |\n\
         | yes      | 601   |\n\
         +----------+-------+"
    );

    let Ok(font) = find_font(None) else {
        eprintln!("SKIPPED drawing the chart: no TrueType font on this machine");
        return;
    };
    let out = temp_dir();
    let png = out.path().join("chart.png");
    BarChart {
        title: "Количество взрослых и не взрослых пассажиров Titanic (batch из стрима)".into(),
        x_label: "is_adult".into(),
        y_label: "Count".into(),
        bars: vec![("no".into(), 290), ("yes".into(), 601)],
    }
    .render_png(&png, &font, (900, 600))
    .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, right after the chunk header.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 900);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 600);
}

fn event(word: &str, minute: i64) -> String {
    format!(
        r#"{{"word":"{word}","ts":"2026-11-24T{:02}:{:02}:00Z"}}"#,
        12 + minute / 60,
        minute % 60
    )
}

/// Two partitions: partition 0 runs ahead to 13:40, partition 1 stays at 12:10.
async fn per_partition_run(idle_timeout: &str) -> (Vec<String>, Vec<StreamingQueryProgress>) {
    let kafka = EmbeddedKafka::with_topics(&[("events", 2)]).unwrap();
    let servers = kafka.bootstrap_servers().to_string();
    let session = StreamSession::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("word", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]));
    let counts = earliest_reader(&session, &servers, "events")
        .load()
        .unwrap()
        .select_expr(["CAST(value AS STRING) AS json"])
        .unwrap()
        .with_column("e", from_json(col("json"), schema).unwrap())
        .unwrap()
        .select_expr(["e.*"])
        .unwrap()
        .with_watermark("ts", "0 seconds")
        .unwrap()
        .group_by([window(col("ts"), "10 minutes"), col("word")])
        .count()
        .unwrap();
    let send = |partition: i32, values: &[String]| {
        let records: Vec<KeyValue<'_>> =
            values.iter().map(|v| (None, Some(v.as_bytes()))).collect();
        produce_to(&servers, "events", Some(partition), &records, &[]);
    };
    send(0, &[event("fast", 100)]);
    send(1, &[event("slow", 10)]);
    let checkpoint = temp_dir();
    let query = counts
        .write_stream()
        .memory()
        .query_name("closed")
        .output_mode(OutputMode::Append)
        .option("watermarkIdleTimeout", idle_timeout)
        .checkpoint_location(checkpoint.path())
        .start()
        .await
        .unwrap();
    query.process_all_available().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    send(0, &[event("fast", 101)]);
    query.process_all_available().await.unwrap();
    let progress = query.recent_progress();
    query.stop().await.unwrap();
    let table = sql_table(&session, "SELECT word, count FROM closed ORDER BY word").await;
    let rows = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("word"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (rows, progress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_is_the_minimum_over_partitions_that_are_not_idle() {
    // Partition 1 never goes idle: it holds the watermark at 12:10, so nothing closes.
    let (rows, progress) = per_partition_run("1 hour").await;
    assert!(rows.is_empty(), "{rows:?}");
    let watermarks: Vec<&str> = progress
        .iter()
        .filter_map(|p| p.event_time.get("watermark").map(String::as_str))
        .collect();
    assert_eq!(watermarks.last(), Some(&"2026-11-24T12:10:00.000Z"));

    // After 200 ms without rows partition 1 is idle: the watermark follows partition 0 to
    // 13:41, and the window of partition 1's row closes in a batch without new data.
    let (rows, progress) = per_partition_run("200 milliseconds").await;
    assert_eq!(rows, vec!["| slow | 1 |"]);
    let last = progress.last().unwrap();
    assert_eq!(last.num_input_rows, 0);
    assert_eq!(last.event_time["watermark"], "2026-11-24T13:41:00.000Z");
}
