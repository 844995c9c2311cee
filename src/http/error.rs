//! The one place HTTP errors are mapped to status codes and JSON bodies.
//! Internal details go to the log, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid {what}: {reason}")]
    BadRequest { what: &'static str, reason: String },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("the operator API answers loopback clients only when no API token is configured")]
    LoopbackOnly,
    /// Every signed-URL failure (tampered, expired, other key or method)
    /// looks the same from outside.
    #[error("invalid or expired signed URL")]
    Forbidden,
    #[error("internal error")]
    Internal(#[source] BoxedError),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::LoopbackOnly | ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::LoopbackOnly => "loopback_only",
            ApiError::Forbidden => "forbidden",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            let source = match &self {
                ApiError::Internal(e) => e.to_string(),
                _ => String::new(),
            };
            tracing::error!(code = self.code(), error = %source, "request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        }
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string(), "code": self.code() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

type BoxedError = Box<dyn std::error::Error + Send + Sync>;
