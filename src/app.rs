//! The state both servers share: built once, cheap to clone.

use std::sync::Arc;

use crate::activity::Activity;
use crate::config::Config;
use crate::discovery::Discovery;
use crate::index::Index;
use crate::ingest::Ingest;
use crate::store::BlobStore;
use crate::store::backlog::Backlog;
use crate::store::signer::UrlSigner;
use crate::webhook::views::StudyViews;

#[derive(Clone, Debug)]
pub struct App {
    pub cfg: Arc<Config>,
    pub index: Index,
    pub store: BlobStore,
    pub ingest: Arc<Ingest>,
    pub signer: UrlSigner,
    /// Access answers' per-study parts, cached until the study changes.
    pub views: Arc<StudyViews>,
    /// Looks in a shared store for studies other gateways received.
    pub discovery: Arc<Discovery>,
    /// Wakes the report worker when a `report.delivered` was recorded.
    pub reports: Arc<tokio::sync::Notify>,
    /// Recent associations, refusals and ingest counts, for the operator page.
    pub activity: Activity,
    /// Instances acknowledged from the gateway's disk and not yet in the
    /// store (an S3 store with `storage.ack = "journal"`; `None` otherwise).
    /// Access to a key still in it goes through the gateway's `/files` route.
    pub backlog: Option<Arc<Backlog>>,
    /// Forwarding destinations and their live state.
    pub forward: Arc<crate::forward::Forwarding>,
}
