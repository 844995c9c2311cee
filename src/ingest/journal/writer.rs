//! Appending records with group commit: leader and followers, no committer
//! thread (docs/ingest-journal.md, "The acknowledgement path").
//!
//! A writer reserves its record's place under the mutex (`lsn = end; end +=
//! size`), writes it with `pwrite` outside the mutex, then waits until the
//! log is durable past its record. Whoever finds no sync under way leads
//! one: it closes the group at `end`, pads it to the next 4 KiB boundary (so
//! the next group never rewrites a block holding an acknowledged record),
//! waits for the group's writes still in flight, `fdatasync`s the segment
//! files the group touches and moves `durable`. Records that arrive during a
//! sync form the next group, so the more writers, the more records per sync.
//!
//! A failed write or sync fails the journal for good (PostgreSQL's
//! "fsyncgate" lesson: after a failed `fsync` the kernel may have dropped the
//! dirty pages, and a second `fsync` would lie); only a restart, which reads
//! back what is really on disk, resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use thiserror::Error;

use super::format::{self, GROUP_ALIGN, Kind, RECORD_HEADER, RecordHeader, SEGMENT_HEADER};
use super::segment;

#[derive(Debug, Error)]
pub enum Error {
    #[error("journal record of {len} bytes above the bound {max}")]
    TooLong { len: u64, max: u64 },
    #[error("journal full: no free segment after {0}")]
    Full(u64),
    #[error("journal failed earlier; a restart is needed")]
    Failed,
    #[error("journal write: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Segment(#[from] segment::Error),
}

/// Where a record landed; `end` is the first LSN after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub lsn: u64,
    pub end: u64,
}

struct State {
    /// Where the next record is reserved.
    end: u64,
    /// Every record below this is on disk (synced).
    durable: u64,
    /// Instance and abort records reserved and not yet applied (or
    /// aborted): `settled` is the lowest of them, or `durable`. Kept under
    /// the writer's lock so a checkpoint can never see a record as settled
    /// between its sync and its application.
    unapplied: BTreeSet<u64>,
    /// Journal id and number of segments to keep, for recycling.
    journal_id: [u8; 16],
    keep: u64,
    /// Start LSNs of reservations not yet written.
    in_flight: BTreeSet<u64>,
    syncing: bool,
    failed: bool,
    /// Records reserved so far, and those made durable: a group's size is
    /// the difference when it closes (for the commit-batch metric).
    reserved: u64,
    synced: u64,
    /// Open segment files by number: the current one and the free ones.
    segments: BTreeMap<u64, Arc<File>>,
    /// Threads waiting on `changed`: with none, a change wakes nobody (a
    /// notification is a system call whether or not anyone waits, and with
    /// one association nobody ever does).
    waiting: usize,
}

pub struct Writer {
    dir: PathBuf,
    journal_id: [u8; 16],
    segment_size: u64,
    state: Mutex<State>,
    changed: Condvar,
}

/// What a reservation must write: an optional pad closing the previous
/// segment, and the record itself.
struct Reservation {
    tail_pad: Option<(Arc<File>, u64, u64)>,
    file: Arc<File>,
    lsn: u64,
    settled: u64,
}

