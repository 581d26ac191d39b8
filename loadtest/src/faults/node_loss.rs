//! Fault scenario `node_loss` (not built yet).

use futures::FutureExt as _;

use super::{FaultCtx, FaultDef, FaultReport};

/// The scenario.
pub const DEF: FaultDef = FaultDef { name: "node_loss", about: "not built yet", run: |ctx| run(ctx).boxed() };

async fn run(_ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    anyhow::bail!("fault scenario node_loss is not built yet")
}
