//! The notebook's last cell: count adults and minors in complete mode into a memory table named
//! `agg_table`, wait up to 10 seconds, stop, read `SELECT * FROM agg_table` with SQL, and draw
//! the bar chart (bars labelled with their counts) to a PNG.
//!
//! ```text
//! cargo run --example titanic_chart -- --out titanic_is_adult.png
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use flumen::datafusion::arrow::array::{AsArray, Int64Array};
use flumen::prelude::*;
use flumen_examples::chart::{BarChart, find_font};
use flumen_examples::titanic::{self, RAW_TOPIC, TitanicData};
use flumen_examples::{Broker, KafkaArgs};

/// Chart adult and minor Titanic passengers from a stream.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The Titanic CSV (default: $FLUMEN_TITANIC_CSV, else data/titanic.csv).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Where to write the chart.
    #[arg(long, default_value = "titanic_is_adult.png")]
    out: PathBuf,
    /// A TrueType font for the text (default: $FLUMEN_FONT, else DejaVu Sans or similar).
    #[arg(long)]
    font: Option<PathBuf>,
    /// How long to let the query run before stopping it (the notebook's awaitTermination(10)).
    #[arg(long, default_value_t = 10)]
    wait_seconds: u64,
    /// Skip loading the CSV into raw-titanic.
    #[arg(long)]
    no_load: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let font = find_font(args.font.as_deref())?;
    let broker = Broker::from_args(&args.kafka)?;
    broker.ensure_topics(&[(RAW_TOPIC, 1)]).await?;
    let session = StreamSession::new();
    let passengers = TitanicData::choose(args.csv).load(&session).await?;
    let schema = std::sync::Arc::new(passengers.schema().as_arrow().clone());
    if !args.no_load {
        let n = titanic::load_into_kafka(
            passengers,
            &session,
            broker.servers(),
            RAW_TOPIC,
            &broker.kafka_options(),
        )
        .await?;
        println!("Loaded {n} passengers into {RAW_TOPIC}");
    }

    let parsed = titanic::parsed_stream(
        &session,
        broker.servers(),
        RAW_TOPIC,
        &broker.kafka_options(),
        schema,
    )?;
    let query = titanic::is_adult_counts(&parsed)?
        .write_stream()
        .memory()
        .query_name("agg_table")
        .output_mode(OutputMode::Complete)
        .start()
        .await?;
    // Up to the notebook's 10 seconds; done as soon as everything in the topic is counted.
    let waited = tokio::time::timeout(
        Duration::from_secs(args.wait_seconds),
        query.process_all_available(),
    )
    .await;
    query.stop().await?;
    if let Ok(result) = waited {
        result?;
    }

    let agg_table = session
        .sql("SELECT * FROM agg_table ORDER BY is_adult")
        .await?;
    agg_table.show(20).await?;
    let rows = agg_table.collect().await?;
    let mut bars = Vec::new();
    for batch in &rows {
        let labels = batch.column(0).as_string::<i32>();
        let counts = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| anyhow::anyhow!("agg_table.count is not a 64-bit integer"))?;
        for i in 0..batch.num_rows() {
            bars.push((labels.value(i).to_string(), counts.value(i)));
        }
    }
    let chart = BarChart {
        title: "Количество взрослых и не взрослых пассажиров Titanic (batch из стрима)".into(),
        x_label: "is_adult".into(),
        y_label: "Count".into(),
        bars,
    };
    chart.render_png(&args.out, &font, (900, 600))?;
    println!("Chart written to {}", args.out.display());
    Ok(())
}
