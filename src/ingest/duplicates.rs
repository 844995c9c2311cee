//! The duplicate policy, and replacements that survive a crash.
//!
//! A SOP Instance UID the gateway already holds may arrive again: a
//! modality re-sending a study (harmless), a corrected study re-sent under a
//! new Study UID, a modality's UID bug, or an upload URL holder who knows one
//! UID. What was acknowledged must never be destroyed by a later request, so
//! by default a re-send may replace an instance only within the same study
//! (`duplicates = "replace_same_study"`); `"reject"` keeps the first version
//! whatever comes, and `"replace"` lets a re-send move an instance to another
//! study (sites that correct studies by re-sending). A request that names its
//! study (an upload URL) never replaces an instance of another study.
//!
//! A replacement under the same key overwrites the stored object before the
//! index learns the new record. So that a crash in between cannot leave the
//! index describing bytes that are gone, the key is first noted (durably) as
//! being replaced; a start finds such notes and describes whatever object the
//! store then holds under the key, old or new, before serving.

use object_store::ObjectStoreExt;

use super::{Check, Error, Result};
use crate::config::DuplicatePolicy;
use crate::index::{Index, InstanceRecord, NewEntry, StudyTags};
use crate::store::{BlobStore, ObjectKey};

/// What the policy allows an arriving instance to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A SOP Instance UID the index does not have.
    New,
    /// It replaces the stored instance; `same_key` when it overwrites the
    /// stored object in place (same study and series).
    Replace { same_key: bool },
}

/// The `source` of instances received through an upload URL.
pub use crate::index::UPLOAD_SOURCE;

/// Decides, under the instance's lock, whether `record` (with the patient
/// and study tags `study_tags`) may be stored. Blocking (index reads).
pub fn admit(
    policy: DuplicatePolicy,
    index: &Index,
    record: &InstanceRecord,
    study_tags: Option<&StudyTags>,
    check: &Check,
) -> Result<Admission> {
    // A request bound to a study (an upload URL, from outside the site).
    let bound = check.study.is_some();
    if let Some(tags) = study_tags.filter(|_| bound) {
        same_patient(index, record, tags)?;
    }
    let Some(stored) = index
        .instance(&record.sop_instance_uid)
        .map_err(Error::Index)?
    else {
        return Ok(Admission::New);
    };
    let same_study = stored.study_instance_uid == record.study_instance_uid;
    let allowed = match policy {
        // An upload URL is bound to one study: it cannot reach another, nor
        // replace what a modality sent to its own.
        _ if bound && (!same_study || stored.source != UPLOAD_SOURCE) => false,
        DuplicatePolicy::Reject => false,
        DuplicatePolicy::ReplaceSameStudy => same_study,
        DuplicatePolicy::Replace => true,
    };
    if !allowed {
        return Err(Error::Duplicate {
            stored_study: stored.study_instance_uid,
            same_study,
        });
    }
    Ok(Admission::Replace {
        same_key: stored.object_key == record.object_key,
    })
}

/// An upload must name the patient its study already has: otherwise a later
/// instance would change the study's Patient ID or issuer, and with them
/// whose prior reports the study is shown with.
fn same_patient(index: &Index, record: &InstanceRecord, tags: &StudyTags) -> Result<()> {
    let Some(study) = index
        .study(&record.study_instance_uid)
        .map_err(Error::Index)?
    else {
        return Ok(());
    };
    let differs = |known: &Option<String>, new: &Option<String>| {
        known.is_some() && new.is_some() && known != new
    };
    if differs(&study.tags.patient_id, &tags.patient_id)
        || differs(&study.tags.issuer_of_patient_id, &tags.issuer_of_patient_id)
    {
        return Err(Error::PatientMismatch);
    }
    Ok(())
}

/// Describes again every object whose replacement a crash interrupted
/// (whichever version the store holds), then forgets the notes. Returns how
/// many were found.
pub async fn recover(store: &BlobStore, index: &Index) -> Result<usize> {
    let keys = index.replacing().map_err(Error::Index)?;
    for key in &keys {
        repair(store, index, key).await?;
    }
    Ok(keys.len())
}

/// Describes the object under `key` again and forgets its note; a note
/// that cannot be described yet is kept (logged) for the next try.
pub async fn repair(store: &BlobStore, index: &Index, key: &ObjectKey) -> Result<()> {
    let described = match describe_stored(store, index, key).await {
        Ok(described) => described,
        Err(e) => {
            // Keep the note (and serve): the next start tries again, and
            // `verify` shows the entry if it stays wrong.
            tracing::error!(key = %key, error = %e, "cannot describe an interrupted replacement from the store; its entry may be stale");
            return Ok(());
        }
    };
    match described {
        Some(new) => {
            let index = index.clone();
            tokio::task::spawn_blocking(move || index.put_batch(&[new]))
                .await
                .map_err(|e| Error::Spool(std::io::Error::other(e)))?
                .map_err(Error::Index)?;
            tracing::warn!(key = %key, "index entry of an interrupted replacement described again from the store");
        }
        None => {
            tracing::warn!(key = %key, "interrupted replacement: the object is gone; its entry is left for `verify` to report");
        }
    }
    index.replacing_done(key).map_err(Error::Index)
}

