//! What happened, as the gateway tells it: one [`Event`] per change, built
//! from the records the change wrote, and its Standard Webhooks body.
//!
//! An event is made once and stored in every subscription's outbox as it
//! is; the body is rendered at each attempt, so an operator who turns
//! `includePatient` off stops patient data leaving even in messages that
//! were already queued. What identifies a patient (HIPAA Safe Harbor's
//! names, identifiers, dates and accession numbers) lives apart from `data`
//! for that reason.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::EventType;
use crate::index::{InstanceRecord, MediaRecord, ReportJob, StudyRecord, StudyTags};
use crate::uid::Uid;

/// One event, as every outbox holding it keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The `webhook-id`, the same on every attempt and for every
    /// subscription: `msg_` + the index's node id + the outbox sequence
    /// number (set when the event is written).
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Unix milliseconds: when it happened.
    pub at_ms: u64,
    /// The study it is about: messages of one study are delivered in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<String>,
    pub data: Map<String, Value>,
    /// Fields of `data` that identify the patient (`patient`,
    /// `accessionNumber`, `studyDate`), sent only to subscriptions with
    /// `includePatient`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub identifying: Map<String, Value>,
}

impl Event {
    fn new(kind: EventType, at_ms: u64, study: Option<String>, data: Value) -> Event {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Event {
            id: String::new(),
            kind,
            at_ms,
            study,
            data,
            identifying: Map::new(),
        }
    }

    fn with_patient(mut self, tags: &StudyTags) -> Event {
        if let Some(p) = patient(tags) {
            self.identifying.insert("patient".into(), p);
        }
        for (name, value) in [
            ("accessionNumber", &tags.accession_number),
            ("studyDate", &tags.study_date),
        ] {
            if let Some(v) = value {
                self.identifying.insert(name.into(), json!(v));
            }
        }
        self
    }

    /// The first instance of a study this gateway had not seen.
    pub fn study_received(at_ms: u64, rec: &InstanceRecord, tags: &StudyTags) -> Event {
        let mut data = json!({
            "studyInstanceUid": rec.study_instance_uid,
            "seriesInstanceUid": rec.series_instance_uid,
            "sopInstanceUid": rec.sop_instance_uid,
            "sopClassUid": rec.sop_class_uid,
            "modality": rec.tags.modality,
            "receivedAt": rec.received_at,
            "callingAeTitle": rec.source,
        });
        describe_study(&mut data, tags);
        Event::new(
            EventType::StudyReceived,
            at_ms,
            Some(rec.study_instance_uid.to_string()),
            data,
        )
        .with_patient(tags)
    }

    /// A study that has had no new instance for `stable_after`; `version`
    /// counts its stable events (1 for the first).
    pub fn study_stable(
        at_ms: u64,
        version: u64,
        study: &StudyRecord,
        instances: &[InstanceRecord],
    ) -> Event {
        let mut series = std::collections::BTreeSet::new();
        let mut modalities = std::collections::BTreeSet::new();
        let mut callers = std::collections::BTreeSet::new();
        for i in instances {
            series.insert(i.series_instance_uid.as_str());
            if let Some(m) = i.tags.modality.as_deref() {
                modalities.insert(m);
            }
            callers.insert(i.source.as_str());
        }
        let mut data = json!({
            "studyInstanceUid": study.study_instance_uid,
            "version": version,
            "instanceCount": study.instance_count,
            "seriesCount": series.len(),
            "modalities": modalities,
            "firstReceived": study.first_received,
            "lastReceived": study.last_received,
            "callingAeTitles": callers,
            "totalBytes": study.total_bytes,
        });
        describe_study(&mut data, &study.tags);
        Event::new(
            EventType::StudyStable,
            at_ms,
            Some(study.study_instance_uid.to_string()),
            data,
        )
        .with_patient(&study.tags)
    }

