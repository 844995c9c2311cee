//! The journal's on-disk formats: segment header, record header and control
//! slot (docs/ingest-journal.md, "The journal on disk"). Pure encode and
//! decode with every check; no I/O here, so the parsers can be tested (and
//! fuzzed) on bytes alone.
//!
//! Everything read from disk is hostile: a length is bounded before anything
//! is read after it, the CRC is checked before a payload is trusted, and a
//! record's LSN must equal its position, which is what makes records left
//! over from a segment's earlier life (recycling) invisible.

use thiserror::Error;

/// Size of the segment header block; the first record starts here.
pub const SEGMENT_HEADER: u64 = 4096;
/// Size of a record header; a record's payload follows it.
pub const RECORD_HEADER: u64 = 32;
/// Records are aligned to this.
pub const RECORD_ALIGN: u64 = 8;
/// A group starts on this boundary, so writing a group never rewrites a
/// block holding an acknowledged record of an earlier group.
pub const GROUP_ALIGN: u64 = 4096;
/// Size of one control slot; the control file holds two.
pub const CONTROL_SLOT: usize = 4096;

const SEGMENT_MAGIC: [u8; 4] = *b"DGJS";
const RECORD_MAGIC: [u8; 4] = *b"DGJ1";
const CONTROL_MAGIC: [u8; 4] = *b"DGJC";
const SEGMENT_VERSION: u16 = 1;
/// Payload format version written in every record.
pub const PAYLOAD_VERSION: u16 = 1;

/// Record flag: the payload ends with the object's bytes.
pub const FLAG_INLINE: u8 = 1;
/// Record flag: replaces an object under the same key.
pub const FLAG_REPLACES: u8 = 2;
/// Record flag: moves (deletes a previous key).
pub const FLAG_MOVES: u8 = 4;
const FLAGS_KNOWN: u8 = FLAG_INLINE | FLAG_REPLACES | FLAG_MOVES;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error("bad magic")]
    Magic,
    #[error("checksum mismatch")]
    Crc,
    #[error("unsupported version {0}")]
    Version(u16),
    #[error("record length {len} above the bound {max}")]
    TooLong { len: u64, max: u64 },
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("unknown record flags {0:#x}")]
    Flags(u8),
    #[error("record claims LSN {claimed} at position {at}")]
    Lsn { claimed: u64, at: u64 },
    #[error("record settles LSN {settled} beyond its own {lsn}")]
    Settled { settled: u64, lsn: u64 },
    #[error("segment size {0} is not a positive multiple of 1 MiB")]
    SegmentSize(u64),
    #[error("buffer too short")]
    Short,
}

/// CRC32C (Castagnoli), as ext4, RocksDB and Kafka use.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut digest = Crc::new();
    digest.update(bytes);
    digest.finish()
}

/// Incremental CRC32C, for a record whose header and payload are separate
/// buffers (and for an object whose bytes arrive in pieces).
pub struct Crc(crc_fast::Digest);

impl Crc {
    pub fn new() -> Crc {
        Crc(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi))
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(&self) -> u32 {
        // A CRC-32's value always fits in 32 bits.
        self.0.finalize() as u32
    }
}

impl Default for Crc {
    fn default() -> Crc {
        Crc::new()
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a segment size: a positive multiple of 1 MiB that keeps every LSN
/// computation far from overflow (at most 1 GiB).
pub fn check_segment_size(size: u64) -> Result<(), Error> {
    const MIB: u64 = 1 << 20;
    if size == 0 || size % MIB != 0 || size > 1024 * MIB {
        return Err(Error::SegmentSize(size));
    }
    Ok(())
}

/// The first 4 KiB of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_size: u64,
    pub number: u64,
    pub journal_id: [u8; 16],
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER as usize] {
        let mut b = [0u8; SEGMENT_HEADER as usize];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        let mib = u32::try_from(self.segment_size >> 20).expect("checked segment size");
        b[12..16].copy_from_slice(&mib.to_le_bytes());
        b[16..24].copy_from_slice(&self.number.to_le_bytes());
        b[24..40].copy_from_slice(&self.journal_id);
        let crc = crc32c(&b[8..64]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, Error> {
        if b.len() < 64 {
            return Err(Error::Short);
        }
        if b[0..4] != SEGMENT_MAGIC {
            return Err(Error::Magic);
        }
        if crc32c(&b[8..64]) != u32_at(b, 4) {
            return Err(Error::Crc);
        }
        let version = u16_at(b, 8);
        if version != SEGMENT_VERSION {
            return Err(Error::Version(version));
        }
        let segment_size = u64::from(u32_at(b, 12)) << 20;
        check_segment_size(segment_size)?;
        Ok(SegmentHeader {
            segment_size,
            number: u64_at(b, 16),
            journal_id: b[24..40].try_into().expect("16 bytes"),
        })
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Instance = 1,
    Media = 2,
    Abort = 3,
    Pad = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Kind, Error> {
        Ok(match v {
            1 => Kind::Instance,
            2 => Kind::Media,
            3 => Kind::Abort,
            4 => Kind::Pad,
            other => return Err(Error::Kind(other)),
        })
    }
}

/// A record's 32-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub kind: Kind,
    pub flags: u8,
    pub lsn: u64,
    pub settled: u64,
}

/// Rounds `n` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn align_up(n: u64, align: u64) -> Option<u64> {
    Some(n.checked_add(align - 1)? & !(align - 1))
}

impl RecordHeader {
    /// Bytes the record takes in the log, header and alignment included.
    pub fn footprint(&self) -> u64 {
        footprint(u64::from(self.len))
    }

