//! The Part-10 header the gateway writes in front of received data sets, and
//! the read-back of a stored header for indexing: a bounded, streaming scan
//! (see `scan`) that keeps only the values indexing needs.

use std::io::{Read, Write};
use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;

mod scan;
mod source;
#[cfg(test)]
mod tests;
mod values;

use scan::Scanned;
pub use source::MAX_INFLATION_RATIO;
use values::Value;

use crate::index::{InstanceTags, StudyTags};
use crate::uid::Uid;

/// Our implementation class UID (a UUID-derived 2.25 UID) and version name.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.181020143912786237468830125306412847733";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("DICOMGW_", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build file meta information: {0}")]
    Meta(String),
    #[error("data set cannot be parsed: {0}")]
    Parse(String),
    #[error("data set has no {0}")]
    Missing(&'static str),
    /// A bound of the scan was reached; the text names it first (it becomes
    /// a C-STORE Error Comment, cut to 64 characters).
    #[error("{0}")]
    Limit(String),
    #[error("data set {name} is invalid: {source}")]
    BadUid {
        name: &'static str,
        #[source]
        source: crate::uid::Error,
    },
}

/// Preamble, `DICM` and a File Meta group describing a data set that follows
/// in `transfer_syntax`, received from `source_ae`.
pub fn part10_prefix(
    transfer_syntax: &str,
    sop_class: &Uid,
    sop_instance: &Uid,
    source_ae: &str,
) -> Result<Vec<u8>, Error> {
    let mut builder = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class.as_str())
        .media_storage_sop_instance_uid(sop_instance.as_str())
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME);
    let source_ae = source_ae.trim();
    if !source_ae.is_empty() {
        builder = builder.source_application_entity_title(source_ae);
    }
    let meta = builder.build().map_err(|e| Error::Meta(e.to_string()))?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; 128]);
    out.write_all(b"DICM").expect("vec write");
    meta.write(&mut out)
        .map_err(|e| Error::Meta(e.to_string()))?;
    Ok(out)
}

/// What indexing needs from a stored object's header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub transfer_syntax: Uid,
    /// Source Application Entity Title (0002,0016) of the meta group: the
    /// calling AE the gateway received the instance from, if it wrote one.
    pub source_ae: Option<String>,
    pub study: Uid,
    pub series: Uid,
    pub sop_instance: Uid,
    pub sop_class: Uid,
    pub instance: InstanceTags,
    pub study_tags: StudyTags,
}

/// Bounds of a header scan. Whatever a file declares, a scan holds at most
/// a 64 KiB scratch buffer, the kept values (each under 64 KiB, UIDs under
/// 1 KiB) and a stack of `2 × max_depth` small frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanLimits {
    /// Structural bytes read before the pixel data: element and item headers
    /// and the values kept. Values that are skipped (private OB/UN blobs, an
    /// Encapsulated Document, waveforms, overlays, defined-length sequences)
    /// do not count: they are read through the scratch buffer and dropped,
    /// and they are in the spool file already. So a 600 MB Encapsulated
    /// Document indexes, and a million tiny elements do not.
    pub max_header_bytes: u64,
    /// Nesting of undefined-length sequences (and encapsulated values).
    pub max_depth: u32,
    /// Inflated bytes of a deflated data set read before the pixel data;
    /// the inflation ratio is capped as well
    /// ([`MAX_INFLATION_RATIO`]).
    pub max_inflated: u64,
}

impl Default for ScanLimits {
    fn default() -> ScanLimits {
        ScanLimits {
            max_header_bytes: 16 << 20,
            max_depth: 32,
            max_inflated: 1 << 30,
        }
    }
}

/// Reads a Part-10 file's meta group and data set up to (not into) the pixel
/// data, with the default limits. Blocking.
pub fn read_header(path: &Path) -> Result<Header, Error> {
    read_header_with(path, &ScanLimits::default())
}

/// [`read_header`] under `limits`. The file's length is known, so a length
/// past its end is refused at once.
pub fn read_header_with(path: &Path, limits: &ScanLimits) -> Result<Header, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::Parse(e.to_string()))?;
    let len = file
        .metadata()
        .map_err(|e| Error::Parse(e.to_string()))?
        .len();
    read_header_from_sized(file, Some(len), limits)
}

/// Reads a Part-10 object's header from `reader`, positioned at its first
/// byte, with the default limits. Blocking when the reader is.
///
/// The read stops at the first top-level pixel data element (Float, Double
/// Float or Pixel Data), so a prefix of the object that reaches it is
/// enough and nothing of the pixel data is read.
///
/// The preamble is detected the way `dicom-object` does for files: skipped
/// when `DICM` follows it, absent when the object starts with `DICM`, and
/// otherwise assumed (so a non-DICOM object fails on the magic).
pub fn read_header_from(reader: impl Read) -> Result<Header, Error> {
    read_header_from_with(reader, &ScanLimits::default())
}

