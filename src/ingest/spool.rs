//! Spool files: where an instance is written while it arrives.
//!
//! The spool lives in the data directory, on the same filesystem as the local
//! object store, so a finished instance is renamed into place rather than
//! copied. A spool file that is dropped before it was placed removes itself;
//! leftovers from a crash are swept when the spool is opened.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod pool;
use pool::Pool;

/// Bytes buffered before they are handed to the filesystem (two such buffers
/// per instance being received).
pub(super) const WRITE_BUFFER: usize = 256 * 1024;

/// What an instance's first buffer starts with: a small instance (most
/// are) never needs more, and a larger one grows it once. Allocating two
/// full buffers per instance up front cost more than receiving a 9 KiB
/// instance.
const FIRST_BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub struct Spool {
    pool: Arc<Pool>,
}

impl Spool {
    /// Opens the spool directory, creating it, and removes whatever an
    /// earlier process left behind (never acknowledged, so never visible).
    pub fn open(dir: &Path) -> std::io::Result<(Spool, usize)> {
        std::fs::create_dir_all(dir)?;
        // Empty files are pre-created pool files; the others are transfers
        // that never finished.
        let mut swept = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() {
                std::fs::remove_file(entry.path())?;
                swept += usize::from(meta.len() > 0);
            }
        }
        let pool = Arc::new(Pool::new(dir));
        Ok((Spool { pool }, swept))
    }

    pub fn dir(&self) -> &Path {
        self.pool.dir()
    }

    /// What the upload backlog calls with an uploaded pending copy, to
    /// reuse it as a spool file ([`Pool::adopt`]).
    pub fn recycler(&self) -> crate::store::backlog::Recycler {
        let pool = Arc::clone(&self.pool);
        Box::new(move |path: &Path| pool.adopt(path))
    }

    /// A new writer. Its spool file is taken from the pool only when
    /// bytes must go to a file: at the first write behind, or at the
    /// finish unless the instance is handed over in memory
    /// ([`Finish::Inline`] without `file`).
    pub fn create(&self) -> SpoolWriter {
        SpoolWriter::new(Arc::clone(&self.pool))
    }
}

/// Removes the spool file it names when dropped, unless disarmed (or
/// there is none).
#[derive(Debug)]
pub struct SpoolGuard(Option<PathBuf>);

impl SpoolGuard {
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }
    /// The file has been moved into the store; nothing to clean up.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Already renamed into the store by a batch that then failed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove spool file")
                }
            }
        }
    }
}

/// An instance being spooled: in memory first, in a spool file once it
/// outgrows the first buffer (or at the finish, unless handed over in
/// memory).
///
/// Double-buffered: while one buffer is written to the file on a blocking
/// thread, the association fills the other, so receiving and writing overlap
/// and memory stays at two buffers whatever the instance size. Each buffer
/// written is handed to the kernel's writeback at once, so the disk works
/// while the network does and the final fsync has little left to do.
#[derive(Debug)]
pub struct SpoolWriter {
    pool: Arc<Pool>,
    buf: Vec<u8>,
    spare: Vec<u8>,
    /// The spool file when taken and not in flight (`guard` names it).
    file: Option<std::fs::File>,
    inflight: Option<InFlight>,
    guard: SpoolGuard,
    len: u64,
    /// Bytes handed to the file so far.
    written: u64,
}

/// A buffer being written: gives back the file and the emptied buffer.
type InFlight = tokio::task::JoinHandle<std::io::Result<(std::fs::File, Vec<u8>)>>;

