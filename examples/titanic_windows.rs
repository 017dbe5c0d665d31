//! The notebook's window cell: load the passengers into `raw-titanic` with
//! `event_time = base + 5 seconds × PassengerId`, then count them per one-minute event-time
//! window in complete mode, printed untruncated and ordered by window.
//!
//! ```text
//! cargo run --example titanic_windows -- --base-time 2026-01-01T00:00:00Z --available-now
//! ```

use std::path::PathBuf;

use clap::Parser;
use flumen::prelude::*;
use flumen_examples::titanic::{self, RAW_TOPIC, TitanicData};
use flumen_examples::{Broker, KafkaArgs, RunArgs, run_until_ctrl_c};

/// Count Titanic passengers per one-minute event-time window.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The Titanic CSV (default: $FLUMEN_TITANIC_CSV, else data/titanic.csv).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Event times start here (RFC 3339, e.g. 2026-01-01T00:00:00Z); default: now.
    #[arg(long)]
    base_time: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The topic to load and read (the notebook's).
    #[arg(long, default_value = RAW_TOPIC)]
    topic: String,
    /// Rows the console shows per batch (Spark's default 20).
    #[arg(long, default_value_t = 20)]
    num_rows: usize,
    /// Skip loading the CSV; only run the streaming query.
    #[arg(long)]
    no_load: bool,
    #[command(flatten)]
    run: RunArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::from_args(&args.kafka)?;
    broker.ensure_topics(&[(args.topic.as_str(), 1)]).await?;
    let session = StreamSession::new();
    let passengers = TitanicData::choose(args.csv).load(&session).await?;
    let base = args
        .base_time
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    let with_time = titanic::with_event_time(&session, passengers, base)?;
    let schema = std::sync::Arc::new(with_time.schema().as_arrow().clone());
    if !args.no_load {
        let n = titanic::load_into_kafka(
            with_time,
            &session,
            broker.servers(),
            &args.topic,
            &broker.kafka_options(),
        )
        .await?;
        println!(
            "Loaded {n} passengers with event times from {base} into {}",
            args.topic
        );
    }

    let parsed = titanic::parsed_stream(
        &session,
        broker.servers(),
        &args.topic,
        &broker.kafka_options(),
        schema,
    )?;
    let query = titanic::windowed_counts(&parsed)?
        .write_stream()
        .console()
        .option("truncate", false)
        .option("numRows", args.num_rows)
        .output_mode(OutputMode::Complete)
        .query_name("titanic_windows")
        .trigger(args.run.trigger())
        .start()
        .await?;
    run_until_ctrl_c(std::slice::from_ref(&query)).await?;
    if let Some(p) = query.last_progress() {
        let windows = p.state_operators.first().map_or(0, |s| s.num_rows_total);
        eprintln!("{windows} windows over {} passengers", p.num_input_rows);
    }
    Ok(())
}
