//! The flags of `dicom-gateway serve`, each also an environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::{AckMode, DuplicatePolicy, LogFormat};

/// Flags of `dicom-gateway serve`; each also read from its environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "DICOM_GATEWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./storage].
    #[arg(long, env = "DICOM_GATEWAY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// DICOM listener address [default: 0.0.0.0:11112].
    #[arg(long, env = "DICOM_GATEWAY_DICOM_LISTEN", value_name = "ADDR")]
    pub dicom_listen: Option<SocketAddr>,
    /// HTTP listener address [default: 0.0.0.0:8080].
    #[arg(long, env = "DICOM_GATEWAY_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Our AE title [default: DICOMGW].
    #[arg(long, env = "DICOM_GATEWAY_AE_TITLE")]
    pub ae_title: Option<String>,
    /// Base URL the outside world uses for the HTTP side.
    #[arg(long, env = "DICOM_GATEWAY_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Maximum concurrent associations [default: 64].
    #[arg(long, env = "DICOM_GATEWAY_MAX_ASSOCIATIONS")]
    pub max_associations: Option<usize>,
    /// Maximum PDU length in bytes, 65536–1048576 [default: 262144].
    #[arg(long, env = "DICOM_GATEWAY_MAX_PDU_LENGTH")]
    pub max_pdu_length: Option<u32>,
    /// Read timeout in seconds [default: 60].
    #[arg(long, env = "DICOM_GATEWAY_READ_TIMEOUT", value_name = "SECS")]
    pub read_timeout: Option<u64>,
    /// Write timeout in seconds [default: 60].
    #[arg(long, env = "DICOM_GATEWAY_WRITE_TIMEOUT", value_name = "SECS")]
    pub write_timeout: Option<u64>,
    /// Largest accepted instance in bytes [default: 8 GiB].
    #[arg(long, env = "DICOM_GATEWAY_MAX_INSTANCE_SIZE", value_name = "BYTES")]
    pub max_instance_size: Option<u64>,
    /// Free space in bytes to keep in the data directory [default: 64 MiB].
    #[arg(long, env = "DICOM_GATEWAY_MIN_FREE_SPACE", value_name = "BYTES")]
    pub min_free_space: Option<u64>,
    /// Comma-separated calling AE titles allowed to associate [default: any].
    #[arg(
        long,
        env = "DICOM_GATEWAY_ALLOWED_CALLING_AETS",
        value_delimiter = ','
    )]
    pub allowed_calling_aets: Option<Vec<String>>,
    /// Comma-separated peer IP addresses allowed to connect [default: any].
    #[arg(long, env = "DICOM_GATEWAY_ALLOWED_PEERS", value_delimiter = ',')]
    pub allowed_peers: Option<Vec<IpAddr>>,
    /// Comma-separated extra (private) storage SOP class UIDs to accept.
    #[arg(long, env = "DICOM_GATEWAY_EXTRA_SOP_CLASSES", value_delimiter = ',')]
    pub extra_sop_classes: Option<Vec<String>>,
    /// Shutdown grace period in seconds [default: 10].
    #[arg(long, env = "DICOM_GATEWAY_SHUTDOWN_GRACE", value_name = "SECS")]
    pub shutdown_grace: Option<u64>,
    /// File holding the operator API bearer token.
    #[arg(long, env = "DICOM_GATEWAY_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// File holding the bearer token of /metrics (instead of DICOM_GATEWAY_METRICS_TOKEN).
    #[arg(long, env = "DICOM_GATEWAY_METRICS_TOKEN_FILE", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Log format on stderr: text or json [default: text].
    #[arg(long, env = "DICOM_GATEWAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// File holding Avara's webhook secrets (instead of AVARA_WEBHOOK_KEY).
    #[arg(
        long,
        env = "DICOM_GATEWAY_AVARA_WEBHOOK_KEY_FILE",
        value_name = "FILE"
    )]
    pub avara_webhook_key_file: Option<PathBuf>,
    /// Validity of signed download URLs in seconds [default: 3600, max 604800].
    #[arg(long, env = "DICOM_GATEWAY_URL_TTL", value_name = "SECS")]
    pub url_ttl: Option<u64>,
    /// File with the URL signing keys [default: <data-dir>/url-signing-keys].
    #[arg(long, env = "DICOM_GATEWAY_URL_SIGNING_KEYS_FILE", value_name = "FILE")]
    pub url_signing_keys_file: Option<PathBuf>,
    /// Comma-separated browser origins allowed on the file/upload routes [default: any].
    #[arg(long, env = "DICOM_GATEWAY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Re-sent SOP Instance UIDs: replace_same_study, reject or replace [default: replace_same_study].
    #[arg(long, env = "DICOM_GATEWAY_DUPLICATES", value_enum)]
    pub duplicates: Option<DuplicatePolicy>,
    /// Seconds a connection gets to send its A-ASSOCIATE-RQ [default: 10].
    #[arg(long, env = "DICOM_GATEWAY_ARTIM_TIMEOUT", value_name = "SECS")]
    pub artim_timeout: Option<u64>,
    /// DICOM connections not yet associated [default: 128].
    #[arg(long, env = "DICOM_GATEWAY_MAX_PENDING_CONNECTIONS")]
    pub max_pending_connections: Option<usize>,
    /// Lowest data set rate in bytes/s once read_timeout has passed [default: 1024; 0: none].
    #[arg(long, env = "DICOM_GATEWAY_MIN_DATA_RATE", value_name = "BYTES")]
    pub min_data_rate: Option<u64>,
    /// Largest data set header (before pixel data) in bytes [default: 16 MiB].
    #[arg(long, env = "DICOM_GATEWAY_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<u64>,
    /// Deepest sequence nesting accepted [default: 32].
    #[arg(long, env = "DICOM_GATEWAY_MAX_SEQUENCE_DEPTH")]
    pub max_sequence_depth: Option<u32>,
    /// Seconds to send HTTP request headers [default: 10].
    #[arg(long, env = "DICOM_GATEWAY_HTTP_HEADER_TIMEOUT", value_name = "SECS")]
    pub http_header_timeout: Option<u64>,
    /// Seconds an idle keep-alive HTTP connection is kept [default: 60].
    #[arg(long, env = "DICOM_GATEWAY_HTTP_IDLE_TIMEOUT", value_name = "SECS")]
    pub http_idle_timeout: Option<u64>,
    /// Lowest request body rate in bytes/s [default: 1024].
    #[arg(long, env = "DICOM_GATEWAY_HTTP_MIN_BODY_RATE", value_name = "BYTES")]
    pub http_min_body_rate: Option<u64>,
    /// Concurrent HTTP connections [default: 1024].
    #[arg(long, env = "DICOM_GATEWAY_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Allow report URLs on loopback/private/link-local addresses.
    #[arg(long, env = "DICOM_GATEWAY_REPORT_FETCH_ALLOW_PRIVATE")]
    pub report_fetch_allow_private: Option<bool>,
    /// Report PDFs fetched at once [default: 4].
    #[arg(long, env = "DICOM_GATEWAY_REPORT_FETCH_CONCURRENCY")]
    pub report_fetch_concurrency: Option<usize>,
    /// Seconds without a new instance before study.stable [default: 60].
    #[arg(long, env = "DICOM_GATEWAY_STABLE_AFTER", value_name = "SECS")]
    pub stable_after: Option<u64>,
    /// Comma-separated waits before each webhook attempt [default: 0s,5s,5m,30m,2h,5h,10h,10h].
    #[arg(
        long,
        env = "DICOM_GATEWAY_WEBHOOK_RETRY_SCHEDULE",
        value_delimiter = ','
    )]
    pub webhook_retry_schedule: Option<Vec<String>>,
    /// Comma-separated waits before each storage commitment report retry
    /// [default: 5s,30s,2m,10m,30m,1h,2h,4h,8h,8h].
    #[arg(
        long,
        env = "DICOM_GATEWAY_STORAGE_COMMITMENT_RETRY",
        value_delimiter = ','
    )]
    pub storage_commitment_retry: Option<Vec<String>>,
    /// Allow webhook URLs on loopback/private addresses [default: true].
    #[arg(long, env = "DICOM_GATEWAY_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: Option<bool>,
    /// Seconds one webhook delivery may take [default: 15].
    #[arg(long, env = "DICOM_GATEWAY_WEBHOOK_TIMEOUT", value_name = "SECS")]
    pub webhook_timeout: Option<u64>,
    /// Webhook deliveries in flight at once [default: 8].
    #[arg(long, env = "DICOM_GATEWAY_WEBHOOK_CONCURRENCY")]
    pub webhook_concurrency: Option<usize>,
    /// Object store: file:///path or s3://bucket/prefix [default: <data-dir>/objects].
    #[arg(long = "storage", env = "DICOM_GATEWAY_STORAGE", value_name = "URL")]
    pub storage_url: Option<String>,
    /// S3 endpoint, e.g. http://127.0.0.1:9000 [default: AWS].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_ENDPOINT", value_name = "URL")]
    pub storage_endpoint: Option<String>,
    /// S3 endpoint viewers use, for signing download URLs [default: --storage-endpoint].
    #[arg(
        long,
        env = "DICOM_GATEWAY_STORAGE_PUBLIC_ENDPOINT",
        value_name = "URL"
    )]
    pub storage_public_endpoint: Option<String>,
    /// S3 region [default: us-east-1].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_REGION")]
    pub storage_region: Option<String>,
    /// S3 virtual-hosted addressing instead of path style.
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_VIRTUAL_HOSTED")]
    pub storage_virtual_hosted: Option<bool>,
    /// Allow a plain-HTTP S3 endpoint.
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_ALLOW_HTTP")]
    pub storage_allow_http: Option<bool>,
    /// S3 request time limit in seconds, retries included [default: 30].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_TIMEOUT", value_name = "SECS")]
    pub storage_timeout: Option<u64>,
    /// Seconds before a known study is listed again in a shared store [default: 30].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_RELIST_AFTER", value_name = "SECS")]
    pub storage_relist_after: Option<u64>,
    /// S3: acknowledge once durable on local disk (journal) or once the store confirmed (stored) [default: journal].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_ACK", value_enum)]
    pub storage_ack: Option<AckMode>,
    /// S3, ack=journal: backlog bytes above which new instances wait for uploads [default: 2 GiB].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_BACKLOG_WAIT", value_name = "BYTES")]
    pub storage_backlog_wait: Option<u64>,
    /// S3, ack=journal: backlog bytes beyond which new instances are refused [default: 8 GiB].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_BACKLOG_MAX", value_name = "BYTES")]
    pub storage_backlog_max: Option<u64>,
    /// Keep an acknowledged instance's pages (local object or S3 pending copy) in the page cache [default: false].
    #[arg(long, env = "DICOM_GATEWAY_STORAGE_CACHE_OBJECTS")]
    pub storage_cache_objects: Option<bool>,
    /// Acknowledge local-store instances from the ingest journal [default: true].
    #[arg(long, env = "DICOM_GATEWAY_JOURNAL")]
    pub journal: Option<bool>,
    /// Size of one journal segment in MiB [default: 64].
    #[arg(
        long,
        env = "DICOM_GATEWAY_JOURNAL_SEGMENT_SIZE_MIB",
        value_name = "MIB"
    )]
    pub journal_segment_size_mib: Option<u64>,
    /// Journal segments kept [default: 8].
    #[arg(long, env = "DICOM_GATEWAY_JOURNAL_SEGMENTS", value_name = "N")]
    pub journal_segments: Option<u64>,
    /// Instances up to this many KiB travel inside their journal record
    /// [default: 64].
    #[arg(long, env = "DICOM_GATEWAY_JOURNAL_INLINE_MAX_KIB", value_name = "KIB")]
    pub journal_inline_max_kib: Option<u64>,
    /// DICOM TLS listener address (2762 is the registered port) [default: none].
    #[arg(long, env = "DICOM_GATEWAY_DICOM_TLS_LISTEN", value_name = "ADDR")]
    pub dicom_tls_listen: Option<SocketAddr>,
    /// PEM certificate (chain) of the DICOM TLS listener and of our TLS associations.
    #[arg(long, env = "DICOM_GATEWAY_DICOM_TLS_CERT", value_name = "FILE")]
    pub dicom_tls_cert: Option<PathBuf>,
    /// PEM private key of --dicom-tls-cert.
    #[arg(long, env = "DICOM_GATEWAY_DICOM_TLS_KEY", value_name = "FILE")]
    pub dicom_tls_key: Option<PathBuf>,
    /// PEM CA bundle that client (and remote node) certificates must chain to.
    #[arg(long, env = "DICOM_GATEWAY_DICOM_TLS_CA", value_name = "FILE")]
    pub dicom_tls_ca: Option<PathBuf>,
    /// Demand a client certificate [default: true when --dicom-tls-ca is set].
    #[arg(long, env = "DICOM_GATEWAY_DICOM_TLS_VERIFY_CLIENT")]
    pub dicom_tls_verify_client: Option<bool>,
    /// PEM certificate (chain) for HTTPS on the HTTP listener.
    #[arg(long, env = "DICOM_GATEWAY_HTTP_TLS_CERT", value_name = "FILE")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of --http-tls-cert.
    #[arg(long, env = "DICOM_GATEWAY_HTTP_TLS_KEY", value_name = "FILE")]
    pub http_tls_key: Option<PathBuf>,
}

impl Overrides {
    /// An empty list variable (`DICOM_GATEWAY_ALLOWED_CALLING_AETS=`, as a
    /// compose file or an env file leaves it) means "not set", not a list
    /// of one empty name; empty items of a list are dropped.
    pub(super) fn without_empty_lists(&self) -> Overrides {
        let clean = |list: &Option<Vec<String>>| {
            list.as_ref()
                .map(|items| {
                    items
                        .iter()
                        .map(|i| i.trim())
                        .filter(|i| !i.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .filter(|items| !items.is_empty())
        };
        Overrides {
            allowed_calling_aets: clean(&self.allowed_calling_aets),
            extra_sop_classes: clean(&self.extra_sop_classes),
            cors_origins: clean(&self.cors_origins),
            webhook_retry_schedule: clean(&self.webhook_retry_schedule),
            storage_commitment_retry: clean(&self.storage_commitment_retry),
            ..self.clone()
        }
    }
}
