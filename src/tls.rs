//! TLS for DICOM associations (both directions) and for the HTTP side, on
//! rustls.
//!
//! Protocol versions: TLS 1.3 and 1.2 only, with rustls' default cipher
//! suites (AEAD only, ECDHE key exchange only, no renegotiation, no
//! compression). That is what BCP 195 (RFC 9325) asks and what DICOM's
//! "BCP 195" secure transport profiles (PS3.15 B.9–B.11) reference: DCMTK's
//! default `+py` profile and `+px` connect to it.
//!
//! The crypto provider is aws-lc-rs, named explicitly on every builder: it is
//! the provider the S3 client (object_store → reqwest) already builds, and
//! because ureq turns on rustls' `ring` feature as well, rustls could not
//! pick a process-wide default by itself. Nothing here installs one, so no
//! other rustls user in the process changes behaviour.
//!
//! Private keys are read into memory here and handed to rustls; they never
//! reach a log or an error message (errors name the setting and the file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Config, DicomNode};

mod x509;

pub use x509::Names;

/// The TLS versions we speak (BCP 195: 1.2 and 1.3, nothing older).
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A client association over TLS, as dicom-ul returns it.
pub type ClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{setting}: cannot read {path}: {source}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{setting}: {path} is not valid PEM ({reason})")]
    Pem {
        setting: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{setting}: {path} holds no certificate")]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting}: {path} holds no private key")]
    NoKey {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("{setting}: a certificate in {path} is unusable as a trust anchor: {source}")]
    BadCa {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// A setting unusable as given: a key that does not belong to its
    /// certificate (or that the provider cannot sign with), client
    /// verification without a CA.
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("dicom_tls_ca: cannot verify client certificates: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("association with {ae} at {address}: {source}")]
    Associate {
        ae: String,
        address: String,
        #[source]
        source: Box<dicom_ul::association::Error>,
    },
}

impl Error {
    /// The configuration setting this error is about, for the refusal.
    pub fn setting(&self) -> &'static str {
        match self {
            Error::Read { setting, .. }
            | Error::Pem { setting, .. }
            | Error::NoCertificate { setting, .. }
            | Error::NoKey { setting, .. }
            | Error::BadCa { setting, .. }
            | Error::Invalid { setting, .. }
            | Error::Missing(setting) => setting,
            Error::Verifier(_) => "dicom_tls_ca",
            Error::ServerName { .. } => "dicom_nodes",
            Error::Connect { .. } | Error::Associate { .. } => "dicom_nodes",
        }
    }
}

/// The provider every builder here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        setting,
        path: path.into(),
        source,
    })
}

fn pem_error<'a>(setting: &'static str, path: &'a Path) -> impl Fn(pem::Error) -> Error + 'a {
    move |e| Error::Pem {
        setting,
        path: path.into(),
        reason: e.to_string(),
    }
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(setting, path))?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            setting,
            path: path.into(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(setting: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read(setting, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(Error::NoKey {
            setting,
            path: path.into(),
        }),
        Err(e) => Err(pem_error(setting, path)(e)),
    }
}

/// A CA bundle as trust anchors.
pub fn load_roots(setting: &'static str, path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(setting, path)? {
        roots.add(cert).map_err(|source| Error::BadCa {
            setting,
            path: path.into(),
            source,
        })?;
    }
    Ok(roots)
}

fn key_pair_error(setting: &'static str) -> impl Fn(rustls::Error) -> Error {
    move |e| Error::Invalid {
        setting,
        reason: match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not match the certificate".into()
            }
            other => format!("unusable certificate or key: {other}"),
        },
    }
}

/// Whether client certificates are demanded: `dicom_tls_verify_client`,
/// by default on exactly when a CA is configured.
pub fn verify_clients(cfg: &Config) -> bool {
    cfg.dicom_tls_verify_client
        .unwrap_or(cfg.dicom_tls_ca.is_some())
}

