//! DICOM unique identifiers, validated once at the trust boundary.
//!
//! A UID that comes off the network becomes part of an object key, so it is
//! checked before anything else sees it. The check is for what is safe as a
//! key, not for PS3.5 §9.1 conformance: modalities send UIDs with leading
//! zeros, hex digits or over 64 characters, and DCMTK and Orthanc store them;
//! refusing them would make a modality retry for ever. Such a UID is stored
//! as received, and [`Uid::nonconformance`] says what is wrong with it (ingest
//! logs it). Refused are only UIDs that could escape a path segment or
//! collide with one of the store's own names: empty, over [`MAX_LEN`]
//! characters, any character but ASCII letters, digits, `.`, `-` and `_`
//! (so no `/`, `\`, space, control or non-ASCII), `.` and `..`, and the
//! names of a study's media folders.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest UID accepted (PS3.5 allows 64; keys stay far below S3's 1024 bytes).
pub const MAX_LEN: usize = 128;

/// Folder names inside a study that a series UID must not take.
const RESERVED: [&str; 2] = ["media", crate::store::keys::MEDIA_SIDECARS];

/// Why a string cannot be used as a UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("UID is empty")]
    Empty,
    #[error("UID is {0} characters long (at most 128 accepted)")]
    TooLong(usize),
    #[error("UID contains {0:?}: only letters, digits, '.', '-', '_' accepted")]
    BadCharacter(char),
    #[error("UID {0:?} is a reserved name")]
    Reserved(String),
}

/// A UID that is safe as a path segment. Usually also a conformant DICOM
/// UID; see [`Uid::nonconformance`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Uid(String);

impl Uid {
    /// Validates `raw` after stripping the trailing NUL or space padding DICOM
    /// uses to reach an even length.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let s = raw.trim_end_matches(['\0', ' ']);
        if s.is_empty() {
            return Err(Error::Empty);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(Error::BadCharacter(c));
        }
        if s.len() > MAX_LEN {
            return Err(Error::TooLong(s.len()));
        }
        if s == "." || s == ".." || RESERVED.contains(&s) {
            return Err(Error::Reserved(s.to_owned()));
        }
        Ok(Uid(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What breaks PS3.5 §9.1 in this UID (at most 64 characters,
    /// components of digits separated by single dots, no leading zeros),
    /// or `None` for a conformant one.
    pub fn nonconformance(&self) -> Option<String> {
        let s = self.0.as_str();
        if s.len() > 64 {
            return Some(format!("{} characters (at most 64)", s.len()));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_digit() && *c != '.') {
            return Some(format!("contains {c:?} (digits and dots only)"));
        }
        for component in s.split('.') {
            if component.is_empty() {
                return Some("has an empty component".into());
            }
            if component.len() > 1 && component.starts_with('0') {
                return Some(format!("component {component:?} has a leading zero"));
            }
        }
        None
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.0)
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Uid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Uid::parse(s)
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Uid::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_standard_uids_and_strips_padding() {
        for raw in ["1.2.840.10008.1.2.1", "1.2.3\0", "1.0.3 "] {
            let uid = Uid::parse(raw).unwrap();
            assert_eq!(uid.as_str(), raw.trim_end_matches(['\0', ' ']));
            assert_eq!(uid.nonconformance(), None);
        }
        assert!(Uid::parse(&format!("1.{}", "2".repeat(62))).is_ok());
    }

    #[test]
    fn harmless_nonconformant_uids_are_kept_as_received_and_flagged() {
        for (raw, why) in [
            ("1.02.3", "leading zero"),
            ("1.2.3a9f", "contains 'a'"),
            ("4A3F-99_1", "contains 'A'"),
            ("1..2", "empty component"),
            (".1.2", "empty component"),
        ] {
            let uid = Uid::parse(raw).unwrap();
            assert_eq!(uid.as_str(), raw);
            let found = uid.nonconformance().unwrap();
            assert!(found.contains(why), "{raw}: {found}");
        }
        let long = format!("1.{}", "2".repeat(100));
        assert!(
            Uid::parse(&long)
                .unwrap()
                .nonconformance()
                .unwrap()
                .contains("102")
        );
    }

    #[test]
    fn refuses_what_could_escape_a_path_or_collide() {
        assert_eq!(Uid::parse(""), Err(Error::Empty));
        assert_eq!(Uid::parse("\0 "), Err(Error::Empty));
        assert_eq!(Uid::parse("../etc"), Err(Error::BadCharacter('/')));
        assert_eq!(Uid::parse("1.2/3"), Err(Error::BadCharacter('/')));
        assert_eq!(Uid::parse("1.2\\3"), Err(Error::BadCharacter('\\')));
        assert_eq!(Uid::parse("1.2 3"), Err(Error::BadCharacter(' ')));
        assert_eq!(Uid::parse("1.2\n3"), Err(Error::BadCharacter('\n')));
        assert_eq!(Uid::parse("1.2\u{e9}"), Err(Error::BadCharacter('\u{e9}')));
        assert_eq!(Uid::parse("1.2%2f"), Err(Error::BadCharacter('%')));
        assert_eq!(Uid::parse("."), Err(Error::Reserved(".".into())));
        assert_eq!(Uid::parse(".."), Err(Error::Reserved("..".into())));
        assert_eq!(Uid::parse("media"), Err(Error::Reserved("media".into())));
        assert_eq!(
            Uid::parse("media-meta"),
            Err(Error::Reserved("media-meta".into()))
        );
        assert_eq!(Uid::parse(&"1".repeat(129)), Err(Error::TooLong(129)));
        assert!(Uid::parse(&"1".repeat(128)).is_ok());
    }
}
