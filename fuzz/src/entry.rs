//! The fuzzed entry points, shared by the cargo-fuzz targets (nightly) and
//! the corpus replay test `tests/fuzz_corpora.rs` (stable), so CI replays
//! every corpus file through exactly what the fuzzer ran.
//!
//! Each function must never panic on any input; the `assert!`s in them are
//! properties that must hold (a failed one is a finding, like a crash).

#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dicom_gateway::dicom::dimse;
use dicom_gateway::ingest::header::{self, ScanLimits};
use dicom_gateway::store::ObjectKey;
use dicom_gateway::store::signer::{Signature, UploadBinding, UrlSigner};
use dicom_gateway::uid::Uid;
use dicom_gateway::webhook::events::{
    Envelope, EphemeralAccess, ReportDelivered, SecondaryCaptureAccess, StudyAccess, StudyRef,
};
use dicom_gateway::webhook::verify::{self, WebhookKeys};

/// A command set as it arrives reassembled from P-DATA.
pub fn command_set(data: &[u8]) {
    if let Ok(cmd) = dimse::Command::parse(data) {
        // Answering whatever was parsed must work too.
        let rsp = dimse::response(&cmd, dimse::status::CANNOT_UNDERSTAND, Some("fuzz"));
        assert!(!rsp.is_empty());
        let _ = cmd.is_request();
    }
}

/// Small limits, so the fuzzer reaches them.
pub fn scan_limits() -> ScanLimits {
    ScanLimits {
        max_header_bytes: 256 * 1024,
        max_depth: 8,
        max_inflated: 4 << 20,
    }
}

/// A stored object's bytes, read with and without its length known.
pub fn header_scan(data: &[u8]) {
    let limits = scan_limits();
    let sized = header::read_header_from_sized(data, Some(data.len() as u64), &limits);
    let streamed = header::read_header_from_with(data, &limits);
    // Knowing the length only makes refusals earlier, never changes a header.
    if let (Ok(a), Ok(b)) = (&sized, &streamed) {
        assert_eq!(a, b);
    }
    assert_eq!(sized.is_ok(), streamed.is_ok(), "{sized:?} vs {streamed:?}");
}

/// The webhook signing key of the corpus (the one of `src/webhook/verify.rs`
/// tests, signed with Python `standardwebhooks`).
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The time the corpus' real signed webhook was signed at.
pub const WEBHOOK_NOW: u64 = 1_795_000_000;

/// Input: `mode byte, webhook-id \n webhook-timestamp \n webhook-signature \n body`.
/// Mode bit 0 set: the signature line is replaced by a valid signature of
/// the rest (so the fuzzer reaches the event decoding behind the check).
pub fn webhook_verify(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |b| *b == b'\n');
    let id = parts.next().unwrap_or_default();
    let ts = parts.next().unwrap_or_default();
    let sig = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    // Header values reach the verifier as `&str` (axum's `to_str`).
    let (Ok(id), Ok(ts), Ok(sig)) = (
        std::str::from_utf8(id),
        std::str::from_utf8(ts),
        std::str::from_utf8(sig),
    ) else {
        return;
    };
    let keys = WebhookKeys::parse(WEBHOOK_SECRET).expect("the corpus key parses");
    let signed;
    let sig = if mode & 1 == 1 {
        signed = sign_webhook(id, ts, body);
        signed.as_str()
    } else {
        sig
    };
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
    ];
    let lookup = |name: &'static str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let now = UNIX_EPOCH + Duration::from_secs(WEBHOOK_NOW);
    match verify::verify(lookup, body, &keys, now) {
        Ok(verified) => {
            assert_eq!(verified.body, body);
            decode_event(body);
        }
        Err(e) => {
            let _ = e.to_string();
            if mode & 1 == 1
                && !id.is_empty()
                && ts
                    .trim()
                    .parse::<u64>()
                    .is_ok_and(|t| t.abs_diff(WEBHOOK_NOW) <= 300)
            {
                panic!("a valid signature was refused: {e}");
            }
        }
    }
}

