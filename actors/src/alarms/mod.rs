//! Alarms: rules from the configuration document evaluated against every stored result, one
//! alarm per (host, check, rule), transitions stored once on the alarm's subject, silences,
//! acknowledgements and notifications.
//!
//! Layout: [`eval`] is the pure evaluation (rules compiled, per-track windows, transitions);
//! [`store`] the JetStream state (transitions appended with the alarm's expected last sequence,
//! the alarm record in `steward_alarms`, silences, timelines).
pub mod eval;
pub mod store;
