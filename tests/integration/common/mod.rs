//! The test harness: a real gateway process on port 0 with its own data
//! directory, and the real peers that talk to it (DCMTK, pynetdicom, dicom-ul).
//!
//! A peer that is missing fails the test with instructions; nothing is skipped.

#![allow(dead_code)]

pub mod dul;
pub mod pki;
pub mod s3;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long to wait for the gateway to say something before failing a test.
/// A bound against hangs, not a synchronisation device.
const LOG_WAIT: Duration = Duration::from_secs(60);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures_dir() -> PathBuf {
    repo().join("testdata/fixtures")
}

/// The committed fixture index written by `testdata/generate.py`.
pub fn fixtures() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures_dir().join("fixtures.json")).expect(
        "testdata/fixtures/fixtures.json (run testdata/generate.py fixtures testdata/fixtures)",
    );
    serde_json::from_str(&text).expect("fixtures.json parses")
}

pub fn fixture(name_part: &str) -> Value {
    fixtures()
        .into_iter()
        .find(|f| f["file"].as_str().unwrap().contains(name_part))
        .unwrap_or_else(|| panic!("no fixture matching {name_part}"))
}

/// A study of the committed fixtures: its Study Instance UID, its files
/// and their SOP Instance UIDs, in fixture order.
pub struct FixtureStudy {
    pub uid: String,
    pub files: Vec<PathBuf>,
    pub sops: Vec<String>,
}

/// The fixtures whose file lies under `dir` (e.g. `"study1/"`), as one study.
pub fn fixture_study(dir: &str) -> FixtureStudy {
    let fixtures: Vec<Value> = fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with(dir))
        .collect();
    assert!(!fixtures.is_empty(), "no fixtures under {dir}");
    FixtureStudy {
        uid: fixtures[0]["study"].as_str().unwrap().to_owned(),
        files: fixtures
            .iter()
            .map(|f| fixtures_dir().join(f["file"].as_str().unwrap()))
            .collect(),
        sops: fixtures
            .iter()
            .map(|f| f["sop_instance"].as_str().unwrap().to_owned())
            .collect(),
    }
}

/// The last line of a [`Log`] once the process closed its output.
const CLOSED: &str = "<stderr closed>";

/// Log lines shared with the thread that drains a process's output.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Log {
    /// A log filled from `output` by a thread, each line echoed with `echo`
    /// as prefix when `GATEWAY_TEST_LOG` is set; ends with [`CLOSED`].
    fn drain(output: impl std::io::Read + Send + 'static, echo: &'static str) -> Arc<Log> {
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("GATEWAY_TEST_LOG").is_some() {
                    eprintln!("{echo}: {line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
            sink.lines.lock().unwrap().push(CLOSED.into());
            sink.changed.notify_all();
        });
        log
    }

    /// Blocks until a line after the first `skip` contains `needle`; fails
    /// the test if `who` ends first or nothing comes within [`LOG_WAIT`].
    fn wait_for_after(&self, skip: usize, needle: &str, who: &str) -> String {
        let deadline = Instant::now() + LOG_WAIT;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().skip(skip).find(|l| l.contains(needle)) {
                return l.clone();
            }
            if lines.last().is_some_and(|l| l == CLOSED) {
                panic!(
                    "{who} exited before logging {needle:?}:\n{}",
                    lines.join("\n")
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {who} log line with {needle:?} within {LOG_WAIT:?}:\n{}",
                lines.join("\n")
            );
            lines = self.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

pub struct Gateway {
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub dicom: SocketAddr,
    pub http: SocketAddr,
    /// The DICOM TLS listener, when started with `--dicom-tls-listen`.
    pub dicom_tls: Option<SocketAddr>,
    log: Arc<Log>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    tmpfs_mib: Option<u32>,
    prefix: Vec<String>,
}

/// How to start a gateway.
#[derive(Default, Clone)]
pub struct Opts {
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// Run the gateway with its data directory on a tmpfs of this many MiB,
    /// mounted in a private mount namespace (see [`Opts::tmpfs`]).
    pub tmpfs_mib: Option<u32>,
    /// A program (and its arguments) the gateway is run under, e.g. strace.
    pub prefix: Vec<String>,
}

impl Opts {
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_owned(), v.to_owned()));
        self
    }
    /// Puts the data directory on a tmpfs of `mib` MiB: the gateway runs
    /// under `unshare -m` (needs root), which mounts it in a mount namespace
    /// of the gateway's own, so the small filesystem never appears on the
    /// host and goes away with the process. The test sees it through
    /// `/proc/<pid>/root` ([`Gateway::view`]); such a gateway cannot
    /// [`Gateway::restart`].
    pub fn tmpfs(mut self, mib: u32) -> Self {
        self.tmpfs_mib = Some(mib);
        self
    }
    /// Runs the gateway under `program_and_args` (which must exec or trace
    /// it as its child, e.g. `strace -f -o FILE`). [`Gateway::pid`] is then
    /// that program's; [`Gateway::traced_pid`] finds the gateway.
    pub fn prefix(mut self, program_and_args: &[&str]) -> Self {
        self.prefix = program_and_args.iter().map(|a| (*a).to_owned()).collect();
        self
    }
}

