//! The top-level elements a header scan keeps, and their values decoded the
//! way dicom-object's "preserved" read did (so indexing is unchanged): text
//! split on `\` and decoded in the data set's character set, numbers from
//! binary VRs in the data set's byte order.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::text::{DefaultCharacterSetCodec, SpecificCharacterSet, TextCodec};

use super::Error;

/// Longest value kept for a UID (PS3.5 allows 64; leniency up to here).
pub const MAX_UID_VALUE: u32 = 1024;
/// Longest value kept for any other wanted element: far above what PS3.5
/// allows any of them (64 characters a value for most), and small enough
/// that every kept value of a header together stays well under 1 MiB. A
/// longer value is cut here, not refused (a modality would retry it for
/// ever).
pub const MAX_TEXT_VALUE: u32 = 8 * 1024;
/// Values of a multi-valued element kept apart; what follows stays in the
/// last one, so the joined text is unchanged. (A value of 8,000 backslashes
/// must not become 8,000 strings.)
const MAX_VALUES: usize = 16;

/// The data set elements `Header` is built from, with the VR the standard
/// gives them (used for Implicit VR data sets). Sorted by tag.
pub const WANTED: &[(Tag, VR)] = &[
    (tags::SPECIFIC_CHARACTER_SET, VR::CS),
    (tags::SOP_CLASS_UID, VR::UI),
    (tags::SOP_INSTANCE_UID, VR::UI),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::MODALITY, VR::CS),
    (tags::INSTITUTION_NAME, VR::LO),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_DESCRIPTION, VR::LO),
    (tags::SERIES_DESCRIPTION, VR::LO),
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
    (tags::PATIENT_SIZE, VR::DS),
    (tags::PATIENT_WEIGHT, VR::DS),
    (tags::STUDY_INSTANCE_UID, VR::UI),
    (tags::SERIES_INSTANCE_UID, VR::UI),
    (tags::SERIES_NUMBER, VR::IS),
    (tags::INSTANCE_NUMBER, VR::IS),
    (tags::SAMPLES_PER_PIXEL, VR::US),
    (tags::PHOTOMETRIC_INTERPRETATION, VR::CS),
    (tags::NUMBER_OF_FRAMES, VR::IS),
    (tags::ROWS, VR::US),
    (tags::COLUMNS, VR::US),
    (tags::BITS_ALLOCATED, VR::US),
    (tags::BITS_STORED, VR::US),
    (tags::HIGH_BIT, VR::US),
    (tags::PIXEL_REPRESENTATION, VR::US),
    (tags::RESCALE_INTERCEPT, VR::DS),
    (tags::RESCALE_SLOPE, VR::DS),
];

/// The position of `tag` in [`WANTED`], if it is kept.
pub fn wanted(tag: Tag) -> Option<usize> {
    WANTED.binary_search_by(|(t, _)| t.cmp(&tag)).ok()
}

/// The most bytes kept for a value of `vr`.
pub fn cap(vr: VR) -> u32 {
    if vr == VR::UI {
        MAX_UID_VALUE
    } else {
        MAX_TEXT_VALUE
    }
}

/// A kept value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Empty,
    /// Multi-valued text (split on `\`).
    Strs(Vec<String>),
    /// Single-valued text (LT, ST, UT, UR).
    Str(String),
    /// The first value of a binary integer VR.
    Int(i128),
    /// The first value of a binary float VR.
    Float(f64),
    /// Present but nothing `Header` can read (binary blobs, AT).
    Other,
}

