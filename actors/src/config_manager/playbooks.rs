//! Playbooks kept by the config manager, content-addressed in the artifacts object store
//! (`<account>/playbooks/sha256/<hex>`): a reference `sha256:<hex>` names the exact bytes, so a
//! signed work order carrying it pins what a host may run.
//!
//! The store serves bytes as stored and does not vouch for them: anyone with JetStream access to
//! the account could overwrite an object, and anything between the store and a host could alter
//! the reply, so the check that matters is the host's — it runs a fetched playbook only if the
//! bytes hash to the reference in its signed work order. A stored object whose bytes no longer
//! match its name is logged here and rewritten by the next [`PlaybookStore::put`] of the content.

use async_nats::jetstream::{self, object_store};
use steward_subjects::api::config::{PlaybookRef, PlaybookReply, PlaybookStored};
use steward_subjects::api::run::MAX_PLAYBOOK_BYTES;
use steward_subjects::streams::{self, ObjectReadError, ARTIFACTS_STORE};
use steward_subjects::subject::playbook_object_name;
use steward_subjects::{AccountId, WireError};
use tracing::{info, warn};

/// The playbooks of one account in the artifacts object store.
#[derive(Debug, Clone)]
pub struct PlaybookStore {
    js: jetstream::Context,
    account: AccountId,
}

fn unavailable(e: impl std::fmt::Display) -> WireError {
    WireError::unavailable(format!("playbook store: {e}"))
}

fn too_large(size: u64) -> WireError {
    WireError::invalid(format!("playbook of {size} bytes is larger than the {MAX_PLAYBOOK_BYTES} bytes allowed"))
}

impl PlaybookStore {
    /// The playbooks of `account` through `js` (the hub's JetStream; the object store is
    /// created by `streams::ensure`).
    #[must_use]
    pub fn new(js: jetstream::Context, account: AccountId) -> Self {
        PlaybookStore { js, account }
    }

    /// The object name of `reference`.
    #[must_use]
    pub fn object_name(&self, reference: &PlaybookRef) -> String {
        playbook_object_name(&self.account, reference.hex())
    }

    async fn store(&self) -> Result<object_store::ObjectStore, WireError> {
        self.js.get_object_store(ARTIFACTS_STORE).await.map_err(unavailable)
    }

    /// Reads the stored bytes of `reference`; `None` when nothing is stored under it.
    async fn read(
        &self,
        store: &object_store::ObjectStore,
        reference: &PlaybookRef,
    ) -> Result<Option<Vec<u8>>, WireError> {
        let name = self.object_name(reference);
        match streams::read_object(store, &name, MAX_PLAYBOOK_BYTES).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ObjectReadError::NotFound(_)) => Ok(None),
            Err(ObjectReadError::TooLarge { size, .. }) => Err(too_large(size)),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Stores `content` under its reference. Bytes already stored intact are not written again;
    /// an object whose bytes do not match its name is overwritten with `content`.
    ///
    /// # Errors
    /// `invalid` when the content is larger than `MAX_PLAYBOOK_BYTES`, `unavailable` when the
    /// store cannot be reached.
    pub async fn put(&self, content: &str) -> Result<PlaybookStored, WireError> {
        if content.len() > MAX_PLAYBOOK_BYTES {
            return Err(too_large(content.len() as u64));
        }
        let reference = PlaybookRef::of(content.as_bytes());
        let store = self.store().await?;
        let stored = PlaybookStored { reference: reference.to_string(), size: content.len() as u64, existed: true };
        match self.read(&store, &reference).await {
            Ok(Some(bytes)) if reference.matches(&bytes) => return Ok(stored),
            Ok(Some(_)) => {
                warn!(reference = %reference, "stored playbook does not match its reference; rewriting it");
            }
            Ok(None) => {}
            Err(e) => warn!(reference = %reference, error = %e, "stored playbook unreadable; rewriting it"),
        }
        let name = self.object_name(&reference);
        let mut reader = content.as_bytes();
        store.put(name.as_str(), &mut reader).await.map_err(unavailable)?;
        info!(reference = %reference, size = content.len(), "playbook stored");
        Ok(PlaybookStored { existed: false, ..stored })
    }

    /// The stored content of `reference`, as stored (see the module docs: the caller checks it).
    ///
    /// # Errors
    /// `invalid` for a malformed reference or content that is not UTF-8 or too large,
    /// `not_found` when nothing is stored under it, `unavailable` when the store cannot be read.
    pub async fn get(&self, reference: &str) -> Result<PlaybookReply, WireError> {
        let parsed = PlaybookRef::parse(reference)?;
        let store = self.store().await?;
        let Some(bytes) = self.read(&store, &parsed).await? else {
            return Err(WireError::not_found(format!("no playbook is stored under {parsed}")));
        };
        if !parsed.matches(&bytes) {
            warn!(reference = %parsed, "serving a stored playbook that does not match its reference; hosts will refuse it");
        }
        let content =
            String::from_utf8(bytes).map_err(|_| WireError::invalid(format!("playbook {parsed} is not UTF-8 text")))?;
        Ok(PlaybookReply { reference: parsed.to_string(), content })
    }
}
