//! The fsyncs behind an acknowledgement, seen at the system-call level.
//!
//! `kill -9` (crash.rs) cannot tell whether the gateway fsyncs: the page
//! cache survives a killed process. Here the gateway runs under `strace -f`
//! and every C-STORE response must come after the fsyncs that make its
//! instance durable. Two protocols are pinned: the default commit (spool
//! file, rename into the store, directory and index sync) and, with
//! `--journal true`, the ingest journal's one record sync.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{self, AckRecord, Gateway, Opts};

/// One completed system call of the traced gateway that matters here.
#[derive(Debug)]
enum Call {
    /// fsync/fdatasync of the file or directory at this path, succeeded.
    Sync(String),
    Rename {
        from: String,
        to: String,
    },
    Mkdir(String),
    /// A write to a file at this path, with the bytes strace shows.
    Write(String, Vec<u8>),
    /// Bytes sent on a TCP socket (as many as strace shows).
    Send(Vec<u8>),
}

/// The quoted strings of an strace argument list, as printed (with `-x`,
/// a string with any non-printable byte is all `\xNN`, so no `"` inside).
fn quoted(args: &str) -> Vec<&str> {
    args.split('"').skip(1).step_by(2).collect()
}

/// The bytes of a string strace printed with `-x`.
fn unescape(printed: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(printed.len() / 4);
    let mut rest = printed.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some((&e, tail)) = rest.split_first() else {
            break;
        };
        rest = tail;
        match e {
            b'x' if rest.len() >= 2 => {
                let hex = std::str::from_utf8(&rest[..2]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                rest = &rest[2..];
            }
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'v' => out.push(0x0b),
            b'f' => out.push(0x0c),
            other => out.push(other),
        }
    }
    out
}

/// The path strace `-y` shows for the first argument's file descriptor.
fn fd_path(args: &str) -> Option<&str> {
    let start = args.find('<')? + 1;
    let end = start + args[start..].find('>')?;
    Some(&args[start..end])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses `strace -f -yy -x` output into completed calls, in completion
/// order (an `<unfinished ...>` call counts where it is resumed).
fn parse_trace(text: &str) -> Vec<Call> {
    let mut pending: BTreeMap<&str, String> = BTreeMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        // strace pads the pid column: "6309  sendto(...".
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let full = if let Some(call) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, call.to_owned());
            continue;
        } else if rest.starts_with("<... ") {
            let Some((_, tail)) = rest.split_once(" resumed>") else {
                continue;
            };
            match pending.remove(pid) {
                Some(head) => head + tail,
                None => continue,
            }
        } else {
            rest.to_owned()
        };
        let Some((name, args)) = full.split_once('(') else {
            continue;
        };
        let ok = full
            .rsplit_once(" = ")
            .is_some_and(|(_, r)| !r.starts_with('-'));
        let call = match name {
            "fsync" | "fdatasync" if ok => fd_path(args).map(|p| Call::Sync(p.to_owned())),
            "rename" | "renameat" | "renameat2" if ok => match quoted(args).as_slice() {
                [.., from, to] => Some(Call::Rename {
                    from: (*from).to_owned(),
                    to: (*to).to_owned(),
                }),
                _ => None,
            },
            "mkdir" | "mkdirat" if ok => quoted(args).first().map(|p| Call::Mkdir((*p).to_owned())),
            "write" | "pwrite64" | "writev" | "sendto" | "sendmsg" => match fd_path(args) {
                Some(p) if p.starts_with("TCP") => {
                    quoted(args).first().map(|data| Call::Send(unescape(data)))
                }
                Some(p) => Some(Call::Write(
                    p.to_owned(),
                    quoted(args)
                        .first()
                        .map(|d| unescape(d))
                        .unwrap_or_default(),
                )),
                None => None,
            },
            _ => None,
        };
        calls.extend(call);
    }
    calls
}

