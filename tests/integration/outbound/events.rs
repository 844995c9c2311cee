//! The events that come from uploads, media and Avara's reports, each from
//! its real source: a secondary capture PUT to the upload URL Avara's
//! request got, a PDF PUT by the operator, a report Avara delivered and the
//! gateway fetched from `pdf_server.py`, and one it could not fetch.

use serde_json::{Value, json};

use super::support::*;
use crate::common::{self, Gateway, Opts};
use crate::webhook::{PDF, PdfServer, capture_event, put, report_event, secondary_capture};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Signs `event` as Avara and posts it; the gateway's answer body.
fn avara(gw: &Gateway, event: &Value) -> Value {
    let answer = common::avara_send(gw, KEY, &event.to_string(), &[]);
    assert_eq!(answer["status"], 200, "{answer}");
    answer["body"].clone()
}

/// Waits until the receiver has a delivery of `kind`; that delivery.
fn one_of(rx: &Receiver, kind: &str) -> Value {
    wait_until(&format!("a {kind} delivery"), || {
        let records = rx.records();
        let found: Vec<&Value> = of_type(&records, kind);
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            _ => Err(Value::from(records.clone()).to_string()),
        }
    })
}

#[test]
fn uploads_media_and_reports_are_told() {
    let gw = Gateway::start_with(
        Opts::default()
            .env("AVARA_WEBHOOK_KEY", KEY)
            .env("DICOM_GATEWAY_REPORT_FETCH_ALLOW_PRIVATE", "true"),
    );
    let port = free_port();
    let (id, secret) = subscribe(
        &gw,
        &hook_url(port),
        &[
            "secondary_capture.stored",
            "media.stored",
            "report.stored",
            "report.failed",
        ],
        false,
    );
    let rx = Receiver::start(&[&secret], port, 204);
    let study = send(&gw, &["study1/series1/ct1"]);

    // A secondary capture through the upload URL Avara's request got.
    let (series, sop) = (
        "1.2.826.0.1.3680043.10.1234.77",
        "1.2.826.0.1.3680043.10.1234.77.1",
    );
    let answer = avara(&gw, &capture_event(&study, Some(series), Some(sop)));
    let url = answer["uploadUrls"][0].as_str().expect("an upload URL");
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("sc.dcm");
    secondary_capture(&sc, &study, series, sop);
    let (status, stored) = put(&gw, url, &std::fs::read(&sc).unwrap());
    assert_eq!(status, 201, "{stored}");
    let got = one_of(&rx, "secondary_capture.stored");
    assert_message(&got, "secondary_capture.stored", json!([0]));
    let data = &got["body"]["data"];
    assert_eq!(
        (
            &data["studyInstanceUid"],
            &data["seriesInstanceUid"],
            &data["sopInstanceUid"],
            &data["sopClassUid"],
        ),
        (
            &json!(study),
            &json!(series),
            &json!(sop),
            &json!("1.2.840.10008.5.1.4.1.1.7")
        ),
        "{data}"
    );
    assert!(data["size"].as_u64().unwrap() > 0, "{data}");
    assert!(data.get("patient").is_none(), "{data}");

    // A PDF the operator puts with the study.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .put(&gw.url(&format!("/api/studies/{study}/media/note.pdf")))
        .header("Content-Type", "application/pdf")
        .send(PDF)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    drop(agent);
    let got = one_of(&rx, "media.stored");
    assert_message(&got, "media.stored", json!([0]));
    let data = &got["body"]["data"];
    assert_eq!(data["studyInstanceUid"], study.as_str(), "{data}");
    assert_eq!(data["fileName"], "note.pdf", "{data}");
    assert_eq!(data["mimeType"], "application/pdf", "{data}");
    assert_eq!(data["size"], PDF.len(), "{data}");

    // A report Avara delivered, fetched and stored.
    let pdf = dir.path().join("r.pdf");
    std::fs::write(&pdf, PDF).unwrap();
    let server = PdfServer::start(&pdf, &[]);
    let answer = avara(
        &gw,
        &report_event(&server.url, json!({ "studyInstanceUid": study })),
    );
    assert_eq!(answer, json!({ "success": true }));
    let got = one_of(&rx, "report.stored");
    assert_message(&got, "report.stored", json!([0]));
    let data = &got["body"]["data"];
    assert_eq!(data["studyInstanceUid"], study.as_str(), "{data}");
    assert_eq!(
        data["reportId"], "rep_0123456789abcdef0123456789abcdef",
        "{data}"
    );
    assert_eq!(data["isCritical"], true, "{data}");
    assert_eq!(data["mimeType"], "application/pdf", "{data}");

    // A report whose URL can never be fetched: failed at once, told, and
    // the URL (a credential) is not in what the receiver gets.
    let mut event = report_event(
        "http://exa mple.com/presigned/report.pdf?X-Amz-Signature=t0psecr3t",
        json!({ "studyInstanceUid": study, "reportId": "rep_fedcba9876543210fedcba9876543210" }),
    );
    event["id"] = json!("whe_0123456789abcdef0123456789abcdeb");
    assert_eq!(avara(&gw, &event), json!({ "success": true }));
    let got = one_of(&rx, "report.failed");
    assert_message(&got, "report.failed", json!([0]));
    let data = &got["body"]["data"];
    assert_eq!(
        data["reportId"], "rep_fedcba9876543210fedcba9876543210",
        "{data}"
    );
    assert_eq!(data["studyInstanceUid"], study.as_str(), "{data}");
    assert_eq!(data["attempts"], 1, "{data}");
    assert!(data["error"].is_string(), "{data}");
    let text = got["body"].to_string();
    assert!(
        !text.contains("t0psecr3t") && !text.contains("presigned/report.pdf"),
        "the report URL reached a receiver: {text}"
    );

    let list = settled(&gw, &id, 4);
    assert!(list.iter().all(|m| m["state"] == "delivered"), "{list:?}");
    assert_eq!(rx.records().len(), 4, "{:?}", rx.records());
}
