//! The index: sled 0.34, behind this module only (no sled type leaves it).
//!
//! Trees (names versioned, so a later layout can live beside this one):
//! - `v1/instances`: `<study>/<series>/<sop>` → [`InstanceRecord`] (JSON). A
//!   study's instances are one ordered prefix scan.
//! - `v1/sops`: `<sop>` → `<study>/<series>/<sop>`, resolving a SOP Instance
//!   UID to its place in one lookup.
//! - `v1/studies`: `<study>` → [`StudyRecord`] (JSON) with counts.
//! - `v1/media`: `<study>/<file name>` → [`MediaRecord`] (JSON).
//! - `v1/reports`: Avara `reportId` → [`ReportJob`] (JSON).
//! - `v1/webhooks`: `webhook-id` → the answer given ([`StoredAnswer`]), so a
//!   retried event gets the same answer and no second side effect.
//! - `v1/avara_studies`: Avara `studyId` → Study Instance UID, as paired by
//!   access requests.
//! - `v1/replacing`: object keys being overwritten in place by a
//!   replacement, until the index describes the new object.
//! - `v1/patients`: `<issuer> 0x00 <patient id> 0x00 <study>` → empty: a
//!   patient's studies in one prefix scan, kept with the study records in
//!   the same transaction ([`patients`]).
//!
//! A batch of instances is written in one transaction over the instance, SOP,
//! study, media and patient trees and made durable with one flush (group
//! commit): callers acknowledge only after [`Index::put_batch`] returns.
//!
//! Instances, studies and media can be rebuilt from the object store
//! (`crate::maintenance`); report jobs, webhook answers and Avara pairings
//! cannot.

mod patients;
mod prune;
mod records;
mod replacing;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

pub use records::{
    FillOutcome, InstanceRecord, InstanceTags, MediaRecord, NewEntry, NewInstance, PutOutcome,
    ReportInfo, ReportJob, ReportState, Series, StudyRecord, StudyTags, in_viewing_order,
};

use crate::store::ObjectKey;
use crate::uid::Uid;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the index at {path} is in use by another process: is the gateway running? stop it first"
    )]
    Locked { path: PathBuf },
    #[error("open index at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("index {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("index {op}: {source}")]
    Sync {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("index key {key:?} does not start with a Study Instance UID")]
    BadKey { key: String },
    #[error("index record {key:?} is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

const SEP: u8 = b'/';

#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    /// sled's log file. sled's own flush uses `sync_file_range` on Linux,
    /// which neither persists the file's growing size nor flushes the disk's
    /// write cache: it survives a crash of the process, not a power cut. An
    /// `fdatasync` after each flush closes that gap.
    log: Arc<std::fs::File>,
    instances: sled::Tree,
    sops: sled::Tree,
    studies: sled::Tree,
    media: sled::Tree,
    reports: sled::Tree,
    webhooks: sled::Tree,
    avara_studies: sled::Tree,
    patients: sled::Tree,
    stamps: Arc<Stamps>,
}

/// In-memory change stamps, one per study written since the index was
/// opened, so views derived from a study's instances can be cached and
/// rebuilt only when it changed. A stamp is never reused.
#[derive(Default)]
struct Stamps {
    last: AtomicU64,
    by_study: Mutex<HashMap<Uid, u64>>,
}

/// An answer given to a webhook delivery.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredAnswer {
    /// Unix seconds when it was first answered (for pruning, and as the
    /// signing time when the answer is recomputed).
    pub at: u64,
    pub status: u16,
    /// The answer, or `null` when it is recomputed from `event`.
    #[serde(default)]
    pub body: serde_json::Value,
    /// Set for read-only events whose answer is large (signed URLs): the
    /// event itself, so a repeat is answered by computing it again at `at`,
    /// which gives the same URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Index")
    }
}

