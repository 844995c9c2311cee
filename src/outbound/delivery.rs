//! One delivery attempt: the message signed with the Standard Webhooks
//! reference implementation (the `standardwebhooks` crate) and POSTed.
//!
//! - The endpoint's addresses go through the report fetcher's SSRF guard
//!   (`crate::reports::address`), checked in the resolver ureq connects
//!   with; link-local addresses (cloud metadata) are always refused,
//!   loopback and private ones unless `webhook_allow_private` is off.
//! - No redirects are followed (a 3xx is a failed attempt), no environment
//!   proxy is used, and the whole attempt has one time limit.
//! - An endpoint URL may carry a token: no error text or log line carries
//!   the URL, only its host.

use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::DefaultConnector;

use super::event::Event;
use super::message::Outcome;
use super::subscription::Subscription;
use crate::reports::address;
use crate::reports::fetch::{Check, Failure, Guarded, explain};

/// Bytes of an answer read (and dropped) so the connection can be reused.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

#[derive(Clone)]
pub struct Sender {
    agent: ureq::Agent,
}

impl Sender {
    pub fn new(allow_private: bool, timeout: Duration) -> Sender {
        let check: Check = if allow_private {
            address::link_local
        } else {
            address::forbidden
        };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent(concat!("dicom-gateway/", env!("CARGO_PKG_VERSION")))
            .build();
        let resolver = Guarded {
            inner: DefaultResolver::default(),
            check,
            setting: "webhook_allow_private",
        };
        Sender {
            agent: ureq::Agent::with_parts(config, DefaultConnector::default(), resolver),
        }
    }

    /// Sends `event` to `subscription` at `now`, signed with every secret
    /// the subscription signs with then. Blocking.
    pub fn send(&self, subscription: &Subscription, event: &Event, now: SystemTime) -> Outcome {
        let body = event.body(subscription.include_patient);
        let timestamp = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let signature = match sign(subscription, &event.id, timestamp, &body, now) {
            Ok(s) => s,
            Err(e) => return Outcome::Error(e),
        };
        let host = host_of(&subscription.url);
        let result = self
            .agent
            .post(&subscription.url)
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .content_type("application/json")
            .send(&body[..]);
        match result {
            Ok(mut answer) => {
                let status = answer.status().as_u16();
                let mut sink = std::io::sink();
                let _ = std::io::copy(
                    &mut answer.body_mut().as_reader().take(MAX_ANSWER_BYTES),
                    &mut sink,
                );
                Outcome::Status(status)
            }
            Err(e) => Outcome::Error(describe(e, &host)),
        }
    }
}

/// The `webhook-signature` value: one `v1,<base64>` per signing secret,
/// space-separated, as Standard Webhooks allows during a rotation.
pub fn sign(
    subscription: &Subscription,
    id: &str,
    timestamp: i64,
    body: &[u8],
    now: SystemTime,
) -> Result<String, String> {
    let mut signatures = Vec::new();
    for secret in subscription.signing_secrets(now) {
        let key = secret
            .key()
            .ok_or_else(|| "a signing secret is not in whsec_ form".to_owned())?;
        let webhook =
            standardwebhooks::Webhook::from_bytes(key).map_err(|e| format!("signing: {e}"))?;
        signatures.push(
            webhook
                .sign(id, timestamp, body)
                .map_err(|e| format!("signing: {e}"))?,
        );
    }
    Ok(signatures.join(" "))
}

/// The URL's host (and port), for logs and errors; never the path or query.
pub fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "?".into())
}

/// ureq's error as our own text, naming the host only (the report
/// fetcher's wording).
fn describe(e: ureq::Error, host: &str) -> String {
    match explain(e, host) {
        Failure::Refused(why) => format!("refused: {why}"),
        Failure::Failed(what) => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{InstanceRecord, StudyTags};
    use crate::outbound::{NewSubscription, SigningSecret};

    fn subscription() -> Subscription {
        let new: NewSubscription = serde_json::from_value(serde_json::json!({
            "name": "RIS", "url": "http://127.0.0.1:9/hook?token=s3cr3t", "events": ["study.received"],
        }))
        .unwrap();
        new.create(SystemTime::now()).unwrap()
    }

    #[test]
    fn a_rotated_subscription_signs_with_both_secrets_and_each_verifies() {
        let mut s = subscription();
        let old = s.secret().clone();
        let now = SystemTime::now();
        s.rotate(SigningSecret::generate().unwrap(), now);
        let rec = InstanceRecord::for_test("1.2.3", "1.2.3.4", "1.2.3.4.5");
        let mut event = Event::study_received(1, &rec, &StudyTags::default());
        event.id = "msg_test".into();
        let body = event.body(false);
        let ts = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let header = sign(&s, &event.id, ts, &body, now).unwrap();
        assert_eq!(header.split(' ').count(), 2);
        for secret in [s.secret(), &old] {
            let mut headers = ureq::http::HeaderMap::new();
            headers.insert("webhook-id", event.id.parse().unwrap());
            headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
            headers.insert("webhook-signature", header.parse().unwrap());
            standardwebhooks::Webhook::new(secret.expose())
                .unwrap()
                .verify(&body, &headers)
                .expect("verifies");
        }
    }

    #[test]
    fn errors_name_the_host_only() {
        let s = subscription();
        let sender = Sender::new(true, Duration::from_secs(2));
        let rec = InstanceRecord::for_test("1.2.3", "1.2.3.4", "1.2.3.4.5");
        let outcome = sender.send(
            &s,
            &Event::study_received(1, &rec, &StudyTags::default()),
            SystemTime::now(),
        );
        let Outcome::Error(text) = outcome else {
            panic!("port 9 answered: {outcome:?}");
        };
        assert!(text.starts_with("127.0.0.1:9"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");

        let strict = Sender::new(false, Duration::from_secs(2));
        let Outcome::Error(text) = strict.send(
            &s,
            &Event::study_received(1, &rec, &StudyTags::default()),
            SystemTime::now(),
        ) else {
            panic!("loopback allowed");
        };
        assert!(text.contains("webhook_allow_private"), "{text}");
    }
}
