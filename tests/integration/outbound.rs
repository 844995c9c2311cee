//! Outbound events (issue 9) as a receiver sees them: every delivery is
//! verified by `tests/peers/webhook_receiver.py` with the Standard Webhooks
//! reference library against the secret the API returned, and recorded
//! before it is answered. The tests read that record and the gateway's
//! messages API, polling with a deadline; nothing waits a fixed time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::{self, Gateway, Opts, call};

/// Every event type a subscription can ask for.
const ALL_EVENTS: [&str; 7] = [
    "study.received",
    "study.stable",
    "secondary_capture.stored",
    "media.stored",
    "report.stored",
    "report.failed",
    "instance.refused",
];

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A bound against hangs, not a synchronisation device.
const WAIT: Duration = Duration::from_secs(30);

/// Polls `probe` every 50 ms until it returns `Ok`; after [`WAIT`] fails the
/// test with `what` and the last `Err` (what was seen instead).
fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
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
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fast retry schedule (the gateway takes at most 32 waits): at once,
/// then every 300 ms for 9.3 s.
fn fast_retries() -> String {
    let mut schedule = vec!["0s"];
    schedule.extend(std::iter::repeat_n("300ms", 31));
    schedule.join(",")
}

/// A running `webhook_receiver.py`; killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts a receiver on `port` (0: any) holding `secrets`, answering
    /// verified deliveries `status`.
    fn start(secrets: &[&str], port: u16, status: u16) -> Receiver {
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
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Answers later deliveries with `status`.
    fn set_status(&self, status: u16) {
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

fn hook_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hook")
}

/// Creates a subscription; its id and secret.
fn subscribe(gw: &Gateway, url: &str, events: &[&str], include_patient: bool) -> (String, String) {
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

/// The messages API's list for subscription `id`, newest first.
fn messages(gw: &Gateway, id: &str) -> Vec<Value> {
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
fn settled(gw: &Gateway, id: &str, count: usize) -> Vec<Value> {
    wait_until(&format!("{count} messages, none pending"), || {
        let list = messages(gw, id);
        if list.len() == count && list.iter().all(|m| m["state"] != "pending") {
            Ok(list)
        } else {
            Err(Value::from(list).to_string())
        }
    })
}

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["body"]["type"] == kind)
        .collect()
}

fn of_study<'a>(records: &'a [Value], kind: &str, study: &str) -> Vec<&'a Value> {
    of_type(records, kind)
        .into_iter()
        .filter(|r| r["body"]["data"]["studyInstanceUid"] == study)
        .collect()
}

