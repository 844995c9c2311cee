//! floor_scp: the two physical limits bench/ingest.py puts next to the
//! gateway. A minimal C-STORE SCP, std only, one thread per association.
//!
//!   --mode null    the peer alone: every data set is received and dropped as
//!                  it arrives, and acknowledged at once. The fastest any
//!                  receiver can be with this sender on this loopback.
//!   --mode floor   the durable floor: the same, but each data set is written
//!                  as it arrives (pwrite of whole 4 KiB pages, at least
//!                  64 KiB at a time, the last page zero-padded; aligned
//!                  offsets, wrapping) into a preallocated,
//!                  already written journal file and covered by an
//!                  `fdatasync` before its C-STORE-RSP, with group commit
//!                  across associations (leader/follower, as in the
//!                  gateway's src/ingest/journal/writer.rs). No index, no
//!                  per-instance file: the fastest any receiver that
//!                  acknowledges only durable data can be on this disk.
//!   --mode files   the floor of a receiver that keeps one file per
//!                  instance (as the gateway and storescp do): as floor,
//!                  and each data set is also written, as it arrives, into
//!                  a new file in --files DIR (created, written, closed;
//!                  not synced: the journal makes it durable, as the
//!                  gateway's inline records do).
//!
//! Build and try by hand (bench/ingest.py does the same build):
//!
//!   rustc -O --edition 2021 bench/floor_scp.rs -o bench/out/floor_scp
//!   bench/out/floor_scp --listen 127.0.0.1:11300 --mode null &
//!   bench/out/floor_scp --listen 127.0.0.1:11301 --mode floor --journal bench/out/floor.journal &
//!   export TCP_NODELAY=1
//!   /usr/bin/echoscu -aec X 127.0.0.1 11300 && /usr/bin/echoscu -aec X 127.0.0.1 11301
//!   /usr/bin/storescu -v -aec X +sd +r 127.0.0.1 11300 bench/out/sets/small9/part0 2>&1 | grep -c 'Received Store Response (Success)'
//!   /usr/bin/storescu -v -aec X +sd +r 127.0.0.1 11301 bench/out/sets/small9/part0 2>&1 | grep -c 'Received Store Response (Success)'
//!   kill %1 %2       # each printed "... stored N ..." after every association
//!
//! Usage: floor_scp --listen ADDR --mode null|floor|files [--journal PATH] [--files DIR]
//!        [--journal-mib N (256)] [--ae AE (any)] [--max-pdu N (262144)]
//!
//! The announced max PDU defaults to the gateway's (max_pdu_length, 256 KiB),
//! so the sender fragments the same way for both; DCMTK storescp announces
//! 16384. Every length read from the wire is checked; a PDU longer than
//! 1 MiB is refused with an A-ABORT; nothing from the wire can panic it.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

const MAX_PDU_BODY: u32 = 1 << 20; // refused above this (bench bound)
const MAX_COMMAND: usize = 64 * 1024; // a command set is a few hundred bytes
const ALIGN: u64 = 4096;
const FLUSH_AT: usize = 64 * 1024; // floor: write a data set in whole pages as it arrives
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPL_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1455.99";
const IMPL_VERSION: &str = "FLOOR_SCP_1";

// ---------------------------------------------------------------- journal

struct JState {
    end: u64,                 // next reservation (logical offset, grows forever)
    durable: u64,             // everything below is synced
    in_flight: BTreeSet<u64>, // reservations not yet written
    syncing: bool,
    failed: bool,
    syncs: u64,
}

/// A preallocated, already written file; records land at 4 KiB-aligned
/// offsets, wrapping at the end, and wait for a shared fdatasync.
struct Journal {
    file: File,
    size: u64,
    state: Mutex<JState>,
    changed: Condvar,
}