/// Runs `ack_sender.py` (12 instances, 1–700 KiB) against a gateway under
/// strace with `extra` options; returns the acknowledged SOP Instance UIDs,
/// the parsed trace and the gateway (exited).
fn traced_run(extra: &[&str]) -> (Vec<String>, Vec<Call>, Gateway, tempfile::TempDir) {
    let strace = common::require("/usr/bin/strace");
    let work = tempfile::tempdir().unwrap();
    let trace = work.path().join("trace");
    let mut opts = Opts::default().prefix(&[
        strace.to_str().unwrap(),
        "-f",
        "-qq",
        "-yy",
        "-x",
        "-s",
        "512",
        "-e",
        "trace=fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat,link,linkat,\
         write,pwrite64,writev,sendto,sendmsg",
        "-o",
        trace.to_str().unwrap(),
    ]);
    for a in extra {
        opts = opts.arg(a);
    }
    let mut gw = Gateway::start_with(opts);
    let (out, record) = (work.path().join("sent"), work.path().join("acks"));
    let study = "2.25.8061.1";
    let sender = common::spawn_ack_sender(
        &gw,
        &out,
        &record,
        &[
            "--study",
            study,
            "--uid-root",
            &format!("{study}.1"),
            "--count",
            "12",
            "--min-kib",
            "1",
            "--max-kib",
            "700",
        ],
    );
    common::assert_ok(&sender.wait_with_output().unwrap(), "ack_sender.py");
    let acked = AckRecord::read(&record).acked;
    assert_eq!(acked.len(), 12);
    // strace writes its last lines when the gateway has exited.
    let ok = std::process::Command::new("kill")
        .args(["-s", "TERM", &gw.traced_pid().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(gw.wait_exit().success());
    let calls = parse_trace(&std::fs::read_to_string(&trace).unwrap());
    (acked, calls, gw, work)
}

/// With the ingest journal (`--journal true`) an acknowledgement waits for
/// one durable write, and this pins it: before each C-STORE response, the
/// record naming the instance was written to a journal segment and that
/// segment `fdatasync`ed after the write. A small instance travels inside
/// its record, so its object — written straight under its key after the
/// record when it never left memory, else its spool file renamed there —
/// is **not** synced before the answer (that would be a second sync
/// round trip); with
/// `--journal-inline-max-kib 0` every record refers to its spool file
/// instead, and then the spool file was written, then `fdatasync`ed, and
/// the spool directory synced, all before the record. What the old
/// protocol synced before the answer — the key's directory, the
/// directories made for it, the index — is the checkpoint's job now, so it
/// is deliberately not required here; the crash tests (journal.rs) show
/// replay covers it.
#[test]
fn with_the_journal_every_acknowledgement_follows_its_record_sync() {
    check_journal_order(
        &["--journal", "true", "--journal-inline-max-kib", "1024"],
        true,
    );
}

#[test]
fn with_the_journal_by_reference_the_spool_file_is_synced_before_its_record() {
    check_journal_order(
        &["--journal", "true", "--journal-inline-max-kib", "0"],
        false,
    );
}

/// Everything traced before the C-STORE response naming `sop`.
fn before_response<'a>(calls: &'a [Call], sop: &str) -> &'a [Call] {
    let ack = calls
        .iter()
        .position(|c| matches!(c, Call::Send(d) if d.first() == Some(&0x04) && contains(d, sop.as_bytes())))
        .unwrap_or_else(|| panic!("{sop}: no response in the trace"));
    &calls[..ack]
}

fn check_journal_order(args: &[&str], inline: bool) {
    let (acked, calls, gw, _work) = traced_run(args);
    let journal = format!("{}/", gw.data_dir.join("journal").display());
    let spool_dir = gw.data_dir.join("spool").display().to_string();
    let objects = format!("{}/", gw.objects().display());
    for sop in &acked {
        let before = before_response(&calls, sop);
        let w = before
            .iter()
            .rposition(|c| matches!(c, Call::Write(p, d) if p.starts_with(&journal) && contains(d, sop.as_bytes())))
            .unwrap_or_else(|| panic!("{sop}: acknowledged without a journal record"));
        let Call::Write(segment, _) = &calls[w] else {
            unreachable!()
        };
        assert!(
            before[w..]
                .iter()
                .any(|c| matches!(c, Call::Sync(p) if p == segment)),
            "{sop}: its record in {segment} was not synced before the acknowledgement"
        );
        let key = |p: &str| p.starts_with(&objects) && p.ends_with(&format!("/{sop}.dcm"));
        let renamed = before
            .iter()
            .rposition(|c| matches!(c, Call::Rename { to, .. } if key(to)));
        if inline {
            // The object under its key: its spool file renamed (an instance
            // that outgrew the first buffer), or written straight there
            // from the bytes its record carries (one that never left
            // memory); either way not synced before the answer.
            let object = match renamed.map(|r| &calls[r]) {
                Some(Call::Rename { from, .. }) => {
                    assert!(
                        from.starts_with(&spool_dir),
                        "{sop}: placed from {from}, not from a spool file"
                    );
                    from.clone()
                }
                _ => {
                    let written = before
                        .iter()
                        .rposition(|c| matches!(c, Call::Write(p, _) if key(p)))
                        .unwrap_or_else(|| panic!("{sop}: not placed before its acknowledgement"));
                    let Call::Write(object, _) = &calls[written] else {
                        unreachable!()
                    };
                    assert!(
                        written > w,
                        "{sop}: its object was written before its record"
                    );
                    object.clone()
                }
            };
            assert!(
                !before
                    .iter()
                    .any(|c| matches!(c, Call::Sync(p) if *p == object)),
                "{sop}: {object} was synced before the answer: two sync round trips"
            );
            continue;
        }
        // By reference: the object under its key is its spool file, renamed.
        let r = renamed.unwrap_or_else(|| panic!("{sop}: not placed before its acknowledgement"));
        let Call::Rename { from: spool, .. } = &calls[r] else {
            unreachable!()
        };
        assert!(
            spool.starts_with(&spool_dir),
            "{sop}: placed from {spool}, not from a spool file"
        );
        let sync = before[..w]
            .iter()
            .rposition(|c| matches!(c, Call::Sync(p) if p == spool));
        let sync = sync.unwrap_or_else(|| panic!("{sop}: {spool} not synced before its record"));
        let last_write = before[..w]
            .iter()
            .rposition(|c| matches!(c, Call::Write(p, _) if p == spool));
        assert!(
            last_write.is_some_and(|lw| lw < sync),
            "{sop}: {spool} written after its fsync"
        );
        assert!(
            before[..w]
                .iter()
                .any(|c| matches!(c, Call::Sync(p) if *p == spool_dir)),
            "{sop}: the spool directory was never synced before its record"
        );
    }
}

