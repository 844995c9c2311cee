//! An S3 gateway's access to an instance acknowledged and not yet uploaded:
//! the store counts it as existing, the access answer hands out the
//! gateway's own `/files` URL, the route serves the pending copy from disk
//! (ranges, ETags, HEAD), `/healthz` counts it; once uploaded, the same URL
//! redirects to a presigned store URL and new answers are presigned. The
//! app is the real one (sled index, S3 client, signer) built on a temporary
//! data directory; the S3 endpoint is a closed port, since presigning makes
//! no request, and the backlog uploads into a local `object_store` held at
//! a gate the test opens.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::app::App;
use crate::config::{Config, Overrides, SecretEnv};
use crate::index::{Index, InstanceRecord, NewEntry, NewInstance, StudyTags};
use crate::store::backlog::tests::{Gated, LocalStore};
use crate::store::backlog::{Backlog, Place, Settings, UploadTarget};
use crate::store::signer::UrlSigner;
use crate::store::{BlobStore, ObjectKey};
use crate::webhook::events::StudyAccess;

const STUDY: &str = "1.2.826.0.1.3680043.10.1";
const SERIES: &str = "1.2.826.0.1.3680043.10.1.1";

fn record(sop: &str) -> InstanceRecord {
    InstanceRecord::for_test(STUDY, SERIES, sop)
}

struct Setup {
    app: App,
    gated: Arc<Gated>,
    _tmp: tempfile::TempDir,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let over = Overrides {
        data_dir: Some(tmp.path().join("data")),
        storage_url: Some("s3://dicom-test/site".into()),
        storage_endpoint: Some(endpoint),
        storage_allow_http: Some(true),
        storage_timeout: Some(1),
        public_url: Some("https://gw.example".into()),
        ..Overrides::default()
    };
    let env = SecretEnv {
        aws_access_key_id: Some("AKIDTEST".into()),
        aws_secret_access_key: Some("secret-for-the-test".into()),
        ..SecretEnv::default()
    };
    let cfg = Arc::new(Config::load(&over, &env).unwrap());
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let store = BlobStore::open_s3(&cfg, "dicom-test", "site").unwrap();
    let index = Index::open(&cfg.index_dir()).unwrap();
    let ingest = crate::ingest::Ingest::start(&cfg, store.clone(), index.clone(), None).unwrap();
    let gated = Arc::new(Gated {
        inner: LocalStore::new(&tmp.path().join("uploaded")),
        entered: Notify::new(),
        gate: Semaphore::new(0),
    });
    let target: Arc<dyn UploadTarget> = gated.clone();
    let (wait, max) = cfg
        .upload_backlog()
        .expect("S3 acknowledges from the journal by default");
    let backlog = Backlog::open_with(&cfg.pending_dir(), target, Settings::new(wait, max)).unwrap();
    store.attach_backlog(&backlog);
    let signer = UrlSigner::load_or_create(&cfg.url_signing_keys_path(), &cfg.public_url).unwrap();
    let app = App {
        cfg: Arc::clone(&cfg),
        index,
        discovery: Arc::new(crate::discovery::Discovery::new(
            &store,
            Duration::from_secs(3600),
        )),
        store,
        ingest: Arc::new(ingest),
        signer,
        views: Arc::new(crate::webhook::views::StudyViews::new(8)),
        reports: Arc::new(Notify::new()),
        activity: crate::activity::Activity::new(),
        backlog: Some(backlog),
        forward: Arc::default(),
    };
    Setup {
        app,
        gated,
        _tmp: tmp,
    }
}