fn lock(m: &Mutex<JState>) -> std::sync::MutexGuard<'_, JState> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Journal {
    /// Opens `path`, making it first (zeros, synced, directory synced) unless
    /// it already has exactly `size` bytes.
    fn open(path: &Path, size: u64) -> io::Result<Journal> {
        let fresh = std::fs::metadata(path).map(|m| m.len() != size).unwrap_or(true);
        let file = OpenOptions::new().read(true).write(true).create(true).open(path)?;
        if fresh {
            file.set_len(0)?;
            let zeros = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < size {
                let n = (size - off).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], off)?;
                off += n as u64;
            }
            file.sync_all()?;
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            File::open(dir)?.sync_all()?;
        }
        let state = JState { end: 0, durable: 0, in_flight: BTreeSet::new(), syncing: false, failed: false, syncs: 0 };
        Ok(Journal { file, size, state: Mutex::new(state), changed: Condvar::new() })
    }

    /// Reserves room for `data` (4 KiB-aligned; a record never spans the
    /// wrap), writes it, and returns the logical end to wait for.
    fn append(&self, data: &[u8]) -> io::Result<u64> {
        let len = (data.len() as u64).checked_add(ALIGN - 1).map(|n| n / ALIGN * ALIGN);
        let len = match len {
            Some(n) if n <= self.size / 2 => n,
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "record larger than half the journal")),
        };
        let lsn = {
            let mut s = lock(&self.state);
            let off = s.end % self.size;
            if off + len > self.size {
                s.end += self.size - off;
            }
            let lsn = s.end;
            s.end += len;
            s.in_flight.insert(lsn);
            lsn
        };
        let written = self.file.write_all_at(data, lsn % self.size);
        let mut s = lock(&self.state);
        s.in_flight.remove(&lsn);
        if written.is_err() {
            s.failed = true;
        }
        self.changed.notify_all();
        written.map(|()| lsn + len)
    }

    /// Waits until an fdatasync covers everything below `end`; leads one if
    /// none is under way (for every record written when it starts).
    fn wait_durable(&self, end: u64) -> io::Result<()> {
        let mut s = lock(&self.state);
        loop {
            if s.failed {
                return Err(io::Error::new(io::ErrorKind::Other, "journal failed earlier"));
            }
            if s.durable >= end {
                return Ok(());
            }
            let target = s.in_flight.first().copied().unwrap_or(s.end);
            if s.syncing || target < end {
                // A sync is running, or an earlier record is still being
                // written: wait for either to finish.
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            s.syncing = true;
            drop(s);
            let synced = self.file.sync_data(); // fdatasync(2)
            s = lock(&self.state);
            s.syncing = false;
            s.syncs += 1;
            match synced {
                Ok(()) => s.durable = s.durable.max(target),
                Err(_) => s.failed = true, // never retried (fsyncgate)
            }
            self.changed.notify_all();
        }
    }
}

// ---------------------------------------------------------------- wire

struct Config {
    floor: Option<Journal>,
    /// files: where each data set gets its own new file.
    files: Option<PathBuf>,
    named: AtomicU64,
    ae: Option<String>,
    max_pdu: u32,
    stores: AtomicU64,
    echoes: AtomicU64,
    report: Mutex<()>,
}

/// `at + delta`, for positions inside a PDU (checked: they come from wire lengths).
fn plus(at: usize, delta: usize) -> io::Result<usize> {
    at.checked_add(delta).ok_or_else(|| bad("offset overflow"))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}
fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn uid_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end_matches(['\0', ' ']).to_string()
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one PDU into `body` (reused); returns its type, or None at a clean
/// EOF. Buffered, so a PDU header costs no read(2) of its own.
fn read_pdu(stream: &mut BufReader<TcpStream>, body: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut head = [0u8; 6];
    match stream.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    stream.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
    if len > MAX_PDU_BODY {
        let _ = stream.get_mut().write_all(&[0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0]); // A-ABORT, provider, invalid PDU parameter
        return Err(bad("PDU longer than 1 MiB"));
    }
    let len = usize::try_from(len).map_err(|_| bad("PDU length"))?;
    body.resize(len, 0);
    stream.read_exact(body)?;
    Ok(Some(head[0]))
}

