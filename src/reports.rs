//! Delivered reports: `report.delivered` is recorded durably and
//! acknowledged at once; this worker fetches the PDF from its presigned URL
//! (time-outs, retries with back-off until the URL's lifetime is spent),
//! checks it is a PDF within the size limit, and keeps it as media of the
//! study together with the report's id, criticality and text. Jobs survive a
//! restart: the worker picks up every pending one when it starts.
//!
//! The URL comes from the Internet and is fetched from inside the site, so
//! [`fetch`] refuses internal targets (a permanent failure, not retried) and
//! never lets the URL reach a log line or an error text. At most
//! `report_fetch_concurrency` fetches run at once, each within a time limit,
//! so one slow host cannot hold back the others past their URL's lifetime.
//! [`retention`] forgets finished jobs and old webhook answers while the
//! gateway runs.

pub mod address;
pub mod fetch;
pub mod retention;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::fetch::Fetcher;
use crate::app::App;
use crate::index::{ReportJob, ReportState};
use crate::uid::Uid;

/// Largest report accepted.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;
/// How long Avara's presigned URLs live, when nothing says otherwise.
pub const URL_LIFETIME: Duration = Duration::from_secs(3600);
/// One attempt, fetch and storing included (the fetch itself is limited to
/// [`fetch::FETCH_LIMIT`]).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("study not known yet (no studyInstanceUid, and studyId was never paired)")]
    UnknownStudy,
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// The URL may not be fetched at all: permanent, never retried.
    #[error("refused: {0}")]
    Refused(String),
    #[error("not a PDF")]
    NotPdf,
    #[error("larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    #[error("storing: {0}")]
    Store(#[from] crate::ingest::Error),
    #[error("index: {0}")]
    Index(#[from] crate::index::Error),
    #[error("worker task: {0}")]
    Task(String),
}

impl Error {
    /// Whether trying again could help.
    fn is_permanent(&self) -> bool {
        matches!(self, Error::Refused(_))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Wait before attempt `n + 1`: 1 s, 2 s, 4 s, … up to a minute.
fn backoff(attempts: u32) -> u64 {
    1u64 << attempts.min(6)
}

/// Runs until `cancel`; `wake` is notified when a new job was recorded.
/// Due jobs are attempted concurrently, at most `report_fetch_concurrency`
/// at a time; a job is never attempted twice at once.
pub async fn run(app: App, wake: Arc<Notify>, cancel: CancellationToken) {
    let fetcher = Fetcher::new(app.cfg.report_fetch_allow_private);
    let slots = Arc::new(Semaphore::new(app.cfg.report_fetch_concurrency.max(1)));
    let mut running = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        let jobs = match blocking(&app, |index| index.report_jobs()).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "cannot list report jobs");
                Vec::new()
            }
        };
        crate::metrics::get().report_jobs(jobs.iter().map(|j| state_label(j.state)));
        let busy: HashSet<String> = in_flight.values().cloned().collect();
        let mut next = None::<u64>;
        for job in jobs.into_iter().filter(|j| j.state == ReportState::Pending) {
            if busy.contains(&job.report.report_id) {
                continue;
            }
            if job.next_attempt > unix_now() {
                next = Some(next.map_or(job.next_attempt, |n| n.min(job.next_attempt)));
                continue;
            }
            // All slots taken: a finishing attempt wakes the loop.
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                break;
            };
            let id = job.report.report_id.clone();
            let (app, fetcher, cancel) = (app.clone(), fetcher.clone(), cancel.clone());
            let task = running.spawn(async move {
                attempt(&app, &fetcher, job, &cancel).await;
                drop(slot);
            });
            in_flight.insert(task.id(), id);
        }
        let wait = next.map_or(Duration::from_secs(3600), |t| {
            Duration::from_secs(t.saturating_sub(unix_now()))
        });
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            Some(done) = running.join_next_with_id() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(e) => {
                        tracing::error!(error = %e, "a report attempt panicked");
                        e.id()
                    }
                };
                in_flight.remove(&task);
            }
            () = cancel.cancelled() => break,
        }
    }
    // Each attempt sees the cancellation and returns, its job left pending.
    while running.join_next().await.is_some() {}
}

/// A job state's metrics label.
fn state_label(state: ReportState) -> &'static str {
    match state {
        ReportState::Pending => "pending",
        ReportState::Stored => "stored",
        ReportState::Failed => "failed",
    }
}

