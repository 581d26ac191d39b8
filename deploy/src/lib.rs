//! NATS topologies as code: find, configure, start and stop `nats-server` for Steward.
//!
//! Layout: [`authority`] issues decentralized JWT identities (operator, account per tenant,
//! user per host/service/operator; [`jwt`] encodes and verifies the claims) and pushes account
//! updates and revocations to running servers; [`auth`] issues nkey identities and renders a
//! static accounts/permissions configuration;
//! [`binary`] finds the `nats-server` executable (`STEWARD_NATS_SERVER`, `PATH`, the project's
//! `.tools/bin`) and checks its version; [`config`] renders a server configuration file; [`lifeline`] ties a child's life to
//! its parent's (parent-death signal), so nothing outlives a killed `steward up`; [`server`] runs one server process ([`ServerOptions`], [`NatsServer`]) with readiness
//! checks, stop, restart and cleanup on drop; [`topology`] builds the shapes Steward runs on
//! ([`SingleNode`], [`Cluster`], [`HubLeaf`]); [`monitor`] is a tiny HTTP client for the
//! monitoring endpoints; [`tls`] the TLS settings of ports and leaf links; [`secret`] reads and writes files holding secrets (mode 0600, refused
//! when others may read them); [`wait`] holds the [`eventually`] polling helper; [`error`] the
//! [`DeployError`] type. Commented production configuration files live in `deploy/nats/`, and
//! `deploy/install-nats-server.sh` installs the pinned server.
//!
//! The same code starts the servers of the test suites and of `steward up`.

pub mod auth;
pub mod authority;
pub mod binary;
pub mod config;
pub mod error;
pub mod jwt;
pub mod lifeline;
pub mod monitor;
pub mod secret;
pub mod server;
pub mod tls;
pub mod topology;
pub mod wait;

pub use binary::{
    check_nats_server, find_nats_server, find_nats_server_in, nats_server_version, NatsServerVersion, SearchInputs,
    PINNED_NATS_SERVER_VERSION,
};
pub use error::{DeployError, NotReady};
pub use server::{ClusterOptions, LeafRemote, NatsServer, ResolvedPorts, ServerOptions};
pub use tls::{TlsListen, TlsRemote};
pub use topology::{Cluster, HubLeaf, SingleNode};
pub use wait::eventually;
