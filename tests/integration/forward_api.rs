//! Forwarding destinations and rules managed through the operator API on a
//! running gateway (issue 12): created with no forwarding configured, they
//! forward at once to a real DCMTK storescp (network namespace, Unix-socket
//! relay: `forward/peers.rs`), survive kill -9, stop when deleted, follow a
//! changed address; the file's entries are read-only (409); hostile or
//! invalid bodies get a 4xx with the reason; no token, 401.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    Gateway, Opts, assert_ok, dataset_bytes, fixture, fixture_study, fixtures_dir, storescu,
    storescu_flags,
};
use crate::forward::entry_of;
use crate::forward::peers::{NsPeer, Relay, received};

mod refusals;

pub(super) const TOKEN: &str = "forward-api-token-0123456789";

pub(super) fn gateway(extra: &[&str]) -> Gateway {
    Gateway::start_with(
        Opts::default()
            .env("DICOM_GATEWAY_API_TOKEN", TOKEN)
            .args(extra),
    )
}

/// An operator API request: (status, JSON body or `null`). `body` is sent
/// as is with `content_type`.
pub(super) fn request(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    token: Option<&str>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = gw.url(path);
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let result = match (method, body) {
        ("GET", None) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", None) => agent.delete(&url).header("Authorization", &auth).call(),
        ("PUT", Some((ct, b))) => agent
            .put(&url)
            .header("Authorization", &auth)
            .content_type(ct)
            .send(b),
        other => panic!("no such request: {other:?}"),
    };
    let mut resp = result.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, value)
}

pub(super) fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    request(gw, "GET", path, None, Some(TOKEN))
}

pub(super) fn put(gw: &Gateway, path: &str, body: &Value) -> (u16, Value) {
    let text = body.to_string();
    request(
        gw,
        "PUT",
        path,
        Some(("application/json", text.as_bytes())),
        Some(TOKEN),
    )
}

pub(super) fn delete(gw: &Gateway, path: &str) -> (u16, Value) {
    request(gw, "DELETE", path, None, Some(TOKEN))
}

/// `/api/forward`'s entry for `ae`, if listed.
fn listed(gw: &Gateway, ae: &str) -> Option<Value> {
    let (status, body) = get(gw, "/api/forward");
    assert_eq!(status, 200, "{body}");
    entry_of(&body, ae)
}

