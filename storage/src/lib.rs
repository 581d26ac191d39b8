//! Steward's embedded redb stores, one per process that needs local state.
//!
//! Layout: [`edge`] is the edge agent's store — its identity (host id, labels, first start) and
//! its enabled workers — so a restarted agent comes back as the same host; [`runtime`] is the
//! assessment runtime's store — last-known specs and configuration, and the result outbox. Each store declares
//! its tables as `const TableDefinition`s at the top of its module; values are MessagePack with
//! named fields so records can grow fields. redb transactions are blocking: callers on an async
//! task run them through `spawn_blocking`.

pub mod edge;
pub mod runtime;

/// Errors of the stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or created.
    #[error("cannot open store at {path}: {reason}")]
    Open {
        /// Path of the database file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A read or write transaction failed.
    #[error("store transaction failed: {0}")]
    Transaction(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table}: {reason}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Decoder's reason.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(String),
}

macro_rules! tx_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Transaction(e.to_string())
            }
        }
    )*};
}
tx_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
