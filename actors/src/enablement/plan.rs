//! The plan of a revision: its enabled services, each with its playbook stored.
//!
//! A service's `playbook` field names a source (`file://PATH`, an absolute path, or
//! `http(s)://URL`). Each refresh reads it on the hub and stores the bytes in the config
//! manager's content-addressed playbook store ([`PlaybookStore`], the `steward_artifacts` object
//! store), which yields the reference `sha256:<hex>`. The dispatch carries only that reference;
//! the hub signs it, so the signature pins the exact bytes, and the host runs the playbook only
//! when the bytes it fetches hash to the signed reference (see `worker::job`). A source that
//! cannot be read or stored fails the service for that check and is retried by the next.

use steward_subjects::api::run::MAX_PLAYBOOK_BYTES;
use steward_subjects::config::ConfigDocument;
use steward_subjects::selector::Selector;
use tracing::{debug, warn};

use crate::config_manager::playbooks::PlaybookStore;
use crate::config_manager::source::{FetchError, SourceError, SourceUrl};

/// Why a service's playbook could not be read or stored.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    /// The source is not a valid reference.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The source could not be read.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The playbook is larger than a dispatch may carry.
    #[error("playbook of {len} bytes is larger than the {max} bytes allowed")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The playbook is not text.
    #[error("playbook is not UTF-8 text")]
    NotUtf8,
    /// The playbook store refused it.
    #[error("cannot store playbook: {0}")]
    Store(steward_subjects::WireError),
}

/// One enabled service of the current revision, with its playbook resolved.
#[derive(Debug)]
pub struct PreparedService {
    /// Service id.
    pub id: String,
    /// Worker the service needs.
    pub worker: String,
    /// Hosts in scope.
    pub selector: Selector,
    /// The stored playbook's reference (`sha256:<hex>`), or why it could not be read or stored.
    pub playbook: Result<String, PlaybookError>,
}

/// The current revision and what it asks of hosts.
#[derive(Debug)]
pub struct Plan {
    /// Revision number.
    pub revision: u64,
    /// Enabled services.
    pub services: Vec<PreparedService>,
}

/// Reads a playbook reference on the hub: `file://PATH`, an absolute path or `http(s)://URL`.
async fn resolve_playbook(reference: &str) -> Result<String, PlaybookError> {
    let url = if reference.starts_with('/') { format!("file://{reference}") } else { reference.to_owned() };
    let bytes = SourceUrl::parse(&url)?.fetch().await?;
    if bytes.len() > MAX_PLAYBOOK_BYTES {
        return Err(PlaybookError::TooLarge { len: bytes.len(), max: MAX_PLAYBOOK_BYTES });
    }
    String::from_utf8(bytes).map_err(|_| PlaybookError::NotUtf8)
}

/// Reads a service's playbook source and stores it; the reference it is stored under.
pub(crate) async fn store_playbook(store: &PlaybookStore, source: &str) -> Result<String, PlaybookError> {
    let content = resolve_playbook(source).await?;
    store.put(&content).await.map(|s| s.reference).map_err(PlaybookError::Store)
}

pub(super) async fn prepare(revision: u64, doc: &ConfigDocument, store: &PlaybookStore) -> Plan {
    let mut services = Vec::new();
    for s in doc.services.iter().filter(|s| s.enabled) {
        let selector = match Selector::parse(&s.selector) {
            Ok(sel) => sel,
            Err(e) => {
                // Validation refuses bad selectors; a stored one that no longer parses is skipped.
                warn!(revision, service = %s.id, error = %e, "service selector does not parse, skipping service");
                continue;
            }
        };
        let playbook = store_playbook(store, &s.playbook).await;
        match &playbook {
            Ok(reference) => debug!(revision, service = %s.id, playbook = %s.playbook, reference = %reference,
                "service playbook stored"),
            Err(e) => {
                warn!(revision, service = %s.id, playbook = %s.playbook, error = %e, "cannot read service playbook")
            }
        }
        services.push(PreparedService { id: s.id.clone(), worker: s.worker.clone(), selector, playbook });
    }
    Plan { revision, services }
}
