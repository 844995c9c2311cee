//! A full disk, for real: the data directory (objects, spool and the sled
//! index alike) on a small tmpfs the test mounts in the gateway's own mount
//! namespace. Senders store until the reserve (`min_free_space`) is reached;
//! then: 0xA700 for every further instance, nothing partial left, everything
//! acknowledged before listed and byte-exact, C-ECHO and the operator API
//! still answer, and once space is freed the gateway stores again. The same
//! again without a reserve, where the filesystem itself says ENOSPC.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::common::{self, AckRecord, Gateway, Opts};

const TMPFS_MIB: u32 = 48;
/// Space the ballast leaves above the reserve: room for a few instances.
const ROOM: u64 = 12 << 20;
const SENDERS: usize = 3;
const INSTANCE_KIB: u32 = 2048;
/// Each sender stops after this many refusals (and never sends more than
/// `MAX_PER_SENDER`: 40 × 2 MiB could not fit, so refusals must come).
const REFUSALS_PER_SENDER: usize = 2;
const MAX_PER_SENDER: usize = 40;
/// How far below the reserve one transfer may take the free space: the
/// check interval (1 MiB) plus two 256 KiB spool write buffers.
const OVERSHOOT_PER_TRANSFER: u64 = (1 << 20) + (512 << 10);

/// Bytes available on the filesystem holding `path` (coreutils `stat -f`).
fn free_space(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "--format=%a %S"])
        .arg(path)
        .output()
        .unwrap();
    common::assert_ok(&out, "stat -f");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut words = text.split_whitespace().map(|w| w.parse::<u64>().unwrap());
    words.next().unwrap() * words.next().unwrap()
}

/// A file of `len` bytes of written (allocated) zeros.
fn write_ballast(path: &Path, len: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
}

