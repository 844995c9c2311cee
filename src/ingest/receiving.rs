//! An instance being received: its spool file, its size limit, and the
//! free-space reserve it is checked against while it arrives.

use std::path::Path;
use std::sync::Arc;

use super::spool::{self, SpoolWriter};
use super::{Error, Result};

/// Bytes received between two checks of the free space: concurrent
/// multi-gigabyte instances are stopped while they arrive, before they can
/// fill the filesystem the index lives on.
const FREE_SPACE_CHECK_EVERY: u64 = 1 << 20;

/// What one transfer may write between two checks besides the check
/// interval: the spool writer's two buffers (the chunk that crosses the
/// interval, up to a PDU, is added from the configuration). The free space
/// must cover this for every transfer under way, on top of
/// `min_free_space`, so that all of them together cannot eat into the
/// reserve.
pub(super) const HEADROOM_BUFFERS: u64 = FREE_SPACE_CHECK_EVERY + 2 * spool::WRITE_BUFFER as u64;

/// An instance being received.
#[derive(Debug)]
pub struct Receiving {
    pub(super) writer: SpoolWriter,
    limit: u64,
    pub(super) source: String,
    reserve: Reserve,
    /// Length at which the free space is checked next.
    check_at: u64,
    /// Counts this transfer as under way while it lives.
    _under_way: UnderWay,
}

/// The free space ingest keeps on the spool's filesystem.
#[derive(Debug, Clone)]
pub(super) struct Reserve {
    pub(super) dir: Arc<Path>,
    pub(super) min: u64,
    /// What one transfer may write between two checks.
    pub(super) headroom: u64,
    /// Transfers under way.
    pub(super) transfers: Arc<std::sync::atomic::AtomicU64>,
}

/// One transfer under way, counted by its [`Reserve`] until dropped.
#[derive(Debug)]
struct UnderWay(Arc<std::sync::atomic::AtomicU64>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Reserve {
    pub(super) fn check(&self) -> Result<()> {
        if self.min == 0 {
            // No reserve to protect: the filesystem's own ENOSPC refuses.
            return Ok(());
        }
        let transfers = self.transfers.load(std::sync::atomic::Ordering::Relaxed);
        let needed = self
            .min
            .saturating_add(transfers.saturating_mul(self.headroom));
        match free_space(&self.dir) {
            Ok(free) if free < needed => Err(Error::DiskFull {
                min: self.min,
                transfers,
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Spool(e)),
        }
    }

    fn start(&self) -> UnderWay {
        self.transfers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        UnderWay(Arc::clone(&self.transfers))
    }
}

impl Receiving {
    pub(super) fn new(
        writer: SpoolWriter,
        limit: u64,
        source: String,
        reserve: Reserve,
    ) -> Receiving {
        Receiving {
            check_at: writer.len() + FREE_SPACE_CHECK_EVERY,
            writer,
            limit,
            source,
            _under_way: reserve.start(),
            reserve,
        }
    }

    /// Appends data set bytes as they arrive.
    pub async fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let len = self.writer.len().saturating_add(bytes.len() as u64);
        if len > self.limit {
            return Err(Error::TooLarge { limit: self.limit });
        }
        if len >= self.check_at {
            self.reserve.check()?;
            self.check_at = len.saturating_add(FREE_SPACE_CHECK_EVERY);
        }
        self.writer.write(bytes).await.map_err(Error::Spool)
    }
}

/// Bytes available to us on the filesystem holding `dir`.
pub(crate) fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains NUL"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stat a writable
    // statvfs; the struct is initialised when the call returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}
