//! Stream-stream joins: Spark's guide example (ad impressions joined with the clicks that
//! follow them within an hour) over two memory streams, in every join type, with golden rows
//! per batch, restarts, Spark's rejections and per-side progress.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use flumen::StreamingQueryProgress;
use flumen::datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray,
};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen::datafusion::arrow::util::display::array_value_to_string;
use flumen::datafusion::logical_expr::JoinType;
use flumen::prelude::*;
use flumen_tests::*;

/// 2026-11-24T00:00:00Z: times below are `HH:MM` of that day.
const DAY_MS: i64 = 1_795_478_400_000;

fn schema(id: &str, time: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(id, DataType::Int64, false),
        Field::new(
            time,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

fn impressions_schema() -> SchemaRef {
    schema("impressionAdId", "impressionTime")
}

fn clicks_schema() -> SchemaRef {
    schema("clickAdId", "clickTime")
}

fn ms(clock: &str) -> i64 {
    let (h, m) = clock.split_once(':').unwrap();
    DAY_MS + (h.parse::<i64>().unwrap() * 60 + m.parse::<i64>().unwrap()) * 60_000
}

fn rows(schema: SchemaRef, rows: &[(i64, &str)]) -> RecordBatch {
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    let times: Vec<i64> = rows.iter().map(|(_, t)| ms(t)).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(TimestampMillisecondArray::from(times)),
        ],
    )
    .unwrap()
}

/// Rows as `value value ...`, timestamps as `HH:MM`, nulls as `null`; sorted.
fn render(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c: &ArrayRef| {
                    if c.is_null(row) {
                        return "null".to_string();
                    }
                    if let DataType::Struct(_) = c.data_type() {
                        // A window: `HH:MM-HH:MM`.
                        let s = c.as_struct();
                        let clock = |a: &ArrayRef| {
                            let text = array_value_to_string(a, row).unwrap();
                            text.get(11..16).unwrap_or(&text).to_string()
                        };
                        return format!("{}-{}", clock(s.column(0)), clock(s.column(1)));
                    }
                    let text = array_value_to_string(c, row).unwrap();
                    match c.data_type() {
                        DataType::Timestamp(_, _) => text.get(11..16).unwrap_or(&text).to_string(),
                        _ => text,
                    }
                })
                .collect();
            out.push(cells.join(" "));
        }
    }
    out.sort();
    out
}

/// One trigger's input: new impressions and new clicks.
type Step = (
    &'static [(i64, &'static str)],
    &'static [(i64, &'static str)],
);

/// Impressions and the clicks that follow them (see the module docs): ad 3's click comes
/// after the hour, ad 6's impression and ad 1's second click arrive behind the watermark and
/// are dropped, ad 8's click comes exactly at the hour (the bound is inclusive).
const GUIDE: &[Step] = &[
    (&[(1, "12:00"), (2, "12:10"), (3, "12:20")], &[(1, "12:30")]),
    (&[(4, "13:00")], &[(2, "13:05"), (3, "13:30")]),
    (&[(5, "15:00")], &[(4, "15:30"), (5, "15:10")]),
    (&[(6, "12:00"), (7, "17:00")], &[(1, "12:20"), (7, "17:59")]),
    (&[(8, "20:00")], &[(8, "21:00")]),
];

const CONDITION: &str = "clickAdId = impressionAdId AND clickTime >= impressionTime AND clickTime <= impressionTime + interval 1 hour";

type Build = Arc<dyn Fn(StreamFrame, StreamFrame) -> flumen::Result<StreamFrame> + Send + Sync>;

/// Spark's guide: watermarks of 2 and 3 hours, clicks within an hour of their impression.
fn guide_join(how: JoinType) -> Build {
    Arc::new(move |impressions, clicks| {
        let impressions = impressions.with_watermark("impressionTime", "2 hours")?;
        let clicks = clicks.with_watermark("clickTime", "3 hours")?;
        impressions.join_expr(clicks.dataframe().clone(), how, CONDITION)
    })
}

type Outputs = Arc<Mutex<BTreeMap<u64, Vec<String>>>>;

fn fresh() -> Outputs {
    Arc::new(Mutex::new(BTreeMap::new()))
}

struct Run {
    outputs: BTreeMap<u64, Vec<String>>,
    progress: Vec<StreamingQueryProgress>,
}

impl Run {
    fn non_empty(&self) -> Vec<Vec<String>> {
        self.outputs
            .values()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect()
    }
}

/// Runs `build` over two memory streams fed `steps` one trigger at a time, the first
/// `already_fed` of them in the streams before the query starts (a restart).
async fn run(
    build: &Build,
    steps: &[Step],
    already_fed: usize,
    checkpoint: &Path,
    outputs: Outputs,
) -> flumen::Result<Run> {
    run_in(
        StreamSession::new(),
        build,
        steps,
        already_fed,
        checkpoint,
        outputs,
    )
    .await
}

