//! Shared pieces of the Flumen examples: choosing a broker (embedded or `--bootstrap-servers`),
//! finding the Titanic data (`--csv`, `FLUMEN_TITANIC_CSV`, or a seeded generator), and the
//! notebook's Titanic pipeline, so the examples, tests and benchmarks run the same code.

pub mod chart;
pub mod titanic;

use std::time::Duration;

use flumen::MonitorServer;
use flumen::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The Kafka flags every example takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KafkaArgs {
    /// Kafka to use, as `HOST:PORT` or a comma-separated list (default: an embedded broker).
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// A librdkafka property for every Kafka client, as KEY=VALUE (repeatable), e.g.
    /// `--kafka-option security.protocol=SSL`.
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got '{text}'"))
}

/// The run flag every streaming example takes: `--available-now`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Process everything available, then exit 0 (with --ui: once Ctrl-C is pressed).
    #[arg(long)]
    pub available_now: bool,
}

impl RunArgs {
    /// `Trigger::AvailableNow` with `--available-now`, else the default trigger (a micro-batch
    /// as soon as the previous one is done).
    pub fn trigger(&self) -> Trigger {
        if self.available_now {
            Trigger::AvailableNow
        } else {
            Trigger::default()
        }
    }
}

/// The monitoring flags (`--ui`, `--ui-port`) of the examples that can show the live page.
#[derive(clap::Args, Debug, Clone)]
pub struct UiArgs {
    /// Serve the monitoring page (queries, rates, batch durations; JSON API and Prometheus
    /// metrics) on 127.0.0.1 and keep running until Ctrl-C, also after the queries finish.
    #[arg(long)]
    pub ui: bool,
    /// Port of the monitoring page (0 picks a free one).
    #[arg(long, default_value_t = flumen::monitor::DEFAULT_PORT)]
    pub ui_port: u16,
}

impl UiArgs {
    /// Starts the monitoring server for `session` when `--ui` was given, and prints its URL.
    pub fn start(&self, session: &StreamSession) -> anyhow::Result<Option<MonitorServer>> {
        if !self.ui {
            return Ok(None);
        }
        let server = MonitorServer::builder().port(self.ui_port).start(session)?;
        eprintln!(
            "Monitoring page at {} (JSON at {}api/queries, Prometheus metrics at {}metrics)",
            server.url(),
            server.url(),
            server.url()
        );
        Ok(Some(server))
    }
}

