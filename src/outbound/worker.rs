//! The delivery worker: takes due messages from the outbox and sends them,
//! a few at a time, never touching ingest's path.
//!
//! Each pass reads the outbox (pending messages only) and starts every
//! message that is due, unless
//! - an earlier message of the same study for the same subscription is
//!   still pending: per-study order is kept, at the cost of one study's
//!   later events waiting for its earlier one's retries;
//! - `concurrency` deliveries are in flight, or half of them (at least one)
//!   for its subscription, so one slow endpoint cannot hold every slot.
//!
//! A pass runs when messages are queued, when a delivery ends, and when the
//! earliest retry is due. Messages of a deactivated subscription are
//! failed (the operator can redeliver them after activating it again).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::delivery::{Sender, host_of};
use super::event::now_ms;
use super::message::{Message, State};
use super::subscription::Subscription;
use crate::index::{Index, OutboxKey};

/// Longest sleep between passes with nothing due (a safety net: queued
/// messages wake the worker).
const IDLE_PASS: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: Vec<Duration>,
    pub concurrency: usize,
    /// How long deliveries in flight may finish at shutdown; those still
    /// under way then are left (and repeated after the next start).
    pub drain: Duration,
}

impl Settings {
    fn per_subscription(&self) -> usize {
        (self.concurrency / 2).max(1)
    }
}

/// The pending messages the worker knows, kept in memory between passes so
/// a pass costs a range scan of what is new, not a read of the whole outbox.
#[derive(Default)]
struct Queue {
    messages: BTreeMap<OutboxKey, Message>,
    /// Per subscription, the highest sequence number read.
    seen: HashMap<String, u64>,
    /// The index's outbox revision the queue was read at (`None`: never).
    rev: Option<u64>,
}

impl Queue {
    /// Reads what is new: everything after a redelivery, a failing or a
    /// removal; otherwise each subscription's messages past those seen.
    fn refresh(
        &mut self,
        index: &Index,
        subscriptions: &[Subscription],
    ) -> crate::index::Result<()> {
        let rev = index.outbox_rev();
        if self.rev != Some(rev) {
            self.messages = index.pending_messages()?.into_iter().collect();
            self.seen.clear();
            for key in self.messages.keys() {
                let seen = self.seen.entry(key.subscription().to_owned()).or_default();
                *seen = (*seen).max(key.seq());
            }
            // Past these, a message is new (messages queued after the
            // revision was read are read again: the map takes them once).
            self.rev = Some(rev);
        }
        for s in subscriptions {
            let after = self.seen.get(&s.id).copied();
            for (key, message) in index.pending_after(&s.id, after)? {
                let seen = self.seen.entry(s.id.clone()).or_default();
                *seen = (*seen).max(key.seq());
                self.messages.insert(key, message);
            }
        }
        Ok(())
    }
}

/// Delivers until `cancel`; deliveries in flight then get `drain` to
/// finish.
pub async fn run(index: Index, sender: Sender, settings: Settings, cancel: CancellationToken) {
    let wake = index.outbox_wake();
    let settings = Arc::new(settings);
    let mut queue = Queue::default();
    let mut in_flight: HashSet<OutboxKey> = HashSet::new();
    let mut tasks: JoinSet<(OutboxKey, Message)> = JoinSet::new();
    loop {
        let next = match pass(
            &index,
            &sender,
            &settings,
            &mut queue,
            &mut in_flight,
            &mut tasks,
        )
        .await
        {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "webhook outbox unreadable; retrying in a minute");
                queue.rev = None;
                Some(now_ms().saturating_add(IDLE_PASS.as_millis() as u64))
            }
        };
        crate::metrics::get().outbox_depth(queue.messages.len());
        let sleep = next.map_or(IDLE_PASS, |at| {
            Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_PASS)
        });
        tokio::select! {
            () = cancel.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                finished(&mut queue, &mut in_flight, done);
            }
        }
        // Take every other finished delivery before the next pass.
        while let Some(done) = tasks.try_join_next() {
            finished(&mut queue, &mut in_flight, done);
        }
    }
    let drained = tokio::time::timeout(settings.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            in_flight = tasks.len(),
            "webhook deliveries still under way at shutdown; they are sent again after the next start"
        );
        tasks.abort_all();
    }
}

/// A delivery ended: the queue takes the message as it now stands.
fn finished(
    queue: &mut Queue,
    in_flight: &mut HashSet<OutboxKey>,
    done: Result<(OutboxKey, Message), tokio::task::JoinError>,
) {
    match done {
        Ok((key, message)) => {
            in_flight.remove(&key);
            if message.state == State::Pending {
                queue.messages.insert(key, message);
            } else {
                queue.messages.remove(&key);
            }
        }
        // A delivery task that panicked: read the outbox again.
        Err(_) => {
            in_flight.clear();
            queue.rev = None;
        }
    }
}

