//! Shared pieces of the Flumen examples: choosing a broker (embedded or `--bootstrap-servers`),
//! finding the Titanic data (`--csv`, `FLUMEN_TITANIC_CSV`, or a seeded generator), and the
//! notebook's Titanic pipeline, so the examples, tests and benchmarks run the same code.

pub mod titanic;

use std::time::Duration;

use flumen::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// A broker for an example: the embedded one (kept alive by this handle) or an external one.
pub struct Broker {
    servers: String,
    embedded: Option<EmbeddedKafka>,
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
                })
            }
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// Whether this is the embedded broker (which starts empty).
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// Creates the topics that do not exist yet.
    pub async fn ensure_topics(&self, topics: &[(&str, i32)]) -> anyhow::Result<()> {
        if let Some(kafka) = &self.embedded {
            for (name, partitions) in topics {
                kafka.create_topic(name, *partitions)?;
            }
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.servers)
            .create()?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.create_topics(&new, &options).await? {
            match result {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, e)) => anyhow::bail!("cannot create topic {topic}: {e}"),
            }
        }
        Ok(())
    }
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
