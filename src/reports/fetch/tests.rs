//! The fetcher against a real HTTP server on loopback, with a fake name
//! resolver so that "public" and "internal" hosts can both live here.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use super::*;

const PDF: &[u8] = b"%PDF-1.4\n%%EOF\n";

/// Answers by path: `/pdf` 200 with a PDF; `/to/<location>` 302 to the
/// rest of the path, percent-decoded once; anything else 404.
/// Records every path requested.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                        break;
                    }
                }
                log.lock().unwrap().push(path.clone());
                let answer = if path.split('?').next() == Some("/pdf") {
                    let mut a = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        PDF.len()
                    )
                    .into_bytes();
                    a.extend_from_slice(PDF);
                    a
                } else if let Some(to) = path.strip_prefix("/to/") {
                    let to = dec(to);
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes()
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                };
                let _ = conn.write_all(&answer);
            }
        });
        Server { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Percent-encodes everything but letters, digits, `.` and `-`.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// `public.test` and `internal.test` both resolve to loopback addresses:
/// 127.0.0.1 (counted as public by [`check`]) and 127.0.0.2 (internal).
#[derive(Debug)]
struct FakeDns;

impl Resolver for FakeDns {
    fn resolve(
        &self,
        uri: &Uri,
        _: &ureq::config::Config,
        _: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let ip: IpAddr = match uri.host() {
            Some("public.test") => "127.0.0.1".parse().unwrap(),
            Some("internal.test") => "127.0.0.2".parse().unwrap(),
            Some("both.test") => "127.0.0.2".parse().unwrap(),
            _ => return Err(ureq::Error::HostNotFound),
        };
        let port = uri.port_u16().unwrap_or(80);
        let mut out = self.empty();
        if uri.host() == Some("both.test") {
            out.push(SocketAddr::new("127.0.0.1".parse().unwrap(), port));
        }
        out.push(SocketAddr::new(ip, port));
        Ok(out)
    }
}

/// The real classification, except that 127.0.0.1 stands for a public host.
fn check(ip: IpAddr) -> Option<&'static str> {
    if ip == IpAddr::from([127, 0, 0, 1]) {
        None
    } else {
        crate::reports::address::forbidden(ip)
    }
}

fn fetch(fetcher: &Fetcher, url: &str) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    fetcher.fetch(url, |chunk| {
        body.extend(chunk);
        true
    })?;
    Ok(body)
}

