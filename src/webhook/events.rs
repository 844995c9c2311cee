//! The events Avara sends, as far as the gateway reads them. Payloads of
//! older and newer SDKs both parse: fields added later are optional.

use serde::Deserialize;

/// `{ "id": "whe_…", "type": "…", "data": { … } }`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
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

/// `ephemeral.access_requested`: `options` is echoed verbatim by Avara; the
/// studies are in `options.studyInstanceUids`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralAccess {
    #[serde(default)]
    pub options: serde_json::Value,
}

impl EphemeralAccess {
    pub fn study_instance_uids(&self) -> Vec<String> {
        self.options["studyInstanceUids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Events that name a study by its Study Instance UID (enrichment).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StudyRef {
    #[serde(default)]
    pub study_instance_uid: String,
    /// The patient's medical record number, where the event carries one.
    #[serde(default)]
    pub mrn: Option<String>,
}

/// `report.delivered` (older payloads lack `studyInstanceUid`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportDelivered {
    pub is_critical: bool,
    pub presigned_url: String,
    pub report_id: String,
    #[serde(default)]
    pub study_id: Option<String>,
    #[serde(default)]
    pub plain_text: Option<String>,
    #[serde(default)]
    pub study_instance_uid: Option<String>,
}