impl SpoolWriter {
    fn new(pool: Arc<Pool>) -> SpoolWriter {
        SpoolWriter {
            pool,
            buf: Vec::with_capacity(FIRST_BUFFER),
            // Made at the first write behind.
            spare: Vec::new(),
            file: None,
            inflight: None,
            guard: SpoolGuard(None),
            len: 0,
            written: 0,
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        if self.buf.len() >= WRITE_BUFFER {
            self.write_behind().await?;
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waits for the write in flight, if any, and takes the file back
    /// (none before the first write behind).
    async fn settle(&mut self) -> std::io::Result<Option<std::fs::File>> {
        match self.inflight.take() {
            Some(handle) => {
                let (file, mut spare) = handle.await.map_err(std::io::Error::other)??;
                spare.clear();
                self.spare = spare;
                Ok(Some(file))
            }
            None => Ok(self.file.take()),
        }
    }

    /// Hands the full buffer to a blocking thread and carries on with the other.
    async fn write_behind(&mut self) -> std::io::Result<()> {
        let mut file = match self.settle().await? {
            Some(file) => file,
            None => {
                let (path, file) = self.pool.take().await?;
                self.guard = SpoolGuard(Some(path));
                file
            }
        };
        let next = match std::mem::take(&mut self.spare) {
            spare if spare.capacity() > 0 => spare,
            _ => Vec::with_capacity(WRITE_BUFFER),
        };
        let data = std::mem::replace(&mut self.buf, next);
        let offset = self.written;
        self.written += data.len() as u64;
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            use std::io::Write;
            file.write_all(&data)?;
            start_writeback(&file, offset, data.len() as u64);
            Ok((file, data))
        }));
        Ok(())
    }

    /// Writes what is left, makes it durable as `how` says, and hands the
    /// file (or, for a small instance finished [`Finish::Inline`], the
    /// bytes alone) to `then`, all in one blocking call (see
    /// [`off_the_runtime`]).
    pub async fn finish<T, F>(mut self, how: Finish, then: F) -> std::io::Result<T>
    where
        F: FnOnce(Spooled) -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.settle().await?;
        let rest = std::mem::take(&mut self.buf);
        let (len, written) = (self.len, self.written);
        let (guard, pool) = (self.guard, self.pool);
        off_the_runtime(move || {
            use std::io::Write;
            let (mut file, guard) = match (file, how) {
                // All of it is still in memory: no file at all.
                (None, Finish::Inline { max, file: false }) if len <= max => {
                    let bytes = Some(rest);
                    return Ok(then(Spooled {
                        guard,
                        len,
                        bytes,
                        synced: None,
                    }));
                }
                (Some(file), _) => (file, guard),
                (None, _) => {
                    let (path, file) = pool.take_blocking()?;
                    (file, SpoolGuard(Some(path)))
                }
            };
            file.write_all(&rest)?;
            // The bytes, when the journal record carries them (then not
            // synced), and whether the file was synced (then kept open for
            // [`drop_cached`]).
            let (bytes, synced) = match how {
                Finish::Buffered => (None, false),
                Finish::Durable => {
                    file.sync_data()?;
                    (None, true)
                }
                Finish::Inline { max, .. } if len <= max && written == 0 => (Some(rest), false),
                Finish::Inline { max, .. } if len <= max => {
                    // Its start was written behind (`max` is above the
                    // write-behind buffer): read it all back, from the
                    // page cache. `len` is at most `max`.
                    let mut bytes = Vec::with_capacity(len as usize);
                    use std::io::Read;
                    let path = guard.path().expect("a file was taken");
                    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
                    if bytes.len() as u64 != len {
                        return Err(std::io::Error::other(format!(
                            "spool file holds {} bytes, {len} were written",
                            bytes.len()
                        )));
                    }
                    (Some(bytes), false)
                }
                Finish::Inline { .. } => {
                    file.sync_data()?;
                    (None, true)
                }
            };
            Ok(then(Spooled {
                guard,
                len,
                bytes,
                synced: synced.then_some(file),
            }))
        })
        .await
    }
}

/// Runs blocking `work` for a task. On the multi-threaded runtime the
/// task's own thread does it (`block_in_place`: the runtime hands the
/// thread's other tasks to another one), so the answer that follows needs
/// no hop back; an acknowledgement no longer waits for a blocking-pool
/// thread to wake and then for the runtime's. Elsewhere (tests on the
/// current-thread runtime) on the blocking pool.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(work);
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}

/// How a finished spool file is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Not at all: a remote store's upload is what counts.
    Buffered,
    /// `fdatasync`: the spool file becomes the object itself.
    Durable,
    /// Up to `max` bytes, not synced but handed over in memory (the ingest
    /// journal's record carries them): unless `file`, without a spool file
    /// when it never left memory (whoever places the object writes it from
    /// them). A larger one is synced.
    Inline { max: u64, file: bool },
}

