//! Storage Commitment Push Model SCP, with pynetdicom as the modality
//! (`tests/peers/commit_scu.py`): the report on the requester's own
//! association, on a new one after the requester released, across a
//! `kill -9`, and malformed requests refused without harm.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, Gateway, Opts};

const SOP_CLASS: &str = "1.2.840.10008.1.20.1";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const NO_SUCH_OBJECT: u64 = 0x0112;
const CLASS_CONFLICT: u64 = 0x0119;
/// The modality's AE title in these tests.
const MODALITY: &str = "MODALITY";

/// Stores study1 with storescu; its (SOP Class, SOP Instance) pairs.
fn store_study(gw: &Gateway) -> Vec<(String, String)> {
    let fixtures: Vec<Value> = common::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .collect();
    for f in &fixtures {
        let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
        let out = common::storescu(gw, &common::storescu_flags(f), &[path.as_path()]);
        common::assert_ok(&out, "storescu");
    }
    fixtures
        .iter()
        .map(|f| {
            (
                f["sop_class"].as_str().unwrap().to_owned(),
                f["sop_instance"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn script() -> PathBuf {
    common::repo().join("tests/peers/commit_scu.py")
}

/// Runs commit_scu.py against the gateway; its JSON answer.
fn commit_scu(gw: &Gateway, args: &[&str]) -> Value {
    commit_scu_at(gw.dicom.port(), &[], args)
}

/// Runs commit_scu.py with `global` options (`--tls-*`) against `port`.
fn commit_scu_at(port: u16, global: &[&str], args: &[&str]) -> Value {
    let out = Command::new(common::python())
        .arg(script())
        .args(["--aet", MODALITY, "--timeout", "30"])
        .args(global)
        .args(args)
        .args(["--port", &port.to_string()])
        .output()
        .expect("run commit_scu.py");
    assert!(
        out.status.success(),
        "commit_scu.py {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("commit_scu.py prints JSON")
}

fn refs(pairs: &[(String, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(c, i)| ["--ref".to_owned(), format!("{c}:{i}")])
        .collect()
}

/// The modality listening for the report on a new association.
struct Listener {
    child: Child,
    out: BufReader<ChildStdout>,
    port: u16,
}

impl Listener {
    fn start(port: u16) -> Listener {
        Listener::start_with(port, &[])
    }

    /// With `global` options (`--tls-*`: a TLS listener).
    fn start_with(port: u16, global: &[&str]) -> Listener {
        let mut child = Command::new(common::python())
            .arg(script())
            .args(["--aet", MODALITY, "--timeout", "60"])
            .args(global)
            .arg("listen")
            .args(["--port", &port.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start commit_scu.py listen");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let first = next_json(&mut out);
        let port = first["port"].as_u64().expect("listening port") as u16;
        Listener { child, out, port }
    }

    /// The report it received (it gives up after its own timeout).
    fn report(&mut self) -> Value {
        next_json(&mut self.out)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn next_json(out: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    out.read_line(&mut line).expect("read commit_scu.py");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// A gateway that knows the modality at `port` and retries every second.
fn gateway_with_node(dir: &Path, port: u16) -> Gateway {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[dicom_nodes]]\nae_title = \"{MODALITY}\"\nhost = \"127.0.0.1\"\nport = {port}\n"
        ),
    )
    .unwrap();
    let retry = vec!["1s"; 30].join(",");
    Gateway::start_with(Opts::default().args(&[
        "--config",
        config.to_str().unwrap(),
        "--storage-commitment-retry",
        &retry,
    ]))
}

/// The request `tx` as `GET /api/commitments` lists it, once `done` says so.
fn poll_commitment(gw: &Gateway, tx: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = gw.get_json("/api/commitments", None);
        assert_eq!(status, 200, "{body}");
        let found = body
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["transactionUid"] == tx)
            .cloned();
        if let Some(c) = found.filter(&done) {
            return c;
        }
        assert!(Instant::now() < deadline, "{tx} never got there: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pairs(v: &Value) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_array().unwrap().clone())
        .collect();
    out.sort_by_key(|p| p[1].as_str().unwrap().to_owned());
    out
}

#[test]
fn the_report_comes_on_the_same_association_with_failures_and_their_reasons() {
    let gw = Gateway::start();
    let stored = store_study(&gw);
    assert!(stored.len() >= 4, "study1 has {} instances", stored.len());
    let (ok, rest) = stored.split_at(2);
    let wrong_class = (MR.to_owned(), rest[0].1.clone());
    let missing = [
        (
            stored[0].0.clone(),
            "1.2.826.0.1.3680043.10.1234.999.1".to_owned(),
        ),
        (
            stored[0].0.clone(),
            "1.2.826.0.1.3680043.10.1234.999.2".to_owned(),
        ),
    ];
    // Indexed, but its object is gone from the store (an operator's rm):
    // not committed either.
    let vanished = rest[1].clone();
    let study = common::fixture_study("study1/").uid;
    let key = gw.instance_record(&study, &vanished.1)["objectKey"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::remove_file(gw.objects().join(key)).unwrap();
    let mut all = ok.to_vec();
    all.push(wrong_class.clone());
    all.extend(missing.iter().cloned());
    all.push(vanished.clone());
    let tx = "1.2.826.0.1.3680043.10.1234.777.1";
    let mut args = vec!["request", "--tx", tx];
    let refs = refs(&all);
    args.extend(refs.iter().map(String::as_str));
    let answer = commit_scu(&gw, &args);

    assert_eq!(answer["action_status"], 0, "{answer}");
    let report = &answer["report"];
    assert_eq!(report["transaction_uid"], tx, "{answer}");
    assert_eq!(report["event_type"], 2);
    let committed: Vec<Vec<Value>> = ok.iter().map(|(c, i)| vec![json!(c), json!(i)]).collect();
    assert_eq!(pairs(&report["committed"]), committed);
    let mut failed = vec![vec![json!(MR), json!(wrong_class.1), json!(CLASS_CONFLICT)]];
    failed.extend(
        missing
            .iter()
            .chain([&vanished])
            .map(|(c, i)| vec![json!(c), json!(i), json!(NO_SUCH_OBJECT)]),
    );
    failed.sort_by_key(|p| p[1].as_str().unwrap().to_owned());
    assert_eq!(pairs(&report["failed"]), failed);

    let listed = poll_commitment(&gw, tx, |c| c["state"] == "delivered");
    assert_eq!(listed["requesterAe"], MODALITY);
    assert_eq!(
        (
            &listed["instances"],
            &listed["committed"],
            &listed["failed"]
        ),
        (&json!(6), &json!(2), &json!(4))
    );
    assert_eq!(listed["attempts"], 1);
    // Behind the operator guard like the rest of /api.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let metrics = agent
        .get(&gw.url("/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("dicom_gateway_storage_commitment_reports_total{outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dicom_gateway_storage_commitment_requests_total{outcome=\"accepted\"} 1")
    );
}

#[test]
fn a_requester_that_released_gets_the_report_on_a_new_association() {
    let tmp = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(0);
    let gw = gateway_with_node(tmp.path(), listener.port);
    let stored = store_study(&gw);
    let tx = "1.2.826.0.1.3680043.10.1234.777.2";
    let mut args = vec!["request", "--then", "release", "--tx", tx];
    let refs = refs(&stored);
    args.extend(refs.iter().map(String::as_str));
    let answer = commit_scu(&gw, &args);
    assert_eq!(answer["action_status"], 0, "{answer}");

    let report = listener.report();
    assert_eq!(report["transaction_uid"], tx, "{report}");
    assert_eq!(report["event_type"], 1);
    assert_eq!(report["calling_ae"], "DICOMGW");
    let all: Vec<Vec<Value>> = stored
        .iter()
        .map(|(c, i)| vec![json!(c), json!(i)])
        .collect();
    let mut all_sorted = all.clone();
    all_sorted.sort_by_key(|p| p[1].as_str().unwrap().to_owned());
    assert_eq!(pairs(&report["committed"]), all_sorted);
    assert_eq!(report["failed"], json!([]));
    // The gateway proposed the SCP role for the class (PS3.4 J.3.3).
    assert_eq!(report["requestor_roles"][SOP_CLASS], json!([false, true]));
    let listed = poll_commitment(&gw, tx, |c| c["state"] == "delivered");
    assert_eq!(listed["committed"], stored.len());
    gw.wait_for_log("storage commitment report delivered on a new association");
}

#[test]
fn over_tls_the_request_and_the_report_on_a_new_association_use_site_certificates() {
    let pki = common::pki::Pki::new();
    // The modality: a TLS client towards the gateway, and a TLS server
    // demanding a certificate from the site CA for the report.
    let (cert, key, ca) = (
        pki.file("client.pem"),
        pki.file("client.key"),
        pki.file("ca.pem"),
    );
    let modality_tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-ca",
        ca.as_str(),
    ];
    let mut listener = Listener::start_with(0, &modality_tls);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[dicom_nodes]]\nae_title = \"{MODALITY}\"\nhost = \"127.0.0.1\"\nport = {}\ntls = true\n",
            listener.port
        ),
    )
    .unwrap();
    let gw = Gateway::start_with(Opts::default().args(&[
        "--config",
        config.to_str().unwrap(),
        "--storage-commitment-retry",
        "1s,1s,1s,1s,1s",
        "--dicom-tls-listen",
        "127.0.0.1:0",
        "--dicom-tls-cert",
        &pki.file("server.pem"),
        "--dicom-tls-key",
        &pki.file("server.key"),
        "--dicom-tls-ca",
        &pki.file("ca.pem"),
    ]));
    let stored = store_study(&gw);
    let tx = "1.2.826.0.1.3680043.10.1234.777.9";
    let mut args = vec!["request", "--then", "release", "--tx", tx];
    let refs = refs(&stored);
    args.extend(refs.iter().map(String::as_str));
    let answer = commit_scu_at(gw.dicom_tls.unwrap().port(), &modality_tls, &args);
    assert_eq!(answer["action_status"], 0, "{answer}");

    let report = listener.report();
    assert_eq!(report["transaction_uid"], tx, "{report}");
    assert_eq!(report["committed"].as_array().unwrap().len(), stored.len());
    // The gateway presented its own certificate to the modality.
    assert_eq!(report["peer_subject"], "localhost", "{report}");
    let listed = poll_commitment(&gw, tx, |c| c["state"] == "delivered");
    assert_eq!(listed["failed"], 0);
    // The request came over TLS: its association line names the modality's
    // certificate.
    gw.wait_for_log("tls_subject=");
}

#[test]
fn a_pending_report_survives_kill_9_and_arrives_after_the_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nobody listens on yet: the modality comes up later on it.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut gw = gateway_with_node(tmp.path(), port);
    let stored = store_study(&gw);
    let tx = "1.2.826.0.1.3680043.10.1234.777.3";
    let mut args = vec!["request", "--then", "release", "--tx", tx];
    let refs = refs(&stored[..1]);
    args.extend(refs.iter().map(String::as_str));
    let answer = commit_scu(&gw, &args);
    assert_eq!(answer["action_status"], 0, "{answer}");
    gw.wait_for_log("storage commitment report not delivered; will retry");
    let before = poll_commitment(&gw, tx, |c| c["state"] == "pending");
    assert!(
        before["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("association")),
        "{before}"
    );

    gw.kill9();
    gw.restart();
    let mut listener = Listener::start(port);
    let report = listener.report();
    assert_eq!(report["transaction_uid"], tx, "{report}");
    assert_eq!(report["event_type"], 1);
    assert_eq!(
        pairs(&report["committed"]),
        vec![vec![json!(stored[0].0), json!(stored[0].1)]]
    );
    poll_commitment(&gw, tx, |c| c["state"] == "delivered");
}

/// Implicit VR LE element header.
fn el(group: u16, element: u16, len: u32) -> Vec<u8> {
    let mut out = group.to_le_bytes().to_vec();
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// A request data set (Implicit VR LE) with `n` copies of one reference.
fn request_bytes(tx: &str, class: &str, instance: &str, n: usize) -> Vec<u8> {
    let pad = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(0);
        }
        b
    };
    let (tx, class, instance) = (pad(tx), pad(class), pad(instance));
    let mut out = el(0x0008, 0x1195, tx.len() as u32);
    out.extend(tx);
    out.extend(el(0x0008, 0x1199, 0xFFFF_FFFF));
    let mut item = el(0x0008, 0x1150, class.len() as u32);
    item.extend(&class);
    item.extend(el(0x0008, 0x1155, instance.len() as u32));
    item.extend(&instance);
    for _ in 0..n {
        out.extend(el(0xFFFE, 0xE000, item.len() as u32));
        out.extend(&item);
    }
    out.extend(el(0xFFFE, 0xE0DD, 0));
    out
}

#[test]
fn malformed_requests_are_refused_and_the_association_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start();
    let ct = "1.2.840.10008.5.1.4.1.1.2";
    let good = request_bytes("1.2.3.4", ct, "1.2.3.5", 2);
    let truncated = good[..good.len() - 20].to_vec();
    let huge = request_bytes("1.2.3.4", ct, "1.2.3.5", 100_001);
    let bad_uid = request_bytes("1.2.3.4", ct, "1.2/../etc", 1);
    let mut lying = el(0x0008, 0x1195, 0xFFFF_FFF0);
    lying.extend_from_slice(b"1.2.3.4");
    let mut deep = el(0x0008, 0x1195, 8);
    deep.extend_from_slice(b"1.2.3.4\0");
    for _ in 0..5000 {
        deep.extend(el(0x0040, 0xA730, 0xFFFF_FFFF));
        deep.extend(el(0xFFFE, 0xE000, 0xFFFF_FFFF));
    }
    let empty_tx = el(0x0008, 0x1195, 0);
    // PS3.7 C.4.4: 0115 invalid argument (the data set), 0213 resource
    // limitation, 0106 invalid attribute value, 0121 missing value.
    let cases: [(&str, &[u8], u64); 6] = [
        ("truncated", &truncated, 0x0115),
        ("huge", &huge, 0x0213),
        ("bad_uid", &bad_uid, 0x0106),
        ("lying", &lying, 0x0115),
        ("deep", &deep, 0x0115),
        ("empty_tx", &empty_tx, 0x0121),
    ];
    let mut files = Vec::new();
    for (name, bytes, _) in &cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        files.push(path.to_str().unwrap().to_owned());
    }
    let tx = "1.2.826.0.1.3680043.10.1234.777.4";
    let mut args = vec!["raw"];
    args.extend(files.iter().map(String::as_str));
    let then_ref = format!("{ct}:1.2.3.5");
    args.extend(["--then-tx", tx, "--then-ref", &then_ref]);
    let answer = commit_scu(&gw, &args);
    let expected: Vec<Value> = cases.iter().map(|(_, _, s)| json!(s)).collect();
    assert_eq!(answer["statuses"], json!(expected), "{answer}");
    // The same association still serves, and a good request after them
    // is accepted.
    assert_eq!(answer["echo"], 0, "{answer}");
    assert_eq!(answer["then"], 0, "{answer}");
    let out = common::echoscu(&gw, "DICOMGW");
    common::assert_ok(&out, "echoscu after the malformed requests");

    // Its requester answered no report and is not in [[dicom_nodes]]: kept,
    // undeliverable, said so in the log and the operator API.
    let listed = poll_commitment(&gw, tx, |c| c["state"] == "undeliverable");
    assert!(
        listed["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("not in [[dicom_nodes]]")),
        "{listed}"
    );
    assert_eq!(
        (&listed["failed"], &listed["committed"]),
        (&json!(1), &json!(0))
    );
    gw.wait_for_log("storage commitment report undeliverable");
}

/// S3 with `storage.ack = "journal"` and the store down: the instances
/// wait on the gateway's disk for their upload, acknowledged and durable,
/// so they are committed.
#[test]
fn instances_waiting_for_their_upload_to_s3_are_committed() {
    let mut s3 = crate::common::s3::S3Server::start();
    let gw = crate::backlog::s3_gateway(&s3, Opts::default().args(&["--storage-ack", "journal"]));
    gw.wait_for_log("ingest journal open");
    s3.stop();
    let stored = store_study(&gw);
    let (status, health) = gw.get_json("/healthz", None);
    assert_eq!(status, 200);
    assert_eq!(
        health["upload_backlog"]["instances"],
        stored.len(),
        "{health}"
    );
    let tx = "1.2.826.0.1.3680043.10.1234.777.5";
    let mut args = vec!["request", "--tx", tx];
    let refs = refs(&stored);
    args.extend(refs.iter().map(String::as_str));
    let answer = commit_scu(&gw, &args);
    assert_eq!(answer["action_status"], 0, "{answer}");
    assert_eq!(answer["report"]["event_type"], 1, "{answer}");
    assert_eq!(
        answer["report"]["committed"].as_array().unwrap().len(),
        stored.len()
    );
}
