//! The checks after each restart of the soak: everything acknowledged is
//! listed, everything listed was sent, the spool is empty, and — for the
//! studies asked for (the cycle's own after each restart, all of them at the
//! end, so a soak's checks grow linearly, not quadratically) — everything
//! listed is byte for byte what was sent and every object the store holds is
//! complete. Data sets are compared (the gateway writes its own File Meta
//! group).

use std::collections::{BTreeMap, BTreeSet};

use super::Ledger;
use crate::common::s3::{self, S3Server};
use crate::common::{self, Gateway};

/// SOP Instance UID → (object key, size, study) as the operator API lists
/// them.
type Listed = BTreeMap<String, (String, u64, String)>;

/// The study of an object key (`studies/<study>/…`, after any prefix).
fn study_of<'k>(key: &'k str, context: &str) -> &'k str {
    key.split("studies/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{context}: {key} is not an instance key"))
}

/// Redirects a download may take: `/api/download` → signed `/files` URL →
/// (S3) presigned store URL.
const MAX_REDIRECTS: usize = 3;

/// What every variant checks first: the spool is empty, every acknowledged
/// instance is listed and every listed one was sent. Returns the listing.
fn listed(gw: &Gateway, ledger: &Ledger, context: &str) -> Listed {
    assert!(
        gw.spool_files().is_empty(),
        "{context}: spool leftovers after the restart: {:?}",
        gw.spool_files()
    );
    let mut listed = Listed::new();
    for study in &ledger.studies {
        let body = gw.study(study);
        for series in body["series"].as_array().unwrap() {
            for inst in series["instances"].as_array().unwrap() {
                listed.insert(
                    inst["sopInstanceUid"].as_str().unwrap().to_owned(),
                    (
                        inst["objectKey"].as_str().unwrap().to_owned(),
                        inst["size"].as_u64().unwrap(),
                        study.clone(),
                    ),
                );
            }
        }
    }
    let lost: Vec<&String> = ledger
        .acked
        .iter()
        .filter(|sop| !listed.contains_key(*sop))
        .collect();
    assert!(
        lost.is_empty(),
        "{context}: {} of {} acknowledged instances are not listed: {lost:?}",
        lost.len(),
        ledger.acked.len()
    );
    if let Some(stray) = listed.keys().find(|sop| !ledger.sent.contains_key(*sop)) {
        panic!("{context}: listed {stray} was never sent");
    }
    listed
}

/// `bytes` (a stored Part-10 object of `sop`) has the data set that was sent.
fn assert_sent(ledger: &Ledger, sop: &str, bytes: &[u8], what: &str, context: &str) {
    let sent = ledger
        .sent
        .get(sop)
        .unwrap_or_else(|| panic!("{context}: {what}: {sop} was never sent"));
    assert!(
        common::dataset_bytes_of(bytes) == common::dataset_bytes(sent),
        "{context}: {what}: the data set of {sop} differs from the one sent"
    );
}

/// The local store: every listed object file of `studies` has the indexed
/// size and the sent bytes; every object file in the store, listed or not,
/// is an instance that was sent, and for `studies` a complete one (a commit
/// the kill interrupted may leave one unlisted, never a torn file under a
/// final name). Returns (listed, complete but unlisted objects of `studies`).
pub fn local(
    gw: &Gateway,
    ledger: &Ledger,
    studies: &BTreeSet<&str>,
    context: &str,
) -> (usize, usize) {
    let listed = listed(gw, ledger, context);
    for (sop, (key, size, study)) in &listed {
        let stored = gw.objects().join(key);
        let len = std::fs::metadata(&stored)
            .unwrap_or_else(|e| panic!("{context}: listed {sop}: {}: {e}", stored.display()))
            .len();
        assert_eq!(len, *size, "{context}: {sop}: size in the index");
        if studies.contains(study.as_str()) {
            assert_sent(
                ledger,
                sop,
                &std::fs::read(&stored).unwrap(),
                "stored",
                context,
            );
        }
    }
    let mut unlisted = 0;
    for object in gw.object_files() {
        let sop = object.file_stem().unwrap().to_str().unwrap().to_owned();
        let name = object.display().to_string();
        assert!(
            ledger.sent.contains_key(&sop),
            "{context}: unexpected object {name}"
        );
        let key = object.strip_prefix(gw.objects()).unwrap().to_str().unwrap();
        if studies.contains(study_of(key, context)) {
            assert_sent(
                ledger,
                &sop,
                &std::fs::read(&object).unwrap(),
                &name,
                context,
            );
            unlisted += usize::from(!listed.contains_key(&sop));
        }
    }
    (listed.len(), unlisted)
}

