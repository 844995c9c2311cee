//! The one ingest path. C-STORE arrivals (and, later, uploads) are written to
//! a spool file as they arrive, checked, placed in the object store and
//! indexed; the caller acknowledges only what [`Ingest::finish`] returned.

mod commit;
mod describe;
pub mod duplicates;
mod error;
pub mod header;
pub mod journal;
pub mod locks;
mod receiving;
pub mod spool;

use std::sync::Arc;

use crate::config::{Config, DuplicatePolicy};
use crate::index::{Index, InstanceRecord, MediaRecord, NewEntry, PutOutcome, ReportInfo};
use crate::store::{BlobStore, ObjectKey};
use crate::uid::Uid;

pub use commit::Committer;
use describe::{describe, now_rfc3339, record_from};
pub use locks::KeyLocks;
pub use receiving::Receiving;
use receiving::Reserve;
pub(crate) use receiving::free_space;
use spool::{Finish, Spool, Spooled};

pub use error::{Error, ErrorKind};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the sender announced before the data set arrived.
#[derive(Debug, Clone)]
pub struct Expected {
    pub sop_class: Uid,
    pub sop_instance: Uid,
}

/// What a received object must be: each UID that is set must match the
/// data set's.
#[derive(Debug, Clone, Default)]
pub struct Check {
    pub study: Option<Uid>,
    pub series: Option<Uid>,
    pub sop_class: Option<Uid>,
    pub sop_instance: Option<Uid>,
}

impl From<&Expected> for Check {
    fn from(e: &Expected) -> Check {
        Check {
            sop_class: Some(e.sop_class.clone()),
            sop_instance: Some(e.sop_instance.clone()),
            ..Check::default()
        }
    }
}

/// A stored instance and what storing it did.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: InstanceRecord,
    pub outcome: PutOutcome,
}

pub struct Ingest {
    spool: Spool,
    store: BlobStore,
    /// One ingest at a time per SOP Instance UID or media file.
    locks: Arc<KeyLocks>,
    committer: Committer,
    /// The ingest journal, when enabled (local store): it commits instead
    /// of `committer`.
    journal: Option<Arc<journal::Journal>>,
    /// How a finished spool file is made durable in a local store: synced,
    /// or (journal) small ones carried in the record instead.
    finish_local: Finish,
    max_instance_size: u64,
    reserve: Reserve,
    index: Index,
    duplicates: DuplicatePolicy,
    /// Bounds of the header read of every instance.
    scan_limits: header::ScanLimits,
    /// Instances the duplicate policy refused since the start.
    duplicates_refused: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("spool", &self.spool)
            .finish()
    }
}

