//! A target as the replicator holds it: its store, its cursor and offset,
//! its state, and what is known of its health.
//!
//! Invariant: the published cursor only moves forward while shipping
//! (replay, resync and a reopen of the log move it explicitly), and
//! `offset` is the log offset just after `cursor`, so lag bytes are
//! `head offset - offset`.
//!
//! Invariant (a reopen of the log): the position and the version cache of
//! a target stand on one storage generation (`LogStore::generation`). A
//! reopen after a failed flush loses what was written since the last
//! sync, the version records of the entries shipped meanwhile among it
//! (a target without metadata needs them to tell its versions are ours
//! after a restart). So no record of the target is written in a newer
//! generation before the target is rewound ([`TargetHandle::rewind_if_reopened`]):
//! its cursor goes back to its record as the reopened storage holds it
//! (the epoch moves, so nothing shipped before lands as progress) and
//! the entries after it are shipped again, recording their versions anew.
//! Every write of the record goes through that check, under the record's
//! lock, and lands only in the generation it checked.

use crate::log::Log;
use crate::storage::LogStorage;
use crate::target_machine::{Event, Step, next, on};
use crate::target_record::TargetRecord;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use object_store::ObjectStore;
use tokio::sync::watch;

use crate::config::TargetConfig;
use crate::health::Rtt;
use crate::status::{Role, TargetState};

/// Failed probes in a row after which a target is unhealthy.
pub(crate) const PROBE_FAILURES_UNHEALTHY: u32 = 2;

/// Mutable knowledge of a target's health.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub(crate) ship_failures: u32,
    pub(crate) probe_failures: u32,
    pub(crate) heard_from: bool,
    pub(crate) error: Option<String>,
    pub(crate) rtt: Rtt,
}

/// What a target's store lacks, learnt from its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Caps(u8);

impl Caps {
    /// No `PutMode::Update`: compare e-tags by HEAD before writing.
    pub(crate) const NO_UPDATE: Caps = Caps(1);
    /// No `PutMode::Create`.
    pub(crate) const NO_CREATE: Caps = Caps(2);
    /// No object metadata.
    pub(crate) const NO_ATTRS: Caps = Caps(4);

    pub(crate) fn contains(self, other: Caps) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both lacks.
    #[cfg(test)]
    pub(crate) fn with(self, other: Caps) -> Caps {
        Caps(self.0 | other.0)
    }
}

/// Counters behind the seed's `to_dict()` view.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) applied: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) replication_us: AtomicU64,
    /// The highest seq counted as applied (successes and replication time
    /// count each entry once per target: a replay or resync that ships an
    /// entry again does not count it again).
    pub(crate) counted_to: AtomicU64,
}

pub(crate) struct TargetHandle {
    pub(crate) idx: usize,
    pub(crate) cfg: TargetConfig,
    pub(crate) role: Role,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) cursor_tx: watch::Sender<u64>,
    pub(crate) offset: AtomicU64,
    pub(crate) state_tx: watch::Sender<TargetState>,
    observed: Mutex<Observed>,
    /// No failure recorded since the last success: successes skip the lock.
    pub(crate) clean: AtomicBool,
    pub(crate) counters: Counters,
    /// Bumped when the cursor is moved by hand (replay, resync); a shipper
    /// that started a batch under an older epoch may not publish it.
    epoch: Mutex<u64>,
    /// While `syncing`: the seq the resync will hand over at (it pins the
    /// log from there). 0 otherwise.
    pub(crate) resync_floor: AtomicU64,
    /// Progress of a running resync, for status.
    pub(crate) progress: Mutex<Option<String>>,
    /// What the store lacks (see [`Caps`]).
    caps: AtomicU8,
    /// The cursor when this process opened the target: a version written
    /// past it may have been shipped without its e-tag being recorded.
    pub(crate) opened_cursor: u64,
    /// Entries up to this seq are written unconditionally (replay).
    pub(crate) force_until: AtomicU64,
    /// The target's persisted record as last written (see
    /// `target_record`), and the lock every write of it takes: a state
    /// change holds it while it writes and syncs, so the shipper's
    /// periodic save of its cursor waits its turn instead of overwriting a
    /// moved-back cursor in the same sync (see `Replicator::change_state`).
    pub(crate) record: Mutex<TargetRecord>,
    /// Opened from a copy that never finished: the record says syncing
    /// while the target ships (the configured primary, acting again at
    /// open). Cleared by the next state change written. Read on the read
    /// and failover paths, so kept apart from the record's lock.
    pub(crate) copy_unfinished: AtomicBool,
    /// The storage generation the position stands on (see the module
    /// docs).
    generation: AtomicU64,
}

