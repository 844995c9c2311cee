//! Indexing what the store holds: instances from their headers (a ranged read
//! of the first bytes, a few objects at once), media from their sidecars.
//!
//! Only what the index lacks is written ([`Index::put_missing`]): an entry the
//! index has is never replaced, so indexing while the gateway runs cannot undo
//! what ingest just stored, and running twice changes nothing.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::headers::read_header;
use super::listing::{StudyListing, list_study, study_dirs};
use super::{Result, blocking};
use crate::index::{FillOutcome, Index, InstanceRecord, MediaRecord, NewEntry, NewInstance};
use crate::ingest::KeyLocks;
use crate::store::{BlobStore, ObjectKey};
use crate::uid::Uid;

/// Headers read at once (per study).
const HEADERS_AT_ONCE: usize = 8;
/// Studies indexed at once by [`reindex`].
const STUDIES_AT_ONCE: usize = 2;
/// Entries per index transaction (each ends with a flush).
const BATCH: usize = 256;
/// A sidecar is a small JSON record; anything larger is not one of ours.
const MAX_SIDECAR: u64 = 1 << 20;
/// The source of a rebuilt instance whose header names no calling AE.
pub const REINDEX_SOURCE: &str = "reindex";

/// What indexing did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Study folders that held objects.
    pub studies: u64,
    /// Instance entries added.
    pub instances: u64,
    /// Media entries added (reports included).
    pub media: u64,
    /// Of those, media without a usable sidecar: MIME type guessed from the
    /// file name, no report fields.
    pub media_guessed: u64,
    /// Objects the index already had (left as they were).
    pub already_indexed: u64,
    /// Objects not indexed, and why.
    pub skipped: Vec<Skipped>,
}

/// An object that was not indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub key: String,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    /// The store did not give its bytes (or it vanished since the listing).
    Unreadable(String),
    /// No Part-10 header with the UIDs an instance needs.
    NotDicom(String),
    /// Its header's UIDs belong under another key.
    WrongKey(ObjectKey),
    /// Its SOP Instance UID is indexed under another key.
    Duplicate(ObjectKey),
    /// Under `studies/`, but not an instance, media or sidecar key.
    NotAGatewayKey,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Unreadable(e) => write!(f, "cannot be read: {e}"),
            SkipReason::NotDicom(e) => write!(f, "not an instance the gateway can index: {e}"),
            SkipReason::WrongKey(k) => write!(f, "its header's UIDs belong under {k}"),
            SkipReason::Duplicate(k) => {
                write!(f, "the same SOP Instance UID is indexed under {k}")
            }
            SkipReason::NotAGatewayKey => f.write_str("not an instance, media or sidecar key"),
        }
    }
}

impl Summary {
    /// Whether every object under `studies/` is indexed.
    pub fn is_complete(&self) -> bool {
        self.skipped.is_empty()
    }

    fn skip(&mut self, key: impl Into<String>, reason: SkipReason) {
        let key = key.into();
        tracing::warn!(key = %key, reason = %reason, "not indexed");
        self.skipped.push(Skipped { key, reason });
    }

    fn absorb(&mut self, other: Summary) {
        self.studies += other.studies;
        self.instances += other.instances;
        self.media += other.media;
        self.media_guessed += other.media_guessed;
        self.already_indexed += other.already_indexed;
        self.skipped.extend(other.skipped);
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut skipped = self.skipped.clone();
        skipped.sort_by(|a, b| a.key.cmp(&b.key));
        for s in &skipped {
            writeln!(f, "skipped {}: {}", s.key, s.reason)?;
        }
        writeln!(
            f,
            "studies: {}, instances added: {}, media added: {} ({} without sidecar), \
             already indexed: {}, skipped: {}",
            self.studies,
            self.instances,
            self.media,
            self.media_guessed,
            self.already_indexed,
            self.skipped.len()
        )
    }
}

/// Indexes every study in the store (see [`index_study`]), a few at once.
/// Objects under `studies/` that are no gateway key are reported as skipped.
pub async fn reindex(store: &BlobStore, index: &Index) -> Result<Summary> {
    let dirs = study_dirs(store).await?;
    let mut summary = Summary::default();
    for meta in dirs.other {
        summary.skip(meta.location.to_string(), SkipReason::NotAGatewayKey);
    }
    let total = dirs.studies.len();
    let mut runs = futures::stream::iter(dirs.studies)
        .map(|study| async move { index_study(store, index, &study).await })
        .buffer_unordered(STUDIES_AT_ONCE);
    let mut done = 0;
    while let Some(study) = runs.next().await {
        summary.absorb(study?);
        done += 1;
        if done % 1000 == 0 {
            tracing::info!(done, total, "studies reindexed");
        }
    }
    Ok(summary)
}

/// Indexes what the store holds for `study` and the index lacks: instances
/// from their headers, media from their sidecars. Objects that cannot be
/// indexed are logged and reported, and do not stop the run; errors are for
/// a store that cannot be listed or an index that cannot be written.
///
/// Safe while the gateway runs: what the index has is replaced only where
/// its object is gone from the store (an instance another gateway moved),
/// and then only if the entry did not change meanwhile; what is added is
/// what the store holds.
pub async fn index_study(store: &BlobStore, index: &Index, study: &Uid) -> Result<Summary> {
    index_study_beside(store, index, study, None).await
}