/// The access answer's instance URLs.
async fn access_urls(app: &App) -> Vec<String> {
    let app = app.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let event = StudyAccess {
            study_id: None,
            study_instance_uid: STUDY.into(),
        };
        crate::webhook::handlers::study_access(&app, &event, SystemTime::now()).unwrap()
    })
    .await
    .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["authorized"], true, "{answer}");
    answer["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

async fn call(
    app: &App,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = super::super::router::router(app.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, bytes)
}

/// The path and query of a gateway URL (`https://gw.example/files/…`).
fn local(url: &str) -> &str {
    url.strip_prefix("https://gw.example")
        .unwrap_or_else(|| panic!("not a gateway URL: {url}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_instance_is_served_by_the_gateway_until_uploaded_then_by_the_store() {
    let Setup { app, gated, _tmp } = setup().await;
    let backlog = Arc::clone(app.backlog.as_ref().unwrap());
    let (pending, uploaded) = (
        record("1.2.826.0.1.3680043.10.1.1.1"),
        record("1.2.826.0.1.3680043.10.1.1.2"),
    );
    let entries = [&pending, &uploaded].map(|r| {
        NewEntry::Instance(Box::new(NewInstance {
            record: r.clone(),
            study: StudyTags::default(),
        }))
    });
    app.index.put_batch(&entries).unwrap();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let spool = _tmp.path().join("spooled");
    std::fs::write(&spool, &bytes).unwrap();
    let admitted = backlog.admit(1000, Duration::ZERO).await.unwrap();
    let key: ObjectKey = pending.object_key.clone();
    backlog
        .enqueue_file(admitted, key.clone(), &spool, Place::Link, Box::new(|| {}))
        .unwrap();

    // It exists for whoever asks the store (a relisting must not take its
    // object for gone); the store itself is never asked.
    assert!(app.store.exists(&key).await.unwrap());

    // The access answer: the gateway's URL for the pending one, the store's for the other.
    let urls = access_urls(&app).await;
    let pending_url = urls
        .iter()
        .find(|u| u.contains("/files/"))
        .expect("a gateway URL")
        .clone();
    assert!(pending_url.contains(key.as_str()), "{pending_url}");
    let presigned: Vec<_> = urls
        .iter()
        .filter(|u| u.contains("X-Amz-Signature"))
        .collect();
    assert_eq!(presigned.len(), 1, "{urls:?}");
    assert!(presigned[0].contains(uploaded.object_key.as_str()));

    // Served from the pending copy: whole, a range, HEAD, conditional.
    let (status, headers, body) = call(&app, "GET", local(&pending_url), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(headers[header::CONTENT_TYPE], "application/dicom");
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let (status, headers, body) = call(
        &app,
        "GET",
        local(&pending_url),
        &[("range", "bytes=10-19")],
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &bytes[10..20]);
    assert_eq!(headers[header::CONTENT_RANGE], "bytes 10-19/1000");
    let (status, headers, body) = call(&app, "HEAD", local(&pending_url), &[]).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers[header::CONTENT_LENGTH], "1000");
    let (status, _, _) = call(
        &app,
        "GET",
        local(&pending_url),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    // The signature still counts.
    let forged = local(&pending_url).replace("sig=", "sig=x");
    assert_eq!(
        call(&app, "GET", &forged, &[]).await.0,
        StatusCode::FORBIDDEN
    );

    let (_, _, health) = call(&app, "GET", "/healthz", &[]).await;
    let health: serde_json::Value = serde_json::from_slice(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["upload_backlog"]["instances"], 1, "{health}");
    assert_eq!(health["upload_backlog"]["bytes"], 1000, "{health}");
    assert_eq!(health["upload_backlog"]["failing"], false, "{health}");

    // Uploaded: the URL handed out earlier now sends the viewer to the store.
    let stop = CancellationToken::new();
    let uploaders = backlog.spawn(stop.clone());
    gated.gate.add_permits(1);
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        while backlog.pending(&key).is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(drained.is_ok(), "the upload did not finish");
    assert_eq!(gated.inner.get(&key).unwrap(), bytes);
    let (status, headers, _) = call(&app, "GET", local(&pending_url), &[]).await;
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    let location = headers[header::LOCATION].to_str().unwrap();
    assert!(
        location.contains("X-Amz-Signature") && location.contains(key.as_str()),
        "{location}"
    );
    let urls = access_urls(&app).await;
    assert!(
        urls.iter().all(|u| u.contains("X-Amz-Signature")),
        "{urls:?}"
    );
    let (_, _, health) = call(&app, "GET", "/healthz", &[]).await;
    let health: serde_json::Value = serde_json::from_slice(&health).unwrap();
    assert_eq!(health["upload_backlog"]["instances"], 0, "{health}");
    stop.cancel();
    uploaders.await.unwrap();
}
