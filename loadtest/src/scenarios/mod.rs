//! The scenarios, one module each. [`registry`] lists them in the order `all` runs them.

pub mod raw;

use crate::scenario::ScenarioDef;

/// Every scenario, in the order `all` runs them (`raw` first: the others compare against it).
#[must_use]
pub fn registry() -> Vec<ScenarioDef> {
    vec![raw::DEF]
}
