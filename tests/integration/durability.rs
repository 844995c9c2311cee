//! Acknowledged means durable; failures leave nothing half-done.

use std::net::TcpStream;
use std::path::PathBuf;

use crate::common::dul::{CT_IMAGE_STORAGE, EXPLICIT_VR_LE, Scu};
use crate::common::{self, Gateway, Opts};

fn study1_files() -> Vec<PathBuf> {
    common::fixtures()
        .iter()
        .filter(|f| f["file"].as_str().unwrap().starts_with("study1/"))
        .map(|f| common::fixtures_dir().join(f["file"].as_str().unwrap()))
        .collect()
}

fn study1_uid() -> String {
    common::fixture("study1/")["study"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn acknowledged_instances_survive_kill_9() {
    let mut gw = Gateway::start();
    let files = study1_files();
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    let out = common::storescu(&gw, &[], &refs);
    common::assert_ok(&out, "storescu");
    // storescu has exited: every instance was acknowledged. No grace at all.
    gw.kill9();
    gw.restart();
    let study = gw.study(&study1_uid());
    assert_eq!(study["instanceCount"], files.len());
    let mut seen = 0;
    for series in study["series"].as_array().unwrap() {
        for inst in series["instances"].as_array().unwrap() {
            let path = gw.objects().join(inst["objectKey"].as_str().unwrap());
            let len = std::fs::metadata(&path).expect("object present").len();
            assert_eq!(len, inst["size"].as_u64().unwrap());
            seen += 1;
        }
    }
    assert_eq!(seen, files.len());
}

#[test]
fn a_storage_failure_is_a700_and_the_gateway_keeps_serving() {
    let gw = Gateway::start();
    let files = study1_files();
    // Make the object tree unusable: `studies` is a file, so no study
    // directory can be created under it (ENOTDIR, even for root).
    std::fs::create_dir_all(gw.objects()).unwrap();
    let blocker = gw.objects().join("studies");
    std::fs::write(&blocker, b"not a directory").unwrap();

    let (sop, dataset) = {
        let f = common::fixture("study1/");
        let p = common::fixtures_dir().join(f["file"].as_str().unwrap());
        (
            f["sop_instance"].as_str().unwrap().to_owned(),
            common::dataset_bytes(&p),
        )
    };
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let rsp = scu.store(CT_IMAGE_STORAGE, &sop, &dataset, 16 * 1024);
    assert_eq!(rsp.status, 0xA700, "{rsp:?}");
    assert!(gw.spool_files().is_empty());
    assert!(gw.studies().is_empty(), "nothing indexed");

    // The disk is back: the same association stores again.
    std::fs::remove_file(&blocker).unwrap();
    let rsp = scu.store(CT_IMAGE_STORAGE, &sop, &dataset, 16 * 1024);
    assert_eq!(rsp.status, 0x0000, "{rsp:?}");
    scu.release();
    // And a new one from DCMTK too.
    let refs: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    common::assert_ok(&common::storescu(&gw, &[], &refs), "storescu");
    assert_eq!(gw.study(&study1_uid())["instanceCount"], files.len());
}

/// storescu sends one instance, which must be refused with 0xA700 and leave
/// nothing behind.
fn assert_refused_out_of_resources(gw: &Gateway) {
    let files = study1_files();
    let out = common::storescu(gw, &["-v"], &[files[0].as_path()]);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Received Store Response (Refused: OutOfResources)"),
        "{text}"
    );
    assert!(gw.object_files().is_empty());
    assert!(gw.spool_files().is_empty());
}

#[test]
fn a_full_disk_is_refused_with_a700_before_anything_is_written() {
    // min_free_space above what any disk has: the gateway sees a full disk.
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--min-free-space")
            .arg(&u64::MAX.to_string()),
    );
    assert_refused_out_of_resources(&gw);
    gw.wait_for_log("min_free_space");
}

#[test]
fn an_oversized_instance_is_a700_and_nothing_is_kept() {
    let gw = Gateway::start_with(Opts::default().arg("--max-instance-size").arg("1000"));
    assert_refused_out_of_resources(&gw);
}

#[test]
fn a_silent_associated_peer_times_out_and_frees_its_slot() {
    let gw = Gateway::start_with(
        Opts::default()
            .arg("--read-timeout")
            .arg("2")
            .arg("--max-associations")
            .arg("1"),
    );
    // A bare connection holds no slot (it has not associated)...
    let _idle = TcpStream::connect(gw.dicom).unwrap();
    common::assert_ok(
        &common::echoscu(&gw, "DICOMGW"),
        "echoscu past an idle socket",
    );
    // ...but an association that then says nothing holds the only one.
    let silent = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let busy = common::echoscu(&gw, "DICOMGW");
    assert!(
        !busy.status.success(),
        "second association accepted while the slot was taken"
    );
    gw.wait_for_log("max_associations reached");
    // The gateway aborts the silent association after read_timeout...
    gw.wait_for_log("peer silent past read_timeout");
    drop(silent);
    // ...and the slot is free again.
    common::assert_ok(
        &common::echoscu(&gw, "DICOMGW"),
        "echoscu after the timeout",
    );
}

#[test]
fn a_gigabyte_instance_streams_through_in_bounded_memory() {
    let gw = Gateway::start();
    let (_dir, big) = common::send_big(&gw, 1100);
    let sent = std::fs::metadata(&big).unwrap().len();
    assert!(sent > 1 << 30);
    let peak = gw.peak_rss();
    assert!(peak < 100 << 20, "peak RSS {} MiB", peak >> 20);

    let studies = gw.studies();
    assert_eq!(studies.len(), 1);
    let stored = gw.object_files();
    assert_eq!(stored.len(), 1);
    let stored_len = std::fs::metadata(&stored[0]).unwrap().len();
    assert_eq!(studies[0]["totalBytes"].as_u64().unwrap(), stored_len);
    // Same data set length as the source (the meta groups differ).
    let meta_len = |p: &std::path::Path| {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(p).unwrap();
        let mut b = [0u8; 4];
        f.seek(SeekFrom::Start(140)).unwrap();
        f.read_exact(&mut b).unwrap();
        144 + u32::from_le_bytes(b) as u64
    };
    assert_eq!(stored_len - meta_len(&stored[0]), sent - meta_len(&big));
    assert!(gw.spool_files().is_empty());
}