impl Gateway {
    pub fn start() -> Gateway {
        Gateway::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut gw = Gateway::spawn(data_dir, opts);
        gw._tmp = Some(tmp);
        gw
    }

    /// `dicom-gateway serve` on `data_dir`, listening on port 0, with its
    /// stderr piped; with `tmpfs_mib`, exec'd by a shell that first mounts
    /// a tmpfs of that size on `data_dir` in a new mount namespace (the
    /// process id stays the gateway's).
    fn command(data_dir: &Path, opts: &Opts) -> Command {
        let gateway = env!("CARGO_BIN_EXE_dicom-gateway");
        let mut program: Vec<&str> = opts.prefix.iter().map(String::as_str).collect();
        program.push(gateway);
        let mut cmd = match opts.tmpfs_mib {
            None => {
                let mut cmd = Command::new(program[0]);
                cmd.args(&program[1..]);
                cmd
            }
            Some(mib) => {
                let mut cmd = Command::new(require("/usr/bin/unshare"));
                cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(
                        "mkdir -p \"$0\" && mount -t tmpfs -o size=\"$1\"m tmpfs \"$0\" \
                         && shift && exec \"$@\"",
                    )
                    .arg(data_dir)
                    .arg(mib.to_string())
                    .args(&program);
                cmd
            }
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--dicom-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(&opts.args)
            .env_remove("DICOM_GATEWAY_API_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.envs {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn(data_dir: PathBuf, opts: Opts) -> Gateway {
        let mut child = Gateway::command(&data_dir, &opts)
            .spawn()
            .expect("start dicom-gateway");
        let log = Log::drain(child.stderr.take().unwrap(), "gateway");
        let mut gw = Gateway {
            data_dir,
            _tmp: None,
            child: Some(child),
            dicom: "0.0.0.0:0".parse().unwrap(),
            http: "0.0.0.0:0".parse().unwrap(),
            dicom_tls: None,
            log,
            args: opts.args,
            envs: opts.envs,
            tmpfs_mib: opts.tmpfs_mib,
            prefix: opts.prefix,
        };
        gw.dicom = gw.listening("dicom");
        gw.http = gw.listening("http");
        if gw.args.iter().any(|a| a == "--dicom-tls-listen") {
            gw.dicom_tls = Some(gw.listening("dicom-tls"));
        }
        gw
    }

    fn listening(&self, service: &str) -> SocketAddr {
        let needle = format!("service=\"{service}\" addr=");
        let line = self.wait_for_log(&needle);
        let addr = line
            .split(&needle)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        addr.parse().unwrap()
    }

    /// Blocks until a log line contains `needle` (or the process ends).
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_after(0, needle)
    }

    /// Like [`wait_for_log`], looking only at lines after the first `skip`.
    pub fn wait_for_log_after(&self, skip: usize, needle: &str) -> String {
        self.log.wait_for_after(skip, needle, "gateway")
    }

    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// Stops the gateway and returns everything it logged (for checking
    /// what must *not* be there).
    pub fn final_log(&mut self) -> String {
        assert!(self.stop().success());
        self.wait_for_log(CLOSED);
        self.log_text()
    }

    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// Runs a gateway that is expected to give up at start-up: waits (at most
    /// `limit`) for it to exit by itself; returns its status and stderr.
    pub fn start_expecting_exit(opts: Opts, limit: Duration) -> (ExitStatus, String) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let child = Gateway::command(&tmp.path().join("data"), &opts)
            .spawn()
            .expect("start dicom-gateway");
        let pid = child.id();
        let (done, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait_with_output());
        });
        match exited.recv_timeout(limit) {
            Ok(out) => {
                let out = out.expect("wait for dicom-gateway");
                (
                    out.status,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
                panic!(
                    "dicom-gateway still running after {limit:?}: it should have refused to start"
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The gateway's process id when it runs under a [`Opts::prefix`]
    /// program: that program's only child.
    pub fn traced_pid(&self) -> u32 {
        let pid = self.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        let ids: Vec<u32> = children
            .split_whitespace()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "children of {pid}: {children:?}");
        ids[0]
    }

    /// Peak resident set size of the gateway so far, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.child.take().unwrap().wait().unwrap()
    }

    /// Waits for the process to exit by itself (after a signal sent earlier).
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// SIGKILL: no chance to flush or clean anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Runs one more process on the same data directory, with `envs` added
    /// (e.g. a failpoint), until it exits by itself — for starts that are
    /// expected to fail. Returns its status and its log. The gateway must
    /// be stopped.
    pub fn run_to_exit(&self, envs: &[(&str, &str)]) -> (ExitStatus, String) {
        assert!(self.child.is_none(), "stop the gateway first");
        let opts = Opts {
            args: self.args.clone(),
            envs: self.envs.clone(),
            tmpfs_mib: None,
            prefix: self.prefix.clone(),
        };
        let mut cmd = Gateway::command(&self.data_dir, &opts);
        cmd.envs(envs.iter().copied());
        let out = cmd.output().expect("run the gateway");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Restarts (see [`Gateway::restart`]) with `args` added (later
    /// arguments win: e.g. `--journal false`).
    pub fn restart_with_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self.restart();
    }

    /// Restarts (see [`Gateway::restart`]) without the environment
    /// variable `key` (e.g. a failpoint that must not fire again).
    pub fn restart_without_env(&mut self, key: &str) {
        self.envs.retain(|(k, _)| k != key);
        self.restart();
    }

    /// Starts a new process on the same data directory (new ports).
    pub fn restart(&mut self) {
        assert!(
            self.tmpfs_mib.is_none(),
            "a gateway on a tmpfs cannot restart: the filesystem ends with the process"
        );
        if self.child.is_some() {
            assert!(self.stop().success());
        }
        let tmp = self._tmp.take();
        let opts = Opts {
            args: self.args.clone(),
            envs: self.envs.clone(),
            tmpfs_mib: None,
            prefix: self.prefix.clone(),
        };
        let mut next = Gateway::spawn(self.data_dir.clone(), opts);
        next._tmp = tmp;
        *self = next;
    }

    /// `path` (absolute, e.g. under `data_dir`) as the gateway sees it: the
    /// path itself, or for a gateway on a tmpfs the same path through
    /// `/proc/<pid>/root`, which resolves in the gateway's mount namespace.
    pub fn view(&self, path: &Path) -> PathBuf {
        match self.tmpfs_mib {
            None => path.to_owned(),
            Some(_) => PathBuf::from(format!("/proc/{}/root", self.pid()))
                .join(path.strip_prefix("/").expect("an absolute path")),
        }
    }

    /// The data directory as the gateway sees it (see [`Gateway::view`]).
    pub fn data_view(&self) -> PathBuf {
        self.view(&self.data_dir)
    }

    pub fn objects(&self) -> PathBuf {
        self.data_view().join("objects")
    }

    /// Spool files holding data. (The gateway keeps a pool of empty,
    /// pre-created spool files; a file in use starts with its Part-10 header,
    /// so it is never empty.)
    pub fn spool_files(&self) -> Vec<PathBuf> {
        files_under(&self.data_view().join("spool"))
            .into_iter()
            .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
            .collect()
    }

    pub fn object_files(&self) -> Vec<PathBuf> {
        files_under(&self.objects())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// GET returning (status, JSON body).
    pub fn get_json(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent.get(&self.url(path));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().expect("HTTP request");
        let status = resp.status().as_u16();
        let body: Value = resp.body_mut().read_json().expect("JSON body");
        (status, body)
    }

    pub fn study(&self, uid: &str) -> Value {
        let (status, body) = self.get_json(&format!("/api/studies/{uid}"), None);
        assert_eq!(status, 200, "study {uid}: {body}");
        body
    }

    /// The index record the operator API lists for `sop` in `study`.
    pub fn instance_record(&self, study: &str, sop: &str) -> Value {
        self.study(study)["series"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["instances"].as_array().unwrap().clone())
            .find(|i| i["sopInstanceUid"] == sop)
            .unwrap_or_else(|| panic!("{sop} not listed in study {study}"))
    }

    pub fn studies(&self) -> Vec<Value> {
        let (status, body) = self.get_json("/api/studies", None);
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().clone()
    }
}

/// An operator API call: (status, JSON body or `null` when there is none).
pub fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = gw.url(path);
    let auth = token.map(|t| format!("Bearer {t}"));
    let result = match (method, body) {
        ("GET", None) => with_auth(agent.get(&url), &auth).call(),
        ("DELETE", None) => with_auth(agent.delete(&url), &auth).call(),
        ("POST", None) => with_auth(agent.post(&url), &auth).send_empty(),
        ("POST", Some(b)) => with_auth(agent.post(&url), &auth)
            .content_type("application/json")
            .send(b),
        ("PATCH", Some(b)) => with_auth(agent.patch(&url), &auth)
            .content_type("application/json")
            .send(b),
        other => panic!("no such call: {other:?}"),
    };
    let mut resp = result.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, body)
}

fn with_auth<B>(req: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => req.header("Authorization", a),
        None => req,
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A program the tests need; fails (never skips) with what to install.
pub fn require(program: &str) -> PathBuf {
    let path = PathBuf::from(program);
    assert!(
        path.exists(),
        "{program} is missing: run scripts/test.sh (it installs DCMTK, pydicom and pynetdicom)"
    );
    path
}

/// The Python with pydicom and pynetdicom: `.venv` made by scripts/test.sh, or
/// `$GATEWAY_TEST_PYTHON`.
pub fn python() -> PathBuf {
    let py = std::env::var_os("GATEWAY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    require(py.to_str().unwrap())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// DCMTK storescu (by absolute path: pynetdicom installs a `storescu` too).
/// The storescu flags a fixture is sent with (fixtures.json).
pub fn storescu_flags(fixture: &Value) -> Vec<&str> {
    fixture["storescu_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

pub fn storescu(gw: &Gateway, flags: &[&str], files: &[&Path]) -> Output {
    run(Command::new(require("/usr/bin/storescu"))
        .env("TCP_NODELAY", "1")
        .args(["-aet", "DCMTKSCU", "-aec", "DICOMGW"])
        .args(flags)
        .arg(gw.dicom.ip().to_string())
        .arg(gw.dicom.port().to_string())
        .args(files))
}

pub fn echoscu(gw: &Gateway, called: &str) -> Output {
    run(Command::new(require("/usr/bin/echoscu"))
        .env("TCP_NODELAY", "1")
        .args(["-aet", "DCMTKSCU", "-aec", called])
        .arg(gw.dicom.ip().to_string())
        .arg(gw.dicom.port().to_string()))
}

/// `tests/peers/pynet.py` (pynetdicom); returns its JSON answer.
pub fn pynet(gw: &Gateway, args: &[&str]) -> Value {
    let out = run(Command::new(python())
        .arg(repo().join("tests/peers/pynet.py"))
        .args([
            "--host",
            &gw.dicom.ip().to_string(),
            "--port",
            &gw.dicom.port().to_string(),
        ])
        .args(["--aet", "PYSCU", "--called", "DICOMGW"])
        .args(args));
    assert!(
        out.status.success(),
        "pynet.py {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("pynet.py prints JSON")
}

/// Signs `event` with `key` and posts it to the gateway's Avara webhook with
/// `tests/peers/avara_sender.py` (Avara's own libraries), passing `flags`
/// on; its JSON answer (`status`, `body`, ...).
pub fn avara_send(gw: &Gateway, key: &str, event: &str, flags: &[&str]) -> Value {
    let out = run(Command::new(python())
        .arg(repo().join("tests/peers/avara_sender.py"))
        .args(["--url", &gw.url("/webhooks/avara"), "--key", key])
        .args(flags)
        .arg(event));
    assert_ok(&out, "avara_sender.py");
    serde_json::from_slice(&out.stdout).expect("avara_sender.py prints JSON")
}

/// Starts `tests/peers/pdf_server.py` serving `pdf` (with `extra` flags,
/// its stderr to `stderr`); the process and the port it printed.
pub fn spawn_pdf_server(pdf: &Path, extra: &[&str], stderr: Stdio) -> (Child, u16) {
    let mut child = Command::new(python())
        .arg(repo().join("tests/peers/pdf_server.py"))
        .args(["--file", pdf.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start pdf_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("pdf_server prints its port");
    (child, port)
}

/// Runs a Python snippet with pydicom; returns stdout.
pub fn pydicom(script: &str, args: &[&str]) -> String {
    let out = run(Command::new(python()).arg("-c").arg(script).args(args));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The data set bytes of a Part-10 file (what follows the File Meta group).
pub fn dataset_bytes(path: &Path) -> Vec<u8> {
    dataset_bytes_of(&std::fs::read(path).unwrap())
}

/// The data set bytes of a Part-10 object in memory.
pub fn dataset_bytes_of(bytes: &[u8]) -> Vec<u8> {
    assert_eq!(&bytes[128..132], b"DICM", "not Part-10");
    // (0002,0000) UL group length, explicit VR LE: tag(4) VR(2) len(2) value(4).
    assert_eq!(&bytes[132..136], &[0x02, 0x00, 0x00, 0x00]);
    let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    bytes[144 + group_len..].to_vec()
}

/// The transfer syntax in a Part-10 file's meta group (via dcmdump-free parse in pydicom).
pub fn meta_transfer_syntax(path: &Path) -> String {
    pydicom(
        "import sys, pydicom; print(pydicom.dcmread(sys.argv[1], stop_before_pixels=True).file_meta.TransferSyntaxUID)",
        &[path.to_str().unwrap()],
    )
    .trim()
    .to_owned()
}

/// Generates an instance of `size_mib` MiB of pixel data in a temporary
/// directory and sends it with storescu (which must succeed): the directory
/// (removed when dropped) and the file.
pub fn send_big(gw: &Gateway, size_mib: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.dcm");
    generate_big(&big, size_mib);
    assert_ok(
        &storescu(gw, &["-xe"], &[big.as_path()]),
        &format!("storescu {size_mib} MiB"),
    );
    (dir, big)
}

/// One multi-frame instance with `size_mib` MiB of pixel data, written by
/// `generate.py big` under a short UID root (`2.25.`), for the local-disk
/// tests (the S3 tests use `common::s3::generate_big`, with
/// 64-character UIDs).
pub fn generate_big(path: &Path, size_mib: u32) {
    let out = Command::new(python())
        .arg("-c")
        .arg(
            "import argparse, sys\n\
             sys.path.insert(0, sys.argv[1])\n\
             import generate\n\
             generate.UID_ROOT = '2.25.'\n\
             generate.cmd_big(argparse.Namespace(out_file=sys.argv[2], size_mib=int(sys.argv[3])))",
        )
        .arg(repo().join("testdata"))
        .arg(path)
        .arg(size_mib.to_string())
        .output()
        .unwrap();
    assert_ok(&out, "generate.py big");
}

/// `tests/peers/ack_sender.py` (pynetdicom) on one association to `gw`: it
/// generates distinct instances, keeps each one sent in `out` as
/// `<SOP Instance UID>.dcm`, appends one line per C-STORE response to
/// `record` (`ack UID` or `refused UID 0xSSSS`) and prints it on its piped
/// stdout. `args` adds the generator's options (`--study`, `--uid-root`, …).
pub fn spawn_ack_sender(gw: &Gateway, out: &Path, record: &Path, args: &[&str]) -> Child {
    Command::new(python())
        .arg(repo().join("tests/peers/ack_sender.py"))
        .args(["--host", &gw.dicom.ip().to_string()])
        .args(["--port", &gw.dicom.port().to_string()])
        .arg("--out")
        .arg(out)
        .arg("--acks")
        .arg(record)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tests/peers/ack_sender.py")
}

/// What an ack_sender.py record file says.
#[derive(Debug, Default)]
pub struct AckRecord {
    /// SOP Instance UIDs answered 0x0000, in order.
    pub acked: Vec<String>,
    /// SOP Instance UIDs answered with another status, and the status.
    pub refused: Vec<(String, u16)>,
}

impl AckRecord {
    pub fn read(path: &Path) -> AckRecord {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut record = AckRecord::default();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ack", uid] => record.acked.push((*uid).to_owned()),
                ["refused", uid, status] => {
                    let status = u16::from_str_radix(status.trim_start_matches("0x"), 16)
                        .unwrap_or_else(|e| {
                            panic!("{}: bad status in {line:?}: {e}", path.display())
                        });
                    record.refused.push(((*uid).to_owned(), status));
                }
                _ => panic!("{}: unexpected line {line:?}", path.display()),
            }
        }
        record
    }
}
