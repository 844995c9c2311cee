//! The operator API: what the gateway holds, from the index.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;

use super::error::ApiError;
use crate::app::App;
use crate::index::{InstanceRecord, MediaRecord, StudyRecord, in_viewing_order};
use crate::store::keys::valid_media_name;
use crate::uid::Uid;

mod search;

/// `GET /healthz`: `{"status": "ok"}` while the gateway serves; with an
/// upload backlog (S3, `storage.ack = "journal"`) also its size and whether
/// uploads fail. A failing store is reported, not fatal: instances are
/// still acknowledged from the gateway's disk until `storage.backlog_max`.
/// A stopped ingest journal is fatal: 503 `{"status": "failing"}`.
pub async fn healthz(State(app): State<App>) -> (StatusCode, Json<serde_json::Value>) {
    let mut answer = serde_json::json!({ "status": "ok" });
    if let Some(backlog) = &app.backlog {
        answer["upload_backlog"] = serde_json::json!(backlog.status());
    }
    if app.ingest.journal_failed() {
        // Every instance is refused until a restart: unhealthy, so an
        // orchestrator restarts it (the replay finishes what failed).
        answer["status"] = "failing".into();
        answer["journal"] = "stopped: restart the gateway to replay it".into();
        return (StatusCode::SERVICE_UNAVAILABLE, Json(answer));
    }
    (StatusCode::OK, Json(answer))
}

