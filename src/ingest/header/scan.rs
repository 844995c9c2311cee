//! The header scan: the preamble, the File Meta group and the data set up to
//! the pixel data, walked element by element without recursion.
//!
//! Only the top-level values `Header` needs are read into memory (each under
//! a small cap); every other value is skipped through the source's fixed
//! scratch buffer, whatever its length. Defined-length sequences and items are
//! skipped whole; undefined-length ones are walked with an explicit stack and
//! depth counter. Lengths are checked against what can follow when the total
//! is known, so a 3 GiB claim in a small file fails at once.

use std::io::{Cursor, Read};

use dicom_core::{Tag, VR};
use dicom_encoding::text::{DefaultCharacterSetCodec, SpecificCharacterSet, TextCodec};

use super::source::{Inflate, Source};
use super::values::{self, Value, WANTED};
use super::{Error, ScanLimits};

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITER: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITER: Tag = Tag(0xFFFE, 0xE0DD);
/// The first of the three pixel data tags; the scan stops at the first
/// top-level element from here on.
const FLOAT_PIXEL_DATA: Tag = Tag(0x7FE0, 0x0008);
const GROUP_LENGTH: Tag = Tag(0x0002, 0x0000);
const TRANSFER_SYNTAX: Tag = Tag(0x0002, 0x0010);
const SOURCE_AE: Tag = Tag(0x0002, 0x0016);
/// Longest meta value kept (the transfer syntax UID and an AE title).
const MAX_META_VALUE: u32 = 1024;

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

const IMPLICIT_LE: Encoding = Encoding {
    explicit: false,
    big_endian: false,
};
const EXPLICIT_LE: Encoding = Encoding {
    explicit: true,
    big_endian: false,
};
const EXPLICIT_BE: Encoding = Encoding {
    explicit: true,
    big_endian: true,
};