/// One try at a job; records how it went.
async fn attempt(app: &App, fetcher: &Fetcher, mut job: ReportJob, cancel: &CancellationToken) {
    let id = job.report.report_id.clone();
    // Scheme and host only: the rest of the URL is a credential.
    let host = fetch::redact_str(&job.presigned_url);
    let result = tokio::select! {
        r = tokio::time::timeout(ATTEMPT_LIMIT, fetch_and_store(app, fetcher, &job)) => {
            r.unwrap_or_else(|_| Err(Error::Fetch(format!("{host}: over {ATTEMPT_LIMIT:?}"))))
        }
        () = cancel.cancelled() => return,
    };
    job.attempts += 1;
    let now = unix_now();
    match result {
        Ok(key) => {
            tracing::info!(report_id = %id, key = %key, critical = job.report.is_critical, "report stored");
            job.state = ReportState::Stored;
            job.object_key = Some(key);
            job.last_error = None;
        }
        Err(e) if e.is_permanent() => {
            tracing::error!(report_id = %id, url = %host, error = %e, "report URL refused; not fetching it");
            job.state = ReportState::Failed;
            job.last_error = Some(e.to_string());
        }
        Err(e) if now + backoff(job.attempts) > job.deadline => {
            tracing::error!(report_id = %id, url = %host, attempts = job.attempts, error = %e, "report could not be fetched before its URL expired; giving up");
            job.state = ReportState::Failed;
            job.last_error = Some(e.to_string());
        }
        Err(e) => {
            job.next_attempt = now + backoff(job.attempts);
            tracing::warn!(report_id = %id, url = %host, attempts = job.attempts, error = %e, retry_in_s = backoff(job.attempts), "report fetch failed; retrying");
            job.last_error = Some(e.to_string());
        }
    }
    let outcome = match job.state {
        ReportState::Pending => "retry",
        state => state_label(state),
    };
    crate::metrics::get().report_attempt(outcome);
    if let Err(e) = blocking(app, move |index| index.put_report_job(&job)).await {
        tracing::error!(report_id = %id, error = %e, "cannot record the report job's state");
    }
}

async fn fetch_and_store(
    app: &App,
    fetcher: &Fetcher,
    job: &ReportJob,
) -> Result<crate::store::ObjectKey, Error> {
    let study = resolve_study(app, job).await?;
    let mut receiving = app.ingest.begin_upload("avara-report").await?;
    // The download runs on a blocking thread and hands over chunks, so memory
    // stays at a few chunks whatever the PDF's size.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let url = job.presigned_url.clone();
    let fetcher = fetcher.clone();
    let download = tokio::task::spawn_blocking(move || {
        fetcher.fetch(&url, |chunk| tx.blocking_send(chunk).is_ok())
    });
    let mut first = true;
    while let Some(chunk) = rx.recv().await {
        if first && !chunk.starts_with(b"%PDF-") {
            return Err(Error::NotPdf);
        }
        first = false;
        receiving.append(&chunk).await?;
    }
    download.await.map_err(|e| Error::Task(e.to_string()))??;
    if first {
        return Err(Error::NotPdf);
    }
    let name = format!("report-{}.pdf", job.report.report_id);
    let (record, _) = app
        .ingest
        .finish_media(
            receiving,
            study,
            name,
            "application/pdf".into(),
            Some(job.report.clone()),
        )
        .await?;
    Ok(record.object_key)
}

/// From the event's Study Instance UID, or from the pairing an earlier
/// access request made for its `studyId`; the study must be here.
async fn resolve_study(app: &App, job: &ReportJob) -> Result<Uid, Error> {
    let (given, study_id) = (job.study_instance_uid.clone(), job.study_id.clone());
    // On a shared store the study may have reached another gateway.
    if let Some(uid) = given.as_deref().and_then(|u| Uid::parse(u).ok()) {
        let app = app.clone();
        tokio::task::spawn_blocking(move || app.discovery.refresh(&app, &uid))
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
    }
    blocking(app, move |index| {
        let uid = match given.as_deref().and_then(|u| Uid::parse(u).ok()) {
            Some(uid) => Some(uid),
            None => match &study_id {
                Some(id) => index.avara_study(id)?,
                None => None,
            },
        };
        Ok(match uid {
            Some(uid) if index.study(&uid)?.is_some() => Some(uid),
            _ => None,
        })
    })
    .await?
    .ok_or(Error::UnknownStudy)
}

async fn blocking<T, F>(app: &App, f: F) -> Result<T, Error>
where
    F: FnOnce(&crate::index::Index) -> Result<T, crate::index::Error> + Send + 'static,
    T: Send + 'static,
{
    let index = app.index.clone();
    Ok(tokio::task::spawn_blocking(move || f(&index))
        .await
        .map_err(|e| Error::Task(e.to_string()))??)
}
