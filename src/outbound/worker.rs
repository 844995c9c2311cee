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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::delivery::{Sender, host_of};
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
}

impl Settings {
    fn per_subscription(&self) -> usize {
        (self.concurrency / 2).max(1)
    }
}

/// Delivers until `cancel`; deliveries in flight then finish (each is
/// bounded by the delivery time-out).
pub async fn run(index: Index, sender: Sender, settings: Settings, cancel: CancellationToken) {
    let wake = index.outbox_wake();
    let settings = Arc::new(settings);
    let mut in_flight: HashSet<OutboxKey> = HashSet::new();
    let mut tasks: JoinSet<OutboxKey> = JoinSet::new();
    loop {
        let next = match pass(&index, &sender, &settings, &mut in_flight, &mut tasks).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "webhook outbox unreadable; retrying in a minute");
                Some(now_ms().saturating_add(IDLE_PASS.as_millis() as u64))
            }
        };
        let sleep = next.map_or(IDLE_PASS, |at| {
            Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE_PASS)
        });
        tokio::select! {
            () = cancel.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(key) = done {
                    in_flight.remove(&key);
                }
            }
        }
        // Take every other finished delivery before the next pass.
        while let Some(done) = tasks.try_join_next() {
            if let Ok(key) = done {
                in_flight.remove(&key);
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// One pass; the Unix milliseconds of the earliest retry not yet due.
async fn pass(
    index: &Index,
    sender: &Sender,
    settings: &Arc<Settings>,
    in_flight: &mut HashSet<OutboxKey>,
    tasks: &mut JoinSet<OutboxKey>,
) -> crate::index::Result<Option<u64>> {
    let read = index.clone();
    let (pending, subscriptions) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::index::Error>((read.pending_messages()?, read.subscriptions()?))
    })
    .await
    .expect("outbox read does not panic")?;
    let subscriptions: HashMap<String, Subscription> = subscriptions
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
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
    for (key, message) in pending {
        let sub_id = key.subscription().to_owned();
        let Some(subscription) = subscriptions.get(&sub_id) else {
            continue; // removed; its messages go with it
        };
        if !subscription.active {
            deactivated.insert(sub_id);
            continue;
        }
        if let Some(study) = &message.event.study {
            // Only the first pending message of a study goes.
            if !blocked.insert((sub_id.clone(), study.clone())) {
                continue;
            }
        }
        if in_flight.contains(&key) {
            continue;
        }
        if message.next_at_ms > now {
            next = Some(next.map_or(message.next_at_ms, |n| n.min(message.next_at_ms)));
            continue;
        }
        let busy = per_subscription.entry(sub_id).or_default();
        if in_flight.len() >= settings.concurrency || *busy >= settings.per_subscription() {
            continue; // a finishing delivery starts the next pass
        }
        *busy += 1;
        in_flight.insert(key.clone());
        let (index, sender, settings) = (index.clone(), sender.clone(), Arc::clone(settings));
        let subscription = subscription.clone();
        tasks.spawn(async move {
            let done = key.clone();
            let _ = tokio::task::spawn_blocking(move || {
                deliver(&index, &sender, &settings, &subscription, &key, message)
            })
            .await;
            done
        });
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
) {
    let started = Instant::now();
    let at = now_ms();
    let outcome = sender.send(subscription, &message.event, SystemTime::now());
    message.record(at, started.elapsed(), &outcome, &settings.schedule);
    let host = host_of(&subscription.url);
    let id = &message.event.id;
    match (&outcome, message.state) {
        (_, State::Delivered) => tracing::debug!(
            subscription = %subscription.id, message = %id, kind = message.event.kind.as_str(),
            attempts = message.attempts, "webhook delivered"
        ),
        (outcome, state) => tracing::warn!(
            subscription = %subscription.id, endpoint = %host, message = %id,
            kind = message.event.kind.as_str(), attempts = message.attempts,
            outcome = ?outcome, next_attempt_in_ms = (state == State::Pending)
                .then(|| message.next_at_ms.saturating_sub(now_ms())),
            "webhook delivery failed{}", if state == State::Failed { "; giving up" } else { "" }
        ),
    }
    if let Err(e) = index.update_message(key, &message) {
        tracing::error!(message = %id, error = %e, "cannot record a webhook attempt; it will be repeated");
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
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