/// Decodes a value of `vr` (`big_endian` for Explicit VR Big Endian) in
/// `charset`.
pub fn decode(
    tag: Tag,
    vr: VR,
    bytes: &[u8],
    big_endian: bool,
    charset: &SpecificCharacterSet,
) -> Result<Value, Error> {
    if bytes.is_empty() {
        return Ok(Value::Empty);
    }
    let bad_text = |e: dicom_encoding::text::DecodeTextError| {
        Error::Parse(format!("element {tag} text cannot be decoded: {e}"))
    };
    let first = |n: usize| -> Option<&[u8]> { bytes.get(..n) };
    let int = |n: usize| -> Value {
        let Some(b) = first(n) else {
            return Value::Other;
        };
        let mut raw = [0u8; 8];
        if big_endian {
            raw[8 - n..].copy_from_slice(b);
            raw.reverse();
        } else {
            raw[..n].copy_from_slice(b);
        }
        let u = u64::from_le_bytes(raw);
        Value::Int(match (vr, n) {
            (VR::SS, _) => i128::from(u as u16 as i16),
            (VR::SL, _) => i128::from(u as u32 as i32),
            (VR::SV, _) => i128::from(u as i64),
            _ => i128::from(u),
        })
    };
    Ok(match vr {
        VR::AE | VR::CS | VR::AS => Value::Strs(
            bytes
                .splitn(MAX_VALUES, |b| *b == b'\\')
                .map(|part| DefaultCharacterSetCodec.decode(part))
                .collect::<Result<_, _>>()
                .map_err(bad_text)?,
        ),
        VR::PN | VR::SH | VR::LO | VR::UC | VR::UI | VR::IS | VR::DS | VR::DA | VR::TM | VR::DT => {
            Value::Strs(
                bytes
                    .splitn(MAX_VALUES, |b| *b == b'\\')
                    .map(|part| charset.decode(part))
                    .collect::<Result<_, _>>()
                    .map_err(bad_text)?,
            )
        }
        VR::UT | VR::ST | VR::UR | VR::LT => Value::Str(charset.decode(bytes).map_err(bad_text)?),
        VR::US | VR::OW => int(2),
        VR::SS => int(2),
        VR::UL | VR::OL | VR::SL => int(4),
        VR::UV | VR::OV | VR::SV => int(8),
        VR::FL | VR::OF => match first(4) {
            Some(b) => {
                let raw = [b[0], b[1], b[2], b[3]];
                let v = if big_endian {
                    f32::from_be_bytes(raw)
                } else {
                    f32::from_le_bytes(raw)
                };
                Value::Float(f64::from(v))
            }
            None => Value::Other,
        },
        VR::FD | VR::OD => match first(8) {
            Some(b) => {
                let raw: [u8; 8] = b.try_into().expect("8 bytes");
                Value::Float(if big_endian {
                    f64::from_be_bytes(raw)
                } else {
                    f64::from_le_bytes(raw)
                })
            }
            None => Value::Other,
        },
        VR::OB | VR::UN => match bytes.first() {
            Some(b) => Value::Int(i128::from(*b)),
            None => Value::Other,
        },
        VR::AT | VR::SQ => Value::Other,
    })
}

/// The character set a Specific Character Set value selects (its first
/// value; an unknown one keeps the default, as dicom-object did).
pub fn charset(value: &Value) -> SpecificCharacterSet {
    match value {
        Value::Strs(parts) => parts
            .first()
            .and_then(|name| SpecificCharacterSet::from_code(name))
            .unwrap_or_default(),
        _ => SpecificCharacterSet::default(),
    }
}

impl Value {
    /// The value as text, trimmed of NUL and white space; empty is absent.
    pub fn text(&self) -> Option<String> {
        let joined = match self {
            Value::Strs(parts) if parts.len() == 1 => {
                parts[0].trim_end_matches([' ', '\0']).to_owned()
            }
            Value::Strs(parts) => parts
                .iter()
                .map(|s| s.trim_end_matches([' ', '\0']))
                .collect::<Vec<_>>()
                .join("\\"),
            Value::Str(s) => s.trim_end_matches([' ', '\0']).to_owned(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Empty | Value::Other => return None,
        };
        let trimmed = joined.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        (!trimmed.is_empty()).then(|| trimmed.to_owned())
    }

    /// The first value as an integer: a decimal string (IS) or a binary
    /// integer.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Strs(parts) => parts.first()?.trim_matches(ws_or_nul).parse().ok(),
            Value::Str(s) => s.trim_matches(ws_or_nul).parse().ok(),
            Value::Int(i) => i64::try_from(*i).ok(),
            // dicom-object's `to_int` refused FL/FD values too.
            _ => None,
        }
    }

    /// The first value as a float: a decimal string (DS, IS) or a binary
    /// number.
    pub fn float(&self) -> Option<f64> {
        match self {
            Value::Strs(parts) => parts.first()?.trim_matches(ws_or_nul).parse().ok(),
            Value::Str(s) => s.trim_matches(ws_or_nul).parse().ok(),
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

fn ws_or_nul(c: char) -> bool {
    c.is_whitespace() || c == '\0'
}