/// Keeps the monitoring page up until Ctrl-C, when there is one.
pub async fn keep_ui_until_ctrl_c(ui: Option<&MonitorServer>) -> anyhow::Result<()> {
    if let Some(server) = ui {
        eprintln!(
            "The queries have finished; the monitoring page stays up at {} until Ctrl-C",
            server.url()
        );
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

/// A broker for an example: the embedded one (kept alive by this handle) or an external one.
pub struct Broker {
    servers: String,
    embedded: Option<EmbeddedKafka>,
    options: Vec<(String, String)>,
}

impl Broker {
    /// Connects to `bootstrap_servers`, or starts an embedded broker when it is `None`.
    pub fn connect(bootstrap_servers: Option<String>) -> flumen::Result<Self> {
        match bootstrap_servers {
            Some(servers) => {
                eprintln!("Using Kafka at {servers}");
                Ok(Self {
                    servers,
                    embedded: None,
                    options: Vec::new(),
                })
            }
            None => {
                let kafka = EmbeddedKafka::start()?;
                eprintln!(
                    "Started an embedded Kafka broker at {} (pass --bootstrap-servers HOST:PORT to use another Kafka)",
                    kafka.bootstrap_servers()
                );
                Ok(Self {
                    servers: kafka.bootstrap_servers().to_string(),
                    embedded: Some(kafka),
                    options: Vec::new(),
                })
            }
        }
    }

    /// Connects as the example's flags say.
    pub fn from_args(args: &KafkaArgs) -> flumen::Result<Self> {
        let mut broker = Self::connect(args.bootstrap_servers.clone())?;
        broker.options = args.kafka_options.clone();
        Ok(broker)
    }

    /// Extra librdkafka properties (`--kafka-option`), as Spark-style `kafka.*` options.
    pub fn kafka_options(&self) -> Vec<(String, String)> {
        self.options
            .iter()
            .map(|(k, v)| (format!("kafka.{k}"), v.clone()))
            .collect()
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Whether this is the embedded broker (which starts empty).
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Removes `checkpoint` when the broker is a fresh embedded one: the offsets an earlier run
    /// checkpointed belong to an earlier broker and would point past the new data.
    pub fn forget_checkpoint_of_an_earlier_broker(
        &self,
        checkpoint: &std::path::Path,
    ) -> anyhow::Result<()> {
        if self.is_embedded() && checkpoint.exists() {
            eprintln!(
                "Removing {} (it belongs to an earlier embedded broker)",
                checkpoint.display()
            );
            std::fs::remove_dir_all(checkpoint)?;
        }
        Ok(())
    }

    /// Every record of `topic` now, as a static frame (a bounded read with this broker's
    /// options), for an example to print what it wrote.
    pub async fn read_topic(
        &self,
        session: &StreamSession,
        topic: &str,
    ) -> flumen::Result<flumen::datafusion::dataframe::DataFrame> {
        session
            .read_kafka()
            .bootstrap_servers(self.servers())
            .options(self.kafka_options())
            .subscribe([topic])
            .load()
            .await
    }

    /// Creates the topics that do not exist yet.
    pub async fn ensure_topics(&self, topics: &[(&str, i32)]) -> anyhow::Result<()> {
        if let Some(kafka) = &self.embedded {
            for (name, partitions) in topics {
                kafka.create_topic(name, *partitions)?;
            }
            return Ok(());
        }
        let servers = self.servers.clone();
        let names: Vec<String> = topics.iter().map(|(n, _)| n.to_string()).collect();
        let existing = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &servers)
                .create()?;
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(15))?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && names.contains(&t.name().to_string()))
                .map(|t| t.name().to_string())
                .collect())
        })
        .await??;
        let missing: Vec<NewTopic> = topics
            .iter()
            .filter(|(name, _)| !existing.iter().any(|e| e == name))
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.servers);
        for (k, v) in &self.options {
            config.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = config.create()?;
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(15)))
            .request_timeout(Some(Duration::from_secs(15)));
        // Some brokers (librdkafka's mock among them) do not implement CreateTopics; they
        // create topics on first use instead, so a failure here is only a warning.
        match tokio::time::timeout(
            Duration::from_secs(20),
            admin.create_topics(&missing, &options),
        )
        .await
        {
            Ok(Ok(results)) => {
                for result in results {
                    match result {
                        Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, e)) => eprintln!(
                            "warning: cannot create topic {topic} ({e}); relying on the broker's auto-creation"
                        ),
                    }
                }
            }
            Ok(Err(e)) => eprintln!(
                "warning: cannot create topics ({e}); relying on the broker's auto-creation"
            ),
            Err(_) => eprintln!(
                "warning: the broker did not answer CreateTopics within 20 s; relying on its auto-creation"
            ),
        }
        Ok(())
    }
}

/// Writes `Hello 0..4` to `topic` (the notebook's first cell), for examples that start on an
/// empty embedded broker.
pub async fn seed_greetings(
    session: &StreamSession,
    broker: &Broker,
    topic: &str,
) -> anyhow::Result<()> {
    session
        .sql("SELECT 'Hello ' || CAST(i AS STRING) AS value FROM (VALUES (0), (1), (2), (3), (4)) AS t(i)")
        .await?
        .write_kafka()
        .bootstrap_servers(broker.servers())
        .options(broker.kafka_options())
        .topic(topic)
        .save()
        .await?;
    Ok(())
}

/// The rows `query`'s sink received in this run, by its progress reports.
pub fn rows_written(query: &StreamingQuery) -> u64 {
    query
        .recent_progress()
        .iter()
        .map(|p| p.sink.num_output_rows.max(0) as u64)
        .sum()
}

/// Waits for Ctrl-C, or for every query to end (returning the first error).
pub async fn run_until_ctrl_c(queries: &[StreamingQuery]) -> anyhow::Result<()> {
    let all_done = async {
        for q in queries {
            q.await_termination(None).await?;
        }
        Ok::<(), flumen::FlumenError>(())
    };
    tokio::select! {
        result = all_done => Ok(result?),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("Stopping...");
            for q in queries {
                q.stop().await?;
            }
            Ok(())
        }
    }
}

/// Like [`run_until_ctrl_c`], but with a monitoring page up the program keeps running after the
/// queries end (finished or failed, so the page can show why) until Ctrl-C.
pub async fn run_until_ctrl_c_with_ui(
    queries: &[StreamingQuery],
    ui: Option<&MonitorServer>,
) -> anyhow::Result<()> {
    if ui.is_none() {
        return run_until_ctrl_c(queries).await;
    }
    let all_done = async {
        for q in queries {
            q.await_termination(None).await?;
        }
        Ok::<(), flumen::FlumenError>(())
    };
    tokio::select! {
        result = all_done => {
            if let Err(e) = &result {
                eprintln!("A query failed: {e}");
            }
            keep_ui_until_ctrl_c(ui).await?;
            Ok(result?)
        }
        _ = tokio::signal::ctrl_c() => {
            eprintln!("Stopping...");
            for q in queries {
                q.stop().await?;
            }
            Ok(())
        }
    }
}
