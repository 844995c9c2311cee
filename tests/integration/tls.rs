//! DICOM TLS and HTTPS against real peers: DCMTK's storescu/echoscu with
//! TLS (Debian builds them with OpenSSL), curl checking the HTTPS chain.
//! The PKI (site CA, gateway and modality certificates, a foreign CA) is
//! made per test by tests/peers/make-test-certs.sh with openssl.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::pki::Pki;
use crate::common::{self, Gateway, Opts};

/// A gateway with the TLS listener: our certificate, the site CA, `extra`.
fn tls_gateway(pki: &Pki, extra: &[&str]) -> Gateway {
    let gw = Gateway::start_with(
        Opts::default()
            .args(&["--dicom-tls-listen", "127.0.0.1:0"])
            .args(&["--dicom-tls-cert", &pki.file("server.pem")])
            .args(&["--dicom-tls-key", &pki.file("server.key")])
            .args(&["--dicom-tls-ca", &pki.file("ca.pem")])
            .args(extra),
    );
    assert!(gw.dicom_tls.is_some());
    gw
}

/// How a DCMTK client authenticates itself.
#[derive(Clone, Copy)]
enum Client<'a> {
    /// `+tls key cert`: a certificate (file stem in the PKI).
    Cert(&'a str),
    /// `+tla`: TLS without a client certificate.
    Anonymous,
    /// No TLS at all, to the TLS port.
    Plain,
}

fn tls_flags(pki: &Pki, client: Client) -> Vec<String> {
    let mut flags: Vec<String> = match client {
        Client::Cert(stem) => vec![
            "+tls".into(),
            pki.file(&format!("{stem}.key")),
            pki.file(&format!("{stem}.pem")),
        ],
        Client::Anonymous => vec!["+tla".into()],
        Client::Plain => return Vec::new(),
    };
    // The gateway's certificate is checked against the site CA.
    flags.extend(["+cf".into(), pki.file("ca.pem")]);
    flags
}

/// A DCMTK program (by absolute path) against the gateway's TLS port.
fn dcmtk(program: &str, gw: &Gateway, pki: &Pki, client: Client, args: &[&str]) -> Output {
    let addr = gw.dicom_tls.unwrap();
    Command::new(common::require(program))
        .env("TCP_NODELAY", "1")
        .args(["-aet", "MODALITY1", "-aec", "DICOMGW"])
        .args(tls_flags(pki, client))
        .args(args)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()
        .unwrap()
}

fn storescu_tls(gw: &Gateway, pki: &Pki, client: Client, fixture: &Value) -> Output {
    let addr = gw.dicom_tls.unwrap();
    Command::new(common::require("/usr/bin/storescu"))
        .env("TCP_NODELAY", "1")
        .args(["-aet", "MODALITY1", "-aec", "DICOMGW"])
        .args(tls_flags(pki, client))
        .args(common::storescu_flags(fixture))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(fixture_path(fixture))
        .output()
        .unwrap()
}

fn fixture_path(f: &Value) -> PathBuf {
    common::fixtures_dir().join(f["file"].as_str().unwrap())
}

