//! The upload backlog: instances acknowledged from the gateway's own disk
//! (an S3 store with `storage.ack = "journal"`) and not yet in the store.
//!
//! Why: with S3, waiting for the store before each C-STORE answer sets the
//! ingest rate to the store's latency (0.16–0.36× of local disk, issue 11).
//! The journal already makes an instance durable on the gateway's disk; the
//! upload can follow. This module keeps the local copies until the store
//! has them, bounds how much may wait, and uploads in the background.
//!
//! ## Interface (what the ingest journal calls)
//!
//! - [`Backlog::open`]`(pending_dir, store, wait, max)` at start, before the
//!   journal's replay. Nothing is swept on open (only this module's scratch
//!   directories): the replay re-enqueues what it covers, then
//!   [`Backlog::claim_unclaimed`] queues every other pending copy (each was
//!   made durable by a journal checkpoint before its record was released).
//!   Then [`Backlog::spawn`]`(shutdown)` starts the uploaders.
//! - Before an instance is taken: [`Backlog::admit`]`(len, patience)` (or
//!   [`Backlog::admit_blocking`] on a blocking thread). It refuses at once
//!   with [`Error::Full`] when the backlog plus `len` would pass `max`
//!   (answer 0xA700), waits (woken by uploads, no polling) while the backlog
//!   is above `wait`, and gives up with [`Error::Busy`] after `patience`.
//!   The [`Admitted`] guard counts `len` in the backlog until it is dropped
//!   or handed to `enqueue*`.
//! - Once acknowledged: [`Backlog::enqueue_file`]`(admitted, key, from,
//!   Place::Link | Place::Rename, on_uploaded)` puts the bytes at
//!   [`Backlog::local_path`]`(key)` (a hard link of the spool file, or a
//!   rename of a file on the same filesystem whose data the caller synced)
//!   and queues the upload, both under the backlog's lock so an upload of an
//!   older version of the key finishing at that moment cannot delete the new
//!   copy. [`Backlog::enqueue`] queues a copy that is already at
//!   `local_path(key)` (the replay's case, before `spawn`: a live caller must
//!   not replace a pending copy behind the backlog's back).
//!   The journal's checkpoint makes pending copies durable (their
//!   directories, and the data of copies carried inline) before it
//!   releases their records.
//! - Uploads yield to receiving: while instances arrive less than 250 ms
//!   apart, uploads wait, for at most 30 s per object and while the backlog
//!   holds less than a quarter of `wait` (an upload costs about as much CPU
//!   as an acknowledgement; on few cores, or beside the store, uploading
//!   during a burst halves the rate a modality sees).
//! - Uploads: `uploads` at once (4), each retried with capped exponential
//!   back-off while the store fails (an item is never dropped). After the
//!   store confirmed version `g` of a key, every `on_uploaded` given for
//!   versions up to `g` is called (on a blocking thread, once each), then the
//!   local copy is deleted, unless the key was enqueued again meanwhile
//!   (generation counter): then the newer version is uploaded next.
//! - Access: [`Backlog::pending`]`(key)` is the local copy while the store
//!   may not have it; the webhook hands out the gateway's own `/files` URL
//!   for such keys, and the `/files` route serves the copy from disk.
//! - [`Backlog::status`] for `/healthz` and the metrics.
//! - Shutdown: after the token, no new upload starts; uploads in flight
//!   finish (or are cut by the runtime's end); the rest is re-enqueued by
//!   the journal's replay at the next start.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BlobStore, ObjectKey};
pub use admit::Admitted;

mod admit;
mod scan;
#[cfg(test)]
pub(crate) mod tests;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The instance would take the backlog past `storage.backlog_max`.
    #[error(
        "upload backlog full: {backlog} bytes wait for the store, {len} more would pass \
         storage.backlog_max ({max} bytes)"
    )]
    Full { backlog: u64, len: u64, max: u64 },
    /// The backlog stayed above `storage.backlog_wait` for the whole wait.
    #[error("upload backlog above storage.backlog_wait for {waited:?}")]
    Busy { waited: Duration },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

/// Where uploads go: the S3 store in the gateway; anything that takes a
/// whole file under a key in the unit tests.
pub trait UploadTarget: Send + Sync + 'static {
    fn upload<'a>(
        &'a self,
        path: &'a Path,
        len: u64,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, super::Result<()>>;
}

impl UploadTarget for BlobStore {
    fn upload<'a>(
        &'a self,
        path: &'a Path,
        len: u64,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, super::Result<()>> {
        Box::pin(BlobStore::upload(self, path, len, key))
    }
}