/// A Standard Webhooks signature of `id.ts.body` under [`WEBHOOK_SECRET`].
fn sign_webhook(id: &str, ts: &str, body: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .expect("base64 key");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// What `POST /webhooks/avara` does with a verified body before any handler
/// touches the index: the envelope, its round trip through the stored event,
/// and the event's data by type.
pub fn decode_event(body: &[u8]) {
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return;
    };
    let stored = serde_json::to_value(&envelope).expect("an envelope serialises");
    let replayed: Envelope = serde_json::from_value(stored).expect("a stored event parses back");
    assert_eq!(replayed.kind, envelope.kind);
    let data = envelope.data;
    match envelope.kind.as_str() {
        "study.access_requested" => {
            if let Ok(e) = serde_json::from_value::<StudyAccess>(data) {
                let _ = Uid::parse(&e.study_instance_uid);
            }
        }
        "secondary_capture.access_requested" => {
            if let Ok(e) = serde_json::from_value::<SecondaryCaptureAccess>(data) {
                let _ = Uid::parse(&e.study_instance_uid);
                for uid in [&e.series_instance_uid, &e.sop_instance_uid]
                    .into_iter()
                    .flatten()
                {
                    let _ = Uid::parse(uid);
                }
            }
        }
        "ephemeral.access_requested" => {
            if let Ok(e) = serde_json::from_value::<EphemeralAccess>(data) {
                for uid in e.study_instance_uids() {
                    let _ = Uid::parse(&uid);
                }
            }
        }
        "patient_study.enrichment_requested" | "clinical_context.enrichment_requested" => {
            if let Ok(e) = serde_json::from_value::<StudyRef>(data) {
                let _ = Uid::parse(&e.study_instance_uid);
            }
        }
        "report.delivered" => {
            let _ = serde_json::from_value::<ReportDelivered>(data);
        }
        _ => {}
    }
}

/// The URL signing key ring of the fuzz runs (written once to a temporary
/// file: the signer loads its keys from a file).
pub fn url_signer() -> &'static UrlSigner {
    static SIGNER: std::sync::OnceLock<UrlSigner> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "dicom-gateway-fuzz-keys-{}",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "k1 MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\nk0 ZnV6emluZy1vbGQta2V5LTAxMjM0NTY3\n",
        )
        .expect("write the fuzz key file");
        let signer = UrlSigner::load_or_create(&path, "http://gw.example").expect("fuzz keys load");
        let _ = std::fs::remove_file(&path);
        signer
    })
}

/// The signed-URL time of the corpus.
pub const URL_NOW: u64 = 1_800_000_000;

/// Input: `mode byte, path ? query`: the path below the public URL (as the
/// router hands it over: `files/<key>` or `uploads/<binding>`) and the raw
/// query string, parsed as axum's `Query<Signature>` does and verified.
/// Mode bit 0 set: the path is signed first and the signed URL's own query
/// is checked too (it must verify).
pub fn signed_url(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let now = UNIX_EPOCH + Duration::from_secs(URL_NOW);
    let signer = url_signer();
    let signature = parse_query(query);
    if let Some(raw) = path.strip_prefix("files/") {
        if let Some(key) = ObjectKey::parse(raw) {
            if let Some(s) = &signature {
                let _ = signer.verify_file(&key, s, now);
            }
            if mode & 1 == 1 {
                let url = signer.file_url(&key, Duration::from_secs(3600), now);
                let own = url.split_once('?').and_then(|(_, q)| parse_query(q));
                let own = own.expect("a signed URL's query parses");
                assert_eq!(signer.verify_file(&key, &own, now), Ok(()), "{url}");
            }
        }
    } else if let Some(raw) = path.strip_prefix("uploads/") {
        if let Some(binding) = UploadBinding::parse(raw) {
            if let Some(s) = &signature {
                let _ = signer.verify_upload(&binding, s, now);
            }
            if mode & 1 == 1 {
                let url = signer.upload_url(&binding, Duration::from_secs(3600), now);
                let own = url.split_once('?').and_then(|(_, q)| parse_query(q));
                let own = own.expect("a signed URL's query parses");
                assert_eq!(signer.verify_upload(&binding, &own, now), Ok(()), "{url}");
            }
        }
    }
    // Any method and path, as the generic verifier sees them.
    if let Some(s) = &signature {
        let _ = signer.verify("GET", path, s, now);
        let _ = signer.verify("PUT", path, s, now);
    }
    let _ = SystemTime::now();
}

/// The query string as axum's `Query<Signature>` extractor parses it.
fn parse_query(query: &str) -> Option<Signature> {
    let uri: axum::http::Uri = format!("/q?{query}").parse().ok()?;
    axum::extract::Query::<Signature>::try_from_uri(&uri)
        .ok()
        .map(|q| q.0)
}
