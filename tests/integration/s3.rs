//! The S3 backend against a real S3 store (SeaweedFS, which checks SigV4 for
//! real), with 64-character UIDs as real modalities send (keys over 200
//! bytes): instances land in the bucket before they are acknowledged, viewers
//! download straight from the store with presigned URLs the server checks,
//! large instances go up in parts in bounded memory, an outage is 0xA700
//! with nothing half-kept, and a store the gateway cannot use stops it at
//! start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::s3::{self, S3Server};
use crate::common::{self, Gateway, Opts};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Where in the bucket the gateway keeps its objects.
const PREFIX: &str = "site-a/archive";
/// `Refused: Out of Resources`: what a sender gets when the store is down.
const OUT_OF_RESOURCES: u64 = 0xA700;

/// A gateway on `s3` acknowledging once the store confirmed
/// (`--storage-ack stored`): these tests look in the bucket right after an
/// answer. s3_journal.rs covers the journal's acknowledgement.
fn gateway(s3: &S3Server, opts: Opts) -> Gateway {
    let mut all = s3
        .gateway_opts(PREFIX)
        .env("AVARA_WEBHOOK_KEY", KEY)
        .args(&["--storage-ack", "stored"]);
    all.args.extend(opts.args);
    all.envs.extend(opts.envs);
    let gw = Gateway::start_with(all);
    gw.wait_for_log("object store reachable and writable");
    gw
}

/// The bucket key of a gateway object key.
fn bucket_key(object_key: &Value) -> String {
    format!("{PREFIX}/{}", object_key.as_str().unwrap())
}

fn study1() -> Vec<Value> {
    s3::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .collect()
}

fn fixture_path(f: &Value) -> PathBuf {
    s3::fixture_path(f)
}

/// Sends study1 with DCMTK storescu; returns its Study Instance UID and the
/// sent file of every SOP Instance UID.
fn store_study1(gw: &Gateway) -> (String, BTreeMap<String, PathBuf>) {
    let fixtures = study1();
    let files: Vec<PathBuf> = fixtures.iter().map(fixture_path).collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    common::assert_ok(&common::storescu(gw, &["-xe"], &refs), "storescu");
    let sent = fixtures
        .iter()
        .map(|f| {
            (
                f["sop_instance"].as_str().unwrap().to_owned(),
                fixture_path(f),
            )
        })
        .collect();
    (fixtures[0]["study"].as_str().unwrap().to_owned(), sent)
}

/// Every instance record of a study, from the operator API.
fn instances(gw: &Gateway, study: &str) -> Vec<Value> {
    gw.study(study)["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().clone())
        .collect()
}

/// `study.access_requested` for `study`, signed by Avara's own tools
/// (tests/peers/avara_sender.py); the answer's body.
fn access(gw: &Gateway, study: &str) -> Value {
    let event = json!({
        "id": "whe_0123456789abcdef0123456789abcdef",
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study },
    });
    let answer = webhook(gw, &event);
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["authorized"], true, "{answer}");
    answer["body"].clone()
}

