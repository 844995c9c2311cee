//! Prometheus metrics: one registry, filled at the call sites with one line
//! each, rendered by `GET /metrics`.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client,
//! rather than `metrics` + `metrics-exporter-prometheus`: it keeps its
//! registry in a value (no global recorder to install or to race in tests),
//! has typed label sets and real histograms with buckets we choose, pulls in
//! a handful of small crates and no HTTP server, and encodes the Prometheus
//! text format 0.0.4 that every scraper reads.
//!
//! The registry is one process-wide value ([`get`]): the DICOM receive loop,
//! the blocking commit thread, the store and the workers all count into it
//! without threading a handle through every signature.
//!
//! Every label value that comes from outside is bounded: calling AE titles
//! are cleaned and at most [`MAX_CALLING_AES`] distinct ones get a series of
//! their own (the rest count as `(other)`), webhook event types are taken
//! only from the list Avara sends, HTTP routes are the router's patterns,
//! never the requested path. A hostile peer cannot grow the registry.

mod disk;
mod forward;
mod labels;
pub mod store;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use labels::webhook_event;
use labels::{
    Build, Event, HttpLabels, InstanceLabels, Operation, Outcome, Protocol, Reason, Route,
    SignedUrl, State, WebhookLabels,
};

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Distinct calling AE titles that get a series of their own.
pub const MAX_CALLING_AES: usize = 64;

/// The label of AE titles past [`MAX_CALLING_AES`].
pub const OTHER_AE: &str = "(other)";

