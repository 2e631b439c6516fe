//! One shipper per target: from its cursor to the head, in order, forever.
//!
//! Protocol, per batch read from the log (crc-checked, never past the
//! durable head):
//!
//! 1. Coalesce: for each key only its last entry in the batch is applied,
//!    so two versions of one key are never in flight together and the
//!    target can only end on the newest (guarantee 5).
//! 2. Apply the remaining puts and deletes with up to `window` requests in
//!    flight. A request is bounded by `sync_timeout_seconds`; a failure is
//!    retried with exponential backoff from `retry_delay_seconds`, capped;
//!    after `max_retry_attempts` failures in a row the target is marked
//!    unhealthy and retrying goes on. No entry is ever skipped.
//! 3. The cursor advances only over a contiguous prefix whose entries are
//!    applied (an entry counts as applied when the last entry of its key in
//!    the batch is). It is published at once (writers waiting on it wake)
//!    and persisted now and then: a persisted cursor may be behind, never
//!    ahead, and re-shipping after a crash is harmless (applying is
//!    idempotent).
//!
//! A corrupt entry stops shipping just before it: the state becomes
//! `failed` and the error names its seq (guarantee 7).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::{Entry, Op};
use crate::key::object_path;
use crate::log::Log;
use crate::replicator::TargetHandle;
use crate::status::{Health, TargetState};

/// Most entries read from the log per batch.
const MAX_BATCH: usize = 4096;
/// Most bytes read from the log per batch (at least one entry).
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How often a moving cursor is persisted.
const PERSIST_EVERY: Duration = Duration::from_millis(200);
/// Longest pause between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The shipping was cancelled (shutdown).
#[derive(Debug)]
struct Cancelled;

pub(crate) struct Shipper {
    pub(crate) target: Arc<TargetHandle>,
    pub(crate) log: Arc<Log>,
    pub(crate) progress: Arc<watch::Sender<u64>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) window: usize,
}

impl Shipper {
    pub(crate) async fn run(self) {
        let name = self.target.cfg.name.clone();
        let span = tracing::info_span!("ship", target = %name);
        let _guard = span.enter();
        drop(_guard);
        let mut head_rx = self.log.subscribe();
        let mut last_persist = Instant::now();
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            let cursor = self.target.cursor();
            let head = *head_rx.borrow_and_update();
            if cursor >= head {
                tokio::select! {
                    r = head_rx.changed() => if r.is_err() { break },
                    () = self.cancel.cancelled() => break,
                }
                continue;
            }
            let log = self.log.clone();
            let read = tokio::task::spawn_blocking(move || {
                log.read(cursor + 1, MAX_BATCH, MAX_BATCH_BYTES)
            })
            .await;
            let batch = match read {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(target = %name, error = %e, "log reader task failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !batch.entries.is_empty()
                && self.ship(&batch.entries, &mut last_persist).await.is_err()
            {
                break;
            }
            if let Some(err) = batch.error {
                let msg = err.to_string();
                tracing::error!(target = %name, error = %msg, "shipping stopped");
                self.target.set_failed(msg);
                self.persist();
                self.cancel.cancelled().await;
                break;
            }
        }
        self.persist();
    }

    fn persist(&self) {
        let c = self.target.cursor();
        if let Err(e) = self.log.storage().set_cursor(&self.target.cfg.name, c) {
            tracing::warn!(target = %self.target.cfg.name, error = %e, "could not persist cursor; it will be persisted later");
        }
    }

    fn advance(&self, to: u64, last_persist: &mut Instant) {
        self.target.cursor_tx.send_replace(to);
        self.progress.send_modify(|p| *p += 1);
        if last_persist.elapsed() >= PERSIST_EVERY {
            self.persist();
            *last_persist = Instant::now();
        }
    }

    async fn ship(&self, entries: &[Entry], last_persist: &mut Instant) -> Result<(), Cancelled> {
        let base = entries[0].seq;
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            last.insert(e.key.as_str(), i);
        }
        let owner: Vec<usize> = entries.iter().map(|e| last[e.key.as_str()]).collect();
        let ops = (0..entries.len()).filter(|&i| owner[i] == i);
        let mut done = vec![false; entries.len()];
        let mut prefix = 0usize;
        let mut applied = futures::stream::iter(
            ops.map(|i| async move { self.apply_with_retry(&entries[i]).await.map(|()| i) }),
        )
        .buffer_unordered(self.window.max(1));
        while let Some(result) = applied.next().await {
            done[result?] = true;
            // Take every completion that is already there before publishing.
            while let Some(Some(more)) = applied.next().now_or_never() {
                done[more?] = true;
            }
            let before = prefix;
            while prefix < entries.len() && done[owner[prefix]] {
                prefix += 1;
            }
            if prefix > before {
                self.advance(base + prefix as u64 - 1, last_persist);
            }
        }
        self.persist();
        *last_persist = Instant::now();
        Ok(())
    }

    async fn apply_with_retry(&self, e: &Entry) -> Result<(), Cancelled> {
        let cfg = &self.target.cfg;
        let timeout = Duration::from_secs_f64(cfg.sync_timeout_seconds);
        let base = Duration::from_secs_f64(cfg.retry_delay_seconds);
        let cap = base
            .saturating_mul(1u32 << cfg.max_retry_attempts.min(16))
            .clamp(base, MAX_BACKOFF.max(base));
        let mut failures: u32 = 0;
        loop {
            let attempt = tokio::select! {
                r = tokio::time::timeout(timeout, self.apply(e)) => r,
                () = self.cancel.cancelled() => return Err(Cancelled),
            };
            let err = match attempt {
                Ok(Ok(())) => {
                    self.target.record_success();
                    return Ok(());
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!(
                    "no answer within sync_timeout_seconds ({:.1}s)",
                    cfg.sync_timeout_seconds
                ),
            };
            failures += 1;
            let msg = format!(
                "applying seq {} ({} {}): {err}",
                e.seq,
                e.op.as_str(),
                e.key
            );
            self.target.record_failure(&msg);
            let delay = base.saturating_mul(1u32 << (failures - 1).min(16)).min(cap);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => return Err(Cancelled),
            }
        }
    }

    async fn apply(&self, e: &Entry) -> object_store::Result<()> {
        let path = object_path(&e.key);
        match e.op {
            Op::Put => self
                .target
                .store
                .put(&path, PutPayload::from_bytes(e.value.clone()))
                .await
                .map(|_| ()),
            Op::Delete => match self.target.store.delete(&path).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            },
        }
    }
}

impl TargetHandle {
    fn record_success(&self) {
        if self.clean.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut s = self.status();
        self.clean.store(true, std::sync::atomic::Ordering::Release);
        s.failures = 0;
        s.error = None;
        if s.health != Health::Healthy {
            s.health = Health::Healthy;
        }
    }

    fn record_failure(&self, msg: &str) {
        let mut s = self.status();
        self.clean
            .store(false, std::sync::atomic::Ordering::Release);
        s.failures = s.failures.saturating_add(1);
        if s.failures >= self.cfg.max_retry_attempts {
            if s.health != Health::Unhealthy {
                tracing::warn!(target = %self.cfg.name, error = %msg, failures = s.failures, "target unhealthy; retrying with backoff");
            }
            s.health = Health::Unhealthy;
        }
        s.error = Some(msg.to_string());
    }

    fn set_failed(&self, msg: String) {
        let mut s = self.status();
        s.state = TargetState::Failed;
        s.health = Health::Unhealthy;
        s.error = Some(msg);
    }
}
