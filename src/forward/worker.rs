//! The lanes: each takes a batch of due items of its destination, sends
//! them on its association (kept open while the queue has items, opened
//! again only when the batch needs contexts it does not have) and settles
//! each item in the index.
//!
//! A destination that cannot be reached is marked down and no lane tries
//! it again before the next step of the retry schedule: a dead PACS costs
//! one connection attempt per step, not a spin. Every item touched by a
//! failed attempt counts it; an item failing for longer than `max_age` is
//! given up (failed, for an operator to retry).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

use super::scu::{self, Context, Link, Outcome};
use super::{Destination, dimse};
use crate::index::{ForwardItem, ForwardState, Index, QueuedItem};
use crate::outbound::now_ms;
use crate::store::backlog::Backlog;
use crate::store::{BlobStore, ObjectKey};

/// Items a lane takes at once (and so at most as many contexts).
const BATCH: usize = 64;

/// Sent items settled between index flushes: at most this many per lane
/// can be sent again after a crash.
pub const FLUSH_EVERY: usize = 8;

/// How long an idle lane sleeps without news (new items wake it at once).
const IDLE: Duration = Duration::from_secs(60);

/// How often the queue depth gauge is refreshed.
const DEPTH_EVERY: Duration = Duration::from_secs(1);

/// Longest error text kept on an item.
const MAX_ERROR: usize = 300;

#[derive(Debug, Clone)]
pub struct Settings {
    pub schedule: Vec<Duration>,
    pub max_age: Duration,
    pub timeout: Duration,
    pub calling_ae: String,
    pub max_pdu: u32,
    /// How nodes with `tls = true` are reached (`None`: no `dicom_tls_ca`).
    pub tls: Option<crate::tls::TlsClient>,
}

impl Settings {
    /// The wait after the `n`th failure (1-based); the last step repeats.
    fn wait(&self, n: u32) -> Duration {
        let i = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
        self.schedule
            .get(i)
            .or(self.schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(600))
    }
}

