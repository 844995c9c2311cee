//! Real peers: DCMTK's echoscu/storescu and pynetdicom, with every transfer
//! syntax family; stored files opened by pydicom and dcmdump.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{self, Gateway};

fn path_of(f: &Value) -> PathBuf {
    common::fixtures_dir().join(f["file"].as_str().unwrap())
}

/// The instance record the API gives for a SOP Instance UID.
fn record(gw: &Gateway, study: &str, sop: &str) -> Value {
    gw.instance_record(study, sop)
}

fn stored_path(gw: &Gateway, rec: &Value) -> PathBuf {
    gw.objects().join(rec["objectKey"].as_str().unwrap())
}

fn dcmdump_ok(path: &Path) -> String {
    let out = Command::new(common::require("/usr/bin/dcmdump"))
        .arg(path)
        .output()
        .unwrap();
    common::assert_ok(&out, "dcmdump");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dcmtk_echoscu_is_answered_and_a_wrong_called_ae_is_rejected() {
    let gw = Gateway::start();
    common::assert_ok(&common::echoscu(&gw, "DICOMGW"), "echoscu");
    let wrong = common::echoscu(&gw, "SOMEONEELSE");
    assert!(
        !wrong.status.success(),
        "association to a foreign AE title accepted"
    );
}

#[test]
fn dcmtk_storescu_multi_series_study_is_indexed_with_its_tags() {
    let gw = Gateway::start();
    let study1: Vec<Value> = common::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .collect();
    let files: Vec<PathBuf> = study1.iter().map(path_of).collect();
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    common::assert_ok(&common::storescu(&gw, &["-xe"], &refs), "storescu");

    let uid = study1[0]["study"].as_str().unwrap();
    let studies = gw.studies();
    assert_eq!(studies.len(), 1);
    let study = gw.study(uid);
    assert_eq!(study["instanceCount"], 6);
    assert_eq!(study["patientName"], "Test^Patient");
    for field in [
        "patientId",
        "patientBirthDate",
        "patientSex",
        "studyDate",
        "accessionNumber",
        "institutionName",
    ] {
        assert!(study[field].is_string(), "{field} missing: {study}");
    }
    let series = study["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["seriesNumber"], 1);
    assert_eq!(series[1]["seriesNumber"], 2);
    for s in series {
        assert_eq!(s["modality"], "CT");
        assert_eq!(s["instanceCount"], 3);
        for inst in s["instances"].as_array().unwrap() {
            assert_eq!(inst["rows"], 64);
            assert_eq!(inst["columns"], 64);
            assert_eq!(inst["bitsAllocated"], 16);
            assert_eq!(inst["photometricInterpretation"], "MONOCHROME2");
            assert_eq!(inst["source"], "DCMTKSCU");
            let dump = dcmdump_ok(&stored_path(&gw, inst));
            assert!(
                dump.contains("DCMTKSCU"),
                "SourceApplicationEntityTitle in meta"
            );
        }
    }
    // Unknown study: 404 with a JSON error.
    let (status, body) = gw.get_json("/api/studies/1.2.3.4.5.6.7", None);
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}

#[test]
fn every_transfer_syntax_family_is_stored_as_received() {
    let gw = Gateway::start();
    let fixtures: Vec<Value> = common::fixtures()
        .into_iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("ts/"))
        .collect();
    assert!(fixtures.len() >= 11, "fixture set incomplete");
    for f in &fixtures {
        let path = path_of(f);
        let ts = f["transfer_syntax"].as_str().unwrap();
        if f["peer"] == "pynetdicom" {
            let answer = common::pynet(&gw, &["store", path.to_str().unwrap()]);
            assert_eq!(answer["results"][0]["status"], 0, "{}: {answer}", f["file"]);
        } else {
            let flags = common::storescu_flags(f);
            common::assert_ok(
                &common::storescu(&gw, &flags, &[&path]),
                f["file"].as_str().unwrap(),
            );
        }
        let rec = record(
            &gw,
            f["study"].as_str().unwrap(),
            f["sop_instance"].as_str().unwrap(),
        );
        assert_eq!(
            rec["transferSyntaxUid"], ts,
            "{} negotiated another syntax",
            f["file"]
        );
        let stored = stored_path(&gw, &rec);
        assert_eq!(common::meta_transfer_syntax(&stored), ts);
        dcmdump_ok(&stored);
        // DCMTK sends these syntaxes without re-encoding (checked against its
        // own storescp): the data set must be bit-exact, compressed pixel
        // data included.
        assert_eq!(
            common::dataset_bytes(&stored),
            common::dataset_bytes(&path),
            "{} not stored byte for byte",
            f["file"]
        );
    }
}

#[test]
fn pynetdicom_stores_byte_exact_and_pydicom_opens_the_result() {
    let gw = Gateway::start();
    assert_eq!(common::pynet(&gw, &["echo"])["status"], 0);
    let fixtures: Vec<Value> = common::fixtures()
        .into_iter()
        .filter(|f| {
            let name = f["file"].as_str().unwrap();
            name.starts_with("study1/")
                || name.starts_with("multiframe/")
                || name.starts_with("sr/")
        })
        .collect();
    let files: Vec<String> = fixtures
        .iter()
        .map(|f| path_of(f).to_str().unwrap().to_owned())
        .collect();
    let mut args = vec!["store"];
    args.extend(files.iter().map(String::as_str));
    let answer = common::pynet(&gw, &args);
    for r in answer["results"].as_array().unwrap() {
        assert_eq!(r["status"], 0, "{r}");
    }
    for f in &fixtures {
        let rec = record(
            &gw,
            f["study"].as_str().unwrap(),
            f["sop_instance"].as_str().unwrap(),
        );
        let stored = stored_path(&gw, &rec);
        assert_eq!(
            common::dataset_bytes(&stored),
            common::dataset_bytes(&path_of(f))
        );
        let check = common::pydicom(
            "import sys, pydicom\nd = pydicom.dcmread(sys.argv[1])\nprint(d.SOPInstanceUID, d.file_meta.SourceApplicationEntityTitle.strip())",
            &[stored.to_str().unwrap()],
        );
        assert_eq!(
            check.trim(),
            format!("{} PYSCU", f["sop_instance"].as_str().unwrap())
        );
    }
    // The SR has no pixel data and no geometry; the multi-frame has frames.
    let sr = common::fixture("sr/");
    let rec = record(
        &gw,
        sr["study"].as_str().unwrap(),
        sr["sop_instance"].as_str().unwrap(),
    );
    assert!(rec["rows"].is_null());
    let mf = common::fixture("multiframe/");
    let rec = record(
        &gw,
        mf["study"].as_str().unwrap(),
        mf["sop_instance"].as_str().unwrap(),
    );
    assert_eq!(rec["numberOfFrames"], 4);
}

#[test]
fn pynetdicom_c_find_is_refused_properly() {
    let gw = Gateway::start();
    let answer = common::pynet(&gw, &["find"]);
    // Study Root FIND is no storage class: the context is rejected at
    // negotiation; a FIND sent on a storage context gets 0x0211 (see dimse.rs).
    assert!(
        answer["rejected_context"] == true || answer["statuses"] == serde_json::json!([0x0211]),
        "{answer}"
    );
}

#[test]
fn the_same_instance_twice_is_one_instance() {
    let gw = Gateway::start();
    let f = common::fixture("study1/");
    let path = path_of(&f);
    common::assert_ok(
        &common::storescu(&gw, &["-xe"], &[&path, &path]),
        "storescu",
    );
    common::assert_ok(&common::storescu(&gw, &["-xe"], &[&path]), "storescu again");
    let study = gw.study(f["study"].as_str().unwrap());
    assert_eq!(study["instanceCount"], 1);
    assert_eq!(
        study["totalBytes"],
        std::fs::metadata(stored_path(
            &gw,
            &record(
                &gw,
                f["study"].as_str().unwrap(),
                f["sop_instance"].as_str().unwrap()
            )
        ))
        .unwrap()
        .len()
    );
    assert_eq!(gw.object_files().len(), 1);
    gw.wait_for_log("instance received again; replaced");
}

#[test]
fn calling_ae_and_peer_allow_lists_are_enforced() {
    let gw = Gateway::start_with(
        crate::common::Opts::default()
            .arg("--allowed-calling-aets")
            .arg("CT01,MR01"),
    );
    // DCMTKSCU is not on the list.
    let refused = common::echoscu(&gw, "DICOMGW");
    assert!(!refused.status.success());
    let out = Command::new(common::require("/usr/bin/echoscu"))
        .env("TCP_NODELAY", "1")
        .args(["-aet", "CT01", "-aec", "DICOMGW"])
        .arg(gw.dicom.ip().to_string())
        .arg(gw.dicom.port().to_string())
        .output()
        .unwrap();
    common::assert_ok(&out, "echoscu as CT01");

    // Only 10.9.9.9 may connect: loopback is turned away before negotiation.
    let gw = Gateway::start_with(
        crate::common::Opts::default()
            .arg("--allowed-peers")
            .arg("10.9.9.9"),
    );
    assert!(!common::echoscu(&gw, "DICOMGW").status.success());
    gw.wait_for_log("not in allowed_peers");
}
