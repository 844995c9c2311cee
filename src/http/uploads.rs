//! `PUT /uploads/{study}[/{series}/{sop}]?exp&kid&sig`: a secondary capture
//! from the viewer, authorised by the URL handed out for
//! `secondary_capture.access_requested`, streamed to the spool and taken
//! through the same ingest path as a C-STORE.

use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use futures::StreamExt;
use serde_json::json;

use super::error::ApiError;
use crate::app::App;
use crate::index::PutOutcome;
use crate::ingest::{Check, Receiving};
use crate::store::signer::{Signature, UploadBinding};

/// The upload route, counted in the metrics by outcome.
pub async fn put_upload(
    State(app): State<App>,
    Path(raw): Path<String>,
    signature: Result<Query<Signature>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let result = upload(app, raw, signature, body).await;
    let outcome = match &result {
        Ok((_, Json(answer))) if answer["replaced"] == true => "replaced",
        Ok(_) => "stored",
        Err(ApiError::Forbidden) => "forbidden",
        Err(e) if e.status().is_client_error() => "refused",
        Err(_) => "failed",
    };
    crate::metrics::get().upload(outcome);
    result
}

async fn upload(
    app: App,
    raw: String,
    signature: Result<Query<Signature>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // A malformed query (e.g. an `exp` past u64) is refused like a bad signature.
    let authorised = signature.ok().and_then(|Query(signature)| {
        let binding = UploadBinding::parse(&raw)?;
        match app
            .signer
            .verify_upload(&binding, &signature, SystemTime::now())
        {
            Ok(_) => Some(binding),
            Err(refusal) => {
                tracing::debug!(%refusal, "upload URL refused");
                None
            }
        }
    });
    let Some(binding) = authorised else {
        drain(body, REFUSED_DRAIN_LIMIT).await;
        return Err(ApiError::Forbidden);
    };
    let receiving = spool_body(&app, crate::ingest::duplicates::UPLOAD_SOURCE, body).await?;
    let check = Check {
        study: Some(binding.study.clone()),
        series: binding.instance.as_ref().map(|(series, _)| series.clone()),
        sop_instance: binding.instance.as_ref().map(|(_, sop)| sop.clone()),
        sop_class: None,
    };
    let stored = app
        .ingest
        .finish(receiving, check)
        .await
        .map_err(ApiError::Ingest)?;
    let r = &stored.record;
    tracing::info!(sop_instance_uid = %r.sop_instance_uid, study = %r.study_instance_uid, bytes = r.size, "upload stored");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "stored": true,
            "studyInstanceUid": r.study_instance_uid,
            "seriesInstanceUid": r.series_instance_uid,
            "sopInstanceUid": r.sop_instance_uid,
            "size": r.size,
            "replaced": !matches!(stored.outcome, PutOutcome::Added),
        })),
    ))
}

/// Streams a request body into a new spool file, within the instance size
/// limit. On any error the partial spool file is removed (dropped).
///
/// The spool file and its write buffers are taken only once the first
/// byte of the body has arrived: a client that sends headers and then
/// nothing costs no more than its connection.
pub(super) async fn spool_body(app: &App, source: &str, body: Body) -> Result<Receiving, ApiError> {
    let mut stream = body.into_data_stream();
    // No length limit wraps this body (ingest enforces the instance size),
    // so the limit given here is never reported.
    let broken = |e: axum::Error| ApiError::from_body(&e, usize::MAX);
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(broken)?;
        if !chunk.is_empty() {
            first = Some(chunk);
            break;
        }
    }
    let mut receiving = app
        .ingest
        .begin_upload(source)
        .await
        .map_err(ApiError::Ingest)?;
    let Some(first) = first else {
        return Ok(receiving);
    };
    let mut next = Some(Ok(first));
    while let Some(chunk) = next {
        let chunk = chunk.map_err(broken)?;
        crate::metrics::get().received("http", chunk.len());
        if let Err(e) = receiving.append(&chunk).await {
            drain_stream(stream, DRAIN_LIMIT).await;
            return Err(ApiError::Ingest(e));
        }
        next = stream.next().await;
    }
    Ok(receiving)
}

/// How much of a refused body is read before answering.
const DRAIN_LIMIT: usize = 16 << 20;
/// How much of a body refused before it was read (no such study, a bad
/// signature) is read before answering.
pub(super) const REFUSED_DRAIN_LIMIT: usize = 1 << 20;

/// Reads and drops at most `limit` bytes of a body that is refused, so a
/// client still sending it gets the answer rather than a reset connection.
pub(super) async fn drain(body: Body, limit: usize) {
    drain_stream(body.into_data_stream(), limit).await
}

async fn drain_stream(mut stream: axum::body::BodyDataStream, limit: usize) {
    let mut drained = 0;
    while let Some(Ok(chunk)) = stream.next().await {
        drained += chunk.len();
        if drained > limit {
            break;
        }
    }
}
