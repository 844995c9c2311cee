//! Where the gateway will not send: the report fetcher's address guard.

use serde_json::Value;

use super::support::*;
use crate::common::{Gateway, Opts};

/// Waits until subscription `id`'s only message has failed; returns it.
fn failed(gw: &Gateway, id: &str) -> Value {
    let msg = settled(gw, id, 1).remove(0);
    assert_eq!(msg["state"], "failed", "{msg}");
    msg
}

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
