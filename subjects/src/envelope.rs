//! The one reply envelope every Steward endpoint answers with.
//!
//! A reply is either `{"ok": true, "data": ...}` or
//! `{"ok": false, "error": {"code": "invalid", "message": "...", "details": [...]}}`, in
//! MessagePack with named fields or in JSON when the request asked for JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::token::TokenError;

/// Stable error codes callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or failed validation.
    Invalid,
    /// The thing asked for does not exist.
    NotFound,
    /// The request conflicts with the current state (stale revision, stale epoch, ...).
    Conflict,
    /// A dependency is unavailable right now; retrying later may succeed.
    Unavailable,
    /// The operation did not finish in time.
    Timeout,
    /// The caller may not do this.
    Forbidden,
    /// A bug or an unexpected failure on the serving side.
    Internal,
    /// A code this peer does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name of the code.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One precise problem inside a larger error (for example one validation failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// JSON pointer to the offending part of the input (`/assessments/3/timeout`), or empty.
    #[serde(default)]
    pub pointer: String,
    /// What is wrong there.
    #[serde(default)]
    pub reason: String,
}

/// An error as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// Stable code to branch on.
    pub code: ErrorCode,
    /// Human-readable message (lowercase, no trailing period).
    #[serde(default)]
    pub message: String,
    /// Individual problems, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

impl WireError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError { code, message: message.into(), details: Vec::new() }
    }

    /// An `invalid` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    /// A `not_found` error.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// A `conflict` error.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// An `unavailable` error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Adds details.
    #[must_use]
    pub fn with_details(mut self, details: Vec<ErrorDetail>) -> Self {
        self.details = details;
        self
    }
}

impl From<TokenError> for WireError {
    fn from(e: TokenError) -> Self {
        WireError::invalid(e.to_string())
    }
}

/// The reply envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// `true` when `data` is set, `false` when `error` is set.
    pub ok: bool,
    /// The reply data on success.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    /// The error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Envelope<T> {
    /// A success envelope.
    pub fn success(data: T) -> Self {
        Envelope { ok: true, data: Some(data), error: None }
    }

    /// A failure envelope.
    pub fn failure(error: WireError) -> Self {
        Envelope { ok: false, data: None, error: Some(error) }
    }

    /// Turns the envelope into a `Result`.
    ///
    /// # Errors
    /// The carried [`WireError`], or an `internal` error when the envelope is inconsistent.
    pub fn into_result(self) -> Result<T, WireError> {
        match (self.ok, self.data, self.error) {
            (true, Some(d), _) => Ok(d),
            (false, _, Some(e)) => Err(e),
            (true, None, _) => Err(WireError::internal("envelope says ok but carries no data")),
            (false, _, None) => Err(WireError::internal("envelope says failed but carries no error")),
        }
    }
}

impl<T> From<Result<T, WireError>> for Envelope<T> {
    fn from(r: Result<T, WireError>) -> Self {
        match r {
            Ok(d) => Envelope::success(d),
            Err(e) => Envelope::failure(e),
        }
    }
}