    /// Encodes the header; the CRC covers the header's bytes 8–31 and
    /// `payload` (a pad's payload is neither written nor checked, so pass
    /// nothing for a pad).
    pub fn encode(&self, payload: &[u8]) -> [u8; RECORD_HEADER as usize] {
        debug_assert!(self.kind == Kind::Pad || payload.len() == self.len as usize);
        let mut b = [0u8; RECORD_HEADER as usize];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12] = self.kind as u8;
        b[13] = self.flags;
        b[14..16].copy_from_slice(&PAYLOAD_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.lsn.to_le_bytes());
        b[24..32].copy_from_slice(&self.settled.to_le_bytes());
        let mut crc = Crc::new();
        crc.update(&b[8..32]);
        if self.kind != Kind::Pad {
            crc.update(payload);
        }
        b[4..8].copy_from_slice(&crc.finish().to_le_bytes());
        b
    }

    /// Decodes and checks everything but the payload's CRC: magic, kind,
    /// flags, version, the position and the length bound (`max_len` for a
    /// record with a payload, `room` — what is left of the segment after
    /// the header — for a pad). A pad's CRC is checked here, since it
    /// covers the header only; for other kinds call [`RecordHeader::check_payload`].
    pub fn decode(b: &[u8], at: u64, max_len: u64, room: u64) -> Result<RecordHeader, Error> {
        if b.len() < RECORD_HEADER as usize {
            return Err(Error::Short);
        }
        if b[0..4] != RECORD_MAGIC {
            return Err(Error::Magic);
        }
        let kind = Kind::from_u8(b[12])?;
        let len = u32_at(b, 8);
        let bound = if kind == Kind::Pad {
            room
        } else {
            max_len.min(room)
        };
        if u64::from(len) > bound {
            return Err(Error::TooLong {
                len: u64::from(len),
                max: bound,
            });
        }
        let flags = b[13];
        if flags & !FLAGS_KNOWN != 0 || (kind == Kind::Pad && flags != 0) {
            return Err(Error::Flags(flags));
        }
        let version = u16_at(b, 14);
        if version != PAYLOAD_VERSION {
            return Err(Error::Version(version));
        }
        let lsn = u64_at(b, 16);
        if lsn != at {
            return Err(Error::Lsn { claimed: lsn, at });
        }
        let settled = u64_at(b, 24);
        if settled > lsn {
            return Err(Error::Settled { settled, lsn });
        }
        let header = RecordHeader {
            len,
            kind,
            flags,
            lsn,
            settled,
        };
        if kind == Kind::Pad && crc32c(&b[8..32]) != u32_at(b, 4) {
            return Err(Error::Crc);
        }
        Ok(header)
    }

    /// Checks the CRC of a decoded header `b` with its `payload`.
    pub fn check_payload(b: &[u8], payload: &[u8]) -> Result<(), Error> {
        let mut crc = Crc::new();
        crc.update(&b[8..32]);
        crc.update(payload);
        if crc.finish() != u32_at(b, 4) {
            return Err(Error::Crc);
        }
        Ok(())
    }
}

/// Bytes a record with a payload of `len` bytes takes in the log.
pub fn footprint(len: u64) -> u64 {
    align_up(RECORD_HEADER + len, RECORD_ALIGN).expect("len is bounded by the segment size")
}

/// One control slot: the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlSlot {
    pub generation: u64,
    pub checkpoint: u64,
    pub journal_id: [u8; 16],
    pub segment_size: u64,
}

