//! The journal at work: the commit an ingest calls instead of the old
//! flush-per-batch committer (local store), and the checkpoint.
//!
//! Commit, per instance, on the blocking thread that finished its spool
//! file: append its record (one `fdatasync` shared with whoever is ready,
//! see writer.rs), then apply — rename the spool file onto its key (no
//! sync), write the index entry and its events (no transaction and no
//! flush: the record makes them atomic across a crash, see
//! index/journaled.rs) — and only then answer. The index therefore shows an
//! acknowledged instance at once; the journal makes it durable, the
//! checkpoint makes the placement and the index durable in the background
//! and lets the journal go.
//!
//! An instance up to `journal.inline_max_kib` travels **inline**: its bytes
//! are in the record and its spool file is never synced, so its
//! acknowledgement waits for exactly one sync; the checkpoint then syncs
//! the filesystem (`syncfs`) before it moves past such records, and replay
//! rewrites an object that does not hold the record's bytes. A larger one
//! is synced in its spool file first and its record refers to it (two
//! syncs, one after the other; docs/ingest-journal.md says why that is
//! still the better trade for large objects on this disk).
//!
//! Simplifications against the design (docs/ingest-journal.md): the
//! referenced spool file is synced before its record, not at the same
//! time; each instance is applied on its own, one sled operation at a time
//! under the index's write lock (records of one key are still applied in
//! LSN order: the instance lock is held from admission to the answer);
//! replay decides "already indexed" by comparing the entry with the
//! record's instead of an applied marker, and counts the studies it wrote
//! to again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use thiserror::Error;

