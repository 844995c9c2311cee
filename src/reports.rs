//! Delivered reports: `report.delivered` is recorded durably and
//! acknowledged at once; this worker fetches the PDF from its presigned URL
//! (time-outs, retries with back-off until the URL's lifetime is spent),
//! checks it is a PDF within the size limit, and keeps it as media of the
//! study together with the report's id, criticality and text. Jobs survive a
//! restart: the worker picks up every pending one when it starts.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::index::{ReportJob, ReportState};
use crate::uid::Uid;

/// Largest report accepted.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;
/// How long Avara's presigned URLs live, when nothing says otherwise.
pub const URL_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("study not known yet (no studyInstanceUid, and studyId was never paired)")]
    UnknownStudy,
    #[error("fetch failed: {0}")]
    Fetch(String),
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
pub async fn run(app: App, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let jobs = match blocking(&app, |index| index.report_jobs()).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "cannot list report jobs");
                Vec::new()
            }
        };
        let mut next = None::<u64>;
        for job in jobs.into_iter().filter(|j| j.state == ReportState::Pending) {
            if cancel.is_cancelled() {
                return;
            }
            if job.next_attempt <= unix_now() {
                let job = attempt(&app, job, &cancel).await;
                if job.state == ReportState::Pending {
                    next = Some(next.map_or(job.next_attempt, |n| n.min(job.next_attempt)));
                }
            } else {
                next = Some(next.map_or(job.next_attempt, |n| n.min(job.next_attempt)));
            }
        }
        let wait = next.map_or(Duration::from_secs(3600), |t| {
            Duration::from_secs(t.saturating_sub(unix_now()))
        });
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// One try at a job; returns it as recorded afterwards.
async fn attempt(app: &App, mut job: ReportJob, cancel: &CancellationToken) -> ReportJob {
    let id = job.report.report_id.clone();
    let result = tokio::select! {
        r = fetch_and_store(app, &job) => r,
        () = cancel.cancelled() => return job,
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
        Err(e) if now + backoff(job.attempts) > job.deadline => {
            tracing::error!(report_id = %id, attempts = job.attempts, error = %e, "report could not be fetched before its URL expired; giving up");
            job.state = ReportState::Failed;
            job.last_error = Some(e.to_string());
        }
        Err(e) => {
            job.next_attempt = now + backoff(job.attempts);
            tracing::warn!(report_id = %id, attempts = job.attempts, error = %e, retry_in_s = backoff(job.attempts), "report fetch failed; retrying");
            job.last_error = Some(e.to_string());
        }
    }
    let record = job.clone();
    if let Err(e) = blocking(app, move |index| index.put_report_job(&record)).await {
        tracing::error!(report_id = %id, error = %e, "cannot record the report job's state");
    }
    job
}

async fn fetch_and_store(app: &App, job: &ReportJob) -> Result<crate::store::ObjectKey, Error> {
    let study = resolve_study(app, job).await?;
    let mut receiving = app.ingest.begin_upload("avara-report").await?;
    // The download runs on a blocking thread and hands over chunks, so memory
    // stays at a few chunks whatever the PDF's size.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
    let url = job.presigned_url.clone();
    let download = tokio::task::spawn_blocking(move || download(&url, tx));
    let mut first = true;
    while let Some(chunk) = rx.recv().await {
        if first && !chunk.starts_with(b"%PDF-") {
            return Err(Error::NotPdf);
        }
        first = false;
        receiving.append(&chunk).await?;
    }
    download.await.map_err(|e| Error::Fetch(e.to_string()))??;
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

fn download(url: &str, tx: mpsc::Sender<Vec<u8>>) -> Result<(), Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| Error::Fetch(e.to_string()))?;
    if !response.status().is_success() {
        return Err(Error::Fetch(format!("HTTP {}", response.status())));
    }
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(MAX_REPORT_BYTES + 1)
        .reader();
    let mut total = 0u64;
    loop {
        let mut chunk = vec![0u8; 256 * 1024];
        let n = reader
            .read(&mut chunk)
            .map_err(|e| Error::Fetch(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        total += n as u64;
        if total > MAX_REPORT_BYTES {
            return Err(Error::TooLarge);
        }
        chunk.truncate(n);
        if tx.blocking_send(chunk).is_err() {
            return Ok(()); // the receiving side gave up (not a PDF, disk, shutdown)
        }
    }
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
