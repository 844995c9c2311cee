//! Several gateways, one store: a gateway asked about a study looks in the
//! store for what its own index lacks, so it can answer for studies another
//! gateway received.
//!
//! - A study the index does not know is looked up in the store every time
//!   it is asked for (one listing of its prefix).
//! - With a shared (remote) store, a study the index knows is listed again
//!   when it was last listed more than `storage.relist_after` ago (30 s by
//!   default), so instances the
//!   other gateway received later show up too. A local store belongs to one
//!   gateway: known studies are never re-listed.
//!
//! Only what the index lacks is read (headers of new instances, sidecars of
//! new media); a store that cannot be listed is logged and the answer comes
//! from the index alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::index::Index;
use crate::maintenance;
use crate::store::BlobStore;
use crate::uid::Uid;

/// How long a request may wait for the store to be listed: Avara waits a
/// few seconds for an answer.
const LOOK_LIMIT: Duration = Duration::from_secs(3);

/// Studies remembered as listed; beyond this the memory starts over.
const REMEMBERED: usize = 10_000;

#[derive(Debug)]
pub struct Discovery {
    /// `None`: known studies are never re-listed (a local store).
    relist_after: Option<Duration>,
    listed: Mutex<HashMap<Uid, Instant>>,
}

impl Discovery {
    pub fn new(store: &BlobStore, relist_after: Duration) -> Discovery {
        Discovery {
            relist_after: (!store.is_local()).then_some(relist_after),
            listed: Mutex::default(),
        }
    }

    /// Indexes what the store holds of `study` and the index lacks, when it
    /// is due (see the module docs). Never fails: a store that cannot be
    /// listed leaves the index as it was. Blocking: for handlers, which run
    /// on a blocking thread of the runtime (the store is awaited there).
    pub fn refresh(&self, store: &BlobStore, index: &Index, study: &Uid) {
        let known = index.study(study).ok().flatten().is_some();
        if known && !self.due(study) {
            return;
        }
        let found = tokio::runtime::Handle::current().block_on(async {
            tokio::time::timeout(LOOK_LIMIT, maintenance::index_study(store, index, study)).await
        });
        // Marked whatever happened: a store that is down is not asked again
        // for this study until the listing is due anyway.
        self.mark(study);
        match found {
            Ok(Ok(summary)) => {
                if summary.instances + summary.media > 0 {
                    tracing::info!(
                        study = %study,
                        instances = summary.instances,
                        media = summary.media,
                        "indexed what the store holds of a study this gateway did not receive"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(
                study = %study,
                error = %e,
                "could not look for the study in the store; answering from the index"
            ),
            Err(_) => tracing::warn!(
                study = %study,
                limit = ?LOOK_LIMIT,
                "looking for the study in the store took too long; answering from the index"
            ),
        }
    }

    fn due(&self, study: &Uid) -> bool {
        let Some(after) = self.relist_after else {
            return false;
        };
        let listed = self.listed.lock().expect("discovery lock");
        listed.get(study).is_none_or(|at| at.elapsed() >= after)
    }

    fn mark(&self, study: &Uid) {
        if self.relist_after.is_none() {
            return;
        }
        let mut listed = self.listed.lock().expect("discovery lock");
        if listed.len() >= REMEMBERED {
            listed.clear();
        }
        listed.insert(study.clone(), Instant::now());
    }
}
