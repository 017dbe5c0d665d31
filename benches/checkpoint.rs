//! (e) Checkpoint cost: the engine's offset-log and commit-log writes per batch against a raw
//! write + fsync + rename (+ directory fsync) of the same bytes; and the throughput of the
//! windowed query with its checkpoint on disk against the same on tmpfs, where fsync is free.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use flumen::checkpoint::{Checkpoint, CommitEntry, OffsetEntry, OffsetMetadata};

use crate::measure::{Figure, Sample, median, time, time_async};

fn raw_write(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::File::create(&tmp).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
    fs::rename(&tmp, dir.join(name)).expect("rename");
    fs::File::open(dir)
        .expect("dir")
        .sync_all()
        .expect("dir fsync");
}

/// Runs (e)'s per-checkpoint part: `count` batches' offsets and commits.
pub fn per_checkpoint(count: u64, reps: usize, scratch: &Path) -> Vec<Figure> {
    let entry = |n: u64| OffsetEntry {
        metadata: OffsetMetadata {
            batch_watermark_ms: 0,
            batch_timestamp_ms: 1_767_225_600_000 + n as i64,
            conf: BTreeMap::from([(
                "flumen.source".to_string(),
                "Subscribe[raw-titanic]".to_string(),
            )]),
        },
        offsets: vec![serde_json::json!({"raw-titanic": {"0": n * 100, "1": n * 100}})],
    };
    let mut samples: [Vec<Sample>; 2] = Default::default();
    for rep in 0..reps {
        let root = scratch.join(format!("ckpt-{rep}"));
        let checkpoint = Checkpoint::open(&root).expect("checkpoint");
        let (_, s) = time(|| {
            for n in 0..count {
                checkpoint.write_offsets(n, &entry(n)).expect("offsets");
                checkpoint
                    .write_commit(
                        n,
                        &CommitEntry {
                            next_batch_watermark_ms: 0,
                        },
                    )
                    .expect("commit");
            }
        });
        samples[0].push(s);
        let offsets = fs::read(root.join("offsets/0")).expect("offsets bytes");
        let commit = fs::read(root.join("commits/0")).expect("commit bytes");
        let raw = scratch.join(format!("raw-{rep}"));
        fs::create_dir_all(raw.join("offsets")).expect("dir");
        fs::create_dir_all(raw.join("commits")).expect("dir");
        let (_, s) = time(|| {
            for n in 0..count {
                raw_write(&raw.join("offsets"), &n.to_string(), &offsets);
                raw_write(&raw.join("commits"), &n.to_string(), &commit);
            }
        });
        samples[1].push(s);
    }
    let [e, raw] = samples.map(|s| median(&s));
    let ms = |s: Sample| s.wall.as_secs_f64() * 1000.0 / count as f64;
    vec![
        Figure {
            name: "e: checkpoint per batch vs raw fsync".into(),
            engine: "offsets/N + commits/N (atomic)".into(),
            baseline: "write + fsync + rename + dir fsync".into(),
            ratio: e.wall.as_secs_f64() / raw.wall.as_secs_f64(),
            rows: count,
            rows_per_s: 0.0,
            cpu_s: e.cpu.as_secs_f64(),
            notes: format!(
                "engine {:.3} ms per batch, raw {:.3} ms per batch, on {}",
                ms(e),
                ms(raw),
                scratch.display()
            ),
            target: String::new(),
            met: None,
        }
        .at_most(1.2),
    ]
}

/// Runs (e)'s throughput part: the windowed count (K = 10,000, update mode) in micro-batches
/// of `per_trigger` rows, checkpointed on disk and on tmpfs.
pub async fn throughput(
    rows: usize,
    per_trigger: u64,
    reps: usize,
    disk: &Path,
    tmpfs: &Path,
) -> Vec<Figure> {
    let batches = crate::window::events(rows, 10_000);
    let mut samples: [Vec<Sample>; 2] = Default::default();
    for rep in 0..reps {
        let (_, s) = time_async(crate::window::run_engine(
            &batches,
            per_trigger,
            &disk.join(format!("thr-{rep}")),
        ))
        .await;
        samples[0].push(s);
        let (_, s) = time_async(crate::window::run_engine(
            &batches,
            per_trigger,
            &tmpfs.join(format!("thr-{rep}")),
        ))
        .await;
        samples[1].push(s);
    }
    let [on_disk, on_tmpfs] = samples.map(|s| median(&s));
    vec![
        Figure::rate(
            "e: checkpoint every batch (disk vs tmpfs)",
            &format!("window count, {per_trigger}-row batches, disk"),
            "same, checkpoint on tmpfs (fsync free)",
            rows as u64,
            on_disk,
            on_tmpfs,
        )
        .at_least(0.85)
        .note(format!("{} batches", rows.div_ceil(per_trigger as usize))),
    ]
}