/// [`index_study`] beside a running gateway's ingest: an entry is moved to
/// the object the store holds only under the instance's ingest lock, so an
/// instance received again meanwhile is not taken for a moved one.
pub async fn index_study_beside(
    store: &BlobStore,
    index: &Index,
    study: &Uid,
    ingest_locks: impl Into<Option<&Arc<KeyLocks>>>,
) -> Result<Summary> {
    let ingest_locks = ingest_locks.into();
    let mut listing = list_study(store, study).await?;
    let mut summary = Summary::default();
    if listing.is_empty() {
        return Ok(summary);
    }
    summary.studies = 1;
    for meta in std::mem::take(&mut listing.other) {
        summary.skip(meta.location.to_string(), SkipReason::NotAGatewayKey);
    }
    drop_indexed(index, study, &mut listing, &mut summary).await?;

    let StudyListing {
        instances,
        media,
        mut sidecars,
        ..
    } = listing;
    let reads = instances
        .into_iter()
        .map(|(key, meta)| ToRead::Instance(key, meta))
        .chain(media.into_iter().map(|(key, meta)| {
            let sidecar = sidecars.remove(&key);
            ToRead::Media(key, meta, sidecar)
        }));
    let mut found: Vec<Found> = futures::stream::iter(reads)
        .map(|read| read.run(store))
        .buffer_unordered(HEADERS_AT_ONCE)
        .filter_map(|result| {
            let found = match result {
                Ok(found) => Some(found),
                Err((key, reason)) => {
                    summary.skip(key, reason);
                    None
                }
            };
            std::future::ready(found)
        })
        .collect()
        .await;
    // In the order they were stored, so study tags merge (later values win)
    // as they did at ingest.
    found.sort_by(|a, b| {
        (a.at, a.entry.object_key().as_str()).cmp(&(b.at, b.entry.object_key().as_str()))
    });
    for chunk in found.chunks(BATCH) {
        let batch: Vec<NewEntry> = chunk.iter().map(|f| f.entry.clone()).collect();
        let outcomes = blocking(index, "write the index", move |i| i.put_missing(&batch)).await?;
        for (found, outcome) in chunk.iter().zip(outcomes) {
            match (outcome, &found.entry) {
                (FillOutcome::Added, NewEntry::Instance(_)) => summary.instances += 1,
                (FillOutcome::Added, NewEntry::Media(_)) => {
                    summary.media += 1;
                    summary.media_guessed += u64::from(found.guessed);
                }
                (FillOutcome::AlreadyIndexed, _) => summary.already_indexed += 1,
                (FillOutcome::IndexedElsewhere(other), NewEntry::Instance(new)) => {
                    let sop = new.record.sop_instance_uid.as_str();
                    let _one_at_a_time = match ingest_locks {
                        Some(locks) => Some(locks.lock(sop).await),
                        None => None,
                    };
                    if store.exists(&other).await? {
                        summary.skip(new.record.object_key.as_str(), SkipReason::Duplicate(other));
                        continue;
                    }
                    // Another gateway moved the instance (a re-send under
                    // another study or series) and deleted the object this
                    // index points at: take the one the store holds, unless
                    // the entry changed meanwhile.
                    let (moving, from) = ((**new).clone(), other.clone());
                    let moved = blocking(index, "write the index", move |i| {
                        i.move_if_at(&moving, &from)
                    })
                    .await?;
                    if moved {
                        tracing::info!(
                            old = %other,
                            new = %new.record.object_key,
                            "index entry pointed at an object that is gone; moved to the one the store holds"
                        );
                        summary.instances += 1;
                    } else {
                        summary.already_indexed += 1;
                    }
                }
                (FillOutcome::IndexedElsewhere(other), entry) => {
                    summary.skip(entry.object_key().as_str(), SkipReason::Duplicate(other))
                }
            }
        }
    }
    tracing::debug!(
        study = %study,
        instances = summary.instances,
        media = summary.media,
        "study indexed"
    );
    Ok(summary)
}

/// Takes out of `listing` what the index already points at, so their headers
/// are not read for nothing.
async fn drop_indexed(
    index: &Index,
    study: &Uid,
    listing: &mut StudyListing,
    summary: &mut Summary,
) -> Result<()> {
    let lookup = study.clone();
    let (instances, media) = blocking(index, "read the index", move |i| {
        Ok((i.instances_of_study(&lookup)?, i.media_of_study(&lookup)?))
    })
    .await?;
    let known: std::collections::HashSet<ObjectKey> = instances
        .into_iter()
        .map(|r| r.object_key)
        .chain(media.into_iter().map(|m| m.object_key))
        .collect();
    let before = listing.instances.len() + listing.media.len();
    listing.instances.retain(|(key, _)| !known.contains(key));
    listing.media.retain(|(key, _)| !known.contains(key));
    summary.already_indexed += (before - listing.instances.len() - listing.media.len()) as u64;
    Ok(())
}