/// Tells the kernel that `file`'s cached pages will not be read again
/// soon (`posix_fadvise(DONTNEED)`, as PostgreSQL does with WAL segments
/// it is done with). Only synced, clean pages leave at once; the memory
/// they free is what the next instance's writes use. Purely advice:
/// nothing depends on it, and an error changes nothing.
pub fn drop_cached(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open file descriptor and plain integer arguments
    // (offset 0 and length 0: the whole file).
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Asks the kernel to start writing a range back to disk, without waiting.
/// Purely an optimisation: errors surface at the final fsync.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open file descriptor and plain integer arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// A complete instance waiting to be placed in the store: a spool file
/// (fsynced when it is to become the object itself, in a local store,
/// unless its bytes are carried along for the journal), or for a small
/// one finished [`Finish::Inline`] only its bytes.
#[derive(Debug)]
pub struct Spooled {
    pub guard: SpoolGuard,
    pub len: u64,
    /// The whole instance, when it was finished [`Finish::Inline`] and not
    /// synced: whoever makes it durable must write these bytes durably.
    pub bytes: Option<Vec<u8>>,
    /// The spool file, still open, when it was synced: once nothing reads
    /// it any more its pages can leave the page cache ([`drop_cached`]).
    pub synced: Option<std::fs::File>,
}

impl Spooled {
    /// The spool file; `None` only for an instance finished
    /// [`Finish::Inline`] that never left memory.
    pub fn file(&self) -> Option<&Path> {
        self.guard.path()
    }

    /// The spool file of an instance finished any other way than
    /// [`Finish::Inline`], which always has one.
    pub fn path(&self) -> &Path {
        self.file().expect("finished with a spool file")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_spool_files_disappear_and_leftovers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, swept) = Spool::open(dir.path()).unwrap();
        assert_eq!(swept, 0);
        let mut w = spool.create();
        w.write(b"abc").await.unwrap();
        let done = w.finish(Finish::Durable, |s| s).await.unwrap();
        assert_eq!(std::fs::read(done.path()).unwrap(), b"abc");
        let path = done.path().to_owned();
        drop(done);
        assert!(!path.exists());

        let mut w = spool.create();
        w.write(b"partial").await.unwrap();
        w.write_behind().await.unwrap();
        w.settle().await.unwrap();
        std::mem::forget(w); // as if the process died mid-write
        std::mem::forget(spool); // with its pool of empty files
        let (_, swept) = Spool::open(dir.path()).unwrap();
        assert_eq!(swept, 1);
        // (The forgotten pool may still be creating empty files.)
        assert_eq!(files_with_data(dir.path()), 0);
    }

    /// Spool files in `dir` holding data (not the pool's empty ones).
    fn files_with_data(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().metadata().unwrap().len() > 0)
            .count()
    }

    /// `bytes` spooled and finished `how`.
    async fn spooled(spool: &Spool, bytes: &[u8], how: Finish) -> Spooled {
        let mut w = spool.create();
        w.write(bytes).await.unwrap();
        w.finish(how, |s| s).await.unwrap()
    }

    #[tokio::test]
    async fn a_small_inline_instance_has_no_spool_file_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let memory = Finish::Inline {
            max: 64,
            file: false,
        };
        let done = spooled(&spool, b"small", memory).await;
        assert_eq!(done.file(), None);
        assert_eq!(done.bytes.as_deref(), Some(&b"small"[..]));
        assert_eq!(files_with_data(dir.path()), 0);

        let with_file = Finish::Inline {
            max: 64,
            file: true,
        };
        let done = spooled(&spool, b"small", with_file).await;
        assert_eq!(std::fs::read(done.path()).unwrap(), b"small");
        assert_eq!(done.bytes.as_deref(), Some(&b"small"[..]));

        // Past the bound: a synced file, its bytes not carried.
        let done = spooled(&spool, &[7u8; 100], memory).await;
        assert_eq!(std::fs::read(done.path()).unwrap(), [7u8; 100]);
        assert!(done.bytes.is_none());
    }
}
