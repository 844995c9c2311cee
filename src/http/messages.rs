//! `/api/webhooks/{id}/messages`: what a subscription was sent, how each
//! attempt went, and redelivery of one message (same `webhook-id`).
//! Behind the operator guard, like the subscriptions.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::subscriptions::{blocking, known_form, not_found};
use crate::app::App;
use crate::outbound::MessageView;

/// Messages listed when no `limit` is given, and the most that can be.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Messages {
    messages: Vec<MessageView>,
}

/// `GET /api/webhooks/{id}/messages[?limit=N]`: the most recent messages,
/// newest first, pending and finished.
pub async fn list(
    State(app): State<App>,
    Path(id): Path<String>,
    listing: Result<Query<Listing>, QueryRejection>,
) -> Result<Json<Messages>, ApiError> {
    let id = known_form(id)?;
    let Query(listing) = listing.map_err(|e| ApiError::BadRequest {
        what: "query",
        reason: e.body_text(),
    })?;
    let limit = listing.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let lookup = id.clone();
    let (found, messages) = blocking(&app, move |index| {
        let found = index.subscription(&lookup)?.is_some();
        Ok((found, index.messages(&lookup, limit)?))
    })
    .await?;
    if !found {
        return Err(not_found(&id));
    }
    Ok(Json(Messages {
        messages: messages.iter().map(|m| m.view()).collect(),
    }))
}

/// `POST /api/webhooks/{id}/messages/{msg}/redeliver` → 202: the message
/// is queued again, with the same `webhook-id`, for a new run of the retry
/// schedule.
pub async fn redeliver(
    State(app): State<App>,
    Path((id, message)): Path<(String, String)>,
) -> Result<(StatusCode, Json<MessageView>), ApiError> {
    let id = known_form(id)?;
    if !is_message_id(&message) {
        return Err(ApiError::NotFound("message".into()));
    }
    let (lookup, wanted) = (id.clone(), message.clone());
    let (found, queued) = blocking(&app, move |index| {
        let found = index.subscription(&lookup)?.is_some();
        let now = crate::outbound::now_ms();
        Ok((found, index.redeliver(&lookup, &wanted, now)?))
    })
    .await?;
    if !found {
        return Err(not_found(&id));
    }
    let queued = queued.ok_or_else(|| ApiError::NotFound(format!("message {message}")))?;
    tracing::info!(subscription = %id, webhook_id = %message, "webhook message queued again");
    Ok((StatusCode::ACCEPTED, Json(queued.view())))
}

/// `msg_` + hex: the form the gateway makes (safe in a log line).
fn is_message_id(id: &str) -> bool {
    id.strip_prefix("msg_").is_some_and(|hex| {
        !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}
