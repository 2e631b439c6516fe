//! Writes to one path of a local directory land in the order they were
//! issued, even when an earlier caller stopped waiting.
//!
//! A local directory's put runs on a blocking thread: when the shipper
//! gives up on it (`sync_timeout_seconds`, a pause), dropping the future
//! does not stop the write. Without this wrapper its retry, and then the
//! key's next version, could land first, and the abandoned write of the
//! older version last: the target would end on an older version
//! (guarantee 5), since a local directory has no conditional overwrite to
//! refuse it.
//!
//! Invariant: a put or delete of path P starts only after every earlier
//! started one of P has finished. A write takes P's lock in its caller's
//! future (a caller dropped while waiting writes nothing) and then runs on
//! a task of its own that holds the lock until the store answers, whether
//! or not anyone still waits for the answer. Reads pass through.

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
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::keyed::KeyedLocks;

/// The wrapper; see the module docs.
pub(crate) struct Ordered {
    inner: Arc<dyn ObjectStore>,
    locks: Arc<KeyedLocks<Path>>,
}

/// Wraps a local directory's store.
pub(crate) fn ordered(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(Ordered::new(inner))
}

impl Ordered {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> Ordered {
        Ordered {
            inner,
            locks: Arc::default(),
        }
    }

    /// Runs the blocking `write` of `p` on the blocking pool after every
    /// earlier write of `p`; it finishes (and holds `p`'s place until it
    /// does) even if this caller goes away. One hand-off, where
    /// [`Ordered::in_order`] of an async write takes two.
    pub(crate) async fn in_order_blocking<T, F>(
        &self,
        p: &Path,
        write: F,
    ) -> object_store::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> object_store::Result<T> + Send + 'static,
    {
        let guard = self.locks.lock(p).await;
        tokio::task::spawn_blocking(move || {
            let out = write();
            drop(guard);
            out
        })
        .await
        .unwrap_or_else(|e| {
            Err(object_store::Error::Generic {
                store: "local directory",
                source: format!("the write task did not finish: {e}").into(),
            })
        })
    }

    /// Runs `write` for `p` after every earlier write of `p`, on a task that
    /// finishes it even if this caller goes away.
    async fn in_order<T, F>(&self, p: &Path, write: F) -> object_store::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let guard = self.locks.lock(p).await;
        tokio::spawn(async move {
            let out = write.await;
            drop(guard);
            out
        })
        .await
        .unwrap_or_else(|e| {
            Err(object_store::Error::Generic {
                store: "local directory",
                source: format!("the write task did not finish: {e}").into(),
            })
        })
    }
}

impl fmt::Debug for Ordered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ordered({})", self.inner)
    }
}

impl fmt::Display for Ordered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Ordered {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let (inner, loc) = (self.inner.clone(), location.clone());
        self.in_order(location, async move {
            inner.put_opts(&loc, payload, opts).await
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let me = Ordered {
            inner: self.inner.clone(),
            locks: self.locks.clone(),
        };
        let me = Arc::new(me);
        locations
            .then(move |loc| {
                let me = me.clone();
                async move {
                    let loc = loc?;
                    let (inner, l) = (me.inner.clone(), loc.clone());
                    me.in_order(&loc, async move {
                        let mut out = inner
                            .delete_stream(futures::stream::once(async move { Ok(l) }).boxed());
                        match out.next().await {
                            Some(r) => r,
                            None => Err(object_store::Error::Generic {
                                store: "local directory",
                                source: "the delete answered nothing".into(),
                            }),
                        }
                    })
                    .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let (inner, f, t) = (self.inner.clone(), from.clone(), to.clone());
        self.in_order(to, async move { inner.copy_opts(&f, &t, options).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A write whose caller stopped waiting still finishes before the
    /// next write of its path starts; writes of other paths do not wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_write_abandoned_by_its_caller_still_lands_before_the_next() {
        let o = Arc::new(Ordered::new(
            Arc::new(object_store::memory::InMemory::new()),
        ));
        let landed = Arc::new(Mutex::new(Vec::<&str>::new()));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (o, landed) = (o.clone(), landed.clone());
            tokio::spawn(async move {
                o.in_order_blocking(&Path::from("k"), move || {
                    let _ = started_tx.send(());
                    held.recv().expect("released");
                    landed.lock().expect("lock").push("old");
                    Ok(())
                })
                .await
            })
        };
        started.await.expect("the first write started");
        // Its caller gives up (a timeout, a pause).
        first.abort();
        let _ = first.await;
        let next = {
            let (o, landed) = (o.clone(), landed.clone());
            tokio::spawn(async move {
                o.in_order_blocking(&Path::from("k"), move || {
                    landed.lock().expect("lock").push("new");
                    Ok(())
                })
                .await
            })
        };
        // Another path goes on meanwhile.
        let other = landed.clone();
        o.in_order_blocking(&Path::from("other"), move || {
            other.lock().expect("lock").push("other");
            Ok(())
        })
        .await
        .expect("other path");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(*landed.lock().expect("lock"), vec!["other"], "k waits");
        release.send(()).expect("release");
        next.await.expect("task").expect("write");
        assert_eq!(*landed.lock().expect("lock"), vec!["other", "old", "new"]);
    }
}
