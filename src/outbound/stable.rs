//! Stable-study detection: a study with no new instance for `stable_after`
//! is told stable (`study.stable`), again each time it changes and goes
//! quiet again.
//!
//! The timers are the index's `v1/unstable` tree (a study's last change,
//! written in ingest's transaction), so they survive a restart: a study
//! whose quiet time passed while the gateway was down is told at once, one
//! still within it on time. Nothing is kept in memory but the time of the
//! next check. A new change can only move a study's time later, so the
//! runner never needs waking: it sleeps until the earliest one due, or for
//! `stable_after` when no study is changing.
//!
//! Several gateways on one shared store: each tells about the studies it
//! received. Before telling, a gateway lists the study in the store; an
//! object newer than its own last instance means another gateway received
//! later instances, and that gateway tells (it sees nothing newer than its
//! own). Otherwise the gateway first indexes what the other gateways stored
//! of the study, so the counts cover all of it. A split study is then told
//! stable once, by the gateway that received its last instance (give or
//! take the clocks' skew: see [`SKEW`]).

use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use super::event::now_ms;
use crate::app::App;
use crate::index::StableOutcome;
use crate::uid::Uid;

/// How much later than this gateway's last change another gateway's object
/// must be to count as later (the store's clock against ours).
const SKEW: Duration = Duration::from_secs(2);

/// After a failure (the index or store unreadable), the wait before the
/// next try.
const RETRY: Duration = Duration::from_secs(10);

pub async fn run(app: App, cancel: CancellationToken) {
    let stable_after = app.cfg.stable_after();
    let after_ms = u64::try_from(stable_after.as_millis()).unwrap_or(u64::MAX);
    loop {
        let sleep = match check(&app, after_ms).await {
            Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())),
            Ok(None) => stable_after,
            Err(e) => {
                tracing::error!(error = %e, "stable-study check failed; retrying");
                RETRY
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Tells every study that is due; the time the next one is due.
async fn check(app: &App, after_ms: u64) -> super::Result<Option<u64>> {
    let index = app.index.clone();
    let unstable = tokio::task::spawn_blocking(move || index.unstable_studies()).await??;
    let now = now_ms();
    let mut next: Option<u64> = None;
    for (study, changed) in unstable {
        let due = changed.saturating_add(after_ms);
        if due > now {
            next = Some(next.map_or(due, |n| n.min(due)));
            continue;
        }
        tell(app, study, changed).await?;
    }
    Ok(next)
}

async fn tell(app: &App, study: Uid, changed: u64) -> super::Result<()> {
    if !app.store.is_local() {
        if let Some(later) = later_elsewhere(app, &study, changed).await? {
            tracing::info!(
                study = %study, newest_object = %later,
                "another gateway stored later instances of this study; it tells it stable"
            );
            let index = app.index.clone();
            tokio::task::spawn_blocking(move || index.forget_unstable(&study, changed)).await??;
            return Ok(());
        }
        crate::maintenance::index_study_beside(&app.store, &app.index, &study, app.ingest.locks())
            .await?;
    }
    let index = app.index.clone();
    let uid = study.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let instances = index.instances_of_study(&uid)?;
        index.fire_stable(&uid, changed, now_ms(), &instances)
    })
    .await??;
    match outcome {
        StableOutcome::Fired { version, queued } => {
            tracing::info!(study = %study, version, messages = queued, "study stable");
        }
        StableOutcome::Changed => {}
        StableOutcome::Gone => {
            tracing::debug!(study = %study, "study gone before it was stable");
        }
    }
    Ok(())
}

/// The key of an object of `study` the store got after `changed_ms` (past
/// the skew), if any: another gateway's.
async fn later_elsewhere(app: &App, study: &Uid, changed_ms: u64) -> super::Result<Option<String>> {
    let prefix = Path::from_iter(["studies", study.as_str()]);
    let limit = changed_ms.saturating_add(u64::try_from(SKEW.as_millis()).unwrap_or(0));
    let objects: Vec<_> = app
        .store
        .object_store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| super::Error::List {
            prefix: prefix.to_string(),
            detail: crate::store::redacted(&e),
        })?;
    Ok(objects
        .into_iter()
        .filter(|o| u64::try_from(o.last_modified.timestamp_millis()).unwrap_or(0) > limit)
        .max_by_key(|o| o.last_modified)
        .map(|o| o.location.to_string()))
}
