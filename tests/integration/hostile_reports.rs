//! Issue 8, the report side: a `report.delivered` URL cannot turn the
//! gateway against the site, the URL (a credential) stays out of the log and
//! the operator API, one slow report host does not hold back the others,
//! and prior reports never cross from one patient to another who shares an
//! ID under another issuer. The real binary, events signed by the
//! `standardwebhooks` peer, reports served by tests/peers/pdf_server.py.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

use crate::common::{self, Gateway, Opts};
use crate::webhook::{PDF, secondary_capture};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET: &str = "X-Amz-Signature=t0psecr3t";
const ALLOW_PRIVATE: &str = "DICOM_GATEWAY_REPORT_FETCH_ALLOW_PRIVATE";

fn gateway(allow_private: bool) -> Gateway {
    let mut opts = Opts::default().env("AVARA_WEBHOOK_KEY", KEY);
    if allow_private {
        opts = opts.env(ALLOW_PRIVATE, "true");
    }
    Gateway::start_with(opts)
}

/// Signs and sends `event` with tests/peers/avara_sender.py; (status, body).
fn send(gw: &Gateway, event: &Value) -> (u16, Value) {
    let answer = common::avara_send(gw, KEY, &event.to_string(), &[]);
    (
        answer["status"].as_u64().unwrap() as u16,
        answer["body"].clone(),
    )
}

/// A fresh `webhook-id` for every event (a repeated one is answered from
/// the idempotency record and does nothing).
fn webhook_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!("whe_{:032x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn report(report_id: &str, url: &str, study: &str, text: &str) -> Value {
    json!({ "id": webhook_id(), "type": "report.delivered", "data": {
        "isCritical": false, "presignedUrl": url, "reportId": report_id,
        "studyInstanceUid": study, "plainText": text,
    }})
}

fn clinical_context(gw: &Gateway, study: &str) -> Value {
    let (status, body) = send(
        gw,
        &json!({ "id": webhook_id(), "type": "clinical_context.enrichment_requested",
            "data": { "clinicId": "c", "studyId": "5b7c8a2e-1111-4222-8333-444455556666", "studyInstanceUid": study } }),
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// Stores a one-instance study of the patient (`patient_id`, `issuer`).
fn store_study(gw: &Gateway, dir: &Path, study: &str, patient_id: &str, issuer: Option<&str>) {
    let file = dir.join(format!("{study}.dcm"));
    secondary_capture(&file, study, &format!("{study}.1"), &format!("{study}.1.1"));
    common::pydicom(
        "import sys, pydicom\n\
         d = pydicom.dcmread(sys.argv[1])\n\
         d.PatientID = sys.argv[2]\n\
         if len(sys.argv) > 3: d.IssuerOfPatientID = sys.argv[3]\n\
         d.save_as(sys.argv[1])",
        &[file.to_str().unwrap(), patient_id]
            .into_iter()
            .chain(issuer)
            .collect::<Vec<_>>(),
    );
    common::assert_ok(&common::storescu(gw, &["-xe"], &[&file]), "storescu");
}

/// tests/peers/pdf_server.py with its request log kept in a file, so a test
/// can prove that nothing reached it.
struct PdfPeer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl PdfPeer {
    fn start(dir: &Path) -> PdfPeer {
        let pdf = dir.join("r.pdf");
        std::fs::write(&pdf, PDF).unwrap();
        let log = dir.join("pdf_server.log");
        let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
        let (child, port) = common::spawn_pdf_server(&pdf, &[], stderr);
        PdfPeer { child, port, log }
    }

    /// Stops the server; the requests it logged.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"GET "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PdfPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Report URLs that resolve to loopback (in several spellings) or are not
/// URLs at all fail for good on the first attempt, with a reason; nothing
/// is requested from the server behind them; the URL's path and query are
/// in neither the log nor `/api/reports`.
#[test]
fn report_urls_on_internal_addresses_fail_for_good_and_fetch_nothing() {
    let mut gw = gateway(false);
    let dir = tempfile::tempdir().unwrap();
    let study = "1.2.826.0.1.3680043.10.1234.7001";
    store_study(&gw, dir.path(), study, "P7001", None);
    let server = PdfPeer::start(dir.path());
    let p = server.port;
    let cases = [
        (
            "rep_loopback",
            format!("http://127.0.0.1:{p}/presigned/report.pdf?{SECRET}"),
            "loopback",
        ),
        (
            "rep_localhost",
            format!("http://localhost:{p}/presigned/report.pdf?{SECRET}"),
            "loopback",
        ),
        (
            "rep_mapped",
            format!("http://[::ffff:127.0.0.1]:{p}/presigned/report.pdf?{SECRET}"),
            "loopback",
        ),
        (
            "rep_decimal",
            format!("http://2130706433:{p}/presigned/report.pdf?{SECRET}"),
            "loopback",
        ),
        (
            "rep_metadata",
            format!("http://169.254.169.254/latest/meta-data/?{SECRET}"),
            "link-local",
        ),
        (
            "rep_bad_uri",
            format!("http://exa mple.com/presigned/report.pdf?{SECRET}"),
            "not a valid URL",
        ),
    ];
    for (id, url, why) in &cases {
        let skip = gw.log_len();
        let (status, answer) = send(&gw, &report(id, url, study, "text"));
        assert_eq!((status, answer), (200, json!({ "success": true })), "{id}");
        let line = gw.wait_for_log_after(skip, "report URL refused");
        assert!(line.contains(id) && line.contains(why), "{id}: {line}");
    }

    let (status, jobs) = gw.get_json("/api/reports", None);
    assert_eq!(status, 200);
    let shown = jobs.to_string();
    for (id, _, why) in &cases {
        let job = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["report"]["reportId"] == *id)
            .unwrap_or_else(|| panic!("{id} not listed: {jobs}"));
        assert_eq!(
            (job["state"].as_str(), job["attempts"].as_u64()),
            (Some("failed"), Some(1)),
            "{job}"
        );
        assert!(job["lastError"].as_str().unwrap().contains(why), "{job}");
        // Scheme and host at most.
        let shown_url = job["url"].as_str().unwrap();
        assert!(
            shown_url.ends_with("/…") || shown_url == "(not a valid URL)",
            "{job}"
        );
    }
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j.get("presignedUrl").is_none())
    );
    assert!(
        !shown.contains("t0psecr3t") && !shown.contains("presigned/report.pdf"),
        "{shown}"
    );
    assert!(gw.study(study)["media"].as_array().unwrap().is_empty());
    assert!(server.stop().is_empty(), "the refused URLs were requested");

    let log = gw.final_log();
    assert!(
        !log.contains("t0psecr3t") && !log.contains("presigned/report.pdf"),
        "the URL reached the log:\n{log}"
    );
}

