//! The backlog's uploaders: each takes the oldest queued key, uploads a
//! snapshot of its pending copy, retries while the store fails, then
//! reports the upload and removes the copy unless a newer one replaced it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Backlog, UPLOADING};
use crate::store::ObjectKey;

/// One attempt's view of a key: the version it uploads.
struct Snapshot {
    generation: u64,
    /// A hard link to the pending copy as it was when taken: a newer copy
    /// renamed over the pending one later does not change these bytes.
    path: PathBuf,
    len: u64,
}

/// How often a deferred uploader looks again.
const DEFER_TICK: std::time::Duration = std::time::Duration::from_millis(50);

impl Backlog {
    pub(super) async fn uploader(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if self.defers() {
                // Receiving goes first on a shared machine: look again in
                // a moment (a new arrival, the age bound or the size bound
                // ends the wait).
                tokio::select! {
                    () = tokio::time::sleep(DEFER_TICK) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
            let Some(key) = self.take() else {
                tokio::select! {
                    () = self.work.notified() => continue,
                    () = shutdown.cancelled() => return,
                }
            };
            match self.upload_until_stored(&key, &shutdown).await {
                Some(generation) => self.finish(&key, generation).await,
                None => {
                    // Shutting down: the key waits for the next start.
                    self.put_back(key);
                    return;
                }
            }
        }
    }

    /// Whether uploads wait for receiving to pause: instances arrived less
    /// than `quiet` ago, the oldest queued object waited less than
    /// `defer_max`, and the backlog holds less than a quarter of `wait`.
    /// On a gateway that also runs the store (or on few cores) an upload
    /// costs about as much CPU as an acknowledgement, so uploading while
    /// a modality sends would halve its rate; once it pauses, the backlog
    /// drains at full speed.
    pub(super) fn defers(&self) -> bool {
        let last = self.last_arrival.load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let now = self.born.elapsed().as_millis() as u64;
        if now.saturating_sub(last) >= self.settings.quiet.as_millis() as u64 {
            return false;
        }
        let state = self.lock();
        let oldest = state
            .queue
            .front()
            .and_then(|k| state.entries.get(k))
            .map(|e| e.since.elapsed());
        oldest.is_some_and(|age| age < self.settings.defer_max)
            && state.bytes() < self.settings.wait / 4
    }

    /// The next queued key, marked as being uploaded.
    fn take(&self) -> Option<ObjectKey> {
        let mut state = self.lock();
        let key = state.queue.pop_front()?;
        if let Some(entry) = state.entries.get_mut(&key) {
            entry.uploading = true;
        }
        Some(key)
    }

    fn put_back(&self, key: ObjectKey) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(&key) {
            entry.uploading = false;
            state.queue.push_front(key);
        }
    }

    /// Uploads `key` until the store confirms, with capped exponential
    /// back-off between attempts; the generation uploaded, or `None` when
    /// `shutdown` fired during a back-off.
    async fn upload_until_stored(
        &self,
        key: &ObjectKey,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        let mut delay = self.settings.backoff;
        for attempt in 1u64.. {
            let outcome = match self.snapshot(key) {
                Ok(snap) => {
                    let sent = self.target.upload(&snap.path, snap.len, key).await;
                    let _ = std::fs::remove_file(&snap.path);
                    sent.map(|()| snap.generation).map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(generation) => {
                    let mut state = self.lock();
                    if state.failing {
                        tracing::info!(key = %key, "uploads to the store succeed again");
                    }
                    state.failing = false;
                    state.last_error = None;
                    return Some(generation);
                }
                Err(e) => {
                    let reason = without_urls(&e);
                    crate::metrics::get().upload_retry();
                    tracing::warn!(
                        key = %key,
                        attempt,
                        retry_in = ?delay,
                        error = %reason,
                        "upload of an acknowledged instance failed; it stays pending and is retried"
                    );
                    {
                        let mut state = self.lock();
                        state.failing = true;
                        state.last_error = Some(reason);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => return None,
                    }
                    delay = delay.saturating_mul(2).min(self.settings.backoff_max);
                }
            }
        }
        unreachable!("the attempts never run out")
    }

    /// Removes an uploaded pending copy, or hands it to the recycler.
    fn discard(&self, local: &std::path::Path) {
        let recycled = self.recycler.get().is_some_and(|recycle| recycle(local));
        if !recycled {
            match std::fs::remove_file(local) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                // The store has it; a leftover is removed at the next start.
                Err(e) => {
                    tracing::warn!(path = %local.display(), error = %e, "could not remove an uploaded pending copy");
                    return;
                }
            }
        }
        self.remove_empty_parents(local);
    }

    /// Links the key's current pending copy under a scratch name (under the
    /// lock, so the generation is the one of the bytes linked).
    fn snapshot(&self, key: &ObjectKey) -> Result<Snapshot, String> {
        let state = self.lock();
        let generation = state
            .entries
            .get(key)
            .map(|e| e.generation)
            .ok_or("no longer pending")?;
        let path = self.scratch_path(UPLOADING);
        let local = self.local_path(key);
        std::fs::hard_link(&local, &path)
            .map_err(|e| format!("the pending copy {}: {e}", local.display()))?;
        drop(state);
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Snapshot {
                generation,
                path,
                len: meta.len(),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(format!("the pending copy {}: {e}", local.display()))
            }
        }
    }

    /// The store holds version `generation` of `key`: every callback up to
    /// it runs; then the copy goes, unless a newer version is pending.
    async fn finish(&self, key: &ObjectKey, generation: u64) {
        let callbacks: Vec<_> = {
            let mut state = self.lock();
            let Some(entry) = state.entries.get_mut(key) else {
                return;
            };
            let (done, later) = std::mem::take(&mut entry.callbacks)
                .into_iter()
                .partition(|(g, _)| *g <= generation);
            entry.callbacks = later;
            done
        };
        if !callbacks.is_empty() {
            // They write the index: blocking work, off the runtime's threads.
            let run = tokio::task::spawn_blocking(move || {
                for (_, callback) in callbacks {
                    callback();
                }
            });
            if let Err(e) = run.await {
                tracing::error!(key = %key, error = %e, "an upload's completion callback panicked");
            }
        }
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(key) else {
            return;
        };
        entry.uploading = false;
        if entry.generation != generation {
            // Enqueued again meanwhile: that version goes next.
            state.queue.push_front(key.clone());
            drop(state);
            self.work.notify_one();
            return;
        }
        self.discard(&self.local_path(key));
        let len = entry.len;
        state.entries.remove(key);
        state.queued_bytes = state.queued_bytes.saturating_sub(len);
        self.publish(&state);
        drop(state);
        self.wake_admitters();
    }
}

/// `text` with every `http://…` or `https://…` replaced by `<url>`: an
/// error about a request may carry its URL, and a URL may carry a
/// signature or a session token.
pub(super) fn without_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let found = ["http://", "https://"]
            .iter()
            .filter_map(|scheme| rest.to_ascii_lowercase().find(scheme))
            .min();
        let Some(start) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..start]);
        out.push_str("<url>");
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || "\"'<>()[]{},`".contains(c))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
}
