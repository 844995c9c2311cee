//! The backlog against a real object store: `object_store`'s local
//! filesystem store in a temporary directory, which takes whole files by
//! `put` like S3 does, and fails for real when its root is not a directory.

use std::sync::atomic::AtomicUsize;

use futures::FutureExt;
use object_store::ObjectStoreExt;
use tokio::sync::Semaphore;

use super::*;
use crate::uid::Uid;

/// An upload target: a local `object_store` rooted at `root`.
pub(crate) struct LocalStore {
    root: PathBuf,
    /// Attempts made, failed or not.
    pub(crate) attempts: AtomicUsize,
}

impl LocalStore {
    pub(crate) fn new(root: &Path) -> Arc<LocalStore> {
        std::fs::create_dir_all(root).unwrap();
        Arc::new(LocalStore {
            root: root.to_owned(),
            attempts: AtomicUsize::new(0),
        })
    }

    pub(crate) fn get(&self, key: &ObjectKey) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(key.as_str())).ok()
    }

    /// The store goes away: its root is a plain file, so every write fails.
    fn break_it(&self) {
        std::fs::remove_dir_all(&self.root).unwrap();
        std::fs::write(&self.root, b"not a directory").unwrap();
    }

    fn repair(&self) {
        std::fs::remove_file(&self.root).unwrap();
        std::fs::create_dir(&self.root).unwrap();
    }
}

impl UploadTarget for LocalStore {
    fn upload<'a>(
        &'a self,
        path: &'a Path,
        _len: u64,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, crate::store::Result<()>> {
        async move {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            let bytes = std::fs::read(path).map_err(crate::store::Error::io("read", path))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&self.root)?;
            store.put(&key.to_path(), bytes.into()).await?;
            Ok(())
        }
        .boxed()
    }
}

/// A target that holds every upload until the test lets it go.
pub(crate) struct Gated {
    pub(crate) inner: Arc<LocalStore>,
    pub(crate) entered: Notify,
    pub(crate) gate: Semaphore,
}

impl UploadTarget for Gated {
    fn upload<'a>(
        &'a self,
        path: &'a Path,
        len: u64,
        key: &'a ObjectKey,
    ) -> BoxFuture<'a, crate::store::Result<()>> {
        async move {
            self.entered.notify_one();
            self.gate.acquire().await.unwrap().forget();
            self.inner.upload(path, len, key).await
        }
        .boxed()
    }
}

fn key(n: u32) -> ObjectKey {
    let u = |s: &str| Uid::parse(s).unwrap();
    ObjectKey::instance(&u("1.2.3"), &u("1.2.3.4"), &u(&format!("1.2.3.4.{n}")))
}

/// Quick retries, and uploads that never yield to arrivals (the yielding
/// has its own test).
fn fast(wait: u64, max: u64) -> Settings {
    Settings {
        backoff: Duration::from_millis(5),
        backoff_max: Duration::from_millis(40),
        quiet: Duration::ZERO,
        ..Settings::new(wait, max)
    }
}

/// A file of `bytes` in `dir`, to be enqueued.
fn spooled(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A callback that counts its calls into `counter`, and a way to wait for it.
fn counted(counter: &Arc<(AtomicUsize, Notify)>) -> OnUploaded {
    let counter = Arc::clone(counter);
    Box::new(move || {
        counter.0.fetch_add(1, Ordering::SeqCst);
        counter.1.notify_waiters();
    })
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} did not happen");
}

