//! `GET /metrics` after a known workload (a storescu of a study, an
//! echoscu, a refused instance, a refused association, signed webhooks, a
//! download), read with the Prometheus project's own Python parser; who may
//! scrape; and `log_format = "json"` lines as a log shipper reads them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::{self, Gateway, Opts};

mod own_process;

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STRANGER: &str = "whsec_c29tZWJvZHkgZWxzZSdzIGtleQ==";
const METRICS_TOKEN: &str = "scraper-token-0123456789";
const API_TOKEN: &str = "operator-token-0123456789";

/// One sample as `prometheus_client.parser` reads it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape parsed by `prometheus_client.parser.text_string_to_metric_families`:
/// the family types by name, and every sample.
struct Scrape {
    text: String,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
types, samples = {}, []
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps({"types": types, "samples": samples}))
"#;
        let mut child = Command::new(common::python())
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client could not parse the scrape (pip install -r tests/requirements.txt): {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let types = parsed["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let samples = parsed["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Sample {
                name: s["name"].as_str().unwrap().to_owned(),
                labels: s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                value: s["value"].as_f64().unwrap(),
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            types,
            samples,
        }
    }

    /// Whether `family` is of type `kind`: as the parser read it, or, for a
    /// family without samples yet (which the parser leaves out), as the
    /// `# TYPE` line says.
    fn declares(&self, family: &str, kind: &str) -> bool {
        match self.types.get(family) {
            Some(t) => t == kind,
            None => {
                let name = match kind {
                    "counter" => format!("{family}_total"),
                    _ => family.to_owned(),
                };
                self.text.contains(&format!("# TYPE {name} {kind}\n"))
            }
        }
    }

    /// The value of the one sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels);
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?}: {found:#?}\nall of {name}: {:#?}",
            self.matching(name, &[])
        );
        found[0].value
    }

    /// The sum over the samples `name` whose labels include `labels` (0 when none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).iter().map(|s| s.value).sum()
    }

    fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

/// GET `path` with an optional bearer token and extra header: (status,
/// content type, body).
fn get(url: &str, token: Option<&str>, header: Option<(&str, &str)>) -> (u16, String, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let mut resp = req.call().expect("HTTP request");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (status, ctype, body)
}

fn scrape(gw: &Gateway, token: &str) -> Scrape {
    let (status, ctype, body) = get(&gw.url("/metrics"), Some(token), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    Scrape::parse(&body)
}

/// The study1 fixture files and its Study Instance UID.
fn study1() -> (Vec<PathBuf>, String) {
    let study = common::fixture_study("study1/");
    (study.files, study.uid)
}

/// study1 with 64-character UIDs (keys over 200 bytes), for the S3 store.
fn long_study1() -> (Vec<PathBuf>, String) {
    use common::s3 as long_uids;
    let fixtures: Vec<Value> = long_uids::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .collect();
    let files = fixtures.iter().map(long_uids::fixture_path).collect();
    (files, fixtures[0]["study"].as_str().unwrap().to_owned())
}

fn access(study: &str) -> String {
    json!({
        "id": "whe_0123456789abcdef0123456789abcdef",
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study },
    })
    .to_string()
}

/// A signed URL of the answer, on the gateway's own address (it signs for
/// its public URL; only path and query are signed).
fn on_gateway(http: std::net::SocketAddr, url: &str) -> String {
    let path = url.split_once("/files/").expect("a /files/ URL").1;
    format!("http://{http}/files/{path}")
}

