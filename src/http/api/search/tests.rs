use super::{Best, Filter, Params};
use crate::index::{StudyRecord, StudyTags};
use crate::uid::Uid;

fn study(
    uid: &str,
    name: &str,
    id: &str,
    accession: &str,
    date: &str,
    received: &str,
) -> StudyRecord {
    StudyRecord {
        study_instance_uid: Uid::parse(uid).unwrap(),
        tags: StudyTags {
            patient_name: Some(name.into()),
            patient_id: Some(id.into()),
            accession_number: Some(accession.into()),
            study_date: Some(date.into()),
            study_description: Some("CT HEAD".into()),
            ..StudyTags::default()
        },
        instance_count: 1,
        total_bytes: 10,
        first_received: received.into(),
        last_received: received.into(),
    }
}

fn doe() -> StudyRecord {
    study(
        "1.2.840.99.1",
        "DOE^JOHN",
        "PID-0042",
        "ACC77",
        "20260115",
        "2026-11-30T08:00:00.000Z",
    )
}

fn filter(query: &str) -> Filter {
    let params: Params = serde_urlencoded_like(query);
    Filter::parse(&params).unwrap()
}

/// `a=b&c=d` into Params, through serde_json (no extra dev-dependency).
fn serde_urlencoded_like(query: &str) -> Params {
    let mut map = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap();
        let value = match k {
            "limit" => serde_json::Value::from(v.parse::<u64>().unwrap()),
            _ => serde_json::Value::from(v),
        };
        map.insert(k.into(), value);
    }
    serde_json::from_value(serde_json::Value::Object(map)).unwrap()
}

#[test]
fn free_text_finds_name_id_accession_description_and_uid() {
    for q in [
        "doe",
        "DOE JOHN",
        "john doe",
        "pid-0042",
        "acc77",
        "head",
        "1.2.840.99",
        "doe acc77",
    ] {
        assert!(filter(&format!("q={q}")).matches(&doe()), "{q}");
    }
    for q in ["smith", "doe smith", "840.99", "2.840"] {
        assert!(!filter(&format!("q={q}")).matches(&doe()), "{q}");
    }
}

#[test]
fn field_filters() {
    assert!(filter("patientName=doe^j").matches(&doe()));
    assert!(!filter("patientName=acc77").matches(&doe()));
    assert!(filter("patientId=0042").matches(&doe()));
    assert!(filter("accession=ACC").matches(&doe()));
    assert!(!filter("accession=PID").matches(&doe()));
    assert!(filter("uid=1.2.840.99.1").matches(&doe()));
    assert!(!filter("uid=1.2.840.99.10").matches(&doe()));
    assert!(filter("date=2026-01-15").matches(&doe()));
    assert!(!filter("date=20260116").matches(&doe()));
    assert!(filter("from=20260101&to=2026-01-31").matches(&doe()));
    assert!(!filter("from=20260116").matches(&doe()));
    assert!(!filter("to=20260114").matches(&doe()));
    let mut undated = doe();
    undated.tags.study_date = None;
    assert!(!filter("from=20000101").matches(&undated));
    assert!(filter("q=").matches(&undated));
}

#[test]
fn hostile_parameters_are_refused() {
    let refused = |q: &str| Filter::parse(&serde_urlencoded_like(q)).unwrap_err().what;
    assert_eq!(refused(&format!("q={}", "x".repeat(129))), "q");
    assert_eq!(refused("q=a b c d e f g h i"), "q");
    assert_eq!(refused("date=2026-1-15"), "date");
    assert_eq!(refused("from=tomorrow"), "from");
    assert_eq!(refused("limit=0"), "limit");
    assert_eq!(refused("limit=1001"), "limit");
    assert!(serde_urlencoded_like("").is_empty());
    assert!(!serde_urlencoded_like("limit=5").is_empty());
}

#[test]
fn best_keeps_the_newest_within_the_limit() {
    let mut best = Best::new(2);
    for (i, received) in [
        "2026-11-30T08:00:01.000Z",
        "2026-11-30T09:00:00.000Z",
        "2026-11-29T23:00:00.000Z",
        "2026-11-30T08:30:00.000Z",
    ]
    .iter()
    .enumerate()
    {
        best.offer(study(
            &format!("1.2.{i}"),
            "A",
            "B",
            "C",
            "20260101",
            received,
        ));
    }
    assert_eq!(best.matched, 4);
    let kept: Vec<String> = best
        .into_sorted()
        .into_iter()
        .map(|s| s.study_instance_uid.to_string())
        .collect();
    assert_eq!(kept, ["1.2.1", "1.2.3"]);
}
