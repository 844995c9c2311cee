//! Hostile DICOM input against the real binary: a command set whose length
//! claims 4 GiB, a data set whose private OB claims 3 GiB, 50,000 nested
//! sequences, a deflate bomb. Each is refused without the memory it claims,
//! the gateway lives on, and a real sender stores afterwards.

use std::io::Write;
use std::path::Path;

use dicom_ul::pdu::PDataValueType;
use flate2::Compression;
use flate2::write::DeflateEncoder;

use crate::common::dul::{CT_IMAGE_STORAGE, EXPLICIT_VR_LE, Scu};
use crate::common::{Gateway, assert_ok, dataset_bytes, fixture, fixtures_dir, storescu};

/// Peak RSS allowed after an attack (the attacks claim 3–4 GiB).
const RSS_BOUND: u64 = 256 << 20;
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const INSTANCE: &str = "1.2.826.0.1.3680043.10.1234.99.1.1";

/// An explicit VR LE element with a 16-bit length.
fn short(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(vr);
    out.extend((value.len() as u16).to_le_bytes());
    out.extend(value);
    out
}

/// An explicit VR LE element header with a 32-bit length (OB, SQ, UN…).
fn long(group: u16, element: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(vr);
    out.extend([0, 0]);
    out.extend(len.to_le_bytes());
    out
}

fn item(element: u16, len: u32) -> Vec<u8> {
    let mut out = vec![0xFE, 0xFF];
    out.extend(element.to_le_bytes());
    out.extend(len.to_le_bytes());
    out
}