impl Encoding {
    fn u16(self, b: [u8; 2]) -> u16 {
        if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    fn tag(self, b: [u8; 4]) -> Tag {
        Tag(self.u16([b[0], b[1]]), self.u16([b[2], b[3]]))
    }
}

/// What a scan found.
#[derive(Debug)]
pub struct Scanned {
    pub transfer_syntax: Option<String>,
    pub source_ae: Option<String>,
    /// Indexed like [`WANTED`].
    pub values: Vec<Option<Value>>,
}

impl Scanned {
    pub fn get(&self, tag: Tag) -> Option<&Value> {
        self.values.get(values::wanted(tag)?)?.as_ref()
    }
}

/// Where the walk is: inside an undefined-length sequence (expecting items)
/// or inside an undefined-length item (expecting elements).
#[derive(Debug, Clone, Copy)]
enum Frame {
    Items(Encoding),
    Dataset(Encoding),
}

/// Bytes of structure (element headers, kept values) read so far.
struct Budget {
    used: u64,
    max: u64,
}

impl Budget {
    fn take(&mut self, n: u64) -> Result<(), Error> {
        self.used = self.used.saturating_add(n);
        if self.used > self.max {
            return Err(Error::Limit(format!(
                "header over {} bytes before the pixel data",
                self.max
            )));
        }
        Ok(())
    }
}

/// Scans a Part-10 object from its first byte; `len` is its total length
/// when known.
pub fn scan(
    reader: &mut dyn Read,
    len: Option<u64>,
    limits: &ScanLimits,
) -> Result<Scanned, Error> {
    let mut head = [0u8; 132];
    let filled = Source::new(reader, None).fill(&mut head)?;
    let head = &head[..filled];
    // The preamble is detected the way dicom-object does for files: skipped
    // when `DICM` follows it, absent when the object starts with `DICM`, and
    // otherwise assumed (so a non-DICOM object fails on the magic).
    let preamble = !(head.get(128..132) != Some(&b"DICM"[..]) && head.starts_with(b"DICM"));
    let mut whole = head.chain(reader);
    let mut src = Source::new(&mut whole, len);
    if preamble {
        src.skip(128, &|| "the preamble".to_owned())?;
    }
    let mut magic = [0u8; 4];
    if src.fill(&mut magic)? < 4 || &magic != b"DICM" {
        return Err(Error::Parse("not a DICOM file: no DICM magic".into()));
    }
    let mut budget = Budget {
        used: 0,
        max: limits.max_header_bytes,
    };
    let meta = read_meta(&mut src, &mut budget)?;
    let consumed = src.pos();
    drop(src);

    let ts = meta
        .transfer_syntax
        .as_deref()
        .map(|t| t.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
        .unwrap_or_default()
        .to_owned();
    let (encoding, deflated) = encoding_of(&ts)?;
    let mut rest = Cursor::new(meta.pushback).chain(&mut whole);
    let values = if deflated {
        let mut inflated = Inflate::new(rest, limits.max_inflated);
        walk(
            &mut Source::new(&mut inflated, None),
            encoding,
            limits,
            &mut budget,
        )?
    } else {
        let remaining = len.map(|l| l.saturating_sub(consumed) + meta.pushback_len);
        walk(
            &mut Source::new(&mut rest, remaining),
            encoding,
            limits,
            &mut budget,
        )?
    };
    Ok(Scanned {
        transfer_syntax: meta.transfer_syntax,
        source_ae: meta.source_ae,
        values,
    })
}

/// The data set encoding of a transfer syntax, and whether it is deflated.
/// Every other standard syntax (the encapsulated ones) is Explicit VR LE.
fn encoding_of(ts: &str) -> Result<(Encoding, bool), Error> {
    Ok(match ts {
        "1.2.840.10008.1.2" => (IMPLICIT_LE, false),
        "1.2.840.10008.1.2.2" => (EXPLICIT_BE, false),
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => (EXPLICIT_LE, true),
        "" => return Err(Error::Missing("Transfer Syntax UID")),
        ts if ts.starts_with("1.2.840.10008.1.2.") => (EXPLICIT_LE, false),
        ts => {
            return Err(Error::Parse(format!(
                "unsupported transfer syntax {}",
                ts.chars().take(64).collect::<String>()
            )));
        }
    })
}

struct Meta {
    transfer_syntax: Option<String>,
    source_ae: Option<String>,
    /// The first data set tag, read while looking for the end of a meta
    /// group without a group length.
    pushback: Vec<u8>,
    pushback_len: u64,
}

/// Reads the File Meta group (Explicit VR LE, group 0002). Its group length
/// ends it when present; otherwise the first element of another group does.
fn read_meta(src: &mut Source<'_>, budget: &mut Budget) -> Result<Meta, Error> {
    let mut meta = Meta {
        transfer_syntax: None,
        source_ae: None,
        pushback: Vec::new(),
        pushback_len: 0,
    };
    let mut end: Option<u64> = None;
    loop {
        if end.is_some_and(|end| src.pos() >= end) {
            break;
        }
        let mut t = [0u8; 4];
        match src.fill(&mut t)? {
            0 => break,
            4 => {}
            _ => return Err(Error::Parse("data ends inside a meta element".into())),
        }
        let tag = EXPLICIT_LE.tag(t);
        if tag.group() != 0x0002 {
            meta.pushback = t.to_vec();
            meta.pushback_len = 4;
            break;
        }
        let (_, len) = element_header(src, EXPLICIT_LE, tag, budget)?;
        if len == UNDEFINED {
            return Err(Error::Parse(format!(
                "meta element {tag} has an undefined length"
            )));
        }
        check_fits(src, tag, len)?;
        match tag {
            GROUP_LENGTH if len == 4 && end.is_none() => {
                let mut b = [0u8; 4];
                src.exact(&mut b, &|| format!("element {tag}"))?;
                budget.take(4)?;
                end = src.pos().checked_add(u64::from(u32::from_le_bytes(b)));
            }
            TRANSFER_SYNTAX | SOURCE_AE => {
                let bytes = read_value(src, tag, len, MAX_META_VALUE, false, budget)?;
                let text = DefaultCharacterSetCodec
                    .decode(&bytes)
                    .map_err(|e| Error::Parse(format!("meta element {tag}: {e}")))?;
                let text = text.trim_end_matches(['\0', ' ']).to_owned();
                if tag == TRANSFER_SYNTAX {
                    meta.transfer_syntax = Some(text);
                } else {
                    meta.source_ae = Some(text);
                }
            }
            _ => src.skip(u64::from(len), &|| format!("element {tag}"))?,
        }
    }
    Ok(meta)
}

/// Walks a data set to its first top-level pixel data element (or its end),
/// keeping the top-level values in [`WANTED`].
fn walk(
    src: &mut Source<'_>,
    top: Encoding,
    limits: &ScanLimits,
    budget: &mut Budget,
) -> Result<Vec<Option<Value>>, Error> {
    let mut kept: Vec<Option<Value>> = vec![None; WANTED.len()];
    let mut charset = SpecificCharacterSet::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut depth: u32 = 0;
    loop {
        let enc = match stack.last() {
            Some(Frame::Items(e) | Frame::Dataset(e)) => *e,
            None => top,
        };
        let mut t = [0u8; 4];
        let got = src.fill(&mut t)?;
        if got == 0 && stack.is_empty() {
            break;
        }
        if got < 4 {
            return Err(Error::Parse(if stack.is_empty() {
                "data ends inside an element tag".into()
            } else {
                "data ends inside a sequence".into()
            }));
        }
        budget.take(4)?;
        let tag = enc.tag(t);
        match stack.last() {
            Some(Frame::Items(_)) => {
                let len = read_u32(src, enc, tag, budget)?;
                match tag {
                    ITEM if len == UNDEFINED => stack.push(Frame::Dataset(enc)),
                    ITEM => {
                        check_fits(src, tag, len)?;
                        src.skip(u64::from(len), &|| "a sequence item".to_owned())?;
                    }
                    SEQUENCE_DELIMITER => {
                        stack.pop();
                        depth = depth.saturating_sub(1);
                    }
                    _ => {
                        return Err(Error::Parse(format!(
                            "sequence holds {tag} where an item belongs"
                        )));
                    }
                }
                continue;
            }
            Some(Frame::Dataset(_)) if tag == ITEM_DELIMITER => {
                read_u32(src, enc, tag, budget)?;
                stack.pop();
                continue;
            }
            Some(Frame::Dataset(_)) => {}
            None if tag >= FLOAT_PIXEL_DATA => break,
            None => {}
        }
        if tag.group() == 0xFFFE {
            return Err(Error::Parse(format!("{tag} out of place")));
        }
        let (vr, len) = element_header(src, enc, tag, budget)?;
        if len == UNDEFINED {
            // A sequence, encapsulated (fragments in items), or UN, whose
            // items are Implicit VR LE (PS3.5 §6.2.2).
            let inner = if enc.explicit && vr == VR::UN {
                IMPLICIT_LE
            } else {
                enc
            };
            depth += 1;
            if depth > limits.max_depth {
                return Err(Error::Limit(format!(
                    "sequence nesting deeper than {}",
                    limits.max_depth
                )));
            }
            stack.push(Frame::Items(inner));
            continue;
        }
        check_fits(src, tag, len)?;
        let slot = values::wanted(tag).filter(|_| stack.is_empty() && vr != VR::SQ);
        match slot {
            Some(i) => {
                let bytes = read_value(src, tag, len, values::cap(vr), vr != VR::UI, budget)?;
                let value = values::decode(tag, vr, &bytes, enc.big_endian, &charset)?;
                if tag == dicom_dictionary_std::tags::SPECIFIC_CHARACTER_SET {
                    charset = values::charset(&value);
                }
                kept[i] = Some(value);
            }
            None => src.skip(u64::from(len), &|| format!("element {tag}"))?,
        }
    }
    Ok(kept)
}

/// Reads a data element's VR and length after its tag. In Implicit VR the
/// VR is the standard's for kept elements (others are never decoded).
fn element_header(
    src: &mut Source<'_>,
    enc: Encoding,
    tag: Tag,
    budget: &mut Budget,
) -> Result<(VR, u32), Error> {
    let what = || format!("the header of element {tag}");
    if !enc.explicit {
        let len = read_u32(src, enc, tag, budget)?;
        let vr = values::wanted(tag).map_or(VR::UN, |i| WANTED[i].1);
        // Undefined length in Implicit VR is a sequence.
        let vr = if len == UNDEFINED && vr != VR::UN {
            VR::SQ
        } else {
            vr
        };
        return Ok((vr, len));
    }
    let mut b = [0u8; 2];
    src.exact(&mut b, &what)?;
    budget.take(2)?;
    let vr = VR::from_binary(b).ok_or_else(|| {
        Error::Parse(format!(
            "element {tag} has an unknown VR {:02X}{:02X}",
            b[0], b[1]
        ))
    })?;
    let long = matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    );
    if long {
        src.exact(&mut b, &what)?;
        budget.take(2)?;
        Ok((vr, read_u32(src, enc, tag, budget)?))
    } else {
        src.exact(&mut b, &what)?;
        budget.take(2)?;
        Ok((vr, u32::from(enc.u16(b))))
    }
}

fn read_u32(
    src: &mut Source<'_>,
    enc: Encoding,
    tag: Tag,
    budget: &mut Budget,
) -> Result<u32, Error> {
    let mut b = [0u8; 4];
    src.exact(&mut b, &|| format!("the header of element {tag}"))?;
    budget.take(4)?;
    Ok(enc.u32(b))
}

/// A length past the end of the data (when the end is known) is refused
/// before anything is read or skipped.
fn check_fits(src: &Source<'_>, tag: Tag, len: u32) -> Result<(), Error> {
    match src.remaining() {
        Some(rem) if u64::from(len) > rem => Err(Error::Limit(format!(
            "element {tag} declares {len} bytes, past the end of the data"
        ))),
        _ => Ok(()),
    }
}

/// Reads a kept value of at most `cap` bytes; a longer one is an error, or
/// with `cut` (text) is cut to `cap` bytes and the rest skipped.
fn read_value(
    src: &mut Source<'_>,
    tag: Tag,
    len: u32,
    cap: u32,
    cut: bool,
    budget: &mut Budget,
) -> Result<Vec<u8>, Error> {
    if len > cap && !cut {
        return Err(Error::Limit(format!(
            "element {tag} value of {len} bytes is over the {cap}-byte limit"
        )));
    }
    // Text past the cap is cut: only its first `cap` bytes are kept.
    let kept = len.min(cap);
    budget.take(u64::from(kept))?;
    let mut bytes = vec![0u8; kept as usize];
    src.exact(&mut bytes, &|| format!("element {tag}"))?;
    src.skip(u64::from(len - kept), &|| format!("element {tag}"))?;
    Ok(bytes)
}
