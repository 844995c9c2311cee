//! Avara's webhook, played with Avara's own tools: events signed by the
//! `standardwebhooks` library and accepted by the `avara` SDK's `unwrap()`,
//! then every URL of the answer fetched with a real HTTP client.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::common::{self, Gateway, Opts};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_KEY: &str = "whsec_YW5vdGhlciBrZXkgb2YgMjQgYnl0ZXMh";
const STRANGER: &str = "whsec_c29tZWJvZHkgZWxzZSdzIGtleQ==";

fn gateway() -> Gateway {
    // Two keys: a rotation in progress. Reports are served from loopback
    // (tests/peers/pdf_server.py), which the fetcher refuses by default.
    Gateway::start_with(
        Opts::default()
            .env("AVARA_WEBHOOK_KEY", &format!("{KEY},{NEW_KEY}"))
            .env("DICOM_GATEWAY_REPORT_FETCH_ALLOW_PRIVATE", "true"),
    )
}

/// Sends `event` through tests/peers/avara_sender.py with extra flags; (status, body).
fn send(gw: &Gateway, event: &Value, flags: &[&str]) -> (u16, Value) {
    send_text(gw, &event.to_string(), flags)
}

fn send_text(gw: &Gateway, event: &str, flags: &[&str]) -> (u16, Value) {
    let answer = common::avara_send(gw, KEY, event, flags);
    (
        answer["status"].as_u64().unwrap() as u16,
        answer["body"].clone(),
    )
}

fn access(study_uid: &str) -> Value {
    json!({
        "id": "whe_0123456789abcdef0123456789abcdef",
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study_uid },
    })
}

fn store_study1(gw: &Gateway) -> (String, BTreeSet<String>) {
    let fixtures: Vec<Value> = common::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .collect();
    let files: Vec<_> = fixtures
        .iter()
        .map(|f| common::fixtures_dir().join(f["file"].as_str().unwrap()))
        .collect();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    common::assert_ok(&common::storescu(gw, &["-xe"], &refs), "storescu");
    let sops = fixtures
        .iter()
        .map(|f| f["sop_instance"].as_str().unwrap().to_owned())
        .collect();
    (fixtures[0]["study"].as_str().unwrap().to_owned(), sops)
}

/// The gateway signs URLs for its public URL; the test reaches it on its
/// port-0 address (like a reverse proxy would). Only path and query are signed.
fn local(gw: &Gateway, url: &str) -> String {
    on_gateway(gw, url, "/files/")
}

/// `url`, whose path starts with `route`, on the gateway's own address.
fn on_gateway(gw: &Gateway, url: &str, route: &str) -> String {
    let path = url
        .split_once(route)
        .unwrap_or_else(|| panic!("{url} is not a {route} URL"))
        .1;
    format!("http://{}{route}{path}", gw.http)
}

#[test]
fn study_access_answers_a_signed_url_for_every_instance_and_a_manifest() {
    let gw = gateway();
    let (study, sops) = store_study1(&gw);
    let (status, body) = send(&gw, &access(&study), &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["authorized"], true);
    let urls: Vec<&str> = body["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), sops.len());
    assert_eq!(
        urls.iter().collect::<BTreeSet<_>>().len(),
        urls.len(),
        "a URL twice"
    );

    // Fetch every URL; pydicom opens each download.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        let mut resp = agent.get(&local(&gw, url)).call().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let path = dir.path().join(format!("{n}.dcm"));
        std::fs::write(&path, resp.body_mut().read_to_vec().unwrap()).unwrap();
        files.push(path.to_str().unwrap().to_owned());
    }
    let mut args = vec![];
    args.extend(files.iter().map(String::as_str));
    let opened = common::pydicom(
        "import sys, pydicom\nfor f in sys.argv[1:]: print(pydicom.dcmread(f).SOPInstanceUID)",
        &args,
    );
    let got: BTreeSet<String> = opened.lines().map(str::to_owned).collect();
    assert_eq!(got, sops);
    let mut part = agent
        .get(&local(&gw, urls[0]))
        .header("Range", "bytes=128-131")
        .call()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.body_mut().read_to_vec().unwrap(), b"DICM");

    // The manifest: two series in order, every SOP with its geometry.
    let manifest = &body["manifest"];
    assert_eq!(manifest["studyInstanceUID"], study.as_str());
    let series = manifest["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(
        (
            series[0]["seriesNumber"].as_i64(),
            series[1]["seriesNumber"].as_i64()
        ),
        (Some(1), Some(2))
    );
    for s in series {
        assert_eq!(s["modality"], "CT");
        for sop in s["sops"].as_array().unwrap() {
            for field in [
                "sopClassUID",
                "sopInstanceUID",
                "rows",
                "columns",
                "bitsAllocated",
                "photometricInterpretation",
                "samplesPerPixel",
            ] {
                assert!(!sop[field].is_null(), "{field} missing in {sop}");
            }
        }
    }
}

