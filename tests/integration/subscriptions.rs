//! Outbound webhook subscriptions through the operator API: what is stored,
//! what is shown, and that the secrets work with the Standard Webhooks
//! reference library (the Python `standardwebhooks`, as receivers use it).

use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::common::{self, Gateway, Opts, call};

fn create(gw: &Gateway, body: Value) -> Value {
    let (status, answer) = call(gw, "POST", "/api/webhooks", Some(&body.to_string()), None);
    assert_eq!(status, 201, "{answer}");
    answer
}

fn ris() -> Value {
    json!({
        "name": "RIS",
        "url": "https://ris.example/hooks/dicom",
        "events": ["study.received", "study.stable"],
        "description": "tell the RIS",
    })
}

/// Signs a message with every secret in `signers` (one `v1,` signature
/// each, as the gateway will with a rotated secret) using the reference
/// library, then verifies it with each of `verifiers`; whether each did.
fn verify_with_reference(signers: &[&str], verifiers: &[&str]) -> Vec<bool> {
    const SCRIPT: &str = r#"
import base64, json, sys
from datetime import datetime, timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
signers, verifiers = sys.argv[1].split(","), sys.argv[2].split(",")
for s in signers:
    key = base64.b64decode(s.removeprefix("whsec_"), validate=True)
    assert 24 <= len(key) <= 64, len(key)
payload = json.dumps({"type": "study.received", "timestamp": "2026-11-30T00:00:00Z", "data": {}})
now = datetime.now(tz=timezone.utc)
signature = " ".join(Webhook(s).sign("msg_1", now, payload) for s in signers)
headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
           "webhook-signature": signature}
verified = []
for v in verifiers:
    try:
        Webhook(v).verify(payload, headers)
        verified.append(True)
    except WebhookVerificationError:
        verified.append(False)
print(json.dumps(verified))
"#;
    let out = Command::new(common::python())
        .arg("-c")
        .arg(SCRIPT)
        .arg(signers.join(","))
        .arg(verifiers.join(","))
        .output()
        .expect("run python");
    common::assert_ok(&out, "standardwebhooks");
    serde_json::from_slice(&out.stdout).expect("a JSON list")
}

