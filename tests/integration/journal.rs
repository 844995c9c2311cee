//! The ingest journal (issue 11, `--journal true`): instances acknowledged
//! after one journal sync are listed at once, survive a restart, and — the
//! process aborted at each failpoint between the record and the
//! checkpoint, then restarted — every acknowledged instance is listed and
//! byte-exact, and whatever is listed is exactly what was sent.
//!
//! A failpoint here aborts the process (like kill -9: the page cache
//! survives); what a power cut would lose is the fsync order's business.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::common::{self, AckRecord, Gateway, Opts};

/// Small segments and frequent checkpoints, so a short run crosses
/// segments, recycles them and checkpoints many times.
const CONFIG: &str =
    "[journal]\nenabled = true\nsegment_size_mib = 1\nsegments = 3\ncheckpoint_interval_ms = 20\n";

/// No checkpoint while the test runs: everything acknowledged is covered
/// by the journal alone when the process is killed. Every instance sent
/// here (at most 96 KiB) travels inline.
const NO_CHECKPOINT: &str = "[journal]\nenabled = true\nsegment_size_mib = 4\nsegments = 4\n\
                             checkpoint_interval_ms = 3600000\ninline_max_kib = 256\n";

fn journal_opts(work: &Path) -> Opts {
    opts_with(work, CONFIG)
}

fn opts_with(work: &Path, config_text: &str) -> Opts {
    let config = work.join("gateway.toml");
    std::fs::write(&config, config_text).unwrap();
    Opts::default()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("RUST_LOG", "info")
}

/// Sends up to `count` generated instances on one association until done
/// or the gateway dies; returns (SOP → file sent, acknowledged SOPs).
fn send(
    gw: &Gateway,
    work: &Path,
    study: &str,
    count: u32,
) -> (BTreeMap<String, PathBuf>, Vec<String>) {
    let out = work.join(study);
    let record = work.join(format!("{study}.acks"));
    let mut child = common::spawn_ack_sender(
        gw,
        &out,
        &record,
        &[
            "--study",
            study,
            "--uid-root",
            &format!("{study}.1"),
            "--seed",
            "11",
            "--count",
            &count.to_string(),
            "--min-kib",
            "1",
            "--max-kib",
            "96",
            "--timeout",
            "10",
        ],
    );
    let stdout = child.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "ack_sender.py failed: {stderr}");
    assert!(
        lines.last().is_some_and(|l| l.starts_with('{')),
        "{lines:?}"
    );
    let sent = common::files_under(&out)
        .into_iter()
        .map(|f| (f.file_stem().unwrap().to_str().unwrap().to_owned(), f))
        .collect();
    let acks = AckRecord::read(&record);
    assert!(acks.refused.is_empty(), "refused: {:?}", acks.refused);
    (sent, acks.acked)
}

/// Every acknowledged instance is listed; everything listed was sent and
/// is byte for byte what was sent. Returns how many are listed.
fn verify(
    gw: &Gateway,
    study: &str,
    sent: &BTreeMap<String, PathBuf>,
    acked: &[String],
    context: &str,
) -> usize {
    let (status, body) = gw.get_json(&format!("/api/studies/{study}"), None);
    let mut listed = BTreeMap::new();
    if status == 200 {
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
        assert_eq!(
            body["instanceCount"].as_u64().unwrap(),
            listed.len() as u64,
            "{context}: the study's count agrees with its instances"
        );
    }
    let lost: Vec<&String> = acked.iter().filter(|s| !listed.contains_key(*s)).collect();
    assert!(
        lost.is_empty(),
        "{context}: acknowledged but not listed: {lost:?}"
    );
    for (sop, (key, size)) in &listed {
        let file = sent
            .get(sop)
            .unwrap_or_else(|| panic!("{context}: listed {sop} was never sent"));
        let stored = gw.objects().join(key);
        assert_eq!(
            std::fs::metadata(&stored).unwrap().len(),
            *size,
            "{context}: {sop}: size in the index"
        );
        assert!(
            common::dataset_bytes(&stored) == common::dataset_bytes(file),
            "{context}: {sop}: stored data set differs from the one sent"
        );
    }
    assert!(
        gw.spool_files().is_empty(),
        "{context}: spool leftovers: {:?}",
        gw.spool_files()
    );
    listed.len()
}