    /// An instance answered with a failure status. The UIDs are the
    /// command's, passed on only when they are UIDs (`null` otherwise, and
    /// the reason says so): a receiver may use them as keys or paths.
    pub fn instance_refused(at_ms: u64, refusal: &Refusal<'_>) -> Event {
        let mut reason = clip(refusal.reason, 1024);
        let mut uid = |raw: &str, name: &str| match Uid::parse(raw) {
            Ok(uid) => Value::String(uid.to_string()),
            Err(_) => {
                reason.push_str(&format!(" ({name} in the command is not a valid UID)"));
                Value::Null
            }
        };
        let sop_instance = uid(refusal.sop_instance_uid, "the SOP Instance UID");
        let sop_class = uid(refusal.sop_class_uid, "the SOP Class UID");
        let data = json!({
            "status": format!("0x{:04X}", refusal.status),
            "reason": reason.trim_start(),
            "callingAeTitle": clip(refusal.calling_ae, 16),
            "sopInstanceUid": sop_instance,
            "sopClassUid": sop_class,
        });
        Event::new(EventType::InstanceRefused, at_ms, None, data)
    }

    /// An instance stored through a signed upload URL.
    pub fn secondary_capture_stored(at_ms: u64, rec: &InstanceRecord, tags: &StudyTags) -> Event {
        let data = json!({
            "studyInstanceUid": rec.study_instance_uid,
            "seriesInstanceUid": rec.series_instance_uid,
            "sopInstanceUid": rec.sop_instance_uid,
            "sopClassUid": rec.sop_class_uid,
            "size": rec.size,
            "receivedAt": rec.received_at,
        });
        Event::new(
            EventType::SecondaryCaptureStored,
            at_ms,
            Some(rec.study_instance_uid.to_string()),
            data,
        )
        .with_patient(tags)
    }

    /// A media file stored with a study: `report.stored` when it is a
    /// report Avara delivered, `media.stored` otherwise.
    pub fn media_stored(at_ms: u64, media: &MediaRecord) -> Event {
        let mut data = json!({
            "studyInstanceUid": media.study_instance_uid,
            "fileName": media.file_name,
            "mimeType": media.mime_type,
            "size": media.size,
            "storedAt": media.stored_at,
        });
        let kind = match &media.report {
            Some(report) => {
                data["reportId"] = json!(report.report_id);
                data["isCritical"] = json!(report.is_critical);
                EventType::ReportStored
            }
            None => EventType::MediaStored,
        };
        Event::new(
            kind,
            at_ms,
            Some(media.study_instance_uid.to_string()),
            data,
        )
    }

    /// A report Avara delivered that could not be fetched or stored.
    pub fn report_failed(at_ms: u64, job: &ReportJob) -> Event {
        let data = json!({
            "reportId": job.report.report_id,
            "studyInstanceUid": job.study_instance_uid,
            "avaraStudyId": job.study_id,
            "isCritical": job.report.is_critical,
            "attempts": job.attempts,
            "error": job.last_error,
        });
        Event::new(
            EventType::ReportFailed,
            at_ms,
            job.study_instance_uid.clone(),
            data,
        )
    }

    /// The message body: `{"type", "timestamp", "data"}`, with
    /// `data.patient` only when `include_patient`.
    pub fn body(&self, include_patient: bool) -> Vec<u8> {
        let mut data = self.data.clone();
        if include_patient {
            data.extend(self.identifying.clone());
        }
        let body = json!({
            "type": self.kind.as_str(),
            "timestamp": rfc3339_ms(self.at_ms),
            "data": data,
        });
        serde_json::to_vec(&body).expect("JSON values serialise")
    }
}

/// What an instance refusal is told with.
#[derive(Debug)]
pub struct Refusal<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub calling_ae: &'a str,
    pub sop_instance_uid: &'a str,
    pub sop_class_uid: &'a str,
}

