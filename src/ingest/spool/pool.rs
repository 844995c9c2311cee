//! The pool of empty spool files: created ahead in batches (and, with an
//! S3 store, uploaded pending copies reused), each batch's names synced
//! before any is handed out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Empty spool files kept ready. Creating a file costs a journal entry that
/// the next fsync must commit; creating them ahead, in batches, keeps that off
/// each instance's path to its acknowledgement.
const POOL_TARGET: usize = 64;
/// Refill the pool, in one batch, once it is down to this many.
const POOL_LOW: usize = 16;
/// Most recycled files kept (by name, not open): one offered beyond that
/// is deleted instead. Enough for the copies an upload backlog of small
/// instances drains after a burst; each is an empty file.
const RECYCLED_MAX: usize = 4096;

#[derive(Debug)]
pub(super) struct Pool {
    dir: PathBuf,
    next: AtomicU64,
    ready: Mutex<Vec<(PathBuf, std::fs::File)>>,
    /// Files taken over ([`Pool::adopt`]), emptied, renamed into the spool
    /// and closed: a refill opens them instead of creating files, and
    /// syncs their names before handing them out.
    recycled: Mutex<Vec<PathBuf>>,
    refilling: AtomicBool,
}

impl Pool {
    pub(super) fn new(dir: &Path) -> Pool {
        Pool {
            dir: dir.to_owned(),
            next: AtomicU64::new(0),
            ready: Mutex::new(Vec::with_capacity(POOL_TARGET)),
            recycled: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A spool name no other file of this process has.
    fn new_name(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}-{n}.part", std::process::id()))
    }

    fn create_file(&self) -> std::io::Result<(PathBuf, std::fs::File)> {
        let path = self.new_name();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Creates a batch of files and syncs the spool directory once before
    /// handing any out: the ingest journal refers to a spool file by name,
    /// so the name must be durable before the record is (a power cut could
    /// otherwise lose it, and with it an acknowledged instance's bytes).
    /// Recycled files go first, each sparing a creation.
    fn refill(&self) {
        let want = POOL_TARGET.saturating_sub(self.ready.lock().expect("pool lock").len());
        let reused: Vec<PathBuf> = {
            let mut recycled = self.recycled.lock().expect("pool lock");
            let from = recycled.len().saturating_sub(want);
            recycled.drain(from..).collect()
        };
        let mut fresh = Vec::with_capacity(want);
        for path in reused {
            match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(file) => fresh.push((path, file)),
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        for _ in fresh.len()..want {
            match self.create_file() {
                Ok(file) => fresh.push(file),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pre-create spool files");
                    break;
                }
            }
        }
        match crate::store::sync_dir(&self.dir) {
            Ok(()) => self.ready.lock().expect("pool lock").extend(fresh),
            Err(e) => {
                tracing::warn!(error = %e, "cannot sync the spool directory");
                for (path, _) in fresh {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// One file on the spot (the pool ran dry), its name synced.
    fn create_synced(&self) -> std::io::Result<(PathBuf, std::fs::File)> {
        let created = self.create_file()?;
        crate::store::sync_dir(&self.dir)?;
        Ok(created)
    }

    /// Takes over `path`, a file nothing needs any more (an uploaded
    /// pending copy, on this filesystem), as a future spool file instead of
    /// it being deleted; returns `false` when it did not (the caller then
    /// deletes it). Blocking.
    ///
    /// On ext4 without a journal every file created after many were
    /// deleted pays for the deleted ones (the inode allocator checks each
    /// recently deleted inode at every creation, see bench/ingest.py);
    /// with an S3 store each instance is a spool file created and a pending
    /// copy deleted, and reusing the one as the other removes both.
    ///
    /// The file must be nobody's any more, since it is emptied and refilled
    /// with another instance's bytes. It is first renamed into the spool
    /// (so nobody can open it by its old name), then a write lease is taken
    /// on it, which the kernel grants only when no other descriptor of it
    /// is open anywhere: whoever opened the old name before the rename
    /// keeps the file to itself, and it is deleted instead. A reader that
    /// opened it by the old name checks afterwards that the name still
    /// leads to what it opened ([`crate::store::backlog::Backlog::open_pending`]).
    pub(super) fn adopt(&self, path: &Path) -> bool {
        if self.recycled.lock().expect("pool lock").len() >= RECYCLED_MAX {
            return false;
        }
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        else {
            return false;
        };
        // Never onto another file (a leftover of an earlier process with
        // the same pid, as in a container).
        let name = self.new_name();
        if rename_noreplace(path, &name).is_err() {
            return false;
        }
        match empty_if_unshared(&file) {
            Ok(()) => self.recycled.lock().expect("pool lock").push(name),
            Err(e) => {
                tracing::debug!(error = %e, "not recycling a pending copy; deleted");
                let _ = std::fs::remove_file(&name);
            }
        }
        true
    }

    /// A ready file, if there is one; starts a refill when few are left.
    fn pop(self: &Arc<Pool>) -> Option<(PathBuf, std::fs::File)> {
        let (ready, left) = {
            let mut ready = self.ready.lock().expect("pool lock");
            (ready.pop(), ready.len())
        };
        if left < POOL_LOW && !self.refilling.swap(true, Ordering::AcqRel) {
            let pool = Arc::clone(self);
            tokio::task::spawn_blocking(move || pool.refill());
        }
        ready
    }

    /// A file for a writer, from a blocking thread.
    pub(super) fn take_blocking(self: &Arc<Pool>) -> std::io::Result<(PathBuf, std::fs::File)> {
        match self.pop() {
            Some(fresh) => Ok(fresh),
            None => self.create_synced(),
        }
    }

    /// A file for a writer, from the runtime.
    pub(super) async fn take(self: &Arc<Pool>) -> std::io::Result<(PathBuf, std::fs::File)> {
        match self.pop() {
            Some(fresh) => Ok(fresh),
            None => {
                let pool = Arc::clone(self);
                tokio::task::spawn_blocking(move || pool.create_synced())
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }
}

/// The ready files go when the pool does. Recycled ones stay, empty, for
/// the next start's sweep: up to `RECYCLED_MAX` deletions are better not
/// made while a restarted gateway already receives.
impl Drop for Pool {
    fn drop(&mut self) {
        for (path, _) in self.ready.get_mut().expect("pool lock").drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `rename(2)` that fails rather than replace an existing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working
    // directory only if relative.
    let done = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match done {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Empties `file` if no other descriptor of it is open and it has one
/// name: under a write lease (`F_SETLEASE`), which the kernel refuses
/// (`EAGAIN`) while anyone else has the file open, and which makes a later
/// open wait until it is released.
fn empty_if_unshared(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    if file.metadata()?.nlink() != 1 {
        return Err(std::io::Error::other("the file has another name"));
    }
    ignore_lease_breaks();
    let lease = |kind: libc::c_int| {
        // SAFETY: a valid open file descriptor and an integer argument.
        match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, kind) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    lease(libc::F_WRLCK)?;
    let emptied = file.set_len(0);
    lease(libc::F_UNLCK)?;
    emptied
}

/// The kernel tells a lease holder that someone opens its file (an open
/// that began before the rename) with `SIGIO`, whose default action ends
/// the process. The gateway uses no signal-driven I/O: the signal is
/// ignored, once, and the opener simply waits the microseconds until the
/// lease is released.
fn ignore_lease_breaks() {
    static IGNORED: std::sync::Once = std::sync::Once::new();
    IGNORED.call_once(|| {
        // SAFETY: setting a standard signal's disposition to SIG_IGN.
        unsafe {
            libc::signal(libc::SIGIO, libc::SIG_IGN);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recycled_files_are_handed_out_empty_once_their_names_are_synced() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = super::super::Spool::open(&dir.path().join("spool")).unwrap();
        let recycle = spool.recycler();
        let copy = dir.path().join("uploaded");
        std::fs::write(&copy, b"an uploaded instance").unwrap();
        let inode = std::fs::metadata(&copy).unwrap().ino();
        assert!(recycle(&copy));
        assert!(!copy.exists());
        // Not handed out before a refill synced its new name.
        assert!(spool.pool.ready.lock().unwrap().is_empty());
        spool.pool.refill();
        assert!(spool.pool.recycled.lock().unwrap().is_empty());
        let ready = spool.pool.ready.lock().unwrap();
        let (path, file) = ready
            .iter()
            .find(|(_, f)| f.metadata().unwrap().ino() == inode)
            .expect("the recycled file is ready");
        assert!(path.starts_with(spool.dir()));
        assert_eq!(file.metadata().unwrap().len(), 0);
        drop(ready);
        let in_spool = std::fs::read_dir(spool.dir()).unwrap().count();
        assert_eq!(in_spool, POOL_TARGET, "it spares one creation");

        // Never onto a file of the same name (an earlier process's).
        std::fs::write(&copy, b"offered").unwrap();
        let n = spool.pool.next.load(Ordering::Relaxed);
        let taken = spool.dir().join(format!("{}-{n}.part", std::process::id()));
        std::fs::write(&taken, b"left by an earlier run").unwrap();
        assert!(!recycle(&copy), "not taken: the caller deletes it");
        assert_eq!(std::fs::read(&copy).unwrap(), b"offered");
        assert_eq!(std::fs::read(&taken).unwrap(), b"left by an earlier run");

        // One with a second name is not emptied: deleted instead.
        std::fs::write(&copy, b"linked").unwrap();
        let link = dir.path().join("link");
        std::fs::hard_link(&copy, &link).unwrap();
        assert!(recycle(&copy));
        assert_eq!(std::fs::read(&link).unwrap(), b"linked");
        assert!(spool.pool.recycled.lock().unwrap().is_empty());
    }

    /// An open of the file while the lease is held (one that looked the
    /// name up before the rename) waits for the lease and does not end
    /// the process with SIGIO.
    #[test]
    fn an_open_during_the_lease_waits_and_the_gateway_lives() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        std::fs::write(&path, b"x").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        ignore_lease_breaks();
        let fd = file.as_raw_fd();
        // SAFETY: a valid descriptor and integer arguments.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) },
            0
        );
        let opener = std::thread::spawn({
            let path = path.clone();
            move || std::fs::read(&path).unwrap()
        });
        // A lease being broken reports the type it is broken to.
        let breaking = (0..2000).any(|_| {
            // SAFETY: as above.
            let now = unsafe { libc::fcntl(fd, libc::F_GETLEASE) };
            now == libc::F_RDLCK || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                false
            }
        });
        assert!(breaking, "the open did not wait for the lease");
        assert!(!opener.is_finished());
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) },
            0
        );
        assert_eq!(opener.join().unwrap(), b"x");
    }
}
