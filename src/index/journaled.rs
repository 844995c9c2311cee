//! Writing the entries of ingest journal records: outside a transaction
//! while the gateway runs, inside one when a record is replayed.
//!
//! A sled transaction seals and writes sled's log buffer twice, each on one
//! of sled's I/O threads followed by a `sync_file_range` that waits for the
//! disk. Per instance, that was half of the gateway's CPU on small
//! instances. The journal's record, durable before its entry is written,
//! already makes the entry atomic across a crash, so the live apply writes
//! the same operations one by one ([`write_entry`]: the instance's own
//! entry last) under the index's write lock, which every other writer of
//! instances and studies takes too, so nothing comes between its reads and
//! its writes. Readers may see an instance a moment before its study's
//! counts include it.
//!
//! After a crash, sled holds a prefix of the operations since its last
//! flush (the last checkpoint). A record whose instance entry is there was
//! written whole; the replay ([`Index::replay_journaled`]) writes the
//! others again in one transaction each, and then counts every study it
//! touched again from its instances ([`Index::recount_studies`]), since an
//! interrupted write may have counted its instance already. Events of such
//! a record may be queued twice, with the same id (receivers deduplicate
//! by id, as for a record replayed after its events were delivered).

use std::collections::BTreeSet;

use super::write::{WriteContext, write_entry};
use super::*;

impl Index {
    /// Writes the entry of an ingest journal record that is durable (and
    /// replayed after a crash): not in a transaction, not flushed (the
    /// checkpoint flushes), its events' ids derived from `record_id` (hex:
    /// the journal's id and the record's LSN), so replay queues them with
    /// the ids they were delivered with. Such ids are longer than the
    /// sequence-based ones (`msg_` + node + 16 hex), so the two never
    /// collide; both stay `msg_` + hex. Blocking.
    pub fn put_journaled(&self, entry: &NewEntry, record_id: &str) -> Result<PutOutcome> {
        let ctx: WriteContext = self.write_context();
        let plain = |tree| Plain { tree, db: &self.db };
        let (instances, sops, studies) = (
            plain(&self.instances),
            plain(&self.sops),
            plain(&self.studies),
        );
        let (media, patients, unstable) = (
            plain(&self.media),
            plain(&self.patients),
            plain(&self.unstable),
        );
        let (outbox, forward) = (plain(&self.outbox), plain(&self.forward));
        let tx = Tx {
            instances: &instances,
            sops: &sops,
            studies: &studies,
            media: &media,
            patients: &patients,
            unstable: &unstable,
            outbox: &outbox,
            forward: Index::forwards_instances(&ctx.routes).then_some(&forward),
        };
        let written = {
            let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            write_entry(&tx, &ctx, entry, Some(record_id)).map_err(plain_error)?
        };
        self.written(
            std::slice::from_ref(entry),
            std::slice::from_ref(&written.outcome),
            written.emitted > 0,
            written.forwarded > 0,
        );
        Ok(written.outcome)
    }

    /// Writes the entry of a journal record again at the replay, in one
    /// transaction (see the module's comment); not flushed. Blocking.
    pub fn replay_journaled(&self, entry: &NewEntry, record_id: &str) -> Result<PutOutcome> {
        let ids = [record_id.to_owned()];
        let outcomes = self.put_batch_with(std::slice::from_ref(entry), Some(&ids))?;
        Ok(outcomes.into_iter().next().expect("one outcome per entry"))
    }

    /// Counts each of `studies` again from its instance entries (count,
    /// bytes, first and last received) and rewrites its record where that
    /// differs; a study left without instances loses its record. Its
    /// tags stay. Blocking; not flushed.
    pub fn recount_studies(&self, studies: &BTreeSet<Uid>) -> Result<usize> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut fixed = 0;
        for study in studies {
            let mut count = 0u64;
            let mut bytes = 0u64;
            let mut first: Option<String> = None;
            let mut last: Option<String> = None;
            for kv in self.instances.scan_prefix(study_prefix(study)) {
                let (k, v) = kv.map_err(db_err("scan instances"))?;
                let rec: InstanceRecord = decode(&k, &v)?;
                count += 1;
                bytes = bytes.saturating_add(rec.size);
                if first.as_ref().is_none_or(|f| rec.received_at < *f) {
                    first = Some(rec.received_at.clone());
                }
                if last.as_ref().is_none_or(|l| rec.received_at > *l) {
                    last = Some(rec.received_at);
                }
            }
            let key = study.as_str().as_bytes();
            let changed = self.transact(|tx| {
                let Some(old) = tx.studies.get(key)? else {
                    return Ok(false);
                };
                let mut s: StudyRecord = tx_decode(key, &old)?;
                let (Some(first), Some(last)) = (&first, &last) else {
                    tx.studies.remove(key)?;
                    patients::track(tx.patients, Some(&old), None)?;
                    return Ok(true);
                };
                if (s.instance_count, s.total_bytes) == (count, bytes)
                    && (&s.first_received, &s.last_received) == (first, last)
                {
                    return Ok(false);
                }
                s.instance_count = count;
                s.total_bytes = bytes;
                s.first_received = first.clone();
                s.last_received = last.clone();
                tx.studies.insert(key, encode(&s))?;
                Ok(true)
            })?;
            if changed {
                tracing::info!(%study, instances = count, "study counted again after the journal's replay");
                self.stamps.bump(std::iter::once(study.clone()));
                fixed += 1;
            }
        }
        Ok(fixed)
    }
}

