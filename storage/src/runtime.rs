//! The assessment runtime's local store: the last-known specs it holds (with their epochs) and
//! its configuration, so it keeps checking while the hub is unreachable; and the result outbox,
//! the ordered, durable queue of results not yet acknowledged by the hub.
//!
//! Every result gets its sequence number here, in the same transaction that puts it in the
//! outbox, from a per-spec counter that survives restarts: a result's idempotency key
//! (`<spec>:<epoch>:<seq>`) is therefore never reused for a different result. The same
//! transaction gives it its outbox position ([`ResultRecord::outbox`], the outbox id: increasing,
//! never reused), and the store has an incarnation made once when it is created
//! ([`RuntimeStore::incarnation`]): with both, the hub recognises a result re-sent after a crash
//! or an outage of any length by the runtime's stored watermark, not only within its dedupe
//! window. A store created anew (its file lost) has a new incarnation, so its first positions
//! are never mistaken for ones already stored.
//!
//! A result whose output is too long to keep inline carries its full output next to it in the
//! outbox (same transaction, same outbox id) with a provisional `output_ref` (set here once the
//! sequence number is known); the runtime stores the output before it sends the result and
//! then records the final reference ([`RuntimeStore::output_stored`]), so the output survives
//! a hub outage and a restart like the result.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use steward_subjects::api::result::ResultRecord;
use steward_subjects::config::JobSpec;

use crate::Error;

/// Held specs: spec id → [`CachedSpec`] (MessagePack).
const SPECS: TableDefinition<&str, &[u8]> = TableDefinition::new("specs");
/// Single-row table: the runtime's configuration under the key `config`.
const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
/// Result outbox: outbox id (ascending = production order) → [`ResultRecord`] (MessagePack).
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Result sequence per spec: spec id → (epoch, last sequence used in that epoch).
const RESULT_SEQ: TableDefinition<&str, (u64, u64)> = TableDefinition::new("result_seq");
/// Full outputs of outbox results that name one in `output_ref`: outbox id → bytes.
const OUTPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("outputs");
/// Counters: `outbox_next` → next outbox id, `output_bytes`, `incarnation` (random, made once).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

const CONFIG_KEY: &str = "config";
const OUTBOX_NEXT: &str = "outbox_next";
const OUTPUT_BYTES: &str = "output_bytes";
const INCARNATION: &str = "incarnation";

/// A spec the runtime holds, as last confirmed by the hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CachedSpec {
    /// The spec.
    pub spec: JobSpec,
    /// Lease epoch.
    pub epoch: u64,
    /// When the hub last confirmed the lease, ms since the Unix epoch.
    pub confirmed_at_ms: u64,
}

/// The runtime's configuration, as last started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfigRecord {
    /// Runtime id.
    pub runtime: String,
    /// Host id, or empty for a standalone runtime.
    pub host: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Most specs the runtime holds.
    pub capacity: u32,
    /// Number of starts with this store.
    pub starts: u64,
}

/// One result waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// Outbox id (production order).
    pub id: u64,
    /// The result.
    pub record: ResultRecord,
}

/// The runtime's redb store.
#[derive(Debug)]
pub struct RuntimeStore {
    db: Database,
    output_budget: u64,
    incarnation: String,
}

/// Default bound on the full outputs waiting in the outbox, in bytes; beyond it new results
/// keep only their inline head (so a long hub outage cannot fill the disk).
pub const DEFAULT_OUTPUT_BUDGET: u64 = 256 * 1024 * 1024;

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    rmp_serde::to_vec_named(v).map_err(Error::Encode)
}

fn decode<T: for<'de> Deserialize<'de>>(table: &'static str, bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|source| Error::Corrupt { table, source })
}

/// Lowers the count of output bytes waiting in the outbox by `freed`.
fn release_output_bytes(tx: &redb::WriteTransaction, freed: u64) -> Result<(), Error> {
    if freed == 0 {
        return Ok(());
    }
    let mut counters = tx.open_table(COUNTERS)?;
    let current = counters.get(OUTPUT_BYTES)?.map_or(0, |v| v.value());
    counters.insert(OUTPUT_BYTES, current.saturating_sub(freed))?;
    Ok(())
}