/// `text` cut to `max` characters, control characters dropped (a peer's
/// AE title or a refusal reason goes to a receiver's logs).
fn clip(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// What the study is, without saying whose it is.
fn describe_study(data: &mut Value, tags: &StudyTags) {
    if let Some(d) = &tags.study_description {
        data["studyDescription"] = json!(d);
    }
}

fn patient(tags: &StudyTags) -> Option<Value> {
    let mut p = Map::new();
    for (name, value) in [
        ("name", &tags.patient_name),
        ("id", &tags.patient_id),
        ("issuer", &tags.issuer_of_patient_id),
        ("birthDate", &tags.patient_birth_date),
        ("sex", &tags.patient_sex),
    ] {
        if let Some(v) = value {
            p.insert(name.into(), json!(v));
        }
    }
    (!p.is_empty()).then_some(Value::Object(p))
}

/// The Unix milliseconds events and messages are timed in.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_data_goes_only_where_it_is_allowed() {
        let rec = InstanceRecord::for_test("1.2.3", "1.2.3.4", "1.2.3.4.5");
        let tags = StudyTags {
            patient_name: Some("Doe^Jane".into()),
            patient_id: Some("P-1".into()),
            accession_number: Some("A-9".into()),
            ..StudyTags::default()
        };
        let event = Event::study_received(1_700_000_000_123, &rec, &tags);
        let without: Value = serde_json::from_slice(&event.body(false)).unwrap();
        let with: Value = serde_json::from_slice(&event.body(true)).unwrap();
        assert_eq!(without["type"], "study.received");
        assert_eq!(without["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(without["data"]["studyInstanceUid"], "1.2.3");
        assert_eq!(without["data"]["callingAeTitle"], "TEST");
        assert!(without["data"].get("patient").is_none());
        assert!(without["data"].get("accessionNumber").is_none());
        assert!(
            !String::from_utf8(event.body(false))
                .unwrap()
                .contains("A-9")
        );
        assert_eq!(with["data"]["accessionNumber"], "A-9");
        assert!(
            !String::from_utf8(event.body(false))
                .unwrap()
                .contains("Doe")
        );
        assert_eq!(with["data"]["patient"]["name"], "Doe^Jane");
        assert_eq!(with["data"]["patient"]["id"], "P-1");
    }

    #[test]
    fn stable_counts_series_modalities_and_callers() {
        let mut a = InstanceRecord::for_test("1.2.3", "1.2.3.1", "1.2.3.1.1");
        a.tags.modality = Some("CT".into());
        let mut b = InstanceRecord::for_test("1.2.3", "1.2.3.2", "1.2.3.2.1");
        b.tags.modality = Some("SR".into());
        b.source = "OTHER".into();
        let study = StudyRecord {
            study_instance_uid: a.study_instance_uid.clone(),
            tags: StudyTags::default(),
            instance_count: 2,
            total_bytes: 20,
            first_received: a.received_at.clone(),
            last_received: b.received_at.clone(),
        };
        let event = Event::study_stable(0, 3, &study, &[a, b]);
        let body: Value = serde_json::from_slice(&event.body(true)).unwrap();
        assert_eq!(body["data"]["version"], 3);
        assert_eq!(body["data"]["seriesCount"], 2);
        assert_eq!(body["data"]["modalities"], json!(["CT", "SR"]));
        assert_eq!(body["data"]["callingAeTitles"], json!(["OTHER", "TEST"]));
        assert_eq!(event.study.as_deref(), Some("1.2.3"));
    }

    #[test]
    fn a_refusal_passes_on_only_valid_uids() {
        let long = "1".repeat(12_000);
        let event = Event::instance_refused(
            0,
            &Refusal {
                status: 0xA900,
                reason: "mismatch",
                calling_ae: "CT\0\n1",
                sop_instance_uid: "1.2.3/../../etc",
                sop_class_uid: &long,
            },
        );
        let body: Value = serde_json::from_slice(&event.body(true)).unwrap();
        assert_eq!(body["data"]["status"], "0xA900");
        assert_eq!(body["data"]["sopInstanceUid"], Value::Null);
        assert_eq!(body["data"]["sopClassUid"], Value::Null);
        assert_eq!(body["data"]["callingAeTitle"], "CT1");
        let reason = body["data"]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("mismatch (the SOP Instance UID"),
            "{reason}"
        );
        assert!(reason.len() < 300, "{reason}");
        let good = Event::instance_refused(
            0,
            &Refusal {
                status: 0xC000,
                reason: "bad",
                calling_ae: "CT",
                sop_instance_uid: "1.2.3.4",
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2",
            },
        );
        assert_eq!(good.data["sopInstanceUid"], "1.2.3.4");
        assert_eq!(good.data["reason"], "bad");
    }
}
