//! Keeps an embedded Kafka broker (librdkafka's mock cluster) running on a loopback port and
//! prints its address, so other processes — another example, a Python client — can use it.
//!
//! ```text
//! cargo run --release --bin flumen-broker -- --port 9092 --topic demo-topic --topic raw-titanic
//! ```

use clap::Parser;
use flumen::EmbeddedKafka;

/// Run an embedded Kafka broker until Ctrl-C.
#[derive(Parser, Debug)]
struct Args {
    /// Loopback port to listen on (0: any free port).
    #[arg(long, default_value_t = 9092)]
    port: u16,
    /// Topics to create, as NAME or NAME:PARTITIONS (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let kafka = if args.port == 0 {
        EmbeddedKafka::start()?
    } else {
        EmbeddedKafka::start_on_port(args.port)?
    };
    for topic in &args.topics {
        let (name, partitions) = match topic.split_once(':') {
            Some((name, n)) => (name, n.parse()?),
            None => (topic.as_str(), 1),
        };
        kafka.create_topic(name, partitions)?;
        eprintln!("created topic {name} ({partitions} partition(s))");
    }
    println!("{}", kafka.bootstrap_servers());
    eprintln!(
        "Embedded Kafka broker running at {}; Ctrl-C to stop",
        kafka.bootstrap_servers()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
