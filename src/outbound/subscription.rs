//! A webhook subscription: a named endpoint, the event types it is sent,
//! and the secrets its messages are signed with.
//!
//! Requests ([`NewSubscription`], [`Patch`]) are parsed with unknown fields
//! refused, then checked here, field by field, into a [`Subscription`]; the
//! index stores only checked ones. The stored form holds the secrets (the
//! gateway signs with them): the API answers [`SubscriptionView`], which
//! has none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::secret::{self, SigningSecret};
use super::{Error, Result};

/// How long a secret replaced by a rotation keeps signing, so receivers can
/// switch to the new one without losing a message.
pub const SECRET_OVERLAP: Duration = Duration::from_secs(24 * 60 * 60);

/// An endpoint whose deliveries have all failed for this long is
/// deactivated.
pub const FAILING_LIMIT: Duration = Duration::from_secs(5 * 24 * 60 * 60);

/// Longest endpoint URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Longest name, in characters.
pub const MAX_NAME_LEN: usize = 128;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Secrets replaced within the overlap that are still kept (each keeps its
/// own 24 h); past this many rotations in a day the oldest stops at once, so
/// a message never carries more than a handful of signatures.
const MAX_PREVIOUS_SECRETS: usize = 4;

/// What a subscription can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// The first instance of a study this gateway had not seen.
    #[serde(rename = "study.received")]
    StudyReceived,
    /// No new instance of a study for `stable_after`.
    #[serde(rename = "study.stable")]
    StudyStable,
    /// An instance answered with a failure status.
    #[serde(rename = "instance.refused")]
    InstanceRefused,
    #[serde(rename = "secondary_capture.stored")]
    SecondaryCaptureStored,
    #[serde(rename = "media.stored")]
    MediaStored,
    #[serde(rename = "report.stored")]
    ReportStored,
    #[serde(rename = "report.failed")]
    ReportFailed,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::StudyReceived,
        EventType::StudyStable,
        EventType::InstanceRefused,
        EventType::SecondaryCaptureStored,
        EventType::MediaStored,
        EventType::ReportStored,
        EventType::ReportFailed,
    ];

    /// The name in messages and in the API (`study.received`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::StudyReceived => "study.received",
            EventType::StudyStable => "study.stable",
            EventType::InstanceRefused => "instance.refused",
            EventType::SecondaryCaptureStored => "secondary_capture.stored",
            EventType::MediaStored => "media.stored",
            EventType::ReportStored => "report.stored",
            EventType::ReportFailed => "report.failed",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// A subscription as the index keeps it, secrets included. Never answered
/// as it is: see [`Subscription::view`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    /// `wh_` + 32 hex digits.
    pub id: String,
    pub name: String,
    /// An `http` or `https` URL without credentials, at most
    /// [`MAX_URL_LEN`] bytes (as normalised by the `url` crate).
    pub url: String,
    /// Sorted, without repeats, never empty.
    pub events: Vec<EventType>,
    /// An inactive subscription is kept but sent nothing.
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether messages may carry patient names and identifiers (the URL
    /// may be outside the hospital).
    pub include_patient: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last change, rotation included.
    pub updated_at: u64,
    /// Unix seconds of the first failed attempt since the last delivery
    /// that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<u64>,
    /// Why the gateway deactivated it, when it did (410 Gone, or failing for
    /// [`FAILING_LIMIT`]); cleared when the operator activates it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_reason: Option<String>,
    secret: SigningSecret,
    /// Secrets replaced by rotations, until each one's expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    previous_secrets: Vec<PreviousSecret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PreviousSecret {
    secret: SigningSecret,
    /// Unix seconds; the secret signs while `now < expires_at`.
    expires_at: u64,
}

/// `POST /api/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSubscription {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default = "active_by_default")]
    pub active: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub include_patient: bool,
}

fn active_by_default() -> bool {
    true
}