/// Polls `/api/forward` until `ready` holds for `ae` (a bound against
/// hangs, not a synchronisation device).
fn wait_for(gw: &Gateway, ae: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = listed(gw, ae) {
            if ready(&d) {
                return d;
            }
            assert!(Instant::now() < deadline, "{ae}: {what} never held: {d}");
        } else {
            assert!(Instant::now() < deadline, "{ae} is not listed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SOP Instance UID → the files the peer wrote for it.
fn arrivals(dir: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut seen: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (path, sop) in received(dir) {
        let sop = sop.unwrap_or_else(|| panic!("{} is not a complete instance", path.display()));
        seen.entry(sop).or_default().push(path);
    }
    seen
}

/// A single fixture instance: (SOP Instance UID, path, storescu flags).
fn single(name: &str) -> (String, PathBuf, Vec<String>) {
    let f = fixture(name);
    let path = fixtures_dir().join(f["file"].as_str().unwrap());
    let flags = storescu_flags(&f).iter().map(|s| (*s).to_owned()).collect();
    (f["sop_instance"].as_str().unwrap().to_owned(), path, flags)
}

fn store_single(gw: &Gateway, name: &str) -> (String, PathBuf) {
    let (sop, path, flags) = single(name);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    assert_ok(&storescu(gw, &flags, &[&path]), "storescu");
    (sop, path)
}

fn pending_items(gw: &Gateway, ae: &str) -> Vec<Value> {
    let (status, body) = get(gw, &format!("/api/forward/{ae}/items"));
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

#[test]
fn destinations_and_rules_made_through_the_api_forward_live_and_survive_kill9() {
    let relay = Relay::new();
    let peer = NsPeer::storescp(&relay, "PACS", "+xa");
    // No forwarding in the configuration at all.
    let mut gw = gateway(&[]);
    assert!(listed(&gw, "PACS").is_none());

    let dest = json!({"host": "127.0.0.1", "port": relay.port, "tls": false});
    let (status, body) = put(&gw, "/api/forward/destinations/PACS", &dest);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source"], "api");
    let (status, _) = put(&gw, "/api/forward/destinations/PACS", &dest);
    assert_eq!(status, 200, "a replacement is 200");
    // Listed with lanes, metrics preset, before anything is sent.
    let d = listed(&gw, "PACS").expect("an API destination is listed");
    assert_eq!(d["pending"], 0);
    let text = metrics_text(&gw);
    assert!(
        text.contains("dicom_gateway_forward_sent_total{destination=\"PACS\"} 0"),
        "{text}"
    );

    let (status, body) = put(
        &gw,
        "/api/forward/rules/to-pacs",
        &json!({"destination": "PACS", "on": "instance"}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "to-pacs");

    // A study stored now goes on, bytes equal.
    let study = fixture_study("study1/");
    let files: Vec<&Path> = study.files.iter().map(PathBuf::as_path).collect();
    assert_ok(&storescu(&gw, &["-xe"], &files), "storescu");
    let n = study.files.len() as u64;
    wait_for(&gw, "PACS", "the study sent", |d| {
        d["pending"] == 0 && d["inFlight"] == 0 && d["sent"].as_u64() == Some(n)
    });
    let got = arrivals(peer.dir.path());
    assert_eq!(got.len(), study.files.len(), "{got:?}");
    for (sop, original) in study.sops.iter().zip(&study.files) {
        let files = got
            .get(sop)
            .unwrap_or_else(|| panic!("{sop} did not arrive"));
        assert_eq!(files.len(), 1, "{sop} arrived more than once");
        assert!(
            dataset_bytes(&files[0]) == dataset_bytes(original),
            "{sop}: the data set differs from what the modality sent"
        );
    }

    // kill -9, restart: the configuration is still there, and forwards.
    gw.kill9();
    gw.restart();
    let (status, config) = get(&gw, "/api/forward/config");
    assert_eq!(status, 200, "{config}");
    let dests = config["destinations"].as_array().unwrap();
    assert_eq!(dests.len(), 1, "{config}");
    assert_eq!(dests[0]["ae_title"], "PACS");
    assert_eq!(dests[0]["port"], relay.port);
    assert_eq!(dests[0]["tls"], false);
    assert_eq!(dests[0]["source"], "api");
    let rules = config["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{config}");
    assert_eq!(rules[0]["id"], "to-pacs");
    assert_eq!(rules[0]["destination"], "PACS");
    assert_eq!(rules[0]["source"], "api");
    let (sop, path) = store_single(&gw, "ts/implicit_le");
    wait_for(&gw, "PACS", "sent after the restart", |d| {
        d["pending"] == 0 && d["inFlight"] == 0 && d["sent"] == 1
    });
    let got = arrivals(peer.dir.path());
    let files = got.get(&sop).expect("arrived after the restart");
    assert!(dataset_bytes(&files[0]) == dataset_bytes(&path));

    // A destination a rule names cannot be deleted.
    let (status, body) = delete(&gw, "/api/forward/destinations/PACS");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("to-pacs"),
        "{body}"
    );

    // The rule deleted: the next instance is stored, not queued.
    let (status, _) = delete(&gw, "/api/forward/rules/to-pacs");
    assert_eq!(status, 204);
    let (status, _) = delete(&gw, "/api/forward/rules/to-pacs");
    assert_eq!(status, 404);
    let (sop, _) = store_single(&gw, "ts/jpeg_baseline");
    // Queueing happens in the transaction that stored it: acknowledged and
    // not in the queue means it never will be.
    assert!(pending_items(&gw, "PACS").is_empty());
    assert!(
        gw.get_json("/api/studies", Some(TOKEN)).0 == 200,
        "the gateway still answers"
    );
    let d = listed(&gw, "PACS").unwrap();
    assert_eq!(
        (d["pending"].as_u64(), d["sent"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(!arrivals(peer.dir.path()).contains_key(&sop));

    // A changed address is used for the next association: a second
    // storescp behind another relay, same AE title.
    let relay2 = Relay::new();
    let peer2 = NsPeer::storescp(&relay2, "PACS", "+xa");
    let (status, _) = put(
        &gw,
        "/api/forward/destinations/PACS",
        &json!({"host": "127.0.0.1", "port": relay2.port}),
    );
    assert_eq!(status, 200);
    let (status, _) = put(
        &gw,
        "/api/forward/rules/ct-only",
        &json!({"destination": "PACS", "modalities": ["CT"]}),
    );
    assert_eq!(status, 201);
    let (ct, ct_sop) = (&study.files[0], study.sops[0].clone());
    assert_ok(&storescu(&gw, &["-xe"], &[ct.as_path()]), "storescu");
    wait_for(&gw, "PACS", "sent to the new address", |d| {
        d["pending"] == 0 && d["inFlight"] == 0 && d["sent"] == 2
    });
    assert!(arrivals(peer2.dir.path()).contains_key(&ct_sop));
    assert_eq!(
        arrivals(peer.dir.path())[&ct_sop].len(),
        1,
        "the old address got nothing more"
    );

    // A destination with queued items goes only with ?purge=true.
    let dead = Relay::new(); // nobody behind it: down
    let (status, _) = put(
        &gw,
        "/api/forward/destinations/DEAD",
        &json!({"host": "127.0.0.1", "port": dead.port}),
    );
    assert_eq!(status, 201);
    let (status, _) = put(
        &gw,
        "/api/forward/rules/dead",
        &json!({"destination": "DEAD"}),
    );
    assert_eq!(status, 201);
    store_single(&gw, "ts/rle_lossless");
    assert_eq!(pending_items(&gw, "DEAD").len(), 1);
    assert_eq!(delete(&gw, "/api/forward/rules/dead").0, 204);
    let (status, body) = delete(&gw, "/api/forward/destinations/DEAD");
    assert_eq!(status, 409, "{body}");
    let why = body["error"].as_str().unwrap();
    assert!(
        why.contains("1 pending") && why.contains("purge=true"),
        "{why}"
    );
    let (status, body) = delete(&gw, "/api/forward/destinations/DEAD?purge=true");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged"], 1);
    assert!(listed(&gw, "DEAD").is_none(), "its lanes are gone");
    let (_, config) = get(&gw, "/api/forward/config");
    assert!(
        !config.to_string().contains("DEAD"),
        "deleted for good: {config}"
    );
    // And it stays deleted across a restart.
    gw.kill9();
    gw.restart();
    let (_, config) = get(&gw, "/api/forward/config");
    assert_eq!(config["destinations"].as_array().unwrap().len(), 1);
    assert_eq!(config["rules"][0]["id"], "ct-only");
    assert!(listed(&gw, "DEAD").is_none());
}

fn metrics_text(gw: &Gateway) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&gw.url("/metrics"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    resp.body_mut().read_to_string().unwrap()
}

#[test]
fn a_moved_destination_is_tried_at_its_new_address_at_once() {
    // Down for ten minutes after the second failure: only the move can
    // bring the item through within the wait below.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        "[forwarding]\nassociations = 1\nretry_schedule = [\"1s\", \"10m\"]\n",
    )
    .unwrap();
    let gw = gateway(&["--config", cfg.to_str().unwrap()]);
    let dead = Relay::new();
    let (status, _) = put(
        &gw,
        "/api/forward/destinations/MOVED",
        &json!({"host": "127.0.0.1", "port": dead.port}),
    );
    assert_eq!(status, 201);
    let (status, _) = put(
        &gw,
        "/api/forward/rules/moved",
        &json!({"destination": "MOVED"}),
    );
    assert_eq!(status, 201);
    let (sop, path) = store_single(&gw, "ts/implicit_le");
    let down = wait_for(&gw, "MOVED", "down for the long step", |d| {
        d["up"] == false && d["connectFailures"].as_u64() >= Some(2)
    });
    assert_eq!(down["pending"], 1, "{down}");

    let relay = Relay::new();
    let peer = NsPeer::storescp(&relay, "MOVED", "+xa");
    let (status, _) = put(
        &gw,
        "/api/forward/destinations/MOVED",
        &json!({"host": "127.0.0.1", "port": relay.port}),
    );
    assert_eq!(status, 200);
    let d = wait_for(&gw, "MOVED", "sent to the new address", |d| {
        d["pending"] == 0 && d["inFlight"] == 0 && d["sent"] == 1
    });
    assert_eq!(d["up"], true);
    let got = arrivals(peer.dir.path());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(dataset_bytes(&got[&sop][0]) == dataset_bytes(&path));
}