/// [`run`] in `session`.
async fn run_in(
    session: StreamSession,
    build: &Build,
    steps: &[Step],
    already_fed: usize,
    checkpoint: &Path,
    outputs: Outputs,
) -> flumen::Result<Run> {
    let impressions = Arc::new(MemoryStream::new("impressions", impressions_schema()));
    let clicks = Arc::new(MemoryStream::new("clicks", clicks_schema()));
    let feed = |step: &Step| -> flumen::Result<()> {
        impressions.add_batch(rows(impressions_schema(), step.0))?;
        clicks.add_batch(rows(clicks_schema(), step.1))?;
        Ok(())
    };
    for step in &steps[..already_fed] {
        feed(step)?;
    }
    let frame = build(
        session.stream(impressions.clone())?,
        session.stream(clicks.clone())?,
    )?;
    let sink_outputs = Arc::clone(&outputs);
    let query = frame
        .write_stream()
        .foreach_batch(move |df, id| {
            let outputs = Arc::clone(&sink_outputs);
            async move {
                let rows = render(&df.collect().await?);
                outputs.lock().unwrap().insert(id, rows);
                Ok(())
            }
        })
        .checkpoint_location(checkpoint)
        .start()
        .await?;
    query.process_all_available().await?;
    for step in &steps[already_fed..] {
        feed(step)?;
        query.process_all_available().await?;
    }
    let progress = query.recent_progress();
    query.stop().await?;
    let outputs = outputs.lock().unwrap().clone();
    Ok(Run { outputs, progress })
}

async fn straight(build: &Build) -> Run {
    let checkpoint = temp_dir();
    run(build, GUIDE, 0, checkpoint.path(), fresh())
        .await
        .unwrap()
}

