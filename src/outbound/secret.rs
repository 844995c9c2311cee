//! Subscription secrets and ids, from the operating system's CSPRNG.
//!
//! A secret is `whsec_` + the standard base64 of 32 random bytes: the form
//! the Standard Webhooks libraries take as it is (they strip the prefix and
//! decode the rest as the HMAC-SHA256 key). It is stored in the index (the
//! gateway must sign with it) and shown to the operator once, when made;
//! its `Debug` never shows it, so a `?subscription` in a log line is safe.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Error, Result};

/// The prefix Standard Webhooks gives symmetric secrets.
pub const PREFIX: &str = "whsec_";

/// Random bytes in a secret (Standard Webhooks asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// A subscription's signing secret, `whsec_…`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SigningSecret(String);

impl SigningSecret {
    /// A new secret from the system CSPRNG.
    pub fn generate() -> Result<SigningSecret> {
        let mut key = [0u8; SECRET_BYTES];
        getrandom::getrandom(&mut key).map_err(Error::Random)?;
        Ok(SigningSecret(format!("{PREFIX}{}", STANDARD.encode(key))))
    }

    /// The secret as the receiver configures it (`whsec_…`). For answering
    /// the operator who created or rotated it, and for signing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The HMAC key: the decoded part after `whsec_` (`None` for a secret
    /// not in that form, which this module never makes).
    pub fn key(&self) -> Option<Vec<u8>> {
        STANDARD.decode(self.0.strip_prefix(PREFIX)?).ok()
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The prefix of subscription ids.
pub const ID_PREFIX: &str = "wh_";

/// A new subscription id: `wh_` + 16 random bytes in lower-case hex (128
/// bits: ids never collide, and one cannot be guessed from another).
pub fn new_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(Error::Random)?;
    let mut id = String::with_capacity(ID_PREFIX.len() + 32);
    id.push_str(ID_PREFIX);
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

/// Whether `id` has the form [`new_id`] makes (checked before it is used as
/// an index key).
pub fn is_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX).is_some_and(|hex| {
        hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_standard_webhooks_secrets() {
        let a = SigningSecret::generate().unwrap();
        let b = SigningSecret::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(a.key().unwrap().len(), SECRET_BYTES);
        assert_eq!(format!("{a:?}"), "SigningSecret(<redacted>)");
        assert!(!format!("{:?}", Some(&a)).contains(a.expose()));
    }

    #[test]
    fn ids() {
        let id = new_id().unwrap();
        assert!(is_id(&id), "{id}");
        assert_ne!(id, new_id().unwrap());
        for bad in [
            "",
            "wh_",
            "wh_0123",
            "WH_0123456789abcdef0123456789abcdef",
            "wh_0123456789ABCDEF0123456789abcdef",
            "wh_0123456789abcdef0123456789abcdeg",
            "wh_0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }
}
