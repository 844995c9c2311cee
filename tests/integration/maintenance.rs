//! `dicom-gateway reindex` and `verify` against a store the real gateway
//! wrote: the local backend, and S3 (SeaweedFS).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use serde_json::Value;

use crate::common::s3::{self, S3Server};
use crate::common::{self, Gateway, Opts};

/// The gateway binary run as a maintenance command on `data_dir`.
fn maintenance(command: &str, data_dir: &Path, extra: &[&str]) -> Output {
    maintenance_with(command, data_dir, extra, &Opts::default())
}

/// Like [`maintenance`], with the arguments and environment the gateway was
/// started with (its store).
fn maintenance_with(command: &str, data_dir: &Path, extra: &[&str], opts: &Opts) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dicom-gateway"));
    cmd.arg(command)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .args(&opts.args)
        .env_remove("DICOM_GATEWAY_API_TOKEN")
        .env_remove("DICOM_GATEWAY_STORAGE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    for (k, v) in &opts.envs {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("running {command}: {e}"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_status(out: &Output, code: i32, what: &str) {
    let (stdout, stderr) = text(out);
    assert_eq!(out.status.code(), Some(code), "{what}:\n{stdout}\n{stderr}");
}

fn fixture_path(f: &Value) -> PathBuf {
    common::fixtures_dir().join(f["file"].as_str().unwrap())
}

/// Sends each fixture whose file starts with one of `prefixes`, with the
/// storescu flags its transfer syntax needs; returns their study UIDs.
fn send(gw: &Gateway, prefixes: &[&str]) -> Vec<String> {
    send_from(gw, common::fixtures(), fixture_path, prefixes)
}

/// [`send`] from another set of fixtures (`path` gives the file of one).
fn send_from(
    gw: &Gateway,
    fixtures: Vec<Value>,
    path: fn(&Value) -> PathBuf,
    prefixes: &[&str],
) -> Vec<String> {
    let mut studies = Vec::new();
    for f in fixtures {
        let file = f["file"].as_str().unwrap();
        if !prefixes.iter().any(|p| file.starts_with(p)) {
            continue;
        }
        let flags = common::storescu_flags(&f);
        let out = common::storescu(gw, &flags, &[&path(&f)]);
        common::assert_ok(&out, &format!("storescu {file}"));
        let study = f["study"].as_str().unwrap().to_owned();
        if !studies.contains(&study) {
            studies.push(study);
        }
    }
    studies.sort();
    studies
}

/// PUT /api/studies/{study}/media/{name}; returns the status.
fn put_media(gw: &Gateway, study: &str, name: &str, mime: &str, body: &[u8]) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .put(&gw.url(&format!("/api/studies/{study}/media/{name}")))
        .header("Content-Type", mime)
        .send(body)
        .unwrap()
        .status()
        .as_u16()
}

/// The operator API's view of everything: the study list and each study.
/// study1's UID, after a PDF was stored with it through the operator API.
fn study1_with_a_report(gw: &Gateway) -> String {
    let study1 = common::fixture("study1/")["study"]
        .as_str()
        .unwrap()
        .to_owned();
    with_a_report(gw, study1)
}

/// `study` after a PDF was stored with it through the operator API.
fn with_a_report(gw: &Gateway, study1: String) -> String {
    let status = put_media(
        gw,
        &study1,
        "report.pdf",
        "application/pdf",
        b"%PDF-1.4\n%%EOF\n",
    );
    assert_eq!(status, 201);
    study1
}

fn snapshot(gw: &Gateway, studies: &[String]) -> Value {
    let details: Vec<Value> = studies.iter().map(|s| gw.study(s)).collect();
    serde_json::json!({ "studies": gw.studies(), "details": details })
}

/// The fields a rebuild takes from the objects' modification times rather
/// than from the moment they were received.
const RECEIVE_TIMES: [&str; 3] = ["receivedAt", "firstReceived", "lastReceived"];

fn parse_time(path: &str, v: &Value) -> SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{path}: {v} is not a string"));
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{path}: {s:?}: {e}"))
}

/// Asserts `after` equals `before` in every field, except that receive
/// times may differ by a little (the object is written just before its
/// receipt is recorded). Returns how many receive times were compared.
fn assert_same_but_receive_times(path: &str, before: &Value, after: &Value) -> usize {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<_> = b.keys().collect();
            keys.sort();
            let mut after_keys: Vec<_> = a.keys().collect();
            after_keys.sort();
            assert_eq!(keys, after_keys, "{path}: different fields");
            let mut times = 0;
            for key in keys {
                let here = format!("{path}.{key}");
                if RECEIVE_TIMES.contains(&key.as_str()) {
                    let (b, a) = (parse_time(&here, &b[key]), parse_time(&here, &a[key]));
                    let apart = a
                        .duration_since(b)
                        .or_else(|_| b.duration_since(a))
                        .unwrap();
                    assert!(apart.as_secs() < 5, "{here}: {apart:?} apart");
                    times += 1;
                } else {
                    times += assert_same_but_receive_times(&here, &b[key], &a[key]);
                }
            }
            times
        }
        (Value::Array(b), Value::Array(a)) => {
            assert_eq!(b.len(), a.len(), "{path}: different lengths");
            b.iter()
                .zip(a)
                .enumerate()
                .map(|(i, (b, a))| assert_same_but_receive_times(&format!("{path}[{i}]"), b, a))
                .sum()
        }
        _ => {
            assert_eq!(before, after, "{path}");
            0
        }
    }
}

