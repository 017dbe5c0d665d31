//! (c) Event-time tumbling-window count per key, and (f) the bytes of state per window key:
//! the engine's streaming aggregation against a hand-written hash-map loop and DataFusion's
//! batch aggregate over the same Arrow batches.

use crate::pipeline::run_counting;
use std::sync::Arc;

use flumen::datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen::datafusion::common::HashMap;
use flumen::datafusion::datasource::MemTable;
use flumen::prelude::*;

use crate::alloc::allocated_bytes;
use crate::measure::{Figure, Sample, median, time, time_async};

/// Window length.
const WINDOW_MS: i64 = 10_000;
/// 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;
/// Rows per input batch (pre-decoded Arrow, as a source would hand them over).
const BATCH: usize = 8_192;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// `rows` events over `keys` keys, one millisecond apart (so 10,000 per window), keys spread
/// by a multiplicative hash so consecutive rows hit different keys.
pub fn events(rows: usize, keys: u64) -> Vec<RecordBatch> {
    (0..rows)
        .step_by(BATCH)
        .map(|start| {
            let end = (start + BATCH).min(rows);
            let key: Int64Array = (start..end)
                .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys) as i64)
                .collect();
            let ts = TimestampMillisecondArray::from_iter_values(
                (start..end).map(|i| BASE_MS + i as i64),
            );
            RecordBatch::try_new(schema(), vec![Arc::new(key), Arc::new(ts)]).expect("batch")
        })
        .collect()
}

/// The hand-written limit: a hash map of (key, window) → count.
fn hash_map_loop(batches: &[RecordBatch]) -> usize {
    let mut counts: HashMap<(i64, i64), u64> = HashMap::default();
    for b in batches {
        let keys = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("keys");
        let ts = b
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts");
        for (k, t) in keys.values().iter().zip(ts.values()) {
            *counts.entry((*k, t - t.rem_euclid(WINDOW_MS))).or_default() += 1;
        }
    }
    counts.len()
}

/// DataFusion's batch aggregate over the same batches.
async fn datafusion_batch(batches: &[RecordBatch]) -> usize {
    let session = StreamSession::new();
    let table = MemTable::try_new(schema(), vec![batches.to_vec()]).expect("table");
    session
        .context()
        .register_table("events", Arc::new(table))
        .expect("register");
    let out = session
        .sql("SELECT key, date_bin(INTERVAL '10 seconds', ts) AS w, count(*) AS n FROM events GROUP BY key, w")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("collect");
    out.iter().map(RecordBatch::num_rows).sum()
}

/// The engine: a stream of the same batches, `with_watermark` + `group_by(window, key).count()`
/// in append mode, micro-batches of `per_trigger` rows. Returns (groups emitted, peak state
/// bytes, state bytes after the last window closed, peak state keys).
async fn engine(
    batches: &[RecordBatch],
    per_trigger: u64,
    checkpoint: &std::path::Path,
    mode: OutputMode,
) -> (u64, u64, u64, u64) {
    let session = StreamSession::new();
    let input =
        Arc::new(MemoryStream::new("events", schema()).with_max_rows_per_trigger(per_trigger));
    for b in batches {
        input.add_batch(b.clone()).expect("add");
    }
    let frame = session.stream(input).expect("stream");
    let frame = if mode == OutputMode::Append {
        frame.with_watermark("ts", "0 seconds").expect("watermark")
    } else {
        frame
    };
    let writer = frame
        .group_by([window(col("ts"), "10 seconds"), col("key")])
        .count()
        .expect("count")
        .write_stream()
        .output_mode(mode)
        .checkpoint_location(checkpoint);
    let (emitted, progress) = run_counting(writer).await;
    let state = |p: &StreamingQueryProgress| p.state_operators.first().cloned().unwrap_or_default();
    let peak = progress
        .iter()
        .map(|p| state(p).memory_used_bytes)
        .max()
        .unwrap_or(0);
    let peak_keys = progress
        .iter()
        .map(|p| state(p).num_rows_total)
        .max()
        .unwrap_or(0);
    let last = progress
        .last()
        .map(|p| state(p).memory_used_bytes)
        .unwrap_or(0);
    (emitted, peak, last, peak_keys)
}

/// The engine's windowed count in update mode (for (e)); returns the groups emitted.
pub async fn run_engine(
    batches: &[RecordBatch],
    per_trigger: u64,
    checkpoint: &std::path::Path,
) -> u64 {
    engine(batches, per_trigger, checkpoint, OutputMode::Update)
        .await
        .0
}

