//! Fault scenario `leaf_cut` (not built yet).

use futures::FutureExt as _;

use super::{FaultCtx, FaultDef, FaultReport};

/// The scenario.
pub const DEF: FaultDef = FaultDef { name: "leaf_cut", about: "not built yet", run: |ctx| run(ctx).boxed() };

async fn run(_ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    anyhow::bail!("fault scenario leaf_cut is not built yet")
}
