//! `kill -9` while several senders are storing: everything answered 0x0000
//! before the kill is listed and byte-exact after a restart, nothing partial
//! is left, and the spool is clean.
//!
//! SIGKILL ends the process but not the kernel: its page cache survives, so
//! this proves the order of the gateway's steps (acknowledge only after the
//! rename into the store and the index commit) and their atomicity, not that
//! the fsyncs are made: fsync_order.rs checks those, and RELIABILITY.md says
//! what neither proves.
//!
//! The moment of each kill is random: after a number of acknowledgements
//! drawn from a seeded RNG, plus a random delay of up to a few milliseconds,
//! so the other senders are caught anywhere in a transfer or a commit.
//! Nothing asserts timing. The seed is printed; `GATEWAY_CRASH_SEED=N`
//! replays a run's choices (not its interleaving).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{self, AckRecord, Gateway};

/// Concurrent senders (one pynetdicom process and association each).
const SENDERS: usize = 3;
/// Kill/restart cycles on one data directory.
const CYCLES: u64 = 5;
/// The kill comes after 1..=this many acknowledgements (all senders).
const MAX_ACKS_BEFORE_KILL: u64 = 60;
/// ... plus a delay of 0..this many microseconds.
const MAX_EXTRA_DELAY_US: u64 = 20_000;
/// A bound against hangs (a sender that neither acknowledges nor ends).
const PEER_WAIT: Duration = Duration::from_secs(60);

/// splitmix64: a tiny seeded generator, so the test needs no crate for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform enough in `lo..=hi` for choosing moments.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("GATEWAY_CRASH_SEED") {
        Ok(s) => s.parse().expect("GATEWAY_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Everything sent and acknowledged so far, over all cycles.
#[derive(Default)]
struct Ledger {
    /// SOP Instance UID → the file that was sent.
    sent: BTreeMap<String, PathBuf>,
    /// SOP Instance UIDs answered 0x0000.
    acked: Vec<String>,
    studies: Vec<String>,
}

enum Event {
    Line(usize, String),
    Closed,
}

/// Starts the senders of one cycle, kills the gateway once all are associated
/// and `kill_after` acknowledgements were seen since (plus `delay`), and waits
/// for the senders to notice. Returns their record files.
fn storing_then_kill(
    gw: &mut Gateway,
    work: &Path,
    study: &str,
    seed: u64,
    kill_after: u64,
    delay: Duration,
) -> Vec<(PathBuf, PathBuf)> {
    let (tx, rx) = mpsc::channel();
    let mut peers: Vec<(Child, PathBuf, PathBuf)> = Vec::new();
    for i in 0..SENDERS {
        let out = work.join(format!("{study}.{i}"));
        let record = work.join(format!("{study}.{i}.acks"));
        let mut child = common::spawn_ack_sender(
            gw,
            &out,
            &record,
            &[
                "--study",
                study,
                "--uid-root",
                &format!("{study}.{}", i + 1),
                "--seed",
                &seed.wrapping_add(i as u64).to_string(),
                "--min-kib",
                "1",
                "--max-kib",
                "256",
                // pynetdicom sometimes misses the connection's end while it
                // sends and waits for its DIMSE timeout; keep that short.
                "--timeout",
                "10",
            ],
        );
        let stdout = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(Event::Line(i, line));
            }
            let _ = tx.send(Event::Closed);
        });
        peers.push((child, out, record));
    }
    drop(tx);

    let (mut associated, mut acks, mut open, mut killed) = (0, 0u64, SENDERS, false);
    let mut summaries = vec![String::new(); SENDERS];
    while open > 0 {
        match rx.recv_timeout(PEER_WAIT) {
            Ok(Event::Line(i, line)) => {
                if line == "associated" {
                    associated += 1;
                } else if line.starts_with("ack ") && associated == SENDERS {
                    acks += 1;
                } else if line.starts_with('{') {
                    summaries[i] = line;
                }
                if !killed && acks >= kill_after {
                    // Not a synchronisation: the random delay only moves the
                    // kill to some other point of the other transfers.
                    std::thread::sleep(delay);
                    gw.kill9();
                    killed = true;
                }
            }
            Ok(Event::Closed) => open -= 1,
            Err(e) => panic!("senders silent for {PEER_WAIT:?} ({e}); {acks} acks seen"),
        }
    }
    let mut files = Vec::new();
    for (mut child, out, record) in peers {
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "ack_sender.py failed: {stderr}");
        files.push((out, record));
    }
    assert!(
        killed,
        "every sender ended before {kill_after} acks ({acks}): {summaries:?}"
    );
    for s in &summaries {
        assert!(s.contains("\"end\": \"association\""), "{summaries:?}");
    }
    files
}

