//! Event time: watermarks, windows, stateful aggregation in each output mode, deduplication,
//! state in the checkpoint. Small hand-computed streams with golden outputs per batch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flumen::datafusion::arrow::array::{
    ArrayRef, AsArray, RecordBatch, StringArray, TimestampMillisecondArray,
};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen::datafusion::arrow::util::display::array_value_to_string;
use flumen::prelude::*;
use flumen::{StreamingQueryProgress, datafusion};
use flumen_tests::*;

/// 2026-11-24T12:00:00Z: event times below are minutes after this.
const BASE_MS: i64 = 1_795_521_600_000;

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

/// `HH:MM` of a timestamp in µs or ms.
fn clock(array: &ArrayRef, row: usize) -> String {
    let text = array_value_to_string(array, row).unwrap();
    // e.g. 2026-11-24T12:07:00
    text.get(11..16).unwrap_or(&text).to_string()
}

/// Rows as `value value ...`; windows print as `HH:MM-HH:MM`, timestamps as `HH:MM`.
fn render(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Struct(_) => {
                        let s = c.as_struct();
                        format!("{}-{}", clock(s.column(0), row), clock(s.column(1), row))
                    }
                    DataType::Timestamp(_, _) => clock(c, row),
                    _ => array_value_to_string(c, row).unwrap(),
                })
                .collect();
            out.push(cells.join(" "));
        }
    }
    out
}

type Outputs = Arc<Mutex<BTreeMap<u64, Vec<String>>>>;

struct Run {
    /// Non-empty outputs by batch id (a re-run batch overwrites its entry).
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

    fn dropped(&self) -> u64 {
        self.progress
            .iter()
            .flat_map(|p| p.state_operators.iter())
            .map(|s| s.num_rows_dropped_by_watermark)
            .sum()
    }
}

/// Runs `build` over a memory stream fed `batches` one trigger at a time.
async fn run(
    build: impl Fn(StreamFrame) -> flumen::Result<StreamFrame>,
    mode: OutputMode,
    batches: &[&[(&str, i64)]],
    checkpoint: Option<&std::path::Path>,
    outputs: Outputs,
) -> flumen::Result<Run> {
    run_from(build, mode, batches, 0, checkpoint, outputs).await
}

/// [`run`], with the first `already_fed` batches in the stream before the query starts (a
/// restarted query over the same stream: its checkpoint says where to continue).
async fn run_from(
    build: impl Fn(StreamFrame) -> flumen::Result<StreamFrame>,
    mode: OutputMode,
    batches: &[&[(&str, i64)]],
    already_fed: usize,
    checkpoint: Option<&std::path::Path>,
    outputs: Outputs,
) -> flumen::Result<Run> {
    let session = StreamSession::new();
    run_in(
        session,
        build,
        mode,
        batches,
        already_fed,
        checkpoint,
        outputs,
    )
    .await
}

/// [`run_from`] in `session`.
async fn run_in(
    session: StreamSession,
    build: impl Fn(StreamFrame) -> flumen::Result<StreamFrame>,
    mode: OutputMode,
    batches: &[&[(&str, i64)]],
    already_fed: usize,
    checkpoint: Option<&std::path::Path>,
    outputs: Outputs,
) -> flumen::Result<Run> {
    let input = Arc::new(MemoryStream::new("events", schema()));
    for batch in &batches[..already_fed] {
        input.add_batch(events(batch))?;
    }
    let frame = build(session.stream(input.clone())?)?;
    let sink_outputs = Arc::clone(&outputs);
    let mut writer = frame
        .write_stream()
        .output_mode(mode)
        .foreach_batch(move |df, id| {
            let outputs = Arc::clone(&sink_outputs);
            async move {
                let rows = render(&df.collect().await?);
                outputs.lock().unwrap().insert(id, rows);
                Ok(())
            }
        });
    let temporary = temp_dir();
    writer = writer.checkpoint_location(checkpoint.unwrap_or(temporary.path()));
    let query = writer.start().await?;
    if already_fed > 0 {
        query.process_all_available().await?;
    }
    for batch in &batches[already_fed..] {
        input.add_batch(events(batch))?;
        query.process_all_available().await?;
    }
    let progress = query.recent_progress();
    query.stop().await?;
    let outputs = outputs.lock().unwrap().clone();
    Ok(Run { outputs, progress })
}

