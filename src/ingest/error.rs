//! How an ingest fails, and how each failure is reported to the sender.

use super::{header, journal};
use crate::uid::Uid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Header(#[from] header::Error),
    #[error("data set {name} {found} does not match the command's {expected}")]
    Mismatch {
        name: &'static str,
        found: Uid,
        expected: Uid,
    },
    #[error("instance larger than max_instance_size ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error(
        "less than min_free_space ({min} bytes) free for the data directory, with room for {transfers} instances being received"
    )]
    DiskFull { min: u64, transfers: u64 },
    #[error("spool: {0}")]
    Spool(#[source] std::io::Error),
    #[error("store: {0}")]
    Store(#[from] crate::store::Error),
    #[error("index commit failed: {0}")]
    IndexCommit(String),
    #[error("journal: {0}")]
    Journal(#[from] journal::runtime::Error),
    #[error("index: {0}")]
    Index(#[source] crate::index::Error),
    /// An upload whose Patient ID or issuer is not its study's.
    #[error("Patient ID or issuer differs from the study's")]
    PatientMismatch,
    /// Refused by the duplicate policy; the stored instance stays.
    #[error("{}", if *.same_study {
        "SOP Instance UID already stored (duplicates = reject)"
    } else {
        "SOP Instance UID already stored under another Study UID"
    })]
    Duplicate { stored_study: Uid, same_study: bool },
    /// A bug met this instance (a panic, caught): it is refused, nothing
    /// else is affected.
    #[error("internal error while {0}; instance not stored")]
    Panicked(&'static str),
    #[error("gateway is shutting down")]
    ShuttingDown,
}

impl Error {
    /// Whether the data itself is at fault (as opposed to the gateway).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Header(_) | Error::Panicked(_) => ErrorKind::Unparseable,
            Error::Mismatch { .. } | Error::PatientMismatch => ErrorKind::Mismatch,
            Error::Duplicate { .. } => ErrorKind::Duplicate,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            _ => ErrorKind::OutOfResources,
        }
    }
}

/// How a failed ingest is reported to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The data set cannot be parsed or lacks what an instance needs.
    Unparseable,
    /// The data set's identity disagrees with what was announced.
    Mismatch,
    /// Larger than `max_instance_size`.
    TooLarge,
    /// A SOP Instance UID already stored, which the duplicate policy keeps.
    Duplicate,
    /// The gateway could not store it (disk, I/O, limits, shutdown).
    OutOfResources,
}
