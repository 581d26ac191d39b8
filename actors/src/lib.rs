//! Steward's supervised components.
//!
//! Layout: one folder per component, each with the same rooms (`mod.rs` the actor and its typed
//! handle, `api.rs` its endpoints, `client.rs` its typed client, `store.rs` its JetStream state):
//! [`config_manager`] (revisions, playbooks, config sources), [`renderer`] (configuration → job
//! specs), [`lease`] (one leader per account leases specs and fences results), [`results`]
//! (results stored behind the fence and read back), [`runtime`] (leases and runs checks),
//! [`connector`] (host presence, registry, durable commands), [`dispatcher`] (runs),
//! [`edge`] (the host side), [`worker`] (the host's run worker), [`enablement`] (hosts kept at
//! the revision's services), [`health`] (per-connection health service), [`alarms`] (rules
//! evaluated against stored results, one alarm per host, check and rule, silences,
//! notifications), [`remediation`]
//! (guarded runs for firing alarms, then a re-check), [`telemetry`] (check values as history:
//! raw points, 1-minute and 1-hour rollups, queries). Around them:
//! [`supervisor`] (linked children, restarts with back-off and counters, ordered shutdown),
//! [`status`] (the board the supervisor publishes component states on), [`process`] (the
//! components a process's roles ask for), [`metrics`] (the OpenMetrics families and the
//! `/metrics` endpoint), and shared helpers: `tasks` (an actor's background
//! tasks), [`kv`] (scanning and following a KV bucket), [`process_group`] (child processes in
//! their own group), [`signing`] (ed25519 job signatures), [`spec_signing`] (job specs signed
//! per render batch).

pub mod alarms;
pub mod config_manager;
pub mod connector;
pub mod dispatcher;
pub mod edge;
pub mod enablement;
pub mod health;
pub mod kv;
pub mod lease;
pub mod metrics;
pub mod process;
pub mod process_group;
pub mod remediation;
pub mod renderer;
pub mod results;
pub mod runtime;
pub mod signing;
pub mod spec_signing;
pub mod status;
pub mod supervisor;
mod tasks;
pub mod telemetry;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

pub use process::{EdgeSpec, ProcessConfig, Role, RunningProcess};
pub use status::StatusBoard;
pub use supervisor::{ChildSpec, RestartPolicy, SupervisorHandle};

/// Errors of the actors crate.
#[derive(Debug, thiserror::Error)]
pub enum ActorsError {
    /// An actor could not be started.
    #[error("cannot start actor: {0}")]
    Spawn(String),
    /// NATS could not be reached.
    #[error("cannot connect to nats at {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The streams could not be ensured.
    #[error(transparent)]
    Ensure(#[from] steward_subjects::streams::EnsureError),
    /// An actor is gone or did not answer in time.
    #[error("{0} is unavailable")]
    Unavailable(String),
}

/// How a component connects to NATS.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Server URL(s), comma separated.
    pub url: String,
    /// Optional credentials file (JWT + nkey seed).
    pub creds: Option<PathBuf>,
    /// CA file (PEM) the server's TLS certificate is checked against; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a server that verifies client certificates.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM; refused when others may read it).
    pub tls_key: Option<PathBuf>,
}

impl ConnectOptions {
    /// Plain connection to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions { url: url.into(), creds: None, tls_ca: None, tls_cert: None, tls_key: None }
    }
}

/// Adds the TLS files of `opts` to the async-nats options: the CA (TLS then required) and the
/// client certificate with its key.
fn apply_tls(
    opts: &ConnectOptions,
    mut o: async_nats::ConnectOptions,
    err: impl Fn(String) -> ActorsError,
) -> Result<async_nats::ConnectOptions, ActorsError> {
    if let Some(ca) = &opts.tls_ca {
        if !ca.is_file() {
            return Err(err(format!("TLS CA file '{}' does not exist", ca.display())));
        }
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&opts.tls_cert, &opts.tls_key) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            steward_deploy::secret::read_secret(key).map_err(|e| err(format!("cannot use TLS key: {e}")))?;
            if !cert.is_file() {
                return Err(err(format!("TLS certificate file '{}' does not exist", cert.display())));
            }
            o = o.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        _ => return Err(err("a TLS client certificate needs both its certificate and key files".into())),
    }
    Ok(o)
}

