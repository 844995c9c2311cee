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
//! - `v1/subscriptions`: outbound webhook subscription id →
//!   [`crate::outbound::Subscription`] (JSON, secrets included).
//! - `v1/outbox`: `<subscription id>/<sequence, 16 hex digits>` →
//!   [`crate::outbound::Message`] still to deliver; `v1/outbox_done` the
//!   same for delivered and failed ones, until they are pruned ([`outbox`]).
//! - `v1/unstable`: `<study>` → Unix milliseconds of its last change, for
//!   studies not yet told stable; `v1/stable`: `<study>` → the version of
//!   its last `study.stable` event ([`stable`]).
//! - `v1/commitments`: storage commitment requests owed a report
//!   ([`commitments`]).
//! - `v1/forward`: `<destination AE> 0x00 <sop>` → [`ForwardItem`] (JSON),
//!   instances still to forward (or given up), queued with the instance
//!   ([`forward`]).
//! - `v1/forward_config`: forwarding destinations and rules created through
//!   the operator API ([`forward_config`]).
//! - `v1/meta`: `node` → this index's random node id (in message ids).
//!
//! A batch of instances is written in one transaction over the instance, SOP,
//! study, media, patient, stability and outbox trees and made durable with
//! one flush (group commit): callers acknowledge only after
//! [`Index::put_batch`] returns, and the events the batch causes are in the
//! outbox by then, or neither is.
//!
//! Instances, studies and media can be rebuilt from the object store
//! (`crate::maintenance`); report jobs, webhook answers, Avara pairings and
//! subscriptions cannot.

mod commitments;
mod forward;
mod forward_config;
mod jobs;
mod journaled;
mod outbox;
mod patients;
mod prune;
mod records;
mod replacing;
mod stable;
mod subscriptions;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

pub use forward::{
    Due, ForwardCounts, ForwardItem, ForwardKey, ForwardRoute, ForwardState, QueuedItem,
};
pub use forward_config::ForwardConfig;
pub use jobs::StoredAnswer;
pub use outbox::OutboxKey;
pub use records::{
    FillOutcome, InstanceRecord, InstanceTags, MediaRecord, NewEntry, NewInstance, PutOutcome,
    ReportInfo, ReportJob, ReportState, Series, StudyRecord, StudyTags, in_viewing_order,
};
pub use stable::StableOutcome;
pub use write::UPLOAD_SOURCE;

use crate::outbound::Subscription;
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
    unstable: sled::Tree,
    stable: sled::Tree,
    outbox: sled::Tree,
    outbox_done: sled::Tree,
    forward: sled::Tree,
    /// The forwarding rules' filters (empty: the forward tree stays out of
    /// ingest's transactions).
    forward_routes: Arc<RwLock<Arc<Vec<ForwardRoute>>>>,
    /// Bumped whenever forwarding items are queued.
    forward_wake: Arc<tokio::sync::watch::Sender<u64>>,
    /// Random, made once per index: message ids from two gateways on one
    /// store never collide.
    node: Arc<str>,
    /// The subscriptions, as last written (events are queued for those that
    /// want them inside the write's transaction, which cannot scan a tree).
    subscriptions: Arc<RwLock<Arc<Vec<Subscription>>>>,
    /// Woken when the outbox has new messages.
    outbox_wake: Arc<tokio::sync::Notify>,
    /// Counts changes to the outbox other than new messages and the
    /// worker's own bookkeeping (redelivery, failing, removal): a reader
    /// that caches the outbox reads it whole again when it moved.
    outbox_rev: Arc<AtomicU64>,
    stamps: Arc<Stamps>,
    /// Held by every write of instances and studies: the journal's apply
    /// writes them one operation at a time (write.rs), and nothing may
    /// come between its reads and its writes.
    writing: Arc<Mutex<()>>,
}

/// The trees one write spans: inside a sled transaction (`T =
/// TransactionalTree`), or, for the ingest journal's apply, the trees
/// themselves (`T = Plain`, see write.rs).
pub(crate) struct Tx<'a, T = TransactionalTree> {
    pub instances: &'a T,
    pub sops: &'a T,
    pub studies: &'a T,
    pub media: &'a T,
    pub patients: &'a T,
    pub unstable: &'a T,
    pub outbox: &'a T,
    /// Only when forwarding rules exist.
    pub forward: Option<&'a T>,
}

/// What an index write does with a tree: the same code writes inside a
/// transaction or, one operation at a time, outside one.
pub(crate) trait Kv {
    fn get(&self, key: &[u8]) -> TxResult<Option<sled::IVec>>;
    fn insert(&self, key: &[u8], value: impl Into<sled::IVec>) -> TxResult<Option<sled::IVec>>;
    fn remove(&self, key: &[u8]) -> TxResult<Option<sled::IVec>>;
    fn generate_id(&self) -> TxResult<u64>;
}