/// One object to read.
enum ToRead {
    Instance(ObjectKey, ObjectMeta),
    Media(ObjectKey, ObjectMeta, Option<ObjectMeta>),
}

/// An entry ready for the index.
struct Found {
    /// When the object was stored.
    at: SystemTime,
    entry: NewEntry,
    /// A media entry whose MIME type was guessed.
    guessed: bool,
}

impl ToRead {
    async fn run(self, store: &BlobStore) -> Result<Found, (String, SkipReason)> {
        match self {
            ToRead::Instance(key, meta) => match instance_entry(store, &key, &meta).await {
                Ok(entry) => Ok(Found {
                    at: meta.last_modified.into(),
                    entry,
                    guessed: false,
                }),
                Err(reason) => Err((key.to_string(), reason)),
            },
            ToRead::Media(key, meta, sidecar) => {
                let (record, guessed) = media_record(store, &key, &meta, sidecar.as_ref()).await;
                Ok(Found {
                    at: meta.last_modified.into(),
                    entry: NewEntry::Media(record),
                    guessed,
                })
            }
        }
    }
}

/// An instance's index entry, from its header and the object's metadata.
async fn instance_entry(
    store: &BlobStore,
    key: &ObjectKey,
    meta: &ObjectMeta,
) -> Result<NewEntry, SkipReason> {
    let header = read_header(store, meta).await?;
    let expected = ObjectKey::instance(&header.study, &header.series, &header.sop_instance);
    if &expected != key {
        return Err(SkipReason::WrongKey(expected));
    }
    let record = InstanceRecord {
        object_key: key.clone(),
        study_instance_uid: header.study,
        series_instance_uid: header.series,
        sop_instance_uid: header.sop_instance,
        sop_class_uid: header.sop_class,
        size: meta.size,
        transfer_syntax_uid: header.transfer_syntax,
        received_at: rfc3339(meta.last_modified.into()),
        source: header
            .source_ae
            .unwrap_or_else(|| REINDEX_SOURCE.to_owned()),
        tags: header.instance,
    };
    Ok(NewEntry::Instance(Box::new(NewInstance {
        record,
        study: header.study_tags,
    })))
}

/// A media file's index entry: its sidecar's record (with the object's
/// size), or, when there is no usable sidecar, one with a MIME type guessed
/// from the file name. The flag says it was guessed.
async fn media_record(
    store: &BlobStore,
    key: &ObjectKey,
    meta: &ObjectMeta,
    sidecar: Option<&ObjectMeta>,
) -> (MediaRecord, bool) {
    let (study, name) = key.as_media().expect("a media key");
    if let Some(sidecar) = sidecar {
        match read_sidecar(store, sidecar, key).await {
            Ok(mut record) => {
                if record.size != meta.size {
                    tracing::warn!(key = %key, sidecar = record.size, object = meta.size,
                        "the sidecar's size differs from the object's; using the object's");
                    record.size = meta.size;
                }
                return (record, false);
            }
            Err(reason) => {
                tracing::warn!(key = %key, reason = %reason, "unusable media sidecar; guessing the MIME type")
            }
        }
    }
    let record = MediaRecord {
        study_instance_uid: study,
        file_name: name.to_owned(),
        mime_type: guess_mime_type(name).to_owned(),
        object_key: key.clone(),
        size: meta.size,
        stored_at: rfc3339(meta.last_modified.into()),
        source: REINDEX_SOURCE.to_owned(),
        report: None,
    };
    (record, true)
}

/// The record a sidecar keeps, if it is one and describes `key`.
async fn read_sidecar(
    store: &BlobStore,
    sidecar: &ObjectMeta,
    key: &ObjectKey,
) -> Result<MediaRecord, String> {
    if sidecar.size > MAX_SIDECAR {
        return Err(format!("{} bytes", sidecar.size));
    }
    let bytes = store
        .object_store()
        .get(&sidecar.location)
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let record: MediaRecord = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let describes = Some((record.study_instance_uid.clone(), record.file_name.as_str()));
    if &record.object_key != key || key.as_media() != describes || record.mime_type.is_empty() {
        return Err("it describes another file".into());
    }
    Ok(record)
}

/// The MIME type of a media file without a sidecar, from its extension.
pub fn guess_mime_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "mp4" => "video/mp4",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// RFC 3339 in UTC with millis, as ingest writes receive times.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_guessed_from_the_extension() {
        for (name, mime) in [
            ("report.pdf", "application/pdf"),
            ("REPORT.PDF", "application/pdf"),
            ("photo.jpg", "image/jpeg"),
            ("photo.JPEG", "image/jpeg"),
            ("scan.png", "image/png"),
            ("clip.mp4", "video/mp4"),
            ("notes.txt", "text/plain"),
            ("archive.tar.gz", "application/octet-stream"),
            ("no-extension", "application/octet-stream"),
        ] {
            assert_eq!(guess_mime_type(name), mime, "{name}");
        }
    }
}
