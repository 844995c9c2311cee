//! Forwarding destinations for the tests: DCMTK storescp and Orthanc, which
//! cannot bind to 127.0.0.1 only, run in a private network namespace with a
//! Unix-socket bridge (tests/peers/unix_bridge.py) inside it; the test
//! listens on 127.0.0.1:0 and relays each connection to that socket. With
//! no peer behind the socket, a connection is accepted and closed at once:
//! the destination is down.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{python, repo, require};

/// The port the peers listen on inside their namespace.
const NS_PORT: u16 = 11112;

/// A 127.0.0.1 port of the test relayed to a Unix socket path.
pub struct Relay {
    pub port: u16,
    pub sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Relay {
    pub fn new() -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("peer.sock");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = sock.clone();
        // Lives as long as the test process; one thread per connection.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let target = target.clone();
                std::thread::spawn(move || relay(conn, &target));
            }
        });
        Relay {
            port,
            sock,
            _dir: dir,
        }
    }
}

fn relay(tcp: TcpStream, sock: &Path) {
    let Ok(unix) = UnixStream::connect(sock) else {
        // Nobody there: the destination is down.
        return;
    };
    let _ = tcp.set_nodelay(true);
    let (mut t_in, mut u_out) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        copy(&mut t_in, &mut u_out);
        let _ = u_out.shutdown(Shutdown::Write);
    });
    let (mut u_in, mut t_out) = (unix, tcp);
    copy(&mut u_in, &mut t_out);
    let _ = t_out.shutdown(Shutdown::Write);
    let _ = up.join();
}

fn copy(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A peer running in its own network namespace behind a relay's socket;
/// killed (its whole process group) when dropped.
pub struct NsPeer {
    child: Child,
    sock: PathBuf,
    pub dir: tempfile::TempDir,
}

impl NsPeer {
    /// `program` (listening on [`NS_PORT`] in the namespace) with the
    /// bridge from `relay.sock` to it.
    fn start(relay: &Relay, dir: tempfile::TempDir, program: &[String]) -> NsPeer {
        let script = "ip link set lo up || exit 1; \
                      \"$0\" \"$1\" \"$2\" \"$3\" & shift 3; exec \"$@\"";
        let child = Command::new(require("/usr/bin/unshare"))
            .args(["-n", "--", "sh", "-c", script])
            .arg(python())
            .arg(repo().join("tests/peers/unix_bridge.py"))
            .arg(&relay.sock)
            .arg(NS_PORT.to_string())
            .args(program)
            .env("TCP_NODELAY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start a peer in a network namespace");
        NsPeer {
            child,
            sock: relay.sock.clone(),
            dir,
        }
    }

    /// DCMTK storescp with AE title `ae`, accepting every transfer syntax
    /// it knows (or `accept`), writing each received instance bit-exact to
    /// a file of its own.
    pub fn storescp(relay: &Relay, ae: &str, accept: &str) -> NsPeer {
        NsPeer::storescp_with(relay, ae, accept, &[])
    }

    /// storescp over TLS only (`+tls`, a client certificate from the site
    /// CA required, DCMTK's default): `tls` = its key, certificate and the
    /// CA file.
    pub fn storescp_tls(relay: &Relay, ae: &str, tls: [&str; 3]) -> NsPeer {
        let [key, cert, ca] = tls;
        NsPeer::storescp_with(relay, ae, "+xa", &["+tls", key, cert, "+cf", ca])
    }

    fn storescp_with(relay: &Relay, ae: &str, accept: &str, tls: &[&str]) -> NsPeer {
        let dir = tempfile::tempdir().unwrap();
        let mut program: Vec<String> = [
            require("/usr/bin/storescp").to_str().unwrap(),
            "--fork",
            accept,
            "+B",
            "+uf",
            "-aet",
            ae,
            "-od",
            dir.path().to_str().unwrap(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        program.extend(tls.iter().map(|s| (*s).to_owned()));
        program.push(NS_PORT.to_string());
        let peer = NsPeer::start(relay, dir, &program);
        peer.wait_ready(relay, ae, tls);
        peer
    }

    /// Orthanc (its own DICOM server only) with AE title `ae`.
    pub fn orthanc(relay: &Relay, ae: &str) -> NsPeer {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "Name": "forward-test",
            "StorageDirectory": dir.path().join("storage"),
            "IndexDirectory": dir.path().join("index"),
            "DicomAet": ae,
            "DicomPort": NS_PORT,
            "DicomServerEnabled": true,
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowStore": true,
            "DicomCheckModalityHost": false,
            "HttpServerEnabled": false,
            "AuthenticationEnabled": false,
            "RemoteAccessAllowed": false,
            "StorageCompression": false,
        });
        let path = dir.path().join("orthanc.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let program = vec![
            require("/usr/sbin/Orthanc").to_str().unwrap().to_owned(),
            path.to_str().unwrap().to_owned(),
        ];
        let peer = NsPeer::start(relay, dir, &program);
        peer.wait_ready(relay, ae, &[]);
        peer
    }

    /// Polls with echoscu through the relay until the peer answers.
    /// Until an echo (with storescp's own TLS options, so over TLS when it
    /// speaks only TLS) gets through.
    fn wait_ready(&self, relay: &Relay, ae: &str, tls: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(require("/usr/bin/echoscu"))
                .env("TCP_NODELAY", "1")
                .args(["-aet", "PROBE", "-aec", ae, "-to", "5"])
                .args(tls)
                .arg("127.0.0.1")
                .arg(relay.port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "{ae} did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Files the peer wrote so far (complete or not).
    pub fn file_count(&self) -> usize {
        crate::common::files_under(self.dir.path())
            .iter()
            .filter(|p| p.extension().is_none_or(|e| e != "json"))
            .count()
    }
}

impl Drop for NsPeer {
    fn drop(&mut self) {
        // The namespace's processes (bridge, storescp and its children).
        let pgid = self.child.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// The DICOM files under `dir`: `(path, SOP Instance UID)`; files that
/// do not parse (cut short) have `None`.
pub fn received(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let script = r#"
import json, os, sys, pydicom
out = []
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(root, f)
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            out.append([p, str(ds.SOPInstanceUID)])
        except Exception:
            out.append([p, None])
print(json.dumps(out))
"#;
    let text = crate::common::pydicom(script, &[dir.to_str().unwrap()]);
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.iter()
        .filter(|r| !r[0].as_str().unwrap().ends_with(".json"))
        .filter(|r| {
            // Orthanc's SQLite index and similar are not instances.
            let p = r[0].as_str().unwrap();
            !p.contains("/index/")
        })
        .map(|r| {
            (
                PathBuf::from(r[0].as_str().unwrap()),
                r[1].as_str().map(str::to_owned),
            )
        })
        .collect()
}
