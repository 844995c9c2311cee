//! Configuration: defaults, then a TOML file, then `DICOM_GATEWAY_*` environment
//! variables, then command-line flags (each later source wins).
//!
//! Every setting has the same name in all three places: the TOML key
//! `max_pdu_length`, the flag `--max-pdu-length`, the variable
//! `DICOM_GATEWAY_MAX_PDU_LENGTH`. Secrets (the operator API token) come only
//! from the environment or a file, never from a flag, and never reach a log.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::webhook::WebhookKeys;

pub(crate) mod forward;
mod journal;
pub(crate) mod nodes;
mod overrides;
mod secrets;
mod storage;
mod tls;
mod validate;

pub use forward::{ForwardRule, ForwardSettings};
pub use journal::JournalConfig;
pub use nodes::DicomNode;
pub use overrides::Overrides;
pub use secrets::{MIN_API_TOKEN_LEN, Secret, SecretEnv};
use secrets::{check_token, secret};
pub use storage::{AckMode, S3Credentials, StorageConfig, StorageLocation};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// The smallest and largest maximum PDU length we advertise. Below 64 KiB the
/// per-PDU overhead costs throughput; above 1 MiB a single peer could make us
/// hold large buffers (dicom-ul keeps a whole PDU in memory).
pub const MIN_PDU_LENGTH: u32 = 64 * 1024;
pub const MAX_PDU_LENGTH: u32 = 1024 * 1024;

