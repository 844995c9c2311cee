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

    /// `batch` in one transaction; with `record_ids` (one per entry: the
    /// ingest journal's replay) its events get ids derived from them and
    /// nothing is flushed (the checkpoint flushes).
    pub(super) fn put_batch_with(
        &self,
        batch: &[NewEntry],
        record_ids: Option<&[String]>,
    ) -> Result<Vec<PutOutcome>> {
        let ctx = self.write_context();
        let writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let (outcomes, queued, forwarded) =
            self.transact_with(Index::forwards_instances(&ctx.routes), |tx| {
                let (mut queued, mut forwarded) = (false, false);
                let outcomes = batch
                    .iter()
                    .enumerate()
                    .map(|(i, entry)| {
                        let record_id = record_ids.map(|ids| ids[i].as_str());
                        let written = write_entry(tx, &ctx, entry, record_id)?;
                        queued |= written.emitted > 0;
                        forwarded |= written.forwarded > 0;
                        Ok(written.outcome)
                    })
                    .collect::<TxResult<Vec<_>>>()?;
                Ok((outcomes, queued, forwarded))
            })?;
        // The flush below waits for the disk: not under the lock.
        drop(writing);
        self.written(batch, &outcomes, queued, forwarded);
        if record_ids.is_none() {
            self.flush()?;
        }
        Ok(outcomes)
    }

    /// What every write of entries needs to know besides the entries.
    pub(super) fn write_context(&self) -> WriteContext {
        WriteContext {
            subscriptions: self.subscriptions_snapshot(),
            routes: self.forward_routes_snapshot(),
            now: outbox::now_ms(),
            node: Arc::clone(&self.node),
        }
    }

    /// After entries were written: views of their studies are stale, and
    /// the outbox and forwarding workers may have work.
    pub(super) fn written(
        &self,
        batch: &[NewEntry],
        outcomes: &[PutOutcome],
        queued: bool,
        forwarded: bool,
    ) {
        // After the write, so a view built from what a reader saw before
        // it carries an older stamp and is not reused.
        let moved_from = outcomes.iter().filter_map(|o| match o {
            PutOutcome::Replaced {
                previous_key: Some(key),
            } => key.study(),
            _ => None,
        });
        self.stamps
            .bump(batch.iter().map(entry_study).chain(moved_from));
        if queued {
            self.outbox_wake.notify_one();
        }
        if forwarded {
            self.forward_queued();
        }
    }

    /// Like [`Index::put_batch`], but never replaces anything: an instance
    /// whose SOP Instance UID is indexed (under any key) and a media file
    /// whose name is indexed are left as they are. For rebuilding from the
    /// store, also while the gateway runs: the check and the write are one
    /// transaction, so an instance ingest stores (or moves) meanwhile is
    /// never overwritten with what an older listing saw. Blocking.
    pub fn put_missing(&self, batch: &[NewEntry]) -> Result<Vec<FillOutcome>> {
        let writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
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
        drop(writing);
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
        let writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let moved = self.transact(|tx| {
            match indexed_key(tx.instances, tx.sops, &new.record.sop_instance_uid)? {
                Some(key) if key == *from => put_one(tx, new).map(|_| true),
                _ => Ok(false),
            }
        })?;
        drop(writing);
        if moved {
            let old_study = from.study();
            self.stamps
                .bump(std::iter::once(new.record.study_instance_uid.clone()).chain(old_study));
            self.flush()?;
        }
        Ok(moved)
    }
}

pub(super) struct WriteContext {
    pub subscriptions: Arc<Vec<Subscription>>,
    pub routes: Arc<Vec<forward::ForwardRoute>>,
    pub now: u64,
    pub node: Arc<str>,
}

/// What writing one entry did.
pub(super) struct Written {
    pub outcome: PutOutcome,
    /// Messages queued for subscriptions, and forwarding entries.
    pub emitted: usize,
    pub forwarded: usize,
}

/// Writes one entry: its forwarding entries, its events, its study's
/// "changed" marks, then the entry itself, the instance's own entry last.
///
/// That order is what makes the journal's apply safe outside a
/// transaction (journaled.rs): after a crash sled holds a prefix of the
/// operations, so an instance entry equal to its record's means that
/// everything before it was written too; anything less is written again
/// at the replay, which then counts the study again from its instances.
pub(super) fn write_entry<K: Kv>(
    tx: &Tx<'_, K>,
    ctx: &WriteContext,
    entry: &NewEntry,
    record_id: Option<&str>,
) -> TxResult<Written> {
    let now = ctx.now;
    let mut emitted = 0;
    let mut forwarded = 0;
    // A journaled entry's events are numbered within it.
    let mut nth = 0u8;
    let mut emit = |event| -> TxResult<()> {
        let id = record_id.map(|r| format!("msg_{}{r}{nth:02x}", ctx.node));
        nth = nth.wrapping_add(1);
        emitted += outbox::emit_as(tx.outbox, &ctx.node, &ctx.subscriptions, event, id)?;
        Ok(())
    };
    let outcome = match entry {
        NewEntry::Instance(new) => {
            let rec = &new.record;
            let study = rec.study_instance_uid.as_str().as_bytes();
            let first = tx.studies.get(study)?.is_none();
            if let Some(fwd) = tx.forward {
                forwarded += forward::enqueue(tx, fwd, &ctx.routes, rec, record_id, now)?;
            }
            if first {
                emit(Event::study_received(now, rec, &new.study))?;
            }
            if rec.source == UPLOAD_SOURCE {
                emit(Event::secondary_capture_stored(now, rec, &new.study))?;
            }
            stable::touch(tx.unstable, &rec.study_instance_uid, now)?;
            // An instance moving out of another study changes that study too.
            if let Some(old) = indexed_key(tx.instances, tx.sops, &rec.sop_instance_uid)? {
                if let Some(old_study) = old.study() {
                    if old_study != rec.study_instance_uid {
                        stable::touch(tx.unstable, &old_study, now)?;
                    }
                }
            }
            put_one(tx, new)?
        }
        NewEntry::Media(record) => {
            emit(Event::media_stored(now, record))?;
            put_media(tx.media, record)?
        }
    };
    Ok(Written {
        outcome,
        emitted,
        forwarded,
    })
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
    instances: &impl Kv,
    sops: &impl Kv,
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

pub(super) fn put_media(media: &impl Kv, record: &MediaRecord) -> TxResult<PutOutcome> {
    let key = media_key(record);
    let old = media.insert(key.as_bytes(), encode(record))?;
    Ok(match old {
        Some(_) => PutOutcome::Replaced { previous_key: None },
        None => PutOutcome::Added,
    })
}

/// Writes an instance's entry, its SOP Instance UID's place and its
/// study's (and patient's) records, the instance's own entry last (see
/// [`write_entry`]).
pub(super) fn put_one<K: Kv>(tx: &Tx<'_, K>, new: &NewInstance) -> TxResult<PutOutcome> {
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
    sops.insert(sop_key, key.as_slice())?;
    instances.insert(&key, encode(rec))?;
    Ok(outcome)
}
