//! `[journal]`: the ingest journal (docs/ingest-journal.md). Off by default
//! while it is being built (issue 11); `enabled = true` (or `--journal
//! true`) acknowledges a local-store instance after one journal sync instead
//! of today's chain of syncs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Acknowledge from the journal (local store only; S3 keeps its path).
    pub enabled: bool,
    /// Size of one segment in MiB (1–1024).
    pub segment_size_mib: u64,
    /// Segments preallocated (at least 2).
    pub segments: u64,
    /// Milliseconds between checkpoints.
    pub checkpoint_interval_ms: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: false,
            segment_size_mib: 64,
            segments: 8,
            checkpoint_interval_ms: 1000,
        }
    }
}