/// Waits until the receiver has `n` deliveries of `kind` for `study`.
fn wait_for_event(rx: &Receiver, kind: &str, study: &str, n: usize) -> Vec<Value> {
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
fn ids(records: &[&Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn fixture_path(f: &Value) -> PathBuf {
    common::fixtures_dir().join(f["file"].as_str().unwrap())
}

/// Sends the fixtures whose file names contain `parts` in one storescu
/// association; their study UID.
fn send(gw: &Gateway, parts: &[&str]) -> String {
    let fixtures: Vec<Value> = parts.iter().map(|p| common::fixture(p)).collect();
    let files: Vec<PathBuf> = fixtures.iter().map(fixture_path).collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    common::assert_ok(
        &common::storescu(gw, &common::storescu_flags(&fixtures[0]), &paths),
        &format!("storescu {parts:?}"),
    );
    fixtures[0]["study"].as_str().unwrap().to_owned()
}

/// Everything a verified Standard Webhooks message of `kind` must be: one
/// `v1,` signature per secret, a timestamp header near now, the body's
/// `type`, `timestamp` and `data`.
fn assert_message(record: &Value, kind: &str, verified_by: Value) {
    assert_eq!(record["verified_by"], verified_by, "{record}");
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

#[test]
fn deliveries_verify_with_the_reference_library() {
    let gw = Gateway::start_with(Opts::default().arg("--stable-after").arg("1"));
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &ALL_EVENTS, false);
    let rx = Receiver::start(&[&secret], port, 204);

    let files = [
        "study1/series1/ct1",
        "study1/series1/ct2",
        "study1/series1/ct3",
        "study1/series2/ct1",
        "study1/series2/ct2",
        "study1/series2/ct3",
    ];
    let study = send(&gw, &files);
    let first = common::fixture(files[0]);
    let records = wait_for_event(&rx, "study.stable", &study, 1);

    let received = of_study(&records, "study.received", &study);
    assert_eq!(received.len(), 1, "{records:?}");
    assert_message(received[0], "study.received", json!([0]));
    let data = &received[0]["body"]["data"];
    assert_eq!(data["studyInstanceUid"], study.as_str());
    assert_eq!(data["seriesInstanceUid"], first["series"]);
    assert_eq!(data["sopInstanceUid"], first["sop_instance"]);
    assert_eq!(data["sopClassUid"], CT_IMAGE_STORAGE);
    assert_eq!(data["modality"], "CT");
    assert_eq!(data["callingAeTitle"], "DCMTKSCU");
    assert!(data["receivedAt"].is_string(), "{data}");
    assert!(data.get("patient").is_none(), "{data}");

    let stable = of_study(&records, "study.stable", &study);
    assert_eq!(stable.len(), 1, "{records:?}");
    assert_message(stable[0], "study.stable", json!([0]));
    let data = &stable[0]["body"]["data"];
    assert_eq!(data["version"], 1, "{data}");
    assert_eq!(data["instanceCount"], 6, "{data}");
    assert_eq!(data["seriesCount"], 2, "{data}");
    assert_eq!(data["modalities"], json!(["CT"]), "{data}");
    assert_eq!(data["callingAeTitles"], json!(["DCMTKSCU"]), "{data}");
    assert!(data["totalBytes"].as_u64().unwrap() > 0, "{data}");
    let first_received =
        humantime::parse_rfc3339_weak(data["firstReceived"].as_str().unwrap()).unwrap();
    let last_received =
        humantime::parse_rfc3339_weak(data["lastReceived"].as_str().unwrap()).unwrap();
    assert!(first_received <= last_received, "{data}");
    assert!(data.get("patient").is_none(), "{data}");
    assert_ne!(received[0]["id"], stable[0]["id"]);

    // A subscription that asked for patient data gets it; the first one
    // still does not. The second study's stable event is also the barrier
    // after which the first study cannot fire again.
    let secret2 = {
        let port2 = free_port();
        let (id2, secret2) = subscribe(
            &gw,
            &hook_url(port2),
            &["study.received", "study.stable"],
            true,
        );
        let rx2 = Receiver::start(&[&secret2], port2, 204);
        let other = send(&gw, &["ts/implicit_le"]);
        let with_patient = wait_for_event(&rx2, "study.stable", &other, 1);
        for kind in ["study.received", "study.stable"] {
            let got = of_study(&with_patient, kind, &other);
            assert_eq!(got.len(), 1, "{with_patient:?}");
            assert_message(got[0], kind, json!([0]));
            let patient = &got[0]["body"]["data"]["patient"];
            assert_eq!(patient["name"], "Test^Patient", "{}", got[0]);
            assert_eq!(patient["id"], "GW-PAT-0001", "{}", got[0]);
        }
        // Only this study's: the subscription came after the first one.
        assert!(
            with_patient
                .iter()
                .all(|r| r["body"]["data"]["studyInstanceUid"] == other.as_str()),
            "{with_patient:?}"
        );
        settled(&gw, &id2, 2);
        let without = wait_for_event(&rx, "study.stable", &other, 1);
        for r in of_study(&without, "study.received", &other)
            .into_iter()
            .chain(of_study(&without, "study.stable", &other))
        {
            assert!(r["body"]["data"].get("patient").is_none(), "{r}");
        }
        secret2
    };
    assert_ne!(secret, secret2);

    let list = settled(&gw, &id, 4);
    assert!(list.iter().all(|m| m["state"] == "delivered"), "{list:?}");
    let records = rx.records();
    assert_eq!(records.len(), 4, "each event once: {records:?}");
    assert_eq!(of_study(&records, "study.received", &study).len(), 1);
    assert_eq!(of_study(&records, "study.stable", &study).len(), 1);
}

/// A C-STORE whose data set names another SOP Instance than its command:
/// refused (0xA900), and told as `instance.refused`.
#[test]
fn instance_refused_is_told() {
    let gw = Gateway::start();
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["instance.refused"], false);
    let rx = Receiver::start(&[&secret], port, 204);

    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("dataset.bin");
    std::fs::write(
        &raw,
        common::dataset_bytes(&fixture_path(&common::fixture("study1/series1/ct1"))),
    )
    .unwrap();
    let claimed = "1.2.826.0.1.3680043.10.1234.999.1";
    let answer = common::pynet(
        &gw,
        &[
            "store-raw",
            "--sop-class",
            CT_IMAGE_STORAGE,
            "--sop-instance",
            claimed,
            "--ts",
            EXPLICIT_VR_LE,
            raw.to_str().unwrap(),
        ],
    );
    assert_eq!(answer["status"], 0xA900, "{answer}");

    let records = wait_until("an instance.refused delivery", || {
        let records = rx.records();
        if of_type(&records, "instance.refused").is_empty() {
            Err(Value::from(records).to_string())
        } else {
            Ok(records)
        }
    });
    let refused = of_type(&records, "instance.refused");
    assert_eq!(refused.len(), 1, "{records:?}");
    assert_message(refused[0], "instance.refused", json!([0]));
    let data = &refused[0]["body"]["data"];
    assert_eq!(data["status"], "0xA900", "{data}");
    assert_eq!(data["sopInstanceUid"], claimed, "{data}");
    assert_eq!(data["sopClassUid"], CT_IMAGE_STORAGE, "{data}");
    assert_eq!(data["callingAeTitle"], "PYSCU", "{data}");
    assert!(
        !data["reason"].as_str().expect("a reason").is_empty(),
        "{data}"
    );
    assert!(data.get("patient").is_none(), "{data}");
    let list = settled(&gw, &id, 1);
    assert_eq!(list[0]["type"], "instance.refused", "{list:?}");
    assert!(gw.studies().is_empty(), "a refused instance was stored");
}

#[test]
fn a_receiver_that_is_down_then_failing_then_up_gets_everything_in_order() {
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--stable-after")
            .arg("1")
            .env("DICOM_GATEWAY_WEBHOOK_RETRY_SCHEDULE", &fast_retries()),
    );
    let port = free_port();
    let (id, secret) = subscribe(
        &gw,
        &hook_url(port),
        &["study.received", "study.stable"],
        false,
    );
    let studies = [
        send(
            &gw,
            &[
                "study1/series1/ct1",
                "study1/series1/ct2",
                "study1/series2/ct1",
            ],
        ),
        send(&gw, &["ts/implicit_le"]),
        send(&gw, &["ts/rle_lossless"]),
    ];

    // Down: every study's events are queued, and tried.
    let queued = wait_until("6 messages, one refused twice", || {
        let list = messages(&gw, &id);
        let tried = list.iter().any(|m| {
            m["attempts"].as_u64().unwrap_or(0) >= 2
                && m["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("connection refused"))
        });
        if list.len() == 6 && tried {
            Ok(list)
        } else {
            Err(Value::from(list).to_string())
        }
    });
    assert!(queued.iter().all(|m| m["state"] == "pending"), "{queued:?}");

    // Failing: up, but answering 500.
    let rx = Receiver::start(&[&secret], port, 500);
    wait_until("a delivery answered 500", || {
        let records = rx.records();
        if records.iter().any(|r| r["answered"] == 500) {
            Ok(())
        } else {
            Err(Value::from(records).to_string())
        }
    });
    rx.set_status(204);

    let list = settled(&gw, &id, 6);
    assert!(list.iter().all(|m| m["state"] == "delivered"), "{list:?}");
    let records = rx.records();
    for r in &records {
        assert_eq!(r["verified_by"], json!([0]), "{r}");
    }

    // Each message was tried until acknowledged, with the same id and
    // body, and never sent again once acknowledged.
    let mut by_id: BTreeMap<&str, Vec<(usize, &Value)>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_id
            .entry(r["id"].as_str().unwrap())
            .or_default()
            .push((i, r));
    }
    let listed: BTreeSet<&str> = list.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        by_id.keys().copied().collect::<BTreeSet<_>>(),
        listed,
        "{records:?}"
    );
    assert!(records.iter().any(|r| r["answered"] == 500), "{records:?}");
    for (msg, tries) in &by_id {
        let (_, acked) = tries.last().unwrap();
        assert_eq!(
            acked["answered"], 204,
            "{msg} never acknowledged: {tries:?}"
        );
        assert!(
            tries[..tries.len() - 1]
                .iter()
                .all(|(_, r)| r["answered"] == 500),
            "{msg} sent again after it was acknowledged: {tries:?}"
        );
        for (_, r) in tries {
            assert_eq!(r["body"], acked["body"], "{msg} changed between tries");
        }
    }

    // Per study: study.received acknowledged before study.stable is tried.
    for study in &studies {
        let received: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r["body"]["type"] == "study.received"
                    && r["body"]["data"]["studyInstanceUid"] == study.as_str()
            })
            .map(|(i, _)| i)
            .collect();
        let stable: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r["body"]["type"] == "study.stable"
                    && r["body"]["data"]["studyInstanceUid"] == study.as_str()
            })
            .map(|(i, _)| i)
            .collect();
        assert!(
            !received.is_empty() && !stable.is_empty(),
            "{study}: {records:?}"
        );
        let acked = *received.last().unwrap();
        assert_eq!(records[acked]["answered"], 204);
        assert!(
            acked < stable[0],
            "{study}: study.stable sent before study.received was acknowledged: {records:?}"
        );
    }
}

