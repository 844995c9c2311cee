//! Where and how the gateway will not be held: the report fetcher's
//! address guard, an endpoint that never answers.

use serde_json::Value;

use super::support::*;
use crate::common::{Gateway, Opts, call};

/// Waits until subscription `id`'s only message has failed; returns it.
fn failed(gw: &Gateway, id: &str) -> Value {
    let msg = settled(gw, id, 1).remove(0);
    assert_eq!(msg["state"], "failed", "{msg}");
    msg
}

/// `webhook_allow_private = false`: a loopback endpoint is refused before
/// any connection, and the message fails saying which setting refused it.
#[test]
fn loopback_only_when_private_addresses_are_allowed() {
    let gw = Gateway::start_with(
        Opts::default()
            .env("DICOM_GATEWAY_WEBHOOK_ALLOW_PRIVATE", "false")
            .env(RETRY_SCHEDULE, "0s,100ms"),
    );
    let rx = Receiver::start(&[], 0, 204);
    let (id, _) = subscribe(&gw, &hook_url(rx.port), &["study.received"], false);
    send(&gw, &["ts/implicit_le"]);
    let msg = failed(&gw, &id);
    let error = msg["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("webhook_allow_private"),
        "{msg}"
    );
    assert!(rx.records().is_empty(), "{:?}", rx.records());
}

/// Link-local (cloud metadata) is refused even where private addresses are
/// allowed.
#[test]
fn link_local_is_never_called() {
    let gw = Gateway::start_with(Opts::default().env(RETRY_SCHEDULE, "0s"));
    let (id, _) = subscribe(
        &gw,
        "http://169.254.169.254/latest/meta-data",
        &["study.received"],
        false,
    );
    send(&gw, &["ts/implicit_le"]);
    let msg = failed(&gw, &id);
    assert!(
        msg["lastError"]
            .as_str()
            .is_some_and(|e| e.starts_with("refused")),
        "{msg}"
    );
}

/// An endpoint that takes connections and never answers (the kernel
/// completes the handshake of a listener that never accepts) cannot hold
/// every delivery slot, nor slow ingest.
#[test]
fn a_hanging_endpoint_holds_up_only_itself() {
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--webhook-concurrency")
            .arg("2")
            .arg("--webhook-timeout")
            .arg("300"),
    );
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = hook_url(hanging.local_addr().unwrap().port());
    let (stuck, _) = subscribe(&gw, &hanging_url, &["study.received"], false);
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["study.received"], false);
    let rx = Receiver::start(&[&secret], port, 204);

    let studies = [
        send(&gw, &["ts/implicit_le"]),
        send(&gw, &["ts/rle_lossless"]),
        send(&gw, &["ts/explicit_be"]),
    ];
    // A delivery to the hanging endpoint is under way, and stays so.
    let (held, _) = hold_a_delivery(&hanging);

    for study in &studies {
        let records = wait_for_event(&rx, "study.received", study, 1);
        assert_message(
            of_study(&records, "study.received", study)[0],
            "study.received",
            serde_json::json!([0]),
        );
    }
    settled(&gw, &id, 3);
    // The hanging endpoint's messages are all still waiting, not one of
    // them answered.
    let stuck = messages(&gw, &stuck);
    assert_eq!(stuck.len(), 3, "{stuck:?}");
    assert!(
        stuck
            .iter()
            .all(|m| m["state"] == "pending" && m.get("lastStatus").is_none()),
        "{stuck:?}"
    );
    drop((held, hanging));
}

/// SIGTERM while a delivery hangs: the gateway stops within its shutdown
/// grace, not the delivery's time-out, and the message goes after the
/// restart with the same webhook-id.
#[test]
fn a_hanging_delivery_does_not_hold_the_shutdown() {
    let mut gw = Gateway::start_with(
        Opts::default()
            .arg("--webhook-timeout")
            .arg("300")
            .arg("--shutdown-grace")
            .arg("1")
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

    let pid = gw.pid();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = exited.send(gw.stop());
        });
        let status = exit.recv_timeout(WAIT).unwrap_or_else(|_| {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
            panic!(
                "still running {WAIT:?} after SIGTERM (shutdown grace 1 s): held by the delivery"
            )
        });
        assert!(status.success(), "{status}");
    });
    drop((held, hanging));

    let port = free_port();
    let rx = Receiver::start(&[&secret], port, 204);
    gw.restart();
    let (status, answer) = call(
        &gw,
        "PATCH",
        &format!("/api/webhooks/{id}"),
        Some(&serde_json::json!({ "url": hook_url(port) }).to_string()),
        None,
    );
    assert_eq!(status, 200, "{answer}");
    let records = wait_for_event(&rx, "study.received", &study, 1);
    assert_message(&records[0], "study.received", serde_json::json!([0]));
    assert_eq!(records[0]["id"], sent.as_str());
    assert_eq!(settled(&gw, &id, 1)[0]["id"], records[0]["id"]);
}
