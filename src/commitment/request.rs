//! Reading an N-ACTION-RQ of the Storage Commitment Push Model: its command
//! fields and its data set (Transaction UID, Referenced SOP Sequence).
//!
//! The data set comes from the network and is read by hand, not by
//! dicom-object: the walk below is iterative with a fixed depth limit, never
//! allocates more than the references it keeps (at most
//! [`MAX_REFERENCES`]), checks every length against what remains before
//! using it, and turns anything malformed into the N-ACTION-RSP status
//! PS3.7 C.4.4 / PS3.4 J.3.2.1.1 give for it — never a panic.

use super::Reference;
use crate::dicom::dimse::Command;
use crate::uid::Uid;

/// The largest N-ACTION data set accepted. 100,000 references of real
/// length are about 11 MB.
pub const MAX_DATASET_BYTES: usize = 16 * 1024 * 1024;
/// The most references one request may carry.
pub const MAX_REFERENCES: usize = 100_000;
/// Sequences nested deeper than this are refused (the request needs one).
const MAX_DEPTH: usize = 8;

/// N-ACTION-RSP statuses (PS3.7 C.4.4, Annex C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    pub const INVALID_ATTRIBUTE_VALUE: u16 = 0x0106;
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    pub const INVALID_ARGUMENT_VALUE: u16 = 0x0115;
    pub const INVALID_OBJECT_INSTANCE: u16 = 0x0117;
    pub const NO_SUCH_SOP_CLASS: u16 = 0x0118;
    pub const MISSING_ATTRIBUTE: u16 = 0x0120;
    pub const MISSING_ATTRIBUTE_VALUE: u16 = 0x0121;
    pub const NO_SUCH_ACTION: u16 = 0x0123;
    pub const RESOURCE_LIMITATION: u16 = 0x0213;
}

/// A request refused, with the status and Error Comment to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub comment: String,
}

fn refuse<T>(status: u16, comment: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        status,
        comment: comment.into(),
    })
}

/// A well-formed storage commitment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub transaction: Uid,
    pub references: Vec<Reference>,
}

/// Checks the N-ACTION-RQ command fields (before its data set is read).
pub fn check_command(command: &Command) -> Result<(), Refusal> {
    match command.affected_sop_class.as_deref() {
        Some(super::SOP_CLASS) => {}
        other => {
            return refuse(
                status::NO_SUCH_SOP_CLASS,
                format!("N-ACTION for SOP class {other:?} is not supported"),
            );
        }
    }
    if command.affected_sop_instance.as_deref() != Some(super::SOP_INSTANCE) {
        return refuse(
            status::INVALID_OBJECT_INSTANCE,
            "Requested SOP Instance must be 1.2.840.10008.1.20.1.1",
        );
    }
    match command.action_type {
        Some(1) => Ok(()),
        Some(other) => refuse(status::NO_SUCH_ACTION, format!("Action Type ID {other}")),
        None => refuse(status::MISSING_ATTRIBUTE, "no Action Type ID"),
    }
}

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

const TRANSACTION_UID: (u16, u16) = (0x0008, 0x1195);
const REFERENCED_SOP_SEQUENCE: (u16, u16) = (0x0008, 0x1199);
const REFERENCED_SOP_CLASS: (u16, u16) = (0x0008, 0x1150);
const REFERENCED_SOP_INSTANCE: (u16, u16) = (0x0008, 0x1155);
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

#[derive(Debug)]
enum Kind {
    /// A sequence; `refs` for the top-level Referenced SOP Sequence.
    Sequence { refs: bool },
    /// An item; `refs` for an item of the Referenced SOP Sequence.
    Item { refs: bool },
}

#[derive(Debug)]
struct Frame {
    kind: Kind,
    /// Where it ends when its length was given.
    end: Option<usize>,
}

/// What has been read so far.
#[derive(Default)]
struct Found {
    transaction: Option<Vec<u8>>,
    sequence_seen: bool,
    references: Vec<Reference>,
    class: Option<Vec<u8>>,
    instance: Option<Vec<u8>>,
}

