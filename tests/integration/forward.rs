//! Forwarding (issue 12) against real destinations: DCMTK storescp and
//! Orthanc, each in a network namespace of its own (see `forward/peers.rs`).
//! Instances arrive once, bit-exact after the file meta; a destination
//! that is down holds them with attempts counted until it is up; a kill -9
//! in the middle loses nothing; filters hold; a destination that accepts
//! none of an instance's transfer syntaxes fails the item with the reason.

pub(crate) mod peers;
mod robustness;
mod statuses;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    Gateway, Opts, assert_ok, call, dataset_bytes, fixture, fixture_study, pydicom, require,
    storescu_flags,
};
use peers::{NsPeer, Relay, received};

/// A destination in the gateway's configuration: AE title, relay port and
/// the `[[forward]]` rule's extra lines.
struct Dest<'a> {
    ae: &'a str,
    port: u16,
    rule: &'a str,
}

/// A config file forwarding to `dests`, retrying every second.
fn config(dir: &Path, dests: &[Dest<'_>]) -> PathBuf {
    let mut text = String::new();
    for d in dests {
        text.push_str(&format!(
            "[[dicom_nodes]]\nae_title = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n\n",
            d.ae, d.port
        ));
        text.push_str(&format!(
            "[[forward]]\ndestination = \"{}\"\n{}\n\n",
            d.ae, d.rule
        ));
    }
    text.push_str("[forwarding]\nassociations = 2\nretry_schedule = [\"1s\"]\ntimeout = 10\n");
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// storescp as `ae` (every transfer syntax) behind a relay, and a config
/// file forwarding to it with `rule`: the relay, the peer, the config's
/// directory and the config file.
fn one_storescp(ae: &str, rule: &str) -> (Relay, NsPeer, tempfile::TempDir, PathBuf) {
    let relay = Relay::new();
    let peer = NsPeer::storescp(&relay, ae, "+xa");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &[Dest {
            ae,
            port: relay.port,
            rule,
        }],
    );
    (relay, peer, tmp, cfg)
}

fn start(cfg: &Path, opts: Opts) -> Gateway {
    Gateway::start_with(opts.args(&["--config", cfg.to_str().unwrap()]))
}

/// storescu from calling AE `aet` (the harness's helper always says
/// DCMTKSCU).
fn store_as(gw: &Gateway, aet: &str, flags: &[&str], files: &[PathBuf]) {
    let out = Command::new(require("/usr/bin/storescu"))
        .env("TCP_NODELAY", "1")
        .args(["-aet", aet, "-aec", "DICOMGW"])
        .args(flags)
        .arg(gw.dicom.ip().to_string())
        .arg(gw.dicom.port().to_string())
        .args(files)
        .output()
        .unwrap();
    assert_ok(&out, "storescu");
}

/// The entry for `ae` in an `/api/forward` answer, if listed.
pub(crate) fn entry_of(forward: &Value, ae: &str) -> Option<Value> {
    forward["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == ae)
        .cloned()
}

/// `/api/forward`'s entry for `ae`.
fn destination(gw: &Gateway, ae: &str) -> Value {
    let (status, body) = call(gw, "GET", "/api/forward", None, None);
    assert_eq!(status, 200, "{body}");
    entry_of(&body, ae).unwrap_or_else(|| panic!("{ae} not in {body}"))
}

/// Polls `/api/forward` until `ready` holds for `ae`'s entry (a bound
/// against hangs, not a synchronisation device).
fn wait_for(gw: &Gateway, ae: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = destination(gw, ae);
        if ready(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "{ae}: {what} never held: {d}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Nothing pending or in flight any more.
fn settled(d: &Value) -> bool {
    d["pending"] == 0 && d["inFlight"] == 0
}

/// SOP Instance UID → how many files the destination wrote for it.
fn arrivals(dir: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for (path, sop) in received(dir) {
        let sop = sop.unwrap_or_else(|| panic!("{} is not a complete instance", path.display()));
        *seen.entry(sop).or_default() += 1;
    }
    seen
}

#[test]
fn forwards_as_stored_filtered_and_refuses_what_a_destination_cannot_take() {
    // A: takes everything; B: implicit VR LE only; C: instances from
    // calling AE MODALITY2 only.
    let (ra, rb, rc) = (Relay::new(), Relay::new(), Relay::new());
    let a = NsPeer::storescp(&ra, "STORE_A", "+xa");
    let b = NsPeer::storescp(&rb, "STORE_B", "+xi");
    let c = NsPeer::storescp(&rc, "STORE_C", "+xa");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &[
            Dest {
                ae: "STORE_A",
                port: ra.port,
                rule: "",
            },
            Dest {
                ae: "STORE_B",
                port: rb.port,
                rule: "",
            },
            Dest {
                ae: "STORE_C",
                port: rc.port,
                rule: "calling_aets = [\"MODALITY2\"]",
            },
        ],
    );
    let gw = start(&cfg, Opts::default());

    let study = fixture_study("study1/");
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);
    // Compressed and implicit instances go as they were received.
    let mut sent: Vec<(String, PathBuf)> = study
        .sops
        .iter()
        .cloned()
        .zip(study.files.clone())
        .collect();
    for name in ["ts/implicit_le", "ts/jpeg_baseline", "ts/rle_lossless"] {
        let f = fixture(name);
        let path = crate::common::fixtures_dir().join(f["file"].as_str().unwrap());
        store_as(
            &gw,
            "MODALITY2",
            &storescu_flags(&f),
            std::slice::from_ref(&path),
        );
        sent.push((f["sop_instance"].as_str().unwrap().to_owned(), path));
    }
    let total = sent.len();

    // A: every instance once, data set bytes equal to what was sent.
    let da = wait_for(&gw, "STORE_A", "all sent", |d| {
        settled(d) && d["sent"].as_u64() == Some(total as u64)
    });
    assert_eq!(da["up"], true);
    assert_eq!(da["failedItems"], 0);
    let files: BTreeMap<String, PathBuf> = received(a.dir.path())
        .into_iter()
        .map(|(p, sop)| (sop.expect("complete"), p))
        .collect();
    assert_eq!(files.len(), total, "one file per instance at STORE_A");
    for (sop, original) in &sent {
        let got = files
            .get(sop)
            .unwrap_or_else(|| panic!("{sop} missing at STORE_A"));
        assert!(
            dataset_bytes(got) == dataset_bytes(original),
            "{sop}: the data set STORE_A received differs from the one the modality sent"
        );
    }

    // B: only the implicit VR LE instance; the others failed with the
    // reason, and are not retried by themselves.
    let db = wait_for(&gw, "STORE_B", "settled", |d| {
        settled(d) && d["failedItems"].as_u64() == Some(total as u64 - 1)
    });
    assert_eq!(db["sent"], 1);
    let (status, items) = call(
        &gw,
        "GET",
        "/api/forward/STORE_B/items?state=failed",
        None,
        None,
    );
    assert_eq!(status, 200, "{items}");
    let items = items["items"].as_array().unwrap();
    assert_eq!(items.len(), total - 1);
    for item in items {
        let why = item["lastError"].as_str().unwrap();
        assert!(why.contains("transfer syntax"), "{why}");
        assert!(
            why.contains(item["transferSyntaxUid"].as_str().unwrap()),
            "{why}"
        );
        assert_eq!(item["state"], "failed");
    }
    let b_arrived = arrivals(b.dir.path());
    let implicit = fixture("ts/implicit_le")["sop_instance"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b_arrived.keys().collect::<Vec<_>>(), vec![&implicit]);
    // An operator's retry puts them back; they fail again for the same
    // reason (the destination still refuses the transfer syntaxes).
    let (status, body) = call(&gw, "POST", "/api/forward/STORE_B/retry", None, None);
    assert_eq!(
        (status, body["retried"].as_u64()),
        (202, Some(total as u64 - 1))
    );
    wait_for(&gw, "STORE_B", "failed again", |d| {
        settled(d) && d["failed"].as_u64() == Some(2 * (total as u64 - 1))
    });

    // C: the calling AE filter let only MODALITY2's three through.
    let dc = wait_for(&gw, "STORE_C", "settled", |d| settled(d) && d["sent"] == 3);
    assert_eq!(dc["failedItems"], 0);
    let c_arrived = arrivals(c.dir.path());
    let wanted: BTreeSet<&String> = sent[study.sops.len()..].iter().map(|(s, _)| s).collect();
    assert_eq!(c_arrived.keys().collect::<BTreeSet<_>>(), wanted);

    // Unknown destinations are 404; metrics carry the queue.
    let (status, _) = call(&gw, "GET", "/api/forward/NOPE/items", None, None);
    assert_eq!(status, 404);
    let (status, metrics) = call_text(&gw, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("dicom_gateway_forward_sent_total{destination=\"STORE_C\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("dicom_gateway_forward_destination_up{destination=\"STORE_A\"} 1"));
    // The queue gauges follow once the lanes are idle.
    let gauges = [
        "dicom_gateway_forward_queue{destination=\"STORE_A\",state=\"pending\"} 0".to_owned(),
        format!(
            "dicom_gateway_forward_queue{{destination=\"STORE_B\",state=\"failed\"}} {}",
            total - 1
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = call_text(&gw, "/metrics");
        if gauges.iter().all(|g| metrics.contains(g.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "{gauges:?} not in {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn call_text(gw: &Gateway, path: &str) -> (u16, String) {
    let mut resp = ureq::get(&gw.url(path)).call().expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

#[test]
fn a_destination_down_holds_the_queue_then_gets_every_instance_once() {
    let relay = Relay::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &[Dest {
            ae: "PACS",
            port: relay.port,
            rule: "on = \"instance\"",
        }],
    );
    let gw = start(&cfg, Opts::default());
    let study = fixture_study("study1/");
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);

    // Down: everything pending, attempts counted, the destination marked
    // down with the error, and the next attempt scheduled.
    let down = wait_for(&gw, "PACS", "down with attempts", |d| {
        d["up"] == false && d["pending"] == 6 && d["connectFailures"].as_u64() >= Some(2)
    });
    assert!(
        down["lastError"].as_str().unwrap().contains("associate"),
        "{down}"
    );
    assert!(down["nextAttempt"].is_string(), "{down}");
    let (_, items) = call(
        &gw,
        "GET",
        "/api/forward/PACS/items?state=pending",
        None,
        None,
    );
    let items = items["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert!(
        items.iter().all(|i| i["attempts"].as_u64() >= Some(1)),
        "{items:?}"
    );

    // Up: each instance arrives exactly once.
    let peer = NsPeer::storescp(&relay, "PACS", "+xa");
    let up = wait_for(&gw, "PACS", "delivered", |d| settled(d) && d["sent"] == 6);
    assert_eq!(up["up"], true);
    let arrived = arrivals(peer.dir.path());
    let expected: BTreeMap<String, usize> = study.sops.iter().map(|s| (s.clone(), 1)).collect();
    assert_eq!(arrived, expected);
}

/// 200 small instances of a new study, from study1's first CT.
fn generate(dir: &Path, n: usize) -> Vec<PathBuf> {
    let script = r#"
import sys, pydicom
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = pydicom.dcmread(src)
root = "1.2.826.0.1.3680043.10.543.%d" % (abs(hash(out)) % 10**9)
ds.StudyInstanceUID = root + ".1"
ds.SeriesInstanceUID = root + ".2"
for i in range(n):
    uid = "%s.3.%d" % (root, i + 1)
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.InstanceNumber = i + 1
    ds.save_as("%s/i%04d.dcm" % (out, i), enforce_file_format=True)
"#;
    let first = fixture_study("study1/").files[0].clone();
    pydicom(
        script,
        &[
            first.to_str().unwrap(),
            dir.to_str().unwrap(),
            &n.to_string(),
        ],
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), n);
    files
}

#[test]
fn a_kill_during_forwarding_loses_nothing() {
    const N: usize = 200;
    let (_relay, peer, _tmp, cfg) = one_storescp("PACS", "");
    let set = tempfile::tempdir().unwrap();
    let files = generate(set.path(), N);
    // Each send waits 20 ms first: forwarding outlasts the storing, and
    // the kill lands in the middle of the queue.
    let mut gw = start(
        &cfg,
        Opts::default().env("FAILPOINTS", "forward::pace=return(20)"),
    );
    store_as(&gw, "DCMTKSCU", &["-xe"], &files);
    let deadline = Instant::now() + Duration::from_secs(60);
    while peer.file_count() < 40 {
        assert!(Instant::now() < deadline, "forwarding did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    gw.kill9();
    let before = peer.file_count();
    assert!(
        before < N,
        "everything arrived before the kill: the test proves nothing"
    );

    gw.restart_without_env("FAILPOINTS");
    wait_for(&gw, "PACS", "the rest delivered", |d| {
        settled(d) && d["failedItems"] == 0 && d["sent"].as_u64() >= Some(1)
    });
    let all = received(peer.dir.path());
    // An instance cut off by the kill may have left a partial file.
    let partial = all.iter().filter(|(_, s)| s.is_none()).count();
    assert!(partial <= 2, "{partial} partial files");
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for sop in all.into_iter().filter_map(|(_, s)| s) {
        *count.entry(sop).or_default() += 1;
    }
    assert_eq!(count.len(), N, "every instance arrived");
    // Resent after the restart: at most what the two lanes had sent since
    // their last flush of the queue (8 each) plus the one in flight each.
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    assert!(duplicates <= 2 * (8 + 1), "{duplicates} duplicates");
}

#[test]
fn a_tls_destination_gets_the_study_over_mutual_tls() {
    let pki = crate::common::pki::Pki::new();
    let relay = Relay::new();
    // storescp speaks TLS only and demands a certificate from the site CA:
    // the gateway's own (dicom_tls_cert) is its client certificate.
    let (key, cert, ca) = (
        pki.file("client.key"),
        pki.file("client.pem"),
        pki.file("ca.pem"),
    );
    let peer = NsPeer::storescp_tls(&relay, "SECURE", [&key, &cert, &ca]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[dicom_nodes]]\nae_title = \"SECURE\"\nhost = \"127.0.0.1\"\nport = {}\ntls = true\n\n\
             [[forward]]\ndestination = \"SECURE\"\n\n\
             [forwarding]\nretry_schedule = [\"1s\"]\ntimeout = 10\n",
            relay.port
        ),
    )
    .unwrap();
    let gw = start(
        &cfg,
        Opts::default().args(&[
            "--dicom-tls-cert",
            &pki.file("server.pem"),
            "--dicom-tls-key",
            &pki.file("server.key"),
            "--dicom-tls-ca",
            &ca,
        ]),
    );
    let study = fixture_study("study1/");
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);
    let done = wait_for(&gw, "SECURE", "delivered", |d| settled(d) && d["sent"] == 6);
    assert_eq!(done["up"], true, "{done}");
    let arrived = arrivals(peer.dir.path());
    let expected: BTreeMap<String, usize> = study.sops.iter().map(|s| (s.clone(), 1)).collect();
    assert_eq!(arrived, expected);
}

#[test]
fn orthanc_receives_the_study() {
    let relay = Relay::new();
    let orthanc = NsPeer::orthanc(&relay, "ORTHANC");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &[Dest {
            ae: "ORTHANC",
            port: relay.port,
            rule: "modalities = [\"CT\"]",
        }],
    );
    let gw = start(&cfg, Opts::default());
    let study = fixture_study("study1/");
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);
    wait_for(&gw, "ORTHANC", "delivered", |d| {
        settled(d) && d["sent"] == 6
    });
    let stored = arrivals(&orthanc.dir.path().join("storage"));
    let expected: BTreeMap<String, usize> = study.sops.iter().map(|s| (s.clone(), 1)).collect();
    assert_eq!(stored, expected);
}

#[test]
fn a_rule_naming_an_unknown_node_refuses_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gateway.toml");
    std::fs::write(&cfg, "[[forward]]\ndestination = \"GHOST\"\n").unwrap();
    let (status, log) = Gateway::start_expecting_exit(
        Opts::default().args(&["--config", cfg.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(
        log.contains("GHOST") && log.contains("dicom_nodes"),
        "the refusal names the rule's destination: {log}"
    );
}

#[test]
fn a_study_stable_rule_sends_the_whole_study_once_it_is_quiet() {
    let (_relay, peer, _tmp, cfg) = one_storescp("ARCHIVE", "on = \"study_stable\"");
    let gw = start(&cfg, Opts::default().args(&["--stable-after", "3"]));
    let study = fixture_study("study1/");
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);
    // Stored, not yet quiet for 3 s: nothing queued.
    let d = destination(&gw, "ARCHIVE");
    assert_eq!(
        (d["pending"].as_u64(), d["sent"].as_u64()),
        (Some(0), Some(0)),
        "{d}"
    );
    gw.wait_for_log("study stable");
    wait_for(&gw, "ARCHIVE", "the study delivered", |d| {
        settled(d) && d["sent"] == 6
    });
    let arrived = arrivals(peer.dir.path());
    let expected: BTreeMap<String, usize> = study.sops.iter().map(|s| (s.clone(), 1)).collect();
    assert_eq!(arrived, expected);
}
