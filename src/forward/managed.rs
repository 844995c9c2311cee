//! Forwarding destinations and rules managed through the operator API, as
//! Orthanc's `PUT /modalities/{id}` and dcm4chee's AE and forward-rule
//! configuration: created, replaced and deleted on a running gateway,
//! kept in the index (`v1/forward_config`) so they survive restarts, and
//! applied at once (routes swapped, lanes started or stopped).
//!
//! The configuration file's entries are shown beside them and are
//! read-only here: changing one is a conflict, not a silent override.
//! Every edit is validated as the file is (`crate::config::nodes`,
//! `crate::config::forward`), bounded (list lengths, string lengths, entry
//! counts: the AE titles become metric labels), written and flushed, then
//! applied; edits run one at a time so a check cannot go stale before its
//! write.

use serde::{Deserialize, Serialize};

use super::{Forwarding, file_rule_id};
use crate::config::{DicomNode, ForwardRule, ForwardSettings};
use crate::index::Index;

/// Destinations the API may hold (each is a metric label set).
pub const MAX_DESTINATIONS: usize = 256;
/// Rules the API may hold (each is matched against every stored instance).
pub const MAX_RULES: usize = 256;
/// Entries in one of a rule's filter lists.
pub const MAX_LIST: usize = 256;
/// Longest rule id.
pub const MAX_ID: usize = 64;
/// Path segments of `/api/forward/…` routes: a destination of that name
/// would have its `/api/forward/{ae}/items` and `/retry` shadowed.
const RESERVED: [&str; 2] = ["destinations", "rules"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be acted on as given (422).
    #[error("{0}")]
    Invalid(String),
    /// The request contradicts what exists (409): a file entry, a rule
    /// still naming a destination, items still queued.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("forwarding configuration: {0}")]
    Index(#[source] crate::index::Error),
    #[error("forwarding configuration: the index task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The configuration file: read-only through the API.
    File,
    Api,
}

/// `PUT /api/forward/destinations/{ae}`'s body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationBody {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DestinationView {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    pub id: String,
    #[serde(flatten)]
    pub rule: ForwardRule,
    pub source: Source,
}

/// `GET /api/forward/config`.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    pub destinations: Vec<DestinationView>,
    pub rules: Vec<RuleView>,
}

fn destination_view(node: &DicomNode, source: Source) -> DestinationView {
    DestinationView {
        ae_title: node.ae_title.trim().to_owned(),
        host: node.host.clone(),
        port: node.port,
        tls: node.tls,
        source,
    }
}

/// An AE title from a path: what `[[dicom_nodes]]` accepts, and no
/// backslash (the AE VR's delimiter).
fn check_ae(ae: &str) -> Result<String> {
    let ae = ae.trim();
    if ae.is_empty() || ae.len() > 16 || !ae.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(Error::Invalid(
            "the AE title must be 1–16 printable ASCII characters".into(),
        ));
    }
    if ae.contains('\\') {
        return Err(Error::Invalid("the AE title must not contain '\\'".into()));
    }
    Ok(ae.to_owned())
}

/// A rule id chosen by the caller: 1–64 of `A–Z a–z 0–9 . _ -` (safe in a
/// URL, a log line and an index key; never `file:N`).
fn check_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > MAX_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(Error::Invalid(format!(
            "a rule id is 1–{MAX_ID} characters of A–Z, a–z, 0–9, '.', '_' and '-'"
        )));
    }
    Ok(())
}

