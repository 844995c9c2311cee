//! Secrets: from the environment or a file, never a flag, never shown.

use std::path::Path;

use super::{Error, Result};

/// Secrets read from the environment, passed in so tests need not touch the
/// process environment.
#[derive(Debug, Default, Clone)]
pub struct SecretEnv {
    /// `DICOM_GATEWAY_API_TOKEN`
    pub api_token: Option<String>,
    /// `DICOM_GATEWAY_METRICS_TOKEN`
    pub metrics_token: Option<String>,
    /// `AVARA_WEBHOOK_KEY`
    pub avara_webhook_key: Option<String>,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
}

impl SecretEnv {
    pub fn from_process() -> SecretEnv {
        SecretEnv {
            api_token: std::env::var("DICOM_GATEWAY_API_TOKEN").ok(),
            metrics_token: std::env::var("DICOM_GATEWAY_METRICS_TOKEN").ok(),
            avara_webhook_key: std::env::var("AVARA_WEBHOOK_KEY").ok(),
            aws_access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
            aws_secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
            aws_session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
        }
    }
}

/// Shortest operator API (and metrics) token accepted.
pub const MIN_API_TOKEN_LEN: usize = 16;

/// The operator API and `/metrics` fail closed: a token that is blank (an
/// empty file, a stray newline) or short enough to guess stops the start
/// instead of letting every client through. `name` is `api_token` or
/// `metrics_token`.
pub(super) fn check_token(name: &'static str, token: &str) -> Result<()> {
    let reason = if token.trim().is_empty() {
        format!(
            "is empty or only white space (check DICOM_GATEWAY_{} / {name}_file)",
            name.to_ascii_uppercase()
        )
    } else if token.chars().count() < MIN_API_TOKEN_LEN {
        format!("is shorter than {MIN_API_TOKEN_LEN} characters")
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains white space or control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::Invalid { name, reason })
}

/// A secret from the environment or from a file, not both.
pub(super) fn secret(
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