/// An S3 store under `prefix`: every listed instance of `studies` is served
/// by the gateway (its download link, followed wherever it leads: its own
/// `/files` or the store) with the indexed size and the sent bytes; the
/// bucket comes to hold every listed instance (at once when the
/// acknowledgement waited for the upload; once the upload backlog drained
/// when it did not); every instance object in it is one that was sent, and
/// for `studies`, listed or not, complete. Returns (listed, complete but
/// unlisted objects of `studies`).
pub fn s3(
    gw: &Gateway,
    store: &S3Server,
    prefix: &str,
    ledger: &Ledger,
    studies: &BTreeSet<&str>,
    context: &str,
) -> (usize, usize) {
    let listed = listed(gw, ledger, context);
    for (sop, (key, size, study)) in &listed {
        if studies.contains(study.as_str()) {
            let bytes = served(gw, key, context);
            assert_eq!(bytes.len() as u64, *size, "{context}: {sop}: size served");
            assert_sent(ledger, sop, &bytes, "served", context);
        }
    }

    let client = store.client();
    let want: BTreeSet<String> = listed
        .values()
        .map(|(key, _, _)| format!("{prefix}/{key}"))
        .collect();
    let mut keys = Vec::new();
    s3::wait_until(
        &format!("{context}: every listed instance in the bucket"),
        || {
            keys = client.keys();
            want.iter().all(|k| keys.binary_search(k).is_ok())
        },
    );
    let instances = format!("{prefix}/studies/");
    let mut unlisted = 0;
    for key in keys.iter().filter(|k| k.starts_with(&instances)) {
        let name = key.rsplit('/').next().unwrap();
        let sop = name
            .strip_suffix(".dcm")
            .unwrap_or_else(|| panic!("{context}: unexpected object {key}"));
        assert!(
            ledger.sent.contains_key(sop),
            "{context}: unexpected object {key}"
        );
        if !studies.contains(study_of(key, context)) {
            continue;
        }
        let bytes = client.get(key);
        assert_sent(ledger, sop, &bytes, key, context);
        match listed.get(sop) {
            Some((_, size, _)) => assert_eq!(bytes.len() as u64, *size, "{context}: {key}: size"),
            None => unlisted += 1,
        }
    }
    (listed.len(), unlisted)
}

/// The bytes the gateway hands out for `key`: `GET /api/download/{key}`
/// and its redirects, followed one by one (each must be a redirect or 200).
fn served(gw: &Gateway, key: &str, context: &str) -> Vec<u8> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut url = gw.url(&format!("/api/download/{key}"));
    for _ in 0..=MAX_REDIRECTS {
        let mut resp = agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("{context}: GET {url}: {e}"));
        match resp.status().as_u16() {
            200 => return resp.body_mut().read_to_vec().unwrap(),
            301 | 302 | 303 | 307 | 308 => {
                let location = resp.headers()["location"].to_str().unwrap();
                url = if location.starts_with('/') {
                    gw.url(location)
                } else {
                    location.to_owned()
                };
            }
            status => panic!(
                "{context}: GET {url}: {status}: {}",
                resp.body_mut().read_to_string().unwrap_or_default()
            ),
        }
    }
    panic!("{context}: {key}: more than {MAX_REDIRECTS} redirects")
}
