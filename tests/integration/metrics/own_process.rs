//! Who may scrape `/metrics`, and `log_format = "json"`: gateways started
//! here rather than by the harness, which reads text logs and listens on
//! loopback only.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use super::{API_TOKEN, KEY, METRICS_TOKEN, access, get, on_gateway, study1};
use crate::common::{self, Gateway, Opts};

#[test]
fn metrics_are_guarded_like_the_operator_api() {
    // With both tokens: the metrics token or the operator's, nothing else.
    let gw = Gateway::start_with(
        Opts::default()
            .env("DICOM_GATEWAY_METRICS_TOKEN", METRICS_TOKEN)
            .env("DICOM_GATEWAY_API_TOKEN", API_TOKEN),
    );
    let url = gw.url("/metrics");
    for (token, expected) in [
        (None, 401),
        (Some("wrong-token-wrong-token"), 401),
        (Some(&METRICS_TOKEN[..METRICS_TOKEN.len() - 1]), 401),
        (Some(METRICS_TOKEN), 200),
        (Some(API_TOKEN), 200),
    ] {
        let (status, _, body) = get(&url, token, None);
        assert_eq!(status, expected, "{token:?}: {body}");
        if status == 200 {
            assert!(body.contains("dicom_gateway_build_info"));
        } else {
            assert!(!body.contains("dicom_gateway"), "{body}");
        }
    }
    // The metrics token opens nothing else.
    let (status, _, _) = get(&gw.url("/api/studies"), Some(METRICS_TOKEN), None);
    assert_eq!(status, 401);

    // Without tokens: loopback clients only, and not through a proxy.
    let mut gw = JsonGateway::start(&["--http-listen", "0.0.0.0:0"], &[]);
    let port = gw.listening("http").port();
    let (status, _, _) = get(&format!("http://127.0.0.1:{port}/metrics"), None, None);
    assert_eq!(status, 200);
    let (status, _, body) = get(
        &format!("http://127.0.0.1:{port}/metrics"),
        None,
        Some(("X-Forwarded-For", "203.0.113.7")),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("loopback_only"), "{body}");
    // From this host's own non-loopback address.
    let ip = non_loopback_ipv4();
    let (status, _, body) = get(&format!("http://{ip}:{port}/metrics"), None, None);
    assert_eq!(status, 403, "{ip}: {body}");
    assert!(body.contains("loopback_only"), "{body}");
}

/// An IPv4 address of this host that is not loopback (`ip -4 addr`).
fn non_loopback_ipv4() -> String {
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("iproute2's ip is missing: apt-get install iproute2");
    let out = Command::new(ip)
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("this host has no non-loopback IPv4 address:\n{text}"))
}

/// A gateway writing JSON log lines: its lines arrive on the channel.
struct JsonGateway {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    _tmp: tempfile::TempDir,
}

/// A gateway a test did not stop is killed, not left running after the
/// test (a `Child` is not killed when dropped).
impl Drop for JsonGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JsonGateway {
    /// `serve` on port 0 with `args` (which win over the defaults) and `envs`.
    fn start(args: &[&str], envs: &[(&str, &str)]) -> JsonGateway {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_dicom-gateway"))
            .arg("serve")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["--log-format", "json", "--dicom-listen", "127.0.0.1:0"])
            .args(if args.contains(&"--http-listen") {
                &[][..]
            } else {
                &["--http-listen", "127.0.0.1:0"][..]
            })
            .args(args)
            .env_remove("DICOM_GATEWAY_API_TOKEN")
            .env("RUST_LOG", "info,dicom_gateway=debug")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        JsonGateway {
            child,
            lines,
            seen: Vec::new(),
            _tmp: tmp,
        }
    }

    /// The first line (from the start) for which `pick` says yes, waiting
    /// for more as they come; fails when the process ends first.
    fn wait_for(&mut self, pick: impl Fn(&Value) -> bool) -> Value {
        let parse = |line: &str| -> Value {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        };
        if let Some(v) = self.seen.iter().map(|l| parse(l)).find(&pick) {
            return v;
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no such log line ({e}):\n{}", self.seen.join("\n")));
            let v = parse(&line);
            self.seen.push(line);
            if pick(&v) {
                return v;
            }
        }
    }

    fn listening(&mut self, service: &str) -> std::net::SocketAddr {
        let line = self.wait_for(|v| v["fields"]["service"] == service);
        line["fields"]["addr"].as_str().unwrap().parse().unwrap()
    }

    /// SIGTERM, then every line up to the end.
    fn stop(mut self) -> Vec<String> {
        let ok = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        assert!(self.child.wait().unwrap().success());
        let rest: Vec<String> = self.lines.iter().collect();
        self.seen.extend(rest);
        std::mem::take(&mut self.seen)
    }
}

#[test]
fn json_logs_are_one_object_per_line_without_secrets() {
    let mut gw = JsonGateway::start(
        &[],
        &[
            ("AVARA_WEBHOOK_KEY", KEY),
            ("DICOM_GATEWAY_API_TOKEN", API_TOKEN),
            ("DICOM_GATEWAY_METRICS_TOKEN", METRICS_TOKEN),
        ],
    );
    let dicom = gw.listening("dicom");
    let http = gw.listening("http");
    let (files, study) = study1();
    let out = Command::new(common::require("/usr/bin/storescu"))
        .args(["-aet", "JSONSCU", "-aec", "DICOMGW", "-xe"])
        .arg(dicom.ip().to_string())
        .arg(dicom.port().to_string())
        .args(&files)
        .output()
        .unwrap();
    common::assert_ok(&out, "storescu");
    let answer = Command::new(common::python())
        .arg(common::repo().join("tests/peers/avara_sender.py"))
        .args([
            "--url",
            &format!("http://{http}/webhooks/avara"),
            "--key",
            KEY,
        ])
        .arg(access(&study))
        .output()
        .unwrap();
    common::assert_ok(&answer, "avara_sender.py");
    let answer: Value = serde_json::from_slice(&answer.stdout).unwrap();
    let url = answer["body"]["urls"][0].as_str().unwrap().to_owned();
    let signature = url.split("sig=").nth(1).unwrap().to_owned();
    assert!(signature.len() > 20);
    // A download with a tampered signature (logged as refused) and a good one.
    let (status, _, _) = get(&on_gateway(http, &url).replace("sig=", "sig=A"), None, None);
    assert_eq!(status, 403);
    let (status, _, _) = get(&on_gateway(http, &url), None, None);
    assert_eq!(status, 200);
    let (status, _, _) = get(&format!("http://{http}/metrics"), Some(METRICS_TOKEN), None);
    assert_eq!(status, 200);

    // The association's lines carry its span: the calling AE title.
    let released = gw.wait_for(|v| v["fields"]["message"] == "association released");
    assert_eq!(released["level"], "INFO");
    assert_eq!(released["fields"]["stored"], files.len() as u64);
    assert_eq!(released["span"]["calling_ae"], "JSONSCU");
    assert!(released["timestamp"].is_string());
    let lines = gw.stop();
    assert!(lines.len() > 5);
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        for secret in [
            API_TOKEN,
            METRICS_TOKEN,
            KEY,
            &KEY["whsec_".len()..],
            &signature,
        ] {
            assert!(!line.contains(secret), "a secret in the log: {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"webhook\"") && l.contains("study.access_requested")),
        "{lines:#?}"
    );
}
