//! What a hostile DICOM peer can make the gateway tell receivers.

use serde_json::json;

use super::support::*;
use crate::common::Gateway;
use crate::common::dul::Scu;

/// A receiver may use `sopInstanceUid` as a key or a path segment: a
/// refusal passes on only what the gateway's own UID check (`src/uid.rs`:
/// at most 128 letters, digits, `.`, `-`, `_`) accepts, whatever the
/// command claimed; the reason says what was wrong.
#[test]
fn a_refusal_passes_on_no_invalid_uid() {
    let gw = Gateway::start();
    let port = free_port();
    let (id, secret) = subscribe(&gw, &hook_url(port), &["instance.refused"], false);
    let rx = Receiver::start(&[&secret], port, 204);
    let dataset =
        crate::common::dataset_bytes(&fixture_path(&crate::common::fixture("study1/series1/ct1")));
    let long = "1.2".repeat(4000);
    let claims = ["1.2.3/../../etc", "1.2.3\u{0}4", long.as_str()];
    let mut scu = Scu::connect(gw.dicom, CT_IMAGE_STORAGE, EXPLICIT_VR_LE);
    for claim in claims {
        let rsp = scu.store(CT_IMAGE_STORAGE, claim, &dataset, 4096);
        assert_ne!(rsp.status, 0, "{claim:.40}: stored");
    }
    scu.release();
    settled(&gw, &id, claims.len());
    let records = rx.records();
    assert_eq!(records.len(), claims.len(), "{records:?}");
    for r in &records {
        assert_message(r, "instance.refused", json!([0]));
        let data = &r["body"]["data"];
        assert!(
            data["reason"].as_str().is_some_and(|r| r.contains("UID")),
            "{:.300}",
            data.to_string()
        );
        for field in ["sopInstanceUid", "sopClassUid"] {
            let uid = &data[field];
            assert!(
                uid.is_null() || uid.as_str().is_some_and(safe_uid),
                "{field} passed on unchecked: {:.300}",
                data.to_string()
            );
        }
    }
}

fn safe_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}