#[tokio::test]
async fn admits_up_to_wait_then_waits_for_uploads_and_refuses_past_max() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let backlog = Backlog::open_with(&tmp.path().join("pending"), store, fast(100, 250)).unwrap();
    let patience = Duration::from_secs(30);

    // More than max in one: refused at once, even when empty.
    match backlog.admit(251, patience).await {
        Err(Error::Full {
            backlog: 0,
            len: 251,
            max: 250,
        }) => {}
        other => panic!("{other:?}"),
    }
    // Admitted while at most `wait`, even when the new one passes it.
    let a = backlog.admit(60, patience).await.unwrap();
    let b = backlog.admit(60, patience).await.unwrap();
    assert_eq!(backlog.status().bytes, 120);
    // Past max with what is there: refused, not waiting.
    match backlog.admit(131, patience).await {
        Err(Error::Full { backlog: 120, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Above wait: waits, and gives up after its patience.
    match backlog.admit(10, Duration::from_millis(30)).await {
        Err(Error::Busy { .. }) => {}
        other => panic!("{other:?}"),
    }
    // A waiter is let in once bytes leave the backlog.
    let waiting = tokio::spawn({
        let backlog = Arc::clone(&backlog);
        async move { backlog.admit(10, patience).await }
    });
    let blocking = tokio::task::spawn_blocking({
        let backlog = Arc::clone(&backlog);
        move || backlog.admit_blocking(10, patience)
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(a);
    let c = waiting.await.unwrap().unwrap();
    let d = blocking.await.unwrap().unwrap();
    assert_eq!(backlog.status().bytes, 80);
    drop((b, c, d));
    assert_eq!(backlog.status().bytes, 0);
    // The blocking variant refuses and gives up the same way.
    let full = backlog.admit_blocking(251, patience).unwrap_err();
    assert!(full.to_string().contains("storage.backlog_max"), "{full}");
    let _e = backlog.admit(101, patience).await.unwrap();
    match backlog.admit_blocking(1, Duration::from_millis(20)) {
        Err(Error::Busy { .. }) => {}
        other => panic!("{other:?}"),
    }
    // A patience past what the clock holds is no panic.
    drop(_e);
    let huge = backlog.admit(1, Duration::MAX).await.unwrap();
    let huge_too = backlog.admit_blocking(1, Duration::MAX).unwrap();
    assert_eq!(backlog.status().bytes, 2);
    drop((huge, huge_too));
}

#[tokio::test]
async fn uploads_then_reports_then_removes_the_local_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let target: Arc<dyn UploadTarget> = store.clone();
    let backlog =
        Backlog::open_with(&tmp.path().join("pending"), target, fast(1 << 20, 2 << 20)).unwrap();
    let uploaded = Arc::new((AtomicUsize::new(0), Notify::new()));

    let linked = spooled(tmp.path(), "spool-1", b"first instance");
    let admitted = backlog.admit(14, Duration::ZERO).await.unwrap();
    backlog
        .enqueue_file(admitted, key(1), &linked, Place::Link, counted(&uploaded))
        .unwrap();
    assert!(linked.exists(), "a link leaves the spool file");
    let renamed = spooled(tmp.path(), "spool-2", b"second");
    let admitted = backlog.admit(6, Duration::ZERO).await.unwrap();
    backlog
        .enqueue_file(
            admitted,
            key(2),
            &renamed,
            Place::Rename,
            counted(&uploaded),
        )
        .unwrap();
    assert!(!renamed.exists());

    // Nothing uploads before the uploaders run: served from here.
    let pending = backlog.pending(&key(1)).unwrap();
    assert_eq!(pending, backlog.local_path(&key(1)));
    assert_eq!(std::fs::read(&pending).unwrap(), b"first instance");
    let status = backlog.status();
    assert_eq!(
        (status.instances, status.bytes, status.failing),
        (2, 20, false)
    );

    let stop = CancellationToken::new();
    let uploaders = backlog.spawn(stop.clone());
    until("both uploads", || backlog.status().instances == 0).await;
    assert_eq!(uploaded.0.load(Ordering::SeqCst), 2);
    assert_eq!(store.get(&key(1)).unwrap(), b"first instance");
    assert_eq!(store.get(&key(2)).unwrap(), b"second");
    assert_eq!(backlog.pending(&key(1)), None);
    assert!(!pending.exists(), "uploaded copies are removed");
    assert_eq!(backlog.status().bytes, 0);
    // Only the scratch directories are left.
    let left: Vec<_> = std::fs::read_dir(backlog.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    stop.cancel();
    uploaders.await.unwrap();
}

#[tokio::test]
async fn a_failing_store_is_retried_until_it_is_back_and_nothing_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let target: Arc<dyn UploadTarget> = store.clone();
    let backlog =
        Backlog::open_with(&tmp.path().join("pending"), target, fast(1 << 20, 2 << 20)).unwrap();
    let uploaded = Arc::new((AtomicUsize::new(0), Notify::new()));
    store.break_it();
    for n in 0..6 {
        let file = spooled(
            tmp.path(),
            &format!("s{n}"),
            format!("instance {n}").as_bytes(),
        );
        let admitted = backlog.admit(10, Duration::ZERO).await.unwrap();
        backlog
            .enqueue_file(admitted, key(n), &file, Place::Rename, counted(&uploaded))
            .unwrap();
    }
    let stop = CancellationToken::new();
    let uploaders = backlog.spawn(stop.clone());
    // Every uploader fails a few times.
    until("retries", || store.attempts.load(Ordering::SeqCst) >= 12).await;
    let status = backlog.status();
    assert!(status.failing);
    assert_eq!(status.instances, 6, "nothing dropped");
    let reason = status.last_error.unwrap();
    assert!(!reason.contains("://"), "{reason}");
    assert_eq!(uploaded.0.load(Ordering::SeqCst), 0);
    assert!(backlog.pending(&key(0)).is_some());

    store.repair();
    until("the backlog drains", || backlog.status().instances == 0).await;
    let status = backlog.status();
    assert!(!status.failing);
    assert_eq!(status.last_error, None);
    assert_eq!(uploaded.0.load(Ordering::SeqCst), 6);
    for n in 0..6 {
        assert_eq!(
            store.get(&key(n)).unwrap(),
            format!("instance {n}").as_bytes()
        );
    }
    stop.cancel();
    uploaders.await.unwrap();
}

#[tokio::test]
async fn a_key_enqueued_again_during_its_upload_is_uploaded_again_and_kept_until_then() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let gated = Arc::new(Gated {
        inner: Arc::clone(&store),
        entered: Notify::new(),
        gate: Semaphore::new(0),
    });
    let target: Arc<dyn UploadTarget> = gated.clone();
    let backlog = Backlog::open_with(
        &tmp.path().join("pending"),
        target,
        Settings {
            uploads: 2,
            ..fast(1 << 20, 2 << 20)
        },
    )
    .unwrap();
    let first = Arc::new((AtomicUsize::new(0), Notify::new()));
    let second = Arc::new((AtomicUsize::new(0), Notify::new()));

    let v1 = spooled(tmp.path(), "v1", b"version one");
    let admitted = backlog.admit(11, Duration::ZERO).await.unwrap();
    let entered = gated.entered.notified();
    backlog
        .enqueue_file(admitted, key(7), &v1, Place::Rename, counted(&first))
        .unwrap();
    let stop = CancellationToken::new();
    let uploaders = backlog.spawn(stop.clone());
    entered.await; // version one is being uploaded

    let v2 = spooled(tmp.path(), "v2", b"version two, longer");
    let admitted = backlog.admit(19, Duration::ZERO).await.unwrap();
    backlog
        .enqueue_file(admitted, key(7), &v2, Place::Rename, counted(&second))
        .unwrap();
    let status = backlog.status();
    assert_eq!(
        (status.instances, status.bytes),
        (1, 19),
        "one key, the newer copy's bytes"
    );

    // Version one completes: its callback runs, the copy (version two) stays.
    let entered = gated.entered.notified();
    gated.gate.add_permits(1);
    entered.await; // ... and version two's upload has started
    assert_eq!(first.0.load(Ordering::SeqCst), 1);
    assert_eq!(second.0.load(Ordering::SeqCst), 0);
    assert_eq!(store.get(&key(7)).unwrap(), b"version one");
    let local = backlog.pending(&key(7)).expect("still pending");
    assert_eq!(std::fs::read(&local).unwrap(), b"version two, longer");

    gated.gate.add_permits(1);
    until("version two uploaded", || backlog.status().instances == 0).await;
    assert_eq!(second.0.load(Ordering::SeqCst), 1);
    assert_eq!(first.0.load(Ordering::SeqCst), 1, "each callback once");
    assert_eq!(store.get(&key(7)).unwrap(), b"version two, longer");
    assert!(!local.exists());
    stop.cancel();
    uploaders.await.unwrap();
}

#[tokio::test]
async fn versions_replaced_before_any_upload_go_up_once_with_every_callback() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let target: Arc<dyn UploadTarget> = store.clone();
    let backlog =
        Backlog::open_with(&tmp.path().join("pending"), target, fast(1 << 20, 2 << 20)).unwrap();
    let calls = Arc::new((AtomicUsize::new(0), Notify::new()));
    for v in 0..3u8 {
        let file = spooled(tmp.path(), "v", &[v; 4]);
        let admitted = backlog.admit(4, Duration::ZERO).await.unwrap();
        backlog
            .enqueue_file(admitted, key(1), &file, Place::Rename, counted(&calls))
            .unwrap();
    }
    assert_eq!(backlog.status().instances, 1);
    assert_eq!(backlog.status().bytes, 4);
    let stop = CancellationToken::new();
    let uploaders = backlog.spawn(stop.clone());
    until("the upload", || backlog.status().instances == 0).await;
    assert_eq!(calls.0.load(Ordering::SeqCst), 3);
    assert_eq!(store.attempts.load(Ordering::SeqCst), 1);
    assert_eq!(store.get(&key(1)).unwrap(), vec![2u8; 4]);
    stop.cancel();
    uploaders.await.unwrap();
}

#[tokio::test]
async fn unclaimed_copies_are_queued_again_strays_removed_and_shutdown_leaves_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let pending = tmp.path().join("pending");
    let store = LocalStore::new(&tmp.path().join("store"));
    // What an earlier run left: copies, scratch links, something foreign.
    let earlier = Backlog::open_with(&pending, store.clone(), fast(100, 200)).unwrap();
    for n in [1, 2] {
        let path = earlier.local_path(&key(n));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("copy {n}")).unwrap();
    }
    std::fs::write(pending.join(".incoming/0"), b"scratch").unwrap();
    std::fs::create_dir_all(pending.join("studies/x/y/z/deeper")).unwrap();
    std::fs::write(pending.join("studies/stray.txt"), b"?").unwrap();
    drop(earlier);

    let backlog = Backlog::open_with(&pending, store.clone(), fast(100, 200)).unwrap();
    assert!(
        !pending.join(".incoming/0").exists(),
        "scratch is cleared on open"
    );
    assert!(
        backlog.local_path(&key(1)).exists(),
        "copies are not swept on open"
    );
    // The replay claims copy 1.
    let admitted = backlog.admit(6, Duration::ZERO).await.unwrap();
    backlog.enqueue(admitted, key(1), 6, Box::new(|| {}));
    // Copy 2 was made durable by an earlier checkpoint: queued again. The
    // stray file names no key: removed.
    assert_eq!(backlog.claim_unclaimed().unwrap(), 1);
    assert!(backlog.local_path(&key(1)).exists());
    assert!(backlog.pending(&key(2)).is_some());
    assert_eq!(backlog.status().instances, 2);
    assert!(!pending.join("studies/stray.txt").exists());

    // Stopped before it ran: the uploader takes nothing, the copy stays.
    let stop = CancellationToken::new();
    stop.cancel();
    backlog.spawn(stop).await.unwrap();
    assert!(backlog.pending(&key(1)).is_some());
    assert!(backlog.pending(&key(2)).is_some());
    assert_eq!(store.attempts.load(Ordering::SeqCst), 0);
}

