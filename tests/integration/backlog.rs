//! The S3 upload backlog (`storage.ack = "journal"`, issue 11) from the
//! outside: its settings through flags, variables and the TOML file, bad
//! bounds refused naming the setting, `/healthz` and `/metrics` reporting the
//! backlog of a gateway on a real S3 store (SeaweedFS), and nothing of it for
//! a local store or `storage.ack = "stored"`.
//!
//! [`access_url_kinds`] sorts an access answer's URLs into those the gateway
//! serves itself (`/files/…`, what a not yet uploaded instance gets) and
//! those presigned by the store, for the end-to-end tests of the journal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::s3::{self, S3Server};
use crate::common::{self, Gateway, Opts};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREFIX: &str = "site-b";

/// A gateway on `s3` with Avara's key, plus `more` options.
pub fn s3_gateway(s3: &S3Server, more: Opts) -> Gateway {
    let mut opts = s3.gateway_opts(PREFIX).env("AVARA_WEBHOOK_KEY", KEY);
    opts.args.extend(more.args);
    opts.envs.extend(more.envs);
    let gw = Gateway::start_with(opts);
    gw.wait_for_log("object store reachable and writable");
    gw
}

/// The URLs of an access answer (instances and media), by who serves them.
#[derive(Debug, Default)]
pub struct UrlKinds {
    /// The gateway's own signed `/files/<key>` URLs (pending instances, or
    /// any object of a local store).
    pub gateway: Vec<String>,
    /// Presigned URLs straight to the S3 store.
    pub store: Vec<String>,
}

/// Sorts the URLs of an access answer: a URL to the store's address is the
/// store's; one whose path is `/files/…` on any other host (the gateway's
/// `public_url`) is the gateway's. Anything else fails the test.
pub fn url_kinds(answer: &Value, store: std::net::SocketAddr) -> UrlKinds {
    let mut kinds = UrlKinds::default();
    let media = answer["mediaUrls"].as_array().cloned().unwrap_or_default();
    let urls = answer["urls"]
        .as_array()
        .unwrap_or_else(|| panic!("no urls in {answer}"))
        .iter()
        .chain(media.iter().map(|m| &m["url"]))
        .map(|u| u.as_str().unwrap().to_owned());
    for url in urls {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or_else(|| panic!("not an http(s) URL: {url}"));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority == store.to_string() {
            kinds.store.push(url);
        } else if path.starts_with("files/studies/") {
            kinds.gateway.push(url);
        } else {
            panic!("neither the store's nor the gateway's: {url}");
        }
    }
    kinds
}

/// `study.access_requested` for `study`, signed by Avara's own tools; the
/// answer's URLs sorted by [`url_kinds`].
pub fn access_url_kinds(gw: &Gateway, s3: &S3Server, study: &str) -> UrlKinds {
    let event = json!({
        "id": format!("whe_{}", s3::random_hex(16)),
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study },
    });
    let answer = common::avara_send(gw, KEY, &event.to_string(), &[]);
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["authorized"], true, "{answer}");
    url_kinds(&answer["body"], s3.addr)
}

/// GET `url` (following redirects, e.g. a `/files` URL of an uploaded
/// instance to the store), with a gateway URL sent to `gw` whatever host
/// its `public_url` names: status and body.
pub fn download(gw: &Gateway, url: &str) -> (u16, Vec<u8>) {
    let url = match url.split_once("/files/") {
        Some((_, rest)) if !url.contains(&gw.http.to_string()) => gw.url(&format!("/files/{rest}")),
        _ => url.to_owned(),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(&url).call().expect("HTTP request");
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .expect("body");
    (status, body)
}

/// `dicom-gateway serve --print-config` with `args` and `envs`: the
/// effective configuration's `[storage]` table.
fn printed_storage(args: &[&str], envs: &[(&str, &str)]) -> toml::Table {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dicom-gateway"))
        .args(["serve", "--print-config", "--data-dir"])
        .arg(data.path())
        .args(args)
        .env_remove("DICOM_GATEWAY_STORAGE_ACK")
        .env_remove("DICOM_GATEWAY_STORAGE_BACKLOG_WAIT")
        .env_remove("DICOM_GATEWAY_STORAGE_BACKLOG_MAX")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    common::assert_ok(&out, "--print-config");
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}: {text}"));
    parsed["storage"].as_table().unwrap().clone()
}

const S3_ARGS: [&str; 2] = ["--storage", "s3://dicom/site"];

