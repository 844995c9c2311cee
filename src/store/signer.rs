//! Signed URLs for objects the gateway serves itself (the local store).
//!
//! A URL is `{public_url}/{path}?exp=<unix>&kid=<key id>&sig=<base64url>`
//! where `sig` is HMAC-SHA256 over `"v1\n{METHOD}\n{path}\n{exp}\n{kid}"`
//! (`files/<object key>` for downloads, `uploads/<study>[/<series>/<sop>]` for
//! secondary-capture uploads, so a URL is bound to what it names). The
//! method is bound, so a GET URL cannot be used for anything else. Keys carry
//! an id so the signing key can be rotated while older URLs stay valid. The
//! key ring is generated once and kept in the data directory
//! (`url-signing-keys`, mode 0600): one `kid base64key` per line, the first
//! one signs.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ObjectKey;
use crate::uid::Uid;

/// The longest validity a URL may have (S3's limit too).
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub const KEY_FILE: &str = "url-signing-keys";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("signing key file {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing key file {path} line {line} is not `kid base64key`")]
    Malformed {
        path: std::path::PathBuf,
        line: usize,
    },
}

/// Why a presented URL is refused. Callers answer every one of them the same
/// way (403); the variants are for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("URL expired")]
    Expired,
    #[error("URL validity longer than allowed")]
    TooLong,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
}

/// What an upload URL is bound to.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadBinding {
    pub study: Uid,
    pub instance: Option<(Uid, Uid)>,
}

impl UploadBinding {
    /// The path below the public URL, which the signature covers.
    pub fn path(&self) -> String {
        match &self.instance {
            Some((series, sop)) => format!("uploads/{}/{series}/{sop}", self.study),
            None => format!("uploads/{}", self.study),
        }
    }

    pub fn parse(raw: &str) -> Option<UploadBinding> {
        let parts: Vec<&str> = raw.split('/').collect();
        let uid = |s: &str| Uid::parse(s).ok();
        match parts.as_slice() {
            [study] => Some(UploadBinding {
                study: uid(study)?,
                instance: None,
            }),
            [study, series, sop] => Some(UploadBinding {
                study: uid(study)?,
                instance: Some((uid(series)?, uid(sop)?)),
            }),
            _ => None,
        }
    }
}

/// The signature parameters of a URL, as received (missing ones are empty,
/// and refused like wrong ones).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct Signature {
    pub exp: u64,
    pub kid: String,
    pub sig: String,
}

#[derive(Clone)]
pub struct UrlSigner {
    /// (kid, key); the first signs.
    /// (kid, HMAC keyed with its secret); the first signs. Keyed once, so
    /// signing a URL costs two SHA-256 blocks, not four.
    keys: Vec<(String, Hmac<Sha256>)>,
    public_url: String,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UrlSigner({} keys, redacted)", self.keys.len())
    }
}

