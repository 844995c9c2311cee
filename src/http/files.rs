//! The signed file route: `GET`/`HEAD /files/{key}?exp&kid&sig`, authorised
//! only by the URL's signature, streamed from disk with ranges, ETags and CORS
//! for a viewer running on another origin.

use std::io::SeekFrom;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::error::ApiError;
use crate::app::App;
use crate::store::signer::Signature;
use crate::store::{ObjectKey, Presign};

pub async fn get_file(
    State(app): State<App>,
    Path(raw_key): Path<String>,
    signature: Result<Query<Signature>, QueryRejection>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A malformed query (e.g. an `exp` past u64) is refused like a bad signature.
    let Ok(Query(signature)) = signature else {
        return Err(ApiError::Forbidden);
    };
    let key = ObjectKey::parse(&raw_key).ok_or(ApiError::Forbidden)?;
    // A HEAD is allowed by a GET URL: it reveals nothing the GET would not.
    if let Err(refusal) = app.signer.verify_file(&key, &signature, SystemTime::now()) {
        tracing::debug!(%refusal, "signed URL refused");
        return Err(ApiError::Forbidden);
    }
    let content_type = match key.as_media() {
        None => "application/dicom".to_owned(),
        Some((study, name)) => {
            let (index, name) = (app.index.clone(), name.to_owned());
            let record = tokio::task::spawn_blocking(move || index.media(&study, &name))
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::internal)?;
            record
                .ok_or_else(|| ApiError::NotFound("object".into()))?
                .mime_type
        }
    };
    let disposition = key.content_disposition();
    // The gateway serves its own files: a local store's objects, and (S3)
    // the copies of acknowledged instances not yet uploaded.
    if let Some(path) = app.store.local_path(&key) {
        return match tokio::fs::File::open(&path).await {
            Ok(file) => serve(file, &content_type, &disposition, &method, &headers).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ApiError::NotFound("object".into()))
            }
            Err(e) => Err(ApiError::internal(e)),
        };
    }
    if let Some(backlog) = &app.backlog {
        // None: uploaded (and gone) since it was acknowledged: the store has it.
        let pending = backlog.open_pending(&key).await;
        if let Some(file) = pending.map_err(ApiError::internal)? {
            return serve(file, &content_type, &disposition, &method, &headers).await;
        }
    }
    // The store serves its own objects: send the viewer there.
    // Valid as long as the gateway's URL is, not longer.
    // `exp` is at most a week ahead once verified; checked all the same.
    let expires_at = UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(signature.exp))
        .ok_or(ApiError::Forbidden)?;
    let presign = Presign {
        content_type: &content_type,
        disposition: &disposition,
        expires_at,
        head: method == Method::HEAD,
    };
    let url = app
        .store
        .download_url(&key, &presign)
        .await
        .map_err(ApiError::internal)?
        .expect("a remote store signs");
    Ok(axum::response::Redirect::temporary(&url).into_response())
}

/// Answers a GET or HEAD from an open file: ETag, a single range, the
/// object's type and file name.
async fn serve(
    mut file: tokio::fs::File,
    content_type: &str,
    disposition: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let meta = file.metadata().await.map_err(ApiError::internal)?;
    let size = meta.len();
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok());
    let etag = format!("\"{size:x}-{:x}\"", modified.map_or(0, |d| d.as_nanos()));

    let mut out = HeaderMap::new();
    out.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ASCII"));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let content_type = HeaderValue::from_str(content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    out.insert(header::CONTENT_TYPE, content_type);
    out.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(disposition).expect("UID file names are ASCII"),
    );

    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, out).into_response());
    }

    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, size) {
            Ok(range) => range,
            Err(()) => {
                out.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
                );
                return Ok((StatusCode::RANGE_NOT_SATISFIABLE, out).into_response());
            }
        },
    };
    let (status, start, len) = match range {
        Some((start, end)) => {
            let value = format!("bytes {start}-{end}/{size}");
            out.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("ASCII"),
            );
            // end < size, so the length fits.
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if method == Method::HEAD {
        return Ok((status, out).into_response());
    }
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(ApiError::internal)?;
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(len), 256 * 1024));
    Ok((status, out, body).into_response())
}

/// One `bytes=` range within `size`: `Ok(None)` to serve everything (several
/// ranges are answered whole, as RFC 9110 allows), `Err` when unsatisfiable.
/// Positions too large for a u64 are as good as infinite, never a panic.
fn parse_range(spec: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if set.contains(',') {
        return Ok(None);
    }
    let (first, last) = set.trim().split_once('-').ok_or(())?;
    let last_byte = size.checked_sub(1).ok_or(())?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n = position(suffix)?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), last_byte)
        }
        (a, "") => (position(a)?, last_byte),
        (a, b) => (position(a)?, position(b)?.min(last_byte)),
    };
    if start >= size || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// A byte position: ASCII digits only (no sign), saturating at u64::MAX.
fn position(digits: &str) -> Result<u64, ()> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    Ok(digits.parse().unwrap_or(u64::MAX))
}

/// CORS preflight for the file (and, later, upload) routes: the signature in
/// the URL is the authorisation, so any origin may ask.
pub async fn preflight() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET, HEAD, PUT, OPTIONS",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Range, If-None-Match, Content-Type",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
}

/// Adds the CORS headers of the file and upload routes: any origin when
/// `cors_origins` is empty (the signature is the authorisation), else only
/// the listed ones.
pub async fn cors(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = next.run(request).await;
    let allowed = if app.cfg.cors_origins.is_empty() {
        Some(HeaderValue::from_static("*"))
    } else {
        origin.filter(|o| {
            app.cfg
                .cors_origins
                .iter()
                .any(|a| o.as_bytes() == a.as_bytes())
        })
    };
    let h = response.headers_mut();
    if let Some(allowed) = allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Content-Length, Content-Range, Content-Disposition, ETag, Accept-Ranges",
        ),
    );
    response
}

#[cfg(test)]
mod pending_tests;

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=50-1000", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=9-3", 100), Err(()));
        assert_eq!(parse_range("bytes=-0", 100), Err(()));
        assert_eq!(parse_range("bytes=x-3", 100), Err(()));
        assert_eq!(parse_range("bytes=+1-3", 100), Err(()));
        assert_eq!(parse_range("bytes=0-9", 0), Err(()));
    }

    #[test]
    fn huge_positions_neither_overflow_nor_panic() {
        let max = u64::MAX.to_string();
        let past = "99999999999999999999999999";
        assert_eq!(
            parse_range(&format!("bytes=0-{max}"), 100),
            Ok(Some((0, 99)))
        );
        assert_eq!(
            parse_range(&format!("bytes=0-{past}"), 100),
            Ok(Some((0, 99)))
        );
        assert_eq!(
            parse_range(&format!("bytes=-{past}"), 100),
            Ok(Some((0, 99)))
        );
        assert_eq!(parse_range(&format!("bytes={past}-"), 100), Err(()));
        assert_eq!(
            parse_range(&format!("bytes={max}-{max}"), u64::MAX),
            Err(())
        );
        let last = u64::MAX - 1;
        assert_eq!(
            parse_range(&format!("bytes={last}-{max}"), u64::MAX),
            Ok(Some((last, last)))
        );
    }
}