/// The server side of the DICOM TLS listener, or `None` when
/// `dicom_tls_listen` is not set. With a CA, client certificates are
/// verified against it; demanded unless `dicom_tls_verify_client = false`
/// (then a client may present none, but one it presents must still chain to
/// the CA).
pub fn dicom_server_config(cfg: &Config) -> Result<Option<Arc<ServerConfig>>> {
    if cfg.dicom_tls_listen.is_none() {
        return Ok(None);
    }
    let cert = cfg
        .dicom_tls_cert
        .as_deref()
        .ok_or(Error::Missing("dicom_tls_cert"))?;
    let key = cfg
        .dicom_tls_key
        .as_deref()
        .ok_or(Error::Missing("dicom_tls_key"))?;
    let chain = load_certs("dicom_tls_cert", cert)?;
    let key = load_key("dicom_tls_key", key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3");
    let builder = match (&cfg.dicom_tls_ca, verify_clients(cfg)) {
        (Some(ca), demand) => {
            let roots = Arc::new(load_roots("dicom_tls_ca", ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if demand {
                verifier.build()?
            } else {
                verifier.allow_unauthenticated().build()?
            };
            builder.with_client_cert_verifier(verifier)
        }
        (None, true) => return Err(Error::Missing("dicom_tls_ca")),
        (None, false) => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(key_pair_error("dicom_tls_key"))?;
    Ok(Some(Arc::new(config)))
}

/// The HTTPS side, or `None` when `http_tls_cert`/`http_tls_key` are not
/// set. No client certificates (webhook callers authenticate by signature,
/// operators by token); ALPN offers HTTP/1.1, all the server speaks.
pub fn http_server_config(cfg: &Config) -> Result<Option<Arc<ServerConfig>>> {
    let (cert, key) = match (&cfg.http_tls_cert, &cfg.http_tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (None, Some(_)) => return Err(Error::Missing("http_tls_cert")),
        (Some(_), None) => return Err(Error::Missing("http_tls_key")),
    };
    let chain = load_certs("http_tls_cert", cert)?;
    let key = load_key("http_tls_key", key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(key_pair_error("http_tls_key"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// Outgoing DICOM associations over TLS (forwarding, storage commitment
/// reports to `[[dicom_nodes]]` with `tls = true`): the server is verified
/// against `dicom_tls_ca` with the node's `host` as the name to match (a DNS
/// name or an IP address in the certificate's subjectAltName), and our
/// `dicom_tls_cert`/`dicom_tls_key`, when set, are presented as the client
/// certificate (most sites that run DICOM TLS demand one).
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl TlsClient {
    /// The client, or `None` when no CA is configured: a node with
    /// `tls = true` cannot be verified then (warned about at start), and
    /// callers fail its associations with [`Error::Missing`]`("dicom_tls_ca")`.
    pub fn from_config(cfg: &Config) -> Result<Option<TlsClient>> {
        let Some(ca) = &cfg.dicom_tls_ca else {
            return Ok(None);
        };
        let roots = load_roots("dicom_tls_ca", ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .expect("aws-lc-rs supports TLS 1.2 and 1.3")
            .with_root_certificates(roots);
        let config = match (&cfg.dicom_tls_cert, &cfg.dicom_tls_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(
                    load_certs("dicom_tls_cert", cert)?,
                    load_key("dicom_tls_key", key)?,
                )
                .map_err(key_pair_error("dicom_tls_key"))?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(TlsClient {
            config: Arc::new(config),
        }))
    }

    /// The rustls configuration, for callers that drive dicom-ul themselves.
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// `options` set up to reach `node` over TLS: our configuration, the
    /// node's host as the server name, and its AE title as the called AE.
    pub fn options<'a>(
        &self,
        options: dicom_ul::ClientAssociationOptions<'a>,
        node: &'a DicomNode,
    ) -> dicom_ul::ClientAssociationOptions<'a> {
        options
            .called_ae_title(node.ae_title.trim())
            .tls_config(self.config())
            .server_name(node.host.trim_start_matches('[').trim_end_matches(']'))
    }

    /// Requests an association with `node` over TLS, with `options` (calling
    /// AE, presentation contexts, time-outs) as the caller built them.
    pub async fn associate(
        &self,
        options: dicom_ul::ClientAssociationOptions<'_>,
        node: &DicomNode,
    ) -> Result<dicom_ul::association::client::AsyncClientAssociation<ClientStream>> {
        let address = node.address();
        let host = node.host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|_| Error::ServerName {
            host: node.host.clone(),
        })?;
        self.options(options, node)
            .establish_tls_async(address.as_str())
            .await
            .map_err(|e| Error::Associate {
                ae: node.ae_title.clone(),
                address,
                source: Box::new(e),
            })
    }

    /// A bare TLS connection to `node` (handshake done, server verified),
    /// for callers that speak PDUs themselves.
    pub async fn connect(&self, node: &DicomNode) -> Result<ClientStream> {
        let address = node.address();
        let host = node.host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|_| Error::ServerName {
            host: node.host.clone(),
        })?;
        let tcp = tokio::net::TcpStream::connect(address.as_str())
            .await
            .map_err(|source| Error::Connect {
                address: address.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(self.config())
            .connect(name, tcp)
            .await
            .map_err(|source| Error::Connect { address, source })
    }
}

/// The server configurations `run` starts with, built once.
pub struct Servers {
    pub dicom: Option<Arc<ServerConfig>>,
    pub http: Option<Arc<ServerConfig>>,
}

impl Servers {
    /// Builds the DICOM and HTTP server configurations and says in the log
    /// what is served over TLS (the `listening` line of the TLS listener,
    /// as for the others, and a warning when `public_url` is not https
    /// while HTTPS is on).
    pub fn start(cfg: &Config, dicom_tls: Option<&tokio::net::TcpListener>) -> Result<Servers> {
        let servers = Servers {
            dicom: dicom_server_config(cfg)?,
            http: http_server_config(cfg)?,
        };
        if let (Some(listener), Some(_)) = (dicom_tls, &servers.dicom) {
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("<{e}>"));
            tracing::info!(service = "dicom-tls", addr = %addr, "listening");
            tracing::info!(
                verify_client = verify_clients(cfg),
                ca = cfg.dicom_tls_ca.is_some(),
                "DICOM TLS on (TLS 1.2/1.3)"
            );
        }
        if cfg.dicom_tls_ca.is_none() {
            for node in cfg.dicom_nodes.iter().filter(|n| n.tls) {
                tracing::warn!(
                    ae_title = %node.ae_title.trim(),
                    "dicom_nodes entry has tls = true but dicom_tls_ca is not set: its certificate cannot be verified, so associations to it will fail"
                );
            }
        }
        if servers.http.is_some() {
            tracing::info!("HTTPS on for the HTTP listener (TLS 1.2/1.3)");
            if !cfg.public_url.starts_with("https://") {
                tracing::warn!(
                    public_url = %cfg.public_url,
                    "HTTPS is on but public_url is not https://: signed URLs will point at a plain-HTTP address"
                );
            }
        }
        Ok(servers)
    }
}

/// Who is on the other end of a TLS connection: its certificate's subject
/// and issuer, for the association's log lines. `None` when it presented no
/// certificate.
pub fn peer_names(conn: &rustls::CommonState) -> Option<Names> {
    let cert = conn.peer_certificates()?.first()?;
    Some(x509::names(cert).unwrap_or_else(|| Names {
        subject: "<unparsable certificate>".into(),
        issuer: String::new(),
    }))
}

/// Refuses TLS settings the gateway could not use; the error names the
/// setting. Builds every configuration once, so a wrong file, a key that
/// does not match its certificate or a missing CA stop the start.
pub fn check(cfg: &Config) -> Result<()> {
    if cfg.dicom_tls_verify_client == Some(true) && cfg.dicom_tls_ca.is_none() {
        return Err(Error::Invalid {
            setting: "dicom_tls_verify_client",
            reason: "true needs dicom_tls_ca (the CA client certificates are verified against)"
                .into(),
        });
    }
    if cfg.dicom_tls_cert.is_some() != cfg.dicom_tls_key.is_some() {
        let missing = if cfg.dicom_tls_cert.is_none() {
            "dicom_tls_cert"
        } else {
            "dicom_tls_key"
        };
        return Err(Error::Missing(missing));
    }
    dicom_server_config(cfg)?;
    http_server_config(cfg)?;
    TlsClient::from_config(cfg)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod testcerts;
#[cfg(test)]
mod tests;