/// With internal addresses allowed (a site whose report store is on site),
/// a report is fetched while another one's host accepts the connection and
/// never answers: fetches run side by side.
#[test]
fn a_report_host_that_never_answers_does_not_hold_back_the_others() {
    let gw = gateway(true);
    let dir = tempfile::tempdir().unwrap();
    let study = "1.2.826.0.1.3680043.10.1234.7002";
    store_study(&gw, dir.path(), study, "P7002", None);
    // The kernel completes the handshake; nobody ever reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "http://127.0.0.1:{}/presigned/slow.pdf?{SECRET}",
        silent.local_addr().unwrap().port()
    );
    let server = PdfPeer::start(dir.path());
    let url = format!(
        "http://127.0.0.1:{}/presigned/report.pdf?{SECRET}",
        server.port
    );

    send(&gw, &report("rep_slow", &silent_url, study, "slow"));
    send(&gw, &report("rep_fast", &url, study, "fast"));
    gw.wait_for_log("report stored");

    let (_, jobs) = gw.get_json("/api/reports", None);
    let state = |id: &str| {
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["report"]["reportId"] == id)
            .map(|j| {
                (
                    j["state"].as_str().unwrap().to_owned(),
                    j["attempts"].as_u64(),
                )
            })
    };
    assert_eq!(state("rep_fast"), Some(("stored".into(), Some(1))));
    // Still in its first attempt.
    assert_eq!(state("rep_slow"), Some(("pending".into(), Some(0))));
    let media = gw.study(study)["media"].clone();
    assert_eq!(media[0]["fileName"], "report-rep_fast.pdf", "{media}");
    assert_eq!(server.stop().len(), 1);
}

/// Two patients share Patient ID P42 under different issuers, and a third
/// has it with no issuer: each sees only their own prior reports.
#[test]
fn prior_reports_never_cross_issuers() {
    let gw = gateway(true);
    let dir = tempfile::tempdir().unwrap();
    let root = "1.2.826.0.1.3680043.10.1234.71";
    let (a1, a2, b1, n1, n2) = (
        format!("{root}.1"),
        format!("{root}.2"),
        format!("{root}.3"),
        format!("{root}.4"),
        format!("{root}.5"),
    );
    store_study(&gw, dir.path(), &a1, "P42", Some("HOSP_A"));
    store_study(&gw, dir.path(), &a2, "P42", Some("HOSP_A"));
    store_study(&gw, dir.path(), &b1, "P42", Some("HOSP_B"));
    store_study(&gw, dir.path(), &n1, "P42", None);
    store_study(&gw, dir.path(), &n2, "P42", None);
    assert_eq!(gw.study(&a1)["issuerOfPatientId"], "HOSP_A");
    assert!(gw.study(&n1).get("issuerOfPatientId").is_none());

    let server = PdfPeer::start(dir.path());
    let url = format!("http://127.0.0.1:{}/r.pdf", server.port);
    for (id, study, text) in [
        ("rep_a1", &a1, "Report of patient A"),
        ("rep_b1", &b1, "Report of patient B"),
        ("rep_n1", &n1, "Report of the patient without issuer"),
    ] {
        let skip = gw.log_len();
        send(&gw, &report(id, &url, study, text));
        gw.wait_for_log_after(skip, "report stored");
    }

    let texts = |study: &str| -> Vec<String> {
        let context = clinical_context(&gw, study);
        context["priorReports"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["reportText"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(texts(&a2), ["Report of patient A"]);
    assert_eq!(texts(&n2), ["Report of the patient without issuer"]);
    // B's only study is the one with the report: nothing prior, and never A's.
    assert!(texts(&b1).is_empty());
    // A's reported study sees no other report of A, and not B's or N's.
    assert!(texts(&a1).is_empty());
}