fn db_err(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |source| Error::Db { op, source }
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|source| Error::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// Decodes every record a tree iterator yields, in key order.
fn decode_all<T: serde::de::DeserializeOwned>(
    iter: sled::Iter,
    op: &'static str,
) -> Result<Vec<T>> {
    iter.map(|kv| {
        let (k, v) = kv.map_err(db_err(op))?;
        decode(&k, &v)
    })
    .collect()
}

/// sled takes an exclusive `flock` on its files and reports a second opener
/// with this message (sled is pinned, and a test holds it to it).
fn open_error(path: &Path, source: sled::Error) -> Error {
    match &source {
        sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => Error::Locked {
            path: path.to_owned(),
        },
        _ => Error::Open {
            path: path.to_owned(),
            source,
        },
    }
}

fn instance_key(study: &Uid, series: &Uid, sop: &Uid) -> Vec<u8> {
    format!("{study}/{series}/{sop}").into_bytes()
}

fn study_prefix(study: &Uid) -> Vec<u8> {
    let mut p = study.as_str().as_bytes().to_vec();
    p.push(SEP);
    p
}

impl Index {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Index> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // We flush explicitly at every commit; no background flusher needed.
            .flush_every_ms(None)
            .open()
            .map_err(|source| open_error(path, source))?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })
        };
        let log = std::fs::File::open(path.join("db")).map_err(|source| Error::Sync {
            op: "open sled log",
            source,
        })?;
        Ok(Index {
            log: Arc::new(log),
            instances: tree("v1/instances")?,
            sops: tree("v1/sops")?,
            studies: tree("v1/studies")?,
            media: tree("v1/media")?,
            reports: tree("v1/reports")?,
            webhooks: tree("v1/webhooks")?,
            avara_studies: tree("v1/avara_studies")?,
            patients: tree("v1/patients")?,
            stamps: Arc::default(),
            db,
        })
        .and_then(|index| {
            index.backfill_patients()?;
            Ok(index)
        })
    }

    /// Writes a batch of instances in one transaction and flushes it to disk.
    /// Blocking: call from a blocking thread.
    pub fn put_batch(&self, batch: &[NewEntry]) -> Result<Vec<PutOutcome>> {
        let outcomes = self.transact(|instances, sops, studies, media, patients| {
            batch
                .iter()
                .map(|entry| match entry {
                    NewEntry::Instance(new) => put_one(instances, sops, studies, patients, new),
                    NewEntry::Media(record) => put_media(media, record),
                })
                .collect::<TxResult<Vec<_>>>()
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
        self.flush()?;
        Ok(outcomes)
    }

    /// Like [`Index::put_batch`], but never replaces anything: an instance
    /// whose SOP Instance UID is indexed (under any key) and a media file
    /// whose name is indexed are left as they are. For rebuilding from the
    /// store, also while the gateway runs: the check and the write are one
    /// transaction, so an instance ingest stores (or moves) meanwhile is
    /// never overwritten with what an older listing saw. Blocking.
    pub fn put_missing(&self, batch: &[NewEntry]) -> Result<Vec<FillOutcome>> {
        let outcomes = self.transact(|instances, sops, studies, media, patients| {
            batch
                .iter()
                .map(|entry| match entry {
                    NewEntry::Instance(new) => {
                        match indexed_key(instances, sops, &new.record.sop_instance_uid)? {
                            Some(key) if key == new.record.object_key => {
                                Ok(FillOutcome::AlreadyIndexed)
                            }
                            Some(key) => Ok(FillOutcome::IndexedElsewhere(key)),
                            None => put_one(instances, sops, studies, patients, new)
                                .map(|_| FillOutcome::Added),
                        }
                    }
                    NewEntry::Media(record) => {
                        if media.get(media_key(record).as_bytes())?.is_some() {
                            Ok(FillOutcome::AlreadyIndexed)
                        } else {
                            put_media(media, record).map(|_| FillOutcome::Added)
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
        let moved = self.transact(|instances, sops, studies, _, patients| {
            match indexed_key(instances, sops, &new.record.sop_instance_uid)? {
                Some(key) if key == *from => {
                    put_one(instances, sops, studies, patients, new).map(|_| true)
                }
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

    /// Runs `op` as one transaction over the instance, SOP, study, media and
    /// patient trees.
    fn transact<T>(
        &self,
        op: impl Fn(
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
            &TransactionalTree,
        ) -> TxResult<T>,
    ) -> Result<T> {
        (
            &self.instances,
            &self.sops,
            &self.studies,
            &self.media,
            &self.patients,
        )
            .transaction(|(instances, sops, studies, media, patients)| {
                op(instances, sops, studies, media, patients)
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(source) => Error::Db {
                    op: "transaction",
                    source,
                },
            })
    }

    /// Removes every instance, study and media entry: what `reindex` can
    /// rebuild from the store. Report jobs, webhook answers and Avara study
    /// pairings stay (the store does not have them). Not atomic: if it is
    /// interrupted, run it again. For a stopped gateway. Blocking.
    pub fn clear_rebuildable(&self) -> Result<()> {
        let studies = self.indexed_studies()?;
        for tree in [
            &self.instances,
            &self.sops,
            &self.studies,
            &self.media,
            &self.patients,
        ] {
            tree.clear().map_err(db_err("clear"))?;
        }
        self.stamps.bump(studies.into_iter());
        self.flush()
    }

    /// Every study that has instance or media entries, whether or not its
    /// study record exists. Reads one key per study: after each, it seeks
    /// past the study's prefix.
    pub fn indexed_studies(&self) -> Result<BTreeSet<Uid>> {
        let mut studies = BTreeSet::new();
        for (tree, op) in [
            (&self.instances, "scan instances"),
            (&self.media, "scan media"),
        ] {
            let mut from = Vec::new();
            while let Some(kv) = tree.range(from.as_slice()..).next() {
                let (key, _) = kv.map_err(db_err(op))?;
                let study = key.split(|b| *b == SEP).next().unwrap_or(&key);
                let uid = std::str::from_utf8(study)
                    .ok()
                    .and_then(|s| Uid::parse(s).ok())
                    .ok_or_else(|| Error::BadKey {
                        key: String::from_utf8_lossy(&key).into_owned(),
                    })?;
                // The first key after every `<study>/…` one.
                from = study.to_vec();
                from.push(SEP + 1);
                studies.insert(uid);
            }
        }
        Ok(studies)
    }

    /// Changes whenever the study's instances or media change (0 if they
    /// have not changed since the index was opened).
    pub fn study_stamp(&self, study: &Uid) -> u64 {
        let by_study = self.stamps.by_study.lock().expect("stamps lock");
        by_study.get(study).copied().unwrap_or(0)
    }

    pub fn study(&self, study: &Uid) -> Result<Option<StudyRecord>> {
        let key = study.as_str().as_bytes();
        match self.studies.get(key).map_err(db_err("read study"))? {
            Some(v) => decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every study, ordered by Study Instance UID.
    pub fn studies(&self) -> Result<Vec<StudyRecord>> {
        decode_all(self.studies.iter(), "list studies")
    }

    /// Every instance of a study, ordered by series then SOP Instance UID, in
    /// one range scan.
    pub fn instances_of_study(&self, study: &Uid) -> Result<Vec<InstanceRecord>> {
        decode_all(
            self.instances.scan_prefix(study_prefix(study)),
            "scan instances",
        )
    }

    /// The record of one SOP instance, wherever it lives.
    pub fn instance(&self, sop: &Uid) -> Result<Option<InstanceRecord>> {
        let Some(place) = self.sops.get(sop.as_str()).map_err(db_err("read sop"))? else {
            return Ok(None);
        };
        match self
            .instances
            .get(&place)
            .map_err(db_err("read instance"))?
        {
            Some(v) => decode(&place, &v).map(Some),
            None => Ok(None),
        }
    }

    /// The media files of a study, by file name.
    pub fn media_of_study(&self, study: &Uid) -> Result<Vec<MediaRecord>> {
        decode_all(self.media.scan_prefix(study_prefix(study)), "scan media")
    }

    /// One media file of a study.
    pub fn media(&self, study: &Uid, name: &str) -> Result<Option<MediaRecord>> {
        let key = format!("{study}/{name}");
        match self.media.get(&key).map_err(db_err("read media"))? {
            Some(v) => decode(key.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Records a report job durably, unless one with this report id exists
    /// (a redelivery); returns the job as it stands.
    pub fn add_report_job(&self, job: &ReportJob) -> Result<ReportJob> {
        let id = job.report.report_id.as_str();
        let previous = self
            .reports
            .compare_and_swap(id, None as Option<&[u8]>, Some(encode(job)))
            .map_err(db_err("write report job"))?;
        self.flush()?;
        match previous {
            Ok(()) => Ok(job.clone()),
            Err(conflict) => decode(
                id.as_bytes(),
                &conflict.current.expect("present on conflict"),
            ),
        }
    }

    /// Updates a report job, durably.
    pub fn put_report_job(&self, job: &ReportJob) -> Result<()> {
        self.reports
            .insert(job.report.report_id.as_str(), encode(job))
            .map_err(db_err("write report job"))?;
        self.flush()
    }

    /// Every report job, by report id.
    pub fn report_jobs(&self) -> Result<Vec<ReportJob>> {
        decode_all(self.reports.iter(), "list report jobs")
    }

    /// The answer already given to this `webhook-id`, if any.
    pub fn webhook_answer(&self, id: &str) -> Result<Option<StoredAnswer>> {
        match self.webhooks.get(id).map_err(db_err("read webhook"))? {
            Some(v) => decode(id.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Records the answer to a webhook delivery (durably when `durable`: the
    /// event had a side effect). If another delivery of the same id got there
    /// first, its answer wins and is returned.
    pub fn remember_webhook(
        &self,
        id: &str,
        answer: &StoredAnswer,
        durable: bool,
    ) -> Result<StoredAnswer> {
        let previous = self
            .webhooks
            .compare_and_swap(id, None as Option<&[u8]>, Some(encode(answer)))
            .map_err(db_err("write webhook"))?;
        if durable {
            self.flush()?;
        }
        match previous {
            Ok(()) => Ok(answer.clone()),
            Err(conflict) => decode(
                id.as_bytes(),
                &conflict.current.expect("present on conflict"),
            ),
        }
    }

    /// Forgets webhook answers first given before `before` (Unix seconds).
    pub fn prune_webhooks(&self, before: u64) -> Result<usize> {
        let mut pruned = 0;
        for kv in self.webhooks.iter() {
            let (k, v) = kv.map_err(db_err("scan webhooks"))?;
            let answer: StoredAnswer = decode(&k, &v)?;
            if answer.at < before {
                self.webhooks.remove(&k).map_err(db_err("prune webhooks"))?;
                pruned += 1;
            }
        }
        self.flush()?;
        Ok(pruned)
    }

    /// Remembers that Avara's `study_id` is this Study Instance UID.
    pub fn pair_avara_study(&self, study_id: &str, study: &Uid) -> Result<()> {
        let old = self
            .avara_studies
            .insert(study_id, study.as_str())
            .map_err(db_err("pair study"))?;
        if old.as_deref() != Some(study.as_str().as_bytes()) {
            self.flush()?;
        }
        Ok(())
    }

    /// The Study Instance UID paired with Avara's `study_id`.
    pub fn avara_study(&self, study_id: &str) -> Result<Option<Uid>> {
        let Some(v) = self
            .avara_studies
            .get(study_id)
            .map_err(db_err("read pairing"))?
        else {
            return Ok(None);
        };
        Ok(std::str::from_utf8(&v)
            .ok()
            .and_then(|s| Uid::parse(s).ok()))
    }

    /// Makes everything written so far durable. Blocking.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(db_err("flush"))?;
        self.log.sync_data().map_err(|source| Error::Sync {
            op: "fsync sled log",
            source,
        })
    }
}

impl Stamps {
    fn bump(&self, studies: impl Iterator<Item = Uid>) {
        let stamp = self.last.fetch_add(1, Ordering::Relaxed) + 1;
        let mut by_study = self.by_study.lock().expect("stamps lock");
        for study in studies {
            by_study.insert(study, stamp);
        }
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<Error>>;

fn tx_decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> TxResult<T> {
    decode(key, value).map_err(ConflictableTransactionError::Abort)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

fn entry_study(entry: &NewEntry) -> Uid {
    match entry {
        NewEntry::Instance(i) => i.record.study_instance_uid.clone(),
        NewEntry::Media(m) => m.study_instance_uid.clone(),
    }
}

fn media_key(record: &MediaRecord) -> String {
    format!("{}/{}", record.study_instance_uid, record.file_name)
}

/// Where the index has `sop`, if anywhere.
fn indexed_key(
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

fn put_media(media: &TransactionalTree, record: &MediaRecord) -> TxResult<PutOutcome> {
    let key = media_key(record);
    let old = media.insert(key.as_bytes(), encode(record))?;
    Ok(match old {
        Some(_) => PutOutcome::Replaced { previous_key: None },
        None => PutOutcome::Added,
    })
}

fn put_one(
    instances: &TransactionalTree,
    sops: &TransactionalTree,
    studies: &TransactionalTree,
    patients: &TransactionalTree,
    new: &NewInstance,
) -> TxResult<PutOutcome> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> Uid {
        Uid::parse(s).unwrap()
    }

    fn new_instance(study: &str, series: &str, sop: &str, size: u64) -> NewEntry {
        let (st, se, so) = (uid(study), uid(series), uid(sop));
        NewEntry::Instance(Box::new(NewInstance {
            record: InstanceRecord {
                object_key: ObjectKey::instance(&st, &se, &so),
                study_instance_uid: st,
                series_instance_uid: se,
                sop_instance_uid: so,
                sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
                size,
                transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
                received_at: "2026-11-23T12:00:00Z".into(),
                source: "TEST".into(),
                tags: InstanceTags {
                    modality: Some("CT".into()),
                    ..Default::default()
                },
            },
            study: StudyTags {
                patient_id: Some("P1".into()),
                ..Default::default()
            },
        }))
    }

    #[test]
    fn a_commit_changes_the_stamp_of_every_study_it_touches() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let (a, b) = (uid("1.2.3"), uid("1.2.4"));
        assert_eq!((index.study_stamp(&a), index.study_stamp(&b)), (0, 0));
        index
            .put_batch(&[new_instance("1.2.3", "1.2.3.1", "1.2.9.1", 10)])
            .unwrap();
        let a1 = index.study_stamp(&a);
        assert!(a1 > 0);
        assert_eq!(index.study_stamp(&b), 0);
        // The SOP moves to study b: both studies changed.
        index
            .put_batch(&[new_instance("1.2.4", "1.2.4.1", "1.2.9.1", 10)])
            .unwrap();
        assert!(index.study_stamp(&a) > a1);
        assert_eq!(index.study_stamp(&a), index.study_stamp(&b));
    }

    #[test]
    fn a_study_comes_out_of_one_scan_with_counts() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let batch = vec![
            new_instance("1.2.3", "1.2.3.2", "1.2.3.2.1", 10),
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 20),
            new_instance("1.2.30", "1.2.30.1", "1.2.30.1.1", 5),
        ];
        let out = index.put_batch(&batch).unwrap();
        assert_eq!(out, vec![PutOutcome::Added; 3]);

        let inst = index.instances_of_study(&uid("1.2.3")).unwrap();
        let sops: Vec<_> = inst.iter().map(|i| i.sop_instance_uid.as_str()).collect();
        // Ordered by series, and the prefix scan does not leak study 1.2.30.
        assert_eq!(sops, ["1.2.3.1.1", "1.2.3.2.1"]);
        let study = index.study(&uid("1.2.3")).unwrap().unwrap();
        assert_eq!((study.instance_count, study.total_bytes), (2, 30));
        assert_eq!(index.studies().unwrap().len(), 2);
        let found = index.instance(&uid("1.2.30.1.1")).unwrap().unwrap();
        assert_eq!(found.study_instance_uid.as_str(), "1.2.30");
    }

    #[test]
    fn the_same_sop_twice_is_one_instance() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index
            .put_batch(&[new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10)])
            .unwrap();
        // Again in the same place, and once more within one batch.
        let out = index
            .put_batch(&[
                new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 12),
                new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 14),
            ])
            .unwrap();
        assert_eq!(out, vec![PutOutcome::Replaced { previous_key: None }; 2]);
        let study = index.study(&uid("1.2.3")).unwrap().unwrap();
        assert_eq!((study.instance_count, study.total_bytes), (1, 14));
    }

    #[test]
    fn a_sop_that_moves_study_leaves_no_trace_behind() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index
            .put_batch(&[new_instance("1.2.3", "1.2.3.1", "9.9", 10)])
            .unwrap();
        let out = index
            .put_batch(&[new_instance("1.2.4", "1.2.4.1", "9.9", 10)])
            .unwrap();
        let old_key = ObjectKey::instance(&uid("1.2.3"), &uid("1.2.3.1"), &uid("9.9"));
        assert_eq!(
            out,
            vec![PutOutcome::Replaced {
                previous_key: Some(old_key)
            }]
        );
        assert!(index.study(&uid("1.2.3")).unwrap().is_none());
        assert!(index.instances_of_study(&uid("1.2.3")).unwrap().is_empty());
        assert_eq!(
            index.study(&uid("1.2.4")).unwrap().unwrap().instance_count,
            1
        );
    }

    #[test]
    fn webhook_answers_are_kept_once_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let answer = |at, a| StoredAnswer {
            at,
            status: 200,
            body: serde_json::json!({ "a": a }),
            event: None,
        };
        let (first, second) = (answer(100, 1), answer(101, 2));
        assert_eq!(
            index.remember_webhook("msg_1", &first, true).unwrap(),
            first
        );
        // A concurrent second delivery gets the first answer.
        assert_eq!(
            index.remember_webhook("msg_1", &second, false).unwrap(),
            first
        );
        assert_eq!(index.webhook_answer("msg_1").unwrap(), Some(first));
        assert_eq!(index.prune_webhooks(101).unwrap(), 1);
        assert_eq!(index.webhook_answer("msg_1").unwrap(), None);

        index.pair_avara_study("stu_1", &uid("1.2.3")).unwrap();
        assert_eq!(index.avara_study("stu_1").unwrap(), Some(uid("1.2.3")));
        assert_eq!(index.avara_study("stu_2").unwrap(), None);
    }

    #[test]
    fn a_second_opener_is_told_the_index_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Index::open(dir.path()).unwrap();
        let err = Index::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("is the gateway running? stop it first")
        );
    }

    fn media(study: &str, name: &str, mime: &str) -> NewEntry {
        let st = uid(study);
        NewEntry::Media(MediaRecord {
            object_key: ObjectKey::media(&st, name),
            study_instance_uid: st,
            file_name: name.into(),
            mime_type: mime.into(),
            size: 3,
            stored_at: "2026-11-23T12:00:00.000Z".into(),
            source: "operator".into(),
            report: None,
        })
    }

    #[test]
    fn put_missing_adds_what_is_missing_and_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index
            .put_batch(&[
                new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10),
                media("1.2.3", "a.pdf", "application/pdf"),
            ])
            .unwrap();
        let before = index.study_stamp(&uid("1.2.3"));
        let out = index
            .put_missing(&[
                // Same SOP, same key, other size: kept as it was.
                new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 99),
                // Same SOP under another series: kept where it was.
                new_instance("1.2.3", "1.2.3.2", "1.2.3.1.1", 99),
                new_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 5),
                media("1.2.3", "a.pdf", "text/plain"),
                media("1.2.3", "b.png", "image/png"),
            ])
            .unwrap();
        let first = ObjectKey::instance(&uid("1.2.3"), &uid("1.2.3.1"), &uid("1.2.3.1.1"));
        assert_eq!(
            out,
            vec![
                FillOutcome::AlreadyIndexed,
                FillOutcome::IndexedElsewhere(first),
                FillOutcome::Added,
                FillOutcome::AlreadyIndexed,
                FillOutcome::Added,
            ]
        );
        let study = index.study(&uid("1.2.3")).unwrap().unwrap();
        assert_eq!((study.instance_count, study.total_bytes), (2, 15));
        let a = index.media(&uid("1.2.3"), "a.pdf").unwrap().unwrap();
        assert_eq!(a.mime_type, "application/pdf");
        assert_eq!(index.media_of_study(&uid("1.2.3")).unwrap().len(), 2);
        assert!(index.study_stamp(&uid("1.2.3")) > before);

        // Nothing missing: nothing written, stamp unchanged.
        let stamp = index.study_stamp(&uid("1.2.3"));
        let again = index
            .put_missing(&[new_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 5)])
            .unwrap();
        assert_eq!(again, vec![FillOutcome::AlreadyIndexed]);
        assert_eq!(index.study_stamp(&uid("1.2.3")), stamp);
    }

    #[test]
    fn receive_times_span_the_study_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let at = |sop: &str, t: &str| {
            let NewEntry::Instance(mut new) = new_instance("1.2.3", "1.2.3.1", sop, 1) else {
                unreachable!()
            };
            new.record.received_at = t.into();
            NewEntry::Instance(new)
        };
        index
            .put_missing(&[
                at("1.2.3.1.2", "2026-11-23T12:00:02.000Z"),
                at("1.2.3.1.1", "2026-11-23T12:00:01.000Z"),
                at("1.2.3.1.3", "2026-11-23T12:00:03.000Z"),
                at("1.2.3.1.0", "2026-11-23T12:00:02.500Z"),
            ])
            .unwrap();
        let study = index.study(&uid("1.2.3")).unwrap().unwrap();
        assert_eq!(study.first_received, "2026-11-23T12:00:01.000Z");
        assert_eq!(study.last_received, "2026-11-23T12:00:03.000Z");
    }

    #[test]
    fn clearing_keeps_what_the_store_cannot_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index
            .put_batch(&[
                new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10),
                new_instance("1.2.3", "1.2.3.2", "1.2.3.2.1", 10),
                new_instance("1.2.30", "1.2.30.1", "1.2.30.1.1", 10),
                new_instance("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1", 10),
                media("1.2.3", "a.pdf", "application/pdf"),
                media("1.2.5", "a.pdf", "application/pdf"),
                media("1.2.5", "b.pdf", "application/pdf"),
            ])
            .unwrap();
        index.pair_avara_study("stu_1", &uid("1.2.3")).unwrap();
        // Studies whose UIDs prefix one another are each found once.
        let studies: Vec<_> = index.indexed_studies().unwrap().into_iter().collect();
        assert_eq!(
            studies,
            [uid("1.2.3"), uid("1.2.3.4"), uid("1.2.30"), uid("1.2.5")]
        );

        index.clear_rebuildable().unwrap();
        assert!(index.indexed_studies().unwrap().is_empty());
        assert!(index.studies().unwrap().is_empty());
        assert!(index.instance(&uid("1.2.3.1.1")).unwrap().is_none());
        assert_eq!(index.avara_study("stu_1").unwrap(), Some(uid("1.2.3")));
    }

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = Index::open(dir.path()).unwrap();
            index
                .put_batch(&[new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10)])
                .unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        assert!(index.instance(&uid("1.2.3.1.1")).unwrap().is_some());
    }
}
