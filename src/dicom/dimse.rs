//! The small DIMSE layer: command sets in, responses out.
//!
//! Commands are encoded in Implicit VR Little Endian whatever the presentation
//! context says (PS3.7 §6.3.1). Only the fields the gateway acts on are read.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::text::{DefaultCharacterSetCodec, TextCodec};
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values (PS3.7 Annex E).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    pub const N_ACTION_RQ: u16 = 0x0130;
    pub const N_ACTION_RSP: u16 = 0x8130;
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

/// Whether a C-STORE status is a failure (PS3.7 C.4 and Annex C): anything
/// but success, the warnings (0001, 0107, 0116, Bxxx), pending and cancel.
pub fn is_failure(code: u16) -> bool {
    !matches!(
        code,
        0x0000 | 0x0001 | 0x0107 | 0x0116 | 0xFE00 | 0xFF00 | 0xFF01
    ) && code & 0xF000 != 0xB000
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
    /// Action Type ID (0000,1008) of an N-ACTION.
    pub action_type: Option<u16>,
    /// Status (0000,0900) of a response.
    pub status: Option<u16>,
}

/// The largest command set accepted. The association already caps command
/// reassembly at 64 KiB; a real command set is a few hundred bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// The values a command set element may carry that the gateway reads; every
/// other group-0000 element is skipped by its length.
#[derive(Default)]
struct Fields<'a> {
    field: Option<&'a [u8]>,
    message_id: Option<&'a [u8]>,
    responded_to: Option<&'a [u8]>,
    data_set_type: Option<&'a [u8]>,
    affected_class: Option<&'a [u8]>,
    requested_class: Option<&'a [u8]>,
    affected_instance: Option<&'a [u8]>,
    requested_instance: Option<&'a [u8]>,
    action_type: Option<&'a [u8]>,
    status: Option<&'a [u8]>,
}

impl Command {
    /// Parses a command set (Implicit VR Little Endian, group 0000 only).
    ///
    /// Bounded by construction: values are borrowed slices of `bytes`, every
    /// length is checked against what remains before it is used, and nothing
    /// is allocated beyond the few strings kept. An element of another group,
    /// a length past the end, a truncated header or a command set over
    /// [`MAX_COMMAND_BYTES`] is an error (the association aborts).
    pub fn parse(bytes: &[u8]) -> Result<Command, Error> {
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(Error::Parse(format!(
                "{} bytes, more than the {MAX_COMMAND_BYTES} allowed",
                bytes.len()
            )));
        }
        let mut f = Fields::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some((head, tail)) = rest.split_first_chunk::<8>() else {
                return Err(Error::Parse(format!(
                    "truncated element header ({} bytes left)",
                    rest.len()
                )));
            };
            let group = u16::from_le_bytes([head[0], head[1]]);
            let element = u16::from_le_bytes([head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if group != 0x0000 {
                return Err(Error::Parse(format!(
                    "element ({group:04X},{element:04X}) is not in group 0000"
                )));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= tail.len())
                .ok_or_else(|| {
                    Error::Parse(format!(
                        "element (0000,{element:04X}) declares {len} bytes, only {} follow",
                        tail.len()
                    ))
                })?;
            let (value, after) = tail.split_at(len);
            rest = after;
            let slot = match element {
                0x0100 => &mut f.field,
                0x0110 => &mut f.message_id,
                0x0120 => &mut f.responded_to,
                0x0800 => &mut f.data_set_type,
                0x0002 => &mut f.affected_class,
                0x0003 => &mut f.requested_class,
                0x1000 => &mut f.affected_instance,
                0x1001 => &mut f.requested_instance,
                0x1008 => &mut f.action_type,
                0x0900 => &mut f.status,
                _ => continue,
            };
            // A repeated element replaces the earlier one, as a data set
            // insert does.
            *slot = Some(value);
        }
        let field = us(f.field, "Command Field")?;
        // C-CANCEL and responses carry MessageIDBeingRespondedTo instead
        // of a Message ID.
        let message_id = if field == field::C_CANCEL_RQ || field & field::RESPONSE_BIT != 0 {
            us(f.responded_to, "Message ID Being Responded To")?
        } else {
            us(f.message_id, "Message ID")?
        };
        let has_dataset = us(f.data_set_type, "Command Data Set Type")? != NO_DATASET;
        Ok(Command {
            field,
            message_id,
            affected_sop_class: ui(f.affected_class)?.or(ui(f.requested_class)?),
            affected_sop_instance: ui(f.affected_instance)?.or(ui(f.requested_instance)?),
            has_dataset,
            action_type: f
                .action_type
                .map(|v| us(Some(v), "Action Type ID"))
                .transpose()?,
            status: f.status.map(|v| us(Some(v), "Status")).transpose()?,
        })
    }

