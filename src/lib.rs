//! dicom-gateway: a DICOM storage gateway. Modalities push studies over DICOM
//! (C-STORE); every instance lands byte-exact in an object store, indexed by
//! Study / Series / SOP Instance UID in sled; an HTTP side serves operators
//! (and, later, Avara's webhook).
//!
//! [`run`] wires the parts together; `main.rs` only parses the command line,
//! binds the listeners and calls it.

pub mod activity;
pub mod app;
pub mod cli;
pub mod commitment;
pub mod config;
pub mod dicom;
pub mod discovery;
pub mod forward;
pub mod healthcheck;
pub mod http;
pub mod index;
pub mod ingest;
pub mod maintenance;
pub mod metrics;
pub mod outbound;
pub mod reports;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod uid;
pub mod webhook;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::dicom::DicomServer;
use crate::discovery::Discovery;
use crate::index::Index;
use crate::ingest::Ingest;
use crate::store::BlobStore;
use crate::store::backlog::Backlog;
use crate::store::signer::UrlSigner;
use crate::webhook::views::StudyViews;

/// Studies whose access answers are kept ready (a few hundred KB each for
/// a 1000-instance study).
const STUDY_VIEWS: usize = 32;

/// The bound sockets the gateway serves on.
pub struct Listeners {
    pub dicom: TcpListener,
    pub http: TcpListener,
    /// The DICOM TLS listener, when `dicom_tls_listen` is set.
    pub dicom_tls: Option<TcpListener>,
}

/// Waits for a task that may not exist (then for ever).
async fn join_optional<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// The outbound webhook tasks: stable-study detection and delivery.
fn outbound_tasks(
    app: &App,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let cfg = &app.cfg;
    let schedule = cfg
        .retry_schedule()
        .map_err(|e| anyhow::anyhow!("webhook_retry_schedule: {e}"))?;
    let sender = outbound::delivery::Sender::new(
        cfg.webhook_allow_private,
        std::time::Duration::from_secs(cfg.webhook_timeout),
    );
    let settings = outbound::worker::Settings {
        schedule,
        concurrency: cfg.webhook_concurrency,
        drain: cfg.shutdown_grace(),
    };
    Ok(vec![
        tokio::spawn(outbound::stable::run(app.clone(), stop.clone())),
        tokio::spawn(outbound::worker::run(
            app.index.clone(),
            sender,
            settings,
            stop.clone(),
        )),
    ])
}

