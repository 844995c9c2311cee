//! Hostile and unusual inputs, built byte by byte.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::write::DeflateEncoder;

use super::super::*;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// An explicit VR element (little or big endian).
fn ex(group: u16, element: u16, vr: &[u8; 2], value: &[u8], be: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let u16b = |v: u16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
    out.extend(u16b(group));
    out.extend(u16b(element));
    out.extend(vr);
    if matches!(
        vr,
        b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"UC" | b"UR" | b"OD" | b"OF" | b"OL"
    ) {
        out.extend([0, 0]);
        out.extend(if be {
            (value.len() as u32).to_be_bytes()
        } else {
            (value.len() as u32).to_le_bytes()
        });
    } else {
        out.extend(u16b(value.len() as u16));
    }
    out.extend(value);
    out
}

fn le(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    ex(group, element, vr, value, false)
}

/// An implicit VR LE element.
fn im(group: u16, element: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend((value.len() as u32).to_le_bytes());
    out.extend(value);
    out
}

/// A raw tag + 32-bit length (items, delimiters, undefined lengths).
fn raw(group: u16, element: u16, len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(len.to_le_bytes());
    out
}

/// Preamble, magic and a meta group (with its group length) for `ts`.
fn prefix(ts: &str) -> Vec<u8> {
    let mut ts_value = ts.as_bytes().to_vec();
    if ts_value.len() % 2 == 1 {
        ts_value.push(0);
    }
    let body = [
        le(0x0002, 0x0001, b"OB", &[0, 1]),
        le(0x0002, 0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0"),
        le(0x0002, 0x0003, b"UI", b"1.2.3.4.5"),
        le(0x0002, 0x0010, b"UI", &ts_value),
        le(0x0002, 0x0012, b"UI", b"1.2.3.4"),
        le(0x0002, 0x0016, b"AE", b"MODALITY"),
    ]
    .concat();
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    out.extend(le(
        0x0002,
        0x0000,
        b"UL",
        &(body.len() as u32).to_le_bytes(),
    ));
    out.extend(body);
    out
}

/// The elements every instance needs, explicit VR.
fn ids(be: bool) -> Vec<u8> {
    [
        ex(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0", be),
        ex(0x0008, 0x0018, b"UI", b"1.2.3.4.5", be),
        ex(0x0010, 0x0010, b"PN", b"Doe^Jane", be),
        ex(0x0020, 0x000D, b"UI", b"1.2.3\0", be),
        ex(0x0020, 0x000E, b"UI", b"1.2.3.4\0", be),
    ]
    .concat()
}

fn ids_implicit() -> Vec<u8> {
    [
        im(0x0008, 0x0016, b"1.2.840.10008.5.1.4.1.1.7\0"),
        im(0x0008, 0x0018, b"1.2.3.4.5"),
        im(0x0010, 0x0010, b"Doe^Jane"),
        im(0x0020, 0x000D, b"1.2.3\0"),
        im(0x0020, 0x000E, b"1.2.3.4\0"),
    ]
    .concat()
}

fn scan_bytes(bytes: &[u8], limits: &ScanLimits) -> Result<Header, Error> {
    read_header_from_sized(bytes, Some(bytes.len() as u64), limits)
}

fn scan_stream(bytes: &[u8], limits: &ScanLimits) -> Result<Header, Error> {
    read_header_from_with(bytes, limits)
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut enc = DeflateEncoder::new(Vec::new(), Compression::best());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn a_private_ob_declaring_3_gib_is_refused_before_anything_is_read() {
    let mut file = prefix(EXPLICIT_LE);
    file.extend(ids(false));
    let mut ob = le(0x0029, 0x1010, b"OB", &[]);
    let n = ob.len();
    ob[n - 4..].copy_from_slice(&(3u32 << 30).to_le_bytes());
    file.extend(ob);
    let err = scan_bytes(&file, &ScanLimits::default()).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "element (0029,1010) declares 3221225472 bytes, past the end of the data"
    );
    // Length unknown: the skip meets the end, through a 64 KiB buffer.
    let err = scan_stream(&file, &ScanLimits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "data set cannot be parsed: data ends inside element (0029,1010)"
    );
}

fn nested(depth: usize, implicit: bool) -> Vec<u8> {
    let ts = if implicit { IMPLICIT_LE } else { EXPLICIT_LE };
    let mut file = prefix(ts);
    file.extend(if implicit { ids_implicit() } else { ids(false) });
    for _ in 0..depth {
        if implicit {
            file.extend(raw(0x0040, 0xA730, u32::MAX));
        } else {
            file.extend(0x0040u16.to_le_bytes());
            file.extend(0xA730u16.to_le_bytes());
            file.extend(b"SQ\0\0");
            file.extend(u32::MAX.to_le_bytes());
        }
        file.extend(raw(0xFFFE, 0xE000, u32::MAX));
    }
    file
}

#[test]
fn fifty_thousand_nested_sequences_hit_the_depth_limit_not_the_stack() {
    for implicit in [false, true] {
        let file = nested(50_000, implicit);
        let err = scan_bytes(&file, &ScanLimits::default()).unwrap_err();
        assert_eq!(err.to_string(), "sequence nesting deeper than 32");
    }
    // With no depth limit the walk is still iterative: the data just ends.
    let unlimited = ScanLimits {
        max_depth: u32::MAX,
        ..ScanLimits::default()
    };
    let err = scan_bytes(&nested(50_000, false), &unlimited).unwrap_err();
    assert_eq!(
        err.to_string(),
        "data set cannot be parsed: data ends inside a sequence"
    );
}

#[test]
fn nesting_within_the_limit_is_walked_and_closed() {
    let mut file = nested(32, false);
    for _ in 0..32 {
        file.extend(raw(0xFFFE, 0xE00D, 0));
        file.extend(raw(0xFFFE, 0xE0DD, 0));
    }
    file.extend(le(0x0028, 0x0010, b"US", &512u16.to_le_bytes()));
    file.extend(le(0x7FE0, 0x0010, b"OW", &[0; 8]));
    let h = scan_bytes(&file, &ScanLimits::default()).unwrap();
    assert_eq!(h.instance.rows, Some(512));
    assert_eq!(h.study_tags.patient_name.as_deref(), Some("Doe^Jane"));
}

/// A reader of `head`, then `zeros` zero bytes, then `tail`, without
/// holding the zeros.
struct Synth {
    head: std::io::Cursor<Vec<u8>>,
    zeros: u64,
    tail: std::io::Cursor<Vec<u8>>,
}

impl Read for Synth {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.head.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        if self.zeros > 0 {
            let n = buf.len().min(self.zeros.min(1 << 20) as usize);
            buf[..n].fill(0);
            self.zeros -= n as u64;
            return Ok(n);
        }
        self.tail.read(buf)
    }
}

#[test]
fn a_600_mb_encapsulated_document_is_skipped_not_loaded() {
    const DOC: u32 = 600_000_000;
    let mut head = prefix(EXPLICIT_LE);
    head.extend(ids(false));
    let mut doc = le(0x0042, 0x0011, b"OB", &[]);
    let n = doc.len();
    doc[n - 4..].copy_from_slice(&DOC.to_le_bytes());
    head.extend(doc);
    let tail = le(0x0042, 0x0012, b"LO", b"application/pdf ");
    let len = (head.len() + tail.len()) as u64 + u64::from(DOC);
    let reader = Synth {
        head: std::io::Cursor::new(head),
        zeros: u64::from(DOC),
        tail: std::io::Cursor::new(tail),
    };
    // A 1 MiB structural budget is plenty: skipped values do not count.
    let limits = ScanLimits {
        max_header_bytes: 1 << 20,
        ..ScanLimits::default()
    };
    let h = read_header_from_sized(reader, Some(len), &limits).unwrap();
    assert_eq!(h.sop_instance.as_str(), "1.2.3.4.5");
}

#[test]
fn a_deflate_bomb_is_refused_by_the_ratio_and_the_size_cap() {
    let mut data = ids(false);
    let mut ob = le(0x0029, 0x1010, b"OB", &[]);
    let n = ob.len();
    let blob = 32u32 << 20;
    ob[n - 4..].copy_from_slice(&blob.to_le_bytes());
    data.extend(ob);
    data.resize(data.len() + blob as usize, 0);
    let mut file = prefix(DEFLATED);
    file.extend(deflate(&data));
    drop(data);
    let err = scan_bytes(&file, &ScanLimits::default()).unwrap_err();
    assert_eq!(err.to_string(), "deflated data set inflates over 250:1");
    let small = ScanLimits {
        max_inflated: 1 << 20,
        ..ScanLimits::default()
    };
    let err = scan_bytes(&file, &small).unwrap_err();
    assert_eq!(
        err.to_string(),
        "deflated data set inflates past 1048576 bytes"
    );
}

#[test]
fn deflated_big_endian_and_implicit_data_sets_are_read() {
    let mut body = ids(false);
    body.extend(le(0x0028, 0x0010, b"US", &300u16.to_le_bytes()));
    body.extend(le(0x7FE0, 0x0010, b"OW", &[1; 16]));
    let mut file = prefix(DEFLATED);
    file.extend(deflate(&body));
    let h = scan_bytes(&file, &ScanLimits::default()).unwrap();
    assert_eq!(h.instance.rows, Some(300));
    assert_eq!(h.transfer_syntax.as_str(), DEFLATED);
    assert_eq!(h.source_ae.as_deref(), Some("MODALITY"));

    let mut file = prefix(EXPLICIT_BE);
    file.extend(ids(true));
    file.extend(ex(0x0028, 0x0010, b"US", &300u16.to_be_bytes(), true));
    file.extend(ex(0x0028, 0x1053, b"DS", b"2.5 ", true));
    file.extend(ex(0x7FE0, 0x0010, b"OW", &[1; 16], true));
    let h = scan_bytes(&file, &ScanLimits::default()).unwrap();
    assert_eq!(h.instance.rows, Some(300));
    assert_eq!(h.instance.rescale_slope, Some(2.5));
    assert_eq!(h.study.as_str(), "1.2.3");

    let mut file = prefix(IMPLICIT_LE);
    file.extend(ids_implicit());
    file.extend(im(0x0020, 0x0013, b" 17 "));
    file.extend(im(0x0028, 0x0010, &64u16.to_le_bytes()));
    file.extend(im(0x7FE0, 0x0010, &[0; 8]));
    let h = scan_bytes(&file, &ScanLimits::default()).unwrap();
    assert_eq!(h.instance.rows, Some(64));
    assert_eq!(h.instance.instance_number, Some(17));
}

#[test]
fn undefined_length_un_and_encapsulated_values_are_walked() {
    let mut file = prefix(EXPLICIT_LE);
    file.extend(ids(false));
    // UN of undefined length: Implicit VR LE items inside (PS3.5 §6.2.2).
    file.extend(0x0029u16.to_le_bytes());
    file.extend(0x1020u16.to_le_bytes());
    file.extend(b"UN\0\0");
    file.extend(u32::MAX.to_le_bytes());
    file.extend(raw(0xFFFE, 0xE000, u32::MAX));
    file.extend(im(0x0010, 0x0010, b"Not^Top"));
    file.extend(raw(0x0008, 0x1115, u32::MAX)); // implicit SQ inside
    file.extend(raw(0xFFFE, 0xE0DD, 0));
    file.extend(raw(0xFFFE, 0xE00D, 0));
    file.extend(raw(0xFFFE, 0xE0DD, 0));
    // Encapsulated OB outside the pixel data: fragments in items.
    file.extend(0x0029u16.to_le_bytes());
    file.extend(0x1030u16.to_le_bytes());
    file.extend(b"OB\0\0");
    file.extend(u32::MAX.to_le_bytes());
    file.extend(raw(0xFFFE, 0xE000, 0));
    file.extend(raw(0xFFFE, 0xE000, 4));
    file.extend([1, 2, 3, 4]);
    file.extend(raw(0xFFFE, 0xE0DD, 0));
    file.extend(le(0x0028, 0x0011, b"US", &77u16.to_le_bytes()));
    let h = scan_bytes(&file, &ScanLimits::default()).unwrap();
    assert_eq!(h.instance.columns, Some(77));
    // Only top-level values are kept.
    assert_eq!(h.study_tags.patient_name.as_deref(), Some("Doe^Jane"));
}

#[test]
fn oversized_text_is_cut_and_a_flood_of_values_stays_small() {
    let mut file = prefix(EXPLICIT_LE);
    file.extend(le(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0"));
    file.extend(le(0x0008, 0x0018, b"UI", b"1.2.3.4.5\0"));
    file.extend(le(0x0010, 0x0010, b"UC", &vec![b'A'; 100 * 1024]));
    file.extend(le(0x0010, 0x0020, b"UC", &vec![b'\\'; 8000]));
    file.extend(le(0x0020, 0x000D, b"UI", b"1.2.3\0"));
    file.extend(le(0x0020, 0x000E, b"UI", b"1.2.3.4\0"));
    let h = scan_bytes(&file, &ScanLimits::default()).unwrap();
    let name = h.study_tags.patient_name.unwrap();
    assert_eq!(name.len(), super::super::values::MAX_TEXT_VALUE as usize);
    // 8,000 empty values are kept as at most 16 strings; the text of the
    // element is unchanged.
    let id = h.study_tags.patient_id.unwrap_or_default();
    assert!(
        id.len() == 8000 && id.bytes().all(|b| b == b'\\'),
        "{}",
        id.len()
    );
    assert_eq!(h.sop_instance.as_str(), "1.2.3.4.5");
}

#[test]
fn oversized_uids_and_headers_are_refused_by_name() {
    let mut file = prefix(EXPLICIT_LE);
    file.extend(le(0x0020, 0x000D, b"UI", &vec![b'1'; 2048]));
    let err = scan_bytes(&file, &ScanLimits::default()).unwrap_err();
    assert!(
        err.to_string().contains("(0020,000D) value of 2048 bytes"),
        "{err}"
    );

    let mut file = prefix(EXPLICIT_LE);
    file.extend(ids(false));
    for i in 0..10_000u16 {
        file.extend(le(0x0009, 0x1000 + (i % 0xFF), b"SH", b"ab"));
    }
    let limits = ScanLimits {
        max_header_bytes: 64 * 1024,
        ..ScanLimits::default()
    };
    let err = scan_bytes(&file, &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "header over 65536 bytes before the pixel data"
    );
}

#[test]
fn garbage_and_truncation_are_errors_not_panics() {
    let mut good = prefix(EXPLICIT_LE);
    good.extend(ids(false));
    good.extend(le(0x0028, 0x0010, b"US", &8u16.to_le_bytes()));
    assert!(scan_bytes(&good, &ScanLimits::default()).is_ok());
    for cut in 0..good.len() {
        let _ = scan_bytes(&good[..cut], &ScanLimits::default());
        let _ = scan_stream(&good[..cut], &ScanLimits::default());
    }
    assert!(scan_bytes(b"", &ScanLimits::default()).is_err());
    assert!(scan_bytes(&[0xFF; 500], &ScanLimits::default()).is_err());
    let mut odd = prefix(EXPLICIT_LE);
    odd.extend(b"\x08\x00\x16\x00ZZ\x02\x001.");
    let err = scan_bytes(&odd, &ScanLimits::default()).unwrap_err();
    assert!(err.to_string().contains("unknown VR"), "{err}");
}