/// Everything acknowledged is listed; everything listed, and every object
/// file in the store, is byte for byte what was sent; the spool is empty.
/// Returns (listed, object files that no index entry names).
fn verify(gw: &Gateway, ledger: &Ledger, context: &str) -> (usize, usize) {
    assert!(
        gw.spool_files().is_empty(),
        "{context}: spool leftovers after the restart: {:?}",
        gw.spool_files()
    );
    let mut listed: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for study in &ledger.studies {
        let body = gw.study(study);
        for series in body["series"].as_array().unwrap() {
            for inst in series["instances"].as_array().unwrap() {
                listed.insert(
                    inst["sopInstanceUid"].as_str().unwrap().to_owned(),
                    (
                        inst["objectKey"].as_str().unwrap().to_owned(),
                        inst["size"].as_u64().unwrap(),
                    ),
                );
            }
        }
    }
    let lost: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|sop| !listed.contains_key(*sop))
        .collect();
    assert!(
        lost.is_empty(),
        "{context}: {} of {} acknowledged instances are not listed: {lost:?}",
        lost.len(),
        ledger.acked.len()
    );
    for (sop, (key, size)) in &listed {
        let sent = ledger
            .sent
            .get(sop)
            .unwrap_or_else(|| panic!("{context}: listed {sop} was never sent"));
        let stored = gw.objects().join(key);
        let len = std::fs::metadata(&stored)
            .unwrap_or_else(|e| panic!("{context}: listed {sop}: {}: {e}", stored.display()))
            .len();
        assert_eq!(len, *size, "{context}: {sop}: size in the index");
        assert!(
            common::dataset_bytes(&stored) == common::dataset_bytes(sent),
            "{context}: {sop}: stored data set differs from the one sent"
        );
    }
    // Objects placed by a commit the kill interrupted are not listed, but
    // must be complete: never a torn file under a final name.
    let mut unlisted = 0;
    for object in gw.object_files() {
        let sop = object.file_stem().unwrap().to_str().unwrap().to_owned();
        let sent = ledger
            .sent
            .get(&sop)
            .unwrap_or_else(|| panic!("{context}: unexpected object {}", object.display()));
        assert!(
            common::dataset_bytes(&object) == common::dataset_bytes(sent),
            "{context}: {} is not the instance that was sent",
            object.display()
        );
        unlisted += usize::from(!listed.contains_key(&sop));
    }
    (listed.len(), unlisted)
}

#[test]
fn every_instance_acknowledged_before_kill_9_is_listed_and_byte_exact() {
    let seed = seed();
    eprintln!("crash test seed {seed} (GATEWAY_CRASH_SEED={seed} replays its choices)");
    let mut rng = Rng(seed);
    let work = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start();
    let mut ledger = Ledger::default();
    // UIDs stay unique across runs of the test and under 64 characters.
    let root = format!("2.25.{}", seed >> 8);

    for cycle in 0..CYCLES {
        let kill_after = rng.range(1, MAX_ACKS_BEFORE_KILL);
        let delay = Duration::from_micros(rng.range(0, MAX_EXTRA_DELAY_US));
        let study = format!("{root}.{}", cycle + 1);
        let files = storing_then_kill(&mut gw, work.path(), &study, rng.next(), kill_after, delay);

        for (out, record) in &files {
            for file in common::files_under(out) {
                let sop = file.file_stem().unwrap().to_str().unwrap().to_owned();
                ledger.sent.insert(sop, file);
            }
            let record = AckRecord::read(record);
            assert!(record.refused.is_empty(), "refused: {:?}", record.refused);
            ledger.acked.extend(record.acked);
        }
        ledger.studies.push(study);

        gw.restart();
        let context =
            format!("seed {seed}, cycle {cycle} (kill after {kill_after} acks + {delay:?})");
        let (listed, unlisted) = verify(&gw, &ledger, &context);
        eprintln!(
            "{context}: {} acknowledged so far, {listed} listed, {unlisted} complete but unlisted objects",
            ledger.acked.len()
        );
    }
    assert!(ledger.acked.len() as u64 >= CYCLES);
    // The index is still healthy enough for a clean shutdown.
    assert!(gw.stop().success());
}
