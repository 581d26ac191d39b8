//! Typed client for reading stored results: [`ResultsClient::query`] reads `STEWARD_RESULTS`
//! (segments or single results) with an ordered consumer, for the CLI and for explanations.
//! Results are written only by the lease leader after the epoch check (`results::store`).

use std::time::Duration;

use steward_subjects::Subjects;

/// Which stored results [`ResultsClient::query`] returns.
#[derive(Debug, Clone, Default)]
pub struct ResultQuery {
    /// Only results of this spec.
    pub spec: Option<String>,
    /// Only results filed under this host (edge host id, or runtime id of a standalone
    /// runtime).
    pub host: Option<steward_subjects::HostId>,
    /// Only results stored at or after this time.
    pub since: Option<time::OffsetDateTime>,
    /// At most this many, the most recent ones (0 = 100).
    pub limit: usize,
}

/// Reads the stored results of one account.
#[derive(Debug, Clone)]
pub struct ResultsClient {
    client: async_nats::Client,
    subjects: Subjects,
}

impl ResultsClient {
    /// A client for the account of `subjects`.
    #[must_use]
    pub fn new(client: async_nats::Client, subjects: Subjects) -> Self {
        ResultsClient { client, subjects }
    }

    /// Reads stored results from the `STEWARD_RESULTS` stream with an ordered consumer
    /// (filtered by host subject and start time on the server, by spec here), oldest first.
    ///
    /// # Errors
    /// [`ActorsError::Unavailable`](crate::ActorsError::Unavailable) when the stream cannot be
    /// read.
    pub async fn query(
        &self,
        q: &ResultQuery,
    ) -> Result<Vec<steward_subjects::api::result::ResultRecord>, crate::ActorsError> {
        query(&self.client, &self.subjects, q).await
    }
}

async fn query(
    client: &async_nats::Client,
    subjects: &Subjects,
    q: &ResultQuery,
) -> Result<Vec<steward_subjects::api::result::ResultRecord>, crate::ActorsError> {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt;
    let unavailable = |e: String| crate::ActorsError::Unavailable(format!("results stream ({e})"));
    let js = jetstream::new(client.clone());
    let stream =
        js.get_stream(steward_subjects::streams::RESULTS_STREAM).await.map_err(|e| unavailable(e.to_string()))?;
    let filter = q.host.as_ref().map_or_else(|| subjects.result_put_all(), |h| subjects.result_put_host(h));
    let deliver_policy = match q.since {
        Some(t) => consumer::DeliverPolicy::ByStartTime { start_time: t },
        None => consumer::DeliverPolicy::All,
    };
    let c = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let limit = if q.limit == 0 { 100 } else { q.limit };
    let mut pending = c.cached_info().num_pending;
    let mut out = std::collections::VecDeque::with_capacity(limit);
    if pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = c.messages().await.map_err(|e| unavailable(e.to_string()))?;
    while pending > 0 {
        let msg = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(unavailable(e.to_string())),
            Ok(None) | Err(_) => break,
        };
        pending = msg.info().map(|i| i.pending).unwrap_or(0);
        let Ok(results) = steward_subjects::api::result::decode_stored(msg.headers.as_ref(), &msg.payload) else {
            continue;
        };
        for r in results {
            if q.spec.as_ref().is_some_and(|s| *s != r.spec) {
                continue;
            }
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(r);
        }
    }
    Ok(out.into())
}
