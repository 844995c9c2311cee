//! Opening the journal at start: read the checkpoint, replay what it does
//! not cover, close the log, checkpoint — before the spool is swept and
//! before any listener is bound (docs/ingest-journal.md, "Recovery").
//!
//! Every replay step checks whether it already happened: an object under
//! its key that is the spool file's inode is left alone; an index entry
//! equal to the record's is not written again. A crash during recovery
//! leaves the control file at the old checkpoint, so the next start does
//! the same work again.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::control::Control;
use super::entry::{self, Entry, Payload};
use super::format::{ControlSlot, FLAG_INLINE, Kind};
use super::placement::{dirs_to_sync, place, sync_dirs, sync_filesystem, write_replacing};
use super::runtime::{self, Error, Journal, Target};
use super::segment::{self, Stop};
use super::writer::Writer;
use crate::config::JournalConfig;
use crate::index::{Index, PutOutcome};

/// What recovery did, for the log.
#[derive(Debug, Default)]
pub struct Recovered {
    pub replayed: usize,
    pub already: usize,
    pub aborted: usize,
    /// Records of an instance or media file a later record replaced.
    pub superseded: usize,
}

/// Opens (or creates) the journal in `dir`, replaying into `root` (the
/// local store, or for `Target::Backlog` its pending directory, whose
/// copies are queued for upload again) and into `index`; spool files are
/// found in `spool_dir`.
pub fn open(
    dir: &Path,
    cfg: &JournalConfig,
    root: &Path,
    target: Target,
    spool_dir: &Path,
    index: &Index,
) -> Result<(Journal, Recovered), Error> {
    let io = |source| Error::Place {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut fresh = false;
    let control = match Control::open(dir)? {
        Some(control) => control,
        None => {
            fresh = true;
            let mut id = [0u8; 16];
            getrandom::getrandom(&mut id)
                .map_err(|e| Error::Damaged(format!("no randomness for a journal id: {e}")))?;
            let size = cfg.segment_size_mib.saturating_mul(1 << 20);
            super::format::check_segment_size(size)
                .map_err(|e| Error::Damaged(format!("journal.segment_size_mib: {e}")))?;
            Control::create(
                dir,
                ControlSlot {
                    generation: 1,
                    checkpoint: 0,
                    journal_id: id,
                    segment_size: size,
                },
            )?
        }
    };
    let slot = control.last();
    let size = slot.segment_size;
    let mut records = Vec::new();
    let mut aborted = std::collections::BTreeSet::new();
    let (end, stop) = segment::scan(dir, size, slot.journal_id, slot.checkpoint, |r| {
        match r.header.kind {
            Kind::Pad => {}
            Kind::Abort => match entry::decode_abort(&r.payload) {
                Ok(lsn) => {
                    aborted.insert(lsn);
                }
                Err(e) => tracing::error!(lsn = r.header.lsn, error = %e, "bad abort record"),
            },
            Kind::Instance | Kind::Media => records.push((r.header.lsn, r.header.flags, r.payload)),
        }
    })
    .map_err(|e| Error::Damaged(e.to_string()))?;
    tracing::info!(checkpoint = slot.checkpoint, end, stop = ?stop, records = records.len(), "journal scanned");
    if let Stop::Invalid(why) = &stop {
        tracing::debug!(end, why, "end of the journal");
    }

    // Every live record decoded once: its payload, and where an inline
    // record's object bytes start.
    let mut live = Vec::with_capacity(records.len());
    let mut done = Recovered::default();
    for (lsn, flags, record) in records {
        if aborted.contains(&lsn) {
            done.aborted += 1;
            continue;
        }
        let (payload, at) = if flags & FLAG_INLINE != 0 {
            let (payload, bytes) = Payload::decode_inline(&record)?;
            let at = record.len() - bytes.len();
            (payload, Some(at))
        } else {
            (Payload::decode(&record)?, None)
        };
        live.push((lsn, payload, at, record));
    }
    // The last live record of each instance (SOP Instance UID) and media
    // file: an earlier one was superseded (a re-sent instance replaced or
    // moved it, whose placement took its spool file or its key), and is
    // neither placed nor indexed; the later one is.
    let last: std::collections::HashMap<String, u64> = live
        .iter()
        .map(|(lsn, payload, _, _)| (identity(&payload.entry), *lsn))
        .collect();

    let mut dirs = Vec::new();
    let mut inline_written = false;
    // Studies whose counts the replay may have to correct.
    let mut touched = std::collections::BTreeSet::new();
    for (lsn, payload, at, record) in live {
        if last.get(&identity(&payload.entry)) != Some(&lsn) {
            done.superseded += 1;
            continue;
        }
        let bytes = at.map(|at| &record[at..]);
        let spool = spool_dir.join(&payload.spool);
        let new = payload.entry.clone().into_new();
        let mut uploaded = false;
        let dest = root.join(new.object_key().as_str());
        // Synced below whether placed now or by the process that crashed:
        // once the new checkpoint is written, nothing replays this record.
        if let Some(parent) = dest.parent() {
            dirs.push(parent.to_path_buf());
        }
        if let Some(bytes) = bytes {
            // Its bytes were never synced anywhere but here: the object is
            // written again, into a fresh inode, whatever it seems to hold
            // (a page cache that lost a writeback error still shows the
            // bytes the disk does not have), and synced with the
            // filesystem below.
            write_replacing(root, &new, bytes, lsn)?;
            inline_written = true;
        } else if !same_file(&spool, &dest) {
            match std::fs::metadata(&spool) {
                Ok(m) if m.len() == payload.len => {
                    place(root, &new, &spool)?;
                }
                _ => match std::fs::metadata(&dest) {
                    // The spool name went (a checkpoint that did not get to
                    // write its control slot): the object holds the inode.
                    Ok(m) if m.len() == payload.len => {}
                    // A pending copy goes only once the store has it.
                    Err(_) if matches!(target, Target::Backlog { .. }) => {
                        tracing::debug!(lsn, "journal record: its object was uploaded already");
                        uploaded = true;
                    }
                    _ => {
                        return Err(Error::Damaged(format!(
                            "journal record {lsn}: neither its spool file {} nor its object {} \
                             holds its {} bytes",
                            spool.display(),
                            dest.display(),
                            payload.len
                        )));
                    }
                },
            }
        }
        if let (Target::Backlog { backlog, .. }, false) = (&target, uploaded) {
            // Uploaded again (the store may have it already: the same
            // bytes, harmless); the checkpoint below makes the copy durable.
            let key = new.object_key().clone();
            backlog.enqueue(
                backlog.admit_replayed(payload.len),
                key,
                payload.len,
                Box::new(|| {}),
            );
            inline_written = true;
        }
        if indexed(index, &payload.entry)? {
            done.already += 1;
            continue;
        }
        let outcome =
            index.replay_journaled(&new, &super::writer::record_id(slot.journal_id, lsn))?;
        touched.extend(studies_of(&new, &outcome));
        if let (
            PutOutcome::Replaced {
                previous_key: Some(old),
            },
            Target::Backlog { backlog, .. },
        ) = (&outcome, &target)
        {
            // A moved instance's old copy must not be uploaded after all.
            // (If it was uploaded before the crash, it stays in the store:
            // see docs/ingest-journal.md, "Not built".)
            backlog.forget(old);
        }
        if let (
            PutOutcome::Replaced {
                previous_key: Some(old),
            },
            Target::Local { .. },
        ) = (outcome, &target)
        {
            let old = root.join(old.as_str());
            if let Err(e) = std::fs::remove_file(&old) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %old.display(), error = %e, "could not remove a moved instance's old object");
                }
            }
            if let Some(parent) = old.parent() {
                dirs.push(parent.to_path_buf());
            }
        }
        done.replayed += 1;
    }
    // An interrupted live write may have counted its instance already.
    index.recount_studies(&touched)?;
    fail::fail_point!("recover::replayed", |_| std::process::abort());
    if inline_written {
        sync_filesystem(root)?;
    } else {
        sync_dirs(&dirs_to_sync(root, dirs.iter().map(|d| d.as_path())))?;
    }
    index.flush()?;
    // A new journal starts at the beginning of segment 0; any other start
    // closes the log at its end (see Writer::open).
    let start = if fresh { 0 } else { end };
    let writer = Writer::open(dir, size, cfg.segments.max(2), slot.journal_id, start)?;
    let mut control = control;
    control.write(writer.durable())?;
    fail::fail_point!("recover::checkpointed", |_| std::process::abort());
    writer.recycle_below(writer.durable())?;
    Ok((
        Journal::new(writer, index.clone(), root.to_path_buf(), target, control),
        done,
    ))
}

