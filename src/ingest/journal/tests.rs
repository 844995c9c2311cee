//! The journal's writer and scan together, on real files: what is appended
//! is read back exactly, a torn tail ends the log before the torn record
//! whatever byte the write stopped at, stale records of a segment's earlier
//! life are never read, and concurrent appends all become durable.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::format::{self, FLAG_INLINE, Kind, SEGMENT_HEADER, SegmentHeader};
use super::segment::{self, Stop};
use super::writer::{Appended, Error, Writer};

const MIB: u64 = 1 << 20;
const ID: [u8; 16] = *b"journal-test-id!";

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// A record as the tests compare it: LSN, kind, payload.
type Read = (u64, Kind, Vec<u8>);

/// Every non-pad record from `from`, and the end of the log.
fn read_all(dir: &Path, size: u64, from: u64) -> (Vec<Read>, u64, Stop) {
    let mut out = Vec::new();
    let (end, stop) = segment::scan(dir, size, ID, from, |r| {
        if r.header.kind != Kind::Pad {
            out.push((r.header.lsn, r.header.kind, r.payload));
        }
    })
    .unwrap();
    (out, end, stop)
}

#[test]
fn appended_records_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::open(dir.path(), MIB, 2, ID, 0).unwrap();
    let mut written = Vec::new();
    for i in 0..20 {
        let p = payload(i, 1 + i * 37);
        let a = w.append(Kind::Instance, FLAG_INLINE, &p).unwrap();
        assert!(w.durable() >= a.end);
        // Each lone record is its own group: the next starts on 4 KiB.
        assert_eq!(a.lsn % format::GROUP_ALIGN, 0);
        written.push((a.lsn, Kind::Instance, p));
    }
    let (read, end, stop) = read_all(dir.path(), MIB, 0);
    assert_eq!(read, written);
    assert_eq!(end, w.durable());
    assert!(matches!(stop, Stop::Invalid(_)), "{stop:?}");
}

/// The last record's write stopped after `k` bytes, for every `k`: the
/// scan must end exactly at that record, whether the bytes after the tear
/// are zeros (a fresh segment) or stale garbage (a recycled one).
#[test]
fn torn_last_record_at_every_byte_ends_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::open(dir.path(), MIB, 1, ID, 0).unwrap();
    let mut before = Vec::new();
    for i in 0..3 {
        let p = payload(i, 100 + i);
        let a = w.append(Kind::Instance, 0, &p).unwrap();
        before.push((a.lsn, Kind::Instance, p));
    }
    let last = payload(9, 333); // not a multiple of 8: alignment bytes too
    let Appended { lsn, .. } = w.append(Kind::Instance, FLAG_INLINE, &last).unwrap();
    drop(w);
    let seg = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment::path(dir.path(), 0))
        .unwrap();
    let full = 32 + last.len();
    let mut original = vec![0u8; full];
    seg.read_exact_at(&mut original, lsn).unwrap();
    for fill in [0x00u8, 0xA5] {
        for k in 0..full {
            let mut torn = original.clone();
            torn[k..].fill(fill);
            seg.write_all_at(&torn, lsn).unwrap();
            let (read, end, stop) = read_all(dir.path(), MIB, 0);
            assert_eq!(read, before, "torn at {k}, fill {fill:#x}");
            assert_eq!(end, lsn, "torn at {k}, fill {fill:#x}");
            assert!(matches!(stop, Stop::Invalid(_)));
        }
    }
    // Untorn, it reads back.
    seg.write_all_at(&original, lsn).unwrap();
    let (read, _, _) = read_all(dir.path(), MIB, 0);
    assert_eq!(read.len(), 4);
    assert_eq!(read[3].2, last);
}