/// Runs (c) for each key cardinality.
pub async fn run(
    rows: usize,
    cardinalities: &[u64],
    reps: usize,
    scratch: &std::path::Path,
) -> Vec<Figure> {
    let mut figures = Vec::new();
    for &keys in cardinalities {
        let batches = events(rows, keys);
        let mut samples: [Vec<Sample>; 4] = Default::default();
        let mut groups = 0;
        for rep in 0..reps {
            let checkpoint = scratch.join(format!("window-{keys}-{rep}"));
            let ((emitted, ..), s) =
                time_async(engine(&batches, 131_072, &checkpoint, OutputMode::Update)).await;
            samples[0].push(s);
            // The same query over an empty stream: starting, planning and stopping it.
            let empty = scratch.join(format!("window-empty-{keys}-{rep}"));
            let (_, s) = time_async(engine(&[], 131_072, &empty, OutputMode::Update)).await;
            samples[3].push(s);
            let (n, s) = time(|| hash_map_loop(&batches));
            samples[1].push(s);
            let (m, s) = time_async(datafusion_batch(&batches)).await;
            samples[2].push(s);
            assert_eq!(n, m, "the baselines agree on the number of groups");
            groups = n as u64;
            // Update mode emits each group at least once.
            assert!(
                emitted >= groups,
                "engine emitted {emitted} of {groups} groups"
            );
        }
        let [total, l, b, fixed] = samples.map(|s| median(&s));
        // Processing only: the run minus the query's start and stop, measured alongside.
        let e = Sample {
            wall: total.wall.saturating_sub(fixed.wall),
            cpu: total.cpu.saturating_sub(fixed.cpu),
        };
        let name = format!("c: window count K={keys}");
        let engine_name = "group_by(window, key).count() update";
        let hash_target = if keys >= 1_000_000 { 0.3 } else { 0.5 };
        figures.push(
            Figure::rate(
                &format!("{name} vs hash map"),
                engine_name,
                "HashMap<(key, window), u64> loop",
                rows as u64,
                e,
                l,
            )
            .at_least(hash_target)
            .note(format!(
                "{groups} groups; engine time excludes query start/stop ({:.1} ms of {:.1} ms)",
                fixed.wall.as_secs_f64() * 1e3,
                total.wall.as_secs_f64() * 1e3
            )),
        );
        figures.push(
            Figure::rate(
                &format!("{name} vs DataFusion"),
                engine_name,
                "DataFusion batch GROUP BY",
                rows as u64,
                e,
                b,
            )
            .at_least(0.8),
        );
    }
    figures
}

/// Runs (f): state bytes per (key, window) group, against a plain hash map, and what is left
/// once the watermark has closed every window.
pub async fn state_bytes(keys: u64, scratch: &std::path::Path) -> Vec<Figure> {
    // One window: `keys` rows with distinct keys in the first 10 s, then one row far later
    // that moves the watermark past it.
    let rows = keys as usize;
    let key: Int64Array = (0..rows as i64).collect();
    let ts = TimestampMillisecondArray::from_iter_values(
        (0..rows).map(|i| BASE_MS + (i as i64 % WINDOW_MS)),
    );
    let mut batches =
        vec![RecordBatch::try_new(schema(), vec![Arc::new(key), Arc::new(ts)]).expect("batch")];
    let late_key: Int64Array = vec![-1i64].into();
    let late_ts: TimestampMillisecondArray = vec![BASE_MS + 3_600_000].into();
    batches.push(
        RecordBatch::try_new(schema(), vec![Arc::new(late_key), Arc::new(late_ts)]).expect("batch"),
    );

    let (_, peak, last, peak_keys) = engine(
        &batches,
        rows as u64,
        &scratch.join("state"),
        OutputMode::Append,
    )
    .await;
    let engine_per_key = peak as f64 / peak_keys.max(1) as f64;

    let before = allocated_bytes();
    let mut map: HashMap<(i64, i64), u64> = HashMap::default();
    for k in 0..rows as i64 {
        *map.entry((k, BASE_MS)).or_default() += 1;
    }
    let map_bytes = allocated_bytes().saturating_sub(before);
    std::hint::black_box(&map);
    let map_per_key = map_bytes as f64 / rows as f64;
    drop(map);

    let figure = Figure {
        name: format!("f: state bytes per key K={keys}"),
        engine: "stateful aggregation (count)".into(),
        baseline: "HashMap<(i64, i64), u64>".into(),
        ratio: engine_per_key / map_per_key.max(1e-9),
        rows: peak_keys,
        rows_per_s: 0.0,
        cpu_s: 0.0,
        notes: format!(
            "engine {engine_per_key:.1} B/key (memoryUsedBytes {peak} for {peak_keys} keys), hash map {map_per_key:.1} B/key; after the watermark closed every window: {last} B ({:.1}% of peak)",
            100.0 * last as f64 / peak.max(1) as f64
        ),
        target: String::new(),
        met: None,
    };
    let per_key = Figure {
        ratio: engine_per_key,
        ..figure.clone()
    }
    .target("≤ 64 B/key", engine_per_key <= 64.0);
    let vs_map = Figure {
        name: format!("f: state vs hash map K={keys}"),
        ..figure.clone()
    }
    .at_most(1.3);
    let freed = Figure {
        name: format!("f: state left after close K={keys}"),
        ratio: last as f64 / peak.max(1) as f64,
        notes: String::new(),
        ..figure
    }
    .at_most(0.1);
    vec![per_key, vs_map, freed]
}