#[test]
fn journal_acknowledges_lists_at_once_and_survives_restarts() {
    let work = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_with(journal_opts(work.path()));
    gw.wait_for_log("ingest journal open");
    let study = "2.25.1101";
    let (sent, acked) = send(&gw, work.path(), study, 60);
    assert_eq!(acked.len(), 60);
    // Listed at once: the answer came after the index write.
    assert_eq!(verify(&gw, study, &sent, &acked, "live"), 60);
    // 60 instances of up to 96 KiB cross the 1 MiB segments: some were
    // recycled, and the journal directory holds no more than `segments`.
    let segs = std::fs::read_dir(gw.data_view().join("journal"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count();
    assert!((1..=3).contains(&segs), "{segs} segment files");
    assert!(gw.stop().success());
    gw.restart();
    assert_eq!(
        verify(&gw, study, &sent, &acked, "after a clean restart"),
        60
    );
    gw.kill9();
    gw.restart();
    assert_eq!(
        verify(&gw, study, &sent, &acked, "after kill -9 at rest"),
        60
    );
    assert!(gw.stop().success());
}

/// Aborts at the `hits`-th pass of `failpoint` while one sender stores,
/// restarts (twice: replay must be idempotent) and checks.
fn crash_at(failpoint: &str, hits: u32) {
    crate::panics::require_failpoints();
    let work = tempfile::tempdir().unwrap();
    let opts =
        journal_opts(work.path()).env("FAILPOINTS", &format!("{failpoint}={hits}*off->return"));
    let mut gw = Gateway::start_with(opts);
    let study = "2.25.1102";
    let (sent, acked) = send(&gw, work.path(), study, 400);
    assert!(
        acked.len() < 400,
        "{failpoint}: the failpoint never fired ({} acknowledged)",
        acked.len()
    );
    assert!(
        !gw.wait_exit().success(),
        "{failpoint}: the process aborted"
    );
    // No instance is stored after the restarts, so the failpoint (counted
    // again in each new process) is not reached again.
    gw.restart();
    let first = verify(
        &gw,
        study,
        &sent,
        &acked,
        &format!("{failpoint}: after the restart"),
    );
    gw.kill9();
    gw.restart();
    let second = verify(
        &gw,
        study,
        &sent,
        &acked,
        &format!("{failpoint}: after a second restart"),
    );
    assert_eq!(first, second, "{failpoint}: replay is idempotent");
    eprintln!("{failpoint}: {} acknowledged, {first} listed", acked.len());
    assert!(gw.stop().success());
}

#[test]
fn crash_after_the_record_is_written_before_its_sync() {
    crash_at("journal::written", 5);
}

#[test]
fn crash_before_the_group_sync() {
    crash_at("journal::before_sync", 5);
}

#[test]
fn crash_after_the_group_sync() {
    crash_at("journal::synced", 5);
}

#[test]
fn crash_after_the_record_is_durable_before_placement() {
    crash_at("journal::durable", 5);
}

#[test]
fn crash_after_placement_before_indexing() {
    crash_at("journal::placed", 5);
}

/// Killed in the middle of an index write, outside a transaction: the
/// study's counts and the SOP's place on disk, the instance's own entry
/// not. The replay writes it again and counts the study again.
#[test]
fn crash_in_the_middle_of_an_index_write() {
    crash_at("index::instance_entry", 5);
}

#[test]
fn crash_after_indexing_before_the_answer() {
    crash_at("journal::indexed", 5);
}

#[test]
fn crash_at_the_start_of_a_checkpoint() {
    crash_at("checkpoint::start", 3);
}

#[test]
fn crash_after_the_checkpoint_synced_directories() {
    crash_at("checkpoint::dirs_synced", 3);
}

#[test]
fn crash_after_the_checkpoint_flushed_the_index() {
    crash_at("checkpoint::index_flushed", 3);
}

#[test]
fn crash_after_the_checkpoint_wrote_the_control_file() {
    crash_at("checkpoint::control_written", 3);
}

#[test]
fn crash_after_the_checkpoint_released_spool_files() {
    crash_at("checkpoint::released", 3);
}

/// A gateway with no checkpoint while it runs (NO_CHECKPOINT) that stored
/// `count` instances of `study` on one association, every one acknowledged,
/// then was killed with kill -9: its work directory, the gateway (stopped),
/// what was sent and what was acknowledged.
fn killed_after_acks(
    study: &str,
    count: u32,
) -> (
    tempfile::TempDir,
    Gateway,
    BTreeMap<String, PathBuf>,
    Vec<String>,
) {
    let work = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start_with(opts_with(work.path(), NO_CHECKPOINT));
    let (sent, acked) = send(&gw, work.path(), study, count);
    assert_eq!(acked.len(), count as usize);
    gw.kill9();
    (work, gw, sent, acked)
}

/// A power cut loses what was only in the page cache. Small instances are
/// acknowledged after their journal record alone, so their objects (and
/// spool files) may come back torn or empty: after a kill -9 with no
/// checkpoint since the start, every object file is cut to a third and its
/// tail zeroed, as a lost writeback would leave it, and the restart must
/// rebuild each acknowledged instance byte for byte from its record.
#[test]
fn objects_torn_by_a_power_cut_are_rebuilt_from_their_records() {
    let study = "2.25.1103";
    let (_work, mut gw, sent, acked) = killed_after_acks(study, 60);
    let objects = common::files_under(&gw.objects());
    let mut torn = 0;
    for file in objects
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "dcm"))
    {
        let len = std::fs::metadata(file).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.set_len(len / 3).unwrap();
        f.set_len(len).unwrap(); // the rest reads as zeros
        torn += 1;
    }
    assert_eq!(
        torn, 60,
        "every acknowledged instance has an object to tear"
    );
    gw.restart();
    let listed = verify(&gw, study, &sent, &acked, "after a simulated power cut");
    assert_eq!(listed, 60);
    assert!(gw.stop().success());
}

