//! The edge agent's local store: identity (with the drain flag), enabled workers, and the
//! journal of commands already handled (so a command redelivered after a crash between running
//! it and acknowledging it is answered from the journal instead of being run twice).

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Single-row table holding the agent's identity under the key `identity`.
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
/// Enabled workers: name → version.
const WORKERS: TableDefinition<&str, &str> = TableDefinition::new("workers");
/// Handled commands: command id → (journal sequence, encoded reply).
const COMMANDS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("commands");
/// Journal order: sequence → command id, to prune the oldest entries.
const COMMAND_ORDER: TableDefinition<u64, &str> = TableDefinition::new("command_order");

/// How many handled commands the journal keeps (older ones are pruned).
pub const COMMAND_JOURNAL_LEN: u64 = 4096;

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
    /// Whether the agent is draining (takes no new work); survives restarts.
    pub draining: bool,
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
    /// [`Error::Open`] when the file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Database::create(path).map_err(|source| Error::Open { path: path.display().to_string(), source })?;
        let tx = db.begin_write()?;
        tx.open_table(IDENTITY)?;
        tx.open_table(WORKERS)?;
        tx.open_table(COMMANDS)?;
        tx.open_table(COMMAND_ORDER)?;
        tx.commit()?;
        Ok(EdgeStore { db })
    }

    /// The stored identity, if any.
    ///
    /// # Errors
    /// [`Error`] on a failed read or a corrupt record.
    pub fn identity(&self) -> Result<Option<EdgeIdentity>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(IDENTITY)?;
        match table.get(IDENTITY_KEY)? {
            None => Ok(None),
            Some(v) => rmp_serde::from_slice(v.value())
                .map(Some)
                .map_err(|source| Error::Corrupt { table: "identity", source }),
        }
    }

    /// Stores the identity, replacing any previous one.
    ///
    /// # Errors
    /// [`Error`] on a failed write.
    pub fn put_identity(&self, identity: &EdgeIdentity) -> Result<(), Error> {
        let bytes = rmp_serde::to_vec_named(identity).map_err(Error::Encode)?;
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
    /// [`Error`] on a failed read or write.
    pub fn start(&self, host_id: &str, labels: &BTreeMap<String, String>, now: &str) -> Result<EdgeIdentity, Error> {
        let mut id = self.identity()?.unwrap_or_else(|| EdgeIdentity {
            host_id: host_id.to_owned(),
            labels: labels.clone(),
            created_at: now.to_owned(),
            starts: 0,
            draining: false,
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
    /// [`Error`] on a failed read.
    pub fn workers(&self) -> Result<BTreeMap<String, String>, Error> {
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
    /// [`Error`] on a failed write.
    pub fn enable_worker(&self, name: &str, version: &str) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(WORKERS)?;
            table.insert(name, version)?;
        }
        tx.commit()?;
        Ok(())
    }
}

impl EdgeStore {
    /// Disables a worker; returns whether it was enabled.
    ///
    /// # Errors
    /// [`Error`] on a failed write.
    pub fn disable_worker(&self, name: &str) -> Result<bool, Error> {
        let tx = self.db.begin_write()?;
        let was = {
            let mut table = tx.open_table(WORKERS)?;
            let removed = table.remove(name)?.is_some();
            removed
        };
        tx.commit()?;
        Ok(was)
    }

    /// Sets the drain flag and returns the updated identity.
    ///
    /// # Errors
    /// [`Error`] on a failed read or write, or when the store has no identity yet.
    pub fn set_draining(&self, draining: bool) -> Result<EdgeIdentity, Error> {
        let mut id = self.identity()?.ok_or(Error::NoIdentity)?;
        id.draining = draining;
        self.put_identity(&id)?;
        Ok(id)
    }

    /// The reply recorded for a handled command, if it was handled.
    ///
    /// # Errors
    /// [`Error`] on a failed read.
    pub fn command_reply(&self, command_id: &str) -> Result<Option<Vec<u8>>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(COMMANDS)?;
        Ok(table.get(command_id)?.map(|v| v.value().1.to_vec()))
    }

    /// Records that a command was handled, with its encoded reply, in one transaction; prunes
    /// the journal to the newest [`COMMAND_JOURNAL_LEN`] entries. Recording the same command
    /// twice keeps the first reply.
    ///
    /// # Errors
    /// [`Error`] on a failed write.
    pub fn record_command(&self, command_id: &str, reply: &[u8]) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut commands = tx.open_table(COMMANDS)?;
            if commands.get(command_id)?.is_some() {
                return Ok(());
            }
            let mut order = tx.open_table(COMMAND_ORDER)?;
            let next = order.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            commands.insert(command_id, (next, reply))?;
            order.insert(next, command_id)?;
            let oldest_kept = next.saturating_sub(COMMAND_JOURNAL_LEN - 1);
            loop {
                let first = order.first()?.map(|(k, v)| (k.value(), v.value().to_owned()));
                match first {
                    Some((seq, id)) if seq < oldest_kept => {
                        order.remove(seq)?;
                        commands.remove(id.as_str())?;
                    }
                    _ => break,
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Number of commands in the journal.
    ///
    /// # Errors
    /// [`Error`] on a failed read.
    pub fn journal_len(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(COMMAND_ORDER)?;
        Ok(table.len()?)
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
    fn workers_drain_and_journal_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.redb");
        {
            let store = EdgeStore::open(&path).unwrap();
            store.start("h", &BTreeMap::new(), "t0").unwrap();
            store.enable_worker("command", "1").unwrap();
            store.enable_worker("playbook", "1").unwrap();
            assert!(store.disable_worker("playbook").unwrap());
            assert!(!store.disable_worker("playbook").unwrap());
            assert!(store.set_draining(true).unwrap().draining);
            store.record_command("c1", b"first").unwrap();
            store.record_command("c1", b"second").unwrap();
        }
        let store = EdgeStore::open(&path).unwrap();
        let id = store.start("h", &BTreeMap::new(), "t1").unwrap();
        assert!(id.draining);
        assert_eq!(store.workers().unwrap().keys().collect::<Vec<_>>(), vec!["command"]);
        assert_eq!(store.command_reply("c1").unwrap().as_deref(), Some(&b"first"[..]));
        assert_eq!(store.command_reply("c2").unwrap(), None);
    }

    #[test]
    fn journal_is_pruned_to_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeStore::open(&dir.path().join("edge.redb")).unwrap();
        for i in 0..COMMAND_JOURNAL_LEN + 10 {
            store.record_command(&format!("c{i}"), b"r").unwrap();
        }
        assert_eq!(store.journal_len().unwrap(), COMMAND_JOURNAL_LEN);
        assert_eq!(store.command_reply("c0").unwrap(), None);
        assert!(store.command_reply(&format!("c{}", COMMAND_JOURNAL_LEN + 9)).unwrap().is_some());
    }

    proptest::proptest! {
        // Each case creates and reopens a database file; 32 cases keep the test fast.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Enable/disable sequences agree with a `BTreeMap` model, also across a reopen.
        #[test]
        fn workers_agree_with_a_model(ops in proptest::collection::vec((0u8..4, proptest::bool::ANY), 0..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("edge.redb");
            let mut model = BTreeMap::new();
            {
                let store = EdgeStore::open(&path).unwrap();
                for (w, enable) in &ops {
                    let name = format!("w{w}");
                    if *enable {
                        store.enable_worker(&name, "1").unwrap();
                        model.insert(name, "1".to_owned());
                    } else {
                        let was = store.disable_worker(&name).unwrap();
                        proptest::prop_assert_eq!(was, model.remove(&name).is_some());
                    }
                }
            }
            let store = EdgeStore::open(&path).unwrap();
            proptest::prop_assert_eq!(store.workers().unwrap(), model);
        }
    }

    #[test]
    fn garbage_file_is_a_clear_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.redb");
        std::fs::write(&path, b"not a database at all, just text").unwrap();
        let err = EdgeStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("cannot open store"), "{err}");
        assert!(matches!(err, crate::Error::Open { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_some_and(|s| s.is::<redb::DatabaseError>()), "{err:?}");
    }

    #[test]
    fn draining_before_start_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeStore::open(&dir.path().join("edge.redb")).unwrap();
        assert!(matches!(store.set_draining(true), Err(crate::Error::NoIdentity)));
    }
}
