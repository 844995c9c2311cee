//! What the index keeps per instance and per study. Plain serde structs: the
//! storage encoding (JSON values in sled trees) is private to `index`.

use serde::{Deserialize, Serialize};

use crate::store::ObjectKey;
use crate::uid::Uid;

/// One stored instance: where it is, what it is, and the tags Avara's viewer
/// needs for its manifest (so answering never reads a blob).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub study_instance_uid: Uid,
    pub series_instance_uid: Uid,
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub object_key: ObjectKey,
    /// Size of the stored Part-10 object in bytes.
    pub size: u64,
    pub transfer_syntax_uid: Uid,
    /// RFC 3339, UTC.
    pub received_at: String,
    /// Calling AE title of the association, or the upload source.
    pub source: String,
    #[serde(flatten)]
    pub tags: InstanceTags,
}

/// Series- and image-level tags copied from the header at ingest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTags {
    pub modality: Option<String>,
    pub series_description: Option<String>,
    pub series_number: Option<i64>,
    pub instance_number: Option<i64>,
    pub rows: Option<u32>,
    pub columns: Option<u32>,
    pub bits_allocated: Option<u32>,
    pub bits_stored: Option<u32>,
    pub high_bit: Option<u32>,
    pub pixel_representation: Option<u32>,
    pub photometric_interpretation: Option<String>,
    pub samples_per_pixel: Option<u32>,
    pub number_of_frames: Option<u32>,
    pub rescale_slope: Option<f64>,
    pub rescale_intercept: Option<f64>,
    pub is_float_pixel_data: bool,
    pub is_double_float_pixel_data: bool,
}

/// Patient and study tags, taken from the instances as they arrive (a later
/// instance's non-empty value replaces an earlier one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StudyTags {
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    /// Issuer of Patient ID (0010,0021): prior studies match on both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_of_patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub patient_size: Option<f64>,
    pub patient_weight: Option<f64>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub study_description: Option<String>,
    pub accession_number: Option<String>,
    pub referring_physician_name: Option<String>,
    pub institution_name: Option<String>,
}

#[cfg(test)]
impl InstanceRecord {
    /// A 10-byte CT instance received from `TEST`, for tests.
    pub fn for_test(study: &str, series: &str, sop: &str) -> InstanceRecord {
        let uid = |s: &str| Uid::parse(s).expect("test UID");
        InstanceRecord {
            object_key: crate::store::ObjectKey::instance(&uid(study), &uid(series), &uid(sop)),
            study_instance_uid: uid(study),
            series_instance_uid: uid(series),
            sop_instance_uid: uid(sop),
            sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
            size: 10,
            transfer_syntax_uid: uid("1.2.840.10008.1.2.1"),
            received_at: "2026-11-23T12:00:00.000Z".into(),
            source: "TEST".into(),
            tags: InstanceTags::default(),
        }
    }
}

#[cfg(test)]
impl ReportJob {
    /// A report job received at `received_at` (Unix seconds), for tests.
    pub fn for_test(id: &str, received_at: u64, state: ReportState) -> ReportJob {
        ReportJob {
            report: ReportInfo {
                report_id: id.into(),
                is_critical: false,
                plain_text: None,
            },
            study_id: None,
            study_instance_uid: Some("1.2.3".into()),
            presigned_url: "https://example.com/r.pdf?sig=x".into(),
            received_at,
            deadline: received_at + 3600,
            next_attempt: received_at,
            attempts: 1,
            state,
            last_error: None,
            object_key: None,
        }
    }
}

