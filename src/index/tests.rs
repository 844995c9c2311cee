//! The index test suite, on a real sled in a temporary directory.

use super::*;

pub(super) fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

pub(super) fn new_instance(study: &str, series: &str, sop: &str, size: u64) -> NewEntry {
    NewEntry::Instance(Box::new(NewInstance {
        record: InstanceRecord {
            size,
            tags: InstanceTags {
                modality: Some("CT".into()),
                ..Default::default()
            },
            ..InstanceRecord::for_test(study, series, sop)
        },
        study: StudyTags {
            patient_id: Some("P1".into()),
            ..Default::default()
        },
    }))
}

#[test]
fn a_commit_changes_the_stamp_of_every_study_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let (a, b) = (uid("1.2.3"), uid("1.2.4"));
    assert_eq!((index.study_stamp(&a), index.study_stamp(&b)), (0, 0));
    index
        .put_batch(&[new_instance("1.2.3", "1.2.3.1", "1.2.9.1", 10)])
        .unwrap();
    let a1 = index.study_stamp(&a);
    assert!(a1 > 0);
    assert_eq!(index.study_stamp(&b), 0);
    // The SOP moves to study b: both studies changed.
    index
        .put_batch(&[new_instance("1.2.4", "1.2.4.1", "1.2.9.1", 10)])
        .unwrap();
    assert!(index.study_stamp(&a) > a1);
    assert_eq!(index.study_stamp(&a), index.study_stamp(&b));
}

#[test]
fn a_study_comes_out_of_one_scan_with_counts() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let batch = vec![
        new_instance("1.2.3", "1.2.3.2", "1.2.3.2.1", 10),
        new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 20),
        new_instance("1.2.30", "1.2.30.1", "1.2.30.1.1", 5),
    ];
    let out = index.put_batch(&batch).unwrap();
    assert_eq!(out, vec![PutOutcome::Added; 3]);

    let inst = index.instances_of_study(&uid("1.2.3")).unwrap();
    let sops: Vec<_> = inst.iter().map(|i| i.sop_instance_uid.as_str()).collect();
    // Ordered by series, and the prefix scan does not leak study 1.2.30.
    assert_eq!(sops, ["1.2.3.1.1", "1.2.3.2.1"]);
    let study = index.study(&uid("1.2.3")).unwrap().unwrap();
    assert_eq!((study.instance_count, study.total_bytes), (2, 30));
    assert_eq!(index.studies().unwrap().len(), 2);
    let found = index.instance(&uid("1.2.30.1.1")).unwrap().unwrap();
    assert_eq!(found.study_instance_uid.as_str(), "1.2.30");
}

#[test]
fn the_same_sop_twice_is_one_instance() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10)])
        .unwrap();
    // Again in the same place, and once more within one batch.
    let out = index
        .put_batch(&[
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 12),
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 14),
        ])
        .unwrap();
    assert_eq!(out, vec![PutOutcome::Replaced { previous_key: None }; 2]);
    let study = index.study(&uid("1.2.3")).unwrap().unwrap();
    assert_eq!((study.instance_count, study.total_bytes), (1, 14));
}

#[test]
fn a_sop_that_moves_study_leaves_no_trace_behind() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[new_instance("1.2.3", "1.2.3.1", "9.9", 10)])
        .unwrap();
    let out = index
        .put_batch(&[new_instance("1.2.4", "1.2.4.1", "9.9", 10)])
        .unwrap();
    let old_key = ObjectKey::instance(&uid("1.2.3"), &uid("1.2.3.1"), &uid("9.9"));
    assert_eq!(
        out,
        vec![PutOutcome::Replaced {
            previous_key: Some(old_key)
        }]
    );
    assert!(index.study(&uid("1.2.3")).unwrap().is_none());
    assert!(index.instances_of_study(&uid("1.2.3")).unwrap().is_empty());
    assert_eq!(
        index.study(&uid("1.2.4")).unwrap().unwrap().instance_count,
        1
    );
}

#[test]
fn webhook_answers_are_kept_once_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let answer = |at, a| StoredAnswer {
        at,
        status: 200,
        body: serde_json::json!({ "a": a }),
        event: None,
    };
    let (first, second) = (answer(100, 1), answer(101, 2));
    assert_eq!(
        index.remember_webhook("msg_1", &first, true).unwrap(),
        first
    );
    // A concurrent second delivery gets the first answer.
    assert_eq!(
        index.remember_webhook("msg_1", &second, false).unwrap(),
        first
    );
    assert_eq!(index.webhook_answer("msg_1").unwrap(), Some(first));
    assert_eq!(index.prune_webhooks(101).unwrap(), 1);
    assert_eq!(index.webhook_answer("msg_1").unwrap(), None);

    index.pair_avara_study("stu_1", &uid("1.2.3")).unwrap();
    assert_eq!(index.avara_study("stu_1").unwrap(), Some(uid("1.2.3")));
    assert_eq!(index.avara_study("stu_2").unwrap(), None);
}

#[test]
fn a_second_opener_is_told_the_index_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Index::open(dir.path()).unwrap();
    let err = Index::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("is the gateway running? stop it first")
    );
}

