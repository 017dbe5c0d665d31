//! The server's HTTP layer: hyper's HTTP/1.1 connections carrying axum's router (see
//! [`routes`](crate::routes)), on a single-threaded Tokio runtime owned by the server's thread.
//! Owning its runtime lets the server start the same way inside or outside an application's
//! runtime, and keeps it from competing with the queries for the application's worker threads.
//!
//! Limits: request heads up to 16 KiB (larger ones are answered 431), 5 s to send the head,
//! one request per connection, at most 32 connections served at once (more are answered 503).

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::http::StatusCode;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinSet;

/// The largest request head (request line and headers) accepted; hyper's minimum is 8 KiB.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may take in all, answer included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more are answered 503 straight away.
const MAX_CONNECTIONS: usize = 32;
/// How long a stopping server lets the connections it is answering finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The thread serving a listener; [`stop`](Self::stop) closes the port and waits for it.
#[derive(Debug)]
pub(crate) struct ServerThread {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Serves `app` on `listener` (a bound, non-blocking socket) from a new thread.
    pub(crate) fn spawn(
        listener: std::net::TcpListener,
        app: axum::Router,
    ) -> io::Result<ServerThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("flumen-monitor")
            .build()?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (shutdown, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("flumen-monitor".into())
            .spawn(move || runtime.block_on(serve(listener, app, stopped)))?;
        Ok(ServerThread {
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Stops accepting, lets the connections being answered finish (for up to 2 s) and waits
    /// for the thread; the port is closed when this returns.
    pub(crate) fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // Err: the thread has already ended.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the monitoring server's thread panicked");
        }
    }
}

/// Accepts connections until told to stop.
async fn serve(listener: TcpListener, app: axum::Router, mut stop: oneshot::Receiver<()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let busy = busy_router();
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::debug!(%error, "monitoring server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => connections.spawn(serve_connection(stream, app.clone(), Some(permit))),
            Err(_) => connections.spawn(serve_connection(stream, busy.clone(), None)),
        };
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::debug!("monitoring server: connections still open at shutdown were closed");
    }
}

/// Answers one request on `stream` and closes it.
async fn serve_connection(
    stream: TcpStream,
    app: axum::Router,
    _permit: Option<OwnedSemaphorePermit>,
) {
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(false)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "monitoring server: connection ended badly"),
        Err(_) => tracing::debug!("monitoring server: connection timed out"),
    }
}

/// What a connection over the limit is answered.
fn busy_router() -> axum::Router {
    axum::Router::new().fallback(|| async {
        Ok::<_, Infallible>((
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            "the monitoring server is answering too many requests; retry in a second\n",
        ))
    })
}
