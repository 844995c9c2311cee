//! Putting a journaled instance's object in place, and making placements
//! durable (the checkpoint's and the replay's syncs). Nothing here syncs
//! on an acknowledgement's path: the record already made the instance
//! durable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::runtime::Error;
use crate::index::NewEntry;

/// Where a journaled instance's bytes are, once its record is durable.
pub(super) enum Source {
    /// Its spool file (synced, or carried inline too).
    Spool(PathBuf),
    /// Only in memory and in its inline record: a small instance.
    Bytes(Vec<u8>),
}

impl Source {
    /// The spool file, if it has one.
    pub(super) fn spool(&self) -> Option<&Path> {
        match self {
            Source::Spool(path) => Some(path),
            Source::Bytes(_) => None,
        }
    }
}

/// Writes a small instance's bytes (its record carries them) as the
/// object of `new`, not synced: straight into a new file under its key,
/// which no reader sees before the index entry that follows; a key that
/// exists already (a replacement) gets a complete new file by rename, so
/// a reader of the old one is not cut short. Nothing is left behind on
/// an error. Returns the key's directory.
pub(super) fn write_new(
    root: &Path,
    new: &NewEntry,
    bytes: &[u8],
    lsn: u64,
) -> Result<PathBuf, Error> {
    use std::io::Write;
    let dest = root.join(new.object_key().as_str());
    let dir = dest.parent().expect("keys have a parent").to_path_buf();
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
    };
    let mut file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).map_err(at(&dir))?;
            create().map_err(at(&dest))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            write_replacing(root, new, bytes, lsn)?;
            return Ok(dir);
        }
        created => created.map_err(at(&dest))?,
    };
    if let Err(e) = file.write_all(bytes) {
        let _ = std::fs::remove_file(&dest);
        return Err(at(&dest)(e));
    }
    Ok(dir)
}

/// Writes `bytes` as the object of `new` into a fresh inode: a temporary
/// file in the key's directory, renamed onto the key (not synced).
pub(super) fn write_replacing(
    root: &Path,
    new: &NewEntry,
    bytes: &[u8],
    lsn: u64,
) -> Result<(), Error> {
    let dest = root.join(new.object_key().as_str());
    let dir = dest.parent().expect("keys have a parent");
    let tmp = dir.join(format!(".journal-{lsn}.tmp"));
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let written = std::fs::write(&tmp, bytes)
        .map_err(at(&tmp))
        .and_then(|()| std::fs::rename(&tmp, &dest).map_err(at(&dest)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A placement error naming `path`.
fn at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Place { path, source }
}

/// Renames the spool file onto the entry's key (no sync: the record makes
/// it durable until a checkpoint does). Returns the key's directory.
///
/// Replay copes with either side of the rename: a spool name still there
/// is placed again; a spool name gone means the object holds its inode.
pub(super) fn place(root: &Path, new: &NewEntry, spool: &Path) -> Result<PathBuf, Error> {
    let dest = root.join(new.object_key().as_str());
    let dir = dest.parent().expect("keys have a parent").to_path_buf();
    // Most instances go to a series directory that exists already: the
    // rename is tried first, and the directories made only when it says
    // they are missing.
    match std::fs::rename(spool, &dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && spool.exists() => {
            std::fs::create_dir_all(&dir).map_err(at(&dir))?;
            std::fs::rename(spool, &dest).map_err(at(&dest))?;
        }
        renamed => renamed.map_err(at(&dest))?,
    }
    Ok(dir)
}

/// Each directory that gained an entry, and its ancestors up to and
/// including the store root (any of them may have been created for it).
pub(super) fn dirs_to_sync<'a>(
    root: &Path,
    dirs: impl Iterator<Item = &'a Path>,
) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for dir in dirs {
        let mut d = Some(dir);
        while let Some(cur) = d {
            if !cur.starts_with(root) || !out.insert(cur.to_path_buf()) {
                break;
            }
            d = cur.parent();
        }
    }
    out
}

pub(super) fn sync_dirs(dirs: &BTreeSet<PathBuf>) -> Result<(), Error> {
    for dir in dirs {
        match crate::store::sync_dir(dir) {
            Ok(()) => {}
            // Gone since (an upload emptied a pending directory, a moved
            // instance's series): its parent, synced too, records that.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::SyncDir {
                    path: dir.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// `syncfs(2)` of the filesystem holding `root`: every file's data and
/// metadata written so far on it, with one flush of the device.
pub(super) fn sync_filesystem(root: &Path) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    let err = |source| Error::SyncDir {
        path: root.to_path_buf(),
        source,
    };
    let dir = std::fs::File::open(root).map_err(err)?;
    // SAFETY: a valid open file descriptor.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}
