//! A deliberately small HTTP/1.1 server on `std::net`: GET and HEAD only, one request per
//! connection (`Connection: close`), bounded request size, read/write timeouts and a cap on
//! concurrent connections. Enough for a monitoring page and a Prometheus scraper, with no async
//! runtime or HTTP crate to build.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// The largest request head (request line and headers) accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request, or to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// Connections served at once; more are answered 503 straight away.
const MAX_CONNECTIONS: usize = 32;

/// A parsed request: what the router needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    /// The decoded path, without the query string.
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
}

impl Request {
    /// The value of a `key=value` query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra_headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            extra_headers: Vec::new(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(
            status,
            "application/json",
            serde_json::to_vec(value).unwrap_or_default(),
        )
    }

    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", text.into())
    }

    #[must_use]
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra_headers.push((name, value.into()));
        self
    }

    /// The response's bytes; `head_only` omits the body (for HEAD) but keeps its length.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra_headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why a request could not be parsed, as the response to send.
fn reject(status: u16, message: &str) -> Response {
    Response::text(status, format!("{message}\n"))
}

/// Parses a request head (everything before the blank line).
pub(crate) fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let text = std::str::from_utf8(head).map_err(|_| reject(400, "request is not UTF-8"))?;
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(reject(400, "malformed method"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => {
            return Err(reject(505, "only HTTP/1.0 and HTTP/1.1 are supported"));
        }
        _ => return Err(reject(400, "malformed HTTP version")),
    }
    if !target.starts_with('/') {
        return Err(reject(
            400,
            "the request target must be a path starting with /",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let path = percent_decode(path).ok_or_else(|| reject(400, "malformed percent-encoding"))?;
    Ok(Request {
        method: method.to_string(),
        path,
        query,
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads a request head from `stream`: `Ok(None)` when the client closed without sending one.
fn read_head(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, Response> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(reject(408, "timed out waiting for the request"));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(reject(400, "incomplete request"))
            };
        }
        // Look for the end of the head, including across chunk boundaries.
        let from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buffer[from..], b"\r\n\r\n") {
            buffer.truncate(from + end);
            return Ok(Some(buffer));
        }
        if buffer.len() > MAX_REQUEST_HEAD {
            return Err(reject(431, "request head larger than 16 KiB"));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Handles one connection: read, route, answer, close.
fn serve(mut stream: TcpStream, route: &(dyn Fn(&Request) -> Response + Send + Sync)) {
    // Accepted sockets may inherit the listener's non-blocking mode on some platforms.
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let (response, head_only) = match read_head(&mut stream) {
        Ok(None) => return,
        Ok(Some(head)) => match parse_head(&head) {
            Ok(request) => match request.method.as_str() {
                "GET" => (route(&request), false),
                "HEAD" => (route(&request), true),
                _ => (
                    reject(405, "only GET and HEAD are supported").header("Allow", "GET, HEAD"),
                    false,
                ),
            },
            Err(response) => (response, false),
        },
        Err(response) => (response, false),
    };
    let _ = stream.write_all(&response.to_bytes(head_only));
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Drain what the client still sends (e.g. a body we ignore), so closing does not reset the
    // connection before the client has read the response.
    let mut sink = [0u8; 1024];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

/// Accepts connections until `stop` is set, serving each on its own thread.
pub(crate) fn accept_loop(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    route: Arc<dyn Fn(&Request) -> Response + Send + Sync>,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "monitor: accept failed");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        if busy.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            let mut stream = stream;
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let _ = stream.write_all(
                &reject(503, "too many connections; retry shortly")
                    .header("Retry-After", "1")
                    .to_bytes(false),
            );
            continue;
        }
        busy.fetch_add(1, Ordering::Relaxed);
        let route = Arc::clone(&route);
        let guard = Arc::clone(&busy);
        let spawned = std::thread::Builder::new()
            .name("flumen-monitor-conn".into())
            .spawn(move || {
                serve(stream, route.as_ref());
                guard.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            busy.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "monitor: cannot start a connection thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r = parse_head(b"GET /api/queries/a%2Db/progress?limit=5 HTTP/1.1\r\nHost: x").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/queries/a-b/progress");
        assert_eq!(r.param("limit"), Some("5"));
        assert_eq!(parse_head(b"GET / HTTP/2.0").unwrap_err().status, 505);
        assert_eq!(parse_head(b"GET /").unwrap_err().status, 400);
        assert_eq!(
            parse_head(b"GET http://x/ HTTP/1.1").unwrap_err().status,
            400
        );
        assert_eq!(parse_head(b"GET /%zz HTTP/1.1").unwrap_err().status, 400);
        assert_eq!(parse_head(b"get / HTTP/1.1").unwrap_err().status, 400);
        assert_eq!(parse_head(b"\xff\xfe").unwrap_err().status, 400);
    }

    #[test]
    fn head_responses_keep_the_length_but_not_the_body() {
        let r = Response::text(200, "hello");
        let full = String::from_utf8(r.to_bytes(false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(full.contains("Content-Length: 5\r\n"));
        assert!(full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\nhello"));
        let head = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(head.contains("Content-Length: 5\r\n") && head.ends_with("\r\n\r\n"));
    }
}