#[test]
fn error_texts_lose_their_urls() {
    let text = "Error performing PUT http://127.0.0.1:8333/b/k?X-Amz-Signature=abc in 1s, \
                after 4 retries: HTTP error (\"https://s3.example/x?token=t\"): refused";
    let clean = uploader::without_urls(text);
    assert_eq!(
        clean,
        "Error performing PUT <url> in 1s, after 4 retries: HTTP error (\"<url>\"): refused"
    );
    assert_eq!(uploader::without_urls("no url here"), "no url here");
    assert_eq!(uploader::without_urls("HTTPS://X"), "<url>");
}

#[tokio::test]
async fn a_copy_smaller_than_its_reservation_lets_waiters_in() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let backlog = Backlog::open_with(&tmp.path().join("pending"), store, fast(10, 100)).unwrap();
    let reserved = backlog.admit(20, Duration::ZERO).await.unwrap();
    let waiter = tokio::spawn({
        let backlog = Arc::clone(&backlog);
        async move { backlog.admit(1, Duration::from_secs(600)).await }
    });
    // Let it run until it waits (the backlog is above `wait`).
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    let file = spooled(tmp.path(), "small", b"12345");
    backlog
        .enqueue_file(reserved, key(1), &file, Place::Rename, Box::new(|| {}))
        .unwrap();
    // Woken by the enqueue, long before its patience runs out.
    let admitted = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was not woken")
        .unwrap()
        .unwrap();
    assert_eq!(backlog.status().bytes, 6);
    drop(admitted);
}

