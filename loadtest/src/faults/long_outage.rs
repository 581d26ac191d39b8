//! Fault scenario `long_outage` (not built yet).

use futures::FutureExt as _;

use super::{FaultCtx, FaultDef, FaultReport};

/// The scenario.
pub const DEF: FaultDef = FaultDef { name: "long_outage", about: "not built yet", run: |ctx| run(ctx).boxed() };

async fn run(_ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    anyhow::bail!("fault scenario long_outage is not built yet")
}