/// (SOP Instance UID, object key) of every instance of `study`.
fn listed(gw: &Gateway, study: &str) -> Vec<(String, String)> {
    let body = gw.study(study);
    let mut out = Vec::new();
    for series in body["series"].as_array().unwrap() {
        for inst in series["instances"].as_array().unwrap() {
            out.push((
                inst["sopInstanceUid"].as_str().unwrap().to_owned(),
                inst["objectKey"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Every listed instance is byte for byte the file sent (kept as
/// `<sop>.dcm` in `sent`), the store holds exactly the listed objects, and
/// the spool is empty.
fn assert_store_is(gw: &Gateway, study: &str, sent: &Path, expected: &BTreeSet<String>) {
    let listed = listed(gw, study);
    let sops: BTreeSet<String> = listed.iter().map(|(sop, _)| sop.clone()).collect();
    assert_eq!(&sops, expected, "listed instances vs acknowledged ones");
    for (sop, key) in &listed {
        let stored = gw.objects().join(key);
        assert!(
            common::dataset_bytes(&stored)
                == common::dataset_bytes(&sent.join(format!("{sop}.dcm"))),
            "{sop}: stored data set differs from the one sent"
        );
    }
    let objects: BTreeSet<String> = gw
        .object_files()
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(&objects, expected, "object files vs acknowledged instances");
    assert!(
        gw.spool_files().is_empty(),
        "spool leftovers: {:?}",
        gw.spool_files()
    );
}

/// Starts `SENDERS` ack_sender.py processes storing `INSTANCE_KIB`
/// instances into `study` until each was refused `REFUSALS_PER_SENDER`
/// times; returns what they recorded.
fn fill(gw: &Gateway, work: &Path, sent: &Path, study: &str) -> Vec<AckRecord> {
    let senders: Vec<_> = (1..=SENDERS)
        .map(|i| {
            let record = work.join(format!("{i}.acks"));
            let child = common::spawn_ack_sender(
                gw,
                sent,
                &record,
                &[
                    "--study",
                    study,
                    "--uid-root",
                    &format!("{study}.{i}"),
                    "--seed",
                    &i.to_string(),
                    "--count",
                    &MAX_PER_SENDER.to_string(),
                    "--min-kib",
                    &INSTANCE_KIB.to_string(),
                    "--max-kib",
                    &INSTANCE_KIB.to_string(),
                    "--stop-after-refusals",
                    &REFUSALS_PER_SENDER.to_string(),
                ],
            );
            (child, record)
        })
        .collect();
    senders
        .into_iter()
        .map(|(child, record)| {
            let out = child.wait_with_output().unwrap();
            common::assert_ok(&out, "ack_sender.py");
            let summary = String::from_utf8_lossy(&out.stdout);
            assert!(
                summary.contains("\"end\": \"refusals\""),
                "a sender was never refused: {summary}"
            );
            AckRecord::read(&record)
        })
        .collect()
}

#[test]
fn a_full_disk_refuses_with_a700_keeps_what_was_acknowledged_and_recovers() {
    fill_refuse_recover(8 << 20, "less than min_free_space");
}

/// Without a reserve the spool writes themselves fail (ENOSPC), next to the
/// index on the same filesystem: the same promises hold.
#[test]
fn enospc_without_a_reserve_is_a700_too_and_the_gateway_recovers() {
    fill_refuse_recover(0, "No space left on device");
}

/// Fills the tmpfs down to `min_free` + a few instances (a ballast file),
/// stores until refused, checks the store, frees the ballast and stores
/// again. `refusal_log` is what the gateway logs for the refusals.
fn fill_refuse_recover(min_free: u64, refusal_log: &str) {
    let mut gw = Gateway::start_with(
        Opts::default()
            .tmpfs(TMPFS_MIB)
            // The journal's default 8 × 64 MiB would not fit the tmpfs.
            .args(&["--journal-segment-size-mib", "2", "--journal-segments", "3"])
            .arg("--min-free-space")
            .arg(&min_free.to_string()),
    );
    let data = gw.data_view();
    assert!(data.join("index").is_dir(), "the gateway's data directory");
    assert!(
        !gw.data_dir.join("index").exists(),
        "the tmpfs is visible outside the gateway's mount namespace"
    );
    let free = free_space(&data);
    assert!(
        free <= u64::from(TMPFS_MIB) << 20 && free > min_free + ROOM,
        "{free} bytes free: not the {TMPFS_MIB} MiB tmpfs?"
    );
    let ballast = data.join("ballast");
    write_ballast(&ballast, free - min_free - ROOM);

    let work = tempfile::tempdir().unwrap();
    let sent = work.path().join("sent");
    let study = "2.25.4711.1";
    let mut acked = BTreeSet::new();
    for record in fill(&gw, work.path(), &sent, study) {
        assert_eq!(record.refused.len(), REFUSALS_PER_SENDER);
        for (sop, status) in &record.refused {
            assert_eq!(*status, 0xA700, "{sop}: refused with {status:#06x}");
        }
        acked.extend(record.acked);
    }
    assert!(
        !acked.is_empty(),
        "nothing was stored before the disk filled"
    );
    // Free space is checked every MiB of each transfer, so each concurrent
    // one may end up to that much (plus its write buffers) below the reserve.
    let overshoot = SENDERS as u64 * OVERSHOOT_PER_TRANSFER;
    let room_instances = (ROOM + overshoot) / (u64::from(INSTANCE_KIB) << 10);
    assert!(
        acked.len() as u64 <= room_instances,
        "{} instances of {INSTANCE_KIB} KiB acknowledged in {} MiB of room",
        acked.len(),
        ROOM >> 20
    );
    gw.wait_for_log(refusal_log);
    let free_after = free_space(&data);
    eprintln!(
        "disk full after {} acknowledged instances of {INSTANCE_KIB} KiB; {free_after} bytes free \
         (min_free_space {min_free})",
        acked.len(),
    );
    assert!(
        free_after + overshoot >= min_free,
        "{free_after} bytes free: the reserve of {min_free} was overrun"
    );

    // Full: what was acknowledged is all there, nothing else.
    assert_store_is(&gw, study, &sent, &acked);
    // Still serving: C-ECHO, the operator API, and (with a reserve: a small
    // instance would still fit without one) DCMTK hears a refusal too.
    common::assert_ok(&common::echoscu(&gw, "DICOMGW"), "echoscu on a full disk");
    assert_eq!(gw.get_json("/healthz", None).0, 200);
    assert_eq!(gw.studies().len(), 1);
    let fixture = common::fixture("study1/series1");
    let fixture_file = common::fixtures_dir().join(fixture["file"].as_str().unwrap());
    if min_free > 0 {
        // An instance larger than what is left above the reserve (a small
        // one may still fit: the reserve keeps room per transfer under way,
        // and the senders' transfers are over).
        let big = work.path().join("big.dcm");
        common::generate_big(&big, 4);
        let refused = common::storescu(&gw, &["-v"], &[&big]);
        let text = String::from_utf8_lossy(&refused.stdout).to_string()
            + &String::from_utf8_lossy(&refused.stderr);
        assert!(
            text.contains("Received Store Response (Refused: OutOfResources)"),
            "{text}"
        );
    }

    // Space is freed: the gateway stores again, the index included.
    std::fs::remove_file(&ballast).unwrap();
    let record = work.path().join("after.acks");
    let after = common::spawn_ack_sender(
        &gw,
        &sent,
        &record,
        &[
            "--study",
            study,
            "--uid-root",
            &format!("{study}.9"),
            "--count",
            "2",
            "--min-kib",
            &INSTANCE_KIB.to_string(),
            "--max-kib",
            &INSTANCE_KIB.to_string(),
        ],
    )
    .wait_with_output()
    .unwrap();
    common::assert_ok(&after, "ack_sender.py after freeing space");
    let record = AckRecord::read(&record);
    assert_eq!(record.acked.len(), 2, "{record:?}");
    acked.extend(record.acked);
    assert_store_is(&gw, study, &sent, &acked);
    common::assert_ok(
        &common::storescu(&gw, &[], &[&fixture_file]),
        "storescu after freeing space",
    );
    let other = gw.study(fixture["study"].as_str().unwrap());
    assert_eq!(other["instanceCount"], 1);
    // A clean shutdown flushes the index on the (no longer full) tmpfs.
    assert!(gw.stop().success());
}
