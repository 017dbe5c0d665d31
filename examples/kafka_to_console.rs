//! The notebook's "read a stream from Kafka" cell: stream `demo-topic`, cast key and value to
//! strings, print each micro-batch to the console.
//!
//! On the embedded broker (the default) the topic starts empty, so the example first writes
//! `Hello 0..4` to it. Runs until Ctrl-C, or with `--available-now` until it has printed
//! everything in the topic.
//!
//! ```text
//! cargo run --release --example kafka_to_console -- --available-now
//! ```

use clap::Parser;
use flumen::prelude::*;
use flumen_examples::{Broker, KafkaArgs, RunArgs, run_until_ctrl_c, seed_greetings};

/// Stream a topic to the console.
#[derive(Parser, Debug)]
struct Args {
    /// Kafka to use; the embedded broker (the default) is seeded with Hello 0..4.
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic to read.
    #[arg(long, default_value = "demo-topic")]
    topic: String,
    #[command(flatten)]
    run: RunArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::from_args(&args.kafka)?;
    let session = StreamSession::new();
    if broker.is_embedded() {
        broker.ensure_topics(&[(args.topic.as_str(), 1)]).await?;
        seed_greetings(&session, &broker, &args.topic).await?;
    }

    let kafka_df = session
        .read_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .subscribe([args.topic.as_str()])
        .starting_offsets(StartingOffsets::Earliest)
        .load()?;
    let parsed = kafka_df.select_expr(["CAST(key AS STRING)", "CAST(value AS STRING)"])?;
    let query = parsed
        .write_stream()
        .output_mode(OutputMode::Append)
        .console()
        .trigger(args.run.trigger())
        .start()
        .await?;
    run_until_ctrl_c(&[query]).await
}
