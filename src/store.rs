//! The object store: where instance blobs live, under self-describing keys.
//!
//! Two backends behind one type:
//! - **Local** (`file://`, the default `<data-dir>/objects`): `object_store`'s
//!   `LocalFileSystem`, used for reads, listing and deletes. Newly received
//!   instances do not go through `put` (that would write every byte a second
//!   time): they are spooled on the same filesystem and renamed into place by
//!   [`BlobStore::place_batch`], which fsyncs the directories it touched so
//!   the renames are durable before anything is acknowledged. The gateway
//!   serves the bytes itself, behind its own signed URLs.
//! - **S3** (`s3://bucket/prefix`): every spooled object is uploaded by
//!   [`BlobStore::upload`] (in parts above `storage.part_size`, a bounded
//!   number at once) before it is indexed; viewers download straight from the
//!   store with presigned URLs signed for the public endpoint.

pub mod backlog;
pub mod keys;
pub mod signer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::signer::{Method, SignedUrlOptions, Signer};
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use crate::config::{Config, StorageLocation};
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
    /// The store's own error, as text with the credentials taken out (an
    /// S3 error body can echo the signed request, session token included).
    #[error("object store: {0}")]
    ObjectStore(String),
    #[error("upload task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("storage configuration: {0}")]
    Config(#[from] crate::config::Error),
    #[error("{store} {what}: {detail}")]
    Probe {
        store: String,
        what: &'static str,
        detail: String,
    },
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Error {
        Error::ObjectStore(redacted(&e))
    }
}

/// Credentials that must not reach a log through an error text.
/// Every S3 store opened in this process adds its own (a second store with
/// other credentials, as tests and maintenance commands open, is redacted
/// too).
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// An object store error as text, with the S3 secret and session token
/// replaced: use this wherever such an error is shown.
pub fn redacted(e: &object_store::Error) -> String {
    // The whole chain (the cause, e.g. "Connection refused", is often only
    // in a source), each part once.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = cause.source();
    }
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for secret in secrets.iter() {
        text = text.replace(secret.as_str(), "<redacted>");
    }
    text
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
    store: Arc<dyn ObjectStore>,
    backend: Arc<Backend>,
    /// The upload backlog of this store, once one is attached (S3 with
    /// `storage.ack = "journal"`); weak, since the backlog holds the store.
    backlog: Arc<std::sync::OnceLock<std::sync::Weak<backlog::Backlog>>>,
}

enum Backend {
    Local {
        root: PathBuf,
    },
    S3 {
        /// Signs with the public endpoint; never sends a request.
        signer: PrefixStore<AmazonS3>,
        part_size: usize,
        uploads: Arc<Semaphore>,
        describe: String,
    },
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What a presigned download URL says about the download.
#[derive(Debug, Clone)]
pub struct Presign<'a> {
    pub content_type: &'a str,
    pub disposition: &'a str,
    /// When the URL stops working (at most 7 days from now).
    pub expires_at: std::time::SystemTime,
    /// A URL for `HEAD` rather than `GET` (SigV4 binds the method).
    pub head: bool,
}

/// The name of the probe object written at start-up (S3).
const PROBE_PREFIX: &str = ".dicom-gateway-probe";

impl BlobStore {
    /// Opens the configured store. For S3, checks that the bucket is
    /// reachable and writable, and warns when conditional create is not
    /// honoured.
    pub async fn open(cfg: &Config) -> Result<BlobStore> {
        match cfg.storage_location()? {
            StorageLocation::Local(root) => BlobStore::open_local(&root),
            StorageLocation::S3 { bucket, prefix } => {
                let store = BlobStore::open_s3(cfg, &bucket, &prefix)?;
                store.probe().await?;
                Ok(store)
            }
        }
    }

    /// Opens (creating if needed) the local store rooted at `root`.
    pub fn open_local(root: &Path) -> Result<BlobStore> {
        std::fs::create_dir_all(root).map_err(Error::io("create", root))?;
        let root = root.canonicalize().map_err(Error::io("resolve", root))?;
        let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
        Ok(BlobStore {
            store: crate::metrics::store::Metered::wrap(Arc::new(store)),
            backend: Arc::new(Backend::Local { root }),
            backlog: Arc::default(),
        })
    }

