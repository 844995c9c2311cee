//! The operator page at `/ui`: one HTML file, one script and one style
//! sheet, compiled into the binary (no build step, nothing fetched from a
//! CDN: a hospital network may have no way out). The page reads the
//! operator API (`/api/studies`, `/api/activity`, `/api/reports`) with the
//! browser's own credentials and builds its DOM from text nodes only.
//!
//! Served behind the operator guard like the API itself. A strict
//! Content-Security-Policy (scripts only from this origin, no inline script,
//! no framing) is the second line of defence should a hostile patient name
//! ever find a way into markup.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Only this origin's own files and API; no inline script or style element,
/// no plugins, no framing, forms only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

pub async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

pub async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

/// A page asset with the headers that keep it to itself. `no-cache`: a
/// browser revalidates, so an upgraded gateway's page is used at once.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::{APP_JS, INDEX_HTML};

    /// The page's own rule, checked mechanically: data never goes through
    /// innerHTML or friends, and nothing is loaded from elsewhere.
    #[test]
    fn the_page_never_parses_data_as_markup() {
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
        for page in [INDEX_HTML, APP_JS] {
            for other_origin in [
                "https://",
                "src=\"http",
                "href=\"http",
                "src=\"//",
                "href=\"//",
            ] {
                assert!(
                    !page.contains(other_origin),
                    "a page asset refers to another origin"
                );
            }
        }
    }
}
