//! DICOM unique identifiers, validated once at the trust boundary.
//!
//! A UID that comes off the network becomes part of an object key, so it is
//! checked against PS3.5 §9.1 before anything else sees it: at most 64
//! characters, components of digits separated by single dots, no component
//! with a leading zero (except the component "0" itself).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid DICOM UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("UID is empty")]
    Empty,
    #[error("UID is {0} characters long (at most 64 allowed)")]
    TooLong(usize),
    #[error("UID contains {0:?}: only digits and dots are allowed")]
    BadCharacter(char),
    #[error("UID has an empty component")]
    EmptyComponent,
    #[error("UID component {0:?} has a leading zero")]
    LeadingZero(String),
}

/// A validated DICOM UID. Safe to use as a path segment.
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
        if s.len() > 64 {
            return Err(Error::TooLong(s.len()));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_digit() && *c != '.') {
            return Err(Error::BadCharacter(c));
        }
        for component in s.split('.') {
            if component.is_empty() {
                return Err(Error::EmptyComponent);
            }
            if component.len() > 1 && component.starts_with('0') {
                return Err(Error::LeadingZero(component.to_owned()));
            }
        }
        Ok(Uid(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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
        assert_eq!(
            Uid::parse("1.2.840.10008.1.2.1").unwrap().as_str(),
            "1.2.840.10008.1.2.1"
        );
        assert_eq!(Uid::parse("1.2.3\0").unwrap().as_str(), "1.2.3");
        assert_eq!(Uid::parse("1.0.3 ").unwrap().as_str(), "1.0.3");
        assert!(Uid::parse(&format!("1.{}", "2".repeat(62))).is_ok());
    }

    #[test]
    fn refuses_what_could_escape_a_path_or_break_the_standard() {
        assert_eq!(Uid::parse(""), Err(Error::Empty));
        assert_eq!(Uid::parse("../etc"), Err(Error::BadCharacter('/')));
        assert_eq!(Uid::parse("1.2/3"), Err(Error::BadCharacter('/')));
        assert_eq!(Uid::parse("1..2"), Err(Error::EmptyComponent));
        assert_eq!(Uid::parse(".1.2"), Err(Error::EmptyComponent));
        assert_eq!(Uid::parse("1.2."), Err(Error::EmptyComponent));
        assert_eq!(Uid::parse("1.02"), Err(Error::LeadingZero("02".into())));
        assert_eq!(Uid::parse(&"1".repeat(65)), Err(Error::TooLong(65)));
        assert_eq!(Uid::parse("1.2.a"), Err(Error::BadCharacter('a')));
    }
}
