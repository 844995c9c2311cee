//! Storage Commitment Push Model, SCP side (PS3.4 Annex J).
//!
//! A modality asks (N-ACTION-RQ, Action Type 1) whether the gateway takes
//! responsibility for a list of instances; the gateway answers at once
//! (N-ACTION-RSP) and later tells the outcome per instance
//! (N-EVENT-REPORT-RQ, Event Type 1 all committed, 2 some failed). Many
//! modalities delete their own copy only after that report.
//!
//! The order of things is what makes the promise hold:
//! 1. the request is written to the index and flushed ([`Record`]);
//! 2. then the N-ACTION-RSP (success) goes out;
//! 3. the outcome of every reference is decided ([`decide`]) and kept in the
//!    record, so every retry of the report says the same;
//! 4. the report goes on the requester's association while it is open
//!    (`dicom::association`), else — released, aborted, or not answered
//!    with success — the [`worker`] opens a new association to the
//!    requester (its AE title looked up in `[[dicom_nodes]]`) with retries
//!    and back-off, across restarts;
//! 5. once an N-EVENT-REPORT-RSP with success came back the record is
//!    marked delivered (and pruned a week later).
//!
//! "Committed" means: in the index (an acknowledged instance is durable and
//! indexed at once, the ingest journal included), with the SOP Class the
//! requester named, and its object present in the store — or, with an S3
//! store and the upload backlog, its pending copy on the gateway's disk,
//! which is as durable as the acknowledgement was (`BlobStore::exists`
//! counts it). dcm4chee answers the same way from its database and storage.

pub mod deliver;
pub mod report;
pub mod request;
pub mod worker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::index::{Index, InstanceRecord};
use crate::store::BlobStore;
use crate::uid::Uid;

/// Storage Commitment Push Model SOP Class.
pub const SOP_CLASS: &str = "1.2.840.10008.1.20.1";
/// Its well-known SOP Instance (PS3.4 J.3.5).
pub const SOP_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// Failure Reasons (0008,1197) of the Failed SOP Sequence (PS3.4 J.3.2.2.1.2).
pub mod reason {
    /// The gateway could not decide (index or store unreadable).
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// Not held by the gateway.
    pub const NO_SUCH_OBJECT_INSTANCE: u16 = 0x0112;
    /// Held, but under another SOP Class than the request names.
    pub const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;
}

/// The default waits before each new-association delivery attempt after
/// the first (which is immediate): about 24 h in all, then the request is
/// failed. dcm4chee retries on a similar schedule.
pub const DEFAULT_RETRY: [&str; 10] = [
    "5s", "30s", "2m", "10m", "30m", "1h", "2h", "4h", "8h", "8h",
];

/// Store existence checks in flight at once while deciding a request.
const STORE_CHECKS: usize = 16;

/// Requests marked delivered or failed are kept this long for the operator
/// API, then pruned.
pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

/// One referenced instance, as the requester named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reference {
    /// Referenced SOP Class UID (0008,1150).
    #[serde(rename = "c")]
    pub class: String,
    /// Referenced SOP Instance UID (0008,1155).
    #[serde(rename = "i")]
    pub instance: String,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// A report is owed.
    Pending,
    /// The requester answered the report with success.
    Delivered,
    /// The requester's AE title is not in `[[dicom_nodes]]`: no new
    /// association can reach it. Picked up again when a restart finds it
    /// configured.
    Undeliverable,
    /// Every attempt of the schedule failed.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Undeliverable => "undeliverable",
            State::Failed => "failed",
        }
    }
}

/// A storage commitment request, as kept in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Calling AE title of the association the N-ACTION came on.
    pub requester: String,
    pub transaction_uid: Uid,
    /// The references; emptied (counts kept) once delivered or failed.
    pub references: Vec<Reference>,
    pub instances: usize,
    /// Per reference: 0 committed, else its Failure Reason. `None` until
    /// decided.
    pub outcomes: Option<Vec<u16>>,
    pub committed: usize,
    pub failed: usize,
    pub state: State,
    /// Report deliveries tried (on the requester's association or a new one).
    pub attempts: u32,
    /// Of those, on a new association (the retry schedule counts these).
    #[serde(default)]
    pub new_association_attempts: u32,
    /// Unix milliseconds.
    pub received_at: u64,
    /// Unix milliseconds of the next new-association attempt.
    pub next_attempt_at: u64,
    pub last_error: Option<String>,
}