#[test]
fn records_roll_over_segments_and_a_full_journal_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::open(dir.path(), MIB, 3, ID, 0).unwrap();
    let big = 200 * 1024;
    let mut written = Vec::new();
    let err = loop {
        let p = payload(written.len(), big);
        match w.append(Kind::Instance, FLAG_INLINE, &p) {
            Ok(a) => written.push((a.lsn, Kind::Instance, p)),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Full(3)), "{err}");
    // A lone 200 KiB record is a group padded to 204 KiB; 1 MiB less its
    // 4 KiB header holds exactly five, so the fifth group ends exactly at
    // the segment's end.
    assert_eq!(written.len(), 15);
    assert!(written.iter().any(|(lsn, ..)| lsn / MIB == 2));
    let (read, _, stop) = read_all(dir.path(), MIB, 0);
    assert_eq!(read, written);
    assert_eq!(stop, Stop::NoSegment);
    // Above the record bound (a quarter segment): refused before anything.
    assert!(matches!(
        w.append(Kind::Instance, 0, &vec![0; 256 * 1024 + 1]),
        Err(Error::TooLong { .. })
    ));
}

#[test]
fn stale_records_of_a_recycled_segment_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::open(dir.path(), MIB, 1, ID, 0).unwrap();
    for i in 0..5 {
        w.append(Kind::Instance, 0, &payload(i, 500)).unwrap();
    }
    drop(w);
    // Recycle segment 0 as segment 4: rename, new header, old records stay.
    let new = segment::path(dir.path(), 4);
    std::fs::rename(segment::path(dir.path(), 0), &new).unwrap();
    let header = SegmentHeader {
        segment_size: MIB,
        number: 4,
        journal_id: ID,
    };
    let f = std::fs::OpenOptions::new().write(true).open(&new).unwrap();
    f.write_all_at(&header.encode(), 0).unwrap();
    let (read, end, stop) = read_all(dir.path(), MIB, 4 * MIB);
    assert!(read.is_empty());
    assert_eq!(end, 4 * MIB + SEGMENT_HEADER);
    assert!(
        matches!(stop, Stop::Invalid(ref m) if m.contains("LSN")),
        "{stop:?}"
    );
    // And a foreign journal's segment is no segment at all.
    let (_, stop) = segment::scan(dir.path(), MIB, [1; 16], 4 * MIB, |_| {}).unwrap();
    assert_eq!(stop, Stop::NoSegment);
}

#[test]
fn reopening_after_a_torn_tail_closes_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::open(dir.path(), MIB, 2, ID, 0).unwrap();
    let kept = w.append(Kind::Instance, 0, &payload(1, 100)).unwrap();
    let torn = w.append(Kind::Instance, 0, &payload(2, 100)).unwrap();
    drop(w);
    let seg = std::fs::OpenOptions::new()
        .write(true)
        .open(segment::path(dir.path(), 0))
        .unwrap();
    seg.write_all_at(&[0xFF; 8], torn.lsn + 40).unwrap();
    let (read, end, _) = read_all(dir.path(), MIB, 0);
    assert_eq!(read.len(), 1);
    assert_eq!(end, torn.lsn);
    // Reopen at the end of the log: the rest of segment 0 becomes a pad,
    // new records go to segment 1.
    let w = Writer::open(dir.path(), MIB, 2, ID, end).unwrap();
    let next = w.append(Kind::Instance, 0, &payload(3, 100)).unwrap();
    assert_eq!(next.lsn, MIB + SEGMENT_HEADER);
    let (read, _, _) = read_all(dir.path(), MIB, 0);
    let lsns: Vec<u64> = read.iter().map(|r| r.0).collect();
    assert_eq!(lsns, vec![kept.lsn, next.lsn]);
}

#[test]
fn concurrent_appends_are_all_durable_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let w = Arc::new(Writer::open(dir.path(), MIB, 8, ID, 0).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let p = payload(t * 1000 + i, 50 + (i * 13) % 900);
                        let a = w.append(Kind::Instance, 0, &p).unwrap();
                        // Durable when append returns, not later.
                        assert!(w.durable() >= a.end);
                        (a.lsn, Kind::Instance, p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Vec<_> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    written.sort_by_key(|r| r.0);
    let (read, _, _) = read_all(dir.path(), MIB, 0);
    assert_eq!(read, written);
}
