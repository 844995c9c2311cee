use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn request(body: serde_json::Value) -> std::result::Result<NewSubscription, serde_json::Error> {
    serde_json::from_value(body)
}

fn new_one(now: SystemTime) -> Subscription {
    request(serde_json::json!({
        "name": " RIS ",
        "url": "https://ris.example/hooks",
        "events": ["study.stable", "study.received", "study.stable"],
    }))
    .unwrap()
    .create(now)
    .unwrap()
}

fn refusal(body: serde_json::Value) -> (&'static str, String) {
    match request(body).unwrap().create(at(1_000)) {
        Err(Error::Invalid { field, reason }) => (field, reason),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn a_new_subscription_is_checked_and_normalised() {
    let s = new_one(at(1_000));
    assert!(crate::outbound::secret::is_id(&s.id));
    assert_eq!(s.name, "RIS");
    assert_eq!(
        s.events,
        vec![EventType::StudyReceived, EventType::StudyStable]
    );
    assert!(s.active && !s.include_patient && s.description.is_none());
    assert_eq!((s.created_at, s.updated_at), (1_000, 1_000));
    assert!(s.wants(EventType::StudyStable) && !s.wants(EventType::MediaStored));
    assert_eq!(s.signing_secrets(at(1_000)), vec![s.secret()]);
    let view = serde_json::to_value(s.view(at(1_000))).unwrap();
    assert_eq!(view["createdAt"], "1970-01-01T00:16:40Z");
    assert_eq!(view["events"][0], "study.received");
    assert!(view.get("previousSecretExpiresAt").is_none());
    assert!(!view.to_string().contains("whsec_"));
    assert!(!format!("{s:?}").contains(s.secret().expose()));
}

#[test]
fn every_event_type_round_trips() {
    for e in EventType::ALL {
        assert_eq!(EventType::parse(e.as_str()), Some(e));
        assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
    }
    assert_eq!(EventType::parse("study.deleted"), None);
}

#[test]
fn refusals_name_the_field() {
    let base = |k: &str, v: serde_json::Value| {
        let mut b = serde_json::json!({
            "name": "RIS", "url": "https://ris.example/", "events": ["study.received"],
        });
        b[k] = v;
        b
    };
    for (key, value, field) in [
        ("name", serde_json::json!("  "), "name"),
        ("name", serde_json::json!("a".repeat(129)), "name"),
        ("name", serde_json::json!("a\u{7}b"), "name"),
        ("url", serde_json::json!("ftp://ris.example/"), "url"),
        ("url", serde_json::json!("file:///etc/passwd"), "url"),
        ("url", serde_json::json!("not a url"), "url"),
        ("url", serde_json::json!("https://u:p@ris.example/"), "url"),
        ("url", serde_json::json!("https://u@ris.example/"), "url"),
        (
            "url",
            serde_json::json!(format!("https://ris.example/{}", "a".repeat(2048))),
            "url",
        ),
        ("events", serde_json::json!([]), "events"),
        ("events", serde_json::json!(["study.deleted"]), "events"),
        (
            "description",
            serde_json::json!("x".repeat(1025)),
            "description",
        ),
    ] {
        let (got, reason) = refusal(base(key, value.clone()));
        assert_eq!(got, field, "{key}={value}: {reason}");
    }
    let (_, reason) = refusal(base("events", serde_json::json!(["nope"])));
    assert!(
        reason.contains("\"nope\"") && reason.contains("report.failed"),
        "{reason}"
    );
    // Unknown fields are refused by the parser, which names them.
    let e = request(serde_json::json!({
        "name": "RIS", "url": "https://ris.example/", "events": ["study.received"], "secret": "x",
    }))
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `secret`"), "{e}");
    // A URL exactly at the limit is taken.
    let url = format!("https://ris.example/{}", "a".repeat(MAX_URL_LEN - 20));
    assert_eq!(url.len(), MAX_URL_LEN);
    assert!(
        request(base("url", serde_json::json!(url)))
            .unwrap()
            .create(at(0))
            .is_ok()
    );
}

#[test]
fn patches_change_only_what_they_name() {
    let mut s = new_one(at(1_000));
    let original = s.clone();
    let patch: Patch = serde_json::from_value(serde_json::json!({
        "active": false, "events": ["report.failed"], "description": "night shift",
    }))
    .unwrap();
    s.apply(&patch.check().unwrap(), at(2_000));
    assert!(!s.active);
    assert_eq!(s.events, vec![EventType::ReportFailed]);
    assert_eq!(s.description.as_deref(), Some("night shift"));
    assert_eq!(
        (s.name.as_str(), s.url.as_str()),
        ("RIS", original.url.as_str())
    );
    assert_eq!((s.created_at, s.updated_at), (1_000, 2_000));
    assert_eq!(s.secret(), original.secret());
    let clear: Patch = serde_json::from_value(serde_json::json!({ "description": null })).unwrap();
    s.apply(&clear.check().unwrap(), at(3_000));
    assert_eq!(s.description, None);
    let bad: Patch = serde_json::from_value(serde_json::json!({ "url": "gopher://x/" })).unwrap();
    assert!(matches!(
        bad.check(),
        Err(Error::Invalid { field: "url", .. })
    ));
    assert!(serde_json::from_value::<Patch>(serde_json::json!({ "id": "wh_x" })).is_err());
}

#[test]
fn a_rotated_secret_signs_for_24_hours() {
    let day = SECRET_OVERLAP.as_secs();
    let mut s = new_one(at(1_000));
    let first = s.secret().clone();
    let second = SigningSecret::generate().unwrap();
    s.rotate(second.clone(), at(5_000));
    assert_eq!(s.secret(), &second);
    assert_eq!(s.updated_at, 5_000);
    assert_eq!(s.signing_secrets(at(5_000)), vec![&second, &first]);
    assert_eq!(
        s.signing_secrets(at(5_000 + day - 1)),
        vec![&second, &first]
    );
    assert_eq!(s.signing_secrets(at(5_000 + day)), vec![&second]);
    let view = s.view(at(5_000));
    assert_eq!(
        view.previous_secret_expires_at.as_deref(),
        Some(rfc3339(5_000 + day).as_str())
    );
    assert_eq!(s.view(at(5_000 + day)).previous_secret_expires_at, None);

    // A second rotation within the day: both replaced secrets keep their
    // own 24 h, newest first.
    let third = SigningSecret::generate().unwrap();
    s.rotate(third.clone(), at(6_000));
    assert_eq!(s.signing_secrets(at(6_000)), vec![&third, &second, &first]);
    assert_eq!(s.signing_secrets(at(5_000 + day)), vec![&third, &second]);
    assert_eq!(
        s.view(at(6_000)).previous_secret_expires_at,
        Some(rfc3339(6_000 + day))
    );

    // Many rotations in a day keep a bounded number of signatures.
    for i in 0..10 {
        s.rotate(SigningSecret::generate().unwrap(), at(7_000 + i));
    }
    assert_eq!(s.signing_secrets(at(7_010)).len(), 1 + MAX_PREVIOUS_SECRETS);

    // The stored form keeps them; the view never shows one.
    let stored: Subscription = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(stored, s);
    let shown = serde_json::to_string(&s.view(at(7_010))).unwrap();
    assert!(!shown.contains("whsec_"), "{shown}");
}

#[test]
fn failing_for_five_days_or_410_deactivates_and_activating_starts_afresh() {
    let day = 24 * 3600;
    let mut s = new_one(at(1_000));
    assert!(!s.note_delivery(true, false, at(1_000)), "healthy stays healthy");
    assert!(s.note_delivery(false, false, at(2_000)), "first failure noted");
    assert_eq!(s.failing_since, Some(2_000));
    assert!(!s.note_delivery(false, false, at(2_000 + day)), "nothing new");
    assert!(s.note_delivery(true, false, at(3_000 + day)), "a success clears it");
    assert_eq!(s.failing_since, None);

    s.note_delivery(false, false, at(10_000));
    assert!(!s.note_delivery(false, false, at(10_000 + 5 * day - 1)));
    assert!(s.active);
    assert!(s.note_delivery(false, false, at(10_000 + 5 * day)));
    assert!(!s.active);
    let view = s.view(at(10_000 + 5 * day));
    assert!(
        view.deactivated_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("every delivery failed since")),
        "{view:?}"
    );
    assert!(view.failing_since.is_some());

    let activate = Patch {
        active: Some(true),
        ..Patch::default()
    }
    .check()
    .unwrap();
    s.apply(&activate, at(20 * day));
    assert!(s.active && s.failing_since.is_none() && s.deactivated_reason.is_none());

    assert!(s.note_delivery(false, true, at(21 * day)), "410 Gone");
    assert!(!s.active);
    assert_eq!(
        s.deactivated_reason.as_deref(),
        Some("the endpoint answered 410 Gone")
    );
}