impl TargetHandle {
    pub(crate) fn new(
        idx: usize,
        cfg: TargetConfig,
        role: Role,
        store: Arc<dyn ObjectStore>,
        record: TargetRecord,
        state: TargetState,
        generation: u64,
    ) -> TargetHandle {
        let cursor = record.cursor;
        let offset = record.offset.unwrap_or(0);
        TargetHandle {
            idx,
            cfg,
            role,
            store,
            cursor_tx: watch::channel(cursor).0,
            offset: AtomicU64::new(offset),
            state_tx: watch::channel(state).0,
            observed: Mutex::new(Observed::default()),
            clean: AtomicBool::new(false),
            counters: Counters {
                counted_to: AtomicU64::new(cursor),
                ..Counters::default()
            },
            epoch: Mutex::new(0),
            resync_floor: AtomicU64::new(0),
            progress: Mutex::new(None),
            caps: AtomicU8::new(0),
            opened_cursor: cursor,
            force_until: AtomicU64::new(0),
            copy_unfinished: AtomicBool::new(
                record.state == TargetState::Syncing && state != TargetState::Syncing,
            ),
            record: Mutex::new(record),
            generation: AtomicU64::new(generation),
        }
    }

    pub(crate) fn caps(&self) -> Caps {
        Caps(self.caps.load(Ordering::Relaxed))
    }

    /// Learns from a `NotImplemented` answer; returns what it learnt.
    pub(crate) fn learn(&self, operation: &str) -> Option<Caps> {
        let cap = crate::apply::missing_cap(operation)?;
        let before = self.caps.fetch_or(cap.0, Ordering::Relaxed);
        if before & cap.0 == 0 {
            tracing::debug!(target = %self.cfg.name, missing = %operation, "this store lacks a feature walship would use (conditional puts or object metadata): it checks with a HEAD before writing there, and tells its own versions apart by their bytes");
        }
        Some(cap)
    }