#[test]
fn unknown_study_is_not_authorized() {
    let gw = gateway();
    let (status, body) = send(&gw, &access("1.2.826.0.1.3680043.10.1234.404"), &[]);
    assert_eq!(status, 200);
    assert_eq!(body["authorized"], false);
    assert_eq!(body["urls"], json!([]));
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not on this gateway")
    );
}

#[test]
fn signatures_are_checked_with_rotation_staleness_and_tampering() {
    let mut gw = gateway();
    let (study, _) = store_study1(&gw);
    let event = access(&study);
    assert_eq!(
        send(&gw, &event, &["--sign-key", NEW_KEY]).0,
        200,
        "rotated key"
    );
    for flags in [
        &["--sign-key", STRANGER][..],
        &["--age", "600"],
        &["--tamper"],
    ] {
        let (status, body) = send(&gw, &event, flags);
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("bad_signature")),
            "{flags:?}: {body}"
        );
    }
    assert!(
        !gw.final_log().contains("MfKQ9r8G"),
        "a key reached the log"
    );
}

#[test]
fn malformed_unknown_and_oversized_events() {
    let gw = gateway();
    let (status, body) = send_text(&gw, "{not json", &["--raw"]);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );

    let unknown = json!({ "id": "whe_0123456789abcdef0123456789abcdee", "type": "study.teleported", "data": {} });
    let (status, body) = send(&gw, &unknown, &[]);
    assert_eq!(status, 200);
    assert!(body["error"].as_str().unwrap().contains("study.teleported"));

    // A report whose id could not be a file name, and one without its URL.
    let report = |data: Value| json!({ "id": "whe_0123456789abcdef0123456789abcded", "type": "report.delivered", "data": data });
    let (status, _) = send(
        &gw,
        &report(
            json!({ "isCritical": false, "presignedUrl": "http://127.0.0.1:9/r.pdf", "reportId": "../../etc" }),
        ),
        &[],
    );
    assert_eq!(status, 400);
    let (status, _) = send(
        &gw,
        &report(json!({ "isCritical": false, "reportId": "rep_1" })),
        &[],
    );
    assert_eq!(status, 400);

    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    let padding = "x".repeat(2 << 20);
    std::fs::write(
        &big,
        json!({ "id": "whe_1", "type": "study.access_requested", "data": { "pad": padding } })
            .to_string(),
    )
    .unwrap();
    let (status, body) = send_text(&gw, &format!("@{}", big.display()), &[]);
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("payload_too_large"))
    );
}

#[test]
fn a_repeated_webhook_id_gets_the_same_answer_even_after_a_restart() {
    let mut gw = gateway();
    let (study, _) = store_study1(&gw);
    let (_, first) = send(&gw, &access(&study), &["--id", "msg_repeat"]);
    assert_eq!(first["authorized"], true);
    // Same id, other content: still the first answer (URLs signed back then).
    let (_, second) = send(&gw, &access("1.2.3"), &["--id", "msg_repeat"]);
    assert_eq!(second, first);
    gw.restart();
    let (_, third) = send(&gw, &access(&study), &["--id", "msg_repeat"]);
    assert_eq!(third, first);
}

#[test]
fn without_a_key_the_webhook_refuses_everything() {
    let gw = Gateway::start();
    let (status, body) = send(&gw, &access("1.2.3"), &[]);
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("webhook_not_configured"))
    );
    gw.wait_for_log("no AVARA_WEBHOOK_KEY configured");
}

