//! The `/metrics` endpoint: a small HTTP/1.1 server on tokio that answers `GET /metrics` (and
//! `HEAD`) with the families in the OpenMetrics text format, 404 for any other path and 405
//! for any other method. One request per connection (`Connection: close`), as scrapers expect
//! from a small exporter.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use super::Metrics;

/// The content type of an OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Longest a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running `/metrics` endpoint; dropping it stops serving.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address it listens on (the port chosen when the one asked for was 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `metrics` on `addr` (port 0 picks a free port: see [`MetricsServer::local_addr`])
/// until the returned server is dropped, and logs the address it listens on.
///
/// # Errors
/// [`ServeError::Bind`] when the address cannot be bound.
pub async fn serve(addr: SocketAddr, metrics: &'static Metrics) -> Result<MetricsServer, ServeError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    metrics.set_serving();
    info!(metrics_addr = %bound, "metrics served on http://{bound}/metrics");
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(async move {
                        match tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, metrics)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(peer = %peer, error = %e, "metrics request failed"),
                            Err(_) => debug!(peer = %peer, "metrics request timed out"),
                        }
                    });
                }
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(MetricsServer { addr: bound, task })
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`head`: without the body).
    Metrics { head: bool },
    /// Another path.
    NotFound,
    /// Another method.
    NotAllowed,
    /// Not an HTTP request line.
    Bad,
}

/// Routes a request head (its first line decides).
fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics { head: method == "HEAD" },
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::NotAllowed,
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"", false).await;
        }
    }
    match route(&head) {
        Route::Metrics { head } => match metrics.encode() {
            Ok(body) => respond(&mut stream, "200 OK", CONTENT_TYPE, body.as_bytes(), head).await,
            Err(_) => respond(&mut stream, "500 Internal Server Error", "text/plain", b"cannot encode\n", head).await,
        },
        Route::NotFound => {
            respond(&mut stream, "404 Not Found", "text/plain", b"not found; try /metrics\n", false).await
        }
        Route::NotAllowed => respond(&mut stream, "405 Method Not Allowed", "text/plain", b"GET only\n", false).await,
        Route::Bad => respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", false).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics { head: false });
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics { head: false });
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics { head: true });
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::NotAllowed);
        assert_eq!(route(b"hello\r\n\r\n"), Route::Bad);
    }

    #[tokio::test]
    async fn serves_metrics_and_404_on_a_free_port() {
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        metrics.account(&steward_subjects::AccountId::parse("acme").unwrap()).lease_grants(2);
        let server = serve("127.0.0.1:0".parse().unwrap(), metrics).await.unwrap();
        assert_ne!(server.local_addr().port(), 0);
        let addr = server.local_addr();
        let get = move |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{ok}");
        assert!(ok.contains("# TYPE steward_lease_grants counter\n"), "{ok}");
        assert!(ok.contains("steward_lease_grants_total{account=\"acme\"} 2\n") && ok.ends_with("# EOF\n"), "{ok}");
        let missing = get("/other").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
    }
}