    /// The current epoch (see `publish`).
    pub(crate) fn epoch(&self) -> u64 {
        *self.epoch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a shipper's progress unless the cursor was moved by hand
    /// since `epoch`; returns whether it did.
    pub(crate) fn publish(&self, epoch: u64, cursor: u64, offset: u64) -> bool {
        let e = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if *e != epoch {
            return false;
        }
        self.offset.store(offset, Ordering::Release);
        self.cursor_tx.send_replace(cursor);
        true
    }

    /// The cursor and the offset just after it, read together.
    pub(crate) fn position(&self) -> (u64, u64) {
        let _e = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        (self.cursor(), self.offset())
    }

    /// Writes the target's record with its position as it stands (durable
    /// with the next sync), unless the record already says so. Returns
    /// whether the record now holds that position: with `wait` false, false
    /// when a state change holds the record (it may have read the position
    /// before the last move; save again later). After a reopen of the log
    /// the target is rewound first (see the module docs).
    pub(crate) fn save_position(&self, log: &Log, wait: bool) -> crate::Result<bool> {
        let mut kept = if wait {
            self.record.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match self.record.try_lock() {
                Ok(g) => g,
                Err(TryLockError::WouldBlock) => return Ok(false),
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
            }
        };
        let generation = self.on_current_generation(log, &mut kept)?;
        let (cursor, offset) = self.position();
        if kept.cursor == cursor && kept.offset == Some(offset) {
            return Ok(true);
        }
        let next = TargetRecord {
            cursor,
            offset: Some(offset),
            ..*kept
        };
        log.storage()
            .set_target_in(generation, self.name(), &next)?;
        *kept = next;
        Ok(true)
    }

    /// Whether the log reopened since the target's position was last
    /// brought onto its storage (a rewind is due).
    pub(crate) fn reopened_since(&self, storage: &dyn LogStorage) -> bool {
        storage.generation() != self.generation.load(Ordering::Acquire)
    }

    /// Rewinds the target if the log reopened since its position was last
    /// brought onto it (see the module docs); whether it did.
    pub(crate) fn rewind_if_reopened(&self, log: &Log) -> crate::Result<bool> {
        if !self.reopened_since(log.storage().as_ref()) {
            return Ok(false);
        }
        // Not waiting for a state change that holds the record (its write
        // rewinds the target itself, as does the next save).
        let mut kept = match self.record.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let before = self.generation.load(Ordering::Acquire);
        Ok(self.on_current_generation(log, &mut kept)? != before)
    }

    /// With the record's lock held (`kept`): the storage generation the
    /// record may be written in, the target rewound first when the log
    /// reopened since its position was last brought onto it. The cursor
    /// goes back to the record the reopened storage holds (or where this
    /// process opened the target, when it holds none), never forward; a
    /// syncing target keeps its position (the resync hands over at its
    /// own floor, and its end is written and synced as one change).
    pub(crate) fn on_current_generation(
        &self,
        log: &Log,
        kept: &mut TargetRecord,
    ) -> crate::Result<u64> {
        let storage = log.storage();
        let generation = storage.generation();
        if generation == self.generation.load(Ordering::Acquire) {
            return Ok(generation);
        }
        let stored = storage.target(self.name())?;
        if storage.generation() != generation {
            // Reopened again meanwhile: the next write tries again.
            return Err(crate::Error::LogReopened);
        }
        if self.state() != TargetState::Syncing {
            let (cursor, offset) = self.position();
            let back = stored
                .as_ref()
                .map_or(self.opened_cursor, |r| r.cursor)
                .min(cursor);
            // The offset just after `back`: the one after the cursor less
            // the entries rewound over (only those are read).
            let offset = if back < cursor {
                offset.saturating_sub(log.bytes_between(back, cursor)?)
            } else {
                offset
            };
            if back < cursor {
                tracing::warn!(target = %self.name(), from = cursor, to = back, "the log reopened after a failed flush, losing what was written since its last sync: shipping again from the cursor it holds, so every version walship records is on disk again");
            }
            // Also when the cursor stays: what was shipped before the
            // reopen does not land as progress.
            self.reset(back, offset);
        }
        if let Some(r) = stored {
            *kept = r;
        }
        self.generation.store(generation, Ordering::Release);
        Ok(generation)
    }

    /// Moves the cursor by hand (replay, end of resync).
    pub(crate) fn reset(&self, cursor: u64, offset: u64) {
        let mut e = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        *e += 1;
        self.offset.store(offset, Ordering::Release);
        self.cursor_tx.send_replace(cursor);
    }

    /// The lowest seq this target still needs from the log, minus one.
    pub(crate) fn floor(&self) -> u64 {
        match self.state() {
            TargetState::Syncing => self.resync_floor.load(Ordering::Acquire),
            _ => self.cursor(),
        }
    }

    pub(crate) fn progress_text(&self) -> Option<String> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_progress(&self, p: Option<String>) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn cursor(&self) -> u64 {
        *self.cursor_tx.borrow()
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset.load(Ordering::Acquire)
    }

    pub(crate) fn state(&self) -> TargetState {
        *self.state_tx.borrow()
    }

    pub(crate) fn observed(&self) -> MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record_success(&self) {
        if self.clean.load(Ordering::Acquire) {
            return;
        }
        let mut o = self.observed();
        o.ship_failures = 0;
        o.heard_from = true;
        o.error = None;
        self.clean.store(true, Ordering::Release);
    }

    pub(crate) fn record_failure(&self, msg: &str) {
        let mut o = self.observed();
        self.clean.store(false, Ordering::Release);
        o.ship_failures = o.ship_failures.saturating_add(1);
        if o.ship_failures == self.cfg.max_retry_attempts {
            tracing::warn!(target = %self.cfg.name, error = %msg, "target unhealthy after {} failed requests; retrying with backoff", o.ship_failures);
        }
        o.error = Some(msg.to_string());
    }

    pub(crate) fn record_probe(&self, result: Result<f64, String>) {
        let mut o = self.observed();
        match result {
            Ok(ms) => {
                o.probe_failures = 0;
                o.heard_from = true;
                o.rtt.add(ms);
            }
            Err(e) => {
                o.probe_failures = o.probe_failures.saturating_add(1);
                if o.probe_failures == PROBE_FAILURES_UNHEALTHY {
                    tracing::warn!(target = %self.cfg.name, error = %e, "health probe failed {} times in a row", o.probe_failures);
                }
                if o.error.is_none() || o.probe_failures >= PROBE_FAILURES_UNHEALTHY {
                    o.error = Some(format!("health probe: {e}"));
                }
                self.clean.store(false, Ordering::Release);
            }
        }
    }

    /// Records the error and fails a shipping target (a paused one stays
    /// paused; see `target_machine`).
    pub(crate) fn set_failed(&self, msg: String) {
        self.observed().error = Some(msg);
        self.clean.store(false, Ordering::Release);
        let _ = self.transition(Event::ShipFailed);
    }

    /// Applies `event` to the published state, atomically with every other
    /// transition; the new state, or why the event is refused.
    pub(crate) fn transition(&self, event: Event) -> crate::Result<TargetState> {
        let mut out = Ok(TargetState::Active);
        self.state_tx.send_if_modified(|s| {
            out = next(self.name(), *s, event);
            match &out {
                Ok(n) if n != s => {
                    *s = *n;
                    true
                }
                _ => false,
            }
        });
        out
    }

    /// What `event` would do now (checked before persisting what it
    /// depends on; `transition` applies its state).
    pub(crate) fn step(&self, event: Event) -> crate::Result<Step> {
        on(self.name(), self.state(), event)
    }
}
