//! S3 with `storage.ack = "journal"` (issue 11): the acknowledgement comes
//! from the gateway's own journal, the upload follows. While the store is
//! down, instances are still stored (0x0000), listed at once, and served
//! byte-exact from their pending copies through the gateway's own `/files`
//! URLs; `/healthz` reports the backlog. After a kill -9 and the store's
//! return, the pending copies are queued again, the backlog drains, the
//! bucket holds every instance byte for byte, and the access answer hands
//! out presigned store URLs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backlog::{access_url_kinds, download, s3_gateway};
use crate::common::s3::{S3Server, wait_until};
use crate::common::{self, Gateway, Opts};

/// Where `s3_gateway` keeps its objects in the bucket.
const PREFIX: &str = "site-b";

fn study1() -> (String, Vec<PathBuf>) {
    let study = common::fixture_study("study1/");
    (study.uid, study.files)
}

fn backlog_instances(gw: &Gateway) -> u64 {
    let (status, health) = gw.get_json("/healthz", None);
    assert_eq!(status, 200, "{health}");
    health["upload_backlog"]["instances"]
        .as_u64()
        .unwrap_or_else(|| panic!("no upload_backlog in {health}"))
}

/// The data sets `urls` serve (each answered 200), as a set.
fn served_datasets(gw: &Gateway, urls: &[String]) -> BTreeSet<Vec<u8>> {
    urls.iter()
        .map(|url| {
            let (status, body) = download(gw, url);
            assert_eq!(status, 200, "{url}");
            common::dataset_bytes_of(&body)
        })
        .collect()
}

/// The data sets of `files`, as a set (order-free comparison).
fn datasets_of_files(files: &[PathBuf]) -> BTreeSet<Vec<u8>> {
    files.iter().map(|f| common::dataset_bytes(f)).collect()
}

#[test]
fn acknowledged_while_the_store_is_down_served_locally_then_uploaded() {
    let mut s3 = S3Server::start();
    let mut gw = s3_gateway(&s3, Opts::default().args(&["--storage-ack", "journal"]));
    gw.wait_for_log("ingest journal open");
    s3.stop();

    let (study, files) = study1();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    common::assert_ok(
        &common::storescu(&gw, &["-xe"], &refs),
        "storescu with the store down",
    );
    let n = files.len() as u64;
    assert_eq!(gw.study(&study)["instanceCount"], n, "listed at once");
    assert_eq!(backlog_instances(&gw), n, "all waiting for the store");

    // Served from the pending copies, through the gateway's own URLs.
    let kinds = access_url_kinds(&gw, &s3, &study);
    assert!(
        kinds.store.is_empty(),
        "store URLs for pending instances: {kinds:?}"
    );
    assert_eq!(kinds.gateway.len() as u64, n);
    let served = served_datasets(&gw, &kinds.gateway);
    assert_eq!(
        served,
        datasets_of_files(&files),
        "served data sets differ from the sent ones"
    );

    // Killed with everything still pending; the store comes back.
    gw.kill9();
    s3.start_again();
    gw.restart();
    wait_until("the backlog drained", || backlog_instances(&gw) == 0);

    let in_bucket: BTreeSet<String> = s3
        .keys()
        .into_iter()
        .filter(|k| k.ends_with(".dcm"))
        .collect();
    let records: Vec<Value> = gw.study(&study)["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["instances"].as_array().unwrap().clone())
        .collect();
    let expected: BTreeSet<String> = records
        .iter()
        .map(|r| format!("{PREFIX}/{}", r["objectKey"].as_str().unwrap()))
        .collect();
    assert_eq!(
        in_bucket, expected,
        "the bucket holds exactly the instances"
    );
    let stored: BTreeSet<Vec<u8>> = expected
        .iter()
        .map(|k| common::dataset_bytes_of(&s3.get(k)))
        .collect();
    assert_eq!(
        stored,
        datasets_of_files(&files),
        "uploaded data sets differ from the sent ones"
    );

    // Uploaded: presigned store URLs now, and they serve the same bytes.
    let kinds = access_url_kinds(&gw, &s3, &study);
    assert!(
        kinds.gateway.is_empty(),
        "gateway URLs after the upload: {kinds:?}"
    );
    assert_eq!(kinds.store.len() as u64, n);
    let served = served_datasets(&gw, &kinds.store);
    assert_eq!(served, datasets_of_files(&files));
    assert!(gw.stop().success());
}

/// As on a local store, an instance synced in its spool file leaves the
/// page cache once acknowledged, by default, also as a pending copy (its
/// upload reads it back from the disk); `storage.cache_objects = true`
/// keeps it. The store is down, so the copy stays pending to be looked at.
#[test]
fn a_pending_copy_leaves_the_page_cache_unless_kept() {
    for keep in [false, true] {
        let mut s3 = S3Server::start();
        let keep_arg = keep.to_string();
        let more = Opts::default().args(&[
            "--storage-ack",
            "journal",
            "--storage-cache-objects",
            &keep_arg,
        ]);
        let mut gw = s3_gateway(&s3, more);
        gw.wait_for_log("ingest journal open");
        s3.stop();
        let work = tempfile::tempdir().unwrap();
        let big = work.path().join("big.dcm");
        common::generate_big(&big, 4);
        common::assert_ok(&common::storescu(&gw, &[], &[&big]), "storescu");
        let pending: Vec<PathBuf> = common::files_under(&gw.data_view().join("pending"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
            .collect();
        assert_eq!(pending.len(), 1, "{pending:?}");
        let (resident, pages) = crate::journal::cached_pages(&pending[0]);
        assert!(pages > 1000, "{pages} pages");
        if keep {
            assert_eq!(resident, pages, "cache_objects = true");
        } else {
            // (Advice: a page the kernel could not let go of may stay.)
            assert!(resident * 100 < pages, "{resident} of {pages} pages cached");
        }
        assert!(gw.stop().success());
    }
}
