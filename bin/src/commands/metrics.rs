//! `--metrics ADDR` of the long-running commands (`up`, `server`, `edge`, `runtime`): serves the
//! process's OpenMetrics families on `http://ADDR/metrics` (`docs/operations.md` lists them).

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use steward_actors::metrics::{self, MetricsServer};

/// The metrics option of a long-running command.
#[derive(Debug, Clone, Default, Args)]
pub struct MetricsArgs {
    /// Serve OpenMetrics on `http://ADDR/metrics` (`127.0.0.1:9464`, `[::]:9464`; port 0
    /// picks a free port, logged at start). Off by default.
    #[arg(long = "metrics", value_name = "ADDR", env = "STEWARD_METRICS")]
    pub addr: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Starts serving when an address was given; the endpoint lives as long as the returned
    /// server.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn serve(&self) -> anyhow::Result<Option<MetricsServer>> {
        match self.addr {
            Some(addr) => Ok(Some(metrics::serve(addr, metrics::global()).await.context("--metrics")?)),
            None => Ok(None),
        }
    }
}
