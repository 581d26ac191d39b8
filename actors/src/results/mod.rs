//! Results of assessments: where they are stored and how they are read back.
//!
//! Layout: `store` writes the results the lease service accepted (fenced on the holder and
//! epoch of their spec) to `STEWARD_RESULTS`, one segment per host and request, deduplicated by
//! the first result's idempotency key; [`client`] reads them back, filtered by host, time and
//! spec. `unavailable` words the reason a result must be sent again (storage full, ...).
//! Readers that derive state from results (telemetry, alarms) follow the stream through
//! [`feed`] and name each result's check with [`catalog`].

pub mod catalog;
pub mod client;
pub mod feed;
pub(crate) mod store;
mod unavailable;
