//! `study.stable`: bursts, versions, restarts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::support::*;
use crate::common;

/// Writes copies of `fixture` with new SOP Instance UIDs (same study and
/// series) into `dir`: instances the gateway has not seen.
fn new_instances(dir: &Path, fixture: &str, n: usize) -> Vec<PathBuf> {
    let src = fixture_path(&common::fixture(fixture));
    let out: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("new{i}.dcm"))).collect();
    let mut args = vec![src.to_str().unwrap().to_owned()];
    args.extend(out.iter().map(|p| p.to_str().unwrap().to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::pydicom(
        "import sys, pydicom\n\
         from pydicom.uid import generate_uid\n\
         for out in sys.argv[2:]:\n\
         \x20   ds = pydicom.dcmread(sys.argv[1])\n\
         \x20   uid = generate_uid(prefix='1.2.826.0.1.3680043.10.1234.77.')\n\
         \x20   ds.SOPInstanceUID = uid\n\
         \x20   ds.file_meta.MediaStorageSOPInstanceUID = uid\n\
         \x20   ds.save_as(out)\n",
        &args,
    );
    out
}

/// A study in bursts further apart than `stable_after`: `study.received`
/// once, `study.stable` once per burst with versions 1, 2, 3, the third
/// with a restart inside its window.
#[test]
fn two_bursts_fire_stable_twice_with_increasing_versions() {
    let (mut gw, port, id, secret) = stable_subscription();
    let rx = Receiver::start(&[&secret], port, 204);

    let study = send(
        &gw,
        &[
            "study1/series1/ct1",
            "study1/series1/ct2",
            "study1/series1/ct3",
        ],
    );
    let records = wait_for_event(&rx, "study.stable", &study, 1);
    let first = of_study(&records, "study.stable", &study)[0].clone();
    assert_eq!(first["body"]["data"]["version"], 1, "{first}");
    assert_eq!(first["body"]["data"]["instanceCount"], 3, "{first}");

    // A pause longer than stable_after, then more of the same study.
    send(
        &gw,
        &[
            "study1/series2/ct1",
            "study1/series2/ct2",
            "study1/series2/ct3",
        ],
    );
    let records = wait_for_event(&rx, "study.stable", &study, 2);
    let stable = of_study(&records, "study.stable", &study);
    let second = stable.iter().find(|r| r["id"] != first["id"]).unwrap();
    assert_eq!(second["body"]["data"]["version"], 2, "{second}");
    assert_eq!(second["body"]["data"]["instanceCount"], 6, "{second}");
    assert_eq!(second["body"]["data"]["seriesCount"], 2, "{second}");
    assert_eq!(of_study(&records, "study.received", &study).len(), 1);

    // A third burst, and a restart inside the stable window: it fires once.
    let dir = tempfile::tempdir().unwrap();
    let more = new_instances(dir.path(), "study1/series1/ct1", 2);
    let more: Vec<&Path> = more.iter().map(PathBuf::as_path).collect();
    common::assert_ok(&common::storescu(&gw, &["-xe"], &more), "storescu burst 3");
    gw.restart();
    let records = wait_for_event(&rx, "study.stable", &study, 3);
    let third: Vec<&Value> = of_study(&records, "study.stable", &study)
        .into_iter()
        .filter(|r| r["body"]["data"]["version"] == 3)
        .collect();
    assert!(!third.is_empty(), "{records:?}");
    assert_eq!(third[0]["body"]["data"]["instanceCount"], 8, "{}", third[0]);

    // Barrier: a study received now goes stable after any timer the
    // restart could have set for the first one.
    let barrier = send(&gw, &["ts/implicit_le"]);
    wait_for_event(&rx, "study.stable", &barrier, 1);
    settled(&gw, &id, 6);
    let records = rx.records();
    let stable = of_study(&records, "study.stable", &study);
    assert_eq!(ids(&stable).len(), 3, "{records:?}");
    let versions: BTreeSet<u64> = stable
        .iter()
        .map(|r| r["body"]["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, BTreeSet::from([1, 2, 3]), "{records:?}");
    assert_eq!(
        ids(&of_study(&records, "study.received", &study)).len(),
        1,
        "{records:?}"
    );
    for r in &records {
        assert_eq!(r["verified_by"], json!([0]), "{r}");
    }
}

/// The stable timer lives in the index: a kill -9 inside the window loses
/// nothing and doubles nothing.
#[test]
fn a_stable_timer_survives_kill_9() {
    let (mut gw, port, id, secret) = stable_subscription();
    let rx = Receiver::start(&[&secret], port, 204);
    let study = send(&gw, &["study1/series1/ct1", "study1/series1/ct2"]);
    gw.kill9();
    gw.restart();
    wait_for_event(&rx, "study.stable", &study, 1);

    // Barrier: a study received now goes stable after any timer the
    // restart could have set for the first one.
    let barrier = send(&gw, &["ts/implicit_le"]);
    wait_for_event(&rx, "study.stable", &barrier, 1);
    settled(&gw, &id, 4);
    let records = rx.records();
    let stable = of_study(&records, "study.stable", &study);
    assert_eq!(ids(&stable).len(), 1, "{records:?}");
    assert_message(stable[0], "study.stable", json!([0]));
    assert_eq!(stable[0]["body"]["data"]["version"], 1, "{}", stable[0]);
    assert_eq!(
        stable[0]["body"]["data"]["instanceCount"], 2,
        "{}",
        stable[0]
    );
    assert_eq!(
        ids(&of_study(&records, "study.received", &study)).len(),
        1,
        "{records:?}"
    );
}
