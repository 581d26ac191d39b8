//! The scenarios, one module each. [`registry`] lists them in the order `all` runs them.

pub mod apply;
pub mod dispatch;
pub mod lease;
pub mod presence;
pub mod raw;
pub mod results;

use crate::scenario::ScenarioDef;

/// Every scenario, in the order `all` runs them (`raw` first: the others compare against it).
#[must_use]
pub fn registry() -> Vec<ScenarioDef> {
    vec![raw::DEF, presence::DEF, dispatch::DEF, lease::DEF, results::DEF, apply::DEF]
}
