//! The HTTP side under hostile clients, over raw TCP against the real
//! binary: nothing a client sends (or fails to send) crashes the gateway,
//! holds its connections for long, or costs unbounded memory; and the
//! operator API fails closed.
//!
//! Waiting is done on outcomes (a response, the server closing the
//! socket), each bounded by a generous read time-out against hangs; no
//! test asserts how long anything took.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, Gateway, Opts};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A bound against hangs, not a measurement.
const HANG: Duration = Duration::from_secs(60);

/// Peak RSS every test stays under.
const RSS_LIMIT: u64 = 256 << 20;

fn flags(opts: Opts, args: &[&str]) -> Opts {
    args.iter().fold(opts, |o, a| o.arg(a))
}

fn connect(gw: &Gateway) -> TcpStream {
    let s = TcpStream::connect(gw.http).expect("connect to the gateway");
    s.set_read_timeout(Some(HANG)).unwrap();
    s
}

/// One response read from `r`: status, head (lower-cased), body.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Reply {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("read a response head");
        assert!(
            n > 0,
            "connection closed before a complete response: {head:?}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("read a response body");
    Reply { status, head, body }
}

/// Reads until the server closes the connection (a close or a reset);
/// false if it kept it open past [`HANG`].
fn closed_by_server(r: &mut impl Read) -> bool {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// One request on a fresh connection.
fn request(gw: &Gateway, raw: &[u8]) -> Reply {
    let mut s = connect(gw);
    s.write_all(raw).unwrap();
    read_reply(&mut BufReader::new(s))
}

fn healthz(gw: &Gateway) -> Reply {
    request(
        gw,
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
}

/// A legitimate modality stores an instance; the HTTP side answers.
fn still_serving(gw: &Gateway) {
    let f = common::fixture("study1/series1");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    common::assert_ok(&common::storescu(gw, &["-xe"], &[&path]), "storescu");
    assert_eq!(healthz(gw).status, 200);
    let rss = gw.peak_rss();
    assert!(rss < RSS_LIMIT, "peak RSS {} MiB", rss >> 20);
}

#[test]
fn a_webhook_timestamp_of_u64_max_is_refused_and_the_connection_goes_on() {
    let gw = Gateway::start_with(Opts::default().env("AVARA_WEBHOOK_KEY", KEY));
    let mut s = connect(&gw);
    // Two requests on one keep-alive connection: the bad webhook, then health.
    s.write_all(
        b"POST /webhooks/avara HTTP/1.1\r\nHost: gw\r\n\
          webhook-id: msg_2Xb0M9wWTo8xJ1AV2hrXG7FqKle\r\n\
          webhook-timestamp: 18446744073709551615\r\n\
          webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\r\n\
          Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}\
          GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let refused = read_reply(&mut r);
    assert_eq!(refused.status, 401, "{}", refused.head);
    assert_eq!(refused.json()["code"], "bad_signature");
    let after = read_reply(&mut r);
    assert_eq!(after.status, 200, "the connection did not go on");
    // Other overflowing timestamps, on fresh connections.
    for ts in ["99999999999999999999999", "-1", "9223372036854775808"] {
        let raw = format!(
            "POST /webhooks/avara HTTP/1.1\r\nHost: gw\r\nwebhook-id: msg_1\r\n\
             webhook-timestamp: {ts}\r\nwebhook-signature: v1,AAAA\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let reply = request(&gw, raw.as_bytes());
        assert!((400..500).contains(&reply.status), "{ts}: {}", reply.status);
    }
    still_serving(&gw);
}

#[test]
fn slowloris_heads_are_closed_and_do_not_block_anyone() {
    let gw = Gateway::start_with(flags(Opts::default(), &["--http-header-timeout", "1"]));
    // Trickling clients: a byte of header at a time, never finishing. The
    // deadline is for the whole head, so each byte must not extend it.
    let trickling: Vec<_> = (0..8)
        .map(|i| {
            let mut s = connect(&gw);
            s.write_all(format!("GET /healthz?{i} HTTP/1.1\r\nHost: gw\r\nX-A: ").as_bytes())
                .unwrap();
            let mut writer = s.try_clone().unwrap();
            std::thread::spawn(move || {
                // The attack itself: one byte every 100 ms until the server
                // closes the connection (a write then fails).
                for _ in 0..6000 {
                    if writer.write_all(b"a").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            s
        })
        .collect();
    // Clients that opened a head of almost the largest allowed size.
    let heavy: Vec<_> = (0..100)
        .map(|_| {
            let mut s = connect(&gw);
            let mut head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Pad: ".to_vec();
            head.resize(30 * 1024, b'p');
            s.write_all(&head).unwrap();
            s
        })
        .collect();
    // Meanwhile, everyone else is served.
    still_serving(&gw);
    for s in trickling {
        let mut r = BufReader::new(s);
        let reply = read_reply(&mut r);
        assert_eq!(reply.status, 408, "{}", reply.head);
        assert_eq!(reply.json()["code"], "request_timeout");
        assert!(closed_by_server(&mut r));
    }
    for s in heavy {
        let mut r = BufReader::new(s);
        assert_eq!(read_reply(&mut r).status, 408);
    }
    // On a keep-alive connection, the next head is held to the same rule.
    let mut s = connect(&gw);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_reply(&mut r).status, 200);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    assert_eq!(read_reply(&mut r).status, 408);
    assert!(closed_by_server(&mut r));
    // A connection that sends nothing at all is closed without an answer.
    let mut silent = connect(&gw);
    let mut got = Vec::new();
    silent.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    still_serving(&gw);
}

#[test]
fn oversized_heads_get_431() {
    let gw = Gateway::start();
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'b', 100 * 1024));
    raw.extend(b"\r\n\r\n");
    let mut s = connect(&gw);
    s.write_all(&raw).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_reply(&mut r).status, 431);
    assert!(closed_by_server(&mut r));
    // Many small headers: too many of them.
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n".to_vec();
    for i in 0..500 {
        raw.extend(format!("X-H{i}: v\r\n").as_bytes());
    }
    raw.extend(b"\r\n");
    assert_eq!(request(&gw, &raw).status, 431);
    // A long but fair head is fine.
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Fair: ".to_vec();
    raw.extend(std::iter::repeat_n(b'f', 8 * 1024));
    raw.extend(b"\r\n\r\n");
    assert_eq!(request(&gw, &raw).status, 200);
    still_serving(&gw);
}

/// Signs `event` as Avara does and posts it; the parsed answer.
fn avara(gw: &Gateway, event: &Value) -> Value {
    let out = Command::new(common::python())
        .arg(common::repo().join("tests/peers/avara_sender.py"))
        .args(["--url", &format!("http://{}/webhooks/avara", gw.http)])
        .args(["--key", KEY])
        .arg(event.to_string())
        .output()
        .unwrap();
    common::assert_ok(&out, "avara_sender.py");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    answer["body"].clone()
}

#[test]
fn a_slow_request_body_gets_408_and_leaves_nothing_behind() {
    // 1 MB/s after a one-second grace: a body that stops coming fails fast.
    let gw = Gateway::start_with(flags(
        Opts::default().env("AVARA_WEBHOOK_KEY", KEY),
        &[
            "--http-header-timeout",
            "1",
            "--http-min-body-rate",
            "1000000",
        ],
    ));
    let (series, sop) = (
        "1.2.826.0.1.3680043.10.1234.78",
        "1.2.826.0.1.3680043.10.1234.78.1",
    );
    let (study, path_and_query) = upload_url(&gw, series, sop);
    let (study, path_and_query) = (study.as_str(), path_and_query.as_str());

    // The upload announces 10 MB and sends 1 KiB.
    let mut s = connect(&gw);
    s.write_all(
        format!(
            "PUT {path_and_query} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/dicom\r\n\
             Content-Length: 10000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    s.write_all(&[0u8; 1024]).unwrap();
    let mut r = BufReader::new(s);
    let reply = read_reply(&mut r);
    assert_eq!(reply.status, 408, "{}", reply.head);
    assert_eq!(reply.json()["code"], "request_timeout");
    assert!(reply.head.contains("connection: close"), "{}", reply.head);
    assert!(
        gw.spool_files().is_empty(),
        "a partial upload was left behind"
    );

    // A webhook body that stops coming: the same.
    let mut s = connect(&gw);
    s.write_all(
        b"POST /webhooks/avara HTTP/1.1\r\nHost: gw\r\nContent-Length: 5000\r\n\r\n{\"id\":",
    )
    .unwrap();
    assert_eq!(read_reply(&mut BufReader::new(s)).status, 408);

    // The real upload, at full speed, is stored.
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("sc.dcm");
    crate::webhook::secondary_capture(&sc, study, series, sop);
    let bytes = std::fs::read(&sc).unwrap();
    let mut raw = format!(
        "PUT {path_and_query} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/dicom\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    )
    .into_bytes();
    raw.extend(&bytes);
    let stored = request(&gw, &raw);
    assert_eq!(
        stored.status,
        201,
        "{}",
        String::from_utf8_lossy(&stored.body)
    );
    assert_eq!(stored.json()["sopInstanceUid"], sop);
    still_serving(&gw);
}

/// A study stored by storescu and an upload URL for a new instance of it:
/// (study, series, sop, path and query of the URL).
fn upload_url(gw: &Gateway, series: &str, sop: &str) -> (String, String) {
    let f = common::fixture("study1/series1");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    common::assert_ok(&common::storescu(gw, &["-xe"], &[&path]), "storescu");
    let study = f["study"].as_str().unwrap().to_owned();
    let answer = avara(
        gw,
        &crate::webhook::capture_event(&study, Some(series), Some(sop)),
    );
    let url = answer["uploadUrls"][0].as_str().expect("an upload URL");
    let path_and_query = url[url.find("/uploads/").unwrap()..].to_owned();
    (study, path_and_query)
}

#[test]
fn sigterm_lets_an_upload_in_flight_finish() {
    let mut gw = Gateway::start_with(Opts::default().env("AVARA_WEBHOOK_KEY", KEY));
    let (series, sop) = (
        "1.2.826.0.1.3680043.10.1234.79",
        "1.2.826.0.1.3680043.10.1234.79.1",
    );
    let (study, path_and_query) = upload_url(&gw, series, sop);
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("sc.dcm");
    crate::webhook::secondary_capture(&sc, &study, series, sop);
    let bytes = std::fs::read(&sc).unwrap();

    let mut s = connect(&gw);
    s.write_all(
        format!(
            "PUT {path_and_query} HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n",
            bytes.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // "100 Continue" comes when the handler asks for the body: the request
    // is in flight.
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_reply(&mut r).status, 100);
    gw.signal("TERM");
    gw.wait_for_log("shutting down");
    s.write_all(&bytes).unwrap();
    let stored = read_reply(&mut r);
    assert_eq!(
        stored.status,
        201,
        "{}",
        String::from_utf8_lossy(&stored.body)
    );
    assert!(closed_by_server(&mut r));
    assert!(gw.wait_exit().success());
}

#[test]
fn a_request_still_running_after_the_grace_period_is_dropped() {
    let mut gw = Gateway::start_with(flags(
        Opts::default().env("AVARA_WEBHOOK_KEY", KEY),
        &["--shutdown-grace", "1"],
    ));
    let (_, path_and_query) = upload_url(
        &gw,
        "1.2.826.0.1.3680043.10.1234.80",
        "1.2.826.0.1.3680043.10.1234.80.1",
    );
    let mut s = connect(&gw);
    s.write_all(
        format!(
            "PUT {path_and_query} HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n\
             Content-Length: 100000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_reply(&mut r).status, 100);
    // The body never comes; the gateway stops anyway, and cleanly.
    gw.signal("TERM");
    assert!(gw.wait_exit().success());
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("201"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        gw.spool_files().is_empty(),
        "a partial upload was left behind"
    );
}

#[test]
fn past_the_connection_cap_new_connections_get_503_until_slots_free() {
    let gw = Gateway::start_with(flags(
        Opts::default(),
        &[
            "--http-max-connections",
            "4",
            "--http-header-timeout",
            "300",
        ],
    ));
    gw.wait_for_log("max_connections=4");
    let idle: Vec<_> = (0..4).map(|_| connect(&gw)).collect();
    // Accepted in order: the fifth finds every slot taken.
    let fifth = connect(&gw);
    let mut r = BufReader::new(fifth.try_clone().unwrap());
    let refused = read_reply(&mut r);
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert!(refused.head.contains("retry-after:"), "{}", refused.head);
    assert_eq!(refused.json()["code"], "too_many_connections");
    assert!(closed_by_server(&mut r));
    fifth.shutdown(Shutdown::Both).ok();
    // A client that sent its request first gets the same answer.
    let refused = healthz(&gw);
    assert_eq!(refused.status, 503);

    // The idle clients leave; the server closes its side once it has let
    // go of their slots.
    for mut s in idle {
        s.shutdown(Shutdown::Write).unwrap();
        assert!(closed_by_server(&mut s));
    }
    assert_eq!(healthz(&gw).status, 200);
    still_serving(&gw);
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let gw = Gateway::start_with(flags(Opts::default(), &["--http-idle-timeout", "1"]));
    let mut s = connect(&gw);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_reply(&mut r).status, 200);
    // Kept alive, then closed for idleness, without a word.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("closed by the server");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_client_that_never_reads_its_responses_is_cut_off() {
    let gw = Gateway::start_with(flags(Opts::default(), &["--http-idle-timeout", "1"]));
    let mut s = connect(&gw);
    // Writes that block for HANG mean the server kept the connection.
    s.set_write_timeout(Some(HANG)).unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n".repeat(1000);
    // Pipelined requests, never a byte read: the responses fill the
    // socket buffers, the server's writes stall, and it gives up.
    let failure = loop {
        if let Err(e) = s.write_all(&request) {
            break e;
        }
    };
    assert!(
        !matches!(
            failure.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the server kept a connection whose client reads nothing: {failure}"
    );
    still_serving(&gw);
}

#[test]
fn without_a_token_proxied_requests_are_not_loopback() {
    let gw = Gateway::start();
    for header in [
        "X-Forwarded-For: 203.0.113.7",
        "Forwarded: for=203.0.113.7;proto=https",
        "X-Real-IP: 203.0.113.7",
    ] {
        let raw = format!(
            "GET /api/studies HTTP/1.1\r\nHost: gw\r\n{header}\r\nConnection: close\r\n\r\n"
        );
        let reply = request(&gw, raw.as_bytes());
        assert_eq!(reply.status, 403, "{header}");
        assert_eq!(reply.json()["code"], "loopback_only", "{header}");
    }
    // From loopback itself, the API answers.
    let direct = request(
        &gw,
        b"GET /api/studies HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(direct.status, 200);
}

#[test]
fn a_blank_api_token_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, " \t \n\n").unwrap();
    let (status, stderr) = Gateway::start_expecting_exit(
        flags(
            Opts::default(),
            &["--api-token-file", file.to_str().unwrap()],
        ),
        HANG,
    );
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("api_token"), "{stderr}");
}

#[test]
fn numbers_in_urls_that_overflow_are_refused_cleanly() {
    let gw = Gateway::start();
    let f = common::fixture("study1/series1");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    common::assert_ok(&common::storescu(&gw, &["-xe"], &[&path]), "storescu");
    let key = format!(
        "studies/{}/{}/{}.dcm",
        f["study"].as_str().unwrap(),
        f["series"].as_str().unwrap(),
        f["sop_instance"].as_str().unwrap()
    );
    for exp in [
        "18446744073709551615",
        "99999999999999999999999",
        "-1",
        "1e9",
    ] {
        let raw = format!(
            "GET /files/{key}?exp={exp}&kid=k&sig=AAAA HTTP/1.1\r\nHost: gw\r\n\
             Range: bytes=0-99999999999999999999999\r\nConnection: close\r\n\r\n"
        );
        let reply = request(&gw, raw.as_bytes());
        assert_eq!(reply.status, 403, "exp={exp}");
    }
    let raw = "PUT /uploads/1.2.3?exp=99999999999999999999999&kid=k&sig=A HTTP/1.1\r\n\
               Host: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert_eq!(request(&gw, raw.as_bytes()).status, 403);
    // Content-Length past u64: refused by the parser, not a panic.
    let raw = "PUT /uploads/1.2.3 HTTP/1.1\r\nHost: gw\r\n\
               Content-Length: 99999999999999999999999\r\n\r\n";
    assert_eq!(request(&gw, raw.as_bytes()).status, 400);
    still_serving(&gw);
}