/// [`read_header_from`] under `limits`.
pub fn read_header_from_with(reader: impl Read, limits: &ScanLimits) -> Result<Header, Error> {
    read_header_from_sized(reader, None, limits)
}

/// What the header reader asks of its source at a time: a small
/// instance's whole header in one read.
const READ_BUFFER: usize = 64 * 1024;

/// [`read_header_from`] under `limits`, for a reader holding `len` bytes
/// when that is known (a declared length past the end is then refused before
/// anything is read; without it, a skip that meets the end fails there).
pub fn read_header_from_sized(
    reader: impl Read,
    len: Option<u64>,
    limits: &ScanLimits,
) -> Result<Header, Error> {
    // The scanner reads an element at a time (a tag, a VR, a length, a
    // value): unbuffered, a 9 KiB instance cost over 200 read(2) calls.
    let mut reader = std::io::BufReader::with_capacity(READ_BUFFER, reader);
    let found = scan::scan(&mut reader, len, limits)?;
    header_of(&found)
}

/// Builds the header from what the scan kept.
fn header_of(found: &Scanned) -> Result<Header, Error> {
    let text = |tag: Tag| found.get(tag).and_then(Value::text);
    let int = |tag: Tag| found.get(tag).and_then(Value::int);
    let float = |tag: Tag| {
        found
            .get(tag)
            .and_then(Value::float)
            .filter(|f| f.is_finite())
    };
    let small = |tag: Tag| int(tag).and_then(|v| u32::try_from(v).ok());
    let uid = |tag: Tag, name: &'static str| -> Result<Uid, Error> {
        let raw = text(tag).ok_or(Error::Missing(name))?;
        Uid::parse(&raw).map_err(|source| Error::BadUid { name, source })
    };
    let ts = found
        .transfer_syntax
        .as_deref()
        .ok_or(Error::Missing("Transfer Syntax UID"))?
        .trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let transfer_syntax = Uid::parse(ts).map_err(|source| Error::BadUid {
        name: "Transfer Syntax UID",
        source,
    })?;
    let sop_class = uid(tags::SOP_CLASS_UID, "SOP Class UID")?;
    let bits_allocated = small(tags::BITS_ALLOCATED);
    // A Parametric Map stores 32-bit pixels as Float Pixel Data and 64-bit
    // ones as Double Float Pixel Data (PS3.3 C.7.6.3.1.2 / C.8.32); no other
    // IOD uses those elements.
    let parametric = sop_class.as_str() == uids::PARAMETRIC_MAP_STORAGE;
    let instance = InstanceTags {
        modality: text(tags::MODALITY),
        series_description: text(tags::SERIES_DESCRIPTION),
        series_number: int(tags::SERIES_NUMBER),
        instance_number: int(tags::INSTANCE_NUMBER),
        rows: small(tags::ROWS),
        columns: small(tags::COLUMNS),
        bits_allocated,
        bits_stored: small(tags::BITS_STORED),
        high_bit: small(tags::HIGH_BIT),
        pixel_representation: small(tags::PIXEL_REPRESENTATION),
        photometric_interpretation: text(tags::PHOTOMETRIC_INTERPRETATION),
        samples_per_pixel: small(tags::SAMPLES_PER_PIXEL),
        number_of_frames: small(tags::NUMBER_OF_FRAMES),
        rescale_slope: float(tags::RESCALE_SLOPE),
        rescale_intercept: float(tags::RESCALE_INTERCEPT),
        is_float_pixel_data: parametric && bits_allocated == Some(32),
        is_double_float_pixel_data: parametric && bits_allocated == Some(64),
    };
    let study_tags = StudyTags {
        patient_name: text(tags::PATIENT_NAME),
        patient_id: text(tags::PATIENT_ID),
        issuer_of_patient_id: text(tags::ISSUER_OF_PATIENT_ID),
        patient_birth_date: text(tags::PATIENT_BIRTH_DATE),
        patient_sex: text(tags::PATIENT_SEX),
        patient_size: float(tags::PATIENT_SIZE),
        patient_weight: float(tags::PATIENT_WEIGHT),
        study_date: text(tags::STUDY_DATE),
        study_time: text(tags::STUDY_TIME),
        study_description: text(tags::STUDY_DESCRIPTION),
        accession_number: text(tags::ACCESSION_NUMBER),
        referring_physician_name: text(tags::REFERRING_PHYSICIAN_NAME),
        institution_name: text(tags::INSTITUTION_NAME),
    };
    let source_ae = found
        .source_ae
        .as_deref()
        .map(|ae| ae.trim_matches(|c: char| c == '\0' || c.is_whitespace()))
        .filter(|ae| !ae.is_empty())
        .map(str::to_owned);
    Ok(Header {
        transfer_syntax,
        source_ae,
        study: uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        series: uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        sop_instance: uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        sop_class,
        instance,
        study_tags,
    })
}
