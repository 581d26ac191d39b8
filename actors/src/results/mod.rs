//! Results of assessments: where they are stored and how they are read back.
//!
//! Layout: `store` writes the results the lease service accepted (fenced on the holder and
//! epoch of their spec) to `STEWARD_RESULTS`, one segment per host and request, deduplicated by
//! the first result's idempotency key; [`client`] reads them back, filtered by host, time and
//! spec. `unavailable` words the reason a result must be sent again (storage full, ...).

pub mod client;
pub(crate) mod store;
mod unavailable;