/// A Secondary Capture Part-10 file made with pydicom.
pub(crate) fn secondary_capture(path: &std::path::Path, study: &str, series: &str, sop: &str) {
    common::pydicom(
        r#"
import sys
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
path, study, series, sop = sys.argv[1:5]
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop
ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 99, 1
ds.Rows = ds.Columns = 8
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
ds.PixelData = bytes(range(64))
ds.save_as(path, enforce_file_format=True)
"#,
        &[path.to_str().unwrap(), study, series, sop],
    );
}

pub(crate) fn capture_event(study: &str, series: Option<&str>, sop: Option<&str>) -> Value {
    let mut data =
        json!({ "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study });
    if let (Some(series), Some(sop)) = (series, sop) {
        data["seriesInstanceUid"] = json!(series);
        data["sopInstanceUid"] = json!(sop);
    }
    json!({ "id": "whe_0123456789abcdef0123456789abcdec", "type": "secondary_capture.access_requested", "data": data })
}

pub(crate) fn put(gw: &Gateway, url: &str, body: &[u8]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .put(&on_gateway(gw, url, "/uploads/"))
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_json().unwrap_or(Value::Null))
}

#[test]
fn a_secondary_capture_uploaded_to_its_url_is_in_the_next_answer() {
    let gw = gateway();
    let (study, sops) = store_study1(&gw);
    let (series, sop) = (
        "1.2.826.0.1.3680043.10.1234.77",
        "1.2.826.0.1.3680043.10.1234.77.1",
    );
    let (status, answer) = send(&gw, &capture_event(&study, Some(series), Some(sop)), &[]);
    assert_eq!(
        (status, answer["authorized"].as_bool()),
        (200, Some(true)),
        "{answer}"
    );
    let url = answer["uploadUrls"][0].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("sc.dcm");
    secondary_capture(&sc, &study, series, sop);
    let bytes = std::fs::read(&sc).unwrap();
    let (status, stored) = put(&gw, &url, &bytes);
    assert_eq!(
        (status, stored["sopInstanceUid"].as_str()),
        (201, Some(sop)),
        "{stored}"
    );
    // The viewer may PUT the same object again (to every URL, or on retry).
    let (status, again) = put(&gw, &url, &bytes);
    assert_eq!((status, again["replaced"].as_bool()), (201, Some(true)));

    let (_, access_answer) = send(&gw, &access(&study), &[]);
    assert_eq!(
        access_answer["urls"].as_array().unwrap().len(),
        sops.len() + 1
    );
    assert_eq!(gw.study(&study)["instanceCount"], sops.len() + 1);
    assert!(gw.spool_files().is_empty());
}

#[test]
fn bad_uploads_are_refused_and_nothing_is_stored() {
    let gw = Gateway::start_with(
        Opts::default()
            .env("AVARA_WEBHOOK_KEY", KEY)
            .arg("--max-instance-size")
            .arg("100000"),
    );
    let (study, sops) = store_study1(&gw);
    let (series, sop) = (
        "1.2.826.0.1.3680043.10.1234.78",
        "1.2.826.0.1.3680043.10.1234.78.1",
    );
    let bound = send(&gw, &capture_event(&study, Some(series), Some(sop)), &[]).1["uploadUrls"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let open = send(&gw, &capture_event(&study, None, None), &[]).1["uploadUrls"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, st: &str, se: &str, so: &str| {
        let p = dir.path().join(name);
        secondary_capture(&p, st, se, so);
        std::fs::read(p).unwrap()
    };
    let other_study = file("other.dcm", "1.2.826.0.1.3680043.10.1234.5555", series, sop);
    let other_sop = file(
        "sop.dcm",
        &study,
        series,
        "1.2.826.0.1.3680043.10.1234.78.2",
    );

    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "not DICOM",
            &open,
            b"%PDF-1.7 definitely not dicom".to_vec(),
            400,
            "not_dicom",
        ),
        (
            "another study's instance",
            &open,
            other_study,
            422,
            "uid_mismatch",
        ),
        (
            "SOP other than the bound one",
            &bound,
            other_sop,
            422,
            "uid_mismatch",
        ),
        (
            "oversized",
            &open,
            vec![0u8; 200_000],
            413,
            "payload_too_large",
        ),
    ];
    for (what, url, body, status, code) in cases {
        let (got, answer) = put(&gw, url, &body);
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{what}: {answer}"
        );
    }
    // Tampered, and a download URL's signature used for an upload.
    let tampered = bound.replace("&sig=", "&sig=AA");
    assert_eq!(put(&gw, &tampered, b"x").0, 403);
    assert_eq!(gw.study(&study)["instanceCount"], sops.len());
    assert!(gw.spool_files().is_empty(), "{:?}", gw.spool_files());
}

