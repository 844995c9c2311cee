//! Indexing and verifying planted stores (local backend; the code is the same
//! for S3, which the integration tests cover).

use super::reindex::REINDEX_SOURCE;
use super::*;
use crate::index::{MediaRecord, ReportInfo};
use crate::ingest::header::part10_prefix;
use crate::store::ObjectKey;
use crate::uid::Uid;
use object_store::ObjectStoreExt;

pub(super) fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// One explicit VR little endian element, padded to even length.
pub(super) fn element(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if vr == b"OB" {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&value);
    out
}

/// A Part-10 CT instance received from `MODALITY1`, with `private` bytes of
/// a private element before its pixel data (a long header when large).
pub(super) fn instance(study: &str, series: &str, sop: &str, private: usize) -> Vec<u8> {
    let mut out = part10_prefix(EXPLICIT_LE, &uid(CT), &uid(sop), "MODALITY1").unwrap();
    for e in [
        element(0x0008, 0x0016, b"UI", CT.as_bytes()),
        element(0x0008, 0x0018, b"UI", sop.as_bytes()),
        element(0x0008, 0x0060, b"CS", b"CT"),
        element(0x0010, 0x0010, b"PN", b"Doe^Jane"),
        element(0x0010, 0x0020, b"LO", b"P-1"),
        element(0x0019, 0x0010, b"LO", b"GATEWAY TEST"),
        element(0x0019, 0x1000, b"OB", &vec![7u8; private]),
        element(0x0020, 0x000D, b"UI", study.as_bytes()),
        element(0x0020, 0x000E, b"UI", series.as_bytes()),
        element(0x0028, 0x0010, b"US", &2u16.to_le_bytes()),
        element(0x0028, 0x0011, b"US", &3u16.to_le_bytes()),
        element(0x7FE0, 0x0010, b"OB", &[0u8; 12]),
    ] {
        out.extend_from_slice(&e);
    }
    out
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: BlobStore,
    index: Index,
}

async fn put(store: &BlobStore, key: &str, bytes: Vec<u8>) {
    let key: ObjectKey = serde_json::from_value(serde_json::Value::String(key.into())).unwrap();
    store.put_small(&key, bytes).await.unwrap();
}

fn sidecar(study: &str, name: &str, mime: &str, size: u64) -> Vec<u8> {
    let record = MediaRecord {
        study_instance_uid: uid(study),
        file_name: name.into(),
        mime_type: mime.into(),
        object_key: ObjectKey::media(&uid(study), name),
        size,
        stored_at: "2026-11-20T08:00:00.123Z".into(),
        source: "avara-report".into(),
        report: Some(ReportInfo {
            report_id: "rep_1".into(),
            is_critical: true,
            plain_text: Some("No acute findings.".into()),
        }),
    };
    serde_json::to_vec(&record).unwrap()
}

/// A store with study 1.2.3: two instances (one with a 100 KiB header), a
/// corrupt object under an instance key, an instance under the wrong key, a
/// report with its sidecar, an image without one, an orphan sidecar and a
/// stray file.
async fn planted() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open_local(&dir.path().join("objects")).unwrap();
    let index = Index::open(&dir.path().join("index")).unwrap();
    let s = "studies/1.2.3";
    put(
        &store,
        &format!("{s}/1.2.3.1/1.2.3.1.1.dcm"),
        instance("1.2.3", "1.2.3.1", "1.2.3.1.1", 10),
    )
    .await;
    put(
        &store,
        &format!("{s}/1.2.3.1/1.2.3.1.2.dcm"),
        instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 100 << 10),
    )
    .await;
    put(
        &store,
        &format!("{s}/1.2.3.1/1.2.3.1.3.dcm"),
        b"not DICOM at all".repeat(10),
    )
    .await;
    put(
        &store,
        &format!("{s}/1.2.3.2/1.2.3.2.1.dcm"),
        instance("1.2.3", "1.2.3.1", "1.2.3.2.1", 10),
    )
    .await;
    put(
        &store,
        &format!("{s}/media/report-rep_1.pdf"),
        b"%PDF-1.4 ...".to_vec(),
    )
    .await;
    put(
        &store,
        &format!("{s}/media-meta/report-rep_1.pdf.json"),
        sidecar("1.2.3", "report-rep_1.pdf", "application/pdf", 12),
    )
    .await;
    put(
        &store,
        &format!("{s}/media/photo.JPG"),
        vec![0xFF, 0xD8, 0xFF],
    )
    .await;
    put(
        &store,
        &format!("{s}/media-meta/gone.png.json"),
        sidecar("1.2.3", "gone.png", "image/png", 1),
    )
    .await;
    put(&store, &format!("{s}/1.2.3.1/thumbs.db"), vec![0]).await;
    put(&store, ".dicom-gateway-probe/1-1", b"probe".to_vec()).await;
    Fixture {
        _dir: dir,
        store,
        index,
    }
}

