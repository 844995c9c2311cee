//! Nothing acknowledged is destroyed by a later request: the duplicate
//! policy, and a replacement interrupted by a crash.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{self, Gateway, Opts};

/// Duplicate SOP Instance (PS3.7 C.4), the duplicate policy's refusal.
const DUPLICATE: u64 = 0x0111;

struct Original {
    file: PathBuf,
    study: String,
    sop: String,
}

fn original() -> Original {
    let f = common::fixture("study1/");
    Original {
        file: common::fixtures_dir().join(f["file"].as_str().unwrap()),
        study: f["study"].as_str().unwrap().to_owned(),
        sop: f["sop_instance"].as_str().unwrap().to_owned(),
    }
}

/// A copy of `from` with pydicom `edits` (statements on `ds`) applied.
fn variant(from: &Path, dir: &Path, name: &str, edits: &str) -> PathBuf {
    let to = dir.join(name);
    common::pydicom(
        &format!(
            "import sys, pydicom\nds = pydicom.dcmread(sys.argv[1])\n{edits}\nds.save_as(sys.argv[2])"
        ),
        &[from.to_str().unwrap(), to.to_str().unwrap()],
    );
    to
}

/// Sends `file` with pynetdicom; the status (None if it got none).
fn store(gw: &Gateway, file: &Path) -> Option<u64> {
    let answer = common::pynet(gw, &["store", file.to_str().unwrap()]);
    answer["results"][0]["status"].as_u64()
}

fn instance(gw: &Gateway, study: &str, sop: &str) -> Value {
    gw.instance_record(study, sop)
}

fn stored_dataset(gw: &Gateway, record: &Value) -> Vec<u8> {
    common::dataset_bytes(&gw.objects().join(record["objectKey"].as_str().unwrap()))
}

fn study_status(gw: &Gateway, study: &str) -> u16 {
    gw.get_json(&format!("/api/studies/{study}"), None).0
}

#[test]
fn a_sop_uid_under_another_patients_study_never_touches_the_first() {
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let other = variant(
        &o.file,
        dir.path(),
        "other.dcm",
        "ds.StudyInstanceUID = '2.25.4242'\nds.PatientID = 'SOMEONE-ELSE'",
    );
    assert_eq!(store(&gw, &other), Some(DUPLICATE));
    gw.wait_for_log("duplicate SOP Instance UID refused by the duplicate policy");
    let kept = instance(&gw, &o.study, &o.sop);
    assert_eq!(stored_dataset(&gw, &kept), common::dataset_bytes(&o.file));
    assert_eq!(study_status(&gw, "2.25.4242"), 404);

    // A re-send within the study replaces (the default policy).
    let corrected = variant(
        &o.file,
        dir.path(),
        "corrected.dcm",
        "ds.SeriesDescription = 'corrected by the modality'",
    );
    assert_eq!(store(&gw, &corrected), Some(0));
    let replaced = instance(&gw, &o.study, &o.sop);
    assert_eq!(
        stored_dataset(&gw, &replaced),
        common::dataset_bytes(&corrected)
    );
    assert_eq!(gw.study(&o.study)["instanceCount"], 1);
}

#[test]
fn reject_keeps_the_first_version_whatever_comes() {
    let gw = Gateway::start_with(Opts::default().arg("--duplicates").arg("reject"));
    let dir = tempfile::tempdir().unwrap();
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let again = variant(
        &o.file,
        dir.path(),
        "again.dcm",
        "ds.SeriesDescription = 'x'",
    );
    assert_eq!(store(&gw, &again), Some(DUPLICATE));
    let kept = instance(&gw, &o.study, &o.sop);
    assert_eq!(stored_dataset(&gw, &kept), common::dataset_bytes(&o.file));
}

#[test]
fn replace_moves_an_instance_to_the_study_it_is_sent_under() {
    let gw = Gateway::start_with(Opts::default().arg("--duplicates").arg("replace"));
    let dir = tempfile::tempdir().unwrap();
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let moved = variant(
        &o.file,
        dir.path(),
        "moved.dcm",
        "ds.StudyInstanceUID = '2.25.77'",
    );
    assert_eq!(store(&gw, &moved), Some(0));
    gw.wait_for_log("instance moved; old object removed");
    assert_eq!(study_status(&gw, &o.study), 404);
    let record = instance(&gw, "2.25.77", &o.sop);
    assert_eq!(stored_dataset(&gw, &record), common::dataset_bytes(&moved));
}