/// The connect error text, with a hint when the server's TLS certificate was not trusted.
fn connect_failure(opts: &ConnectOptions, e: &async_nats::ConnectError) -> String {
    let text = e.to_string();
    let untrusted = ["UnknownIssuer", "certificate", "BadSignature"].iter().any(|w| text.contains(w));
    match (&opts.tls_ca, untrusted) {
        (None, true) => {
            format!("{text} (the server's TLS certificate is not trusted: give the CA that signed it, --tls-ca)")
        }
        (Some(ca), true) => {
            format!("{text} (the server's TLS certificate is not signed by the CA in '{}')", ca.display())
        }
        (_, false) => text,
    }
}

/// Connects to NATS with `name` as the connection name.
///
/// # Errors
/// [`ActorsError::Connect`] when the server cannot be reached or refuses the credentials.
pub async fn connect(opts: &ConnectOptions, name: &str) -> Result<async_nats::Client, ActorsError> {
    connect_with(opts, name, |o| o).await
}

/// Like [`connect`], with a hook to adjust the async-nats options (the edge agent sets its own
/// inbox prefix). TLS files of `opts` apply (a CA makes TLS required; `tls://` URLs require it
/// too). The credentials file may be a JWT credentials file or a file holding only an
/// nkey user seed (as `steward creds issue` writes); it is refused, naming it, when missing,
/// neither of these, or accessible to anyone but its owner.
///
/// # Errors
/// [`ActorsError::Connect`] when the server cannot be reached or refuses the credentials.
pub async fn connect_with(
    opts: &ConnectOptions,
    name: &str,
    adjust: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
) -> Result<async_nats::Client, ActorsError> {
    let err = |reason: String| ActorsError::Connect { url: opts.url.clone(), reason };
    let bad_creds = |e: steward_deploy::DeployError| err(format!("cannot use credentials: {e}"));
    let mut o = match &opts.creds {
        Some(path) => match steward_deploy::auth::read_seed(path).map_err(bad_creds)? {
            Some(seed) => async_nats::ConnectOptions::with_nkey(seed),
            None => async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| err(format!("cannot read credentials {}: {e}", path.display())))?,
        },
        None => async_nats::ConnectOptions::new(),
    };
    o = apply_tls(opts, o, err)?;
    o = adjust(metrics::count_events(o.name(name).connection_timeout(Duration::from_secs(5)), name));
    let addrs: Vec<async_nats::ServerAddr> = opts
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad url: {e}")))?;
    o.connect(addrs).await.map_err(|e| err(connect_failure(opts, &e)))
}

/// Calls an actor and waits for its reply; the one place that turns ractor's call results into
/// [`ActorsError`]s for the typed handles.
pub(crate) async fn call<M, R, F>(actor: &ActorRef<M>, build: F, timeout: Duration) -> Result<R, ActorsError>
where
    M: ractor::Message,
    R: Send + 'static,
    F: FnOnce(RpcReplyPort<R>) -> M,
{
    match actor.call(build, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
        Ok(ractor::rpc::CallResult::Timeout) => {
            Err(ActorsError::Unavailable(format!("actor {} (timed out)", actor.get_id())))
        }
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
            Err(ActorsError::Unavailable(format!("actor {}", actor.get_id())))
        }
    }
}

/// Registers `account`'s micro service `kind` (named by [`service_name`], the account in its
/// metadata), the way every hub component registers its own.
///
/// # Errors
/// The async-nats error when the service cannot be registered.
pub(crate) async fn start_account_service(
    client: &async_nats::Client,
    account: &steward_subjects::AccountId,
    kind: &str,
    description: &str,
) -> Result<async_nats::service::Service, async_nats::Error> {
    use async_nats::service::ServiceExt;
    client
        .service_builder()
        .description(description)
        .metadata(std::collections::HashMap::from([("account".to_owned(), account.to_string())]))
        .start(steward_subjects::subject::service_name(kind), steward_subjects::STEWARD_VERSION)
        .await
}

/// Milliseconds since the Unix epoch (the hub clock every lease and run time is measured on).
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(duration_ms).unwrap_or(0)
}

/// `d` in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Current time as RFC 3339 text.
#[must_use]
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
