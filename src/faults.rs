//! A store wrapper that fails, delays, hangs or drops on command.
//!
//! Behind the `testing` feature. Used by the tests (and available to
//! library users' tests, with `features = ["testing"]`) to make the
//! fault paths happen: a target that errors, answers slowly, never answers,
//! or acknowledges writes it silently throws away.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tokio::sync::watch;

/// What the wrapped store does to each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass requests through.
    None,
    /// Answer every request with an error.
    Fail,
    /// Wait this long, then pass the request through.
    Delay(Duration),
    /// Never answer (until the fault changes).
    Hang,
    /// Answer writes and deletes with success without doing them.
    DropWrites,
    /// Do writes and deletes, then answer with an error (the answer was
    /// lost on the way back).
    LoseAcks,
    /// Panic inside every request (a bug in a store client).
    Panic,
    /// Do each put this long from now, on a task of its own, and answer
    /// then: a caller that stops waiting does not stop the write (as with
    /// a local directory's write on a blocking thread). Other requests
    /// pass through.
    DetachedPuts(Duration),
}

/// The remote control of a [`FaultyStore`]; cheap to clone.
#[derive(Clone)]
pub struct Faults {
    mode: Arc<watch::Sender<Fault>>,
    calls: Arc<AtomicU64>,
    puts: Arc<AtomicU64>,
    failed_writes: Arc<AtomicU64>,
    /// Keys of put requests in order, when recording is on.
    log: Arc<Mutex<Option<Vec<String>>>>,
    /// Puts to a path that ends with this wait (see [`Faults::hold_puts`]).
    held: Arc<watch::Sender<Option<String>>>,
    /// Puts waiting under [`Faults::hold_puts`] now.
    holding: Arc<AtomicU64>,
    /// Deletes of a path that ends with this wait (see
    /// [`Faults::hold_deletes`]).
    held_deletes: Arc<watch::Sender<Option<String>>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            mode: Arc::new(watch::channel(Fault::None).0),
            calls: Arc::default(),
            puts: Arc::default(),
            failed_writes: Arc::default(),
            log: Arc::default(),
            held: Arc::new(watch::channel(None).0),
            holding: Arc::default(),
            held_deletes: Arc::new(watch::channel(None).0),
        }
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faults({:?})", *self.mode.borrow())
    }
}