fn push_item(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> io::Result<()> {
    let len = u16::try_from(value.len()).map_err(|_| bad("item too long"))?;
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

fn pdu(kind: u8, body: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(body.len()).map_err(|_| bad("PDU too long"))?;
    let mut out = Vec::with_capacity(body.len() + 6);
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// A-ASSOCIATE-RQ body → A-ASSOCIATE-AC PDU (or Err: answer with an abort).
fn associate(rq: &[u8], cfg: &Config) -> io::Result<Vec<u8>> {
    let fixed = rq.get(..68).ok_or_else(|| bad("short A-ASSOCIATE-RQ"))?;
    if let Some(ae) = &cfg.ae {
        let called = String::from_utf8_lossy(&fixed[4..20]).trim().to_string();
        if &called != ae {
            return Err(bad("called AE title not ours"));
        }
    }
    let mut items = Vec::new();
    let mut app_context = b"1.2.840.10008.3.1.1.1".to_vec();
    let mut at = 68usize;
    while at < rq.len() {
        let kind = rq[at];
        let len = usize::from(be16(rq, plus(at, 2)?).ok_or_else(|| bad("item header"))?);
        let start = at.checked_add(4).ok_or_else(|| bad("item"))?;
        let end = start.checked_add(len).ok_or_else(|| bad("item"))?;
        let value = rq.get(start..end).ok_or_else(|| bad("item past the PDU"))?;
        match kind {
            0x10 => app_context = value.to_vec(),
            0x20 => {
                let pcid = *value.first().ok_or_else(|| bad("presentation context"))?;
                let mut proposed = Vec::new();
                let mut sub = 4usize;
                while sub < value.len() {
                    let slen = usize::from(be16(value, plus(sub, 2)?).ok_or_else(|| bad("sub-item"))?);
                    let s0 = sub.checked_add(4).ok_or_else(|| bad("sub-item"))?;
                    let s1 = s0.checked_add(slen).ok_or_else(|| bad("sub-item"))?;
                    let sval = value.get(s0..s1).ok_or_else(|| bad("sub-item past the item"))?;
                    if value[sub] == 0x40 {
                        proposed.push(uid_text(sval));
                    }
                    sub = s1;
                }
                let chosen = proposed
                    .iter()
                    .find(|t| *t == IMPLICIT_LE || *t == EXPLICIT_LE)
                    .or(proposed.first())
                    .cloned();
                let (result, ts) = match chosen {
                    Some(ts) => (0u8, ts),
                    None => (4u8, IMPLICIT_LE.to_string()), // no transfer syntax proposed
                };
                let mut ac = vec![pcid, 0, result, 0];
                push_item(&mut ac, 0x40, ts.as_bytes())?;
                items.push(ac);
            }
            _ => {} // 0x50 user information: the peer's max PDU does not matter (our PDUs are small)
        }
        at = end;
    }
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(&[0, 1, 0, 0]);
    body.extend_from_slice(&fixed[4..68]); // called, calling AE and reserved, as received
    push_item(&mut body, 0x10, &app_context)?;
    for ac in &items {
        push_item(&mut body, 0x21, ac)?;
    }
    let mut user = Vec::new();
    push_item(&mut user, 0x51, &cfg.max_pdu.to_be_bytes())?;
    push_item(&mut user, 0x52, IMPL_CLASS_UID.as_bytes())?;
    push_item(&mut user, 0x55, IMPL_VERSION.as_bytes())?;
    push_item(&mut body, 0x50, &user)?;
    pdu(0x02, &body)
}

#[derive(Default)]
struct Command {
    field: u16,
    message_id: u16,
    sop_class: Vec<u8>,
    sop_instance: Vec<u8>,
}

/// The elements we need from an Implicit VR LE command set.
fn parse_command(b: &[u8]) -> io::Result<Command> {
    let mut c = Command::default();
    let mut at = 0usize;
    while at < b.len() {
        let group = le16(b, at).ok_or_else(|| bad("command element"))?;
        let elem = le16(b, plus(at, 2)?).ok_or_else(|| bad("command element"))?;
        let len = usize::try_from(le32(b, plus(at, 4)?).ok_or_else(|| bad("command element"))?)
            .map_err(|_| bad("command length"))?;
        let v0 = at.checked_add(8).ok_or_else(|| bad("command"))?;
        let v1 = v0.checked_add(len).ok_or_else(|| bad("command"))?;
        let value = b.get(v0..v1).ok_or_else(|| bad("command element past the end"))?;
        if group == 0 {
            match elem {
                0x0002 => c.sop_class = value.to_vec(),
                0x0100 => c.field = le16(value, 0).ok_or_else(|| bad("command field"))?,
                0x0110 => c.message_id = le16(value, 0).ok_or_else(|| bad("message id"))?,
                0x1000 => c.sop_instance = value.to_vec(),
                _ => {}
            }
        }
        at = v1;
    }
    Ok(c)
}

fn push_elem(out: &mut Vec<u8>, elem: u16, value: &[u8]) -> io::Result<()> {
    let padded = u32::try_from(plus(value.len(), value.len() % 2)?).map_err(|_| bad("element too long"))?;
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&padded.to_le_bytes());
    out.extend_from_slice(value);
    if value.len() % 2 == 1 {
        out.push(0);
    }
    Ok(())
}

/// C-STORE-RSP / C-ECHO-RSP, status 0x0000, as one P-DATA-TF PDU.
fn response(pcid: u8, rq: &Command, field: u16) -> io::Result<Vec<u8>> {
    let sop_class = rq.sop_class.strip_suffix(b"\0").unwrap_or(&rq.sop_class);
    let sop_instance = rq.sop_instance.strip_suffix(b"\0").unwrap_or(&rq.sop_instance);
    let mut rest = Vec::with_capacity(200);
    push_elem(&mut rest, 0x0002, sop_class)?;
    push_elem(&mut rest, 0x0100, &field.to_le_bytes())?;
    push_elem(&mut rest, 0x0120, &rq.message_id.to_le_bytes())?;
    push_elem(&mut rest, 0x0800, &0x0101u16.to_le_bytes())?;
    push_elem(&mut rest, 0x0900, &0u16.to_le_bytes())?;
    if field == 0x8001 {
        push_elem(&mut rest, 0x1000, sop_instance)?;
    }
    let group_len = u32::try_from(rest.len()).map_err(|_| bad("command too long"))?;
    let mut command = Vec::with_capacity(rest.len() + 12);
    push_elem(&mut command, 0x0000, &group_len.to_le_bytes())?;
    command.extend_from_slice(&rest);
    let pdv_len = u32::try_from(plus(command.len(), 2)?).map_err(|_| bad("PDV too long"))?;
    let mut body = Vec::with_capacity(command.len() + 6);
    body.extend_from_slice(&pdv_len.to_be_bytes());
    body.extend_from_slice(&[pcid, 0x03]); // command, last fragment
    body.extend_from_slice(&command);
    pdu(0x04, &body)
}

/// What an association is in the middle of.
struct Assoc {
    command: Vec<u8>,
    pending: Option<(u8, Command)>, // a C-STORE-RQ whose data set is arriving
    data: Vec<u8>,                  // floor: data set bytes not yet in the journal
    file: Option<File>,             // files: the data set's own file
    end: u64,                       // floor: journal end of the data set so far
    stores: u64,
}

/// Floor: writes the whole 4 KiB pages collected so far (all of it, padded
/// with zeros, at the end of the data set), so no write is a partial page
/// (which could make the kernel read the block first) and a long data set
/// is copied into the page cache while the rest of it still arrives.
fn flush_data(a: &mut Assoc, cfg: &Config, last: bool) -> io::Result<()> {
    if let Some(j) = &cfg.floor {
        if last {
            let padded = a.data.len().div_ceil(ALIGN as usize) * ALIGN as usize;
            a.data.resize(padded, 0);
        }
        let whole = a.data.len() / ALIGN as usize * ALIGN as usize;
        if whole > 0 {
            a.end = a.end.max(j.append(&a.data[..whole])?);
            a.data.drain(..whole);
        }
    }
    Ok(())
}

fn p_data(body: &[u8], a: &mut Assoc, cfg: &Config, out: &mut TcpStream) -> io::Result<()> {
    let mut at = 0usize;
    while at < body.len() {
        let len = usize::try_from(be32(body, at).ok_or_else(|| bad("PDV header"))?).map_err(|_| bad("PDV"))?;
        let v0 = at.checked_add(4).ok_or_else(|| bad("PDV"))?;
        let v1 = v0.checked_add(len).ok_or_else(|| bad("PDV"))?;
        let pdv = body.get(v0..v1).ok_or_else(|| bad("PDV past the PDU"))?;
        if pdv.len() < 2 {
            return Err(bad("PDV shorter than its header"));
        }
        let (pcid, control, value) = (pdv[0], pdv[1], &pdv[2..]);
        let last = control & 2 != 0;
        if control & 1 != 0 {
            if a.command.len().checked_add(value.len()).map_or(true, |n| n > MAX_COMMAND) {
                return Err(bad("command set too long"));
            }
            a.command.extend_from_slice(value);
            if last {
                let c = parse_command(&a.command)?;
                a.command.clear();
                match c.field {
                    0x0001 => {
                        a.pending = Some((pcid, c));
                        a.end = 0;
                    }
                    0x0030 => {
                        out.write_all(&response(pcid, &c, 0x8030)?)?;
                        cfg.echoes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => return Err(bad("command not supported")),
                }
            }
        } else {
            if a.pending.is_none() {
                return Err(bad("data set without a C-STORE-RQ"));
            }
            if cfg.floor.is_some() {
                if let Some(dir) = &cfg.files {
                    if a.file.is_none() {
                        let n = cfg.named.fetch_add(1, Ordering::Relaxed);
                        let path = dir.join(format!("{}-{n}.dcm", std::process::id()));
                        a.file = Some(OpenOptions::new().write(true).create_new(true).open(path)?);
                    }
                    if let Some(f) = a.file.as_mut() {
                        f.write_all(value)?;
                    }
                }
                a.data.extend_from_slice(value);
                if a.data.len() >= FLUSH_AT {
                    flush_data(a, cfg, false)?;
                }
            } // null: dropped as it arrives
            if last {
                flush_data(a, cfg, true)?;
                a.file = None; // closed
                if let Some(j) = &cfg.floor {
                    j.wait_durable(a.end)?;
                }
                let (pc, c) = a.pending.take().ok_or_else(|| bad("no C-STORE-RQ"))?;
                out.write_all(&response(pc, &c, 0x8001)?)?;
                a.stores += 1;
                cfg.stores.fetch_add(1, Ordering::Relaxed);
            }
        }
        at = v1;
    }
    Ok(())
}

fn association(stream: TcpStream, cfg: &Config) -> io::Result<u64> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut stream = BufReader::with_capacity(256 * 1024, stream);
    let mut body = Vec::new();
    let mut a = Assoc { command: Vec::new(), pending: None, data: Vec::new(), file: None, end: 0, stores: 0 };
    match read_pdu(&mut stream, &mut body)? {
        Some(0x01) => match associate(&body, cfg) {
            Ok(ac) => stream.get_mut().write_all(&ac)?,
            Err(e) => {
                let _ = stream.get_mut().write_all(&[0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]);
                return Err(e);
            }
        },
        _ => return Err(bad("expected A-ASSOCIATE-RQ")),
    }
    loop {
        match read_pdu(&mut stream, &mut body)? {
            Some(0x04) => {
                if let Err(e) = p_data(&body, &mut a, cfg, stream.get_mut()) {
                    let _ = stream.get_mut().write_all(&[0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0]);
                    return Err(e);
                }
            }
            Some(0x05) => {
                stream.get_mut().write_all(&pdu(0x06, &[0, 0, 0, 0])?)?; // A-RELEASE-RP
                return Ok(a.stores);
            }
            Some(0x07) | None => return Ok(a.stores),
            Some(_) => {
                let _ = stream.get_mut().write_all(&[0x07, 0, 0, 0, 0, 4, 0, 0, 2, 1]); // unrecognized PDU
                return Err(bad("unexpected PDU"));
            }
        }
    }
}

// ---------------------------------------------------------------- main

fn usage(why: &str) -> ! {
    eprintln!("floor_scp: {why}");
    eprintln!("usage: floor_scp --listen ADDR --mode null|floor|files [--journal PATH] [--files DIR] [--journal-mib N] [--ae AE] [--max-pdu N]");
    exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut mode, mut journal, mut ae) = (None, None, None::<PathBuf>, None);
    let mut files = None::<PathBuf>;
    let (mut journal_mib, mut max_pdu) = (256u64, 262_144u32);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => listen = Some(value),
            "--mode" => mode = Some(value),
            "--journal" => journal = Some(PathBuf::from(value)),
            "--files" => files = Some(PathBuf::from(value)),
            "--ae" => ae = Some(value),
            "--journal-mib" => journal_mib = value.parse().unwrap_or_else(|_| usage("--journal-mib: a number")),
            "--max-pdu" => max_pdu = value.parse().unwrap_or_else(|_| usage("--max-pdu: a number")),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    let listen = listen.unwrap_or_else(|| usage("--listen is required"));
    if !(4096..=MAX_PDU_BODY).contains(&max_pdu) {
        usage("--max-pdu must be 4096..=1048576");
    }
    let files = match mode.as_deref() {
        Some("files") => {
            let dir = files.unwrap_or_else(|| usage("--mode files needs --files"));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("floor_scp: files {}: {e}", dir.display());
                exit(1)
            }
            Some(dir)
        }
        _ => None,
    };
    let floor = match mode.as_deref() {
        Some("null") => None,
        Some("floor") | Some("files") => {
            let path = journal.unwrap_or_else(|| usage("--mode floor|files needs --journal"));
            let size = journal_mib.checked_mul(1 << 20).filter(|s| *s >= 16 << 20).unwrap_or_else(|| usage("--journal-mib: 16 or more"));
            match Journal::open(&path, size) {
                Ok(j) => Some(j),
                Err(e) => {
                    eprintln!("floor_scp: journal {}: {e}", path.display());
                    exit(1)
                }
            }
        }
        _ => usage("--mode null|floor|files"),
    };
    let what = match (&floor, &files) {
        (_, Some(_)) => "files",
        (Some(_), None) => "floor",
        (None, None) => "null",
    };
    let cfg = Arc::new(Config {
        floor,
        files,
        named: AtomicU64::new(0),
        ae,
        max_pdu,
        stores: AtomicU64::new(0),
        echoes: AtomicU64::new(0),
        report: Mutex::new(()),
    });
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("floor_scp: bind {listen}: {e}");
        exit(1)
    });
    println!("listening on {listen} (mode {what}, max PDU {max_pdu})");
    let _ = io::stdout().flush();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("floor_scp: accept: {e}");
                continue;
            }
        };
        let cfg = Arc::clone(&cfg);
        thread::spawn(move || {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let outcome = association(stream, &cfg);
            // One line per association with the running totals: bench/ingest.py
            // reads the last "stored N" as the count of acknowledged instances.
            let _guard = cfg.report.lock().unwrap_or_else(|p| p.into_inner());
            let (stores, echoes) = (cfg.stores.load(Ordering::SeqCst), cfg.echoes.load(Ordering::SeqCst));
            let syncs = cfg.floor.as_ref().map_or(0, |j| lock(&j.state).syncs);
            match outcome {
                Ok(n) => println!("{peer}: {n} stored; total stored {stores} echoes {echoes} syncs {syncs}"),
                Err(e) => println!("{peer}: aborted: {e}; total stored {stores} echoes {echoes} syncs {syncs}"),
            }
            let _ = io::stdout().flush();
        });
    }
}