/// The stream of Spark's guide, extended: `donkey` arrives after the watermark passed its
/// window and is dropped; `fox` moves the watermark past the second windows.
const GUIDE: &[&[(&str, i64)]] = &[
    &[("dog", 7), ("owl", 8)],
    &[("dog", 14), ("cat", 9)],
    &[("owl", 21)],
    &[("donkey", 5), ("cat", 16)],
    &[("fox", 35)],
];

fn windowed_counts(frame: StreamFrame) -> flumen::Result<StreamFrame> {
    frame
        .with_watermark("ts", "10 minutes")?
        .group_by([window(col("ts"), "10 minutes"), col("word")])
        .count()
}

fn fresh() -> Outputs {
    Arc::new(Mutex::new(BTreeMap::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_mode_emits_changed_windows_and_drops_late_rows() {
    let run = run(windowed_counts, OutputMode::Update, GUIDE, None, fresh())
        .await
        .unwrap();
    assert_eq!(
        run.non_empty(),
        vec![
            vec!["12:00-12:10 dog 1", "12:00-12:10 owl 1"],
            vec!["12:10-12:20 dog 1", "12:00-12:10 cat 1"],
            vec!["12:20-12:30 owl 1"],
            vec!["12:10-12:20 cat 1"],
            vec!["12:30-12:40 fox 1"],
        ]
    );
    assert_eq!(
        run.dropped(),
        1,
        "donkey at 12:05 is behind the 12:11 watermark"
    );
    let last = run.progress.last().unwrap();
    assert_eq!(last.event_time["watermark"], "2026-11-24T12:25:00.000Z");
    let state = &last.state_operators[0];
    assert_eq!(state.operator_name, "stateStoreSave");
    // Windows ending at or before 12:25 were evicted: 12:20-12:30 owl and 12:30-12:40 fox remain.
    assert_eq!(state.num_rows_total, 2);
    assert!(state.memory_used_bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_mode_emits_each_window_once_after_the_watermark_passes_it() {
    let run = run(windowed_counts, OutputMode::Append, GUIDE, None, fresh())
        .await
        .unwrap();
    assert_eq!(
        run.non_empty(),
        vec![
            vec![
                "12:00-12:10 cat 1",
                "12:00-12:10 dog 1",
                "12:00-12:10 owl 1"
            ],
            vec!["12:10-12:20 cat 1", "12:10-12:20 dog 1"],
        ]
    );
    assert_eq!(run.dropped(), 1);
    // Each window closed in a batch without new data, right after the watermark moved.
    let closing: Vec<u64> = run
        .progress
        .iter()
        .filter(|p| p.state_operators[0].num_rows_removed > 0)
        .map(|p| p.num_input_rows)
        .collect();
    assert_eq!(closing, vec![0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_mode_emits_everything_ordered_and_keeps_late_rows() {
    let build = |f: StreamFrame| windowed_counts(f)?.order_by([col("window"), col("word")]);
    let run = run(build, OutputMode::Complete, GUIDE, None, fresh())
        .await
        .unwrap();
    let outputs = run.non_empty();
    assert_eq!(outputs.len(), GUIDE.len(), "one result per data batch");
    assert_eq!(
        outputs.last().unwrap(),
        &vec![
            "12:00-12:10 cat 1",
            "12:00-12:10 dog 1",
            "12:00-12:10 donkey 1",
            "12:00-12:10 owl 1",
            "12:10-12:20 cat 1",
            "12:10-12:20 dog 1",
            "12:20-12:30 owl 1",
            "12:30-12:40 fox 1",
        ]
    );
    assert_eq!(run.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_count_a_row_in_every_window_containing_it() {
    let build = |f: StreamFrame| {
        f.group_by([sliding_window(col("ts"), "10 minutes", "5 minutes")])
            .agg([count(lit(1)).alias("n"), max(col("word")).alias("last")])?
            .order_by([col("window")])
    };
    let batches: &[&[(&str, i64)]] = &[&[("a", 7), ("b", 10)], &[("c", 3)]];
    let run = run(build, OutputMode::Complete, batches, None, fresh())
        .await
        .unwrap();
    assert_eq!(
        run.non_empty(),
        vec![
            vec!["12:00-12:10 1 a", "12:05-12:15 2 b", "12:10-12:20 1 b"],
            vec![
                "11:55-12:05 1 c",
                "12:00-12:10 2 c",
                "12:05-12:15 2 b",
                "12:10-12:20 1 b",
            ],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_merge_when_a_row_bridges_them() {
    let build = |f: StreamFrame| {
        f.group_by([session_window(col("ts"), "5 minutes"), col("word")])
            .count()?
            .order_by([col("word"), col("session_window")])
    };
    let batches: &[&[(&str, i64)]] = &[
        &[("a", 0), ("a", 3), ("b", 1), ("a", 12)],
        &[("a", 9)],
        &[("a", 6)],
    ];
    let run = run(build, OutputMode::Complete, batches, None, fresh())
        .await
        .unwrap();
    assert_eq!(
        run.non_empty(),
        vec![
            vec!["12:00-12:08 a 2", "12:12-12:17 a 1", "12:01-12:06 b 1"],
            vec!["12:00-12:08 a 2", "12:09-12:17 a 2", "12:01-12:06 b 1"],
            vec!["12:00-12:17 a 5", "12:01-12:06 b 1"],
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_close_in_append_mode() {
    let build = |f: StreamFrame| {
        f.with_watermark("ts", "0 seconds")?
            .group_by([session_window(col("ts"), "5 minutes"), col("word")])
            .count()
    };
    let batches: &[&[(&str, i64)]] = &[&[("a", 0), ("a", 3)], &[("b", 20)], &[("a", 1)]];
    let run = run(build, OutputMode::Append, batches, None, fresh())
        .await
        .unwrap();
    assert_eq!(run.non_empty(), vec![vec!["12:00-12:08 a 2"]]);
    assert_eq!(
        run.dropped(),
        1,
        "a at 12:01 ends 12:06, behind the 12:20 watermark"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_duplicates_without_and_within_a_watermark() {
    let plain = |f: StreamFrame| f.drop_duplicates(&["word"]);
    let batches: &[&[(&str, i64)]] = &[
        &[("dog", 0), ("cat", 1), ("dog", 2)],
        &[("cat", 3), ("owl", 4)],
    ];
    let run1 = run(plain, OutputMode::Append, batches, None, fresh())
        .await
        .unwrap();
    assert_eq!(
        run1.non_empty(),
        vec![vec!["dog 12:00", "cat 12:01"], vec!["owl 12:04"]]
    );
    assert_eq!(
        run1.progress.last().unwrap().state_operators[0].num_rows_total,
        3
    );

    let within = |f: StreamFrame| {
        f.with_watermark("ts", "10 minutes")?
            .drop_duplicates_within_watermark(&["word"])
    };
    let batches: &[&[(&str, i64)]] = &[
        &[("dog", 0)],
        &[("dog", 5)],
        &[("fox", 30)],
        &[("dog", 25), ("cat", 19)],
    ];
    let run2 = run(within, OutputMode::Append, batches, None, fresh())
        .await
        .unwrap();
    // dog's key expired at 12:10 once the watermark reached 12:20; cat at 12:19 is late.
    assert_eq!(
        run2.non_empty(),
        vec![vec!["dog 12:00"], vec!["fox 12:30"], vec!["dog 12:25"]]
    );
    assert_eq!(run2.dropped(), 1);
    let last = run2.progress.last().unwrap();
    assert_eq!(
        last.state_operators[0].operator_name,
        "dedupeWithinWatermark"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_open_windows_equals_an_uninterrupted_run() {
    for mode in [OutputMode::Append, OutputMode::Update] {
        let straight = run(windowed_counts, mode, GUIDE, None, fresh())
            .await
            .unwrap();
        for cut in 1..GUIDE.len() {
            for crash in [false, true] {
                // Stop after `cut` batches, or crash after the state of the last batch was
                // written but before its commit; then restart from the checkpoint.
                let checkpoint = temp_dir();
                let outputs = fresh();
                run(
                    windowed_counts,
                    mode,
                    &GUIDE[..cut],
                    Some(checkpoint.path()),
                    Arc::clone(&outputs),
                )
                .await
                .unwrap();
                let resumed = run_resumed(mode, cut, checkpoint.path(), outputs, crash).await;
                assert_eq!(
                    resumed,
                    straight.outputs,
                    "{mode:?}, {} after {cut} batches",
                    if crash { "crashed" } else { "stopped" }
                );
                // The last batch ran with the watermark the fox moved to, logged in its
                // offsets and restored from there.
                let last = straight.outputs.keys().max().unwrap();
                let offsets =
                    std::fs::read_to_string(checkpoint.path().join(format!("offsets/{last}")))
                        .unwrap();
                let wm = BASE_MS + 25 * 60_000;
                assert!(
                    offsets.contains(&format!("\"batchWatermarkMs\":{wm}")),
                    "{offsets}"
                );
            }
        }
    }
}

/// Resumes a query over the same stream (all `GUIDE` rows; the checkpoint says where to
/// continue), optionally after removing the last commit as a crash before it would.
async fn run_resumed(
    mode: OutputMode,
    already_fed: usize,
    checkpoint: &std::path::Path,
    outputs: Outputs,
    drop_last_commit: bool,
) -> BTreeMap<u64, Vec<String>> {
    if drop_last_commit {
        let last = std::fs::read_dir(checkpoint.join("commits"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        std::fs::remove_file(checkpoint.join("commits").join(last.to_string())).unwrap();
        assert!(
            checkpoint
                .join(format!("state/0/0/{}.delta", last + 1))
                .exists()
        );
    }
    run_from(
        windowed_counts,
        mode,
        GUIDE,
        already_fed,
        Some(checkpoint),
        outputs,
    )
    .await
    .unwrap()
    .outputs
}

/// A session whose stateful operators split new state over `partitions` key partitions.
fn session_with_partitions(partitions: usize) -> StreamSession {
    use flumen::datafusion::prelude::SessionConfig;
    StreamSession::with_config(SessionConfig::new().with_target_partitions(partitions))
}

/// 60 rows over 11 words and about an hour, out of order by up to 8 minutes, every 17th row
/// 20 minutes late; in 6 batches.
fn many_words() -> Vec<Vec<(String, i64)>> {
    (0..60i64)
        .map(|i| {
            let late = if i % 17 == 16 { 20 } else { 0 };
            (format!("w{}", (i * 7) % 11), i + (i * 7) % 9 - late)
        })
        .collect::<Vec<_>>()
        .chunks(10)
        .map(<[_]>::to_vec)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_partitioned_state_emits_the_same_rows_in_the_same_order_for_any_partition_count() {
    let words = many_words();
    let words: Vec<Vec<(&str, i64)>> = words
        .iter()
        .map(|b| b.iter().map(|(w, m)| (w.as_str(), *m)).collect())
        .collect();
    let words: Vec<&[(&str, i64)]> = words.iter().map(Vec::as_slice).collect();
    let sessions = |f: StreamFrame| {
        f.with_watermark("ts", "10 minutes")?
            .group_by([session_window(col("ts"), "4 minutes"), col("word")])
            .count()
    };
    let sliding = |f: StreamFrame| {
        f.with_watermark("ts", "10 minutes")?
            .group_by([
                sliding_window(col("ts"), "10 minutes", "5 minutes"),
                col("word"),
            ])
            .agg([count(lit(1)).alias("n"), max(col("ts")).alias("last")])
    };
    let dedup = |f: StreamFrame| {
        f.with_watermark("ts", "10 minutes")?
            .drop_duplicates_within_watermark(&["word"])
    };
    type Build = fn(StreamFrame) -> flumen::Result<StreamFrame>;
    let cases: Vec<(&str, Build, OutputMode)> = vec![
        ("tumbling update", windowed_counts, OutputMode::Update),
        ("tumbling append", windowed_counts, OutputMode::Append),
        ("tumbling complete", windowed_counts, OutputMode::Complete),
        ("sliding update", sliding, OutputMode::Update),
        ("sliding append", sliding, OutputMode::Append),
        ("sessions append", sessions, OutputMode::Append),
        ("sessions complete", sessions, OutputMode::Complete),
        ("dedup", dedup, OutputMode::Append),
    ];
    for (name, build, mode) in cases {
        let one = run_in(
            session_with_partitions(1),
            build,
            mode,
            &words,
            0,
            None,
            fresh(),
        )
        .await
        .unwrap();
        assert!(
            one.outputs.values().map(Vec::len).sum::<usize>() >= 10,
            "{name}: {:?}",
            one.outputs
        );
        // Complete mode keeps every group, so nothing is late for it (Spark's rule).
        assert_eq!(
            one.dropped() > 0,
            mode != OutputMode::Complete,
            "{name}: late rows"
        );
        for partitions in [2, 5] {
            let split = run_in(
                session_with_partitions(partitions),
                build,
                mode,
                &words,
                0,
                None,
                fresh(),
            )
            .await
            .unwrap();
            assert_eq!(
                split.outputs, one.outputs,
                "{name} in {partitions} partitions"
            );
            assert_eq!(split.dropped(), one.dropped(), "{name}");
            let last = &split.progress.last().unwrap().state_operators[0];
            let last_one = &one.progress.last().unwrap().state_operators[0];
            assert_eq!(last.num_shuffle_partitions, partitions as u64, "{name}");
            assert_eq!(last.num_state_store_instances, partitions as u64, "{name}");
            assert_eq!(last.num_rows_total, last_one.num_rows_total, "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_keeps_its_state_partition_count_across_restarts() {
    let straight = run_in(
        session_with_partitions(1),
        windowed_counts,
        OutputMode::Update,
        GUIDE,
        0,
        None,
        fresh(),
    )
    .await
    .unwrap();
    let checkpoint = temp_dir();
    let outputs = fresh();
    run_in(
        session_with_partitions(3),
        windowed_counts,
        OutputMode::Update,
        &GUIDE[..3],
        0,
        Some(checkpoint.path()),
        Arc::clone(&outputs),
    )
    .await
    .unwrap();
    let resumed = run_in(
        session_with_partitions(1),
        windowed_counts,
        OutputMode::Update,
        GUIDE,
        3,
        Some(checkpoint.path()),
        outputs,
    )
    .await
    .unwrap();
    assert_eq!(resumed.outputs, straight.outputs);
    let last = resumed.progress.last().unwrap();
    assert_eq!(last.state_operators[0].num_shuffle_partitions, 3);
    let offsets = std::fs::read_to_string(checkpoint.path().join("offsets/4")).unwrap();
    assert!(
        offsets.contains("\"flumen.state.partitions\":\"3\""),
        "{offsets}"
    );
    for partition in 0..3 {
        assert!(
            checkpoint
                .path()
                .join(format!("state/0/{partition}/5.delta"))
                .exists()
        );
    }
    assert!(!checkpoint.path().join("state/0/3").exists());
}

/// A checkpoint written before state was partitioned: `state/0/<version>.delta`, and offset
/// logs without `flumen.state.partitions`. Made here from a one-partition checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_from_before_partitioned_state_resumes_with_one_partition() {
    let straight = run(windowed_counts, OutputMode::Append, GUIDE, None, fresh())
        .await
        .unwrap();
    let checkpoint = temp_dir();
    let outputs = fresh();
    run_in(
        session_with_partitions(1),
        windowed_counts,
        OutputMode::Append,
        &GUIDE[..3],
        0,
        Some(checkpoint.path()),
        Arc::clone(&outputs),
    )
    .await
    .unwrap();
    let state = checkpoint.path().join("state/0");
    for entry in std::fs::read_dir(state.join("0")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::rename(&path, state.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::remove_dir(state.join("0")).unwrap();
    for entry in std::fs::read_dir(checkpoint.path().join("offsets")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let legacy = text.replace(",\"flumen.state.partitions\":\"1\"", "");
        assert_ne!(text, legacy);
        std::fs::write(&path, legacy).unwrap();
    }
    let resumed = run_in(
        session_with_partitions(4),
        windowed_counts,
        OutputMode::Append,
        GUIDE,
        3,
        Some(checkpoint.path()),
        outputs,
    )
    .await
    .unwrap();
    assert_eq!(resumed.outputs, straight.outputs);
    assert_eq!(
        resumed.progress.last().unwrap().state_operators[0].num_shuffle_partitions,
        1
    );
    assert!(state.join("5.delta").exists());
    assert!(!state.join("0").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_state_across_batches_equals_one_batch_aggregate() {
    use flumen::datafusion::functions_aggregate::expr_fn::{approx_distinct, median, stddev};
    let aggregates = || {
        vec![
            count(lit(1)).alias("n"),
            sum(col("len")).alias("total"),
            avg(col("len")).alias("mean"),
            min(col("word")).alias("first"),
            max(col("ts")).alias("latest"),
            // Summation order differs in the last bits; compare nine decimals.
            cast(stddev(col("len")), DataType::Decimal128(20, 9)).alias("sd"),
            median(col("len")).alias("mid"),
            approx_distinct(col("word")).alias("words"),
        ]
    };
    let with_len = |f: StreamFrame| {
        f.with_column(
            "len",
            datafusion::functions::unicode::expr_fn::character_length(col("word")),
        )
    };
    // 60 rows over 7 keys, fed in 6 batches.
    let rows: Vec<(String, i64)> = (0..60)
        .map(|i| (format!("w{}", (i * 7) % 13), (i % 7) as i64))
        .collect();
    let batches: Vec<Vec<(&str, i64)>> = rows
        .chunks(10)
        .map(|c| c.iter().map(|(w, m)| (w.as_str(), *m)).collect())
        .collect();
    let batch_refs: Vec<&[(&str, i64)]> = batches.iter().map(|b| b.as_slice()).collect();
    let build = |f: StreamFrame| {
        with_len(f)?
            .with_column("key", col("ts"))?
            .group_by([col("key")])
            .agg(aggregates())?
            .order_by([col("key")])
    };
    let streamed = run(build, OutputMode::Complete, &batch_refs, None, fresh())
        .await
        .unwrap();

    let session = StreamSession::new();
    let all: Vec<(&str, i64)> = rows.iter().map(|(w, m)| (w.as_str(), *m)).collect();
    let at_once = with_len(session.frame(session.create_data_frame(events(&all)).unwrap()))
        .unwrap()
        .with_column("key", col("ts"))
        .unwrap()
        .group_by([col("key")])
        .agg(aggregates())
        .unwrap()
        .order_by([col("key")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(streamed.non_empty().last().unwrap(), &render(&at_once));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_charged_to_the_sessions_memory_pool() {
    use flumen::datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use flumen::datafusion::prelude::SessionConfig;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(64 * 1024, 1.0)
        .build_arc()
        .unwrap();
    let session = StreamSession::with_config_and_runtime(SessionConfig::new(), runtime);
    let input = Arc::new(MemoryStream::new("events", schema()));
    let words: Vec<String> = (0..5000).map(|i| format!("word-{i}")).collect();
    let rows: Vec<(&str, i64)> = words.iter().map(|w| (w.as_str(), 0)).collect();
    input.add_batch(events(&rows)).unwrap();
    let query = session
        .stream(input)
        .unwrap()
        .group_by([col("word")])
        .count()
        .unwrap()
        .write_stream()
        .output_mode(OutputMode::Update)
        .memory()
        .query_name("too_big")
        .start()
        .await
        .unwrap();
    let error = query.process_all_available().await.unwrap_err().to_string();
    assert!(
        error.contains("the aggregation state") && error.contains("5000 keys"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_combinations_fail_at_start_with_sparks_messages() {
    let session = StreamSession::new();
    let stream = || {
        session
            .stream(Arc::new(MemoryStream::new("e", schema())))
            .unwrap()
    };
    let message = |frame: StreamFrame, mode: OutputMode| {
        let writer = frame
            .write_stream()
            .output_mode(mode)
            .memory()
            .query_name("x");
        async move { writer.start().await.unwrap_err().to_string() }
    };
    let counts = stream().group_by([col("word")]).count().unwrap();
    assert!(
        message(counts.clone(), OutputMode::Append)
            .await
            .contains("Append output mode not supported when there are streaming aggregations on streaming DataFrames/DataSets without watermark")
    );
    assert!(
        message(counts.order_by([col("word")]).unwrap(), OutputMode::Update)
            .await
            .contains("Sorting is not supported on streaming DataFrames/Datasets, unless it is on aggregated DataFrame/Dataset in Complete output mode")
    );
    assert!(
        message(
            stream().drop_duplicates(&["word"]).unwrap(),
            OutputMode::Complete
        )
        .await
        .contains("Complete output mode not supported when there are no streaming aggregations")
    );
    let sessions = stream()
        .group_by([session_window(col("ts"), "5 minutes"), col("word")])
        .count()
        .unwrap();
    assert!(message(sessions, OutputMode::Update).await.contains(
        "Update output mode not supported for session window on streaming DataFrames/DataSets"
    ));
    let distinct = stream()
        .group_by([col("word")])
        .agg([datafusion::functions_aggregate::expr_fn::count_distinct(
            col("ts"),
        )])
        .unwrap();
    assert!(
        message(distinct, OutputMode::Update)
            .await
            .contains("Distinct aggregations are not supported on streaming DataFrames/Datasets")
    );
    assert!(
        message(stream().drop_duplicates_within_watermark(&["word"]).unwrap(), OutputMode::Append)
            .await
            .contains("dropDuplicatesWithinWatermark is not supported on streaming DataFrames/DataSets without watermark")
    );
    let twice = stream()
        .drop_duplicates(&["word"])
        .unwrap()
        .group_by([col("word")])
        .count()
        .unwrap();
    assert!(message(twice, OutputMode::Update).await.contains(
        "Multiple stateful operators in one query are supported only in Append output mode"
    ));
    let counts_of_counts = stream()
        .group_by([col("word")])
        .count()
        .unwrap()
        .group_by([col("count")])
        .agg([count(lit(1)).alias("words")])
        .unwrap();
    assert!(
        message(counts_of_counts, OutputMode::Append)
            .await
            .contains("Append output mode not supported when there are streaming aggregations on streaming DataFrames/DataSets without watermark")
    );
    // A watermark declared over a stateful operator's output (Spark 3.4+ refuses it too).
    let redefined = stream()
        .drop_duplicates(&["word", "ts"])
        .unwrap()
        .with_watermark("ts", "1 minute")
        .unwrap()
        .group_by([window(col("ts"), "10 minutes")])
        .count()
        .unwrap();
    let err = message(redefined, OutputMode::Append).await;
    assert!(err.contains("Redefining watermark is disallowed"), "{err}");
    // An aggregation's column named like the watermark's carries no event time: only its
    // window key does, so a count over `max(ts)` has no watermark.
    let latest = stream()
        .with_watermark("ts", "10 minutes")
        .unwrap()
        .group_by([window(col("ts"), "10 minutes")])
        .agg([max(col("ts")).alias("ts")])
        .unwrap()
        .group_by([window(col("ts"), "30 minutes")])
        .count()
        .unwrap();
    let err = message(latest, OutputMode::Append).await;
    assert!(
        err.contains("Append output mode not supported when there are streaming aggregations on streaming DataFrames/DataSets without watermark"),
        "{err}"
    );
    let err = stream()
        .with_watermark("word", "1 minute")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "Event time must be defined on a window or a timestamp, but word is of type Utf8"
        ),
        "{err}"
    );
}

/// [`GUIDE`] with events sent twice (an at-least-once producer's retries): `dog` 12:07 again
/// in the second batch, `owl` 12:21 again in the fourth.
const GUIDE_WITH_DUPLICATES: &[&[(&str, i64)]] = &[
    &[("dog", 7), ("owl", 8)],
    &[("dog", 14), ("cat", 9), ("dog", 7)],
    &[("owl", 21)],
    &[("donkey", 5), ("cat", 16), ("owl", 21)],
    &[("fox", 35)],
];

/// Deduplicates events (same word, same time), then counts per window and word.
fn deduplicated_counts(frame: StreamFrame) -> flumen::Result<StreamFrame> {
    frame
        .with_watermark("ts", "10 minutes")?
        .drop_duplicates(&["word", "ts"])?
        .group_by([window(col("ts"), "10 minutes"), col("word")])
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deduplication_feeding_a_windowed_count_counts_each_event_once() {
    let run = run(
        deduplicated_counts,
        OutputMode::Append,
        GUIDE_WITH_DUPLICATES,
        None,
        fresh(),
    )
    .await
    .unwrap();
    // The same windows and counts as the guide without its duplicates.
    assert_eq!(
        run.non_empty(),
        vec![
            vec![
                "12:00-12:10 cat 1",
                "12:00-12:10 dog 1",
                "12:00-12:10 owl 1"
            ],
            vec!["12:10-12:20 cat 1", "12:10-12:20 dog 1"],
        ]
    );
    let last = run.progress.last().unwrap();
    assert_eq!(operator_names(last), ["stateStoreSave", "dedupe"]);
    // donkey is dropped by the deduplication, the first operator to see it.
    assert_eq!(dropped_per_operator(&run.progress, 2), [0, 1]);
}

/// Stops `build`'s append-mode query after each prefix of `batches` and restarts it on the
/// same checkpoint: every restart gives the uninterrupted run's batches; `state_dirs` of the
/// checkpoint must exist at the stop.
async fn assert_restarts_anywhere_equal_a_straight_run(
    build: fn(StreamFrame) -> flumen::Result<StreamFrame>,
    batches: &[&[(&str, i64)]],
    state_dirs: &[&str],
) {
    let straight = run(build, OutputMode::Append, batches, None, fresh())
        .await
        .unwrap();
    for cut in 1..batches.len() {
        let checkpoint = temp_dir();
        let outputs = fresh();
        run(
            build,
            OutputMode::Append,
            &batches[..cut],
            Some(checkpoint.path()),
            Arc::clone(&outputs),
        )
        .await
        .unwrap();
        for dir in state_dirs {
            assert!(checkpoint.path().join(dir).is_dir(), "{dir}");
        }
        let resumed = run_from(
            build,
            OutputMode::Append,
            batches,
            cut,
            Some(checkpoint.path()),
            outputs,
        )
        .await
        .unwrap();
        assert_eq!(
            resumed.outputs, straight.outputs,
            "restarted after {cut} batches"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_query_restarted_anywhere_equals_an_uninterrupted_run() {
    // Both operators keep their state: state/0 the count, state/1 the seen events.
    assert_restarts_anywhere_equal_a_straight_run(
        deduplicated_counts,
        GUIDE_WITH_DUPLICATES,
        &["state/0", "state/1"],
    )
    .await;
}

/// The guide's stream and two more events that move the watermark past 12:30 and 13:00.
const GUIDE_LONGER: &[&[(&str, i64)]] = &[
    &[("dog", 7), ("owl", 8)],
    &[("dog", 14), ("cat", 9)],
    &[("owl", 21)],
    &[("donkey", 5), ("cat", 16)],
    &[("fox", 35)],
    &[("emu", 50)],
    &[("gnu", 75)],
];

/// Spark 3.4+'s chained windows: the 10-minute counts per word, summed per half hour of
/// `window_time` (each 10-minute window's last microsecond).
fn half_hour_totals(frame: StreamFrame) -> flumen::Result<StreamFrame> {
    windowed_counts(frame)?
        .group_by([window(window_time(col("window")), "30 minutes")])
        .agg([sum(col("count")).alias("events")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregation_over_an_aggregations_windows_closes_each_half_hour_once() {
    let run = run(
        half_hour_totals,
        OutputMode::Append,
        GUIDE_LONGER,
        None,
        fresh(),
    )
    .await
    .unwrap();
    // The 10-minute windows reach the half-hour sums as the watermark closes them; a half
    // hour closes in the batch whose watermark passes its end (12:40, then 13:05).
    assert_eq!(
        run.non_empty(),
        vec![vec!["12:00-12:30 6"], vec!["12:30-13:00 2"]]
    );
    let last = run.progress.last().unwrap();
    assert_eq!(operator_names(last), ["stateStoreSave", "stateStoreSave"]);
    // donkey is late for the 10-minute counts; no window they emit is late for the sums,
    // although each is behind the watermark that closed it.
    assert_eq!(dropped_per_operator(&run.progress, 2), [0, 1]);
    // Grouping by the window column itself (Spark's `window(window, ..)`) is the same query.
    let by_window = run_in(
        StreamSession::new(),
        |frame| {
            windowed_counts(frame)?
                .group_by([window(col("window"), "30 minutes")])
                .agg([sum(col("count")).alias("events")])
        },
        OutputMode::Append,
        GUIDE_LONGER,
        0,
        None,
        fresh(),
    )
    .await
    .unwrap();
    assert_eq!(by_window.non_empty(), run.non_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_windows_restarted_anywhere_equal_an_uninterrupted_run() {
    assert_restarts_anywhere_equal_a_straight_run(
        half_hour_totals,
        GUIDE_LONGER,
        &["state/0", "state/1"],
    )
    .await;
}