impl Faults {
    /// Sets the fault for every following (and every hung) request.
    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }

    /// Back to passing requests through.
    pub fn heal(&self) {
        self.set(Fault::None);
    }

    /// The current fault.
    pub fn current(&self) -> Fault {
        *self.mode.borrow()
    }

    /// Requests seen so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Put requests that reached the inner store.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
    }

    /// Put and delete requests answered with an injected failure.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    /// Puts to a path ending with `suffix` wait, unanswered, until
    /// [`Faults::release_puts`]; every other request goes on as the fault
    /// says. One slow object among fast ones.
    pub fn hold_puts(&self, suffix: &str) {
        self.held.send_replace(Some(suffix.to_string()));
    }

    /// Lets the puts held by [`Faults::hold_puts`] go on.
    pub fn release_puts(&self) {
        self.held.send_replace(None);
    }

    /// Puts waiting under [`Faults::hold_puts`] now.
    pub fn holding(&self) -> u64 {
        self.holding.load(Ordering::Acquire)
    }

    /// Deletes of a path ending with `suffix` wait, unanswered, until
    /// [`Faults::release_deletes`] (counted in [`Faults::holding`]).
    pub fn hold_deletes(&self, suffix: &str) {
        self.held_deletes.send_replace(Some(suffix.to_string()));
    }

    /// Lets the deletes held by [`Faults::hold_deletes`] go on.
    pub fn release_deletes(&self) {
        self.held_deletes.send_replace(None);
    }

    /// Waits while puts to `location` are held.
    async fn held(&self, location: &Path) {
        self.wait_free(&self.held, location).await
    }

    /// Waits while `hold` holds requests to `location`.
    async fn wait_free(&self, hold: &watch::Sender<Option<String>>, location: &Path) {
        let free = |h: &Option<String>| {
            h.as_ref()
                .is_none_or(|s| !location.as_ref().ends_with(s.as_str()))
        };
        let mut rx = hold.subscribe();
        if free(&rx.borrow_and_update()) {
            return;
        }
        self.holding.fetch_add(1, Ordering::AcqRel);
        let _ = rx.wait_for(free).await;
        self.holding.fetch_sub(1, Ordering::AcqRel);
    }

    /// Starts recording the path of every put that reaches the store.
    pub fn record_puts(&self) {
        *self.log.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    /// The recorded put paths.
    pub fn recorded_puts(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Under [`Fault::LoseAcks`], turns a done write into an error.
    fn lose_ack<T>(&self, r: object_store::Result<T>) -> object_store::Result<T> {
        match (r, self.current()) {
            (Ok(_), Fault::LoseAcks) => {
                self.failed_writes.fetch_add(1, Ordering::Relaxed);
                Err(object_store::Error::Generic {
                    store: "faulty",
                    source: "injected failure: the write was done, its answer lost".into(),
                })
            }
            (r, _) => r,
        }
    }

    /// Applies the fault; `Ok(true)` means "pretend it worked".
    async fn gate(&self, write: bool) -> object_store::Result<bool> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.mode.subscribe();
        loop {
            let fault = *rx.borrow_and_update();
            match fault {
                Fault::None | Fault::LoseAcks | Fault::DetachedPuts(_) => return Ok(false),
                Fault::DropWrites => return Ok(write),
                Fault::Fail => {
                    if write {
                        self.failed_writes.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(object_store::Error::Generic {
                        store: "faulty",
                        source: "injected failure".into(),
                    });
                }
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    return Ok(false);
                }
                Fault::Panic => panic!("injected panic in a store request"),
                Fault::Hang => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

/// An [`ObjectStore`] that applies [`Faults`] before each request.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

impl FaultyStore {
    /// Wraps `inner`; the returned [`Faults`] controls it.
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> (Arc<FaultyStore>, Faults) {
        let faults = Faults::default();
        (
            Arc::new(FaultyStore {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.faults.held(location).await;
        if self.faults.gate(true).await? {
            return Ok(PutResult {
                e_tag: None,
                version: None,
                extensions: Default::default(),
            });
        }
        self.faults.puts.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = self
            .faults
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            log.push(location.to_string());
        }
        if let Fault::DetachedPuts(d) = self.faults.current() {
            let (inner, loc) = (self.inner.clone(), location.clone());
            return tokio::spawn(async move {
                tokio::time::sleep(d).await;
                inner.put_opts(&loc, payload, opts).await
            })
            .await
            .unwrap_or_else(|e| {
                Err(object_store::Error::Generic {
                    store: "faulty",
                    source: format!("the detached put did not finish: {e}").into(),
                })
            });
        }
        let r = self.inner.put_opts(location, payload, opts).await;
        self.faults.lose_ack(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.faults.gate(false).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.faults.gate(false).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.faults.gate(false).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        locations
            .then(move |loc| {
                let inner = inner.clone();
                let faults = faults.clone();
                async move {
                    let loc = loc?;
                    faults.wait_free(&faults.held_deletes, &loc).await;
                    if faults.gate(true).await? {
                        return Ok(loc);
                    }
                    let mut out =
                        inner.delete_stream(futures::stream::once(async move { Ok(loc) }).boxed());
                    let r = match out.next().await {
                        Some(r) => r,
                        None => Err(object_store::Error::Generic {
                            store: "faulty",
                            source: "inner delete_stream yielded nothing".into(),
                        }),
                    };
                    faults.lose_ack(r)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            match faults.gate(false).await {
                Ok(_) => inner.list(prefix.as_ref()),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.faults.gate(false).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if self.faults.gate(true).await? {
            return Ok(());
        }
        self.inner.copy_opts(from, to, options).await
    }
}