/// The effective configuration of a gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of everything the gateway keeps: `objects/` (the object store),
    /// `index/` (sled) and `spool/` (instances being received).
    pub data_dir: PathBuf,
    /// Address of the DICOM (DIMSE) listener.
    pub dicom_listen: SocketAddr,
    /// Address of the HTTP listener (operator API, health).
    pub http_listen: SocketAddr,
    /// Our AE title: associations must call it.
    pub ae_title: String,
    /// Base URL the outside world uses to reach the HTTP listener.
    pub public_url: String,
    /// Concurrent associations; one more is rejected (transient, local limit).
    pub max_associations: usize,
    /// Maximum PDU length we advertise and enforce (bytes, 64 KiB–1 MiB).
    pub max_pdu_length: u32,
    /// Seconds a peer may stay silent before its association is aborted.
    pub read_timeout: u64,
    /// Seconds a write to a peer may take before its association is aborted.
    pub write_timeout: u64,
    /// Largest instance accepted, in bytes; larger ones are refused with 0xA700.
    pub max_instance_size: u64,
    /// Free space (bytes) the data directory must keep; below it new instances
    /// are refused with 0xA700 rather than filling the disk.
    pub min_free_space: u64,
    /// Calling AE titles allowed to associate. Empty: any.
    pub allowed_calling_aets: Vec<String>,
    /// Peer IP addresses allowed to connect. Empty: any.
    pub allowed_peers: Vec<IpAddr>,
    /// SOP classes accepted in addition to the standard Storage SOP classes
    /// (private storage classes of some vendors).
    pub extra_sop_classes: Vec<String>,
    /// Seconds in-flight associations and requests get to finish at shutdown.
    pub shutdown_grace: u64,
    /// File holding the operator API bearer token (instead of
    /// `DICOM_GATEWAY_API_TOKEN`).
    pub api_token_file: Option<PathBuf>,
    /// The operator API bearer token. Never serialised.
    #[serde(skip)]
    pub api_token: Option<Secret>,
    /// File holding the bearer token of `GET /metrics` (instead of
    /// `DICOM_GATEWAY_METRICS_TOKEN`).
    pub metrics_token_file: Option<PathBuf>,
    /// The bearer token of `GET /metrics`: with one, a scraper presenting
    /// it gets the metrics from anywhere (and nothing else); without one,
    /// `/metrics` is guarded like the operator API. Never serialised.
    #[serde(skip)]
    pub metrics_token: Option<Secret>,
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log shippers.
    pub log_format: LogFormat,
    /// File holding Avara's webhook signing secrets, `whsec_…`, comma- or
    /// newline-separated (instead of `AVARA_WEBHOOK_KEY`).
    pub avara_webhook_key_file: Option<PathBuf>,
    /// Avara's webhook signing secrets. Never serialised.
    #[serde(skip)]
    pub webhook_keys: WebhookKeys,
    /// Seconds a signed download URL stays valid (at most 7 days).
    pub url_ttl: u64,
    /// The signing keys of download/upload URLs (one `kid base64key` per
    /// line, the first signs); generated on first start when missing.
    /// Default: `<data_dir>/url-signing-keys`.
    pub url_signing_keys_file: Option<PathBuf>,
    /// Origins (e.g. `https://app.avara.example`) allowed to use the file and
    /// upload routes from a browser. Empty: any.
    pub cors_origins: Vec<String>,
    /// What a re-sent SOP Instance UID may do to the stored one.
    pub duplicates: DuplicatePolicy,
    /// Seconds a new DICOM connection gets to send a complete
    /// A-ASSOCIATE-RQ (the ARTIM timer of PS3.8 §9.1.5) before it is closed.
    pub artim_timeout: u64,
    /// DICOM connections that have not yet associated, counted apart from
    /// `max_associations`; past it the oldest of them is closed, so idle
    /// sockets can never lock a modality out.
    pub max_pending_connections: usize,
    /// Lowest average rate (bytes/s) at which a data set must arrive once it
    /// has taken longer than `read_timeout`; slower ones are aborted, so a
    /// peer trickling bytes cannot hold an association slot and a spool
    /// file for ever. 0: no minimum.
    pub min_data_rate: u64,
    /// Largest part of a data set before its pixel data that is read as the
    /// header, in bytes; bulk elements are skipped, not counted.
    pub max_header_bytes: u64,
    /// Deepest nesting of sequences accepted in a data set.
    pub max_sequence_depth: u32,
    /// Seconds an HTTP client gets to send a request's headers.
    pub http_header_timeout: u64,
    /// Seconds an idle keep-alive HTTP connection is kept open.
    pub http_idle_timeout: u64,
    /// Lowest average rate (bytes/s) at which a request body must arrive,
    /// measured after `http_header_timeout` seconds; slower ones get 408.
    pub http_min_body_rate: u64,
    /// Concurrent HTTP connections; one more is answered 503 and closed.
    /// Lowered at start to leave file descriptors for the DICOM side.
    pub http_max_connections: usize,
    /// Let Avara's `report.delivered` URLs point at loopback, private,
    /// link-local or other internal addresses (off: such fetches are refused).
    pub report_fetch_allow_private: bool,
    /// Report PDFs fetched at once.
    pub report_fetch_concurrency: usize,
    /// Seconds without a new instance after which a study is told stable
    /// (`study.stable`; Orthanc's `StableAge`).
    pub stable_after: u64,
    /// The wait before each delivery attempt of an outbound webhook message
    /// (`"0s"`, `"5m"`, …: the first is the first attempt's); once the last
    /// has failed, the message is failed.
    pub webhook_retry_schedule: Vec<String>,
    /// Let outbound webhook URLs point at loopback and private addresses
    /// (a RIS on the hospital network); link-local ones are always refused.
    pub webhook_allow_private: bool,
    /// Seconds one webhook delivery may take, connection included.
    pub webhook_timeout: u64,
    /// Webhook deliveries in flight at once.
    pub webhook_concurrency: usize,
    /// Where objects live: `[storage]` in the file, `--storage-*` flags.
    pub storage: StorageConfig,
    /// The ingest journal: `[journal]` in the file, `--journal`.
    pub journal: JournalConfig,
    /// Remote DICOM applications we open associations to:
    /// `[[dicom_nodes]]` in the file (forwarding destinations, storage
    /// commitment requesters).
    pub dicom_nodes: Vec<DicomNode>,
    /// Address of the DICOM TLS listener (2762 is the registered port).
    /// Unset: no TLS listener. Needs `dicom_tls_cert` and `dicom_tls_key`.
    pub dicom_tls_listen: Option<SocketAddr>,
    /// PEM certificate (chain, leaf first) of the DICOM TLS listener; also
    /// our client certificate towards `[[dicom_nodes]]` with `tls = true`.
    pub dicom_tls_cert: Option<PathBuf>,
    /// PEM private key of `dicom_tls_cert` (never logged).
    pub dicom_tls_key: Option<PathBuf>,
    /// PEM CA bundle: client certificates are verified against it (mutual
    /// TLS), and so are the servers of `[[dicom_nodes]]` with `tls = true`.
    pub dicom_tls_ca: Option<PathBuf>,
    /// Demand a client certificate on the DICOM TLS listener. Default: on
    /// when `dicom_tls_ca` is set; `false` lets clients without one in
    /// (one they present must still chain to the CA); `true` needs a CA.
    pub dicom_tls_verify_client: Option<bool>,
    /// PEM certificate (chain) of the HTTP listener: with `http_tls_key`,
    /// it serves HTTPS only.
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of `http_tls_cert` (never logged).
    pub http_tls_key: Option<PathBuf>,
    /// Storage commitment: the wait before each new-association attempt
    /// to deliver a report after the first (immediate) one; once the last
    /// has failed, the request is failed (default about 24 h in all).
    pub storage_commitment_retry: Vec<String>,
    /// Forwarding rules: `[[forward]]` in the file (see `config/forward.rs`).
    pub forward: Vec<ForwardRule>,
    /// Forwarding settings: `[forwarding]` in the file.
    pub forwarding: ForwardSettings,
}

