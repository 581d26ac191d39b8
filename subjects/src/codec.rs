//! Payload encoding: MessagePack with named fields by default, JSON on request.
//!
//! A request whose `Content-Type` header is `application/json` is decoded as JSON and answered
//! in JSON; anything else is MessagePack. Payloads over [`MAX_PAYLOAD`] are refused before
//! decoding.

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::WireError;

/// The header naming the payload encoding.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Content type of JSON payloads.
pub const JSON: &str = "application/json";
/// Content type of MessagePack payloads.
pub const MSGPACK: &str = "application/msgpack";
/// Largest request payload a Steward endpoint decodes, in bytes.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// MessagePack with named fields (the default).
    #[default]
    MsgPack,
    /// JSON.
    Json,
}

impl Encoding {
    /// The encoding a message's headers ask for.
    #[must_use]
    pub fn from_headers(headers: Option<&HeaderMap>) -> Self {
        let is_json = headers
            .and_then(|h| h.get(CONTENT_TYPE))
            .map(|v| v.as_str().split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(JSON))
            .unwrap_or(false);
        if is_json {
            Encoding::Json
        } else {
            Encoding::MsgPack
        }
    }

    /// The content type naming this encoding.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::MsgPack => MSGPACK,
            Encoding::Json => JSON,
        }
    }

    /// Headers that announce this encoding.
    #[must_use]
    pub fn headers(self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, self.content_type());
        h
    }
}

/// A payload that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded (a bug: wire types always encode).
    #[error("cannot encode {encoding:?} payload: {reason}")]
    Encode {
        /// The encoding attempted.
        encoding: Encoding,
        /// Why it failed.
        reason: String,
    },
    /// The bytes are not a valid payload of the expected type.
    #[error("malformed {} payload: {reason}", encoding.content_type())]
    Decode {
        /// The encoding expected.
        encoding: Encoding,
        /// Why decoding failed.
        reason: String,
    },
    /// The payload is larger than allowed.
    #[error("payload of {len} bytes is larger than the {max} bytes allowed")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl From<CodecError> for WireError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Encode { .. } => WireError::internal(e.to_string()),
            _ => WireError::invalid(e.to_string()),
        }
    }
}

/// Encodes `value`.
///
/// # Errors
/// [`CodecError::Encode`] if serialization fails.
pub fn encode<T: Serialize + ?Sized>(encoding: Encoding, value: &T) -> Result<Bytes, CodecError> {
    let r = match encoding {
        Encoding::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
    };
    r.map(Bytes::from).map_err(|reason| CodecError::Encode { encoding, reason })
}

/// Decodes `bytes` as a `T`, refusing payloads over [`MAX_PAYLOAD`].
///
/// An empty payload decodes as if it were an empty map, so requests without parameters may be
/// sent with no body at all.
///
/// # Errors
/// [`CodecError::TooLarge`] or [`CodecError::Decode`].
pub fn decode<T: DeserializeOwned>(encoding: Encoding, bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited(encoding, bytes, MAX_PAYLOAD)
}

/// Like [`decode`] with an explicit size limit.
///
/// # Errors
/// [`CodecError::TooLarge`] or [`CodecError::Decode`].
pub fn decode_limited<T: DeserializeOwned>(encoding: Encoding, bytes: &[u8], max: usize) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge { len: bytes.len(), max });
    }
    let bytes: &[u8] = if bytes.is_empty() {
        match encoding {
            Encoding::MsgPack => &[0x80],
            Encoding::Json => b"{}",
        }
    } else {
        bytes
    };
    match encoding {
        Encoding::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
    .map_err(|reason| CodecError::Decode { encoding, reason })
}