impl UrlSigner {
    /// Loads the key ring from `path`, creating it on first use.
    pub fn load_or_create(path: &Path, public_url: &str) -> Result<UrlSigner, Error> {
        let path = path.to_owned();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let mut key = [0u8; 32];
            let mut kid = [0u8; 4];
            read_random(&mut key).map_err(io)?;
            read_random(&mut kid).map_err(io)?;
            let line = format!("{} {}\n", hex(&kid), STANDARD.encode(key));
            write_private(&path, line.as_bytes()).map_err(io)?;
            tracing::info!(path = %path.display(), "generated a URL signing key");
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let mut keys = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let malformed = || Error::Malformed {
                path: path.clone(),
                line: n + 1,
            };
            let (kid, b64) = line.trim().split_once(' ').ok_or_else(malformed)?;
            let key = STANDARD.decode(b64.trim()).map_err(|_| malformed())?;
            if kid.is_empty() || key.len() < 16 {
                return Err(malformed());
            }
            let keyed = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
            keys.push((kid.to_owned(), keyed));
        }
        if keys.is_empty() {
            return Err(Error::Malformed { path, line: 1 });
        }
        Ok(UrlSigner {
            keys,
            public_url: public_url.trim_end_matches('/').to_owned(),
        })
    }

    /// A download URL for an object, valid for `ttl` (at most [`MAX_TTL`]).
    pub fn file_url(&self, key: &ObjectKey, ttl: Duration, now: SystemTime) -> String {
        crate::metrics::get().signed_url("GET", "gateway");
        self.sign("GET", &format!("files/{}", key.as_str()), ttl, now)
    }

    /// Checks a download URL's signature (a HEAD may use a GET URL).
    pub fn verify_file(
        &self,
        key: &ObjectKey,
        s: &Signature,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        self.verify("GET", &format!("files/{}", key.as_str()), s, now)
    }

    /// An upload (PUT) URL bound to a study, or to one instance of it.
    pub fn upload_url(&self, binding: &UploadBinding, ttl: Duration, now: SystemTime) -> String {
        crate::metrics::get().signed_url("PUT", "gateway");
        self.sign("PUT", &binding.path(), ttl, now)
    }

    pub fn verify_upload(
        &self,
        binding: &UploadBinding,
        s: &Signature,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        self.verify("PUT", &binding.path(), s, now)
    }

    /// A URL for `method` on `path` (below the public URL), valid for `ttl`
    /// (at most [`MAX_TTL`]) from `now`.
    pub fn sign(&self, method: &str, path: &str, ttl: Duration, now: SystemTime) -> String {
        let exp = unix(now).saturating_add(ttl.min(MAX_TTL).as_secs());
        let (kid, keyed) = &self.keys[0];
        let mut sig = [0u8; 43];
        let len = URL_SAFE_NO_PAD
            .encode_slice(
                mac(keyed, method, path, exp, kid).finalize().into_bytes(),
                &mut sig,
            )
            .expect("a SHA-256 MAC is 43 characters in base64");
        let sig = std::str::from_utf8(&sig[..len]).expect("base64 is ASCII");
        format!("{}/{path}?exp={exp}&kid={kid}&sig={sig}", self.public_url)
    }

    /// Checks a presented signature for `method` on `path`, in constant time.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        s: &Signature,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        let now = unix(now);
        // `exp` comes from the URL: any u64. Checked, never wrapped.
        let Some(left) = s.exp.checked_sub(now) else {
            return Err(Refusal::Expired);
        };
        if left > MAX_TTL.as_secs() {
            return Err(Refusal::TooLong);
        }
        let (_, keyed) = self
            .keys
            .iter()
            .find(|(kid, _)| *kid == s.kid)
            .ok_or(Refusal::UnknownKey)?;
        let presented = URL_SAFE_NO_PAD
            .decode(&s.sig)
            .map_err(|_| Refusal::BadSignature)?;
        mac(keyed, method, path, s.exp, &s.kid)
            .verify_slice(&presented)
            .map_err(|_| Refusal::BadSignature)
    }
}

