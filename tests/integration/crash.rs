//! The kill -9 soak: `kill -9` while several senders are storing, many
//! times over on one data directory; after each restart everything answered
//! 0x0000 before any kill is listed and byte-exact, nothing partial is left,
//! and the spool is clean. It runs in three variants ([`Variant`]): the local
//! store on the default path, the local store acknowledged from the ingest
//! journal, and an S3 store (SeaweedFS).
//!
//! SIGKILL ends the process but not the kernel: its page cache survives, so
//! this proves the order of the gateway's steps (acknowledge only after the
//! instance is durable by the variant's rule: in the store and the index, or
//! in the journal) and their atomicity, not that the fsyncs are made:
//! fsync_order.rs checks those, and RELIABILITY.md says what neither proves.
//!
//! The moment of each kill is random: after a number of acknowledgements
//! drawn from a seeded RNG, plus a random delay of up to a few milliseconds,
//! so the other senders are caught anywhere in a transfer or a commit.
//! Nothing asserts timing. The seed is printed; `GATEWAY_CRASH_SEED=N`
//! replays a run's choices (not its interleaving).

mod check;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::s3::S3Server;
use crate::common::{self, AckRecord, Gateway, Opts};

/// Concurrent senders (one pynetdicom process and association each).
const SENDERS: usize = 3;
/// The kill comes after 1..=this many acknowledgements (all senders).
const MAX_ACKS_BEFORE_KILL: u64 = 60;
/// ... plus a delay of 0..this many microseconds.
const MAX_EXTRA_DELAY_US: u64 = 20_000;
/// A bound against hangs (a sender that neither acknowledges nor ends).
const PEER_WAIT: Duration = Duration::from_secs(60);
/// Where in the bucket the S3 variant's gateway keeps its objects.
const S3_PREFIX: &str = "soak";

/// One soak: which store, which gateway flags, how many cycles.
#[derive(Clone, Copy, Debug)]
enum Variant {
    /// The local store without the journal (`--journal false`: the chain
    /// of syncs per instance).
    LocalDefault,
    /// The local store, acknowledged from the ingest journal (explicitly on,
    /// whatever the default becomes).
    LocalJournal,
    /// An S3 store (SeaweedFS on loopback), acknowledged from the journal
    /// (`--storage-ack journal`): uploads follow the answers.
    S3,
    /// An S3 store, acknowledged once the store confirmed the upload.
    S3Stored,
}

impl Variant {
    /// The gateway flags of each variant, all in this one place (the S3
    /// variant's store flags come from `S3Server::gateway_opts`). The S3
    /// acknowledgement mode is one more pair here, e.g.
    /// `&["--storage-ack", "journal"]`: the checks read back what the
    /// gateway serves and wait for the bucket to hold every listed
    /// instance, so they hold for either mode.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::LocalDefault => &["--journal", "false"],
            Variant::LocalJournal => &["--journal", "true"],
            Variant::S3 => &["--storage-ack", "journal"],
            Variant::S3Stored => &["--storage-ack", "stored"],
        }
    }

    /// Kill/restart cycles: each takes about a second locally and two to
    /// four with S3 (SeaweedFS and downloads through the gateway), so a
    /// variant takes 35-70 s alone on this machine (2 shared cores, under
    /// the load of other builds).
    fn cycles(self) -> u64 {
        match self {
            Variant::LocalDefault | Variant::LocalJournal => 20,
            Variant::S3 | Variant::S3Stored => 15,
        }
    }

    /// A log line of every gateway of this variant that shows its flags took
    /// effect (`None`: nothing to show).
    fn started_line(self) -> Option<&'static str> {
        match self {
            Variant::LocalDefault => None,
            Variant::LocalJournal | Variant::S3 => Some("ingest journal open"),
            Variant::S3Stored => Some("object store reachable and writable"),
        }
    }
}

/// Where a soak's gateway keeps its objects.
enum Store {
    Local,
    S3(Box<S3Server>),
}

