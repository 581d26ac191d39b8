//! The assessment runtime: it runs in every edge agent and standalone as `steward runtime`.
//!
//! Layout: [`executor`] runs one check (command, http, tcp, ssh); [`actor`] is the runtime
//! actor — leases, schedules, runs, and delivers results through its outbox — with its typed
//! [`RuntimeHandle`]; its local store lives in `steward_storage::runtime`.

pub mod actor;
pub mod executor;

pub use actor::{RuntimeActor, RuntimeArgs, RuntimeHandle, RuntimeMsg, RuntimeStatus};
