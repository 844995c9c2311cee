use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Activity, MINUTES, RECENT, clip};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn peer() -> std::net::SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

#[test]
fn an_association_is_open_then_recent_with_its_counts() {
    let activity = Activity::new();
    let t0 = 1_800_000_000;
    let session = activity.begin_at(peer(), "CT01", at(t0));
    session.stored_at(1000, at(t0 + 1));
    session.stored_at(500, at(t0 + 2));
    session.refused_at(
        (0xA700, "disk full", "1.2.3", "1.2.840.10008.5.1.4.1.1.2"),
        at(t0 + 3),
    );
    let snap = activity.snapshot_at(at(t0 + 4));
    assert_eq!(snap.open.len(), 1);
    assert_eq!((snap.open[0].stored, snap.open[0].refused), (2, 1));
    assert!(snap.associations.is_empty());
    session.end("released");
    let snap = activity.snapshot_at(at(t0 + 5));
    assert!(snap.open.is_empty());
    let a = &snap.associations[0];
    assert_eq!(
        (a.calling_ae.as_str(), a.peer.as_str()),
        ("CT01", "192.0.2.7:40000")
    );
    assert_eq!(
        (a.stored, a.refused, a.ended.as_deref()),
        (2, 1, Some("released"))
    );
    assert!(a.duration_ms.is_some());
    let r = &snap.refusals[0];
    assert_eq!(
        (r.status, r.reason.as_str(), r.calling_ae.as_str()),
        (0xA700, "disk full", "CT01")
    );
    let minute = snap.per_minute.iter().find(|m| m.stored > 0).unwrap();
    assert_eq!((minute.stored, minute.refused, minute.bytes), (2, 1, 1500));
}

#[test]
fn a_dropped_session_still_ends() {
    let activity = Activity::new();
    drop(activity.begin(peer(), "X"));
    let snap = activity.snapshot();
    assert!(snap.open.is_empty());
    assert!(
        snap.associations[0]
            .ended
            .as_deref()
            .unwrap()
            .contains("without")
    );
}

#[test]
fn rings_are_bounded_and_newest_first() {
    let activity = Activity::new();
    let t0 = 1_800_000_000;
    for i in 0..(RECENT + 50) {
        let s = activity.begin_at(peer(), &format!("AE{i}"), at(t0));
        s.refused_at((0xC000, "bad", "1.2", "1.2"), at(t0));
        s.end("released");
    }
    let snap = activity.snapshot_at(at(t0));
    assert_eq!(snap.associations.len(), RECENT);
    assert_eq!(snap.refusals.len(), RECENT);
    assert_eq!(
        snap.associations[0].calling_ae,
        format!("AE{}", RECENT + 49)
    );
}

#[test]
fn per_minute_counts_cover_the_last_hour_only() {
    let activity = Activity::new();
    let t0 = 1_800_000_000 / 60 * 60;
    let s = activity.begin_at(peer(), "CT", at(t0));
    // Two hours of one instance a minute.
    for m in 0..120 {
        s.stored_at(10, at(t0 + 60 * m + 5));
    }
    let snap = activity.snapshot_at(at(t0 + 60 * 119 + 30));
    assert_eq!(snap.per_minute.len(), MINUTES);
    assert!(snap.per_minute.iter().all(|m| m.stored == 1));
    assert_eq!(snap.per_minute.last().unwrap().minute, t0 + 60 * 119);
    // Half an hour later, the first half of the window is empty.
    let later = activity.snapshot_at(at(t0 + 60 * 149));
    let stored: u64 = later.per_minute.iter().map(|m| m.stored).sum();
    assert_eq!(stored, 30);
    // A clock stepped back counts in the newest minute, never a new old one.
    s.stored_at(10, at(t0));
    assert_eq!(activity.lock().minutes.len(), MINUTES);
}

#[test]
fn peer_text_is_clipped_and_cleaned() {
    assert_eq!(clip("abc", 5), "abc");
    assert_eq!(clip("abcdef", 3), "abc…");
    assert_eq!(clip("a\u{0}b\nc", 10), "a\u{FFFD}b\u{FFFD}c");
    let activity = Activity::new();
    let s = activity.begin(peer(), &"A".repeat(10_000));
    s.refused(0xA900, &"r".repeat(100_000), &"9".repeat(5000), "");
    let snap = activity.snapshot();
    assert!(snap.open[0].calling_ae.chars().count() <= 257);
    assert!(snap.refusals[0].reason.chars().count() <= 257);
    assert!(snap.refusals[0].sop_instance_uid.chars().count() <= 65);
}