/// What happens when a SOP Instance UID the gateway already holds arrives
/// again (dcm4chee's overwrite policy, Orthanc's `OverwriteInstances`).
/// Whatever the policy, an upload URL can never replace or move an instance
/// of another study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// A re-send within the same study replaces the stored instance; under
    /// another Study Instance UID it is refused (0xA900) and logged.
    #[default]
    ReplaceSameStudy,
    /// A re-send is refused whatever its study; the first version stays.
    Reject,
    /// A re-send replaces the stored instance, moving it to the new study
    /// or series (for sites that correct studies by re-sending).
    Replace,
}

/// The format of the log on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (ANSI colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), `target`, and the current span and span list.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./storage"),
            dicom_listen: "0.0.0.0:11112".parse().expect("valid address"),
            http_listen: "0.0.0.0:8080".parse().expect("valid address"),
            ae_title: "DICOMGW".into(),
            public_url: "http://localhost:8080".into(),
            max_associations: 64,
            max_pdu_length: 256 * 1024,
            read_timeout: 60,
            write_timeout: 60,
            max_instance_size: 8 << 30,
            min_free_space: 64 << 20,
            allowed_calling_aets: Vec::new(),
            allowed_peers: Vec::new(),
            extra_sop_classes: Vec::new(),
            shutdown_grace: 10,
            api_token_file: None,
            api_token: None,
            metrics_token_file: None,
            metrics_token: None,
            log_format: LogFormat::default(),
            avara_webhook_key_file: None,
            webhook_keys: WebhookKeys::default(),
            url_ttl: 3600,
            cors_origins: Vec::new(),
            url_signing_keys_file: None,
            duplicates: DuplicatePolicy::default(),
            artim_timeout: 10,
            max_pending_connections: 128,
            min_data_rate: 1024,
            max_header_bytes: 16 << 20,
            max_sequence_depth: 32,
            http_header_timeout: 10,
            http_idle_timeout: 60,
            http_min_body_rate: 1024,
            http_max_connections: 1024,
            report_fetch_allow_private: false,
            report_fetch_concurrency: 4,
            stable_after: 60,
            webhook_retry_schedule: crate::outbound::DEFAULT_SCHEDULE
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect(),
            webhook_allow_private: true,
            webhook_timeout: 15,
            webhook_concurrency: 8,
            storage: StorageConfig::default(),
            journal: JournalConfig::default(),
            dicom_nodes: Vec::new(),
            dicom_tls_listen: None,
            dicom_tls_cert: None,
            dicom_tls_key: None,
            dicom_tls_ca: None,
            dicom_tls_verify_client: None,
            http_tls_cert: None,
            http_tls_key: None,
            storage_commitment_retry: crate::commitment::DEFAULT_RETRY
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            forward: Vec::new(),
            forwarding: ForwardSettings::default(),
        }
    }
}