impl Kv for TransactionalTree {
    fn get(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(TransactionalTree::get(self, key)?)
    }
    fn insert(&self, key: &[u8], value: impl Into<sled::IVec>) -> TxResult<Option<sled::IVec>> {
        Ok(TransactionalTree::insert(self, key, value.into())?)
    }
    fn remove(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        Ok(TransactionalTree::remove(self, key)?)
    }
    fn generate_id(&self) -> TxResult<u64> {
        Ok(TransactionalTree::generate_id(self)?)
    }
}

/// A tree written outside a transaction (each operation atomic on its
/// own), with its database for ids.
pub(crate) struct Plain<'a> {
    tree: &'a sled::Tree,
    db: &'a sled::Db,
}

impl Kv for Plain<'_> {
    fn get(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        self.tree
            .get(key)
            .map_err(ConflictableTransactionError::Storage)
    }
    fn insert(&self, key: &[u8], value: impl Into<sled::IVec>) -> TxResult<Option<sled::IVec>> {
        // A crash in the middle of a journaled write, with what came
        // before the instance's own entry on disk (the crash tests).
        #[cfg(feature = "failpoints")]
        if &*self.tree.name() == b"v1/instances" {
            fail::fail_point!("index::instance_entry", |_| {
                let _ = self.db.flush();
                std::process::abort()
            });
        }
        self.tree
            .insert(key, value.into())
            .map_err(ConflictableTransactionError::Storage)
    }
    fn remove(&self, key: &[u8]) -> TxResult<Option<sled::IVec>> {
        self.tree
            .remove(key)
            .map_err(ConflictableTransactionError::Storage)
    }
    fn generate_id(&self) -> TxResult<u64> {
        self.db
            .generate_id()
            .map_err(ConflictableTransactionError::Storage)
    }
}

/// In-memory change stamps, one per study written since the index was
/// opened, so views derived from a study's instances can be cached and
/// rebuilt only when it changed. A stamp is never reused.
#[derive(Default)]
struct Stamps {
    last: AtomicU64,
    by_study: Mutex<HashMap<Uid, u64>>,
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
            unstable: tree("v1/unstable")?,
            stable: tree("v1/stable")?,
            outbox: tree("v1/outbox")?,
            outbox_done: tree("v1/outbox_done")?,
            forward: tree("v1/forward")?,
            forward_routes: Arc::default(),
            forward_wake: Arc::new(tokio::sync::watch::Sender::new(0)),
            node: outbox::node_id(&tree("v1/meta")?)?.into(),
            subscriptions: Arc::default(),
            outbox_wake: Arc::default(),
            outbox_rev: Arc::default(),
            stamps: Arc::default(),
            writing: Arc::default(),
            db,
        })
        .and_then(|index| {
            index.backfill_patients()?;
            index.reload_subscriptions()?;
            Ok(index)
        })
    }

    /// Runs `op` as one transaction over the instance, SOP, study, media,
    /// patient, stability and outbox trees.
    fn transact<T>(&self, op: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T> {
        self.transact_with(false, op)
    }

    /// Like [`Index::transact`], with the forwarding queue in the
    /// transaction too when `forward` is set (and only then: a tree in a
    /// transaction costs every write).
    fn transact_with<T>(&self, forward: bool, op: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T> {
        if forward {
            return (
                &self.instances,
                &self.sops,
                &self.studies,
                &self.media,
                &self.patients,
                &self.unstable,
                &self.outbox,
                &self.forward,
            )
                .transaction(
                    |(instances, sops, studies, media, patients, unstable, outbox, forward)| {
                        op(&Tx {
                            instances,
                            sops,
                            studies,
                            media,
                            patients,
                            unstable,
                            outbox,
                            forward: Some(forward),
                        })
                    },
                )
                .map_err(tx_error);
        }
        (
            &self.instances,
            &self.sops,
            &self.studies,
            &self.media,
            &self.patients,
            &self.unstable,
            &self.outbox,
        )
            .transaction(
                |(instances, sops, studies, media, patients, unstable, outbox)| {
                    op(&Tx {
                        instances,
                        sops,
                        studies,
                        media,
                        patients,
                        unstable,
                        outbox,
                        forward: None,
                    })
                },
            )
            .map_err(tx_error)
    }

    /// Removes every instance, study and media entry: what `reindex` can
    /// rebuild from the store. Report jobs, webhook answers and Avara study
    /// pairings stay (the store does not have them). Not atomic: if it is
    /// interrupted, run it again. For a stopped gateway. Blocking.
    pub fn clear_rebuildable(&self) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
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

    /// Every study in Study Instance UID order, one at a time, so a search
    /// holds only the records it keeps, not the whole index.
    pub fn for_each_study(&self, mut f: impl FnMut(StudyRecord)) -> Result<()> {
        for kv in self.studies.iter() {
            let (k, v) = kv.map_err(db_err("list studies"))?;
            f(decode(&k, &v)?);
        }
        Ok(())
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

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(source) => Error::Db {
            op: "transaction",
            source,
        },
    }
}

fn tx_decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> TxResult<T> {
    decode(key, value).map_err(ConflictableTransactionError::Abort)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

#[cfg(test)]
mod tests;
