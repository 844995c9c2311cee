//! What is measured on disk at scrape time.

use std::path::Path;

/// Entries looked at below the index directory, at most; sled keeps a few
/// files (and a `blobs/` directory with large values), so this is a bound
/// against a directory someone filled, not a real limit.
const MAX_INDEX_ENTRIES: usize = 100_000;
/// Directory levels below the index directory looked at.
pub(super) const MAX_INDEX_DEPTH: usize = 4;

/// Bytes of the regular files below `dir` (symbolic links not followed),
/// within [`MAX_INDEX_DEPTH`] levels and [`MAX_INDEX_ENTRIES`] entries.
pub(super) fn dir_size(dir: &Path, depth: usize, seen: &mut usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0u64;
    for entry in entries.flatten() {
        *seen += 1;
        if *seen > MAX_INDEX_ENTRIES {
            break;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_file() {
            total = total.saturating_add(meta.len());
        } else if meta.is_dir() && depth < MAX_INDEX_DEPTH {
            total = total.saturating_add(dir_size(&entry.path(), depth + 1, seen));
        }
    }
    total
}
