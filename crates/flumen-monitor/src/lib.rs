//! # Flumen's monitoring server
//!
//! Spark shows its queries on `http://localhost:4040`; so does Flumen, without a cluster. A
//! [`MonitorServer`] watches every streaming query of a [`StreamSession`] — those running when it
//! starts and those started later — and serves, on a background thread:
//!
//! | path | what |
//! |---|---|
//! | `/` | a live page: the session's queries, with charts of input vs processing rate, batch duration by phase, watermark and state size, refreshed every second |
//! | `/api/queries` | JSON array of the session's query runs: `id`, `runId`, `name`, `status`, `isActive`, `exception`, `lastProgress` |
//! | `/api/queries/{id}` | one of them, by query id (latest run) or run id |
//! | `/api/queries/{id}/progress` | its recorded progress reports, oldest first (Spark's `StreamingQueryProgress` JSON); `?limit=N` keeps the last N |
//! | `/metrics` | Prometheus text format 0.0.4: rows in/out, batch durations, Kafka lag per partition, watermark, state rows and bytes |
//!
//! It binds `127.0.0.1:4040` by default and refuses a non-loopback address unless
//! [`MonitorServerBuilder::allow_non_loopback`] says so: the page shows query names, offsets
//! and error messages to whoever can reach it. Port 0 picks a free port; [`MonitorServer::addr`]
//! tells which. Dropping the handle (or [`MonitorServer::stop`]) stops the server.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Write};
//! use std::sync::Arc;
//! use flumen_engine::datafusion::arrow::array::{Int64Array, RecordBatch};
//! use flumen_engine::datafusion::arrow::datatypes::{DataType, Field, Schema};
//! use flumen_engine::prelude::*;
//! use flumen_monitor::MonitorServer;
//!
//! let session = StreamSession::new();
//! let server = MonitorServer::builder().port(0).start(&session)?; // 0: any free port
//! println!("watch the queries at {}", server.url());
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
//! let input = MemoryStream::new("numbers", schema.clone());
//! input.add_batch(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?)?;
//! let query = session.stream(Arc::new(input))?.write_stream().memory().query_name("numbers").start().await?;
//! query.process_all_available().await?;
//!
//! // Any HTTP client will do; here, a raw request.
//! let mut http = std::net::TcpStream::connect(server.addr())?;
//! http.write_all(b"GET /api/queries HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
//! let mut response = String::new();
//! http.read_to_string(&mut response)?;
//! assert!(response.starts_with("HTTP/1.1 200 OK"));
//! assert!(response.contains(r#""name":"numbers""#) && response.contains(r#""numInputRows":3"#));
//! query.stop().await?;
//! # Ok(()) }
//! ```

mod api;
mod history;
mod http;
mod metrics;
mod routes;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;

use flumen_engine::{ListenerId, StreamSession};

use crate::history::{History, Recorder};
use crate::http::ServerThread;

/// Spark UI's port, and the server's default.
pub const DEFAULT_PORT: u16 = 4040;
/// Progress reports kept per query run for the charts, by default.
pub const DEFAULT_HISTORY: usize = 1000;
/// The live page: one self-contained HTML file (inline CSS, JS and SVG; no external resources).
const PAGE: &str = include_str!("page.html");

/// Errors starting a monitoring server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The address is not a loopback one and non-loopback binds were not allowed.
    #[error(
        "refusing to serve the monitoring page on {addr}, which is not a loopback address: it shows query names, offsets and errors to anyone who can reach it. \
         Bind 127.0.0.1 (the default), or call .allow_non_loopback(true) on the builder to serve it there anyway"
    )]
    NonLoopback {
        /// The refused address.
        addr: SocketAddr,
    },

    /// The address could not be bound (in use, or not an address of this machine).
    #[error(
        "cannot listen on {addr}: {source}; choose another port with .port(...) (0 picks a free one)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The server's thread or socket could not be set up.
    #[error("cannot start the monitoring server: {0}")]
    Io(#[from] std::io::Error),
}

/// Result type of this crate.
pub type Result<T, E = MonitorError> = std::result::Result<T, E>;

/// Configures a [`MonitorServer`]; from [`MonitorServer::builder`].
#[derive(Debug, Clone)]
pub struct MonitorServerBuilder {
    host: IpAddr,
    port: u16,
    allow_non_loopback: bool,
    history: usize,
}

impl Default for MonitorServerBuilder {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            allow_non_loopback: false,
            history: DEFAULT_HISTORY,
        }
    }
}

impl MonitorServerBuilder {
    /// The port to listen on. Default [`DEFAULT_PORT`] (4040, like Spark's UI); 0 picks a free
    /// port (see [`MonitorServer::addr`]).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The address to listen on. Default `127.0.0.1`. A non-loopback address (e.g. `0.0.0.0`)
    /// also needs [`allow_non_loopback`](Self::allow_non_loopback).
    #[must_use]
    pub fn host(mut self, host: impl Into<IpAddr>) -> Self {
        self.host = host.into();
        self
    }

    /// Allows listening on a non-loopback address, which exposes the page, the API and the
    /// metrics to the network (there is no authentication). Default false.
    #[must_use]
    pub fn allow_non_loopback(mut self, allow: bool) -> Self {
        self.allow_non_loopback = allow;
        self
    }

    /// How many progress reports to keep per query run for the charts (the oldest are dropped).
    /// Default [`DEFAULT_HISTORY`] (1000); at least 1.
    #[must_use]
    pub fn history(mut self, reports: usize) -> Self {
        self.history = reports.max(1);
        self
    }