/// What a record is about: one instance (its SOP Instance UID, whatever
/// study it is filed under) or one media file of a study.
fn identity(entry: &Entry) -> String {
    match entry {
        Entry::Instance(i) => format!("i {}", i.record.sop_instance_uid.as_str()),
        Entry::Media(m) => format!("m {} {}", m.study_instance_uid.as_str(), m.file_name),
    }
}

/// How many instance and media records the journal in `dir` holds past its
/// checkpoint (0 when there is no journal): what a start that does not use
/// the journal would drop.
pub fn unreplayed(dir: &Path) -> Result<usize, Error> {
    let Some(control) = Control::open(dir)? else {
        return Ok(0);
    };
    let slot = control.last();
    let mut records = 0;
    segment::scan(
        dir,
        slot.segment_size,
        slot.journal_id,
        slot.checkpoint,
        |r| {
            if matches!(r.header.kind, Kind::Instance | Kind::Media) {
                records += 1;
            }
        },
    )
    .map_err(|e| Error::Damaged(e.to_string()))?;
    Ok(records)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The studies an instance's entry changed: its own and, if it moved, the
/// one it left.
fn studies_of(new: &crate::index::NewEntry, outcome: &PutOutcome) -> Vec<crate::uid::Uid> {
    let crate::index::NewEntry::Instance(i) = new else {
        return Vec::new();
    };
    let moved_from = match outcome {
        PutOutcome::Replaced {
            previous_key: Some(old),
        } => old.study(),
        _ => None,
    };
    std::iter::once(i.record.study_instance_uid.clone())
        .chain(moved_from)
        .collect()
}

/// Whether the index already holds exactly this record's entry.
fn indexed(index: &Index, entry: &Entry) -> Result<bool, runtime::Error> {
    Ok(match entry {
        Entry::Instance(i) => {
            index.instance(&i.record.sop_instance_uid)?.as_ref() == Some(&i.record)
        }
        Entry::Media(m) => index.media(&m.study_instance_uid, &m.file_name)?.as_ref() == Some(m),
    })
}
