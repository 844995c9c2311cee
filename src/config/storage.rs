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
    #[serde(skip)]
    pub credentials: S3Credentials,
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
