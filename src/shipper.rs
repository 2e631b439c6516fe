//! One shipper per target: from its cursor to the head, in order, forever.
//!
//! Protocol, per stretch planned from the log (crc-checked, never past the
//! durable head, at most `MAX_WINDOW` entries planned and not yet passed):
//!
//! 1. Coalesce: for each key only its last entry in the stretch is applied.
//!    A target catching up on a long backlog thus ships each key about once
//!    per stretch.
//! 2. Apply with up to `window` requests in flight (and at most
//!    `MAX_HELD_BYTES` of values in flight or waiting, beyond the first). Stretches are planned as
//!    the log grows, while earlier ones are still in flight, so a write is
//!    sent as soon as it lands (a pipeline, not one window after another).
//!    A key has at most one version in flight; versions landing meanwhile
//!    wait, and only the newest of them follows (guarantee 5; see
//!    `pipeline`). A request is bounded by `sync_timeout_seconds`; a
//!    failure is retried with exponential backoff from
//!    `retry_delay_seconds`, capped; after `max_retry_attempts` failures in
//!    a row the target is unhealthy and retrying goes on. No entry is ever
//!    skipped.
//! 3. The cursor advances only over a contiguous prefix of applied entries
//!    (an entry counts as applied when the entry covering it, the last of
//!    its key in its stretch or a newer one that replaced it while waiting,
//!    is). It is published at once (writers waiting on it wake) and
//!    persisted at most every `PERSIST_EVERY` while it moves, and once more
//!    that long after it stops (not at once: the write would land in the
//!    log's next flush): a persisted cursor may be behind, never ahead, and
//!    re-shipping after a crash is harmless (applying is idempotent).
//!
//! The tail of the log (a few entries just written, in sled's cache) is
//! planned on the shipper's own task; a longer stretch on the blocking
//! pool. Handing a one-entry plan to another thread and back cost a write
//! about as much as planning it (`plan_inline`).
//!
//! A paused target stops between requests and keeps its cursor; on resume
//! it continues from there. A corrupt entry stops shipping just before it:
//! the state becomes `failed` and the error names its seq (guarantee 7).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::apply::Engine;
use crate::codec::Entry;
use crate::error::Error;
use crate::log::{Log, Window, now_ms};
use crate::metrics::Metrics;
use crate::pipeline::{Flight, Pipeline};
use crate::status::TargetState;
use crate::target_state::TargetHandle;

/// Most entries planned at once: versions of a key superseded within this
/// stretch are not shipped (catch-up coalescing). Bounded memory: a few
/// integers per entry plus the distinct keys while planning.
const MAX_WINDOW: usize = 128 * 1024;
/// Most entries read from the log (and held) at once.
const MAX_BATCH: usize = 4096;
/// Most bytes read from the log per batch (at least one entry).
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How often a moving cursor is persisted, and how long after it stops.
const PERSIST_EVERY: Duration = Duration::from_millis(200);
/// Most entries, and bytes, beyond what is planned that are planned on the
/// shipper's task rather than the blocking pool (see `plan_inline`).
const INLINE_PLAN_ENTRIES: u64 = 64;
const INLINE_PLAN_BYTES: u64 = 256 << 10;
/// Longest pause between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why shipping stopped early.
#[derive(Debug)]
enum Stop {
    /// Shutdown.
    Cancelled,
    /// The target left the `active` state, or its cursor was moved by
    /// hand: start over from the cursor at once.
    Inactive,
    /// Reading the log failed for now: start over after a pause.
    Retry,
    /// The log is corrupt or damaged at an entry: the target fails,
    /// naming it (guarantee 7).
    Failed(Error),
}

/// A flight that landed: its seq, key, the seqs it covers, its value's size.
type Landed = (u64, String, Vec<u64>, u64);

/// When the cursor was last persisted, and whether it moved since.
struct Saved {
    at: Instant,
    moved: bool,
}

