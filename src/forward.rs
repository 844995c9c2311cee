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
//! Rules and destinations come from the configuration file (read-only) and
//! from the operator API ([`managed`]: stored in the index, applied live).

pub mod dimse;
pub mod managed;
pub mod scu;
pub mod worker;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DicomNode, ForwardRule};
use crate::index::{ForwardKey, ForwardRoute, Index};

/// The forwarding destinations with lanes, and what they are made of:
/// the configuration file's nodes and rules (read-only) and those created
/// through the operator API ([`managed`], kept in the index).
///
/// Lanes run for every API destination and for every node a rule names;
/// [`Forwarding::reconcile`] starts and stops them as the API changes the
/// set, so nothing waits for a restart.
#[derive(Debug, Default)]
pub struct Forwarding {
    file_nodes: Vec<DicomNode>,
    file_rules: Vec<ForwardRule>,
    /// `dicom_tls_ca` is set (TLS destinations can be checked).
    tls_ca: bool,
    state: Mutex<State>,
    /// API edits run one at a time: check, write, apply.
    edits: tokio::sync::Mutex<()>,
    /// Set by [`spawn`]: how new lanes are started.
    runner: OnceLock<Runner>,
}

#[derive(Debug, Default)]
struct State {
    /// API destinations by AE title.
    api_nodes: BTreeMap<String, DicomNode>,
    /// API rules by id.
    api_rules: BTreeMap<String, ForwardRule>,
    running: Vec<Arc<Destination>>,
}

struct Runner {
    sources: worker::Sources,
    settings: Arc<worker::Settings>,
    associations: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runner")
    }
}

/// The id a file rule is shown with (1-based, in file order). The API's
/// own ids cannot contain `:`, so the two never collide.
pub fn file_rule_id(n: usize) -> String {
    format!("file:{}", n + 1)
}

fn route(rule: &ForwardRule) -> ForwardRoute {
    ForwardRoute {
        destination: rule.destination.trim().to_owned(),
        calling_aets: rule.calling_aets.clone(),
        modalities: rule.modalities.clone(),
        sop_classes: rule.sop_classes.clone(),
        on_stable: rule.on == "study_stable",
    }
}

impl Forwarding {
    /// The configuration file's destinations and rules only.
    pub fn new(cfg: &Config) -> Forwarding {
        Forwarding {
            file_nodes: cfg.dicom_nodes.clone(),
            file_rules: cfg.forward.clone(),
            tls_ca: cfg.dicom_tls_ca.is_some(),
            ..Forwarding::default()
        }
    }

    /// The file's entries and those stored through the API. A stored entry
    /// the file now contradicts (an AE title the file took since, a rule
    /// whose destination is gone) is left out with a warning; it stays in
    /// the index and the file's entry wins.
    pub fn load(cfg: &Config, index: &Index) -> crate::index::Result<Forwarding> {
        let forwarding = Forwarding::new(cfg);
        let stored = index.forward_config()?;
        {
            let mut state = forwarding.state();
            for (ae, node) in stored.destinations {
                if cfg.dicom_node(&ae).is_some() {
                    tracing::warn!(
                        destination = %ae,
                        "forwarding: an API destination has the AE title of a [[dicom_nodes]] \
                         entry; the file's entry is used"
                    );
                    continue;
                }
                state.api_nodes.insert(ae, node);
            }
            for (id, rule) in stored.rules {
                let dest = rule.destination.trim();
                if cfg.dicom_node(dest).is_none() && !state.api_nodes.contains_key(dest) {
                    tracing::warn!(rule = %id, destination = %dest,
                        "forwarding: an API rule names an unknown destination; left out");
                    continue;
                }
                state.api_rules.insert(id, rule);
            }
        }
        Ok(forwarding)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("forwarding state lock")
    }

    /// The index routes for every rule, the file's first.
    pub fn routes(&self) -> Vec<ForwardRoute> {
        let state = self.state();
        self.file_rules
            .iter()
            .chain(state.api_rules.values())
            .map(route)
            .collect()
    }

    /// A destination by AE title: the file's, else the API's.
    pub fn node(&self, ae_title: &str) -> Option<DicomNode> {
        let ae = ae_title.trim();
        self.file_nodes
            .iter()
            .find(|n| n.ae_title.trim() == ae)
            .cloned()
            .or_else(|| self.state().api_nodes.get(ae).cloned())
    }

