//! A stateful query end to end through Kafka: count the records of a topic per event-time window
//! (the records' Kafka timestamps), with a watermark, and write each window's count to another
//! topic, keyed by the window's start. `--output-mode update` writes a window's new count after
//! every batch that changed it; `append` writes each window once, when the watermark has passed
//! its end. With `--exactly-once`, each batch's output and its state are committed together: a
//! `read_committed` reader sees, across crashes, exactly what an uninterrupted run writes.
//!
//! On the embedded broker (the default) the input topic is first seeded with `Hello 0..4`.
//!
//! ```text
//! cargo run --release --example kafka_window_counts -- --available-now
//! ```

use std::path::PathBuf;

use clap::Parser;
use flumen::prelude::*;
use flumen_examples::{Broker, KafkaArgs, RunArgs, rows_written, run_until_ctrl_c, seed_greetings};

/// Count records per event-time window and write the counts to Kafka.
#[derive(Parser, Debug)]
struct Args {
    /// Kafka to use; the embedded broker (the default) is seeded with Hello 0..4.
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic to read.
    #[arg(long, default_value = "demo-topic")]
    input: String,
    /// Topic to write: key = window start as text (`2026-12-03T09:29:40Z`), value = count.
    #[arg(long, default_value = "demo-window-counts")]
    output: String,
    /// Checkpoint directory (offsets, commits and the windows' state).
    #[arg(long, default_value = "/tmp/checkpoints/window-counts")]
    checkpoint: PathBuf,
    /// Window length, as a Spark interval.
    #[arg(long, default_value = "10 seconds")]
    window: String,
    /// How late a record may arrive (the watermark's delay), as a Spark interval.
    #[arg(long, default_value = "0 seconds")]
    watermark: String,
    /// `update` (a window's count after each batch that changed it), `append` (each window
    /// once, final) or `complete` (every window after every batch).
    #[arg(long, default_value = "update")]
    output_mode: OutputMode,
    /// Write each micro-batch as one Kafka transaction (see kafka_to_kafka).
    #[arg(long)]
    exactly_once: bool,
    /// At most this many input records per micro-batch (default: no limit).
    #[arg(long)]
    max_offsets_per_trigger: Option<u64>,
    #[command(flatten)]
    run: RunArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::from_args(&args.kafka)?;
    let session = StreamSession::new();
    broker
        .ensure_topics(&[(args.input.as_str(), 1), (args.output.as_str(), 1)])
        .await?;
    broker.forget_checkpoint_of_an_earlier_broker(&args.checkpoint)?;
    if broker.is_embedded() {
        seed_greetings(&session, &broker, &args.input).await?;
    }

    let mut reader = session
        .read_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .subscribe([args.input.as_str()])
        .starting_offsets(StartingOffsets::Earliest);
    if let Some(records) = args.max_offsets_per_trigger {
        reader = reader.max_offsets_per_trigger(records);
    }
    let counts = reader
        .load()?
        .with_watermark("timestamp", &args.watermark)?
        .group_by([window(col("timestamp"), &args.window)])
        .count()?
        .select_expr([
            "CAST(window.start AS STRING) AS key",
            "CAST(count AS STRING) AS value",
        ])?;
    let query = counts
        .write_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(&args.output)
        .exactly_once(args.exactly_once)
        .checkpoint_location(&args.checkpoint)
        .output_mode(args.output_mode)
        .trigger(args.run.trigger())
        .start()
        .await?;
    run_until_ctrl_c(std::slice::from_ref(&query)).await?;
    let written = rows_written(&query);
    eprintln!(
        "Wrote {written} window counts to {} in this run",
        args.output
    );

    let out = broker.read_topic(&session, &args.output).await?;
    let out = session.frame(out).select_expr([
        "CAST(key AS STRING) AS window_start",
        "CAST(value AS STRING) AS count",
    ])?;
    print!("{}", out.show_string(20, false).await?);
    Ok(())
}