impl Record {
    pub fn new(requester: String, transaction_uid: Uid, refs: Vec<Reference>, now: u64) -> Self {
        Record {
            requester,
            transaction_uid,
            instances: refs.len(),
            references: refs,
            outcomes: None,
            committed: 0,
            failed: 0,
            state: State::Pending,
            attempts: 0,
            new_association_attempts: 0,
            received_at: now,
            next_attempt_at: now,
            last_error: None,
        }
    }

    /// Keeps `outcomes` and their counts.
    pub fn set_outcomes(&mut self, outcomes: Vec<u16>) {
        self.committed = outcomes.iter().filter(|&&o| o == 0).count();
        self.failed = outcomes.len() - self.committed;
        self.outcomes = Some(outcomes);
    }

    /// Marks the request finished, dropping the lists (the counts stay).
    pub fn finish(&mut self, state: State) {
        self.state = state;
        self.references = Vec::new();
        self.outcomes = None;
    }

    /// The operator API's view of it.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "transactionUid": self.transaction_uid,
            "requesterAe": self.requester,
            "instances": self.instances,
            "committed": self.committed,
            "failed": self.failed,
            "state": self.state.as_str(),
            "attempts": self.attempts,
            "lastError": self.last_error,
            "receivedAt": self.received_at,
        })
    }
}

/// Why a commitment request could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("index: {0}")]
    Index(#[from] crate::index::Error),
    #[error("index task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a retry schedule (`"5s"`, `"2m"`, …): 1 to 32 entries, none over
/// a day.
pub fn parse_schedule(raw: &[String]) -> Result<Vec<Duration>, String> {
    if raw.is_empty() || raw.len() > 32 {
        return Err(format!("has {} entries; give 1 to 32", raw.len()));
    }
    raw.iter()
        .map(|text| {
            let wait = humantime::parse_duration(text.trim())
                .map_err(|e| format!("{text:?} is not a duration: {e}"))?;
            if wait > Duration::from_secs(24 * 3600) {
                return Err(format!("{text:?} is longer than a day"));
            }
            Ok(wait)
        })
        .collect()
}

/// The shared part of the SCP: what associations and the worker both use.
#[derive(Debug)]
pub struct Commitments {
    pub index: Index,
    pub store: BlobStore,
    /// Wakes the worker: a request became deliverable.
    pub wake: tokio::sync::Notify,
    /// Requests whose requester's association is still open: the worker
    /// leaves them alone until the association ends ([`Claim`]).
    claimed: Mutex<HashSet<(String, Uid)>>,
}

/// A request being reported on its requester's association. Dropping it
/// (the association ended) hands the request to the worker, which sends it
/// on a new association if no successful N-EVENT-REPORT-RSP came back.
#[derive(Debug)]
pub struct Claim {
    owner: Arc<Commitments>,
    key: (String, Uid),
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut claimed) = self.owner.claimed.lock() {
            claimed.remove(&self.key);
        }
        self.owner.wake.notify_one();
    }
}

impl Commitments {
    pub fn new(index: Index, store: BlobStore) -> Arc<Commitments> {
        Arc::new(Commitments {
            index,
            store,
            wake: tokio::sync::Notify::new(),
            claimed: Mutex::new(HashSet::new()),
        })
    }

    /// Keeps the worker away from this request while the association lives.
    pub fn claim(self: &Arc<Self>, requester: &str, tx: &Uid) -> Claim {
        let key = (requester.trim().to_owned(), tx.clone());
        if let Ok(mut claimed) = self.claimed.lock() {
            claimed.insert(key.clone());
        }
        Claim {
            owner: Arc::clone(self),
            key,
        }
    }