#[test]
fn metrics_count_a_known_workload() {
    let gw = Gateway::start_with(
        Opts::default()
            .env("AVARA_WEBHOOK_KEY", KEY)
            .env("DICOM_GATEWAY_METRICS_TOKEN", METRICS_TOKEN)
            .env("DICOM_GATEWAY_DUPLICATES", "reject"),
    );
    let (files, study) = study1();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    common::assert_ok(&common::storescu(&gw, &["-xe"], &refs), "storescu");
    common::assert_ok(&common::echoscu(&gw, "DICOMGW"), "echoscu");
    // Sent again under the `reject` policy: refused (0x0111), not stored.
    let again = common::storescu(&gw, &["-v", "-xe"], &refs[..1]);
    let said = String::from_utf8_lossy(&again.stderr).to_string()
        + &String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("Status: 0x111"), "{said}");
    // Called AE title that is not ours: the association is rejected.
    let wrong = common::echoscu(&gw, "NOT-US");
    assert!(!wrong.status.success());

    let answer = common::avara_send(&gw, KEY, &access(&study), &["--id", "msg_metrics_1"]);
    assert_eq!(answer["status"], 200, "{answer}");
    let urls = answer["body"]["urls"].as_array().unwrap();
    assert_eq!(urls.len(), files.len());
    // Delivered again (Avara retries): answered as before, URLs signed again.
    let repeat = common::avara_send(&gw, KEY, &access(&study), &["--id", "msg_metrics_1"]);
    assert_eq!(repeat["status"], 200, "{repeat}");
    let refused = common::avara_send(&gw, KEY, &access(&study), &["--sign-key", STRANGER]);
    assert_eq!(refused["status"], 401, "{refused}");
    let (status, _, _) = get(&on_gateway(gw.http, urls[0].as_str().unwrap()), None, None);
    assert_eq!(status, 200);

    let m = scrape(&gw, METRICS_TOKEN);
    let n = files.len() as f64;
    // Families have the types Prometheus expects.
    for (family, kind) in [
        ("dicom_gateway_associations_open", "gauge"),
        ("dicom_gateway_associations", "counter"),
        ("dicom_gateway_associations_rejected", "counter"),
        ("dicom_gateway_instances", "counter"),
        ("dicom_gateway_received_bytes", "counter"),
        ("dicom_gateway_ingest_latency_seconds", "histogram"),
        ("dicom_gateway_commit_batch_instances", "histogram"),
        ("dicom_gateway_store_request_duration_seconds", "histogram"),
        ("dicom_gateway_store_request_errors", "counter"),
        ("dicom_gateway_webhook_requests", "counter"),
        (
            "dicom_gateway_webhook_request_duration_seconds",
            "histogram",
        ),
        ("dicom_gateway_signed_urls", "counter"),
        ("dicom_gateway_uploads", "counter"),
        ("dicom_gateway_report_jobs", "gauge"),
        ("dicom_gateway_report_fetch_attempts", "counter"),
        ("dicom_gateway_outbound_deliveries", "counter"),
        (
            "dicom_gateway_outbound_delivery_duration_seconds",
            "histogram",
        ),
        ("dicom_gateway_outbox_depth", "gauge"),
        ("dicom_gateway_http_requests", "counter"),
        ("dicom_gateway_http_request_duration_seconds", "histogram"),
        ("dicom_gateway_data_dir_free_bytes", "gauge"),
        ("dicom_gateway_index_size_bytes", "gauge"),
        ("dicom_gateway_build_info", "gauge"),
    ] {
        assert!(m.declares(family, kind), "{family} {kind}:\n{}", m.text);
    }

    // Associations: storescu twice and one echoscu; the wrong called AE
    // title rejected; none open any more.
    assert_eq!(m.value("dicom_gateway_associations_total", &[]), 3.0);
    assert_eq!(m.value("dicom_gateway_associations_open", &[]), 0.0);
    assert_eq!(
        m.value(
            "dicom_gateway_associations_rejected_total",
            &[("reason", "called_ae_unknown")]
        ),
        1.0
    );
    assert_eq!(m.sum("dicom_gateway_associations_rejected_total", &[]), 1.0);

    // Instances by outcome, status and calling AE title.
    let stored = [
        ("outcome", "stored"),
        ("status", "0000"),
        ("calling_ae", "DCMTKSCU"),
    ];
    assert_eq!(m.value("dicom_gateway_instances_total", &stored), n);
    let dup = [
        ("outcome", "refused"),
        ("status", "0111"),
        ("calling_ae", "DCMTKSCU"),
    ];
    assert_eq!(m.value("dicom_gateway_instances_total", &dup), 1.0);
    assert_eq!(m.sum("dicom_gateway_instances_total", &[]), n + 1.0);
    assert_eq!(
        m.value("dicom_gateway_ingest_latency_seconds_count", &[]),
        n + 1.0
    );
    assert_eq!(
        m.value(
            "dicom_gateway_ingest_latency_seconds_bucket",
            &[("le", "+Inf")]
        ),
        n + 1.0
    );
    // Every stored instance went through a group commit; the duplicate did not.
    assert_eq!(m.value("dicom_gateway_commit_batch_instances_sum", &[]), n);
    assert!(m.value("dicom_gateway_commit_batch_instances_count", &[]) >= 1.0);

    // Bytes: every data set PDV, the refused one's too. What is stored is
    // exactly what arrived, so the stored data sets say how much that was.
    let stored_bytes: usize = gw
        .object_files()
        .iter()
        .map(|p| common::dataset_bytes(p).len())
        .sum();
    let first_sop = common::fixture(
        files[0]
            .to_str()
            .unwrap()
            .rsplit("fixtures/")
            .next()
            .unwrap(),
    )["sop_instance"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = gw
        .object_files()
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy() == format!("{first_sop}.dcm"))
        .expect("the first instance is stored");
    let resent = common::dataset_bytes(&first).len();
    assert_eq!(
        m.value(
            "dicom_gateway_received_bytes_total",
            &[("protocol", "dicom")]
        ),
        (stored_bytes + resent) as f64
    );

    // The webhook: one answered, one with a signature of another key.
    assert_eq!(
        m.value(
            "dicom_gateway_webhook_requests_total",
            &[("event", "study.access_requested"), ("outcome", "answered")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "dicom_gateway_webhook_requests_total",
            &[("event", "study.access_requested"), ("outcome", "repeated")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "dicom_gateway_webhook_requests_total",
            &[("event", "unverified"), ("outcome", "unauthenticated")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "dicom_gateway_webhook_request_duration_seconds_count",
            &[("event", "study.access_requested")]
        ),
        2.0
    );
    assert_eq!(
        m.value(
            "dicom_gateway_signed_urls_total",
            &[("method", "GET"), ("signer", "gateway")]
        ),
        2.0 * n
    );
    assert_eq!(
        m.value(
            "dicom_gateway_signed_urls_total",
            &[("method", "PUT"), ("signer", "gateway")]
        ),
        0.0
    );
    // The download, by route pattern (never by path).
    assert_eq!(
        m.value(
            "dicom_gateway_http_requests_total",
            &[("route", "/files/{*key}"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "dicom_gateway_http_requests_total",
            &[("route", "/webhooks/avara"), ("status", "401")]
        ),
        1.0
    );
    assert!(
        m.matching("dicom_gateway_http_requests_total", &[])
            .iter()
            .all(|s| {
                !s.labels["route"].contains(&study) && !s.labels["route"].contains("sig=")
            })
    );

    // Nothing of the rest happened.
    assert_eq!(m.sum("dicom_gateway_uploads_total", &[]), 0.0);
    assert_eq!(
        m.value("dicom_gateway_report_jobs", &[("state", "pending")]),
        0.0
    );
    assert_eq!(m.value("dicom_gateway_outbox_depth", &[]), 0.0);
    assert_eq!(m.sum("dicom_gateway_outbound_deliveries_total", &[]), 0.0);

    // Sampled at scrape time.
    assert!(m.value("dicom_gateway_data_dir_free_bytes", &[]) > 0.0);
    let index_bytes: u64 = common::files_under(&gw.data_view().join("index"))
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(index_bytes > 0);
    assert!(m.value("dicom_gateway_index_size_bytes", &[]) > 0.0);
    let build = m.matching("dicom_gateway_build_info", &[]);
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build[0].value, 1.0);

    // The scrape before this one is counted too.
    let again = scrape(&gw, METRICS_TOKEN);
    assert_eq!(
        again.value(
            "dicom_gateway_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        ),
        1.0
    );
}

#[test]
fn a_hostile_calling_ae_cannot_grow_the_registry() {
    let gw = Gateway::start_with(Opts::default().env("DICOM_GATEWAY_METRICS_TOKEN", METRICS_TOKEN));
    let (files, _) = study1();
    // 70 distinct calling AE titles (the cap is 64), each storing one instance.
    for n in 0..70 {
        let out = Command::new(common::require("/usr/bin/storescu"))
            .args(["-aet", &format!("SCU{n:02}"), "-aec", "DICOMGW", "-xe"])
            .arg(gw.dicom.ip().to_string())
            .arg(gw.dicom.port().to_string())
            .arg(&files[0])
            .output()
            .unwrap();
        common::assert_ok(&out, "storescu");
    }
    let m = scrape(&gw, METRICS_TOKEN);
    let series = m.matching("dicom_gateway_instances_total", &[]);
    assert_eq!(series.len(), 65, "{series:#?}");
    assert_eq!(
        m.value(
            "dicom_gateway_instances_total",
            &[("calling_ae", "(other)")]
        ),
        6.0
    );
    assert_eq!(m.sum("dicom_gateway_instances_total", &[]), 70.0);
}

#[test]
fn store_requests_are_timed_per_operation_on_s3() {
    let s3 = common::s3::S3Server::start();
    let gw = Gateway::start_with(
        s3.gateway_opts("metrics")
            .env("AVARA_WEBHOOK_KEY", KEY)
            .env("DICOM_GATEWAY_METRICS_TOKEN", METRICS_TOKEN),
    );
    let before = scrape(&gw, METRICS_TOKEN);
    let puts = |m: &Scrape| {
        m.value(
            "dicom_gateway_store_request_duration_seconds_count",
            &[("operation", "put")],
        )
    };
    // The start-up probe wrote to the store.
    assert!(puts(&before) >= 1.0);
    // Real-length UIDs, as every S3 test sends.
    let (files, study) = long_study1();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    common::assert_ok(&common::storescu(&gw, &["-xe"], &refs), "storescu");
    // Acknowledged from the journal (storage.ack = "journal"): the access
    // answer hands out store URLs once every upload is done, gateway
    // `/files` URLs before.
    common::s3::wait_until("the upload backlog drained", || {
        let (status, health) = gw.get_json("/healthz", None);
        status == 200 && health["upload_backlog"]["instances"] == 0
    });
    let answer = common::avara_send(&gw, KEY, &access(&study), &[]);
    assert_eq!(answer["status"], 200, "{answer}");

    let m = scrape(&gw, METRICS_TOKEN);
    let n = files.len() as f64;
    // One PUT per instance (each is smaller than a part), none failed.
    assert_eq!(puts(&m) - puts(&before), n);
    assert_eq!(s3.keys().len() as f64, n);
    assert_eq!(m.sum("dicom_gateway_store_request_errors_total", &[]), 0.0);
    assert_eq!(
        m.value(
            "dicom_gateway_store_request_duration_seconds_bucket",
            &[("operation", "put"), ("le", "+Inf")]
        ),
        puts(&m)
    );
    // The access answer's URLs are presigned by the store.
    assert_eq!(
        m.value(
            "dicom_gateway_signed_urls_total",
            &[("method", "GET"), ("signer", "store")]
        ),
        n
    );
    assert_eq!(
        m.value(
            "dicom_gateway_signed_urls_total",
            &[("method", "GET"), ("signer", "gateway")]
        ),
        0.0
    );
}
