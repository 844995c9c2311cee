//! Deliveries: what arrives, signed how, in what order, through failures.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::support::*;
use crate::common::{self, Gateway, Opts, call};

/// A study sent with storescu: `study.received` once (its first instance),
/// `study.stable` once (the whole study), each verified with the secret
/// the API returned; patient data only for a subscription that asked.
#[test]
fn deliveries_verify_with_the_reference_library() {
    let gw = Gateway::start_with(Opts::default().arg("--stable-after").arg("2"));
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

/// The receiver is down (connection refused), then up but failing (500),
/// then well: every message arrives, each tried with the same id and body
/// until acknowledged and never after, and per study `study.received` is
/// acknowledged before `study.stable` is first tried.
#[test]
fn a_receiver_that_is_down_then_failing_then_up_gets_everything_in_order() {
    let (gw, port, id, secret) = stable_subscription();
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

/// Killed after the event was committed (the instance acknowledged) and
/// before it could be delivered: after the restart it is, same webhook-id.
#[test]
fn kill_9_between_commit_and_delivery() {
    let mut gw = Gateway::start_with(Opts::default().env(RETRY_SCHEDULE, &fast_retries()));
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

/// Killed while a delivery is under way (sent, not yet answered): after
/// the restart it goes again with the same webhook-id (at-least-once).
#[test]
fn kill_9_during_a_delivery_sends_it_again_with_the_same_id() {
    let mut gw = Gateway::start_with(
        Opts::default()
            .arg("--webhook-timeout")
            .arg("300")
            .env(RETRY_SCHEDULE, &fast_retries()),
    );
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (id, secret) = subscribe(
        &gw,
        &hook_url(hanging.local_addr().unwrap().port()),
        &["study.received"],
        false,
    );
    let study = send(&gw, &["ts/implicit_le"]);
    let (held, sent) = hold_a_delivery(&hanging);
    gw.kill9();
    drop((held, hanging));

    let rx = Receiver::start(&[&secret], 0, 204);
    gw.restart();
    let (status, answer) = call(
        &gw,
        "PATCH",
        &format!("/api/webhooks/{id}"),
        Some(&json!({ "url": hook_url(rx.port) }).to_string()),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let records = wait_for_event(&rx, "study.received", &study, 1);
    assert_message(&records[0], "study.received", json!([0]));
    assert_eq!(records[0]["id"], sent.as_str());
    let list = settled(&gw, &id, 1);
    assert_eq!(
        (&list[0]["id"], &list[0]["state"]),
        (&json!(sent), &json!("delivered")),
        "{list:?}"
    );
}

/// Rotated: the old secret keeps signing, so a receiver holding either
/// verifies each delivery.
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