#[tokio::test]
async fn a_study_is_rebuilt_from_headers_and_sidecars() {
    let f = planted().await;
    let summary = index_study(&f.store, &f.index, &uid("1.2.3"))
        .await
        .unwrap();
    assert_eq!(
        (
            summary.studies,
            summary.instances,
            summary.media,
            summary.media_guessed
        ),
        (1, 2, 2, 1)
    );
    assert_eq!(summary.already_indexed, 0);
    let mut skipped: Vec<_> = summary
        .skipped
        .iter()
        .map(|s| (s.key.as_str(), s.reason.clone()))
        .collect();
    skipped.sort_by_key(|(k, _)| *k);
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert_eq!(skipped[0].0, "studies/1.2.3/1.2.3.1/1.2.3.1.3.dcm");
    assert!(matches!(skipped[0].1, SkipReason::NotDicom(_)));
    assert_eq!(
        skipped[1],
        (
            "studies/1.2.3/1.2.3.1/thumbs.db",
            SkipReason::NotAGatewayKey
        )
    );
    assert_eq!(
        skipped[2],
        (
            "studies/1.2.3/1.2.3.2/1.2.3.2.1.dcm",
            SkipReason::WrongKey(ObjectKey::instance(
                &uid("1.2.3"),
                &uid("1.2.3.1"),
                &uid("1.2.3.2.1")
            ))
        )
    );

    let study = f.index.study(&uid("1.2.3")).unwrap().unwrap();
    assert_eq!(study.instance_count, 2);
    assert_eq!(study.tags.patient_name.as_deref(), Some("Doe^Jane"));
    let long = f.index.instance(&uid("1.2.3.1.2")).unwrap().unwrap();
    // Tags after the 100 KiB element came from the streamed read.
    assert_eq!((long.tags.rows, long.tags.columns), (Some(2), Some(3)));
    assert_eq!(long.source, "MODALITY1");
    assert_eq!(
        long.size,
        instance("1.2.3", "1.2.3.1", "1.2.3.1.2", 100 << 10).len() as u64
    );
    assert!(
        humantime::parse_rfc3339(&long.received_at).is_ok(),
        "{}",
        long.received_at
    );

    let report = f
        .index
        .media(&uid("1.2.3"), "report-rep_1.pdf")
        .unwrap()
        .unwrap();
    assert_eq!(report.mime_type, "application/pdf");
    assert_eq!(report.stored_at, "2026-11-20T08:00:00.123Z");
    assert_eq!(report.source, "avara-report");
    assert_eq!(report.report.as_ref().unwrap().report_id, "rep_1");
    assert!(report.report.as_ref().unwrap().is_critical);
    let photo = f.index.media(&uid("1.2.3"), "photo.JPG").unwrap().unwrap();
    assert_eq!((photo.mime_type.as_str(), photo.size), ("image/jpeg", 3));
    assert_eq!(photo.source, REINDEX_SOURCE);
    assert!(f.index.media(&uid("1.2.3"), "gone.png").unwrap().is_none());

    // Again: nothing new, nothing replaced, the same objects skipped.
    let again = index_study(&f.store, &f.index, &uid("1.2.3"))
        .await
        .unwrap();
    assert_eq!(
        (again.instances, again.media, again.already_indexed),
        (0, 0, 4)
    );
    assert_eq!(again.skipped.len(), 3);
    assert_eq!(f.index.study(&uid("1.2.3")).unwrap().unwrap(), study);
}

#[tokio::test]
async fn verify_names_what_disagrees() {
    let f = planted().await;
    reindex(&f.store, &f.index).await.unwrap();
    let report = verify(&f.store, &f.index).await.unwrap();
    let mut problems: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.key.as_str(), p.kind.clone()))
        .collect();
    problems.sort_by_key(|(k, _)| *k);
    // What reindex could not index, verify reports; sidecars and the probe
    // are not objects of their own.
    assert_eq!(
        problems,
        [
            ("studies/1.2.3/1.2.3.1/1.2.3.1.3.dcm", ProblemKind::NoEntry),
            (
                "studies/1.2.3/1.2.3.1/thumbs.db",
                ProblemKind::NotAGatewayKey
            ),
            ("studies/1.2.3/1.2.3.2/1.2.3.2.1.dcm", ProblemKind::NoEntry),
        ]
    );
    assert_eq!((report.entries, report.objects), (4, 6));

    // Remove what cannot be indexed: consistent.
    for key in [
        "studies/1.2.3/1.2.3.1/1.2.3.1.3.dcm",
        "studies/1.2.3/1.2.3.1/thumbs.db",
        "studies/1.2.3/1.2.3.2/1.2.3.2.1.dcm",
    ] {
        f.store.object_store().delete(&key.into()).await.unwrap();
    }
    let report = verify(&f.store, &f.index).await.unwrap();
    assert!(report.is_consistent(), "{report}");

    // An object lost, another changed size.
    let lost = "studies/1.2.3/1.2.3.1/1.2.3.1.1.dcm";
    f.store.object_store().delete(&lost.into()).await.unwrap();
    put(&f.store, "studies/1.2.3/media/photo.JPG", vec![1; 10]).await;
    let report = verify(&f.store, &f.index).await.unwrap();
    assert!(!report.is_consistent());
    assert_eq!(
        report.problems,
        [
            Problem {
                key: lost.into(),
                kind: ProblemKind::NoObject
            },
            Problem {
                key: "studies/1.2.3/media/photo.JPG".into(),
                kind: ProblemKind::SizeDiffers {
                    indexed: 3,
                    stored: 10
                }
            },
        ]
    );
}

#[tokio::test]
async fn reindex_covers_every_study_and_reports_strays() {
    let f = planted().await;
    put(
        &f.store,
        "studies/1.2.4/1.2.4.1/1.2.4.1.1.dcm",
        instance("1.2.4", "1.2.4.1", "1.2.4.1.1", 0),
    )
    .await;
    put(&f.store, "studies/README", b"hello".to_vec()).await;
    let summary = reindex(&f.store, &f.index).await.unwrap();
    assert_eq!(
        (summary.studies, summary.instances, summary.media),
        (2, 3, 2)
    );
    assert!(!summary.is_complete());
    assert!(summary.skipped.iter().any(|s| s.key == "studies/README"));
    assert_eq!(summary.skipped.len(), 4);
    let text = summary.to_string();
    assert!(
        text.contains("skipped studies/README: not an instance"),
        "{text}"
    );
    assert!(text.contains("instances added: 3"), "{text}");
}
