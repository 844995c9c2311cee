//! The events Avara sends, as far as the gateway reads them. Payloads of
//! older and newer SDKs both parse: fields added later are optional.

use serde::Deserialize;

/// `{ "id": "whe_…", "type": "…", "data": { … } }`
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// `study.access_requested`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StudyAccess {
    #[serde(default)]
    pub study_id: Option<String>,
    pub study_instance_uid: String,
}

/// `secondary_capture.access_requested`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryCaptureAccess {
    #[serde(default)]
    pub study_id: Option<String>,
    pub study_instance_uid: String,
    #[serde(default)]
    pub series_instance_uid: Option<String>,
    #[serde(default)]
    pub sop_instance_uid: Option<String>,
}

/// Event types of the contract that this version does not handle yet; they
/// are refused so that Avara retries them later instead of losing them.
pub const NOT_YET: &[&str] = &[
    "report.delivered",
    "ephemeral.access_requested",
    "patient_study.enrichment_requested",
    "clinical_context.enrichment_requested",
    "modality_worklist.requested",
];