/// An error of a write outside a transaction: never a conflict.
fn plain_error(e: ConflictableTransactionError<Error>) -> Error {
    match e {
        ConflictableTransactionError::Abort(e) => e,
        ConflictableTransactionError::Storage(source) => Error::Db {
            op: "write",
            source,
        },
        _ => Error::Db {
            op: "write",
            source: sled::Error::ReportableBug("a conflict outside a transaction".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{media, new_instance, uid};
    use super::*;

    /// Everything a reader sees of the instances and studies.
    fn view(index: &Index) -> Vec<String> {
        let mut out = Vec::new();
        for study in index.studies().unwrap() {
            let uid = study.study_instance_uid.clone();
            out.push(format!("{study:?}"));
            out.push(format!("{:?}", index.instances_of_study(&uid).unwrap()));
            out.push(format!("{:?}", index.media_of_study(&uid).unwrap()));
        }
        out
    }

    #[test]
    fn written_one_by_one_or_in_a_transaction_the_index_is_the_same() {
        let entries = [
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10),
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 20),
            // The same SOP again in place, then moved to another study.
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 12),
            new_instance("1.2.4", "1.2.4.1", "1.2.3.1.2", 25),
            media("1.2.4", "report.pdf", "application/pdf"),
        ];
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (plain, txn) = (
            Index::open(a.path()).unwrap(),
            Index::open(b.path()).unwrap(),
        );
        for (n, entry) in entries.iter().enumerate() {
            let id = format!("{n:02x}");
            let one = plain.put_journaled(entry, &id).unwrap();
            let other = txn.replay_journaled(entry, &id).unwrap();
            assert_eq!(one, other, "entry {n}");
        }
        assert_eq!(view(&plain), view(&txn));
        let study = plain.study(&uid("1.2.3")).unwrap().unwrap();
        assert_eq!((study.instance_count, study.total_bytes), (1, 12));
    }

    #[test]
    fn a_replay_over_an_interrupted_write_counts_the_study_again() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let s = uid("1.2.3");
        index
            .put_journaled(&new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10), "01")
            .unwrap();
        // The next record's write was cut after its study's counts (the
        // instance's own entry, written last, is not there).
        let second = new_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 20);
        let mut counted = index.study(&s).unwrap().unwrap();
        counted.instance_count += 1;
        counted.total_bytes += 20;
        index.studies.insert(s.as_str(), encode(&counted)).unwrap();
        assert!(index.instance(&uid("1.2.3.1.2")).unwrap().is_none());

        index.replay_journaled(&second, "02").unwrap();
        let twice = index.study(&s).unwrap().unwrap();
        assert_eq!(twice.instance_count, 3, "counted twice until recounted");
        let fixed = index.recount_studies(&BTreeSet::from([s.clone()])).unwrap();
        assert_eq!(fixed, 1);
        let study = index.study(&s).unwrap().unwrap();
        assert_eq!((study.instance_count, study.total_bytes), (2, 30));
        assert_eq!(study.tags, twice.tags);
        // Counting again what is right changes nothing.
        assert_eq!(index.recount_studies(&BTreeSet::from([s])).unwrap(), 0);
    }

    #[test]
    fn a_study_whose_instances_all_moved_loses_its_record_when_counted() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index
            .put_journaled(&new_instance("1.2.3", "1.2.3.1", "9.9", 10), "01")
            .unwrap();
        // A move cut after the instance's entry left study 1.2.3 but before
        // that study's record was removed.
        let stale = index.study(&uid("1.2.3")).unwrap().unwrap();
        index
            .put_journaled(&new_instance("1.2.4", "1.2.4.1", "9.9", 10), "02")
            .unwrap();
        index.studies.insert("1.2.3", encode(&stale)).unwrap();
        let fixed = index
            .recount_studies(&BTreeSet::from([uid("1.2.3"), uid("1.2.4")]))
            .unwrap();
        assert_eq!(fixed, 1);
        assert!(index.study(&uid("1.2.3")).unwrap().is_none());
        assert!(index.studies_of_patient(None, "P1").unwrap() == vec![uid("1.2.4")]);
    }
}
