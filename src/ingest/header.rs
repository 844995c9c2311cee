//! The Part-10 header the gateway writes in front of received data sets, and
//! the read-back of a stored header for indexing.

use std::io::{Read, Write};
use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{InMemDicomObject, OpenFileOptions};

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

/// Reads a Part-10 file's meta group and data set up to (not into) the pixel
/// data. Blocking.
pub fn read_header(path: &Path) -> Result<Header, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::Parse(e.to_string()))?;
    read_header_from(file)
}

/// Reads a Part-10 object's header from `reader`, positioned at its first
/// byte. Blocking when the reader is.
///
/// The read stops at Float Pixel Data (7FE0,0008), the first of the three
/// pixel data tags, so no bulk data is ever loaded: a prefix of the object
/// that reaches the pixel data is enough.
///
/// The preamble is detected the way `dicom-object` does for files: skipped
/// when `DICM` follows it, absent when the object starts with `DICM`, and
/// otherwise assumed (so a non-DICOM object fails on the magic).
pub fn read_header_from(mut reader: impl Read) -> Result<Header, Error> {
    let mut head = [0u8; 132];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Parse(e.to_string())),
        }
    }
    let head = &head[..filled];
    let magic_after_preamble = head.get(128..132) == Some(&b"DICM"[..]);
    let preamble = if !magic_after_preamble && head.starts_with(b"DICM") {
        ReadPreamble::Never
    } else {
        ReadPreamble::Always
    };
    let obj = OpenFileOptions::new()
        .read_until(tags::FLOAT_PIXEL_DATA)
        .read_preamble(preamble)
        .from_reader(head.chain(reader))
        .map_err(|e| Error::Parse(e.to_string()))?;
    let uid = |tag: Tag, name: &'static str| -> Result<Uid, Error> {
        let raw = text(&obj, tag).ok_or(Error::Missing(name))?;
        Uid::parse(&raw).map_err(|source| Error::BadUid { name, source })
    };
    let transfer_syntax =
        Uid::parse(obj.meta().transfer_syntax()).map_err(|source| Error::BadUid {
            name: "Transfer Syntax UID",
            source,
        })?;
    let sop_class = uid(tags::SOP_CLASS_UID, "SOP Class UID")?;
    let bits_allocated = int(&obj, tags::BITS_ALLOCATED);
    // A Parametric Map stores 32-bit pixels as Float Pixel Data and 64-bit
    // ones as Double Float Pixel Data (PS3.3 C.7.6.3.1.2 / C.8.32); no other
    // IOD uses those elements.
    let parametric = sop_class.as_str() == uids::PARAMETRIC_MAP_STORAGE;
    let instance = InstanceTags {
        modality: text(&obj, tags::MODALITY),
        series_description: text(&obj, tags::SERIES_DESCRIPTION),
        series_number: int(&obj, tags::SERIES_NUMBER),
        instance_number: int(&obj, tags::INSTANCE_NUMBER),
        rows: int(&obj, tags::ROWS),
        columns: int(&obj, tags::COLUMNS),
        bits_allocated,
        bits_stored: int(&obj, tags::BITS_STORED),
        high_bit: int(&obj, tags::HIGH_BIT),
        pixel_representation: int(&obj, tags::PIXEL_REPRESENTATION),
        photometric_interpretation: text(&obj, tags::PHOTOMETRIC_INTERPRETATION),
        samples_per_pixel: int(&obj, tags::SAMPLES_PER_PIXEL),
        number_of_frames: int(&obj, tags::NUMBER_OF_FRAMES),
        rescale_slope: float(&obj, tags::RESCALE_SLOPE),
        rescale_intercept: float(&obj, tags::RESCALE_INTERCEPT),
        is_float_pixel_data: parametric && bits_allocated == Some(32),
        is_double_float_pixel_data: parametric && bits_allocated == Some(64),
    };
    let study_tags = StudyTags {
        patient_name: text(&obj, tags::PATIENT_NAME),
        patient_id: text(&obj, tags::PATIENT_ID),
        issuer_of_patient_id: text(&obj, tags::ISSUER_OF_PATIENT_ID),
        patient_birth_date: text(&obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(&obj, tags::PATIENT_SEX),
        patient_size: float(&obj, tags::PATIENT_SIZE),
        patient_weight: float(&obj, tags::PATIENT_WEIGHT),
        study_date: text(&obj, tags::STUDY_DATE),
        study_time: text(&obj, tags::STUDY_TIME),
        study_description: text(&obj, tags::STUDY_DESCRIPTION),
        accession_number: text(&obj, tags::ACCESSION_NUMBER),
        referring_physician_name: text(&obj, tags::REFERRING_PHYSICIAN_NAME),
        institution_name: text(&obj, tags::INSTITUTION_NAME),
    };
    let source_ae = obj
        .meta()
        .source_application_entity_title
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

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let value = obj.element_opt(tag).ok()??.to_str().ok()?;
    let trimmed = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

fn int<T: TryFrom<i64>>(obj: &InMemDicomObject, tag: Tag) -> Option<T> {
    let v: i64 = obj.element_opt(tag).ok()??.to_int().ok()?;
    T::try_from(v).ok()
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.element_opt(tag)
        .ok()??
        .to_float64()
        .ok()
        .filter(|f| f.is_finite())
}
