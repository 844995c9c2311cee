//! The ingest journal (issue 11, docs/ingest-journal.md): a write-ahead log
//! of checksummed records in preallocated segments, appended with group
//! commit, so an acknowledgement waits for one sync shared by every instance
//! ready at that moment.
//!
//! Selected by `journal.enabled` (on by default); runtime.rs lists what
//! this version simplifies against the design (docs/ingest-journal.md).

pub mod control;
pub mod entry;
pub mod format;
mod placement;
pub mod recover;
pub mod runtime;
pub mod segment;
mod start;
pub mod writer;

pub use recover::{Recovered, open, unreplayed};
pub use runtime::{Journal, Target};
pub use start::start;

#[cfg(test)]
mod tests;