/// How the backlog behaves; [`Settings::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Above this many bytes, new instances wait.
    pub wait: u64,
    /// Beyond this many bytes, new instances are refused.
    pub max: u64,
    /// Uploads at once.
    pub uploads: usize,
    /// The first wait after a failed upload; doubled after each failure.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub backoff_max: Duration,
    /// Uploads yield to receiving: while instances arrive less than this
    /// apart, an upload waits ...
    pub quiet: Duration,
    /// ... unless its object has waited this long, or the backlog holds a
    /// quarter of `wait`.
    pub defer_max: Duration,
}

impl Settings {
    pub fn new(wait: u64, max: u64) -> Settings {
        Settings {
            wait,
            max,
            uploads: 4,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            quiet: Duration::from_millis(250),
            defer_max: Duration::from_secs(30),
        }
    }
}

/// What is done after an upload (the journal marks the entry stored).
pub type OnUploaded = Box<dyn FnOnce() + Send>;

/// How [`Backlog::enqueue_file`] puts a file at its pending place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A hard link: the source (a spool file the journal refers to) stays.
    Link,
    /// A rename: the source goes.
    Rename,
}

/// The backlog's counters, for `/healthz` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Objects waiting for (or in) upload.
    pub instances: usize,
    /// Their bytes, plus those admitted and not yet enqueued.
    pub bytes: u64,
    /// Seconds the oldest waiting object has waited (0 when none).
    pub oldest_age_s: u64,
    /// The last upload attempt failed.
    pub failing: bool,
    /// Why, without URLs or credentials; `None` once an upload succeeded.
    #[serde(skip)]
    pub last_error: Option<String>,
}

/// Takes an uploaded pending copy for reuse (the spool's, see
/// `ingest::spool::Spool::recycler`); `false` when it did not, and the
/// copy is deleted.
pub type Recycler = Box<dyn Fn(&Path) -> bool + Send + Sync>;

pub struct Backlog {
    dir: PathBuf,
    /// Where uploaded copies go instead of being deleted, once set.
    recycler: std::sync::OnceLock<Recycler>,
    target: Arc<dyn UploadTarget>,
    settings: Settings,
    state: Mutex<State>,
    /// Bytes left the backlog (async waiters of `admit`).
    freed: Notify,
    /// The same, for `admit_blocking`.
    freed_sync: Condvar,
    /// A key was queued for upload.
    work: Notify,
    /// Names of scratch files (links), unique within this process.
    scratch: AtomicU64,
    /// When an instance last entered the backlog (ms since `born`; 0:
    /// never), for uploads to yield to receiving.
    last_arrival: AtomicU64,
    born: Instant,
}

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backlog({})", self.dir.display())
    }
}

#[derive(Default)]
struct State {
    /// Admitted, not yet enqueued.
    reserved: u64,
    /// Enqueued, not yet uploaded and deleted.
    queued_bytes: u64,
    entries: HashMap<ObjectKey, Entry>,
    /// Keys waiting for an uploader; an entry not being uploaded is here once.
    queue: VecDeque<ObjectKey>,
    generation: u64,
    failing: bool,
    last_error: Option<String>,
}

struct Entry {
    generation: u64,
    len: u64,
    since: Instant,
    uploading: bool,
    /// `(generation, callback)`: called once the store has that version or newer.
    callbacks: Vec<(u64, OnUploaded)>,
}

impl State {
    fn bytes(&self) -> u64 {
        self.reserved.saturating_add(self.queued_bytes)
    }
}

/// Scratch directories below the pending directory (never object keys,
/// which start with `studies/`).
const INCOMING: &str = ".incoming";
const UPLOADING: &str = ".uploading";

impl Backlog {
    /// Opens the backlog kept in `dir` (`<data_dir>/pending`), uploading to
    /// `store`, with the default uploads and back-off.
    /// The store (and its clones) then counts pending copies as existing.
    pub fn open(dir: &Path, store: BlobStore, wait: u64, max: u64) -> Result<Arc<Backlog>> {
        let backlog = Backlog::open_with(dir, Arc::new(store.clone()), Settings::new(wait, max))?;
        store.attach_backlog(&backlog);
        Ok(backlog)
    }

