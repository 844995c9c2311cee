//! `dicom-gateway healthcheck`: asks a running gateway's `/healthz`.
//!
//! This is the container image's `HEALTHCHECK`. A runtime image holds no curl
//! or wget (one binary less to patch), and the gateway knows where it
//! listens: the same configuration (file, `DICOM_GATEWAY_*` variables, flags)
//! that started the server tells the check where to knock. The check is
//! short and bounded: one request, one timeout covering connect, request and
//! answer, a small cap on the body, no proxy (a site's `HTTP_PROXY` must not
//! turn a loopback probe into a request to somebody else).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the gateway is not healthy (or could not be asked).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("GET {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url} answered {body:?}, not {{\"status\":\"ok\"}}")]
    Body { url: String, body: String },
}

/// The largest `/healthz` answer read; the real one is under 200 bytes
/// (15 without an upload backlog).
const MAX_BODY: u64 = 4096;

/// Longest timeout accepted for one check (Docker's own default timeout for
/// a health check is 30 s).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The address to probe for a server listening on `listen`: a wildcard
/// address (`0.0.0.0`, `[::]`) is not one a client can connect to, so the
/// loopback address of the same family stands in for it.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// One `GET http://<addr>/healthz` within `timeout`: healthy when it answers
/// 200 with `{"status":"ok"}`. Returns the URL asked. Blocking.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<String> {
    probe(format!("http://{addr}/healthz"), timeout, false)
}

/// [`check`] for a gateway serving HTTPS (`http_tls_cert`). The server's
/// certificate is not verified: it names the site's host, not the loopback
/// address the probe uses, and the probe sends nothing secret and believes
/// nothing but "this process answers": the question is liveness, not
/// identity.
pub fn check_https(addr: SocketAddr, timeout: Duration) -> Result<String> {
    probe(format!("https://{addr}/healthz"), timeout, true)
}

fn probe(url: String, timeout: Duration, https: bool) -> Result<String> {
    let tls = ureq::tls::TlsConfig::builder()
        .disable_verification(https)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout.min(MAX_TIMEOUT)))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!(
            "dicom-gateway-healthcheck/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .into();
    let request = |source| Error::Request {
        url: url.clone(),
        source: Box::new(source),
    };
    let mut response = agent.get(&url).call().map_err(request)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(Error::Status { url, status });
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(request)?;
    let healthy = serde_json::from_str::<serde_json::Value>(&body)
        .is_ok_and(|v| v.get("status").and_then(|s| s.as_str()) == Some("ok"));
    if !healthy {
        let body: String = body.chars().take(200).collect();
        return Err(Error::Body { url, body });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        let probe = |s: &str| probe_addr(s.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(probe("[::]:8080"), "[::1]:8080");
        assert_eq!(probe("10.1.2.3:9000"), "10.1.2.3:9000");
        assert_eq!(probe("[fe80::1]:80"), "[fe80::1]:80");
    }

    /// A one-shot HTTP server on loopback answering `response` verbatim to
    /// the first request (after reading its headers).
    fn answer_once(response: impl AsRef<[u8]> + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /healthz HTTP/1.1\r\n"));
            // The client may hang up first (a body past its limit).
            let _ = conn.write_all(response.as_ref());
        });
        addr
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn ok_answer_is_healthy() {
        let addr = answer_once(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}",
        );
        assert_eq!(
            check(addr, TIMEOUT).unwrap(),
            format!("http://{addr}/healthz")
        );
    }

    #[test]
    fn error_status_is_unhealthy() {
        let addr = answer_once(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        let err = check(addr, TIMEOUT).unwrap_err();
        assert!(matches!(err, Error::Status { status: 503, .. }), "{err}");
    }

    #[test]
    fn another_body_is_unhealthy() {
        let addr = answer_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\nconnection: close\r\n\r\n{\"status\":\"broken\"}\n",
        );
        let err = check(addr, TIMEOUT).unwrap_err();
        assert!(matches!(err, Error::Body { .. }), "{err}");
    }

    #[test]
    fn endless_body_is_cut_and_unhealthy() {
        // Claims a gigabyte and sends more than MAX_BODY: the check stops
        // reading at its cap.
        let mut response =
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\nconnection: close\r\n\r\n".to_vec();
        response.extend(std::iter::repeat_n(b' ', 2 * MAX_BODY as usize));
        let addr = answer_once(response);
        let err = check(addr, TIMEOUT).unwrap_err();
        assert!(matches!(err, Error::Request { .. }), "{err}");
    }

    #[test]
    fn nobody_listening_is_unhealthy() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // The listener is dropped: the port refuses connections.
        let err = check(addr, TIMEOUT).unwrap_err();
        assert!(matches!(err, Error::Request { .. }), "{err}");
    }

    #[test]
    fn silent_server_is_unhealthy_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts (the kernel backlog does) but never answers.
        let err = check(addr, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, Error::Request { .. }), "{err}");
        drop(listener);
    }
}
