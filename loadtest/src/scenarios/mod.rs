//! The scenarios, one module each. [`registry`] lists them in the order `all` runs them; the
//! small helpers here (unique names, client connections) are shared by several of them.

pub mod apply;
pub mod dispatch;
pub mod lease;
pub mod presence;
pub mod raw;
pub mod results;
pub mod telemetry;
pub mod tenants;

use crate::scenario::{Ctx, ScenarioDef};

/// Every scenario, in the order `all` runs them (`raw` first: the others compare against it).
#[must_use]
pub fn registry() -> Vec<ScenarioDef> {
    vec![raw::DEF, presence::DEF, dispatch::DEF, lease::DEF, results::DEF, apply::DEF, tenants::DEF, telemetry::DEF]
}

/// A name part unique within this machine's runs (process id and a counter), for accounts,
/// subjects, streams and buckets a measurement creates for itself.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// `n` client connections to `account` named `<prefix>-<i>`, shared round-robin by simulated
/// runtimes.
pub(crate) async fn connect_clients(
    ctx: &Ctx,
    account: &str,
    prefix: &str,
    n: u64,
) -> anyhow::Result<Vec<async_nats::Client>> {
    let mut clients = Vec::new();
    for c in 0..n {
        clients.push(ctx.deployment.connect_in(account, &format!("{prefix}-{c}")).await?);
    }
    Ok(clients)
}
