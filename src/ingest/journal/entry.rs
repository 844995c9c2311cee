//! The payload of instance, media and abort records: what replay needs to
//! place an object and index it exactly as the live path did.
//!
//! Format 1 is JSON (serde) for now, the encoding the index already uses
//! for these records; the design asks for a binary encoding on the
//! acknowledgement path (postcard), which is not among the crates this
//! build has — to do. Decoding is bounded: the record's length was checked
//! against the segment bound before the payload was read, and the CRC
//! before it is decoded.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::index::{InstanceRecord, MediaRecord, NewEntry, NewInstance, StudyTags};

#[derive(Debug, Error)]
pub enum Error {
    #[error("journal payload: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("journal payload names a bad spool file {0:?}")]
    SpoolName(String),
    #[error("abort record of {0} bytes, expected 8")]
    AbortLen(usize),
    #[error("inline record: {0}")]
    Inline(&'static str),
}

/// An instance or media record's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub entry: Entry,
    /// The spool file's name in the spool directory (a reference record);
    /// in an inline record, empty when the instance never had one.
    pub spool: String,
    /// The object's length, checked against the spool file in replay.
    pub len: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Entry {
    Instance(Box<InstanceEntry>),
    Media(MediaRecord),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceEntry {
    pub record: InstanceRecord,
    pub study: StudyTags,
}

impl Entry {
    pub fn from_new(new: &NewEntry) -> Entry {
        match new {
            NewEntry::Instance(i) => Entry::Instance(Box::new(InstanceEntry {
                record: i.record.clone(),
                study: i.study.clone(),
            })),
            NewEntry::Media(m) => Entry::Media(m.clone()),
        }
    }

    pub fn into_new(self) -> NewEntry {
        match self {
            Entry::Instance(i) => {
                let InstanceEntry { record, study } = *i;
                NewEntry::Instance(Box::new(NewInstance { record, study }))
            }
            Entry::Media(m) => NewEntry::Media(m),
        }
    }
}

impl Payload {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Payload, Error> {
        let payload: Payload = serde_json::from_slice(bytes)?;
        check_spool_name(&payload.spool)?;
        Ok(payload)
    }

    /// An inline record's metadata: its spool name may be empty (a small
    /// instance never had a spool file; its bytes are in the record).
    fn decode_meta(bytes: &[u8]) -> Result<Payload, Error> {
        let payload: Payload = serde_json::from_slice(bytes)?;
        if !payload.spool.is_empty() {
            check_spool_name(&payload.spool)?;
        }
        Ok(payload)
    }
}

impl Payload {
    /// An inline record's payload: the length of the encoded payload
    /// (u32, little-endian), the payload, then the object's bytes.
    pub fn encode_inline(&self, bytes: &[u8]) -> Vec<u8> {
        let meta = self.encode();
        let mut out = Vec::with_capacity(4 + meta.len() + bytes.len());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(bytes);
        out
    }

    /// Splits an inline record's payload; the object's bytes must be
    /// exactly the length the payload names.
    pub fn decode_inline(b: &[u8]) -> Result<(Payload, &[u8]), Error> {
        let (len, rest) = b
            .split_first_chunk::<4>()
            .ok_or(Error::Inline("shorter than its length field"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(Error::Inline("length field past the end"));
        }
        let (meta, bytes) = rest.split_at(len);
        let payload = Payload::decode_meta(meta)?;
        if payload.len != bytes.len() as u64 {
            return Err(Error::Inline(
                "object length differs from the bytes carried",
            ));
        }
        Ok((payload, bytes))
    }
}

/// A spool file's name: one plain file name, never a path.
pub fn check_spool_name(name: &str) -> Result<(), Error> {
    let plain = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if plain {
        Ok(())
    } else {
        Err(Error::SpoolName(name.to_owned()))
    }
}

/// An abort record's payload: the LSN that must not be replayed.
pub fn encode_abort(lsn: u64) -> [u8; 8] {
    lsn.to_le_bytes()
}

pub fn decode_abort(bytes: &[u8]) -> Result<u64, Error> {
    let b: [u8; 8] = bytes.try_into().map_err(|_| Error::AbortLen(bytes.len()))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_names_are_plain() {
        assert!(check_spool_name("123-4.part").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\0b"] {
            assert!(check_spool_name(bad).is_err(), "{bad:?}");
        }
        assert!(decode_abort(&[1, 2, 3]).is_err());
        for bad in [&[][..], &[1, 0], &[255, 255, 255, 255, b'{']] {
            assert!(Payload::decode_inline(bad).is_err());
        }
        assert_eq!(decode_abort(&encode_abort(77)).unwrap(), 77);
    }
}
