//! Forwarding to a scripted pynetdicom SCP (tests/peers/store_scp.py,
//! which binds 127.0.0.1 itself): which statuses are retried, which fail
//! the item, and that an association carries many instances.

use std::collections::BTreeSet;
use std::process::Command;

use super::{Dest, config, settled, start, store_as, wait_for};
use crate::common::{Opts, call, fixture_study};

/// `tests/peers/store_scp.py` on 127.0.0.1 with `args`: the process, its
/// port, and the log of its C-STOREs.
fn scripted_scp(args: &[&str]) -> (Killed, u16, tempfile::TempDir) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stores.log");
    let mut child = Command::new(crate::common::python())
        .arg(crate::common::repo().join("tests/peers/store_scp.py"))
        .args(["--log", log.to_str().unwrap()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("store_scp prints its port");
    (Killed(child), port, dir)
}

/// The scripted SCP's log: (association number, SOP, status).
fn stores(dir: &tempfile::TempDir) -> Vec<(u32, String, String)> {
    let text = std::fs::read_to_string(dir.path().join("stores.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].parse().unwrap(), f[1].to_owned(), f[2].to_owned())
        })
        .collect()
}

#[test]
fn statuses_decide_retry_or_failure_and_associations_carry_many_instances() {
    let study = fixture_study("study1/");
    let refused = study.sops[2].clone();
    let (scp, port, log) = scripted_scp(&["--busy", "1", "--refuse", &refused]);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        &[Dest {
            ae: "SCRIPTED",
            port,
            rule: "",
        }],
    );
    let gw = start(&cfg, Opts::default());
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);
    let d = wait_for(&gw, "SCRIPTED", "settled", |d| {
        settled(d) && d["sent"] == 5 && d["failedItems"] == 1
    });
    // The A700 answer was retried (a retry counted), the C000 one failed
    // with its status.
    assert!(d["retries"].as_u64() >= Some(1), "{d}");
    let (_, failed) = call(
        &gw,
        "GET",
        "/api/forward/SCRIPTED/items?state=failed",
        None,
        None,
    );
    let failed = failed["items"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["sopInstanceUid"], refused.as_str());
    assert_eq!(failed[0]["status"], 0xC000);
    assert!(failed[0]["lastError"].as_str().unwrap().contains("C000"));
    let log = stores(&log);
    let ok: BTreeSet<&String> = log
        .iter()
        .filter(|(_, _, s)| s == "0000")
        .map(|(_, sop, _)| sop)
        .collect();
    let expected: BTreeSet<&String> = study.sops.iter().filter(|s| **s != refused).collect();
    assert_eq!(ok, expected);
    assert_eq!(log.iter().filter(|(_, _, s)| s == "A700").count(), 1);
    assert_eq!(
        log.iter().filter(|(_, sop, _)| *sop == refused).count(),
        1,
        "no retry of C000"
    );
    // The first six went out on at most one association per lane, not
    // one per instance.
    let first_round: BTreeSet<u32> = log.iter().take(6).map(|(a, _, _)| *a).collect();
    assert!(first_round.len() <= 2, "{log:?}");
    drop(scp);
}

#[test]
fn a_destination_that_accepts_and_never_answers_is_marked_down_and_ingest_goes_on() {
    // A peer that takes the TCP connection and never says a word (a hung
    // PACS, a half-open firewall): every association attempt must end at
    // the time-out, not hold a lane for ever.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = std::sync::Arc::clone(&held);
        std::thread::spawn(move || {
            for socket in silent.incoming().flatten() {
                held.lock().unwrap().push(socket);
            }
        });
    }
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[dicom_nodes]]\nae_title = \"SILENT\"\nhost = \"127.0.0.1\"\nport = {port}\n\n\
             [[forward]]\ndestination = \"SILENT\"\n\n\
             [forwarding]\nretry_schedule = [\"1s\"]\ntimeout = 1\n"
        ),
    )
    .unwrap();
    let gw = start(&cfg, Opts::default());
    let study = fixture_study("study1/");
    // Ingest does not wait for forwarding.
    store_as(&gw, "DCMTKSCU", &["-xe"], &study.files);
    let d = wait_for(&gw, "SILENT", "down after time-outs", |d| {
        d["up"] == false && d["connectFailures"].as_u64() >= Some(2)
    });
    assert!(
        d["lastError"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{d}"
    );
    assert_eq!(d["pending"], 6, "nothing lost, nothing failed: {d}");
    assert_eq!(d["inFlight"], 0, "{d}");
    assert!(held.lock().unwrap().len() >= 2, "it did connect, and again");
    assert_eq!(gw.studies().len(), 1);
}

/// Kills a child process when dropped (also when a test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