impl Store {
    fn for_variant(variant: Variant) -> Store {
        match variant {
            Variant::S3 | Variant::S3Stored => Store::S3(Box::new(S3Server::start())),
            Variant::LocalDefault | Variant::LocalJournal => Store::Local,
        }
    }

    /// The options of a gateway on this store with `variant`'s flags.
    fn gateway_opts(&self, variant: Variant) -> Opts {
        let base = match self {
            Store::Local => Opts::default(),
            Store::S3(s3) => s3.gateway_opts(S3_PREFIX),
        };
        variant
            .flags()
            .iter()
            .fold(base, |opts, flag| opts.arg(flag))
    }

    /// The checks after a restart (`check.rs`), byte for byte for
    /// `studies`: (listed, complete but unlisted objects of `studies`).
    fn check(
        &self,
        gw: &Gateway,
        ledger: &Ledger,
        studies: &[&str],
        context: &str,
    ) -> (usize, usize) {
        let studies = studies.iter().copied().collect();
        match self {
            Store::Local => check::local(gw, ledger, &studies, context),
            Store::S3(s3) => check::s3(gw, s3, S3_PREFIX, ledger, &studies, context),
        }
    }
}

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
pub struct Ledger {
    /// SOP Instance UID → the file that was sent.
    pub sent: BTreeMap<String, PathBuf>,
    /// SOP Instance UIDs answered 0x0000.
    pub acked: Vec<String>,
    pub studies: Vec<String>,
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

/// The soak: `variant.cycles()` kill/restart cycles on one data directory
/// (and, for S3, one bucket), checked after every restart.
fn soak(variant: Variant) {
    let seed = seed();
    eprintln!(
        "{variant:?} soak seed {seed} (GATEWAY_CRASH_SEED={seed} replays its choices), {} cycles",
        variant.cycles()
    );
    let mut rng = Rng(seed);
    let work = tempfile::tempdir().unwrap();
    let store = Store::for_variant(variant);
    let mut gw = Gateway::start_with(store.gateway_opts(variant));
    let mut ledger = Ledger::default();
    // UIDs stay unique across runs of the test and under 64 characters.
    let root = format!("2.25.{}", seed >> 8);

    for cycle in 0..variant.cycles() {
        if let Some(line) = variant.started_line() {
            gw.wait_for_log(line);
        }
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
        ledger.studies.push(study.clone());

        gw.restart();
        let context = format!(
            "{variant:?} seed {seed}, cycle {cycle} (kill after {kill_after} acks + {delay:?})"
        );
        let (listed, unlisted) = store.check(&gw, &ledger, &[&study], &context);
        eprintln!(
            "{context}: {} acknowledged so far, {listed} listed, {unlisted} complete but unlisted objects",
            ledger.acked.len()
        );
    }
    assert!(ledger.acked.len() as u64 >= variant.cycles());
    // Every study byte for byte once more, after the last restart.
    let all: Vec<&str> = ledger.studies.iter().map(String::as_str).collect();
    let context = format!("{variant:?} seed {seed}, at the end");
    store.check(&gw, &ledger, &all, &context);
    // The index is still healthy enough for a clean shutdown.
    assert!(gw.stop().success());
}

/// The local store without the journal: 20 cycles.
#[test]
fn every_instance_acknowledged_before_kill_9_is_listed_and_byte_exact() {
    soak(Variant::LocalDefault);
}

/// The local store with `--journal true`: 20 cycles.
#[test]
fn journal_every_instance_acknowledged_before_kill_9_is_listed_and_byte_exact() {
    soak(Variant::LocalJournal);
}

/// An S3 store (SeaweedFS) acknowledged from the journal: 15 cycles; every
/// listed instance is served byte-exact by the gateway (from its pending
/// copy or the store) and, once the backlog drained, held byte-exact by
/// the bucket.
#[test]
fn s3_every_instance_acknowledged_before_kill_9_is_listed_and_byte_exact() {
    soak(Variant::S3);
}

/// The same with `--storage-ack stored`: acknowledged after the upload.
#[test]
fn s3_stored_every_instance_acknowledged_before_kill_9_is_listed_and_byte_exact() {
    soak(Variant::S3Stored);
}
