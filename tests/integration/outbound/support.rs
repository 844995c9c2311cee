//! What the outbound tests share: the receiver, polling, the API calls.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::{self, Gateway, call};

/// Every event type a subscription can ask for.
pub const ALL_EVENTS: [&str; 7] = [
    "study.received",
    "study.stable",
    "secondary_capture.stored",
    "media.stored",
    "report.stored",
    "report.failed",
    "instance.refused",
];

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A bound against hangs, not a synchronisation device.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `probe` every 50 ms until it returns `Ok`; after [`WAIT`] fails the
/// test with `what` and the last `Err` (what was seen instead).
pub fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe() {
            Ok(found) => return found,
            Err(seen) if Instant::now() >= deadline => {
                panic!("not within {WAIT:?}: {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A loopback port nothing listens on (bound, noted, released), for a
/// receiver that is down or that starts after its subscription.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for the gateway to connect to `endpoint` (a listener nobody
/// answers on) and send a request's head; the connection, held open and
/// unanswered, and the request's `webhook-id`.
pub fn hold_a_delivery(endpoint: &TcpListener) -> (TcpStream, String) {
    endpoint.set_nonblocking(true).unwrap();
    let (mut held, _) = wait_until("a connection to the endpoint", || {
        endpoint.accept().map_err(|e| e.to_string())
    });
    held.set_nonblocking(false).unwrap();
    held.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 64 * 1024, "no end to the request head");
        held.read_exact(&mut byte).expect("a request head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("an ASCII request head");
    assert!(head.starts_with("POST /hook"), "{head}");
    let id = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("webhook-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no webhook-id: {head}"));
    (held, id)
}

/// The environment variable the retry schedule is given in.
pub const RETRY_SCHEDULE: &str = "DICOM_GATEWAY_WEBHOOK_RETRY_SCHEDULE";

/// A fast retry schedule (the gateway takes at most 32 waits): at once,
/// then every 300 ms for 9.3 s.
pub fn fast_retries() -> String {
    let mut schedule = vec!["0s"];
    schedule.extend(std::iter::repeat_n("300ms", 31));
    schedule.join(",")
}

/// A running `webhook_receiver.py`; killed when dropped.
pub struct Receiver {
    child: Child,
    pub port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts a receiver on `port` (0: any) holding `secrets`, answering
    /// verified deliveries `status`.
    pub fn start(secrets: &[&str], port: u16, status: u16) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("deliveries.jsonl");
        let mut cmd = Command::new(common::python());
        cmd.arg(common::repo().join("tests/peers/webhook_receiver.py"))
            .arg("--record")
            .arg(&record)
            .args(["--port", &port.to_string()])
            .args(["--status", &status.to_string()]);
        for s in secrets {
            cmd.args(["--secret", s]);
        }
        let stderr = if std::env::var_os("GATEWAY_TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start tests/peers/webhook_receiver.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("webhook_receiver.py printed {line:?}, not its port"));
        Receiver {
            child,
            port,
            record,
            _dir: dir,
        }
    }

    /// Every delivery so far, in the order they were answered.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Answers later deliveries with `status`.
    pub fn set_status(&self, status: u16) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .post(&format!("http://127.0.0.1:{}/_control", self.port))
            .content_type("application/json")
            .send(json!({ "status": status }).to_string())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hook_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hook")
}

/// Creates a subscription; its id and secret.
pub fn subscribe(
    gw: &Gateway,
    url: &str,
    events: &[&str],
    include_patient: bool,
) -> (String, String) {
    let body = json!({
        "name": "receiver",
        "url": url,
        "events": events,
        "includePatient": include_patient,
    });
    let (status, answer) = call(gw, "POST", "/api/webhooks", Some(&body.to_string()), None);
    assert_eq!(status, 201, "{answer}");
    let secret = answer["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    (answer["id"].as_str().unwrap().to_owned(), secret)
}

/// What the stable-study tests start from: a gateway with `stable_after`
/// 2 s and fast retries, and one subscription to `study.received` and
/// `study.stable` at a free port where nothing listens yet. The gateway,
/// that port, the subscription's id and its secret.
pub fn stable_subscription() -> (Gateway, u16, String, String) {
    let gw = Gateway::start_with(
        common::Opts::default()
            .arg("--stable-after")
            .arg("2")
            .env(RETRY_SCHEDULE, &fast_retries()),
    );
    let port = free_port();
    let (id, secret) = subscribe(
        &gw,
        &hook_url(port),
        &["study.received", "study.stable"],
        false,
    );
    (gw, port, id, secret)
}

/// The messages API's list for subscription `id`, newest first.
pub fn messages(gw: &Gateway, id: &str) -> Vec<Value> {
    let (status, answer) = call(
        gw,
        "GET",
        &format!("/api/webhooks/{id}/messages"),
        None,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages list: {answer}"))
        .clone()
}

/// Waits until subscription `id` has `count` messages and none is
/// pending; returns them.
pub fn settled(gw: &Gateway, id: &str, count: usize) -> Vec<Value> {
    wait_until(&format!("{count} messages, none pending"), || {
        let list = messages(gw, id);
        if list.len() == count && list.iter().all(|m| m["state"] != "pending") {
            Ok(list)
        } else {
            Err(Value::from(list).to_string())
        }
    })
}

pub fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["body"]["type"] == kind)
        .collect()
}

pub fn of_study<'a>(records: &'a [Value], kind: &str, study: &str) -> Vec<&'a Value> {
    of_type(records, kind)
        .into_iter()
        .filter(|r| r["body"]["data"]["studyInstanceUid"] == study)
        .collect()
}

