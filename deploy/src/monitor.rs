//! A tiny HTTP/1.0 client for nats-server's monitoring endpoints (`/healthz`, `/varz`, `/jsz`,
//! `/leafz`, ...), so the crate needs no HTTP library.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::DeployError;

/// How long one monitoring request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// A monitoring endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The response body.
    pub body: String,
}

impl HttpResponse {
    /// Parses the body as JSON.
    ///
    /// # Errors
    ///
    /// [`DeployError::Monitor`] when the body is not JSON.
    pub fn json(&self, url: &str) -> Result<serde_json::Value, DeployError> {
        serde_json::from_str(&self.body)
            .map_err(|err| DeployError::Monitor { url: url.to_owned(), reason: format!("invalid json: {err}") })
    }
}

/// Sends `GET <path>` to `127.0.0.1:<port>` over HTTP/1.0 and returns the status and body.
///
/// # Errors
///
/// [`DeployError::Monitor`] when the connection fails, times out or the answer is not HTTP.
pub async fn http_get(port: u16, path: &str) -> Result<HttpResponse, DeployError> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let fail = |reason: String| DeployError::Monitor { url: url.clone(), reason };
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| fail(format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|err| fail(err.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| fail("no header/body separator".to_owned()))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| fail(format!("bad status line in {head:?}")))?;
    Ok(HttpResponse { status, body: body.to_owned() })
}

/// Gets a monitoring endpoint that must answer 200 with JSON, and returns the JSON.
///
/// # Errors
///
/// [`DeployError::Monitor`] on a failed request, a non-200 status or a non-JSON body.
pub async fn get_json(port: u16, path: &str) -> Result<serde_json::Value, DeployError> {
    let response = http_get(port, path).await?;
    let url = format!("http://127.0.0.1:{port}{path}");
    if response.status != 200 {
        return Err(DeployError::Monitor {
            url,
            reason: format!("status {}: {}", response.status, response.body.trim()),
        });
    }
    response.json(&url)
}
