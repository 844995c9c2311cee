//! The ingest journal (issue 11, docs/ingest-journal.md): a write-ahead log
//! of checksummed records in preallocated segments, appended with group
//! commit, so an acknowledgement waits for one sync shared by every instance
//! ready at that moment.
//!
//! Phase 1 (this branch so far): the record, segment and control formats,
//! the segment scan that finds the end of the log, and the group-commit
//! writer. Not yet wired into ingest; apply, checkpoint and recovery follow.

pub mod format;
pub mod segment;
pub mod writer;

#[cfg(test)]
mod tests;