/// `PATCH /api/webhooks/{id}`: the fields given change, the others stay.
/// `"description": null` (or `""`) removes the description.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
    #[serde(default)]
    pub include_patient: Option<bool>,
}

/// A field that is present, even as `null` (`Some(None)`); absent is `None`.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A [`Patch`] whose fields are all valid, ready to apply.
#[derive(Debug, Default)]
pub struct CheckedPatch {
    name: Option<String>,
    url: Option<String>,
    events: Option<Vec<EventType>>,
    active: Option<bool>,
    description: Option<Option<String>>,
    include_patient: Option<bool>,
}

/// What the operator API shows of a subscription: everything but secrets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub id: String,
    pub name: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub include_patient: bool,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// When the last secret replaced by a rotation stops signing (RFC 3339),
    /// while one still does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<String>,
    /// Since when every delivery has failed (RFC 3339), while they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    /// Why the gateway deactivated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivated_reason: Option<String>,
}

impl NewSubscription {
    /// Checks every field and makes the subscription, with a new id and
    /// secret.
    pub fn create(self, now: SystemTime) -> Result<Subscription> {
        let name = check_name(&self.name)?;
        let url = check_url(&self.url)?;
        let events = check_events(&self.events)?;
        let description = check_description(self.description.as_deref())?;
        let at = unix(now);
        Ok(Subscription {
            id: secret::new_id()?,
            name,
            url,
            events,
            active: self.active,
            description,
            include_patient: self.include_patient,
            created_at: at,
            updated_at: at,
            failing_since: None,
            deactivated_reason: None,
            secret: SigningSecret::generate()?,
            previous_secrets: Vec::new(),
        })
    }
}

impl Patch {
    pub fn check(self) -> Result<CheckedPatch> {
        Ok(CheckedPatch {
            name: self.name.as_deref().map(check_name).transpose()?,
            url: self.url.as_deref().map(check_url).transpose()?,
            events: self.events.as_deref().map(check_events).transpose()?,
            active: self.active,
            description: self
                .description
                .map(|d| check_description(d.as_deref()))
                .transpose()?,
            include_patient: self.include_patient,
        })
    }
}

impl Subscription {
    /// Applies a checked patch (infallible, so it can run inside the index's
    /// compare-and-swap retry).
    pub fn apply(&mut self, patch: &CheckedPatch, now: SystemTime) {
        if let Some(name) = &patch.name {
            self.name.clone_from(name);
        }
        if let Some(url) = &patch.url {
            self.url.clone_from(url);
        }
        if let Some(events) = &patch.events {
            self.events.clone_from(events);
        }
        if let Some(active) = patch.active {
            if active && !self.active {
                // Activated again: a fresh start.
                self.failing_since = None;
                self.deactivated_reason = None;
            }
            self.active = active;
        }
        if let Some(description) = &patch.description {
            self.description.clone_from(description);
        }
        if let Some(include) = patch.include_patient {
            self.include_patient = include;
        }
        self.updated_at = unix(now);
    }

    /// Makes `new` the signing secret; the one it replaces keeps signing for
    /// [`SECRET_OVERLAP`] from `now`.
    pub fn rotate(&mut self, new: SigningSecret, now: SystemTime) {
        let at = unix(now);
        self.previous_secrets.retain(|p| p.expires_at > at);
        let old = std::mem::replace(&mut self.secret, new);
        self.previous_secrets.push(PreviousSecret {
            secret: old,
            expires_at: at.saturating_add(SECRET_OVERLAP.as_secs()),
        });
        let excess = self
            .previous_secrets
            .len()
            .saturating_sub(MAX_PREVIOUS_SECRETS);
        self.previous_secrets.drain(..excess);
        self.updated_at = at;
    }

    /// The current secret (shown to the operator after a create or rotate).
    pub fn secret(&self) -> &SigningSecret {
        &self.secret
    }

