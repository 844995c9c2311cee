//! Several gateways on one S3 store (SeaweedFS): a study split between them
//! is told stable once, by the gateway that received its last instance.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::support::*;
use crate::common::s3::{self, S3Server};
use crate::common::{self, Gateway};

const PREFIX: &str = "site-a/archive";

fn gateway(s3: &S3Server, stable_after: &str) -> Gateway {
    let mut opts = s3.gateway_opts(PREFIX);
    opts.args
        .extend(["--stable-after".to_owned(), stable_after.to_owned()]);
    let gw = Gateway::start_with(opts);
    gw.wait_for_log("object store reachable and writable");
    gw
}

/// Sends the fixtures named by `parts` in their 64-character-UID version
/// (keys of a real modality's length) in one association; their study.
fn send_long(gw: &Gateway, parts: &[&str]) -> String {
    let fixtures: Vec<Value> = parts.iter().map(|p| s3::fixture(p)).collect();
    let files: Vec<PathBuf> = fixtures.iter().map(s3::fixture_path).collect();
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    common::assert_ok(
        &common::storescu(gw, &common::storescu_flags(&fixtures[0]), &paths),
        &format!("storescu {parts:?}"),
    );
    fixtures[0]["study"].as_str().unwrap().to_owned()
}

/// A sends the first series, B the second one more than the gateways'
/// clock-skew allowance (2 s) later; B's own stable events for two other
/// studies are the clock that says so, so nothing sleeps. A's timer comes
/// due after B has the second series: A tells nothing, B tells the whole
/// study, once.
#[test]
fn a_study_split_between_gateways_is_told_stable_once_by_the_last() {
    let s3 = S3Server::start();
    let a = gateway(&s3, "8");
    let b = gateway(&s3, "2");
    let port = free_port();
    let events = ["study.received", "study.stable"];
    let (at_a, secret_a) = subscribe(&a, &hook_url(port), &events, false);
    let (at_b, secret_b) = subscribe(&b, &hook_url(port), &events, false);
    // Index 0 verifies what A sends, 1 what B sends.
    let rx = Receiver::start(&[&secret_a, &secret_b], port, 204);

    let study = send_long(
        &a,
        &[
            "study1/series1/ct1",
            "study1/series1/ct2",
            "study1/series1/ct3",
        ],
    );
    for clock in ["ts/implicit_le", "ts/rle_lossless"] {
        let other = send_long(&b, &[clock]);
        wait_for_event(&rx, "study.stable", &other, 1);
    }
    send_long(
        &b,
        &[
            "study1/series2/ct1",
            "study1/series2/ct2",
            "study1/series2/ct3",
        ],
    );

    a.wait_for_log("another gateway stored later instances of this study");
    let records = wait_for_event(&rx, "study.stable", &study, 1);
    settled(&a, &at_a, 1);
    settled(&b, &at_b, 6);
    let records_now = rx.records();
    assert_eq!(records_now.len(), records.len(), "{records_now:?}");

    let stable = of_study(&records, "study.stable", &study);
    assert_eq!(stable.len(), 1, "{records:?}");
    assert_message(stable[0], "study.stable", json!([1]));
    let data = &stable[0]["body"]["data"];
    assert_eq!(data["version"], 1, "{data}");
    assert_eq!(data["instanceCount"], 6, "the whole study: {data}");
    assert_eq!(data["seriesCount"], 2, "{data}");

    // Each gateway told the first instance it received, with its own id.
    let received = of_study(&records, "study.received", &study);
    let by: BTreeSet<String> = received
        .iter()
        .map(|r| r["verified_by"].to_string())
        .collect();
    assert_eq!(
        by,
        BTreeSet::from(["[0]".into(), "[1]".into()]),
        "{received:?}"
    );
    assert_eq!(ids(&received).len(), 2, "{received:?}");
}
