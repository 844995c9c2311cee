//! Segment files: creation (preallocated and written through, so an
//! overwrite plus `fdatasync` changes no metadata) and the sequential scan
//! that recovery uses to find the valid records and the end of the log.
//!
//! The scan trusts nothing: a missing or foreign segment, a short file, a
//! bad header, CRC or LSN all end the log at that position; the scan never
//! reads more than one record's bounded length at a time.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::format::{self, Kind, RECORD_HEADER, RecordHeader, SEGMENT_HEADER, SegmentHeader};

#[derive(Debug, Error)]
pub enum Error {
    #[error("journal segment {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] format::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file name of segment `n`.
pub fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.seg"))
}

/// The bound on a record's payload: a quarter of a segment.
pub fn max_payload(segment_size: u64) -> u64 {
    segment_size / 4
}

/// Creates segment `n` at its full size: header, then zeros written through
/// and `fsync`ed, so its blocks are allocated and initialised. The caller
/// syncs the directory (once for several segments).
pub fn create(dir: &Path, n: u64, segment_size: u64, journal_id: [u8; 16]) -> Result<(), Error> {
    format::check_segment_size(segment_size)?;
    let final_path = path(dir, n);
    // Written under a temporary name and renamed, so a crash never leaves a
    // short file under a segment's name.
    let tmp = dir.join(format!("{n:016}.seg.tmp"));
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    let header = SegmentHeader {
        segment_size,
        number: n,
        journal_id,
    };
    file.write_all(&header.encode()).map_err(io(&tmp))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = segment_size - SEGMENT_HEADER;
    while left > 0 {
        let chunk = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..chunk]).map_err(io(&tmp))?;
        left -= chunk as u64;
    }
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
    Ok(())
}

/// Opens segment `n` for writing and checks that its header names it.
pub fn open(
    dir: &Path,
    n: u64,
    segment_size: u64,
    journal_id: [u8; 16],
) -> Result<Option<File>, Error> {
    let p = path(dir, n);
    let file = match OpenOptions::new().read(true).write(true).open(&p) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&p)(e)),
    };
    Ok(check_header(&file, n, segment_size, journal_id).then_some(file))
}

fn check_header(file: &File, n: u64, segment_size: u64, journal_id: [u8; 16]) -> bool {
    let mut b = [0u8; 64];
    if file.read_exact_at(&mut b, 0).is_err() {
        return false;
    }
    match SegmentHeader::decode(&b) {
        Ok(h) => h.number == n && h.segment_size == segment_size && h.journal_id == journal_id,
        Err(_) => false,
    }
}

/// `fsync` of a directory, so the names in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// A valid record found by the scan.
#[derive(Debug)]
pub struct Record {
    pub header: RecordHeader,
    /// Empty for a pad.
    pub payload: Vec<u8>,
}

/// Where the scan stopped and why (for the log; recovery decides).
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The next segment does not exist or is not the next one of this journal.
    NoSegment,
    /// The bytes at the end position are not a valid record.
    Invalid(String),
}

/// Reads every valid record from `from` on, in LSN order, handing each to
/// `each` (pads included, so a caller sees the log's exact layout), and
/// returns the end of the log: the first position that holds no valid
/// record. Changes nothing on disk.
pub fn scan(
    dir: &Path,
    segment_size: u64,
    journal_id: [u8; 16],
    from: u64,
    mut each: impl FnMut(Record),
) -> Result<(u64, Stop), Error> {
    format::check_segment_size(segment_size)?;
    let max_len = max_payload(segment_size);
    let mut lsn = from;
    let mut current: Option<(u64, File)> = None;
    loop {
        let n = lsn / segment_size;
        let mut off = lsn % segment_size;
        if off < SEGMENT_HEADER {
            off = SEGMENT_HEADER;
            lsn = n * segment_size + SEGMENT_HEADER;
        }
        if current.as_ref().map(|(cn, _)| *cn) != Some(n) {
            match open(dir, n, segment_size, journal_id)? {
                Some(file) => current = Some((n, file)),
                None => return Ok((lsn, Stop::NoSegment)),
            }
        }
        let file = &current.as_ref().expect("opened above").1;
        let room = segment_size - off;
        if room < RECORD_HEADER {
            // Too little left for any record: the log goes on in the next segment.
            lsn = (n + 1) * segment_size;
            continue;
        }
        let mut hb = [0u8; RECORD_HEADER as usize];
        if let Err(e) = file.read_exact_at(&mut hb, off) {
            return Ok((lsn, Stop::Invalid(e.to_string())));
        }
        let header = match RecordHeader::decode(&hb, lsn, max_len, room - RECORD_HEADER) {
            Ok(h) => h,
            Err(e) => return Ok((lsn, Stop::Invalid(e.to_string()))),
        };
        let mut payload = Vec::new();
        if header.kind != Kind::Pad {
            payload = vec![0u8; header.len as usize];
            if let Err(e) = file.read_exact_at(&mut payload, off + RECORD_HEADER) {
                return Ok((lsn, Stop::Invalid(e.to_string())));
            }
            if let Err(e) = RecordHeader::check_payload(&hb, &payload) {
                return Ok((lsn, Stop::Invalid(e.to_string())));
            }
        }
        let next = lsn + header.footprint();
        each(Record { header, payload });
        lsn = next;
    }
}
