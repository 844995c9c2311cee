//! The messages the SCP sends: N-ACTION-RSP, N-EVENT-REPORT-RQ (command and
//! data set), and the P-DATA values that carry them within the peer's
//! maximum PDU length.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{PDataValue, PDataValueType};

use super::{Record, SOP_CLASS, SOP_INSTANCE};
use crate::dicom::dimse::{
    Command, encode_command, error_comment, field, ui_elem as ui, us_elem as us,
};

/// CommandDataSetType: none follows / one follows.
const NO_DATASET: u16 = 0x0101;
const DATASET: u16 = 0x0000;

/// The N-ACTION-RSP to `req`. `comment` (failures only) is cut to 64
/// printable characters.
pub fn action_response(req: &Command, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut elements = vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, SOP_CLASS),
        us(tags::COMMAND_FIELD, field::N_ACTION_RSP),
        us(tags::MESSAGE_ID_BEING_RESPONDED_TO, req.message_id),
        us(tags::COMMAND_DATA_SET_TYPE, NO_DATASET),
        us(tags::STATUS, status),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, SOP_INSTANCE),
    ];
    if let Some(action) = req.action_type {
        elements.push(us(tags::ACTION_TYPE_ID, action));
    }
    if let Some(comment) = comment.filter(|_| status != 0) {
        elements.push(error_comment(comment));
    }
    encode_command(elements)
}

/// Event Type ID of a report: 1 when every reference was committed, else 2.
pub fn event_type(record: &Record) -> u16 {
    if record.failed == 0 { 1 } else { 2 }
}

/// The N-EVENT-REPORT-RQ command set.
pub fn event_report_command(message_id: u16, event_type: u16) -> Vec<u8> {
    encode_command(vec![
        ui(tags::AFFECTED_SOP_CLASS_UID, SOP_CLASS),
        us(tags::COMMAND_FIELD, field::N_EVENT_REPORT_RQ),
        us(tags::MESSAGE_ID, message_id),
        us(tags::COMMAND_DATA_SET_TYPE, DATASET),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, SOP_INSTANCE),
        us(tags::EVENT_TYPE_ID, event_type),
    ])
}

/// The N-EVENT-REPORT data set of a decided request, in transfer syntax
/// `ts` (that of the presentation context it goes on): Transaction UID,
/// Retrieve AE Title, the committed references in the Referenced SOP
/// Sequence and the others, with their Failure Reason, in the Failed SOP
/// Sequence (PS3.4 J.3.3.1). `None` if `ts` cannot be written.
pub fn event_report_dataset(record: &Record, ae_title: &str, ts: &str) -> Option<Vec<u8>> {
    let ts = TransferSyntaxRegistry.get(ts)?;
    let outcomes = record.outcomes.as_deref().unwrap_or(&[]);
    let mut committed = Vec::new();
    let mut failed = Vec::new();
    for (r, &outcome) in record.references.iter().zip(outcomes) {
        let mut item = vec![
            ui(tags::REFERENCED_SOP_CLASS_UID, &r.class),
            ui(tags::REFERENCED_SOP_INSTANCE_UID, &r.instance),
        ];
        if outcome == 0 {
            committed.push(InMemDicomObject::from_element_iter(item));
        } else {
            item.push(us(tags::FAILURE_REASON, outcome));
            failed.push(InMemDicomObject::from_element_iter(item));
        }
    }
    let mut elements = vec![
        DataElement::new(
            tags::RETRIEVE_AE_TITLE,
            VR::AE,
            PrimitiveValue::from(ae_title.trim()),
        ),
        ui(tags::TRANSACTION_UID, record.transaction_uid.as_str()),
    ];
    if !committed.is_empty() {
        elements.push(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(committed),
        ));
    }
    if !failed.is_empty() {
        elements.push(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(failed),
        ));
    }
    let obj = InMemDicomObject::from_element_iter(elements);
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts).ok()?;
    Some(out)
}

