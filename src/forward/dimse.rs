//! The SCU half of C-STORE: the request's command set out, the response's
//! status in. Commands are Implicit VR Little Endian (PS3.7 §6.3.1).

use dicom_dictionary_std::tags;

use crate::dicom::dimse::{encode_command, ui_elem as ui, us_elem as us};

/// The largest response command set accepted (a real one is ~200 bytes).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A C-STORE-RQ command set: medium priority, a data set follows, no Move
/// Originator (this is not a C-MOVE sub-operation).
pub fn store_request(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    encode_command([
        ui(tags::AFFECTED_SOP_CLASS_UID, sop_class),
        us(tags::COMMAND_FIELD, 0x0001),
        us(tags::MESSAGE_ID, message_id),
        us(tags::PRIORITY, 0x0000),
        us(tags::COMMAND_DATA_SET_TYPE, 0x0000),
        ui(tags::AFFECTED_SOP_INSTANCE_UID, sop_instance),
    ])
}

/// What a C-STORE-RSP said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreResponse {
    pub command_field: u16,
    pub responded_to: Option<u16>,
    pub status: u16,
    pub comment: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the destination's response cannot be parsed: {0}")]
pub struct ParseError(String);

/// Parses a response command set. Bounded: every length is checked against
/// what remains, values are borrowed, only the few fields read are kept.
pub fn parse_response(bytes: &[u8]) -> Result<StoreResponse, ParseError> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(ParseError(format!("{} bytes", bytes.len())));
    }
    let mut rest = bytes;
    let (mut field, mut responded_to, mut status, mut comment) = (None, None, None, None);
    while !rest.is_empty() {
        let Some((head, tail)) = rest.split_first_chunk::<8>() else {
            return Err(ParseError("truncated element header".into()));
        };
        let group = u16::from_le_bytes([head[0], head[1]]);
        let element = u16::from_le_bytes([head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if group != 0 {
            return Err(ParseError(format!("element in group {group:04X}")));
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= tail.len())
            .ok_or_else(|| ParseError(format!("(0000,{element:04X}) longer than the rest")))?;
        let (value, after) = tail.split_at(len);
        rest = after;
        let us = || -> Result<u16, ParseError> {
            let v: [u8; 2] = value
                .try_into()
                .map_err(|_| ParseError(format!("(0000,{element:04X}) is not 2 bytes")))?;
            Ok(u16::from_le_bytes(v))
        };
        match element {
            0x0100 => field = Some(us()?),
            0x0120 => responded_to = Some(us()?),
            0x0900 => status = Some(us()?),
            0x0902 => {
                let text: String = String::from_utf8_lossy(value)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect();
                comment = Some(text.trim().to_owned()).filter(|t| !t.is_empty());
            }
            _ => {}
        }
    }
    Ok(StoreResponse {
        command_field: field.ok_or_else(|| ParseError("no Command Field".into()))?,
        responded_to,
        status: status.ok_or_else(|| ParseError("no Status".into()))?,
        comment,
    })
}

/// What to do with an item after the destination answered `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Success or a warning: stored there.
    Sent,
    /// Out of resources and the like: try again later.
    Transient,
    /// Refused for good (the data set, the SOP class, …).
    Permanent,
}

/// PS3.4 B.2.3: 0000 and the warnings (0001, 0107, 0116, Bxxx) are stored;
/// A7xx (out of resources) and 0213/0210 (resource limitation, duplicate
/// invocation) may pass; every other failure is final.
///
/// 0111 (Duplicate SOP Instance) counts as sent: the destination holds the
/// instance already. The queue is at-least-once (a resend after a crash or
/// a lost association, a study sent again when a `study_stable` rule fires
/// anew), and a destination that refuses duplicates (dcm4chee's "reject",
/// this gateway's `duplicates = "reject"`) must not turn those into failed
/// items.
pub fn verdict(status: u16) -> Verdict {
    match status {
        0x0000 | 0x0001 | 0x0107 | 0x0116 | 0x0111 => Verdict::Sent,
        s if s & 0xF000 == 0xB000 => Verdict::Sent,
        s if s & 0xFF00 == 0xA700 => Verdict::Transient,
        0x0210 | 0x0213 => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_through_the_gateways_own_parser() {
        let rq = store_request(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4");
        let cmd = crate::dicom::dimse::Command::parse(&rq).unwrap();
        assert_eq!(cmd.field, 0x0001);
        assert_eq!(cmd.message_id, 7);
        assert!(cmd.has_dataset);
        assert_eq!(cmd.affected_sop_instance.as_deref(), Some("1.2.3.4"));
        let rsp = crate::dicom::dimse::response(&cmd, 0xA700, Some("disk full"));
        let parsed = parse_response(&rsp).unwrap();
        assert_eq!(parsed.command_field, 0x8001);
        assert_eq!(parsed.responded_to, Some(7));
        assert_eq!(parsed.status, 0xA700);
        assert_eq!(parsed.comment.as_deref(), Some("disk full"));
    }

    #[test]
    fn hostile_responses_are_errors() {
        assert!(parse_response(&[0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_response(&[8, 0, 0x16, 0, 2, 0, 0, 0, 1, 1]).is_err());
        assert!(parse_response(&[0, 0, 0, 9, 1, 0, 0, 0, 1]).is_err());
        assert!(parse_response(&[1, 2, 3]).is_err());
        assert!(parse_response(&[]).is_err());
    }

    #[test]
    fn statuses_sort_into_sent_retry_and_final() {
        assert_eq!(verdict(0x0000), Verdict::Sent);
        assert_eq!(verdict(0xB007), Verdict::Sent);
        assert_eq!(verdict(0x0111), Verdict::Sent, "already there");
        assert_eq!(verdict(0xA700), Verdict::Transient);
        assert_eq!(verdict(0xA7FF), Verdict::Transient);
        assert_eq!(verdict(0xA900), Verdict::Permanent);
        assert_eq!(verdict(0xC000), Verdict::Permanent);
        assert_eq!(verdict(0x0122), Verdict::Permanent);
    }
}