    /// Whether this is a request (responses have the high bit set).
    pub fn is_request(&self) -> bool {
        self.field & field::RESPONSE_BIT == 0
    }
}

/// The first value of a US element. Missing or empty is `Missing`; a value
/// that is not whole 16-bit words is malformed.
fn us(value: Option<&[u8]>, name: &'static str) -> Result<u16, Error> {
    let value = value
        .filter(|v| !v.is_empty())
        .ok_or(Error::Missing(name))?;
    match value.first_chunk::<2>() {
        Some(first) if value.len() % 2 == 0 => Ok(u16::from_le_bytes(*first)),
        _ => Err(Error::Parse(format!(
            "{name} has an odd length ({})",
            value.len()
        ))),
    }
}

/// A UI value as text, trailing NUL/space padding removed (odd lengths are
/// tolerated: the padding is what is missing). Empty is absent.
fn ui(value: Option<&[u8]>) -> Result<Option<String>, Error> {
    let Some(value) = value else { return Ok(None) };
    let text = DefaultCharacterSetCodec
        .decode(value)
        .map_err(|e| Error::Parse(format!("UID value: {e}")))?;
    let text = text
        .split('\\')
        .map(|s| s.trim_end_matches(['\0', ' ']))
        .collect::<Vec<_>>()
        .join("\\");
    Ok(Some(text))
}

/// A US element of a command set.
pub fn us_elem(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

/// A UI element of a command set.
pub fn ui_elem(tag: Tag, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::UI, PrimitiveValue::from(v))
}

/// Error Comment (0000,0902): `comment` cut to the 64 printable ASCII
/// characters LO allows (no backslash: it would split the value).
pub fn error_comment(comment: &str) -> DataElement<InMemDicomObject> {
    let cut: String = comment
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
        .take(64)
        .collect();
    DataElement::new(tags::ERROR_COMMENT, VR::LO, PrimitiveValue::from(cut))
}

/// A command set in Implicit VR Little Endian (PS3.7 §6.3.1), group
/// length included.
pub fn encode_command(
    elements: impl IntoIterator<Item = DataElement<InMemDicomObject>>,
) -> Vec<u8> {
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut out = Vec::with_capacity(200);
    obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .expect("writing a command set to memory cannot fail");
    out
}

