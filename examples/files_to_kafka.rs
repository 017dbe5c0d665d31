//! A directory of JSON files streamed into a Kafka topic: Spark's file source
//! (`spark.readStream.schema(schema).json(dir)`), each record written as `to_json(struct(*))`
//! keyed by `PassengerId`, with new files picked up as they appear. The checkpoint records
//! which files each batch took, so a restarted run sends every file once.
//!
//! If the input directory is missing or empty, two sample files of Titanic passengers are
//! written to it first. Runs until Ctrl-C (drop more files in meanwhile: write them elsewhere,
//! or under a `.tmp` name, and move them in), or with `--available-now` until every file
//! present at start is sent; then prints what reached the topic.
//!
//! ```text
//! cargo run --example files_to_kafka -- --available-now
//! ```

use std::path::{Path, PathBuf};

use clap::Parser;
use flumen::prelude::*;
use flumen_examples::{Broker, KafkaArgs, RunArgs, rows_written, run_until_ctrl_c};

/// Stream a directory of JSON Lines files into a Kafka topic.
#[derive(Parser, Debug)]
struct Args {
    /// Kafka to use (default: an embedded broker).
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Directory of JSON Lines files to stream; two sample files are written to it when it is
    /// missing or empty.
    #[arg(long, default_value = "/tmp/flumen-files-in")]
    input_dir: PathBuf,
    /// Topic to write.
    #[arg(long, default_value = "files-topic")]
    topic: String,
    /// Checkpoint directory.
    #[arg(long, default_value = "/tmp/checkpoints/files-to-kafka")]
    checkpoint: PathBuf,
    /// At most this many new files per micro-batch (default: no limit).
    #[arg(long)]
    max_files_per_trigger: Option<u64>,
    #[command(flatten)]
    run: RunArgs,
}

/// The passengers' schema: a file source needs one (Spark refuses to guess for a stream).
const SCHEMA: &str = "PassengerId INT, Survived INT, Pclass INT, Name STRING, Age DOUBLE";

/// Two files of the Titanic's first passengers, as JSON Lines.
const SAMPLES: [(&str, &str); 2] = [
    (
        "passengers-1.json",
        r#"{"PassengerId":1,"Survived":0,"Pclass":3,"Name":"Braund, Mr. Owen Harris","Age":22.0}
{"PassengerId":2,"Survived":1,"Pclass":1,"Name":"Cumings, Mrs. John Bradley (Florence Briggs Thayer)","Age":38.0}
{"PassengerId":3,"Survived":1,"Pclass":3,"Name":"Heikkinen, Miss. Laina","Age":26.0}
"#,
    ),
    (
        "passengers-2.json",
        r#"{"PassengerId":4,"Survived":1,"Pclass":1,"Name":"Futrelle, Mrs. Jacques Heath (Lily May Peel)","Age":35.0}
{"PassengerId":5,"Survived":0,"Pclass":3,"Name":"Allen, Mr. William Henry","Age":35.0}
{"PassengerId":6,"Survived":0,"Pclass":3,"Name":"Moran, Mr. James"}
"#,
    ),
];

/// Writes the sample files when `dir` is missing or empty. Each is written under a hidden
/// name and renamed, so a running query never sees half a file.
fn seed_samples(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Ok(());
    }
    for (name, text) in SAMPLES {
        let hidden = dir.join(format!(".{name}"));
        std::fs::write(&hidden, text)?;
        std::fs::rename(&hidden, dir.join(name))?;
    }
    eprintln!(
        "{} was missing or empty: wrote {} sample files of passengers to it",
        dir.display(),
        SAMPLES.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = Broker::from_args(&args.kafka)?;
    let session = StreamSession::new();
    broker.ensure_topics(&[(args.topic.as_str(), 1)]).await?;
    broker.forget_checkpoint_of_an_earlier_broker(&args.checkpoint)?;
    seed_samples(&args.input_dir)?;

    let mut reader = session.read_stream().schema_ddl(SCHEMA)?;
    if let Some(files) = args.max_files_per_trigger {
        reader = reader.max_files_per_trigger(files);
    }
    let passengers = reader.json(&args.input_dir)?;
    let query = passengers
        .select_expr([
            "CAST(PassengerId AS STRING) AS key",
            "to_json(struct(*)) AS value",
        ])?
        .write_stream()
        .kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(&args.topic)
        .checkpoint_location(&args.checkpoint)
        .trigger(args.run.trigger())
        .start()
        .await?;
    if !args.run.available_now {
        eprintln!(
            "Streaming new files of {} into {}; press Ctrl-C to stop",
            args.input_dir.display(),
            args.topic
        );
    }
    run_until_ctrl_c(std::slice::from_ref(&query)).await?;
    let written = rows_written(&query);
    eprintln!("Wrote {written} records to {} in this run", args.topic);

    let out = broker.read_topic(&session, &args.topic).await?;
    let out = session.frame(out).select_expr([
        "CAST(key AS STRING) AS key",
        "CAST(value AS STRING) AS value",
    ])?;
    print!("{}", out.show_string(20, false).await?);
    Ok(())
}
