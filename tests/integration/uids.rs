//! UIDs: liberal where it is safe. A UID that breaks PS3.5 but is harmless
//! as a key (hex digits, leading zeros) is stored as
//! received, as DCMTK and Orthanc do, so a modality is not left retrying it
//! for ever; one that could escape a path is refused with 0xC000.

use crate::common::dul::{CT_IMAGE_STORAGE, EXPLICIT_VR_LE, Scu};
use crate::common::{self, Gateway};

#[test]
fn hex_and_leading_zero_uids_are_stored_as_received_with_a_warning() {
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let f = common::fixture("study1/");
    let original = common::fixtures_dir().join(f["file"].as_str().unwrap());
    let odd = dir.path().join("odd.dcm");
    let (study, series, sop) = (
        "1.2.826.0.1.3680043.9.7.4a3f9e",
        "1.2.826.0.1.3680043.9.7.4a3f9e.01",
        // (DCMTK cuts a command's UIDs to 64 characters, so longer ones
        // are covered by the unit tests of `Uid`.)
        "1.2.826.0.1.3680043.9.7.4a3f9e.01.0042.ff",
    );
    common::pydicom(
        &format!(
            "import sys, pydicom\n\
             ds = pydicom.dcmread(sys.argv[1])\n\
             ds.StudyInstanceUID = '{study}'\n\
             ds.SeriesInstanceUID = '{series}'\n\
             ds.SOPInstanceUID = '{sop}'\n\
             ds.file_meta.MediaStorageSOPInstanceUID = '{sop}'\n\
             ds.save_as(sys.argv[2])"
        ),
        &[original.to_str().unwrap(), odd.to_str().unwrap()],
    );
    // DCMTK sends what pynetdicom refuses to (a UID over 64 characters).
    let out = common::storescu(&gw, &common::storescu_flags(&f), &[&odd]);
    common::assert_ok(&out, "storescu of non-conformant UIDs");
    gw.wait_for_log("non-conformant Study Instance UID stored as received");
    let listed = gw.study(study);
    assert_eq!(listed["instanceCount"], 1, "{listed}");
    let key = format!("studies/{study}/{series}/{sop}.dcm");
    assert_eq!(
        common::dataset_bytes(&gw.objects().join(key)),
        common::dataset_bytes(&odd)
    );
}

#[test]
fn uids_that_could_escape_a_path_are_refused_with_c000() {
    let gw = Gateway::start();
    let f = common::fixture("study1/");
    let dataset = common::dataset_bytes(&common::fixtures_dir().join(f["file"].as_str().unwrap()));
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    for bad in ["1.2/../../3", "..", "1.2\\3", "1.2 3"] {
        let rsp = scu.store(CT_IMAGE_STORAGE, bad, &dataset, 16 * 1024);
        assert_eq!(rsp.status, 0xC000, "{bad}: {rsp:?}");
        let comment = rsp.comment.unwrap_or_default();
        assert!(comment.contains("UID"), "{bad}: {comment}");
    }
    // The association goes on.
    let good = f["sop_instance"].as_str().unwrap();
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, good, &dataset, 16 * 1024)
            .status,
        0
    );
    scu.release();
    assert!(
        common::files_under(&gw.objects())
            .iter()
            .all(|p| !p.to_string_lossy().contains("..")),
    );
}
