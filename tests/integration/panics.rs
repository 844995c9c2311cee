//! A bug met by one instance fails that instance, nothing else: a panic
//! while its header is read answers 0xC000 (a sender does not retry it for
//! ever), a panic in a group commit fails that batch with 0xA700, and the
//! association and the gateway go on.

use std::path::PathBuf;

use crate::common::{self, Gateway, Opts};

fn two_instances() -> [PathBuf; 2] {
    ["study1/series1/ct1.dcm", "study1/series1/ct2.dcm"].map(|f| common::fixtures_dir().join(f))
}

/// Fails a test that needs the failpoints compiled in when they are not.
#[allow(clippy::assertions_on_constants)]
pub fn require_failpoints() {
    assert!(
        cfg!(feature = "failpoints"),
        "needs the failpoints: cargo test --features failpoints (scripts/test.sh does)"
    );
}

fn statuses_with(failpoint: &str) -> (Gateway, Vec<Option<u64>>) {
    statuses_with_opts(Opts::default(), failpoint)
}

fn statuses_with_opts(opts: Opts, failpoint: &str) -> (Gateway, Vec<Option<u64>>) {
    require_failpoints();
    let gw = Gateway::start_with(opts.env("FAILPOINTS", failpoint));
    let [a, b] = two_instances();
    // One association, the two instances one after the other.
    let answer = common::pynet(&gw, &["store", a.to_str().unwrap(), b.to_str().unwrap()]);
    let statuses = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64())
        .collect();
    (gw, statuses)
}

#[test]
fn a_panic_reading_a_header_fails_that_instance_with_c000_only() {
    let (gw, statuses) = statuses_with("ingest::describe=1*panic");
    assert_eq!(statuses, [Some(0xC000), Some(0)]);
    gw.wait_for_log("internal error while reading its header");
    // Still serving, and the refused instance can be sent again.
    let [a, _] = two_instances();
    common::assert_ok(
        &common::storescu(&gw, &[], &[&a]),
        "storescu after the panic",
    );
    let study = common::fixture("study1/")["study"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(gw.study(&study)["instanceCount"], 2);
}

#[test]
fn a_panic_in_a_group_commit_fails_its_batch_and_the_next_one_proceeds() {
    // The committer is the path without the journal.
    let (gw, statuses) = statuses_with_opts(
        Opts::default().args(&["--journal", "false"]),
        "commit::batch=1*panic",
    );
    assert_eq!(statuses, [Some(0xA700), Some(0)]);
    gw.wait_for_log("commit panicked; its batch is refused");
    let study = common::fixture("study1/")["study"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(gw.study(&study)["instanceCount"], 1);
    assert!(gw.spool_files().is_empty(), "{:?}", gw.spool_files());
}

/// A panic while a journal record is applied, after its placement and
/// before its index entry: the object changed and only a replay can finish
/// the record, so that instance is refused, the journal stops (the next
/// instance is refused too, before anything of it is written) and
/// `/healthz` answers 503. After a restart the replay lists the first
/// instance, the second stores, and the gateway is healthy again.
#[test]
fn a_panic_applying_a_journal_record_stops_the_journal_until_a_restart_replays_it() {
    let (mut gw, statuses) = statuses_with("journal::index=1*panic");
    assert_eq!(statuses, [Some(0xA700), Some(0xA700)]);
    gw.wait_for_log("ingest journal stopped");
    let (status, health) = gw.get_json("/healthz", None);
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "failing", "{health}");
    let study = common::fixture("study1/")["study"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(gw.spool_files().is_empty(), "{:?}", gw.spool_files());
    gw.kill9();
    gw.restart_without_env("FAILPOINTS");
    assert_eq!(
        gw.study(&study)["instanceCount"],
        1,
        "the replay lists the first"
    );
    let [_, second] = two_instances();
    common::assert_ok(&common::storescu(&gw, &[], &[second.as_path()]), "storescu");
    assert_eq!(gw.study(&study)["instanceCount"], 2);
    let (status, health) = gw.get_json("/healthz", None);
    assert_eq!(status, 200, "{health}");
}
