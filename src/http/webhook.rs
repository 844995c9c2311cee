//! `POST /webhooks/avara`: verify the raw body, answer a repeated
//! `webhook-id` with the answer it got before, dispatch, remember the answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::app::App;
use crate::index::{ReportInfo, ReportJob, ReportState, StoredAnswer};
use crate::reports;
use crate::webhook::events::{
    Envelope, EphemeralAccess, ReportDelivered, SecondaryCaptureAccess, StudyAccess, StudyRef,
};
use crate::webhook::{handlers, verify};

/// Largest webhook body accepted. Avara's events are a few KiB.
pub const MAX_BODY: usize = 1 << 20;

/// The webhook, counted in the metrics by event type and outcome.
pub async fn avara(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let mut seen = Seen {
        event: "unverified",
        repeated: false,
    };
    let result = handle(&app, headers, body, &mut seen).await;
    let outcome = match &result {
        Ok(_) if seen.repeated => "repeated",
        Ok(_) => "answered",
        Err(ApiError::Signature(_) | ApiError::WebhookNotConfigured) => "unauthenticated",
        Err(e) if e.status().is_client_error() => "refused",
        Err(_) => "failed",
    };
    crate::metrics::get().webhook(seen.event, outcome, started.elapsed());
    result
}

/// What a request turned out to be, for the metrics.
struct Seen {
    /// The event type's label, once the signature is verified.
    event: &'static str,
    /// Answered as before, for a repeated `webhook-id`.
    repeated: bool,
}

async fn handle(
    app: &App,
    headers: HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Result<Response, ApiError> {
    if app.cfg.webhook_keys.is_empty() {
        return Err(ApiError::WebhookNotConfigured);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::from_body(&e, MAX_BODY))?;
    let now = SystemTime::now();
    let header = |name: &'static str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified =
        verify::verify(header, &bytes, &app.cfg.webhook_keys, now).map_err(ApiError::Signature)?;
    let id = verified.id.to_owned();
    seen.event = crate::metrics::webhook_event(&bytes);

    let index = app.index.clone();
    let lookup = id.clone();
    if let Some(answer) = blocking(move || index.webhook_answer(&lookup)).await? {
        tracing::info!(webhook_id = %id, "repeated webhook delivery; answering as before");
        seen.repeated = true;
        return replay(app, answer).await;
    }

    let envelope: Envelope = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
        what: "webhook body",
        reason: e.to_string(),
    })?;
    tracing::info!(webhook_id = %id, event = %envelope.kind, "webhook");
    let at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Signing times are whole seconds, so a recomputed answer is identical
    // (for the local store; S3 URLs are signed at the current time, for what
    // is left until the same expiry).
    let now = UNIX_EPOCH + Duration::from_secs(at);
    let kind = Keep::for_event(&envelope.kind);
    let event = serde_json::to_value(&envelope).expect("serialisable");
    let body = dispatch(app, envelope, now).await?;
    let answer = match kind {
        Keep::Recompute => StoredAnswer {
            at,
            status: 200,
            body: Value::Null,
            event: Some(event),
        },
        Keep::Answer | Keep::Durable => StoredAnswer {
            at,
            status: 200,
            body: serde_json::from_slice(&body).map_err(ApiError::internal)?,
            event: None,
        },
    };
    let index = app.index.clone();
    let durable = kind == Keep::Durable;
    let mine = answer.clone();
    let kept = blocking(move || index.remember_webhook(&id, &answer, durable)).await?;
    if kept == mine {
        return Ok(json_response(StatusCode::OK, body));
    }
    seen.repeated = true;
    replay(app, kept).await // a concurrent delivery of the same id won
}

/// How the answer to an event is kept for repeated deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Side effects: the answer is stored and flushed before it is given.
    Durable,
    /// Read-only, small: stored; a crash may lose it, and a repeat then gets
    /// an equivalent answer.
    Answer,
    /// Read-only with signed URLs (large): the event is stored and the
    /// answer computed again, at the original time, for a repeat.
    Recompute,
}

impl Keep {
    fn for_event(kind: &str) -> Keep {
        match kind {
            "study.access_requested"
            | "ephemeral.access_requested"
            | "secondary_capture.access_requested" => Keep::Recompute,
            "report.delivered" => Keep::Durable,
            _ => Keep::Answer,
        }
    }
}