    /// The nodes that get lanes: every API destination, and every node a
    /// rule names.
    fn wanted(&self) -> Vec<DicomNode> {
        let state = self.state();
        let mut seen = HashSet::new();
        let named = self
            .file_rules
            .iter()
            .chain(state.api_rules.values())
            .filter_map(|r| {
                let ae = r.destination.trim();
                self.file_nodes
                    .iter()
                    .find(|n| n.ae_title.trim() == ae)
                    .or_else(|| state.api_nodes.get(ae))
            });
        state
            .api_nodes
            .values()
            .chain(named)
            .filter(|n| seen.insert(n.ae_title.trim().to_owned()))
            .cloned()
            .collect()
    }

    /// The destinations with lanes, as now.
    pub fn destinations(&self) -> Vec<Arc<Destination>> {
        self.state().running.clone()
    }

    pub fn destination(&self, ae_title: &str) -> Option<Arc<Destination>> {
        self.state()
            .running
            .iter()
            .find(|d| d.name() == ae_title.trim())
            .cloned()
    }

    /// Brings the lanes in line with the destinations: new ones get lanes,
    /// removed ones' lanes stop (each finishing the instance it is
    /// sending), a changed address or TLS setting is used from the next
    /// association on. Nothing before [`spawn`] or after the stop.
    pub fn reconcile(&self) {
        let Some(runner) = self.runner.get() else {
            return;
        };
        if runner.stop.is_cancelled() {
            return;
        }
        let wanted = self.wanted();
        let mut state = self.state();
        state.running.retain(|d| {
            let keep = wanted.iter().any(|n| n.ae_title.trim() == d.name());
            if !keep {
                tracing::info!(destination = d.name(), "forwarding: destination removed");
                d.stop.cancel();
            }
            keep
        });
        let mut changed = false;
        for node in wanted {
            let ae = node.ae_title.trim().to_owned();
            if let Some(dest) = state.running.iter().find(|d| d.name() == ae) {
                if dest.node() != node {
                    tracing::info!(destination = %ae, address = %node.address(),
                        tls = node.tls, "forwarding: destination changed");
                    *dest.node.lock().expect("forward node lock") = node;
                    // A new address deserves a try now, not after the old
                    // one's back-off.
                    dest.update(|l| {
                        l.down_until_ms = None;
                        l.connect_failures = 0;
                    });
                    changed = true;
                }
                continue;
            }
            let dest = Arc::new(Destination::new(node, runner.stop.child_token()));
            crate::metrics::get().forward_preset(dest.name());
            tracing::info!(
                destination = dest.name(),
                address = %dest.node().address(),
                associations = runner.associations,
                "forwarding"
            );
            for _ in 0..runner.associations {
                runner.tracker.spawn(worker::lane(
                    runner.sources.clone(),
                    Arc::clone(&dest),
                    Arc::clone(&runner.settings),
                    dest.stop.clone(),
                ));
            }
            state.running.push(dest);
        }
        drop(state);
        if changed {
            // Idle lanes look at their queue again.
            runner.sources.index.forward_wake_all();
        }
    }
}

/// One destination: its node and what its lanes last saw.
#[derive(Debug)]
pub struct Destination {
    name: String,
    /// Changed in place by the API: read it for each new association.
    node: Mutex<DicomNode>,
    /// Its lanes' stop (a child of the gateway's).
    stop: CancellationToken,
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
    pub fn new(node: DicomNode, stop: CancellationToken) -> Destination {
        Destination {
            name: node.ae_title.trim().to_owned(),
            node: Mutex::new(node),
            stop,
            live: Mutex::default(),
            claimed: Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is now.
    pub fn node(&self) -> DicomNode {
        self.node.lock().expect("forward node lock").clone()
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

/// Starts every destination's lanes, and lets [`Forwarding::reconcile`]
/// start more later; they stop with `stop`, each finishing the instance it
/// is sending. The handle returned ends when every lane has.
pub fn spawn(app: &crate::app::App, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
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
    let tracker = TaskTracker::new();
    let runner = Runner {
        sources,
        settings,
        associations: f.associations,
        stop: stop.clone(),
        tracker: tracker.clone(),
    };
    if app.forward.runner.set(runner).is_err() {
        tracing::error!("forwarding: lanes already started");
        return Vec::new();
    }
    app.forward.reconcile();
    let stop = stop.clone();
    vec![tokio::spawn(async move {
        stop.cancelled().await;
        tracker.close();
        tracker.wait().await;
    })]
}
