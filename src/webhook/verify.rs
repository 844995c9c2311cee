//! Standard Webhooks verification (what Avara's SDKs use to sign).
//!
//! The signed content is `"{webhook-id}.{webhook-timestamp}.{raw body}"`,
//! HMAC-SHA256 under the base64-decoded part of a `whsec_…` secret; the
//! `webhook-signature` header carries one or more space-separated `v1,<base64>`
//! entries, any of which may match (entries of other versions are ignored).
//! Timestamps more than five minutes away from `now` are refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// `v1,` entries looked at in one `webhook-signature` header: a sender
/// signs with each key it is rotating between, a handful at most.
const MAX_SIGNATURES: usize = 8;
/// Bytes of an HMAC-SHA256 signature.
const SIGNATURE_LEN: usize = 32;

/// How far a timestamp may be from our clock, either way.
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Standard base64 that takes input with or without padding, as the Python
/// library does.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no webhook key is configured")]
    NoKeys,
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a Unix time")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes from now")]
    Stale,
    #[error("no valid signature")]
    BadSignature,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("webhook key {index} is empty")]
    Empty { index: usize },
    #[error("webhook key {index} is not base64 after its whsec_ prefix")]
    NotBase64 { index: usize },
}

/// The accepted signing keys (several during a rotation). `Debug` shows only
/// how many there are.
#[derive(Clone, Default)]
pub struct WebhookKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for WebhookKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookKeys({} keys, redacted)", self.0.len())
    }
}

