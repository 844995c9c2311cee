//! Fetching a report from its presigned URL without letting the URL turn the
//! gateway against the site.
//!
//! - Only `http` and `https` URLs are fetched.
//! - Every address the host resolves to is checked ([`super::address`])
//!   inside the resolver ureq connects with, so the addresses checked are the
//!   addresses connected to: there is no second lookup a DNS rebinding could
//!   answer differently. (Resolving ourselves and connecting by IP would
//!   lose the host name for TLS SNI and certificate checks; plugging the
//!   resolver keeps ureq's TLS as it is.)
//! - Redirects are followed here, a few at most, and each target goes
//!   through the same checks (ureq's own redirect following is off).
//! - No environment proxy: a proxy would resolve the target for us,
//!   unchecked.
//! - The whole fetch, redirects and body included, has one time limit.
//! - The URL is a bearer credential: no error text carries it (ureq's own
//!   errors can echo it, so they are translated here), and what is logged is
//!   [`redact`]ed to scheme and host.

use std::io::Read;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use url::Url;

use super::{Error, MAX_REPORT_BYTES};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// The whole fetch of one report, redirects and body included: one slow
/// host holds one fetch slot for at most this long.
pub const FETCH_LIMIT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 256 * 1024;

/// Decides whether an address may be connected to: `None` if it may, or why
/// not.
pub type Check = fn(IpAddr) -> Option<&'static str>;

/// A fetcher for report URLs (one per worker; cheap to share).
#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
}

impl Fetcher {
    /// Refuses internal addresses unless `allow_private`; link-local ones
    /// (cloud metadata at 169.254.169.254) even then: no report server
    /// lives there.
    pub fn new(allow_private: bool) -> Fetcher {
        let check: Check = if allow_private {
            super::address::link_local
        } else {
            super::address::forbidden
        };
        Fetcher::with_resolver(DefaultResolver::default(), check)
    }

    /// With another name resolver and address check (tests).
    pub fn with_resolver(inner: impl Resolver, check: Check) -> Fetcher {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build();
        let resolver = Guarded {
            inner,
            check,
            setting: "report_fetch_allow_private",
        };
        Fetcher {
            agent: ureq::Agent::with_parts(config, DefaultConnector::default(), resolver),
        }
    }

    /// GETs `url`, following redirects, and hands the body to `sink` in
    /// chunks (it returns `false` to stop early). At most
    /// [`MAX_REPORT_BYTES`] are read. Blocking.
    pub fn fetch(&self, url: &str, mut sink: impl FnMut(Vec<u8>) -> bool) -> Result<(), Error> {
        let started = Instant::now();
        let mut current = target(url)?;
        for hop in 0..=MAX_REDIRECTS {
            let left = FETCH_LIMIT
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::Fetch(format!("{}: over {FETCH_LIMIT:?}", redact(&current)))
                })?;
            let mut response = self
                .agent
                .get(current.as_str())
                .config()
                .timeout_global(Some(left))
                .build()
                .call()
                .map_err(|e| describe(e, &current))?;
            let status = response.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                if hop == MAX_REDIRECTS {
                    return Err(Error::Refused(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                let location = response
                    .headers()
                    .get(ureq::http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        Error::Fetch(format!("{}: redirect without Location", redact(&current)))
                    })?;
                let next = current
                    .join(location)
                    .map_err(|_| Error::Refused("redirect to an invalid URL".into()))
                    .and_then(|u| target(u.as_str()))?;
                tracing::info!(from = %redact(&current), to = %redact(&next), "report URL redirects");
                current = next;
                continue;
            }
            if !status.is_success() {
                return Err(Error::Fetch(format!(
                    "HTTP {} from {}",
                    status.as_u16(),
                    redact(&current)
                )));
            }
            return read_body(&mut response, &current, &mut sink);
        }
        unreachable!("the last hop returns")
    }
}