/// Where lanes read instances and write their bookkeeping.
#[derive(Clone)]
pub struct Sources {
    pub index: Index,
    pub store: BlobStore,
    pub backlog: Option<Arc<Backlog>>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn clip(mut text: String) -> String {
    if text.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// One lane of `dest`, until `stop`; an item being sent when it fires is
/// finished first.
pub async fn lane(
    src: Sources,
    dest: Arc<Destination>,
    settings: Arc<Settings>,
    stop: CancellationToken,
) {
    let mut wake = src.index.forward_wake();
    let mut link: Option<Link> = None;
    // Where `link` goes.
    let mut linked_to: Option<crate::config::DicomNode> = None;
    let metrics = crate::metrics::get();
    while !stop.is_cancelled() {
        let now = now_ms();
        if let Some(until) = dest.live().down_until_ms.filter(|u| *u > now) {
            if let Some(l) = link.take() {
                l.abort().await;
            }
            // Woken early too: the operator API may have moved the
            // destination (it is then no longer down); otherwise the
            // lane finds it still down and sleeps on.
            wake.borrow_and_update();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(until - now)) => {}
                _ = wake.changed() => {}
            }
            continue;
        }
        wake.borrow_and_update();
        let due = match take_due(&src.index, &dest, now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(destination = dest.name(), error = %e, "forward: reading the queue");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
        };
        dest.update(|l| l.next_attempt_ms = due.next_ms);
        if due.items.is_empty() {
            if let Some(l) = link.take() {
                l.release().await;
            }
            // Idle: the gauge must not keep the last busy count.
            sample_depth(&src.index, &dest, true).await;
            let nap = due.next_ms.map_or(IDLE, |n| {
                Duration::from_millis(n.saturating_sub(now)).min(IDLE)
            });
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = wake.changed() => {}
                _ = tokio::time::sleep(nap) => {}
            }
            continue;
        }
        let wanted: BTreeSet<Context> = due.items.iter().map(|q| pair(&q.item)).collect();
        // The operator API may have moved the destination since the
        // association was opened: the next batch goes to where it is now.
        let node = dest.node();
        if link.as_ref().is_some_and(|l| {
            !wanted.iter().all(|p| l.covers(p)) || linked_to.as_ref() != Some(&node)
        }) {
            if let Some(l) = link.take() {
                l.release().await;
            }
        }
        if link.is_none() {
            linked_to = Some(node.clone());
            match scu::connect(
                &node,
                &settings.calling_ae,
                &wanted,
                settings.max_pdu,
                settings.timeout,
                settings.tls.as_ref(),
            )
            .await
            {
                Ok(l) => {
                    link = Some(l);
                    mark_up(&dest);
                }
                Err(scu::Error::NoneAccepted { ae }) => {
                    // It answered: up, and these items can never go there.
                    mark_up(&dest);
                    for q in &due.items {
                        let (class, ts) = pair(&q.item);
                        let why = format!(
                            "{ae} accepted no presentation context for {class} in {ts} \
                             (sent as stored, never transcoded): the transfer syntax \
                             or the SOP class is not supported"
                        );
                        fail(&src.index, &dest, q, why, None).await;
                    }
                    flush(&src.index).await;
                    release_claims(&dest, &due.items);
                    sample_depth(&src.index, &dest, false).await;
                    continue;
                }
                Err(e) => {
                    let next = mark_down(&dest, &settings, &e.to_string());
                    for q in &due.items {
                        let why = e.to_string();
                        retry_later(&src.index, &dest, &settings, q, why, None, Some(next)).await;
                    }
                    release_claims(&dest, &due.items);
                    sample_depth(&src.index, &dest, false).await;
                    continue;
                }
            }
        }
        let mut settled = 0;
        for q in &due.items {
            if stop.is_cancelled() {
                break;
            }
            let Some(l) = link.as_mut() else { break };
            pace().await;
            dest.update(|l| l.in_flight += 1);
            let source = open_object(&src, &q.item.object_key).await;
            let result = l
                .store(&pair(&q.item), q.item.sop_instance_uid.as_str(), source)
                .await;
            dest.update(|l| l.in_flight -= 1);
            match result {
                Ok(Outcome::Answered(r)) => match dimse::verdict(r.status) {
                    dimse::Verdict::Sent => {
                        settle(&src.index, q, None).await;
                        dest.update(|l| l.sent += 1);
                        metrics.forward_sent(dest.name());
                    }
                    dimse::Verdict::Transient => {
                        let why = status_text(r.status, r.comment.as_deref());
                        let status = Some(r.status);
                        retry_later(&src.index, &dest, &settings, q, why, status, None).await;
                    }
                    dimse::Verdict::Permanent => {
                        let why = status_text(r.status, r.comment.as_deref());
                        fail(&src.index, &dest, q, why, Some(r.status)).await;
                    }
                },
                Ok(Outcome::NotAccepted(why)) => fail(&src.index, &dest, q, why, None).await,
                Ok(Outcome::Missing) => {
                    let why = "the instance is no longer in the store".to_owned();
                    fail(&src.index, &dest, q, why, None).await;
                }
                Ok(Outcome::Corrupt(e)) => {
                    let why = format!("the stored object cannot be sent: {e}");
                    fail(&src.index, &dest, q, why, None).await;
                }
                Ok(Outcome::Unreadable(e)) => {
                    let why = format!("reading the stored instance: {e}");
                    retry_later(&src.index, &dest, &settings, q, why, None, None).await;
                }
                Err(e @ scu::Error::Source(_)) => {
                    // Our side failed: the item waits its own back-off, the
                    // destination stays up, the association (mid-data set)
                    // is aborted.
                    tracing::warn!(destination = dest.name(), error = %e, "forward: send abandoned");
                    retry_later(&src.index, &dest, &settings, q, e.to_string(), None, None).await;
                    if let Some(l) = link.take() {
                        l.abort().await;
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(destination = dest.name(), error = %e, "forward: association lost");
                    let next = mark_down(&dest, &settings, &e.to_string());
                    // The instance on the wire may be what breaks it: it
                    // also waits its own turn, so the rest are not stuck
                    // behind it.
                    let own = now_ms()
                        .saturating_add(ms(settings.wait(q.item.attempts.saturating_add(1))));
                    let why = e.to_string();
                    let at = Some(next.max(own));
                    retry_later(&src.index, &dest, &settings, q, why, None, at).await;
                    if let Some(l) = link.take() {
                        l.abort().await;
                    }
                    // The rest of the batch was not tried: unclaimed as is.
                    break;
                }
            }
            settled += 1;
            if settled % FLUSH_EVERY == 0 {
                flush(&src.index).await;
            }
        }
        flush(&src.index).await;
        release_claims(&dest, &due.items);
        sample_depth(&src.index, &dest, false).await;
    }
    if let Some(l) = link.take() {
        l.release().await;
    }
}

