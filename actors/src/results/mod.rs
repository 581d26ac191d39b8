//! Results.
pub(crate) mod store;
