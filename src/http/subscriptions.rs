//! `/api/webhooks`: the operator manages outbound webhook subscriptions
//! (`crate::outbound`). Behind the operator guard. A secret is in an answer
//! only where it was just made (create, rotate), and never in a log line.

use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::app::App;
use crate::index::{self, Index};
use crate::outbound::secret::is_id;
use crate::outbound::{NewSubscription, Patch, SigningSecret, Subscription, SubscriptionView};

/// Largest request body: a subscription is well under a KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// A subscription with the secret just made: the only time it is shown.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WithSecret {
    #[serde(flatten)]
    subscription: SubscriptionView,
    secret: String,
}

impl WithSecret {
    /// The answer, marked for no cache to keep.
    fn answer(status: StatusCode, subscription: &Subscription, now: SystemTime) -> Response {
        let body = Json(WithSecret {
            subscription: subscription.view(now),
            secret: subscription.secret().expose().to_owned(),
        });
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// `POST /api/webhooks` → 201 with the subscription and its secret.
pub async fn create(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request: NewSubscription = read_json(&headers, body).await?;
    let now = SystemTime::now();
    let subscription = request.create(now)?;
    let stored = subscription.clone();
    let added = blocking(&app, move |index| index.add_subscription(&stored)).await?;
    if !added {
        // 128 random bits met an existing id: the random source is broken.
        return Err(ApiError::internal(std::io::Error::other(
            "a new subscription id is already taken",
        )));
    }
    tracing::info!(
        id = %subscription.id,
        name = %subscription.name,
        events = subscription.events.len(),
        active = subscription.active,
        "webhook subscription created"
    );
    Ok(WithSecret::answer(StatusCode::CREATED, &subscription, now))
}

/// `GET /api/webhooks`: every subscription, by id, without secrets.
pub async fn list(State(app): State<App>) -> Result<Json<Vec<SubscriptionView>>, ApiError> {
    let all = blocking(&app, |index| index.subscriptions()).await?;
    let now = SystemTime::now();
    Ok(Json(all.iter().map(|s| s.view(now)).collect()))
}

/// `GET /api/webhooks/{id}`.
pub async fn get(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = known_form(id)?;
    let lookup = id.clone();
    let found = blocking(&app, move |index| index.subscription(&lookup)).await?;
    let subscription = found.ok_or_else(|| not_found(&id))?;
    Ok(Json(subscription.view(SystemTime::now())))
}

/// `PATCH /api/webhooks/{id}`: changes the fields given.
pub async fn update(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = known_form(id)?;
    let patch = read_json::<Patch>(&headers, body).await?.check()?;
    let now = SystemTime::now();
    let lookup = id.clone();
    let updated = blocking(&app, move |index| {
        index.update_subscription(&lookup, |s| s.apply(&patch, now))
    })
    .await?
    .ok_or_else(|| not_found(&id))?;
    tracing::info!(
        id = %updated.id,
        name = %updated.name,
        active = updated.active,
        "webhook subscription updated"
    );
    Ok(Json(updated.view(now)))
}

/// `DELETE /api/webhooks/{id}` → 204.
pub async fn delete(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = known_form(id)?;
    let lookup = id.clone();
    if !blocking(&app, move |index| index.remove_subscription(&lookup)).await? {
        return Err(not_found(&id));
    }
    tracing::info!(%id, "webhook subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/webhooks/{id}/rotate-secret` → 200 with the new secret; the
/// old one keeps signing for [`crate::outbound::SECRET_OVERLAP`].
pub async fn rotate_secret(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = known_form(id)?;
    let secret = SigningSecret::generate()?;
    let now = SystemTime::now();
    let lookup = id.clone();
    let rotated = blocking(&app, move |index| {
        index.update_subscription(&lookup, |s| s.rotate(secret.clone(), now))
    })
    .await?
    .ok_or_else(|| not_found(&id))?;
    tracing::info!(id = %rotated.id, "webhook subscription secret rotated");
    Ok(WithSecret::answer(StatusCode::OK, &rotated, now))
}

/// An id of the form the gateway makes, or 404 (such an id was never
/// given out); it is then safe as an index key and in a log line.
pub(super) fn known_form(id: String) -> Result<String, ApiError> {
    if is_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::NotFound("webhook subscription".into()))
    }
}

pub(super) fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("webhook subscription {id}"))
}

/// The request body as `T` (unknown fields refused), bounded to
/// [`MAX_BODY`]; any refusal is a 400 that says what is wrong. The body
/// must be declared JSON: a web page can make a browser on the gateway's
/// host post a form or `text/plain` to a loopback-only API without asking,
/// but not `application/json`.
pub(super) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        super::uploads::drain(body, super::uploads::REFUSED_DRAIN_LIMIT).await;
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError::from_body(&e, MAX_BODY))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
        what: "request body",
        reason: e.to_string(),
    })
}

pub(super) async fn blocking<T: Send + 'static>(
    app: &App,
    op: impl FnOnce(&Index) -> index::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let index = app.index.clone();
    tokio::task::spawn_blocking(move || op(&index))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}
