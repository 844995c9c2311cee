//! What a spooled instance is: its header read, checked against what the
//! sender announced, and made into its index entry.

use std::time::SystemTime;

use super::spool::Spooled;
use super::{Check, Error, Result, header};
use crate::index::{InstanceRecord, NewEntry, NewInstance};
use crate::store::ObjectKey;
use crate::uid::Uid;

/// Reads a spooled instance's header, checks it against what was expected,
/// and builds its index entry. Blocking. A panic in the parser fails this
/// instance (0xC000) instead of the thread.
pub(super) fn describe(
    spooled: &Spooled,
    expected: &Check,
    source: String,
    limits: &header::ScanLimits,
) -> Result<(InstanceRecord, NewEntry)> {
    let header = std::panic::catch_unwind(|| {
        fail::fail_point!("ingest::describe");
        match &spooled.bytes {
            // A small instance is still in memory: no need to read it back.
            Some(bytes) => {
                header::read_header_from_sized(&bytes[..], Some(bytes.len() as u64), limits)
            }
            None => header::read_header_with(spooled.path(), limits),
        }
    })
    .map_err(|_| Error::Panicked("reading its header"))??;
    check(&header.study, &expected.study, "Study Instance UID")?;
    check(&header.series, &expected.series, "Series Instance UID")?;
    check(
        &header.sop_instance,
        &expected.sop_instance,
        "SOP Instance UID",
    )?;
    check(&header.sop_class, &expected.sop_class, "SOP Class UID")?;
    for (name, uid) in [
        ("Study Instance UID", &header.study),
        ("Series Instance UID", &header.series),
        ("SOP Instance UID", &header.sop_instance),
        ("SOP Class UID", &header.sop_class),
    ] {
        if let Some(problem) = uid.nonconformance() {
            tracing::warn!(%uid, %problem, "non-conformant {name} stored as received");
        }
    }
    Ok(record_from(header, spooled.len, source))
}

/// The index entry of an instance with `header`, `size` bytes long.
pub(super) fn record_from(
    header: header::Header,
    size: u64,
    source: String,
) -> (InstanceRecord, NewEntry) {
    let record = InstanceRecord {
        object_key: ObjectKey::instance(&header.study, &header.series, &header.sop_instance),
        study_instance_uid: header.study,
        series_instance_uid: header.series,
        sop_instance_uid: header.sop_instance,
        sop_class_uid: header.sop_class,
        size,
        transfer_syntax_uid: header.transfer_syntax,
        received_at: now_rfc3339(),
        source,
        tags: header.instance,
    };
    let new = NewInstance {
        record: record.clone(),
        study: header.study_tags,
    };
    (record, NewEntry::Instance(Box::new(new)))
}

fn check(found: &Uid, expected: &Option<Uid>, name: &'static str) -> Result<()> {
    match expected {
        Some(expected) if found != expected => Err(Error::Mismatch {
            name,
            found: found.clone(),
            expected: expected.clone(),
        }),
        _ => Ok(()),
    }
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