use super::control::{self, Control};
use super::entry::{self, Entry, Payload};
use super::format::Kind;
use super::placement::{Source, dirs_to_sync, place, sync_dirs, sync_filesystem, write_new};
use super::writer::{self, Writer};
use crate::index::{Index, NewEntry, PutOutcome};
use crate::ingest::spool::Spooled;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Writer(#[from] writer::Error),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error(transparent)]
    Entry(#[from] entry::Error),
    #[error("placing {path}: {source}")]
    Place {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("syncing directory {path}: {source}")]
    SyncDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("index: {0}")]
    Index(#[from] crate::index::Error),
    #[error("{0}")]
    Damaged(String),
    #[error(transparent)]
    Backlog(#[from] crate::store::backlog::Error),
}

/// How applying a record failed: before its placement (nothing changed:
/// abort it) or after (the object changed: replay must finish it).
enum Applied {
    Before(Error),
    After(Error),
}

/// Where a journaled object goes: the local store, or (an S3 store with
/// `storage.ack = "journal"`) the upload backlog's pending directory,
/// from which it is uploaded after the acknowledgement.
#[derive(Clone)]
pub enum Target {
    Local {
        /// Whether a synced spool file's pages leave the page cache once
        /// its record is durable (`storage.cache_objects = false`).
        drop_cached: bool,
    },
    Backlog {
        backlog: Arc<crate::store::backlog::Backlog>,
        /// How long an instance waits for room in the backlog.
        patience: Duration,
        /// As for the local store: the upload reads the pending copy back
        /// from the disk, later, rather than the copy holding its pages.
        drop_cached: bool,
    },
}

/// A placed object the checkpoint still has to make durable.
struct Placed {
    lsn: u64,
    /// Its bytes were carried in the record, not synced in the spool file:
    /// the checkpoint must sync the object's data too.
    inline: bool,
    /// The spool name (none for an instance that had none): renamed onto
    /// the key when placed; a record whose apply failed may have left it,
    /// and the checkpoint removes it then.
    spool: Option<PathBuf>,
    /// The key's directory; none for a record that was not placed.
    dir: Option<PathBuf>,
}

pub struct Journal {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) writer: Writer,
    pub(super) index: Index,
    /// The local store's root, or the backlog's pending directory: objects
    /// are placed under it and directories up to it are synced.
    pub(super) root: PathBuf,
    target: Target,
    placed: Mutex<Vec<Placed>>,
    control: Mutex<Control>,
}

impl Journal {
    pub(super) fn new(
        writer: Writer,
        index: Index,
        root: PathBuf,
        target: Target,
        control: Control,
    ) -> Journal {
        Journal {
            inner: Arc::new(Inner {
                writer,
                index,
                root,
                target,
                placed: Mutex::new(Vec::new()),
                control: Mutex::new(control),
            }),
        }
    }

    /// Starts the checkpointer, a named thread that checkpoints every
    /// `interval` while the journal lives.
    pub fn spawn_checkpointer(&self, interval: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { break };
                    if let Err(e) = inner.checkpoint() {
                        tracing::error!(error = %e, "journal checkpoint failed; retried");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the journal checkpointer");
        }
    }

    /// Whether a small instance may come without a spool file (its bytes
    /// alone): with the local store, which writes it under its key. The
    /// upload backlog takes a spool file: pool files are made in the
    /// background, and a file made on the acknowledgement's path would pay
    /// for the copies the uploads delete meanwhile (ext4 without a journal
    /// scans recently deleted inodes at every creation).
    pub fn places_from_memory(&self) -> bool {
        matches!(self.inner.target, Target::Local { .. })
    }

    /// The largest instance carried inline: `wanted`, but at most a
    /// quarter of this journal's segments.
    pub fn inline_max(&self, wanted: u64) -> u64 {
        wanted.min(self.inner.writer.segment_size() / 4)
    }

    /// Whether the journal stopped (every instance is refused until a
    /// restart replays it), for `/healthz`.
    pub fn failed(&self) -> bool {
        self.inner.writer.failed()
    }

    /// Checkpoints now (tests, shutdown).
    pub fn checkpoint(&self) -> Result<u64, Error> {
        self.inner.checkpoint()
    }

    /// Makes `spooled` the object of `new` and indexes it; returns once its
    /// record is durable and it is applied. Blocking. (`spooled` is synced
    /// unless it carries its bytes for an inline record.)
    pub fn commit(&self, spooled: Spooled, new: NewEntry) -> Result<PutOutcome, Error> {
        let inner = &*self.inner;
        let Spooled {
            guard,
            len,
            bytes,
            synced,
        } = spooled;
        // A small instance has no spool file (its bytes are in the record):
        // an empty name.
        let (source, carried) = match (guard.path(), bytes) {
            (Some(path), bytes) => (Source::Spool(path.to_path_buf()), bytes),
            (None, Some(bytes)) => (Source::Bytes(bytes), None),
            (None, None) => {
                return Err(Error::Damaged(
                    "an instance with neither a spool file nor its bytes".into(),
                ));
            }
        };
        let name = source
            .spool()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let payload = Payload {
            entry: Entry::from_new(&new),
            spool: name,
            len,
        };
        let kind = match new {
            NewEntry::Instance(_) => Kind::Instance,
            NewEntry::Media(_) => Kind::Media,
        };
        // The bytes the record carries, if any.
        let inline_bytes = match &source {
            Source::Bytes(bytes) => Some(bytes.as_slice()),
            Source::Spool(_) => carried.as_deref(),
        };
        let inline = inline_bytes.is_some();
        // Room in the upload backlog is taken before the record exists: a
        // refusal must not leave a durable record behind.
        let admitted = match &inner.target {
            Target::Local { .. } => None,
            Target::Backlog {
                backlog, patience, ..
            } => Some(backlog.admit_blocking(len, *patience)?),
        };
        let appended = match inline_bytes {
            Some(bytes) => inner.writer.append(
                kind,
                super::format::FLAG_INLINE,
                &payload.encode_inline(bytes),
            )?,
            None => inner.writer.append(kind, 0, &payload.encode())?,
        };
        drop(carried);
        // Nothing reads the synced spool file again on this path (it was
        // described before, and is renamed onto its key next; an upload
        // reads a pending copy back from the disk later): its pages may go.
        let uncache = match &inner.target {
            Target::Local { drop_cached } | Target::Backlog { drop_cached, .. } => *drop_cached,
        };
        if let (Some(file), true) = (&synced, uncache) {
            crate::ingest::spool::drop_cached(file);
        }
        drop(synced);
        // From here on the record is durable: a restart replays it, so the
        // spool name stays until a checkpoint covers it.
        guard.disarm();
        fail::fail_point!("journal::durable", |_| std::process::abort());
        // A failure before the placement changed nothing: the record is
        // aborted (durably, before the sender hears 0xA700) and the journal
        // goes on. A failure or a panic after it (the object is replaced,
        // the index entry is not written) cannot be undone here: the record
        // stays unapplied and the journal stops, so the next start replays
        // it and the index describes what the store holds.
        let spool = source.spool().map(Path::to_path_buf);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.apply(&new, &source, appended.lsn, inline, admitted)
        }))
        .unwrap_or(Err(Applied::After(Error::Damaged(
            "applying the record panicked".into(),
        ))));
        let applied = match applied {
            Ok(outcome) => Ok(outcome),
            Err(Applied::Before(e)) => {
                tracing::error!(lsn = appended.lsn, error = %e, "placing a journal record failed; aborting it");
                let abort = inner
                    .writer
                    .append(Kind::Abort, 0, &entry::encode_abort(appended.lsn));
                match abort {
                    Ok(a) => {
                        inner.writer.applied(a.lsn);
                        // Nothing replays the record now: its spool file
                        // (if it has one) can go at once.
                        if let Some(path) = &spool {
                            if let Err(e) = std::fs::remove_file(path) {
                                if e.kind() != std::io::ErrorKind::NotFound {
                                    inner.remember(appended.lsn, spool, None, inline);
                                }
                            }
                        }
                    }
                    // The record replays at the next start and needs its file.
                    Err(_) => inner.remember(appended.lsn, spool, None, inline),
                }
                Err(e)
            }
            Err(Applied::After(e)) => {
                tracing::error!(lsn = appended.lsn, error = %e, "applying a journal record failed after its placement");
                inner
                    .writer
                    .fail("a record could not be applied after its placement");
                // Left unapplied on purpose: no checkpoint may pass it.
                return Err(e);
            }
        };
        inner.writer.applied(appended.lsn);
        applied
    }
}