    /// Like [`Backlog::open`], with any target and settings.
    pub fn open_with(
        dir: &Path,
        target: Arc<dyn UploadTarget>,
        settings: Settings,
    ) -> Result<Arc<Backlog>> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let dir = dir.canonicalize().map_err(io("resolve", dir))?;
        // Scratch links of an earlier run: never pending copies themselves.
        for scratch in [INCOMING, UPLOADING] {
            let path = dir.join(scratch);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("clear", &path)(e)),
            }
            std::fs::create_dir(&path).map_err(io("create", &path))?;
        }
        let backlog = Arc::new(Backlog {
            dir,
            recycler: std::sync::OnceLock::new(),
            target,
            settings: Settings {
                uploads: settings.uploads.max(1),
                ..settings
            },
            state: Mutex::default(),
            freed: Notify::new(),
            freed_sync: Condvar::new(),
            work: Notify::new(),
            scratch: AtomicU64::new(0),
            last_arrival: AtomicU64::new(0),
            born: Instant::now(),
        });
        backlog.publish(&backlog.lock());
        Ok(backlog)
    }

    /// The pending directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Uploaded copies are offered to `recycler` before they are deleted.
    pub fn set_recycler(&self, recycler: Recycler) {
        let _ = self.recycler.set(recycler);
    }

    /// Opens the pending copy of `key`, if it has one. An uploaded copy's
    /// file may be reused for another instance once nobody has it open
    /// (see `ingest::spool`): the name is looked up again after the open,
    /// and a file it no longer leads to is not used. `None`: no pending
    /// copy (any more): the store has the object.
    pub async fn open_pending(&self, key: &ObjectKey) -> std::io::Result<Option<tokio::fs::File>> {
        use std::os::unix::fs::MetadataExt;
        // A newer version may replace the copy between the lookup and the
        // open: a few tries.
        for _ in 0..3 {
            let Some(path) = self.pending(key) else {
                return Ok(None);
            };
            let file = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let opened = file.metadata().await?;
            match tokio::fs::metadata(&path).await {
                Ok(now) if (now.dev(), now.ino()) == (opened.dev(), opened.ino()) => {
                    return Ok(Some(file));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Where the pending copy of `key` is kept.
    pub fn local_path(&self, key: &ObjectKey) -> PathBuf {
        // Keys are validated (UIDs and media names, no `..`): safe as paths.
        self.dir.join(key.as_str())
    }

    /// The local copy of `key` while the store may not have it yet.
    pub fn pending(&self, key: &ObjectKey) -> Option<PathBuf> {
        self.lock()
            .entries
            .contains_key(key)
            .then(|| self.local_path(key))
    }

    pub fn status(&self) -> Status {
        let state = self.lock();
        let oldest = state.entries.values().map(|e| e.since).min();
        Status {
            instances: state.entries.len(),
            bytes: state.bytes(),
            oldest_age_s: oldest.map_or(0, |t| t.elapsed().as_secs()),
            failing: state.failing,
            last_error: state.last_error.clone(),
        }
    }

    /// Queues the upload of the copy already at [`Backlog::local_path`]`(key)`
    /// (`len` bytes). Only for copies nobody replaces while an upload of the
    /// key may run (the replay, before [`Backlog::spawn`]); live callers use
    /// [`Backlog::enqueue_file`].
    pub fn enqueue(&self, admitted: Admitted, key: ObjectKey, len: u64, on_uploaded: OnUploaded) {
        let mut state = self.lock();
        self.consume_and_register(&mut state, admitted, key, len, on_uploaded);
    }

    /// Puts `from` (a file on the pending directory's filesystem) at
    /// [`Backlog::local_path`]`(key)`, replacing an older pending copy, and
    /// queues its upload. `Place::Rename` needs a file whose data the caller
    /// synced; `Place::Link` leaves `from` where it is. On an error nothing
    /// is queued and the reservation is given back. Blocking (a rename
    /// under the backlog's lock).
    pub fn enqueue_file(
        &self,
        admitted: Admitted,
        key: ObjectKey,
        from: &Path,
        how: Place,
        on_uploaded: OnUploaded,
    ) -> Result<()> {
        // A live arrival: uploads yield to receiving for a while.
        let now = (self.born.elapsed().as_millis() as u64).max(1);
        self.last_arrival
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let len = std::fs::metadata(from).map_err(io("stat", from))?.len();
        let source = match how {
            Place::Rename => from.to_owned(),
            Place::Link => {
                // Linked under a scratch name first: a link cannot replace.
                let scratch = self.scratch_path(INCOMING);
                std::fs::hard_link(from, &scratch).map_err(io("link", &scratch))?;
                scratch
            }
        };
        let dest = self.local_path(&key);
        let parent = dest.parent().expect("keys have a parent").to_owned();
        let mut state = self.lock();
        let placed = std::fs::create_dir_all(&parent)
            .map_err(io("create", &parent))
            .and_then(|()| std::fs::rename(&source, &dest).map_err(io("rename into", &dest)));
        if let Err(e) = placed {
            drop(state);
            if how == Place::Link {
                let _ = std::fs::remove_file(&source);
            }
            return Err(e);
        }
        self.consume_and_register(&mut state, admitted, key, len, on_uploaded);
        Ok(())
    }

    /// Turns a reservation into a queued upload; waiters are woken when
    /// that left the backlog smaller (a smaller file than reserved, or a
    /// newer copy smaller than the one it replaced).
    fn consume_and_register(
        &self,
        state: &mut State,
        admitted: Admitted,
        key: ObjectKey,
        len: u64,
        on_uploaded: OnUploaded,
    ) {
        let before = state.bytes();
        admitted.consume(state);
        self.register(state, key, len, on_uploaded);
        if state.bytes() < before {
            self.wake_admitters();
        }
    }

    fn register(&self, state: &mut State, key: ObjectKey, len: u64, on_uploaded: OnUploaded) {
        state.generation += 1;
        let generation = state.generation;
        match state.entries.get_mut(&key) {
            Some(entry) => {
                // The newer copy replaced the older one on disk.
                state.queued_bytes = state.queued_bytes.saturating_sub(entry.len);
                entry.len = len;
                entry.generation = generation;
                entry.callbacks.push((generation, on_uploaded));
                // Queued already, or re-queued when its current upload ends.
            }
            None => {
                state.entries.insert(
                    key.clone(),
                    Entry {
                        generation,
                        len,
                        since: Instant::now(),
                        uploading: false,
                        callbacks: vec![(generation, on_uploaded)],
                    },
                );
                state.queue.push_back(key);
            }
        }
        state.queued_bytes = state.queued_bytes.saturating_add(len);
        self.publish(state);
        self.work.notify_one();
    }

    /// Queues the upload of every pending copy no `enqueue*` claimed (call
    /// it once the journal's replay has re-enqueued what it needs, before
    /// [`Backlog::spawn`]). Such a copy was made durable by a journal
    /// checkpoint before its record was released, so it is complete and
    /// the newest version of its key as of that checkpoint (anything newer
    /// has a record the replay placed over it). A file that names no key is
    /// removed. Returns how many were queued. Blocking.
    pub fn claim_unclaimed(self: &Arc<Self>) -> Result<usize> {
        let found = scan::files(&self.dir, &[INCOMING, UPLOADING])?;
        let mut queued = 0;
        for (path, key) in found {
            let claimed = key
                .as_ref()
                .is_some_and(|k| self.lock().entries.contains_key(k));
            match key {
                Some(key) if !claimed => {
                    let len = std::fs::metadata(&path).map_err(io("stat", &path))?.len();
                    let admitted = self.admit_replayed(len);
                    self.enqueue(admitted, key, len, Box::new(|| {}));
                    queued += 1;
                }
                Some(_) => {}
                None => {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io("remove", &path)(e)),
                    }
                    self.remove_empty_parents(&path);
                }
            }
        }
        if queued > 0 {
            tracing::info!(queued, dir = %self.dir.display(), "pending copies from before the restart queued for upload");
        }
        Ok(queued)
    }

    /// Drops the pending copy of `key` (the old object of an instance that
    /// moved): it is not uploaded, and is removed here. Returns `true` when
    /// an upload of it is under way: the caller must wait until
    /// [`Backlog::pending`] no longer has it before deleting the key from
    /// the store, or the upload would put it back.
    pub fn forget(&self, key: &ObjectKey) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.get(key) else {
            return false;
        };
        if entry.uploading {
            return true;
        }
        let len = entry.len;
        state.entries.remove(key);
        state.queue.retain(|k| k != key);
        state.queued_bytes = state.queued_bytes.saturating_sub(len);
        self.publish(&state);
        let local = self.local_path(key);
        match std::fs::remove_file(&local) {
            Ok(()) => self.remove_empty_parents(&local),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %local.display(), error = %e, "could not remove a forgotten pending copy")
            }
        }
        drop(state);
        self.wake_admitters();
        false
    }

    /// Starts the uploaders; they stop taking uploads once `shutdown` fires.
    /// The handle ends when all of them have.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.settings.uploads {
            workers.spawn(Arc::clone(self).uploader(shutdown.clone()));
        }
        tokio::spawn(async move {
            while let Some(done) = workers.join_next().await {
                if let Err(e) = done {
                    tracing::error!(error = %e, "an uploader of the backlog ended abnormally");
                }
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere never leaves the counters half-updated (each
        // update is one statement), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_admitters(&self) {
        self.freed.notify_waiters();
        self.freed_sync.notify_all();
    }

    fn publish(&self, state: &State) {
        crate::metrics::get().upload_backlog(state.entries.len(), state.bytes());
    }

    fn scratch_path(&self, kind: &str) -> PathBuf {
        let n = self.scratch.fetch_add(1, Ordering::Relaxed);
        self.dir.join(kind).join(n.to_string())
    }

    /// Removes the empty directories above a removed copy, up to the root
    /// (under the state lock, so `enqueue_file` never loses a directory it
    /// just made).
    fn remove_empty_parents(&self, removed: &Path) {
        let mut dir = removed.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.dir) && *d != self.dir) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

mod uploader;
