//! The operator page at `/ui`, in a real browser: Debian's chromium,
//! headless, loads the page from the gateway after a real storescu send and
//! its DOM is read back (`--dump-dom`, with a virtual time budget so the
//! page's fetches finish first; the page marks `data-state="ready"` when its
//! view is built, so the tests know it did). The page's state lives in the
//! URL fragment (`#/studies?q=…`, `#/study/<uid>`), which is also what its
//! search form sets.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, Gateway, Opts};

/// Debian's chromium (scripts/test.sh installs it).
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "/usr/bin/chromium is missing: run scripts/test.sh (it installs Debian's chromium)"
    );
    path
}

/// Chromium headless on `url` with `action` (`--dump-dom`,
/// `--screenshot=…`); its stdout.
fn browse(url: &str, action: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--lang=en-US",
            // Virtual time: pending fetches hold the clock, so this is a
            // bound on the page's timers, not a wait; below the activity
            // view's 10 s refresh.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium {action} {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The page's DOM once the view for `fragment` is built.
fn page(gw: &Gateway, fragment: &str) -> String {
    let dom = browse(&format!("{}#{fragment}", gw.url("/ui")), "--dump-dom");
    assert!(
        dom.contains(r#"data-state="ready""#),
        "the page did not finish building #{fragment}:\n{dom}"
    );
    dom
}

fn send(gw: &Gateway, files: &[&Path]) {
    common::assert_ok(&common::storescu(gw, &["-xe"], files), "storescu");
}

fn fixture_files(part: &str) -> (serde_json::Value, Vec<PathBuf>) {
    let all: Vec<serde_json::Value> = common::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().contains(part))
        .collect();
    let files = all
        .iter()
        .map(|f| common::fixtures_dir().join(f["file"].as_str().unwrap()))
        .collect();
    (all[0].clone(), files)
}

/// A copy of `from` with pydicom `edits` (statements on `ds`) applied.
fn variant(from: &Path, dir: &Path, name: &str, edits: &str) -> PathBuf {
    let to = dir.join(name);
    common::pydicom(
        &format!(
            "import sys, pydicom\nds = pydicom.dcmread(sys.argv[1])\n{edits}\nds.save_as(sys.argv[2])"
        ),
        &[from.to_str().unwrap(), to.to_str().unwrap()],
    );
    to
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

#[test]
fn the_page_lists_finds_and_details_a_study_sent_by_storescu() {
    let gw = Gateway::start();
    let (first, study_files) = fixture_files("study1/");
    let study = first["study"].as_str().unwrap();
    let paths: Vec<&Path> = study_files.iter().map(PathBuf::as_path).collect();
    send(&gw, &paths);
    let (other, other_files) = fixture_files("multiframe/");
    send(&gw, &[&other_files[0]]);
    let other_study = other["study"].as_str().unwrap();
    let row = |uid: &str| format!(r#"data-study="{uid}""#);

    // The study list shows both, with the chart above.
    let home = page(&gw, "/");
    assert!(home.contains(&row(study)) && home.contains(&row(other_study)));
    assert!(home.contains(r#"id="ingest-chart""#));
    assert!(home.contains("ACC0001"), "accession shown");

    // Search finds it by accession, patient ID, date and UID, and a search
    // that matches nothing lists nothing.
    for fragment in [
        "/studies?q=ACC0001",
        "/studies?q=chest",
        "/studies?accession=acc0001",
        &format!("/studies?uid={study}"),
    ] {
        let found = page(&gw, fragment);
        assert!(found.contains(&row(study)), "{fragment} did not find it");
        assert!(
            !found.contains(&row(other_study)),
            "{fragment} found too much"
        );
    }
    let by_patient = page(&gw, "/studies?patientId=GW-PAT-0001&date=2024-01-15");
    assert!(by_patient.contains(&row(study)) && by_patient.contains(&row(other_study)));
    let none = page(&gw, "/studies?q=NOBODY-HERE");
    assert!(
        !none.contains("data-study="),
        "a non-matching search listed studies"
    );
    assert!(none.contains("No study matches."));
    let none = page(&gw, "/studies?date=1999-01-01");
    assert!(!none.contains("data-study="));

    // The detail page lists every instance with a download link.
    let detail = page(&gw, &format!("/study/{study}"));
    let sops: Vec<String> = common::fixtures()
        .into_iter()
        .filter(|f| f["study"] == study)
        .map(|f| f["sop_instance"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sops.len(), study_files.len());
    for sop in &sops {
        assert!(
            detail.contains(&format!(r#"data-instance="{sop}""#)),
            "{sop} not listed"
        );
    }
    assert_eq!(
        detail.matches(r#"href="/api/download/studies/"#).count(),
        sops.len()
    );

    // A download link leads, through a short-lived signed URL, to the very
    // bytes stored.
    let record = gw.instance_record(study, &sops[0]);
    let key = record["objectKey"].as_str().unwrap();
    assert!(detail.contains(&format!(r#"href="/api/download/{key}""#)));
    let resp = agent()
        .get(&gw.url(&format!("/api/download/{key}")))
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("/files/{key}?exp=")) && location.contains("&sig="),
        "{location}"
    );
    let mut file = agent().get(&gw.url(&location)).call().unwrap();
    assert_eq!(file.status().as_u16(), 200);
    let bytes = file.body_mut().read_to_vec().unwrap();
    assert_eq!(bytes, std::fs::read(gw.objects().join(key)).unwrap());
    // A key that is not one is refused, not signed.
    let bad = agent()
        .get(&gw.url("/api/download/etc/passwd"))
        .call()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[test]
fn activity_shows_associations_refusals_and_the_ingest_chart() {
    let gw = Gateway::start();
    let (first, files) = fixture_files("study1/series1");
    send(&gw, &[&files[0]]);
    // The same SOP Instance UID under another study: refused (0x0111).
    let dir = tempfile::tempdir().unwrap();
    let moved = variant(
        &files[0],
        dir.path(),
        "moved.dcm",
        "ds.StudyInstanceUID = '2.25.4242'",
    );
    let _ = common::storescu(&gw, &["-xe"], &[&moved]);

    let activity = page(&gw, "/activity");
    assert!(activity.contains("DCMTKSCU"), "calling AE shown");
    assert!(activity.contains(">released<"), "how it ended");
    assert!(activity.contains(">0x0111<"), "the refusal's status");
    assert!(
        activity.contains(first["sop_instance"].as_str().unwrap()),
        "the refused SOP Instance UID"
    );
    // One stored, one refused, in this minute's bar.
    assert!(activity.contains("1 stored ("), "{activity}");
    assert!(activity.contains("1 refused"));
    assert_eq!(activity.matches(r#"class="stored""#).count(), 1);
    assert_eq!(activity.matches(r#"class="refused""#).count(), 1);

    // The same, as JSON.
    let (status, body) = gw.get_json("/api/activity", None);
    assert_eq!(status, 200);
    let a = &body["associations"];
    assert_eq!(a.as_array().unwrap().len(), 2, "{body}");
    assert_eq!(
        (a[0]["stored"].as_u64(), a[0]["refused"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(
        (a[1]["stored"].as_u64(), a[1]["refused"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(body["refusals"][0]["status"], 0x0111);
    assert_eq!(body["perMinute"].as_array().unwrap().len(), 60);
}

#[test]
fn a_hostile_patient_name_is_shown_as_text() {
    let gw = Gateway::start();
    let (_, files) = fixture_files("study1/series1");
    let dir = tempfile::tempdir().unwrap();
    // No `=`: in a person name that starts the ideographic group, which the
    // page does not show.
    let hostile = variant(
        &files[0],
        dir.path(),
        "hostile.dcm",
        "ds.PatientName = '<script>document.title`pwned`</script><img src onerror>'\n\
         ds.StudyDescription = '<b>bold</b>'\n\
         ds.StudyInstanceUID = '2.25.777'",
    );
    // Sent under a calling AE title of the peer's choosing: markup too.
    let out = Command::new(common::require("/usr/bin/storescu"))
        .args(["-aet", "<img src>", "-aec", "DICOMGW", "-xe"])
        .arg(gw.dicom.ip().to_string())
        .arg(gw.dicom.port().to_string())
        .arg(&hostile)
        .output()
        .unwrap();
    common::assert_ok(&out, "storescu -aet '<img src>'");
    let activity = page(&gw, "/activity");
    assert!(activity.contains(">&lt;img src&gt;<"), "{activity}");
    assert!(!activity.contains("<img"));
    for fragment in ["/", "/studies?q=script", "/study/2.25.777"] {
        let dom = page(&gw, fragment);
        assert!(
            dom.contains(
                "&lt;script&gt;document.title`pwned`&lt;/script&gt;&lt;img src onerror&gt;"
            ),
            "#{fragment}: the name is not shown as text:\n{dom}"
        );
        assert!(dom.contains("&lt;b&gt;bold&lt;/b&gt;"), "#{fragment}");
        assert!(
            !dom.contains("<img"),
            "#{fragment}: markup from the name was parsed"
        );
        assert!(!dom.contains("<b>"), "#{fragment}");
        assert!(dom.contains("<title>dicom-gateway</title>"), "#{fragment}");
    }
}

#[test]
fn a_screenshot_is_taken_in_the_browser() {
    let gw = Gateway::start();
    let (_, files) = fixture_files("study1/");
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    send(&gw, &paths);
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("ui.png");
    browse(&gw.url("/ui#/"), &format!("--screenshot={}", png.display()));
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn the_page_is_guarded_like_the_operator_api() {
    let token = "ui-token-0123456789abcdef";
    let gw = Gateway::start_with(Opts::default().env("DICOM_GATEWAY_API_TOKEN", token));
    let get = |path: &str, auth: Option<&str>| {
        let mut req = agent().get(&gw.url(path));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call().unwrap()
    };
    // A browser is asked for the token (Basic, any user name).
    let refused = get("/ui", None);
    assert_eq!(refused.status().as_u16(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    use base64::Engine as _;
    let basic = |user_pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    assert_eq!(get("/ui", Some(&basic("op:wrong"))).status().as_u16(), 401);
    let ok = get("/ui", Some(&basic(&format!("op:{token}"))));
    assert_eq!(ok.status().as_u16(), 200);
    let csp = ok.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    for path in ["/ui/app.js", "/api/studies?q=x", "/api/activity"] {
        assert_eq!(get(path, None).status().as_u16(), 401, "{path}");
        assert_eq!(
            get(path, Some(&basic(&format!("op:{token}"))))
                .status()
                .as_u16(),
            200,
            "{path}"
        );
        assert_eq!(
            get(path, Some(&format!("Bearer {token}")))
                .status()
                .as_u16(),
            200
        );
    }
    // Basic credentials are for reads only: a browser would send them with
    // a forged cross-site form too.
    let write = agent()
        .post(&gw.url("/api/webhooks"))
        .header("Authorization", &basic(&format!("op:{token}")))
        .content_type("application/json")
        .send(r#"{"url":"http://127.0.0.1:9/x","events":["study.stable"]}"#)
        .unwrap();
    assert_eq!(write.status().as_u16(), 401);

    // Without a token: loopback only, never through a proxy.
    let open = Gateway::start();
    let proxied = agent()
        .get(&open.url("/ui"))
        .header("X-Forwarded-For", "203.0.113.9")
        .call()
        .unwrap();
    assert_eq!(proxied.status().as_u16(), 403);
    assert_eq!(
        agent()
            .get(&open.url("/ui"))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn search_parameters_are_bounded() {
    let gw = Gateway::start();
    let (_, files) = fixture_files("study1/");
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    send(&gw, &paths);
    let (_, other) = fixture_files("multiframe/");
    send(&gw, &[&other[0]]);
    let resp = agent().get(&gw.url("/api/studies?limit=1")).call().unwrap();
    assert_eq!(resp.headers()["x-total-count"], "2");
    let (status, body) = gw.get_json("/api/studies?limit=1", None);
    assert_eq!((status, body.as_array().unwrap().len()), (200, 1));
    for bad in [
        "/api/studies?limit=0",
        "/api/studies?limit=100000",
        "/api/studies?limit=-1",
        "/api/studies?date=yesterday",
        &format!("/api/studies?q={}", "x".repeat(200)),
    ] {
        let (status, body) = gw.get_json(bad, None);
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    // Without parameters, the listing is what it always was.
    assert_eq!(gw.studies().len(), 2);
}

#[test]
fn a_delivered_report_is_listed_with_its_study_and_downloads() {
    use crate::webhook::{PDF, PdfServer, report_event};
    let key = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let gw = Gateway::start_with(
        Opts::default()
            .env("AVARA_WEBHOOK_KEY", key)
            .env("DICOM_GATEWAY_REPORT_FETCH_ALLOW_PRIVATE", "true"),
    );
    let (first, files) = fixture_files("study1/series1");
    send(&gw, &[&files[0]]);
    let study = first["study"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pdf = dir.path().join("r.pdf");
    std::fs::write(&pdf, PDF).unwrap();
    let server = PdfServer::start(&pdf, &[]);
    let event = report_event(
        &server.url,
        serde_json::json!({ "studyInstanceUid": study }),
    );
    let answer = common::avara_send(&gw, key, &event.to_string(), &[]);
    assert_eq!(answer["status"], 200, "{answer}");
    gw.wait_for_log("report stored");

    let detail = page(&gw, &format!("/study/{study}"));
    assert!(detail.contains("rep_0123456789abcdef0123456789abcdef"));
    assert!(detail.contains("application/pdf"));
    assert!(detail.contains(" critical"));
    // One link per instance and one for the report.
    assert_eq!(detail.matches(r#"href="/api/download/studies/"#).count(), 2);
    let media = gw.study(study)["media"][0]["objectKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = agent()
        .get(&gw.url(&format!("/api/download/{media}")))
        .call()
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let mut file = agent().get(&gw.url(&location)).call().unwrap();
    assert_eq!(file.body_mut().read_to_vec().unwrap(), PDF);

    let reports = page(&gw, "/reports");
    assert!(reports.contains("rep_0123456789abcdef0123456789abcdef"));
    assert!(
        reports.contains(r#"<td class="ok">stored</td>"#),
        "{reports}"
    );
    // The presigned URL is a credential: never on the page.
    assert!(!reports.contains("X-Amz-Signature") && !detail.contains("X-Amz-Signature"));
}

/// What the page showed at one step of `ui/cdp.py`.
fn step<'a>(answer: &'a serde_json::Value, name: &str, list: &str) -> Vec<&'a str> {
    answer[name][list]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// An operator types into the search box and presses Enter, then clicks
/// the study: chromium driven over the DevTools protocol (a pipe, the
/// Python standard library), not just loaded at an address.
#[test]
fn typing_a_search_and_clicking_the_study_works_in_the_browser() {
    let gw = Gateway::start();
    let (first, study_files) = fixture_files("study1/");
    let paths: Vec<&Path> = study_files.iter().map(PathBuf::as_path).collect();
    send(&gw, &paths);
    let (other, other_files) = fixture_files("multiframe/");
    send(&gw, &[&other_files[0]]);
    let study = first["study"].as_str().unwrap();
    let out = Command::new(common::python())
        .arg("-c")
        .arg(include_str!("ui/cdp.py"))
        .arg(chromium())
        .arg(gw.url("/ui"))
        .arg("chest acc0001")
        .output()
        .expect("run ui/cdp.py");
    common::assert_ok(&out, "ui/cdp.py");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let listed = step(&answer, "listed", "studies");
    assert!(listed.contains(&study) && listed.contains(&other["study"].as_str().unwrap()));
    assert_eq!(answer["searched"]["hash"], "#/studies?q=chest+acc0001");
    assert_eq!(step(&answer, "searched", "studies"), [study]);
    assert_eq!(answer["detail"]["hash"], format!("#/study/{study}"));
    let mut shown = step(&answer, "detail", "instances");
    shown.sort_unstable();
    let fixtures = common::fixtures();
    let mut sent: Vec<&str> = fixtures
        .iter()
        .filter(|f| f["study"] == study)
        .map(|f| f["sop_instance"].as_str().unwrap())
        .collect();
    sent.sort_unstable();
    assert_eq!(shown, sent);
}
