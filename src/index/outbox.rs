//! The outbox: every event, queued per subscription in the transaction of
//! the change that caused it, until it is delivered or given up.
//!
//! `v1/outbox` holds messages still to deliver, `v1/outbox_done` delivered
//! and failed ones (for the operator view, until pruned). Both are keyed
//! `<subscription id>/<sequence>`, the sequence from sled's monotonic id
//! generator in 16 hex digits, so one subscription's messages are one
//! prefix scan in the order they were queued.
//!
//! Delivery bookkeeping (attempts, the move to `outbox_done`) is written
//! without a flush of its own: it rides on the next flush. A crash can then
//! only repeat a delivery (at-least-once, same `webhook-id`), never lose one.

use sled::Transactional;

use super::*;
pub(super) use crate::outbound::now_ms;
use crate::outbound::{Event, Message, State};

/// A message's place in the outbox: `<subscription id>/<sequence>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxKey(String);

impl OutboxKey {
    fn new(subscription: &str, seq: u64) -> OutboxKey {
        OutboxKey(format!("{subscription}/{seq:016x}"))
    }

    pub fn subscription(&self) -> &str {
        self.0.split_once('/').map_or("", |(s, _)| s)
    }

    /// The sequence number (0 for a key not of the outbox's form).
    pub fn seq(&self) -> u64 {
        self.0
            .split_once('/')
            .and_then(|(_, hex)| u64::from_str_radix(hex, 16).ok())
            .unwrap_or(0)
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn from_raw(raw: &[u8]) -> OutboxKey {
        OutboxKey(String::from_utf8_lossy(raw).into_owned())
    }
}

impl std::fmt::Display for OutboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// This index's node id, made at its first open.
pub(super) fn node_id(meta: &sled::Tree) -> Result<String> {
    if let Some(v) = meta.get("node").map_err(db_err("read node id"))? {
        return Ok(String::from_utf8_lossy(&v).into_owned());
    }
    let mut bytes = [0u8; 6];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::Sync {
        op: "make node id",
        source: std::io::Error::other(e.to_string()),
    })?;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // A concurrent first open cannot happen (sled locks the directory).
    meta.insert("node", id.as_bytes())
        .map_err(db_err("write node id"))?;
    Ok(id)
}

/// Queues `event` for every subscription in `subscriptions` that wants it,
/// inside a transaction; how many messages were queued.
pub(super) fn emit(
    outbox: &TransactionalTree,
    node: &str,
    subscriptions: &[Subscription],
    event: Event,
) -> TxResult<usize> {
    emit_as(outbox, node, subscriptions, event, None)
}

/// Like [`emit`], with the message id given (`webhook-id`), e.g. derived
/// from an ingest journal record, so an event queued again when the record
/// is replayed after a crash carries the id it was delivered with and
/// receivers deduplicate it. Its place in the outbox is still the next
/// sequence number.
pub(super) fn emit_as(
    outbox: &impl super::Kv,
    node: &str,
    subscriptions: &[Subscription],
    mut event: Event,
    id: Option<String>,
) -> TxResult<usize> {
    let wanted: Vec<&Subscription> = subscriptions
        .iter()
        .filter(|s| s.wants(event.kind))
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let seq = outbox.generate_id()?;
    event.id = id.unwrap_or_else(|| format!("msg_{node}{seq:016x}"));
    let message = Message::new(event);
    let value = encode(&message);
    for s in &wanted {
        outbox.insert(OutboxKey::new(&s.id, seq).as_bytes(), value.clone())?;
    }
    Ok(wanted.len())
}

