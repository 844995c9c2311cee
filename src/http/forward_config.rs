//! `/api/forward/config`, `/api/forward/destinations/{ae}` and
//! `/api/forward/rules/{id}`: forwarding destinations and rules created,
//! replaced and deleted on a running gateway (`crate::forward::managed`),
//! behind the operator guard. Bodies are JSON, bounded as the other
//! operator writes are (`subscriptions::read_json`).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::subscriptions::read_json;
use crate::app::App;
use crate::config::ForwardRule;
use crate::forward::managed::{ConfigView, DestinationBody, DestinationView, RuleView};

fn created(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// `GET /api/forward/config`
pub async fn show(State(app): State<App>) -> Json<ConfigView> {
    Json(app.forward.config_view())
}

/// `PUT /api/forward/destinations/{ae}` → 201 created, 200 replaced.
pub async fn put_destination(
    State(app): State<App>,
    Path(ae): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<DestinationView>), ApiError> {
    let body: DestinationBody = read_json(&headers, body).await?;
    let (new, view) = app.forward.put_destination(&app.index, &ae, body).await?;
    Ok((created(new), Json(view)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    #[serde(default)]
    purge: bool,
}

#[derive(Debug, Serialize)]
pub struct Deleted {
    deleted: String,
    /// Queued items deleted with it.
    purged: usize,
}

/// `DELETE /api/forward/destinations/{ae}[?purge=true]`
pub async fn delete_destination(
    State(app): State<App>,
    Path(ae): Path<String>,
    purge: Result<Query<Purge>, QueryRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let Query(Purge { purge }) = purge.map_err(|e| ApiError::BadRequest {
        what: "query",
        reason: e.body_text(),
    })?;
    let purged = app
        .forward
        .delete_destination(&app.index, &ae, purge)
        .await?;
    Ok(Json(Deleted {
        deleted: ae.trim().to_owned(),
        purged,
    }))
}

/// `PUT /api/forward/rules/{id}` → 201 created, 200 replaced.
pub async fn put_rule(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    let rule: ForwardRule = read_json(&headers, body).await?;
    let (new, view) = app.forward.put_rule(&app.index, &id, rule).await?;
    Ok((created(new), Json(view)))
}

/// `DELETE /api/forward/rules/{id}` → 204.
pub async fn delete_rule(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.forward.delete_rule(&app.index, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
