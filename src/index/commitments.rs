//! `v1/commitments`: storage commitment requests (PS3.4 Annex J) until their
//! N-EVENT-REPORT was answered with success, and for a while after (the
//! operator API lists them).
//!
//! A request is written here, and flushed, before its N-ACTION-RSP goes
//! out: a modality that was told "accepted" is owed a report even if the
//! gateway is killed the next instant. The store cannot rebuild these.
//!
//! Key: `<requester AE> 0x00 <Transaction UID>` — a modality that repeats a
//! Transaction UID (it retried the N-ACTION) replaces its earlier request
//! rather than getting two reports.

use super::*;

use crate::commitment::Record;

/// The tree's name. Opened on use: sled caches open trees, so this costs a
/// map lookup, and `Index` keeps no field for a relation this small.
const TREE: &str = "v1/commitments";

fn key(requester: &str, transaction: &Uid) -> Vec<u8> {
    let mut key = requester.trim().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(transaction.as_str().as_bytes());
    key
}

impl Index {
    fn commitments_tree(&self) -> Result<sled::Tree> {
        self.db.open_tree(TREE).map_err(db_err("open commitments"))
    }

    /// Writes a commitment request durably (insert or replace). Blocking.
    pub fn put_commitment(&self, record: &Record) -> Result<()> {
        let tree = self.commitments_tree()?;
        tree.insert(
            key(&record.requester, &record.transaction_uid),
            encode(record),
        )
        .map_err(db_err("write commitment"))?;
        self.flush()
    }

    /// Writes `record` only if the stored request is still the one it was
    /// read from (same `received_at`): a modality that repeated the
    /// N-ACTION meanwhile has replaced it, and a delivery attempt of the
    /// old one must not write it back. Whether it was written. Blocking.
    pub fn put_commitment_if_current(&self, record: &Record) -> Result<bool> {
        let tree = self.commitments_tree()?;
        let key = key(&record.requester, &record.transaction_uid);
        let new = encode(record);
        loop {
            let Some(old) = tree.get(&key).map_err(db_err("read commitment"))? else {
                // Pruned or never there: nothing to bring back.
                return Ok(false);
            };
            if decode::<Record>(&key, &old)?.received_at != record.received_at {
                return Ok(false);
            }
            match tree
                .compare_and_swap(&key, Some(&old), Some(new.as_slice()))
                .map_err(db_err("write commitment"))?
            {
                Ok(()) => {
                    self.flush()?;
                    return Ok(true);
                }
                // Changed between the read and the swap: look again.
                Err(_) => continue,
            }
        }
    }

    /// One request, by requester and Transaction UID.
    pub fn commitment(&self, requester: &str, transaction: &Uid) -> Result<Option<Record>> {
        let key = key(requester, transaction);
        match self
            .commitments_tree()?
            .get(&key)
            .map_err(db_err("read commitment"))?
        {
            Some(v) => decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every request, in key order, references included.
    pub fn commitments(&self) -> Result<Vec<Record>> {
        decode_all(self.commitments_tree()?.iter(), "list commitments")
    }

    /// Deletes a request (pruning). Blocking.
    pub fn delete_commitment(&self, requester: &str, transaction: &Uid) -> Result<()> {
        self.commitments_tree()?
            .remove(key(requester, transaction))
            .map_err(db_err("delete commitment"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commitment::{Reference, State};

    #[test]
    fn requests_survive_reopening_and_are_replaced_by_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let tx = Uid::parse("1.2.3.99").unwrap();
        let mut record = Record::new(
            "CT1".into(),
            tx.clone(),
            vec![Reference {
                class: "1.2.840.10008.5.1.4.1.1.2".into(),
                instance: "1.2.3.4".into(),
            }],
            1_000,
        );
        {
            let index = Index::open(dir.path()).unwrap();
            index.put_commitment(&record).unwrap();
            record.attempts = 3;
            record.state = State::Delivered;
            index.put_commitment(&record).unwrap();
        }
        let index = crate::index::tests::reopen(dir.path());
        let all = index.commitments().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], record);
        assert_eq!(index.commitment("CT1 ", &tx).unwrap(), Some(record));
        assert_eq!(index.commitment("CT2", &tx).unwrap(), None);
        index.delete_commitment("CT1", &tx).unwrap();
        assert!(index.commitments().unwrap().is_empty());
    }

    #[test]
    fn a_delivery_attempt_never_writes_over_a_repeated_request() {
        let dir = tempfile::tempdir().unwrap();
        let index = crate::index::tests::reopen(dir.path());
        let tx = Uid::parse("1.2.3.98").unwrap();
        let refs = vec![Reference {
            class: "1.2.840.10008.5.1.4.1.1.2".into(),
            instance: "1.2.3.4".into(),
        }];
        // The worker read the first request and is delivering it...
        let mut old = Record::new("CT1".into(), tx.clone(), refs.clone(), 1_000);
        index.put_commitment(&old).unwrap();
        // ...when the modality repeats the N-ACTION, reported at once.
        let mut repeated = Record::new("CT1".into(), tx.clone(), refs, 2_000);
        repeated.state = State::Delivered;
        index.put_commitment(&repeated).unwrap();
        // The attempt failed: its write-back is refused, the newer stands.
        old.attempts = 1;
        assert!(!index.put_commitment_if_current(&old).unwrap());
        assert_eq!(
            index.commitment("CT1", &tx).unwrap(),
            Some(repeated.clone())
        );
        // Its own version is written.
        repeated.attempts = 2;
        assert!(index.put_commitment_if_current(&repeated).unwrap());
        assert_eq!(index.commitment("CT1", &tx).unwrap().unwrap().attempts, 2);
        // A pruned request is not brought back.
        index.delete_commitment("CT1", &tx).unwrap();
        assert!(!index.put_commitment_if_current(&repeated).unwrap());
        assert!(index.commitments().unwrap().is_empty());
    }
}
