//! Fetching configuration candidates from a source: `file://PATH`, `http://URL` or `https://URL`.

use std::time::Duration;

use tokio::io::AsyncReadExt;

/// Largest candidate fetched, in bytes (a larger one is refused as too large by validation).
pub const MAX_FETCH: usize = steward_subjects::config::validate::MAX_DOCUMENT_BYTES + 1;
/// Time one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A message naming what is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(format!("config source {url:?} has no path"));
            }
            return Ok(SourceUrl::File(path.into()));
        }
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let parsed = reqwest::Url::parse(url).map_err(|e| format!("config source {url:?}: {e}"))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(format!("config source {url:?} has no host"));
            }
            return Ok(SourceUrl::Http(url.to_owned()));
        }
        Err(format!("config source {url:?} must start with file://, http:// or https://"))
    }

    /// Fetches the candidate's bytes (at most [`MAX_FETCH`]).
    ///
    /// # Errors
    /// A message saying why the fetch failed (I/O, TLS, HTTP status, timeout).
    pub async fn fetch(&self) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!("fetch took longer than {FETCH_TIMEOUT:?}")),
        }
    }

    async fn fetch_inner(&self) -> Result<Vec<u8>, String> {
        match self {
            SourceUrl::File(path) => {
                let f =
                    tokio::fs::File::open(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let mut buf = Vec::new();
                f.take(MAX_FETCH as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Ok(buf)
            }
            SourceUrl::Http(url) => {
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .user_agent(format!("steward/{}", steward_subjects::STEWARD_VERSION))
                    .build()
                    .map_err(|e| format!("http client: {e}"))?;
                let mut resp = client.get(url).send().await.map_err(|e| format!("cannot fetch {url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("cannot fetch {url}: http status {}", resp.status()));
                }
                let mut buf = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| format!("cannot read {url}: {e}"))? {
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
    }
}
