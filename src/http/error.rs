//! The one place HTTP errors are mapped to status codes and JSON bodies.
//! Internal details go to the log, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::ingest::ErrorKind;

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
    #[error("webhook signature: {0}")]
    Signature(#[source] crate::webhook::VerifyError),
    #[error("the webhook is not configured: set AVARA_WEBHOOK_KEY")]
    WebhookNotConfigured,
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A body that must be of another media type (JSON for the operator
    /// API's writes: a browser cannot send that cross-site without asking).
    #[error("Content-Type must be {expected}")]
    UnsupportedMediaType { expected: &'static str },
    /// A request head or body that did not arrive in time.
    #[error("the request did not arrive in time")]
    RequestTimeout,
    /// The connection cap is reached; written before the request is read.
    #[error("too many connections; try again shortly")]
    TooManyConnections,
    #[error("{0}")]
    Ingest(#[source] crate::ingest::Error),
    /// The request contradicts what exists (a read-only entry, something
    /// still depending on it).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but not something the gateway can act on.
    #[error("{0}")]
    Unprocessable(String),
    #[error("internal error")]
    Internal(#[source] BoxedError),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    /// A request body that could not be read: too slow (408), over the
    /// size limit (413), or cut off (400).
    pub fn from_body(e: &axum::Error, limit: usize) -> Self {
        if super::pace::is_too_slow(e) {
            ApiError::RequestTimeout
        } else if std::error::Error::source(e)
            .is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>())
        {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest {
                what: "request body",
                reason: e.to_string(),
            }
        }
    }

    /// A whole HTTP/1.1 response that closes the connection, for the
    /// refusals written on a bare socket (outside any request): the same
    /// status and JSON body as [`IntoResponse`] gives.
    pub fn raw_http1(&self) -> Vec<u8> {
        let status = self.status();
        let body =
            serde_json::json!({ "error": self.public_message(), "code": self.code() }).to_string();
        let retry = if status == StatusCode::SERVICE_UNAVAILABLE {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
        )
        .into_bytes()
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::LoopbackOnly | ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Signature(_) => StatusCode::UNAUTHORIZED,
            ApiError::WebhookNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Ingest(e) => match e.kind() {
                ErrorKind::Unparseable => StatusCode::BAD_REQUEST,
                ErrorKind::Mismatch => StatusCode::UNPROCESSABLE_ENTITY,
                ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ErrorKind::Duplicate => StatusCode::CONFLICT,
                ErrorKind::OutOfResources => StatusCode::INSUFFICIENT_STORAGE,
            },
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the error itself, except where it would
    /// carry internal details (paths, I/O errors), which only the log gets.
    fn public_message(&self) -> String {
        match self {
            ApiError::Ingest(e) if e.kind() == ErrorKind::OutOfResources => {
                "the gateway could not store the object; try again later".into()
            }
            _ => self.to_string(),
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
            ApiError::Signature(_) => "bad_signature",
            ApiError::WebhookNotConfigured => "webhook_not_configured",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::Ingest(e) => match e.kind() {
                ErrorKind::Unparseable => "not_dicom",
                ErrorKind::Mismatch => "uid_mismatch",
                ErrorKind::TooLarge => "payload_too_large",
                ErrorKind::Duplicate => "duplicate_instance",
                ErrorKind::OutOfResources => "insufficient_storage",
            },
            ApiError::Conflict(_) => "conflict",
            ApiError::Unprocessable(_) => "invalid",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(e) => {
                tracing::error!(code = self.code(), error = %e, "request failed")
            }
            _ if status.is_server_error() => {
                tracing::warn!(code = self.code(), error = %self, "request refused")
            }
            _ => tracing::debug!(code = self.code(), error = %self, "request refused"),
        }
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.public_message(), "code": self.code() })),
        )
            .into_response();
        if matches!(self, ApiError::TooManyConnections) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if matches!(self, ApiError::RequestTimeout) {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// A subscription request's field that cannot be used is a 400 naming it;
/// anything else is the gateway's fault.
impl From<crate::outbound::Error> for ApiError {
    fn from(e: crate::outbound::Error) -> Self {
        match e {
            crate::outbound::Error::Invalid { field, reason } => ApiError::BadRequest {
                what: field,
                reason,
            },
            e => ApiError::internal(e),
        }
    }
}

/// Forwarding configuration edits: the reason goes to the client, an
/// index failure only to the log.
impl From<crate::forward::managed::Error> for ApiError {
    fn from(e: crate::forward::managed::Error) -> Self {
        use crate::forward::managed::Error as E;
        match e {
            E::Invalid(reason) => ApiError::Unprocessable(reason),
            E::Conflict(reason) => ApiError::Conflict(reason),
            E::NotFound(what) => ApiError::NotFound(what),
            e @ (E::Index(_) | E::Task(_)) => ApiError::internal(e),
        }
    }
}

type BoxedError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn raw_refusals_are_complete_responses() {
        let raw = String::from_utf8(ApiError::TooManyConnections.raw_http1()).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nRetry-After: 1"));
        assert!(head.contains("\r\nConnection: close"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "too_many_connections");
        let raw = String::from_utf8(ApiError::RequestTimeout.raw_http1()).unwrap();
        assert!(raw.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
        assert!(!raw.contains("Retry-After"));
    }
}
