//! Routes, the guards in front of the operator API and `/metrics`, and the
//! per-route request metrics.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};

use super::error::ApiError;
use super::{
    api, commitments, files, forward, forward_config, messages, metrics, subscriptions, ui,
    uploads, webhook,
};
use crate::app::App;

pub fn router(app: App) -> Router {
    let operator = Router::new()
        .route("/api/studies", get(api::list_studies))
        .route("/api/reports", get(api::list_reports))
        .route("/api/activity", get(api::activity))
        .route("/api/commitments", get(commitments::list))
        .route("/api/download/{*key}", get(api::download))
        // The operator page (src/http/ui.rs).
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/style.css", get(ui::style_css))
        .route("/api/studies/{study}", get(api::get_study))
        .route("/api/studies/{study}/media/{name}", put(api::put_media))
        // Outbound webhook subscriptions.
        .route(
            "/api/webhooks",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/api/webhooks/{id}",
            get(subscriptions::get)
                .patch(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route(
            "/api/webhooks/{id}/rotate-secret",
            post(subscriptions::rotate_secret),
        )
        .route("/api/webhooks/{id}/messages", get(messages::list))
        .route(
            "/api/webhooks/{id}/messages/{message}/redeliver",
            post(messages::redeliver),
        )
        // Forwarding queues (src/http/forward.rs).
        .route("/api/forward", get(forward::list))
        .route("/api/forward/{destination}/items", get(forward::items))
        .route("/api/forward/{destination}/retry", post(forward::retry))
        // Destinations and rules managed live (src/http/forward_config.rs).
        .route("/api/forward/config", get(forward_config::show))
        .route(
            "/api/forward/destinations/{ae}",
            put(forward_config::put_destination).delete(forward_config::delete_destination),
        )
        .route(
            "/api/forward/rules/{id}",
            put(forward_config::put_rule).delete(forward_config::delete_rule),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), operator_guard))
        .route_layer(middleware::from_fn(basic_challenge));
    let files = Router::new()
        .route(
            "/files/{*key}",
            get(files::get_file).options(files::preflight),
        )
        .route(
            "/uploads/{*binding}",
            put(uploads::put_upload).options(files::preflight),
        )
        .layer(middleware::from_fn_with_state(app.clone(), files::cors));
    let scrape = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route_layer(middleware::from_fn_with_state(app.clone(), metrics_guard));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route(
            "/webhooks/avara",
            post(webhook::avara).route_layer(middleware::from_fn(webhook_deadline)),
        )
        .merge(operator)
        .merge(scrape)
        .merge(files)
        .fallback(|| async { ApiError::NotFound("route".into()) })
        .layer(middleware::from_fn(http_metrics))
        .with_state(app)
}

/// The whole of a webhook request, body included. Avara's events are a few
/// KB sent at once; an unauthenticated client trickling a 1 MiB body at the
/// minimum rate must not hold a connection for a quarter of an hour.
const WEBHOOK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

async fn webhook_deadline(request: Request, next: Next) -> Result<Response, ApiError> {
    tokio::time::timeout(WEBHOOK_DEADLINE, next.run(request))
        .await
        .map_err(|_| ApiError::RequestTimeout)
}

/// Counts every answered request by route pattern (never the requested
/// path: that is the client's to choose) and status, with its latency to
/// the response head.
async fn http_metrics(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    crate::metrics::get().http_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// `/metrics`: a scraper presenting `metrics_token` gets through from
/// anywhere; otherwise the operator API's rules apply.
async fn metrics_guard(
    State(app): State<App>,
    peer: ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &app.cfg.metrics_token {
        if constant_time_eq(
            bearer(request.headers()).as_bytes(),
            token.expose().as_bytes(),
        ) {
            return Ok(next.run(request).await);
        }
    }
    operator_guard(State(app), peer, request, next).await
}

/// The bearer token a request presents ("" without one).
fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// With a token configured, requests must carry `Authorization: Bearer
/// <token>`; without one, only loopback clients get through, and not
/// those that came through a proxy on the same host (a request with
/// `Forwarded`, `X-Forwarded-For` or `X-Real-IP` is from someone else).
///
/// A browser cannot add a bearer header to a page it navigates to, so the
/// operator page's reads may present the token as a Basic password instead
/// (any user name). Only reads: a browser sends cached Basic credentials
/// along with cross-site requests too, and a forged form must never be
/// able to change anything (writes take the bearer header only).
async fn operator_guard(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match &app.cfg.api_token {
        Some(token) => {
            let header = request
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let read = matches!(*request.method(), Method::GET | Method::HEAD);
            let presented = match header.strip_prefix("Bearer ") {
                Some(bearer) => bearer.as_bytes().to_vec(),
                None if read => basic_password(header).unwrap_or_default(),
                None => Vec::new(),
            };
            if !constant_time_eq(&presented, token.expose().as_bytes()) {
                return Err(ApiError::Unauthorized);
            }
        }
        None if !peer.ip().is_loopback() || is_forwarded(request.headers()) => {
            return Err(ApiError::LoopbackOnly);
        }
        None => {}
    }
    Ok(next.run(request).await)
}

/// The password of an `Authorization: Basic` header, if well formed.
fn basic_password(header: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let encoded = header.strip_prefix("Basic ")?.trim();
    // A user name and a token: far below this.
    if encoded.len() > 1024 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Asks a browser for the token (as a Basic password) when a read of the
/// operator page or API was refused for the lack of it, so the page opens
/// with the browser's own login prompt.
async fn basic_challenge(request: Request, next: Next) -> Response {
    let page = request.uri().path().starts_with("/ui");
    let mut response = next.run(request).await;
    if page && response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"dicom-gateway operator\", charset=\"UTF-8\""),
        );
    }
    response
}

/// Whether a proxy says it passed the request on for another client.
fn is_forwarded(headers: &axum::http::HeaderMap) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|name| headers.contains_key(*name))
}

/// Compares without an early exit, so timing tells nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::{basic_password, constant_time_eq, is_forwarded};
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn proxied_requests_are_recognised() {
        assert!(!is_forwarded(&HeaderMap::new()));
        for name in ["Forwarded", "X-Forwarded-For", "x-real-ip"] {
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("for=203.0.113.7"),
            );
            assert!(is_forwarded(&h), "{name}");
        }
    }

    #[test]
    fn basic_passwords() {
        // "op:tok:en" — the password may hold colons.
        assert_eq!(
            basic_password("Basic b3A6dG9rOmVu"),
            Some(b"tok:en".to_vec())
        );
        assert_eq!(basic_password("Basic Og=="), Some(Vec::new()));
        assert_eq!(basic_password("Basic bm9jb2xvbg=="), None);
        assert_eq!(basic_password("Basic !!!"), None);
        assert_eq!(basic_password("Bearer tok"), None);
        assert_eq!(basic_password(&format!("Basic {}", "A".repeat(2000))), None);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
