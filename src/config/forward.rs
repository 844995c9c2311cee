//! `[[forward]]` rules and `[forwarding]` settings: which stored instances go
//! on to which `[[dicom_nodes]]` destination, and how hard the gateway tries.
//!
//! A rule names a destination by AE title; the node table says where it is.
//! Rules are checked at start: a rule naming an unknown node, a trigger the
//! gateway does not implement, or a TLS destination without `dicom_tls_ca`
//! refuses the start with the rule's number.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DicomNode;

/// One forwarding rule: instances matching every non-empty filter are
/// queued for `destination` in the transaction that indexes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRule {
    /// AE title of a `[[dicom_nodes]]` entry.
    pub destination: String,
    /// When: `instance` (each stored instance, as soon as it is indexed) or
    /// `study_stable` (every instance of the study once it is told stable,
    /// `stable_after` seconds after its last instance; again, in full, each
    /// time it changes and goes quiet again).
    #[serde(default = "default_on")]
    pub on: String,
    /// Calling AE titles (or `upload` for secondary captures uploaded over
    /// HTTP) whose instances match. Empty: any.
    #[serde(default)]
    pub calling_aets: Vec<String>,
    /// Modalities (0008,0060) that match, e.g. `CT`. Empty: any.
    #[serde(default)]
    pub modalities: Vec<String>,
    /// SOP Class UIDs that match. Empty: any.
    #[serde(default)]
    pub sop_classes: Vec<String>,
}

fn default_on() -> String {
    "instance".into()
}

/// `[forwarding]`: settings shared by every destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardSettings {
    /// Associations open at once to each destination.
    pub associations: usize,
    /// The wait after each failed attempt (`"5s"`, `"10m"`, …); once the
    /// list is used up, its last entry repeats.
    pub retry_schedule: Vec<String>,
    /// How long an item may keep failing before it is given up (failed,
    /// retried only by an operator), e.g. `"7d"`.
    pub max_age: String,
    /// Seconds to wait for a destination's answer (association, C-STORE
    /// response) before the attempt counts as failed.
    pub timeout: u64,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            associations: 2,
            retry_schedule: ["5s", "30s", "2m", "10m"].map(String::from).to_vec(),
            max_age: "7d".into(),
            timeout: 30,
        }
    }
}

impl ForwardSettings {
    /// The retry schedule parsed: 1 to 32 waits of 100 ms to a day.
    pub fn schedule(&self) -> Result<Vec<Duration>, String> {
        let raw = &self.retry_schedule;
        if raw.is_empty() || raw.len() > 32 {
            return Err(format!(
                "retry_schedule has {} entries; give 1 to 32",
                raw.len()
            ));
        }
        raw.iter()
            .map(|text| {
                let wait = humantime::parse_duration(text.trim())
                    .map_err(|e| format!("retry_schedule: {text:?} is not a duration: {e}"))?;
                if wait < Duration::from_millis(100) || wait > Duration::from_secs(24 * 3600) {
                    return Err(format!(
                        "retry_schedule: {text:?} is not between 100 ms and a day"
                    ));
                }
                Ok(wait)
            })
            .collect()
    }

    /// `max_age` parsed: a minute to a year.
    pub fn max_age(&self) -> Result<Duration, String> {
        let age = humantime::parse_duration(self.max_age.trim())
            .map_err(|e| format!("max_age: {:?} is not a duration: {e}", self.max_age))?;
        if age < Duration::from_secs(60) || age > Duration::from_secs(366 * 24 * 3600) {
            return Err(format!(
                "max_age: {:?} is not between a minute and a year",
                self.max_age
            ));
        }
        Ok(age)
    }
}