/// The identifying elements of a CT instance, explicit VR LE.
fn ids() -> Vec<u8> {
    [
        short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        short(
            0x0008,
            0x0018,
            b"UI",
            b"1.2.826.0.1.3680043.10.1234.99.1.1\0",
        ),
        short(0x0010, 0x0010, b"PN", b"Hostile^Input"),
        short(0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.10.1234.99\0"),
        short(0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.10.1234.99.1"),
    ]
    .concat()
}

fn assert_rss_bounded(gw: &Gateway) {
    let peak = gw.peak_rss();
    assert!(
        peak < RSS_BOUND,
        "peak RSS {} MiB is over {} MiB",
        peak >> 20,
        RSS_BOUND >> 20
    );
}

/// A good instance on `scu`'s association (CT, Explicit VR LE) is stored.
fn store_good(scu: &mut Scu) {
    let ct = fixture("study1/series1/ct1.dcm");
    let path = fixtures_dir().join(ct["file"].as_str().unwrap());
    let rsp = scu.store(
        CT_IMAGE_STORAGE,
        ct["sop_instance"].as_str().unwrap(),
        &dataset_bytes(&path),
        16 * 1024,
    );
    assert_eq!(rsp.status, 0x0000, "{rsp:?}");
}

/// A real sender stores after the attack.
fn storescu_stores(gw: &Gateway) {
    let f = fixture("study1/series1/ct2.dcm");
    let path = fixtures_dir().join(f["file"].as_str().unwrap());
    assert_ok(
        &storescu(gw, &["-xe"], &[Path::new(&path)]),
        "storescu after the attack",
    );
    let study = gw.study(f["study"].as_str().unwrap());
    assert!(
        study
            .to_string()
            .contains(f["sop_instance"].as_str().unwrap()),
        "{study}"
    );
}

#[test]
fn a_command_set_claiming_4_gib_aborts_the_association_only() {
    let gw = Gateway::start();
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let (_, mut cmd) = scu.command(0x0001, CT_IMAGE_STORAGE, INSTANCE, true);
    // (0000,0902) Error Comment declaring 0xFFFFFFF0 bytes, then a few.
    cmd.extend([0x00, 0x00, 0x02, 0x09, 0xF0, 0xFF, 0xFF, 0xFF]);
    cmd.extend(b"0123456789");
    let pdv = scu.pdv(PDataValueType::Command, true, &cmd);
    scu.send(vec![pdv]);
    assert!(scu.receive_abort(), "the association is aborted");
    gw.wait_for_log("declares 4294967280 bytes");
    assert_rss_bounded(&gw);
    storescu_stores(&gw);
}

#[test]
fn a_private_ob_claiming_3_gib_is_refused_and_the_association_goes_on() {
    let gw = Gateway::start();
    let mut data = ids();
    data.extend(long(0x0029, 0x1010, b"OB", 3 << 30));
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let rsp = scu.store(CT_IMAGE_STORAGE, INSTANCE, &data, 16 * 1024);
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    let comment = rsp.comment.unwrap_or_default();
    assert!(
        comment.starts_with("element (0029,1010) declares 3221225472 bytes"),
        "{comment}"
    );
    assert_rss_bounded(&gw);
    store_good(&mut scu);
    scu.release();
    // Nothing of the refused instance was stored.
    let studies = serde_json::to_string(&gw.studies()).unwrap();
    assert!(
        !studies.contains("1.2.826.0.1.3680043.10.1234.99"),
        "{studies}"
    );
    storescu_stores(&gw);
    assert_rss_bounded(&gw);
}

#[test]
fn fifty_thousand_nested_sequences_are_refused_without_a_crash() {
    let gw = Gateway::start();
    let mut data = ids();
    for _ in 0..50_000 {
        data.extend(long(0x0040, 0xA730, b"SQ", u32::MAX));
        data.extend(item(0xE000, u32::MAX));
    }
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let rsp = scu.store(CT_IMAGE_STORAGE, INSTANCE, &data, 16 * 1024);
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    assert_eq!(
        rsp.comment.as_deref(),
        Some("sequence nesting deeper than 32")
    );
    store_good(&mut scu);
    scu.release();
    assert_rss_bounded(&gw);
    storescu_stores(&gw);
}

#[test]
fn a_deflate_bomb_is_refused() {
    let gw = Gateway::start();
    // 64 MiB of zeros in a private OB deflate to about 64 KiB (1000:1).
    const BLOB: u32 = 64 << 20;
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::best());
    enc.write_all(&ids()).unwrap();
    enc.write_all(&long(0x0029, 0x1010, b"OB", BLOB)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(BLOB >> 20) {
        enc.write_all(&zeros).unwrap();
    }
    let data = enc.finish().unwrap();
    assert!(
        u64::from(BLOB) / data.len() as u64 > 250,
        "{} bytes is no bomb",
        data.len()
    );
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, DEFLATED);
    let rsp = scu.store(CT_IMAGE_STORAGE, INSTANCE, &data, 16 * 1024);
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    assert_eq!(
        rsp.comment.as_deref(),
        Some("deflated data set inflates over 250:1")
    );
    scu.release();
    assert_rss_bounded(&gw);
    storescu_stores(&gw);
}

/// `max_sequence_depth` and `max_header_bytes` are the gateway's settings,
/// not constants: three nested sequences pass the default and are refused
/// at a depth of 2; a header of 10,000 empty elements is refused under a
/// 64 KiB `max_header_bytes`.
#[test]
fn the_header_limits_are_the_configured_ones() {
    let nested = |depth: usize| {
        let mut data = ids();
        for _ in 0..depth {
            data.extend(long(0x0040, 0xA730, b"SQ", u32::MAX));
            data.extend(item(0xE000, u32::MAX));
        }
        for _ in 0..depth {
            data.extend(item(0xE00D, 0));
            data.extend(item(0xE0DD, 0));
        }
        data
    };
    let wordy = || {
        // 10,000 empty private elements (80 KB of element headers: what
        // `max_header_bytes` counts; skipped values do not count) between the
        // SOP UIDs (0008,xxxx) and the patient and study (0010/0020,xxxx)
        // the scan must reach.
        let all = ids();
        let sop_uids = short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0").len()
            + short(
                0x0008,
                0x0018,
                b"UI",
                b"1.2.826.0.1.3680043.10.1234.99.1.1\0",
            )
            .len();
        let mut data = all[..sop_uids].to_vec();
        for element in 0x1000..0x1000 + 10_000u16 {
            data.extend(short(0x0009, element, b"LO", b""));
        }
        data.extend(&all[sop_uids..]);
        data
    };

    let default = Gateway::start();
    let mut scu = Scu::connect(default.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let rsp = scu.store(CT_IMAGE_STORAGE, INSTANCE, &nested(3), 16 * 1024);
    assert_eq!(rsp.status, 0x0000, "{rsp:?}");
    scu.release();

    let strict = Gateway::start_with(
        crate::common::Opts::default()
            .arg("--max-sequence-depth")
            .arg("2")
            .arg("--max-header-bytes")
            .arg("65536"),
    );
    let mut scu = Scu::connect(strict.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let rsp = scu.store(CT_IMAGE_STORAGE, INSTANCE, &nested(3), 16 * 1024);
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    assert_eq!(
        rsp.comment.as_deref(),
        Some("sequence nesting deeper than 2")
    );
    let rsp = scu.store(CT_IMAGE_STORAGE, INSTANCE, &wordy(), 16 * 1024);
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    let comment = rsp.comment.unwrap_or_default();
    assert!(comment.contains("header over"), "{comment}");
    store_good(&mut scu);
    scu.release();
}
