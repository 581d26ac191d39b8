//! Fetching configuration candidates from a source: `file://PATH`, `http://URL` or `https://URL`.

use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Largest candidate fetched, in bytes (a larger one is refused as too large by validation).
pub const MAX_FETCH: usize = steward_subjects::config::validate::MAX_DOCUMENT_BYTES + 1;
/// Time one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a source URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// `file://` without a path.
    #[error("config source {url:?} has no path")]
    NoPath {
        /// The URL given.
        url: String,
    },
    /// An `http(s)://` URL that does not parse.
    #[error("config source {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An `http(s)://` URL without a host.
    #[error("config source {url:?} has no host")]
    NoHost {
        /// The URL given.
        url: String,
    },
    /// Neither `file://`, `http://` nor `https://`.
    #[error("config source {url:?} must start with file://, http:// or https://")]
    Scheme {
        /// The URL given.
        url: String,
    },
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The fetch took longer than [`FETCH_TIMEOUT`].
    #[error("fetch took longer than {0:?}")]
    TimedOut(Duration),
    /// The file or the response body could not be read.
    #[error("cannot read {from}: {reason}")]
    Read {
        /// The path or URL.
        from: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(String),
    /// The request failed (connection, TLS, timeout).
    #[error("cannot fetch {url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with a status other than success.
    #[error("cannot fetch {url}: http status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status, as the server gave it.
        status: String,
    },
}

/// Where configuration candidates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUrl {
    /// A local file.
    File(std::path::PathBuf),
    /// An `http://` or `https://` URL.
    Http(String),
}

impl SourceUrl {
    /// Parses `file://PATH`, `http://...` or `https://...`.
    ///
    /// # Errors
    /// [`SourceError`] naming what is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, SourceError> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(SourceError::NoPath { url: url.to_owned() });
            }
            return Ok(SourceUrl::File(path.into()));
        }
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| SourceError::BadUrl { url: url.to_owned(), reason: e.to_string() })?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(SourceError::NoHost { url: url.to_owned() });
            }
            return Ok(SourceUrl::Http(url.to_owned()));
        }
        Err(SourceError::Scheme { url: url.to_owned() })
    }

    /// Fetches the candidate's bytes (at most [`MAX_FETCH`]).
    ///
    /// # Errors
    /// [`FetchError`] saying why the fetch failed (I/O, TLS, HTTP status, timeout).
    pub async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner()).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::TimedOut(FETCH_TIMEOUT)),
        }
    }

    async fn fetch_inner(&self) -> Result<Vec<u8>, FetchError> {
        match self {
            SourceUrl::File(path) => {
                let read_err =
                    |e: std::io::Error| FetchError::Read { from: path.display().to_string(), reason: e.to_string() };
                let f = tokio::fs::File::open(path).await.map_err(read_err)?;
                let mut buf = Vec::new();
                f.take(MAX_FETCH as u64).read_to_end(&mut buf).await.map_err(read_err)?;
                Ok(buf)
            }
            SourceUrl::Http(url) => {
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .user_agent(format!("steward/{}", steward_subjects::STEWARD_VERSION))
                    .build()
                    .map_err(|e| FetchError::Client(e.to_string()))?;
                let mut resp = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| FetchError::Request { url: url.clone(), reason: e.to_string() })?;
                if !resp.status().is_success() {
                    return Err(FetchError::Status { url: url.clone(), status: resp.status().to_string() });
                }
                let mut buf = Vec::new();
                while let Some(chunk) =
                    resp.chunk().await.map_err(|e| FetchError::Read { from: url.clone(), reason: e.to_string() })?
                {
                    buf.extend_from_slice(&chunk);
                    if buf.len() >= MAX_FETCH {
                        buf.truncate(MAX_FETCH);
                        break;
                    }
                }
                Ok(buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_urls() {
        assert_eq!(SourceUrl::parse("file:///etc/x.json"), Ok(SourceUrl::File("/etc/x.json".into())));
        assert!(matches!(SourceUrl::parse("https://cfg.example:8443/a?b=1"), Ok(SourceUrl::Http(_))));
        assert!(SourceUrl::parse("ftp://x").is_err());
        assert!(SourceUrl::parse("file://").is_err());
        assert!(SourceUrl::parse("http://").is_err());
        assert!(matches!(SourceUrl::parse("ftp://x"), Err(SourceError::Scheme { .. })));
        assert!(matches!(SourceUrl::parse("file://"), Err(SourceError::NoPath { .. })));
    }
}