/// Parses the N-ACTION data set, encoded in transfer syntax `ts`.
pub fn parse(bytes: &[u8], ts: &str) -> Result<Action, Refusal> {
    let explicit = match ts {
        IMPLICIT_VR_LE => false,
        EXPLICIT_VR_LE => true,
        other => {
            return refuse(
                status::INVALID_ARGUMENT_VALUE,
                format!("transfer syntax {other} not supported for storage commitment"),
            );
        }
    };
    if bytes.len() > MAX_DATASET_BYTES {
        return refuse(status::RESOURCE_LIMITATION, "data set larger than 16 MiB");
    }
    let bad = |why: String| Refusal {
        status: status::INVALID_ARGUMENT_VALUE,
        comment: why,
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut found = Found::default();
    let mut p = 0usize;
    loop {
        // Close the frames whose given length ends here.
        while let Some(end) = stack.last().and_then(|f| f.end) {
            match p.cmp(&end) {
                std::cmp::Ordering::Less => break,
                std::cmp::Ordering::Equal => {
                    let frame = stack.pop().expect("just looked");
                    close(frame, &mut found)?;
                }
                std::cmp::Ordering::Greater => {
                    return Err(bad(format!("an element runs past its item at {p}")));
                }
            }
        }
        if p == bytes.len() {
            break;
        }
        let (tag, vr, len, value_at) = header(bytes, p, explicit).map_err(bad)?;
        let in_sequence = matches!(
            stack.last(),
            Some(Frame {
                kind: Kind::Sequence { .. },
                ..
            })
        );
        let limit = stack
            .iter()
            .rev()
            .find_map(|f| f.end)
            .unwrap_or(bytes.len());
        let defined_end = |len: u32| -> Result<usize, Refusal> {
            usize::try_from(len)
                .ok()
                .and_then(|l| value_at.checked_add(l))
                .filter(|&e| e <= limit)
                .ok_or_else(|| bad(format!("length {len} at {p} runs past the data set")))
        };
        match tag {
            ITEM => {
                let Some(Frame {
                    kind: Kind::Sequence { refs },
                    ..
                }) = stack.last()
                else {
                    return Err(bad(format!("item outside a sequence at {p}")));
                };
                let refs = *refs;
                if refs {
                    if found.references.len() >= MAX_REFERENCES {
                        return refuse(
                            status::RESOURCE_LIMITATION,
                            format!("more than {MAX_REFERENCES} references"),
                        );
                    }
                    found.class = None;
                    found.instance = None;
                }
                let end = if len == UNDEFINED {
                    None
                } else {
                    Some(defined_end(len)?)
                };
                push(&mut stack, Kind::Item { refs }, end).map_err(bad)?;
                p = value_at;
            }
            ITEM_END | SEQUENCE_END => {
                let want_item = tag == ITEM_END;
                let top_matches = match stack.last() {
                    Some(Frame {
                        kind: Kind::Item { .. },
                        end: None,
                    }) => want_item,
                    Some(Frame {
                        kind: Kind::Sequence { .. },
                        end: None,
                    }) => !want_item,
                    _ => false,
                };
                if !top_matches {
                    return Err(bad(format!("unexpected delimiter at {p}")));
                }
                let frame = stack.pop().expect("matched above");
                close(frame, &mut found)?;
                p = value_at;
            }
            _ if in_sequence => {
                return Err(bad(format!("element in a sequence outside an item at {p}")));
            }
            _ => {
                let is_sequence = vr == Some(*b"SQ")
                    || (len == UNDEFINED && vr.is_none())
                    || (tag == REFERENCED_SOP_SEQUENCE && stack.is_empty());
                let top = stack.is_empty();
                let in_ref_item = matches!(
                    stack.last(),
                    Some(Frame {
                        kind: Kind::Item { refs: true },
                        ..
                    })
                );
                if is_sequence {
                    let refs = top && tag == REFERENCED_SOP_SEQUENCE;
                    if refs {
                        if found.sequence_seen {
                            return Err(bad("two Referenced SOP Sequences".into()));
                        }
                        found.sequence_seen = true;
                    }
                    let end = if len == UNDEFINED {
                        None
                    } else {
                        Some(defined_end(len)?)
                    };
                    if let (false, Some(end)) = (refs, end) {
                        // Nothing in it is ours: skip it by its length.
                        p = end;
                        continue;
                    }
                    push(&mut stack, Kind::Sequence { refs }, end).map_err(bad)?;
                    p = value_at;
                    continue;
                }
                if len == UNDEFINED {
                    return Err(bad(format!(
                        "undefined length on ({:04X},{:04X})",
                        tag.0, tag.1
                    )));
                }
                let end = defined_end(len)?;
                let value = &bytes[value_at..end];
                if top && tag == TRANSACTION_UID {
                    found.transaction = Some(value.to_vec());
                } else if in_ref_item && tag == REFERENCED_SOP_CLASS {
                    found.class = Some(value.to_vec());
                } else if in_ref_item && tag == REFERENCED_SOP_INSTANCE {
                    found.instance = Some(value.to_vec());
                }
                p = end;
            }
        }
    }
    if !stack.is_empty() {
        return Err(bad("data set ends inside a sequence (truncated)".into()));
    }
    let transaction = match found.transaction {
        None => return refuse(status::MISSING_ATTRIBUTE, "no Transaction UID"),
        Some(v) => uid(&v, "Transaction UID")?,
    };
    if !found.sequence_seen {
        return refuse(status::MISSING_ATTRIBUTE, "no Referenced SOP Sequence");
    }
    if found.references.is_empty() {
        return refuse(
            status::MISSING_ATTRIBUTE_VALUE,
            "Referenced SOP Sequence is empty",
        );
    }
    Ok(Action {
        transaction,
        references: found.references,
    })
}

fn push(stack: &mut Vec<Frame>, kind: Kind, end: Option<usize>) -> Result<(), String> {
    if stack.len() >= MAX_DEPTH {
        return Err(format!("sequences nested deeper than {}", MAX_DEPTH / 2));
    }
    stack.push(Frame { kind, end });
    Ok(())
}

/// Ends a frame; an item of the Referenced SOP Sequence becomes a reference.
fn close(frame: Frame, found: &mut Found) -> Result<(), Refusal> {
    if let Kind::Item { refs: true } = frame.kind {
        let n = found.references.len() + 1;
        let (Some(class), Some(instance)) = (found.class.take(), found.instance.take()) else {
            return refuse(
                status::MISSING_ATTRIBUTE,
                format!("reference {n} lacks its SOP Class or Instance UID"),
            );
        };
        found.references.push(Reference {
            class: uid(&class, "Referenced SOP Class UID")?.as_str().to_owned(),
            instance: uid(&instance, "Referenced SOP Instance UID")?
                .as_str()
                .to_owned(),
        });
    }
    Ok(())
}

/// A UI value, validated.
fn uid(value: &[u8], name: &str) -> Result<Uid, Refusal> {
    let text = std::str::from_utf8(value).map_err(|_| Refusal {
        status: status::INVALID_ATTRIBUTE_VALUE,
        comment: format!("{name} is not ASCII"),
    })?;
    if text.trim_end_matches(['\0', ' ']).is_empty() {
        return refuse(status::MISSING_ATTRIBUTE_VALUE, format!("{name} is empty"));
    }
    Uid::parse(text).map_err(|e| Refusal {
        status: status::INVALID_ATTRIBUTE_VALUE,
        comment: format!("{name}: {e}"),
    })
}

/// Reads the element header at `p`: tag, VR (explicit only), length, and
/// where the value starts.
#[allow(clippy::type_complexity)]
fn header(
    bytes: &[u8],
    p: usize,
    explicit: bool,
) -> Result<((u16, u16), Option<[u8; 2]>, u32, usize), String> {
    let rest = bytes.get(p..).unwrap_or(&[]);
    let truncated = || format!("truncated element header at {p}");
    let head: &[u8; 8] = rest.first_chunk().ok_or_else(truncated)?;
    let tag = (
        u16::from_le_bytes([head[0], head[1]]),
        u16::from_le_bytes([head[2], head[3]]),
    );
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if !explicit || tag.0 == 0xFFFE {
        return Ok((tag, None, u32_at(&head[4..8]), p + 8));
    }
    let vr = [head[4], head[5]];
    if !vr.iter().all(u8::is_ascii_uppercase) {
        return Err(format!("bad VR at {p}"));
    }
    match &vr {
        b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR"
        | b"UT" | b"UV" => {
            let long: &[u8; 12] = rest.first_chunk().ok_or_else(truncated)?;
            Ok((tag, Some(vr), u32_at(&long[8..12]), p + 12))
        }
        _ => Ok((
            tag,
            Some(vr),
            u32::from(u16::from_le_bytes([head[6], head[7]])),
            p + 8,
        )),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
