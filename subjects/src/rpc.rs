//! Request/reply on top of the envelope and codec: decoding requests and answering them on the
//! serving side, and a typed [`request`] on the calling side.
//!
//! Trace context travels in the W3C `traceparent` header: [`request`] writes the caller's span
//! context when tracing is on (`crate::trace`), and the serving side continues it with
//! [`crate::trace::hop`].

use std::time::Duration;

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, Encoding};
use crate::envelope::{Envelope, ErrorCode, WireError};

pub use crate::trace::TRACEPARENT;

/// Default time a caller waits for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Decodes a request payload in the encoding its headers ask for.
///
/// # Errors
/// An `invalid` [`WireError`] (with the encoding to answer in) when the payload is malformed or
/// too large.
pub fn decode_request<T: DeserializeOwned>(msg: &Message) -> Result<(T, Encoding), (WireError, Encoding)> {
    let enc = Encoding::from_headers(msg.headers.as_ref());
    codec::decode(enc, &msg.payload).map(|v| (v, enc)).map_err(|e| (e.into(), enc))
}

/// Encodes a reply envelope for `result` in `encoding`.
///
/// Encoding a wire type cannot fail in practice; if it does, the reply is an `internal` error
/// envelope instead (which always encodes).
#[must_use]
pub fn encode_reply<T: Serialize>(encoding: Encoding, result: Result<T, WireError>) -> Bytes {
    let env = Envelope::from(result);
    match codec::encode(encoding, &env) {
        Ok(b) => b,
        Err(e) => {
            let fallback: Envelope<()> = Envelope::failure(WireError::internal(e.to_string()));
            codec::encode(encoding, &fallback).unwrap_or_default()
        }
    }
}

/// Answers a micro-service request with an envelope in the encoding the request used.
///
/// # Errors
/// The publish error when the reply cannot be sent (the requester may be gone).
pub async fn respond<T: Serialize>(
    request: &async_nats::service::Request,
    encoding: Encoding,
    result: Result<T, WireError>,
) -> Result<(), async_nats::PublishError> {
    let payload = encode_reply(encoding, result);
    request.respond_with_headers(Ok(payload), encoding.headers()).await
}

/// Serves one micro-service request: decodes it in the encoding it arrived in, runs `handler`
/// on it (a malformed payload gets the `invalid` reply without calling it), and answers with the
/// envelope in that same encoding. While tracing is on, the handler runs in a span continuing
/// the request's trace context ([`crate::trace::serving`]).
///
/// # Errors
/// The publish error when the reply cannot be sent (the requester may be gone).
pub async fn serve<Req, Resp, F, Fut>(
    request: &async_nats::service::Request,
    handler: F,
) -> Result<(), async_nats::PublishError>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, WireError>>,
{
    let span = crate::trace::serving(&request.message.subject, request.message.headers.as_ref());
    let served = async {
        match decode_request::<Req>(&request.message) {
            Ok((req, enc)) => respond(request, enc, handler(req).await).await,
            Err((e, enc)) => respond::<Resp>(request, enc, Err(e)).await,
        }
    };
    tracing::Instrument::instrument(served, span).await
}

/// The `traceparent` of a message, if it has one.
#[must_use]
pub fn traceparent_of(msg: &Message) -> Option<String> {
    msg.headers.as_ref().and_then(|h| h.get(TRACEPARENT)).map(|v| v.as_str().to_owned())
}

/// What went wrong with a [`request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorKind {
    /// The service answered with an error envelope carrying this code.
    Remote(ErrorCode),
    /// Nobody answered in time.
    TimedOut,
    /// No service is subscribed to the subject.
    NoResponders,
    /// The connection failed.
    Transport,
    /// The reply could not be decoded, or the request not encoded.
    Codec,
}

/// A failed [`request`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    kind: RequestErrorKind,
    message: String,
    remote: Option<WireError>,
}

impl RequestError {
    /// What went wrong, to branch on.
    #[must_use]
    pub fn kind(&self) -> RequestErrorKind {
        self.kind
    }

    /// The remote error, when the service answered with one.
    #[must_use]
    pub fn remote(&self) -> Option<&WireError> {
        self.remote.as_ref()
    }

    fn new(kind: RequestErrorKind, message: impl Into<String>) -> Self {
        RequestError { kind, message: message.into(), remote: None }
    }
}

impl From<WireError> for RequestError {
    fn from(e: WireError) -> Self {
        RequestError { kind: RequestErrorKind::Remote(e.code), message: e.to_string(), remote: Some(e) }
    }
}

/// Sends `req` to `subject` as MessagePack and decodes the enveloped reply.
///
/// # Errors
/// [`RequestError`] whose [`kind`](RequestError::kind) says whether the service refused
/// (`Remote`), nobody answered (`NoResponders`, `TimedOut`) or the transport failed.
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: String,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, RequestError> {
    let payload =
        codec::encode(Encoding::MsgPack, req).map_err(|e| RequestError::new(RequestErrorKind::Codec, e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(codec::CONTENT_TYPE, codec::MSGPACK);
    crate::trace::inject(&mut headers);
    let msg = raw_request(client, subject, headers, payload, timeout).await?;
    let enc = Encoding::from_headers(msg.headers.as_ref());
    let env: Envelope<Resp> = codec::decode_limited(enc, &msg.payload, usize::MAX)
        .map_err(|e| RequestError::new(RequestErrorKind::Codec, e.to_string()))?;
    env.into_result().map_err(RequestError::from)
}

/// Sends raw bytes with headers and waits for one reply message.
///
/// # Errors
/// `TimedOut`, `NoResponders` or `Transport` [`RequestError`]s.
pub async fn raw_request(
    client: &Client,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    timeout: Duration,
) -> Result<Message, RequestError> {
    let fut = client.request_with_headers(subject.clone(), headers, payload);
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            Err(RequestError::new(RequestErrorKind::TimedOut, format!("no reply on {subject} within {timeout:?}")))
        }
        Ok(Ok(m)) => Ok(m),
        Ok(Err(e)) => {
            use async_nats::client::RequestErrorKind as K;
            let kind = match e.kind() {
                K::TimedOut => RequestErrorKind::TimedOut,
                K::NoResponders => RequestErrorKind::NoResponders,
                K::InvalidSubject | K::MaxPayloadExceeded | K::Other => RequestErrorKind::Transport,
            };
            let message = match kind {
                RequestErrorKind::NoResponders => format!("no service answers on {subject}"),
                _ => format!("request on {subject} failed: {e}"),
            };
            Err(RequestError::new(kind, message))
        }
    }
}
