//! The notebook's stream–static join cell: load the Titanic CSV into `raw-titanic` (key =
//! PassengerId, value = the row as JSON), then run two streaming queries over that topic:
//!
//! - parse the JSON with the CSV's inferred schema, add `is_adult`, left-join the class names,
//!   and write key = PassengerId, value = every column as JSON to `enriched-titanic`
//!   (checkpointed);
//! - print PassengerId, Name, Age, Pclass, ClassName, is_adult, Survived to the console,
//!   untruncated.
//!
//! ```text
//! cargo run --release --example titanic_enrich -- --available-now
//! cargo run --release --example titanic_enrich -- --ui    # watch it on http://127.0.0.1:4040/
//! ```

use std::path::PathBuf;

use clap::Parser;
use flumen::prelude::*;
use flumen_examples::titanic::{self, ENRICHED_TOPIC, PRETTY_COLUMNS, RAW_TOPIC, TitanicData};
use flumen_examples::{Broker, KafkaArgs, UiArgs, run_until_ctrl_c_with_ui};

/// Enrich Titanic passengers streaming through Kafka.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The Titanic CSV (default: $FLUMEN_TITANIC_CSV, else data/titanic.csv).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Checkpoint directory of the Kafka query.
    #[arg(long, default_value_os_t = titanic::default_checkpoint())]
    checkpoint: PathBuf,
    /// Skip loading the CSV into raw-titanic; only run the streaming queries.
    #[arg(long)]
    no_load: bool,
    /// Process everything available, then exit 0 (with --ui: once Ctrl-C is pressed).
    #[arg(long)]
    available_now: bool,
    #[command(flatten)]
    ui: UiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::from_args(&args.kafka)?;
    broker
        .ensure_topics(&[(RAW_TOPIC, 1), (ENRICHED_TOPIC, 1)])
        .await?;
    if broker.is_embedded() && args.checkpoint.exists() {
        eprintln!(
            "Removing {} (it belongs to an earlier embedded broker)",
            args.checkpoint.display()
        );
        std::fs::remove_dir_all(&args.checkpoint)?;
    }
    let session = StreamSession::new();
    let ui = args.ui.start(&session)?;
    let data = TitanicData::choose(args.csv);
    let titanic_df = data.load(&session).await?;
    let schema = std::sync::Arc::new(titanic_df.schema().as_arrow().clone());

    if !args.no_load {
        let n = titanic::load_into_kafka(
            titanic_df,
            &session,
            broker.servers(),
            RAW_TOPIC,
            &broker.kafka_options(),
        )
        .await?;
        println!("Loaded {n} passengers into the topic {RAW_TOPIC}");
    }

    let enriched_df = titanic::enriched_stream(
        &session,
        broker.servers(),
        RAW_TOPIC,
        &broker.kafka_options(),
        schema,
    )?;
    let pretty_df = enriched_df.select_columns(&PRETTY_COLUMNS)?;
    let trigger = if args.available_now {
        Trigger::AvailableNow
    } else {
        Trigger::default()
    };
    let query_kafka = titanic::to_kafka_records(&enriched_df)?
        .write_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(ENRICHED_TOPIC)
        .checkpoint_location(&args.checkpoint)
        .output_mode(OutputMode::Append)
        .query_name("titanic_kafka")
        .trigger(trigger)
        .start()
        .await?;
    let query_console = pretty_df
        .write_stream()
        .console()
        .option("truncate", false)
        .output_mode(OutputMode::Append)
        .query_name("titanic_console")
        .trigger(trigger)
        .start()
        .await?;
    run_until_ctrl_c_with_ui(&[query_kafka.clone(), query_console], ui.as_ref()).await?;
    let written: i64 = query_kafka
        .recent_progress()
        .iter()
        .map(|p| p.sink.num_output_rows.max(0))
        .sum();
    eprintln!("Wrote {written} enriched passengers to {ENRICHED_TOPIC}");
    Ok(())
}
