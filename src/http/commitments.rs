//! `GET /api/commitments`: storage commitment requests (pending, delivered,
//! undeliverable, failed) with their counts, newest first. Read-only; the
//! lists of references stay in the index.

use axum::Json;
use axum::extract::State;

use super::error::ApiError;
use crate::app::App;

pub async fn list(State(app): State<App>) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let index = app.index.clone();
    let mut records = tokio::task::spawn_blocking(move || index.commitments())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    records.sort_by_key(|r| std::cmp::Reverse(r.received_at));
    Ok(Json(records.iter().map(|r| r.summary()).collect()))
}
