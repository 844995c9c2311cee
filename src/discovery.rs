//! Several gateways, one store: a gateway asked about a study looks in the
//! store for what its own index lacks, so it can answer for studies another
//! gateway received.
//!
//! - A study the index does not know is looked up in the store when it is
//!   asked for (one listing of its prefix), unless a lookup failed in the
//!   last [`FAILED_BACKOFF`].
//! - With a shared (remote) store, a study the index knows is listed again
//!   when it was last listed more than `storage.relist_after` ago (30 s by
//!   default), so instances the other gateway received later show up too. A
//!   local store belongs to one gateway: known studies are never re-listed.
//!
//! Only what the index lacks is read (headers of new instances, sidecars of
//! new media). A lookup runs as a task of its own, one per study at a time;
//! a request waits for it at most [`LOOK_LIMIT`] and then answers from the
//! index, while the lookup goes on, so a large study is found by a later
//! request rather than never.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::app::App;
use crate::maintenance;
use crate::store::BlobStore;
use crate::uid::Uid;

/// How long a request waits for a lookup: Avara waits a few seconds for an
/// answer.
const LOOK_LIMIT: Duration = Duration::from_secs(3);

/// After a failed lookup (the store unreachable), how long a study the
/// index does not know is answered from the index without asking again.
const FAILED_BACKOFF: Duration = Duration::from_secs(10);

/// Studies remembered as listed or failed; beyond this the memory starts
/// over.
const REMEMBERED: usize = 10_000;

#[derive(Debug)]
pub struct Discovery {
    /// `None`: known studies are never re-listed (a local store).
    relist_after: Option<Duration>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When each study was last listed.
    listed: HashMap<Uid, Instant>,
    /// When a lookup of each study last failed.
    failed: HashMap<Uid, Instant>,
    /// Lookups under way: a request joins the one running for its study.
    running: HashMap<Uid, watch::Receiver<bool>>,
}

impl Discovery {
    pub fn new(store: &BlobStore, relist_after: Duration) -> Discovery {
        Discovery {
            relist_after: (!store.is_local()).then_some(relist_after),
            state: Mutex::default(),
        }
    }

    /// Indexes what the store holds of `study` and the index lacks, when it
    /// is due (see the module docs), waiting at most [`LOOK_LIMIT`]. Never
    /// fails: a store that cannot be listed leaves the index as it was.
    /// Blocking: for handlers, which run on a blocking thread of the runtime.
    pub fn refresh(self: &Arc<Self>, app: &App, study: &Uid) {
        let known = app.index.study(study).ok().flatten().is_some();
        if !self.due(study, known) {
            return;
        }
        let mut done = self.lookup(app, study);
        let finished = tokio::runtime::Handle::current().block_on(async {
            tokio::time::timeout(LOOK_LIMIT, done.wait_for(|finished| *finished))
                .await
                .is_ok()
        });
        if !finished {
            tracing::info!(
                study = %study,
                limit = ?LOOK_LIMIT,
                "still looking for the study in the store; answering from the index meanwhile"
            );
        }
    }

    fn due(&self, study: &Uid, known: bool) -> bool {
        let state = self.lock();
        if state.running.contains_key(study) {
            return true; // join it
        }
        if known {
            let Some(after) = self.relist_after else {
                return false;
            };
            return state
                .listed
                .get(study)
                .is_none_or(|at| at.elapsed() >= after);
        }
        state
            .failed
            .get(study)
            .is_none_or(|at| at.elapsed() >= FAILED_BACKOFF)
    }

    /// The lookup of `study` under way, started if there is none.
    fn lookup(self: &Arc<Self>, app: &App, study: &Uid) -> watch::Receiver<bool> {
        let mut state = self.lock();
        if let Some(running) = state.running.get(study) {
            return running.clone();
        }
        let (finished, done) = watch::channel(false);
        state.running.insert(study.clone(), done.clone());
        let (me, app, study) = (Arc::clone(self), app.clone(), study.clone());
        tokio::spawn(async move {
            // Under ingest's per-instance locks: an instance received again
            // meanwhile is not mistaken for the one another gateway moved.
            let found =
                maintenance::index_study_beside(&app.store, &app.index, &study, app.ingest.locks())
                    .await;
            me.finished(&study, found);
            let _ = finished.send(true);
        });
        done
    }

    fn finished(&self, study: &Uid, found: maintenance::Result<maintenance::Summary>) {
        let mut state = self.lock();
        state.running.remove(study);
        if state.listed.len() >= REMEMBERED || state.failed.len() >= REMEMBERED {
            state.listed.clear();
            state.failed.clear();
        }
        state.listed.insert(study.clone(), Instant::now());
        match found {
            Ok(summary) => {
                state.failed.remove(study);
                if summary.instances + summary.media > 0 {
                    tracing::info!(
                        study = %study,
                        instances = summary.instances,
                        media = summary.media,
                        "indexed what the store holds of a study this gateway did not receive"
                    );
                }
            }
            Err(e) => {
                state.failed.insert(study.clone(), Instant::now());
                tracing::warn!(
                    study = %study,
                    error = %e,
                    "could not look for the study in the store; answering from the index"
                );
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("discovery lock")
    }
}