impl Ingest {
    /// Opens the spool, sweeping what an earlier process left in it.
    ///
    /// With `backlog` (an S3 store, `storage.ack = "journal"`), the journal
    /// acknowledges S3 instances too: they wait in the backlog's pending
    /// directory for their upload.
    pub fn start(
        cfg: &Config,
        store: BlobStore,
        index: Index,
        backlog: Option<Arc<crate::store::backlog::Backlog>>,
    ) -> std::io::Result<Ingest> {
        // The journal replays first: it needs the spool files its records
        // refer to, which opening the spool sweeps.
        let journal = journal::start(cfg, &store, &index, backlog.as_ref())?;
        let (spool, swept) = Spool::open(&cfg.spool_dir())?;
        if let Some(backlog) = &backlog {
            // Uploaded pending copies become spool files (same filesystem).
            backlog.set_recycler(spool.recycler());
        }
        if let Some(root) = store.local_root() {
            // Received instances are renamed into the store: prove it works
            // here (one filesystem, and one mount of it) rather than refuse
            // every instance later.
            let name = format!(".rename-probe-{}", std::process::id());
            let (from, to) = (spool.dir().join(&name), root.join(&name));
            std::fs::write(&from, b"")?;
            let renamed = std::fs::rename(&from, &to);
            let _ = std::fs::remove_file(if renamed.is_ok() { &to } else { &from });
            renamed.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "the spool ({}) and the object store ({}) must be on one filesystem \
                         (one mount): received instances are renamed into the store: {e}",
                        spool.dir().display(),
                        root.display()
                    ),
                )
            })?;
        }
        if swept > 0 {
            tracing::warn!(
                count = swept,
                "removed unfinished spool files from an earlier run"
            );
        }
        let finish_local = match &journal {
            Some(journal) => Finish::Inline {
                max: journal.inline_max(cfg.journal.inline_max_kib.saturating_mul(1024)),
                file: !journal.places_from_memory(),
            },
            None => Finish::Durable,
        };
        Ok(Ingest {
            committer: Committer::new(store.clone(), index.clone()),
            journal,
            finish_local,
            index,
            duplicates: cfg.duplicates,
            scan_limits: header::ScanLimits {
                max_header_bytes: cfg.max_header_bytes,
                max_depth: cfg.max_sequence_depth,
                max_inflated: header::ScanLimits::default()
                    .max_inflated
                    .min(cfg.max_instance_size),
            },
            duplicates_refused: Default::default(),
            store,
            locks: Arc::default(),
            max_instance_size: cfg.max_instance_size,
            reserve: Reserve {
                dir: Arc::from(spool.dir()),
                min: cfg.min_free_space,
                headroom: receiving::HEADROOM_BUFFERS + u64::from(cfg.max_pdu_length),
                transfers: Arc::default(),
            },
            spool,
        })
    }

    /// The per-instance locks ingest holds from check to clean-up, for
    /// whoever else changes an instance's entry while the gateway runs.
    pub fn locks(&self) -> &Arc<KeyLocks> {
        &self.locks
    }

    /// Starts receiving a DIMSE data set in `transfer_syntax`: the spool file
    /// begins with the Part-10 header the gateway writes for it.
    pub async fn begin_dataset(
        &self,
        transfer_syntax: &str,
        expected: &Expected,
        source_ae: &str,
    ) -> Result<Receiving> {
        self.check_free_space()?;
        let prefix = header::part10_prefix(
            transfer_syntax,
            &expected.sop_class,
            &expected.sop_instance,
            source_ae,
        )?;
        let mut writer = self.spool.create();
        writer.write(&prefix).await.map_err(Error::Spool)?;
        Ok(Receiving::new(
            writer,
            self.max_instance_size.saturating_add(prefix.len() as u64),
            source_ae.trim().to_owned(),
            self.reserve.clone(),
        ))
    }

    /// Starts receiving an uploaded Part-10 object (it brings its own header).
    pub async fn begin_upload(&self, source: &str) -> Result<Receiving> {
        self.check_free_space()?;
        let writer = self.spool.create();
        Ok(Receiving::new(
            writer,
            self.max_instance_size,
            source.to_owned(),
            self.reserve.clone(),
        ))
    }

    /// Checks the received instance against what was announced and the
    /// duplicate policy, makes it durable in the store and the index, and
    /// says what happened. A panic on the way fails this instance only.
    pub async fn finish(&self, receiving: Receiving, expected: Check) -> Result<Stored> {
        use futures::FutureExt;
        let result = std::panic::AssertUnwindSafe(self.finish_inner(receiving, expected))
            .catch_unwind()
            .await
            .unwrap_or(Err(Error::Panicked("storing it")));
        if let Err(Error::Duplicate { .. }) = result {
            self.duplicates_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Tells the subscriptions that want `instance.refused` (not flushed on
    /// its own: a refusal changes nothing that must survive a crash).
    pub fn tell_refused(&self, refusal: &crate::outbound::Refusal<'_>) {
        let event = crate::outbound::Event::instance_refused(crate::outbound::now_ms(), refusal);
        if let Err(e) = self.index.emit(event) {
            tracing::error!(error = %e, "cannot queue instance.refused");
        }
    }

    /// Whether the ingest journal stopped (every instance is refused until
    /// a restart replays it).
    pub fn journal_failed(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| j.failed())
    }

    /// Instances the duplicate policy refused since the start.
    pub fn duplicates_refused(&self) -> u64 {
        self.duplicates_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn finish_inner(&self, receiving: Receiving, expected: Check) -> Result<Stored> {
        let Receiving { writer, source, .. } = receiving;
        if self.store.is_local() || self.journal.is_some() {
            // Check, rename into place and commit on the thread that
            // finished the spool file (for S3 with the journal: into the
            // upload backlog).
            let (committer, locks, store) = (
                self.committer.clone(),
                Arc::clone(&self.locks),
                self.store.clone(),
            );
            let journal = self.journal.clone();
            let (index, policy) = (self.index.clone(), self.duplicates);
            let limits = self.scan_limits.clone();
            return writer
                .finish(self.finish_local, move |spooled| {
                    // A panic on this thread fails this instance, like one
                    // on the runtime (below), instead of becoming 0xA700.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let (record, new) = describe(&spooled, &expected, source, &limits)?;
                        let _one_at_a_time = locks.lock_blocking(record.sop_instance_uid.as_str());
                        let admission = duplicates::admit(
                            policy,
                            &index,
                            &record,
                            study_tags(&new),
                            &expected,
                        )?;
                        if journal.is_none() {
                            // (The journal's record, durable before the
                            // object is overwritten, is what repairs it.)
                            note_replacing(&index, admission, &record)?;
                        }
                        let committed = match &journal {
                            Some(journal) => journal.commit(spooled, new).map_err(Error::from),
                            None => committer.commit(spooled, new),
                        };
                        let outcome = committed.inspect_err(|_| {
                            // On the blocking thread that committed.
                            tokio::runtime::Handle::current()
                                .block_on(repair_failed(&store, &index, admission, &record))
                        })?;
                        if journal.is_none() {
                            replaced(&index, admission, &record);
                        }
                        // On the blocking thread that committed: awaited here.
                        tokio::runtime::Handle::current().block_on(remove_moved(
                            &store,
                            &outcome,
                            &record.object_key,
                        ));
                        Ok(Stored { record, outcome })
                    }))
                    .unwrap_or(Err(Error::Panicked("storing it")))
                })
                .await
                .map_err(Error::Spool)?;
        }
        let limits = self.scan_limits.clone();
        let (spooled, described) = writer
            .finish(Finish::Buffered, move |spooled| {
                let described = describe(&spooled, &expected, source, &limits);
                (spooled, described, expected)
            })
            .await
            .map_err(Error::Spool)
            .map(|(spooled, described, expected)| (spooled, described.map(|d| (d, expected))))?;
        let ((record, new), expected) = described?;
        let _one_at_a_time = self.locks.lock(record.sop_instance_uid.as_str()).await;
        // Index reads and, for a replacement, a flush: off the runtime.
        let (index, policy) = (self.index.clone(), self.duplicates);
        let (record, new, admission) = tokio::task::spawn_blocking(move || {
            let admission =
                duplicates::admit(policy, &index, &record, study_tags(&new), &expected)?;
            note_replacing(&index, admission, &record)?;
            Ok::<_, Error>((record, new, admission))
        })
        .await
        .map_err(|_| Error::Panicked("checking it against the index"))??;
        let outcome = match self.upload_and_commit(spooled, new).await {
            Ok(outcome) => outcome,
            Err(e) => {
                repair_failed(&self.store, &self.index, admission, &record).await;
                return Err(e);
            }
        };
        replaced(&self.index, admission, &record);
        remove_moved(&self.store, &outcome, &record.object_key).await;
        Ok(Stored { record, outcome })
    }

    /// Finishes what a crash interrupted before the gateway serves: the
    /// index entries of replacements that may have overwritten their object
    /// are described again from the store.
    pub async fn recover(&self) -> Result<usize> {
        duplicates::recover(&self.store, &self.index).await
    }

    /// Makes a received media file durable in the store and the index, as a
    /// file of `study` named `name`, then writes a sidecar next to it that
    /// keeps its record (so `reindex` restores the MIME type and report
    /// fields; written once the file is in place, so it never describes
    /// bytes the store does not have). Returns its record and whether it
    /// replaced an earlier file of that name.
    pub async fn finish_media(
        &self,
        receiving: Receiving,
        study: Uid,
        name: String,
        mime_type: String,
        report: Option<ReportInfo>,
    ) -> Result<(MediaRecord, bool)> {
        let Receiving { writer, source, .. } = receiving;
        let record = MediaRecord {
            object_key: ObjectKey::media(&study, &name),
            file_name: name.clone(),
            mime_type,
            size: writer.len(),
            stored_at: now_rfc3339(),
            source,
            report,
            study_instance_uid: study.clone(),
        };
        let how = if self.store.is_local() || self.journal.is_some() {
            self.finish_local
        } else {
            Finish::Buffered
        };
        let (spooled, new) = writer
            .finish(how, {
                let record = record.clone();
                move |spooled| (spooled, NewEntry::Media(record))
            })
            .await
            .map_err(Error::Spool)?;
        let _one_at_a_time = self.locks.lock(record.object_key.as_str()).await;
        // A file of that name is replaced in place: noted first, as for
        // instances, so a crash before the commit is repaired at the start.
        let (index, key) = (self.index.clone(), record.object_key.clone());
        let (of_study, named) = (study.clone(), name.clone());
        // With the journal its record, durable before the file is replaced,
        // is what repairs an interrupted replacement (a note would have the
        // next start describe the file again from a store that, on S3, may
        // not have the new one yet).
        let note = self.journal.is_none();
        let replacing = tokio::task::spawn_blocking(move || {
            let replacing = index.media(&of_study, &named)?.is_some();
            if replacing && note {
                index.note_replacing(&key)?;
            }
            Ok::<_, crate::index::Error>(replacing)
        })
        .await
        .map_err(|_| Error::Panicked("checking it against the index"))?
        .map_err(Error::Index)?;
        let outcome = self.upload_and_commit(spooled, new).await?;
        if replacing && self.journal.is_none() {
            if let Err(e) = self.index.replacing_done(&record.object_key) {
                tracing::warn!(key = %record.object_key, error = %e, "could not forget a replacement note; it is described again at the next start");
            }
        }
        let sidecar = serde_json::to_vec(&record).expect("records serialise");
        let sidecar_key = ObjectKey::media_sidecar(&study, &name);
        if let Err(e) = self.store.put_small(&sidecar_key, sidecar).await {
            // The file is stored and indexed; only a rebuild from the store
            // would miss its type (guessed from the name) and report fields.
            tracing::warn!(key = %sidecar_key, error = %e, "could not write a media sidecar");
        }
        Ok((record, outcome != PutOutcome::Added))
    }

    /// Uploads the spooled object (remote store), then places (local store)
    /// and indexes it.
    async fn upload_and_commit(&self, spooled: Spooled, new: NewEntry) -> Result<PutOutcome> {
        if self.journal.is_none() {
            // With the journal, a remote store's upload follows the
            // acknowledgement (the upload backlog).
            self.store
                .upload(spooled.path(), spooled.len, new.object_key())
                .await?;
        }
        let committer = self.committer.clone();
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || match journal {
            Some(journal) => journal.commit(spooled, new).map_err(Error::from),
            None => committer.commit(spooled, new),
        })
        .await
        .map_err(|e| Error::Spool(std::io::Error::other(e)))?
    }

    fn check_free_space(&self) -> Result<()> {
        self.reserve.check()
    }
}