/// Whether the stretch of the log after `planned_to` (whose stored bytes
/// start at offset `planned_end`) up to `head` is planned on the shipper's
/// task: only the log's tail, which was just written and is in sled's
/// cache (a longer one, or large values, would hold the task from the
/// writes and landings it also serves). The offsets are always known once
/// the targets are placed (`replicator::place_offsets`), a fresh log's
/// included.
fn plan_inline(log: &Log, head: u64, planned_to: u64, planned_end: u64) -> bool {
    let entries = head.saturating_sub(planned_to);
    let bytes = log.head_offset().saturating_sub(planned_end);
    entries <= INLINE_PLAN_ENTRIES && bytes <= INLINE_PLAN_BYTES
}

/// Pause before applying again after this sidecar's own data dir failed
/// (full, reopening): short and not growing, as the target is not at fault.
const LOCAL_RETRY: Duration = Duration::from_millis(200);
/// Pause before planning again after reading the log failed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Values held by a shipper at most (in flight and waiting behind a key in
/// flight), beyond the first one: a few hundred large objects do not all
/// sit in memory at once.
const MAX_HELD_BYTES: u64 = 64 << 20;

/// A put refused this many times in a row, each time for a reason that
/// retrying cannot change, fails its target (guarantee 11).
const REFUSALS_FOR_GOOD: u32 = 3;

#[derive(Clone)]
pub(crate) struct Shipper {
    pub(crate) target: Arc<TargetHandle>,
    pub(crate) log: Arc<Log>,
    pub(crate) progress: Arc<watch::Sender<u64>>,
    pub(crate) waiters: Arc<crate::waiters::Waiters>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) cancel: CancellationToken,
    pub(crate) window: usize,
}

