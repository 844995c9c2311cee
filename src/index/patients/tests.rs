use crate::index::{Index, InstanceRecord, NewEntry, NewInstance, StudyTags};
use crate::uid::Uid;

fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

/// One instance of `study` for the patient (`issuer`, `id`).
fn instance(study: &str, sop: &str, issuer: Option<&str>, id: Option<&str>) -> NewEntry {
    NewEntry::Instance(Box::new(NewInstance {
        record: InstanceRecord::for_test(study, &format!("{study}.1"), sop),
        study: StudyTags {
            patient_id: id.map(str::to_owned),
            issuer_of_patient_id: issuer.map(str::to_owned),
            ..Default::default()
        },
    }))
}

fn of(index: &Index, issuer: Option<&str>, id: &str) -> Vec<String> {
    index
        .studies_of_patient(issuer, id)
        .unwrap()
        .into_iter()
        .map(|u| u.as_str().to_owned())
        .collect()
}

#[test]
fn a_patient_is_the_id_and_its_issuer_never_the_id_alone() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[
            instance("1.1", "1.1.1.1", Some("HOSP_A"), Some("P1")),
            instance("1.2", "1.2.1.1", Some("HOSP_B"), Some("P1")),
            instance("1.3", "1.3.1.1", None, Some("P1")),
            instance("1.4", "1.4.1.1", Some("HOSP_A"), Some("P1")),
            // A patient ID that another one starts with.
            instance("1.5", "1.5.1.1", Some("HOSP_A"), Some("P10")),
            // An issuer that another one starts with.
            instance("1.6", "1.6.1.1", Some("HOSP_AB"), Some("P1")),
            instance("1.7", "1.7.1.1", Some("HOSP_A"), None),
        ])
        .unwrap();
    assert_eq!(of(&index, Some("HOSP_A"), "P1"), ["1.1", "1.4"]);
    assert_eq!(of(&index, Some("HOSP_B"), "P1"), ["1.2"]);
    assert_eq!(of(&index, None, "P1"), ["1.3"]);
    assert_eq!(of(&index, Some(""), "P1"), ["1.3"], "empty is absent");
    assert_eq!(of(&index, Some("HOSP_A"), "P10"), ["1.5"]);
    assert_eq!(of(&index, Some("HOSP_AB"), "P1"), ["1.6"]);
    assert!(of(&index, Some("HOSP_A"), "").is_empty());
    assert!(of(&index, Some("HOSP_C"), "P1").is_empty());
}

#[test]
fn a_study_whose_patient_changes_leaves_its_old_patient() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[instance("1.1", "1.1.1.1", Some("A"), Some("P1"))])
        .unwrap();
    // A corrected later instance: another patient ID, then another issuer.
    index
        .put_batch(&[instance("1.1", "1.1.1.2", Some("A"), Some("P2"))])
        .unwrap();
    assert!(of(&index, Some("A"), "P1").is_empty());
    assert_eq!(of(&index, Some("A"), "P2"), ["1.1"]);
    index
        .put_batch(&[instance("1.1", "1.1.1.3", Some("B"), Some("P2"))])
        .unwrap();
    assert!(of(&index, Some("A"), "P2").is_empty());
    assert_eq!(of(&index, Some("B"), "P2"), ["1.1"]);
    // An instance without patient tags changes nothing (tags merge).
    index
        .put_batch(&[instance("1.1", "1.1.1.4", None, None)])
        .unwrap();
    assert_eq!(of(&index, Some("B"), "P2"), ["1.1"]);
}

#[test]
fn a_study_that_loses_its_last_instance_leaves_its_patient() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[instance("1.1", "9.9", Some("A"), Some("P1"))])
        .unwrap();
    // The same SOP Instance UID under another study of another patient.
    index
        .put_batch(&[instance("1.2", "9.9", Some("A"), Some("P2"))])
        .unwrap();
    assert!(index.study(&uid("1.1")).unwrap().is_none());
    assert!(of(&index, Some("A"), "P1").is_empty());
    assert_eq!(of(&index, Some("A"), "P2"), ["1.2"]);
}

#[test]
fn a_value_with_a_nul_is_not_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    index
        .put_batch(&[
            instance("1.1", "1.1.1.1", Some("A\0P1"), Some("X")),
            instance("1.2", "1.2.1.1", Some("A"), Some("P1\0X")),
        ])
        .unwrap();
    assert!(of(&index, Some("A"), "P1\0X").is_empty());
    assert!(of(&index, Some("A\0P1"), "X").is_empty());
    assert!(of(&index, Some("A"), "P1").is_empty());
}

#[test]
fn the_tree_is_rebuilt_by_reindexing_and_backfilled_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::open(dir.path()).unwrap();
        // Reindex writes through put_missing.
        index
            .put_missing(&[instance("1.1", "1.1.1.1", Some("A"), Some("P1"))])
            .unwrap();
        assert_eq!(of(&index, Some("A"), "P1"), ["1.1"]);
        index.clear_rebuildable().unwrap();
        assert!(of(&index, Some("A"), "P1").is_empty());
        index
            .put_missing(&[instance("1.1", "1.1.1.1", Some("A"), Some("P1"))])
            .unwrap();
        assert_eq!(of(&index, Some("A"), "P1"), ["1.1"]);
        // An index from before the tree existed: studies, no patient tree.
        index.patients.clear().unwrap();
        index.flush().unwrap();
        assert!(of(&index, Some("A"), "P1").is_empty());
    }
    let index = crate::index::tests::reopen(dir.path());
    assert_eq!(of(&index, Some("A"), "P1"), ["1.1"]);
}
