//! The reason a result that could not be stored is answered `retry` with. When JetStream
//! refused the segment because its storage is full (the server's or the account's file-store
//! limit, or the disk itself), the reason says so in words an operator acts on, instead of
//! JetStream's bare `insufficient resources (code 503, error code 10023)`.

use std::error::Error as _;

use async_nats::jetstream::{self, ErrorCode};

use super::store::ResultStoreError;

/// JetStream error codes meaning "no room to store this message".
const STORAGE_FULL: [ErrorCode; 3] =
    [ErrorCode::INSUFFICIENT_RESOURCES, ErrorCode::STORAGE_RESOURCES_EXCEEDED, ErrorCode::ACCOUNT_RESOURCES_EXCEEDED];

/// Whether JetStream refused to store a message because its storage is full.
pub(crate) fn storage_full(e: &jetstream::context::PublishError) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| STORAGE_FULL.contains(&js.error_code()))
}

/// `unavailable: <why>` for a segment that was not stored (its results are kept by the
/// runtime and sent again).
pub(crate) fn unavailable_reason(e: &ResultStoreError) -> String {
    match e {
        ResultStoreError::Publish(p) if storage_full(p) => format!(
            "unavailable: JetStream storage is full, results are not stored until space is freed \
             (the runtime keeps them in its outbox and sends them again): {e}"
        ),
        _ => format!("unavailable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    fn api_error(code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({"code": 503, "err_code": code, "description": description})).unwrap()
    }

    #[test]
    fn a_full_store_is_named_and_other_failures_keep_their_own_words() {
        let full = PublishError::with_source(PublishErrorKind::Other, api_error(10023, "insufficient resources"));
        let why = unavailable_reason(&ResultStoreError::Publish(full));
        assert!(why.starts_with("unavailable: JetStream storage is full"), "{why}");
        assert!(why.contains("insufficient resources"), "{why}");

        let timeout = PublishError::new(PublishErrorKind::TimedOut);
        let why = unavailable_reason(&ResultStoreError::Publish(timeout));
        assert!(why.starts_with("unavailable: timed out"), "{why}");
        assert!(!why.contains("storage is full"), "{why}");

        let other = PublishError::with_source(PublishErrorKind::Other, api_error(10077, "store failed"));
        assert!(!unavailable_reason(&ResultStoreError::Publish(other)).contains("storage is full"));
    }
}