/// Test hook (builds with the `failpoints` feature): with
/// `FAILPOINTS=forward::pace=return(MS)` each send waits MS milliseconds
/// first, so a test can kill the gateway in the middle of a queue.
async fn pace() {
    #[cfg(feature = "failpoints")]
    if let Some(Some(ms)) = fail::eval("forward::pace", |arg| {
        arg.and_then(|a| a.parse::<u64>().ok())
    }) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn pair(item: &ForwardItem) -> Context {
    (
        item.sop_class_uid.as_str().to_owned(),
        item.transfer_syntax_uid.as_str().to_owned(),
    )
}

fn status_text(status: u16, comment: Option<&str>) -> String {
    match comment {
        Some(c) => format!("the destination answered status {status:04X}: {c}"),
        None => format!("the destination answered status {status:04X}"),
    }
}

/// Takes (claims) up to [`BATCH`] due items no other lane holds.
async fn take_due(
    index: &Index,
    dest: &Arc<Destination>,
    now: u64,
) -> crate::index::Result<crate::index::Due> {
    let index = index.clone();
    let dest = Arc::clone(dest);
    tokio::task::spawn_blocking(move || {
        let mut claimed = dest.claimed();
        let due = index.forward_due(dest.name(), now, BATCH, &|k| claimed.contains(k))?;
        claimed.extend(due.items.iter().map(|q| q.key.clone()));
        Ok(due)
    })
    .await
    .unwrap_or_else(|e| {
        Err(crate::index::Error::Sync {
            op: "forward queue scan",
            source: std::io::Error::other(e.to_string()),
        })
    })
}

fn release_claims(dest: &Destination, items: &[QueuedItem]) {
    let mut claimed = dest.claimed();
    for q in items {
        claimed.remove(&q.key);
    }
}

fn mark_up(dest: &Destination) {
    dest.update(|l| {
        l.up = Some(true);
        l.connect_failures = 0;
        l.down_until_ms = None;
    });
    crate::metrics::get().forward_up(dest.name(), true);
}

/// Marks the destination down until the next step of the retry schedule
/// and returns that time. Lanes failing together count as one failure.
fn mark_down(dest: &Destination, settings: &Settings, error: &str) -> u64 {
    let now = now_ms();
    let error = clip(error.to_owned());
    let (first, until) = dest.update(|l| {
        let first = l.up != Some(false);
        l.up = Some(false);
        l.last_error = Some(error.clone());
        if let Some(until) = l.down_until_ms.filter(|u| *u > now) {
            return (first, until);
        }
        l.connect_failures = l.connect_failures.saturating_add(1);
        let wait = settings.wait(l.connect_failures);
        let until = now.saturating_add(ms(wait));
        l.down_until_ms = Some(until);
        (first, until)
    });
    if first {
        tracing::warn!(destination = dest.name(), error = %error, "forward: destination down");
    }
    crate::metrics::get().forward_up(dest.name(), false);
    until
}

/// Writes `new` over `q` (or removes it), not flushed; a newer version
/// queued meanwhile is left alone.
async fn settle(index: &Index, q: &QueuedItem, new: Option<ForwardItem>) {
    let index = index.clone();
    let q = q.clone();
    let result = tokio::task::spawn_blocking(move || index.forward_update(&q, new.as_ref())).await;
    match result {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "forward: updating the queue"),
        Err(e) => tracing::error!(error = %e, "forward: updating the queue"),
    }
}

