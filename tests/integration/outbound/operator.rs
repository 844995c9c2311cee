//! What the operator sees and controls: logs, messages, redelivery,
//! deactivation, patient data.

use serde_json::{Value, json};

use super::support::*;
use crate::common::{Gateway, Opts, call};

/// Subscribe, rotate, fail (refused, then 500), deliver: the log tells of
/// the failures and carries neither secret, nor the URL's token.
#[test]
fn event_logs_never_carry_a_secret() {
    let mut gw = Gateway::start_with(
        Opts::default()
            .arg("--stable-after")
            .arg("1")
            .env(RETRY_SCHEDULE, &fast_retries()),
    );
    let port = free_port();
    // A URL may carry a token of the receiver's: it is a secret too.
    const TOKEN: &str = "tok-9f3a7c1e5b";
    let url = format!("{}?token={TOKEN}", hook_url(port));
    let (id, old) = subscribe(&gw, &url, &ALL_EVENTS, true);
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
    assert!(
        !log.contains(TOKEN),
        "the URL's token reached the log:\n{log}"
    );
}

/// The messages view after a delivery, and a redelivery: the same
/// webhook-id and body arrive again; unknown ids are 404s.
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

/// Waits until subscription `id`'s only message is no longer pending;
/// returns it.
fn finished(gw: &Gateway, id: &str) -> Value {
    settled(gw, id, 1).remove(0)
}

fn redeliver(gw: &Gateway, id: &str, msg: &Value) {
    let (status, answer) = call(
        gw,
        "POST",
        &format!(
            "/api/webhooks/{id}/messages/{}/redeliver",
            msg["id"].as_str().unwrap()
        ),
        None,
        None,
    );
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["id"], msg["id"], "{answer}");
}

/// Once every wait of the schedule has been tried, the message is failed
/// (one attempt per wait); redelivered by hand, it arrives.
#[test]
fn a_message_fails_after_its_schedule_and_is_redelivered_by_hand() {
    let gw = Gateway::start_with(Opts::default().env(RETRY_SCHEDULE, "0s,100ms,100ms"));
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["study.received"], false);
    let study = send(&gw, &["ts/implicit_le"]);
    let failed = finished(&gw, &id);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["attempts"], 3, "one attempt per wait: {failed}");
    assert!(
        failed["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("connection refused")),
        "{failed}"
    );
    assert!(failed["finishedAt"].is_string(), "{failed}");

    let rx = Receiver::start(&[&secret], port, 204);
    redeliver(&gw, &id, &failed);
    let records = wait_for_event(&rx, "study.received", &study, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], failed["id"]);
    assert_message(&records[0], "study.received", json!([0]));
    let delivered = wait_until("the redelivered message delivered", || {
        let list = messages(&gw, &id);
        match list.as_slice() {
            [m] if m["state"] == "delivered" => Ok(m.clone()),
            _ => Err(Value::from(list).to_string()),
        }
    });
    assert_eq!(delivered["attempts"], 4, "{delivered}");
    assert_eq!(delivered["lastStatus"], 204, "{delivered}");
}