fn lines(rows: &[&str]) -> Vec<String> {
    rows.iter().map(|r| r.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_join_of_the_guide_example_matches_clicks_within_the_hour() {
    let run = straight(&guide_join(JoinType::Inner)).await;
    assert_eq!(
        run.non_empty(),
        vec![
            lines(&["1 12:00 1 12:30"]),
            lines(&["2 12:10 2 13:05"]),
            lines(&["5 15:00 5 15:10"]),
            lines(&["7 17:00 7 17:59"]),
            lines(&["8 20:00 8 21:00"]),
        ]
    );
    // Both sides' rows leave the state: nothing to warn about (and no `warnings` field).
    assert!(
        run.progress
            .iter()
            .all(|p| p.state_operators[0].warnings.is_empty())
    );
    assert!(!run.progress.last().unwrap().json().contains("warnings"));
    // The query's watermark is the smaller of the two: clicks (3 hours) hold it back.
    let watermarks: Vec<&str> = run
        .progress
        .iter()
        .filter_map(|p| p.event_time.get("watermark").map(String::as_str))
        .collect();
    assert_eq!(watermarks.first(), Some(&"1970-01-01T00:00:00.000Z"));
    assert!(
        watermarks.contains(&"2026-11-24T09:30:00.000Z"),
        "{watermarks:?}"
    );
    assert_eq!(watermarks.last(), Some(&"2026-11-24T18:00:00.000Z"));
    // Every batch reports both sources.
    let last = run.progress.last().unwrap();
    assert_eq!(
        last.sources
            .iter()
            .map(|s| s.description.as_str())
            .collect::<Vec<_>>(),
        ["MemoryStream[impressions]", "MemoryStream[clicks]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_join_without_watermarks_keeps_every_row() {
    let build: Build = Arc::new(|impressions, clicks| {
        impressions.join_expr(
            clicks.dataframe().clone(),
            JoinType::Inner,
            "clickAdId = impressionAdId",
        )
    });
    let run = straight(&build).await;
    assert_eq!(
        run.non_empty(),
        vec![
            lines(&["1 12:00 1 12:30"]),
            lines(&["2 12:10 2 13:05", "3 12:20 3 13:30"]),
            lines(&["4 13:00 4 15:30", "5 15:00 5 15:10"]),
            // Nothing is late without a watermark: the second click of ad 1 matches.
            lines(&["1 12:00 1 12:20", "7 17:00 7 17:59"]),
            lines(&["8 20:00 8 21:00"]),
        ]
    );
    let state = &run.progress.last().unwrap().state_operators[0];
    assert_eq!(state.operator_name, "symmetricHashJoin");
    assert_eq!(state.num_rows_total, 16);
    assert_eq!(state.num_rows_removed, 0);
    // Every progress report says why the state only grows.
    assert_eq!(
        state.warnings,
        [
            "the state of this stream-stream join keeps the rows of both sides forever and grows without bound: declare watermarks on both sides and bound the event times in the condition (e.g. r.t BETWEEN l.t AND l.t + INTERVAL 1 HOUR) so old rows leave the state"
        ]
    );
    assert!(
        run.progress[0]
            .json()
            .contains(r#""warnings":["the state of this"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_outer_join_emits_unmatched_impressions_once_the_watermark_passes() {
    let run = straight(&guide_join(JoinType::Left)).await;
    assert_eq!(
        run.non_empty(),
        vec![
            lines(&["1 12:00 1 12:30"]),
            lines(&["2 12:10 2 13:05"]),
            lines(&["5 15:00 5 15:10"]),
            lines(&["7 17:00 7 17:59"]),
            // Watermark 14:59: impressions before 13:59 can no longer be clicked.
            lines(&["3 12:20 null null", "4 13:00 null null"]),
            lines(&["8 20:00 8 21:00"]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_outer_join_emits_unmatched_clicks_once_the_watermark_passes() {
    let run = straight(&guide_join(JoinType::Right)).await;
    assert_eq!(
        run.non_empty(),
        vec![
            lines(&["1 12:00 1 12:30"]),
            lines(&["2 12:10 2 13:05"]),
            lines(&["5 15:00 5 15:10"]),
            lines(&["7 17:00 7 17:59"]),
            lines(&["null null 3 13:30"]),
            lines(&["8 20:00 8 21:00"]),
            // Watermark 18:00: clicks before 18:00 can no longer find their impression.
            lines(&["null null 4 15:30"]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outer_join_emits_unmatched_rows_of_both_sides() {
    let run = straight(&guide_join(JoinType::Full)).await;
    assert_eq!(
        run.non_empty(),
        vec![
            lines(&["1 12:00 1 12:30"]),
            lines(&["2 12:10 2 13:05"]),
            lines(&["5 15:00 5 15:10"]),
            lines(&["7 17:00 7 17:59"]),
            lines(&[
                "3 12:20 null null",
                "4 13:00 null null",
                "null null 3 13:30"
            ]),
            lines(&["8 20:00 8 21:00"]),
            lines(&["null null 4 15:30"]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_semi_join_emits_each_clicked_impression_once() {
    let run = straight(&guide_join(JoinType::LeftSemi)).await;
    assert_eq!(
        run.non_empty(),
        vec![
            lines(&["1 12:00"]),
            lines(&["2 12:10"]),
            lines(&["5 15:00"]),
            lines(&["7 17:00"]),
            lines(&["8 20:00"]),
        ]
    );
}

/// Stops after `stop_after` steps, optionally forgets the last commit (a crash before it was
/// written), restarts on the same checkpoint and feeds the rest: the same batches come out.
async fn restarted(build: &Build, stop_after: usize, forget_last_commit: bool) -> Run {
    let checkpoint = temp_dir();
    let outputs = fresh();
    let first = run(
        build,
        &GUIDE[..stop_after],
        0,
        checkpoint.path(),
        Arc::clone(&outputs),
    )
    .await
    .unwrap();
    if forget_last_commit {
        let last = first.progress.last().unwrap().batch_id;
        let commit = checkpoint.path().join("commits").join(last.to_string());
        std::fs::remove_file(&commit).unwrap();
    }
    run(build, GUIDE, stop_after, checkpoint.path(), outputs)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_join_restarted_in_the_middle_gives_the_same_batches() {
    let build = guide_join(JoinType::Inner);
    let expected = straight(&build).await.outputs;
    assert_eq!(restarted(&build, 2, false).await.outputs, expected);
    assert_eq!(restarted(&build, 3, true).await.outputs, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outer_joins_restarted_in_the_middle_give_the_same_batches() {
    for how in [JoinType::Left, JoinType::Full, JoinType::LeftSemi] {
        let build = guide_join(how);
        let expected = straight(&build).await.outputs;
        assert_eq!(restarted(&build, 2, false).await.outputs, expected, "{how}");
        // The last batch before the stop emitted the left outer rows: re-run from the state.
        assert_eq!(restarted(&build, 4, true).await.outputs, expected, "{how}");
    }
}

/// Spark 3.4+'s chain: the guide's inner join, then clicks counted per hour of click time in
/// append mode.
fn clicks_per_hour() -> Build {
    Arc::new(|impressions, clicks| {
        guide_join(JoinType::Inner)(impressions, clicks)?
            .group_by([window(col("clickTime"), "1 hour")])
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_over_a_join_emits_an_hour_once_the_joins_output_watermark_passes_it() {
    let run = straight(&clicks_per_hour()).await;
    // The join may still emit a click an hour older than the query's watermark (its
    // impression is kept that long), so the hour closes an hour after the watermark passes:
    // at watermark 14:59 only 12:00-13:00 is done, at 18:00 13:00-14:00 and 15:00-16:00.
    assert_eq!(
        run.non_empty(),
        vec![
            lines(&["12:00-13:00 1"]),
            lines(&["13:00-14:00 1", "15:00-16:00 1"]),
        ]
    );
    let last = run.progress.last().unwrap();
    assert_eq!(
        operator_names(last),
        ["stateStoreSave", "symmetricHashJoin"]
    );
    // Hours 17:00 and 21:00 wait in the aggregation's state.
    assert_eq!(last.state_operators[0].num_rows_total, 2);
    // Nothing the join emitted was late for the aggregation.
    let dropped: u64 = run
        .progress
        .iter()
        .map(|p| p.state_operators[0].num_rows_dropped_by_watermark)
        .sum();
    assert_eq!(dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_over_a_join_restarted_in_the_middle_gives_the_same_batches() {
    let build = clicks_per_hour();
    let expected = straight(&build).await.outputs;
    assert_eq!(restarted(&build, 2, false).await.outputs, expected);
    assert_eq!(restarted(&build, 4, true).await.outputs, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_state_rows_bytes_and_late_rows_per_side() {
    let run = straight(&guide_join(JoinType::Left)).await;
    let join = |p: &StreamingQueryProgress| p.state_operators[0].clone();
    // Ad 6's impression and ad 1's second click were late.
    let late = run
        .progress
        .iter()
        .find(|p| join(p).num_rows_dropped_by_watermark > 0)
        .unwrap();
    let m = join(late);
    assert_eq!(m.num_rows_dropped_by_watermark, 2);
    assert_eq!(m.custom_metrics["left.numRowsDroppedByWatermark"], 1);
    assert_eq!(m.custom_metrics["right.numRowsDroppedByWatermark"], 1);
    assert_eq!(late.event_time["watermark"], "2026-11-24T12:30:00.000Z");
    assert_eq!(late.num_input_rows, 4);
    assert_eq!(
        late.sources
            .iter()
            .map(|s| s.num_input_rows)
            .collect::<Vec<_>>(),
        [2, 2]
    );
    // The batch at watermark 14:59 evicted four impressions and three clicks.
    let evicting = run
        .progress
        .iter()
        .find(|p| join(p).num_rows_removed > 0)
        .unwrap();
    let m = join(evicting);
    assert_eq!(m.num_rows_removed, 7);
    assert_eq!(m.custom_metrics["left.numRowsRemoved"], 4);
    assert_eq!(m.custom_metrics["right.numRowsRemoved"], 3);
    // At the end: impressions 7 and 8, click 8.
    let m = join(run.progress.last().unwrap());
    assert_eq!(m.operator_name, "symmetricHashJoin");
    assert_eq!(m.num_rows_total, 3);
    assert_eq!(m.custom_metrics["left.numRowsTotal"], 2);
    assert_eq!(m.custom_metrics["right.numRowsTotal"], 1);
    assert!(m.custom_metrics["left.memoryUsedBytes"] > 0);
    assert!(m.custom_metrics["right.memoryUsedBytes"] > 0);
    assert_eq!(
        m.memory_used_bytes,
        m.custom_metrics["left.memoryUsedBytes"] + m.custom_metrics["right.memoryUsedBytes"]
    );
}

async fn start_error(build: Build, mode: OutputMode) -> String {
    let session = StreamSession::new();
    let impressions = Arc::new(MemoryStream::new("impressions", impressions_schema()));
    let clicks = Arc::new(MemoryStream::new("clicks", clicks_schema()));
    let frame = build(
        session.stream(impressions).unwrap(),
        session.stream(clicks).unwrap(),
    );
    let frame = match frame {
        Ok(frame) => frame,
        Err(e) => return e.to_string(),
    };
    match frame
        .write_stream()
        .output_mode(mode)
        .memory()
        .query_name("joined")
        .start()
        .await
    {
        Ok(query) => {
            query.stop().await.unwrap();
            "started".into()
        }
        Err(e) => e.to_string(),
    }
}

fn join_with(how: JoinType, watermarks: (bool, bool), condition: &'static str) -> Build {
    Arc::new(move |impressions, clicks| {
        let impressions = if watermarks.0 {
            impressions.with_watermark("impressionTime", "2 hours")?
        } else {
            impressions
        };
        let clicks = if watermarks.1 {
            clicks.with_watermark("clickTime", "3 hours")?
        } else {
            clicks
        };
        impressions.join_expr(clicks.dataframe().clone(), how, condition)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_stream_stream_joins_fail_at_start_with_sparks_messages() {
    let keys = "clickAdId = impressionAdId";
    let without = |name: &str| {
        format!(
            "Stream-stream {name} join between two streaming DataFrame/Datasets is not supported without a watermark in the join keys, or a watermark on the nullable side and an appropriate range condition"
        )
    };
    let cases: Vec<(Build, OutputMode, String)> = vec![
        (
            guide_join(JoinType::Inner),
            OutputMode::Update,
            "Join between two streaming DataFrames/Datasets is not supported in Update output mode, only in Append output mode".into(),
        ),
        (
            guide_join(JoinType::Inner),
            OutputMode::Complete,
            "Complete output mode not supported when there are no streaming aggregations on streaming DataFrames/Datasets".into(),
        ),
        (join_with(JoinType::Left, (false, false), CONDITION), OutputMode::Append, without("LeftOuter")),
        // A watermark on both sides but no range condition: impressions could match forever.
        (join_with(JoinType::Left, (true, true), keys), OutputMode::Append, without("LeftOuter")),
        // The range needs the watermark on the nullable side (clicks) to bound impressions.
        (join_with(JoinType::Left, (true, false), CONDITION), OutputMode::Append, without("LeftOuter")),
        (join_with(JoinType::Right, (false, true), CONDITION), OutputMode::Append, without("RightOuter")),
        (join_with(JoinType::Full, (false, false), CONDITION), OutputMode::Append, without("FullOuter")),
        (join_with(JoinType::LeftSemi, (true, false), CONDITION), OutputMode::Append, without("LeftSemi")),
        (
            join_with(JoinType::LeftAnti, (true, true), CONDITION),
            OutputMode::Append,
            "LeftAnti join between two streaming DataFrames/Datasets is not supported".into(),
        ),
    ];
    for (build, mode, expected) in cases {
        assert_eq!(start_error(build, mode).await, expected);
    }
    // An aggregation over a join in append mode needs an event-time key, as any other.
    let aggregated: Build = Arc::new(|impressions, clicks| {
        guide_join(JoinType::Inner)(impressions, clicks)?
            .group_by([col("impressionAdId")])
            .count()
    });
    assert_eq!(
        start_error(aggregated, OutputMode::Append).await,
        "Append output mode not supported when there are streaming aggregations on streaming DataFrames/DataSets without watermark"
    );
    // Chains run in append mode only.
    let counted: Build = Arc::new(|impressions, clicks| {
        guide_join(JoinType::Inner)(impressions, clicks)?
            .group_by([window(col("clickTime"), "1 hour")])
            .count()
    });
    assert_eq!(
        start_error(counted, OutputMode::Update).await,
        "Multiple stateful operators in one query are supported only in Append output mode (this query has Aggregate, StreamingJoin in Update mode); use append, or split it into queries connected by a Kafka topic"
    );
    // Null-safe keys would need null keys indexed; refused rather than silently unmatched.
    assert_eq!(
        start_error(
            join_with(
                JoinType::Inner,
                (true, true),
                "(clickAdId IS NOT DISTINCT FROM impressionAdId) AND clickTime >= impressionTime AND clickTime <= impressionTime + interval 1 hour"
            ),
            OutputMode::Append
        )
        .await,
        "a stream-stream join on keys compared with IS NOT DISTINCT FROM (null equal to null) is not supported; join on equal non-null keys, e.g. with coalesce(key, <a value no key has>) on both sides"
    );
    // Flumen's own limit: a join reads streams, not another operator's output.
    let deduplicated_first: Build = Arc::new(|impressions, clicks| {
        let impressions = impressions
            .with_watermark("impressionTime", "2 hours")?
            .drop_duplicates(&["impressionAdId", "impressionTime"])?;
        let clicks = clicks.with_watermark("clickTime", "3 hours")?;
        impressions.join_expr(clicks.dataframe().clone(), JoinType::Inner, CONDITION)
    });
    assert_eq!(
        start_error(deduplicated_first, OutputMode::Append).await,
        "Flumen runs a stream-stream join only over streams, but in this query one reads another stateful operator's output; aggregate or deduplicate after the join instead, or split the query into queries connected by a Kafka topic"
    );
    // Spark's matrix: a watermark on the nullable side alone is enough for an outer join.
    assert_eq!(
        start_error(
            join_with(JoinType::Left, (false, true), CONDITION),
            OutputMode::Append
        )
        .await,
        "started"
    );
    assert_eq!(
        start_error(
            join_with(JoinType::Right, (true, false), CONDITION),
            OutputMode::Append
        )
        .await,
        "started"
    );
    assert_eq!(
        start_error(
            join_with(JoinType::Inner, (false, false), keys),
            OutputMode::Append
        )
        .await,
        "started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_now_joins_what_both_streams_hold_then_emits_the_outer_rows() {
    let session = StreamSession::new();
    let impressions = Arc::new(MemoryStream::new("impressions", impressions_schema()));
    let clicks = Arc::new(MemoryStream::new("clicks", clicks_schema()));
    for (i, c) in GUIDE {
        impressions
            .add_batch(rows(impressions_schema(), i))
            .unwrap();
        clicks.add_batch(rows(clicks_schema(), c)).unwrap();
    }
    let outputs = fresh();
    let sink_outputs = Arc::clone(&outputs);
    let checkpoint = temp_dir();
    let build = guide_join(JoinType::Left);
    let query = build(
        session.stream(impressions).unwrap(),
        session.stream(clicks).unwrap(),
    )
    .unwrap()
    .write_stream()
    .foreach_batch(move |df, id| {
        let outputs = Arc::clone(&sink_outputs);
        async move {
            let rows = render(&df.collect().await?);
            outputs.lock().unwrap().insert(id, rows);
            Ok(())
        }
    })
    .checkpoint_location(checkpoint.path())
    .trigger(Trigger::AvailableNow)
    .start()
    .await
    .unwrap();
    query.await_termination(None).await.unwrap();
    let outputs = outputs.lock().unwrap().clone();
    // One batch with every row (nothing is late yet: the watermark starts at 0), then a batch
    // without data at watermark 18:00 that lets impressions before 17:00 go.
    assert_eq!(
        outputs.into_iter().collect::<Vec<_>>(),
        vec![
            (
                0,
                lines(&[
                    "1 12:00 1 12:20",
                    "1 12:00 1 12:30",
                    "2 12:10 2 13:05",
                    "5 15:00 5 15:10",
                    "7 17:00 7 17:59",
                    "8 20:00 8 21:00",
                ])
            ),
            (
                1,
                lines(&[
                    "3 12:20 null null",
                    "4 13:00 null null",
                    "6 12:00 null null"
                ])
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_union_of_two_streams_reads_each_from_its_own_offsets_across_a_restart() {
    let checkpoint = temp_dir();
    let a = Arc::new(MemoryStream::new("a", impressions_schema()));
    let b = Arc::new(MemoryStream::new("b", impressions_schema()));
    let start = |session: &StreamSession| {
        let left = session.stream(a.clone()).unwrap();
        let right = session.stream(b.clone()).unwrap();
        let union = left
            .dataframe()
            .clone()
            .union(right.dataframe().clone())
            .unwrap();
        session
            .frame(union)
            .filter_expr("impressionAdId > 1")
            .unwrap()
            .write_stream()
            .memory()
            .query_name("both")
            .checkpoint_location(checkpoint.path())
            .start()
    };
    let session = StreamSession::new();
    let query = start(&session).await.unwrap();
    a.add_batch(rows(impressions_schema(), &[(1, "12:00"), (2, "12:01")]))
        .unwrap();
    query.process_all_available().await.unwrap();
    b.add_batch(rows(impressions_schema(), &[(3, "12:02")]))
        .unwrap();
    query.process_all_available().await.unwrap();
    let last = query.last_progress().unwrap();
    assert_eq!(
        last.sources
            .iter()
            .map(|s| (s.start_offset.to_string(), s.end_offset.to_string()))
            .collect::<Vec<_>>(),
        [
            (r#"{"rows":2}"#.to_string(), r#"{"rows":2}"#.to_string()),
            (r#"{"rows":0}"#.to_string(), r#"{"rows":1}"#.to_string()),
        ]
    );
    query.stop().await.unwrap();
    // Restarted: each stream continues from its own offset in offsets/N.
    let query = start(&session).await.unwrap();
    a.add_batch(rows(impressions_schema(), &[(4, "12:03")]))
        .unwrap();
    b.add_batch(rows(impressions_schema(), &[(5, "12:04")]))
        .unwrap();
    query.process_all_available().await.unwrap();
    query.stop().await.unwrap();
    let table = session
        .sql("SELECT impressionAdId FROM both ORDER BY impressionAdId")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let ids: Vec<i64> = table
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, [2, 3, 4, 5]);
    // The last batch's offsets (rows 4 and 5 may have arrived in one batch or in two).
    let offsets = checkpoint.path().join("offsets");
    let last_batch = std::fs::read_dir(&offsets)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let log = std::fs::read_to_string(offsets.join(last_batch.to_string())).unwrap();
    assert!(
        log.ends_with("{\"rows\":3}\n{\"rows\":2}")
            || log.ends_with("{\"rows\":3}\n{\"rows\":2}\n"),
        "{log}"
    );
}

/// Impressions left outer joined with their clicks in the same hour window (`window(..)`
/// columns equal), each side with a 10-minute watermark; `keep_times` keeps each side's time
/// column next to its window.
fn hourly_window_join(keep_times: bool) -> Build {
    Arc::new(move |impressions, clicks| {
        let side = |frame: StreamFrame, id: &str, time: &str, window_name: &str| {
            let mut columns = vec![col(id), window(col(time), "1 hour").alias(window_name)];
            if keep_times {
                columns.push(col(time));
            }
            frame.with_watermark(time, "10 minutes")?.select(columns)
        };
        let impressions = side(
            impressions,
            "impressionAdId",
            "impressionTime",
            "impressionWindow",
        )?;
        let clicks = side(clicks, "clickAdId", "clickTime", "clickWindow")?;
        impressions.join_expr(
            clicks.dataframe().clone(),
            JoinType::Left,
            "impressionAdId = clickAdId AND impressionWindow = clickWindow",
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_outer_join_on_equal_event_time_windows_emits_unclicked_impressions_when_the_window_closes()
 {
    const HOURLY: &[Step] = &[
        (&[(1, "12:10"), (2, "12:20")], &[(1, "12:50")]),
        // Ad 2's click falls in the next hour's window: no match.
        (&[(3, "14:05")], &[(3, "14:30"), (2, "13:10")]),
    ];
    // Joined on the windows alone, and (the second time) with each side's time column kept
    // next to its window: rows are late by their time, and leave the state when their window
    // closes.
    let expected = [
        vec![
            lines(&["1 12:00-13:00 1 12:00-13:00"]),
            lines(&["3 14:00-15:00 3 14:00-15:00"]),
            // Watermark 13:55: the 12:00 window has closed.
            lines(&["2 12:00-13:00 null null"]),
        ],
        vec![
            lines(&["1 12:00-13:00 12:10 1 12:00-13:00 12:50"]),
            lines(&["3 14:00-15:00 14:05 3 14:00-15:00 14:30"]),
            lines(&["2 12:00-13:00 12:20 null null null"]),
        ],
    ];
    for (keep_times, expected) in [false, true].into_iter().zip(expected) {
        let checkpoint = temp_dir();
        let joined = run(
            &hourly_window_join(keep_times),
            HOURLY,
            0,
            checkpoint.path(),
            fresh(),
        )
        .await
        .unwrap();
        assert_eq!(joined.non_empty(), expected, "keep_times: {keep_times}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_join_drops_as_late_go_to_the_late_rows_output_with_the_other_sides_columns_null() {
    let session = StreamSession::new();
    let impressions = Arc::new(MemoryStream::new("impressions", impressions_schema()));
    let clicks = Arc::new(MemoryStream::new("clicks", clicks_schema()));
    let joined = guide_join(JoinType::Inner)(
        session.stream(impressions.clone()).unwrap(),
        session.stream(clicks.clone()).unwrap(),
    )
    .unwrap();
    let query = joined
        .write_stream()
        .memory()
        .query_name("joined")
        .late_rows_to_memory("late")
        .start()
        .await
        .unwrap();
    for step in GUIDE {
        impressions
            .add_batch(rows(impressions_schema(), step.0))
            .unwrap();
        clicks.add_batch(rows(clicks_schema(), step.1)).unwrap();
        query.process_all_available().await.unwrap();
    }
    query.stop().await.unwrap();
    // Impression 6 (12:00) and ad 1's second click (12:20) arrive when the watermark is 12:30.
    assert_eq!(
        sql_table(
            &session,
            "SELECT impressionAdId, CAST(impressionTime AS STRING) AS impression, clickAdId, \
             CAST(clickTime AS STRING) AS click, late_operator, \
             CAST(late_watermark AS STRING) AS missed FROM late ORDER BY impressionAdId"
        )
        .await,
        "+----------------+---------------------+-----------+---------------------+-------------------+----------------------+\n\
         | impressionAdId | impression          | clickAdId | click               | late_operator     | missed               |\n\
         +----------------+---------------------+-----------+---------------------+-------------------+----------------------+\n\
         | 6              | 2026-11-24T12:00:00 |           |                     | symmetricHashJoin | 2026-11-24T12:30:00Z |\n\
         |                |                     | 1         | 2026-11-24T12:20:00 | symmetricHashJoin | 2026-11-24T12:30:00Z |\n\
         +----------------+---------------------+-----------+---------------------+-------------------+----------------------+"
    );
}

/// Impression 1 is clicked twice within its hour; a deduplication after the join keeps its
/// first click.
const CLICKED_TWICE: &[Step] = &[
    (&[(1, "12:00")], &[(1, "12:10")]),
    (&[], &[(1, "12:20")]),
    (&[(2, "14:00")], &[(2, "14:30")]),
    (&[(3, "17:00")], &[(3, "17:05"), (2, "14:50")]),
];

fn first_click_per_impression() -> Build {
    Arc::new(|impressions, clicks| {
        guide_join(JoinType::Inner)(impressions, clicks)?
            .drop_duplicates(&["impressionAdId", "impressionTime"])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deduplication_over_a_join_keeps_each_impressions_first_click_across_a_restart() {
    let build = first_click_per_impression();
    let checkpoint = temp_dir();
    let straight = run(&build, CLICKED_TWICE, 0, checkpoint.path(), fresh())
        .await
        .unwrap();
    assert_eq!(
        straight.non_empty(),
        vec![
            lines(&["1 12:00 1 12:10"]),
            lines(&["2 14:00 2 14:30"]),
            lines(&["3 17:00 3 17:05"]),
        ]
    );
    let last = straight.progress.last().unwrap();
    let dedup = &last.state_operators[0];
    assert_eq!(dedup.operator_name, "dedupe");
    // The impression time is a key carrying event time: impressions the join can no longer
    // emit (behind its output watermark, 13:05: an hour behind the query's 14:05) leave the
    // state, so impression 1 is gone.
    assert_eq!(dedup.num_rows_total, 2);
    // Restarted before a step that feeds both streams (a stream that has delivered nothing
    // since a restart holds the watermark at the restored value, so a restart before step 1,
    // clicks only, moves the watermark a batch later: the same rows, other batch ids).
    for cut in 2..CLICKED_TWICE.len() {
        let checkpoint = temp_dir();
        let outputs = fresh();
        run(
            &build,
            &CLICKED_TWICE[..cut],
            0,
            checkpoint.path(),
            Arc::clone(&outputs),
        )
        .await
        .unwrap();
        let resumed = run(&build, CLICKED_TWICE, cut, checkpoint.path(), outputs)
            .await
            .unwrap();
        assert_eq!(resumed.outputs, straight.outputs, "restarted after {cut}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_keys_pairs_are_each_emitted_once_when_gathered_in_chunks() {
    // 400 impressions and 400 clicks of one ad in one batch: 160,000 pairs, more than one
    // chunk of candidate pairs; a left semi join emits each impression once all the same.
    for (how, expected) in [(JoinType::Inner, 160_000), (JoinType::LeftSemi, 400)] {
        let session = StreamSession::new();
        let impressions = Arc::new(MemoryStream::new("impressions", impressions_schema()));
        let clicks = Arc::new(MemoryStream::new("clicks", clicks_schema()));
        let joined = guide_join(how)(
            session.stream(impressions.clone()).unwrap(),
            session.stream(clicks.clone()).unwrap(),
        )
        .unwrap();
        let query = joined
            .write_stream()
            .memory()
            .query_name("pairs")
            .start()
            .await
            .unwrap();
        impressions
            .add_batch(rows(impressions_schema(), &vec![(1, "12:00"); 400]))
            .unwrap();
        clicks
            .add_batch(rows(clicks_schema(), &vec![(1, "12:30"); 400]))
            .unwrap();
        query.process_all_available().await.unwrap();
        query.stop().await.unwrap();
        let counted = session
            .sql("SELECT count(*) AS n FROM pairs")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n = counted[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, expected, "{how}");
    }
}

fn session_with_partitions(partitions: usize) -> StreamSession {
    use flumen::datafusion::prelude::SessionConfig;
    StreamSession::with_config(SessionConfig::new().with_target_partitions(partitions))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_state_split_into_key_partitions_gives_the_same_rows_in_every_join_type() {
    for how in [
        JoinType::Inner,
        JoinType::Left,
        JoinType::Right,
        JoinType::Full,
        JoinType::LeftSemi,
    ] {
        let build = guide_join(how);
        let one = temp_dir();
        let single = run_in(
            session_with_partitions(1),
            &build,
            GUIDE,
            0,
            one.path(),
            fresh(),
        )
        .await
        .unwrap();
        let four = temp_dir();
        let split = run_in(
            session_with_partitions(4),
            &build,
            GUIDE,
            0,
            four.path(),
            fresh(),
        )
        .await
        .unwrap();
        assert_eq!(split.outputs, single.outputs, "{how}");
        let state = &split.progress.last().unwrap().state_operators[0];
        assert_eq!(state.num_shuffle_partitions, 4, "{how}");
        assert_eq!(state.num_state_store_instances, 8, "{how}");
        assert_eq!(
            state.num_rows_total,
            single.progress.last().unwrap().state_operators[0].num_rows_total,
            "{how}"
        );
        for partition in 0..4 {
            for side in ["left", "right"] {
                assert!(
                    four.path()
                        .join(format!("state/0/{partition}/{side}/1.delta"))
                        .exists(),
                    "{how}: partition {partition} {side}"
                );
            }
        }
        // The mark that tells this state from one written before joins were partitioned.
        assert!(four.path().join("state/0/0/partitioned").exists(), "{how}");
    }
}

/// A checkpoint written when join state was one partition: its offset logs record the
/// session's partition count (here 2) but the join kept everything in `state/0/0/`. Made here
/// from a one-partition checkpoint whose logs are edited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_checkpoint_from_before_partitioned_join_state_resumes_with_one_partition() {
    let build = guide_join(JoinType::Full);
    let straight = straight(&build).await;
    let checkpoint = temp_dir();
    let outputs = fresh();
    run_in(
        session_with_partitions(1),
        &build,
        &GUIDE[..3],
        0,
        checkpoint.path(),
        Arc::clone(&outputs),
    )
    .await
    .unwrap();
    for entry in std::fs::read_dir(checkpoint.path().join("offsets")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replace(
            "\"flumen.state.partitions\":\"1\"",
            "\"flumen.state.partitions\":\"2\"",
        );
        assert_ne!(edited, text, "{}", path.display());
        std::fs::write(&path, edited).unwrap();
    }
    let resumed = run_in(
        session_with_partitions(2),
        &build,
        GUIDE,
        3,
        checkpoint.path(),
        outputs,
    )
    .await
    .unwrap();
    assert_eq!(resumed.outputs, straight.outputs);
    let state = &resumed.progress.last().unwrap().state_operators[0];
    assert_eq!(state.num_shuffle_partitions, 1);
    assert!(!checkpoint.path().join("state/0/1").exists());
    assert!(!checkpoint.path().join("state/0/0/partitioned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_checkpoint_missing_some_partitions_state_is_refused_not_half_restored() {
    let build = guide_join(JoinType::Inner);
    let checkpoint = temp_dir();
    run_in(
        session_with_partitions(2),
        &build,
        &GUIDE[..2],
        0,
        checkpoint.path(),
        fresh(),
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(checkpoint.path().join("state/0/1/left")).unwrap();
    let error = run_in(
        session_with_partitions(2),
        &build,
        GUIDE,
        2,
        checkpoint.path(),
        fresh(),
    )
    .await
    .err()
    .expect("a half-present join state is refused")
    .to_string();
    assert!(
        error.contains("holds the join state of some key partitions but not of")
            && error.contains("state/0/1/left"),
        "{error}"
    );
}
