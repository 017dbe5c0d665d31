//! (g) The seed's Titanic enrichment against Spark, (h) its scaling from one core to two, and
//! its peak memory.
//!
//! The pipeline, as users write it: Titanic-shaped JSON records in a [`MemoryStream`] →
//! `from_json` → `data.*` → `is_adult` → left join of the class table → a `foreach_batch` sink
//! that does nothing, available-now, 200K rows per trigger. Spark runs the same enrichment in
//! `pyspark` (`local[*]`) over the same records, written by the suite as text files of 200K
//! lines, read as a stream with one file per trigger into the `noop` sink
//! (`benches/spark_pipeline.py`); its warm-up run is excluded. (h) runs this binary again as a
//! child pinned with `taskset` to one core and to two: the engine plans as many partitions per
//! micro-batch as it may use cores.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use flumen::datafusion::arrow::array::RecordBatch;
use flumen::datafusion::arrow::datatypes::SchemaRef;
use flumen::prelude::*;
use flumen_examples::titanic;

use crate::data::{titanic_messages, value_batches};
use crate::measure::{Figure, Sample, median, time_async};

/// Rows per trigger, as in the measurement.
pub const PER_TRIGGER: usize = 200_000;
/// Rows per record batch added to the memory stream (a Kafka fetch's size).
const CHUNK: usize = 10_000;

/// The records parsed as the examples write it: a memory stream of `batches` (at most
/// `per_trigger` rows per micro-batch when given), `from_json(value)` as `data`, then `data.*`.
pub fn parsed_values(
    session: &StreamSession,
    batches: &[RecordBatch],
    per_trigger: Option<u64>,
    schema: SchemaRef,
) -> StreamFrame {
    let mut input = MemoryStream::new("json", batches[0].schema());
    if let Some(rows) = per_trigger {
        input = input.with_max_rows_per_trigger(rows);
    }
    for b in batches {
        input.add_batch(b.clone()).expect("same schema");
    }
    session
        .stream(Arc::new(input))
        .expect("stream")
        .with_column("data", from_json(col("value"), schema).expect("schema"))
        .expect("from_json")
        .select_expr(["data.*"])
        .expect("data.*")
}

/// Runs `frame` available-now into a `foreach_batch` sink that does nothing (the engine still
/// computes every row); returns the rows the sink received.
pub async fn run_to_noop_sink(frame: StreamFrame) -> u64 {
    let checkpoint = tempfile::tempdir().expect("checkpoint directory");
    let query = frame
        .write_stream()
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(checkpoint.path())
        .foreach_batch(|_, _| async { Ok(()) })
        .start()
        .await
        .expect("start");
    query.await_termination(None).await.expect("run");
    query
        .recent_progress()
        .iter()
        .map(|p| p.sink.num_output_rows.max(0) as u64)
        .sum()
}