impl Index {
    /// Woken whenever messages are queued (or queued again).
    pub fn outbox_wake(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.outbox_wake)
    }

    /// Bumped by every outbox change but new messages and attempts.
    pub fn outbox_rev(&self) -> u64 {
        self.outbox_rev.load(Ordering::Acquire)
    }

    fn outbox_changed(&self) {
        self.outbox_rev.fetch_add(1, Ordering::AcqRel);
        self.outbox_wake.notify_one();
    }

    /// The subscriptions as last written (no read of the index).
    pub fn subscriptions_snapshot(&self) -> Arc<Vec<Subscription>> {
        Arc::clone(&self.subscriptions.read().expect("subscriptions lock"))
    }

    /// Queues an event that no other write causes (an instance refused).
    /// Not flushed: it becomes durable with the next flush, and nothing
    /// acknowledged depends on it.
    pub fn emit(&self, event: Event) -> Result<usize> {
        let subscriptions = self.subscriptions_snapshot();
        let node = &self.node;
        let queued = self
            .outbox
            .transaction(|outbox| emit(outbox, node, &subscriptions, event.clone()))
            .map_err(tx_error)?;
        if queued > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(queued)
    }

    /// Every message still to deliver, by subscription then in the order
    /// queued.
    pub fn pending_messages(&self) -> Result<Vec<(OutboxKey, Message)>> {
        self.outbox
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("scan outbox"))?;
                Ok((OutboxKey::from_raw(&k), decode(&k, &v)?))
            })
            .collect()
    }

    /// A subscription's pending messages queued after sequence `after`
    /// (all of them for `None`), in order: one range scan.
    pub fn pending_after(
        &self,
        subscription: &str,
        after: Option<u64>,
    ) -> Result<Vec<(OutboxKey, Message)>> {
        let from = match after {
            Some(seq) => OutboxKey::new(subscription, seq.saturating_add(1)).0,
            None => format!("{subscription}/"),
        };
        // '0' follows '/' in ASCII: the end of this subscription's keys.
        let to = format!("{subscription}0");
        self.outbox
            .range(from.into_bytes()..to.into_bytes())
            .map(|kv| {
                let (k, v) = kv.map_err(db_err("scan outbox"))?;
                Ok((OutboxKey::from_raw(&k), decode(&k, &v)?))
            })
            .collect()
    }

    /// Writes a message back after an attempt: still pending, or moved to
    /// the finished ones. Skipped (`false`) if the message is no longer
    /// pending under `key` (its subscription was removed meanwhile).
    pub fn update_message(&self, key: &OutboxKey, message: &Message) -> Result<bool> {
        let value = encode(message);
        let finished = message.state != State::Pending;
        (&self.outbox, &self.outbox_done)
            .transaction(|(outbox, done)| {
                if outbox.get(key.as_bytes())?.is_none() {
                    return Ok(false);
                }
                if finished {
                    outbox.remove(key.as_bytes())?;
                    done.insert(key.as_bytes(), value.clone())?;
                } else {
                    outbox.insert(key.as_bytes(), value.clone())?;
                }
                Ok(true)
            })
            .map_err(tx_error)
    }

    /// A subscription's most recent messages (at most `limit`), pending and
    /// finished, newest first.
    pub fn messages(&self, subscription: &str, limit: usize) -> Result<Vec<Message>> {
        let prefix = format!("{subscription}/");
        let mut all: Vec<(Vec<u8>, Message)> = Vec::new();
        for tree in [&self.outbox, &self.outbox_done] {
            for kv in tree.scan_prefix(prefix.as_bytes()).rev().take(limit) {
                let (k, v) = kv.map_err(db_err("scan messages"))?;
                all.push((k.to_vec(), decode(&k, &v)?));
            }
        }
        all.sort_by(|a, b| b.0.cmp(&a.0));
        all.truncate(limit);
        Ok(all.into_iter().map(|(_, m)| m).collect())
    }

    /// Queues one of a subscription's messages again, same id, for a new
    /// run of the retry schedule; the message as queued, or `None` if the
    /// subscription has no message with this id.
    pub fn redeliver(&self, subscription: &str, id: &str, now_ms: u64) -> Result<Option<Message>> {
        let prefix = format!("{subscription}/");
        let mut found = None;
        for tree in [&self.outbox, &self.outbox_done] {
            for kv in tree.scan_prefix(prefix.as_bytes()) {
                let (k, v) = kv.map_err(db_err("scan messages"))?;
                let message: Message = decode(&k, &v)?;
                if message.event.id == id {
                    found = Some((k, message));
                    break;
                }
            }
            if found.is_some() {
                break;
            }
        }
        let Some((key, mut message)) = found else {
            return Ok(None);
        };
        message.redeliver(now_ms);
        let value = encode(&message);
        (&self.outbox, &self.outbox_done)
            .transaction(|(outbox, done)| {
                done.remove(&key)?;
                outbox.insert(&key, value.clone())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.flush()?;
        self.outbox_changed();
        Ok(Some(message))
    }

    /// Fails every pending message of a subscription (it was deactivated):
    /// they stay in the view, and can be redelivered.
    pub fn fail_pending(&self, subscription: &str, now_ms: u64) -> Result<usize> {
        let prefix = format!("{subscription}/");
        let mut failed = 0;
        for kv in self.outbox.scan_prefix(prefix.as_bytes()) {
            let (k, v) = kv.map_err(db_err("scan outbox"))?;
            let mut message: Message = decode(&k, &v)?;
            message.finish(State::Failed, now_ms);
            if self.update_message(&OutboxKey::from_raw(&k), &message)? {
                failed += 1;
            }
        }
        if failed > 0 {
            self.outbox_changed();
        }
        Ok(failed)
    }

    /// Forgets every message of a removed subscription.
    pub(super) fn remove_messages(&self, subscription: &str) -> Result<()> {
        let prefix = format!("{subscription}/");
        for tree in [&self.outbox, &self.outbox_done] {
            for kv in tree.scan_prefix(prefix.as_bytes()) {
                let (k, _) = kv.map_err(db_err("scan messages"))?;
                tree.remove(k).map_err(db_err("remove message"))?;
            }
        }
        self.outbox_changed();
        Ok(())
    }

    /// Forgets finished messages that finished before `before_ms`; how
    /// many. Blocking.
    pub fn prune_messages(&self, before_ms: u64) -> Result<usize> {
        let mut pruned = 0;
        for kv in self.outbox_done.iter() {
            let (k, v) = kv.map_err(db_err("scan finished messages"))?;
            let message: Message = decode(&k, &v)?;
            if message.finished_ms.unwrap_or(0) < before_ms {
                self.outbox_done
                    .remove(k)
                    .map_err(db_err("prune message"))?;
                pruned += 1;
            }
        }
        if pruned > 0 {
            self.flush()?;
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::outbound::{NewSubscription, Outcome};

    fn subscription(events: &[&str]) -> Subscription {
        let new: NewSubscription = serde_json::from_value(serde_json::json!({
            "name": "RIS", "url": "http://127.0.0.1:9/", "events": events,
        }))
        .unwrap();
        new.create(SystemTime::now()).unwrap()
    }

    fn instance(study: &str, sop: &str) -> NewEntry {
        NewEntry::Instance(Box::new(NewInstance {
            record: InstanceRecord::for_test(study, &format!("{study}.1"), sop),
            study: StudyTags::default(),
        }))
    }

    #[test]
    fn ingest_queues_study_received_once_per_study_for_those_who_want_it() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let ris = subscription(&["study.received"]);
        let ai = subscription(&["study.stable"]);
        index.add_subscription(&ris).unwrap();
        index.add_subscription(&ai).unwrap();
        index
            .put_batch(&[
                instance("1.2.3", "1.2.3.1.1"),
                instance("1.2.3", "1.2.3.1.2"),
            ])
            .unwrap();
        index.put_batch(&[instance("1.2.3", "1.2.3.1.3")]).unwrap();
        index.put_batch(&[instance("1.2.4", "1.2.4.1.1")]).unwrap();
        let pending = index.pending_messages().unwrap();
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert!(pending.iter().all(|(k, _)| k.subscription() == ris.id));
        let studies: Vec<_> = pending
            .iter()
            .map(|(_, m)| m.event.study.clone().unwrap())
            .collect();
        assert_eq!(studies, ["1.2.3", "1.2.4"], "in the order queued");
        assert_ne!(pending[0].1.event.id, pending[1].1.event.id);
        assert!(pending[0].1.event.id.starts_with("msg_"));

        // What the worker reads between passes: what is new, per subscription.
        let all = index.pending_after(&ris.id, None).unwrap();
        assert_eq!(all.len(), 2);
        let after_first = index.pending_after(&ris.id, Some(all[0].0.seq())).unwrap();
        assert_eq!(after_first, all[1..].to_vec());
        assert!(
            index
                .pending_after(&ris.id, Some(all[1].0.seq()))
                .unwrap()
                .is_empty()
        );
        assert!(index.pending_after(&ai.id, None).unwrap().is_empty());
        let rev = index.outbox_rev();
        index.redeliver(&ris.id, "msg_none", 0).unwrap();
        assert_eq!(index.outbox_rev(), rev, "nothing changed");

        // A rebuild from the store tells nobody.
        index
            .put_missing(&[instance("1.2.5", "1.2.5.1.1")])
            .unwrap();
        assert_eq!(index.pending_messages().unwrap().len(), 2);
    }

    #[test]
    fn messages_move_to_done_and_can_be_redelivered() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let ris = subscription(&["study.received"]);
        index.add_subscription(&ris).unwrap();
        index.put_batch(&[instance("1.2.3", "1.2.3.1.1")]).unwrap();
        let (key, mut message) = index.pending_messages().unwrap().remove(0);
        message.record(1, Duration::ZERO, &Outcome::Status(204), &[Duration::ZERO]);
        assert!(index.update_message(&key, &message).unwrap());
        assert!(index.pending_messages().unwrap().is_empty());
        let listed = index.messages(&ris.id, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, State::Delivered);

        let rev = index.outbox_rev();
        let again = index
            .redeliver(&ris.id, &message.event.id, 5)
            .unwrap()
            .unwrap();
        assert!(
            index.outbox_rev() > rev,
            "a redelivery is seen by cached readers"
        );
        assert_eq!(again.state, State::Pending);
        assert_eq!(
            index.pending_messages().unwrap()[0].1.event.id,
            message.event.id
        );
        assert!(index.redeliver(&ris.id, "msg_none", 5).unwrap().is_none());

        assert_eq!(index.fail_pending(&ris.id, 7).unwrap(), 1);
        assert_eq!(index.prune_messages(7).unwrap(), 0);
        assert_eq!(index.prune_messages(8).unwrap(), 1);
        assert!(index.messages(&ris.id, 10).unwrap().is_empty());
    }
}