impl Shipper {
    /// Ships until shutdown (its owner, `replicator::owner`, starts it
    /// again when it panics).
    pub(crate) async fn run(self) {
        let name = self.target.name().to_string();
        let mut head_rx = self.log.subscribe();
        let mut state_rx = self.target.state_tx.subscribe();
        let mut cursor_rx = self.target.cursor_tx.subscribe();
        // Moved: a restarted shipper's cursor may be past the record.
        let mut saved = Saved {
            at: Instant::now(),
            moved: true,
        };
        loop {
            if self.cancel.is_cancelled() {
                break;
            }
            if self.target.reopened_since(self.log.storage().as_ref()) {
                // The log reopened (it wakes the head's watchers): ship
                // again from what the reopened storage holds.
                if let Err(e) = self.target.rewind_if_reopened(&self.log) {
                    // The log says why it refuses; not repeated per target.
                    tracing::debug!(target = %name, error = %e, "the log reopened and the target's record cannot be read yet; retrying in 200 ms");
                    tokio::select! {
                        () = tokio::time::sleep(LOCAL_RETRY) => {}
                        () = self.cancel.cancelled() => break,
                    }
                    continue;
                }
            }
            let state = *state_rx.borrow_and_update();
            if state != TargetState::Active {
                self.persist();
                tokio::select! {
                    r = state_rx.changed() => if r.is_err() { break },
                    () = self.cancel.cancelled() => break,
                }
                continue;
            }
            // Replay moves the cursor back by hand: wake on that too.
            let cursor = *cursor_rx.borrow_and_update();
            let head = *head_rx.borrow_and_update();
            if cursor >= head {
                let save_at = tokio::time::Instant::from_std(saved.at + PERSIST_EVERY);
                tokio::select! {
                    r = head_rx.changed() => if r.is_err() { break },
                    _ = state_rx.changed() => {},
                    _ = cursor_rx.changed() => {},
                    () = tokio::time::sleep_until(save_at), if saved.moved => {
                        saved = Saved { at: Instant::now(), moved: !self.persist() };
                    }
                    () = self.cancel.cancelled() => break,
                }
                continue;
            }
            let error = match self.ship(&mut saved).await {
                Ok(error) => error,
                Err(Stop::Inactive) => continue,
                Err(Stop::Cancelled) => break,
                Err(Stop::Retry) => {
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_PAUSE) => {}
                        () = self.cancel.cancelled() => break,
                    }
                    continue;
                }
                Err(Stop::Failed(e)) => Some(e),
            };
            if let Some(err) = error {
                let msg = err.to_string();
                if matches!(err, Error::Corrupt { .. } | Error::Damaged(_)) {
                    tracing::error!(target = %name, error = %msg, "shipping stopped");
                    self.target.set_failed(msg);
                    self.persist();
                } else {
                    // The log could not be read for now (a full disk, a
                    // reopen under way): not the target's fault; try again.
                    tracing::warn!(target = %name, error = %msg, "reading the log failed; retrying in 500 ms");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        () = self.cancel.cancelled() => break,
                    }
                }
            }
        }
        self.persist();
    }

    /// Persists the cursor; false when it could not be (a state change
    /// held the record, or the write failed): try again later.
    fn persist(&self) -> bool {
        crate::crash::point("cursor");
        match self.target.save_position(&self.log, false) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(target = %self.target.name(), error = %e, "could not persist cursor; it will be persisted later");
                false
            }
        }
    }

    /// Ships from the cursor while there is anything to ship: stretches of
    /// the log are planned as it grows, while earlier ones are in flight
    /// (see `pipeline` for what may be sent and how far the cursor passes).
    /// Returns once everything planned is applied, with the error that
    /// ended planning, if any.
    async fn ship(&self, saved: &mut Saved) -> Result<Option<Error>, Stop> {
        let epoch = self.target.epoch();
        let (cursor, mut offset) = self.target.position();
        let mut pipe = Pipeline::new(cursor);
        let mut head_rx = self.log.subscribe();
        let mut cursor_rx = self.target.cursor_tx.subscribe();
        let mut sources: VecDeque<futures::stream::BoxStream<'_, Result<Entry, Stop>>> =
            VecDeque::new();
        let mut planning: Option<tokio::task::JoinHandle<Window>> = None;
        let mut error: Option<Error> = None;
        let mut flights = FuturesUnordered::new();
        let cap = self.window.max(1);
        let label = Metrics::target(self.target.name());
        let success = self.metrics.success.get_or_create(&label).clone();
        let histogram = self
            .metrics
            .replication_seconds
            .get_or_create(&label)
            .clone();
        loop {
            let head = *head_rx.borrow_and_update();
            // Plan more once everything planned has been offered: planning
            // further ahead would only hold entries in memory (and coalesce
            // less), as nothing more can be sent meanwhile.
            if planning.is_none()
                && sources.is_empty()
                && error.is_none()
                && pipe.planned_to() < head
                && pipe.len() < MAX_WINDOW
            {
                let log = self.log.clone();
                let (from, room) = (pipe.planned_to() + 1, MAX_WINDOW - pipe.len());
                let tail = head - pipe.planned_to();
                if plan_inline(&log, head, pipe.planned_to(), offset + pipe.planned_bytes()) {
                    // Only the stretch checked: a group landing meanwhile
                    // waits for the next plan.
                    let w = log.plan(from, room.min(tail as usize), MAX_BATCH, MAX_BATCH_BYTES);
                    self.take_planned(w, &mut pipe, &mut error, &mut sources)?;
                    continue;
                }
                planning = Some(tokio::task::spawn_blocking(move || {
                    log.plan(from, room, MAX_BATCH, MAX_BATCH_BYTES)
                }));
            }
            if planning.is_none() && sources.is_empty() && flights.is_empty() {
                if !pipe.is_empty() && error.is_none() {
                    tracing::warn!(target = %self.target.name(), cursor = pipe.cursor(), "entries planned but none in flight; planning again");
                    return Err(Stop::Retry);
                }
                // Persisted once the cursor has stood still a while (by
                // `run`), or now when it is due.
                if saved.at.elapsed() >= PERSIST_EVERY {
                    *saved = Saved {
                        at: Instant::now(),
                        moved: !self.persist(),
                    };
                }
                return Ok(error);
            }
            tokio::select! {
                Some(landed) = flights.next(), if !flights.is_empty() => {
                    let mut landed: Result<Landed, Stop> = landed;
                    loop {
                        let (seq, key, covers, bytes) = landed?;
                        if let Some(next) = pipe.landed(seq, &key, &covers, bytes) {
                            flights.push(self.fly(next));
                        }
                        // Take every landing already there before publishing.
                        match flights.next().now_or_never() {
                            Some(Some(more)) => landed = more,
                            _ => break,
                        }
                    }
                    let now = now_ms();
                    let counted_to = self.target.counters.counted_to.load(Ordering::Acquire);
                    let mut new = 0u64;
                    let passed = pipe.advance(|seq, ts_ms| {
                        if seq > counted_to {
                            let age_ms = now.saturating_sub(ts_ms);
                            histogram.observe(age_ms as f64 / 1000.0);
                            self.target
                                .counters
                                .replication_us
                                .fetch_add(age_ms * 1000, Ordering::Relaxed);
                            new += 1;
                        }
                    });
                    if passed.count > 0 {
                        offset += passed.bytes;
                        success.inc_by(new);
                        self.target.counters.applied.fetch_add(new, Ordering::Relaxed);
                        self.target
                            .counters
                            .counted_to
                            .fetch_max(pipe.cursor(), Ordering::AcqRel);
                        if !self.target.publish(epoch, pipe.cursor(), offset) {
                            // Replayed or resynced meanwhile: start over from the new cursor.
                            return Err(Stop::Inactive);
                        }
                        self.progress.send_modify(|p| *p += 1);
                        let cursor = pipe.cursor();
                        self.waiters.passed(self.target.idx, cursor - passed.count, cursor);
                        saved.moved = true;
                        if saved.at.elapsed() >= PERSIST_EVERY {
                            *saved = Saved { at: Instant::now(), moved: !self.persist() };
                        }
                    }
                }
                planned = async { planning.as_mut().expect("guarded").await }, if planning.is_some() => {
                    planning = None;
                    let w = match planned {
                        Ok(w) => w,
                        Err(e) => {
                            tracing::error!(target = %self.target.name(), error = %e, "log reader task failed; planning again");
                            return Err(Stop::Retry);
                        }
                    };
                    self.take_planned(w, &mut pipe, &mut error, &mut sources)?;
                }
                item = async { sources.front_mut().expect("guarded").next().await },
                    if !sources.is_empty()
                        && flights.len() < cap
                        && (flights.is_empty() || pipe.held_bytes() < MAX_HELD_BYTES) => {
                    match item {
                        None => {
                            sources.pop_front();
                        }
                        Some(Ok(e)) => {
                            if let Some(f) = pipe.offer(e) {
                                flights.push(self.fly(f));
                            }
                        }
                        Some(Err(stop)) => return Err(stop),
                    }
                }
                r = head_rx.changed() => if r.is_err() { return Err(Stop::Cancelled) },
                _ = cursor_rx.changed() => if self.target.epoch() != epoch { return Err(Stop::Inactive) },
                () = self.cancel.cancelled() => return Err(Stop::Cancelled),
            }
        }
    }

    /// A planned stretch joins the pipeline, its entries queued to offer;
    /// the error that ended it (if any) is kept for when all is applied.
    fn take_planned<'a>(
        &'a self,
        mut w: Window,
        pipe: &mut Pipeline,
        error: &mut Option<Error>,
        sources: &mut VecDeque<futures::stream::BoxStream<'a, Result<Entry, Stop>>>,
    ) -> Result<(), Stop> {
        *error = w.error.take();
        if !w.is_empty() {
            if !pipe.extend(&w) {
                return Err(Stop::Retry);
            }
            let owner = std::mem::take(&mut w.owner);
            let kept = w.entries.take();
            sources.push_back(self.ops(w.base, owner, kept));
        }
        Ok(())
    }

    /// Sends one entry, retrying until it is applied.
    async fn fly(&self, f: Flight) -> Result<Landed, Stop> {
        self.apply_with_retry(&f.entry).await?;
        let bytes = f.entry.value.len() as u64;
        Ok((f.entry.seq, f.entry.key, f.covers, bytes))
    }

    /// The entries of a window to apply (each key's last), in seq order:
    /// the kept entries, or read from the log a chunk at a time.
    fn ops(
        &self,
        base: u64,
        owner: Vec<u32>,
        kept: Option<Vec<Entry>>,
    ) -> futures::stream::BoxStream<'_, Result<Entry, Stop>> {
        let n = owner.len();
        let owner = Arc::new(owner);
        if let Some(entries) = kept {
            return futures::stream::iter(
                entries
                    .into_iter()
                    .enumerate()
                    .filter(move |(i, _)| owner[*i] as usize == *i)
                    .map(|(_, e)| Ok(e)),
            )
            .boxed();
        }
        futures::stream::unfold(0usize, move |next| {
            let owner = owner.clone();
            async move {
            if next >= n {
                return None;
            }
            let log = self.log.clone();
            let from = base + next as u64;
            let want = (n - next).min(MAX_BATCH);
            let read =
                tokio::task::spawn_blocking(move || log.read(from, want, MAX_BATCH_BYTES)).await;
            match read {
                Ok(batch) if !batch.entries.is_empty() => {
                    let got = batch.entries.len().min(n - next);
                    let items: Vec<Result<Entry, Stop>> = batch
                        .entries
                        .into_iter()
                        .take(got)
                        .enumerate()
                        .filter(|(j, _)| owner[next + j] as usize == next + j)
                        .map(|(_, e)| Ok(e))
                        .collect();
                    Some((futures::stream::iter(items), next + got))
                }
                Ok(batch) => {
                    let stop = match batch.error {
                        Some(e @ (Error::Corrupt { .. } | Error::Damaged(_))) => Stop::Failed(e),
                        other => {
                            let why = other
                                .map(|e| e.to_string())
                                .unwrap_or_else(|| "nothing read".into());
                            tracing::warn!(target = %self.target.name(), seq = from, error = %why, "reading a planned stretch failed; planning again");
                            Stop::Retry
                        }
                    };
                    Some((futures::stream::iter(vec![Err(stop)]), n))
                }
                Err(e) => {
                    tracing::warn!(target = %self.target.name(), error = %e, "log reader task failed; planning again");
                    Some((futures::stream::iter(vec![Err(Stop::Retry)]), n))
                }
            }
            }
        })
        .flatten()
        .boxed()
    }

    async fn apply_with_retry(&self, e: &Entry) -> Result<(), Stop> {
        let cfg = &self.target.cfg;
        let timeout = Duration::from_secs_f64(cfg.sync_timeout_seconds);
        let base = Duration::from_secs_f64(cfg.retry_delay_seconds);
        let cap = base
            .saturating_mul(1u32 << cfg.max_retry_attempts.min(16))
            .clamp(base, MAX_BACKOFF.max(base));
        let mut state_rx = self.target.state_tx.subscribe();
        let mut failures: u32 = 0;
        // Rejections for good in a row: only a put that keeps being refused
        // so is one (a nested key shipped alongside may clear the way).
        let mut refused: u32 = 0;
        loop {
            if *state_rx.borrow_and_update() != TargetState::Active {
                return Err(Stop::Inactive);
            }
            let attempt = tokio::select! {
                r = tokio::time::timeout(timeout, self.apply(e)) => r,
                () = self.cancel.cancelled() => return Err(Stop::Cancelled),
                _ = state_rx.wait_for(|s| *s != TargetState::Active) => return Err(Stop::Inactive),
            };
            let (err, local) = match attempt {
                Ok(Ok(())) => {
                    crate::crash::point("ship");
                    self.target.record_success();
                    return Ok(());
                }
                Ok(Err(err)) => {
                    // Guarantee 11: a target that will never take this entry
                    // goes `failed` naming it; the other targets go on.
                    // Only for this entry: a local directory target whose
                    // own directory is gone or replaced is broken as a whole,
                    // and is retried until it is back.
                    let root_ok = match crate::config::TargetUrl::parse(&self.target.cfg.url) {
                        Ok(crate::config::TargetUrl::File(root)) => root.is_dir(),
                        _ => true,
                    };
                    let rejected = match &err {
                        _ if !root_ok => None,
                        Error::Rejected { .. } => Some(err.to_string()),
                        other => other.permanent_reason().map(|reason| {
                            Error::Rejected {
                                target: self.target.name().to_string(),
                                seq: e.seq,
                                key: e.key.clone(),
                                reason,
                            }
                            .to_string()
                        }),
                    };
                    refused = if rejected.is_some() && e.op == crate::codec::Op::Put {
                        refused + 1
                    } else {
                        0
                    };
                    if let Some(msg) = rejected.filter(|_| refused >= REFUSALS_FOR_GOOD) {
                        tracing::error!(target = %self.target.name(), seq = e.seq, key = %e.key, error = %msg, "target rejects an entry for good; shipping to it stopped");
                        self.target.counters.failed.fetch_add(1, Ordering::Relaxed);
                        self.target.set_failed(msg);
                        self.persist();
                        return Err(Stop::Inactive);
                    }
                    // This sidecar's own data dir failed (full, reopening),
                    // not the target: no backoff, so that shipping goes on
                    // as soon as the log takes writes again.
                    let local = err.is_local_transient();
                    (err.to_string(), local)
                }
                Err(_) => (
                    format!(
                        "no answer within sync_timeout_seconds ({:.1}s)",
                        cfg.sync_timeout_seconds
                    ),
                    false,
                ),
            };
            if !local {
                failures += 1;
            }
            self.target.counters.failed.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .failure
                .get_or_create(&Metrics::target(self.target.name()))
                .inc();
            let msg = format!(
                "applying seq {} ({} {}): {err}",
                e.seq,
                e.op.as_str(),
                e.key
            );
            self.target.record_failure(&msg);
            let delay = if local {
                LOCAL_RETRY
            } else {
                base.saturating_mul(1u32 << (failures.max(1) - 1).min(16))
                    .min(cap)
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => return Err(Stop::Cancelled),
                _ = state_rx.wait_for(|s| *s != TargetState::Active) => return Err(Stop::Inactive),
            }
        }
    }

    async fn apply(&self, e: &Entry) -> crate::Result<()> {
        self.engine.apply(&self.target, e).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_short_tail_is_planned_on_the_task_from_a_fresh_log_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Arc::new(crate::storage::SledStorage::open(dir.path(), 8 << 20).expect("open"));
        // A log that was never written: nothing recorded to trust, yet the
        // offsets are known (all zero), so its tail is planned here.
        let log = Log::open(storage).expect("log");
        let key = |k: &str| crate::key::Key::parse(k).expect("key");
        let small = log
            .append(crate::log::Write::put(
                key("a"),
                bytes::Bytes::from(vec![b'x'; 1500]),
            ))
            .await
            .expect("append");
        assert!(plan_inline(&log, small.seq, 0, 0), "one small entry");
        let before = log.head_offset();
        let big = log
            .append(crate::log::Write::put(
                key("b"),
                bytes::Bytes::from(vec![b'x'; INLINE_PLAN_BYTES as usize + 1]),
            ))
            .await
            .expect("append");
        assert!(
            !plan_inline(&log, big.seq, small.seq, before),
            "a large value"
        );
        assert!(
            plan_inline(&log, big.seq, big.seq, log.head_offset()),
            "nothing left to plan"
        );
        assert!(
            !plan_inline(&log, small.seq + INLINE_PLAN_ENTRIES + 1, small.seq, before),
            "too many entries"
        );
    }
}