/// Deletes the old object of an instance that moved study or series
/// (still under the instance's lock, so a re-send cannot be deleted).
async fn remove_moved(store: &BlobStore, outcome: &PutOutcome, new: &ObjectKey) {
    if let PutOutcome::Replaced {
        previous_key: Some(old),
    } = outcome
    {
        match store.delete(old).await {
            Ok(()) => tracing::info!(old = %old, new = %new, "instance moved; old object removed"),
            Err(e) => {
                tracing::warn!(old = %old, error = %e, "could not remove the moved instance's old object")
            }
        }
    }
}

/// Before a replacement overwrites the stored object in place, notes its
/// key durably, so a crash before the index commit is repaired at the next
/// start (see [`duplicates`]); the commit's own flush ends the note.
fn note_replacing(
    index: &Index,
    admission: duplicates::Admission,
    record: &InstanceRecord,
) -> Result<()> {
    if admission == (duplicates::Admission::Replace { same_key: true }) {
        index
            .note_replacing(&record.object_key)
            .map_err(Error::Index)?;
    }
    Ok(())
}

/// A replacement whose commit failed (the process lives on) may already
/// have overwritten the object: describe it again now rather than at the
/// next start, so the index does not describe bytes that are gone meanwhile.
async fn repair_failed(
    store: &BlobStore,
    index: &Index,
    admission: duplicates::Admission,
    record: &InstanceRecord,
) {
    if admission == (duplicates::Admission::Replace { same_key: true }) {
        if let Err(e) = duplicates::repair(store, index, &record.object_key).await {
            tracing::error!(key = %record.object_key, error = %e, "could not describe a failed replacement again; the next start does");
        }
    }
}

/// Ends the note of a replacement the index now describes. (If the commit
/// failed instead, the note stays and the next start describes the object.)
fn replaced(index: &Index, admission: duplicates::Admission, record: &InstanceRecord) {
    if admission == (duplicates::Admission::Replace { same_key: true }) {
        if let Err(e) = index.replacing_done(&record.object_key) {
            tracing::warn!(key = %record.object_key, error = %e, "could not forget a replacement note; it is described again at the next start");
        }
    }
}

/// The patient and study tags an instance's entry carries.
fn study_tags(new: &NewEntry) -> Option<&crate::index::StudyTags> {
    match new {
        NewEntry::Instance(instance) => Some(&instance.study),
        NewEntry::Media(_) => None,
    }
}