async fn retry_later(
    index: &Index,
    dest: &Destination,
    settings: &Settings,
    q: &QueuedItem,
    why: String,
    status: Option<u16>,
    // The destination's own next attempt when it could not be reached:
    // its items are tried again when it is, not on their own schedule.
    at: Option<u64>,
) {
    let now = now_ms();
    let mut item = q.item.clone();
    item.attempts = item.attempts.saturating_add(1);
    item.last_error = Some(clip(why));
    item.status = status;
    let age = now.saturating_sub(item.enqueued_ms);
    if age > ms(settings.max_age) {
        item.state = ForwardState::Failed;
        let last = item.last_error.take().unwrap_or_default();
        item.last_error = Some(clip(format!(
            "given up after {}: {last}",
            humantime::format_duration(settings.max_age)
        )));
        dest.update(|l| l.failed += 1);
        crate::metrics::get().forward_failed(dest.name());
    } else {
        item.next_attempt_ms =
            at.unwrap_or_else(|| now.saturating_add(ms(settings.wait(item.attempts))));
        dest.update(|l| l.retries += 1);
        crate::metrics::get().forward_retry(dest.name());
    }
    settle(index, q, Some(item)).await;
}

async fn fail(index: &Index, dest: &Destination, q: &QueuedItem, why: String, status: Option<u16>) {
    let mut item = q.item.clone();
    item.attempts = item.attempts.saturating_add(1);
    item.state = ForwardState::Failed;
    item.last_error = Some(clip(why));
    item.status = status;
    tracing::warn!(
        destination = dest.name(),
        sop = %item.sop_instance_uid,
        reason = item.last_error.as_deref().unwrap_or_default(),
        "forward: item failed"
    );
    dest.update(|l| {
        l.failed += 1;
        l.last_error.clone_from(&item.last_error);
    });
    crate::metrics::get().forward_failed(dest.name());
    settle(index, q, Some(item)).await;
}

async fn flush(index: &Index) {
    let index = index.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || index.flush()).await {
        tracing::error!(error = %e, "forward: flushing the queue");
    }
}

/// The queue depth gauge, from a count of the queue: at most once a second
/// per destination (a count reads the whole queue).
async fn sample_depth(index: &Index, dest: &Arc<Destination>, force: bool) {
    let due = dest.update(|l| {
        let due = force || l.sampled_at.is_none_or(|t| t.elapsed() >= DEPTH_EVERY);
        if due {
            l.sampled_at = Some(std::time::Instant::now());
        }
        due
    });
    if !due {
        return;
    }
    let index = index.clone();
    let d = Arc::clone(dest);
    if let Ok(Ok(counts)) =
        tokio::task::spawn_blocking(move || index.forward_counts(d.name())).await
    {
        crate::metrics::get().forward_depth(dest.name(), counts.pending, counts.failed);
    }
}

type Source = Box<dyn AsyncRead + Unpin + Send>;

/// The stored Part-10 object: a local store's file, the pending copy of an
/// instance not yet uploaded, or the object store's stream.
async fn open_object(src: &Sources, key: &ObjectKey) -> std::io::Result<Source> {
    if let Some(path) = src.store.local_path(key) {
        return Ok(Box::new(tokio::fs::File::open(path).await?));
    }
    if let Some(backlog) = &src.backlog {
        // None: uploaded (and gone) since it was acknowledged.
        if let Some(f) = backlog.open_pending(key).await? {
            return Ok(Box::new(f));
        }
    }
    let got = src
        .store
        .object_store()
        .get(&key.to_path())
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound.into(),
            other => std::io::Error::other(crate::store::redacted(&other)),
        })?;
    let stream = got.into_stream().map_err(std::io::Error::other);
    Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
}