fn mac(keyed: &Hmac<Sha256>, method: &str, path: &str, exp: u64, kid: &str) -> Hmac<Sha256> {
    let mut mac = keyed.clone();
    for part in ["v1", method, path, &exp.to_string()] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac.update(kid.as_bytes());
    mac
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_random(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Writes a new file only its owner can read, durably.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        super::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        let u = |s| Uid::parse(s).unwrap();
        ObjectKey::instance(&u("1.2.3"), &u("1.2.3.4"), &u("1.2.3.4.5"))
    }

    fn parse(url: &str) -> Signature {
        let query = url.split_once('?').unwrap().1;
        let get = |k: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_owned()
        };
        Signature {
            exp: get("exp").parse().unwrap(),
            kid: get("kid"),
            sig: get("sig"),
        }
    }

    #[test]
    fn signs_and_verifies_and_refuses_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let signer =
            UrlSigner::load_or_create(&dir.path().join(KEY_FILE), "https://gw.example/").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let url = signer.file_url(&key(), Duration::from_secs(3600), now);
        assert!(url.starts_with(
            "https://gw.example/files/studies/1.2.3/1.2.3.4/1.2.3.4.5.dcm?exp=1800003600&kid="
        ));
        let s = parse(&url);
        assert_eq!(signer.verify_file(&key(), &s, now), Ok(()));
        assert_eq!(
            signer.verify("PUT", &format!("files/{}", key().as_str()), &s, now),
            Err(Refusal::BadSignature)
        );
        let u = |x| Uid::parse(x).unwrap();
        let other = ObjectKey::instance(&u("1.2.3"), &u("1.2.3.4"), &u("1.2.3.4.6"));
        assert_eq!(
            signer.verify_file(&other, &s, now),
            Err(Refusal::BadSignature)
        );
        let later = now + Duration::from_secs(3601);
        assert_eq!(signer.verify_file(&key(), &s, later), Err(Refusal::Expired));
        let stretched = Signature {
            exp: s.exp + 1,
            ..s.clone()
        };
        assert_eq!(
            signer.verify_file(&key(), &stretched, now),
            Err(Refusal::BadSignature)
        );
        let far = Signature {
            exp: 1_800_000_000 + 8 * 24 * 3600,
            ..s.clone()
        };
        assert_eq!(signer.verify_file(&key(), &far, now), Err(Refusal::TooLong));
        let unknown = Signature {
            kid: "nope".into(),
            ..s
        };
        assert_eq!(
            signer.verify_file(&key(), &unknown, now),
            Err(Refusal::UnknownKey)
        );
        // TTL is capped at seven days.
        let capped = parse(&signer.file_url(&key(), Duration::from_secs(30 * 24 * 3600), now));
        assert_eq!(capped.exp, 1_800_000_000 + MAX_TTL.as_secs());
    }

    #[test]
    fn extreme_expiry_times_are_refused_without_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let signer = UrlSigner::load_or_create(&dir.path().join(KEY_FILE), "http://x").unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = parse(&signer.file_url(&key(), Duration::from_secs(60), now));
        for (exp, refusal) in [
            (u64::MAX, Refusal::TooLong),
            (u64::MAX - 1, Refusal::TooLong),
            (0, Refusal::Expired),
        ] {
            let forged = Signature { exp, ..s.clone() };
            assert_eq!(signer.verify_file(&key(), &forged, now), Err(refusal));
        }
        // A clock at the end of what SystemTime holds: still no panic.
        let end = UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        let url = signer.file_url(&key(), Duration::from_secs(60), end);
        assert_eq!(signer.verify_file(&key(), &parse(&url), end), Ok(()));
    }

    #[test]
    fn upload_bindings_parse_only_uids() {
        let b = UploadBinding::parse("1.2.3/1.2.3.4/1.2.3.4.5").unwrap();
        assert_eq!(b.path(), "uploads/1.2.3/1.2.3.4/1.2.3.4.5");
        assert_eq!(
            UploadBinding::parse("1.2.3").unwrap().path(),
            "uploads/1.2.3"
        );
        for bad in [
            "",
            "1.2.3/1.2.3.4",
            "1.2.3/../x/y",
            "1.2.3/a b/c",
            "1.2.3/1.4/1.5/1.6",
        ] {
            assert_eq!(UploadBinding::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_key_ring_is_kept_private_and_reused_and_rotates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = UrlSigner::load_or_create(&dir.path().join(KEY_FILE), "http://x").unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let now = SystemTime::now();
        let old_url = a.file_url(&key(), Duration::from_secs(60), now);
        // Reloaded: same key. Rotated: a new first line signs, the old one still verifies.
        let b = UrlSigner::load_or_create(&dir.path().join(KEY_FILE), "http://x").unwrap();
        assert_eq!(b.verify_file(&key(), &parse(&old_url), now), Ok(()));
        let old = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        let new_line = format!("k2 {}\n", STANDARD.encode([9u8; 32]));
        std::fs::write(dir.path().join(KEY_FILE), new_line + &old).unwrap();
        let c = UrlSigner::load_or_create(&dir.path().join(KEY_FILE), "http://x").unwrap();
        assert!(
            c.file_url(&key(), Duration::from_secs(60), now)
                .contains("kid=k2")
        );
        assert_eq!(c.verify_file(&key(), &parse(&old_url), now), Ok(()));
        assert!(!format!("{c:?}").contains(&STANDARD.encode([9u8; 32])));
    }
}