#[test]
fn media_put_by_the_operator_is_listed_and_served_with_its_type() {
    let gw = gateway();
    let (study, _) = store_study1(&gw);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let pdf = b"%PDF-1.4\n% a tiny report\n%%EOF\n".to_vec();
    let url = gw.url(&format!("/api/studies/{study}/media/report-1.pdf"));
    let put = |body: &[u8], ctype: Option<&str>, url: &str| {
        let mut req = agent.put(url);
        if let Some(c) = ctype {
            req = req.header("Content-Type", c);
        }
        let mut resp = req.send(body).unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_json::<Value>().unwrap_or(Value::Null),
        )
    };
    let (status, record) = put(&pdf, Some("application/pdf"), &url);
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["mimeType"], "application/pdf");
    assert_eq!(
        put(&pdf, Some("application/pdf"), &url).0,
        200,
        "stored again: replaced"
    );

    // Refusals, nothing stored.
    assert_eq!(put(&pdf, None, &url).0, 400, "no Content-Type");
    assert_eq!(
        put(
            &pdf,
            Some("application/pdf"),
            &gw.url(&format!("/api/studies/{study}/media/.hidden"))
        )
        .0,
        400
    );
    assert_eq!(
        put(
            &pdf,
            Some("application/pdf"),
            &gw.url("/api/studies/1.2.3.999/media/x.pdf")
        )
        .0,
        404
    );

    let detail = gw.study(&study);
    assert_eq!(detail["media"].as_array().unwrap().len(), 1);
    assert_eq!(detail["media"][0]["fileName"], "report-1.pdf");

    let (_, answer) = send(&gw, &access(&study), &[]);
    let media = answer["mediaUrls"].as_array().unwrap();
    assert_eq!(media.len(), 1);
    assert_eq!(
        (media[0]["mimeType"].as_str(), media[0]["fileName"].as_str()),
        (Some("application/pdf"), Some("report-1.pdf"))
    );
    let mut resp = agent
        .get(&local(&gw, media[0]["url"].as_str().unwrap()))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/pdf"
    );
    assert_eq!(resp.body_mut().read_to_vec().unwrap(), pdf);
}