/// Opens the store and index, serves both listeners until `cancel` fires (or
/// one server fails), drains in-flight work, and flushes the index.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("data directory {} is unusable", cfg.data_dir.display()))?;
    let store = BlobStore::open(&cfg)
        .await
        .context("the object store is unusable")?;
    tracing::info!(store = %store.describe(), "object store");
    let index = Index::open(&cfg.index_dir()).context("cannot open the index")?;
    // Before the journal replays: replayed instances are matched too (the
    // file's rules and those stored through the operator API).
    let forwarding = Arc::new(
        forward::Forwarding::load(&cfg, &index)
            .context("reading the forwarding configuration stored through the API")?,
    );
    index.set_forward_routes(forwarding.routes());
    // S3 with `storage.ack = "journal"`: acknowledged instances wait in
    // <data_dir>/pending/ for their upload (the ingest journal feeds it).
    let backlog = match cfg.upload_backlog() {
        Some((wait, max)) => Some(
            Backlog::open(&cfg.pending_dir(), store.clone(), wait, max)
                .context("the upload backlog directory is unusable")?,
        ),
        None => None,
    };
    reports::retention::prune(&index, reports::unix_now())
        .context("pruning webhook answers and finished report jobs")?;
    let ingest =
        Ingest::start(&cfg, store.clone(), index.clone(), backlog.clone()).with_context(|| {
            format!(
                "cannot start ingest in {} (its spool and journal)",
                cfg.data_dir.display()
            )
        })?;
    ingest
        .recover()
        .await
        .context("repairing replacements a crash interrupted")?;
    let signer = UrlSigner::load_or_create(&cfg.url_signing_keys_path(), &cfg.public_url)
        .context("URL signing keys")?;
    let discovery = Arc::new(Discovery::new(
        &store,
        std::time::Duration::from_secs(cfg.storage.relist_after),
    ));
    let app = App {
        cfg: Arc::clone(&cfg),
        index: index.clone(),
        store,
        ingest: Arc::new(ingest),
        signer,
        views: Arc::new(StudyViews::new(STUDY_VIEWS)),
        discovery,
        reports: Arc::new(tokio::sync::Notify::new()),
        activity: activity::Activity::new(),
        backlog: backlog.clone(),
        forward: forwarding,
    };

    for (service, listener) in [("dicom", &listeners.dicom), ("http", &listeners.http)] {
        tracing::info!(service, addr = %listener.local_addr()?, "listening");
    }
    let tls = tls::Servers::start(&cfg, listeners.dicom_tls.as_ref())
        .context("TLS settings (dicom_tls_*, http_tls_*)")?;
    match cfg.webhook_keys.len() {
        0 => tracing::warn!(
            "no AVARA_WEBHOOK_KEY configured: the Avara webhook refuses every request (503)"
        ),
        n => tracing::info!(keys = n, "Avara webhook enabled"),
    }
    if cfg.api_token.is_none() {
        tracing::info!("no API token configured: the operator API answers loopback clients only");
    }

    let worker_stop = CancellationToken::new();
    let report_worker = tokio::spawn(reports::run(
        app.clone(),
        Arc::clone(&app.reports),
        worker_stop.clone(),
    ));
    // Webhook answers and finished report jobs are forgotten while running.
    let pruner = tokio::spawn(reports::retention::run(index.clone(), worker_stop.clone()));
    let outbound = outbound_tasks(&app, &worker_stop)?;
    let uploads = backlog.as_ref().map(|b| b.spawn(worker_stop.clone()));
    // Storage commitment: reports owed on new associations (also those a
    // restart finds pending).
    let commitments = commitment::Commitments::new(index.clone(), app.store.clone());
    let commitment_worker = tokio::spawn(commitment::worker::run(
        Arc::clone(&commitments),
        Arc::clone(&cfg),
        commitment::parse_schedule(&cfg.storage_commitment_retry)
            .map_err(|e| anyhow::anyhow!("storage_commitment_retry: {e}"))?,
        worker_stop.clone(),
    ));
    let forwarders = forward::spawn(&app, &worker_stop);
    let dicom = DicomServer::new(&cfg, Arc::clone(&app.ingest), app.activity.clone())
        .with_commitments(commitments);
    let dicom = Arc::new(match &tls.dicom {
        Some(config) => dicom.with_tls(Arc::clone(config)),
        None => dicom,
    });
    let mut dicom_tls_task = listeners
        .dicom_tls
        .map(|l| tokio::spawn(Arc::clone(&dicom).serve_tls(l, cancel.clone())));
    let mut dicom_task = tokio::spawn(dicom.serve(listeners.dicom, cancel.clone()));
    let mut http_task = tokio::spawn(http::serve(
        listeners.http,
        app.clone(),
        cancel.clone(),
        cfg.shutdown_grace(),
        tls.http.clone(),
    ));

    // Any server ending early is a failure that takes the others down.
    let first = tokio::select! {
        r = &mut dicom_task => ("dicom", r),
        r = &mut http_task => ("http", r),
        r = join_optional(&mut dicom_tls_task) => ("dicom-tls", r),
    };
    cancel.cancel();
    let mut results = vec![first];
    if results[0].0 != "dicom" {
        results.push(("dicom", dicom_task.await));
    }
    if results[0].0 != "http" {
        results.push(("http", http_task.await));
    }
    if let (true, Some(task)) = (results[0].0 != "dicom-tls", dicom_tls_task) {
        results.push(("dicom-tls", task.await));
    }
    let mut failure = None;
    for (name, result) in results {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(anyhow::anyhow!("{name} server failed: {e}")),
            Err(e) => failure = Some(anyhow::anyhow!("{name} server panicked: {e}")),
        }
    }

    // Every association and request is done; a report fetch in progress is
    // left pending and resumed at the next start.
    worker_stop.cancel();
    let _ = report_worker.await;
    let _ = pruner.await;
    let _ = commitment_worker.await;
    for task in outbound {
        let _ = task.await;
    }
    // Forwarding lanes finish the instance they are sending, within the
    // grace period; what is left stays queued.
    let _ = tokio::time::timeout(cfg.shutdown_grace(), futures::future::join_all(forwarders)).await;
    // Uploads in flight get the grace period; what is left stays pending.
    if let Some(uploads) = uploads {
        let _ = tokio::time::timeout(cfg.shutdown_grace(), uploads).await;
    }
    // Every association and request is done (each commit flushed the index
    // before it was acknowledged); one last flush for good measure.
    drop(app);
    index.flush().context("final index flush")?;
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}