/// One pass; the Unix milliseconds of the earliest retry not yet due.
async fn pass(
    index: &Index,
    sender: &Sender,
    settings: &Arc<Settings>,
    queue: &mut Queue,
    in_flight: &mut HashSet<OutboxKey>,
    tasks: &mut JoinSet<(OutboxKey, Message)>,
) -> crate::index::Result<Option<u64>> {
    let subscriptions = index.subscriptions_snapshot();
    {
        let read = index.clone();
        let subs = Arc::clone(&subscriptions);
        let mut taken = std::mem::take(queue);
        let (back, result) = tokio::task::spawn_blocking(move || {
            let result = taken.refresh(&read, &subs);
            (taken, result)
        })
        .await
        .expect("outbox read does not panic");
        *queue = back;
        result?;
    }
    let by_id: HashMap<&str, &Subscription> =
        subscriptions.iter().map(|s| (s.id.as_str(), s)).collect();
    let now = now_ms();
    let mut next: Option<u64> = None;
    let mut blocked: HashSet<(String, String)> = HashSet::new();
    let mut per_subscription: HashMap<String, usize> = HashMap::new();
    for key in in_flight.iter() {
        *per_subscription
            .entry(key.subscription().to_owned())
            .or_default() += 1;
    }
    let mut deactivated = HashSet::new();
    let mut removed = Vec::new();
    for (key, message) in &queue.messages {
        let sub_id = key.subscription();
        let Some(subscription) = by_id.get(sub_id) else {
            removed.push(key.clone()); // its messages went with it
            continue;
        };
        if !subscription.active {
            deactivated.insert(sub_id.to_owned());
            continue;
        }
        if let Some(study) = &message.event.study {
            // Only the first pending message of a study goes.
            if !blocked.insert((sub_id.to_owned(), study.clone())) {
                continue;
            }
        }
        if in_flight.contains(key) {
            continue;
        }
        if message.next_at_ms > now {
            next = Some(next.map_or(message.next_at_ms, |n| n.min(message.next_at_ms)));
            continue;
        }
        let busy = per_subscription.entry(sub_id.to_owned()).or_default();
        if in_flight.len() >= settings.concurrency || *busy >= settings.per_subscription() {
            continue; // a finishing delivery starts the next pass
        }
        *busy += 1;
        in_flight.insert(key.clone());
        let (index, sender, settings) = (index.clone(), sender.clone(), Arc::clone(settings));
        let (subscription, key, message) = ((*subscription).clone(), key.clone(), message.clone());
        tasks.spawn(async move {
            let done = key.clone();
            let fallback = message.clone();
            let attempted = tokio::task::spawn_blocking(move || {
                deliver(&index, &sender, &settings, &subscription, &key, message)
            })
            .await;
            (done, attempted.unwrap_or(fallback))
        });
    }
    for key in removed {
        queue.messages.remove(&key);
    }
    for id in deactivated {
        let index = index.clone();
        let failed = tokio::task::spawn_blocking(move || index.fail_pending(&id, now_ms()))
            .await
            .expect("outbox write does not panic")?;
        if failed > 0 {
            tracing::warn!(
                count = failed,
                "messages of an inactive webhook subscription failed"
            );
        }
    }
    Ok(next)
}

/// One attempt and its bookkeeping. Blocking.
fn deliver(
    index: &Index,
    sender: &Sender,
    settings: &Settings,
    subscription: &Subscription,
    key: &OutboxKey,
    mut message: Message,
) -> Message {
    let started = Instant::now();
    let at = now_ms();
    let outcome = sender.send(subscription, &message.event, SystemTime::now());
    message.record(at, started.elapsed(), &outcome, &settings.schedule);
    crate::metrics::get().delivery(
        match message.state {
            State::Delivered => "delivered",
            State::Pending => "retry",
            State::Failed => "failed",
        },
        started.elapsed(),
    );
    let host = host_of(&subscription.url);
    let id = &message.event.id;
    match (&outcome, message.state) {
        (_, State::Delivered) => tracing::debug!(
            subscription = %subscription.id, webhook_id = %id, kind = message.event.kind.as_str(),
            attempts = message.attempts, "webhook delivered"
        ),
        (outcome, state) => tracing::warn!(
            subscription = %subscription.id, endpoint = %host, webhook_id = %id,
            kind = message.event.kind.as_str(), attempts = message.attempts,
            outcome = ?outcome, next_attempt_in_ms = (state == State::Pending)
                .then(|| message.next_at_ms.saturating_sub(now_ms())),
            "webhook delivery failed{}", if state == State::Failed { "; giving up" } else { "" }
        ),
    }
    if let Err(e) = index.update_message(key, &message) {
        tracing::error!(webhook_id = %id, error = %e, "cannot record a webhook attempt; it will be repeated");
    }
    // The endpoint's health, written only when it changes.
    let now = SystemTime::now();
    let (ok, gone) = (outcome.succeeded(), outcome.gone());
    if subscription.clone().note_delivery(ok, gone, now) {
        let updated = index.update_subscription(&subscription.id, |s| {
            s.note_delivery(ok, gone, now);
        });
        match updated {
            Ok(Some(s)) if !s.active => {
                tracing::warn!(
                    subscription = %s.id, reason = s.deactivated_reason.as_deref().unwrap_or(""),
                    "webhook subscription deactivated"
                );
                if let Err(e) = index.fail_pending(&s.id, now_ms()) {
                    tracing::error!(error = %e, "cannot fail the messages of a deactivated subscription");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot record a webhook endpoint's health"),
        }
    }
    message
}