/// The response to `req` with `status`; `comment` goes into Error Comment
/// (0000,0902) on failures.
pub fn response(req: &Command, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut elements = Vec::with_capacity(7);
    if let Some(class) = &req.affected_sop_class {
        elements.push(ui_elem(tags::AFFECTED_SOP_CLASS_UID, class));
    }
    elements.push(us_elem(
        tags::COMMAND_FIELD,
        req.field | field::RESPONSE_BIT,
    ));
    elements.push(us_elem(tags::MESSAGE_ID_BEING_RESPONDED_TO, req.message_id));
    elements.push(us_elem(tags::COMMAND_DATA_SET_TYPE, NO_DATASET));
    elements.push(us_elem(tags::STATUS, status));
    if let Some(instance) = &req.affected_sop_instance {
        elements.push(ui_elem(tags::AFFECTED_SOP_INSTANCE_UID, instance));
    }
    if let Some(comment) = comment.filter(|_| status != status::SUCCESS) {
        elements.push(error_comment(comment));
    }
    encode_command(elements)
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
        // A response parses, its MessageIDBeingRespondedTo as the id.
        let rsp = Command::parse(&response(&cmd, status::DATASET_MISMATCH, None)).unwrap();
        assert_eq!((rsp.message_id, rsp.status), (7, Some(0xA900)));
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

    /// One Implicit VR LE element.
    fn el(element: u16, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0];
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// A C-STORE-RQ laid out the way DCMTK's storescu sends it: group
    /// length first, Priority, UIDs padded with a NUL to even length.
    fn storescu_like() -> Vec<u8> {
        let body = [
            el(0x0002, b"1.2.840.10008.5.1.4.1.1.7\0"),
            el(0x0100, &0x0001u16.to_le_bytes()),
            el(0x0110, &0x0003u16.to_le_bytes()),
            el(0x0700, &0x0000u16.to_le_bytes()),
            el(0x0800, &0x0000u16.to_le_bytes()),
            el(0x1000, b"1.2.276.0.7230010.3.1.4.1787205428.1.17\0"),
        ]
        .concat();
        let mut out = el(0x0000, &(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn parses_a_storescu_command_set_and_round_trips_the_response() {
        let cmd = Command::parse(&storescu_like()).unwrap();
        assert_eq!(
            cmd,
            Command {
                field: field::C_STORE_RQ,
                message_id: 3,
                affected_sop_class: Some("1.2.840.10008.5.1.4.1.1.7".into()),
                affected_sop_instance: Some("1.2.276.0.7230010.3.1.4.1787205428.1.17".into()),
                has_dataset: true,
                action_type: None,
                status: None,
            }
        );
        // The response parses back with dicom-object (the writer side is
        // unchanged) and carries what the request named.
        let bytes = response(&cmd, status::SUCCESS, None);
        let obj =
            InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .unwrap();
        assert_eq!(
            obj.element(tags::AFFECTED_SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap(),
            "1.2.276.0.7230010.3.1.4.1787205428.1.17"
        );
    }

    #[test]
    fn a_length_past_the_end_is_refused_without_allocating_it() {
        // What made the old parser zero-fill 4 GiB: (0000,0902) declaring
        // 0xFFFFFFF0 bytes in a ~100-byte command set.
        let mut bytes = storescu_like();
        bytes.extend_from_slice(&[0, 0, 0x02, 0x09, 0xF0, 0xFF, 0xFF, 0xFF]);
        bytes.extend_from_slice(b"short");
        let err = Command::parse(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("(0000,0902) declares 4294967280 bytes"),
            "{err}"
        );
        // Undefined length is no different.
        let mut bytes = storescu_like();
        bytes.extend_from_slice(&[0, 0, 0x00, 0x10, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(Command::parse(&bytes).is_err());
    }

    #[test]
    fn truncated_input_is_refused_at_every_cut() {
        let bytes = storescu_like();
        // Element boundaries: a cut there leaves a shorter, valid command set.
        let mut boundaries = vec![];
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            at += 8 + len;
            boundaries.push(at);
        }
        for cut in 1..bytes.len() {
            let parsed = Command::parse(&bytes[..cut]);
            if !boundaries.contains(&cut) {
                assert!(
                    matches!(parsed, Err(Error::Parse(_))),
                    "cut at {cut}: {parsed:?}"
                );
            }
        }
    }

    #[test]
    fn elements_outside_group_0000_are_refused() {
        let mut bytes = storescu_like();
        bytes.extend_from_slice(&[0x08, 0x00, 0x18, 0x00, 2, 0, 0, 0, b'1', 0]);
        let err = Command::parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("(0008,0018) is not in group 0000"), "{err}");
    }

    #[test]
    fn odd_lengths_of_numbers_are_refused_and_of_uids_tolerated() {
        let bytes = [
            el(0x0100, &[0x01, 0x00, 0x00]),
            el(0x0110, &1u16.to_le_bytes()),
            el(0x0800, &0x0101u16.to_le_bytes()),
        ]
        .concat();
        let err = Command::parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("Command Field has an odd length (3)"), "{err}");
        let bytes = [
            el(0x0002, b"1.2.840.10008.1.1"),
            el(0x0100, &field::C_ECHO_RQ.to_le_bytes()),
            el(0x0110, &9u16.to_le_bytes()),
            el(0x0800, &0x0101u16.to_le_bytes()),
        ]
        .concat();
        let cmd = Command::parse(&bytes).unwrap();
        assert_eq!(cmd.affected_sop_class.as_deref(), Some("1.2.840.10008.1.1"));
        assert!(!cmd.has_dataset);
    }

    #[test]
    fn oversized_command_sets_are_refused() {
        let mut bytes = storescu_like();
        bytes.extend(el(0x0700, &vec![0; MAX_COMMAND_BYTES]));
        let err = Command::parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("more than the 65536 allowed"), "{err}");
    }

    #[test]
    fn c_cancel_uses_the_message_id_being_responded_to() {
        let bytes = [
            el(0x0100, &field::C_CANCEL_RQ.to_le_bytes()),
            el(0x0120, &42u16.to_le_bytes()),
            el(0x0800, &0x0101u16.to_le_bytes()),
        ]
        .concat();
        assert_eq!(Command::parse(&bytes).unwrap().message_id, 42);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Command::parse(&[0xff; 11]).is_err());
        assert!(Command::parse(&[]).is_err());
    }
}