fn instance_urls(answer: &Value) -> Vec<String> {
    answer["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

/// `host:port` of an http URL.
fn authority(url: &str) -> &str {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    rest.split('/').next().unwrap()
}

/// The value of query parameter `name` (as it is in the URL, encoded).
fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// `url` with query parameter `name` set to `value`.
fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let old = query_param(url, name).unwrap_or_else(|| panic!("no {name} in {url}"));
    let changed = url.replace(&format!("{name}={old}"), &format!("{name}={value}"));
    assert_ne!(changed, url);
    changed
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// A plain GET: status, Content-Type, Content-Disposition, body.
struct Fetched {
    status: u16,
    content_type: String,
    disposition: String,
    body: Vec<u8>,
}

fn fetch(url: &str) -> Fetched {
    let mut resp = agent()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    Fetched {
        status: resp.status().as_u16(),
        content_type,
        disposition,
        body: resp.body_mut().read_to_vec().unwrap(),
    }
}

/// SOP Instance UID of each Part-10 file, as pydicom reads it (fully,
/// pixel data included).
fn sop_uids(files: &[PathBuf]) -> Vec<String> {
    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    common::pydicom(
        "import sys, pydicom\n\
         for f in sys.argv[1:]:\n    ds = pydicom.dcmread(f)\n    ds.PixelData\n    print(ds.SOPInstanceUID)",
        &args,
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn a_study_sent_with_storescu_lands_in_the_bucket_and_is_listed() {
    let s3 = S3Server::start();
    let gw = gateway(&s3, Opts::default());
    let (study, sent) = store_study1(&gw);

    // The operator API lists it.
    let studies = gw.studies();
    assert_eq!(studies.len(), 1, "{studies:?}");
    assert_eq!(studies[0]["studyInstanceUid"], study.as_str());
    assert_eq!(studies[0]["instanceCount"], sent.len());
    let records = instances(&gw, &study);
    assert_eq!(records.len(), sent.len());

    // The bucket holds exactly the instances (the start-up probe object is
    // gone), each under its key below the prefix, with the indexed size.
    let expected: BTreeSet<String> = records
        .iter()
        .map(|r| bucket_key(&r["objectKey"]))
        .collect();
    let in_bucket: BTreeSet<String> = s3.keys().into_iter().collect();
    assert_eq!(in_bucket, expected);
    // Real-length UIDs: keys over 200 bytes.
    assert!(expected.iter().all(|k| k.len() > 200), "{expected:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut stored = Vec::new();
    for r in &records {
        let sop = r["sopInstanceUid"].as_str().unwrap();
        assert_eq!(sop.len(), 64, "{sop}");
        let bytes = s3.get(&bucket_key(&r["objectKey"]));
        assert_eq!(bytes.len() as u64, r["size"].as_u64().unwrap(), "{sop}");
        // The data set is byte for byte what storescu sent (only the File
        // Meta group is the gateway's own).
        assert!(
            common::dataset_bytes_of(&bytes) == common::dataset_bytes(&sent[sop]),
            "{sop}: stored data set differs from the sent one"
        );
        let path = dir.path().join(format!("{}.dcm", stored.len()));
        std::fs::write(&path, &bytes).unwrap();
        stored.push((sop.to_owned(), path));
    }
    let files: Vec<PathBuf> = stored.iter().map(|(_, p)| p.clone()).collect();
    let opened = sop_uids(&files);
    let want: Vec<String> = stored.into_iter().map(|(sop, _)| sop).collect();
    assert_eq!(opened, want, "pydicom reads another SOP Instance UID");

    // Nothing went to a local store, and nothing is left in the spool.
    assert!(gw.object_files().is_empty(), "{:?}", gw.object_files());
    assert!(gw.spool_files().is_empty());
    assert!(s3.incomplete_uploads().is_empty());
}

#[test]
fn presigned_urls_download_straight_from_the_store() {
    let s3 = S3Server::start();
    let gw = gateway(&s3, Opts::default());
    let (study, sent) = store_study1(&gw);

    // A media file too, through the operator API.
    let pdf = b"%PDF-1.4\n% a tiny report\n%%EOF\n".to_vec();
    let mut put = agent()
        .put(&gw.url(&format!("/api/studies/{study}/media/report-1.pdf")))
        .header("Content-Type", "application/pdf")
        .send(&pdf[..])
        .unwrap();
    assert_eq!(
        put.status(),
        201,
        "{}",
        put.body_mut().read_to_string().unwrap()
    );
    let media_key = format!("{PREFIX}/studies/{study}/media/report-1.pdf");
    assert_eq!(s3.get(&media_key), pdf);

    let answer = access(&gw, &study);
    let urls = instance_urls(&answer);
    assert_eq!(urls.len(), sent.len());
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        // Straight from the store, not through the gateway, signed with the
        // store's credentials (SigV4).
        assert_eq!(authority(url), s3.addr.to_string(), "{url}");
        assert_ne!(authority(url), gw.http.to_string());
        assert_eq!(
            query_param(url, "X-Amz-Algorithm"),
            Some("AWS4-HMAC-SHA256")
        );
        let credential = query_param(url, "X-Amz-Credential").unwrap();
        assert!(
            credential.starts_with(&format!("{}%2F", s3.access_key)),
            "{url}"
        );
        // Signed for what is left of the hour from the event's second:
        // 3600, or 3599 once the clock passed into the next second.
        assert!(
            matches!(query_param(url, "X-Amz-Expires"), Some("3600" | "3599")),
            "{url}"
        );

        let got = fetch(url);
        assert_eq!(
            got.status,
            200,
            "{url}: {}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.content_type, "application/dicom", "{url}");
        let name = url.split('?').next().unwrap().rsplit('/').next().unwrap();
        assert_eq!(got.disposition, format!("attachment; filename=\"{name}\""));
        let path = dir.path().join(format!("{n}.dcm"));
        std::fs::write(&path, &got.body).unwrap();
        files.push(path);
    }
    let downloaded: BTreeSet<String> = sop_uids(&files).into_iter().collect();
    let want: BTreeSet<String> = sent.keys().cloned().collect();
    assert_eq!(downloaded, want);

    let media = answer["mediaUrls"].as_array().unwrap();
    assert_eq!(media.len(), 1, "{answer}");
    assert_eq!(media[0]["mimeType"], "application/pdf");
    assert_eq!(media[0]["fileName"], "report-1.pdf");
    let url = media[0]["url"].as_str().unwrap();
    assert_eq!(authority(url), s3.addr.to_string(), "{url}");
    let got = fetch(url);
    assert_eq!(got.status, 200, "{url}");
    assert_eq!(got.content_type, "application/pdf");
    assert_eq!(got.body, pdf);
}

#[test]
fn tampered_presigned_urls_are_refused_by_the_store() {
    let s3 = S3Server::start();
    let gw = gateway(&s3, Opts::default());
    let (study, _) = store_study1(&gw);
    let url = instance_urls(&access(&gw, &study)).remove(0);
    assert_eq!(fetch(&url).status, 200, "the untouched URL works");

    // One hex digit of the signature changed (same length).
    let signature = query_param(&url, "X-Amz-Signature").unwrap().to_owned();
    assert_eq!(signature.len(), 64);
    let last = signature.chars().last().unwrap();
    let other = if last == '0' { '1' } else { '0' };
    let forged = format!("{}{other}", &signature[..63]);
    let got = fetch(&with_query_param(&url, "X-Amz-Signature", &forged));
    assert_eq!(got.status, 403, "{}", String::from_utf8_lossy(&got.body));
    assert!(String::from_utf8_lossy(&got.body).contains("SignatureDoesNotMatch"));

    // The answer's Content-Type is signed too: it cannot be swapped.
    let got = fetch(&with_query_param(
        &url,
        "response-content-type",
        "text%2Fhtml",
    ));
    assert_eq!(got.status, 403, "{}", String::from_utf8_lossy(&got.body));
    // Nor can the URL be stretched.
    let got = fetch(&with_query_param(&url, "X-Amz-Expires", "7200"));
    assert_eq!(got.status, 403, "{}", String::from_utf8_lossy(&got.body));
}

#[test]
fn an_expired_presigned_url_is_refused_by_the_store() {
    // SigV4 dates are whole seconds and the store refuses a URL once more
    // than X-Amz-Expires seconds passed since that date, so a 1 s URL is good
    // for anywhere between 0 and 1 s after it was signed: too little to
    // check that it worked first on a busy machine. 5 s leaves at least 4.
    let ttl = 5;
    let s3 = S3Server::start();
    let gw = gateway(&s3, Opts::default().arg("--url-ttl").arg(&ttl.to_string()));
    let (study, _) = store_study1(&gw);
    let url = instance_urls(&access(&gw, &study)).remove(0);
    assert!(
        matches!(query_param(&url, "X-Amz-Expires"), Some("5" | "4")),
        "{url}"
    );
    let first = fetch(&url);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );

    let deadline = Instant::now() + Duration::from_secs(ttl + 30);
    let refused = loop {
        let got = fetch(&url);
        if got.status != 200 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "a {ttl} s URL still works after {} s",
            ttl + 30
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let body = String::from_utf8_lossy(&refused.body);
    assert_eq!(refused.status, 403, "{body}");
    assert!(body.contains("Request has expired"), "{body}");
}

#[test]
fn urls_are_signed_for_the_public_endpoint() {
    let s3 = S3Server::start();
    let public = format!("localhost:{}", s3.addr.port());
    let gw = gateway(
        &s3,
        Opts::default()
            .arg("--storage-public-endpoint")
            .arg(&format!("http://{public}")),
    );
    let (study, _) = store_study1(&gw);
    let answer = access(&gw, &study);
    let records = instances(&gw, &study);
    for url in instance_urls(&answer) {
        assert_eq!(authority(&url), public, "{url}");
        let got = fetch(&url);
        assert_eq!(
            got.status,
            200,
            "{url}: {}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.content_type, "application/dicom");
        let key = url
            .split('?')
            .next()
            .unwrap()
            .split(&format!("/{}/", s3.bucket))
            .nth(1)
            .unwrap();
        assert!(
            records.iter().any(|r| bucket_key(&r["objectKey"]) == key),
            "{key}"
        );
        assert_eq!(got.body, s3.get(key));

        // The signature covers the host: the same URL by another name of the
        // same server is refused, so it really was signed for `public`.
        let other = url.replacen(&public, &s3.addr.to_string(), 1);
        let got = fetch(&other);
        assert_eq!(got.status, 403, "{other}");
    }
}

#[test]
fn a_gigabyte_instance_goes_up_in_parts_in_bounded_memory() {
    let s3 = S3Server::start();
    let gw = gateway(&s3, Opts::default());
    let (_dir, big) = s3::send_big(&gw, 1100);
    let sent = std::fs::metadata(&big).unwrap().len();
    assert!(sent > 1 << 30);
    // The local store stays under 100 MiB (durability.rs). Uploading adds
    // the parts in flight: with 8 MiB parts, at most 3 per upload (two
    // being sent while the next fills), ~24 MiB, plus the HTTP client's
    // buffers. 150 MiB is that with room (86 MiB measured, debug build); an
    // instance held whole in memory (1.1 GiB), or parts read ahead faster
    // than they go out, would be far above.
    let peak = gw.peak_rss();
    assert!(peak < 150 << 20, "peak RSS {} MiB", peak >> 20);

    // The upload was completed, none left open.
    assert!(
        s3.incomplete_uploads().is_empty(),
        "{:?}",
        s3.incomplete_uploads()
    );

    let studies = gw.studies();
    assert_eq!(studies.len(), 1);
    let study = studies[0]["studyInstanceUid"].as_str().unwrap();
    let records = instances(&gw, study);
    assert_eq!(records.len(), 1);
    let key = bucket_key(&records[0]["objectKey"]);
    assert_eq!(s3.keys(), vec![key.clone()]);
    assert!(key.len() > 200, "{key}");
    let (stored_len, etag) = s3.head(&key);
    // It went up in parts: S3's ETag of a multipart object is
    // `"<md5 of the parts' md5s>-<number of parts>"`.
    let parts: u32 = etag
        .trim_matches('"')
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("not a multipart ETag: {etag}"));
    assert!(parts > 100, "{parts} parts");
    assert_eq!(records[0]["size"].as_u64().unwrap(), stored_len);
    assert_eq!(studies[0]["totalBytes"].as_u64().unwrap(), stored_len);
    // Same data set length as the source (the meta groups differ).
    assert_eq!(
        stored_len - meta_len_of(&s3.client().get_range(&key, 0..1024)),
        sent - meta_len(&big)
    );
    assert!(gw.spool_files().is_empty());
}

/// Bytes of a Part-10 file up to the end of its File Meta group.
fn meta_len(p: &Path) -> u64 {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(p)
        .unwrap()
        .take(1024)
        .read_to_end(&mut head)
        .unwrap();
    meta_len_of(&head)
}

/// [`meta_len`] of a file's first bytes (its group length is at 140).
fn meta_len_of(head: &[u8]) -> u64 {
    let b: [u8; 4] = head[140..144].try_into().unwrap();
    144 + u32::from_le_bytes(b) as u64
}

#[test]
fn a_store_outage_is_a700_keeps_nothing_and_the_instance_stores_once_it_is_back() {
    let mut s3 = S3Server::start();
    let gw = gateway(&s3, Opts::default().arg("--storage-timeout").arg("3"));
    let f = &study1()[0];
    let file = fixture_path(f);
    let sop = f["sop_instance"].as_str().unwrap();
    let store = |gw: &Gateway| {
        let answer = common::pynet(gw, &["store", file.to_str().unwrap()]);
        assert_eq!(answer["results"][0]["sop_instance"], sop, "{answer}");
        answer["results"][0]["status"].clone()
    };

    s3.stop();
    let started = Instant::now();
    assert_eq!(store(&gw), OUT_OF_RESOURCES);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "refused only after {took:?}"
    );
    let refused = gw.wait_for_log("instance refused");
    assert!(
        refused.contains(sop) && refused.contains("status=0xA700") && refused.contains("store"),
        "{refused}"
    );
    // Nothing indexed, nothing left in the spool (its pool of pre-created
    // empty files aside: at most 64, all empty), and, once the store is
    // back, nothing in the bucket.
    assert!(gw.studies().is_empty(), "{:?}", gw.studies());
    assert!(gw.spool_files().is_empty(), "{:?}", gw.spool_files());
    let spool = common::files_under(&gw.data_dir.join("spool"));
    assert!(spool.len() <= 64, "{} spool files", spool.len());
    s3.start_again();
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());

    // The same instance is stored, from a new association.
    assert_eq!(store(&gw), 0);
    let records = instances(&gw, f["study"].as_str().unwrap());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["sopInstanceUid"], sop);
    assert_eq!(s3.keys(), vec![bucket_key(&records[0]["objectKey"])]);
    assert!(
        common::dataset_bytes_of(&s3.get(&s3.keys()[0])) == common::dataset_bytes(&file),
        "stored data set differs from the sent one"
    );
    assert!(gw.spool_files().is_empty());
}

#[test]
fn the_store_dying_during_a_multipart_upload_is_a700_and_the_instance_stores_once_it_is_back() {
    let mut s3 = S3Server::start();
    let gw = gateway(&s3, Opts::default().arg("--storage-timeout").arg("3"));
    let dir = tempfile::tempdir().unwrap();
    // 200 MiB: 25 parts of 8 MiB, so the upload is well under way, not
    // done, when the store goes.
    let big = dir.path().join("big.dcm");
    s3::generate_big(&big, 200);
    let send = || {
        let answer = common::pynet(&gw, &["store", big.to_str().unwrap()]);
        answer["results"][0]["status"].clone()
    };

    let status = std::thread::scope(|scope| {
        let sender = scope.spawn(send);
        s3.wait_for_uploaded_part();
        s3.stop();
        sender.join().unwrap()
    });
    assert_eq!(status, OUT_OF_RESOURCES);
    gw.wait_for_log("instance refused");
    assert!(gw.studies().is_empty(), "{:?}", gw.studies());
    assert!(gw.spool_files().is_empty(), "{:?}", gw.spool_files());

    // Back: nothing was kept, the failed upload's parts are aborted
    // (retried until the store answers), and the same instance goes up in
    // full.
    s3.start_again();
    assert!(s3.keys().is_empty(), "{:?}", s3.keys());
    gw.wait_for_log("aborted a failed multipart upload");
    assert!(
        s3.incomplete_uploads().is_empty(),
        "{:?}",
        s3.incomplete_uploads()
    );
    assert_eq!(send(), 0);
    let studies = gw.studies();
    assert_eq!(studies.len(), 1);
    let records = instances(&gw, studies[0]["studyInstanceUid"].as_str().unwrap());
    assert_eq!(records.len(), 1);
    let key = bucket_key(&records[0]["objectKey"]);
    assert_eq!(s3.keys(), vec![key.clone()]);
    let (stored, _) = s3.head(&key);
    assert_eq!(stored, records[0]["size"].as_u64().unwrap());
    let sent = std::fs::metadata(&big).unwrap().len();
    assert_eq!(
        stored - meta_len_of(&s3.client().get_range(&key, 0..1024)),
        sent - meta_len(&big)
    );
    assert!(gw.spool_files().is_empty());
}

/// Starts a gateway that must refuse to start; its stderr.
fn refused_start(opts: Opts) -> String {
    let (status, stderr) = Gateway::start_expecting_exit(
        opts.arg("--storage-timeout").arg("3"),
        Duration::from_secs(60),
    );
    assert!(!status.success(), "started anyway:\n{stderr}");
    assert!(
        !stderr.contains("listening"),
        "served before checking the store:\n{stderr}"
    );
    stderr
}

#[test]
fn start_up_fails_clearly_when_the_store_is_unreachable() {
    let port = s3::closed_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let secret = s3::random_hex(20);
    let stderr = refused_start(s3::gateway_opts(
        "dicom-test",
        PREFIX,
        &endpoint,
        "AKID",
        &secret,
    ));
    let store = format!("s3://dicom-test/{PREFIX} (endpoint {endpoint})");
    assert!(
        stderr.contains(&format!(
            "the object store is unusable: {store} is not writable"
        )),
        "{stderr}"
    );
    // (Another process may take the closed port in between: then the
    // request fails otherwise, still before anything listens.)
    assert!(
        stderr.contains("Connection refused") || stderr.contains("error sending request"),
        "{stderr}"
    );
    assert!(!stderr.contains(&secret), "the secret key reached the log");
}

#[test]
fn start_up_fails_clearly_with_wrong_credentials() {
    let s3 = S3Server::start();
    let store = format!("s3://{}/{PREFIX} (endpoint {})", s3.bucket, s3.endpoint());
    let unusable = format!("the object store is unusable: {store} is not writable");

    let wrong_secret = s3::random_hex(20);
    let stderr = refused_start(s3.gateway_opts_with_keys(PREFIX, &s3.access_key, &wrong_secret));
    assert!(stderr.contains(&unusable), "{stderr}");
    assert!(stderr.contains("403 Forbidden"), "{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    assert!(
        !stderr.contains(&wrong_secret),
        "the secret key reached the log"
    );

    let stderr = refused_start(s3.gateway_opts_with_keys(PREFIX, "AKUNKNOWN", &s3.secret_key));
    assert!(stderr.contains(&unusable), "{stderr}");
    assert!(stderr.contains("403 Forbidden"), "{stderr}");
    assert!(
        !stderr.contains(&s3.secret_key),
        "the secret key reached the log"
    );

    // The right keys work against the same server.
    drop(gateway(&s3, Opts::default()));
    assert!(
        s3.keys().is_empty(),
        "the probe object was left: {:?}",
        s3.keys()
    );
}

/// Two gateways, separate data directories, one bucket (behind a load
/// balancer): each answers `study.access_requested` for a study only the
/// other received, by listing the study's prefix and indexing its headers;
/// every URL it hands out downloads.
#[test]
fn two_gateways_on_one_bucket_each_answer_for_the_others_studies() {
    let s3 = S3Server::start();
    let a = gateway(&s3, Opts::default());
    let b = gateway(&s3, Opts::default());
    assert_ne!(a.data_dir, b.data_dir);

    let (study, sent) = store_study1(&a);
    let sr = s3::fixture("sr/basic_text_sr.dcm");
    common::assert_ok(
        &common::storescu(&b, &["-xe"], &[&fixture_path(&sr)]),
        "storescu",
    );
    let sr_study = sr["study"].as_str().unwrap();
    assert!(
        b.studies()
            .iter()
            .all(|s| s["studyInstanceUid"] != study.as_str())
    );
    assert!(
        a.studies()
            .iter()
            .all(|s| s["studyInstanceUid"] != sr_study)
    );

    // B never received study1: it finds it in the store.
    let answer = access(&b, &study);
    let urls = instance_urls(&answer);
    assert_eq!(urls.len(), sent.len(), "{answer}");
    let manifest_sops: usize = answer["manifest"]["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sops"].as_array().unwrap().len())
        .sum();
    assert_eq!(manifest_sops, sent.len(), "{answer}");
    for url in &urls {
        assert_eq!(authority(url), authority(&s3.endpoint()), "{url}");
        let got = fetch(url);
        assert_eq!(got.status, 200, "{url}");
        let sop = sent
            .keys()
            .find(|sop| url.contains(&format!("/{sop}.dcm")))
            .unwrap_or_else(|| panic!("{url} names no sent instance"));
        assert_eq!(
            common::dataset_bytes_of(&got.body),
            common::dataset_bytes(&sent[sop]),
            "{url}"
        );
    }
    // ... and now lists it as its own, with the calling AE A recorded (from
    // the objects' meta groups).
    let listed = instances(&b, &study);
    assert_eq!(listed.len(), sent.len());
    let sources =
        |list: &[Value]| -> Vec<Value> { list.iter().map(|i| i["source"].clone()).collect() };
    assert_eq!(sources(&listed), sources(&instances(&a, &study)));
    assert!(
        listed.iter().all(|i| i["source"] != "reindex"),
        "{listed:?}"
    );
    b.wait_for_log("indexed what the store holds of a study this gateway did not receive");

    // And the other way round, through the operator API first.
    assert_eq!(a.study(sr_study)["instanceCount"], 1);
    let answer = access(&a, sr_study);
    assert_eq!(instance_urls(&answer).len(), 1, "{answer}");
    assert_eq!(fetch(&instance_urls(&answer)[0]).status, 200);

    // A study neither has is refused by both, after looking.
    for gw in [&a, &b] {
        let answer = webhook(
            gw,
            &json!({
                "id": "whe_0123456789abcdef0123456789abcdef",
                "type": "study.access_requested",
                "data": { "studyInstanceUid": s3::long_uid("nobody's study") },
            }),
        );
        assert_eq!(answer["body"]["authorized"], false, "{answer}");
        assert_eq!(answer["body"]["urls"], json!([]), "{answer}");
    }
}

/// A study split between two gateways (each received one series): the one
/// that knows part of it picks up the rest from the store once its listing
/// is stale (`--storage-relist-after 0`: at every request).
#[test]
fn a_study_split_between_gateways_is_answered_whole() {
    let s3 = S3Server::start();
    let a = gateway(&s3, Opts::default());
    let b = gateway(&s3, Opts::default().arg("--storage-relist-after").arg("0"));
    let files = |series: &str| -> Vec<PathBuf> {
        study1()
            .iter()
            .filter(|f| f["file"].as_str().unwrap().contains(series))
            .map(fixture_path)
            .collect()
    };
    let send = |gw: &Gateway, files: &[PathBuf]| {
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        common::assert_ok(&common::storescu(gw, &["-xe"], &refs), "storescu");
    };
    let (first, second) = (files("series1/"), files("series2/"));
    assert!(!first.is_empty() && !second.is_empty());
    let study = study1()[0]["study"].as_str().unwrap().to_owned();

    send(&b, &first);
    assert_eq!(instance_urls(&access(&b, &study)).len(), first.len());
    send(&a, &second);
    let whole = access(&b, &study);
    assert_eq!(
        instance_urls(&whole).len(),
        first.len() + second.len(),
        "{whole}"
    );
    assert_eq!(whole["manifest"]["series"].as_array().unwrap().len(), 2);
    assert_eq!(
        b.study(&study)["instanceCount"],
        (first.len() + second.len()) as u64
    );
}

/// `study.access_requested` etc. through Avara's own tools: the answer.
fn webhook(gw: &Gateway, event: &Value) -> Value {
    common::avara_send(gw, KEY, &event.to_string(), &[])
}

/// With S3 the gateway stays the way in for what the viewer and Avara send
/// back: a secondary capture uploaded to its signed URL and a delivered
/// report land in the bucket (the report with a sidecar keeping its
/// fields), and the next access answer hands both out from the store.
#[test]
fn uploads_and_reports_go_through_the_gateway_into_the_bucket() {
    use crate::webhook::{PDF, PdfServer, capture_event, put, report_event, secondary_capture};
    let s3 = S3Server::start();
    // The report is served from loopback.
    let gw = gateway(
        &s3,
        Opts::default().env("DICOM_GATEWAY_REPORT_FETCH_ALLOW_PRIVATE", "true"),
    );
    let (study, sent) = store_study1(&gw);

    let (series, sop) = (s3::long_uid("sc-series"), s3::long_uid("sc-sop"));
    let (series, sop) = (series.as_str(), sop.as_str());
    let answer = webhook(&gw, &capture_event(&study, Some(series), Some(sop)));
    assert_eq!(answer["body"]["authorized"], true, "{answer}");
    let upload = answer["body"]["uploadUrls"][0].as_str().unwrap().to_owned();
    assert!(
        upload.contains("/uploads/"),
        "uploads go to the gateway: {upload}"
    );
    let dir = tempfile::tempdir().unwrap();
    let sc = dir.path().join("sc.dcm");
    secondary_capture(&sc, &study, series, sop);
    let (status, stored) = put(&gw, &upload, &std::fs::read(&sc).unwrap());
    assert_eq!(
        (status, stored["sopInstanceUid"].as_str()),
        (201, Some(sop))
    );
    let sc_key = format!("{PREFIX}/studies/{study}/{series}/{sop}.dcm");
    assert!(s3.keys().contains(&sc_key), "{:?}", s3.keys());

    let pdf = dir.path().join("r.pdf");
    std::fs::write(&pdf, PDF).unwrap();
    let server = PdfServer::start(&pdf, &[]);
    let answer = webhook(
        &gw,
        &report_event(&server.url, json!({ "studyInstanceUid": study })),
    );
    assert_eq!(answer["body"], json!({ "success": true }), "{answer}");
    gw.wait_for_log("report stored");
    let media = gw.study(&study)["media"][0].clone();
    let name = media["fileName"].as_str().unwrap().to_owned();
    let in_bucket = s3.get(&format!("{PREFIX}/studies/{study}/media/{name}"));
    assert_eq!(in_bucket, PDF);
    let sidecar: Value = serde_json::from_slice(
        &s3.get(&format!("{PREFIX}/studies/{study}/media-meta/{name}.json")),
    )
    .unwrap();
    assert_eq!(sidecar["mimeType"], "application/pdf");
    assert_eq!(sidecar["report"], media["report"]);
    assert_eq!(sidecar["report"]["isCritical"], true);

    let answer = access(&gw, &study);
    let urls = instance_urls(&answer);
    assert_eq!(urls.len(), sent.len() + 1);
    let sc_url = urls
        .iter()
        .find(|u| u.contains(&format!("/{sop}.dcm")))
        .unwrap();
    assert_eq!(authority(sc_url), authority(&s3.endpoint()));
    let got = fetch(sc_url);
    assert_eq!(got.status, 200);
    assert_eq!(
        common::dataset_bytes_of(&got.body),
        common::dataset_bytes(&sc)
    );
    let report_url = answer["mediaUrls"][0]["url"].as_str().unwrap();
    assert_eq!(authority(report_url), authority(&s3.endpoint()));
    let got = fetch(report_url);
    assert_eq!(
        (got.status, got.content_type.as_str()),
        (200, "application/pdf")
    );
    assert_eq!(got.body, PDF);
}

/// An instance one gateway moved to another study (a corrected re-send)
/// while the other gateway still had it under the old one: asked for the
/// new study, the other gateway finds its entry pointing at an object that
/// is gone and takes the one the store holds.
#[test]
fn an_instance_moved_by_one_gateway_is_followed_by_the_other() {
    let s3 = S3Server::start();
    // A site that corrects studies by re-sending.
    let a = gateway(&s3, Opts::default().arg("--duplicates").arg("replace"));
    let b = gateway(&s3, Opts::default());
    let (study, sent) = store_study1(&a);
    assert_eq!(instance_urls(&access(&b, &study)).len(), sent.len());

    // The first instance again, corrected into another study.
    let (sop, original) = sent.iter().next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let moved = dir.path().join("moved.dcm");
    let new_study = s3::long_uid("moved-study");
    common::pydicom(
        "import sys, pydicom\n\
         ds = pydicom.dcmread(sys.argv[1])\n\
         ds.StudyInstanceUID = sys.argv[3]\n\
         ds.save_as(sys.argv[2])",
        &[
            original.to_str().unwrap(),
            moved.to_str().unwrap(),
            &new_study,
        ],
    );
    common::assert_ok(&common::storescu(&a, &["-xe"], &[&moved]), "storescu");
    a.wait_for_log("instance moved; old object removed");

    let answer = access(&b, &new_study);
    let urls = instance_urls(&answer);
    assert_eq!(urls.len(), 1, "{answer}");
    assert!(urls[0].contains(&format!("/{new_study}/")), "{}", urls[0]);
    assert!(urls[0].contains(&format!("/{sop}.dcm")), "{}", urls[0]);
    assert_eq!(fetch(&urls[0]).status, 200);
    b.wait_for_log("index entry pointed at an object that is gone");
    assert_eq!(b.study(&study)["instanceCount"], (sent.len() - 1) as u64);
    assert_eq!(b.study(&new_study)["instanceCount"], 1);
}