fn secret_of(answer: &Value) -> String {
    let secret = answer["secret"].as_str().expect("a secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    secret
}

fn assert_no_secret(shown: &Value) {
    let text = shown.to_string();
    assert!(
        !text.contains("whsec_") && !text.contains("\"secret"),
        "{text}"
    );
}

#[test]
fn create_list_get_patch_delete() {
    let mut gw = Gateway::start();
    let created = create(&gw, ris());
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("wh_") && id.len() == 35, "{id}");
    assert_eq!(created["name"], "RIS");
    assert_eq!(created["url"], "https://ris.example/hooks/dicom");
    assert_eq!(created["events"], json!(["study.received", "study.stable"]));
    assert_eq!(created["active"], true);
    assert_eq!(created["includePatient"], false);
    assert_eq!(created["description"], "tell the RIS");
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    let secret = secret_of(&created);

    // The receiver's library takes the secret as it is.
    let other = secret_of(&create(
        &gw,
        json!({ "name": "AI", "url": "http://10.0.0.7:8080/", "events": ["report.stored"], "active": false }),
    ));
    assert_ne!(secret, other);
    assert_eq!(
        verify_with_reference(&[&secret], &[&secret, &other]),
        vec![true, false]
    );

    // Shown once: never by a listing or a lookup.
    let (status, list) = call(&gw, "GET", "/api/webhooks", None, None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_no_secret(&list);
    let (status, one) = call(&gw, "GET", &format!("/api/webhooks/{id}"), None, None);
    assert_eq!(status, 200, "{one}");
    assert_no_secret(&one);
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("secret");
    assert_eq!(one, expected);

    let patch =
        json!({ "url": "https://ris2.example/in", "events": ["report.failed"], "active": false });
    let (status, patched) = call(
        &gw,
        "PATCH",
        &format!("/api/webhooks/{id}"),
        Some(&patch.to_string()),
        None,
    );
    assert_eq!(status, 200, "{patched}");
    assert_no_secret(&patched);
    let (_, one) = call(&gw, "GET", &format!("/api/webhooks/{id}"), None, None);
    assert_eq!(one, patched);
    assert_eq!(
        (
            &one["url"],
            &one["events"],
            &one["active"],
            &one["name"],
            &one["description"]
        ),
        (
            &json!("https://ris2.example/in"),
            &json!(["report.failed"]),
            &json!(false),
            &json!("RIS"),
            &json!("tell the RIS")
        )
    );

    let (status, _) = call(&gw, "DELETE", &format!("/api/webhooks/{id}"), None, None);
    assert_eq!(status, 204);
    for (method, body) in [
        ("GET", None),
        ("DELETE", None),
        ("PATCH", Some("{}")),
        ("POST", None),
    ] {
        let path = if method == "POST" {
            format!("/api/webhooks/{id}/rotate-secret")
        } else {
            format!("/api/webhooks/{id}")
        };
        let (status, answer) = call(&gw, method, &path, body, None);
        assert_eq!(
            (status, answer["code"].as_str()),
            (404, Some("not_found")),
            "{method}"
        );
    }
    // An id the gateway never makes is not looked up.
    let (status, answer) = call(&gw, "GET", "/api/webhooks/wh_NOT-AN-ID", None, None);
    assert_eq!((status, answer["code"].as_str()), (404, Some("not_found")));
    let (_, list) = call(&gw, "GET", "/api/webhooks", None, None);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let log = gw.final_log();
    assert!(log.contains("webhook subscription created"), "{log}");
    for s in [&secret, &other] {
        assert!(!log.contains(s.as_str()), "a secret reached the log");
    }
    assert!(!log.contains("whsec_"), "a secret reached the log");
}

#[test]
fn rotation_keeps_the_old_secret_for_a_day() {
    let mut gw = Gateway::start();
    let created = create(&gw, ris());
    let id = created["id"].as_str().unwrap();
    let old = secret_of(&created);
    // An answer with a secret is not for caches to keep.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&gw.url(&format!("/api/webhooks/{id}/rotate-secret")))
        .send_empty()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let rotated: Value = resp.body_mut().read_json().unwrap();
    // Its idle connection would hold the shutdown below.
    drop(agent);
    let new = secret_of(&rotated);
    assert_ne!(new, old);
    assert_eq!(rotated["id"], created["id"]);

    let (_, shown) = call(&gw, "GET", &format!("/api/webhooks/{id}"), None, None);
    assert_no_secret(&shown);
    let expires = humantime::parse_rfc3339(
        shown["previousSecretExpiresAt"]
            .as_str()
            .expect("previousSecretExpiresAt"),
    )
    .unwrap();
    let ahead = expires
        .duration_since(SystemTime::now())
        .expect("in the future");
    let day = Duration::from_secs(24 * 3600);
    assert!(
        ahead <= day && ahead > day - Duration::from_secs(120),
        "{ahead:?}"
    );
    assert_eq!(
        rotated["previousSecretExpiresAt"],
        shown["previousSecretExpiresAt"]
    );

    // A message signed as the gateway will within the day (new and old
    // secret) verifies for a receiver holding either; the old secret alone
    // no longer signs for the new one's holder, and vice versa.
    assert_eq!(
        verify_with_reference(&[&new, &old], &[&new, &old]),
        vec![true, true]
    );
    assert_eq!(
        verify_with_reference(&[&new], &[&new, &old]),
        vec![true, false]
    );

    let log = gw.final_log();
    assert!(log.contains("secret rotated"), "{log}");
    assert!(!log.contains("whsec_"), "a secret reached the log");
}

#[test]
fn refusals_name_the_field() {
    let gw = Gateway::start();
    let with = |key: &str, value: Value| {
        let mut body = ris();
        body[key] = value;
        body.to_string()
    };
    let cases = [
        (with("url", json!("ftp://ris.example/")), "url"),
        (with("url", json!("https://user:pw@ris.example/")), "url"),
        (
            with(
                "url",
                json!(format!("https://ris.example/{}", "a".repeat(2048))),
            ),
            "url",
        ),
        (with("events", json!(["study.deleted"])), "events"),
        (with("events", json!([])), "events"),
        (with("name", json!("")), "name"),
        (
            with("secret", json!("whsec_mine")),
            "unknown field `secret`",
        ),
        ("{\"name\": \"RIS\"}".to_owned(), "missing field `url`"),
        ("not json".to_owned(), "request body"),
    ];
    for (body, names) in &cases {
        let (status, answer) = call(&gw, "POST", "/api/webhooks", Some(body), None);
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {answer}"
        );
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(names), "{body}: {error}");
    }
    // Only a body declared JSON is read: a web page cannot make a browser
    // on the gateway's host post one to the loopback-only API unasked.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.post(&gw.url("/api/webhooks"));
        if !content_type.is_empty() {
            req = req.content_type(content_type);
        }
        let mut resp = req.send(ris().to_string()).unwrap();
        let answer: Value = resp.body_mut().read_json().unwrap();
        assert_eq!(
            (resp.status().as_u16(), answer["code"].as_str()),
            (415, Some("unsupported_media_type")),
            "{content_type}"
        );
    }
    // The event names the refused one and the known ones.
    let (_, answer) = call(
        &gw,
        "POST",
        "/api/webhooks",
        Some(&with("events", json!(["study.deleted"]))),
        None,
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("\"study.deleted\""),
        "{answer}"
    );
    let (_, list) = call(&gw, "GET", "/api/webhooks", None, None);
    assert_eq!(list, json!([]), "a refused request stored something");

    // PATCH is checked the same way, and changes nothing when refused.
    let created = create(&gw, ris());
    let path = format!("/api/webhooks/{}", created["id"].as_str().unwrap());
    for (body, names) in [
        (r#"{"url": "javascript:alert(1)"}"#, "url"),
        (r#"{"events": ["nope"]}"#, "events"),
        (r#"{"active": false, "id": "wh_1"}"#, "unknown field `id`"),
        (r#"{"active": "no"}"#, "request body"),
    ] {
        let (status, answer) = call(&gw, "PATCH", &path, Some(body), None);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(names),
            "{body}: {answer}"
        );
    }
    let (_, one) = call(&gw, "GET", &path, None, None);
    assert_eq!(
        (&one["active"], &one["url"]),
        (&json!(true), &created["url"])
    );
}

#[test]
fn subscriptions_survive_a_crash() {
    let mut gw = Gateway::start();
    let a = create(&gw, ris());
    let b = create(
        &gw,
        json!({ "name": "router", "url": "http://router.local/", "events": ["media.stored"], "includePatient": true }),
    );
    let (status, _) = call(
        &gw,
        "POST",
        &format!("/api/webhooks/{}/rotate-secret", b["id"].as_str().unwrap()),
        None,
        None,
    );
    assert_eq!(status, 200);
    let (_, before) = call(&gw, "GET", "/api/webhooks", None, None);
    assert_eq!(before.as_array().unwrap().len(), 2);
    // Acknowledged means durable: no chance to flush anything.
    gw.kill9();
    gw.restart();
    let (status, after) = call(&gw, "GET", "/api/webhooks", None, None);
    assert_eq!(status, 200);
    assert_eq!(after, before);
    let ids: Vec<&Value> = after.as_array().unwrap().iter().map(|s| &s["id"]).collect();
    assert!(ids.contains(&&a["id"]) && ids.contains(&&b["id"]));
    assert!(
        after
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["previousSecretExpiresAt"].is_string() && s["includePatient"] == true)
    );
}

#[test]
fn the_operator_guard_applies() {
    const TOKEN: &str = "operator-token-0123456789";
    let mut gw = Gateway::start_with(Opts::default().env("DICOM_GATEWAY_API_TOKEN", TOKEN));
    let body = ris().to_string();
    for (method, path, body) in [
        ("POST", "/api/webhooks".to_owned(), Some(body.as_str())),
        ("GET", "/api/webhooks".to_owned(), None),
        (
            "GET",
            "/api/webhooks/wh_0123456789abcdef0123456789abcdef".to_owned(),
            None,
        ),
        (
            "DELETE",
            "/api/webhooks/wh_0123456789abcdef0123456789abcdef".to_owned(),
            None,
        ),
        (
            "POST",
            "/api/webhooks/wh_0123456789abcdef0123456789abcdef/rotate-secret".to_owned(),
            None,
        ),
    ] {
        let (status, answer) = call(&gw, method, &path, body, None);
        assert_eq!(
            (status, answer["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}"
        );
        let (status, _) = call(&gw, method, &path, body, Some("wrong-token-0123456789"));
        assert_eq!(status, 401, "{method} {path}");
    }
    let (status, created) = call(&gw, "POST", "/api/webhooks", Some(&body), Some(TOKEN));
    assert_eq!(status, 201, "{created}");
    let secret = secret_of(&created);
    let (status, list) = call(&gw, "GET", "/api/webhooks", None, Some(TOKEN));
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));
    let log = gw.final_log();
    assert!(
        !log.contains(&secret) && !log.contains("whsec_"),
        "a secret reached the log"
    );
    assert!(!log.contains(TOKEN), "the token reached the log");
}