/// 410 Gone: the receiver asks for nothing more. The subscription is
/// deactivated at once and says why; activated again, its failed message
/// can be redelivered.
#[test]
fn gone_deactivates_at_once() {
    let gw = Gateway::start_with(Opts::default().env(RETRY_SCHEDULE, &fast_retries()));
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["study.received"], false);
    let rx = Receiver::start(&[&secret], port, 410);
    let study = send(&gw, &["ts/implicit_le"]);
    let shown = wait_until("the subscription deactivated", || {
        let (status, shown) = call(&gw, "GET", &format!("/api/webhooks/{id}"), None, None);
        assert_eq!(status, 200, "{shown}");
        if shown["active"] == false {
            Ok(shown)
        } else {
            Err(shown.to_string())
        }
    });
    assert!(
        shown["deactivatedReason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{shown}"
    );
    let gone = finished(&gw, &id);
    assert_eq!(
        (&gone["state"], &gone["attempts"], &gone["lastStatus"]),
        (&json!("failed"), &json!(1), &json!(410)),
        "{gone}"
    );
    assert_eq!(rx.records().len(), 1, "tried again after a 410");

    let (status, shown) = call(
        &gw,
        "PATCH",
        &format!("/api/webhooks/{id}"),
        Some(r#"{"active": true}"#),
        None,
    );
    assert_eq!(status, 200, "{shown}");
    assert!(shown.get("deactivatedReason").is_none(), "{shown}");
    rx.set_status(204);
    redeliver(&gw, &id, &gone);
    let records = wait_for_event(&rx, "study.received", &study, 2);
    assert_eq!(records[1]["id"], gone["id"]);
    assert_eq!(records[1]["answered"], 204);
    assert_eq!(finished(&gw, &id)["state"], "delivered");
}

/// The body is made at each attempt: turning `includePatient` off keeps
/// patient data out of messages already queued.
#[test]
fn turning_include_patient_off_holds_back_queued_patient_data() {
    let gw = Gateway::start_with(Opts::default().env(RETRY_SCHEDULE, &fast_retries()));
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["study.received"], true);
    let study = send(&gw, &["ts/implicit_le"]);
    wait_until("a refused attempt", || {
        let list = messages(&gw, &id);
        if list.iter().any(|m| m["lastError"].is_string()) {
            Ok(())
        } else {
            Err(Value::from(list).to_string())
        }
    });
    let (status, shown) = call(
        &gw,
        "PATCH",
        &format!("/api/webhooks/{id}"),
        Some(r#"{"includePatient": false}"#),
        None,
    );
    assert_eq!(status, 200, "{shown}");
    let rx = Receiver::start(&[&secret], port, 204);
    let records = wait_for_event(&rx, "study.received", &study, 1);
    assert_message(&records[0], "study.received", json!([0]));
    let body = records[0]["body"].to_string();
    assert!(
        records[0]["body"]["data"].get("patient").is_none(),
        "{body}"
    );
    for identifying in ["GW-PAT-0001", "Test^Patient"] {
        assert!(!body.contains(identifying), "{body}");
    }
}

/// The messages routes under hostile requests: an absurd or malformed
/// limit, unknown query fields, ids of the wrong form or unknown, all
/// refused with the API's JSON errors; a huge limit is clamped.
#[test]
fn the_messages_routes_refuse_hostile_requests() {
    let gw = Gateway::start();
    let (id, _) = subscribe(&gw, &hook_url(free_port()), &["study.received"], false);
    let get = |path: &str| call(&gw, "GET", path, None, None);
    for query in [
        "limit=18446744073709551616",
        "limit=-1",
        "limit=ten",
        "limit=1&other=2",
    ] {
        let (status, answer) = get(&format!("/api/webhooks/{id}/messages?{query}"));
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(answer["error"].is_string(), "{query}: {answer}");
    }
    let (status, answer) = get(&format!("/api/webhooks/{id}/messages?limit=4000000000"));
    assert_eq!((status, &answer["messages"]), (200, &json!([])), "{answer}");
    let unknown = "wh_0123456789abcdef0123456789abcdef";
    for path in [
        format!("/api/webhooks/{unknown}/messages"),
        format!("/api/webhooks/{}/messages", "w".repeat(10_000)),
    ] {
        assert_eq!(get(&path).0, 404, "{}", &path[..40]);
    }
    let redeliver = |msg: &str| {
        call(
            &gw,
            "POST",
            &format!("/api/webhooks/{id}/messages/{msg}/redeliver"),
            None,
            None,
        )
    };
    for msg in [
        "msg_".to_owned() + &"0".repeat(65),
        "msg_../../etc".to_owned(),
        "msg_00".to_owned(),
    ] {
        let (status, answer) = redeliver(&msg);
        assert_eq!(status, 404, "{msg}: {answer}");
    }
}
