//! Listing the pending directory (at start, for copies nobody claimed).

use std::path::{Path, PathBuf};

use super::{Result, io};
use crate::store::ObjectKey;

/// Keys are `studies/<study>/<series>/<file>`: nothing of ours is deeper.
/// Deeper directories are not entered (a hostile or broken tree cannot make
/// the walk unbounded).
const MAX_DEPTH: usize = 4;

/// Every file (or symlink) below `root`, outside the `skip` directories of
/// the root, with the object key its relative path names (`None`: not a
/// key of ours).
pub(super) fn files(root: &Path, skip: &[&str]) -> Result<Vec<(PathBuf, Option<ObjectKey>)>> {
    let mut found = Vec::new();
    let mut dirs = vec![(root.to_owned(), 0usize)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io("stat", &path))?;
            if kind.is_dir() {
                let skipped = depth == 0 && skip.iter().any(|s| entry.file_name() == **s);
                if !skipped && depth + 1 < MAX_DEPTH {
                    dirs.push((path, depth + 1));
                }
                continue;
            }
            let key = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .and_then(|rel| ObjectKey::parse(rel).or_else(|| sidecar(rel)));
            found.push((path, key));
        }
    }
    Ok(found)
}

/// The key of a media sidecar file (`parse_sidecar` names the media file).
fn sidecar(rel: &str) -> Option<ObjectKey> {
    let media = ObjectKey::parse_sidecar(rel)?;
    let (study, name) = media.as_media()?;
    Some(ObjectKey::media_sidecar(&study, name))
}