pub(super) fn media(study: &str, name: &str, mime: &str) -> NewEntry {
    let st = uid(study);
    NewEntry::Media(MediaRecord {
        object_key: ObjectKey::media(&st, name),
        study_instance_uid: st,
        file_name: name.into(),
        mime_type: mime.into(),
        size: 3,
        stored_at: "2026-11-23T12:00:00.000Z".into(),
        source: "operator".into(),
        report: None,
    })
}

#[test]
fn put_missing_adds_what_is_missing_and_replaces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10),
            media("1.2.3", "a.pdf", "application/pdf"),
        ])
        .unwrap();
    let before = index.study_stamp(&uid("1.2.3"));
    let out = index
        .put_missing(&[
            // Same SOP, same key, other size: kept as it was.
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 99),
            // Same SOP under another series: kept where it was.
            new_instance("1.2.3", "1.2.3.2", "1.2.3.1.1", 99),
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 5),
            media("1.2.3", "a.pdf", "text/plain"),
            media("1.2.3", "b.png", "image/png"),
        ])
        .unwrap();
    let first = ObjectKey::instance(&uid("1.2.3"), &uid("1.2.3.1"), &uid("1.2.3.1.1"));
    assert_eq!(
        out,
        vec![
            FillOutcome::AlreadyIndexed,
            FillOutcome::IndexedElsewhere(first),
            FillOutcome::Added,
            FillOutcome::AlreadyIndexed,
            FillOutcome::Added,
        ]
    );
    let study = index.study(&uid("1.2.3")).unwrap().unwrap();
    assert_eq!((study.instance_count, study.total_bytes), (2, 15));
    let a = index.media(&uid("1.2.3"), "a.pdf").unwrap().unwrap();
    assert_eq!(a.mime_type, "application/pdf");
    assert_eq!(index.media_of_study(&uid("1.2.3")).unwrap().len(), 2);
    assert!(index.study_stamp(&uid("1.2.3")) > before);

    // Nothing missing: nothing written, stamp unchanged.
    let stamp = index.study_stamp(&uid("1.2.3"));
    let again = index
        .put_missing(&[new_instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 5)])
        .unwrap();
    assert_eq!(again, vec![FillOutcome::AlreadyIndexed]);
    assert_eq!(index.study_stamp(&uid("1.2.3")), stamp);
}

#[test]
fn receive_times_span_the_study_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let at = |sop: &str, t: &str| {
        let NewEntry::Instance(mut new) = new_instance("1.2.3", "1.2.3.1", sop, 1) else {
            unreachable!()
        };
        new.record.received_at = t.into();
        NewEntry::Instance(new)
    };
    index
        .put_missing(&[
            at("1.2.3.1.2", "2026-11-23T12:00:02.000Z"),
            at("1.2.3.1.1", "2026-11-23T12:00:01.000Z"),
            at("1.2.3.1.3", "2026-11-23T12:00:03.000Z"),
            at("1.2.3.1.0", "2026-11-23T12:00:02.500Z"),
        ])
        .unwrap();
    let study = index.study(&uid("1.2.3")).unwrap().unwrap();
    assert_eq!(study.first_received, "2026-11-23T12:00:01.000Z");
    assert_eq!(study.last_received, "2026-11-23T12:00:03.000Z");
}

#[test]
fn clearing_keeps_what_the_store_cannot_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[
            new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10),
            new_instance("1.2.3", "1.2.3.2", "1.2.3.2.1", 10),
            new_instance("1.2.30", "1.2.30.1", "1.2.30.1.1", 10),
            new_instance("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1", 10),
            media("1.2.3", "a.pdf", "application/pdf"),
            media("1.2.5", "a.pdf", "application/pdf"),
            media("1.2.5", "b.pdf", "application/pdf"),
        ])
        .unwrap();
    index.pair_avara_study("stu_1", &uid("1.2.3")).unwrap();
    // Studies whose UIDs prefix one another are each found once.
    let studies: Vec<_> = index.indexed_studies().unwrap().into_iter().collect();
    assert_eq!(
        studies,
        [uid("1.2.3"), uid("1.2.3.4"), uid("1.2.30"), uid("1.2.5")]
    );

    index.clear_rebuildable().unwrap();
    assert!(index.indexed_studies().unwrap().is_empty());
    assert!(index.studies().unwrap().is_empty());
    assert!(index.instance(&uid("1.2.3.1.1")).unwrap().is_none());
    assert_eq!(index.avara_study("stu_1").unwrap(), Some(uid("1.2.3")));
}

#[test]
fn entries_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::open(dir.path()).unwrap();
        index
            .put_batch(&[new_instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10)])
            .unwrap();
    }
    let index = reopen(dir.path());
    assert!(index.instance(&uid("1.2.3.1.1")).unwrap().is_some());
}

/// Opens an index this process just dropped. sled's I/O threads may still
/// hold its file lock for a moment (a log buffer being written after the
/// last transaction), so `Locked` is retried for a while; a separate
/// process, as at a restart, does not meet this.
pub(super) fn reopen(path: &std::path::Path) -> Index {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Index::open(path) {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            opened => return opened.unwrap(),
        }
    }
}
