//! [`EmbeddedKafka`]: librdkafka's mock cluster, in-process, speaking the real Kafka protocol on
//! a loopback port — the default broker of the examples and of `cargo test`.
//!
//! Limits of the mock (librdkafka's, not Flumen's): each partition keeps about 5 MiB or 100,000
//! message sets and drops older data silently; consumer-group joins are slow (Flumen assigns
//! partitions, so it does not need them); transactions are accepted but not faithful.
//!
//! The cluster lives on a thread of its own, so the handle can move between threads and tasks.
//! With [`EmbeddedKafka::start_on_port`] it is reachable on a port you choose: a small TCP relay
//! listens there and the broker advertises that port, so every client connects through it.

use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use flumen_engine::{FlumenError, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

enum Command {
    CreateTopic(String, i32, mpsc::Sender<Result<()>>),
    Shutdown,
}

/// An in-process Kafka broker (librdkafka's mock cluster, one broker).
///
/// ```
/// use flumen_kafka::EmbeddedKafka;
/// let kafka = EmbeddedKafka::with_topics(&[("demo-topic", 1)]).unwrap();
/// assert!(kafka.bootstrap_servers().starts_with("127.0.0.1:"));
/// ```
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    relay_stop: Option<(Arc<AtomicBool>, u16)>,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka")
            .field("bootstrap_servers", &self.bootstrap)
            .finish()
    }
}

fn broker_error(message: impl Into<String>) -> FlumenError {
    FlumenError::Source {
        source_name: "EmbeddedKafka".into(),
        message: message.into(),
    }
}

impl EmbeddedKafka {
    /// Starts a broker on a free loopback port.
    pub fn start() -> Result<Self> {
        Self::launch(None)
    }

    /// Starts a broker reachable at `127.0.0.1:port` (fails if the port is taken).
    pub fn start_on_port(port: u16) -> Result<Self> {
        Self::launch(Some(port))
    }

    /// Starts a broker and creates `topics` as `(name, partitions)`.
    pub fn with_topics(topics: &[(&str, i32)]) -> Result<Self> {
        let kafka = Self::start()?;
        for (name, partitions) in topics {
            kafka.create_topic(name, *partitions)?;
        }
        Ok(kafka)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        self.commands
            .send(Command::CreateTopic(name.to_string(), partitions, tx))
            .map_err(|_| broker_error("the embedded broker has stopped"))?;
        rx.recv()
            .map_err(|_| broker_error("the embedded broker has stopped"))?
    }

    fn launch(port: Option<u16>) -> Result<Self> {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(String, Option<Arc<AtomicBool>>)>>();
        let thread = std::thread::Builder::new()
            .name("flumen-embedded-kafka".into())
            .spawn(move || run_cluster(port, inbox, ready_tx))
            .map_err(|e| broker_error(format!("cannot start the broker thread: {e}")))?;
        let (bootstrap, relay) = ready_rx
            .recv()
            .map_err(|_| broker_error("the embedded broker failed to start"))??;
        Ok(Self {
            bootstrap,
            commands,
            thread: Some(thread),
            relay_stop: relay.zip(port),
        })
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some((stop, port)) = self.relay_stop.take() {
            stop.store(true, Ordering::SeqCst);
            // Wake the relay's accept().
            let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Ready = mpsc::Sender<Result<(String, Option<Arc<AtomicBool>>)>>;

fn run_cluster(port: Option<u16>, inbox: mpsc::Receiver<Command>, ready: Ready) {
    let producer: BaseProducer = match ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .set("log_level", "3")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(broker_error(format!(
                "cannot create the mock cluster: {e}"
            ))));
            return;
        }
    };
    let Some(cluster) = producer.client().mock_cluster() else {
        let _ = ready.send(Err(broker_error(
            "librdkafka did not create a mock cluster",
        )));
        return;
    };
    let actual = cluster.bootstrap_servers();
    let (bootstrap, relay) = match port {
        None => (actual, None),
        Some(port) => match start_relay(port, &actual) {
            Ok(stop) => {
                advertise_port(&producer, port);
                (format!("127.0.0.1:{port}"), Some(stop))
            }
            Err(e) => {
                let _ = ready.send(Err(broker_error(format!(
                    "cannot listen on 127.0.0.1:{port}: {e}; choose another port"
                ))));
                return;
            }
        },
    };
    if ready.send(Ok((bootstrap, relay))).is_err() {
        return;
    }
    while let Ok(command) = inbox.recv() {
        match command {
            Command::CreateTopic(name, partitions, reply) => {
                let result = cluster
                    .create_topic(&name, partitions, 1)
                    .map_err(|e| broker_error(format!("cannot create topic {name}: {e}")));
                let _ = reply.send(result);
            }
            Command::Shutdown => break,
        }
    }
    drop(cluster);
    let _ = producer.flush(std::time::Duration::from_millis(100));
}

/// Makes the mock broker advertise `port` in its metadata, so clients come back through the
/// relay.
#[allow(unsafe_code)]
fn advertise_port(producer: &BaseProducer, port: u16) {
    let host = c"127.0.0.1";
    // SAFETY: the mock cluster handle belongs to `producer`, which outlives this call; the host
    // string is a valid NUL-terminated C string that librdkafka copies.
    unsafe {
        let cluster =
            rdkafka::bindings::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        if !cluster.is_null() {
            rdkafka::bindings::rd_kafka_mock_broker_set_host_port(
                cluster,
                1,
                host.as_ptr(),
                i32::from(port),
            );
        }
    }
}

/// Relays every connection on `127.0.0.1:port` to the mock broker at `target`.
fn start_relay(port: u16, target: &str) -> io::Result<Arc<AtomicBool>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let target = target.to_string();
    std::thread::Builder::new()
        .name("flumen-kafka-relay".into())
        .spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pump(client, server);
            }
        })?;
    Ok(stop)
}

fn pump(client: TcpStream, server: TcpStream) {
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let one_way = |mut from: TcpStream, mut to: TcpStream| {
        move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        }
    };
    let _ = std::thread::Builder::new().spawn(one_way(client, server));
    let _ = std::thread::Builder::new().spawn(one_way(server2, client2));
}