#[test]
fn ack_and_backlog_bounds_come_from_flags_variables_and_the_file() {
    let defaults = printed_storage(&S3_ARGS, &[]);
    assert_eq!(defaults["ack"].as_str(), Some("journal"));
    assert_eq!(defaults["backlog_wait"].as_integer(), Some(2 << 30));
    assert_eq!(defaults["backlog_max"].as_integer(), Some(8 << 30));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.toml");
    std::fs::write(
        &file,
        "[storage]\nurl = \"s3://dicom/site\"\nack = \"stored\"\nbacklog_wait = 1000\nbacklog_max = 3000\n",
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let from_file = printed_storage(&["--config", config], &[]);
    assert_eq!(from_file["ack"].as_str(), Some("stored"));
    assert_eq!(from_file["backlog_wait"].as_integer(), Some(1000));
    assert_eq!(from_file["backlog_max"].as_integer(), Some(3000));

    // Variables beat the file, flags beat variables.
    let from_env = printed_storage(
        &["--config", config, "--storage-backlog-max", "4000"],
        &[
            ("DICOM_GATEWAY_STORAGE_ACK", "journal"),
            ("DICOM_GATEWAY_STORAGE_BACKLOG_WAIT", "2000"),
            ("DICOM_GATEWAY_STORAGE_BACKLOG_MAX", "9000"),
        ],
    );
    assert_eq!(from_env["ack"].as_str(), Some("journal"));
    assert_eq!(from_env["backlog_wait"].as_integer(), Some(2000));
    assert_eq!(from_env["backlog_max"].as_integer(), Some(4000));
    let flags = printed_storage(
        &[&S3_ARGS[..], &["--storage-ack", "stored"]].concat(),
        &[("DICOM_GATEWAY_STORAGE_ACK", "journal")],
    );
    assert_eq!(flags["ack"].as_str(), Some("stored"));

    // A local store takes them too, and ignores them.
    let local = printed_storage(
        &["--storage-backlog-wait", "0", "--storage-backlog-max", "0"],
        &[],
    );
    assert_eq!(local["backlog_max"].as_integer(), Some(0));
}

#[test]
fn bad_backlog_settings_stop_the_start_naming_the_setting() {
    let s3 = || Opts::default().arg(S3_ARGS[0]).arg(S3_ARGS[1]);
    for (opts, setting) in [
        (
            s3().arg("--storage-backlog-wait")
                .arg("5000")
                .arg("--storage-backlog-max")
                .arg("4000"),
            "storage.backlog_wait",
        ),
        (
            s3().env("DICOM_GATEWAY_STORAGE_BACKLOG_MAX", "0"),
            "storage.backlog_max",
        ),
        (
            s3().arg("--storage-backlog-wait").arg("0"),
            "storage.backlog_wait",
        ),
        (s3().arg("--storage-ack").arg("later"), "--storage-ack"),
        (
            s3().arg("--storage-backlog-max").arg("8GiB"),
            "--storage-backlog-max",
        ),
        (
            s3().arg("--storage-backlog-max")
                .arg("99999999999999999999999"),
            "--storage-backlog-max",
        ),
    ] {
        let (status, stderr) = Gateway::start_expecting_exit(opts, Duration::from_secs(30));
        assert!(!status.success(), "{setting}: started");
        assert!(stderr.contains(setting), "{setting} not named in: {stderr}");
    }
}

/// The backlog as `/healthz` reports it.
fn health_backlog(gw: &Gateway) -> Option<Value> {
    let (status, body) = gw.get_json("/healthz", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    body.get("upload_backlog").cloned()
}

/// The value of an unlabelled sample of `/metrics`.
fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(&gw.url("/metrics")).call().expect("GET /metrics");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.body_mut().read_to_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn healthz_and_metrics_report_the_backlog_of_an_s3_gateway_acknowledging_from_its_disk() {
    let s3 = S3Server::start();
    let gw = s3_gateway(&s3, Opts::default());
    let backlog = health_backlog(&gw).expect("an S3 gateway has an upload backlog");
    assert_eq!(
        backlog,
        json!({ "instances": 0, "bytes": 0, "oldest_age_s": 0, "failing": false })
    );
    assert_eq!(
        metric(&gw, "dicom_gateway_upload_backlog_instances"),
        Some(0.0)
    );
    assert_eq!(metric(&gw, "dicom_gateway_upload_backlog_bytes"), Some(0.0));
    assert_eq!(metric(&gw, "dicom_gateway_upload_retries_total"), Some(0.0));
    assert!(gw.data_dir.join("pending").is_dir());

    // Acknowledged after the store (today's path, or "stored"): nothing is
    // pending, every URL is the store's, and the objects are in the bucket.
    let (study, sent) = store_study(&gw);
    let kinds = access_url_kinds(&gw, &s3, &study);
    assert!(kinds.gateway.is_empty(), "{kinds:?}");
    assert_eq!(kinds.store.len(), sent.len(), "{kinds:?}");
    for url in &kinds.store {
        let (status, body) = download(&gw, url);
        assert_eq!(status, 200, "{url}");
        assert!(
            sent.iter()
                .any(|f| common::dataset_bytes_of(&body) == common::dataset_bytes(f))
        );
    }
    let backlog = health_backlog(&gw).unwrap();
    assert_eq!(backlog["failing"], false, "{backlog}");
}

#[test]
fn stored_acknowledgement_and_a_local_store_have_no_backlog() {
    let s3 = S3Server::start();
    let stored = s3_gateway(&s3, Opts::default().arg("--storage-ack").arg("stored"));
    assert_eq!(health_backlog(&stored), None);
    assert!(!stored.data_dir.join("pending").exists());
    let local = Gateway::start_with(
        Opts::default()
            .arg("--storage-backlog-wait")
            .arg("7")
            .arg("--storage-backlog-max")
            .arg("3"),
    );
    assert_eq!(health_backlog(&local), None);
}

/// Sends the first study of the S3 fixtures (64-character UIDs) with DCMTK
/// storescu: its Study Instance UID and the files sent.
fn store_study(gw: &Gateway) -> (String, Vec<PathBuf>) {
    let fixtures: Vec<Value> = s3::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .collect();
    let files: Vec<PathBuf> = fixtures.iter().map(s3::fixture_path).collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    common::assert_ok(&common::storescu(gw, &["-xe"], &refs), "storescu");
    (fixtures[0]["study"].as_str().unwrap().to_owned(), files)
}