    /// Starts serving `session`'s queries on a background thread.
    pub fn start(self, session: &StreamSession) -> Result<MonitorServer> {
        let requested = SocketAddr::new(self.host, self.port);
        if !self.host.is_loopback() && !self.allow_non_loopback {
            return Err(MonitorError::NonLoopback { addr: requested });
        }
        let listener = TcpListener::bind(requested).map_err(|source| MonitorError::Bind {
            addr: requested,
            source,
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;

        let history = Arc::new(History::new(self.history));
        // Register, then seed under the history's lock: events that race with the seeding wait
        // for it and are then recognised as duplicates.
        let listener_id = {
            let mut runs = history.lock();
            let id = session.add_listener(Arc::new(Recorder {
                history: Arc::clone(&history),
                session: session.clone(),
            }));
            history.seed(&mut runs, session);
            id
        };

        let app = routes::router(session.clone(), Arc::clone(&history));
        let server = match ServerThread::spawn(listener, app) {
            Ok(server) => server,
            Err(e) => {
                session.remove_listener(listener_id);
                return Err(MonitorError::Io(e));
            }
        };
        tracing::info!(%addr, "monitoring server started");
        Ok(MonitorServer {
            addr,
            server,
            session: session.clone(),
            listener_id,
        })
    }
}

/// A running monitoring server. Stops when dropped.
#[derive(Debug)]
pub struct MonitorServer {
    addr: SocketAddr,
    server: ServerThread,
    session: StreamSession,
    listener_id: ListenerId,
}

impl MonitorServer {
    /// A builder with the defaults: `127.0.0.1:4040`, loopback only, 1000 reports per query.
    pub fn builder() -> MonitorServerBuilder {
        MonitorServerBuilder::default()
    }

    /// The address the server listens on (with the actual port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL, e.g. `http://127.0.0.1:4040/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops serving: the port is closed when this returns; requests being answered get up to
    /// two seconds to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.server.stop();
        self.session.remove_listener(self.listener_id);
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    /// Sends raw bytes, returns (status, head, body).
    fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head.to_string(), body.to_string())
    }

    #[test]
    fn answers_every_request_with_the_right_status() {
        let session = StreamSession::new();
        let server = MonitorServer::builder().port(0).start(&session).unwrap();
        let addr = server.addr();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        assert_eq!(server.url(), format!("http://{addr}/"));

        let (status, head, body) = exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: text/html; charset=utf-8"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Connection: close"));
        assert!(body.contains("<title>Flumen"));
        let without_svg_namespace = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !without_svg_namespace.contains("http://")
                && !without_svg_namespace.contains("https://"),
            "the page loads no external resources"
        );

        let (status, head, body) = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
        assert!(!head.contains("Content-Length: 0"));
        assert_eq!(body, "");

        let (status, head, body) = exchange(addr, b"GET /api/queries HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.as_str()), (200, "[]"));
        assert!(head.contains("Content-Type: application/json"));

        let (status, _, body) = exchange(addr, b"GET /api/queries/nope/progress HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
            "no query with id or runId 'nope' in this session; GET /api/queries lists them"
        );
        let (status, _, _) = exchange(addr, b"GET /api/nothing HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        let (status, head, _) = exchange(addr, b"GET /nothing HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        assert!(head.contains("text/plain"));

        let (status, head, _) = exchange(
            addr,
            b"POST /api/queries HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert_eq!(status, 405);
        assert!(head.contains("Allow: GET,HEAD"), "{head}");
        let (status, _, _) = exchange(addr, b"nonsense\r\n\r\n");
        assert_eq!(status, 400);
        // hyper reads an unknown protocol version as a malformed request line.
        let (status, _, _) = exchange(addr, b"GET / HTTP/3\r\n\r\n");
        assert_eq!(status, 400);
        let (status, _, _) = exchange(
            addr,
            b"GET /api/queries/x/progress?limit=-1 HTTP/1.1\r\n\r\n",
        );
        assert_eq!(status, 400);
        let mut huge = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 20_000));
        huge.extend_from_slice(b"\r\n\r\n");
        let (status, _, _) = exchange(addr, &huge);
        assert_eq!(status, 431);
        // A client that connects and leaves does not disturb the server.
        drop(TcpStream::connect(addr).unwrap());
        let (status, _, _) = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(status, 200);

        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "the port is closed once the server stops"
        );
    }

    #[test]
    fn refuses_non_loopback_addresses_unless_allowed() {
        let session = StreamSession::new();
        let error = MonitorServer::builder()
            .host(Ipv4Addr::UNSPECIFIED)
            .port(0)
            .start(&session)
            .unwrap_err();
        assert!(matches!(error, MonitorError::NonLoopback { .. }));
        let message = error.to_string();
        assert!(
            message.contains("0.0.0.0:0") && message.contains(".allow_non_loopback(true)"),
            "{message}"
        );
        let server = MonitorServer::builder()
            .host(Ipv4Addr::UNSPECIFIED)
            .port(0)
            .allow_non_loopback(true)
            .start(&session)
            .unwrap();
        assert!(server.addr().ip().is_unspecified());
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_it() {
        let session = StreamSession::new();
        let first = MonitorServer::builder().port(0).start(&session).unwrap();
        let error = MonitorServer::builder()
            .port(first.addr().port())
            .start(&session)
            .unwrap_err();
        assert!(matches!(error, MonitorError::Bind { .. }));
        assert!(
            error.to_string().contains(&first.addr().to_string()),
            "{error}"
        );
    }
}
