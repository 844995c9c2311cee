//! The DIMSE layer, driven byte by byte with dicom-ul's client.

use dicom_ul::pdu::PDataValueType::{Command, Data};

use crate::common::dul::{CT_IMAGE_STORAGE, EXPLICIT_VR_LE, Scu};
use crate::common::{self, Gateway};

/// A CT fixture: (SOP Instance UID, data set bytes).
fn ct_dataset() -> (String, Vec<u8>) {
    let f = common::fixture("study1/");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    assert_eq!(f["transfer_syntax"], EXPLICIT_VR_LE);
    (
        f["sop_instance"].as_str().unwrap().to_owned(),
        common::dataset_bytes(&path),
    )
}

#[test]
fn fragmented_command_shared_pdus_and_empty_pdata_store_the_exact_bytes() {
    let gw = Gateway::start();
    let (sop, dataset) = ct_dataset();
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);

    let (id, cmd) = scu.command(0x0001, CT_IMAGE_STORAGE, &sop, true);
    let (a, b) = cmd.split_at(cmd.len() / 2);
    let (d1, d2) = dataset.split_at(dataset.len() / 3);
    // Command in two fragments (two PDUs), an empty P-DATA, then the second
    // command fragment and the first data fragment in one PDU.
    let first = scu.pdv(Command, false, a);
    scu.send(vec![first]);
    scu.send(vec![]);
    let (second, data1) = (scu.pdv(Command, true, b), scu.pdv(Data, false, d1));
    scu.send(vec![second, data1]);
    let data2 = scu.pdv(Data, true, d2);
    scu.send(vec![data2]);
    let rsp = scu.response();
    assert_eq!(
        (rsp.field, rsp.message_id, rsp.status),
        (0x8001, id, 0x0000)
    );
    scu.release();

    let record = &gw.study(common::fixture("study1/")["study"].as_str().unwrap())["series"];
    let key = record
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().clone())
        .find(|i| i["sopInstanceUid"] == sop.as_str())
        .expect("instance indexed")["objectKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = gw.objects().join(key);
    assert_eq!(
        common::dataset_bytes(&stored),
        dataset,
        "data set stored byte for byte"
    );
    assert!(gw.spool_files().is_empty());
}

#[test]
fn data_set_uid_disagreeing_with_the_command_is_a900_and_stores_nothing() {
    let gw = Gateway::start();
    let (_, dataset) = ct_dataset();
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let rsp = scu.store(
        CT_IMAGE_STORAGE,
        "1.2.826.0.1.3680043.10.1234.999",
        &dataset,
        4096,
    );
    assert_eq!(rsp.status, 0xA900, "{rsp:?}");
    assert!(rsp.comment.unwrap().contains("SOP Instance UID"));
    // The association goes on: a correct store afterwards works.
    let (sop, dataset) = ct_dataset();
    assert_eq!(
        scu.store(CT_IMAGE_STORAGE, &sop, &dataset, 4096).status,
        0x0000
    );
    scu.release();
    assert_eq!(gw.object_files().len(), 1);
    assert!(gw.spool_files().is_empty());
}

#[test]
fn garbage_data_set_is_c000_and_stores_nothing() {
    let gw = Gateway::start();
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let rsp = scu.store(CT_IMAGE_STORAGE, "1.2.3.4.5", &garbage, 1024);
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    scu.release();
    assert!(gw.object_files().is_empty());
    assert!(gw.spool_files().is_empty());
    assert!(gw.studies().is_empty());
}

#[test]
fn invalid_uid_in_the_command_is_refused_without_touching_the_store() {
    let gw = Gateway::start();
    let (_, dataset) = ct_dataset();
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let rsp = scu.store(CT_IMAGE_STORAGE, "1.2.3/../../etc", &dataset, 4096);
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    scu.release();
    assert!(gw.object_files().is_empty());
}

#[test]
fn unknown_commands_get_a_refusal_not_a_store() {
    let gw = Gateway::start();
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    // C-FIND-RQ (0x0020) with an identifier data set, on a storage context.
    let (id, cmd) = scu.command(0x0020, CT_IMAGE_STORAGE, "1.2.3", true);
    let (c, d) = (
        scu.pdv(Command, true, &cmd),
        scu.pdv(Data, true, &ct_dataset().1[..200]),
    );
    scu.send(vec![c, d]);
    let rsp = scu.response();
    assert_eq!(
        (rsp.field, rsp.message_id, rsp.status),
        (0x8020, id, 0x0211)
    );
    // N-GET-RQ (0x0110) without a data set.
    let (id, cmd) = scu.command(0x0110, CT_IMAGE_STORAGE, "1.2.3", false);
    let c = scu.pdv(Command, true, &cmd);
    scu.send(vec![c]);
    let rsp = scu.response();
    assert_eq!(
        (rsp.field, rsp.message_id, rsp.status),
        (0x8110, id, 0x0211)
    );
    scu.release();
    assert!(gw.object_files().is_empty());
}

#[test]
fn c_echo_answers_with_the_request_message_id() {
    let gw = Gateway::start();
    let mut scu = Scu::connect(gw.dicom, "1.2.840.10008.1.1", EXPLICIT_VR_LE);
    for _ in 0..3 {
        let (id, cmd) = scu.command(0x0030, "1.2.840.10008.1.1", "", false);
        let c = scu.pdv(Command, true, &cmd);
        scu.send(vec![c]);
        let rsp = scu.response();
        assert_eq!((rsp.field, rsp.message_id, rsp.status), (0x8030, id, 0));
    }
    scu.release();
}

/// An association with half an instance sent.
fn half_an_instance(gw: &Gateway) -> Scu {
    let (sop, dataset) = ct_dataset();
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    let (_, cmd) = scu.command(0x0001, CT_IMAGE_STORAGE, &sop, true);
    let (c, d) = (
        scu.pdv(Command, true, &cmd),
        scu.pdv(Data, false, &dataset[..dataset.len() / 2]),
    );
    scu.send(vec![c, d]);
    scu
}

fn assert_nothing_kept(gw: &Gateway) {
    assert!(gw.spool_files().is_empty(), "spool: {:?}", gw.spool_files());
    assert!(gw.object_files().is_empty());
    assert!(gw.studies().is_empty());
}

#[test]
fn abort_mid_instance_leaves_nothing_behind() {
    let gw = Gateway::start();
    let scu = half_an_instance(&gw);
    let mark = gw.log_len();
    scu.abort();
    gw.wait_for_log_after(mark, "association aborted by peer");
    assert_nothing_kept(&gw);
}

#[test]
fn dropped_connection_mid_instance_leaves_nothing_behind() {
    let gw = Gateway::start();
    let scu = half_an_instance(&gw);
    let mark = gw.log_len();
    drop(scu); // TCP closed, no A-ABORT
    gw.wait_for_log_after(mark, "connection closed without release");
    assert_nothing_kept(&gw);
}