    /// Every secret a message sent at `now` is signed with: the current one
    /// first, then those replaced less than [`SECRET_OVERLAP`] ago (Standard
    /// Webhooks puts one `v1,` signature per secret in `webhook-signature`).
    pub fn signing_secrets(&self, now: SystemTime) -> Vec<&SigningSecret> {
        let at = unix(now);
        std::iter::once(&self.secret)
            .chain(
                self.previous_secrets
                    .iter()
                    .rev()
                    .filter(|p| p.expires_at > at)
                    .map(|p| &p.secret),
            )
            .collect()
    }

    /// Takes the result of a delivery into the endpoint's health: success
    /// clears it, 410 Gone deactivates at once, other failures deactivate
    /// once they have lasted [`FAILING_LIMIT`]. Whether it changed anything
    /// (and so must be written).
    pub fn note_delivery(&mut self, succeeded: bool, gone: bool, now: SystemTime) -> bool {
        let at = unix(now);
        if succeeded {
            return self.failing_since.take().is_some();
        }
        if !self.active {
            return false;
        }
        if gone {
            self.deactivate("the endpoint answered 410 Gone".into(), at);
            return true;
        }
        match self.failing_since {
            None => {
                self.failing_since = Some(at);
                true
            }
            Some(since) if at.saturating_sub(since) >= FAILING_LIMIT.as_secs() => {
                self.deactivate(
                    format!("every delivery failed since {}", rfc3339(since)),
                    at,
                );
                true
            }
            Some(_) => false,
        }
    }

    fn deactivate(&mut self, reason: String, at: u64) {
        self.active = false;
        self.deactivated_reason = Some(reason);
        self.updated_at = at;
    }

    /// Whether this subscription is sent `event`.
    pub fn wants(&self, event: EventType) -> bool {
        self.active && self.events.contains(&event)
    }

    /// What the operator API shows at `now`.
    pub fn view(&self, now: SystemTime) -> SubscriptionView {
        let at = unix(now);
        let previous = self
            .previous_secrets
            .iter()
            .map(|p| p.expires_at)
            .filter(|&e| e > at)
            .max();
        SubscriptionView {
            id: self.id.clone(),
            name: self.name.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            active: self.active,
            description: self.description.clone(),
            include_patient: self.include_patient,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
            previous_secret_expires_at: previous.map(rfc3339),
            failing_since: self.failing_since.map(rfc3339),
            deactivated_reason: self.deactivated_reason.clone(),
        }
    }
}

fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "name",
            format!("longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "contains control characters"));
    }
    Ok(name.to_owned())
}

fn check_url(raw: &str) -> Result<String> {
    let too_long = || Error::invalid("url", format!("longer than {MAX_URL_LEN} bytes"));
    if raw.len() > MAX_URL_LEN {
        return Err(too_long());
    }
    let url = url::Url::parse(raw.trim())
        .map_err(|e| Error::invalid("url", format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "url",
            format!("scheme {:?} is not http or https", url.scheme()),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // They would be shown by every GET and logged by every proxy.
        return Err(Error::invalid(
            "url",
            "must not carry credentials (user:password@); the receiver verifies the signature",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("url", "has no host"));
    }
    let url = String::from(url);
    if url.len() > MAX_URL_LEN {
        return Err(too_long());
    }
    Ok(url)
}

fn check_events(names: &[String]) -> Result<Vec<EventType>> {
    if names.is_empty() {
        return Err(Error::invalid("events", "name at least one event type"));
    }
    let mut events = Vec::with_capacity(names.len());
    for name in names {
        let event = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
            let shown: String = name.chars().take(64).collect();
            Error::invalid(
                "events",
                format!("unknown event type {shown:?}; known: {}", known.join(", ")),
            )
        })?;
        events.push(event);
    }
    events.sort_unstable();
    events.dedup();
    Ok(events)
}

fn check_description(description: Option<&str>) -> Result<Option<String>> {
    let Some(text) = description.map(str::trim).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(Error::invalid(
            "description",
            format!("longer than {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::invalid("description", "contains control characters"));
    }
    Ok(Some(text.to_owned()))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests;
