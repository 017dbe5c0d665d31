//! The notebook's stream–static join cell, written the way the cell reads (the tests and the
//! benchmarks run the same pipeline from `flumen_examples::titanic`): load the Titanic CSV into `raw-titanic` (key =
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
use std::sync::Arc;

use clap::Parser;
use flumen::datafusion::arrow::datatypes::DataType;
use flumen::prelude::*;
use flumen_examples::titanic::{self, ENRICHED_TOPIC, RAW_TOPIC, TitanicData};
use flumen_examples::{Broker, KafkaArgs, RunArgs, UiArgs, rows_written, run_until_ctrl_c_with_ui};

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
    #[command(flatten)]
    run: RunArgs,
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
    broker.forget_checkpoint_of_an_earlier_broker(&args.checkpoint)?;
    let session = StreamSession::new();
    let ui = args.ui.start(&session)?;

    // titanic_df = spark.read.csv("titanic.csv", header=True, inferSchema=True)
    let titanic_df = TitanicData::choose(args.csv).load(&session).await?;
    // schema = titanic_df.schema
    let schema = Arc::new(titanic_df.schema().as_arrow().clone());
    if !args.no_load {
        // The loading cell: key = PassengerId, value = to_json(struct(*)), into raw-titanic.
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

    // The notebook's stream-static join cell, line by line.
    let raw_stream = session
        .read_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .subscribe([RAW_TOPIC])
        .starting_offsets(StartingOffsets::Earliest)
        .load()?;

    let parsed_stream = raw_stream
        .select_expr(["CAST(value AS STRING) AS json_str"])?
        .with_column("data", from_json(col("json_str"), schema)?)?
        .select_expr(["data.*"])?;

    let static_df = session
        .sql("SELECT * FROM (VALUES (1, 'First Class'), (2, 'Second Class'), (3, 'Third Class')) AS t(Pclass, ClassName)")
        .await?
        .into_dataframe()?;

    let enriched_df = parsed_stream
        .with_column(
            "is_adult",
            when(col("Age").gt_eq(lit(18)), lit("yes")).otherwise(lit("no"))?,
        )?
        .join(static_df, JoinType::Left, &["Pclass"])?;

    // PassengerId, Name, Age, Pclass, ClassName, is_adult, Survived
    let pretty_df = enriched_df.select_columns(&titanic::PRETTY_COLUMNS)?;

    let every_column = struct_(enriched_df.columns().iter().map(|c| col(c.as_str())));
    let df_to_kafka = enriched_df
        .with_column("key", cast(col("PassengerId"), DataType::Utf8))?
        .with_column("value", to_json(every_column))?;

    let query_kafka = df_to_kafka
        .select_columns(&["key", "value"])?
        .write_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(ENRICHED_TOPIC)
        .checkpoint_location(&args.checkpoint)
        .output_mode(OutputMode::Append)
        .query_name("titanic_kafka")
        .trigger(args.run.trigger())
        .start()
        .await?;

    let query_console = pretty_df
        .write_stream()
        .console()
        .option("truncate", false)
        .output_mode(OutputMode::Append)
        .query_name("titanic_console")
        .trigger(args.run.trigger())
        .start()
        .await?;

    // query_kafka.awaitTermination(); query_console.awaitTermination() — or Ctrl-C.
    run_until_ctrl_c_with_ui(&[query_kafka.clone(), query_console], ui.as_ref()).await?;
    let written = rows_written(&query_kafka);
    eprintln!("Wrote {written} enriched passengers to {ENRICHED_TOPIC}");
    Ok(())
}