/// The answer given before to the same `webhook-id`.
async fn replay(app: &App, answer: StoredAnswer) -> Result<Response, ApiError> {
    let body = match answer.event {
        Some(event) => {
            let envelope: Envelope = serde_json::from_value(event).map_err(ApiError::internal)?;
            let at = UNIX_EPOCH
                .checked_add(Duration::from_secs(answer.at))
                .ok_or_else(|| {
                    ApiError::internal(std::io::Error::other("stored time overflows"))
                })?;
            dispatch(app, envelope, at).await?
        }
        None => serde_json::to_vec(&answer.body).map_err(ApiError::internal)?,
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    Ok(json_response(status, body))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

/// Answers an event, serialised.
async fn dispatch(app: &App, envelope: Envelope, now: SystemTime) -> Result<Vec<u8>, ApiError> {
    Ok(match answer(app, envelope, now).await? {
        Answer::Value(v) => serde_json::to_vec(&v).map_err(ApiError::internal)?,
        Answer::Bytes(b) => b,
    })
}

/// Small answers are built as values; large ones serialised directly.
enum Answer {
    Value(Value),
    Bytes(Vec<u8>),
}

impl From<Value> for Answer {
    fn from(v: Value) -> Answer {
        Answer::Value(v)
    }
}

impl From<Vec<u8>> for Answer {
    fn from(b: Vec<u8>) -> Answer {
        Answer::Bytes(b)
    }
}

async fn answer(app: &App, envelope: Envelope, now: SystemTime) -> Result<Answer, ApiError> {
    let parse = |what| {
        move |e: serde_json::Error| ApiError::BadRequest {
            what,
            reason: e.to_string(),
        }
    };
    Ok(match envelope.kind.as_str() {
        "study.access_requested" => {
            let event: StudyAccess = serde_json::from_value(envelope.data)
                .map_err(parse("study.access_requested data"))?;
            let app = app.clone();
            blocking(move || handlers::study_access(&app, &event, now))
                .await?
                .into()
        }
        "secondary_capture.access_requested" => {
            let event: SecondaryCaptureAccess = serde_json::from_value(envelope.data)
                .map_err(parse("secondary_capture.access_requested data"))?;
            let app = app.clone();
            blocking(move || handlers::secondary_capture_access(&app, &event, now))
                .await?
                .into()
        }
        "ephemeral.access_requested" => {
            let event: EphemeralAccess = serde_json::from_value(envelope.data)
                .map_err(parse("ephemeral.access_requested data"))?;
            let app = app.clone();
            blocking(move || handlers::ephemeral_access(&app, &event, now))
                .await?
                .into()
        }
        // Soft events: whatever goes wrong, the answer is an empty enrichment.
        "patient_study.enrichment_requested" => {
            let Ok(event) = serde_json::from_value::<StudyRef>(envelope.data) else {
                return Ok(json!({}).into());
            };
            let app = app.clone();
            blocking(move || handlers::patient_study_enrichment(&app, &event))
                .await
                .unwrap_or_else(|_| json!({}))
                .into()
        }
        "clinical_context.enrichment_requested" => {
            let Ok(event) = serde_json::from_value::<StudyRef>(envelope.data) else {
                return Ok(json!({}).into());
            };
            let app = app.clone();
            blocking(move || handlers::clinical_context(&app, &event))
                .await
                .unwrap_or_else(|_| json!({}))
                .into()
        }
        "modality_worklist.requested" => json!({
            "authorized": false,
            "items": [],
            "error": "no modality worklist source is configured on this gateway",
        })
        .into(),
        "report.delivered" => {
            let event: ReportDelivered =
                serde_json::from_value(envelope.data).map_err(parse("report.delivered data"))?;
            report_delivered(app, event).await?.into()
        }
        kind => json!({
            "authorized": false,
            "success": false,
            "error": format!("event type {kind:?} is not supported by this gateway"),
        })
        .into(),
    })
}

/// Records the job durably, wakes the worker, and answers at once.
async fn report_delivered(app: &App, event: ReportDelivered) -> Result<Value, ApiError> {
    let bad = |reason: &str| ApiError::BadRequest {
        what: "report.delivered data",
        reason: reason.to_owned(),
    };
    let id_ok = (1..=64).contains(&event.report_id.len())
        && event
            .report_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(bad("reportId must be 1–64 of A–Z a–z 0–9 _ -"));
    }
    if !(event.presigned_url.starts_with("https://") || event.presigned_url.starts_with("http://"))
    {
        return Err(bad("presignedUrl is not an http(s) URL"));
    }
    let now = reports::unix_now();
    let job = ReportJob {
        report: ReportInfo {
            report_id: event.report_id,
            is_critical: event.is_critical,
            plain_text: event.plain_text,
        },
        study_id: event.study_id,
        study_instance_uid: event.study_instance_uid,
        presigned_url: event.presigned_url,
        received_at: now,
        deadline: now.saturating_add(reports::URL_LIFETIME.as_secs()),
        next_attempt: now,
        attempts: 0,
        state: ReportState::Pending,
        last_error: None,
        object_key: None,
    };
    if job.report.is_critical {
        tracing::warn!(report_id = %job.report.report_id, study_id = ?job.study_id, "CRITICAL report delivered");
    }
    let index = app.index.clone();
    let recorded = blocking(move || index.add_report_job(&job)).await?;
    app.reports.notify_one();
    tracing::info!(report_id = %recorded.report.report_id, state = ?recorded.state, "report delivery recorded");
    Ok(json!({ "success": true }))
}

async fn blocking<T, E, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
