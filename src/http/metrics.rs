//! `GET /metrics`: the registry of [`crate::metrics`] in the Prometheus text
//! format, after sampling what is measured only when asked (free space on
//! the data directory, the size of the index).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::app::App;

pub async fn scrape(State(app): State<App>) -> Result<Response, ApiError> {
    let cfg = std::sync::Arc::clone(&app.cfg);
    // statvfs and a walk of the index directory: blocking calls.
    let text = tokio::task::spawn_blocking(move || {
        let metrics = crate::metrics::get();
        metrics.sample_disk(&cfg.data_dir, &cfg.index_dir());
        metrics.render()
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}