/// The P-DATA-TF PDUs' values carrying a message (command, then data set if
/// any) on presentation context `pc`, each PDU within `max_pdu` (the
/// peer's maximum; 0 means unlimited). One PDV per PDU.
pub fn pdata(pc: u8, command: Vec<u8>, data: Option<Vec<u8>>, max_pdu: u32) -> Vec<PDataValue> {
    // A PDV item costs 6 bytes (length, context id, header) in the PDU.
    let chunk = match max_pdu {
        0 => 64 * 1024,
        n => usize::try_from(n)
            .unwrap_or(64 * 1024)
            .saturating_sub(6)
            .max(64),
    };
    let mut out = Vec::new();
    let mut split = |bytes: Vec<u8>, value_type: PDataValueType| {
        let n = bytes.len().div_ceil(chunk).max(1);
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            out.push(PDataValue {
                presentation_context_id: pc,
                value_type: value_type.clone(),
                is_last: i + 1 == n,
                data: piece.to_vec(),
            });
        }
        if bytes.is_empty() {
            out.push(PDataValue {
                presentation_context_id: pc,
                value_type,
                is_last: true,
                data: Vec::new(),
            });
        }
    };
    split(command, PDataValueType::Command);
    if let Some(data) = data {
        split(data, PDataValueType::Data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commitment::{Reference, request};
    use crate::uid::Uid;

    fn decided() -> Record {
        let r = |i: &str| Reference {
            class: "1.2.840.10008.5.1.4.1.1.2".into(),
            instance: i.into(),
        };
        let mut rec = Record::new(
            "CT".into(),
            Uid::parse("1.2.3.9").unwrap(),
            vec![r("1.2.3.1"), r("1.2.3.2"), r("1.2.3.3")],
            0,
        );
        rec.set_outcomes(vec![0, 0x0112, 0x0119]);
        rec
    }

    #[test]
    fn the_report_lists_committed_and_failed_with_reasons() {
        let rec = decided();
        assert_eq!(event_type(&rec), 2);
        for ts in ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"] {
            let bytes = event_report_dataset(&rec, "DICOMGW", ts).unwrap();
            let obj = InMemDicomObject::read_dataset_with_ts(
                &bytes[..],
                TransferSyntaxRegistry.get(ts).unwrap(),
            )
            .unwrap();
            let tx = obj
                .element(tags::TRANSACTION_UID)
                .unwrap()
                .to_str()
                .unwrap();
            assert_eq!(tx.trim_end_matches('\0'), "1.2.3.9");
            let ok = obj.element(tags::REFERENCED_SOP_SEQUENCE).unwrap();
            assert_eq!(ok.items().unwrap().len(), 1);
            let failed = obj.element(tags::FAILED_SOP_SEQUENCE).unwrap();
            let reasons: Vec<u16> = failed
                .items()
                .unwrap()
                .iter()
                .map(|i| i.element(tags::FAILURE_REASON).unwrap().to_int().unwrap())
                .collect();
            assert_eq!(reasons, [0x0112, 0x0119]);
            // What we write, our own parser reads back (the references part).
            let back = request::parse(&bytes, ts).unwrap();
            assert_eq!(back.references.len(), 1);
            assert_eq!(back.references[0].instance, "1.2.3.1");
        }
    }

    #[test]
    fn messages_are_split_within_the_peer_pdu_length() {
        let pdvs = pdata(3, vec![1; 100], Some(vec![2; 1000]), 256);
        assert!(pdvs.iter().all(|p| p.data.len() <= 250));
        let cmd: Vec<_> = pdvs
            .iter()
            .filter(|p| p.value_type == PDataValueType::Command)
            .collect();
        assert_eq!(cmd.len(), 1);
        assert!(cmd[0].is_last);
        let data: Vec<_> = pdvs
            .iter()
            .filter(|p| p.value_type == PDataValueType::Data)
            .collect();
        assert_eq!(data.iter().map(|p| p.data.len()).sum::<usize>(), 1000);
        assert!(data.last().unwrap().is_last);
        assert_eq!(data.iter().filter(|p| p.is_last).count(), 1);
    }

    #[test]
    fn the_action_response_answers_the_request() {
        let req = Command {
            field: field::N_ACTION_RQ,
            message_id: 5,
            affected_sop_class: Some(SOP_CLASS.into()),
            affected_sop_instance: Some(SOP_INSTANCE.into()),
            has_dataset: true,
            action_type: Some(1),
            status: None,
        };
        let rsp = Command::parse(&action_response(&req, 0x0115, Some("bad"))).unwrap();
        assert_eq!(rsp.field, field::N_ACTION_RSP);
        assert_eq!((rsp.message_id, rsp.status), (5, Some(0x0115)));
        assert_eq!(rsp.action_type, Some(1));
    }
}