#[test]
fn kill_9_between_commit_and_delivery() {
    let mut gw = Gateway::start_with(
        Opts::default().env("DICOM_GATEWAY_WEBHOOK_RETRY_SCHEDULE", &fast_retries()),
    );
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["study.received"], false);
    let study = send(&gw, &["ts/implicit_le"]);
    let pending = wait_until("a study.received tried and pending", || {
        let list = messages(&gw, &id);
        match list.as_slice() {
            [m] if m["state"] == "pending" && m["attempts"].as_u64().unwrap_or(0) >= 1 => {
                Ok(m.clone())
            }
            _ => Err(Value::from(list).to_string()),
        }
    });
    assert_eq!(pending["type"], "study.received", "{pending}");
    assert_eq!(pending["studyInstanceUid"], study.as_str(), "{pending}");

    gw.kill9();
    let rx = Receiver::start(&[&secret], port, 204);
    gw.restart();
    let records = wait_for_event(&rx, "study.received", &study, 1);
    let got = of_study(&records, "study.received", &study);
    assert_message(got[0], "study.received", json!([0]));
    assert_eq!(
        got[0]["id"], pending["id"],
        "a new webhook-id after the restart"
    );
    assert!(
        records.iter().all(|r| r["id"] == pending["id"]),
        "{records:?}"
    );
    let list = settled(&gw, &id, 1);
    assert_eq!(list[0]["id"], pending["id"]);
    assert_eq!(list[0]["state"], "delivered", "{list:?}");
}

