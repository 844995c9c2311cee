//! The container image and the Compose file, for real.
//!
//! No Docker engine runs here and no registry is reachable, so the image is
//! built and run with buildah (`scripts/test.sh` installs it and imports a
//! debootstrapped bookworm as `debian:bookworm-slim`): `buildah bud` builds
//! docker/Dockerfile around the binary under test (the debug build cargo
//! made for these tests, through the `GATEWAY_BINARY` build argument), and
//! `buildah run --isolation chroot` runs the image's own entrypoint and
//! command as the image's own user, on the host network. Then real peers
//! talk to it: DCMTK's echoscu and storescu, Avara's signed webhook, an HTTP
//! client fetching the signed URLs, the image's HEALTHCHECK run inside the
//! container, and the image's stop signal sent the way a container runtime
//! sends it (to the gateway process itself: `buildah run` kills its child on
//! SIGTERM instead of passing the signal on).
//!
//! The Compose file cannot be started here (no engine); what it gives the
//! gateway is checked instead: it parses, its parts are wired as intended,
//! and the environment it sets (interpolated from `.env.example`) is one the
//! image's entrypoint and `dicom-gateway --print-config` accept.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{self, Gateway};

/// The image's user (docker/Dockerfile, `GATEWAY_UID`/`GATEWAY_GID`).
const UID: u32 = 10001;
const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
/// A bound against hangs, not a synchronisation device.
const LOG_WAIT: Duration = Duration::from_secs(60);

/// buildah, which must be there: a missing one fails the test.
fn buildah() -> Command {
    let path = Path::new("/usr/bin/buildah");
    assert!(
        path.exists(),
        "/usr/bin/buildah is missing: scripts/test.sh installs buildah, podman and debootstrap"
    );
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null());
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stdout_of(cmd: &mut Command, what: &str) -> String {
    let out = output(cmd);
    common::assert_ok(&out, what);
    String::from_utf8(out.stdout).unwrap()
}

/// An image built from docker/Dockerfile around the binary under test;
/// removed, with its containers, when dropped.
struct Image {
    tag: String,
    containers: Vec<String>,
    /// The Docker-format image config (`buildah inspect`).
    config: Value,
}

