//! `[journal]`: the ingest journal (docs/ingest-journal.md). On by default:
//! a local-store instance is acknowledged after one journal sync;
//! `enabled = false` (or `--journal false`) goes back to the chain of syncs
//! per instance (spool file, directories, index) of the first versions.

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
    /// Instances up to this many KiB are carried in their journal record
    /// (one sync acknowledges them); larger ones are synced in their spool
    /// file first and referenced (0–4096; at most a quarter of a segment
    /// is used).
    pub inline_max_kib: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: true,
            segment_size_mib: 64,
            segments: 8,
            checkpoint_interval_ms: 1000,
            inline_max_kib: 64,
        }
    }
}

impl JournalConfig {
    /// Refuses sizes the journal cannot work with, naming the setting.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.segment_size_mib == 0 || self.segment_size_mib > 1024 {
            return Err((
                "journal.segment_size_mib",
                format!("{} is not 1–1024", self.segment_size_mib),
            ));
        }
        if self.segments < 2 || self.segments > 1024 {
            return Err((
                "journal.segments",
                format!("{} is not 2–1024", self.segments),
            ));
        }
        if self.checkpoint_interval_ms == 0 || self.checkpoint_interval_ms > 3_600_000 {
            return Err((
                "journal.checkpoint_interval_ms",
                format!("{} is not 1 ms – 1 hour", self.checkpoint_interval_ms),
            ));
        }
        if self.inline_max_kib > 4096 {
            return Err((
                "journal.inline_max_kib",
                format!("{} is more than 4096", self.inline_max_kib),
            ));
        }
        Ok(())
    }
}
