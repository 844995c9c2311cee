//! `[storage]`: where objects live, and the S3 settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Config, Error, Result, Secret};

/// The object store. `url` is `file:///path` (default
/// `<data_dir>/objects`) or `s3://bucket/optional/prefix`; the other settings
/// apply to S3 only. Credentials come from `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, never from the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub url: Option<String>,
    /// S3 endpoint the gateway uses, e.g. `http://minio.local:9000`
    /// (default: AWS for `region`).
    pub endpoint: Option<String>,
    /// Endpoint the viewer reaches the store by, used to sign download URLs
    /// (a signature covers the host). Default: `endpoint`.
    pub public_endpoint: Option<String>,
    pub region: String,
    /// Virtual-hosted addressing instead of path style: requests go to the
    /// endpoint as given, which must then name the bucket
    /// (`https://bucket.s3.example.com`), and so must `public_endpoint`.
    pub virtual_hosted: bool,
    /// Allow plain-HTTP endpoints (on-site MinIO and the like).
    pub allow_http: bool,
    /// Instances larger than this go up in parts of this size (bytes, at
    /// least 5 MiB, S3's smallest part).
    pub part_size: u64,
    /// Uploads to the store at once, over all associations.
    pub max_uploads: usize,
    /// Seconds one store request may take, retries included, before the
    /// instance is refused (0xA700) rather than acknowledged.
    pub timeout: u64,
    /// Seconds after which a study this gateway knows is listed again in a
    /// shared store, to pick up what other gateways stored for it.
    pub relist_after: u64,
    /// When a C-STORE (or an upload) is answered with an S3 store:
    /// `journal` once the instance is durable on the gateway's disk (it is
    /// uploaded right after, from `<data_dir>/pending/`), or `stored` once
    /// the store confirmed the upload. Ignored for a local store.
    pub ack: AckMode,
    /// Bytes acknowledged but not yet uploaded above which a new instance
    /// waits for uploads before it is taken (`ack = "journal"`, S3 only).
    pub backlog_wait: u64,
    /// Bytes acknowledged but not yet uploaded beyond which a new instance
    /// is refused (0xA700) (`ack = "journal"`, S3 only).
    pub backlog_max: u64,
    /// With the journal: whether an instance synced in its spool file
    /// (above `journal.inline_max_kib`) keeps its pages in the page cache
    /// once it is acknowledged, as a local object or as an S3 pending copy.
    /// By default they are dropped: an ingest does not push the rest of the
    /// machine's cache out, and the next instances write into the memory
    /// they free (an upload reads the pending copy back from the disk).
    pub cache_objects: bool,
    #[serde(skip)]
    pub credentials: S3Credentials,
}

/// When an instance sent to an S3-backed gateway is acknowledged.
///
/// `journal` is the default: the instance is then as durable as on a local
/// store (synced on the gateway's disk before the answer, like dcm4chee's
/// receive cache in front of its archive), and the store's latency no
/// longer sets the ingest rate. What it gives up is the store's replication
/// during the upload backlog window (bounded by `backlog_max`, visible in
/// `/healthz` and the metrics); sites that need the store's confirmation
/// before a modality may delete its copy choose `stored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum AckMode {
    /// Answered once durable on the gateway's disk; uploaded in the background.
    #[default]
    Journal,
    /// Answered once the store confirmed the upload.
    Stored,
}

/// From the standard AWS variables; never serialised or logged.
#[derive(Clone, Default)]
pub struct S3Credentials {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: None,
            endpoint: None,
            public_endpoint: None,
            region: "us-east-1".into(),
            virtual_hosted: false,
            allow_http: false,
            part_size: 8 << 20,
            max_uploads: 8,
            timeout: 30,
            relist_after: 30,
            ack: AckMode::default(),
            backlog_wait: 2 << 30,
            backlog_max: 8 << 30,
            cache_objects: false,
            credentials: S3Credentials::default(),
        }
    }
}

/// Where the store is, parsed from `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Config {
    /// Where the objects are.
    pub fn storage_location(&self) -> Result<StorageLocation> {
        let invalid = |reason: String| Error::Invalid {
            name: "storage.url",
            reason,
        };
        let Some(url) = &self.storage.url else {
            return Ok(StorageLocation::Local(self.objects_dir()));
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "{url:?}: a file URL needs an absolute path"
                )));
            }
            return Ok(StorageLocation::Local(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !valid_bucket {
                return Err(invalid(format!("{bucket:?} is not an S3 bucket name")));
            }
            return Ok(StorageLocation::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        Err(invalid(format!(
            "{url:?}: expected file:///path or s3://bucket/prefix"
        )))
    }
}

impl StorageConfig {
    /// `backlog_wait` and `backlog_max` make sense together: both above zero,
    /// the wait bound at most the refusal bound. The setting at fault and why.
    pub(super) fn check_backlog(&self) -> std::result::Result<(), (&'static str, String)> {
        for (name, value) in [
            ("storage.backlog_wait", self.backlog_wait),
            ("storage.backlog_max", self.backlog_max),
        ] {
            if value == 0 {
                return Err((name, "must be at least 1 byte".into()));
            }
        }
        if self.backlog_wait > self.backlog_max {
            return Err((
                "storage.backlog_wait",
                format!(
                    "{} bytes is more than storage.backlog_max ({} bytes): \
                     instances would be refused before they are slowed",
                    self.backlog_wait, self.backlog_max
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The upload backlog's bounds `(wait, max)` when instances are
    /// acknowledged before their upload (an S3 store with `storage.ack =
    /// "journal"`); `None` otherwise (a local store, or `"stored"`).
    pub fn upload_backlog(&self) -> Option<(u64, u64)> {
        let s3 = matches!(self.storage_location(), Ok(StorageLocation::S3 { .. }));
        // Without the journal nothing could acknowledge from local disk.
        (s3 && self.storage.ack == AckMode::Journal && self.journal.enabled)
            .then_some((self.storage.backlog_wait, self.storage.backlog_max))
    }

    /// Where acknowledged instances wait for their upload (same filesystem
    /// as the spool, so they arrive by rename or hard link).
    pub fn pending_dir(&self) -> PathBuf {
        self.data_dir.join("pending")
    }
}
