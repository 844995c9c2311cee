//! The small DIMSE layer: command sets in, responses out.
//!
//! Commands are encoded in Implicit VR Little Endian whatever the presentation
//! context says (PS3.7 §6.3.1). Only the fields the gateway acts on are read.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values (PS3.7 Annex E).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    /// Set on every response's command field.
    pub const RESPONSE_BIT: u16 = 0x8000;
}

/// Status codes the gateway answers with (PS3.4 Annex B, PS3.7 Annex C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Duplicate SOP Instance (PS3.7 C.4): refused by the duplicate policy.
    pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const DATASET_MISMATCH: u16 = 0xA900;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

/// CommandDataSetType value meaning "no data set follows".
const NO_DATASET: u16 = 0x0101;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("command set cannot be parsed: {0}")]
    Parse(String),
    #[error("command set has no {0}")]
    Missing(&'static str),
}

/// A request, as much of it as the gateway needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub affected_sop_class: Option<String>,
    pub affected_sop_instance: Option<String>,
    pub has_dataset: bool,
}

impl Command {
    pub fn parse(bytes: &[u8]) -> Result<Command, Error> {
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj = InMemDicomObject::read_dataset_with_ts(bytes, &ts)
            .map_err(|e| Error::Parse(e.to_string()))?;
        let uint = |tag, name| -> Result<u16, Error> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_int::<u16>().ok())
                .ok_or(Error::Missing(name))
        };
        let text = |tag| {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        };
        let field = uint(tags::COMMAND_FIELD, "Command Field")?;
        // C-CANCEL carries MessageIDBeingRespondedTo instead of a Message ID.
        let message_id = if field == field::C_CANCEL_RQ {
            uint(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                "Message ID Being Responded To",
            )?
        } else {
            uint(tags::MESSAGE_ID, "Message ID")?
        };
        Ok(Command {
            field,
            message_id,
            affected_sop_class: text(tags::AFFECTED_SOP_CLASS_UID)
                .or_else(|| text(tags::REQUESTED_SOP_CLASS_UID)),
            affected_sop_instance: text(tags::AFFECTED_SOP_INSTANCE_UID)
                .or_else(|| text(tags::REQUESTED_SOP_INSTANCE_UID)),
            has_dataset: uint(tags::COMMAND_DATA_SET_TYPE, "Command Data Set Type")? != NO_DATASET,
        })
    }

    /// Whether this is a request (responses have the high bit set).
    pub fn is_request(&self) -> bool {
        self.field & field::RESPONSE_BIT == 0
    }
}

/// The response to `req` with `status`; `comment` goes into Error Comment
/// (0000,0902) on failures, cut to the 64 characters LO allows.
pub fn response(req: &Command, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut elements = Vec::with_capacity(7);
    if let Some(class) = &req.affected_sop_class {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(class.as_str()),
        ));
    }
    elements.push(DataElement::new(
        tags::COMMAND_FIELD,
        VR::US,
        PrimitiveValue::from(req.field | field::RESPONSE_BIT),
    ));
    elements.push(DataElement::new(
        tags::MESSAGE_ID_BEING_RESPONDED_TO,
        VR::US,
        PrimitiveValue::from(req.message_id),
    ));
    elements.push(DataElement::new(
        tags::COMMAND_DATA_SET_TYPE,
        VR::US,
        PrimitiveValue::from(NO_DATASET),
    ));
    elements.push(DataElement::new(
        tags::STATUS,
        VR::US,
        PrimitiveValue::from(status),
    ));
    if let Some(instance) = &req.affected_sop_instance {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(instance.as_str()),
        ));
    }
    if let Some(comment) = comment.filter(|_| status != status::SUCCESS) {
        let cut: String = comment
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
            .take(64)
            .collect();
        elements.push(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(cut),
        ));
    }
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut out = Vec::with_capacity(160);
    obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("writing a command set to memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(field: u16, with_data: bool) -> Vec<u8> {
        let data_set_type = if with_data { 0x0000 } else { NO_DATASET };
        let obj = InMemDicomObject::command_from_element_iter([
            DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.2"),
            ),
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(7u16)),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(data_set_type),
            ),
            DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from("1.2.3.4"),
            ),
        ]);
        let mut bytes = Vec::new();
        obj.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .unwrap();
        bytes
    }

    #[test]
    fn parses_a_c_store_request() {
        let cmd = Command::parse(&request(field::C_STORE_RQ, true)).unwrap();
        assert_eq!(cmd.field, field::C_STORE_RQ);
        assert_eq!(cmd.message_id, 7);
        assert_eq!(cmd.affected_sop_instance.as_deref(), Some("1.2.3.4"));
        assert!(cmd.has_dataset && cmd.is_request());
    }

    #[test]
    fn responses_answer_the_request_with_status_and_comment() {
        let cmd = Command::parse(&request(field::C_STORE_RQ, true)).unwrap();
        let rsp = Command::parse(&response(
            &cmd,
            status::DATASET_MISMATCH,
            Some("x".repeat(100).as_str()),
        ))
        .unwrap_err();
        // Responses carry MessageIDBeingRespondedTo, not MessageID.
        assert!(matches!(rsp, Error::Missing("Message ID")));
        let bytes = response(&cmd, status::DATASET_MISMATCH, Some(&"x".repeat(100)));
        let obj =
            InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
        assert_eq!(
            obj.element(tags::STATUS).unwrap().to_int::<u16>().unwrap(),
            0xA900
        );
        assert_eq!(
            obj.element(tags::COMMAND_FIELD)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            0x8001
        );
        assert_eq!(
            obj.element(tags::MESSAGE_ID_BEING_RESPONDED_TO)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            7
        );
        assert_eq!(
            obj.element(tags::ERROR_COMMENT)
                .unwrap()
                .to_str()
                .unwrap()
                .trim()
                .len(),
            64
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Command::parse(&[0xff; 11]).is_err());
        assert!(Command::parse(&[]).is_err());
    }
}