/// Writes copies of `fixture` with new SOP Instance UIDs (same study and
/// series) into `dir`: instances the gateway has not seen.
fn new_instances(dir: &Path, fixture: &str, n: usize) -> Vec<PathBuf> {
    let src = fixture_path(&common::fixture(fixture));
    let out: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("new{i}.dcm"))).collect();
    let mut args = vec![src.to_str().unwrap().to_owned()];
    args.extend(out.iter().map(|p| p.to_str().unwrap().to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::pydicom(
        "import sys, pydicom\n\
         from pydicom.uid import generate_uid\n\
         for out in sys.argv[2:]:\n\
         \x20   ds = pydicom.dcmread(sys.argv[1])\n\
         \x20   uid = generate_uid(prefix='1.2.826.0.1.3680043.10.1234.77.')\n\
         \x20   ds.SOPInstanceUID = uid\n\
         \x20   ds.file_meta.MediaStorageSOPInstanceUID = uid\n\
         \x20   ds.save_as(out)\n",
        &args,
    );
    out
}

#[test]
fn two_bursts_fire_stable_twice_with_increasing_versions() {
    let mut gw = Gateway::start_with(
        Opts::default()
            .arg("--stable-after")
            .arg("2")
            .env("DICOM_GATEWAY_WEBHOOK_RETRY_SCHEDULE", &fast_retries()),
    );
    let port = free_port();
    let (id, secret) = subscribe(
        &gw,
        &hook_url(port),
        &["study.received", "study.stable"],
        false,
    );
    let rx = Receiver::start(&[&secret], port, 204);

    let study = send(
        &gw,
        &[
            "study1/series1/ct1",
            "study1/series1/ct2",
            "study1/series1/ct3",
        ],
    );
    let records = wait_for_event(&rx, "study.stable", &study, 1);
    let first = of_study(&records, "study.stable", &study)[0].clone();
    assert_eq!(first["body"]["data"]["version"], 1, "{first}");
    assert_eq!(first["body"]["data"]["instanceCount"], 3, "{first}");

    // A pause longer than stable_after, then more of the same study.
    send(
        &gw,
        &[
            "study1/series2/ct1",
            "study1/series2/ct2",
            "study1/series2/ct3",
        ],
    );
    let records = wait_for_event(&rx, "study.stable", &study, 2);
    let stable = of_study(&records, "study.stable", &study);
    let second = stable.iter().find(|r| r["id"] != first["id"]).unwrap();
    assert_eq!(second["body"]["data"]["version"], 2, "{second}");
    assert_eq!(second["body"]["data"]["instanceCount"], 6, "{second}");
    assert_eq!(second["body"]["data"]["seriesCount"], 2, "{second}");
    assert_eq!(of_study(&records, "study.received", &study).len(), 1);

    // A third burst, and a restart inside the stable window: it fires once.
    let dir = tempfile::tempdir().unwrap();
    let more = new_instances(dir.path(), "study1/series1/ct1", 2);
    let more: Vec<&Path> = more.iter().map(PathBuf::as_path).collect();
    common::assert_ok(&common::storescu(&gw, &["-xe"], &more), "storescu burst 3");
    gw.restart();
    let records = wait_for_event(&rx, "study.stable", &study, 3);
    let third: Vec<&Value> = of_study(&records, "study.stable", &study)
        .into_iter()
        .filter(|r| r["body"]["data"]["version"] == 3)
        .collect();
    assert!(!third.is_empty(), "{records:?}");
    assert_eq!(third[0]["body"]["data"]["instanceCount"], 8, "{}", third[0]);

    // Barrier: a study received now goes stable after any timer the
    // restart could have set for the first one.
    let barrier = send(&gw, &["ts/implicit_le"]);
    wait_for_event(&rx, "study.stable", &barrier, 1);
    settled(&gw, &id, 6);
    let records = rx.records();
    let stable = of_study(&records, "study.stable", &study);
    assert_eq!(ids(&stable).len(), 3, "{records:?}");
    let versions: BTreeSet<u64> = stable
        .iter()
        .map(|r| r["body"]["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, BTreeSet::from([1, 2, 3]), "{records:?}");
    assert_eq!(
        ids(&of_study(&records, "study.received", &study)).len(),
        1,
        "{records:?}"
    );
    for r in &records {
        assert_eq!(r["verified_by"], json!([0]), "{r}");
    }
}

#[test]
fn a_rotated_secret_verifies_with_old_and_new() {
    let gw = Gateway::start();
    let port = free_port();
    let (id, old) = subscribe(&gw, &hook_url(port), &["study.received"], false);
    let (status, rotated) = call(
        &gw,
        "POST",
        &format!("/api/webhooks/{id}/rotate-secret"),
        None,
        None,
    );
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    // Index 0 holds only the old secret, index 1 only the new one.
    let rx = Receiver::start(&[&old, &new], port, 204);
    let study = send(&gw, &["ts/implicit_le"]);
    let records = wait_for_event(&rx, "study.received", &study, 1);
    assert_message(&records[0], "study.received", json!([0, 1]));
    let signatures: Vec<&str> = records[0]["signature"]
        .as_str()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(signatures.len(), 2, "{}", records[0]);
    assert!(
        signatures.iter().all(|s| s.starts_with("v1,")),
        "{}",
        records[0]
    );
}

#[test]
fn event_logs_never_carry_a_secret() {
    let mut gw = Gateway::start_with(
        Opts::default()
            .arg("--stable-after")
            .arg("1")
            .env("DICOM_GATEWAY_WEBHOOK_RETRY_SCHEDULE", &fast_retries()),
    );
    let port = free_port();
    let (id, old) = subscribe(&gw, &hook_url(port), &ALL_EVENTS, true);
    let (status, rotated) = call(
        &gw,
        "POST",
        &format!("/api/webhooks/{id}/rotate-secret"),
        None,
        None,
    );
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    // Refused, failed and delivered attempts, so every path logs.
    let study = send(&gw, &["ts/implicit_le"]);
    wait_until("a refused attempt", || {
        let list = messages(&gw, &id);
        if list.iter().any(|m| m["lastError"].is_string()) {
            Ok(())
        } else {
            Err(Value::from(list).to_string())
        }
    });
    let rx = Receiver::start(&[&new], port, 500);
    wait_until("a delivery answered 500", || {
        let records = rx.records();
        if records.iter().any(|r| r["answered"] == 500) {
            Ok(())
        } else {
            Err(Value::from(records).to_string())
        }
    });
    rx.set_status(204);
    let records = wait_for_event(&rx, "study.stable", &study, 1);
    settled(&gw, &id, 2);

    // The failed attempts were logged (by webhook-id), and checked below.
    let log = gw.final_log();
    let failed = records.iter().find(|r| r["answered"] == 500).unwrap();
    assert!(
        log.contains(failed["id"].as_str().unwrap()),
        "the failed delivery of {failed} is not in the log:\n{log}"
    );
    for secret in [&old, &new] {
        let key = secret.trim_start_matches("whsec_");
        assert!(!log.contains(key), "a secret reached the log:\n{log}");
    }
    assert!(!log.contains("whsec_"), "a secret reached the log:\n{log}");
}

#[test]
fn messages_view_and_redeliver() {
    let gw = Gateway::start();
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["study.received"], false);
    let rx = Receiver::start(&[&secret], port, 204);
    let study = send(&gw, &["ts/implicit_le"]);
    wait_for_event(&rx, "study.received", &study, 1);

    let list = settled(&gw, &id, 1);
    let msg = &list[0];
    let msg_id = msg["id"].as_str().unwrap();
    assert_eq!(msg["type"], "study.received", "{msg}");
    assert_eq!(msg["studyInstanceUid"], study.as_str(), "{msg}");
    assert_eq!(msg["state"], "delivered", "{msg}");
    assert_eq!(msg["attempts"], 1, "{msg}");
    assert_eq!(msg["lastStatus"], 204, "{msg}");
    assert!(msg["createdAt"].is_string(), "{msg}");
    assert!(msg["finishedAt"].is_string(), "{msg}");
    assert_eq!(rx.records()[0]["id"], msg_id);

    let (status, again) = call(
        &gw,
        "POST",
        &format!("/api/webhooks/{id}/messages/{msg_id}/redeliver"),
        None,
        None,
    );
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], msg_id, "{again}");
    let records = wait_for_event(&rx, "study.received", &study, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["id"], msg_id, "{r}");
        assert_message(r, "study.received", json!([0]));
    }
    assert_eq!(records[0]["body"], records[1]["body"]);
    let list = settled(&gw, &id, 1);
    assert_eq!(list[0]["state"], "delivered", "{list:?}");

    // Unknown messages and subscriptions are 404s.
    let (status, answer) = call(
        &gw,
        "POST",
        &format!("/api/webhooks/{id}/messages/msg_2Y0000000000000000000000000/redeliver"),
        None,
        None,
    );
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")));
    let (status, answer) = call(
        &gw,
        "GET",
        "/api/webhooks/wh_0123456789abcdef0123456789abcdef/messages",
        None,
        None,
    );
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")));
}
