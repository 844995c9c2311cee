//! Replays every fuzz corpus file (`fuzz/corpus/<target>`, `fuzz/seeds/<target>`
//! and the crash regressions in `fuzz/regressions/<target>`) through the same
//! entry points the cargo-fuzz targets run, on stable Rust: CI checks that
//! nothing the fuzzer ever found comes back, without nightly.
//!
//! `cargo test --test fuzz_corpora -- --ignored write_seeds` regenerates the
//! seeds (real inputs: the fixtures' headers, command sets as pynetdicom
//! encodes them, a webhook signed by Python `standardwebhooks`, URLs signed
//! by the gateway's signer).

#[path = "../fuzz/src/entry.rs"]
mod entry;

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// A fuzz target: its name and entry point.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 4] = [
    ("command_set", entry::command_set),
    ("header_scan", entry::header_scan),
    ("webhook_verify", entry::webhook_verify),
    ("signed_url", entry::signed_url),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_replays_without_a_finding() {
    for (target, run) in TARGETS {
        let mut replayed = 0;
        for kind in ["seeds", "corpus", "regressions"] {
            for path in files(&fuzz_dir().join(kind).join(target)) {
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target}: {} fails", path.display());
                replayed += 1;
            }
        }
        // A missing corpus is a failure, not a silent pass.
        assert!(replayed >= 5, "{target}: only {replayed} corpus files");
    }
}

/// One Implicit VR LE element of a command set.
fn el(element: u16, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0];
    out.extend(element.to_le_bytes());
    out.extend((value.len() as u32).to_le_bytes());
    out.extend(value);
    out
}

fn write(dir: &Path, name: &str, data: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    assert!(data.len() <= 64 * 1024, "{name} is over 64 KiB");
    std::fs::write(dir.join(name), data).unwrap();
}

/// Regenerates `fuzz/seeds`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seeds() {
    let seeds = fuzz_dir().join("seeds");
    let _ = std::fs::remove_dir_all(&seeds);

    // command_set: what pynetdicom encodes (C-STORE-RQ, C-ECHO-RQ), plus the
    // 0xFFFFFFF0 Error Comment claim.
    let dir = seeds.join("command_set");
    let py = r#"
