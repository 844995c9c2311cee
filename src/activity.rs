//! What the DICOM side did lately, kept in memory for the operator page:
//! the associations open now, the last [`RECENT`] that ended, the last
//! [`RECENT`] refused instances with their reasons, and per-minute counts for
//! the last hour.
//!
//! Nothing here is durable: it answers "what is happening right now" when a
//! modality calls, and a restart starts it empty. Every list is a bounded
//! ring and every text a peer chose (AE title, refusal reason, UIDs from a
//! command set) is clipped, so a hostile or chatty peer costs a fixed amount
//! of memory. One mutex, held for a few pointer moves per event; never across
//! an `.await`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Ended associations and refusals kept, each.
pub const RECENT: usize = 200;
/// Minutes of per-minute counts kept (one hour).
pub const MINUTES: usize = 60;
/// Longest text kept from a peer (reasons are ours, but carry peer input).
const MAX_TEXT: usize = 256;
/// UIDs are at most 64 characters when valid; a refused one may not be.
const MAX_UID: usize = 64;

/// The shared handle: cheap to clone, one per gateway.
#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Activity")
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Bounded by `max_associations`: a [`Session`] exists only for an
    /// association that holds a slot.
    open: BTreeMap<u64, AssociationEntry>,
    recent: VecDeque<AssociationEntry>,
    refusals: VecDeque<RefusalEntry>,
    /// Oldest first; at most [`MINUTES`], each a distinct minute.
    minutes: VecDeque<MinuteCount>,
}

/// One association, open or ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssociationEntry {
    pub id: u64,
    pub calling_ae: String,
    pub peer: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Set once it ended.
    pub duration_ms: Option<u64>,
    pub stored: u64,
    pub refused: u64,
    /// How it ended ("released", "aborted by peer", "aborted: …"); `None`
    /// while it is open.
    pub ended: Option<String>,
}

/// One refused instance.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusalEntry {
    /// RFC 3339, UTC.
    pub at: String,
    pub association: u64,
    pub calling_ae: String,
    pub peer: String,
    /// The DIMSE status sent, e.g. 0xA700 (42752).
    pub status: u16,
    pub reason: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
}

/// Instances stored and refused in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MinuteCount {
    /// Unix seconds at the start of the minute.
    pub minute: u64,
    pub stored: u64,
    pub refused: u64,
    pub bytes: u64,
}

/// Everything, newest first, as `GET /api/activity` answers it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Unix seconds when it was taken.
    pub now: u64,
    pub open: Vec<AssociationEntry>,
    pub associations: Vec<AssociationEntry>,
    pub refusals: Vec<RefusalEntry>,
    /// One entry per minute of the last hour, oldest first, zeros included.
    pub per_minute: Vec<MinuteCount>,
}

impl Activity {
    pub fn new() -> Activity {
        Activity::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding it leaves counts, not invariants: go on.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An association was established; what it does is recorded through
    /// the returned session, which records its end when dropped.
    pub fn begin(&self, peer: SocketAddr, calling_ae: &str) -> Session {
        self.begin_at(peer, calling_ae, SystemTime::now())
    }

    fn begin_at(&self, peer: SocketAddr, calling_ae: &str, now: SystemTime) -> Session {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id = inner.next_id.wrapping_add(1);
        inner.open.insert(
            id,
            AssociationEntry {
                id,
                calling_ae: clip(calling_ae, MAX_TEXT),
                peer: peer.to_string(),
                started_at: rfc3339(now),
                duration_ms: None,
                stored: 0,
                refused: 0,
                ended: None,
            },
        );
        Session {
            activity: self.clone(),
            id,
            started: Instant::now(),
            ended: false,
        }
    }

    /// What is recorded now, newest first.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(SystemTime::now())
    }

