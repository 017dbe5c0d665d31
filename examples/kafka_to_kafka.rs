//! The notebook's "write back to Kafka" cell: stream `demo-topic`, prefix each value with
//! `[processed] `, and write key and value to `demo-topic-2`, checkpointing to
//! `/tmp/checkpoints/processed`. Restarting resumes where it stopped.
//!
//! On the embedded broker (the default) `demo-topic` is first seeded with `Hello 0..4`.
//!
//! ```text
//! cargo run --release --example kafka_to_kafka -- --available-now
//! ```

use std::path::PathBuf;

use clap::Parser;
use flumen::datafusion::arrow::datatypes::DataType;
use flumen::prelude::*;
use flumen_examples::{Broker, KafkaArgs, RunArgs, rows_written, run_until_ctrl_c, seed_greetings};

/// Tag every record of one topic and write it to another.
#[derive(Parser, Debug)]
struct Args {
    /// Kafka to use; the embedded broker (the default) is seeded with Hello 0..4.
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic to read.
    #[arg(long, default_value = "demo-topic")]
    input: String,
    /// Topic to write.
    #[arg(long, default_value = "demo-topic-2")]
    output: String,
    /// Checkpoint directory.
    #[arg(long, default_value = "/tmp/checkpoints/processed")]
    checkpoint: PathBuf,
    /// Write each micro-batch as one Kafka transaction: readers with
    /// isolation.level=read_committed see every record once, across crashes (default:
    /// at-least-once, as Spark).
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
    let kafka_df = reader.load()?;
    let parsed_df = kafka_df.select_expr(["CAST(key AS STRING)", "CAST(value AS STRING)"])?;
    let transformed_df =
        parsed_df.with_column("value", concat([lit("[processed] "), col("value")]))?;
    let final_df = transformed_df.select([
        cast(col("key"), DataType::Binary).alias("key"),
        cast(col("value"), DataType::Binary).alias("value"),
    ])?;
    let query = final_df
        .write_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(&args.output)
        .exactly_once(args.exactly_once)
        .checkpoint_location(&args.checkpoint)
        .output_mode(OutputMode::Append)
        .trigger(args.run.trigger())
        .start()
        .await?;
    run_until_ctrl_c(std::slice::from_ref(&query)).await?;
    let written = rows_written(&query);
    eprintln!("Wrote {written} records to {} in this run", args.output);

    let out = broker.read_topic(&session, &args.output).await?;
    let out = session
        .frame(out)
        .select_expr(["CAST(value AS STRING) AS value"])?;
    print!("{}", out.show_string(20, false).await?);
    Ok(())
}