/// The index entry for the object stored under `key`: an instance's from
/// its header; a media file's is its indexed record with the size the store
/// now has (its type and report fields are those of the delivery the index
/// knows: the one that was interrupted was never acknowledged, and is
/// delivered again).
async fn describe_stored(
    store: &BlobStore,
    index: &Index,
    key: &ObjectKey,
) -> Result<Option<NewEntry>> {
    let meta = match store.object_store().head(&key.to_path()).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(Error::Store(crate::store::Error::from(e))),
    };
    if let Some((study, name)) = key.as_media() {
        let Some(mut record) = index.media(&study, name).map_err(Error::Index)? else {
            return Ok(None);
        };
        record.size = meta.size;
        record.stored_at = super::now_rfc3339();
        return Ok(Some(NewEntry::Media(record)));
    }
    let header = crate::maintenance::read_stored_header(store, &meta)
        .await
        .map_err(|reason| Error::Spool(std::io::Error::other(reason.to_string())))?;
    let source = header.source_ae.clone().unwrap_or_default();
    let (_, new) = super::record_from(header, meta.size, source);
    Ok(Some(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::NewInstance;
    use crate::uid::Uid;

    fn record(study: &str, series: &str, sop: &str) -> InstanceRecord {
        InstanceRecord::for_test(study, series, sop)
    }

    #[test]
    fn each_policy_decides_and_an_upload_never_reaches_another_study() {
        use DuplicatePolicy::*;
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let stored = record("1.1", "1.1.1", "1.1.1.1");
        let new = NewInstance {
            record: stored.clone(),
            study: Default::default(),
        };
        index
            .put_batch(&[NewEntry::Instance(Box::new(new))])
            .unwrap();

        let dimse = Check::default();
        let upload_to = |study: &str| Check {
            study: Some(Uid::parse(study).unwrap()),
            ..Check::default()
        };
        let fresh = record("1.1", "1.1.1", "1.1.1.2");
        let same_key = record("1.1", "1.1.1", "1.1.1.1");
        let other_series = record("1.1", "1.1.2", "1.1.1.1");
        let other_study = record("2.2", "2.2.1", "1.1.1.1");
        let replace = |same_key| Some(Admission::Replace { same_key });
        let refused = |r: Result<Admission>| matches!(r, Err(Error::Duplicate { .. }));

        for policy in [ReplaceSameStudy, Reject, Replace] {
            assert_eq!(
                admit(policy, &index, &fresh, None, &dimse).ok(),
                Some(Admission::New)
            );
            // Whatever the policy, an upload bound to its study cannot
            // replace an instance of another study.
            assert!(refused(admit(
                policy,
                &index,
                &other_study,
                None,
                &upload_to("2.2")
            )));
        }
        assert_eq!(
            admit(ReplaceSameStudy, &index, &same_key, None, &dimse).ok(),
            replace(true)
        );
        assert_eq!(
            admit(ReplaceSameStudy, &index, &other_series, None, &dimse).ok(),
            replace(false)
        );
        assert!(refused(admit(
            ReplaceSameStudy,
            &index,
            &other_study,
            None,
            &dimse
        )));
        assert!(refused(admit(Reject, &index, &same_key, None, &dimse)));
        assert!(refused(admit(Reject, &index, &other_study, None, &dimse)));
        assert_eq!(
            admit(Replace, &index, &other_study, None, &dimse).ok(),
            replace(false)
        );
        // An upload does not replace what a modality sent to its study...
        assert!(refused(admit(
            ReplaceSameStudy,
            &index,
            &same_key,
            None,
            &upload_to("1.1")
        )));
        // ...only what an upload stored.
        let mut uploaded = record("1.1", "1.1.9", "1.1.9.1");
        uploaded.source = UPLOAD_SOURCE.into();
        let new = NewInstance {
            record: uploaded.clone(),
            study: Default::default(),
        };
        index
            .put_batch(&[NewEntry::Instance(Box::new(new))])
            .unwrap();
        assert_eq!(
            admit(ReplaceSameStudy, &index, &uploaded, None, &upload_to("1.1")).ok(),
            replace(true)
        );
    }

    #[test]
    fn an_upload_must_name_the_patient_its_study_has() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let tags = |id: &str, issuer: Option<&str>| StudyTags {
            patient_id: Some(id.into()),
            issuer_of_patient_id: issuer.map(Into::into),
            ..Default::default()
        };
        let new = NewInstance {
            record: record("3.3", "3.3.1", "3.3.1.1"),
            study: tags("P1", Some("HOSP_A")),
        };
        index
            .put_batch(&[NewEntry::Instance(Box::new(new))])
            .unwrap();
        let upload = Check {
            study: Some(Uid::parse("3.3").unwrap()),
            ..Check::default()
        };
        let capture = record("3.3", "3.3.2", "3.3.2.1");
        let admit_with = |t: &StudyTags, check: &Check| {
            admit(DuplicatePolicy::default(), &index, &capture, Some(t), check)
        };
        for other in [tags("P2", Some("HOSP_A")), tags("P1", Some("HOSP_B"))] {
            assert!(matches!(
                admit_with(&other, &upload),
                Err(Error::PatientMismatch)
            ));
            // A modality's own instances are the site's to correct.
            assert_eq!(
                admit_with(&other, &Check::default()).ok(),
                Some(Admission::New)
            );
        }
        assert_eq!(
            admit_with(&tags("P1", Some("HOSP_A")), &upload).ok(),
            Some(Admission::New)
        );
        assert_eq!(
            admit_with(&StudyTags::default(), &upload).ok(),
            Some(Admission::New)
        );
    }
}