macro_rules! overlay {
    ($cfg:ident, $over:ident, $($field:ident),* $(,)?) => {
        $( if let Some(v) = $over.$field.clone() { $cfg.$field = v; } )*
    };
}

impl Config {
    /// Builds the effective configuration.
    pub fn load(over: &Overrides, env: &SecretEnv) -> Result<Config> {
        let over = &over.without_empty_lists();
        let mut cfg = match &over.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        overlay!(
            cfg,
            over,
            data_dir,
            dicom_listen,
            http_listen,
            ae_title,
            public_url,
            max_associations,
            max_pdu_length,
            read_timeout,
            write_timeout,
            max_instance_size,
            min_free_space,
            allowed_calling_aets,
            allowed_peers,
            extra_sop_classes,
            shutdown_grace,
            url_ttl,
            cors_origins,
            duplicates,
            artim_timeout,
            max_pending_connections,
            min_data_rate,
            max_header_bytes,
            max_sequence_depth,
            http_header_timeout,
            http_idle_timeout,
            http_min_body_rate,
            http_max_connections,
            report_fetch_allow_private,
            report_fetch_concurrency,
            stable_after,
            webhook_retry_schedule,
            webhook_allow_private,
            webhook_timeout,
            webhook_concurrency,
            log_format,
            storage_commitment_retry,
        );
        let st = &mut cfg.storage;
        if over.storage_url.is_some() {
            st.url = over.storage_url.clone();
        }
        if over.storage_endpoint.is_some() {
            st.endpoint = over.storage_endpoint.clone();
        }
        if over.storage_public_endpoint.is_some() {
            st.public_endpoint = over.storage_public_endpoint.clone();
        }
        if let Some(v) = &over.storage_region {
            st.region = v.clone();
        }
        if let Some(v) = over.storage_virtual_hosted {
            st.virtual_hosted = v;
        }
        if let Some(v) = over.storage_allow_http {
            st.allow_http = v;
        }
        if let Some(v) = over.storage_timeout {
            st.timeout = v;
        }
        if let Some(v) = over.storage_relist_after {
            st.relist_after = v;
        }
        if let Some(v) = over.storage_ack {
            st.ack = v;
        }
        if let Some(v) = over.storage_backlog_wait {
            st.backlog_wait = v;
        }
        if let Some(v) = over.storage_backlog_max {
            st.backlog_max = v;
        }
        if let Some(v) = over.storage_cache_objects {
            st.cache_objects = v;
        }
        if let Some(v) = over.journal {
            cfg.journal.enabled = v;
        }
        if let Some(v) = over.journal_segment_size_mib {
            cfg.journal.segment_size_mib = v;
        }
        if let Some(v) = over.journal_segments {
            cfg.journal.segments = v;
        }
        if let Some(v) = over.journal_inline_max_kib {
            cfg.journal.inline_max_kib = v;
        }
        let st = &mut cfg.storage;
        st.credentials = S3Credentials {
            access_key_id: env.aws_access_key_id.clone().filter(|v| !v.is_empty()),
            secret_access_key: env
                .aws_secret_access_key
                .clone()
                .filter(|v| !v.is_empty())
                .map(Secret::new),
            session_token: env
                .aws_session_token
                .clone()
                .filter(|v| !v.is_empty())
                .map(Secret::new),
        };
        cfg.overlay_tls(over);
        if over.api_token_file.is_some() {
            cfg.api_token_file = over.api_token_file.clone();
        }
        if over.metrics_token_file.is_some() {
            cfg.metrics_token_file = over.metrics_token_file.clone();
        }
        if over.url_signing_keys_file.is_some() {
            cfg.url_signing_keys_file = over.url_signing_keys_file.clone();
        }
        if over.avara_webhook_key_file.is_some() {
            cfg.avara_webhook_key_file = over.avara_webhook_key_file.clone();
        }
        if env
            .api_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            // Set but blank: a mistake, never "no token".
            check_token("api_token", "")?;
        }
        cfg.api_token = secret(
            "api_token",
            "DICOM_GATEWAY_API_TOKEN",
            env.api_token.clone(),
            cfg.api_token_file.as_deref(),
        )?
        .map(Secret::new);
        if let Some(token) = &cfg.api_token {
            check_token("api_token", token.expose())?;
        }
        if env
            .metrics_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            check_token("metrics_token", "")?;
        }
        cfg.metrics_token = secret(
            "metrics_token",
            "DICOM_GATEWAY_METRICS_TOKEN",
            env.metrics_token.clone(),
            cfg.metrics_token_file.as_deref(),
        )?
        .map(Secret::new);
        if let Some(token) = &cfg.metrics_token {
            check_token("metrics_token", token.expose())?;
        }
        let keys = secret(
            "avara_webhook_key",
            "AVARA_WEBHOOK_KEY",
            env.avara_webhook_key.clone(),
            cfg.avara_webhook_key_file.as_deref(),
        )?;
        cfg.webhook_keys = match keys {
            Some(list) => {
                WebhookKeys::parse(&list.replace('\n', ",")).map_err(|e| Error::Invalid {
                    name: "avara_webhook_key",
                    reason: e.to_string(),
                })?
            }
            None => WebhookKeys::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn url_signing_keys_path(&self) -> PathBuf {
        self.url_signing_keys_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::store::signer::KEY_FILE))
    }

    pub fn url_ttl(&self) -> Duration {
        Duration::from_secs(self.url_ttl)
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| Error::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }
    pub fn index_dir(&self) -> PathBuf {
        self.data_dir.join("index")
    }
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }
    pub fn journal_dir(&self) -> PathBuf {
        self.data_dir.join("journal")
    }
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
    }
    pub fn stable_after(&self) -> Duration {
        Duration::from_secs(self.stable_after)
    }

    pub fn artim_timeout(&self) -> Duration {
        Duration::from_secs(self.artim_timeout)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut text = toml::to_string_pretty(self).expect("config serialises");
        let token = match &self.api_token {
            Some(_) => {
                "api_token = \"<redacted>\"  # from DICOM_GATEWAY_API_TOKEN or api_token_file\n"
            }
            None => "# api_token: not set (operator API answers loopback clients only)\n",
        };
        text.push_str(token);
        text.push_str(match &self.metrics_token {
            Some(_) => "metrics_token = \"<redacted>\"  # from DICOM_GATEWAY_METRICS_TOKEN or metrics_token_file\n",
            None => "# metrics_token: not set (/metrics is guarded like the operator API)\n",
        });
        if let Ok(StorageLocation::S3 { .. }) = self.storage_location() {
            let c = &self.storage.credentials;
            text.push_str(&format!(
                "# storage credentials: AWS_ACCESS_KEY_ID={}, AWS_SECRET_ACCESS_KEY={}, AWS_SESSION_TOKEN={}\n",
                c.access_key_id.as_deref().unwrap_or("<not set>"),
                if c.secret_access_key.is_some() { "<redacted>" } else { "<not set>" },
                if c.session_token.is_some() { "<redacted>" } else { "<not set>" },
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests;
