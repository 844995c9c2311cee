//! Writing instances and media: one transaction per batch, one flush.
//! Ingest's writes also mark their studies as changing and queue the
//! events they cause, in the same transaction; rebuilding from the store
//! and repairs tell nobody anything.

use super::*;
use crate::outbound::Event;

/// Where an upload through a signed URL comes from (its instances'
/// `source`): such an instance is a secondary capture.
pub const UPLOAD_SOURCE: &str = "upload";

impl Index {
    /// Writes a batch of instances in one transaction and flushes it to disk.
    /// Blocking: call from a blocking thread.
    pub fn put_batch(&self, batch: &[NewEntry]) -> Result<Vec<PutOutcome>> {
        self.put_batch_with(batch, None)
    }

    /// Like [`Index::put_batch`] for one entry of the ingest journal, whose
    /// record (at `lsn`) is already durable and replayed after a crash: no
    /// flush (the checkpoint flushes), and its events' ids derive from
    /// `record_id` (hex: the journal's id and the record's LSN), so replay
    /// queues them with the ids they were delivered with. Such ids are
    /// longer than the sequence-based ones (`msg_` + node + 16 hex), so the
    /// two never collide; both stay `msg_` + hex. Blocking.
    pub fn put_journaled(&self, entry: &NewEntry, record_id: &str) -> Result<PutOutcome> {
        let outcomes = self.put_batch_with(std::slice::from_ref(entry), Some(record_id))?;
        Ok(outcomes.into_iter().next().expect("one outcome per entry"))
    }

    fn put_batch_with(
        &self,
        batch: &[NewEntry],
        record_id: Option<&str>,
    ) -> Result<Vec<PutOutcome>> {
        let subscriptions = self.subscriptions_snapshot();
        let routes = self.forward_routes_snapshot();
        let now = outbox::now_ms();
        let mut queued = false;
        let mut forwarded = false;
        let outcomes = self
            .transact_with(Index::forwards_instances(&routes), |tx| {
                let mut emitted = 0;
                let mut to_forward = 0;
                let mut nth = 0u8;
                let mut emit = |event| -> TxResult<()> {
                    let id = record_id.map(|r| format!("msg_{}{r}{nth:02x}", self.node));
                    nth = nth.wrapping_add(1);
                    emitted += outbox::emit_as(tx.outbox, &self.node, &subscriptions, event, id)?;
                    Ok(())
                };
                let outcomes = batch
                    .iter()
                    .map(|entry| match entry {
                        NewEntry::Instance(new) => {
                            let rec = &new.record;
                            let study = rec.study_instance_uid.as_str().as_bytes();
                            let first = tx.studies.get(study)?.is_none();
                            if let Some(fwd) = tx.forward {
                                to_forward +=
                                    forward::enqueue(tx, fwd, &routes, rec, record_id, now)?;
                            }
                            let outcome = put_one(tx, new)?;
                            stable::touch(tx.unstable, &rec.study_instance_uid, now)?;
                            // An instance moved out of another study changed
                            // that study too.
                            if let PutOutcome::Replaced {
                                previous_key: Some(key),
                            } = &outcome
                            {
                                if let Some(old) = key.study() {
                                    stable::touch(tx.unstable, &old, now)?;
                                }
                            }
                            if first {
                                emit(Event::study_received(now, rec, &new.study))?;
                            }
                            if rec.source == UPLOAD_SOURCE {
                                emit(Event::secondary_capture_stored(now, rec, &new.study))?;
                            }
                            Ok(outcome)
                        }
                        NewEntry::Media(record) => {
                            let outcome = put_media(tx.media, record)?;
                            emit(Event::media_stored(now, record))?;
                            Ok(outcome)
                        }
                    })
                    .collect::<TxResult<Vec<_>>>()?;
                Ok((outcomes, emitted, to_forward))
            })
            .map(|(outcomes, emitted, to_forward)| {
                queued = emitted > 0;
                forwarded = to_forward > 0;
                outcomes
            })?;
        // After the commit, so a view built from what a reader saw before
        // it carries an older stamp and is not reused.
        let moved_from = outcomes.iter().filter_map(|o| match o {
            PutOutcome::Replaced {
                previous_key: Some(key),
            } => key.study(),
            _ => None,
        });
        self.stamps
            .bump(batch.iter().map(entry_study).chain(moved_from));
        if record_id.is_none() {
            self.flush()?;
        }
        if queued {
            self.outbox_wake.notify_one();
        }
        if forwarded {
            self.forward_queued();
        }
        Ok(outcomes)
    }