/// The process dies during recovery itself (after replaying, or after the
/// new checkpoint was written): the next start finishes the work, and a
/// third finds nothing left to do; every acknowledged instance is listed
/// and byte-exact each time.
fn crash_in_recovery(failpoint: &str) {
    crate::panics::require_failpoints();
    let study = "2.25.1104";
    let (_work, mut gw, sent, acked) = killed_after_acks(study, 50);
    let (status, log) = gw.run_to_exit(&[("FAILPOINTS", &format!("{failpoint}=return"))]);
    assert!(
        !status.success(),
        "{failpoint}: the recovery was not interrupted:\n{log}"
    );
    assert!(log.contains("journal scanned"), "{failpoint}: {log}");
    gw.restart();
    let first = verify(
        &gw,
        study,
        &sent,
        &acked,
        &format!("{failpoint}: after the next start"),
    );
    gw.kill9();
    gw.restart();
    let second = verify(
        &gw,
        study,
        &sent,
        &acked,
        &format!("{failpoint}: once more"),
    );
    assert_eq!((first, second), (50, 50));
    assert!(gw.stop().success());
}

#[test]
fn crash_during_recovery_after_the_replay() {
    crash_in_recovery("recover::replayed");
}

#[test]
fn crash_during_recovery_after_its_checkpoint() {
    crash_in_recovery("recover::checkpointed");
}

/// Turning the journal off after a crash drops nothing: the start replays
/// what the journal holds, retires it, and goes on without it.
#[test]
fn a_start_with_the_journal_off_replays_what_it_holds_first() {
    let study = "2.25.1105";
    let (_work, mut gw, sent, acked) = killed_after_acks(study, 30);
    gw.restart_with_args(&["--journal", "false"]);
    gw.wait_for_log("ingest journal replayed and retired");
    assert_eq!(
        verify(&gw, study, &sent, &acked, "journal off after a crash"),
        30
    );
    // Retired: the next start has nothing to replay.
    assert!(gw.stop().success());
    gw.restart();
    assert_eq!(verify(&gw, study, &sent, &acked, "once more"), 30);
    assert!(gw.stop().success());
}

/// Pages of `file` in the page cache, and its pages (`fincore`, which asks
/// the kernel with mincore).
pub(crate) fn cached_pages(file: &Path) -> (u64, u64) {
    let out = std::process::Command::new(common::require("/usr/bin/fincore"))
        .args(["--noheadings", "--output", "PAGES,SIZE", "--bytes"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let [resident, size] = fields[..] else {
        panic!("fincore printed {text:?}");
    };
    (resident, size.div_ceil(4096))
}

/// An instance synced in its spool file (above `journal.inline_max_kib`)
/// leaves the page cache once acknowledged, by default, so that ingest
/// does not push the machine's cache out; `storage.cache_objects = true`
/// keeps it.
#[test]
fn an_acknowledged_large_instance_leaves_the_page_cache_unless_kept() {
    for keep in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let big = work.path().join("big.dcm");
        common::generate_big(&big, 4);
        let config = format!("[storage]\ncache_objects = {keep}\n");
        let gw = Gateway::start_with(opts_with(work.path(), &config));
        gw.wait_for_log("ingest journal open");
        let out = common::storescu(&gw, &[], &[&big]);
        assert!(out.status.success(), "{out:?}");
        let objects = gw.object_files();
        assert_eq!(objects.len(), 1, "{objects:?}");
        let (resident, pages) = cached_pages(&objects[0]);
        assert!(pages > 1000, "{pages} pages");
        if keep {
            assert_eq!(resident, pages, "cache_objects = true");
        } else {
            // (The drop is advice: a page the kernel could not let go of
            // at that moment may stay.)
            assert!(resident * 100 < pages, "{resident} of {pages} pages cached");
        }
    }
}
