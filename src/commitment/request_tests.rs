use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::*;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

fn item(class: &str, instance: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(class),
        ),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance),
        ),
    ])
}

fn dataset(tx: &str, items: Vec<InMemDicomObject>, ts: &str) -> Vec<u8> {
    let obj = InMemDicomObject::from_element_iter([
        DataElement::new(tags::TRANSACTION_UID, VR::UI, PrimitiveValue::from(tx)),
        DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(items),
        ),
    ]);
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, TransferSyntaxRegistry.get(ts).unwrap())
        .unwrap();
    out
}

/// Implicit VR LE element header.
fn el(group: u16, element: u16, len: u32) -> Vec<u8> {
    let mut out = group.to_le_bytes().to_vec();
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

#[test]
fn reads_both_encodings() {
    for ts in [IMPLICIT_VR_LE, EXPLICIT_VR_LE] {
        let bytes = dataset(
            "1.2.3.100",
            vec![item(CT, "1.2.3.1"), item(CT, "1.2.3.2")],
            ts,
        );
        let action = parse(&bytes, ts).unwrap();
        assert_eq!(action.transaction.as_str(), "1.2.3.100");
        let instances: Vec<_> = action.references.iter().map(|r| &r.instance).collect();
        assert_eq!(instances, ["1.2.3.1", "1.2.3.2"]);
        assert!(action.references.iter().all(|r| r.class == CT));
    }
}

#[test]
fn undefined_lengths_are_read() {
    let mut bytes = el(0x0008, 0x1195, 4);
    bytes.extend_from_slice(b"1.23");
    bytes.extend(el(0x0008, 0x1199, UNDEFINED));
    bytes.extend(el(0xFFFE, 0xE000, UNDEFINED));
    bytes.extend(el(0x0008, 0x1150, 4));
    bytes.extend_from_slice(b"1.2\0");
    bytes.extend(el(0x0008, 0x1155, 4));
    bytes.extend_from_slice(b"4.5\0");
    // Another undefined-length sequence inside the item is walked over.
    bytes.extend(el(0x0040, 0xA730, UNDEFINED));
    bytes.extend(el(0xFFFE, 0xE000, 0));
    bytes.extend(el(0xFFFE, 0xE0DD, 0));
    bytes.extend(el(0xFFFE, 0xE00D, 0));
    bytes.extend(el(0xFFFE, 0xE0DD, 0));
    let action = parse(&bytes, IMPLICIT_VR_LE).unwrap();
    assert_eq!(action.references.len(), 1);
    assert_eq!(action.references[0].instance, "4.5");
}

#[test]
fn every_truncation_is_refused_without_panic() {
    for ts in [IMPLICIT_VR_LE, EXPLICIT_VR_LE] {
        let bytes = dataset("1.2.3.100", vec![item(CT, "1.2.3.1")], ts);
        for cut in 0..bytes.len() {
            let result = parse(&bytes[..cut], ts);
            assert!(result.is_err(), "{ts} cut at {cut}: {result:?}");
        }
    }
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..2000 {
        let len = (seed % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = parse(&bytes, IMPLICIT_VR_LE);
        let _ = parse(&bytes, EXPLICIT_VR_LE);
    }
}

#[test]
fn missing_and_bad_values_get_their_status() {
    let ts = IMPLICIT_VR_LE;
    let only_tx = {
        let mut b = el(0x0008, 0x1195, 4);
        b.extend_from_slice(b"1.23");
        b
    };
    assert_eq!(
        parse(&only_tx, ts).unwrap_err().status,
        status::MISSING_ATTRIBUTE
    );
    let empty = dataset("1.2.3", vec![], ts);
    assert_eq!(
        parse(&empty, ts).unwrap_err().status,
        status::MISSING_ATTRIBUTE_VALUE
    );
    let bad = dataset("1.2.3", vec![item(CT, "1.2/../3")], ts);
    let refusal = parse(&bad, ts).unwrap_err();
    assert_eq!(refusal.status, status::INVALID_ATTRIBUTE_VALUE);
    assert!(refusal.comment.contains("Referenced SOP Instance UID"));
    let bad_tx = dataset("1 2", vec![item(CT, "1.2.3")], ts);
    assert_eq!(
        parse(&bad_tx, ts).unwrap_err().status,
        status::INVALID_ATTRIBUTE_VALUE
    );
    let half = InMemDicomObject::from_element_iter([DataElement::new(
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.3"),
    )]);
    let lacking = dataset("1.2.3", vec![half], ts);
    assert_eq!(
        parse(&lacking, ts).unwrap_err().status,
        status::MISSING_ATTRIBUTE
    );
    assert_eq!(
        parse(&lacking, "1.2.840.10008.1.2.2").unwrap_err().status,
        status::INVALID_ARGUMENT_VALUE
    );
}

#[test]
fn huge_claims_cost_nothing() {
    // A length claiming 4 GiB is refused, not allocated.
    let mut bytes = el(0x0008, 0x1195, 0xFFFF_FFF0);
    bytes.extend_from_slice(b"1.2");
    let refusal = parse(&bytes, IMPLICIT_VR_LE).unwrap_err();
    assert_eq!(refusal.status, status::INVALID_ARGUMENT_VALUE);
    // More references than allowed.
    let mut bytes = el(0x0008, 0x1195, 4);
    bytes.extend_from_slice(b"1.23");
    bytes.extend(el(0x0008, 0x1199, UNDEFINED));
    let one = {
        let mut i = el(0xFFFE, 0xE000, 24);
        i.extend(el(0x0008, 0x1150, 4));
        i.extend_from_slice(b"1.2\0");
        i.extend(el(0x0008, 0x1155, 4));
        i.extend_from_slice(b"4.5\0");
        i
    };
    for _ in 0..=MAX_REFERENCES {
        bytes.extend_from_slice(&one);
    }
    bytes.extend(el(0xFFFE, 0xE0DD, 0));
    let refusal = parse(&bytes, IMPLICIT_VR_LE).unwrap_err();
    assert_eq!(refusal.status, status::RESOURCE_LIMITATION);
    // Too big a data set.
    let big = vec![0u8; MAX_DATASET_BYTES + 1];
    assert_eq!(
        parse(&big, IMPLICIT_VR_LE).unwrap_err().status,
        status::RESOURCE_LIMITATION
    );
}

#[test]
fn deep_nesting_is_refused() {
    let mut bytes = el(0x0008, 0x1195, 4);
    bytes.extend_from_slice(b"1.23");
    for _ in 0..10_000 {
        bytes.extend(el(0x0040, 0xA730, UNDEFINED));
        bytes.extend(el(0xFFFE, 0xE000, UNDEFINED));
    }
    let refusal = parse(&bytes, IMPLICIT_VR_LE).unwrap_err();
    assert!(refusal.comment.contains("nested deeper"), "{refusal:?}");
}

#[test]
fn the_command_must_name_the_class_instance_and_action() {
    let mut cmd = Command {
        field: crate::dicom::dimse::field::N_ACTION_RQ,
        message_id: 1,
        affected_sop_class: Some(crate::commitment::SOP_CLASS.into()),
        affected_sop_instance: Some(crate::commitment::SOP_INSTANCE.into()),
        has_dataset: true,
        action_type: Some(1),
        status: None,
    };
    assert!(check_command(&cmd).is_ok());
    cmd.action_type = Some(2);
    assert_eq!(
        check_command(&cmd).unwrap_err().status,
        status::NO_SUCH_ACTION
    );
    cmd.action_type = Some(1);
    cmd.affected_sop_instance = Some("1.2.3".into());
    assert_eq!(
        check_command(&cmd).unwrap_err().status,
        status::INVALID_OBJECT_INSTANCE
    );
    cmd.affected_sop_class = Some("1.2.3".into());
    assert_eq!(
        check_command(&cmd).unwrap_err().status,
        status::NO_SUCH_SOP_CLASS
    );
}
