//! Fault scenario `leader_pause` (not built yet).

use futures::FutureExt as _;

use super::{FaultCtx, FaultDef, FaultReport};

/// The scenario.
pub const DEF: FaultDef = FaultDef { name: "leader_pause", about: "not built yet", run: |ctx| run(ctx).boxed() };

async fn run(_ctx: &FaultCtx) -> anyhow::Result<FaultReport> {
    anyhow::bail!("fault scenario leader_pause is not built yet")
}
