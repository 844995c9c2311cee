//! The forwarding queue: `v1/forward`, `<destination AE> 0x00 <SOP Instance
//! UID>` → [`ForwardItem`] (JSON), one entry per instance still to send to
//! a destination (pending) or given up (failed, until an operator retries).
//!
//! Entries are written in the transaction that indexes the instance, so an
//! acknowledged instance that matches a rule is queued, or neither happened.
//! Keyed by destination and SOP Instance UID, so queueing is idempotent: a
//! replayed journal record finds the instance already indexed as it
//! describes and queues nothing (it was queued, or sent, when first
//! applied); a re-sent instance (a new version) overwrites its entry and is
//! forwarded again. The tree joins the transaction only when rules exist:
//! ingest without forwarding pays nothing.
//!
//! The worker's bookkeeping (attempts, removal once sent) is a
//! compare-and-swap on the exact bytes it read, so a new version queued
//! while the old one was on the wire is never removed or overwritten; it is
//! written without a flush of its own (the worker flushes every few items):
//! a crash can repeat a send, never lose one.

use serde::{Deserialize, Serialize};

use super::*;

/// Why an instance goes to a destination: the filters of one rule, all
/// optional (empty: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardRoute {
    pub destination: String,
    pub calling_aets: Vec<String>,
    pub modalities: Vec<String>,
    pub sop_classes: Vec<String>,
    /// Queued when the study is told stable (all its instances then), not
    /// as each instance is stored.
    pub on_stable: bool,
}

impl ForwardRoute {
    pub fn matches(&self, rec: &InstanceRecord) -> bool {
        let any = |list: &[String], value: &str| {
            list.is_empty() || list.iter().any(|v| v.trim() == value.trim())
        };
        any(&self.calling_aets, &rec.source)
            && any(
                &self.modalities,
                rec.tags.modality.as_deref().unwrap_or_default(),
            )
            && any(&self.sop_classes, rec.sop_class_uid.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    /// Waiting for its (next) attempt.
    Pending,
    /// Given up: a permanent refusal, or retried for longer than the
    /// maximum age. Only an operator's retry sends it again.
    Failed,
}

/// One instance queued for one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardItem {
    pub sop_instance_uid: Uid,
    pub sop_class_uid: Uid,
    pub study_instance_uid: Uid,
    /// As stored (from the file meta at ingest): what is proposed.
    pub transfer_syntax_uid: Uid,
    pub object_key: ObjectKey,
    pub size: u64,
    /// Which write queued it (a journal record id, or a sequence number):
    /// tells two versions of one instance apart.
    pub version: String,
    /// Unix milliseconds.
    pub enqueued_ms: u64,
    pub attempts: u32,
    /// Unix milliseconds before which it is not tried.
    pub next_attempt_ms: u64,
    pub state: ForwardState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The destination's last C-STORE status, if it answered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// An entry as read: its key and exact bytes (for the compare-and-swap)
/// and the item.
#[derive(Debug, Clone)]
pub struct QueuedItem {
    pub key: ForwardKey,
    raw: Vec<u8>,
    pub item: ForwardItem,
}

/// A queue entry's key (opaque).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForwardKey(Vec<u8>);

/// What a due scan found.
#[derive(Debug, Default)]
pub struct Due {
    pub items: Vec<QueuedItem>,
    /// The earliest attempt time of the pending items not yet due.
    pub next_ms: Option<u64>,
}

/// Pending and failed counts of one destination.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ForwardCounts {
    pub pending: usize,
    pub failed: usize,
}

fn prefix(destination: &str) -> Vec<u8> {
    let mut p = destination.trim().as_bytes().to_vec();
    p.push(0);
    p
}

fn key(destination: &str, sop: &Uid) -> Vec<u8> {
    let mut k = prefix(destination);
    k.extend_from_slice(sop.as_str().as_bytes());
    k
}

/// Queues `rec` for every route it matches, inside the indexing
/// transaction; called before the record is written, so a replayed journal
/// record (`record_id` set) that finds the very same record indexed queues
/// nothing. How many entries were written.
pub(super) fn enqueue<K: super::Kv>(
    tx: &Tx<'_, K>,
    forward: &K,
    routes: &[ForwardRoute],
    rec: &InstanceRecord,
    record_id: Option<&str>,
    now: u64,
) -> TxResult<usize> {
    let wanted: Vec<&ForwardRoute> = routes
        .iter()
        .filter(|r| !r.on_stable && r.matches(rec))
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    if record_id.is_some() {
        if let Some(place) = tx.sops.get(rec.sop_instance_uid.as_str().as_bytes())? {
            if let Some(old) = tx.instances.get(&place)? {
                if tx_decode::<InstanceRecord>(&place, &old)? == *rec {
                    return Ok(0);
                }
            }
        }
    }
    let version = match record_id {
        Some(r) => r.to_owned(),
        None => format!("{:016x}", forward.generate_id()?),
    };
    put(forward, &wanted, rec, version, now)
}

/// Queues every instance of a study that was just told stable (its
/// `version`-th time) for the `study_stable` routes it matches, inside the
/// transaction that tells it; how many entries were written.
pub(super) fn enqueue_stable(
    forward: &TransactionalTree,
    routes: &[ForwardRoute],
    instances: &[InstanceRecord],
    version: u64,
    now: u64,
) -> TxResult<usize> {
    let mut written = 0;
    for rec in instances {
        let wanted: Vec<&ForwardRoute> = routes
            .iter()
            .filter(|r| r.on_stable && r.matches(rec))
            .collect();
        if !wanted.is_empty() {
            let version = format!("stable{version}.{:016x}", forward.generate_id()?);
            written += put(forward, &wanted, rec, version, now)?;
        }
    }
    Ok(written)
}

fn put(
    forward: &impl super::Kv,
    wanted: &[&ForwardRoute],
    rec: &InstanceRecord,
    version: String,
    now: u64,
) -> TxResult<usize> {
    let item = ForwardItem {
        sop_instance_uid: rec.sop_instance_uid.clone(),
        sop_class_uid: rec.sop_class_uid.clone(),
        study_instance_uid: rec.study_instance_uid.clone(),
        transfer_syntax_uid: rec.transfer_syntax_uid.clone(),
        object_key: rec.object_key.clone(),
        size: rec.size,
        version,
        enqueued_ms: now,
        attempts: 0,
        next_attempt_ms: now,
        state: ForwardState::Pending,
        last_error: None,
        status: None,
    };
    let value = encode(&item);
    let mut seen = std::collections::HashSet::new();
    for route in wanted {
        // Two rules for one destination queue it once.
        if seen.insert(route.destination.trim()) {
            forward.insert(
                &key(&route.destination, &rec.sop_instance_uid),
                value.clone(),
            )?;
        }
    }
    Ok(seen.len())
}

impl Index {
    /// Sets the routes new instances are matched against (at start, from
    /// the configuration; before the journal is replayed).
    pub fn set_forward_routes(&self, routes: Vec<ForwardRoute>) {
        *self.forward_routes.write().expect("forward routes lock") = Arc::new(routes);
    }

