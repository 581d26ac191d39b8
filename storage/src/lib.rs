//! Steward's embedded redb stores, one per process that needs local state.
//!
//! Layout: [`edge`] is the edge agent's store — its identity (host id, labels, first start) and
//! its enabled workers — so a restarted agent comes back as the same host; [`runtime`] is the
//! assessment runtime's store — last-known specs and configuration, and the result outbox.
//!
//! Each store declares its tables as `const TableDefinition`s at the top of its module; values
//! are MessagePack with named fields so records can grow fields. redb transactions are blocking:
//! callers on an async task run them through `spawn_blocking`.

pub mod edge;
pub mod runtime;

/// Errors of the stores: redb's own error of each family is kept as the source, so a caller
/// can tell a full disk ([`redb::StorageError::Io`]) from a corrupt file or a bad record.
/// Messages also print the source's text, because the actors log them with `to_string()`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or created (not a redb file, locked, unreadable).
    #[error("cannot open store at {path}: {source}")]
    Open {
        /// Path of the database file.
        path: String,
        /// redb's reason.
        #[source]
        source: redb::DatabaseError,
    },
    /// A transaction could not begin.
    #[error("store transaction failed to begin: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened.
    #[error("store table cannot be opened: {0}")]
    Table(#[from] redb::TableError),
    /// A read or write inside a transaction failed (I/O, corruption).
    #[error("store read or write failed: {0}")]
    Storage(#[from] redb::StorageError),
    /// A write transaction could not commit; nothing of it is stored.
    #[error("store commit failed: {0}")]
    Commit(#[from] redb::CommitError),
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table}: {source}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// The decoder's error.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The edge store has no identity yet: [`edge::EdgeStore::start`] was not called.
    #[error("the store has no identity yet (start it first)")]
    NoIdentity,
}
