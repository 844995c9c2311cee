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

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::webhook::WebhookKeys;

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
}

/// Secrets read from the environment, passed in so tests need not touch the
/// process environment.
#[derive(Debug, Default, Clone)]
pub struct SecretEnv {
    /// `DICOM_GATEWAY_API_TOKEN`
    pub api_token: Option<String>,
    /// `AVARA_WEBHOOK_KEY`
    pub avara_webhook_key: Option<String>,
}

impl SecretEnv {
    pub fn from_process() -> SecretEnv {
        SecretEnv {
            api_token: std::env::var("DICOM_GATEWAY_API_TOKEN").ok(),
            avara_webhook_key: std::env::var("AVARA_WEBHOOK_KEY").ok(),
        }
    }
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
            avara_webhook_key_file: None,
            webhook_keys: WebhookKeys::default(),
            url_ttl: 3600,
            cors_origins: Vec::new(),
            url_signing_keys_file: None,
        }
    }
}

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
}

macro_rules! overlay {
    ($cfg:ident, $over:ident, $($field:ident),* $(,)?) => {
        $( if let Some(v) = $over.$field.clone() { $cfg.$field = v; } )*
    };
}

impl Config {
    /// Builds the effective configuration.
    pub fn load(over: &Overrides, env: &SecretEnv) -> Result<Config> {
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
        );
        if over.api_token_file.is_some() {
            cfg.api_token_file = over.api_token_file.clone();
        }
        if over.url_signing_keys_file.is_some() {
            cfg.url_signing_keys_file = over.url_signing_keys_file.clone();
        }
        if over.avara_webhook_key_file.is_some() {
            cfg.avara_webhook_key_file = over.avara_webhook_key_file.clone();
        }
        cfg.api_token = secret(
            "api_token",
            "DICOM_GATEWAY_API_TOKEN",
            env.api_token.clone(),
            cfg.api_token_file.as_deref(),
        )?
        .map(Secret);
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

    fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(Error::Invalid { name, reason });
        let ae = self.ae_title.trim();
        if ae.is_empty() || ae.len() > 16 || !ae.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return invalid(
                "ae_title",
                format!("{ae:?} is not 1–16 printable ASCII characters"),
            );
        }
        if !(MIN_PDU_LENGTH..=MAX_PDU_LENGTH).contains(&self.max_pdu_length) {
            return invalid(
                "max_pdu_length",
                format!(
                    "{} is outside {MIN_PDU_LENGTH}–{MAX_PDU_LENGTH}",
                    self.max_pdu_length
                ),
            );
        }
        if self.url_ttl == 0 || self.url_ttl > 7 * 24 * 3600 {
            return invalid("url_ttl", format!("{} is not 1 s – 7 days", self.url_ttl));
        }
        if self.max_associations == 0 {
            return invalid("max_associations", "must be at least 1".into());
        }
        if self.read_timeout == 0 || self.write_timeout == 0 {
            return invalid(
                "read_timeout/write_timeout",
                "must be at least 1 second".into(),
            );
        }
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return invalid(
                "public_url",
                format!("{:?} is not an http(s) URL", self.public_url),
            );
        }
        for uid in &self.extra_sop_classes {
            if let Err(e) = crate::uid::Uid::parse(uid) {
                return invalid("extra_sop_classes", format!("{uid:?}: {e}"));
            }
        }
        Ok(())
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
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace)
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
        text
    }
}

/// A secret from the environment or from a file, not both.
fn secret(
    name: &'static str,
    var: &str,
    from_env: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>> {
    match (from_env.filter(|v| !v.is_empty()), file) {
        (Some(_), Some(_)) => Err(Error::Invalid {
            name,
            reason: format!("set {var} or {name}_file, not both"),
        }),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            Ok(Some(text.trim().to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// A secret string: its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults_where_silent() {
        let cfg: Config = toml::from_str(include_str!("../docs/gateway.example.toml")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.ae_title, "DICOMGW");
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw.toml");
        std::fs::write(&file, "ae_title = \"FROMFILE\"\nmax_associations = 7\n").unwrap();
        let over = Overrides {
            config: Some(file),
            ae_title: Some("FROMFLAG".into()),
            ..Default::default()
        };
        let cfg = Config::load(&over, &SecretEnv::default()).unwrap();
        assert_eq!(cfg.ae_title, "FROMFLAG");
        assert_eq!(cfg.max_associations, 7);
        assert_eq!(cfg.read_timeout, 60);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
        let over = Overrides {
            max_pdu_length: Some(1000),
            ..Default::default()
        };
        let err = Config::load(&over, &SecretEnv::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_pdu_length"), "{err}");
    }

    #[test]
    fn token_is_redacted_everywhere() {
        let env = SecretEnv {
            api_token: Some("hunter2-token".into()),
            avara_webhook_key: Some("whsec_aHVudGVyMi13ZWJob29rLWtleQ==".into()),
        };
        let cfg = Config::load(&Overrides::default(), &env).unwrap();
        assert_eq!(cfg.webhook_keys.len(), 1);
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let printed = cfg.to_redacted_toml();
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("aHVudGVy"));
        assert!(printed.contains("<redacted>"));
    }
}
