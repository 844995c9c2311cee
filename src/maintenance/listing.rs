//! Listing the store by study, and sorting what is there by kind of key.
//!
//! Studies are found with one delimited listing of `studies/`, then each
//! study's prefix is listed once: every object is listed exactly once, and
//! memory holds one study's listing at a time, however large the store.

use std::collections::HashMap;

use futures::TryStreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;

use super::{Error, Result};
use crate::store::{BlobStore, ObjectKey};
use crate::uid::Uid;

/// The top-level folder of everything the gateway stores (anything outside
/// it, such as the start-up probe, is not ours to look at).
const STUDIES: &str = "studies";

/// What `studies/` holds.
#[derive(Debug, Default)]
pub(super) struct StudyDirs {
    /// Study folders named by a valid Study Instance UID.
    pub studies: Vec<Uid>,
    /// Objects under `studies/` that are no gateway key: files directly in
    /// it, and everything in folders not named by a UID.
    pub other: Vec<ObjectMeta>,
}

/// What one study's prefix holds, by kind.
#[derive(Debug, Default)]
pub(super) struct StudyListing {
    pub instances: Vec<(ObjectKey, ObjectMeta)>,
    pub media: Vec<(ObjectKey, ObjectMeta)>,
    /// Sidecars, by the media key they describe.
    pub sidecars: HashMap<ObjectKey, ObjectMeta>,
    /// Objects under the study's prefix that are no gateway key.
    pub other: Vec<ObjectMeta>,
}

impl StudyListing {
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
            && self.media.is_empty()
            && self.sidecars.is_empty()
            && self.other.is_empty()
    }
}

/// Lists the study folders under `studies/`.
pub(super) async fn study_dirs(store: &BlobStore) -> Result<StudyDirs> {
    let prefix = Path::from(STUDIES);
    let top = store
        .object_store()
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(list_error(&prefix))?;
    let mut dirs = StudyDirs {
        other: top.objects,
        ..StudyDirs::default()
    };
    for dir in top.common_prefixes {
        let name = dir.filename().unwrap_or_default();
        match Uid::parse(name) {
            // Uid::parse drops padding: only the exact spelling is ours.
            Ok(uid) if uid.as_str() == name => dirs.studies.push(uid),
            _ => dirs.other.extend(list_all(store, &dir).await?),
        }
    }
    Ok(dirs)
}

/// Lists one study's prefix and sorts its objects by kind of key.
pub(super) async fn list_study(store: &BlobStore, study: &Uid) -> Result<StudyListing> {
    let prefix = Path::from_iter([STUDIES, study.as_str()]);
    let mut listing = StudyListing::default();
    for meta in list_all(store, &prefix).await? {
        let raw = meta.location.as_ref();
        // ObjectKey::parse normalises; a key is ours only if it is spelt
        // exactly as the gateway spells it.
        let parsed = ObjectKey::parse(raw).filter(|k| k.as_str() == raw);
        match parsed {
            Some(key) if key.as_media().is_some() => listing.media.push((key, meta)),
            Some(key) => listing.instances.push((key, meta)),
            None => match ObjectKey::parse_sidecar(raw) {
                Some(media) => {
                    listing.sidecars.insert(media, meta);
                }
                None => listing.other.push(meta),
            },
        }
    }
    Ok(listing)
}

async fn list_all(store: &BlobStore, prefix: &Path) -> Result<Vec<ObjectMeta>> {
    store
        .object_store()
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(list_error(prefix))
}

fn list_error(prefix: &Path) -> impl FnOnce(object_store::Error) -> Error {
    let prefix = prefix.to_string();
    move |e| Error::List {
        prefix,
        detail: crate::store::redacted(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_are_sorted_by_kind_of_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open_local(dir.path()).unwrap();
        let s = "studies/1.2.3";
        for key in [
            format!("{s}/1.2.3.1/1.2.3.1.1.dcm"),
            format!("{s}/media/a.pdf"),
            format!("{s}/media-meta/a.pdf.json"),
            format!("{s}/media-meta/gone.png.json"),
            format!("{s}/1.2.3.1/notes.txt"),
            format!("{s}/1.2.3.1/1.2 03.dcm"),
            "studies/README".into(),
            "studies/not a uid/x.dcm".into(),
            ".dicom-gateway-probe/1-2".into(),
        ] {
            store
                .put_small(
                    &ObjectKey::parse(&key).unwrap_or_else(|| raw_key(&key)),
                    vec![1],
                )
                .await
                .unwrap();
        }
        let dirs = study_dirs(&store).await.unwrap();
        assert_eq!(dirs.studies, [Uid::parse("1.2.3").unwrap()]);
        let mut other: Vec<_> = dirs.other.iter().map(|m| m.location.to_string()).collect();
        other.sort();
        assert_eq!(other, ["studies/README", "studies/not a uid/x.dcm"]);

        let listing = list_study(&store, &dirs.studies[0]).await.unwrap();
        let keys = |v: &[(ObjectKey, ObjectMeta)]| -> Vec<String> {
            v.iter().map(|(k, _)| k.to_string()).collect()
        };
        assert_eq!(
            keys(&listing.instances),
            [format!("{s}/1.2.3.1/1.2.3.1.1.dcm")]
        );
        assert_eq!(keys(&listing.media), [format!("{s}/media/a.pdf")]);
        let mut sidecars: Vec<_> = listing.sidecars.keys().map(|k| k.to_string()).collect();
        sidecars.sort();
        assert_eq!(
            sidecars,
            [format!("{s}/media/a.pdf"), format!("{s}/media/gone.png")]
        );
        let mut other: Vec<_> = listing
            .other
            .iter()
            .map(|m| m.location.to_string())
            .collect();
        other.sort();
        assert_eq!(
            other,
            [
                format!("{s}/1.2.3.1/1.2 03.dcm"),
                format!("{s}/1.2.3.1/notes.txt")
            ]
        );
    }

    /// Any key, for planting objects the gateway would never write.
    fn raw_key(raw: &str) -> ObjectKey {
        serde_json::from_value(serde_json::Value::String(raw.into())).unwrap()
    }
}
