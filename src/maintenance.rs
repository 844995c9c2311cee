//! Rebuilding the index from the object store, and checking the two agree.
//!
//! The store is the source of truth (DESIGN.md): its keys say where every
//! instance and media file belongs, each instance's header says the rest, and
//! a JSON sidecar next to each media file keeps what its name cannot (MIME
//! type, report fields). So the index can be rebuilt by listing the store:
//! - [`index_study`] indexes what one study's prefix holds and the index
//!   lacks. It replaces an entry only when its object is gone (and the entry
//!   unchanged), so it is safe while the gateway runs (a gateway that misses
//!   a study can call it) and idempotent.
//! - [`reindex`] does that for every study (`dicom-gateway reindex`).
//! - [`verify`] lists entries without objects and objects without entries
//!   (`dicom-gateway verify`).
//!
//! The commands open the index themselves, which sled allows only while the
//! gateway is stopped.

mod headers;
mod listing;
mod reindex;
mod verify;

use std::path::PathBuf;

pub use headers::read_header as read_stored_header;
pub use reindex::{
    REINDEX_SOURCE, SkipReason, Skipped, Summary, index_study, index_study_beside, reindex,
};
pub use verify::{Problem, ProblemKind, Report, verify};

use crate::config::Config;
use crate::index::Index;
use crate::store::{BlobStore, ObjectKey};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Failures that stop a run (an object that cannot be indexed does not; see
/// [`SkipReason`]). Messages leave the cause to the source chain.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data directory {0} does not exist")]
    NoDataDir(PathBuf),
    #[error("the object store is unusable")]
    Store(#[from] crate::store::Error),
    #[error("cannot list {prefix}: {detail}")]
    List { prefix: String, detail: String },
    #[error("cannot {what}")]
    Index {
        what: &'static str,
        #[source]
        source: crate::index::Error,
    },
    #[error("index task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs a blocking index call on a blocking thread.
async fn blocking<T, F>(index: &Index, what: &'static str, f: F) -> Result<T>
where
    F: FnOnce(&Index) -> crate::index::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let index = index.clone();
    tokio::task::spawn_blocking(move || f(&index))
        .await?
        .map_err(|source| Error::Index { what, source })
}

/// Opens the data directory's index (which fails, clearly, while a gateway
/// holds it) and store.
async fn open(cfg: &Config) -> Result<(BlobStore, Index)> {
    if !cfg.data_dir.is_dir() {
        return Err(Error::NoDataDir(cfg.data_dir.clone()));
    }
    let index = Index::open(&cfg.index_dir()).map_err(|source| Error::Index {
        what: "open the index",
        source,
    })?;
    let store = BlobStore::open(cfg).await?;
    Ok((store, index))
}

/// `dicom-gateway reindex`: rebuilds the configured index from the
/// configured store; with `wipe`, clears its instance, study and media
/// entries first (a full rebuild instead of filling in what is missing).
pub async fn reindex_data_dir(cfg: &Config, wipe: bool) -> Result<Summary> {
    let (store, index) = open(cfg).await?;
    tracing::info!(store = %store.describe(), wipe, "reindexing");
    // What only the index knows of its media goes to the store first, so a
    // wipe cannot lose it.
    let written = write_missing_sidecars(&store, &index).await?;
    if written > 0 {
        tracing::info!(
            written,
            "wrote media sidecars the store lacked, from the index"
        );
    }
    if wipe {
        blocking(&index, "clear the index", |i| i.clear_rebuildable()).await?;
        tracing::info!("cleared the index's instance, study and media entries");
    }
    let summary = reindex(&store, &index).await?;
    blocking(&index, "flush the index", |i| i.flush()).await?;
    Ok(summary)
}

/// Writes the sidecar of every indexed media file whose sidecar is not in
/// the store (one written by a gateway that stopped between storing a file
/// and its sidecar). Returns how many it wrote.
async fn write_missing_sidecars(store: &BlobStore, index: &Index) -> Result<u64> {
    let studies = blocking(index, "list the studies", |i| i.indexed_studies()).await?;
    let mut written = 0;
    for study in studies {
        let media = {
            let study = study.clone();
            blocking(index, "list media", move |i| i.media_of_study(&study)).await?
        };
        for record in media {
            let key = ObjectKey::media_sidecar(&study, &record.file_name);
            // Only for a file the store has, whose sidecar it lacks.
            if !store.exists(&record.object_key).await? || store.exists(&key).await? {
                continue;
            }
            let json = serde_json::to_vec(&record).expect("records serialise");
            store.put_small(&key, json).await?;
            written += 1;
        }
    }
    Ok(written)
}

/// `dicom-gateway verify`: compares the configured index with the
/// configured store.
pub async fn verify_data_dir(cfg: &Config) -> Result<Report> {
    let (store, index) = open(cfg).await?;
    tracing::info!(store = %store.describe(), "verifying");
    verify(&store, &index).await
}

#[cfg(test)]
mod tests;
