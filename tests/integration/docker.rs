//! The container image and the Compose file, for real: the helpers here,
//! the tests in `docker/image.rs` and `docker/compose.rs`.
//!
//! No Docker engine runs here and no registry is reachable, so the image is
//! built and run with buildah (`scripts/test.sh` installs it and imports a
//! debootstrapped bookworm as `debian:bookworm-slim`): `buildah bud` builds
//! docker/Dockerfile around the binary under test (the debug build cargo
//! made for these tests, through the `GATEWAY_BINARY` build argument), and
//! `buildah run --isolation chroot` runs the image's own entrypoint and
//! command as the image's own user, on the host network.

mod compose;
mod image;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;

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
    let found = descendants_named(ancestor, comm);
    assert_eq!(found.len(), 1, "{comm} below {ancestor}: {found:?}");
    found[0]
}

/// A `buildah run` that is ended, with the gateway under it, if the test
/// fails while it runs (killing `buildah` alone would leave the gateway).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            for pid in descendants_named(self.0.id(), "dicom-gateway") {
                let _ = Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn descendants_named(ancestor: u32, comm: &str) -> Vec<u32> {
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
    found
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
    let study = common::fixture_study("study1/");
    (study.uid, study.files, study.sops.into_iter().collect())
}
