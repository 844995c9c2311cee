//! Opening the ingest journal when the gateway starts: where its objects
//! go (the local store, or the S3 upload backlog), its replay, and what a
//! start that does not use it must not drop.

use std::sync::Arc;
use std::time::Duration;

use super::{Journal, Target};
use crate::config::Config;
use crate::index::Index;
use crate::store::BlobStore;
use crate::store::backlog::Backlog;

/// The journal new instances are acknowledged from, if any, after the
/// replay of what an earlier run left.
///
/// A journal left with records is never dropped: with `journal.enabled =
/// false` it is replayed all the same (local store) and retired, and a
/// start that has nowhere to replay it (S3 without the backlog) refuses,
/// as does one that would leave pending copies behind.
pub fn start(
    cfg: &Config,
    store: &BlobStore,
    index: &Index,
    backlog: Option<&Arc<Backlog>>,
) -> std::io::Result<Option<Arc<Journal>>> {
    let target = match (store.local_root(), backlog) {
        (Some(root), _) => Some((
            root.to_path_buf(),
            Target::Local {
                drop_cached: !cfg.storage.cache_objects,
            },
        )),
        (None, Some(backlog)) => Some((
            backlog.dir().to_path_buf(),
            Target::Backlog {
                backlog: Arc::clone(backlog),
                patience: Duration::from_secs(cfg.storage.timeout),
                drop_cached: !cfg.storage.cache_objects,
            },
        )),
        (None, None) => None,
    };
    if backlog.is_none() && !store.is_local() {
        refuse_pending_copies(cfg)?;
    }
    // Only a start that would not use the journal looks for what it holds
    // first (a replay reads it anyway).
    let leftover = if cfg.journal.enabled && target.is_some() {
        0
    } else {
        super::unreplayed(&cfg.journal_dir())
            .map_err(|e| std::io::Error::other(format!("ingest journal: {e}")))?
    };
    let Some((root, target)) = target.filter(|_| cfg.journal.enabled || leftover > 0) else {
        if leftover > 0 {
            return Err(std::io::Error::other(format!(
                "the ingest journal in {} holds {leftover} instance(s) not yet replayed, and this \
                 start does not use it (S3 with storage.ack = \"stored\" or the journal off): \
                 start once with the journal on and storage.ack = \"journal\"",
                cfg.journal_dir().display()
            )));
        }
        return Ok(None);
    };
    // The ports are bound already: a sender that connects now waits in the
    // listen backlog until this is done (a first start writes every
    // segment; a start after a crash replays).
    let preallocated_mib = cfg
        .journal
        .segments
        .saturating_mul(cfg.journal.segment_size_mib);
    tracing::info!(
        dir = %cfg.journal_dir().display(),
        preallocated_mib,
        "opening the ingest journal; associations and requests wait until it is open"
    );
    let (journal, done) = super::open(
        &cfg.journal_dir(),
        &cfg.journal,
        &root,
        target,
        &cfg.spool_dir(),
        index,
    )
    .map_err(|e| {
        std::io::Error::other(format!(
            "ingest journal (journal.segments × journal.segment_size_mib = {preallocated_mib} MiB \
             preallocated in {}): {e}",
            cfg.journal_dir().display()
        ))
    })?;
    tracing::info!(
        replayed = done.replayed,
        already = done.already,
        aborted = done.aborted,
        superseded = done.superseded,
        "ingest journal open"
    );
    if let Some(backlog) = backlog {
        // After the replay claimed its records' copies: the others were
        // made durable by earlier checkpoints.
        backlog
            .claim_unclaimed()
            .map_err(|e| std::io::Error::other(format!("upload backlog: {e}")))?;
    }
    if !cfg.journal.enabled {
        // Replayed; retired by its last checkpoint (on drop).
        tracing::info!(
            replayed = leftover,
            "ingest journal replayed and retired (journal.enabled = false)"
        );
        return Ok(None);
    }
    journal.spawn_checkpointer(Duration::from_millis(
        cfg.journal.checkpoint_interval_ms.max(1),
    ));
    Ok(Some(Arc::new(journal)))
}

/// An S3 start without the upload backlog must not strand instances
/// acknowledged from the gateway's disk and not yet uploaded.
fn refuse_pending_copies(cfg: &Config) -> std::io::Result<()> {
    let pending = cfg.pending_dir();
    if std::fs::read_dir(&pending).is_ok_and(|mut d| d.next().is_some()) {
        return Err(std::io::Error::other(format!(
            "{} holds instances acknowledged and not yet uploaded: start with \
             storage.ack = \"journal\" (and the journal on) until /healthz shows \
             upload_backlog.instances = 0",
            pending.display()
        )));
    }
    Ok(())
}
