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

/// Event types of the contract that this version does not handle yet; they
/// are refused so that Avara retries them later instead of losing them.
pub const NOT_YET: &[&str] = &[
    "secondary_capture.access_requested",
    "report.delivered",
    "ephemeral.access_requested",
    "patient_study.enrichment_requested",
    "clinical_context.enrichment_requested",
    "modality_worklist.requested",
];