/// `GET /api/studies`: every study in UID order; with any query parameter
/// (`q`, `patientName`, `patientId`, `accession`, `uid`, `date`, `from`,
/// `to`, `limit`), the `limit` most recently received matches, newest first,
/// with the number of matches in `X-Total-Count`.
pub async fn list_studies(
    State(app): State<App>,
    params: Result<Query<search::Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest {
        what: "query",
        reason: e.body_text(),
    })?;
    let index = app.index.clone();
    if params.is_empty() {
        let studies = tokio::task::spawn_blocking(move || index.studies())
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        return Ok(Json(studies).into_response());
    }
    let filter = search::Filter::parse(&params).map_err(|e| ApiError::BadRequest {
        what: e.what,
        reason: e.reason.into(),
    })?;
    let best = tokio::task::spawn_blocking(move || {
        let mut best = search::Best::new(filter.limit);
        index
            .for_each_study(|s| {
                if filter.matches(&s) {
                    best.offer(s);
                }
            })
            .map(|()| best)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let matched = best.matched;
    Ok((
        [(TOTAL_COUNT, matched.to_string())],
        Json(best.into_sorted()),
    )
        .into_response())
}

/// How many studies a search matched, of which at most `limit` are answered.
const TOTAL_COUNT: header::HeaderName = header::HeaderName::from_static("x-total-count");

/// `GET /api/activity`: recent associations, refusals and per-minute ingest
/// counts (in memory; empty after a restart).
pub async fn activity(State(app): State<App>) -> Json<crate::activity::Snapshot> {
    Json(app.activity.snapshot())
}

/// How long the URL behind a download link on the operator page lives: it
/// is followed at once.
const DOWNLOAD_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// `GET /api/download/{key}`: a redirect (303) to a short-lived signed
/// `/files` URL on this origin for an object of the store, so the operator page's links
/// carry no signature until they are clicked, and a link copied from the
/// page is useless without the operator's access.
pub async fn download(
    State(app): State<App>,
    Path(raw_key): Path<String>,
) -> Result<Response, ApiError> {
    let key = crate::store::ObjectKey::parse(&raw_key).ok_or_else(|| ApiError::BadRequest {
        what: "object key",
        reason: "not a key of this gateway's store".into(),
    })?;
    let signed = app
        .signer
        .file_url(&key, DOWNLOAD_TTL, std::time::SystemTime::now());
    // On the origin the operator reached, not `public_url` (which may be a
    // name only Avara's viewers use); the signature covers the path alone.
    let query = signed.split_once('?').map_or("", |(_, q)| q);
    let url = format!("/files/{}?{query}", key.as_str());
    let mut response = Redirect::to(&url).into_response();
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StudyDetail {
    #[serde(flatten)]
    pub study: StudyRecord,
    pub series: Vec<SeriesDetail>,
    pub media: Vec<MediaRecord>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesDetail {
    pub series_instance_uid: Uid,
    pub modality: Option<String>,
    pub series_description: Option<String>,
    pub series_number: Option<i64>,
    pub instance_count: usize,
    pub instances: Vec<InstanceRecord>,
}

pub async fn get_study(
    State(app): State<App>,
    Path(uid): Path<String>,
) -> Result<Json<StudyDetail>, ApiError> {
    let uid = Uid::parse(&uid).map_err(|e| ApiError::BadRequest {
        what: "Study Instance UID",
        reason: e.to_string(),
    })?;
    let lookup = uid.clone();
    let (study, instances, media) = tokio::task::spawn_blocking(move || {
        let index = &app.index;
        // A study another gateway on the same store received.
        app.discovery.refresh(&app, &lookup);
        let study = index.study(&lookup)?;
        let instances = index.instances_of_study(&lookup)?;
        let media = index.media_of_study(&lookup)?;
        Ok::<_, crate::index::Error>((study, instances, media))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let study = study.ok_or_else(|| ApiError::NotFound(format!("study {uid}")))?;
    Ok(Json(StudyDetail {
        study,
        series: group_by_series(instances),
        media,
    }))
}

/// The study's series in viewing order, each with its instances.
fn group_by_series(instances: Vec<InstanceRecord>) -> Vec<SeriesDetail> {
    in_viewing_order(instances)
        .into_iter()
        .map(|(uid, instances)| {
            let first = &instances[0].tags;
            SeriesDetail {
                series_instance_uid: uid,
                modality: first.modality.clone(),
                series_description: first.series_description.clone(),
                series_number: first.series_number,
                instance_count: instances.len(),
                instances,
            }
        })
        .collect()
}

/// `PUT /api/studies/{study}/media/{fileName}`: keeps a non-DICOM file (PDF,
/// JPEG, PNG, MP4, …) with a known study, typed by the request's
/// `Content-Type`. Streamed to the spool like everything else.
pub async fn put_media(
    State(app): State<App>,
    Path((study, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<MediaRecord>), ApiError> {
    let checked = check_media_put(&app, study, name, &headers).await;
    let (study, name, mime_type) = match checked {
        Ok(checked) => checked,
        Err(refusal) => {
            super::uploads::drain(body, super::uploads::REFUSED_DRAIN_LIMIT).await;
            return Err(refusal);
        }
    };
    let receiving = super::uploads::spool_body(&app, "operator", body).await?;
    let (record, replaced) = app
        .ingest
        .finish_media(receiving, study, name, mime_type, None)
        .await
        .map_err(ApiError::Ingest)?;
    tracing::info!(key = %record.object_key, bytes = record.size, replaced, "media stored");
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(record)))
}

/// What a media PUT must be before its body is read: a valid UID and file
/// name, a media type, a study the gateway knows.
async fn check_media_put(
    app: &App,
    study: String,
    name: String,
    headers: &HeaderMap,
) -> Result<(Uid, String, String), ApiError> {
    let study = Uid::parse(&study).map_err(|e| ApiError::BadRequest {
        what: "Study Instance UID",
        reason: e.to_string(),
    })?;
    if !valid_media_name(&name) {
        return Err(ApiError::BadRequest {
            what: "file name",
            reason: "1–128 of A–Z a–z 0–9 . _ -, not starting with a dot".into(),
        });
    }
    let mime_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.contains('/') && v.len() <= 127)
        .ok_or(ApiError::BadRequest {
            what: "Content-Type",
            reason: "a media type such as application/pdf is required".into(),
        })?
        .to_owned();
    let lookup = study.clone();
    let finder = app.clone();
    let known = tokio::task::spawn_blocking(move || {
        finder.discovery.refresh(&finder, &lookup);
        finder.index.study(&lookup)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    if known.is_none() {
        return Err(ApiError::NotFound(format!("study {study}")));
    }
    Ok((study, name, mime_type))
}

/// `GET /api/reports`: every delivered report and how its fetch went. The
/// presigned URL is a bearer credential: only its scheme and host are shown
/// (`url`: `https://host/…`).
pub async fn list_reports(
    State(app): State<App>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let index = app.index.clone();
    let jobs = tokio::task::spawn_blocking(move || index.report_jobs())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let shown = jobs
        .into_iter()
        .map(|job| {
            let mut v = serde_json::to_value(&job).expect("serialisable");
            if let Some(obj) = v.as_object_mut() {
                obj.remove("presignedUrl");
                obj.insert(
                    "url".into(),
                    crate::reports::fetch::redact_str(&job.presigned_url).into(),
                );
            }
            v
        })
        .collect();
    Ok(Json(shown))
}
