//! The edge agent's local store: identity and enabled workers.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Single-row table holding the agent's identity under the key `identity`.
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
/// Enabled workers: name → version.
const WORKERS: TableDefinition<&str, &str> = TableDefinition::new("workers");

const IDENTITY_KEY: &str = "identity";

/// Who this edge agent is; written once, then read back on every start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeIdentity {
    /// Host id (a validated token).
    pub host_id: String,
    /// Labels (validated tokens).
    pub labels: BTreeMap<String, String>,
    /// First start, RFC 3339.
    pub created_at: String,
    /// Number of times the agent has started with this store.
    pub starts: u64,
}

/// The edge agent's redb store.
#[derive(Debug)]
pub struct EdgeStore {
    db: Database,
}

impl EdgeStore {
    /// Opens (or creates) the store at `path`.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        let tx = db.begin_write()?;
        tx.open_table(IDENTITY)?;
        tx.open_table(WORKERS)?;
        tx.commit()?;
        Ok(EdgeStore { db })
    }

    /// The stored identity, if any.
    ///
    /// # Errors
    /// [`StoreError`] on a failed read or a corrupt record.
    pub fn identity(&self) -> Result<Option<EdgeIdentity>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(IDENTITY)?;
        match table.get(IDENTITY_KEY)? {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(v.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt { table: "identity", reason: e.to_string() }),
        }
    }

    /// Stores the identity, replacing any previous one.
    ///
    /// # Errors
    /// [`StoreError`] on a failed write.
    pub fn put_identity(&self, identity: &EdgeIdentity) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec_named(identity).map_err(|e| StoreError::Encode(e.to_string()))?;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(IDENTITY)?;
            table.insert(IDENTITY_KEY, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Loads the identity, or creates it with `host_id` and `labels`, and counts this start.
    /// An existing identity keeps its host id; given labels replace the stored ones when
    /// non-empty.
    ///
    /// # Errors
    /// [`StoreError`] on a failed read or write.
    pub fn start(
        &self,
        host_id: &str,
        labels: &BTreeMap<String, String>,
        now: &str,
    ) -> Result<EdgeIdentity, StoreError> {
        let mut id = self.identity()?.unwrap_or_else(|| EdgeIdentity {
            host_id: host_id.to_owned(),
            labels: labels.clone(),
            created_at: now.to_owned(),
            starts: 0,
        });
        if !labels.is_empty() {
            id.labels = labels.clone();
        }
        id.starts += 1;
        self.put_identity(&id)?;
        Ok(id)
    }

    /// Enabled workers with their versions.
    ///
    /// # Errors
    /// [`StoreError`] on a failed read.
    pub fn workers(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(WORKERS)?;
        let mut out = BTreeMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.insert(k.value().to_owned(), v.value().to_owned());
        }
        Ok(out)
    }

    /// Enables a worker at `version`.
    ///
    /// # Errors
    /// [`StoreError`] on a failed write.
    pub fn enable_worker(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(WORKERS)?;
            table.insert(name, version)?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.redb");
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        {
            let store = EdgeStore::open(&path).unwrap();
            let id = store.start("web-01", &labels, "t0").unwrap();
            assert_eq!(id.starts, 1);
            store.enable_worker("command", "0.1.0").unwrap();
        }
        let store = EdgeStore::open(&path).unwrap();
        let id = store.start("ignored-new-id", &BTreeMap::new(), "t1").unwrap();
        assert_eq!(id.host_id, "web-01");
        assert_eq!(id.labels, labels);
        assert_eq!(id.created_at, "t0");
        assert_eq!(id.starts, 2);
        assert_eq!(store.workers().unwrap().get("command").map(String::as_str), Some("0.1.0"));
    }

    #[test]
    fn garbage_file_is_a_clear_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.redb");
        std::fs::write(&path, b"not a database at all, just text").unwrap();
        let err = EdgeStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("cannot open store"), "{err}");
    }
}
