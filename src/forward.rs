//! Forwarding (issue 12): stored instances go on to other DICOM nodes (a
//! PACS, an AI node), held and retried while a destination is down.
//!
//! - Rules (`[[forward]]`) are matched in the index's write transaction
//!   (`crate::index`, `v1/forward`): an acknowledged instance that matches
//!   is queued for its destinations durably, or it was not acknowledged.
//! - [`worker`]: per destination, `[forwarding] associations` lanes take
//!   due items in batches, send them on one association per lane
//!   ([`scu`], [`dimse`]) and record the outcome: sent items leave the
//!   queue, refused ones are failed with the reason, the rest wait for the
//!   next step of the retry schedule.
//! - [`Forwarding`]: what the operator API and the metrics show of each
//!   destination besides the queue itself (up or down, in flight, sent,
//!   last error, next attempt).
//!
//! Rules and destinations come from the configuration only; the API can
//! look and retry, not create them.

pub mod dimse;
pub mod scu;
pub mod worker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::{Config, DicomNode};
use crate::index::{ForwardKey, ForwardRoute};

/// The index routes for `cfg`'s rules.
pub fn routes(cfg: &Config) -> Vec<ForwardRoute> {
    cfg.forward
        .iter()
        .map(|r| ForwardRoute {
            destination: r.destination.trim().to_owned(),
            calling_aets: r.calling_aets.clone(),
            modalities: r.modalities.clone(),
            sop_classes: r.sop_classes.clone(),
            on_stable: r.on == "study_stable",
        })
        .collect()
}

/// Every destination a rule names, with its live state.
#[derive(Debug, Default)]
pub struct Forwarding {
    destinations: Vec<Arc<Destination>>,
}

impl Forwarding {
    pub fn new(cfg: &Config) -> Forwarding {
        let mut seen = HashSet::new();
        let destinations = cfg
            .forward
            .iter()
            .filter_map(|r| cfg.dicom_node(&r.destination))
            .filter(|n| seen.insert(n.ae_title.trim().to_owned()))
            .map(|node| {
                Arc::new(Destination {
                    node: node.clone(),
                    live: Mutex::default(),
                    claimed: Mutex::default(),
                })
            })
            .collect();
        Forwarding { destinations }
    }

    pub fn destinations(&self) -> &[Arc<Destination>] {
        &self.destinations
    }

    pub fn destination(&self, ae_title: &str) -> Option<&Arc<Destination>> {
        self.destinations
            .iter()
            .find(|d| d.name() == ae_title.trim())
    }
}

/// One destination: its node and what its lanes last saw.
#[derive(Debug)]
pub struct Destination {
    pub node: DicomNode,
    live: Mutex<Live>,
    /// Items a lane has taken and not yet settled (no two lanes send one).
    claimed: Mutex<HashSet<ForwardKey>>,
}

/// The in-memory state of a destination (counters since start).
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Live {
    /// `None` until the first attempt.
    pub up: Option<bool>,
    pub in_flight: usize,
    pub sent: u64,
    pub failed: u64,
    pub retries: u64,
    /// Association failures in a row.
    pub connect_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Unix milliseconds: no association is tried before (while down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_until_ms: Option<u64>,
    /// Unix milliseconds of the next pending item's attempt, as last seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// When the queue depth gauge was last refreshed.
    #[serde(skip)]
    pub sampled_at: Option<std::time::Instant>,
}

impl Destination {
    pub fn name(&self) -> &str {
        self.node.ae_title.trim()
    }

    pub fn live(&self) -> Live {
        self.live.lock().expect("forward state lock").clone()
    }

    fn update<T>(&self, f: impl FnOnce(&mut Live) -> T) -> T {
        f(&mut self.live.lock().expect("forward state lock"))
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, HashSet<ForwardKey>> {
        self.claimed.lock().expect("forward claims lock")
    }
}

/// Starts every destination's lanes; they stop with `stop`, each finishing
/// the instance it is sending.
pub fn spawn(
    app: &crate::app::App,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let cfg = &app.cfg;
    let f = &cfg.forwarding;
    // Validated at load: the fallbacks are never used.
    let settings = Arc::new(worker::Settings {
        schedule: f.schedule().unwrap_or_default(),
        max_age: f
            .max_age()
            .unwrap_or(std::time::Duration::from_secs(7 * 24 * 3600)),
        timeout: std::time::Duration::from_secs(f.timeout),
        calling_ae: cfg.ae_title.trim().to_owned(),
        max_pdu: cfg.max_pdu_length,
        // Checked at start (tls::check); a CA unreadable since leaves the
        // TLS destinations failing to connect with that reason.
        tls: crate::tls::TlsClient::from_config(cfg).unwrap_or_else(|e| {
            tracing::error!(error = %e, "forwarding: no TLS client");
            None
        }),
    });
    let sources = worker::Sources {
        index: app.index.clone(),
        store: app.store.clone(),
        backlog: app.backlog.clone(),
    };
    let mut tasks = Vec::new();
    for dest in app.forward.destinations() {
        crate::metrics::get().forward_preset(dest.name());
        tracing::info!(
            destination = dest.name(),
            address = %dest.node.address(),
            associations = f.associations,
            "forwarding"
        );
        for _ in 0..f.associations {
            tasks.push(tokio::spawn(worker::lane(
                sources.clone(),
                Arc::clone(dest),
                Arc::clone(&settings),
                stop.clone(),
            )));
        }
    }
    tasks
}