    /// Whether any route queues instances as they are stored (the forward
    /// tree then joins ingest's transactions).
    pub(super) fn forwards_instances(routes: &[ForwardRoute]) -> bool {
        routes.iter().any(|r| !r.on_stable)
    }

    pub(super) fn forward_routes_snapshot(&self) -> Arc<Vec<ForwardRoute>> {
        Arc::clone(&self.forward_routes.read().expect("forward routes lock"))
    }

    /// Changes whenever items are queued (or queued again).
    pub fn forward_wake(&self) -> tokio::sync::watch::Receiver<u64> {
        self.forward_wake.subscribe()
    }

    pub(super) fn forward_queued(&self) {
        self.forward_wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Up to `limit` pending items of `destination` due at `now_ms`, in key
    /// order, skipping those in `skip` (claimed by another association).
    /// Blocking.
    pub fn forward_due(
        &self,
        destination: &str,
        now_ms: u64,
        limit: usize,
        skip: &dyn Fn(&ForwardKey) -> bool,
    ) -> Result<Due> {
        let mut due = Due::default();
        for kv in self.forward.scan_prefix(prefix(destination)) {
            let (k, v) = kv.map_err(db_err("scan forward queue"))?;
            let key = ForwardKey(k.to_vec());
            if skip(&key) {
                continue;
            }
            let item: ForwardItem = decode(&k, &v)?;
            if item.state != ForwardState::Pending {
                continue;
            }
            if item.next_attempt_ms > now_ms {
                due.next_ms = Some(
                    due.next_ms
                        .map_or(item.next_attempt_ms, |n| n.min(item.next_attempt_ms)),
                );
                continue;
            }
            due.items.push(QueuedItem {
                key,
                raw: v.to_vec(),
                item,
            });
            if due.items.len() >= limit {
                break;
            }
        }
        Ok(due)
    }

    /// Replaces `queued` with `new` (or removes it: `None`) if the entry is
    /// still exactly as read; false if another version took its place. Not
    /// flushed. Blocking.
    pub fn forward_update(&self, queued: &QueuedItem, new: Option<&ForwardItem>) -> Result<bool> {
        let swapped = self
            .forward
            .compare_and_swap(&queued.key.0, Some(queued.raw.as_slice()), new.map(encode))
            .map_err(db_err("update forward queue"))?;
        Ok(swapped.is_ok())
    }

    /// Pending and failed counts of `destination`. Blocking.
    pub fn forward_counts(&self, destination: &str) -> Result<ForwardCounts> {
        let mut counts = ForwardCounts::default();
        for kv in self.forward.scan_prefix(prefix(destination)) {
            let (k, v) = kv.map_err(db_err("scan forward queue"))?;
            match decode::<ForwardItem>(&k, &v)?.state {
                ForwardState::Pending => counts.pending += 1,
                ForwardState::Failed => counts.failed += 1,
            }
        }
        Ok(counts)
    }

    /// Up to `limit` items of `destination` in `state` (any: `None`), in
    /// SOP Instance UID order. Blocking.
    pub fn forward_items(
        &self,
        destination: &str,
        state: Option<ForwardState>,
        limit: usize,
    ) -> Result<Vec<ForwardItem>> {
        let mut out = Vec::new();
        for kv in self.forward.scan_prefix(prefix(destination)) {
            let (k, v) = kv.map_err(db_err("scan forward queue"))?;
            let item: ForwardItem = decode(&k, &v)?;
            if state.is_none_or(|s| s == item.state) {
                out.push(item);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Puts every failed item of `destination` back to pending, due now,
    /// its attempts and age counted afresh; how many. Flushed. Blocking.
    pub fn forward_retry(&self, destination: &str, now_ms: u64) -> Result<usize> {
        let mut moved = 0;
        for kv in self.forward.scan_prefix(prefix(destination)) {
            let (k, v) = kv.map_err(db_err("scan forward queue"))?;
            let mut item: ForwardItem = decode(&k, &v)?;
            if item.state != ForwardState::Failed {
                continue;
            }
            item.state = ForwardState::Pending;
            item.attempts = 0;
            item.next_attempt_ms = now_ms;
            item.enqueued_ms = now_ms;
            let swapped = self
                .forward
                .compare_and_swap(&k, Some(&v), Some(encode(&item)))
                .map_err(db_err("retry forward items"))?;
            if swapped.is_ok() {
                moved += 1;
            }
        }
        if moved > 0 {
            self.flush()?;
            self.forward_queued();
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::records::{NewEntry, NewInstance, StudyTags};

    fn entry(sop: &str, modality: &str) -> NewEntry {
        let mut record = InstanceRecord::for_test("1.2.3", "1.2.3.1", sop);
        record.tags.modality = Some(modality.into());
        NewEntry::Instance(Box::new(NewInstance {
            record,
            study: StudyTags::default(),
        }))
    }

    fn route(dest: &str, modalities: &[&str]) -> ForwardRoute {
        ForwardRoute {
            destination: dest.into(),
            modalities: modalities.iter().map(|m| m.to_string()).collect(),
            ..ForwardRoute::default()
        }
    }

    #[test]
    fn queued_with_the_instance_filtered_and_idempotent_on_replay() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        // No routes: nothing queued.
        index.put_batch(&[entry("1.2.3.1.1", "CT")]).unwrap();
        assert_eq!(index.forward_counts("PACS").unwrap().pending, 0);

        index.set_forward_routes(vec![route("PACS", &["CT"]), route("AI", &["MR"])]);
        index
            .put_batch(&[entry("1.2.3.1.2", "CT"), entry("1.2.3.1.3", "MR")])
            .unwrap();
        assert_eq!(index.forward_counts("PACS").unwrap().pending, 1);
        assert_eq!(index.forward_counts("AI").unwrap().pending, 1);

        // A journal record applied, sent, then replayed: not queued again.
        let rec = entry("1.2.3.1.4", "CT");
        index.put_journaled(&rec, "j1").unwrap();
        let due = index.forward_due("PACS", u64::MAX, 10, &|_| false).unwrap();
        assert_eq!(due.items.len(), 2);
        for q in &due.items {
            assert!(index.forward_update(q, None).unwrap());
        }
        index.put_journaled(&rec, "j1").unwrap();
        assert_eq!(index.forward_counts("PACS").unwrap().pending, 0);

        // A new version of the instance is queued again, and the stale
        // bookkeeping of the old one cannot remove it.
        index
            .put_journaled(&entry("1.2.3.1.5", "CT"), "j2")
            .unwrap();
        let old = index.forward_due("PACS", u64::MAX, 10, &|_| false).unwrap();
        let mut newer = entry("1.2.3.1.5", "CT");
        if let NewEntry::Instance(i) = &mut newer {
            i.record.received_at = "2026-11-24T00:00:00.000Z".into();
        }
        index.put_journaled(&newer, "j3").unwrap();
        assert!(!index.forward_update(&old.items[0], None).unwrap());
        let now = index.forward_items("PACS", None, 10).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].version, "j3");
    }

    #[test]
    fn failed_items_are_retried_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        index.set_forward_routes(vec![route("PACS", &[])]);
        index.put_batch(&[entry("1.2.3.1.9", "CT")]).unwrap();
        let due = index.forward_due("PACS", u64::MAX, 10, &|_| false).unwrap();
        let mut failed = due.items[0].item.clone();
        failed.state = ForwardState::Failed;
        failed.last_error = Some("refused".into());
        assert!(index.forward_update(&due.items[0], Some(&failed)).unwrap());
        assert_eq!(
            index.forward_counts("PACS").unwrap(),
            ForwardCounts {
                pending: 0,
                failed: 1
            }
        );
        assert!(
            index
                .forward_due("PACS", u64::MAX, 10, &|_| false)
                .unwrap()
                .items
                .is_empty()
        );
        assert_eq!(index.forward_retry("PACS", 5).unwrap(), 1);
        assert_eq!(
            index
                .forward_due("PACS", 5, 10, &|_| false)
                .unwrap()
                .items
                .len(),
            1
        );
    }
}