/// Uploads yield to arrivals: right after a live arrival they wait, unless
/// the oldest object waited `defer_max` or the backlog holds a quarter of
/// `wait`; a replayed copy (queued with `enqueue`) is no arrival.
#[tokio::test]
async fn uploads_yield_to_arrivals_within_their_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let settings = |defer_max| Settings {
        quiet: Duration::from_secs(3600),
        defer_max,
        ..Settings::new(1 << 20, 2 << 20)
    };
    let pending = tmp.path().join("pending");
    let backlog =
        Backlog::open_with(&pending, store.clone(), settings(Duration::from_secs(3600))).unwrap();
    let replayed = backlog.local_path(&key(1));
    std::fs::create_dir_all(replayed.parent().unwrap()).unwrap();
    std::fs::write(&replayed, b"replayed").unwrap();
    backlog.enqueue(backlog.admit_replayed(8), key(1), 8, Box::new(|| {}));
    assert!(!backlog.defers(), "a replayed copy is no arrival");

    let admitted = backlog.admit(10, Duration::ZERO).await.unwrap();
    let file = spooled(tmp.path(), "a", &[7u8; 10]);
    backlog
        .enqueue_file(admitted, key(2), &file, Place::Rename, Box::new(|| {}))
        .unwrap();
    assert!(backlog.defers(), "just after an arrival, uploads wait");

    // A quarter of `wait` in the backlog ends the wait.
    let big = (1u64 << 20) / 4;
    let admitted = backlog.admit(big, Duration::ZERO).await.unwrap();
    let file = spooled(tmp.path(), "b", &vec![1u8; big as usize]);
    backlog
        .enqueue_file(admitted, key(3), &file, Place::Rename, Box::new(|| {}))
        .unwrap();
    assert!(
        !backlog.defers(),
        "a quarter of backlog_wait is not deferred"
    );

    // So does the oldest object's age.
    let pending = tmp.path().join("pending-2");
    let aged = Backlog::open_with(&pending, store, settings(Duration::ZERO)).unwrap();
    let admitted = aged.admit(10, Duration::ZERO).await.unwrap();
    let file = spooled(tmp.path(), "c", &[7u8; 10]);
    aged.enqueue_file(admitted, key(4), &file, Place::Rename, Box::new(|| {}))
        .unwrap();
    assert!(
        !aged.defers(),
        "an object that waited defer_max is not deferred"
    );
}