#[test]
fn reindex_rebuilds_what_the_api_answered() {
    let mut gw = Gateway::start();
    let studies = send(
        &gw,
        &[
            "study1/",
            "ts/deflated_le",
            "ts/explicit_be",
            "multiframe/",
            "sr/",
        ],
    );
    assert_eq!(studies.len(), 5);
    let study1 = study1_with_a_report(&gw);
    // A type the file name does not give: only the sidecar knows it.
    assert_eq!(
        put_media(&gw, &study1, "clip.bin", "video/mp4", &[0u8; 32]),
        201
    );
    let before = snapshot(&gw, &studies);
    assert_eq!(before["details"][0]["media"].as_array().unwrap().len(), 2);
    assert!(gw.stop().success());

    std::fs::remove_dir_all(gw.data_dir.join("index")).unwrap();
    let out = maintenance("reindex", &gw.data_dir, &[]);
    assert_status(&out, 0, "reindex");
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("studies: 5, instances added: 10, media added: 2 (0 without sidecar)"),
        "{stdout}"
    );

    gw.restart();
    let after = snapshot(&gw, &studies);
    // 5 studies listed and detailed (first and last each), 10 instances.
    assert_eq!(assert_same_but_receive_times("", &before, &after), 30);
    // What the instances' headers and the sidecars restored, spelled out.
    let detail = &after["details"][0];
    assert_eq!(detail["studyInstanceUid"], study1.as_str());
    assert_eq!(detail["series"][0]["instances"][0]["source"], "DCMTKSCU");
    assert_eq!(detail["media"][0]["fileName"], "clip.bin");
    assert_eq!(detail["media"][0]["mimeType"], "video/mp4");
    assert_eq!(detail["media"][0]["source"], "operator");
    assert_eq!(detail["media"][1]["mimeType"], "application/pdf");

    // Once more into the rebuilt index: nothing to add, nothing changed.
    assert!(gw.stop().success());
    let out = maintenance("reindex", &gw.data_dir, &[]);
    assert_status(&out, 0, "second reindex");
    assert!(
        text(&out).0.contains("already indexed: 12"),
        "{}",
        text(&out).0
    );
    gw.restart();
    assert_eq!(snapshot(&gw, &studies), after);

    // A sidecar lost (a gateway stopped between a file and its sidecar):
    // reindex writes it again from the index before a wipe can lose it.
    assert!(gw.stop().success());
    let sidecar = gw
        .objects()
        .join(format!("studies/{study1}/media-meta/clip.bin.json"));
    std::fs::remove_file(&sidecar).unwrap();
    let out = maintenance("reindex", &gw.data_dir, &["--wipe"]);
    assert_status(&out, 0, "reindex --wipe");
    assert!(sidecar.is_file());
    gw.restart();
    assert_eq!(gw.study(&study1)["media"][0]["mimeType"], "video/mp4");
}

#[test]
fn verify_names_a_lost_object_and_a_stray_one() {
    let mut gw = Gateway::start();
    send(&gw, &["study1/"]);
    assert!(gw.stop().success());
    let out = maintenance("verify", &gw.data_dir, &[]);
    assert_status(&out, 0, "verify on a consistent store");
    assert!(
        text(&out).0.contains("index entries: 6, objects: 6"),
        "{}",
        text(&out).0
    );

    let f = common::fixture("study1/series1/ct1");
    let lost = format!(
        "studies/{}/{}/{}.dcm",
        f["study"].as_str().unwrap(),
        f["series"].as_str().unwrap(),
        f["sop_instance"].as_str().unwrap()
    );
    std::fs::remove_file(gw.objects().join(&lost)).unwrap();
    let g = common::fixture("ts/explicit_be");
    let stray = format!(
        "studies/{}/{}/{}.dcm",
        g["study"].as_str().unwrap(),
        g["series"].as_str().unwrap(),
        g["sop_instance"].as_str().unwrap()
    );
    let stray_path = gw.objects().join(&stray);
    std::fs::create_dir_all(stray_path.parent().unwrap()).unwrap();
    std::fs::copy(fixture_path(&g), &stray_path).unwrap();

    let out = maintenance("verify", &gw.data_dir, &[]);
    assert_status(&out, 1, "verify with a lost and a stray object");
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!("{lost}: indexed, but the object is missing")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{stray}: stored, but not indexed")),
        "{stdout}"
    );
    assert!(
        stdout.contains("missing objects: 1, objects not indexed: 1"),
        "{stdout}"
    );

    // reindex adds the stray instance and removes nothing: the lost object
    // is still reported.
    assert_status(&maintenance("reindex", &gw.data_dir, &[]), 0, "reindex");
    let out = maintenance("verify", &gw.data_dir, &[]);
    assert_status(&out, 1, "verify after reindex");
    let (stdout, _) = text(&out);
    assert!(stdout.contains(&lost), "{stdout}");
    assert!(!stdout.contains(&stray), "{stdout}");
}

