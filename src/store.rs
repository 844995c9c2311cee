//! The object store: where instance blobs live, under self-describing keys.
//!
//! Local backend: `object_store`'s `LocalFileSystem` rooted at
//! `<data-dir>/objects`, used for reads, listing and deletes. Newly received
//! instances do not go through `put` (that would write every byte a second
//! time): they are spooled on the same filesystem and renamed into place by
//! [`BlobStore::place_batch`], which fsyncs the directories it touched so the
//! renames are durable before anything is acknowledged.

pub mod keys;
pub mod signer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt};

pub use keys::ObjectKey;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
}

impl Error {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    }
}

/// The gateway's blob store.
#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("root", &self.root)
            .finish()
    }
}

impl BlobStore {
    /// Opens (creating if needed) the local store rooted at `root`.
    pub fn open_local(root: &Path) -> Result<BlobStore> {
        std::fs::create_dir_all(root).map_err(Error::io("create", root))?;
        let root = root.canonicalize().map_err(Error::io("resolve", root))?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        Ok(BlobStore {
            root,
            store: Arc::new(store),
        })
    }

    /// The underlying `object_store` (reads, listing, deletes).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The filesystem path of a key in the local store.
    pub fn local_path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// Moves already-fsynced spool files to their keys (replacing what is
    /// there), then fsyncs every directory touched, once each: one directory
    /// sync covers every file of a batch that landed in the same series.
    ///
    /// Returns one result per item; a failed item leaves its spool file where
    /// it was, for the caller to remove.
    pub fn place_batch(&self, items: &[(&Path, &ObjectKey)]) -> Vec<Result<()>> {
        let mut dirty = BTreeSet::new();
        let results: Vec<Result<()>> = items
            .iter()
            .map(|(spool, key)| {
                let dest = self.local_path(key);
                let parent = dest.parent().expect("keys have a parent");
                self.create_dirs(parent, &mut dirty)?;
                std::fs::rename(spool, &dest).map_err(Error::io("rename into", &dest))?;
                dirty.insert(parent.to_owned());
                Ok(())
            })
            .collect();
        // A rename is durable only once its directory is: if one cannot be
        // synced, nothing in this batch may be acknowledged.
        if let Some((dir, e)) = dirty.iter().find_map(|d| sync_dir(d).err().map(|e| (d, e))) {
            let failed = || Error::Io {
                op: "fsync directory",
                path: dir.clone(),
                source: std::io::Error::new(e.kind(), e.to_string()),
            };
            return results
                .into_iter()
                .map(|r| r.and_then(|()| Err(failed())))
                .collect();
        }
        results
    }

    /// `create_dir_all`, remembering the parent of every directory it made so
    /// the new entries get fsynced too.
    fn create_dirs(&self, dir: &Path, dirty: &mut BTreeSet<PathBuf>) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        let parent = dir.parent().expect("below the root");
        if parent.starts_with(&self.root) && parent != dir {
            self.create_dirs(parent, dirty)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {
                dirty.insert(parent.to_owned());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(Error::Io {
                op: "create directory",
                path: dir.to_owned(),
                source: e,
            }),
        }
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self.store.delete(&key.to_path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// fsync a directory, making the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