/// A moved instance's old copy is forgotten: not uploaded, removed, and
/// out of the counts; one being uploaded is reported so the caller waits.
#[tokio::test]
async fn a_forgotten_copy_is_never_uploaded() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalStore::new(&tmp.path().join("store"));
    let backlog =
        Backlog::open_with(&tmp.path().join("pending"), store.clone(), fast(100, 200)).unwrap();
    let admitted = backlog.admit(5, Duration::ZERO).await.unwrap();
    let file = spooled(tmp.path(), "old", b"old!!");
    backlog
        .enqueue_file(admitted, key(7), &file, Place::Rename, Box::new(|| {}))
        .unwrap();
    let local = backlog.local_path(&key(7));
    assert!(!backlog.forget(&key(7)), "nothing was uploading");
    assert!(backlog.pending(&key(7)).is_none());
    assert!(!local.exists());
    assert_eq!(backlog.status().instances, 0);
    assert_eq!(backlog.status().bytes, 0);
    assert!(
        !backlog.forget(&key(8)),
        "an unknown key is nothing to wait for"
    );
    let stop = CancellationToken::new();
    stop.cancel();
    backlog.spawn(stop).await.unwrap();
    assert_eq!(store.attempts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_uploaded_copy_becomes_a_spool_file_unless_a_reader_still_has_it() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let gated = Arc::new(Gated {
        inner: LocalStore::new(&tmp.path().join("store")),
        entered: Notify::new(),
        gate: Semaphore::new(0),
    });
    let target: Arc<dyn UploadTarget> = gated.clone();
    let backlog =
        Backlog::open_with(&tmp.path().join("pending"), target, fast(1 << 20, 2 << 20)).unwrap();
    let spool_dir = tmp.path().join("spool");
    let (spool, _) = crate::ingest::spool::Spool::open(&spool_dir).unwrap();
    backlog.set_recycler(spool.recycler());
    let spool_files = || -> Vec<(u64, u64)> {
        std::fs::read_dir(&spool_dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .map(|m| (m.ino(), m.len()))
            .collect()
    };
    let enqueue = |n: u32, bytes: &[u8]| {
        let path = spooled(tmp.path(), &format!("in-{n}"), bytes);
        let admitted = backlog
            .admit_blocking(bytes.len() as u64, Duration::ZERO)
            .unwrap();
        backlog
            .enqueue_file(admitted, key(n), &path, Place::Rename, Box::new(|| {}))
            .unwrap();
        std::fs::metadata(backlog.local_path(&key(n)))
            .unwrap()
            .ino()
    };
    let stop = CancellationToken::new();
    let uploaders = backlog.spawn(stop.clone());

    // Read while pending: the reader keeps the bytes it opened, and the
    // file is deleted, not reused.
    enqueue(1, b"the first instance");
    let mut reader = backlog.open_pending(&key(1)).await.unwrap().unwrap();
    gated.gate.add_permits(1);
    until("the first upload", || backlog.pending(&key(1)).is_none()).await;
    let mut read = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut read)
        .await
        .unwrap();
    assert_eq!(read, b"the first instance");
    assert_eq!(spool_files(), vec![], "a copy someone reads is not reused");
    assert!(backlog.open_pending(&key(1)).await.unwrap().is_none());

    // Nobody reads it: the same file, emptied, waits in the spool.
    let inode = enqueue(2, b"the second instance");
    gated.gate.add_permits(1);
    until("the second upload", || backlog.pending(&key(2)).is_none()).await;
    assert_eq!(spool_files(), vec![(inode, 0)]);
    assert!(backlog.open_pending(&key(2)).await.unwrap().is_none());
    assert_eq!(gated.inner.get(&key(2)).unwrap(), b"the second instance");
    assert!(!backlog.local_path(&key(2)).exists());
    stop.cancel();
    uploaders.await.unwrap();
}