/// The second version overwrites the first in place; the process dies
/// before the index learns it. At the next start the index describes what
/// the store holds, not the bytes that are gone.
#[test]
fn a_replacement_interrupted_before_its_index_commit_is_repaired_at_start() {
    crate::panics::require_failpoints();
    let mut gw =
        Gateway::start_with(no_journal().env("FAILPOINTS", "commit::placed=1*off->return"));
    let dir = tempfile::tempdir().unwrap();
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let first = instance(&gw, &o.study, &o.sop);
    let bigger = bigger(&o, dir.path());
    assert_ne!(store(&gw, &bigger), Some(0), "acknowledged across a crash");
    assert!(
        !gw.wait_exit().success(),
        "the failpoint aborts the process"
    );
    let on_disk = gw.objects().join(first["objectKey"].as_str().unwrap());
    let disk_len = std::fs::metadata(&on_disk).unwrap().len();
    assert_ne!(
        disk_len,
        first["size"].as_u64().unwrap(),
        "the object was replaced"
    );

    gw.restart();
    gw.wait_for_log("described again from the store");
    let now = instance(&gw, &o.study, &o.sop);
    assert_eq!(now["size"].as_u64().unwrap(), disk_len);
    assert_eq!(stored_dataset(&gw, &now), common::dataset_bytes(&bigger));
    assert_eq!(gw.study(&o.study)["instanceCount"], 1);
    // And it serves on (the failpoint fired once; a store commits again).
    assert_eq!(store(&gw, &o.file), Some(0));
}

/// The same for a media file put again under its name: after the restart
/// the index gives the size of the bytes the store holds.
#[test]
fn a_media_replacement_interrupted_before_its_index_commit_is_repaired_at_start() {
    crate::panics::require_failpoints();
    // Commits: the instance, the first PUT, then the replacement aborts.
    let mut gw =
        Gateway::start_with(no_journal().env("FAILPOINTS", "commit::placed=2*off->return"));
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let url = gw.url(&format!("/api/studies/{}/media/report.pdf", o.study));
    let put = |body: Vec<u8>| {
        ureq::put(&url)
            .header("Content-Type", "application/pdf")
            .send(&body[..])
            .map(|r| r.status().as_u16())
    };
    assert_eq!(put(b"%PDF-1.4 first".to_vec()).ok(), Some(201));
    let second = format!("%PDF-1.4 {}", "second version ".repeat(100)).into_bytes();
    assert!(put(second.clone()).is_err(), "answered across a crash");
    assert!(
        !gw.wait_exit().success(),
        "the failpoint aborts the process"
    );
    let file = gw
        .objects()
        .join(format!("studies/{}/media/report.pdf", o.study));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        second,
        "the object was replaced"
    );

    gw.restart();
    gw.wait_for_log("described again from the store");
    let media = gw.study(&o.study)["media"].clone();
    let listed = media
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["fileName"] == "report.pdf")
        .unwrap_or_else(|| panic!("report.pdf not listed: {media}"))
        .clone();
    assert_eq!(listed["size"].as_u64().unwrap(), second.len() as u64);
}

/// A replacement whose index commit fails (the process lives on) has
/// already overwritten the object: it is refused (0xA700) and its entry is
/// described again at once, so the index never describes bytes that are
/// gone, not even until the next start.
#[test]
fn a_replacement_whose_commit_fails_is_described_again_at_once() {
    crate::panics::require_failpoints();
    refused_replacement_described_again(
        no_journal().env("FAILPOINTS", "commit::index=1*off->return"),
    );
}

/// Stores the original, then a bigger version that `opts` makes fail
/// after the overwrite: refused with 0xA700, and the entry described again
/// from the store at once (the new bytes, which the object holds).
/// Returns the gateway, the original, the bigger file (in the temporary
/// directory returned too) and the entry now.
fn refused_replacement_described_again(
    opts: Opts,
) -> (Gateway, Original, PathBuf, Value, tempfile::TempDir) {
    let gw = Gateway::start_with(opts);
    let dir = tempfile::tempdir().unwrap();
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let first = instance(&gw, &o.study, &o.sop);
    let bigger = bigger(&o, dir.path());
    assert_eq!(store(&gw, &bigger), Some(0xA700));
    gw.wait_for_log("described again from the store");
    let on_disk = gw.objects().join(first["objectKey"].as_str().unwrap());
    let now = instance(&gw, &o.study, &o.sop);
    assert_eq!(
        now["size"].as_u64().unwrap(),
        std::fs::metadata(&on_disk).unwrap().len()
    );
    assert_eq!(stored_dataset(&gw, &now), common::dataset_bytes(&bigger));
    (gw, o, bigger, now, dir)
}

