//! Fault scenario `disk_full` (not built yet).

use futures::FutureExt as _;

use super::{FaultCtx, FaultDef, FaultReport};

/// The scenario.
pub const DEF: FaultDef = FaultDef { name: "disk_full", about: "not built yet", run: |ctx| run(ctx).boxed() };

async fn run(_ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    anyhow::bail!("fault scenario disk_full is not built yet")
}