/// The C-STORE responses must come after what makes the instance durable:
/// its spool file's last write, then an fsync of it, then the rename to its
/// key, then an fsync of that directory (and of the parent of every
/// directory made for it) and an fsync of the index. Traced with strace,
/// one sender: a gateway with any of these fsyncs removed, or acknowledging
/// before them, fails here even though kill -9 could not tell (the page
/// cache survives it). This pins the commit protocol without the journal
/// (`--journal false`: spool, rename, directory and index sync); the
/// journal's is pinned above.
#[test]
fn every_acknowledgement_follows_the_fsyncs_that_make_it_durable() {
    let (acked, calls, gw, _work) = traced_run(&["--journal", "false"]);
    let objects = format!("{}/", gw.objects().display());
    let index = format!("{}/", gw.data_dir.join("index").display());
    let data = format!("{}/", gw.data_dir.display());
    let synced = |range: &[Call], path: &str| {
        range
            .iter()
            .any(|c| matches!(c, Call::Sync(p) if p == path))
    };
    for sop in &acked {
        let before = before_response(&calls, sop);
        let r = before
            .iter()
            .rposition(|c| matches!(c, Call::Rename { to, .. } if to.starts_with(&objects) && to.ends_with(&format!("/{sop}.dcm"))))
            .unwrap_or_else(|| panic!("{sop}: acknowledged before its rename into the store"));
        let Call::Rename { from, to } = &calls[r] else {
            unreachable!()
        };
        let sync = before[..r]
            .iter()
            .rposition(|c| matches!(c, Call::Sync(p) if p == from))
            .unwrap_or_else(|| panic!("{sop}: {from} renamed without an fsync"));
        let last_write = before[..r]
            .iter()
            .rposition(|c| matches!(c, Call::Write(p, _) if p == from));
        assert!(
            last_write.is_some_and(|w| w < sync),
            "{sop}: {from} written after its fsync"
        );
        let dir = Path::new(to).parent().unwrap().to_str().unwrap();
        assert!(
            synced(&before[r..], dir),
            "{sop}: {dir} not fsynced between the rename and the acknowledgement"
        );
        assert!(
            before[r..]
                .iter()
                .any(|c| matches!(c, Call::Sync(p) if p.starts_with(&index))),
            "{sop}: the index was not fsynced between the rename and the acknowledgement"
        );
        // A directory made for this instance is durable once its parent is
        // (from the data directory down: making that is start-up's job).
        for (m, call) in before.iter().enumerate() {
            if let Call::Mkdir(made) = call
                && to.starts_with(&format!("{made}/"))
                && made.starts_with(&data)
            {
                let parent = Path::new(made).parent().unwrap().to_str().unwrap();
                assert!(
                    synced(&before[m..], parent),
                    "{sop}: {made} was made but {parent} not fsynced before the acknowledgement"
                );
            }
        }
    }
}