/// The last checkpoint, when the gateway stops (every association and
/// request is done by then): a clean restart replays nothing.
impl Drop for Journal {
    fn drop(&mut self) {
        match self.inner.checkpoint() {
            Ok(c) => tracing::info!(checkpoint = c, "ingest journal checkpointed"),
            Err(e) => {
                tracing::error!(error = %e, "final journal checkpoint failed; the next start replays")
            }
        }
    }
}

impl Inner {
    fn apply(
        &self,
        new: &NewEntry,
        source: &Source,
        lsn: u64,
        inline: bool,
        admitted: Option<crate::store::backlog::Admitted>,
    ) -> Result<PutOutcome, Applied> {
        let (dir, data_unsynced) = match (&self.target, admitted) {
            (Target::Backlog { backlog, .. }, Some(admitted)) => {
                let key = new.object_key().clone();
                let dest = backlog.local_path(&key);
                let Source::Spool(spool) = source else {
                    return Err(Applied::Before(Error::Damaged(
                        "a pending copy needs its spool file".into(),
                    )));
                };
                backlog
                    .enqueue_file(
                        admitted,
                        key,
                        spool,
                        crate::store::backlog::Place::Rename,
                        Box::new(|| {}),
                    )
                    .map_err(|e| Applied::Before(e.into()))?;
                // The pending copy must be durable before the checkpoint
                // releases its record (it is what the upload reads after a
                // restart): as for the local store, an inline one's data
                // and every one's directory entry.
                let dir = dest.parent().expect("keys have a parent").to_path_buf();
                (dir, inline)
            }
            _ => {
                let placed = match source {
                    Source::Spool(spool) => place(&self.root, new, spool),
                    Source::Bytes(bytes) => write_new(&self.root, new, bytes, lsn),
                };
                (placed.map_err(Applied::Before)?, inline)
            }
        };
        fail::fail_point!("journal::placed", |_| std::process::abort());
        fail::fail_point!("journal::index", |_| Err(Applied::After(Error::Damaged(
            "failpoint journal::index".into()
        ))));
        let outcome = self
            .index
            .put_journaled(new, &self.writer.record_id(lsn))
            .map_err(|e| Applied::After(e.into()))?;
        fail::fail_point!("journal::indexed", |_| std::process::abort());
        let spool = source.spool().map(Path::to_path_buf);
        self.remember(lsn, spool, Some(dir), data_unsynced);
        Ok(outcome)
    }

    fn remember(&self, lsn: u64, spool: Option<PathBuf>, dir: Option<PathBuf>, inline: bool) {
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        placed.push(Placed {
            lsn,
            inline,
            spool,
            dir,
        });
    }

    /// One checkpoint: everything applied below `settled` made durable,
    /// the control file moved past it, then the journal's hold released.
    pub(super) fn checkpoint(&self) -> Result<u64, Error> {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let c = self.writer.settled();
        if c <= control.last().checkpoint {
            return Ok(c);
        }
        let taken: Vec<Placed> = {
            let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
            let (below, rest) = std::mem::take(&mut *placed)
                .into_iter()
                .partition(|p| p.lsn < c);
            *placed = rest;
            below
        };
        let result = (|| {
            fail::fail_point!("checkpoint::start", |_| std::process::abort());
            let synced = if taken.iter().any(|p| p.inline) {
                // Objects whose bytes were not synced: one syncfs makes
                // them, their links and their directories durable at once
                // (one device flush instead of one per object).
                sync_filesystem(&self.root)
            } else {
                let dirs = dirs_to_sync(&self.root, taken.iter().filter_map(|p| p.dir.as_deref()));
                sync_dirs(&dirs)
            };
            if let Err(e) = synced {
                // Not retried: after a writeback error the kernel may
                // report nothing the next time although the data is lost,
                // and a retry would release records whose objects never
                // reached the disk. Replay, at the next start, rewrites
                // them.
                self.writer.fail("a checkpoint's sync failed");
                return Err(e);
            }
            fail::fail_point!("checkpoint::dirs_synced", |_| std::process::abort());
            self.index.flush()?;
            fail::fail_point!("checkpoint::index_flushed", |_| std::process::abort());
            control.write(c)?;
            fail::fail_point!("checkpoint::control_written", |_| std::process::abort());
            Ok::<_, Error>(())
        })();
        if let Err(e) = result {
            self.placed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(taken);
            return Err(e);
        }
        let unplaced = taken.iter().filter(|p| p.dir.is_none());
        for spool in unplaced.filter_map(|p| p.spool.as_deref()) {
            if let Err(e) = std::fs::remove_file(spool) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %spool.display(), error = %e, "could not remove a checkpointed spool file");
                }
            }
        }
        fail::fail_point!("checkpoint::released", |_| std::process::abort());
        self.writer.recycle_below(c)?;
        Ok(c)
    }
}