#[test]
fn the_newer_events_are_answered_from_the_index() {
    let gw = gateway();
    let (study, sops) = store_study1(&gw);
    let event = |kind: &str, data: Value| json!({ "id": "whe_0123456789abcdef0123456789abcdeb", "type": kind, "data": data });

    let (status, eph) = send(
        &gw,
        &event(
            "ephemeral.access_requested",
            json!({ "retrievalId": "r-1", "options": { "studyInstanceUids": [study, "1.2.3.404"] } }),
        ),
        &[],
    );
    assert_eq!(
        (status, eph["authorized"].as_bool()),
        (200, Some(true)),
        "{eph}"
    );
    assert_eq!(eph["urls"].as_array().unwrap().len(), sops.len());
    assert_eq!(eph["manifests"].as_array().unwrap().len(), 1);
    assert!(eph["error"].as_str().unwrap().contains("1.2.3.404"));
    let (_, none) = send(
        &gw,
        &event(
            "ephemeral.access_requested",
            json!({ "retrievalId": "r-2" }),
        ),
        &[],
    );
    assert_eq!(none["authorized"], false);

    let (_, enrich) = send(
        &gw,
        &event(
            "patient_study.enrichment_requested",
            json!({ "clinicId": "c", "studyInstanceUid": study }),
        ),
        &[],
    );
    assert_eq!(enrich["patientName"], "Test^Patient");
    for field in ["mrn", "dateOfBirth", "sex", "studyDate", "facilityName"] {
        assert!(enrich[field].is_string(), "{field} missing: {enrich}");
    }
    let dob = enrich["dateOfBirth"].as_str().unwrap();
    assert!(
        dob.len() == 10 && &dob[4..5] == "-" && &dob[7..8] == "-",
        "{dob}"
    );
    let (_, empty) = send(
        &gw,
        &event(
            "patient_study.enrichment_requested",
            json!({ "clinicId": "c", "studyInstanceUid": "1.2.3.404" }),
        ),
        &[],
    );
    assert_eq!(empty, json!({}));

    let (_, context) = send(
        &gw,
        &event(
            "clinical_context.enrichment_requested",
            json!({ "clinicId": "c", "studyId": "5b7c8a2e-1111-4222-8333-444455556666", "studyInstanceUid": study }),
        ),
        &[],
    );
    assert_eq!(context, json!({}));
    let (_, worklist) = send(
        &gw,
        &event(
            "modality_worklist.requested",
            json!({ "callingAe": "CT01", "clinicId": "c", "dateStart": "2026-11-23", "dateEnd": "2026-11-23", "sourceIp": "10.0.0.1" }),
        ),
        &[],
    );
    assert_eq!(
        (
            worklist["authorized"].as_bool(),
            worklist["items"].as_array().map(Vec::len)
        ),
        (Some(false), Some(0))
    );
    assert!(worklist["error"].as_str().unwrap().contains("worklist"));
}

/// tests/peers/pdf_server.py, killed when dropped.
pub(crate) struct PdfServer {
    child: std::process::Child,
    pub(crate) url: String,
}

impl PdfServer {
    pub(crate) fn start(pdf: &std::path::Path, extra: &[&str]) -> PdfServer {
        let (child, port) = common::spawn_pdf_server(pdf, extra, std::process::Stdio::inherit());
        PdfServer {
            child,
            url: format!("http://127.0.0.1:{port}/presigned/report.pdf?X-Amz-Signature=abc"),
        }
    }
}

impl Drop for PdfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn report_event(url: &str, data_extra: Value) -> Value {
    let mut data = json!({
        "isCritical": true,
        "presignedUrl": url,
        "reportId": "rep_0123456789abcdef0123456789abcdef",
        "studyId": "stu_fedcba9876543210fedcba9876543210",
        "plainText": "No acute findings.",
    });
    for (k, v) in data_extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    json!({ "id": "whe_0123456789abcdef0123456789abcdea", "type": "report.delivered", "data": data })
}

pub(crate) const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n";

