//! The Steward wire contract.
//!
//! Layout: [`token`] validates every user-supplied subject token; [`subject`] is the only place
//! that formats or parses `steward.v1.<account>.<noun>.<verb>[.<target>]`; [`envelope`] is the
//! one reply shape with stable error codes; [`codec`] encodes payloads as MessagePack with named
//! fields (JSON when a request says `Content-Type: application/json`); [`rpc`] decodes requests,
//! answers them and offers a typed client call; [`trace`] writes and reads the W3C trace context
//! in NATS headers (off until enabled); [`selector`] parses and matches label selectors;
//! [`streams`] defines the JetStream streams, buckets and object stores with an idempotent
//! `ensure`; [`api`] holds the request and reply types of the endpoints; [`config`] is the
//! configuration document, its validation and the job specs it renders into.

pub mod api;
pub mod codec;
pub mod config;
pub mod envelope;
pub mod rpc;
pub mod selector;
pub mod streams;
pub mod subject;
pub mod token;
pub mod trace;

pub use envelope::{Envelope, ErrorCode, WireError};
pub use subject::Subjects;
pub use token::{AccountId, HostId, RuntimeId, Token, TokenError, TokenKind};

/// The Steward version every component reports.
pub const STEWARD_VERSION: &str = env!("CARGO_PKG_VERSION");
