//! Several gateways on a replicated store cluster, one store node lost
//! during ingest: a three-node SeaweedFS cluster on loopback (one master,
//! three volume servers keeping every object on two of them, a filer and an
//! S3 gateway), two gateways on the same bucket with their own data
//! directories. A sender stores into gateway A while one volume server is
//! killed; gateway B, which received nothing, answers for the study with
//! every instance A acknowledged, and each URL downloads byte-exact.
//!
//! Replication `001` (two copies, on two servers of the same rack) rather
//! than `002` (three copies): with three servers, `002` needs all three for
//! every write, so after a loss the store keeps what it has but takes
//! nothing more; `001` survives the loss of any one server and keeps taking
//! writes on the other two, which is what a site wants from three boxes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::common::s3::{self, S3Client};
use crate::common::{self, AckRecord, Gateway};

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREFIX: &str = "site-a/archive";
const BUCKET: &str = "dicom-cluster";

/// One `weed` process of the cluster; its stderr goes to a file.
struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// `127.0.0.1:<http port>`: how the master names a volume server.
    addr: String,
}

impl Process {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

/// The cluster: master, three volume servers, filer, S3 gateway.
struct Cluster {
    _tmp: tempfile::TempDir,
    master: Process,
    volumes: Vec<Process>,
    filer: Process,
    s3: Process,
    master_port: u16,
    s3_port: u16,
    access_key: String,
    secret_key: String,
    /// `(component, gRPC port)` of every process, for the sockets
    /// SeaweedFS leaves in /tmp.
    grpc: Vec<(&'static str, u16)>,
}

impl Cluster {
    /// A ready cluster on free ports. The ports were free when picked, but
    /// another process may take one first: then a process of the cluster
    /// exits at once, and the whole cluster starts again on new ones (a few
    /// times).
    fn start() -> Cluster {
        for _ in 0..3 {
            match Cluster::try_start() {
                Ok(cluster) => return cluster,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        panic!("the SeaweedFS cluster found a port taken three times in a row")
    }

    /// Starts the cluster and waits until it is ready; the log of a
    /// process that exited first.
    fn try_start() -> Result<Cluster, String> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let access_key = format!("AK{}", s3::random_hex(8).to_uppercase());
        let secret_key = s3::random_hex(20);
        s3::write_identities(&dir.join("identities.json"), &access_key, &secret_key);

        let (master_port, master_grpc) = (s3::free_port(), s3::free_port());
        let master_addr = format!("127.0.0.1:{master_port}.{master_grpc}");
        let mut grpc = vec![("master", master_grpc)];
        let master = spawn(
            &dir,
            "master",
            &[
                "master",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-port={master_port}"),
                &format!("-port.grpc={master_grpc}"),
                &format!("-mdir={}", mkdir(&dir, "master")),
                "-defaultReplication=001",
                "-volumeSizeLimitMB=64",
                "-telemetry=false",
            ],
        );
        let volumes = (1..=3)
            .map(|n| {
                let (port, port_grpc) = (s3::free_port(), s3::free_port());
                grpc.push(("volume", port_grpc));
                let mut volume = spawn(
                    &dir,
                    &format!("volume{n}"),
                    &[
                        "volume",
                        "-ip=127.0.0.1",
                        "-ip.bind=127.0.0.1",
                        &format!("-port={port}"),
                        &format!("-port.grpc={port_grpc}"),
                        &format!("-dir={}", mkdir(&dir, &format!("volume{n}"))),
                        "-max=30",
                        &format!("-master={master_addr}"),
                        "-dataCenter=dc1",
                        "-rack=rack1",
                        "-preStopSeconds=0",
                    ],
                );
                volume.addr = format!("127.0.0.1:{port}");
                volume
            })
            .collect();
        let (filer_port, filer_grpc) = (s3::free_port(), s3::free_port());
        grpc.push(("filer", filer_grpc));
        let filer = spawn(
            &dir,
            "filer",
            &[
                "filer",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-port={filer_port}"),
                &format!("-port.grpc={filer_grpc}"),
                &format!("-master={master_addr}"),
                &format!("-defaultStoreDir={}", mkdir(&dir, "filer")),
                &format!("-localSocket={}/filer.sock", dir.display()),
                "-iam=false",
            ],
        );
        let (s3_port, s3_grpc) = (s3::free_port(), s3::free_port());
        grpc.push(("s3", s3_grpc));
        let s3 = spawn(
            &dir,
            "s3",
            &[
                "s3",
                "-ip.bind=127.0.0.1",
                &format!("-port={s3_port}"),
                &format!("-port.grpc={s3_grpc}"),
                "-port.iceberg=0",
                "-port.lance=0",
                &format!("-filer=127.0.0.1:{filer_port}.{filer_grpc}"),
                &format!("-config={}/identities.json", dir.display()),
                &format!("-localSocket={}/s3.sock", dir.display()),
                "-iam=false",
            ],
        );
        let mut cluster = Cluster {
            _tmp: tmp,
            master,
            volumes,
            filer,
            s3,
            master_port,
            s3_port,
            access_key,
            secret_key,
            grpc,
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// Blocks until the master knows all three volume servers, the bucket
    /// exists and a write goes through.
    fn wait_ready(&mut self) -> Result<(), String> {
        let client = self.client();
        let master_port = self.master_port;
        let mut created = false;
        let mut exited = None;
        s3::wait_until("a ready SeaweedFS cluster", || {
            exited = self.exited();
            if exited.is_some() || s3::data_nodes(master_port).len() < 3 {
                return exited.is_some();
            }
            created = created || client.create_bucket();
            created && client.bucket_ready() && client.write_probe()
        });
        exited.map_or(Ok(()), Err)
    }

    /// The name and log of a process of the cluster that should run but
    /// has exited.
    fn exited(&mut self) -> Option<String> {
        let all = std::iter::once(&mut self.master)
            .chain(self.volumes.iter_mut())
            .chain([&mut self.filer, &mut self.s3]);
        for p in all {
            if p.child.is_some() && !p.running() {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                return Some(format!("SeaweedFS {} exited:\n{log}", p.name));
            }
        }
        None
    }

    /// Fails the test, with its log, if a process of the cluster that
    /// should run has exited.
    fn assert_running(&mut self) {
        if let Some(log) = self.exited() {
            panic!("{log}");
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn client(&self) -> S3Client {
        S3Client {
            endpoint: self.endpoint(),
            bucket: BUCKET.to_owned(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }

    fn gateway(&self) -> Gateway {
        let opts = s3::gateway_opts(
            BUCKET,
            PREFIX,
            &self.endpoint(),
            &self.access_key,
            &self.secret_key,
        )
        .env("AVARA_WEBHOOK_KEY", KEY);
        let gw = Gateway::start_with(opts);
        gw.wait_for_log("object store reachable and writable");
        gw
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.s3.kill();
        self.filer.kill();
        for v in &mut self.volumes {
            v.kill();
        }
        self.master.kill();
        s3::remove_grpc_sockets(&self.grpc);
    }
}

/// How many volumes the master says the volume server `addr` holds.
fn volumes_on(master_port: u16, addr: &str) -> u64 {
    let url = format!("http://127.0.0.1:{master_port}/dir/status");
    let status: Value = s3::short_agent()
        .get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let topology = &status["Topology"]["DataCenters"];
    topology
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|dc| dc["Racks"].as_array().into_iter().flatten())
        .flat_map(|rack| rack["DataNodes"].as_array().into_iter().flatten())
        .filter(|node| node["Url"] == addr)
        .filter_map(|node| node["Volumes"].as_u64())
        .sum()
}

fn mkdir(dir: &Path, name: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d.display().to_string()
}

/// Starts `weed <args>` logging to `<dir>/<name>.log`.
fn spawn(dir: &Path, name: &str, args: &[&str]) -> Process {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(s3::binary())
        .arg("-logtostderr")
        .args(args)
        .env("TMPDIR", dir.join("tmp"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start weed {name}: {e}"));
    Process {
        name: name.to_owned(),
        child: Some(child),
        log,
        addr: String::new(),
    }
}

/// `study.access_requested` for `study` through Avara's own tools; the
/// answer's body, which must authorize.
fn access(gw: &Gateway, study: &str) -> Value {
    let event = json!({
        "id": "whe_0123456789abcdef0123456789abcdef",
        "type": "study.access_requested",
        "data": { "studyId": "stu_fedcba9876543210fedcba9876543210", "studyInstanceUid": study },
    });
    let answer = common::avara_send(gw, KEY, &event.to_string(), &[]);
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["authorized"], true, "{answer}");
    answer["body"].clone()
}

/// The SOP Instance UID each URL of an access answer names, and the URL;
/// fails on a URL that names none or a UID named twice.
fn urls_by_sop(answer: &Value) -> BTreeMap<String, String> {
    let mut by_sop = BTreeMap::new();
    for url in answer["urls"].as_array().unwrap() {
        let url = url.as_str().unwrap();
        let file = url.split('?').next().unwrap().rsplit('/').next().unwrap();
        let sop = file.strip_suffix(".dcm").unwrap_or_else(|| panic!("{url}"));
        assert!(
            by_sop.insert(sop.to_owned(), url.to_owned()).is_none(),
            "{sop} twice: {answer}"
        );
    }
    by_sop
}

fn download(url: &str) -> Vec<u8> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = resp.body_mut().read_to_vec().unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{url}: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// After how many acknowledged instances the volume server dies, and how
/// many are sent in all.
const KILL_AFTER: usize = 40;
const COUNT: usize = 160;

#[test]
fn a_store_node_lost_during_ingest_loses_no_acknowledged_instance() {
    let mut cluster = Cluster::start();
    let a = cluster.gateway();
    let b = cluster.gateway();
    assert_ne!(a.data_dir, b.data_dir);

    // 64-character study UID; SOP UIDs are `<series>.<n>`, 62 to 64.
    let study = s3::long_uid("cluster study");
    let series = s3::long_uid("cluster series")[..60].to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (out, record) = (dir.path().join("sent"), dir.path().join("acks"));
    let mut sender = common::spawn_ack_sender(
        &a,
        &out,
        &record,
        &[
            "--study",
            &study,
            "--uid-root",
            &series,
            "--count",
            &COUNT.to_string(),
            "--min-kib",
            "16",
            "--max-kib",
            "256",
        ],
    );
    // Its stderr is read aside (a full pipe would stall it).
    let mut stderr = sender.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    // Follow the sender's answers; kill the third volume server (not the
    // master's or the filer's process) once KILL_AFTER are acknowledged.
    let mut acked = 0;
    let mut summary = Value::Null;
    for line in BufReader::new(sender.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("ack ") {
            acked += 1;
            if acked == KILL_AFTER {
                // It holds copies of what was stored so far.
                let held = volumes_on(cluster.master_port, &cluster.volumes[2].addr);
                assert!(held > 0, "the third volume server holds no volume");
                cluster.volumes[2].kill();
            }
        } else if line.starts_with('{') {
            summary = serde_json::from_str(&line).unwrap();
        }
    }
    let status = sender.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "ack_sender.py: {status}\n{stderr}");
    assert!(
        cluster.volumes[2].child.is_none(),
        "the volume server was not killed"
    );
    assert_eq!(summary["sent"], COUNT, "{summary}");
    assert_eq!(summary["end"], "count", "{summary}");

    let acks = AckRecord::read(&record);
    assert_eq!(acks.acked.len() + acks.refused.len(), COUNT, "{acks:?}");
    // The store kept taking instances after the loss (two copies need two
    // of the three servers).
    assert!(acks.acked.len() > KILL_AFTER, "{acks:?}");
    let acked: BTreeSet<String> = acks.acked.iter().cloned().collect();
    assert_eq!(
        acked.len(),
        acks.acked.len(),
        "an instance acknowledged twice"
    );
    assert!(acked.iter().all(|sop| sop.len() >= 62), "{acked:?}");

    // B received nothing: it finds the study in the store. A answers from
    // its own index. Both answers hold every acknowledged instance, each
    // downloads byte-exact, and nothing they hand out was never sent.
    let sent: BTreeSet<String> = common::files_under(&out)
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    // A acknowledged from its journal: B sees what A uploaded, so first
    // A's backlog drains (through the degraded store).
    s3::wait_until("A's upload backlog drained", || {
        let (status, health) = a.get_json("/healthz", None);
        status == 200 && health["upload_backlog"]["instances"] == 0
    });
    for (name, gw) in [("B", &b), ("A", &a)] {
        let answer = access(gw, &study);
        let urls = urls_by_sop(&answer);
        let listed: BTreeSet<String> = urls.keys().cloned().collect();
        let missing: Vec<&String> = acked.difference(&listed).collect();
        assert!(missing.is_empty(), "{name} lacks acknowledged {missing:?}");
        assert!(listed.is_subset(&sent), "{name} lists unsent instances");
        let manifest: usize = answer["manifest"]["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sops"].as_array().unwrap().len())
            .sum();
        assert_eq!(manifest, urls.len(), "{name}: {answer}");
        for sop in &acked {
            let got = download(&urls[sop]);
            assert!(
                common::dataset_bytes_of(&got)
                    == common::dataset_bytes(&out.join(format!("{sop}.dcm"))),
                "{name}: {sop} differs from what was sent"
            );
        }
    }
    cluster.assert_running();
}