#[test]
fn reindex_and_verify_refuse_while_the_gateway_runs() {
    let gw = Gateway::start();
    send(&gw, &["sr/"]);
    for command in ["reindex", "verify"] {
        let out = maintenance(command, &gw.data_dir, &[]);
        assert_status(&out, 2, command);
        let (stdout, stderr) = text(&out);
        assert!(
            stderr.contains("is the gateway running? stop it first"),
            "{command}: {stderr}"
        );
        assert!(stdout.is_empty(), "{command}: {stdout}");
    }
    // The gateway was not disturbed.
    assert_eq!(gw.studies().len(), 1);

    let missing = gw.data_dir.join("no-such-dir");
    let out = maintenance("reindex", &missing, &[]);
    assert_status(&out, 2, "reindex of a missing data directory");
    assert!(text(&out).1.contains("does not exist"), "{}", text(&out).1);
    assert!(!missing.exists());
}

#[test]
fn a_corrupt_object_is_skipped_and_the_rest_indexed() {
    let mut gw = Gateway::start();
    let studies = send(&gw, &["study1/"]);
    assert!(gw.stop().success());
    let f = common::fixture("study1/series2/ct2");
    let corrupt = format!(
        "studies/{}/{}/{}.dcm",
        f["study"].as_str().unwrap(),
        f["series"].as_str().unwrap(),
        f["sop_instance"].as_str().unwrap()
    );
    std::fs::write(
        gw.objects().join(&corrupt),
        b"this is not DICOM".repeat(100),
    )
    .unwrap();

    // --wipe: a full rebuild of the existing index.
    let out = maintenance("reindex", &gw.data_dir, &["--wipe"]);
    assert_status(&out, 1, "reindex with a corrupt object");
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains(&format!(
            "skipped {corrupt}: not an instance the gateway can index"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("instances added: 5"), "{stdout}");
    assert!(stdout.contains("skipped: 1"), "{stdout}");
    assert!(stderr.contains("not indexed"), "{stderr}");

    gw.restart();
    let study = gw.study(&studies[0]);
    assert_eq!(study["instanceCount"], 5);
    let sops: Vec<&str> = study["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap())
        .map(|i| i["sopInstanceUid"].as_str().unwrap())
        .collect();
    assert!(
        !sops.contains(&f["sop_instance"].as_str().unwrap()),
        "{sops:?}"
    );
}

#[test]
fn reindex_and_verify_work_on_an_s3_store() {
    let s3 = S3Server::start();
    // Acknowledged after the upload: reindex and verify read the store,
    // and do not look in the upload backlog's `pending/` (issue 11 notes).
    let opts = s3.gateway_opts("site-a").args(&["--storage-ack", "stored"]);
    let mut gw = Gateway::start_with(opts.clone());
    // 64-character UIDs, as real modalities send: keys over 200 bytes.
    let studies = send_from(
        &gw,
        s3::fixtures(),
        s3::fixture_path,
        &["study1/", "ts/explicit_be"],
    );
    with_a_report(
        &gw,
        s3::fixture("study1/")["study"].as_str().unwrap().to_owned(),
    );
    let before = snapshot(&gw, &studies);
    assert!(gw.stop().success());
    // Nothing of the gateway's is on local disk but the index (and spool).
    assert!(common::files_under(&gw.objects()).is_empty());

    std::fs::remove_dir_all(gw.data_dir.join("index")).unwrap();
    let out = maintenance_with("reindex", &gw.data_dir, &[], &opts);
    assert_status(&out, 0, "reindex from S3");
    assert!(
        text(&out)
            .0
            .contains("studies: 2, instances added: 7, media added: 1 (0 without sidecar)"),
        "{}",
        text(&out).0
    );
    gw.restart();
    let after = snapshot(&gw, &studies);
    // 2 studies listed and detailed (first and last each), 7 instances.
    assert_eq!(assert_same_but_receive_times("", &before, &after), 15);
    assert!(gw.stop().success());

    assert_status(
        &maintenance_with("verify", &gw.data_dir, &[], &opts),
        0,
        "verify on S3",
    );
    let lost = after["details"][0]["series"][0]["instances"][0]["objectKey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(lost.len() > 190, "{lost}");
    s3.delete(&format!("site-a/{lost}"));
    let out = maintenance_with("verify", &gw.data_dir, &[], &opts);
    assert_status(&out, 1, "verify with an object gone from the bucket");
    assert!(
        text(&out)
            .0
            .contains(&format!("{lost}: indexed, but the object is missing")),
        "{}",
        text(&out).0
    );
}