/// The git commit the binary was built from, when the build said
/// (`DICOM_GATEWAY_GIT_COMMIT=$(git rev-parse HEAD) cargo build`).
const GIT_COMMIT: &str = match option_env!("DICOM_GATEWAY_GIT_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// The process-wide registry.
pub fn get() -> &'static Metrics {
    &METRICS
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds: 0.5 ms to ~16 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    associations_open: Gauge,
    associations: Counter,
    associations_rejected: Family<Reason, Counter>,
    instances: Family<InstanceLabels, Counter>,
    received: Family<Protocol, Counter>,
    ingest_latency: Histogram,
    commit_batch: Histogram,
    store_duration: Histograms<Operation>,
    store_errors: Family<Operation, Counter>,
    webhook_requests: Family<WebhookLabels, Counter>,
    webhook_duration: Histograms<Event>,
    signed_urls: Family<SignedUrl, Counter>,
    uploads: Family<Outcome, Counter>,
    report_jobs: Family<State, Gauge>,
    report_attempts: Family<Outcome, Counter>,
    deliveries: Family<Outcome, Counter>,
    delivery_duration: Histogram,
    outbox_depth: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<Route>,
    free_space: Gauge,
    index_size: Gauge,
    upload_backlog_instances: Gauge,
    upload_backlog_bytes: Gauge,
    upload_retries: Counter,
    commitment_requests: Family<Outcome, Counter>,
    commitment_reports: Family<Outcome, Counter>,
    forward: forward::ForwardMetrics,
    /// Calling AE titles that have a series of their own.
    calling_aes: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            associations_open: Gauge::default(),
            associations: Counter::default(),
            associations_rejected: Family::default(),
            instances: Family::default(),
            received: Family::default(),
            ingest_latency: seconds(),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            store_duration: Family::new_with_constructor(seconds),
            store_errors: Family::default(),
            webhook_requests: Family::default(),
            webhook_duration: Family::new_with_constructor(seconds),
            signed_urls: Family::default(),
            uploads: Family::default(),
            report_jobs: Family::default(),
            report_attempts: Family::default(),
            deliveries: Family::default(),
            delivery_duration: seconds(),
            outbox_depth: Gauge::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(seconds),
            free_space: Gauge::default(),
            index_size: Gauge::default(),
            upload_backlog_instances: Gauge::default(),
            upload_backlog_bytes: Gauge::default(),
            upload_retries: Counter::default(),
            commitment_requests: Family::default(),
            commitment_reports: Family::default(),
            forward: forward::ForwardMetrics::default(),
            calling_aes: Mutex::new(HashSet::new()),
        };
        let mut r = Registry::with_prefix("dicom_gateway");
        let s = Unit::Seconds;
        let b = Unit::Bytes;
        r.register(
            "associations_open",
            "DICOM associations open now",
            m.associations_open.clone(),
        );
        r.register(
            "associations",
            "DICOM associations established",
            m.associations.clone(),
        );
        r.register(
            "associations_rejected",
            "DICOM connections refused or closed before associating, by reason",
            m.associations_rejected.clone(),
        );
        r.register(
            "instances",
            "C-STORE data sets answered, by outcome (stored, refused), DIMSE status and calling AE title",
            m.instances.clone(),
        );
        r.register_with_unit(
            "received",
            "Instance bytes received, by protocol (dicom: data set PDVs, http: upload bodies)",
            b.clone(),
            m.received.clone(),
        );
        r.register_with_unit(
            "ingest_latency",
            "From a data set's last PDV to its C-STORE response sent",
            s.clone(),
            m.ingest_latency.clone(),
        );
        r.register_with_unit(
            "commit_batch",
            "Instances made durable together by one group commit",
            Unit::Other("instances".into()),
            m.commit_batch.clone(),
        );
        r.register_with_unit(
            "store_request_duration",
            "Object store requests, by operation",
            s.clone(),
            m.store_duration.clone(),
        );
        r.register(
            "store_request_errors",
            "Object store requests that failed, by operation (a missing object on get/head is not counted)",
            m.store_errors.clone(),
        );
        r.register(
            "webhook_requests",
            "Avara webhook requests, by event type and outcome",
            m.webhook_requests.clone(),
        );
        r.register_with_unit(
            "webhook_request_duration",
            "Avara webhook requests, body read to answer, by event type",
            s.clone(),
            m.webhook_duration.clone(),
        );
        r.register(
            "signed_urls",
            "Signed URLs issued, by method and signer (gateway: its own file/upload routes; store: presigned by S3)",
            m.signed_urls.clone(),
        );
        r.register(
            "uploads",
            "Secondary-capture uploads (PUT /uploads), by outcome",
            m.uploads.clone(),
        );
        r.register(
            "report_jobs",
            "Report jobs in the index, by state",
            m.report_jobs.clone(),
        );
        r.register(
            "report_fetch_attempts",
            "Report PDF fetch attempts, by outcome (stored, retry, failed)",
            m.report_attempts.clone(),
        );
        r.register(
            "outbound_deliveries",
            "Outbound webhook delivery attempts, by outcome (delivered, retry, failed)",
            m.deliveries.clone(),
        );
        r.register_with_unit(
            "outbound_delivery_duration",
            "Outbound webhook delivery attempts, connection included",
            s.clone(),
            m.delivery_duration.clone(),
        );
        r.register(
            "outbox_depth",
            "Outbound webhook messages waiting for delivery",
            m.outbox_depth.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests answered, by route pattern and status code",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP requests, by route pattern (to the response headers)",
            s,
            m.http_duration.clone(),
        );
        r.register_with_unit(
            "data_dir_free",
            "Space available to the gateway on the data directory's filesystem",
            b.clone(),
            m.free_space.clone(),
        );
        r.register_with_unit(
            "index_size",
            "Bytes on disk of the index (sled) directory",
            b.clone(),
            m.index_size.clone(),
        );
        r.register(
            "upload_backlog_instances",
            "Objects acknowledged from the gateway's disk and not yet uploaded to the store (S3, storage.ack = journal)",
            m.upload_backlog_instances.clone(),
        );
        r.register_with_unit(
            "upload_backlog",
            "Bytes acknowledged from the gateway's disk and not yet uploaded to the store, admitted ones included",
            b,
            m.upload_backlog_bytes.clone(),
        );
        r.register(
            "upload_retries",
            "Background uploads of acknowledged objects that failed and will be retried",
            m.upload_retries.clone(),
        );
        m.forward.register(&mut r);
        r.register(
            "storage_commitment_requests",
            "Storage commitment N-ACTION requests, by outcome (accepted: recorded and answered 0x0000; refused)",
            m.commitment_requests.clone(),
        );
        r.register(
            "storage_commitment_reports",
            "Storage commitment report deliveries, by outcome (delivered, retry, failed after the last retry, undeliverable: requester not in dicom_nodes)",
            m.commitment_reports.clone(),
        );
        r.register(
            "build",
            "Version and git commit of this binary",
            Info::new(Build {
                version: env!("CARGO_PKG_VERSION"),
                commit: GIT_COMMIT,
            }),
        );
        m.preset();
        Metrics { registry: r, ..m }
    }

    /// Creates the series of every known label value at zero, so a
    /// dashboard or an alert on a rate sees 0 rather than no data before
    /// the first event (Prometheus' advice for labels known in advance).
    fn preset(&self) {
        for reason in [
            "peer_not_allowed",
            "no_request",
            "max_associations",
            "artim_timeout",
            "calling_ae_not_allowed",
            "called_ae_unknown",
            "negotiation_rejected",
            "negotiation_failed",
            "tls_handshake",
        ] {
            drop(self.associations_rejected.get_or_create(&Reason { reason }));
        }
        for protocol in ["dicom", "http"] {
            drop(self.received.get_or_create(&Protocol { protocol }));
        }
        for operation in [
            "put",
            "put_multipart",
            "get",
            "head",
            "delete",
            "list",
            "copy",
        ] {
            let labels = Operation { operation };
            drop(self.store_duration.get_or_create(&labels));
            drop(self.store_errors.get_or_create(&labels));
        }
        for outcome in ["stored", "replaced", "forbidden", "refused", "failed"] {
            drop(self.uploads.get_or_create(&Outcome { outcome }));
        }
        for outcome in ["stored", "retry", "failed"] {
            drop(self.report_attempts.get_or_create(&Outcome { outcome }));
        }
        for outcome in ["delivered", "retry", "failed"] {
            drop(self.deliveries.get_or_create(&Outcome { outcome }));
        }
        for outcome in ["accepted", "refused"] {
            drop(self.commitment_requests.get_or_create(&Outcome { outcome }));
        }
        for outcome in ["delivered", "retry", "failed", "undeliverable"] {
            drop(self.commitment_reports.get_or_create(&Outcome { outcome }));
        }
        self.report_jobs(std::iter::empty());
        for (method, signer) in [("GET", "gateway"), ("PUT", "gateway"), ("GET", "store")] {
            drop(
                self.signed_urls
                    .get_or_create(&SignedUrl { method, signer }),
            );
        }
    }

    /// The registry in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }

    /// An association was established; it counts as open until the
    /// returned guard is dropped.
    #[must_use = "the association counts as open while the guard lives"]
    pub fn association_opened(&self) -> OpenAssociation {
        self.associations.inc();
        self.associations_open.inc();
        OpenAssociation(self.associations_open.clone())
    }

    /// A connection refused or closed before it associated.
    pub fn association_rejected(&self, reason: &'static str) {
        self.associations_rejected
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// A C-STORE answered with `status`, `latency` after its last PDV.
    pub fn instance_answered(&self, status: u16, calling_ae: &str, latency: Duration) {
        // PS3.7 C.1: 0x0000 success, 0xB000–0xBFFF warning (stored too);
        // everything else refused.
        let stored = status == 0 || (0xB000..=0xBFFF).contains(&status);
        self.instances
            .get_or_create(&InstanceLabels {
                outcome: if stored { "stored" } else { "refused" },
                status: format!("{status:04X}"),
                calling_ae: self.calling_ae_label(calling_ae),
            })
            .inc();
        self.ingest_latency.observe(latency.as_secs_f64());
    }

    /// Data set bytes arrived over `protocol` (`dicom` or `http`).
    pub fn received(&self, protocol: &'static str, bytes: usize) {
        self.received
            .get_or_create(&Protocol { protocol })
            .inc_by(bytes as u64);
    }

    /// A group commit made `instances` durable at once.
    pub fn commit_batch(&self, instances: usize) {
        self.commit_batch.observe(instances as f64);
    }

    /// One object store request and whether it failed.
    pub fn store_request(&self, operation: &'static str, took: Duration, failed: bool) {
        let labels = Operation { operation };
        self.store_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// An Avara webhook request: its event type (see [`webhook_event`]),
    /// outcome and duration.
    pub fn webhook(&self, event: &'static str, outcome: &'static str, took: Duration) {
        self.webhook_requests
            .get_or_create(&WebhookLabels { event, outcome })
            .inc();
        self.webhook_duration
            .get_or_create(&Event { event })
            .observe(took.as_secs_f64());
    }

    /// A signed URL was issued.
    pub fn signed_url(&self, method: &'static str, signer: &'static str) {
        self.signed_urls
            .get_or_create(&SignedUrl { method, signer })
            .inc();
    }

    pub fn upload(&self, outcome: &'static str) {
        self.uploads.get_or_create(&Outcome { outcome }).inc();
    }

    /// The report jobs as the worker last read them.
    pub fn report_jobs(&self, states: impl Iterator<Item = &'static str>) {
        let mut counts: [(&str, i64); 3] = [("pending", 0), ("stored", 0), ("failed", 0)];
        for state in states {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
                c.1 += 1;
            }
        }
        for (state, n) in counts {
            self.report_jobs.get_or_create(&State { state }).set(n);
        }
    }

    pub fn report_attempt(&self, outcome: &'static str) {
        self.report_attempts
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    /// One outbound delivery attempt.
    pub fn delivery(&self, outcome: &'static str, took: Duration) {
        self.deliveries.get_or_create(&Outcome { outcome }).inc();
        self.delivery_duration.observe(took.as_secs_f64());
    }

    pub fn outbox_depth(&self, messages: usize) {
        self.outbox_depth
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// An HTTP request answered; `route` is the matched route pattern.
    pub fn http_request(&self, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The upload backlog now: objects waiting and their bytes.
    pub fn upload_backlog(&self, instances: usize, bytes: u64) {
        self.upload_backlog_instances
            .set(i64::try_from(instances).unwrap_or(i64::MAX));
        self.upload_backlog_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A storage commitment request was `accepted` or `refused`.
    pub fn commitment_request(&self, outcome: &'static str) {
        self.commitment_requests
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    /// A storage commitment report was `delivered`, will be retried
    /// (`retry`), `failed` for good, or is `undeliverable`.
    pub fn commitment_report(&self, outcome: &'static str) {
        self.commitment_reports
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    /// A background upload failed and will be retried.
    pub fn upload_retry(&self) {
        self.upload_retries.inc();
    }

    /// Reads what is measured at scrape time: free space on the data
    /// directory and the size of the index. Blocking.
    pub fn sample_disk(&self, data_dir: &Path, index_dir: &Path) {
        if let Ok(free) = crate::ingest::free_space(data_dir) {
            self.free_space.set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        let size = disk::dir_size(index_dir, 0, &mut 0);
        self.index_size.set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// The label of a calling AE title: printable, at most 16 characters,
    /// and one of at most [`MAX_CALLING_AES`] values (then [`OTHER_AE`]).
    fn calling_ae_label(&self, ae: &str) -> String {
        let clean: String = ae
            .trim()
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(16)
            .collect();
        let mut known = self.calling_aes.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(&clean) {
            return clean;
        }
        if known.len() < MAX_CALLING_AES {
            known.insert(clean.clone());
            return clean;
        }
        OTHER_AE.to_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts an association as open while it lives (a handle on the gauge).
#[derive(Debug)]
pub struct OpenAssociation(Gauge);

impl Drop for OpenAssociation {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests;
