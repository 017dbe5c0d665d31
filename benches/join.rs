//! (j) Stream-stream join: the engine's symmetric hash join (impressions joined with the click
//! that follows each within a second, watermarks on both sides, state evicted as the
//! watermark moves) against a hand-written hash join over the same batches, and the bytes of
//! state per buffered row.

use crate::pipeline::run_counting;
use std::sync::Arc;

use flumen::datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMillisecondArray};
use flumen::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use flumen::datafusion::common::HashMap;
use flumen::datafusion::logical_expr::JoinType;
use flumen::prelude::*;

use crate::measure::{Figure, Sample, median, time, time_async};

/// 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;
/// Rows per input batch.
const BATCH: usize = 8_192;
/// A click comes this long after its impression.
const CLICK_DELAY_MS: i64 = 500;

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

/// `rows` impressions (ad `i` at `i` ms) or their clicks (`CLICK_DELAY_MS` later).
fn events(rows: usize, clicks: bool) -> Vec<RecordBatch> {
    let (s, delay) = if clicks {
        (schema("clickAdId", "clickTime"), CLICK_DELAY_MS)
    } else {
        (schema("impressionAdId", "impressionTime"), 0)
    };
    (0..rows)
        .step_by(BATCH)
        .map(|start| {
            let end = (start + BATCH).min(rows);
            let ids = Int64Array::from_iter_values((start..end).map(|i| i as i64));
            let ts = TimestampMillisecondArray::from_iter_values(
                (start..end).map(|i| BASE_MS + i as i64 + delay),
            );
            RecordBatch::try_new(Arc::clone(&s), vec![Arc::new(ids), Arc::new(ts)]).expect("batch")
        })
        .collect()
}

/// The hand-written join: per batch pair, buffer both sides in hash maps and probe each new
/// row against the other side's buffer, checking the time bound; no eviction. Returns the
/// pairs found.
fn hash_join(impressions: &[RecordBatch], clicks: &[RecordBatch]) -> u64 {
    let column = |b: &RecordBatch, i: usize| -> Vec<i64> {
        match i {
            0 => b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("ids")
                .values()
                .to_vec(),
            _ => b
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .expect("times")
                .values()
                .to_vec(),
        }
    };
    let mut left: HashMap<i64, Vec<i64>> = HashMap::default();
    let mut right: HashMap<i64, Vec<i64>> = HashMap::default();
    let mut pairs = 0u64;
    let within = |l: i64, r: i64| r >= l && r <= l + 1_000;
    for (l, r) in impressions.iter().zip(clicks) {
        let (ids, times) = (column(l, 0), column(l, 1));
        for (id, t) in ids.iter().zip(&times) {
            if let Some(found) = right.get(id) {
                pairs += found.iter().filter(|&&r| within(*t, r)).count() as u64;
            }
            left.entry(*id).or_default().push(*t);
        }
        let (ids, times) = (column(r, 0), column(r, 1));
        for (id, t) in ids.iter().zip(&times) {
            if let Some(found) = left.get(id) {
                pairs += found.iter().filter(|&&l| within(l, *t)).count() as u64;
            }
            right.entry(*id).or_default().push(*t);
        }
    }
    pairs
}

/// The engine: two memory streams of the batches, a batch of each per trigger. Returns (pairs
/// emitted, peak state bytes, buffered rows at that peak).
async fn engine(impressions: &[RecordBatch], clicks: &[RecordBatch]) -> (u64, u64, u64) {
    let session = StreamSession::new();
    let left = Arc::new(
        MemoryStream::new("impressions", schema("impressionAdId", "impressionTime"))
            .with_max_rows_per_trigger(BATCH as u64),
    );
    let right = Arc::new(
        MemoryStream::new("clicks", schema("clickAdId", "clickTime"))
            .with_max_rows_per_trigger(BATCH as u64),
    );
    for b in impressions {
        left.add_batch(b.clone()).expect("add");
    }
    for b in clicks {
        right.add_batch(b.clone()).expect("add");
    }
    let checkpoint = tempfile::tempdir().expect("checkpoint directory");
    let impressions = session
        .stream(left)
        .expect("stream")
        .with_watermark("impressionTime", "1 second")
        .expect("watermark");
    let clicks = session
        .stream(right)
        .expect("stream")
        .with_watermark("clickTime", "1 second")
        .expect("watermark");
    let writer = impressions
        .join_expr(
            clicks.dataframe().clone(),
            JoinType::Inner,
            "clickAdId = impressionAdId AND clickTime BETWEEN impressionTime AND impressionTime + INTERVAL 1 SECOND",
        )
        .expect("join")
        .write_stream()
        .checkpoint_location(checkpoint.path());
    let (emitted, progress) = run_counting(writer).await;
    let state = |p: &StreamingQueryProgress| p.state_operators.first().cloned().unwrap_or_default();
    let peak = progress
        .iter()
        .map(state)
        .max_by_key(|s| s.memory_used_bytes)
        .unwrap_or_default();
    (emitted, peak.memory_used_bytes, peak.num_rows_total)
}

/// Runs (j) over `rows` impressions and as many clicks.
pub async fn run(rows: usize, reps: usize) -> Vec<Figure> {
    let impressions = events(rows, false);
    let clicks = events(rows, true);
    let mut samples: [Vec<Sample>; 2] = Default::default();
    let (mut peak, mut buffered) = (0, 0);
    for _ in 0..reps {
        let ((pairs, p, b), s) = time_async(engine(&impressions, &clicks)).await;
        samples[0].push(s);
        let (expected, s) = time(|| hash_join(&impressions, &clicks));
        samples[1].push(s);
        assert_eq!(
            pairs, expected,
            "the engine and the hand-written join agree"
        );
        (peak, buffered) = (p, b);
    }
    let [e, b] = samples.map(|s| median(&s));
    let per_row = peak as f64 / buffered.max(1) as f64;
    vec![
        Figure::rate(
            "j: stream-stream inner join",
            "join_expr with watermarks, 8192 rows per side per trigger",
            "hand-written HashMap join, no state eviction or checkpoint",
            2 * rows as u64,
            e,
            b,
        )
        .note(format!(
            "state {per_row:.1} B per buffered row at the peak ({peak} B for {buffered} rows)"
        )),
    ]
}