    pub fn is_claimed(&self, requester: &str, tx: &Uid) -> bool {
        self.claimed
            .lock()
            .map(|c| c.contains(&(requester.trim().to_owned(), tx.clone())))
            .unwrap_or(false)
    }

    /// Writes `record` durably (on a blocking thread).
    pub async fn save(&self, record: &Record) -> Result<(), Error> {
        let index = self.index.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || index.put_commitment(&record)).await??;
        Ok(())
    }

    /// Writes `record` unless a repeated N-ACTION replaced it since it was
    /// read (see [`Index::put_commitment_if_current`]); whether it was.
    pub async fn save_if_current(&self, record: &Record) -> Result<bool, Error> {
        let index = self.index.clone();
        let record = record.clone();
        Ok(tokio::task::spawn_blocking(move || index.put_commitment_if_current(&record)).await??)
    }

    /// Decides the outcome of every reference of `record` (see the module
    /// documentation) and keeps it in the record (not yet saved).
    pub async fn decide(&self, record: &mut Record) {
        let refs = record.references.clone();
        let index = self.index.clone();
        // Index lookups in one blocking task; a failure there is a
        // processing failure of every reference, never a false "committed".
        let found = tokio::task::spawn_blocking(move || {
            refs.iter()
                .map(|r| match Uid::parse(&r.instance) {
                    Ok(uid) => index.instance(&uid).map_err(|_| ()),
                    Err(_) => Ok(None),
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|_| vec![Err(()); record.references.len()]);
        // Store checks (a stat on a local store, a HEAD on S3) a few at a
        // time, in order.
        use futures::StreamExt as _;
        let items: Vec<(String, Result<Option<InstanceRecord>, ()>)> = record
            .references
            .iter()
            .map(|r| r.class.clone())
            .zip(found)
            .collect();
        let outcomes: Vec<u16> = futures::stream::iter(items)
            .map(|(class, found)| {
                let store = self.store.clone();
                async move { outcome(&store, &class, found).await }
            })
            .buffered(STORE_CHECKS)
            .collect()
            .await;
        record.set_outcomes(outcomes);
    }
}

/// The outcome of one reference (0: committed, else its Failure Reason).
async fn outcome(store: &BlobStore, class: &str, found: Result<Option<InstanceRecord>, ()>) -> u16 {
    match found {
        Err(()) => reason::PROCESSING_FAILURE,
        Ok(None) => reason::NO_SUCH_OBJECT_INSTANCE,
        Ok(Some(rec)) if rec.sop_class_uid.as_str() != class => reason::CLASS_INSTANCE_CONFLICT,
        Ok(Some(rec)) => match store.exists(&rec.object_key).await {
            Ok(true) => 0,
            Ok(false) => {
                tracing::warn!(
                    sop_instance_uid = %rec.sop_instance_uid,
                    "indexed instance missing from the store; not committed"
                );
                reason::NO_SUCH_OBJECT_INSTANCE
            }
            Err(e) => {
                tracing::warn!(error = %e, "store check failed; not committed");
                reason::PROCESSING_FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_bounded() {
        let ok: Vec<String> = DEFAULT_RETRY.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(parse_schedule(&ok).unwrap().len(), 10);
        assert!(parse_schedule(&[]).is_err());
        assert!(parse_schedule(&["2d".into()]).is_err());
        assert!(parse_schedule(&["soon".into()]).is_err());
    }

    #[test]
    fn outcomes_are_counted_and_finishing_drops_the_lists() {
        let tx = Uid::parse("1.2.3").unwrap();
        let r = |i: &str| Reference {
            class: "1.2".into(),
            instance: i.into(),
        };
        let mut rec = Record::new("CT".into(), tx, vec![r("1"), r("2"), r("3")], 5);
        rec.set_outcomes(vec![0, 0x0112, 0]);
        assert_eq!((rec.committed, rec.failed, rec.instances), (2, 1, 3));
        rec.finish(State::Delivered);
        assert!(rec.references.is_empty() && rec.outcomes.is_none());
        assert_eq!(rec.summary()["committed"], 2);
        assert_eq!(rec.summary()["state"], "delivered");
    }
}