impl StudyTags {
    /// Takes every value `newer` has.
    pub fn merge(&mut self, newer: &StudyTags) {
        macro_rules! take {
            ($($f:ident),*) => { $( if newer.$f.is_some() { self.$f = newer.$f.clone(); } )* };
        }
        take!(
            patient_name,
            patient_id,
            issuer_of_patient_id,
            patient_birth_date,
            patient_sex,
            patient_size,
            patient_weight,
            study_date,
            study_time,
            study_description,
            accession_number,
            referring_physician_name,
            institution_name
        );
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StudyRecord {
    pub study_instance_uid: Uid,
    #[serde(flatten)]
    pub tags: StudyTags,
    pub instance_count: u64,
    pub total_bytes: u64,
    pub first_received: String,
    pub last_received: String,
}

/// A non-DICOM file kept with a study (PDF, image, video).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaRecord {
    pub study_instance_uid: Uid,
    pub file_name: String,
    pub mime_type: String,
    pub object_key: ObjectKey,
    pub size: u64,
    /// RFC 3339, UTC.
    pub stored_at: String,
    pub source: String,
    /// Set when the file is a report Avara delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportInfo>,
}

/// What Avara said about a delivered report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportInfo {
    pub report_id: String,
    pub is_critical: bool,
    #[serde(default)]
    pub plain_text: Option<String>,
}

/// A `report.delivered` event being worked on: recorded before it is
/// acknowledged, so a restart resumes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportJob {
    pub report: ReportInfo,
    pub study_id: Option<String>,
    pub study_instance_uid: Option<String>,
    /// A bearer URL: never logged, never shown by the API.
    pub presigned_url: String,
    /// Unix seconds.
    pub received_at: u64,
    /// Unix seconds after which the URL is assumed spent.
    pub deadline: u64,
    pub next_attempt: u64,
    pub attempts: u32,
    pub state: ReportState,
    pub last_error: Option<String>,
    pub object_key: Option<ObjectKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReportState {
    Pending,
    Stored,
    Failed,
}

/// Something on its way into the index.
#[derive(Debug, Clone)]
pub enum NewEntry {
    Instance(Box<NewInstance>),
    Media(MediaRecord),
}

impl NewEntry {
    pub fn object_key(&self) -> &ObjectKey {
        match self {
            NewEntry::Instance(i) => &i.record.object_key,
            NewEntry::Media(m) => &m.object_key,
        }
    }
}

/// An instance on its way into the index, with the study tags of its header.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub record: InstanceRecord,
    pub study: StudyTags,
}

/// What putting an instance did: an expected outcome, not an error.
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    /// A SOP Instance UID the index did not have.
    Added,
    /// The same SOP Instance UID was stored before; its entry was replaced.
    /// `previous_key` is set when the old object lived under another key
    /// (the instance moved study or series) and must be deleted.
    Replaced { previous_key: Option<ObjectKey> },
}

/// What [`Index::put_missing`](super::Index::put_missing) did with an entry.
#[derive(Debug, Clone, PartialEq)]
pub enum FillOutcome {
    /// The index did not have it; it does now.
    Added,
    /// The index already had it under this key; its entry was left as is.
    AlreadyIndexed,
    /// The index has the same SOP Instance UID under another key (the store
    /// holds it twice); the entry was left as is.
    IndexedElsewhere(ObjectKey),
}

/// A series and its instances.
pub type Series = (Uid, Vec<InstanceRecord>);

/// Groups a study's instances by series, in the order a reader expects:
/// series by Series Number, instances by Instance Number (UIDs break ties,
/// and what has no number comes last).
pub fn in_viewing_order(instances: Vec<InstanceRecord>) -> Vec<Series> {
    let mut by_series: std::collections::BTreeMap<Uid, Vec<InstanceRecord>> = Default::default();
    for inst in instances {
        by_series
            .entry(inst.series_instance_uid.clone())
            .or_default()
            .push(inst);
    }
    let mut series: Vec<Series> = by_series.into_iter().collect();
    for (_, list) in &mut series {
        list.sort_by_key(|i| {
            (
                i.tags.instance_number.unwrap_or(i64::MAX),
                i.sop_instance_uid.clone(),
            )
        });
    }
    series.sort_by_key(|(uid, list)| (list[0].tags.series_number.unwrap_or(i64::MAX), uid.clone()));
    series
}