/// The original with a much longer Study Description, in `dir`.
fn bigger(o: &Original, dir: &Path) -> PathBuf {
    variant(
        &o.file,
        dir,
        "bigger.dcm",
        "ds.StudyDescription = 'a much longer description ' * 40",
    )
}

/// The committer's failpoints are on the path without the journal.
fn no_journal() -> Opts {
    Opts::default().args(&["--journal", "false"])
}

/// With the journal: the replacement's record is durable before it
/// overwrites the object, and the process dies after the overwrite, before
/// the index entry. The restart replays the record: the index describes
/// the new bytes, which are the ones on disk.
#[test]
fn a_journaled_replacement_interrupted_before_its_index_entry_is_replayed() {
    crate::panics::require_failpoints();
    let mut gw =
        Gateway::start_with(Opts::default().env("FAILPOINTS", "journal::placed=1*off->return"));
    let dir = tempfile::tempdir().unwrap();
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let first = instance(&gw, &o.study, &o.sop);
    let bigger = bigger(&o, dir.path());
    assert_ne!(store(&gw, &bigger), Some(0), "acknowledged across a crash");
    assert!(
        !gw.wait_exit().success(),
        "the failpoint aborts the process"
    );
    gw.restart();
    let now = instance(&gw, &o.study, &o.sop);
    assert_ne!(now["size"], first["size"]);
    let on_disk = gw.objects().join(now["objectKey"].as_str().unwrap());
    assert_eq!(
        now["size"].as_u64().unwrap(),
        std::fs::metadata(&on_disk).unwrap().len()
    );
    assert_eq!(stored_dataset(&gw, &now), common::dataset_bytes(&bigger));
    assert_eq!(gw.study(&o.study)["instanceCount"], 1);
    assert_eq!(store(&gw, &o.file), Some(0));
}

/// With the journal, a replacement whose index entry fails after the
/// overwrite (the process lives on) is refused and the journal stops; the
/// entry is described again from the store at once, and after a restart
/// the replay of its record finishes it: the same bytes, indexed once.
#[test]
fn a_journaled_replacement_whose_index_entry_fails_is_described_again_at_once() {
    crate::panics::require_failpoints();
    let (mut gw, o, bigger, now, _dir) = refused_replacement_described_again(
        Opts::default().env("FAILPOINTS", "journal::index=1*off->return"),
    );
    gw.kill9();
    gw.restart_without_env("FAILPOINTS");
    let replayed = instance(&gw, &o.study, &o.sop);
    assert_eq!(replayed["size"], now["size"]);
    assert_eq!(
        stored_dataset(&gw, &replayed),
        common::dataset_bytes(&bigger)
    );
    assert_eq!(gw.study(&o.study)["instanceCount"], 1);
}

/// Records superseded before a checkpoint: an instance re-sent with other
/// bytes (a replacement in place), then moved to another study, each by
/// reference (the spool file renamed onto the key, so the earlier record's
/// spool file and object are gone), then kill -9 with no checkpoint since.
/// The restart replays only the last record of the instance; it lists the
/// instance once, under its last study, with its last bytes.
#[test]
fn superseded_journal_records_are_not_replayed() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("gateway.toml");
    std::fs::write(
        &config,
        "[journal]\nsegment_size_mib = 4\nsegments = 4\ncheckpoint_interval_ms = 3600000\ninline_max_kib = 0\n",
    )
    .unwrap();
    let mut gw = Gateway::start_with(
        Opts::default()
            .args(&["--config", config.to_str().unwrap()])
            .args(&["--duplicates", "replace"]),
    );
    let dir = tempfile::tempdir().unwrap();
    let o = original();
    assert_eq!(store(&gw, &o.file), Some(0));
    let bigger = bigger(&o, dir.path());
    assert_eq!(store(&gw, &bigger), Some(0));
    let moved = variant(
        &bigger,
        dir.path(),
        "moved.dcm",
        "ds.StudyInstanceUID = '2.25.777000111'",
    );
    assert_eq!(store(&gw, &moved), Some(0));
    gw.kill9();
    gw.restart();
    gw.wait_for_log("superseded=2");
    assert_eq!(study_status(&gw, &o.study), 404, "the first study is gone");
    let now = instance(&gw, "2.25.777000111", &o.sop);
    assert_eq!(stored_dataset(&gw, &now), common::dataset_bytes(&moved));
    assert_eq!(gw.study("2.25.777000111")["instanceCount"], 1);
    assert_eq!(gw.object_files().len(), 1, "{:?}", gw.object_files());
}