impl Forwarding {
    async fn index_op<T: Send + 'static>(
        index: &Index,
        op: impl FnOnce(&Index) -> crate::index::Result<T> + Send + 'static,
    ) -> Result<T> {
        let index = index.clone();
        tokio::task::spawn_blocking(move || op(&index))
            .await
            .map_err(Error::Task)?
            .map_err(Error::Index)
    }

    fn is_file_node(&self, ae: &str) -> bool {
        self.file_nodes.iter().any(|n| n.ae_title.trim() == ae)
    }

    /// Every destination and rule, the file's first.
    pub fn config_view(&self) -> ConfigView {
        let state = self.state();
        let destinations = self
            .file_nodes
            .iter()
            .map(|n| destination_view(n, Source::File))
            .chain(
                state
                    .api_nodes
                    .values()
                    .map(|n| destination_view(n, Source::Api)),
            )
            .collect();
        let rules = self
            .file_rules
            .iter()
            .enumerate()
            .map(|(n, rule)| RuleView {
                id: file_rule_id(n),
                rule: rule.clone(),
                source: Source::File,
            })
            .chain(state.api_rules.iter().map(|(id, rule)| RuleView {
                id: id.clone(),
                rule: rule.clone(),
                source: Source::Api,
            }))
            .collect();
        ConfigView {
            destinations,
            rules,
        }
    }

    /// Creates (true) or replaces (false) an API destination; lanes start,
    /// or the next association goes to the new address.
    pub async fn put_destination(
        &self,
        index: &Index,
        ae: &str,
        body: DestinationBody,
    ) -> Result<(bool, DestinationView)> {
        let ae = check_ae(ae)?;
        if RESERVED.contains(&ae.as_str()) {
            return Err(Error::Invalid(format!(
                "{ae} cannot be an API destination's AE title: \
                 /api/forward/{ae}/… is another route"
            )));
        }
        let _edit = self.edits.lock().await;
        if self.is_file_node(&ae) {
            return Err(Error::Conflict(format!(
                "destination {ae} is defined in the configuration file ([[dicom_nodes]]) \
                 and cannot be changed through the API; edit the file"
            )));
        }
        let node = DicomNode {
            ae_title: ae.clone(),
            host: body.host.trim().to_owned(),
            port: body.port,
            tls: body.tls,
        };
        crate::config::nodes::validate(std::slice::from_ref(&node)).map_err(Error::Invalid)?;
        if !node.host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Invalid(
                "host must be a host name or address (printable ASCII, no spaces)".into(),
            ));
        }
        if node.tls && !self.tls_ca {
            return Err(Error::Invalid(format!(
                "destination {ae} has tls = true and dicom_tls_ca is not set \
                 (its certificate cannot be checked)"
            )));
        }
        {
            let state = self.state();
            if !state.api_nodes.contains_key(&ae) && state.api_nodes.len() >= MAX_DESTINATIONS {
                return Err(Error::Invalid(format!(
                    "at most {MAX_DESTINATIONS} destinations can be created through the API"
                )));
            }
        }
        let stored = node.clone();
        let key = ae.clone();
        let existed = Self::index_op(index, move |i| {
            i.forward_config_put_destination(&key, &stored)
        })
        .await?;
        let moved = self.state().api_nodes.insert(ae.clone(), node.clone()) != Some(node.clone());
        self.reconcile();
        if existed && moved {
            // Items waiting out the old address's back-off go now.
            let key = ae.clone();
            let now = crate::outbound::now_ms();
            Self::index_op(index, move |i| i.forward_reschedule(&key, now)).await?;
        }
        tracing::info!(destination = %ae, address = %node.address(), tls = node.tls,
            created = !existed, "forwarding: destination saved through the API");
        Ok((!existed, destination_view(&node, Source::Api)))
    }

    /// Deletes an API destination: refused while a rule names it, or while
    /// it has queued items unless `purge` (they are then deleted with it).
    /// How many items went.
    pub async fn delete_destination(&self, index: &Index, ae: &str, purge: bool) -> Result<usize> {
        let ae = check_ae(ae)?;
        let _edit = self.edits.lock().await;
        if self.is_file_node(&ae) {
            return Err(Error::Conflict(format!(
                "destination {ae} is defined in the configuration file ([[dicom_nodes]]) \
                 and cannot be deleted through the API; edit the file"
            )));
        }
        let naming: Vec<String> = {
            let state = self.state();
            if !state.api_nodes.contains_key(&ae) {
                return Err(Error::NotFound(format!("forwarding destination {ae}")));
            }
            state
                .api_rules
                .iter()
                .filter(|(_, r)| r.destination.trim() == ae)
                .map(|(id, _)| id.clone())
                .collect()
        };
        if !naming.is_empty() {
            return Err(Error::Conflict(format!(
                "destination {ae} is named by rule(s) {}; delete them first",
                naming.join(", ")
            )));
        }
        if !purge {
            let key = ae.clone();
            let counts = Self::index_op(index, move |i| i.forward_counts(&key)).await?;
            if counts.pending + counts.failed > 0 {
                return Err(Error::Conflict(format!(
                    "destination {ae} has {} pending and {} failed item(s) queued; \
                     DELETE with ?purge=true deletes them with it",
                    counts.pending, counts.failed
                )));
            }
        }
        let key = ae.clone();
        let (_, purged) =
            Self::index_op(index, move |i| i.forward_config_delete_destination(&key)).await?;
        self.state().api_nodes.remove(&ae);
        self.reconcile();
        tracing::info!(destination = %ae, purged, "forwarding: destination deleted through the API");
        Ok(purged)
    }

    /// Creates (true) or replaces (false) an API rule; the next stored
    /// instance is matched against it.
    pub async fn put_rule(
        &self,
        index: &Index,
        id: &str,
        mut rule: ForwardRule,
    ) -> Result<(bool, RuleView)> {
        let _edit = self.edits.lock().await;
        if (0..self.file_rules.len()).any(|n| file_rule_id(n) == id) {
            return Err(Error::Conflict(format!(
                "rule {id} is defined in the configuration file ([[forward]]) and cannot be \
                 changed through the API; edit the file"
            )));
        }
        check_id(id)?;
        self.check_rule(&mut rule)?;
        {
            let state = self.state();
            if !state.api_rules.contains_key(id) && state.api_rules.len() >= MAX_RULES {
                return Err(Error::Invalid(format!(
                    "at most {MAX_RULES} rules can be created through the API"
                )));
            }
        }
        let stored = rule.clone();
        let key = id.to_owned();
        let existed =
            Self::index_op(index, move |i| i.forward_config_put_rule(&key, &stored)).await?;
        self.state().api_rules.insert(id.to_owned(), rule.clone());
        index.set_forward_routes(self.routes());
        self.reconcile();
        tracing::info!(rule = %id, destination = %rule.destination, on = %rule.on,
            created = !existed, "forwarding: rule saved through the API");
        Ok((
            !existed,
            RuleView {
                id: id.to_owned(),
                rule,
                source: Source::Api,
            },
        ))
    }

    /// Deletes an API rule: instances stored from now on are not matched
    /// against it (what it queued stays queued).
    pub async fn delete_rule(&self, index: &Index, id: &str) -> Result<()> {
        let _edit = self.edits.lock().await;
        if (0..self.file_rules.len()).any(|n| file_rule_id(n) == id) {
            return Err(Error::Conflict(format!(
                "rule {id} is defined in the configuration file ([[forward]]) and cannot be \
                 deleted through the API; edit the file"
            )));
        }
        check_id(id).map_err(|_| Error::NotFound("forwarding rule".into()))?;
        // Also one left out at start (its destination gone from the file):
        // not in use, but still stored.
        let key = id.to_owned();
        let stored = Self::index_op(index, move |i| i.forward_config_delete_rule(&key)).await?;
        let in_use = self.state().api_rules.remove(id).is_some();
        if !stored && !in_use {
            return Err(Error::NotFound(format!("forwarding rule {id}")));
        }
        index.set_forward_routes(self.routes());
        self.reconcile();
        tracing::info!(rule = %id, "forwarding: rule deleted through the API");
        Ok(())
    }

    /// The file's checks, with the API's bounds first (so a huge list or
    /// string costs nothing and is never echoed back).
    fn check_rule(&self, rule: &mut ForwardRule) -> Result<()> {
        for (name, list) in [
            ("calling_aets", &rule.calling_aets),
            ("modalities", &rule.modalities),
            ("sop_classes", &rule.sop_classes),
        ] {
            if list.len() > MAX_LIST {
                return Err(Error::Invalid(format!(
                    "{name} has {} entries; at most {MAX_LIST}",
                    list.len()
                )));
            }
            if list.iter().any(|v| v.len() > 64) {
                return Err(Error::Invalid(format!(
                    "{name}: entries are at most 64 characters"
                )));
            }
        }
        if rule.on.len() > 32 {
            return Err(Error::Invalid(
                "on: give \"instance\" or \"study_stable\"".into(),
            ));
        }
        let dest = check_ae(&rule.destination).map_err(|_| {
            Error::Invalid("destination must be an AE title (1–16 characters)".into())
        })?;
        rule.destination = dest.clone();
        let Some(node) = self.node(&dest) else {
            return Err(Error::Invalid(format!(
                "destination {dest:?} is not a forwarding destination; create it with \
                 PUT /api/forward/destinations/{dest} first"
            )));
        };
        // The file's own validation, over this rule and its node (the
        // shared settings are the file's, already valid).
        crate::config::forward::validate(
            std::slice::from_ref(rule),
            &ForwardSettings::default(),
            std::slice::from_ref(&node),
            self.tls_ca,
        )
        .map_err(|e| Error::Invalid(e.strip_prefix("rule 1: ").unwrap_or(&e).to_owned()))
    }
}

#[cfg(test)]
mod tests;