impl Writer {
    /// A writer whose next record goes at `start` (a position recovery
    /// found: the start of a segment's records or a group boundary), using
    /// segments `start`'s segment .. + `count` (created if missing, with
    /// the directory synced once).
    pub fn open(
        dir: &Path,
        segment_size: u64,
        count: u64,
        journal_id: [u8; 16],
        start: u64,
    ) -> Result<Writer, Error> {
        format::check_segment_size(segment_size).map_err(segment::Error::from)?;
        let first = start / segment_size;
        let mut segments = BTreeMap::new();
        let mut created = false;
        for n in first..first + count.max(1) {
            let file = match segment::open(dir, n, segment_size, journal_id)? {
                Some(file) => file,
                None => {
                    segment::create(dir, n, segment_size, journal_id)?;
                    created = true;
                    segment::open(dir, n, segment_size, journal_id)?.expect("segment just created")
                }
            };
            segments.insert(n, Arc::new(file));
        }
        if created {
            segment::sync_dir(dir)?;
        }
        let start = if start % segment_size == 0 {
            // A fresh segment: records start after its header.
            start + SEGMENT_HEADER
        } else {
            // Recovery's end of the log: whatever lies after it in this
            // segment (a torn group, stale records) goes inside a pad that
            // is synced before anything new is written, and new records
            // start in the next segment, so a later scan can never take
            // an old record for one of theirs.
            let seg_end = (first + 1) * segment_size;
            let file = segments.get(&first).expect("opened above");
            if seg_end - start >= RECORD_HEADER {
                write_pad(file, start, seg_end - start, segment_size, 0)?;
                file.sync_data()?;
            }
            if !segments.contains_key(&(first + 1)) {
                return Err(Error::Full(first + 1));
            }
            seg_end + SEGMENT_HEADER
        };
        Ok(Writer {
            dir: dir.to_path_buf(),
            journal_id,
            segment_size,
            state: Mutex::new(State {
                end: start,
                durable: start,
                unapplied: BTreeSet::new(),
                journal_id,
                keep: count.max(2),
                in_flight: BTreeSet::new(),
                syncing: false,
                reserved: 0,
                synced: 0,
                failed: false,
                segments,
                waiting: 0,
            }),
            changed: Condvar::new(),
        })
    }

    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A record's identity across journals: the journal's id and its LSN
    /// (event ids derive from it).
    pub fn record_id(&self, lsn: u64) -> String {
        record_id(self.journal_id, lsn)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that a
        // waiter could misread (every field is set in one step), so the
        // poison is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything below this LSN is durable.
    pub fn durable(&self) -> u64 {
        self.lock().durable
    }

    /// The record at `lsn` was applied (or aborted): once every record
    /// below it is too, the checkpoint may pass it.
    pub fn applied(&self, lsn: u64) {
        self.lock().unapplied.remove(&lsn);
    }

    /// Every record below this LSN was applied or aborted (and is durable).
    pub fn settled(&self) -> u64 {
        settled(&self.lock())
    }

    /// Renames segments wholly below `checkpoint` to the next free numbers
    /// (new header, `fdatasync`, directory `fsync` before first use), so
    /// the journal keeps `segments` files and never grows; segments beyond
    /// that are removed. Stale segment files left below the writer's first
    /// one by an earlier run are recycled the same way.
    pub fn recycle_below(&self, checkpoint: u64) -> Result<usize, Error> {
        let size = self.segment_size;
        let limit = checkpoint / size; // segments < limit end at or below it
        let mut stale: Vec<u64> = {
            let st = self.lock();
            st.segments.range(..limit).map(|(n, _)| *n).collect()
        };
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                if n < limit && !stale.contains(&n) {
                    stale.push(n);
                }
            }
        }
        stale.sort_unstable();
        let mut recycled = 0;
        for n in stale {
            let (next, ahead, id) = {
                let mut st = self.lock();
                st.segments.remove(&n);
                let last = st.segments.keys().next_back().copied().unwrap_or(n);
                (last + 1, st.segments.len() as u64, st.journal_id)
            };
            let old = segment::path(&self.dir, n);
            if ahead >= self.lock().keep {
                std::fs::remove_file(&old)?;
                continue;
            }
            let new = segment::path(&self.dir, next);
            std::fs::rename(&old, &new)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&new)?;
            let header = format::SegmentHeader {
                segment_size: size,
                number: next,
                journal_id: id,
            };
            file.write_all_at(&header.encode(), 0)?;
            file.sync_data()?;
            segment::sync_dir(&self.dir)?;
            let mut st = self.lock();
            st.segments.insert(next, Arc::new(file));
            self.notify(&st);
            recycled += 1;
        }
        Ok(recycled)
    }

    /// Stops the journal: every later append fails until a restart, whose
    /// replay then finishes what could not be (a record applied halfway, a
    /// checkpoint whose sync failed).
    pub fn fail(&self, why: &str) {
        let mut st = self.lock();
        if !st.failed {
            tracing::error!(
                why,
                "ingest journal stopped; instances are refused until a restart replays it"
            );
        }
        st.failed = true;
        self.notify(&st);
    }

    /// Whether the journal stopped (a failed write, sync or apply).
    pub fn failed(&self) -> bool {
        self.lock().failed
    }

    /// Appends one record and returns once it is durable. Blocking.
    pub fn append(&self, kind: Kind, flags: u8, payload: &[u8]) -> Result<Appended, Error> {
        let len = payload.len() as u64;
        let max = segment::max_payload(self.segment_size);
        if len > max || kind == Kind::Pad {
            return Err(Error::TooLong { len, max });
        }
        let footprint = format::footprint(len);
        let res = {
            let mut st = self.lock();
            if st.failed {
                return Err(Error::Failed);
            }
            self.reserve(&mut st, footprint)?
        };
        let end = res.lsn + footprint;
        let written = self.write(&res, kind, flags, payload);
        {
            let mut st = self.lock();
            st.in_flight.remove(&res.lsn);
            if let Err(e) = written {
                st.failed = true;
                self.notify(&st);
                return Err(e.into());
            }
            self.notify(&st);
            self.wait_durable(st, end)?;
        }
        Ok(Appended { lsn: res.lsn, end })
    }

    /// Reserves `footprint` bytes, moving to the next segment (and padding
    /// the rest of this one) when they do not fit.
    fn reserve(&self, st: &mut State, footprint: u64) -> Result<Reservation, Error> {
        let size = self.segment_size;
        let n = st.end / size;
        let seg_end = (n + 1) * size;
        let mut tail_pad = None;
        if st.end + footprint > seg_end {
            let room = seg_end - st.end;
            if room >= RECORD_HEADER {
                let file = st.segments.get(&n).cloned().expect("current segment open");
                // Written with the record and covered by its reservation
                // (the leader waits for every reservation below its group's
                // end, and the pad lies below the record).
                tail_pad = Some((file, st.end, room));
            }
            let next = seg_end + SEGMENT_HEADER;
            if !st.segments.contains_key(&(next / size)) {
                return Err(Error::Full(next / size));
            }
            st.end = next;
        }
        let n = st.end / size;
        let file = st.segments.get(&n).cloned().ok_or(Error::Full(n))?;
        let lsn = st.end;
        let settled = settled(st);
        st.end += footprint;
        if st.end % size == 0 {
            // Exactly full: the next record starts after the next header.
            st.end += SEGMENT_HEADER;
        }
        st.in_flight.insert(lsn);
        st.unapplied.insert(lsn);
        st.reserved += 1;
        Ok(Reservation {
            tail_pad,
            file,
            lsn,
            settled,
        })
    }

    fn write(
        &self,
        res: &Reservation,
        kind: Kind,
        flags: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        if let Some((file, at, room)) = &res.tail_pad {
            write_pad(file, *at, *room, self.segment_size, res.settled)?;
        }
        let header = RecordHeader {
            len: payload.len() as u32,
            kind,
            flags,
            lsn: res.lsn,
            settled: res.settled,
        };
        let mut buf = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
        buf.extend_from_slice(&header.encode(payload));
        buf.extend_from_slice(payload);
        res.file.write_all_at(&buf, res.lsn % self.segment_size)?;
        fail::fail_point!("journal::written", |_| std::process::abort());
        Ok(())
    }

    /// Waits until `durable >= end`, leading a sync when none runs.
    fn wait_durable<'a>(&'a self, mut st: MutexGuard<'a, State>, end: u64) -> Result<(), Error> {
        loop {
            if st.durable >= end {
                return Ok(());
            }
            if st.failed {
                return Err(Error::Failed);
            }
            if st.syncing {
                st = self.wait(st);
                continue;
            }
            st = self.lead(st)?;
        }
    }

    /// One group: close it at `end` with a pad to the next 4 KiB boundary,
    /// wait for its writes, sync, publish.
    fn lead<'a>(&'a self, mut st: MutexGuard<'a, State>) -> Result<MutexGuard<'a, State>, Error> {
        st.syncing = true;
        let size = self.segment_size;
        let from = st.durable;
        let mut pad = None;
        let open_end = st.end;
        let n = open_end / size;
        let seg_end = (n + 1) * size;
        let mut group_end = format::align_up(open_end, GROUP_ALIGN).expect("bounded LSN");
        if group_end - open_end > 0 && group_end - open_end < RECORD_HEADER {
            group_end += GROUP_ALIGN;
        }
        if group_end >= seg_end {
            // Pad to the end of the segment (if a header fits); the next
            // group starts in the next one.
            if seg_end - open_end >= RECORD_HEADER {
                pad = Some((open_end, seg_end - open_end));
            }
            group_end = seg_end + SEGMENT_HEADER;
        } else if group_end > open_end {
            pad = Some((open_end, group_end - open_end));
        }
        st.end = group_end;
        let records = st.reserved;
        let settled = settled(&st);
        let pad_file = st.segments.get(&n).cloned();
        while st.in_flight.range(..open_end).next().is_some() {
            st = self.wait(st);
        }
        if st.failed {
            // A write of this group failed: nothing of it may be published.
            st.syncing = false;
            self.notify(&st);
            return Ok(st);
        }
        let files: Vec<Arc<File>> = st
            .segments
            .range(from / size..=(open_end.saturating_sub(1)) / size)
            .map(|(_, f)| Arc::clone(f))
            .collect();
        drop(st);
        let result = (|| -> std::io::Result<()> {
            if let (Some((at, room)), Some(file)) = (pad, pad_file) {
                write_pad(&file, at, room, size, settled)?;
            }
            fail::fail_point!("journal::before_sync", |_| std::process::abort());
            for file in &files {
                file.sync_data()?;
            }
            fail::fail_point!("journal::synced", |_| std::process::abort());
            Ok(())
        })();
        let mut st = self.lock();
        st.syncing = false;
        match result {
            Ok(()) => {
                st.durable = group_end;
                crate::metrics::get().commit_batch(records.saturating_sub(st.synced) as usize);
                st.synced = records;
            }
            Err(e) => {
                st.failed = true;
                tracing::error!(error = %e, "journal sync failed; ingest stops until a restart");
            }
        }
        self.notify(&st);
        Ok(st)
    }

    /// Waits for a change, counted in `waiting`.
    fn wait<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.waiting += 1;
        let mut st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        st.waiting -= 1;
        st
    }

    /// Wakes whoever waits for a change (called with the lock held, so no
    /// waiter can come between the change and the check).
    fn notify(&self, st: &State) {
        if st.waiting > 0 {
            self.changed.notify_all();
        }
    }
}

/// See [`Writer::record_id`].
pub fn record_id(journal_id: [u8; 16], lsn: u64) -> String {
    let id: String = journal_id[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{id}{lsn:016x}")
}

fn settled(st: &State) -> u64 {
    st.unapplied
        .first()
        .copied()
        .unwrap_or(st.durable)
        .min(st.durable)
}

/// Writes a pad header at `at` covering `room` bytes (header included).
fn write_pad(
    file: &File,
    at: u64,
    room: u64,
    segment_size: u64,
    settled: u64,
) -> std::io::Result<()> {
    let header = RecordHeader {
        len: u32::try_from(room - RECORD_HEADER).expect("within a segment"),
        kind: Kind::Pad,
        flags: 0,
        lsn: at,
        settled: settled.min(at),
    };
    file.write_all_at(&header.encode(&[]), at % segment_size)
}
