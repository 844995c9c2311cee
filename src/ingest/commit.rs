//! Group commit without a committer thread.
//!
//! Every ingest ends on a blocking thread with its object complete: a
//! fsynced spool file (local store) or a confirmed upload (S3). It queues its
//! entry here; if no commit is running it leads one: it takes everything
//! queued, renames the batch's spool files into a local store and fsyncs each
//! touched directory once, writes all index entries in one transaction and
//! flushes once. Threads that queued meanwhile wait, and one of them leads the
//! next batch. A lone instance pays no thread hop for this; concurrent ones
//! share the directory syncs and the index flush.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use super::Error;
use super::spool::Spooled;
use crate::index::{Index, NewEntry, PutOutcome};
use crate::store::BlobStore;

/// Most instances committed together.
const MAX_BATCH: usize = 256;

struct Job {
    id: u64,
    spooled: Spooled,
    new: NewEntry,
}

#[derive(Default)]
struct State {
    next_id: u64,
    queue: Vec<Job>,
    leading: bool,
    done: HashMap<u64, Result<PutOutcome, Error>>,
}

#[derive(Clone)]
pub struct Committer {
    inner: Arc<Inner>,
}

struct Inner {
    store: BlobStore,
    index: Index,
    state: Mutex<State>,
    changed: Condvar,
}

impl Committer {
    pub fn new(store: BlobStore, index: Index) -> Committer {
        Committer {
            inner: Arc::new(Inner {
                store,
                index,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        }
    }

    /// Places `spooled` under the record's key and indexes it; returns once
    /// both are durable. Blocking.
    pub fn commit(&self, spooled: Spooled, new: NewEntry) -> Result<PutOutcome, Error> {
        let inner = &*self.inner;
        let mut state = inner.state.lock().expect("commit lock");
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push(Job { id, spooled, new });
        loop {
            if let Some(result) = state.done.remove(&id) {
                return result;
            }
            if !state.leading {
                state.leading = true;
                let take = state.queue.len().min(MAX_BATCH);
                let batch: Vec<Job> = state.queue.drain(..take).collect();
                crate::metrics::get().commit_batch(take);
                drop(state);
                let ids: Vec<u64> = batch.iter().map(|job| job.id).collect();
                // A panic fails this batch (0xA700: nothing of it was
                // acknowledged) and leaves the committer to the next one.
                let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    commit_batch(&inner.store, &inner.index, batch)
                }))
                .unwrap_or_else(|_| {
                    tracing::error!(count = ids.len(), "commit panicked; its batch is refused");
                    ids.into_iter()
                        .map(|id| (id, Err(Error::IndexCommit("commit panicked".into()))))
                        .collect()
                });
                state = inner.state.lock().expect("commit lock");
                state.done.extend(results);
                state.leading = false;
                inner.changed.notify_all();
                continue;
            }
            state = inner.changed.wait(state).expect("commit lock");
        }
    }
}

fn commit_batch(
    store: &BlobStore,
    index: &Index,
    batch: Vec<Job>,
) -> Vec<(u64, Result<PutOutcome, Error>)> {
    // A local store takes the spool files by rename; a remote one already
    // has the objects (uploaded before the commit), and the spool files go
    // when the jobs are dropped.
    fail::fail_point!("commit::batch");
    let placed = if store.is_local() {
        let items: Vec<_> = batch
            .iter()
            .map(|job| (job.spooled.path(), job.new.object_key()))
            .collect();
        store.place_batch(&items)
    } else {
        batch.iter().map(|_| Ok(())).collect()
    };

    let mut results = Vec::with_capacity(batch.len());
    let mut committed = Vec::with_capacity(batch.len());
    for (job, result) in batch.into_iter().zip(placed) {
        match result {
            Ok(()) => {
                if store.is_local() {
                    job.spooled.guard.disarm();
                }
                committed.push((job.id, job.new));
            }
            // The spool file is still in the spool; dropping the job removes it.
            Err(e) => results.push((job.id, Err(Error::Store(e)))),
        }
    }
    if committed.is_empty() {
        return results;
    }

    // Crash tests: the objects are in place, the index does not know yet.
    fail::fail_point!("commit::placed", |_| std::process::abort());
    let news: Vec<NewEntry> = committed.iter().map(|(_, new)| new.clone()).collect();
    match write_index(index, &news) {
        Ok(outcomes) => {
            // A moved instance's old object is the caller's to delete, after
            // the batch: a slow delete must not hold up everyone's commit.
            for ((id, _), outcome) in committed.into_iter().zip(outcomes) {
                results.push((id, Ok(outcome)));
            }
        }
        Err(e) => {
            // Not acknowledged, so not visible: the objects are already in
            // place but no index entry points at them. They are complete, and
            // a resend replaces them.
            tracing::error!(error = %e, count = committed.len(), "index commit failed");
            let message = e.to_string();
            results.extend(
                committed
                    .into_iter()
                    .map(|(id, _)| (id, Err(Error::IndexCommit(message.clone())))),
            );
        }
    }
    results
}

/// The batch's index write.
fn write_index(index: &Index, news: &[NewEntry]) -> crate::index::Result<Vec<PutOutcome>> {
    // Tests: an index write that fails (a full disk, an I/O error).
    fail::fail_point!("commit::index", |_| Err(crate::index::Error::Sync {
        op: "failpoint commit::index",
        source: std::io::Error::other("injected"),
    }));
    index.put_batch(news)
}
