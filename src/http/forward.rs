//! `/api/forward`: the forwarding destinations with their queues, the items
//! of one destination, and putting failed items back in the queue. Behind
//! the operator guard. Destinations and rules themselves are managed in
//! `forward_config.rs`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::subscriptions::blocking;
use crate::app::App;
use crate::forward::Destination;
use crate::index::{ForwardCounts, ForwardItem, ForwardState};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

fn rfc3339(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationView {
    destination: String,
    address: String,
    /// `null` until the first attempt.
    up: Option<bool>,
    /// Items waiting to be sent (queue depth).
    pending: usize,
    /// Items given up, until retried.
    failed_items: usize,
    in_flight: usize,
    /// Since start: sent, failed and retried attempts.
    sent: u64,
    failed: u64,
    retries: u64,
    /// Association failures in a row.
    connect_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    down_until: Option<String>,
}

fn view(dest: &Destination, counts: ForwardCounts) -> DestinationView {
    let live = dest.live();
    DestinationView {
        destination: dest.name().to_owned(),
        address: dest.node().address(),
        up: live.up,
        pending: counts.pending,
        failed_items: counts.failed,
        in_flight: live.in_flight,
        sent: live.sent,
        failed: live.failed,
        retries: live.retries,
        connect_failures: live.connect_failures,
        last_error: live.last_error,
        next_attempt: live
            .down_until_ms
            .or(live.next_attempt_ms)
            .filter(|_| counts.pending > 0)
            .map(rfc3339),
        down_until: live.down_until_ms.map(rfc3339),
    }
}

#[derive(Debug, Serialize)]
pub struct Destinations {
    destinations: Vec<DestinationView>,
}

/// `GET /api/forward`
pub async fn list(State(app): State<App>) -> Result<Json<Destinations>, ApiError> {
    // One snapshot: the API may add or remove destinations meanwhile.
    let all = app.forward.destinations();
    let names: Vec<String> = all.iter().map(|d| d.name().to_owned()).collect();
    let counts: Vec<ForwardCounts> = blocking(&app, move |index| {
        names.iter().map(|n| index.forward_counts(n)).collect()
    })
    .await?;
    let destinations = all.iter().zip(counts).map(|(d, c)| view(d, c)).collect();
    Ok(Json(Destinations { destinations }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    #[serde(flatten)]
    item: ForwardItem,
    enqueued_at: String,
    next_attempt: String,
}

#[derive(Debug, Serialize)]
pub struct Items {
    items: Vec<ItemView>,
}

fn destination(app: &App, name: &str) -> Result<String, ApiError> {
    app.forward
        .destination(name)
        .map(|d| d.name().to_owned())
        .ok_or_else(|| ApiError::NotFound("forwarding destination".into()))
}

/// `GET /api/forward/{destination}/items[?state=pending|failed][&limit=N]`
pub async fn items(
    State(app): State<App>,
    Path(name): Path<String>,
    listing: Result<Query<Listing>, QueryRejection>,
) -> Result<Json<Items>, ApiError> {
    let name = destination(&app, &name)?;
    let Query(listing) = listing.map_err(|e| ApiError::BadRequest {
        what: "query",
        reason: e.body_text(),
    })?;
    let state = match listing.state.as_deref() {
        None | Some("all") => None,
        Some("pending") => Some(ForwardState::Pending),
        Some("failed") => Some(ForwardState::Failed),
        Some(_) => {
            return Err(ApiError::BadRequest {
                what: "state",
                reason: "give pending, failed or all".into(),
            });
        }
    };
    let limit = listing.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let items = blocking(&app, move |index| index.forward_items(&name, state, limit)).await?;
    Ok(Json(Items {
        items: items
            .into_iter()
            .map(|item| ItemView {
                enqueued_at: rfc3339(item.enqueued_ms),
                next_attempt: rfc3339(item.next_attempt_ms),
                item,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct Retried {
    retried: usize,
}

/// `POST /api/forward/{destination}/retry` → 202: every failed item of the
/// destination is pending again, due now, its attempts counted afresh.
pub async fn retry(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Retried>), ApiError> {
    let name = destination(&app, &name)?;
    let dest = name.clone();
    let now = crate::outbound::now_ms();
    let retried = blocking(&app, move |index| index.forward_retry(&dest, now)).await?;
    tracing::info!(destination = %name, retried, "forwarding: failed items queued again");
    Ok((StatusCode::ACCEPTED, Json(Retried { retried })))
}
