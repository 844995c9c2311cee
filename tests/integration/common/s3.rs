//! A real S3 server for the tests: s3s-fs 0.14.1 on 127.0.0.1, which checks
//! SigV4 signatures (headers and presigned URLs) for real, over a temporary
//! directory.
//!
//! s3s-fs keeps a bucket as the directory `<root>/<bucket>` and an object as
//! the plain file `<root>/<bucket>/<key>`; its own bookkeeping sits in
//! `<root>` itself: `.bucket-….metadata.json` and `.internal.json` per
//! object, `.upload-<id>.json` per open multipart upload and
//! `.upload_id-<id>.part-<n>` per uploaded part. So the tests read the
//! bucket straight from disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

use super::{Log, Opts, files_under};

/// The version scripts/test.sh installs (later ones need a newer Rust), and
/// whose on-disk layout these helpers know.
const VERSION: &str = "0.14.1";
const INSTALL: &str = "cargo install s3s-fs --version 0.14.1 --locked --features binary";

/// What s3s-fs logs once it listens.
const READY: &str = "server is running at http://";

pub struct S3Server {
    _tmp: tempfile::TempDir,
    /// The data directory s3s-fs serves (buckets are directories in it).
    pub root: PathBuf,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// Where it listens; the same across [`S3Server::stop`] and
    /// [`S3Server::start_again`].
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Log>,
}

impl S3Server {
    /// A server with an empty bucket, on a port the OS picked.
    pub fn start() -> S3Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("s3");
        let bucket = "dicom-test".to_owned();
        std::fs::create_dir_all(root.join(&bucket)).unwrap();
        let mut server = S3Server {
            _tmp: tmp,
            root,
            bucket,
            access_key: format!("AK{}", random_hex(8).to_uppercase()),
            secret_key: random_hex(20),
            addr: "127.0.0.1:0".parse().unwrap(),
            child: None,
            log: Arc::new(Log::default()),
        };
        // Port 0: s3s-fs logs the address it bound, so there is no window in
        // which another process could take a port picked for it.
        server.spawn();
        server
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "s3s-fs is already running");
        let mut child = Command::new(binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args(["--access-key", &self.access_key])
            .args(["--secret-key", &self.secret_key])
            .arg(&self.root)
            // `s3s::ops` at debug names every operation it serves.
            .env("RUST_LOG", "info,s3s::ops=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start s3s-fs");
        // s3s-fs logs (tracing's fmt) on stdout.
        self.log = Log::drain(child.stdout.take().unwrap(), "s3s-fs");
        self.child = Some(child);
        let line = self.log.wait_for_after(0, READY, "s3s-fs");
        let bound: SocketAddr = line
            .split(READY)
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("s3s-fs address in {line:?}: {e}"));
        assert!(
            self.addr.port() == 0 || bound == self.addr,
            "s3s-fs came back on {bound}, not {}",
            self.addr
        );
        self.addr = bound;
    }

    /// Kills the server (the data stays): the store is down.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("s3s-fs is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Starts the server again on the same port and data.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Blocks until s3s-fs (since it was last started) logs a line
    /// containing `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        self.log.wait_for_after(0, needle, "s3s-fs")
    }

    /// Whether s3s-fs has logged a line containing `needle` since it was
    /// (re)started.
    pub fn logged(&self, needle: &str) -> bool {
        self.log
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(&self.bucket)
    }

    /// The file holding the object `key`.
    pub fn object(&self, key: &str) -> PathBuf {
        self.bucket_dir().join(key)
    }

    /// Every object key in the bucket, sorted.
    pub fn keys(&self) -> Vec<String> {
        let dir = self.bucket_dir();
        files_under(&dir)
            .iter()
            .map(|p| relative_key(&dir, p))
            .collect()
    }

    /// What open (started, neither completed nor aborted) multipart uploads
    /// left on disk: their records and their parts.
    pub fn incomplete_uploads(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(".upload-") || name.starts_with(".upload_id-")
            })
            .collect()
    }

    /// A gateway storing into `s3://<bucket>/<prefix>` on this server, with
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
        }
    }
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

/// `path` below `dir` as an S3 key (`/`-separated).
fn relative_key(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap()
        .iter()
        .map(|c| c.to_str().unwrap())
        .collect::<Vec<_>>()
        .join("/")
}

/// The s3s-fs binary: on `PATH` or in cargo's bin directory. Missing or of
/// another version, it fails the test with what to install.
pub fn binary() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(find_binary)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_binary() -> Result<PathBuf, String> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"));
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join("s3s-fs"));
    let found = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("s3s-fs is missing (the S3 tests need it): run scripts/test.sh, or `{INSTALL}`")
        })?;
    let out = Command::new(&found)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", found.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if version != format!("s3s-fs {VERSION}") {
        return Err(format!(
            "{} is {version:?}, the tests need s3s-fs {VERSION}: run scripts/test.sh, or `{INSTALL}`",
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