impl Image {
    fn build() -> Image {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = output(buildah().args(["inspect", "--type", "image", BASE_IMAGE]));
        assert!(
            base.status.success(),
            "no local {BASE_IMAGE}: scripts/test.sh imports one (debootstrap + podman import)"
        );
        let tag = format!(
            "localhost/dicom-gateway-test:{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let (context, binary, _tmp) = build_context();
        let out = output(
            buildah()
                .args(["bud", "--pull=never", "--isolation", "chroot"])
                // HEALTHCHECK exists only in the Docker image format.
                .args(["--format", "docker", "--quiet"])
                .arg("-f")
                .arg(common::repo().join("docker/Dockerfile"))
                .arg("--build-arg")
                .arg(format!("GATEWAY_BINARY={binary}"))
                .args(["-t", &tag])
                .arg(&context),
        );
        common::assert_ok(&out, "buildah bud docker/Dockerfile");
        let inspect = stdout_of(
            buildah().args(["inspect", "--type", "image", &tag]),
            "buildah inspect",
        );
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        Image {
            tag,
            containers: Vec::new(),
            config: inspect["Docker"]["config"].clone(),
        }
    }

    /// A new working container of the image.
    fn container(&mut self) -> String {
        let name = stdout_of(
            buildah().args(["from", "--pull-never", &self.tag]),
            "buildah from",
        )
        .trim()
        .to_owned();
        self.containers.push(name.clone());
        name
    }

    /// `Entrypoint` + `Cmd`, as a runtime starts the image.
    fn default_argv(&self) -> Vec<String> {
        strings(&self.config["Entrypoint"])
            .into_iter()
            .chain(strings(&self.config["Cmd"]))
            .collect()
    }

    /// The image's `USER`.
    fn user(&self) -> String {
        self.config["User"].as_str().unwrap().to_owned()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = output(buildah().args(["umount", c]));
            let _ = output(buildah().args(["rm", c]));
        }
        let _ = output(buildah().args(["rmi", "-f", &self.tag]));
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The build context and the binary's path in it: the repository itself
/// (its .dockerignore lets only the binaries and the entrypoint through)
/// when cargo's target directory is the repository's; otherwise a
/// temporary context holding the entrypoint and a hard link to the binary.
fn build_context() -> (PathBuf, String, Option<tempfile::TempDir>) {
    let repo = common::repo();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_dicom-gateway"));
    if let Ok(rel) = binary.strip_prefix(&repo) {
        let rel = rel.to_str().unwrap().to_owned();
        if ["target/debug/dicom-gateway", "target/release/dicom-gateway"].contains(&rel.as_str()) {
            return (repo, rel, None);
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("docker")).unwrap();
    std::fs::copy(
        repo.join("docker/docker-entrypoint.sh"),
        tmp.path().join("docker/docker-entrypoint.sh"),
    )
    .unwrap();
    let copy = tmp.path().join("dicom-gateway");
    if std::fs::hard_link(&binary, &copy).is_err() {
        std::fs::copy(&binary, &copy).unwrap();
    }
    (tmp.path().to_owned(), "dicom-gateway".into(), Some(tmp))
}

/// `buildah run` of `argv` in `container` as `user`, with `env` and
/// `volumes` (`host:container[:opts]`).
fn run_in(
    container: &str,
    user: &str,
    env: &[(String, String)],
    volumes: &[String],
    argv: &[String],
) -> Command {
    let mut cmd = buildah();
    cmd.args(["run", "--isolation", "chroot", "--user", user]);
    for (k, v) in env {
        cmd.arg("--env").arg(format!("{k}={v}"));
    }
    for v in volumes {
        cmd.arg("--volume").arg(v);
    }
    cmd.arg(container).arg("--").args(argv);
    cmd
}

/// A port nobody listens on now (the gateway in the container is told it:
/// the health check inside must find the server from the same settings).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lines of a process's stderr, collected by a thread.
#[derive(Default)]
struct Log {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Log {
    fn drain(output: impl std::io::Read + Send + 'static) -> Arc<Log> {
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("GATEWAY_TEST_LOG").is_some() {
                    eprintln!("container: {line}");
                }
                sink.lines.lock().unwrap().0.push(line);
                sink.changed.notify_all();
            }
            sink.lines.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        log
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + LOG_WAIT;
        let mut state = self.lines.lock().unwrap();
        loop {
            if let Some(l) = state.0.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                !state.1,
                "the container ended before logging {needle:?}:\n{}",
                state.0.join("\n")
            );
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} from the container within {LOG_WAIT:?}:\n{}",
                state.0.join("\n")
            );
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().0.join("\n")
    }
}

/// The process below `ancestor` whose command name is `comm` (the gateway
/// under `buildah run`, several levels down).
fn descendant_named(ancestor: u32, comm: &str) -> u32 {
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces, so after ')'.
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let mut p = pid;
        for _ in 0..16 {
            match parent_of(p) {
                Some(pp) if pp == ancestor => {
                    found.push(pid);
                    break;
                }
                Some(pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    assert_eq!(found.len(), 1, "{comm} below {ancestor}: {found:?}");
    found[0]
}

/// Every path under `root` (not following symbolic links) with what
/// identifies its content: kind, size, mode, owner and modification time.
/// A directory's own modification time counts only where others may write
/// (`/tmp`, `/run/lock`, ...): `buildah run` adds and removes its own files
/// in `/run` each time, and elsewhere a change shows in the entries.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, u32, i64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let rel = path.strip_prefix(root).unwrap().to_owned();
            let shared = meta.mode() & 0o002 != 0;
            let (mtime, nsec) = if meta.is_dir() && !shared {
                (0, 0)
            } else {
                (meta.mtime(), meta.mtime_nsec())
            };
            out.insert(rel, (meta.mode(), meta.len(), meta.uid(), mtime, nsec));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// A file only the image's user may read, for a secret mounted read-only.
fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::os::unix::fs::chown(&path, Some(UID), Some(UID)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    path
}

fn study1() -> (String, Vec<PathBuf>, BTreeSet<String>) {
    let fixtures: Vec<Value> = common::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .collect();
    let files = fixtures
        .iter()
        .map(|f| common::fixtures_dir().join(f["file"].as_str().unwrap()))
        .collect();
    let sops = fixtures
        .iter()
        .map(|f| f["sop_instance"].as_str().unwrap().to_owned())
        .collect();
    (
        fixtures[0]["study"].as_str().unwrap().to_owned(),
        files,
        sops,
    )
}

#[test]
fn image_runs_as_its_user_serves_dicom_and_avara_keeps_data_under_data_and_stops_on_its_signal() {
    let mut image = Image::build();
    let cfg = image.config.clone();

    // What the image declares.
    let user = image.user();
    assert_eq!(user, format!("{UID}:{UID}"), "a numeric, non-root USER");
    let ports: BTreeSet<&str> = cfg["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(ports, BTreeSet::from(["11112/tcp", "8080/tcp"]));
    assert!(cfg["Volumes"].get("/data").is_some(), "{cfg}");
    assert_eq!(cfg["StopSignal"], "SIGTERM");
    let health = strings(&cfg["Healthcheck"]["Test"]);
    assert_eq!(
        health.first().map(String::as_str),
        Some("CMD"),
        "{health:?}"
    );
    assert!(
        health
            .iter()
            .all(|a| !a.contains("curl") && !a.contains("wget"))
    );
    let env = strings(&cfg["Env"]);
    assert!(
        env.contains(&"DICOM_GATEWAY_DATA_DIR=/data".to_owned()),
        "{env:?}"
    );
    for var in &env {
        let name = var.split('=').next().unwrap();
        assert!(
            !["KEY", "TOKEN", "SECRET", "PASSWORD"]
                .iter()
                .any(|s| name.contains(s)),
            "a secret baked into the image: {name}"
        );
    }

    let ctr = image.container();
    let mount = PathBuf::from(
        stdout_of(buildah().args(["mount", &ctr]), "buildah mount")
            .trim()
            .to_owned(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(UID), Some(UID)).unwrap();
    let key_file = secret_file(tmp.path(), "avara_webhook_key", KEY);
    let (dicom_port, http_port) = (free_port(), free_port());
    let env: Vec<(String, String)> = [
        (
            "DICOM_GATEWAY_DICOM_LISTEN",
            format!("0.0.0.0:{dicom_port}"),
        ),
        ("DICOM_GATEWAY_HTTP_LISTEN", format!("0.0.0.0:{http_port}")),
        (
            "DICOM_GATEWAY_PUBLIC_URL",
            format!("http://127.0.0.1:{http_port}"),
        ),
        (
            "DICOM_GATEWAY_AVARA_WEBHOOK_KEY_FILE",
            "/run/secrets/avara_webhook_key".into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let volumes = vec![
        format!("{}:/data", data.display()),
        format!("{}:/run/secrets/avara_webhook_key:ro", key_file.display()),
    ];

    let id = stdout_of(
        &mut run_in(&ctr, &user, &env, &volumes, &["id".into(), "-u".into()]),
        "id -u in the container",
    );
    assert_eq!(id.trim(), UID.to_string());
    // After a first run with the same volumes, so the mount points buildah
    // adds for them are there already.
    let rootfs_before = snapshot(&mount);

    let mut gateway: Child = run_in(&ctr, &user, &env, &volumes, &image.default_argv())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("buildah run");
    let log = Log::drain(gateway.stderr.take().unwrap());
    let _reaper = KillOnDrop(gateway.id());
    log.wait_for(&format!("service=\"dicom\" addr=0.0.0.0:{dicom_port}"));
    log.wait_for(&format!("service=\"http\" addr=0.0.0.0:{http_port}"));

    // C-ECHO and a C-STORE of a study, from DCMTK.
    let port = dicom_port.to_string();
    let dcmtk = |program: &str| {
        let mut cmd = Command::new(common::require(program));
        cmd.env("TCP_NODELAY", "1")
            .args(["-aet", "DCMTKSCU", "-aec", "DICOMGW"]);
        cmd
    };
    common::assert_ok(
        &output(dcmtk("/usr/bin/echoscu").args(["127.0.0.1", &port])),
        "echoscu",
    );
    let (study, files, sops) = study1();
    common::assert_ok(
        &output(
            dcmtk("/usr/bin/storescu")
                .args(["-xe", "127.0.0.1", &port])
                .args(&files),
        ),
        "storescu",
    );

    // Avara asks for the study: every URL downloads the instance it names.
    let event = json!({
        "id": "whe_0123456789abcdef0123456789abcdef",
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study },
    });
    let answer = stdout_of(
        Command::new(common::python())
            .arg(common::repo().join("tests/peers/avara_sender.py"))
            .args([
                "--url",
                &format!("http://127.0.0.1:{http_port}/webhooks/avara"),
                "--key",
                KEY,
            ])
            .arg(event.to_string()),
        "avara_sender.py",
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["authorized"], true, "{answer}");
    let urls = strings(&answer["body"]["urls"]);
    assert_eq!(urls.len(), sops.len(), "{answer}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let downloads = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        assert!(
            url.starts_with(&format!("http://127.0.0.1:{http_port}/files/")),
            "{url}"
        );
        let mut resp = agent.get(url).call().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let path = downloads.path().join(format!("{n}.dcm"));
        std::fs::write(&path, resp.body_mut().read_to_vec().unwrap()).unwrap();
        paths.push(path.to_str().unwrap().to_owned());
    }
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let opened = common::pydicom(
        "import sys, pydicom\nfor f in sys.argv[1:]: print(pydicom.dcmread(f).SOPInstanceUID)",
        &args,
    );
    let got: BTreeSet<String> = opened.lines().map(str::to_owned).collect();
    assert_eq!(got, sops);

    // The image's HEALTHCHECK, run inside the container as a runtime runs it.
    let check = output(&mut run_in(&ctr, &user, &env, &volumes, &health[1..]));
    common::assert_ok(&check, "the image's HEALTHCHECK");
    assert!(
        String::from_utf8_lossy(&check.stdout)
            .contains(&format!("http://127.0.0.1:{http_port}/healthz")),
        "{check:?}"
    );

    // The stop signal, to the gateway process itself (as `docker stop` sends
    // it to the container's first process): a clean exit.
    let pid = descendant_named(gateway.id(), "dicom-gateway");
    let signal = cfg["StopSignal"]
        .as_str()
        .unwrap()
        .trim_start_matches("SIG");
    let sent = output(Command::new("kill").args(["-s", signal, &pid.to_string()]));
    common::assert_ok(&sent, "kill");
    let status = gateway.wait().unwrap();
    log.wait_for("stopped");
    assert!(status.success(), "{status}:\n{}", log.text());

    // Everything written is under /data, owned by the image's user.
    let written = common::files_under(&data);
    let objects: Vec<_> = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    assert_eq!(objects.len(), sops.len(), "{written:?}");
    assert!(objects.iter().all(|p| p.starts_with(data.join("objects"))));
    assert!(data.join("url-signing-keys").exists(), "{written:?}");
    for path in &written {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (UID, UID), "{}", path.display());
    }
    let rootfs_after = snapshot(&mount);
    let changed: Vec<_> = rootfs_before
        .iter()
        .filter(|(p, m)| rootfs_after.get(*p) != Some(m))
        .map(|(p, _)| p)
        .chain(
            rootfs_after
                .keys()
                .filter(|p| !rootfs_before.contains_key(*p)),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "written outside /data in the image's file system: {:?}",
        changed
            .iter()
            .map(|p| (p, rootfs_before.get(*p), rootfs_after.get(*p)))
            .collect::<Vec<_>>()
    );
}

/// Kills a `buildah run` left behind by a failed test.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Reads docker/compose.yaml with PyYAML and interpolates the gateway's
/// environment from docker/.env.example the way Compose does
/// (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `$$`).
const COMPOSE_READER: &str = r##"
import json, re, sys, tomllib, yaml

compose = yaml.safe_load(open(sys.argv[1]))
dotenv = {}
for line in open(sys.argv[2]):
    line = line.strip()
    if line and not line.startswith("#"):
        k, _, v = line.partition("=")
        dotenv[k.strip()] = v.strip()

def interpolate(text):
    def one(m):
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = dotenv.get(name)
        if op in (":-", ":?") and not value or op in ("-", "?") and value is None:
            if op.endswith("?"):
                raise SystemExit(f"{name}: {arg}")
            return arg
        return value or ""
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", one, text)

env = compose["services"]["gateway"]["environment"]
if isinstance(env, list):
    env = dict(e.partition("=")[::2] for e in env)
print(json.dumps({
    "compose": compose,
    "gateway_env": {k: interpolate(str(v)) for k, v in env.items()},
    "garage_toml": tomllib.load(open(sys.argv[3], "rb")),
}))
"##;

#[test]
fn compose_file_wires_garage_and_gives_the_gateway_a_config_it_accepts() {
    let docker = common::repo().join("docker");
    for script in ["docker-entrypoint.sh", "garage-init.sh"] {
        common::assert_ok(
            &output(Command::new("sh").arg("-n").arg(docker.join(script))),
            &format!("sh -n docker/{script}"),
        );
    }
    let read = common::pydicom(
        COMPOSE_READER,
        &[
            docker.join("compose.yaml").to_str().unwrap(),
            docker.join(".env.example").to_str().unwrap(),
            docker.join("garage.toml").to_str().unwrap(),
        ],
    );
    let read: Value = serde_json::from_str(&read).unwrap();
    let compose = &read["compose"];
    let services = &compose["services"];
    let garage = &services["garage"];
    let init = &services["garage-init"];
    let gw = &services["gateway"];
    assert!(
        garage["image"]
            .as_str()
            .unwrap()
            .starts_with("dxflrs/garage:v2."),
        "{garage}"
    );
    assert_eq!(gw["build"]["dockerfile"], "docker/Dockerfile");
    assert_eq!(gw["build"]["context"], "..");
    // Start order: Garage healthy, then its setup done, then the gateway.
    assert_eq!(init["depends_on"]["garage"]["condition"], "service_healthy");
    assert_eq!(
        gw["depends_on"]["garage-init"]["condition"],
        "service_completed_successfully"
    );
    for (name, service) in [("garage", garage), ("gateway", gw)] {
        assert!(
            !strings(&service["healthcheck"]["test"]).is_empty(),
            "{name} has no health check"
        );
    }
    assert_eq!(
        strings(&gw["healthcheck"]["test"]),
        ["CMD", "docker-entrypoint.sh", "healthcheck"]
    );
    // Named volumes, and the gateway's data in one of them.
    let declared: BTreeSet<String> = compose["volumes"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for service in [garage, init, gw] {
        for v in strings(&service["volumes"]) {
            let source = v.split(':').next().unwrap();
            assert!(
                source.starts_with("./") || declared.contains(source),
                "volume {v} is neither a file of docker/ nor a named volume"
            );
        }
    }
    assert!(strings(&gw["volumes"]).contains(&"gateway-data:/data".to_owned()));
    // The key goes from garage-init to the gateway through one volume.
    let credentials_dir = init["environment"]["CREDENTIALS_DIR"].as_str().unwrap();
    assert!(strings(&init["volumes"]).contains(&format!("s3-credentials:{credentials_dir}")));
    assert!(strings(&gw["volumes"]).contains(&"s3-credentials:/run/s3-credentials:ro".to_owned()));
    assert_eq!(
        init["environment"]["CREDENTIALS_OWNER"],
        format!("{UID}:{UID}")
    );
    // No secret is written into the file or the example.
    let env = read["gateway_env"].as_object().unwrap();
    for secret in [
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "DICOM_GATEWAY_API_TOKEN",
        "AVARA_WEBHOOK_KEY",
    ] {
        assert!(
            !env.contains_key(secret),
            "{secret} is set in compose.yaml; secrets come from files"
        );
    }
    for file in [
        "AWS_ACCESS_KEY_ID_FILE",
        "AWS_SECRET_ACCESS_KEY_FILE",
        "DICOM_GATEWAY_API_TOKEN_FILE",
        "DICOM_GATEWAY_AVARA_WEBHOOK_KEY_FILE",
    ] {
        assert!(
            env.contains_key(file),
            "no {file} in the gateway's environment"
        );
    }
    // Garage and the gateway agree on region, port and bucket.
    let toml = &read["garage_toml"];
    assert_eq!(
        env["DICOM_GATEWAY_STORAGE_REGION"],
        toml["s3_api"]["s3_region"]
    );
    let s3_port = toml["s3_api"]["api_bind_addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert_eq!(
        env["DICOM_GATEWAY_STORAGE_ENDPOINT"],
        format!("http://garage:{s3_port}")
    );
    assert_eq!(toml["rpc_public_addr"], "garage:3901");

    // The environment, in the image, with the files Compose would mount:
    // the entrypoint and `--print-config` accept it.
    let tmp = tempfile::tempdir().unwrap();
    let creds = tmp.path().join("s3-credentials");
    std::fs::create_dir(&creds).unwrap();
    let key_id = "GK0123456789abcdef01234567";
    let secret = "6d1f0a9e8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f";
    secret_file(&creds, "access_key_id", key_id);
    secret_file(&creds, "secret_access_key", secret);
    let token = "0123456789abcdef0123456789abcdef";
    let mut volumes = vec![format!("{}:/run/s3-credentials:ro", creds.display())];
    for (name, value) in [("avara_webhook_key", KEY), ("api_token", token)] {
        let file = secret_file(tmp.path(), name, value);
        volumes.push(format!("{}:/run/secrets/{name}:ro", file.display()));
    }
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let mut image = Image::build();
    let ctr = image.container();
    let user = image.user();
    let mut argv = strings(&image.config["Entrypoint"]);
    argv.push("--print-config".into());
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &env, &volumes, &argv),
        "the compose environment with --print-config",
    );
    for expected in [
        "url = \"s3://dicom\"",
        "endpoint = \"http://garage:3900\"",
        "region = \"garage\"",
        "allow_http = true",
        "data_dir = \"/data\"",
        "dicom_listen = \"0.0.0.0:11112\"",
        "http_listen = \"0.0.0.0:8080\"",
        "api_token = \"<redacted>\"",
        "allowed_calling_aets = []",
        &format!("AWS_ACCESS_KEY_ID={key_id}"),
        "AWS_SECRET_ACCESS_KEY=<redacted>",
    ] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
    for secret in [secret, token, KEY] {
        assert!(!printed.contains(secret), "a secret printed:\n{printed}");
    }
}

/// `dicom-gateway healthcheck` against a real gateway: healthy while it
/// runs, with the address taken from the same settings; 1 once it stopped.
#[test]
fn healthcheck_subcommand_asks_the_running_gateway() {
    let mut gw = Gateway::start();
    let data_dir = gw.data_dir.clone();
    let check = |listen: String| {
        output(
            Command::new(env!("CARGO_BIN_EXE_dicom-gateway"))
                .arg("healthcheck")
                .env("DICOM_GATEWAY_HTTP_LISTEN", listen)
                .env("DICOM_GATEWAY_DATA_DIR", &data_dir),
        )
    };
    // A wildcard address, as in the image, is asked on loopback.
    let out = check(format!("0.0.0.0:{}", gw.http.port()));
    common::assert_ok(&out, "healthcheck");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("healthy: http://127.0.0.1:{}/healthz", gw.http.port())
    );
    assert!(gw.stop().success());
    let out = check(format!("0.0.0.0:{}", gw.http.port()));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/healthz"),
        "{out:?}"
    );
}

/// The entrypoint: a TOML file mounted at the image's config path is read
/// (by the server and by the health check), its absence is no error, and a
/// secret given both as a variable and as a file is refused.
#[test]
fn entrypoint_reads_a_mounted_toml_and_refuses_a_secret_given_twice() {
    let mut image = Image::build();
    let ctr = image.container();
    let user = image.user();
    let entrypoint = strings(&image.config["Entrypoint"]);
    let argv = |args: &[&str]| -> Vec<String> {
        let mut argv = entrypoint.clone();
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    };
    let tmp = tempfile::tempdir().unwrap();
    let toml = tmp.path().join("gateway.toml");
    let unused = free_port();
    std::fs::write(
        &toml,
        format!(
            "ae_title = \"TOMLGW\"\nallowed_calling_aets = [\"CT1\"]\nhttp_listen = \"0.0.0.0:{unused}\"\n"
        ),
    )
    .unwrap();
    let mounted = vec![format!(
        "{}:/etc/dicom-gateway/gateway.toml:ro",
        toml.display()
    )];

    // No file: the defaults and the image's variables.
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &[], &[], &argv(&["--print-config"])),
        "--print-config without a file",
    );
    assert!(printed.contains("ae_title = \"DICOMGW\""), "{printed}");
    // The mounted file; a variable still wins over it.
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &[], &mounted, &argv(&["--print-config"])),
        "--print-config with the mounted file",
    );
    assert!(printed.contains("ae_title = \"TOMLGW\""), "{printed}");
    assert!(printed.contains("\"CT1\""), "{printed}");
    let over = [("DICOM_GATEWAY_AE_TITLE".to_owned(), "ENVGW".to_owned())];
    let printed = stdout_of(
        &mut run_in(&ctr, &user, &over, &mounted, &argv(&["--print-config"])),
        "--print-config with the file and a variable",
    );
    assert!(printed.contains("ae_title = \"ENVGW\""), "{printed}");
    // The health check asks where the file says the server listens.
    let out = output(&mut run_in(
        &ctr,
        &user,
        &[],
        &mounted,
        &argv(&["healthcheck", "--timeout", "2"]),
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{unused}/healthz")),
        "{out:?}"
    );

    // A secret twice, or from a file that is not there: refused, not guessed.
    let key_file = secret_file(tmp.path(), "access_key_id", "GK0123456789abcdef01234567");
    let file_volume = vec![format!("{}:/run/s3/access_key_id:ro", key_file.display())];
    let twice = [
        ("AWS_ACCESS_KEY_ID".to_owned(), "GKother".to_owned()),
        (
            "AWS_ACCESS_KEY_ID_FILE".to_owned(),
            "/run/s3/access_key_id".to_owned(),
        ),
    ];
    let out = output(&mut run_in(
        &ctr,
        &user,
        &twice,
        &file_volume,
        &argv(&["--print-config"]),
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not both"),
        "{out:?}"
    );
    let missing = [(
        "AWS_SECRET_ACCESS_KEY_FILE".to_owned(),
        "/run/s3/nothing".to_owned(),
    )];
    let out = output(&mut run_in(
        &ctr,
        &user,
        &missing,
        &[],
        &argv(&["--print-config"]),
    ));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /run/s3/nothing"),
        "{out:?}"
    );
}