    /// Builds the S3 clients (no request is made).
    pub fn open_s3(cfg: &Config, bucket: &str, prefix: &str) -> Result<BlobStore> {
        let st = &cfg.storage;
        let timeout = Duration::from_secs(st.timeout);
        let build = |endpoint: Option<&String>| {
            // Client options first: they carry allow_http.
            let mut b = AmazonS3Builder::new()
                .with_client_options(
                    ClientOptions::new()
                        .with_timeout(timeout)
                        .with_connect_timeout(Duration::from_secs(5).min(timeout)),
                )
                .with_bucket_name(bucket)
                .with_region(&st.region)
                .with_allow_http(st.allow_http)
                .with_virtual_hosted_style_request(st.virtual_hosted)
                // Integrity of what is stored: the store checks a CRC-64 of
                // each body (cheap), instead of a SigV4 signature over its
                // SHA-256 (two SHA-256 passes over every byte, ours and the
                // server's, for the same protection against corruption).
                .with_unsigned_payload(true)
                .with_checksum_algorithm(Checksum::CRC64NVME)
                .with_retry(RetryConfig {
                    backoff: BackoffConfig::default(),
                    max_retries: 4,
                    retry_timeout: timeout,
                });
            if let Some(endpoint) = endpoint {
                b = b.with_endpoint(endpoint);
            }
            let c = &st.credentials;
            if let (Some(id), Some(secret)) = (&c.access_key_id, &c.secret_access_key) {
                b = b
                    .with_access_key_id(id)
                    .with_secret_access_key(secret.expose());
            }
            if let Some(token) = &c.session_token {
                b = b.with_token(token.expose());
            }
            b.build()
        };
        let c = &st.credentials;
        let secrets = [&c.secret_access_key, &c.session_token]
            .into_iter()
            .flatten()
            .map(|s| s.expose().to_owned())
            .filter(|s| !s.is_empty());
        let mut known = SECRETS.write().unwrap_or_else(|e| e.into_inner());
        for secret in secrets {
            if !known.contains(&secret) {
                known.push(secret);
            }
        }
        drop(known);
        let store = PrefixStore::new(build(st.endpoint.as_ref())?, prefix);
        let public = st.public_endpoint.as_ref().or(st.endpoint.as_ref());
        let signer = PrefixStore::new(build(public)?, prefix);
        let endpoint = st.endpoint.as_deref().unwrap_or("AWS");
        Ok(BlobStore {
            store: crate::metrics::store::Metered::wrap(Arc::new(store)),
            backend: Arc::new(Backend::S3 {
                signer,
                part_size: st.part_size as usize,
                uploads: Arc::new(Semaphore::new(st.max_uploads)),
                describe: format!("s3://{bucket}/{prefix} (endpoint {endpoint})"),
            }),
            backlog: Arc::default(),
        })
    }

