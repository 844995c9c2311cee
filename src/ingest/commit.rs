//! Group commit: one thread places spooled objects and writes their index
//! entries in batches.
//!
//! Every association hands its finished instance to this thread and waits.
//! The thread takes whatever has queued up meanwhile, renames the batch into
//! the store, fsyncs each touched directory once, writes all index entries in
//! one transaction and flushes once. A lone instance pays the same syncs as
//! without batching; concurrent ones share them.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::Error;
use super::spool::Spooled;
use crate::index::{Index, NewInstance, PutOutcome};
use crate::store::{BlobStore, ObjectKey};

/// Most instances committed together.
const MAX_BATCH: usize = 256;

struct Job {
    spooled: Spooled,
    new: NewInstance,
    reply: oneshot::Sender<Result<PutOutcome, Error>>,
}

/// Handle to the commit thread. Dropping every handle ends the thread once
/// the queued work is done.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    pub fn start(
        store: BlobStore,
        index: Index,
    ) -> std::io::Result<(Committer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("ingest-commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    commit_batch(&store, &index, batch);
                }
            })?;
        Ok((Committer { tx }, handle))
    }

    /// Places `spooled` under the record's key and indexes it; returns once
    /// both are durable.
    pub async fn commit(&self, spooled: Spooled, new: NewInstance) -> Result<PutOutcome, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                spooled,
                new,
                reply,
            })
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }
}

fn commit_batch(store: &BlobStore, index: &Index, batch: Vec<Job>) {
    let items: Vec<_> = batch
        .iter()
        .map(|job| (job.spooled.path(), &job.new.record.object_key))
        .collect();
    let placed = store.place_batch(&items);

    let mut committed = Vec::with_capacity(batch.len());
    for (job, result) in batch.into_iter().zip(placed) {
        match result {
            Ok(()) => {
                job.spooled.guard.disarm();
                committed.push((job.new, job.reply));
            }
            // The spool file is still in the spool; dropping the job removes it.
            Err(e) => {
                let _ = job.reply.send(Err(Error::Store(e)));
            }
        }
    }
    if committed.is_empty() {
        return;
    }

    let news: Vec<NewInstance> = committed.iter().map(|(new, _)| new.clone()).collect();
    match index.put_batch(&news) {
        Ok(outcomes) => {
            for ((new, reply), outcome) in committed.into_iter().zip(outcomes) {
                if let PutOutcome::Replaced {
                    previous_key: Some(old),
                } = &outcome
                {
                    remove_moved_object(store, old, &new.record.object_key);
                }
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            // Not acknowledged, so not visible: the objects are already in
            // place but no index entry points at them. They are complete and a
            // resend replaces them; `verify` reports them.
            tracing::error!(error = %e, count = committed.len(), "index commit failed");
            let message = e.to_string();
            for (_, reply) in committed {
                let _ = reply.send(Err(Error::IndexCommit(message.clone())));
            }
        }
    }
}

fn remove_moved_object(store: &BlobStore, old: &ObjectKey, new: &ObjectKey) {
    let path = store.local_path(old);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(old = %old, new = %new, "instance moved; old object removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(old = %old, error = %e, "could not remove the moved instance's old object")
        }
    }
}
