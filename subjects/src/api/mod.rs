//! Request and reply types of the Steward endpoints (wire types: MessagePack with named fields,
//! every field defaulted so older peers keep working when fields are added). One module per
//! noun of the subject grammar.

pub mod alarm;
pub mod config;
pub mod dead_letter;
pub mod health;
pub mod host;
pub mod jobspec;
pub mod lease;
pub mod remediation;
pub mod result;
pub mod run;
pub mod telemetry;
