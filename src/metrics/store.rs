//! The object store, timed: every request the gateway makes of it (on S3,
//! every HTTP request; on the local store, every file operation done
//! through `object_store`) is counted by operation, with its latency and
//! whether it failed. Wrapping the store once catches every caller,
//! ingest, discovery and maintenance alike.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// An `ObjectStore` that reports every request to [`super::get`].
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn ObjectStore>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(Metered { inner })
    }
}

impl std::fmt::Display for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// Records `result` of `operation` started at `started`. A missing object,
/// or a conditional request whose condition did not hold, is an answer,
/// not a store error.
fn record<T>(operation: &'static str, started: Instant, result: &Result<T>) {
    use object_store::Error::{AlreadyExists, NotFound, NotModified, Precondition};
    let failed = match result {
        Ok(_)
        | Err(NotFound { .. } | AlreadyExists { .. } | Precondition { .. } | NotModified { .. }) => {
            false
        }
        Err(_) => true,
    };
    super::get().store_request(operation, started.elapsed(), failed);
}

#[async_trait]
impl ObjectStore for Metered {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let started = Instant::now();
        let result = self.inner.put_opts(location, payload, opts).await;
        record("put", started, &result);
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let started = Instant::now();
        let result = self.inner.put_multipart_opts(location, opts).await;
        record("put_multipart", started, &result);
        result
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let operation = if options.head { "head" } else { "get" };
        let started = Instant::now();
        let result = self.inner.get_opts(location, options).await;
        record(operation, started, &result);
        result
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let started = Instant::now();
        let result = self.inner.get_ranges(location, ranges).await;
        record("get_ranges", started, &result);
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // Deletes may be batched by the store: each result counts as one,
        // timed from the start of the stream.
        let started = Instant::now();
        self.inner
            .delete_stream(locations)
            .inspect(move |result| record("delete", started, result))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        timed_listing(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        timed_listing(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let started = Instant::now();
        let result = self.inner.list_with_delimiter(prefix).await;
        record("list", started, &result);
        result
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.copy_opts(from, to, options).await;
        record("copy", started, &result);
        result
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.rename_opts(from, to, options).await;
        record("rename", started, &result);
        result
    }
}

/// A listing counts once, when it ends or first fails (a listing dropped
/// half-way is not counted).
fn timed_listing(
    listing: BoxStream<'static, Result<ObjectMeta>>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    let started = Some(Instant::now());
    futures::stream::unfold(
        (listing, started),
        |(mut listing, mut started)| async move {
            let item = listing.next().await;
            let failed = match &item {
                None => false,
                Some(Err(_)) => true,
                Some(Ok(_)) => return item.map(|i| (i, (listing, started))),
            };
            if let Some(at) = started.take() {
                super::get().store_request("list", at.elapsed(), failed);
            }
            item.map(|i| (i, (listing, started)))
        },
    )
    .boxed()
}
