//! The label sets, and the bounding of label values that come from outside.

use prometheus_client::encoding::EncodeLabelSet;

/// The events of Avara's webhook contract; any other type counts as `other`.
const WEBHOOK_EVENTS: &[&str] = &[
    "study.access_requested",
    "secondary_capture.access_requested",
    "ephemeral.access_requested",
    "patient_study.enrichment_requested",
    "clinical_context.enrichment_requested",
    "modality_worklist.requested",
    "report.delivered",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Reason {
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct InstanceLabels {
    pub(super) outcome: &'static str,
    pub(super) status: String,
    pub(super) calling_ae: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Protocol {
    pub(super) protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Operation {
    pub(super) operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct WebhookLabels {
    pub(super) event: &'static str,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Event {
    pub(super) event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SignedUrl {
    pub(super) method: &'static str,
    pub(super) signer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Outcome {
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct State {
    pub(super) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HttpLabels {
    pub(super) route: String,
    pub(super) status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Route {
    pub(super) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Build {
    pub(super) version: &'static str,
    pub(super) commit: &'static str,
}

/// The event-type label of a (verified) webhook body: one of Avara's event
/// types, `other`, or `unreadable` when the body has no type.
pub fn webhook_event(body: &[u8]) -> &'static str {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    match serde_json::from_slice::<Kind>(body) {
        Ok(Kind { kind }) => WEBHOOK_EVENTS
            .iter()
            .find(|e| **e == kind)
            .copied()
            .unwrap_or("other"),
        Err(_) => "unreadable",
    }
}