    fn snapshot_at(&self, now: SystemTime) -> Snapshot {
        let inner = self.lock();
        let this_minute = minute_of(now);
        let first = this_minute.saturating_sub(60 * (MINUTES as u64 - 1));
        let per_minute = (0..MINUTES as u64)
            .map(|i| first + 60 * i)
            .map(|minute| {
                inner
                    .minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(MinuteCount {
                        minute,
                        stored: 0,
                        refused: 0,
                        bytes: 0,
                    })
            })
            .collect();
        Snapshot {
            now: unix(now),
            open: inner.open.values().rev().cloned().collect(),
            associations: inner.recent.iter().rev().cloned().collect(),
            refusals: inner.refusals.iter().rev().cloned().collect(),
            per_minute,
        }
    }
}

impl Inner {
    /// The count for `now`'s minute, created (and the oldest dropped) as
    /// needed. A clock stepped back lands in the newest minute.
    fn minute(&mut self, now: SystemTime) -> &mut MinuteCount {
        let minute = minute_of(now);
        let newest = self.minutes.back().map(|m| m.minute);
        if newest.is_none_or(|newest| minute > newest) {
            if self.minutes.len() == MINUTES {
                self.minutes.pop_front();
            }
            self.minutes.push_back(MinuteCount {
                minute,
                stored: 0,
                refused: 0,
                bytes: 0,
            });
        }
        self.minutes.back_mut().expect("pushed above")
    }
}

/// One association's record while it runs.
pub struct Session {
    activity: Activity,
    id: u64,
    started: Instant,
    ended: bool,
}

impl Session {
    /// An instance was stored (and acknowledged).
    pub fn stored(&self, bytes: u64) {
        self.stored_at(bytes, SystemTime::now());
    }

    fn stored_at(&self, bytes: u64, now: SystemTime) {
        let mut inner = self.activity.lock();
        if let Some(entry) = inner.open.get_mut(&self.id) {
            entry.stored = entry.stored.saturating_add(1);
        }
        let m = inner.minute(now);
        m.stored = m.stored.saturating_add(1);
        m.bytes = m.bytes.saturating_add(bytes);
    }

    /// An instance was answered with a failure `status` for `reason`.
    pub fn refused(&self, status: u16, reason: &str, sop_instance_uid: &str, sop_class_uid: &str) {
        let refusal = (status, reason, sop_instance_uid, sop_class_uid);
        self.refused_at(refusal, SystemTime::now());
    }

    fn refused_at(&self, (status, reason, sop, class): (u16, &str, &str, &str), now: SystemTime) {
        let mut inner = self.activity.lock();
        let (calling_ae, peer) = match inner.open.get_mut(&self.id) {
            Some(entry) => {
                entry.refused = entry.refused.saturating_add(1);
                (entry.calling_ae.clone(), entry.peer.clone())
            }
            None => (String::new(), String::new()),
        };
        let m = inner.minute(now);
        m.refused = m.refused.saturating_add(1);
        if inner.refusals.len() == RECENT {
            inner.refusals.pop_front();
        }
        inner.refusals.push_back(RefusalEntry {
            at: rfc3339(now),
            association: self.id,
            calling_ae,
            peer,
            status,
            reason: clip(reason, MAX_TEXT),
            sop_instance_uid: clip(sop, MAX_UID),
            sop_class_uid: clip(class, MAX_UID),
        });
    }

    /// The association ended `how` ("released", "aborted: …").
    pub fn end(mut self, how: &str) {
        self.finish(how);
    }

    fn finish(&mut self, how: &str) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let mut inner = self.activity.lock();
        let Some(mut entry) = inner.open.remove(&self.id) else {
            return;
        };
        entry.duration_ms =
            Some(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
        entry.ended = Some(clip(how, MAX_TEXT));
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(entry);
    }
}

impl Drop for Session {
    /// A session dropped without [`Session::end`] (a panic, a cancelled
    /// task) still leaves the open list.
    fn drop(&mut self) {
        self.finish("ended without a release or abort");
    }
}

/// At most `max` characters of `s`, control characters replaced, with `…`
/// when cut.
fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn minute_of(t: SystemTime) -> u64 {
    unix(t) / 60 * 60
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests;