fn read_body(
    response: &mut ureq::http::Response<ureq::Body>,
    url: &Url,
    sink: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<(), Error> {
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(MAX_REPORT_BYTES + 1)
        .reader();
    let mut total = 0u64;
    loop {
        let mut chunk = vec![0u8; CHUNK];
        let n = reader.read(&mut chunk).map_err(|e| {
            // The io::Error may wrap a ureq error that names the URL.
            Error::Fetch(format!("{}: reading the body: {}", redact(url), e.kind()))
        })?;
        if n == 0 {
            return Ok(());
        }
        total = total.saturating_add(n as u64);
        if total > MAX_REPORT_BYTES {
            return Err(Error::TooLarge);
        }
        chunk.truncate(n);
        if !sink(chunk) {
            return Ok(()); // the receiving side gave up (not a PDF, disk, shutdown)
        }
    }
}

/// Parses a URL the fetcher may follow: `http` or `https` with a host.
fn target(url: &str) -> Result<Url, Error> {
    let parsed = Url::parse(url).map_err(|_| Error::Refused("not a valid URL".into()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            // The scheme alone says nothing secret.
            return Err(Error::Refused(format!(
                "scheme {:?} is not http or https",
                other.chars().take(16).collect::<String>()
            )));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::Refused("URL without a host".into()));
    }
    Ok(parsed)
}

/// `https://host[:port]/…`: what of a presigned URL may be logged or shown.
pub fn redact(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/…", url.scheme()),
        None => format!("{}://{host}/…", url.scheme()),
    }
}

/// [`redact`] for a URL as received.
pub fn redact_str(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) if u.host_str().is_some() => redact(&u),
        _ => "(not a valid URL)".into(),
    }
}

/// ureq's error as our own text, without the URL (ureq's `BadUri` and some
/// I/O errors echo it).
fn describe(e: ureq::Error, url: &Url) -> Error {
    match explain(e, &redact(url)) {
        Failure::Refused(why) => Error::Refused(why),
        Failure::Failed(what) => Error::Fetch(what),
    }
}

/// A ureq failure in the gateway's words: refused before any connection
/// (an address the guard refuses, a URL that cannot be used), or failed.
pub(crate) enum Failure {
    Refused(String),
    Failed(String),
}

/// Explains a ureq error naming `at` (the scheme and host, or the host)
/// and never the URL: ureq's own text can carry it, and a URL can be a
/// bearer credential. Shared with the outbound webhook sender.
pub(crate) fn explain(e: ureq::Error, at: &str) -> Failure {
    let failed = Failure::Failed;
    match e {
        ureq::Error::Other(inner) => match inner.downcast::<Refusal>() {
            Ok(refusal) => Failure::Refused(refusal.0),
            Err(_) => failed(format!("{at}: connection failed")),
        },
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => Failure::Refused("not a valid URL".into()),
        ureq::Error::Timeout(t) => failed(format!("{at}: timed out ({t})")),
        ureq::Error::HostNotFound => failed(format!("{at}: host not found")),
        ureq::Error::Io(io) => failed(format!("{at}: {}", io.kind())),
        ureq::Error::ConnectionFailed => failed(format!("{at}: connection failed")),
        ureq::Error::StatusCode(code) => failed(format!("HTTP {code} from {at}")),
        ureq::Error::Tls(what) => failed(format!("{at}: TLS: {what}")),
        ureq::Error::Rustls(tls) => failed(format!("{at}: TLS: {tls}")),
        ureq::Error::Protocol(_) => failed(format!("{at}: HTTP protocol error")),
        ureq::Error::LargeResponseHeader(..) => failed(format!("{at}: response header too large")),
        _ => failed(format!("{at}: request failed")),
    }
}

/// The resolver's refusal, carried through ureq as `Error::Other`.
#[derive(Debug)]
pub(crate) struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// Resolves with `inner`, then refuses the lot if any address fails the
/// check (a host with one internal address among public ones is refused:
/// ureq may try any of them). `setting` is the configuration key that
/// allows internal addresses, named in the refusal.
#[derive(Debug)]
pub(crate) struct Guarded<R> {
    pub inner: R,
    pub check: Check,
    pub setting: &'static str,
}

impl<R: Resolver> Resolver for Guarded<R> {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        for addr in addrs.iter() {
            if let Some(why) = (self.check)(addr.ip()) {
                let host = uri.host().unwrap_or("");
                return Err(ureq::Error::Other(Box::new(Refusal(format!(
                    "{host} resolves to a {why} address ({}); \
                     set {} to allow it",
                    addr.ip(),
                    self.setting
                )))));
            }
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests;