    /// Writes, re-creates and removes a probe object.
    async fn probe(&self) -> Result<()> {
        let endpoint = self.describe();
        let failed = |what| {
            let store = endpoint.clone();
            move |e: object_store::Error| Error::Probe {
                store,
                what,
                detail: redacted(&e),
            }
        };
        let path = object_store::path::Path::from_iter([
            PROBE_PREFIX,
            &format!("{}-{}", std::process::id(), unique()),
        ]);
        // A plain write first: that is all ingest needs.
        self.store
            .put(&path, PutPayload::from_static(b"probe"))
            .await
            .map_err(failed("is not writable"))?;
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_static(b"probe"), create)
            .await
        {
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Ok(_) => tracing::warn!(
                store = %endpoint,
                "the store does not honour conditional create (If-None-Match); \
                 the gateway does not rely on it, but two gateways writing the same \
                 key are then resolved by last writer"
            ),
            Err(e) => {
                tracing::warn!(store = %endpoint, error = %e, "conditional create probe failed")
            }
        }
        self.store
            .delete(&path)
            .await
            .map_err(failed("refused a delete"))?;
        tracing::info!(store = %endpoint, "object store reachable and writable");
        Ok(())
    }

    /// Where the objects are, for logs.
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Local { root } => format!("file://{}", root.display()),
            Backend::S3 { describe, .. } => describe.clone(),
        }
    }

    /// The underlying `object_store`, rooted at the store's root: an
    /// [`ObjectKey`]'s path names its object (reads, listing, deletes).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Whether objects are files under a local root (placed by rename).
    pub fn is_local(&self) -> bool {
        matches!(&*self.backend, Backend::Local { .. })
    }

    /// The root directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Local { root } => Some(root),
            Backend::S3 { .. } => None,
        }
    }

    /// The filesystem path of a key, for the local store.
    pub fn local_path(&self, key: &ObjectKey) -> Option<PathBuf> {
        self.local_root().map(|root| root.join(key.as_str()))
    }

    /// Uploads a complete spool file to `key` (S3; the local store places
    /// spool files by rename instead, so this does nothing there). Returns
    /// once the store confirmed the write. Memory: one part buffer per
    /// part in flight (at most three per upload).
    pub async fn upload(&self, spool: &Path, len: u64, key: &ObjectKey) -> Result<()> {
        let Backend::S3 {
            uploads, part_size, ..
        } = &*self.backend
        else {
            return Ok(());
        };
        let part_size = *part_size;
        let slot = Arc::clone(uploads)
            .acquire_owned()
            .await
            .expect("never closed");
        // A task of its own, holding the upload slot, so an association
        // dropped mid-upload (a peer abort) still completes or aborts the
        // multipart upload instead of leaving its parts behind, and counts
        // against `max_uploads` until it has. (A runtime shutting down
        // cancels it: the bucket's lifecycle rule is the last resort.)
        let (store, spool, key) = (self.clone(), spool.to_owned(), key.clone());
        tokio::spawn(async move {
            let _slot = slot;
            store.upload_now(&spool, len, &key, part_size).await
        })
        .await?
    }

    async fn upload_now(
        &self,
        spool: &Path,
        len: u64,
        key: &ObjectKey,
        part_size: usize,
    ) -> Result<()> {
        let location = key.to_path();
        let mut file = tokio::fs::File::open(spool)
            .await
            .map_err(Error::io("open spool", spool))?;
        if len <= part_size as u64 {
            let mut bytes = Vec::with_capacity(len as usize);
            file.read_to_end(&mut bytes)
                .await
                .map_err(Error::io("read spool", spool))?;
            self.store.put(&location, bytes.into()).await?;
            return Ok(());
        }
        let mut upload = self.store.put_multipart(&location).await?;
        let sent = match send_parts(&mut *upload, &mut file, part_size, spool).await {
            Ok(()) => upload.complete().await.map(drop).map_err(Error::from),
            Err(e) => Err(e),
        };
        if sent.is_err() {
            abort_upload(upload, key.clone());
        }
        sent
    }

    /// Writes a small object (a media sidecar) durably.
    pub async fn put_small(&self, key: &ObjectKey, bytes: Vec<u8>) -> Result<()> {
        self.store.put(&key.to_path(), bytes.into()).await?;
        Ok(())
    }

    /// A presigned URL straight from the store (S3) for a download that
    /// answers with `p.content_type` and `p.disposition`; `None` for the
    /// local store, whose objects the gateway serves itself.
    pub async fn download_url(&self, key: &ObjectKey, p: &Presign<'_>) -> Result<Option<String>> {
        let Backend::S3 { signer, .. } = &*self.backend else {
            return Ok(None);
        };
        let options = SignedUrlOptions::new().with_query([
            ("response-content-type", p.content_type),
            ("response-content-disposition", p.disposition),
        ]);
        // The store signs at the current time: ask for what is left until
        // the expiry, so an answer computed again later expires when the
        // first one did.
        let left = p
            .expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        // In whole seconds, rounded up: signing times are whole seconds.
        let left = Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0))
            .clamp(Duration::from_secs(1), signer::MAX_TTL);
        let method = if p.head { Method::HEAD } else { Method::GET };
        crate::metrics::get().signed_url(if p.head { "HEAD" } else { "GET" }, "store");
        let url = signer
            .signed_url_opts(method, &key.to_path(), left, &options)
            .await?;
        Ok(Some(url.into()))
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
                let dest = self
                    .local_path(key)
                    .expect("place_batch is for the local store");
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
        let Backend::Local { root } = &*self.backend else {
            unreachable!("directories exist only in the local store")
        };
        let parent = dir.parent().expect("below the root");
        if parent.starts_with(root) && parent != dir {
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

    /// Makes [`BlobStore::exists`] (on this store and its clones) count the
    /// backlog's pending copies: an instance acknowledged and not yet
    /// uploaded exists, so nothing treats its object as gone (a shared-store
    /// relisting would otherwise move its entry back to an older object).
    pub fn attach_backlog(&self, backlog: &Arc<backlog::Backlog>) {
        let _ = self.backlog.set(Arc::downgrade(backlog));
    }

    /// Whether an object is there (in the store, or waiting for its upload).
    pub async fn exists(&self, key: &ObjectKey) -> Result<bool> {
        let pending = self.backlog.get().and_then(std::sync::Weak::upgrade);
        if pending.is_some_and(|b| b.pending(key).is_some()) {
            return Ok(true);
        }
        match self.store.head(&key.to_path()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object; a missing object is not an error. A pending copy
    /// of it in the upload backlog goes too (after its upload, if one is
    /// under way, so that the upload cannot put the object back).
    pub async fn delete(&self, key: &ObjectKey) -> Result<()> {
        if let Some(backlog) = self.backlog.get().and_then(std::sync::Weak::upgrade) {
            if backlog.forget(key) {
                // At most one upload of one object: a minute is plenty; past
                // it the delete goes ahead (the upload may then leave the
                // object behind, as a store failure would).
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
                while backlog.pending(key).is_some() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        match self.store.delete(&key.to_path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Parts in flight per upload (memory: one more is being filled).
const PARTS_IN_FLIGHT: usize = 2;

/// Reads `file` in parts of `part_size` and uploads them, at most
/// [`PARTS_IN_FLIGHT`] at once.
async fn send_parts(
    upload: &mut dyn MultipartUpload,
    file: &mut tokio::fs::File,
    part_size: usize,
    spool: &Path,
) -> Result<()> {
    let mut in_flight = FuturesUnordered::new();
    loop {
        let mut part = Vec::with_capacity(part_size);
        (&mut *file)
            .take(part_size as u64)
            .read_to_end(&mut part)
            .await
            .map_err(Error::io("read spool", spool))?;
        if part.is_empty() {
            break;
        }
        while in_flight.len() >= PARTS_IN_FLIGHT {
            in_flight.next().await.transpose()?;
        }
        in_flight.push(upload.put_part(part.into()));
    }
    while let Some(done) = in_flight.next().await {
        done?;
    }
    Ok(())
}

/// How often, and how far apart at most, an abort is retried.
const ABORT_ATTEMPTS: u32 = 12;
const ABORT_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Aborts a failed multipart upload so its parts do not stay in the store,
/// in the background, retried with back-off (about ten minutes in all): the
/// failure that ended the upload is often the store being away.
fn abort_upload(mut upload: Box<dyn MultipartUpload>, key: ObjectKey) {
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        for attempt in 1..=ABORT_ATTEMPTS {
            match upload.abort().await {
                Ok(()) => {
                    tracing::info!(key = %key, attempt, "aborted a failed multipart upload");
                    return;
                }
                Err(e) if attempt == ABORT_ATTEMPTS => {
                    tracing::warn!(
                        key = %key,
                        error = %redacted(&e),
                        "could not abort a failed multipart upload; its parts stay until \
                         the bucket's lifecycle rule removes them"
                    );
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(ABORT_BACKOFF_MAX);
                }
            }
        }
    });
}

/// A number unlikely to repeat, for probe names.
fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// fsync a directory, making the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overrides, SecretEnv};

    #[test]
    fn store_errors_never_show_the_s3_secret_or_session_token() {
        let env = SecretEnv {
            aws_access_key_id: Some("AKIDSHOWN".into()),
            aws_secret_access_key: Some("s3cr3t-key-value".into()),
            aws_session_token: Some("session-token-value".into()),
            ..SecretEnv::default()
        };
        let over = Overrides {
            storage_url: Some("s3://dicom/site".into()),
            storage_endpoint: Some("http://127.0.0.1:9".into()),
            storage_allow_http: Some(true),
            ..Overrides::default()
        };
        let cfg = Config::load(&over, &env).unwrap();
        let store = BlobStore::open_s3(&cfg, "dicom", "site").unwrap();
        assert!(!format!("{store:?}").contains("s3cr3t"));
        // What an S3 SignatureDoesNotMatch body echoes back.
        let echoed = object_store::Error::Generic {
            store: "S3",
            source: "<CanonicalRequest>x-amz-security-token:session-token-value\nkey s3cr3t-key-value</CanonicalRequest>".into(),
        };
        let shown = Error::from(echoed).to_string();
        assert!(!shown.contains("session-token-value"), "{shown}");
        assert!(!shown.contains("s3cr3t-key-value"), "{shown}");
        assert!(shown.contains("x-amz-security-token:<redacted>"), "{shown}");
    }
}