impl WebhookKeys {
    /// Parses a comma-separated list of `whsec_…` secrets (the prefix is
    /// optional, padding too).
    pub fn parse(list: &str) -> Result<WebhookKeys, KeyError> {
        let mut keys = Vec::new();
        if list.trim().is_empty() {
            return Ok(WebhookKeys(keys));
        }
        for (index, raw) in list.split(',').map(str::trim).enumerate() {
            let b64 = raw.strip_prefix("whsec_").unwrap_or(raw);
            let key = LENIENT_B64
                .decode(b64)
                .map_err(|_| KeyError::NotBase64 { index })?;
            if key.is_empty() {
                return Err(KeyError::Empty { index });
            }
            keys.push(key);
        }
        Ok(WebhookKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// A request whose signature checked out: only these reach event handling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<'a> {
    pub id: &'a str,
    pub timestamp: u64,
    pub body: &'a [u8],
}

/// Checks the three Standard Webhooks headers against the raw body. `header`
/// looks a header up by its lower-case name; `now` is a parameter so the
/// replay window can be tested.
pub fn verify<'a>(
    header: impl Fn(&'static str) -> Option<&'a str>,
    body: &'a [u8],
    keys: &WebhookKeys,
    now: SystemTime,
) -> Result<Verified<'a>, VerifyError> {
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let get = |name| {
        header(name)
            .filter(|v| !v.is_empty())
            .ok_or(VerifyError::MissingHeader(name))
    };
    let id = get("webhook-id")?;
    let timestamp_text = get("webhook-timestamp")?;
    let signatures = get("webhook-signature")?;

    let timestamp: u64 = timestamp_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    // Any u64 parses; one past what SystemTime holds is just stale.
    let sent = UNIX_EPOCH
        .checked_add(Duration::from_secs(timestamp))
        .ok_or(VerifyError::Stale)?;
    let skew = now.duration_since(sent).unwrap_or_else(|e| e.duration());
    if skew > TOLERANCE {
        return Err(VerifyError::Stale);
    }

    // One MAC per key, compared with each candidate: a header stuffed with
    // thousands of `v1,` entries costs no more than a valid one.
    let entries: Vec<&str> = signatures.split(' ').filter(|e| !e.is_empty()).collect();
    if entries.len() > MAX_SIGNATURES {
        return Err(VerifyError::BadSignature);
    }
    let candidates: Vec<Vec<u8>> = entries
        .iter()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| LENIENT_B64.decode(sig).ok())
        .filter(|sig| sig.len() == SIGNATURE_LEN)
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::BadSignature);
    }
    for key in &keys.0 {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_text.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        // Constant-time comparison.
        if candidates
            .iter()
            .any(|candidate| bool::from(expected.as_slice().ct_eq(candidate)))
        {
            return Ok(Verified {
                id,
                timestamp,
                body,
            });
        }
    }
    Err(VerifyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Signed with Python `standardwebhooks` 1.1.0 (the library Avara's SDKs
    // call): Webhook(SECRET).sign(ID, 1795000000, BODY).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER: &str = "whsec_YW5vdGhlciBrZXkgb2YgMjQgYnl0ZXMh";
    const ID: &str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W";
    const TS: u64 = 1_795_000_000;
    const BODY: &str = r#"{"id":"whe_0123456789abcdef0123456789abcdef","type":"study.access_requested","data":{"studyId":"stu_0123456789abcdef0123456789abcdef","studyInstanceUid":"1.2.826.0.1.3680043.10.1234.1"}}"#;
    const SIG: &str = "v1,pLVkprGB01dXdcoBe3pzwaZ3fmGCYQHE9+5LGaxxUng=";
    const SIG_OTHER: &str = "v1,NFtnq57phT0/YAx9+tOpc7I/FZo7f/mD0o7ZnmQBjNQ=";

    fn check(keys: &str, sig: &str, ts: &str, body: &str, now: u64) -> Result<(), VerifyError> {
        let keys = WebhookKeys::parse(keys).unwrap();
        let headers = [
            ("webhook-id", ID),
            ("webhook-timestamp", ts),
            ("webhook-signature", sig),
        ];
        let lookup = |name: &'static str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let now = UNIX_EPOCH + Duration::from_secs(now);
        verify(lookup, body.as_bytes(), &keys, now).map(drop)
    }

    #[test]
    fn accepts_what_standardwebhooks_signed() {
        assert_eq!(check(SECRET, SIG, "1795000000", BODY, TS), Ok(()));
        // Unpadded key, no prefix, several signatures and other versions.
        let bare = SECRET.trim_start_matches("whsec_");
        let many = format!("v1a,abc v1,AAAA {SIG}");
        assert_eq!(check(bare, &many, "1795000000", BODY, TS + 299), Ok(()));
    }

    #[test]
    fn rotation_accepts_any_configured_key() {
        let both = format!("{OTHER}, {SECRET}");
        assert_eq!(check(&both, SIG, "1795000000", BODY, TS), Ok(()));
        assert_eq!(check(&both, SIG_OTHER, "1795000000", BODY, TS), Ok(()));
        assert_eq!(
            check(OTHER, SIG, "1795000000", BODY, TS),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn refuses_tampering_staleness_and_missing_parts() {
        let tampered = BODY.replace("1.2.826", "1.2.827");
        assert_eq!(
            check(SECRET, SIG, "1795000000", &tampered, TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(SECRET, SIG, "1795000001", BODY, TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check(SECRET, SIG, "1795000000", BODY, TS + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            check(SECRET, SIG, "1795000000", BODY, TS - 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            check(SECRET, SIG, "soon", BODY, TS),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            check(SECRET, "", "1795000000", BODY, TS),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            check(SECRET, "v2,xyz", "1795000000", BODY, TS),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            check("", SIG, "1795000000", BODY, TS),
            Err(VerifyError::NoKeys)
        );
    }

    #[test]
    fn a_header_stuffed_with_signatures_is_refused_without_hashing_each() {
        let stuffed = "v1,AA ".repeat(5000);
        assert_eq!(
            check(SECRET, &stuffed, "1795000000", BODY, TS),
            Err(VerifyError::BadSignature)
        );
        // More entries than any sender rotates between, even with the
        // right one among them.
        let nine = format!("{} {SIG}", "v1,AA ".repeat(8));
        assert_eq!(
            check(SECRET, &nine, "1795000000", BODY, TS),
            Err(VerifyError::BadSignature)
        );
        let three = format!("v1,AA v2,{} {SIG}", &SIG[3..]);
        assert_eq!(check(SECRET, &three, "1795000000", BODY, TS), Ok(()));
    }

    #[test]
    fn keys_are_never_shown() {
        let keys = WebhookKeys::parse(SECRET).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(!format!("{keys:?}").contains("MfKQ"));
        assert_eq!(
            WebhookKeys::parse("whsec_!!!").unwrap_err(),
            KeyError::NotBase64 { index: 0 }
        );
        assert_eq!(
            WebhookKeys::parse(&format!("{SECRET},")).unwrap_err(),
            KeyError::Empty { index: 1 }
        );
    }
}
