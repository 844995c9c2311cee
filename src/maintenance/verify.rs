//! Checking that the index and the store agree: every entry has its object
//! (of the recorded size), and every instance or media object has an entry.
//! Sidecars are not entries of their own, and nothing outside `studies/` is
//! looked at.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use futures::StreamExt;

use super::listing::{list_study, study_dirs};
use super::{Result, blocking};
use crate::index::Index;
use crate::store::{BlobStore, ObjectKey};
use crate::uid::Uid;

/// Studies checked at once.
const STUDIES_AT_ONCE: usize = 4;

/// What [`verify`] found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Studies checked (in the store, the index or both).
    pub studies: u64,
    /// Instance and media entries checked.
    pub entries: u64,
    /// Instance and media objects checked.
    pub objects: u64,
    /// Every disagreement, by key.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProblemKind {
    /// An index entry whose object is not in the store.
    NoObject,
    /// An instance or media object no index entry points at.
    NoEntry,
    /// Both exist, with different sizes.
    SizeDiffers { indexed: u64, stored: u64 },
    /// Under `studies/`, but not an instance, media or sidecar key.
    NotAGatewayKey,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::NoObject => f.write_str("indexed, but the object is missing"),
            ProblemKind::NoEntry => f.write_str("stored, but not indexed"),
            ProblemKind::SizeDiffers { indexed, stored } => write!(
                f,
                "indexed with {indexed} bytes, but the object has {stored}"
            ),
            ProblemKind::NotAGatewayKey => f.write_str("not an instance, media or sidecar key"),
        }
    }
}

impl Report {
    /// Whether the index and the store agree.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }

    fn count(&self, kind: fn(&ProblemKind) -> bool) -> usize {
        self.problems.iter().filter(|p| kind(&p.kind)).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{}: {}", p.key, p.kind)?;
        }
        writeln!(
            f,
            "studies: {}, index entries: {}, objects: {}; missing objects: {}, \
             objects not indexed: {}, size mismatches: {}, not gateway keys: {}",
            self.studies,
            self.entries,
            self.objects,
            self.count(|k| *k == ProblemKind::NoObject),
            self.count(|k| *k == ProblemKind::NoEntry),
            self.count(|k| matches!(k, ProblemKind::SizeDiffers { .. })),
            self.count(|k| *k == ProblemKind::NotAGatewayKey),
        )
    }
}

/// Compares the index with the store, one study at a time (a few at once),
/// so memory holds one study's listing and entries, not the whole store's.
pub async fn verify(store: &BlobStore, index: &Index) -> Result<Report> {
    let dirs = study_dirs(store).await?;
    let indexed = blocking(index, "read the index", |i| i.indexed_studies()).await?;
    let studies: BTreeSet<Uid> = dirs.studies.into_iter().chain(indexed).collect();
    let mut report = Report {
        studies: studies.len() as u64,
        ..Report::default()
    };
    for meta in dirs.other {
        report.problems.push(Problem {
            key: meta.location.to_string(),
            kind: ProblemKind::NotAGatewayKey,
        });
    }
    let mut checks = futures::stream::iter(studies)
        .map(|study| async move { verify_study(store, index, &study).await })
        .buffer_unordered(STUDIES_AT_ONCE);
    while let Some(study) = checks.next().await {
        let study = study?;
        report.entries += study.entries;
        report.objects += study.objects;
        report.problems.extend(study.problems);
    }
    report.problems.sort_by(|a, b| a.key.cmp(&b.key));
    for p in &report.problems {
        tracing::warn!(key = %p.key, problem = %p.kind, "index and store disagree");
    }
    Ok(report)
}

async fn verify_study(store: &BlobStore, index: &Index, study: &Uid) -> Result<Report> {
    let listing = list_study(store, study).await?;
    let lookup = study.clone();
    let (instances, media) = blocking(index, "read the index", move |i| {
        Ok((i.instances_of_study(&lookup)?, i.media_of_study(&lookup)?))
    })
    .await?;

    let mut stored: HashMap<ObjectKey, u64> = listing
        .instances
        .into_iter()
        .chain(listing.media)
        .map(|(key, meta)| (key, meta.size))
        .collect();
    let mut report = Report {
        objects: stored.len() as u64,
        entries: (instances.len() + media.len()) as u64,
        ..Report::default()
    };
    let entries = instances
        .into_iter()
        .map(|r| (r.object_key, r.size))
        .chain(media.into_iter().map(|m| (m.object_key, m.size)));
    for (key, indexed) in entries {
        let kind = match stored.remove(&key) {
            None => ProblemKind::NoObject,
            Some(size) if size != indexed => ProblemKind::SizeDiffers {
                indexed,
                stored: size,
            },
            Some(_) => continue,
        };
        report.problems.push(Problem {
            key: key.to_string(),
            kind,
        });
    }
    let unindexed = stored.into_keys().map(|key| Problem {
        key: key.to_string(),
        kind: ProblemKind::NoEntry,
    });
    let strangers = listing.other.into_iter().map(|meta| Problem {
        key: meta.location.to_string(),
        kind: ProblemKind::NotAGatewayKey,
    });
    report.problems.extend(unindexed.chain(strangers));
    Ok(report)
}
