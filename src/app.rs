//! The state both servers share: built once, cheap to clone.

use std::sync::Arc;

use crate::config::Config;
use crate::index::Index;
use crate::ingest::Ingest;
use crate::store::BlobStore;
use crate::store::signer::UrlSigner;

#[derive(Clone, Debug)]
pub struct App {
    pub cfg: Arc<Config>,
    pub index: Index,
    pub store: BlobStore,
    pub ingest: Arc<Ingest>,
    pub signer: UrlSigner,
    /// Wakes the report worker when a `report.delivered` was recorded.
    pub reports: Arc<tokio::sync::Notify>,
}
