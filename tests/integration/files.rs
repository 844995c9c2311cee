//! Signed URLs served by the gateway itself (local store), fetched with a real
//! HTTP client.

use std::process::Command;

use crate::common::{self, Gateway};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Stores one fixture and returns (object key, bytes on disk).
fn stored_instance(gw: &Gateway) -> (String, Vec<u8>) {
    let f = common::fixture("study1/series1");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    common::assert_ok(&common::storescu(gw, &["-xe"], &[&path]), "storescu");
    let study = gw.study(f["study"].as_str().unwrap());
    let key = study["series"][0]["instances"][0]["objectKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = std::fs::read(gw.objects().join(&key)).unwrap();
    (key, bytes)
}

fn sign(gw: &Gateway, key: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dicom-gateway"))
        .args(["sign-url", "--data-dir", gw.data_dir.to_str().unwrap()])
        .args([
            "--public-url",
            &format!("http://{}", gw.http),
            "--ttl",
            "600",
            key,
        ])
        .output()
        .unwrap();
    common::assert_ok(&out, "sign-url");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_signed_url_downloads_the_instance_with_ranges_etag_and_cors() {
    let gw = Gateway::start();
    let (key, bytes) = stored_instance(&gw);
    let url = sign(&gw, &key);
    let agent = agent();

    let mut resp = agent.get(&url).call().unwrap();
    assert_eq!(resp.status(), 200);
    let h = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        h(&resp, "content-type").as_deref(),
        Some("application/dicom")
    );
    assert_eq!(h(&resp, "content-length"), Some(bytes.len().to_string()));
    assert_eq!(
        h(&resp, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let sop_file = key.rsplit('/').next().unwrap();
    assert!(h(&resp, "content-disposition").unwrap().contains(sop_file));
    let etag = h(&resp, "etag").unwrap();
    let body = resp.body_mut().read_to_vec().unwrap();
    assert_eq!(body, bytes);

    // pydicom opens what came over HTTP.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), &body).unwrap();
    let sop = common::pydicom(
        "import sys, pydicom; print(pydicom.dcmread(sys.argv[1]).SOPInstanceUID)",
        &[tmp.path().to_str().unwrap()],
    );
    assert_eq!(format!("{}.dcm", sop.trim()), sop_file);

    // Ranges: the preamble's end and the tail.
    let mut part = agent
        .get(&url)
        .header("Range", "bytes=128-131")
        .call()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        h(&part, "content-range"),
        Some(format!("bytes 128-131/{}", bytes.len()))
    );
    assert_eq!(part.body_mut().read_to_vec().unwrap(), b"DICM");
    let mut tail = agent
        .get(&url)
        .header("Range", "bytes=-100")
        .call()
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(
        tail.body_mut().read_to_vec().unwrap(),
        &bytes[bytes.len() - 100..]
    );
    let beyond = agent
        .get(&url)
        .header("Range", format!("bytes={}-", bytes.len()))
        .call()
        .unwrap();
    assert_eq!(beyond.status(), 416);

    // HEAD, conditional GET, CORS preflight.
    let head = agent.head(&url).call().unwrap();
    assert_eq!(
        (head.status().as_u16(), h(&head, "content-length")),
        (200, Some(bytes.len().to_string()))
    );
    let cached = agent
        .get(&url)
        .header("If-None-Match", &etag)
        .call()
        .unwrap();
    assert_eq!(cached.status(), 304);
    let preflight = agent.options(&url).call().unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(
        h(&preflight, "access-control-allow-methods")
            .unwrap()
            .contains("GET")
    );
}

#[test]
fn tampered_or_misused_urls_are_refused_with_403() {
    let mut gw = Gateway::start();
    let (key, _) = stored_instance(&gw);
    let url = sign(&gw, &key);
    let agent = agent();
    let (base, query) = url.split_once('?').unwrap();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let (exp, kid, sig) = (param("exp"), param("kid"), param("sig"));
    let mut flipped = sig.clone().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let other_key = base.replace(".dcm", "9.dcm");
    let later: u64 = exp.parse::<u64>().unwrap() + 3600;
    let bad = [
        format!("{base}?exp={exp}&kid={kid}&sig={flipped}"), // tampered signature
        format!("{base}?exp={later}&kid={kid}&sig={sig}"),   // stretched expiry
        format!("{base}?exp={exp}&kid=other&sig={sig}"),     // another key id
        format!("{other_key}?exp={exp}&kid={kid}&sig={sig}"), // another object
        format!("{base}?exp={exp}&kid={kid}"),               // no signature
        format!("{base}?exp=1&kid={kid}&sig={sig}"),         // long expired
        format!(
            "http://{}/files/url-signing-keys?exp={exp}&kid={kid}&sig={sig}",
            gw.http
        ), // not an object
    ];
    for url in bad {
        let mut resp = agent.get(&url).call().unwrap();
        assert_eq!(resp.status(), 403, "{url}");
        let body: serde_json::Value = resp.body_mut().read_json().unwrap();
        assert_eq!(body["code"], "forbidden", "{url}");
    }
    // A PUT is not what the URL was signed for.
    let put = agent.put(&url).send(&b"x"[..]).unwrap();
    assert_eq!(put.status(), 405);
    assert!(
        !gw.final_log().contains(&sig),
        "a signature reached the log"
    );
}

#[test]
fn configured_cors_origins_are_the_only_ones_allowed() {
    let gw = Gateway::start_with(
        common::Opts::default()
            .arg("--cors-origins")
            .arg("https://viewer.example"),
    );
    let (key, _) = stored_instance(&gw);
    let url = sign(&gw, &key);
    let agent = agent();
    let allowed = agent
        .get(&url)
        .header("Origin", "https://viewer.example")
        .call()
        .unwrap();
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        "https://viewer.example"
    );
    let other = agent
        .get(&url)
        .header("Origin", "https://elsewhere.example")
        .call()
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