fn refused(result: Result<Vec<u8>, Error>) -> String {
    match result {
        Err(Error::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_redirect_to_an_allowed_host_is_followed() {
    let server = Server::start();
    let fetcher = Fetcher::with_resolver(FakeDns, check);
    let p = server.port;
    // An absolute Location, then a relative one.
    let second = format!("http://public.test:{p}/to/{}", enc("/pdf"));
    let url = format!("http://public.test:{p}/to/{}", enc(&second));
    assert_eq!(fetch(&fetcher, &url).unwrap(), PDF);
    assert_eq!(server.seen().len(), 3, "{:?}", server.seen());
}

#[test]
fn a_redirect_to_an_internal_host_is_refused_before_connecting() {
    let server = Server::start();
    let fetcher = Fetcher::with_resolver(FakeDns, check);
    let p = server.port;
    let inner = format!("http://internal.test:{p}/pdf");
    let url = format!(
        "http://public.test:{p}/to/{}?X-Amz-Signature=s3cr3t",
        enc(&inner)
    );
    let why = refused(fetch(&fetcher, &url));
    assert!(
        why.contains("internal.test resolves to a loopback address"),
        "{why}"
    );
    assert!(why.contains("report_fetch_allow_private"), "{why}");
    assert!(!why.contains("s3cr3t"));
    // Only the first hop reached a server.
    assert_eq!(server.seen().len(), 1, "{:?}", server.seen());
}

#[test]
fn a_host_with_one_internal_address_among_public_ones_is_refused() {
    let server = Server::start();
    let fetcher = Fetcher::with_resolver(FakeDns, check);
    let why = refused(fetch(
        &fetcher,
        &format!("http://both.test:{}/pdf", server.port),
    ));
    assert!(why.contains("loopback"), "{why}");
    assert!(server.seen().is_empty());
}

#[test]
fn a_redirect_to_another_scheme_is_refused() {
    let server = Server::start();
    let fetcher = Fetcher::with_resolver(FakeDns, check);
    let url = format!(
        "http://public.test:{}/to/{}",
        server.port,
        enc("file:///etc/passwd")
    );
    let why = refused(fetch(&fetcher, &url));
    assert!(why.contains("\"file\" is not http or https"), "{why}");
}

#[test]
fn redirects_are_followed_a_few_times_only() {
    let server = Server::start();
    let fetcher = Fetcher::with_resolver(FakeDns, check);
    // Each hop strips one "to/" level; seven levels are more than allowed.
    let mut path = "/pdf".to_owned();
    for _ in 0..7 {
        path = format!("/to/{}", enc(&path));
    }
    let url = format!("http://public.test:{}{path}", server.port);
    let why = refused(fetch(&fetcher, &url));
    assert!(why.contains("redirects"), "{why}");
    assert_eq!(server.seen().len(), MAX_REDIRECTS + 1);
}

#[test]
fn with_the_real_policy_loopback_is_refused_and_nothing_is_requested() {
    let server = Server::start();
    let url = format!(
        "http://127.0.0.1:{}/pdf?X-Amz-Signature=s3cr3t",
        server.port
    );
    let why = refused(fetch(&Fetcher::new(false), &url));
    assert!(
        why.contains("127.0.0.1 resolves to a loopback address"),
        "{why}"
    );
    let why = refused(fetch(
        &Fetcher::new(false),
        &format!("http://[::ffff:127.0.0.1]:{}/pdf", server.port),
    ));
    assert!(why.contains("loopback"), "{why}");
    assert!(server.seen().is_empty());
    // Allowed, the same URL is fetched.
    assert_eq!(fetch(&Fetcher::new(true), &url).unwrap(), PDF);
    assert_eq!(server.seen(), ["/pdf?X-Amz-Signature=s3cr3t"]);
}

#[test]
fn only_http_urls_with_a_host_are_fetched() {
    let fetcher = Fetcher::new(true);
    for url in [
        "file:///etc/passwd",
        "ftp://example.com/r.pdf",
        "gopher://example.com/",
        "not a url",
        "http://",
        "",
    ] {
        let why = refused(fetch(&fetcher, url));
        assert!(!why.is_empty(), "{url}");
    }
}

#[test]
fn errors_and_redaction_never_show_the_url_past_its_host() {
    let url = "https://bucket.s3.amazonaws.com:8443/reports/r.pdf?X-Amz-Signature=s3cr3t&X-Amz-Credential=AKIA";
    assert_eq!(redact_str(url), "https://bucket.s3.amazonaws.com:8443/…");
    assert_eq!(redact_str("http://[::1]/a?b=c"), "http://[::1]/…");
    assert_eq!(
        redact_str("http://user:pw@h.example/x"),
        "http://h.example/…"
    );
    assert_eq!(redact_str("::garbage s3cr3t"), "(not a valid URL)");
    // A host that does not resolve: the error names the host only.
    let err = fetch(
        &Fetcher::with_resolver(FakeDns, check),
        "http://nowhere.test/r.pdf?X-Amz-Signature=s3cr3t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("http://nowhere.test/…"), "{err}");
    assert!(!err.contains("s3cr3t") && !err.contains("r.pdf"), "{err}");
    // A refused connection, likewise.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = fetch(
        &Fetcher::new(true),
        &format!("http://127.0.0.1:{port}/r.pdf?X-Amz-Signature=s3cr3t"),
    )
    .unwrap_err()
    .to_string();
    assert!(!err.contains("s3cr3t") && !err.contains("r.pdf"), "{err}");
}