fn assert_failed(out: &Output, what: &str) {
    assert!(
        !out.status.success(),
        "{what} succeeded:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixture's instance is indexed and its data set stored byte for byte.
fn assert_stored_exact(gw: &Gateway, f: &Value) {
    let rec = gw.instance_record(
        f["study"].as_str().unwrap(),
        f["sop_instance"].as_str().unwrap(),
    );
    let stored = gw.objects().join(rec["objectKey"].as_str().unwrap());
    assert_eq!(
        common::dataset_bytes(&stored),
        common::dataset_bytes(&fixture_path(f)),
        "{} not stored byte for byte over TLS",
        f["file"]
    );
}

#[test]
fn dcmtk_stores_and_echoes_over_mutual_tls_and_the_peer_certificate_is_logged() {
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &[]);
    gw.wait_for_log("DICOM TLS on");
    let echo = dcmtk("/usr/bin/echoscu", &gw, &pki, Client::Cert("client"), &[]);
    common::assert_ok(&echo, "echoscu +tls");

    let ct = common::fixture("study1/series1/ct1.dcm");
    let jpeg = common::fixture("ts/jpeg_baseline.dcm");
    for f in [&ct, &jpeg] {
        let out = storescu_tls(&gw, &pki, Client::Cert("client"), f);
        common::assert_ok(&out, "storescu +tls");
        assert_stored_exact(&gw, f);
    }
    let line = gw.wait_for_log("association released stored=1");
    assert!(
        line.contains(r#"tls_subject="O=Test Site, CN=MODALITY1""#)
            && line.contains(r#"tls_issuer="O=Test Site CA, CN=Test Site CA""#)
            && line.contains("calling_ae=MODALITY1"),
        "{line}"
    );
    // The plain listener is unchanged beside it.
    common::assert_ok(&common::echoscu(&gw, "DICOMGW"), "plain echoscu");
}

#[test]
fn clients_without_a_site_certificate_are_refused_in_the_handshake_and_the_gateway_serves_on() {
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &[]);
    let ct = common::fixture("study1/series1/ct1.dcm");

    // No client certificate.
    let skip = gw.log_len();
    assert_failed(
        &storescu_tls(&gw, &pki, Client::Anonymous, &ct),
        "storescu +tla",
    );
    let line = gw.wait_for_log_after(skip, "TLS handshake failed");
    assert!(line.contains("no certificates"), "{line}");

    // A certificate from a CA the site does not trust.
    let skip = gw.log_len();
    assert_failed(
        &storescu_tls(&gw, &pki, Client::Cert("stranger"), &ct),
        "storescu with a foreign certificate",
    );
    let line = gw.wait_for_log_after(skip, "TLS handshake failed");
    assert!(line.contains("UnknownIssuer"), "{line}");

    // Plain DICOM to the TLS port.
    let skip = gw.log_len();
    assert_failed(
        &storescu_tls(&gw, &pki, Client::Plain, &ct),
        "plain storescu to the TLS port",
    );
    gw.wait_for_log_after(skip, "TLS handshake failed");

    // None of them associated; nothing was stored.
    assert!(gw.studies().is_empty(), "{:?}", gw.studies());
    assert!(!gw.log_text().contains("association established"));

    // The listener still serves a modality with a certificate.
    common::assert_ok(
        &storescu_tls(&gw, &pki, Client::Cert("client"), &ct),
        "storescu +tls after the refusals",
    );
    assert_stored_exact(&gw, &ct);
    let metrics = metrics_text(&gw);
    assert!(
        metrics.contains(r#"reason="tls_handshake"} 3"#),
        "three handshakes refused: {metrics}"
    );
}

fn metrics_text(gw: &Gateway) -> String {
    let out = Command::new(common::require("/usr/bin/curl"))
        .args(["-sS", "--max-time", "30"])
        .arg(gw.url("/metrics"))
        .output()
        .unwrap();
    common::assert_ok(&out, "curl /metrics");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("rejected"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn with_verify_client_off_a_client_without_a_certificate_stores() {
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &["--dicom-tls-verify-client", "false"]);
    let ct = common::fixture("study1/series1/ct2.dcm");
    common::assert_ok(
        &storescu_tls(&gw, &pki, Client::Anonymous, &ct),
        "storescu +tla with verify_client off",
    );
    assert_stored_exact(&gw, &ct);
    // A certificate that is presented must still chain to the site CA.
    assert_failed(
        &storescu_tls(&gw, &pki, Client::Cert("stranger"), &common::fixture("ct3")),
        "storescu with a foreign certificate",
    );
    assert_eq!(gw.studies().len(), 1);
}

/// `curl` with `args` against `url`: (exit code, stdout).
fn curl(args: &[&str], url: &str) -> (i32, String) {
    let out = Command::new(common::require("/usr/bin/curl"))
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn https_serves_a_client_that_checks_the_chain_and_refuses_the_others() {
    let pki = Pki::new();
    let gw = Gateway::start_with(
        Opts::default()
            .args(&["--http-tls-cert", &pki.file("server.pem")])
            .args(&["--http-tls-key", &pki.file("server.key")]),
    );
    gw.wait_for_log("HTTPS on");
    // public_url is still the default http:// one: said at start.
    gw.wait_for_log("public_url is not https://");
    let https = format!("https://{}/healthz", gw.http);
    let localhost = format!("https://localhost:{}/healthz", gw.http.port());

    // curl verifies the chain to the site CA and the name (IP and DNS SAN).
    let (code, body) = curl(&["--cacert", &pki.file("ca.pem")], &https);
    assert_eq!(code, 0, "curl --cacert failed");
    assert!(body.contains("\"ok\""), "{body}");
    let (code, _) = curl(&["--cacert", &pki.file("ca.pem")], &localhost);
    assert_eq!(code, 0, "curl by host name failed");
    // Without the CA, curl refuses the certificate (60: peer certificate
    // cannot be authenticated); with another CA as well.
    assert_eq!(curl(&[], &https).0, 60);
    assert_eq!(curl(&["--cacert", &pki.file("other-ca.pem")], &https).0, 60);
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let (code, body) = curl(&[], &format!("http://{}/healthz", gw.http));
    assert_ne!(code, 0);
    assert!(!body.contains("\"ok\""), "{body}");
    // TLS 1.1 is refused (BCP 195); 1.2 and 1.3 work.
    assert_ne!(
        curl(
            &[
                "--cacert",
                &pki.file("ca.pem"),
                "--tlsv1.1",
                "--tls-max",
                "1.1"
            ],
            &https
        )
        .0,
        0
    );
    for version in ["1.2", "1.3"] {
        let flags = [
            "--cacert",
            &pki.file("ca.pem"),
            "--tls-max",
            version,
            "--tlsv1.2",
        ];
        assert_eq!(curl(&flags, &https).0, 0, "TLS {version}");
    }
    // The container's health check follows the same settings to HTTPS;
    // a plain-HTTP probe of the HTTPS port is unhealthy.
    let healthcheck = |tls: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dicom-gateway"));
        cmd.args(["healthcheck", "--http-listen", &gw.http.to_string()]);
        if tls {
            cmd.args(["--http-tls-cert", &pki.file("server.pem")])
                .args(["--http-tls-key", &pki.file("server.key")]);
        }
        cmd.env_remove("DICOM_GATEWAY_HTTP_TLS_CERT")
            .env_remove("DICOM_GATEWAY_HTTP_TLS_KEY")
            .output()
            .unwrap()
    };
    let out = healthcheck(true);
    common::assert_ok(&out, "healthcheck over HTTPS");
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy: https://"));
    assert!(!healthcheck(false).status.success());
    // Python's ssl module, another real client, checking the chain too.
    let script = "import ssl, sys, urllib.request\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
                  print(urllib.request.urlopen(sys.argv[2], context=ctx, timeout=30).read().decode())";
    let answer = common::pydicom(script, &[&pki.file("ca.pem"), &https]);
    assert!(answer.contains("\"ok\""), "{answer}");
}

#[test]
fn unusable_tls_settings_stop_the_start_naming_the_setting() {
    let pki = Pki::new();
    let cases: [(&[&str], &str); 3] = [
        (&["--dicom-tls-listen", "127.0.0.1:0"], "dicom_tls_cert"),
        (
            &[
                "--http-tls-cert",
                &pki.file("server.pem"),
                "--http-tls-key",
                &pki.file("client.key"),
            ],
            "http_tls_key",
        ),
        (
            &[
                "--dicom-tls-listen",
                "127.0.0.1:0",
                "--dicom-tls-cert",
                &pki.file("server.pem"),
                "--dicom-tls-key",
                &pki.file("server.key"),
                "--dicom-tls-verify-client",
                "true",
            ],
            "dicom_tls_verify_client",
        ),
    ];
    for (args, setting) in cases {
        let (status, stderr) =
            Gateway::start_expecting_exit(Opts::default().args(args), Duration::from_secs(60));
        assert!(!status.success(), "{args:?} started");
        assert!(
            stderr.contains(&format!("invalid setting {setting}")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}

/// A peer that starts a handshake and stalls holds nothing for long: the
/// DICOM TLS listener closes it at the ARTIM time, HTTPS at the head
/// time-out, and both serve on.
#[test]
fn a_stalled_tls_handshake_is_closed_and_the_listeners_serve_on() {
    use std::io::{ErrorKind, Read, Write};
    let pki = Pki::new();
    let gw = tls_gateway(
        &pki,
        &[
            "--artim-timeout",
            "1",
            "--http-header-timeout",
            "1",
            "--http-tls-cert",
            &pki.file("server.pem"),
            "--http-tls-key",
            &pki.file("server.key"),
        ],
    );
    for addr in [gw.dicom_tls.unwrap(), gw.http] {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        // A bound against a hang, not a measurement.
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        // A TLS record header promising a ClientHello that never comes.
        socket
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .unwrap();
        let mut buf = [0u8; 256];
        match socket.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("{addr}: {n} bytes answered to half a ClientHello"),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{addr}: still open after 60 s"
            ),
        }
    }
    gw.wait_for_log("not done within the ARTIM time");
    common::assert_ok(
        &dcmtk("/usr/bin/echoscu", &gw, &pki, Client::Cert("client"), &[]),
        "echoscu +tls after a stalled handshake",
    );
    let (code, body) = curl(
        &["--cacert", &pki.file("ca.pem")],
        &format!("https://{}/healthz", gw.http),
    );
    assert_eq!(code, 0);
    assert!(body.contains("\"ok\""), "{body}");
}

/// pynetdicom (Python's ssl) holds the only association slot over TLS: a
/// second modality's association is aborted (a slot is taken only once an
/// association is established), and gets in once the first is released.
#[test]
fn over_tls_max_associations_holds_and_pynetdicom_is_a_tls_peer_too() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &["--max-associations", "1"]);
    let addr = gw.dicom_tls.unwrap();
    let script = "import ssl, sys\n\
        from pynetdicom import AE\n\
        from pynetdicom.sop_class import Verification\n\
        ca, cert, key, host, port = sys.argv[1:6]\n\
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)\n\
        ctx.load_cert_chain(cert, key)\n\
        ae = AE(ae_title='HOLDER')\n\
        ae.add_requested_context(Verification)\n\
        assoc = ae.associate(host, int(port), ae_title='DICOMGW', tls_args=(ctx, 'localhost'))\n\
        print('established' if assoc.is_established else 'refused', flush=True)\n\
        sys.stdin.read()\n\
        if assoc.is_established:\n    print(assoc.send_c_echo().Status, flush=True)\n    assoc.release()\n";
    let mut holder = Command::new(common::python())
        .arg("-c")
        .arg(script)
        .args([
            &pki.file("ca.pem"),
            &pki.file("client.pem"),
            &pki.file("client.key"),
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "established");

    let ct = common::fixture("study1/series2/ct1.dcm");
    let skip = gw.log_len();
    let refused = storescu_tls(&gw, &pki, Client::Cert("client"), &ct);
    assert_failed(
        &refused,
        "a second TLS association with max_associations = 1",
    );
    // A proper transient rejection over TLS, as on the plain port: the
    // modality retries later rather than giving up.
    let said = String::from_utf8_lossy(&refused.stderr).to_lowercase()
        + &String::from_utf8_lossy(&refused.stdout).to_lowercase();
    assert!(
        said.contains("rejected transient") && said.contains("local limit exceeded"),
        "{said}"
    );
    gw.wait_for_log_after(
        skip,
        "max_associations reached; TLS association rejected (transient)",
    );
    assert!(gw.studies().is_empty());

    drop(holder.stdin.take()); // the holder echoes, then releases
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "0", "C-ECHO status over pynetdicom's TLS");
    assert!(holder.wait().unwrap().success());
    // Logged once its slot is free.
    let released = gw.wait_for_log("association released");
    assert!(
        released.contains(r#"calling_ae=HOLDER tls_subject="O=Test Site, CN=MODALITY1""#),
        "{released}"
    );
    common::assert_ok(
        &storescu_tls(&gw, &pki, Client::Cert("client"), &ct),
        "storescu +tls once the slot is free",
    );
    assert_stored_exact(&gw, &ct);
}