import sys
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_STORE, C_ECHO
from pynetdicom.dimse_messages import C_STORE_RQ, C_ECHO_RQ
from pynetdicom.dsutils import encode
out = sys.argv[1]
p = C_STORE(); p.MessageID = 7; p.AffectedSOPClassUID = UID('1.2.840.10008.5.1.4.1.1.2')
p.AffectedSOPInstanceUID = UID('1.2.826.0.1.3680043.10.1234.1.10.1.1'); p.Priority = 2
m = C_STORE_RQ(); m.primitive_to_message(p)
open(out + '/pynetdicom_c_store_rq', 'wb').write(encode(m.command_set, True, True))
p = C_ECHO(); p.MessageID = 1; p.AffectedSOPClassUID = UID('1.2.840.10008.1.1')
m = C_ECHO_RQ(); m.primitive_to_message(p)
open(out + '/pynetdicom_c_echo_rq', 'wb').write(encode(m.command_set, True, True))
"#;
    std::fs::create_dir_all(&dir).unwrap();
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let status = std::process::Command::new(venv)
        .args(["-c", py, dir.to_str().unwrap()])
        .status()
        .expect(".venv/bin/python (pynetdicom)");
    assert!(status.success());
    let store = std::fs::read(dir.join("pynetdicom_c_store_rq")).unwrap();
    let mut huge = store.clone();
    huge.extend([0, 0, 0x02, 0x09, 0xF0, 0xFF, 0xFF, 0xFF]);
    huge.extend(b"x");
    write(&dir, "error_comment_0xfffffff0", &huge);
    let cancel = [
        el(0x0100, &0x0FFFu16.to_le_bytes()),
        el(0x0120, &7u16.to_le_bytes()),
        el(0x0800, &0x0101u16.to_le_bytes()),
    ]
    .concat();
    write(&dir, "c_cancel_rq", &cancel);
    write(&dir, "empty", b"");

    // header_scan: each fixture's first 64 KiB (the header and the start of
    // the pixel data), and each re-encoded as Implicit LE, Big Endian and
    // Deflated by dicom-object.
    let dir = seeds.join("header_scan");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fixtures");
    let mut stack = vec![fixtures];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for p in files(&d) {
            if p.extension().is_some_and(|e| e == "dcm") {
                let bytes = std::fs::read(&p).unwrap();
                let cut = &bytes[..bytes.len().min(64 * 1024)];
                write(&dir, &format!("fixture_{n:02}"), cut);
                n += 1;
            }
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    let ct = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fixtures/study1/series1/ct1.dcm"),
    )
    .unwrap();
    let obj = dicom_object::from_reader(&ct[128..]).unwrap();
    let class = obj.meta().media_storage_sop_class_uid().to_owned();
    let instance = obj.meta().media_storage_sop_instance_uid().to_owned();
    let mut data = obj.into_inner();
    // Keep the pixel data small.
    data.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OW,
        dicom_core::PrimitiveValue::from(vec![0u8; 64]),
    ));
    for (name, ts) in [
        ("implicit", "1.2.840.10008.1.2"),
        ("big_endian", "1.2.840.10008.1.2.2"),
        ("deflated", "1.2.840.10008.1.2.1.99"),
    ] {
        let meta = dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(class.as_str())
            .media_storage_sop_instance_uid(instance.as_str())
            .transfer_syntax(ts)
            .implementation_class_uid("1.2.3.4")
            .source_application_entity_title("FUZZ")
            .build()
            .unwrap();
        let mut bytes = Vec::new();
        data.clone()
            .with_exact_meta(meta)
            .write_all(&mut bytes)
            .unwrap();
        write(&dir, &format!("ct1_{name}"), &bytes);
    }

    // webhook_verify: the Standard Webhooks test vector (mode 0), and each
    // event type with a valid signature (mode 1).
    let dir = seeds.join("webhook_verify");
    let body = r#"{"id":"whe_0123456789abcdef0123456789abcdef","type":"study.access_requested","data":{"studyId":"stu_0123456789abcdef0123456789abcdef","studyInstanceUid":"1.2.826.0.1.3680043.10.1234.1"}}"#;
    let real = format!(
        "\0msg_2KWPBgLlAfxdpx2AI54pPJ85f4W\n1795000000\nv1,pLVkprGB01dXdcoBe3pzwaZ3fmGCYQHE9+5LGaxxUng=\n{body}"
    );
    write(&dir, "standardwebhooks_signed", real.as_bytes());
    let events = [
        ("study", body.to_owned()),
        ("secondary_capture", r#"{"id":"whe_1","type":"secondary_capture.access_requested","data":{"studyInstanceUid":"1.2.3","seriesInstanceUid":"1.2.3.4","sopInstanceUid":"1.2.3.4.5"}}"#.to_owned()),
        ("ephemeral", r#"{"id":"whe_2","type":"ephemeral.access_requested","data":{"options":{"studyInstanceUids":["1.2.3","1.2.4"]}}}"#.to_owned()),
        ("enrichment", r#"{"id":"whe_3","type":"patient_study.enrichment_requested","data":{"studyInstanceUid":"1.2.3","mrn":"MRN1"}}"#.to_owned()),
        ("clinical", r#"{"id":"whe_4","type":"clinical_context.enrichment_requested","data":{"studyInstanceUid":"1.2.3"}}"#.to_owned()),
        ("report", r#"{"id":"whe_5","type":"report.delivered","data":{"isCritical":false,"presignedUrl":"https://example.com/r.pdf","reportId":"rep_1","studyInstanceUid":"1.2.3","plainText":"ok"}}"#.to_owned()),
        ("worklist", r#"{"id":"whe_6","type":"modality_worklist.requested","data":{}}"#.to_owned()),
    ];
    for (name, body) in events {
        let input = format!("\x01msg_{name}\n1795000000\n\n{body}");
        write(&dir, &format!("signed_{name}"), input.as_bytes());
    }
    write(
        &dir,
        "timestamp_u64_max",
        format!("\0msg_x\n18446744073709551615\nv1,AAAA\n{body}").as_bytes(),
    );

    // signed_url: URLs the gateway's signer made (mode 0, valid) and paths
    // to sign (mode 1).
    let dir = seeds.join("signed_url");
    let signer = entry::url_signer();
    let now = UNIX_EPOCH + Duration::from_secs(entry::URL_NOW);
    let key = "studies/1.2.826.0.1.3680043.10.1234.1/1.2.826.0.1.3680043.10.1234.1.1/1.2.826.0.1.3680043.10.1234.1.1.1.dcm";
    let url = signer.sign(
        "GET",
        &format!("files/{key}"),
        Duration::from_secs(3600),
        now,
    );
    let rel = url.trim_start_matches("http://gw.example/");
    write(&dir, "file_url", format!("\0{rel}").as_bytes());
    let url = signer.sign(
        "PUT",
        "uploads/1.2.3/1.2.3.4/1.2.3.4.5",
        Duration::from_secs(600),
        now,
    );
    let rel = url.trim_start_matches("http://gw.example/");
    write(&dir, "upload_url", format!("\0{rel}").as_bytes());
    write(&dir, "upload_study_sign", b"\x01uploads/1.2.3");
    write(
        &dir,
        "media_sign",
        b"\x01files/studies/1.2.3/media/report-1.pdf",
    );
    write(
        &dir,
        "expired",
        b"\0files/studies/1.2.3/1.2.3.4/1.2.3.4.5.dcm?exp=1&kid=k1&sig=AAAA",
    );
    write(
        &dir,
        "exp_overflow",
        b"\0files/studies/1.2.3/1.2.3.4/1.2.3.4.5.dcm?exp=18446744073709551615&kid=k0&sig=%2F%2B",
    );
}
