//! What the forwarding configuration API refuses, and how: the file's
//! entries (409), hostile or invalid bodies (4xx with the reason, never an
//! echo of a huge input), no token (401); and that none of it changes
//! anything.

use serde_json::{Value, json};

use super::{TOKEN, delete, gateway, get, put, request};
use crate::forward::peers::Relay;

#[test]
fn file_entries_are_read_only_and_bad_requests_are_refused_with_a_reason() {
    let dead = Relay::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[dicom_nodes]]\nae_title = \"FILEPACS\"\nhost = \"127.0.0.1\"\nport = {}\n\n\
             [[forward]]\ndestination = \"FILEPACS\"\n",
            dead.port
        ),
    )
    .unwrap();
    let gw = gateway(&["--config", cfg.to_str().unwrap()]);

    // No token, or a wrong one: 401, and nothing changes.
    let body = br#"{"host":"127.0.0.1","port":104}"#;
    for token in [None, Some("wrong-token-0123456789")] {
        for (method, path, body) in [
            ("GET", "/api/forward/config", None),
            (
                "PUT",
                "/api/forward/destinations/X",
                Some(("application/json", &body[..])),
            ),
            ("DELETE", "/api/forward/rules/file:1", None),
        ] {
            let (status, _) = request(&gw, method, path, body, token);
            assert_eq!(status, 401, "{method} {path} with {token:?}");
        }
    }

    // The file's entries, shown read-only.
    let (status, config) = get(&gw, "/api/forward/config");
    assert_eq!(status, 200, "{config}");
    assert_eq!(
        config["destinations"],
        json!([{"ae_title": "FILEPACS", "host": "127.0.0.1", "port": dead.port,
                "tls": false, "source": "file"}])
    );
    assert_eq!(config["rules"][0]["id"], "file:1");
    assert_eq!(config["rules"][0]["source"], "file");
    assert_eq!(config["rules"][0]["on"], "instance");
    let file_msg = |body: &Value| {
        assert_eq!(body["code"], "conflict", "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("configuration file"),
            "{body}"
        );
    };
    let (status, body) = put(
        &gw,
        "/api/forward/destinations/FILEPACS",
        &json!({"host": "h", "port": 1}),
    );
    assert_eq!(status, 409);
    file_msg(&body);
    let (status, body) = delete(&gw, "/api/forward/destinations/FILEPACS?purge=true");
    assert_eq!(status, 409);
    file_msg(&body);
    let (status, body) = put(
        &gw,
        "/api/forward/rules/file:1",
        &json!({"destination": "FILEPACS"}),
    );
    assert_eq!(status, 409);
    file_msg(&body);
    let (status, body) = delete(&gw, "/api/forward/rules/file:1");
    assert_eq!(status, 409);
    file_msg(&body);

    // An API rule may name a file destination.
    let (status, body) = put(
        &gw,
        "/api/forward/rules/mr",
        &json!({"destination": "FILEPACS", "modalities": ["MR"]}),
    );
    assert_eq!(status, 201, "{body}");

    // Invalid or hostile requests: 4xx, each with its reason.
    let long_list: Vec<String> = (0..257).map(|i| format!("M{i}")).collect();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!(r#"{{"host":"{}","port":104}}"#, "h".repeat(200_000));
    // (path, content type, body) → (status, words of the reason)
    let cases: Vec<Case> = vec![
        d(
            "GHOSTX",
            "application/json",
            r#"{"host":"h","port":0}"#,
            422,
            "port 0",
        ),
        d(
            "GHOSTX",
            "application/json",
            r#"{"host":"h","port":70000}"#,
            400,
            "70000",
        ),
        d(
            "GHOSTX",
            "application/json",
            r#"{"host":"","port":1}"#,
            422,
            "host",
        ),
        d(
            "GHOSTX",
            "application/json",
            r#"{"host":"a b","port":1}"#,
            422,
            "host",
        ),
        d(
            "GHOSTX",
            "application/json",
            r#"{"host":"h","port":1,"tls":true}"#,
            422,
            "dicom_tls_ca",
        ),
        d(
            "GHOSTX",
            "application/json",
            r#"{"host":"h","port":1,"x":1}"#,
            400,
            "unknown field",
        ),
        d(
            "GHOSTX",
            "application/json",
            r#"{"host":"h""#,
            400,
            "request body",
        ),
        d(
            "GHOSTX",
            "text/plain",
            r#"{"host":"h","port":1}"#,
            415,
            "application/json",
        ),
        d(
            "SEVENTEEN_CHARS_X",
            "application/json",
            r#"{"host":"h","port":1}"#,
            422,
            "AE title",
        ),
        d(
            "A%5CB",
            "application/json",
            r#"{"host":"h","port":1}"#,
            422,
            "AE title",
        ),
        d("GHOSTX", "application/json", &deep, 400, "request body"),
        d("GHOSTX", "application/json", &huge, 413, "larger than"),
        r("ok-id", r#"{"destination":"GHOST"}"#, 422, "\"GHOST\""),
        r(
            "ok-id",
            r#"{"destination":"FILEPACS","on":"hourly"}"#,
            422,
            "hourly",
        ),
        r(
            "ok-id",
            r#"{"destination":"FILEPACS","sop_classes":["1.2/3"]}"#,
            422,
            "sop_classes",
        ),
        r(
            "ok-id",
            &json!({"destination": "FILEPACS", "modalities": long_list}).to_string(),
            422,
            "at most 256",
        ),
        r(
            "ok-id",
            r#"{"destination":"FILEPACS","calling_aets":[""]}"#,
            422,
            "calling_aets",
        ),
        r(
            "ok-id",
            r#"{"destination":"FILEPACS","extra":1}"#,
            400,
            "unknown field",
        ),
        r("ok-id", r#"{"destination":7}"#, 400, "request body"),
        r("bad%20id", r#"{"destination":"FILEPACS"}"#, 422, "rule id"),
        r(
            &"x".repeat(65),
            r#"{"destination":"FILEPACS"}"#,
            422,
            "rule id",
        ),
    ];
    for c in &cases {
        let (status, answer) = request(
            &gw,
            "PUT",
            &c.path,
            Some((c.content_type, c.body.as_bytes())),
            Some(TOKEN),
        );
        let shown: String = c.body.chars().take(80).collect();
        assert_eq!(status, c.status, "PUT {} {shown}: {answer}", c.path);
        let why = answer["error"].as_str().unwrap_or_default();
        assert!(
            why.contains(c.needle),
            "PUT {} {shown}: {why:?} lacks {:?}",
            c.path,
            c.needle
        );
        assert!(
            why.len() < 1000,
            "the reason echoes the input: {} bytes",
            why.len()
        );
    }
    let (status, _) = delete(&gw, "/api/forward/rules/nope");
    assert_eq!(status, 404);
    let (status, _) = delete(&gw, "/api/forward/destinations/NOPE");
    assert_eq!(status, 404);
    let (status, body) = delete(&gw, "/api/forward/destinations/FILEPACS?purge=maybe");
    assert_eq!(status, 400, "{body}");

    // Nothing was created by any of it.
    let (_, config) = get(&gw, "/api/forward/config");
    assert_eq!(
        config["destinations"].as_array().unwrap().len(),
        1,
        "{config}"
    );
    let ids: Vec<&str> = config["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["file:1", "mr"]);
}

struct Case {
    path: String,
    content_type: &'static str,
    body: String,
    status: u16,
    needle: &'static str,
}

/// A destination PUT case.
fn d(ae: &str, content_type: &'static str, body: &str, status: u16, needle: &'static str) -> Case {
    Case {
        path: format!("/api/forward/destinations/{ae}"),
        content_type,
        body: body.to_owned(),
        status,
        needle,
    }
}

/// A rule PUT case (JSON).
fn r(id: &str, body: &str, status: u16, needle: &'static str) -> Case {
    Case {
        path: format!("/api/forward/rules/{id}"),
        content_type: "application/json",
        body: body.to_owned(),
        status,
        needle,
    }
}
