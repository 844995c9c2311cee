//! Spool files: where an instance is written while it arrives.
//!
//! The spool lives in the data directory, on the same filesystem as the local
//! object store, so a finished instance is renamed into place rather than
//! copied. A spool file that is dropped before it was placed removes itself;
//! leftovers from a crash are swept when the spool is opened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncWriteExt, BufWriter};

/// Bytes buffered per spool file before they are handed to the filesystem.
const WRITE_BUFFER: usize = 256 * 1024;

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    next: AtomicU64,
}

impl Spool {
    /// Opens the spool directory, creating it, and removes whatever an
    /// earlier process left behind (never acknowledged, so never visible).
    pub fn open(dir: &Path) -> std::io::Result<(Spool, usize)> {
        std::fs::create_dir_all(dir)?;
        let mut swept = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                swept += 1;
            }
        }
        let spool = Spool {
            dir: dir.to_owned(),
            next: AtomicU64::new(0),
        };
        Ok((spool, swept))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty spool file.
    pub async fn create(&self) -> std::io::Result<SpoolWriter> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}.part", std::process::id()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(SpoolWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            guard: SpoolGuard(Some(path)),
            len: 0,
        })
    }
}

/// Removes the spool file it names when dropped, unless disarmed.
#[derive(Debug)]
pub struct SpoolGuard(Option<PathBuf>);

impl SpoolGuard {
    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("armed guard")
    }
    /// The file has been moved into the store; nothing to clean up.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for SpoolGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove spool file");
            }
        }
    }
}

/// A spool file being written.
#[derive(Debug)]
pub struct SpoolWriter {
    file: BufWriter<tokio::fs::File>,
    guard: SpoolGuard,
    len: u64,
}

impl SpoolWriter {
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes).await?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes and fsyncs the file: after this its bytes are durable.
    pub async fn finish(mut self) -> std::io::Result<Spooled> {
        self.file.flush().await?;
        let file = self.file.into_inner().into_std().await;
        let file = tokio::task::spawn_blocking(move || file.sync_data().map(|()| file))
            .await
            .map_err(std::io::Error::other)??;
        drop(file);
        Ok(Spooled {
            guard: self.guard,
            len: self.len,
        })
    }
}

/// A complete, durable spool file waiting to be placed in the store.
#[derive(Debug)]
pub struct Spooled {
    pub guard: SpoolGuard,
    pub len: u64,
}

impl Spooled {
    pub fn path(&self) -> &Path {
        self.guard.path()
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
        let mut w = spool.create().await.unwrap();
        w.write(b"abc").await.unwrap();
        let done = w.finish().await.unwrap();
        assert_eq!(std::fs::read(done.path()).unwrap(), b"abc");
        let path = done.path().to_owned();
        drop(done);
        assert!(!path.exists());

        let w = spool.create().await.unwrap();
        std::mem::forget(w); // as if the process died mid-write
        let (_, swept) = Spool::open(dir.path()).unwrap();
        assert_eq!(swept, 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
