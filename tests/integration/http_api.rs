//! The operator API and its guard.

use crate::common::{self, Gateway, Opts};

#[test]
fn health_and_empty_listing() {
    let gw = Gateway::start();
    let (status, body) = gw.get_json("/healthz", None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(gw.studies().len(), 0);
    let (status, body) = gw.get_json("/no/such/route", None);
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = gw.get_json("/api/studies/not%20a%20uid", None);
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
}

#[test]
fn a_configured_token_is_required() {
    let mut gw = Gateway::start_with(
        Opts::default().env("DICOM_GATEWAY_API_TOKEN", "s3cret-token-0123456789"),
    );
    let (status, body) = gw.get_json("/api/studies", None);
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, _) = gw.get_json("/api/studies", Some("wrong"));
    assert_eq!(status, 401);
    let (status, body) = gw.get_json("/api/studies", Some("s3cret-token-0123456789"));
    assert_eq!(status, 200, "{body}");
    // Health stays open for load balancers.
    assert_eq!(gw.get_json("/healthz", None).0, 200);
    assert!(
        !gw.final_log().contains("s3cret-token-0123456789"),
        "the token reached the log"
    );
}

#[test]
fn study_detail_lists_series_and_instances() {
    let gw = Gateway::start();
    let f = common::fixture("study1/series1");
    let path = common::fixtures_dir().join(f["file"].as_str().unwrap());
    common::assert_ok(&common::storescu(&gw, &["-xe"], &[&path]), "storescu");
    let study = gw.study(f["study"].as_str().unwrap());
    let inst = &study["series"][0]["instances"][0];
    assert_eq!(inst["sopInstanceUid"], f["sop_instance"]);
    assert_eq!(inst["sopClassUid"], f["sop_class"]);
    assert_eq!(inst["transferSyntaxUid"], "1.2.840.10008.1.2.1");
    assert!(inst["objectKey"].as_str().unwrap().starts_with("studies/"));
    assert!(inst["receivedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(study["series"][0]["seriesInstanceUid"], f["series"]);
}
