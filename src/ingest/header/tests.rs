//! The scanner against the dicom-object read it replaced (kept here only as
//! the oracle), and against hostile inputs.

use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::{tags, uids};
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};

use super::*;

mod hostile;

/// The dicom-object implementation `read_header_from` had before the scanner.
fn oracle(mut reader: impl Read) -> Result<Header, Error> {
    let mut head = [0u8; 132];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
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

fn fixture_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fixtures");
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "dcm") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Every committed fixture reads the same as it did through dicom-object.
#[test]
fn the_scanner_agrees_with_dicom_object_on_every_fixture() {
    let files = fixture_files();
    assert!(files.len() >= 15, "fixtures missing: {files:?}");
    for path in files {
        let old = oracle(std::fs::File::open(&path).unwrap())
            .unwrap_or_else(|e| panic!("oracle on {}: {e}", path.display()));
        let new = read_header(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(new, old, "{}", path.display());
        // And through a reader of unknown length.
        let streamed = read_header_from(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(streamed, old, "{} (streamed)", path.display());
    }
}

/// The native fixtures re-encoded by dicom-object in the other uncompressed
/// transfer syntaxes (Implicit VR LE, Explicit VR BE, Deflated): the scanner
/// still agrees with the oracle.
#[test]
fn the_scanner_agrees_with_dicom_object_in_every_native_encoding() {
    use dicom_object::meta::FileMetaTableBuilder;
    let mut checked = 0;
    for path in fixture_files() {
        let obj = dicom_object::open_file(&path).unwrap();
        let ts = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_owned();
        if ts != "1.2.840.10008.1.2.1" && ts != "1.2.840.10008.1.2" {
            continue;
        }
        let class = obj.meta().media_storage_sop_class_uid().to_owned();
        let instance = obj.meta().media_storage_sop_instance_uid().to_owned();
        let data = obj.into_inner();
        for target in [
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.2",
            "1.2.840.10008.1.2.1.99",
        ] {
            let meta = FileMetaTableBuilder::new()
                .media_storage_sop_class_uid(class.as_str())
                .media_storage_sop_instance_uid(instance.as_str())
                .transfer_syntax(target)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .source_application_entity_title("SENDER")
                .build()
                .unwrap();
            let file = data.clone().with_exact_meta(meta);
            let mut bytes = Vec::new();
            file.write_all(&mut bytes).unwrap();
            let old = oracle(&bytes[..])
                .unwrap_or_else(|e| panic!("oracle {target} {}: {e}", path.display()));
            let new = read_header_from_sized(
                &bytes[..],
                Some(bytes.len() as u64),
                &ScanLimits::default(),
            )
            .unwrap_or_else(|e| panic!("{target} {}: {e}", path.display()));
            assert_eq!(new, old, "{target} {}", path.display());
            assert_eq!(new.source_ae.as_deref(), Some("SENDER"));
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} re-encodings checked");
}

#[test]
fn the_wanted_table_is_sorted_for_its_binary_search() {
    assert!(values::WANTED.windows(2).all(|w| w[0].0 < w[1].0));
    for (i, (tag, _)) in values::WANTED.iter().enumerate() {
        assert_eq!(values::wanted(*tag), Some(i));
    }
}

/// The instances `testdata/generate.py` writes for benchmarks (streamed: the
/// header by pydicom, the pixel data appended) read the same as through
/// dicom-object.
#[test]
fn the_scanner_agrees_with_dicom_object_on_generated_bench_instances() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        ".venv/bin/python (pydicom) is missing: run scripts/test.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let big = dir.path().join("big.dcm");
    for args in [
        vec!["bench", out, "--set", "ct512", "--count", "2"],
        vec!["bench", out, "--set", "small9", "--count", "2"],
        vec!["bench", out, "--set", "mf100", "--count", "1"],
        vec!["big", big.to_str().unwrap(), "--size-mib", "2"],
    ] {
        let status = std::process::Command::new(&python)
            .arg(repo.join("testdata/generate.py"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "generate.py {args:?}");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 6, "{files:?}");
    for path in files {
        let old = oracle(std::fs::File::open(&path).unwrap()).unwrap();
        let new = read_header(&path).unwrap();
        assert_eq!(new, old, "{}", path.display());
    }
}