    /// Like [`Index::put_batch`], but never replaces anything: an instance
    /// whose SOP Instance UID is indexed (under any key) and a media file
    /// whose name is indexed are left as they are. For rebuilding from the
    /// store, also while the gateway runs: the check and the write are one
    /// transaction, so an instance ingest stores (or moves) meanwhile is
    /// never overwritten with what an older listing saw. Blocking.
    pub fn put_missing(&self, batch: &[NewEntry]) -> Result<Vec<FillOutcome>> {
        let outcomes = self.transact(|tx| {
            batch
                .iter()
                .map(|entry| match entry {
                    NewEntry::Instance(new) => {
                        match indexed_key(tx.instances, tx.sops, &new.record.sop_instance_uid)? {
                            Some(key) if key == new.record.object_key => {
                                Ok(FillOutcome::AlreadyIndexed)
                            }
                            Some(key) => Ok(FillOutcome::IndexedElsewhere(key)),
                            None => put_one(tx, new).map(|_| FillOutcome::Added),
                        }
                    }
                    NewEntry::Media(record) => {
                        if tx.media.get(media_key(record).as_bytes())?.is_some() {
                            Ok(FillOutcome::AlreadyIndexed)
                        } else {
                            put_media(tx.media, record).map(|_| FillOutcome::Added)
                        }
                    }
                })
                .collect::<TxResult<Vec<_>>>()
        })?;
        let added = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == FillOutcome::Added)
            .map(|(e, _)| entry_study(e));
        self.stamps.bump(added);
        self.flush()?;
        Ok(outcomes)
    }

    /// Moves an instance's entry to `new` if, and only if, it still points
    /// at `from` (checked and written in one transaction): for taking the
    /// object the store holds when the indexed one is gone, without undoing
    /// an ingest that stored the instance again meanwhile. Returns whether
    /// it moved. Blocking.
    pub fn move_if_at(&self, new: &NewInstance, from: &ObjectKey) -> Result<bool> {
        let moved = self.transact(|tx| {
            match indexed_key(tx.instances, tx.sops, &new.record.sop_instance_uid)? {
                Some(key) if key == *from => put_one(tx, new).map(|_| true),
                _ => Ok(false),
            }
        })?;
        if moved {
            let old_study = from.study();
            self.stamps
                .bump(std::iter::once(new.record.study_instance_uid.clone()).chain(old_study));
            self.flush()?;
        }
        Ok(moved)
    }
}

pub(super) fn entry_study(entry: &NewEntry) -> Uid {
    match entry {
        NewEntry::Instance(i) => i.record.study_instance_uid.clone(),
        NewEntry::Media(m) => m.study_instance_uid.clone(),
    }
}

pub(super) fn media_key(record: &MediaRecord) -> String {
    format!("{}/{}", record.study_instance_uid, record.file_name)
}

/// Where the index has `sop`, if anywhere.
pub(super) fn indexed_key(
    instances: &TransactionalTree,
    sops: &TransactionalTree,
    sop: &Uid,
) -> TxResult<Option<ObjectKey>> {
    let Some(place) = sops.get(sop.as_str().as_bytes())? else {
        return Ok(None);
    };
    match instances.get(&place)? {
        Some(v) => Ok(Some(tx_decode::<InstanceRecord>(&place, &v)?.object_key)),
        None => Ok(None),
    }
}

pub(super) fn put_media(media: &TransactionalTree, record: &MediaRecord) -> TxResult<PutOutcome> {
    let key = media_key(record);
    let old = media.insert(key.as_bytes(), encode(record))?;
    Ok(match old {
        Some(_) => PutOutcome::Replaced { previous_key: None },
        None => PutOutcome::Added,
    })
}

pub(super) fn put_one(tx: &Tx<'_>, new: &NewInstance) -> TxResult<PutOutcome> {
    let Tx {
        instances,
        sops,
        studies,
        patients,
        ..
    } = *tx;
    let rec = &new.record;
    let key = instance_key(
        &rec.study_instance_uid,
        &rec.series_instance_uid,
        &rec.sop_instance_uid,
    );
    let sop_key = rec.sop_instance_uid.as_str().as_bytes();

    // A SOP Instance UID seen before: take the old entry out of its study's
    // counts first (it may even have been in another study).
    let mut outcome = PutOutcome::Added;
    if let Some(old_place) = sops.get(sop_key)? {
        if let Some(old) = instances.get(&old_place)? {
            let old: InstanceRecord = tx_decode(&old_place, &old)?;
            let study_key = old.study_instance_uid.as_str().as_bytes();
            if let Some(s) = studies.get(study_key)? {
                let mut s: StudyRecord = tx_decode(study_key, &s)?;
                s.instance_count = s.instance_count.saturating_sub(1);
                s.total_bytes = s.total_bytes.saturating_sub(old.size);
                if s.instance_count == 0 && old.study_instance_uid != rec.study_instance_uid {
                    let gone = studies.remove(study_key)?;
                    patients::track(patients, gone.as_deref(), None)?;
                } else {
                    studies.insert(study_key, encode(&s))?;
                }
            }
            instances.remove(&old_place)?;
            let moved = old.object_key != rec.object_key;
            outcome = PutOutcome::Replaced {
                previous_key: moved.then_some(old.object_key),
            };
        }
    }

    instances.insert(key.as_slice(), encode(rec))?;
    sops.insert(sop_key, key)?;

    let study_key = rec.study_instance_uid.as_str().as_bytes();
    let study = match studies.get(study_key)? {
        Some(v) => {
            let mut s: StudyRecord = tx_decode(study_key, &v)?;
            s.tags.merge(&new.study);
            s.instance_count += 1;
            s.total_bytes += rec.size;
            // Ingest receives in time order; a rebuild may not (RFC 3339 in
            // UTC with millis compares as text).
            if rec.received_at < s.first_received {
                s.first_received = rec.received_at.clone();
            }
            if rec.received_at > s.last_received {
                s.last_received = rec.received_at.clone();
            }
            s
        }
        None => StudyRecord {
            study_instance_uid: rec.study_instance_uid.clone(),
            tags: new.study.clone(),
            instance_count: 1,
            total_bytes: rec.size,
            first_received: rec.received_at.clone(),
            last_received: rec.received_at.clone(),
        },
    };
    let previous = studies.insert(study_key, encode(&study))?;
    // The patient tree follows the study record's patient.
    patients::track(patients, previous.as_deref(), Some(&study))?;
    Ok(outcome)
}
