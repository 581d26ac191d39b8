//! The `http` executor: one request with `reqwest` (rustls, bundled web PKI roots). Passes when
//! the status is the expected one and, if asked, the body contains the expected text. Reports
//! `latency_ms` (time to the response head), `status` and `body_bytes`.

use std::error::Error as _;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use steward_subjects::config::HttpExecutor as HttpSpec;

use super::{millis, Captured, ExecError, Executor, Observation, RunContext};

/// Why an HTTP check could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is not an absolute `http` or `https` URL.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The method is not a valid HTTP method.
    #[error("invalid http method {0:?}")]
    InvalidMethod(String),
    /// The client could not be built.
    #[error("cannot build http client: {0}")]
    Client(String),
    /// The TCP connection failed (refused, unreachable, name not resolved).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (bad certificate, not TLS).
    #[error("tls handshake with {url} failed: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The request or the response failed after connecting.
    #[error("request to {url} failed: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl HttpError {
    /// Stable error class.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::InvalidUrl { .. } | HttpError::InvalidMethod(_) => "invalid",
            HttpError::Client(_) => "client",
            HttpError::Connect { .. } => "connect",
            HttpError::Tls { .. } => "tls",
            HttpError::Request { .. } => "request",
        }
    }
}

/// Makes one HTTP request.
#[derive(Debug, Clone)]
pub struct HttpExecutor {
    url: reqwest::Url,
    method: reqwest::Method,
    expect_status: u16,
    body_contains: String,
    client: reqwest::Client,
    output_cap: usize,
}

fn chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn looks_like_tls(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "invalidcontenttype", "corrupt message", "unknownissuer"]
        .iter()
        .any(|w| r.contains(w))
}

impl HttpExecutor {
    /// An executor for `spec`, keeping up to `output_cap` bytes of the body.
    ///
    /// # Errors
    /// [`HttpError::InvalidUrl`], [`HttpError::InvalidMethod`] or [`HttpError::Client`].
    pub fn new(spec: &HttpSpec, output_cap: usize) -> Result<Self, HttpError> {
        let url = reqwest::Url::parse(&spec.url)
            .map_err(|e| HttpError::InvalidUrl { url: spec.url.clone(), reason: e.to_string() })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidUrl { url: spec.url.clone(), reason: "scheme must be http or https".into() });
        }
        let method_text = if spec.method.is_empty() { "GET" } else { spec.method.as_str() };
        let method = reqwest::Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
            .map_err(|_| HttpError::InvalidMethod(spec.method.clone()))?;
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(!spec.tls_verify)
            .user_agent(concat!("steward-runtime/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Client(e.to_string()))?;
        Ok(HttpExecutor {
            url,
            method,
            expect_status: if spec.expect_status == 0 { 200 } else { spec.expect_status },
            body_contains: spec.body_contains.clone(),
            client,
            output_cap,
        })
    }

    fn classify(&self, e: &reqwest::Error) -> HttpError {
        let url = self.url.to_string();
        let reason = chain(e);
        if looks_like_tls(&reason) && self.url.scheme() == "https" {
            HttpError::Tls { url, reason }
        } else if e.is_connect() {
            HttpError::Connect { url, reason }
        } else {
            HttpError::Request { url, reason }
        }
    }

    async fn execute(&self, ctx: RunContext) -> Result<Observation, ExecError> {
        let mut cancel = ctx.cancel;
        let work = async {
            let started = Instant::now();
            let mut resp = self
                .client
                .request(self.method.clone(), self.url.clone())
                .send()
                .await
                .map_err(|e| self.classify(&e))?;
            let latency = started.elapsed();
            let status = resp.status().as_u16();
            let mut body = Captured::default();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(&e))? {
                body.total += chunk.len() as u64;
                let room = self.output_cap.saturating_sub(body.bytes.len());
                body.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                body.truncated |= chunk.len() > room;
            }
            let mut obs = Observation::default();
            obs.metrics.insert("latency_ms".into(), millis(latency));
            obs.metrics.insert("status".into(), f64::from(status));
            obs.metrics.insert("body_bytes".into(), body.total as f64);
            let status_ok = status == self.expect_status;
            let body_ok = self.body_contains.is_empty()
                || String::from_utf8_lossy(&body.bytes).contains(self.body_contains.as_str());
            obs.passed = status_ok && body_ok;
            obs.message = match (status_ok, body_ok) {
                (true, true) => format!("status {status}"),
                (false, _) => format!("status {status}, expected {}", self.expect_status),
                (true, false) => format!("status {status}, body does not contain {:?}", self.body_contains),
            };
            obs.stdout = body;
            Ok::<_, ExecError>(obs)
        };
        tokio::select! {
            r = work => r,
            () = tokio::time::sleep(ctx.timeout) => Err(ExecError::Timeout { after: ctx.timeout, partial: Box::default() }),
            () = cancel.cancelled() => Err(ExecError::Canceled),
        }
    }
}

impl Executor for HttpExecutor {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn run<'a>(&'a self, ctx: RunContext) -> BoxFuture<'a, Result<Observation, ExecError>> {
        self.execute(ctx).boxed()
    }
}