impl RuntimeStore {
    /// Opens (or creates) the store at `path`.
    ///
    /// # Errors
    /// [`Error::Open`] when the file cannot be opened or is not a redb database.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = Database::create(path).map_err(|source| Error::Open { path: path.display().to_string(), source })?;
        let tx = db.begin_write()?;
        tx.open_table(SPECS)?;
        tx.open_table(CONFIG)?;
        tx.open_table(OUTBOX)?;
        tx.open_table(RESULT_SEQ)?;
        tx.open_table(OUTPUTS)?;
        let incarnation = {
            let mut counters = tx.open_table(COUNTERS)?;
            let stored = counters.get(INCARNATION)?.map(|v| v.value());
            match stored {
                Some(v) => v,
                None => {
                    // Random and never 0; made once, in the transaction that creates the tables.
                    let v = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
                    counters.insert(INCARNATION, v)?;
                    v
                }
            }
        };
        tx.commit()?;
        Ok(RuntimeStore { db, output_budget: DEFAULT_OUTPUT_BUDGET, incarnation: format!("{incarnation:016x}") })
    }

    /// This outbox's incarnation: made when the store was created, kept for its life; sent with
    /// every submit ([`steward_subjects::api::result::SubmitRequest::incarnation`]).
    #[must_use]
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The same store with another bound on the full outputs waiting in the outbox.
    #[must_use]
    pub fn with_output_budget(mut self, bytes: u64) -> Self {
        self.output_budget = bytes;
        self
    }

    /// The stored configuration, if any.
    ///
    /// # Errors
    /// [`Error`] on a failed read or a corrupt record.
    pub fn config(&self) -> Result<Option<RuntimeConfigRecord>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CONFIG)?;
        table.get(CONFIG_KEY)?.map(|v| decode("config", v.value())).transpose()
    }

    /// Records a start with `config`: the stored start count is carried over and incremented.
    ///
    /// # Errors
    /// [`Error`] on a failed read or write.
    pub fn start(&self, mut config: RuntimeConfigRecord) -> Result<RuntimeConfigRecord, Error> {
        config.starts = self.config()?.map_or(0, |c| c.starts) + 1;
        let bytes = encode(&config)?;
        let tx = self.db.begin_write()?;
        tx.open_table(CONFIG)?.insert(CONFIG_KEY, bytes.as_slice())?;
        tx.commit()?;
        Ok(config)
    }

    /// Every held spec, ordered by spec id.
    ///
    /// # Errors
    /// [`Error`] on a failed read or a corrupt record.
    pub fn specs(&self) -> Result<Vec<CachedSpec>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SPECS)?;
        table.iter()?.map(|r| r.map_err(Error::from).and_then(|(_, v)| decode("specs", v.value()))).collect()
    }

    /// Adds or replaces held specs.
    ///
    /// # Errors
    /// [`Error`] on a failed write.
    pub fn put_specs(&self, specs: &[CachedSpec]) -> Result<(), Error> {
        let encoded: Vec<(String, Vec<u8>)> =
            specs.iter().map(|s| Ok((s.spec.id.clone(), encode(s)?))).collect::<Result<_, Error>>()?;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SPECS)?;
            for (id, bytes) in &encoded {
                table.insert(id.as_str(), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes held specs (unknown ids are ignored).
    ///
    /// # Errors
    /// [`Error`] on a failed write.
    pub fn remove_specs(&self, ids: &[String]) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SPECS)?;
            for id in ids {
                table.remove(id.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the whole held set with `specs` (the hub's authoritative answer to `mine`).
    ///
    /// # Errors
    /// [`Error`] on a failed write.
    pub fn replace_specs(&self, specs: &[CachedSpec]) -> Result<(), Error> {
        let encoded: Vec<(String, Vec<u8>)> =
            specs.iter().map(|s| Ok((s.spec.id.clone(), encode(s)?))).collect::<Result<_, Error>>()?;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(SPECS)?;
            table.retain(|_, _| false)?;
            for (id, bytes) in &encoded {
                table.insert(id.as_str(), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Puts results in the outbox, in order, giving each the next sequence number of its
    /// (spec, epoch) — one transaction for the whole batch. Returns the stored results with
    /// their outbox ids.
    ///
    /// # Errors
    /// [`Error`] on a failed write; nothing is stored then.
    pub fn enqueue(&self, results: Vec<ResultRecord>) -> Result<Vec<Pending>, Error> {
        self.enqueue_with_outputs(results.into_iter().map(|r| (r, None)).collect(), &|_| String::new())
    }

    /// As [`Self::enqueue`], each result with its full output when that is too long to keep
    /// inline: the output is stored under the same outbox id, and the result's `output_ref`
    /// is set to `name(result)` once its sequence number is assigned. While the outputs
    /// already waiting exceed the output budget, a new output is not kept: its result keeps
    /// only the inline head, with a note in its message.
    ///
    /// # Errors
    /// [`Error`] on a failed write; nothing is stored then.
    pub fn enqueue_with_outputs(
        &self,
        results: Vec<(ResultRecord, Option<Vec<u8>>)>,
        name: &dyn Fn(&ResultRecord) -> String,
    ) -> Result<Vec<Pending>, Error> {
        let tx = self.db.begin_write()?;
        let mut out = Vec::with_capacity(results.len());
        {
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut outputs = tx.open_table(OUTPUTS)?;
            let mut seqs = tx.open_table(RESULT_SEQ)?;
            let mut counters = tx.open_table(COUNTERS)?;
            let mut next = counters.get(OUTBOX_NEXT)?.map_or(1, |v| v.value());
            let mut output_bytes = counters.get(OUTPUT_BYTES)?.map_or(0, |v| v.value());
            for (mut record, full) in results {
                let last = seqs.get(record.spec.as_str())?.map(|v| v.value());
                let seq = match last {
                    Some((epoch, seq)) if epoch == record.epoch => seq + 1,
                    _ => 1,
                };
                record.seq = seq;
                seqs.insert(record.spec.as_str(), (record.epoch, seq))?;
                if let Some(bytes) = full {
                    let len = bytes.len() as u64;
                    if output_bytes.saturating_add(len) <= self.output_budget {
                        record.output_ref = Some(name(&record));
                        outputs.insert(next, bytes.as_slice())?;
                        output_bytes += len;
                    } else {
                        record.output_ref = None;
                        let note = "full output not kept: the outbox holds too much output already";
                        record.message = if record.message.is_empty() {
                            note.to_owned()
                        } else {
                            format!("{}; {note}", record.message)
                        };
                    }
                }
                record.outbox = next;
                outbox.insert(next, encode(&record)?.as_slice())?;
                out.push(Pending { id: next, record });
                next += 1;
            }
            counters.insert(OUTBOX_NEXT, next)?;
            counters.insert(OUTPUT_BYTES, output_bytes)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// The full output stored with the outbox result `id`, if any.
    ///
    /// # Errors
    /// [`Error`] on a failed read.
    pub fn output(&self, id: u64) -> Result<Option<Vec<u8>>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OUTPUTS)?;
        Ok(table.get(id)?.map(|v| v.value().to_vec()))
    }

    /// Gives up on uploading the full output of the outbox result `id`: drops the stored
    /// output, clears the result's `output_ref` and appends `note` to its message (the capped
    /// inline output stays). Unknown ids are ignored.
    ///
    /// # Errors
    /// [`Error`] on a failed write or a corrupt record.
    pub fn forget_output(&self, id: u64, note: &str) -> Result<Option<ResultRecord>, Error> {
        self.settle_output(id, None, Some(note))
    }

    /// Records that the full output of the outbox result `id` is stored as `output_ref`: the
    /// result names it from now on (a resend does not store it again), the local copy is
    /// dropped, and `note` (when given) is appended to its message. Unknown ids are ignored.
    ///
    /// # Errors
    /// [`Error`] on a failed write or a corrupt record.
    pub fn output_stored(&self, id: u64, output_ref: &str, note: Option<&str>) -> Result<Option<ResultRecord>, Error> {
        self.settle_output(id, Some(output_ref), note)
    }

    /// Sets the `output_ref` of the outbox result `id`, appends `note` to its message and
    /// drops its local full output.
    fn settle_output(
        &self,
        id: u64,
        output_ref: Option<&str>,
        note: Option<&str>,
    ) -> Result<Option<ResultRecord>, Error> {
        let tx = self.db.begin_write()?;
        let updated = {
            let mut outbox = tx.open_table(OUTBOX)?;
            let current = outbox.get(id)?.map(|v| decode::<ResultRecord>("outbox", v.value())).transpose()?;
            match current {
                Some(mut record) => {
                    record.output_ref = output_ref.map(str::to_owned);
                    if let Some(note) = note {
                        record.message = if record.message.is_empty() {
                            note.to_owned()
                        } else {
                            format!("{}; {note}", record.message)
                        };
                    }
                    outbox.insert(id, encode(&record)?.as_slice())?;
                    let freed = tx.open_table(OUTPUTS)?.remove(id)?.map_or(0, |v| v.value().len() as u64);
                    release_output_bytes(&tx, freed)?;
                    Some(record)
                }
                None => None,
            }
        };
        tx.commit()?;
        Ok(updated)
    }

    /// Up to `limit` results from the head of the outbox, oldest first.
    ///
    /// # Errors
    /// [`Error`] on a failed read or a corrupt record.
    pub fn pending(&self, limit: usize) -> Result<Vec<Pending>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OUTBOX)?;
        table
            .iter()?
            .take(limit)
            .map(|r| {
                let (k, v) = r?;
                Ok(Pending { id: k.value(), record: decode("outbox", v.value())? })
            })
            .collect()
    }

    /// Removes acknowledged results from the outbox.
    ///
    /// # Errors
    /// [`Error`] on a failed write.
    pub fn ack(&self, ids: &[u64]) -> Result<(), Error> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(OUTBOX)?;
            let mut outputs = tx.open_table(OUTPUTS)?;
            let mut freed = 0u64;
            for id in ids {
                table.remove(*id)?;
                freed += outputs.remove(*id)?.map_or(0, |v| v.value().len() as u64);
            }
            drop(outputs);
            release_output_bytes(&tx, freed)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Results waiting in the outbox, and when the oldest of them ended (its `ended_at_ms`,
    /// `None` when the outbox is empty).
    ///
    /// # Errors
    /// [`Error`] on a failed read or a corrupt record.
    pub fn outbox_summary(&self) -> Result<(u64, Option<u64>), Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(OUTBOX)?;
        let oldest = match table.first()? {
            Some((_, v)) => Some(decode::<ResultRecord>("outbox", v.value())?.ended_at_ms),
            None => None,
        };
        Ok((table.len()?, oldest))
    }

    /// Results waiting in the outbox.
    ///
    /// # Errors
    /// [`Error`] on a failed read.
    pub fn outbox_len(&self) -> Result<u64, Error> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(OUTBOX)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::{BTreeMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    fn spec(id: &str, hash: &str) -> CachedSpec {
        CachedSpec {
            spec: JobSpec { id: id.to_owned(), content_hash: hash.to_owned(), ..JobSpec::default() },
            epoch: 1,
            confirmed_at_ms: 0,
        }
    }

    fn result(spec: &str, epoch: u64) -> ResultRecord {
        ResultRecord { spec: spec.to_owned(), epoch, ..ResultRecord::default() }
    }

    #[test]
    fn sequences_restart_per_epoch_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.redb");
        {
            let s = RuntimeStore::open(&path).unwrap();
            let p = s.enqueue(vec![result("a", 1), result("a", 1), result("b", 1)]).unwrap();
            assert_eq!(p.iter().map(|p| p.record.seq).collect::<Vec<_>>(), vec![1, 2, 1]);
            s.ack(&[p[0].id]).unwrap();
        }
        let s = RuntimeStore::open(&path).unwrap();
        let p = s.enqueue(vec![result("a", 1), result("a", 2)]).unwrap();
        assert_eq!(p.iter().map(|p| p.record.seq).collect::<Vec<_>>(), vec![3, 1]);
        let keys: Vec<String> = s.pending(10).unwrap().iter().map(|p| p.record.idempotency_key()).collect();
        assert_eq!(keys, vec!["a:1:2", "b:1:1", "a:1:3", "a:2:1"]);
        assert_eq!(s.outbox_len().unwrap(), 4);
    }

    #[test]
    fn outbox_positions_increase_across_acks_and_reopen_and_the_incarnation_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.redb");
        let (incarnation, first) = {
            let s = RuntimeStore::open(&path).unwrap();
            let p = s.enqueue(vec![result("a", 1), result("b", 1)]).unwrap();
            s.ack(&[p[0].id, p[1].id]).unwrap();
            (s.incarnation().to_owned(), p.iter().map(|p| p.record.outbox).collect::<Vec<_>>())
        };
        assert_eq!(first, vec![1, 2]);
        assert_eq!(incarnation.len(), 16);
        let s = RuntimeStore::open(&path).unwrap();
        assert_eq!(s.incarnation(), incarnation, "the incarnation is made once per store");
        // The outbox is empty, yet positions go on: never reused.
        let p = s.enqueue(vec![result("a", 1)]).unwrap();
        assert_eq!(p[0].record.outbox, 3);
        assert_eq!(s.pending(10).unwrap()[0].record.outbox, 3, "the position is stored with the result");
        // A store made anew (its file lost) is another incarnation.
        let other = RuntimeStore::open(&dir.path().join("new.redb")).unwrap();
        assert_ne!(other.incarnation(), incarnation);
    }

    #[test]
    fn full_outputs_travel_with_their_results_and_leave_on_ack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.redb");
        let big = vec![b'x'; 200 * 1024];
        let name = |r: &ResultRecord| format!("out/{}/{}/{}", r.spec, r.epoch, r.seq);
        let ids: Vec<u64> = {
            let s = RuntimeStore::open(&path).unwrap();
            let p = s
                .enqueue_with_outputs(
                    vec![
                        (result("a", 1), Some(big.clone())),
                        (result("a", 1), None),
                        (result("a", 1), Some(b"y".to_vec())),
                    ],
                    &name,
                )
                .unwrap();
            assert_eq!(p[0].record.output_ref.as_deref(), Some("out/a/1/1"));
            assert_eq!(p[1].record.output_ref, None);
            assert_eq!(p[2].record.output_ref.as_deref(), Some("out/a/1/3"));
            p.iter().map(|p| p.id).collect()
        };
        let s = RuntimeStore::open(&path).unwrap();
        let pending = s.pending(10).unwrap();
        assert_eq!(pending[0].record.output_ref.as_deref(), Some("out/a/1/1"));
        assert_eq!(s.output(ids[0]).unwrap().unwrap(), big);
        assert_eq!(s.output(ids[1]).unwrap(), None);
        let r = s.forget_output(ids[2], "full output not stored").unwrap().unwrap();
        assert_eq!(r.output_ref, None);
        assert_eq!(r.message, "full output not stored");
        assert_eq!(s.output(ids[2]).unwrap(), None);
        assert_eq!(s.pending(10).unwrap()[2].record, r);
        s.ack(&ids[..1]).unwrap();
        assert_eq!(s.output(ids[0]).unwrap(), None);
        assert_eq!(s.outbox_len().unwrap(), 2);
    }

    #[test]
    fn a_stored_output_is_named_by_its_final_reference_and_its_copy_freed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt.redb");
        let s = RuntimeStore::open(&path).unwrap().with_output_budget(150);
        let name = |r: &ResultRecord| format!("pending/{}", r.seq);
        let p = s.enqueue_with_outputs(vec![(result("a", 1), Some(vec![1; 100]))], &name).unwrap();
        assert_eq!(p[0].record.output_ref.as_deref(), Some("pending/1"));
        let r = s.output_stored(p[0].id, "out:17", Some("full output cut to 90 bytes")).unwrap().unwrap();
        assert_eq!(r.output_ref.as_deref(), Some("out:17"));
        assert_eq!(r.message, "full output cut to 90 bytes");
        assert_eq!(s.output(p[0].id).unwrap(), None, "the local copy is dropped");
        // The budget is free again, and the reference survives a reopen.
        let q = s.enqueue_with_outputs(vec![(result("a", 1), Some(vec![2; 100]))], &name).unwrap();
        assert!(q[0].record.output_ref.is_some());
        drop(s);
        let s = RuntimeStore::open(&path).unwrap();
        assert_eq!(s.pending(10).unwrap()[0].record, r);
        assert_eq!(s.output_stored(999, "out:1", None).unwrap(), None, "unknown ids are ignored");
    }

    #[test]
    fn outputs_beyond_the_budget_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = RuntimeStore::open(&dir.path().join("rt.redb")).unwrap().with_output_budget(250);
        let name = |r: &ResultRecord| format!("out/{}", r.seq);
        let p = s
            .enqueue_with_outputs(
                vec![
                    (result("a", 1), Some(vec![1; 100])),
                    (result("a", 1), Some(vec![2; 100])),
                    (result("a", 1), Some(vec![3; 100])),
                ],
                &name,
            )
            .unwrap();
        assert!(p[0].record.output_ref.is_some() && p[1].record.output_ref.is_some());
        assert_eq!(p[2].record.output_ref, None);
        assert!(p[2].record.message.contains("full output not kept"));
        assert_eq!(s.output(p[2].id).unwrap(), None);
        // Acknowledged and forgotten outputs free the budget.
        s.ack(&[p[0].id]).unwrap();
        s.forget_output(p[1].id, "gave up").unwrap();
        let q = s.enqueue_with_outputs(vec![(result("a", 1), Some(vec![4; 200]))], &name).unwrap();
        assert!(q[0].record.output_ref.is_some());
        assert_eq!(s.output(q[0].id).unwrap().unwrap(), vec![4; 200]);
    }

    #[test]
    fn config_counts_starts() {
        let dir = tempfile::tempdir().unwrap();
        let s = RuntimeStore::open(&dir.path().join("rt.redb")).unwrap();
        assert!(s.config().unwrap().is_none());
        let c = RuntimeConfigRecord { runtime: "r".into(), ..Default::default() };
        assert_eq!(s.start(c.clone()).unwrap().starts, 1);
        assert_eq!(s.start(c).unwrap().starts, 2);
        assert_eq!(s.config().unwrap().unwrap().runtime, "r");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Remove(u8),
        Replace(Vec<(u8, u8)>),
        Enqueue(Vec<(u8, u8)>),
        Ack(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..8, 0u8..4).prop_map(|(a, b)| Op::Put(a, b)),
            (0u8..8).prop_map(Op::Remove),
            proptest::collection::vec((0u8..8, 0u8..4), 0..4).prop_map(Op::Replace),
            proptest::collection::vec((0u8..4, 1u8..3), 1..5).prop_map(Op::Enqueue),
            (0usize..6).prop_map(Op::Ack),
            Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The store behaves like a BTreeMap of specs plus a FIFO of results with per-(spec,
        /// epoch) sequence numbers, across reopens.
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rt.redb");
            let mut store = RuntimeStore::open(&path).unwrap();
            let mut specs: BTreeMap<String, String> = BTreeMap::new();
            let mut outbox: VecDeque<(u64, String)> = VecDeque::new();
            let mut seq: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(id, h) => {
                        store.put_specs(&[spec(&format!("s{id}"), &format!("h{h}"))]).unwrap();
                        specs.insert(format!("s{id}"), format!("h{h}"));
                    }
                    Op::Remove(id) => {
                        store.remove_specs(&[format!("s{id}")]).unwrap();
                        specs.remove(&format!("s{id}"));
                    }
                    Op::Replace(all) => {
                        let v: Vec<CachedSpec> = all.iter().map(|(i, h)| spec(&format!("s{i}"), &format!("h{h}"))).collect();
                        store.replace_specs(&v).unwrap();
                        specs = all.iter().map(|(i, h)| (format!("s{i}"), format!("h{h}"))).collect();
                    }
                    Op::Enqueue(items) => {
                        let stored = store.enqueue(items.iter().map(|(s, e)| result(&format!("s{s}"), u64::from(*e))).collect()).unwrap();
                        for (p, (s, e)) in stored.iter().zip(items) {
                            let k = format!("s{s}");
                            let e = u64::from(e);
                            let next = match seq.get(&k) { Some((pe, ps)) if *pe == e => ps + 1, _ => 1 };
                            seq.insert(k.clone(), (e, next));
                            prop_assert_eq!(p.record.seq, next);
                            outbox.push_back((p.id, format!("{k}:{e}:{next}")));
                        }
                    }
                    Op::Ack(n) => {
                        let head: Vec<u64> = outbox.iter().take(n).map(|(id, _)| *id).collect();
                        store.ack(&head).unwrap();
                        for _ in 0..head.len() { outbox.pop_front(); }
                    }
                    Op::Reopen => {
                        drop(store);
                        store = RuntimeStore::open(&path).unwrap();
                    }
                }
                let got: BTreeMap<String, String> = store.specs().unwrap().into_iter().map(|c| (c.spec.id, c.spec.content_hash)).collect();
                prop_assert_eq!(&got, &specs);
                let pending: Vec<(u64, String)> = store.pending(usize::MAX).unwrap().into_iter().map(|p| (p.id, p.record.idempotency_key())).collect();
                prop_assert_eq!(pending, outbox.iter().cloned().collect::<Vec<_>>());
                prop_assert_eq!(store.outbox_len().unwrap(), outbox.len() as u64);
            }
        }
    }
}
