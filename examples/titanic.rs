//! The whole Titanic flow end to end on an embedded broker, then a short summary: the CSV is
//! loaded into `raw-titanic`, a streaming query enriches it into `enriched-titanic` (parse JSON,
//! `is_adult`, join with the class names), and the result is read back from Kafka and counted.
//!
//! ```text
//! cargo run --release --example titanic
//! cargo run --release --example titanic -- --ui    # then keeps http://127.0.0.1:4040/ up until Ctrl-C
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use flumen::prelude::*;
use flumen_examples::titanic::{self, ENRICHED_TOPIC, RAW_TOPIC, TitanicData};
use flumen_examples::{Broker, KafkaArgs, UiArgs, keep_ui_until_ctrl_c};

/// Run the Titanic enrichment end to end and summarise it.
#[derive(Parser, Debug)]
struct Args {
    /// The Titanic CSV (default: $FLUMEN_TITANIC_CSV, else data/titanic.csv).
    #[arg(long)]
    csv: Option<PathBuf>,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    ui: UiArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let broker = Broker::from_args(&args.kafka)?;
    broker
        .ensure_topics(&[(RAW_TOPIC, 1), (ENRICHED_TOPIC, 1)])
        .await?;
    let session = StreamSession::new();
    let ui = args.ui.start(&session)?;
    let data = TitanicData::choose(args.csv);
    let passengers = data.load(&session).await?;
    let schema = Arc::new(passengers.schema().as_arrow().clone());
    let loaded = titanic::load_into_kafka(
        passengers,
        &session,
        broker.servers(),
        RAW_TOPIC,
        &broker.kafka_options(),
    )
    .await?;
    println!("1. Loaded {loaded} passengers into {RAW_TOPIC}");

    let checkpoint = std::env::temp_dir().join(format!("flumen-titanic-{}", std::process::id()));
    let enriched = titanic::enriched_stream(
        &session,
        broker.servers(),
        RAW_TOPIC,
        &broker.kafka_options(),
        schema,
    )?;
    let query = titanic::to_kafka_records(&enriched)?
        .write_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(ENRICHED_TOPIC)
        .checkpoint_location(&checkpoint)
        .query_name("titanic_enrich")
        .trigger(Trigger::AvailableNow)
        .start()
        .await?;
    query.await_termination(None).await?;
    let progress = query.recent_progress();
    let rows: u64 = progress.iter().map(|p| p.num_input_rows).sum();
    let millis: u64 = progress.iter().map(|p| p.batch_duration).sum();
    println!(
        "2. Streamed {rows} passengers through parse → is_adult → join → {ENRICHED_TOPIC} in {} micro-batch(es), {millis} ms",
        progress.len()
    );
    std::fs::remove_dir_all(&checkpoint).ok();

    let out = session
        .read_kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .subscribe([ENRICHED_TOPIC])
        .load()
        .await?;
    session
        .context()
        .register_table("enriched_raw", out.into_view())?;
    let summary = session
        .sql(
            "SELECT get_field(p, 'ClassName') AS ClassName, get_field(p, 'is_adult') AS is_adult, \
                    COUNT(*) AS passengers, SUM(get_field(p, 'Survived')) AS survived \
             FROM (SELECT from_json(CAST(value AS STRING), 'ClassName STRING, is_adult STRING, Survived BIGINT') AS p FROM enriched_raw) \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .await?;
    println!("3. Read back {ENRICHED_TOPIC} with an independent batch read:");
    summary.show(20).await?;
    let sample = session
        .sql("SELECT CAST(key AS STRING) AS key, CAST(value AS STRING) AS value FROM enriched_raw ORDER BY offset LIMIT 1")
        .await?;
    println!("   first record:");
    print!("{}", sample.show_string(1, false).await?);
    println!("Done in {:.1} s.", started.elapsed().as_secs_f64());
    keep_ui_until_ctrl_c(ui.as_ref()).await
}