/// Runs `writer` into a `foreach_batch` sink that collects and counts every batch's rows, until
/// the query has processed everything available; returns the rows and the progress reports.
pub async fn run_counting(writer: DataStreamWriter) -> (u64, Vec<StreamingQueryProgress>) {
    let emitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&emitted);
    let query = writer
        .foreach_batch(move |df, _| {
            let counter = Arc::clone(&counter);
            async move {
                let rows: usize = df.collect().await?.iter().map(RecordBatch::num_rows).sum();
                counter.fetch_add(rows as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .start()
        .await
        .expect("start");
    query.process_all_available().await.expect("run");
    let progress = query.recent_progress();
    query.stop().await.expect("stop");
    (emitted.load(std::sync::atomic::Ordering::Relaxed), progress)
}

/// [`run_to_noop_sink`] with a dead-letter output that counts the records `from_json` could
/// not parse; returns (rows the sink received, dead letters).
pub async fn run_to_noop_sink_with_dead_letters(frame: StreamFrame) -> (u64, u64) {
    let checkpoint = tempfile::tempdir().expect("checkpoint directory");
    let letters = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&letters);
    let query = frame
        .write_stream()
        .trigger(Trigger::AvailableNow)
        .checkpoint_location(checkpoint.path())
        .foreach_batch(|_, _| async { Ok(()) })
        .dead_letters_foreach_batch(move |df, _| {
            let counted = Arc::clone(&counted);
            async move {
                let n = df.count().await?;
                counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .start()
        .await
        .expect("start");
    query.await_termination(None).await.expect("run");
    let rows = query
        .recent_progress()
        .iter()
        .map(|p| p.sink.num_output_rows.max(0) as u64)
        .sum();
    (rows, letters.load(std::sync::atomic::Ordering::Relaxed))
}

/// Runs the enrichment over `batches` once; returns the rows the sink received.
pub async fn enrichment(batches: &[RecordBatch]) -> u64 {
    let session = StreamSession::new();
    let enriched = parsed_values(
        &session,
        batches,
        Some(PER_TRIGGER as u64),
        titanic::schema(),
    )
    .with_column("is_adult", titanic::is_adult().expect("is_adult"))
    .expect("is_adult")
    .join(
        titanic::class_names(&session).expect("classes"),
        JoinType::Left,
        &["Pclass"],
    )
    .expect("join");
    run_to_noop_sink(enriched).await
}

/// Writes the records as text files of [`PER_TRIGGER`] lines each (Spark's input).
fn write_spark_input(messages: &[Vec<u8>], dir: &Path) -> u64 {
    let mut bytes = 0;
    for (i, chunk) in messages.chunks(PER_TRIGGER).enumerate() {
        let path = dir.join(format!("part-{i:05}.json"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("input file"));
        for m in chunk {
            file.write_all(m).expect("write");
            file.write_all(b"\n").expect("write");
            bytes += m.len() as u64 + 1;
        }
        file.flush().expect("flush");
    }
    bytes
}

/// Spark's timings, or why there are none.
enum Spark {
    Measured {
        version: String,
        cold_s: f64,
        warm: Vec<f64>,
    },
    Skipped(String),
}

fn run_spark(dir: &Path, rows: usize, reps: usize) -> Spark {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("spark_pipeline.py");
    let probe = Command::new(&python)
        .args(["-c", "import pyspark; print(pyspark.__version__)"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(_) | Err(_) => {
            return Spark::Skipped(format!(
                "pyspark cannot be imported by {python} (install it with benches/setup.sh)"
            ));
        }
    }
    let out = Command::new(&python)
        .arg(&script)
        .arg("--input")
        .arg(dir)
        .args(["--rows", &rows.to_string(), "--reps", &reps.to_string()])
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return Spark::Skipped(format!(
                "spark_pipeline.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" / ")
            ));
        }
        Err(e) => return Spark::Skipped(format!("spark_pipeline.py did not start: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(result) = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    else {
        return Spark::Skipped(format!("spark_pipeline.py printed no result: {text}"));
    };
    Spark::Measured {
        version: result["version"].as_str().unwrap_or("?").to_string(),
        cold_s: result["cold_s"].as_f64().unwrap_or(f64::NAN),
        warm: result["warm_s"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default(),
    }
}

/// Runs (g): the engine (warm-up excluded) and Spark on the same records.
pub async fn versus_spark(rows: usize, reps: usize, scratch: &Path) -> Vec<Figure> {
    let messages = titanic_messages(rows);
    let batches = value_batches(&messages, CHUNK);
    let dir = scratch.join("spark-input");
    std::fs::create_dir_all(&dir).expect("scratch");
    let bytes = write_spark_input(&messages, &dir);
    drop(messages);

    // Warm-up, then the engine's repetitions.
    assert_eq!(enrichment(&batches).await, rows as u64);
    let mut engine = Vec::new();
    for _ in 0..reps {
        let (n, s) = time_async(enrichment(&batches)).await;
        assert_eq!(n, rows as u64);
        engine.push(s);
    }
    let e = median(&engine);
    let name = "g: enrichment vs Spark";
    let engine_label = "Flumen enrichment (MemoryStream)";
    let figure = match run_spark(&dir, rows, reps) {
        Spark::Measured {
            version,
            cold_s,
            warm,
        } if !warm.is_empty() => {
            let mut warm = warm;
            warm.sort_by(f64::total_cmp);
            let spark_s = warm[warm.len() / 2];
            let spark = Sample {
                wall: Duration::from_secs_f64(spark_s),
                cpu: Duration::ZERO,
            };
            Figure::rate(
                name,
                engine_label,
                &format!("Spark {version} local[*], warm"),
                rows as u64,
                e,
                spark,
            )
            .at_least(10.0)
            .note(format!(
                "Spark cold run {:.0} rows/s; input {} MB",
                rows as f64 / cold_s,
                bytes / 1_000_000
            ))
        }
        Spark::Measured { .. } => skipped(name, engine_label, rows, e, "Spark reported no runs"),
        Spark::Skipped(why) => skipped(name, engine_label, rows, e, &why),
    };
    vec![figure]
}

fn skipped(name: &str, engine: &str, rows: usize, e: Sample, why: &str) -> Figure {
    eprintln!("  SKIPPED the Spark comparison: {why}");
    let mut f = Figure::rate(name, engine, "Spark (skipped)", rows as u64, e, e);
    f.ratio = f64::NAN;
    f.note(format!("SKIPPED: {why}"))
}

/// The child process of (h): runs the enrichment `reps` times after a warm-up and prints
/// `{"rows_per_s": median, "peak_rss_bytes": .., "input_bytes": ..}`.
pub fn child(rows: usize, reps: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let messages = titanic_messages(rows);
    let input_bytes: usize = messages.iter().map(Vec::len).sum();
    let batches = value_batches(&messages, CHUNK);
    drop(messages);
    // From here on the high-water mark counts the runs, with the input resident.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let resident_input = proc_status_bytes("VmRSS:");
    runtime.block_on(async {
        enrichment(&batches).await;
        let mut samples = Vec::new();
        for _ in 0..reps {
            let (n, s) = time_async(enrichment(&batches)).await;
            assert_eq!(n, rows as u64);
            samples.push(s);
        }
        let m = median(&samples);
        println!(
            "{}",
            serde_json::json!({
                "rows_per_s": rows as f64 / m.wall.as_secs_f64(),
                "cpu_s": m.cpu.as_secs_f64(),
                "peak_rss_bytes": if reset { proc_status_bytes("VmHWM:") } else { peak_rss_bytes() },
                "resident_before_bytes": resident_input,
                "input_bytes": input_bytes,
                "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            })
        );
    });
}

/// A `kB` line of `/proc/self/status`, bytes (0 when unreadable).
fn proc_status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The process's peak resident set, bytes (`getrusage`'s `ru_maxrss`, KiB on Linux).
fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is a valid value.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    usage.ru_maxrss as u64 * 1024
}

/// Runs this benchmark binary as a child pinned to `cpus` (a `taskset` list).
fn pinned(cpus: &str, rows: usize, reps: usize) -> Option<serde_json::Value> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new("taskset")
        .args(["-c", cpus])
        .arg(exe)
        .args(["--pipeline-child", &rows.to_string(), &reps.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "  pinned run on CPUs {cpus} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Runs (h) and the memory figure.
pub fn scaling(rows: usize, reps: usize) -> Vec<Figure> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("  SKIPPED scaling: this machine has one core");
        return Vec::new();
    }
    let (Some(one), Some(two)) = (pinned("0", rows, reps), pinned("0,1", rows, reps)) else {
        eprintln!("  SKIPPED scaling: taskset is missing or a pinned run failed");
        return Vec::new();
    };
    let rate = |v: &serde_json::Value| v["rows_per_s"].as_f64().unwrap_or(f64::NAN);
    let sample = |v: &serde_json::Value| Sample {
        wall: Duration::from_secs_f64(rows as f64 / rate(v)),
        cpu: Duration::from_secs_f64(v["cpu_s"].as_f64().unwrap_or(0.0)),
    };
    let peak = two["peak_rss_bytes"].as_u64().unwrap_or(0);
    let before = two["resident_before_bytes"].as_u64().unwrap_or(0);
    let input = two["input_bytes"].as_u64().unwrap_or(0);
    let mut memory = Figure::rate(
        "h: peak RSS vs input bytes",
        "enrichment, 2 cores",
        "input JSON bytes",
        rows as u64,
        sample(&two),
        sample(&two),
    );
    memory.ratio = peak as f64 / input.max(1) as f64;
    vec![
        Figure::rate(
            "h: 2 cores vs 1 core",
            "enrichment on CPUs 0,1",
            "enrichment on CPU 0",
            rows as u64,
            sample(&two),
            sample(&one),
        )
        .at_least(1.8),
        memory.note(format!(
            "peak RSS while running {} MB ({} MB resident before, holding the input rows) for {} MB of JSON input",
            peak / 1_000_000,
            before / 1_000_000,
            input / 1_000_000
        )),
    ]
}
