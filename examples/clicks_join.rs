//! Spark's stream-stream join example: ad impressions joined with the clicks that follow them
//! within an hour, each stream with its own watermark (2 and 3 hours), printed to the console.
//!
//! ```python
//! impressions = spark.readStream.format("kafka").option("subscribe", "impressions").load() ...
//! clicks = spark.readStream.format("kafka").option("subscribe", "clicks").load() ...
//! impressions.withWatermark("impressionTime", "2 hours").join(
//!     clicks.withWatermark("clickTime", "3 hours"),
//!     expr("""clickAdId = impressionAdId AND
//!             clickTime >= impressionTime AND clickTime <= impressionTime + interval 1 hour"""),
//!     "inner")
//! ```
//!
//! On the embedded broker (the default) the two topics are first filled with a day's sample:
//! ad 3 is clicked more than an hour after its impression, ads 4 and 6 never. With `--join-type leftOuter` the impressions without a click in time come out with null
//! clicks once the watermark shows no click can come any more.
//!
//! ```text
//! cargo run --example clicks_join -- --available-now
//! ```

use clap::Parser;
use flumen::datafusion::logical_expr::JoinType;
use flumen::prelude::*;
use flumen_examples::{Broker, KafkaArgs, RunArgs, rows_written, run_until_ctrl_c};

/// Join ad impressions with their clicks and print the pairs.
#[derive(Parser, Debug)]
struct Args {
    /// Kafka to use; on the embedded broker (the default) both topics are seeded.
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic of impressions: JSON `{"adId": .., "time": ".."}`.
    #[arg(long, default_value = "impressions")]
    impressions: String,
    /// Topic of clicks: JSON `{"adId": .., "time": ".."}`.
    #[arg(long, default_value = "clicks")]
    clicks: String,
    /// `inner`, `leftOuter`, `rightOuter`, `fullOuter` or `leftSemi` (Spark's names).
    #[arg(long, default_value = "inner", value_parser = parse_join_type)]
    join_type: JoinType,
    #[command(flatten)]
    run: RunArgs,
}

fn parse_join_type(text: &str) -> Result<JoinType, String> {
    match text.to_ascii_lowercase().replace('_', "").as_str() {
        "inner" => Ok(JoinType::Inner),
        "leftouter" | "left" => Ok(JoinType::Left),
        "rightouter" | "right" => Ok(JoinType::Right),
        "fullouter" | "full" | "outer" => Ok(JoinType::Full),
        "leftsemi" | "semi" => Ok(JoinType::LeftSemi),
        _ => Err(format!(
            "'{text}' is not a join type; use inner, leftOuter, rightOuter, fullOuter or leftSemi"
        )),
    }
}

/// A day of impressions and clicks, as `(adId, time)` in arrival order.
const IMPRESSIONS: &[(i64, &str)] = &[
    (1, "12:00"),
    (2, "12:10"),
    (3, "12:20"),
    (4, "13:00"),
    (5, "15:00"),
    (6, "12:00"),
    (7, "17:00"),
];
const CLICKS: &[(i64, &str)] = &[
    (1, "12:30"),
    (2, "13:05"),
    (3, "13:30"),
    (5, "15:10"),
    (7, "17:59"),
];

/// Writes `rows` to `topic` as JSON values.
async fn seed(
    session: &StreamSession,
    broker: &Broker,
    topic: &str,
    rows: &[(i64, &str)],
) -> anyhow::Result<()> {
    let values: Vec<String> = rows
        .iter()
        .map(|(id, time)| format!("('{{\"adId\":{id},\"time\":\"2026-11-24T{time}:00\"}}')"))
        .collect();
    session
        .sql(&format!(
            "SELECT value FROM (VALUES {}) AS t(value)",
            values.join(", ")
        ))
        .await?
        .write_kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(topic)
        .save()
        .await?;
    Ok(())
}

/// A topic of `{"adId", "time"}` records as a stream of `<prefix>AdId`, `<prefix>Time`.
fn events(
    session: &StreamSession,
    broker: &Broker,
    topic: &str,
    prefix: &str,
) -> flumen::Result<StreamFrame> {
    session
        .read_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .subscribe([topic])
        .starting_offsets(StartingOffsets::Earliest)
        .load()?
        .select_expr([
            format!(
                "get_field(from_json(CAST(value AS STRING), 'adId BIGINT, time TIMESTAMP'), 'adId') AS {prefix}AdId"
            ),
            format!(
                "get_field(from_json(CAST(value AS STRING), 'adId BIGINT, time TIMESTAMP'), 'time') AS {prefix}Time"
            ),
        ])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::from_args(&args.kafka)?;
    let session = StreamSession::new();
    if broker.is_embedded() {
        broker
            .ensure_topics(&[(args.impressions.as_str(), 1), (args.clicks.as_str(), 1)])
            .await?;
        seed(&session, &broker, &args.impressions, IMPRESSIONS).await?;
        seed(&session, &broker, &args.clicks, CLICKS).await?;
    }

    let impressions = events(&session, &broker, &args.impressions, "impression")?
        .with_watermark("impressionTime", "2 hours")?;
    let clicks =
        events(&session, &broker, &args.clicks, "click")?.with_watermark("clickTime", "3 hours")?;
    let joined = impressions.join_expr(
        clicks.dataframe().clone(),
        args.join_type,
        "clickAdId = impressionAdId AND \
         clickTime >= impressionTime AND clickTime <= impressionTime + interval 1 hour",
    )?;
    let query = joined
        .write_stream()
        .output_mode(OutputMode::Append)
        .console()
        .option("truncate", "false")
        .trigger(args.run.trigger())
        .start()
        .await?;
    run_until_ctrl_c(std::slice::from_ref(&query)).await?;
    let joined_rows = rows_written(&query);
    eprintln!("Joined {joined_rows} rows");
    Ok(())
}
