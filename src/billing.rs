//! Counting what the stores will bill: every request walship sends to a
//! target's store, by kind, into `walship_target_requests_total{target,op}`.
//!
//! Invariant: each target's store is wrapped once, below everything walship
//! does with it (shipping, probes, reads, resync, verify), so the counter
//! is every request, not a sample. A multipart upload counts one `put` per
//! part and per completion; `delete_stream` one `delete` per object.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Metrics, RequestLabels};

/// The counters of one target, one per op.
#[derive(Clone)]
struct Ops {
    put: Counter,
    get: Counter,
    head: Counter,
    delete: Counter,
    list: Counter,
    copy: Counter,
}

/// A store that counts the requests it passes on.
pub(crate) struct Counted {
    inner: Arc<dyn ObjectStore>,
    ops: Ops,
}

/// Wraps `inner`, counting into `metrics` under `target`.
pub(crate) fn counted(
    inner: Arc<dyn ObjectStore>,
    target: &str,
    metrics: &Metrics,
) -> Arc<dyn ObjectStore> {
    let c = |op: &str| {
        metrics
            .target_requests
            .get_or_create(&RequestLabels {
                target: target.to_string(),
                op: op.to_string(),
            })
            .clone()
    };
    Arc::new(Counted {
        inner,
        ops: Ops {
            put: c("put"),
            get: c("get"),
            head: c("head"),
            delete: c("delete"),
            list: c("list"),
            copy: c("copy"),
        },
    })
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counted({})", self.inner)
    }
}

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

/// A multipart upload counting each part and the completion as a put.
#[derive(Debug)]
struct CountedUpload {
    inner: Box<dyn MultipartUpload>,
    put: Counter,
}

#[async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.put.inc();
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.put.inc();
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.put.inc();
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.ops.put.inc();
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.ops.put.inc();
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountedUpload {
            inner,
            put: self.ops.put.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            self.ops.head.inc();
        } else {
            self.ops.get.inc();
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.ops.get.inc_by(ranges.len() as u64);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let delete = self.ops.delete.clone();
        self.inner.delete_stream(
            locations
                .inspect(move |l| {
                    if l.is_ok() {
                        delete.inc();
                    }
                })
                .boxed(),
        )
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.ops.list.inc();
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.ops.list.inc();
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.ops.copy.inc();
        self.inner.copy_opts(from, to, options).await
    }
}