/// Waits until the receiver has `n` deliveries of `kind` for `study`.
pub fn wait_for_event(rx: &Receiver, kind: &str, study: &str, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} × {kind} for {study}"), || {
        let records = rx.records();
        if of_study(&records, kind, study).len() >= n {
            Ok(records)
        } else {
            Err(Value::from(records).to_string())
        }
    })
}

/// The distinct webhook-ids of `records`.
pub fn ids(records: &[&Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn fixture_path(f: &Value) -> PathBuf {
    common::fixtures_dir().join(f["file"].as_str().unwrap())
}

/// Sends the fixtures whose file names contain `parts` in one storescu
/// association; their study UID.
pub fn send(gw: &Gateway, parts: &[&str]) -> String {
    let fixtures: Vec<Value> = parts.iter().map(|p| common::fixture(p)).collect();
    let files: Vec<PathBuf> = fixtures.iter().map(fixture_path).collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    common::assert_ok(
        &common::storescu(gw, &common::storescu_flags(&fixtures[0]), &paths),
        &format!("storescu {parts:?}"),
    );
    fixtures[0]["study"].as_str().unwrap().to_owned()
}

/// Everything a delivered Standard Webhooks message of `kind` must be:
/// verified by the receiver's secrets `verified_by` (indexes), answered
/// 2xx, only `v1,` signatures, a `msg_` id, the attempt's Unix time in
/// seconds, and a body with `type`, an RFC 3339 `timestamp` and `data`.
pub fn assert_message(record: &Value, kind: &str, verified_by: Value) {
    assert_eq!(record["verified_by"], verified_by, "{record}");
    let signatures = record["signature"].as_str().unwrap();
    assert!(
        signatures.split(' ').all(|s| s.starts_with("v1,")),
        "{record}"
    );
    assert_eq!(record["answered"].as_u64().unwrap() / 100, 2, "{record}");
    assert_eq!(record["path"], "/hook", "{record}");
    let id = record["id"].as_str().unwrap();
    assert!(id.starts_with("msg_"), "{record}");
    let sent: u64 = record["timestamp"].as_str().unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(sent.abs_diff(now) < 120, "{record}");
    let body = &record["body"];
    assert_eq!(body["type"], kind, "{record}");
    humantime::parse_rfc3339_weak(body["timestamp"].as_str().expect("a timestamp"))
        .unwrap_or_else(|e| panic!("{e}: {record}"));
    assert!(body["data"].is_object(), "{record}");
}