impl ControlSlot {
    pub fn encode(&self) -> [u8; CONTROL_SLOT] {
        let mut b = [0u8; CONTROL_SLOT];
        b[0..4].copy_from_slice(&CONTROL_MAGIC);
        b[8..16].copy_from_slice(&self.generation.to_le_bytes());
        b[16..24].copy_from_slice(&self.checkpoint.to_le_bytes());
        b[24..40].copy_from_slice(&self.journal_id);
        b[40..48].copy_from_slice(&self.segment_size.to_le_bytes());
        let crc = crc32c(&b[8..64]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<ControlSlot, Error> {
        if b.len() < 64 {
            return Err(Error::Short);
        }
        if b[0..4] != CONTROL_MAGIC {
            return Err(Error::Magic);
        }
        if crc32c(&b[8..64]) != u32_at(b, 4) {
            return Err(Error::Crc);
        }
        let segment_size = u64_at(b, 40);
        check_segment_size(segment_size)?;
        Ok(ControlSlot {
            generation: u64_at(b, 8),
            checkpoint: u64_at(b, 16),
            journal_id: b[24..40].try_into().expect("16 bytes"),
            segment_size,
        })
    }

    /// The valid slot with the higher generation of the control file's two.
    pub fn newest(file: &[u8]) -> Option<ControlSlot> {
        let first = file.get(..CONTROL_SLOT).and_then(|b| Self::decode(b).ok());
        let second = file
            .get(CONTROL_SLOT..2 * CONTROL_SLOT)
            .and_then(|b| Self::decode(b).ok());
        match (first, second) {
            (Some(a), Some(b)) => Some(if b.generation > a.generation { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [7; 16];

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32/ISCSI.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader {
            segment_size: 64 << 20,
            number: 9,
            journal_id: ID,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for at in 0..64 {
            let mut bad = b;
            bad[at] ^= 0x10;
            assert!(SegmentHeader::decode(&bad).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn record_round_trip() {
        let payload = b"hello journal";
        let h = RecordHeader {
            len: payload.len() as u32,
            kind: Kind::Instance,
            flags: FLAG_INLINE,
            lsn: 8192,
            settled: 4096,
        };
        let b = h.encode(payload);
        let d = RecordHeader::decode(&b, 8192, 1 << 20, 1 << 20).unwrap();
        assert_eq!(d, h);
        RecordHeader::check_payload(&b, payload).unwrap();
        assert_eq!(
            RecordHeader::check_payload(&b, b"hello journaL"),
            Err(Error::Crc)
        );
        assert_eq!(h.footprint(), 48);
    }

    #[test]
    fn record_checks() {
        let h = RecordHeader {
            len: 100,
            kind: Kind::Instance,
            flags: 0,
            lsn: 4096,
            settled: 0,
        };
        let b = h.encode(&[1; 100]);
        // Wrong position: a stale record from a segment's earlier life.
        assert!(matches!(
            RecordHeader::decode(&b, 4096 + (64 << 20), 1 << 20, 1 << 20),
            Err(Error::Lsn { .. })
        ));
        // Length above the bound, before anything else is read.
        assert!(matches!(
            RecordHeader::decode(&b, 4096, 99, 1 << 20),
            Err(Error::TooLong { .. })
        ));
        assert!(matches!(
            RecordHeader::decode(&b, 4096, 1 << 20, 99),
            Err(Error::TooLong { .. })
        ));
        let mut bad = b;
        bad[12] = 9;
        assert_eq!(
            RecordHeader::decode(&bad, 4096, 1 << 20, 1 << 20),
            Err(Error::Kind(9))
        );
        let mut bad = b;
        bad[13] = 0x80;
        assert_eq!(
            RecordHeader::decode(&bad, 4096, 1 << 20, 1 << 20),
            Err(Error::Flags(0x80))
        );
        // Settled beyond itself is impossible.
        let s = RecordHeader { settled: 5000, ..h }.encode(&[1; 100]);
        assert!(matches!(
            RecordHeader::decode(&s, 4096, 1 << 20, 1 << 20),
            Err(Error::Settled { .. })
        ));
    }

    #[test]
    fn pad_crc_covers_header_only() {
        let h = RecordHeader {
            len: 4000,
            kind: Kind::Pad,
            flags: 0,
            lsn: 4096,
            settled: 0,
        };
        let b = h.encode(&[]);
        // A pad may span the rest of a segment: bounded by the room, not by
        // the record bound.
        assert_eq!(RecordHeader::decode(&b, 4096, 100, 4000), Ok(h));
        let mut bad = b;
        bad[20] ^= 1;
        assert!(RecordHeader::decode(&bad, 4096, 100, 4000).is_err());
    }

    #[test]
    fn control_takes_newest_valid_slot() {
        let slot = |generation, checkpoint| ControlSlot {
            generation,
            checkpoint,
            journal_id: ID,
            segment_size: 64 << 20,
        };
        let mut file = vec![0u8; 2 * CONTROL_SLOT];
        assert_eq!(ControlSlot::newest(&file), None);
        file[..CONTROL_SLOT].copy_from_slice(&slot(2, 100).encode());
        file[CONTROL_SLOT..].copy_from_slice(&slot(3, 200).encode());
        assert_eq!(ControlSlot::newest(&file), Some(slot(3, 200)));
        // A torn write spoils the newer slot: the older one still counts.
        file[CONTROL_SLOT + 20] ^= 1;
        assert_eq!(ControlSlot::newest(&file), Some(slot(2, 100)));
        // Short files are not a panic.
        assert_eq!(ControlSlot::newest(&file[..10]), None);
    }
}