#[test]
fn a_delivered_report_is_fetched_despite_failures_and_kept_as_media() {
    let gw = gateway();
    let (study, _) = store_study1(&gw);
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("r.pdf");
    std::fs::write(&pdf, PDF).unwrap();
    let server = PdfServer::start(&pdf, &["--fail", "2"]);

    let (status, answer) = send(
        &gw,
        &report_event(&server.url, json!({ "studyInstanceUid": study })),
        &[],
    );
    assert_eq!((status, answer), (200, json!({ "success": true })));
    gw.wait_for_log("CRITICAL report delivered");
    gw.wait_for_log("report stored");
    assert!(
        gw.log_text()
            .matches("report fetch failed; retrying")
            .count()
            >= 2
    );
    assert!(
        !gw.log_text().contains("X-Amz-Signature"),
        "the presigned URL reached the log"
    );

    let media = gw.study(&study)["media"].clone();
    assert_eq!(media.as_array().unwrap().len(), 1, "{media}");
    assert_eq!(media[0]["mimeType"], "application/pdf");
    assert_eq!(
        media[0]["report"]["reportId"],
        "rep_0123456789abcdef0123456789abcdef"
    );
    assert_eq!(media[0]["report"]["isCritical"], true);
    assert_eq!(media[0]["report"]["plainText"], "No acute findings.");
    let (_, access_answer) = send(&gw, &access(&study), &[]);
    let url = access_answer["mediaUrls"][0]["url"].as_str().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    assert_eq!(
        agent
            .get(&local(&gw, url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap(),
        PDF
    );
    let (status, jobs) = gw.get_json("/api/reports", None);
    assert_eq!(status, 200);
    assert_eq!(jobs[0]["state"], "stored");
    assert!(jobs[0].get("presignedUrl").is_none());
}

#[test]
fn a_report_acknowledged_before_a_restart_is_fetched_after_it_via_the_paired_study() {
    let mut gw = gateway();
    let (study, _) = store_study1(&gw);
    // An access request pairs Avara's studyId with the study; the report
    // below is an older payload without studyInstanceUid.
    send(&gw, &access(&study), &[]);
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("r.pdf");
    std::fs::write(&pdf, PDF).unwrap();
    let release = dir.path().join("release");
    let server = PdfServer::start(&pdf, &["--hold", release.to_str().unwrap()]);

    let (status, _) = send(
        &gw,
        &report_event(&server.url, json!({ "isCritical": false })),
        &[],
    );
    assert_eq!(status, 200);
    gw.wait_for_log("report fetch failed; retrying");
    gw.restart();
    std::fs::write(&release, b"go").unwrap();
    gw.wait_for_log("report stored");
    assert_eq!(gw.study(&study)["media"][0]["report"]["isCritical"], false);
}

#[test]
fn a_report_that_is_not_a_pdf_stays_visible_as_failing() {
    let gw = gateway();
    let (study, _) = store_study1(&gw);
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("r.html");
    std::fs::write(&html, b"<html>login page</html>").unwrap();
    let server = PdfServer::start(&html, &[]);
    send(
        &gw,
        &report_event(&server.url, json!({ "studyInstanceUid": study })),
        &[],
    );
    gw.wait_for_log("not a PDF");
    let (_, jobs) = gw.get_json("/api/reports", None);
    assert_eq!(jobs[0]["state"], "pending");
    assert_eq!(jobs[0]["lastError"], "not a PDF");
    assert!(gw.study(&study)["media"].as_array().unwrap().is_empty());
    assert!(gw.spool_files().is_empty());
}

#[test]
fn clinical_context_returns_the_patients_other_reports() {
    let gw = gateway();
    let (study, _) = store_study1(&gw);
    let patient = gw.study(&study)["patientId"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("r.pdf");
    std::fs::write(&pdf, PDF).unwrap();
    let server = PdfServer::start(&pdf, &[]);
    send(
        &gw,
        &report_event(&server.url, json!({ "studyInstanceUid": study })),
        &[],
    );
    gw.wait_for_log("report stored");

    // A later study of the same patient arrives over DICOM.
    let later = "1.2.826.0.1.3680043.10.1234.8888";
    let file = dir.path().join("later.dcm");
    secondary_capture(
        &file,
        later,
        "1.2.826.0.1.3680043.10.1234.8888.1",
        "1.2.826.0.1.3680043.10.1234.8888.1.1",
    );
    common::pydicom(
        "import sys, pydicom\nd = pydicom.dcmread(sys.argv[1])\nd.PatientID = sys.argv[2]\nd.save_as(sys.argv[1])",
        &[file.to_str().unwrap(), &patient],
    );
    common::assert_ok(&common::storescu(&gw, &["-xe"], &[&file]), "storescu");

    let event = |uid: &str| {
        json!({ "id": "whe_0123456789abcdef0123456789abcde9", "type": "clinical_context.enrichment_requested",
        "data": { "clinicId": "c", "studyId": "5b7c8a2e-1111-4222-8333-444455556666", "studyInstanceUid": uid } })
    };
    let (status, context) = send(&gw, &event(later), &[]);
    assert_eq!(status, 200);
    let prior = context["priorReports"].as_array().expect("priorReports");
    assert_eq!(prior.len(), 1, "{context}");
    assert_eq!(prior[0]["reportText"], "No acute findings.");
    assert_eq!(prior[0]["externalStudyId"], study.as_str());
    // The report's own study has no *other* study with a report.
    assert_eq!(send(&gw, &event(&study), &[]).1, json!({}));
}