/// Refuses rules and settings the gateway could not act on, naming the
/// rule (1-based, in file order) and what is wrong.
pub fn validate(
    rules: &[ForwardRule],
    settings: &ForwardSettings,
    nodes: &[DicomNode],
    tls_ca: bool,
) -> Result<(), String> {
    if settings.associations == 0 || settings.associations > 16 {
        return Err(format!(
            "[forwarding] associations = {}: give 1 to 16",
            settings.associations
        ));
    }
    if settings.timeout == 0 || settings.timeout > 3600 {
        return Err(format!(
            "[forwarding] timeout = {}: give 1 to 3600 seconds",
            settings.timeout
        ));
    }
    settings
        .schedule()
        .map_err(|e| format!("[forwarding] {e}"))?;
    settings
        .max_age()
        .map_err(|e| format!("[forwarding] {e}"))?;
    for (n, rule) in rules.iter().enumerate() {
        let n = n + 1;
        let dest = rule.destination.trim();
        let Some(node) = nodes.iter().find(|d| d.ae_title.trim() == dest) else {
            return Err(format!(
                "rule {n}: destination {dest:?} is not a [[dicom_nodes]] ae_title"
            ));
        };
        if node.tls && !tls_ca {
            return Err(format!(
                "rule {n}: destination {dest:?} has tls = true and dicom_tls_ca is not set \
                 (its certificate cannot be checked)"
            ));
        }
        match rule.on.as_str() {
            "instance" | "study_stable" => {}
            other => {
                return Err(format!(
                    "rule {n}: on = {other:?}; give \"instance\" or \"study_stable\""
                ));
            }
        }
        for uid in &rule.sop_classes {
            crate::uid::Uid::parse(uid.trim())
                .map_err(|e| format!("rule {n}: sop_classes: {uid:?}: {e}"))?;
        }
        for list in [&rule.calling_aets, &rule.modalities] {
            if list.iter().any(|v| v.trim().is_empty() || v.len() > 64) {
                return Err(format!(
                    "rule {n}: calling_aets and modalities must be non-empty and short"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Error;

    use super::super::tests::load_toml as load;

    const NODES: &str = "[[dicom_nodes]]\nae_title = \"PACS\"\nhost = \"10.0.0.5\"\nport = 104\n\n\
                         [[dicom_nodes]]\nae_title = \"SECURE\"\nhost = \"h\"\nport = 2762\ntls = true\n\n";

    #[test]
    fn rules_and_settings_are_read() {
        let cfg = load(&format!(
            "{NODES}[[forward]]\ndestination = \"PACS\"\nmodalities = [\"CT\"]\n\n\
             [forwarding]\nassociations = 4\nretry_schedule = [\"1s\", \"1m\"]\nmax_age = \"2d\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.forward.len(), 1);
        assert_eq!(cfg.forward[0].on, "instance");
        assert_eq!(cfg.forwarding.associations, 4);
        assert_eq!(cfg.forwarding.schedule().unwrap().len(), 2);
        assert_eq!(
            cfg.forwarding.max_age().unwrap(),
            std::time::Duration::from_secs(2 * 24 * 3600)
        );
        // Defaults: 2 associations, 5 s … 10 min, a week.
        let d = super::ForwardSettings::default();
        assert_eq!(d.associations, 2);
        assert_eq!(d.schedule().unwrap().last().unwrap().as_secs(), 600);
        assert_eq!(d.max_age().unwrap().as_secs(), 7 * 24 * 3600);
    }

    #[test]
    fn unusable_rules_refuse_the_start_with_a_reason() {
        for (bad, needle) in [
            (
                "[[forward]]\ndestination = \"GHOST\"\n",
                "\"GHOST\" is not a [[dicom_nodes]]",
            ),
            (
                "[[forward]]\ndestination = \"SECURE\"\n",
                "tls = true and dicom_tls_ca is not set",
            ),
            (
                "[[forward]]\ndestination = \"PACS\"\non = \"hourly\"\n",
                "hourly",
            ),
            (
                "[[forward]]\ndestination = \"PACS\"\nsop_classes = [\"1.2/3\"]\n",
                "sop_classes",
            ),
            ("[forwarding]\nassociations = 0\n", "associations"),
            ("[forwarding]\nretry_schedule = []\n", "retry_schedule"),
            ("[forwarding]\nretry_schedule = [\"soon\"]\n", "soon"),
            ("[forwarding]\nmax_age = \"1s\"\n", "max_age"),
        ] {
            match load(&format!("{NODES}{bad}")) {
                Err(Error::Invalid { name, reason }) => {
                    assert_eq!(name, "forward", "{bad}");
                    assert!(reason.contains(needle), "{bad}: {reason}");
                }
                other => panic!("accepted {bad}: {other:?}"),
            }
        }
    }
}
