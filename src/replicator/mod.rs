//! The replicator: one log, one shipper per target, the write path, reads,
//! health checks and failover.
//!
//! Write path (SPEC guarantees 1–3): append durably (group commit), then
//! wait until the cursors the mode requires pass the entry's seq (see
//! `quorum`): the acting primary always. A wait longer than the targets'
//! `sync_timeout_seconds` answers [`Error::QuorumTimeout`] with the seq and
//! the acks; nothing is rolled back and shipping goes on.
//!
//! Positions (first, floor, cursor, head) and their order are written once,
//! in the `log` module's docs. Decisions (quorum, health, failover, read
//! target) are plain functions in their own modules; this module gathers
//! their inputs and carries them out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::apply::Engine;
use crate::codec::Op;
use crate::config::{Config, Mode, ReadPreference};
use crate::conflict::{ConflictRecord, JsonMerge, Keep, Merge};
use crate::error::{Error, Result};
use crate::failover::{self, Decision, FailoverView};
use crate::health::{self, HealthInputs};
use crate::key::Key;
use crate::log::{Log, Write};
use crate::metrics::{HealthLabels, Metrics};
use crate::quorum::{self, TargetView};
use crate::reads::{self, ReadCandidate};
use crate::shipper::Shipper;
use crate::status::{
    CursorsReport, FailoverReport, Health, Role, SeedMetrics, StatusReport, TARGETS_META,
    TargetListing, TargetRow, TargetState,
};
use crate::storage::{KeyInfo, LogStorage, SledStorage};
use crate::target_machine::{Event, Step};
use crate::target_record::TargetRecord;
use crate::target_state::{PROBE_FAILURES_UNHEALTHY, TargetHandle};

/// Requests in flight per target on a store across a network: enough to
/// keep 64 writers' entries in flight at once, so `sync` over a store 30 ms
/// away still reaches about 0.9 of writers / RTT (`benches/latency`).
const SHIP_WINDOW: usize = 128;
/// Requests in flight per local-directory target: more only contend for the
/// directory's lock in the kernel (a profile of 128 in flight spent about a
/// third of its time spinning on it).
const SHIP_WINDOW_LOCAL: usize = 32;
/// How often failover is reconsidered (health is probed every
/// `health_check_interval_seconds`; shipping failures count at once).
const FAILOVER_TICK: Duration = Duration::from_millis(100);
/// How often truncation and the size cap are looked at.
const MAINTENANCE_EVERY: Duration = Duration::from_millis(500);
/// Meta name of this sidecar's id (the `walshiporigin` of its writes).
const ORIGIN_META: &str = "origin";
/// The object a health probe asks about (a HEAD; absent is fine).
const PROBE_KEY: &str = ".walship/health";
/// Each target's marker (guarantee 10): written once, its absence on a
/// target that held entries means the target lost what it held.
const MARKER_KEY: &str = ".walship/target.json";

/// The answer to an acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteAck {
    /// The entry's seq.
    pub seq: u64,
    /// Every target that had applied it when the write was acknowledged.
    pub acked_by: Vec<String>,
    /// The mode the write waited for.
    pub mode: &'static str,
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    /// The value (or metadata); `None` when the key does not exist there.
    pub found: Option<T>,
    /// The target that answered.
    pub served_by: String,
    /// The key's latest seq in the log, if the log wrote it.
    pub seq: Option<u64>,
    /// The key's newest entry as the log knows it (its metadata: ETag,
    /// Content-Type, …), read before the target was.
    pub info: Option<KeyInfo>,
}

/// The running replicator (library entry point).
pub struct Replicator {
    cfg: Config,
    log: Arc<Log>,
    targets: Vec<Arc<TargetHandle>>,
    acting: Arc<crate::acting::Acting>,
    engine: Arc<Engine>,
    progress: Arc<watch::Sender<u64>>,
    /// Writers waiting for cursors (see `waiters`).
    waiters: Arc<crate::waiters::Waiters>,
    metrics: Arc<Metrics>,
    accepting: AtomicBool,
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Each target's owner's mailbox, by index (see `owner`).
    owners: Vec<tokio::sync::mpsc::Sender<owner::Command>>,
    /// The first `file://` target, whose paths limit keys (guarantee 11).
    file_target: Option<String>,
    in_flight: crate::keyfit::InFlight,
    /// Held by a test to stop replays' scans (`hold_replay_scans`).
    #[cfg(feature = "testing")]
    replay_scans: Arc<tokio::sync::RwLock<()>>,
}

impl Replicator {
    /// Opens the log in `cfg.data_dir`, builds every target's store from its
    /// URL and starts shipping, health checks and failover.
    pub async fn open(cfg: Config) -> Result<Arc<Replicator>> {
        Replicator::open_with_stores(cfg, HashMap::new()).await
    }

    /// Like [`Replicator::open`], but targets named in `stores` use the given
    /// store instead of their URL (tests, custom stores).
    pub async fn open_with_stores(
        cfg: Config,
        stores: HashMap<String, Arc<dyn ObjectStore>>,
    ) -> Result<Arc<Replicator>> {
        Replicator::open_with(cfg, stores, Arc::new(JsonMerge)).await
    }

    /// Like [`Replicator::open_with_stores`], with the merge function the
    /// `merge` conflict strategy uses (the sidecar's is [`JsonMerge`]).
    pub async fn open_with(
        cfg: Config,
        mut stores: HashMap<String, Arc<dyn ObjectStore>>,
        merge: Arc<dyn Merge>,
    ) -> Result<Arc<Replicator>> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(Error::Config { problems });
        }
        let data_dir = cfg.data_dir.clone();
        let cache = cfg.log_cache_bytes;
        let storage: Arc<dyn LogStorage> =
            tokio::task::spawn_blocking(move || SledStorage::open(&data_dir, cache))
                .await
                .map_err(|e| Error::io("opening the log", std::io::Error::other(e)))?
                .map(Arc::new)?;
        let log = Log::open(storage.clone())?;
        let head = log.head();
        let metrics = Arc::new(Metrics::new());
        let mut targets = Vec::new();
        let mut listing = Vec::new();
        let mut opened = Vec::new();
        for (i, t) in std::iter::once(&cfg.primary)
            .chain(&cfg.targets)
            .enumerate()
        {
            let given = stores.remove(&t.name);
            let (handle, listed, stored) =
                open_target(i, t, given, storage.as_ref(), &metrics, &log)?;
            targets.push(handle);
            listing.push(listed);
            opened.push(stored);
        }
        place_offsets(&log, &targets, &opened)?;
        let meta = serde_json::to_vec(&listing)
            .map_err(|e| Error::io("encoding the target list", std::io::Error::other(e)))?;
        storage.set_meta(TARGETS_META, &meta)?;
        let origin = origin_of(storage.as_ref())?;
        storage.sync()?;
        let acting = Arc::new(crate::acting::Acting::default());
        let engine = Arc::new(
            Engine::new(
                origin,
                cfg.replication.conflict_resolution,
                merge,
                log.clone(),
                metrics.clone(),
                targets.clone(),
                acting.clone(),
            )
            .with_max_object_bytes(cfg.max_object_bytes),
        );
        let file_target = cfg
            .all_targets()
            .find(|(_, t)| {
                matches!(
                    crate::config::TargetUrl::parse(&t.url),
                    Ok(crate::config::TargetUrl::File(_))
                )
            })
            .map(|(_, t)| t.name.clone());
        engine.load_adopted()?;
        engine.load_foreign()?;
        let (owners, mailboxes): (Vec<_>, Vec<_>) = targets
            .iter()
            .map(|_| tokio::sync::mpsc::channel(owner::MAILBOX))
            .unzip();
        let r = Arc::new(Replicator {
            cfg,
            log,
            targets,
            acting,
            engine,
            progress: Arc::new(watch::channel(0).0),
            waiters: Default::default(),
            metrics,
            accepting: AtomicBool::new(true),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            owners,
            file_target,
            in_flight: Default::default(),
            #[cfg(feature = "testing")]
            replay_scans: Default::default(),
        });
        // A resync cut short by a restart starts again; a target whose
        // cursor is below the oldest kept entry is resynced, never skipped.
        // Begun here, before the owners start (they start the copies), so
        // no such target ships from its cursor first.
        let first = r.log.first();
        for (t, stored) in r.targets.iter().zip(&opened) {
            let interrupted = stored.state == TargetState::Syncing;
            let cut_off = t.cursor() + 1 < first && t.idx != 0;
            if interrupted || cut_off {
                tracing::warn!(target = %t.name(), cursor = t.cursor(), first, "target needs entries the log no longer has (or its resync was interrupted): resyncing");
                if let Err(e) = r.begin_resync(t) {
                    // The acting primary is the source of a resync and
                    // cannot be one: it catches up from the log instead.
                    tracing::error!(target = %t.name(), error = %e, "cannot resume this target's resync now");
                }
            }
        }
        start_tasks(&r, mailboxes);
        tracing::info!(head, targets = r.targets.len(), "replicator open");
        Ok(r)
    }

    /// The config it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn target(&self, name: &str) -> Result<&Arc<TargetHandle>> {
        self.targets
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| Error::UnknownTarget(name.to_string()))
    }

    fn acting_primary(&self) -> &Arc<TargetHandle> {
        &self.targets[self.acting.get()]
    }

    /// This sidecar's id: the origin its writes carry.
    pub fn sidecar_id(&self) -> &str {
        &self.engine.origin
    }

    /// The open manual conflicts, oldest first.
    pub fn conflicts(&self) -> Result<Vec<ConflictRecord>> {
        self.engine.list()
    }

    /// Resolves manual conflict `id`, writing the kept version with a
    /// conditional put (a newer edit on the target is caught, not lost).
    pub async fn resolve_conflict(&self, id: u64, keep: Keep) -> Result<ConflictRecord> {
        self.engine.resolve(id, keep).await
    }

    /// `walship restore`: the objects as they stood at `req.seq` into
    /// the store at `to` (see `restore`). A configured target's URL is
    /// refused: restore writes into another store.
    pub async fn restore(
        &self,
        to: &str,
        req: crate::restore::RestoreRequest,
    ) -> Result<crate::restore::RestorePlan> {
        let dest = crate::restore::destination(&self.cfg, to)?;
        crate::restore::restore(
            self.log.storage().clone(),
            self.acting_primary().store.clone(),
            dest,
            req,
            self.log.head(),
        )
        .await
    }

    /// The name of the acting primary.
    pub fn acting_primary_name(&self) -> &str {
        self.acting_primary().name()
    }

    // ---- writes ----

    /// Stores `value` under `key`: durable locally, then replicated per
    /// `mode` (the configured mode when `None`).
    pub async fn put(&self, key: &Key, value: Bytes, mode: Option<Mode>) -> Result<WriteAck> {
        let meta = crate::object::ObjectMeta::of(&value);
        self.put_object(key, value, meta, None, mode).await
    }

    /// Like [`Replicator::put`], with the object's metadata (its ETag and
    /// crc32 must be those of `value`) and an optional precondition on the
    /// key's newest version, decided at append time
    /// ([`Error::PreconditionFailed`] when it does not hold).
    pub async fn put_object(
        &self,
        key: &Key,
        value: Bytes,
        meta: crate::object::ObjectMeta,
        cond: Option<crate::object::Precondition>,
        mode: Option<Mode>,
    ) -> Result<WriteAck> {
        if value.len() as u64 > self.cfg.max_object_bytes {
            return Err(Error::TooLarge {
                size: value.len(),
                max: self.cfg.max_object_bytes as usize,
            });
        }
        meta.check_size().map_err(Error::BadRequest)?;
        let registered = self.check_fits(key).await?;
        let write = Write {
            op: Op::Put,
            key: key.clone(),
            value,
            meta: Some(Arc::new(meta)),
            cond,
        };
        self.write(write, mode, registered).await
    }

    /// Guarantee 11: with a `file://` target, a key that is a directory of
    /// a live key, lies under one, or has a segment over 255 bytes is
    /// refused before it is appended (see `keyfit`). The returned guard
    /// keeps the key registered as in flight until the write is answered.
    async fn check_fits(&self, key: &Key) -> Result<Option<crate::keyfit::Registered>> {
        let Some(target) = &self.file_target else {
            return Ok(None);
        };
        let refuse = |reason: String| Error::KeyDoesNotFit {
            key: key.as_str().chars().take(120).collect(),
            target: target.clone(),
            reason,
        };
        if let Some((_, len)) = crate::keyfit::long_segment(key.as_str()) {
            return Err(refuse(format!(
                "its path segment of {len} bytes (as a file name) is over the {} a local directory holds; use shorter segments",
                crate::keyfit::MAX_SEGMENT_BYTES
            )));
        }
        let registered = self.in_flight.register(key.as_str()).map_err(|other| {
            refuse(format!(
                "a write of {other:?} is under way, and a local directory cannot hold a key beside its own directory; retry once it is answered"
            ))
        })?;
        for parent in crate::keyfit::parents(key.as_str()) {
            if let Some(info) = self.log.key_info(parent).await?
                && info.op == Op::Put
            {
                return Err(refuse(format!(
                    "it lies under the live key {parent:?} (a file there, so it cannot be a directory); delete {parent:?} first or pick another key"
                )));
            }
        }
        let dir = format!("{}/", key.as_str());
        if let Some((child, _)) = self.list(&dir, "", 1).await?.into_iter().next() {
            return Err(refuse(format!(
                "it is the directory of the live key {child:?} there, so it cannot be a file; delete the keys under {dir:?} first or pick another key"
            )));
        }
        Ok(Some(registered))
    }

    /// Deletes `key`, as a log entry like a put.
    pub async fn delete(&self, key: &Key, mode: Option<Mode>) -> Result<WriteAck> {
        self.write(Write::delete(key.clone()), mode, None).await
    }

    async fn write(
        &self,
        write: Write,
        mode: Option<Mode>,
        registered: Option<crate::keyfit::Registered>,
    ) -> Result<WriteAck> {
        let key = write.key.clone();
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let mode = mode.unwrap_or(self.cfg.replication.mode);
        let hold = registered.map(|r| Box::new(r) as Box<dyn Send>);
        let appended = self.log.append_holding(write, hold).await;
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                self.metrics.writes_failed.inc();
                return Err(e);
            }
        };
        self.metrics.writes.inc();
        let result = self.wait_for(appended.seq, key.as_str(), mode).await;
        if let Err(e) = &result {
            self.metrics.writes_failed.inc();
            if matches!(e, Error::QuorumTimeout { .. }) {
                self.metrics.quorum_timeouts.inc();
            }
        }
        result
    }

    /// Waits until `seq` is acknowledged under `mode`, or until the required
    /// count can no longer be reached before the targets' own deadlines
    /// (guarantee 3; see `quorum`).
    ///
    /// A target holding a version of `key` that is not this log's (an open
    /// conflict, a foreign version kept) neither acknowledges it nor counts
    /// as able to (guarantee 9).
    pub async fn wait_for(&self, seq: u64, key: &str, mode: Mode) -> Result<WriteAck> {
        let deadlines = self.deadlines();
        // Registered before the first look: a cursor passing `seq` after
        // it wakes this writer (see `waiters`).
        let waiting = self.waiters.register(seq, self.interest(mode));
        loop {
            let now = tokio::time::Instant::now();
            let verdict = self.evaluate(seq, key, mode, &deadlines, now);
            if verdict.done {
                return Ok(WriteAck {
                    seq,
                    acked_by: verdict.acked_by,
                    mode: mode.as_str(),
                });
            }
            if verdict.failed {
                return Err(Error::QuorumTimeout {
                    seq,
                    acked: verdict.acked,
                    required: verdict.required,
                    acked_by: verdict.acked_by,
                });
            }
            // The acting primary may have changed (a failover wakes all).
            waiting.listen(self.interest(mode));
            // Look again when woken, or when the next deadline passes.
            let next = deadlines.iter().copied().filter(|d| *d > now).min();
            match next {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, waiting.woken()).await;
                }
                None => waiting.woken().await,
            }
        }
    }

    /// The targets whose cursors can decide a write's answer in `mode`:
    /// the acting primary alone for `async`, every one otherwise.
    fn interest(&self, mode: Mode) -> crate::waiters::Interest {
        match mode {
            Mode::Async => crate::waiters::Interest::only(self.acting.get()),
            _ => crate::waiters::Interest::ALL,
        }
    }

    /// Per target, the deadline of a write starting now: its
    /// `sync_timeout_seconds` from now, or now when it is already unhealthy.
    fn deadlines(&self) -> Vec<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        self.targets
            .iter()
            .map(|t| {
                if self.health_of(t) == Health::Unhealthy {
                    now
                } else {
                    now + Duration::from_secs_f64(t.cfg.sync_timeout_seconds)
                }
            })
            .collect()
    }

    fn evaluate(
        &self,
        seq: u64,
        key: &str,
        mode: Mode,
        deadlines: &[tokio::time::Instant],
        now: tokio::time::Instant,
    ) -> quorum::Verdict {
        let acting = self.acting.get();
        // The cursor first, then the foreign check: a target's apply marks
        // a key foreign before its cursor passes the entry.
        let snapshot: Vec<(TargetState, u64, bool)> = self
            .targets
            .iter()
            .map(|t| {
                let cursor = t.cursor();
                (
                    t.state(),
                    cursor,
                    self.engine.holds_foreign(t.idx, key) || self.engine.lost_at(t.idx, seq),
                )
            })
            .collect();
        let views: Vec<TargetView<'_>> = self
            .targets
            .iter()
            .zip(&snapshot)
            .zip(deadlines)
            .map(|((t, (state, cursor, foreign)), deadline)| TargetView {
                name: t.name(),
                acting_primary: t.idx == acting,
                waited_for: !matches!(state, TargetState::Paused | TargetState::Removed),
                cursor: if *foreign { 0 } else { *cursor },
                live: now < *deadline && !*foreign,
            })
            .collect();
        quorum::evaluate(mode, self.cfg.replication.min_sync_replicas, seq, &views)
    }

    // ---- reads ----

    fn health_of(&self, t: &TargetHandle) -> Health {
        // A target that stopped shipping (rejects an entry for good, or a
        // corrupt entry) is not fit to ack, serve or stand in as primary.
        if t.state() == TargetState::Failed {
            return Health::Unhealthy;
        }
        let lag = self.log.lag_at(t.cursor(), t.offset());
        let o = t.observed();
        health::decide(HealthInputs {
            probe_failures: o.probe_failures,
            ship_failures: o.ship_failures,
            max_failures: t.cfg.max_retry_attempts,
            probe_limit: PROBE_FAILURES_UNHEALTHY,
            lag_ms: lag.ms,
            max_lag_ms: self.cfg.replication.max_replication_lag_ms,
            heard_from: o.heard_from,
        })
    }

    /// Targets in the order a read should try them for a key at `seq`.
    fn read_order(&self, pref: ReadPreference, key: &str, seq: u64) -> Vec<usize> {
        let acting = self.acting.get();
        let mut c: Vec<ReadCandidate> = self
            .targets
            .iter()
            .map(|t| ReadCandidate {
                acting_primary: t.idx == acting,
                read_replica: t.cfg.is_read_replica,
                eligible: t.state() == TargetState::Active
                    && t.cursor() >= seq
                    && !self.engine.holds_foreign(t.idx, key)
                    && self.health_of(t) != Health::Unhealthy
                    && !self.copy_unfinished(t),
                rtt_ms: t.observed().rtt.ms(),
            })
            .collect();
        let mut order = Vec::new();
        while let Some(i) = reads::pick(pref, &c, rand::random()) {
            order.push(i);
            c[i].eligible = false;
        }
        order
    }

    async fn read_from<T, F, Fut>(
        &self,
        key: &Key,
        pref: Option<ReadPreference>,
        op: F,
    ) -> Result<Read<T>>
    where
        F: Fn(Arc<dyn ObjectStore>, object_store::path::Path) -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let pref = pref.unwrap_or(self.cfg.replication.read_preference);
        let info = self.log.key_info(key.as_str()).await?;
        let seq = info.as_ref().map(|i| i.seq);
        let order = self.read_order(pref, key.as_str(), seq.unwrap_or(0));
        if order.is_empty() {
            return Err(Error::NoFreshTarget {
                key: key.as_str().to_string(),
                seq: seq.unwrap_or(0),
            });
        }
        let mut last_err = None;
        for i in order {
            let t = &self.targets[i];
            match op(t.store.clone(), key.object_path()).await {
                Ok(v) => {
                    return Ok(Read {
                        found: Some(v),
                        served_by: t.name().to_string(),
                        seq,
                        info,
                    });
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Ok(Read {
                        found: None,
                        served_by: t.name().to_string(),
                        seq,
                        info,
                    });
                }
                Err(e) => {
                    tracing::warn!(target = %t.name(), key = %key, error = %e, "read failed; trying the next target");
                    last_err = Some(Error::target(t.name(), e));
                }
            }
        }
        Err(last_err.unwrap_or(Error::NoFreshTarget {
            key: key.as_str().to_string(),
            seq: seq.unwrap_or(0),
        }))
    }

    /// Reads `key` per `pref` (the configured preference when `None`), from
    /// a target that has applied the key's latest entry.
    pub async fn get(&self, key: &Key, pref: Option<ReadPreference>) -> Result<Read<Bytes>> {
        self.read_from(key, pref, |store, path| async move {
            let r = store.get(&path).await?;
            r.bytes().await
        })
        .await
    }

    /// HEAD of `key` per `pref`.
    pub async fn head_object(
        &self,
        key: &Key,
        pref: Option<ReadPreference>,
    ) -> Result<Read<ObjectMeta>> {
        self.read_from(
            key,
            pref,
            |store, path| async move { store.head(&path).await },
        )
        .await
    }

    /// Live keys (latest entry a put) starting with `prefix` and after
    /// `after` ("" for none), from the log's key index, in key order, at
    /// most `limit`.
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, KeyInfo)>> {
        let mut out = Vec::new();
        let mut after = after.to_string();
        // The index holds deletes too; page past them.
        let batch = limit.saturating_mul(2).clamp(256, 65_536);
        loop {
            let page = self.log.keys_with_prefix(prefix, &after, batch).await?;
            let full = page.len() >= batch;
            if let Some((last, _)) = page.last() {
                after = last.clone();
            }
            for (k, info) in page {
                if info.op == Op::Put {
                    out.push((k, info));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    // ---- state changes ----

    /// Pauses a target: it keeps its cursor, `sync` stops waiting for it,
    /// and the state survives restarts. The acting primary cannot be paused.
    pub async fn pause(&self, name: &str) -> Result<TargetState> {
        let t = self.target(name)?;
        self.ask(t, owner::Command::Pause).await
    }

    /// [`Replicator::pause`], on the target's owner.
    fn pause_now(&self, t: &TargetHandle) -> Result<TargetState> {
        let name = t.name();
        let refused = || {
            Error::StateRefused(format!(
                "{name} is the acting primary and every write waits for it; it cannot be paused"
            ))
        };
        let step = self.acting.unless_acting(t.idx, refused, || {
            self.change_state(t, Event::Pause, |_| {}, || {})
        })?;
        tracing::info!(target = %name, cursor = t.cursor(), "paused");
        Ok(step.to)
    }

    /// Resumes a paused (or failed) target: it ships from its cursor.
    pub async fn resume(&self, name: &str) -> Result<TargetState> {
        let t = self.target(name)?;
        self.ask(t, owner::Command::Resume).await
    }

    /// [`Replicator::resume`], on the target's owner.
    fn resume_now(&self, t: &TargetHandle) -> Result<TargetState> {
        let name = t.name();
        let step = self.change_state(t, Event::Resume, |_| {}, || {})?;
        tracing::info!(target = %name, cursor = t.cursor(), head = self.log.head(), "resumed");
        Ok(step.to)
    }

    /// The one way a command or a resync changes a target's state. Called
    /// by the target's owner (`owner`), one change at a time. The event is
    /// checked against the state (`target_machine::on`; refused: nothing
    /// done), then the step's commands run in their order:
    ///
    /// - `PersistRecord`: `records` (what the change depends on: a cursor,
    ///   a replay intent) and the kept state are written where a restart
    ///   reads them, and made durable in one sync (a reopen meanwhile:
    ///   `LogReopened`, nothing published);
    /// - `Publish`: `publish` sets what the new state needs in memory, and
    ///   the state changes;
    /// - `Notify`: the shippers and waiting writers wake;
    /// - `StartResync`: left to the owner, which starts the copy
    ///   (`Step::starts_resync`).
    ///
    /// The target's record lock is held throughout, so its shipper cannot
    /// save its (older) cursor over the one written here before `publish`
    /// moves it.
    pub(crate) fn change_state(
        &self,
        t: &TargetHandle,
        event: Event,
        records: impl FnOnce(&mut TargetRecord),
        publish: impl FnOnce(),
    ) -> Result<Step> {
        use crate::target_machine::Command;
        let mut step = t.step(event)?;
        let storage = self.log.storage();
        let mut kept = t.record.lock().unwrap_or_else(|p| p.into_inner());
        let mut records = Some(records);
        let mut publish = Some(publish);
        for command in step.commands {
            match command {
                Command::PersistRecord => {
                    let generation = t.on_current_generation(&self.log, &mut kept)?;
                    let (cursor, offset) = t.position();
                    let mut record = TargetRecord {
                        cursor,
                        offset: Some(offset),
                        ..*kept
                    };
                    if let Some(f) = records.take() {
                        f(&mut record);
                    }
                    if let Some(state) = crate::target_machine::persisted(step.to) {
                        record.state = state;
                    }
                    storage.set_target_in(generation, t.name(), &record)?;
                    storage.sync_since(generation)?;
                    // The record now says what the target is.
                    t.copy_unfinished.store(false, Ordering::Release);
                    // Only now what later writes of the record start from:
                    // after a failed sync, the next save of the position
                    // writes the record as it was over the change that
                    // failed.
                    *kept = record;
                }
                Command::Publish => {
                    if let Some(f) = publish.take() {
                        f();
                    }
                    step.to = t.transition(event)?;
                }
                Command::Notify => {
                    self.progress.send_modify(|p| *p += 1);
                    self.waiters.wake_all();
                }
                Command::StartResync => {}
            }
        }
        Ok(step)
    }

    // ---- health checks and failover ----

    /// Runs [`Replicator::manage`], and runs it again when it panics:
    /// health, failover and log maintenance never silently stop.
    async fn supervise_manager(me: std::sync::Weak<Replicator>, cancel: CancellationToken) {
        let mut delay = Duration::from_millis(100);
        loop {
            let run = tokio::spawn(Replicator::manage(me.clone(), cancel.clone())).await;
            match run {
                Err(e) if e.is_panic() && !cancel.is_cancelled() => {
                    tracing::error!(
                        "the manager (health probes, failover, log maintenance) panicked; restarted"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = cancel.cancelled() => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                _ => return,
            }
        }
    }

    async fn manage(me: std::sync::Weak<Replicator>, cancel: CancellationToken) {
        let Some(r) = me.upgrade() else { return };
        let interval = Duration::from_secs_f64(r.cfg.replication.health_check_interval_seconds);
        let checks = r.cfg.replication.enable_health_checks;
        drop(r);
        let mut next_probe = tokio::time::Instant::now();
        let mut next_maintenance = tokio::time::Instant::now();
        // With health checks off the markers are still checked once, at
        // open (guarantee 10: a target wiped while walship was down).
        let mut first = true;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(FAILOVER_TICK) => {}
            }
            let Some(r) = me.upgrade() else { return };
            // A copy found unfinished at open is acted on at the probes,
            // health checks on or off.
            let unfinished = r.targets.iter().any(|t| r.copy_unfinished(t));
            if (checks || first || unfinished) && tokio::time::Instant::now() >= next_probe {
                first = false;
                next_probe = tokio::time::Instant::now() + interval;
                let probes = r.targets.iter().map(|t| probe(t.clone()));
                let markers = tokio::select! {
                    m = futures::future::join_all(probes) => m,
                    () = cancel.cancelled() => return,
                };
                for (t, marker) in r.targets.clone().iter().zip(markers) {
                    if marker == Some(true) && r.copy_unfinished(t) {
                        if let Err(e) = r.recover_lost(t).await {
                            tracing::warn!(target = %t.name(), error = %e, "acting on an unfinished copy failed; retrying at the next probe");
                        }
                    } else if marker == Some(true) {
                        r.marker_seen(t);
                    }
                    if marker == Some(false)
                        && let Err(e) = r.marker_missing(t).await
                    {
                        tracing::warn!(target = %t.name(), error = %e, "acting on a missing target marker failed; retrying at the next probe");
                    }
                }
            }
            r.consider_failover();
            if tokio::time::Instant::now() >= next_maintenance {
                next_maintenance = tokio::time::Instant::now() + MAINTENANCE_EVERY;
                if let Err(e) = r.maintain().await {
                    tracing::warn!(error = %e, "log maintenance failed; retrying");
                }
            }
        }
    }

    /// `t`'s marker is there: recorded, if its record does not say so yet
    /// (a damaged record read back, a data dir from before the record),
    /// so that a later loss of it is noticed. Left to the next probe
    /// while a state change holds the record.
    fn marker_seen(&self, t: &TargetHandle) {
        let Ok(mut kept) = t.record.try_lock() else {
            return;
        };
        if kept.marked {
            return;
        }
        let record = TargetRecord {
            marked: true,
            ..*kept
        };
        match self.log.storage().set_target(t.name(), &record) {
            Ok(()) => *kept = record,
            Err(e) => {
                tracing::warn!(target = %t.name(), error = %e, "could not record that the target's marker is there; trying again at the next probe")
            }
        }
    }

    /// Whether `t` opened from a copy that never finished: its record says
    /// syncing while it ships from the log. Only the configured primary
    /// opens so (a resync cut short by a restart while another target was
    /// acting; at open it is the acting primary again, which cannot be
    /// resynced).
    fn copy_unfinished(&self, t: &TargetHandle) -> bool {
        t.copy_unfinished.load(Ordering::Acquire)
    }

    /// `t` does not hold what its cursor says (wiped, or a copy cut
    /// short): it is resynced from the acting primary; the acting primary
    /// itself fails over first, and without a replica to take its place
    /// gets the kept log again when the log has every entry. `false` when
    /// nothing could be done yet (the next probe tries again).
    async fn recover_lost(self: &Arc<Self>, t: &Arc<TargetHandle>) -> Result<bool> {
        if self.acting.is(t.idx) && !self.fail_over_from(t.idx) {
            if self.log.first() > 1 {
                // The kept log no longer has everything: shipping it again
                // would leave older keys missing.
                tracing::error!(target = %t.name(), first = self.log.first(), "the acting primary lost what it held and no replica can take its place yet (none healthy and caught up); failover is tried again at the next probe");
                return Ok(false);
            }
            tracing::error!(target = %t.name(), "the acting primary lost what it held and no replica can take its place: the log has every entry, shipping it to the primary again");
            self.replay(t.name(), ReplayFrom::Seq(1), true).await?;
        } else {
            self.start_resync(t.name()).await?;
        }
        Ok(true)
    }

    /// Guarantee 10: `t` has no marker. A target walship never marked (new,
    /// or from before markers) gets one. One that had a marker and holds
    /// entries (cursor > 0) lost what it held: it is resynced from the
    /// acting primary (the acting primary itself fails over first; without
    /// a replica to take its place it gets the kept log again) and only
    /// then marked, so a crash in between notices the loss again.
    async fn marker_missing(self: &Arc<Self>, t: &Arc<TargetHandle>) -> Result<()> {
        let storage = self.log.storage();
        let marked = t.record.lock().unwrap_or_else(|p| p.into_inner()).marked;
        if marked && t.state() == TargetState::Paused {
            // Left as it is (and unmarked) until it is resumed: a resync
            // would end the operator's pause.
            return Ok(());
        }
        if marked && t.cursor() > 0 && t.state() != TargetState::Syncing {
            tracing::warn!(target = %t.name(), cursor = t.cursor(), "the target's marker {MARKER_KEY} is gone: it lost what it held (wiped, replaced or restored from an old backup); resyncing it from the acting primary");
            if !self.recover_lost(t).await? {
                // Left unmarked, so the next probe tries again.
                return Ok(());
            }
        }
        let body = serde_json::json!({
            "sidecar_id": self.sidecar_id(),
            "target": t.name(),
            "created_ms": crate::log::now_ms(),
        });
        let path = object_store::path::Path::from(MARKER_KEY);
        let timeout = Duration::from_secs_f64(t.cfg.sync_timeout_seconds);
        tokio::time::timeout(timeout, t.store.put(&path, body.to_string().into()))
            .await
            .map_err(|_| {
                Error::BadRequest(format!("writing {MARKER_KEY} to {}: no answer", t.name()))
            })?
            .map_err(|e| Error::target(t.name(), e))?;
        let mut kept = t.record.lock().unwrap_or_else(|p| p.into_inner());
        let generation = t.on_current_generation(&self.log, &mut kept)?;
        let (cursor, offset) = t.position();
        let record = TargetRecord {
            cursor,
            offset: Some(offset),
            marked: true,
            ..*kept
        };
        storage.set_target_in(generation, t.name(), &record)?;
        storage.sync_since(generation)?;
        *kept = record;
        Ok(())
    }

    /// Promotes another target in place of the acting primary `from`, as
    /// though it were unhealthy; false when `from` is still the acting
    /// primary after (failover is off, or no replica qualifies).
    fn fail_over_from(&self, from: usize) -> bool {
        let promoted = self.acting.promote(|acting| {
            if acting != from {
                return None;
            }
            let views = self.failover_views(Some(from));
            match failover::decide(from, &views, self.cfg.replication.enable_failover) {
                Decision::Promote(i) => Some(i),
                _ => None,
            }
        });
        let Some((_, to)) = promoted else {
            // Another target took its place meanwhile, or none can.
            return !self.acting.is(from);
        };
        self.metrics.failovers.inc();
        tracing::warn!(from = %self.targets[from].name(), to = %self.targets[to].name(), "failover: the acting primary lost what it held");
        self.progress.send_modify(|p| *p += 1);
        self.waiters.wake_all();
        true
    }

    /// What failover decides on, for each target; `lost`, and a target
    /// whose copy never finished, are taken for unhealthy whatever their
    /// probes said (failed over from, never failed back to).
    fn failover_views(&self, lost: Option<usize>) -> Vec<FailoverView> {
        self.targets
            .iter()
            .map(|t| FailoverView {
                read_replica: t.cfg.is_read_replica,
                health: if Some(t.idx) == lost || self.copy_unfinished(t) {
                    Health::Unhealthy
                } else {
                    self.health_of(t)
                },
                state: t.state(),
                priority: t.cfg.priority,
                cursor: t.cursor(),
            })
            .collect()
    }

    fn consider_failover(&self) {
        let mut waiting = None;
        let mut cursor = 0;
        let promoted = self.acting.promote(|acting| {
            let views = self.failover_views(None);
            match failover::decide(acting, &views, self.cfg.replication.enable_failover) {
                Decision::Promote(i) => {
                    cursor = views[i].cursor;
                    Some(i)
                }
                Decision::Waiting(i) => {
                    waiting = Some(i);
                    None
                }
                _ => None,
            }
        });
        if let Some(i) = waiting {
            tracing::debug!(candidate = %self.targets[i].name(), "failover waits for the candidate to catch up");
        }
        let Some((from, to)) = promoted else { return };
        if to == 0 {
            self.metrics.failbacks.inc();
            tracing::warn!(from = %self.targets[from].name(), to = %self.targets[0].name(), cursor, "failback: the configured primary is caught up and acting primary again");
        } else {
            self.metrics.failovers.inc();
            tracing::warn!(from = %self.targets[from].name(), to = %self.targets[to].name(), cursor, "failover: acting primary is unhealthy");
        }
        self.progress.send_modify(|p| *p += 1);
        self.waiters.wake_all();
    }

    // ---- reports ----

    fn row(&self, t: &TargetHandle) -> TargetRow {
        let cursor = t.cursor();
        let lag = self.log.lag_at(cursor, t.offset());
        let health = self.health_of(t);
        let acting = self.acting.get();
        let role = match (t.idx == acting, t.role) {
            (true, _) => Role::Primary,
            (false, Role::Primary) => Role::Replica,
            (false, r) => r,
        };
        TargetRow {
            name: t.name().to_string(),
            role,
            region: t.cfg.region.clone(),
            health,
            state: t.state(),
            cursor,
            lag_entries: lag.entries,
            lag_bytes: lag.bytes,
            lag_ms: lag.ms,
            error: t.observed().error.clone(),
            progress: t.progress_text(),
        }
    }

    /// The cursors report: head and, per target, cursor, lag, health, state.
    /// The acting primary shows role `primary`.
    pub fn cursors(&self) -> Result<CursorsReport> {
        let head = self.log.head();
        Ok(CursorsReport {
            head,
            targets: self.targets.iter().map(|t| self.row(t)).collect(),
            offline: false,
        })
    }

    /// The status report of `walship status`.
    pub fn status(&self) -> Result<StatusReport> {
        let cursors = self.cursors()?;
        let m = &self.metrics;
        let mut current_lag_ms = std::collections::BTreeMap::new();
        let mut success_rate = std::collections::BTreeMap::new();
        let mut average = std::collections::BTreeMap::new();
        let mut replicated = 0;
        for (t, row) in self.targets.iter().zip(&cursors.targets) {
            let applied = t.counters.applied.load(Ordering::Relaxed);
            let failed = t.counters.failed.load(Ordering::Relaxed);
            current_lag_ms.insert(t.name().to_string(), row.lag_ms);
            if t.idx != 0 {
                replicated += applied;
                let rate = if applied + failed == 0 {
                    1.0
                } else {
                    applied as f64 / (applied + failed) as f64
                };
                success_rate.insert(t.name().to_string(), rate);
            }
            let us = t.counters.replication_us.load(Ordering::Relaxed);
            average.insert(
                t.name().to_string(),
                if applied == 0 {
                    0.0
                } else {
                    us as f64 / applied as f64 / 1000.0
                },
            );
        }
        let held = self
            .targets
            .iter()
            .filter(|t| t.state() != TargetState::Removed)
            .min_by_key(|t| t.floor())
            .filter(|t| t.floor() < cursors.head)
            .map(|t| t.name().to_string());
        Ok(StatusReport {
            mode: self.cfg.replication.mode.as_str().to_string(),
            head: cursors.head,
            failover: FailoverReport {
                enabled: self.cfg.replication.enable_failover,
                acting_primary: self.acting_primary_name().to_string(),
                configured_primary: self.targets[0].name().to_string(),
                failovers: m.failovers.get(),
                failbacks: m.failbacks.get(),
            },
            truncation_held_by: held,
            log_retained_bytes: self.log.retained_bytes(),
            open_conflicts: self.engine.list()?.len() as u64,
            sidecar_id: self.engine.origin.clone(),
            data_dir: std::path::absolute(&self.cfg.data_dir)
                .unwrap_or_else(|_| self.cfg.data_dir.clone())
                .display()
                .to_string(),
            offline: false,
            metrics: SeedMetrics {
                writes_to_primary: m.writes.get(),
                writes_replicated: replicated,
                writes_failed: m.writes_failed.get(),
                conflicts_detected: m.conflicts_detected.get(),
                conflicts_resolved: m.conflicts_resolved.get(),
                failovers: m.failovers.get(),
                current_lag_ms,
                success_rate,
                average_replication_time_ms: average,
            },
            targets: cursors.targets,
        })
    }

    /// The Prometheus text exposition, gauges refreshed from live state.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        m.head_seq.set(self.log.head() as i64);
        m.log_retained_bytes.set(self.log.retained_bytes() as i64);
        for t in &self.targets {
            let row = self.row(t);
            let l = Metrics::target(t.name());
            m.cursor_seq.get_or_create(&l).set(row.cursor as i64);
            m.lag_entries.get_or_create(&l).set(row.lag_entries as i64);
            m.lag_bytes.get_or_create(&l).set(row.lag_bytes as i64);
            m.lag_seconds
                .get_or_create(&l)
                .set(row.lag_ms as f64 / 1000.0);
            let _ = m.success.get_or_create(&l);
            let _ = m.failure.get_or_create(&l);
            for h in [
                Health::Healthy,
                Health::Degraded,
                Health::Unhealthy,
                Health::Unknown,
            ] {
                let labels = HealthLabels {
                    target: t.name().to_string(),
                    health: crate::status::health_name(h).to_string(),
                };
                m.target_health
                    .get_or_create(&labels)
                    .set(i64::from(h == row.health));
            }
        }
        m.encode()
    }

    /// Whether the acting primary answers (a HEAD of a marker object).
    pub async fn primary_reachable(&self) -> bool {
        let t = self.acting_primary();
        let marker = object_store::path::Path::from(PROBE_KEY);
        let probe = t.store.head(&marker);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. }))
        )
    }

    /// Stops taking writes, lets shipping drain up to `grace`, stops the
    /// shippers, persists every cursor and makes it durable.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.accepting.store(false, Ordering::Release);
        let head = self.log.head();
        let deadline = tokio::time::Instant::now() + grace;
        let mut rx = self.progress.subscribe();
        loop {
            rx.borrow_and_update();
            // An unreachable (unhealthy) target does not hold the exit: it
            // catches up from the log after the restart.
            let drained = self.targets.iter().all(|t| {
                t.cursor() >= head
                    || t.state() != TargetState::Active
                    || self.health_of(t) == Health::Unhealthy
            });
            if drained {
                break;
            }
            // Health changes without progress: look again every 200 ms.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_millis(200));
            let _ = tokio::time::timeout_at(wake, rx.changed()).await;
            if tokio::time::Instant::now() >= deadline {
                let behind: Vec<String> = self
                    .targets
                    .iter()
                    .filter(|t| t.cursor() < head)
                    .map(|t| format!("{} at {}", t.name(), t.cursor()))
                    .collect();
                tracing::warn!(head, behind = ?behind, "shutdown grace over; these targets catch up from the log after restart");
                break;
            }
        }
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for h in tasks {
            let _ = h.await;
        }
        self.persist_cursors()
    }

    /// Whether it has stopped taking writes (shutting down).
    pub fn draining(&self) -> bool {
        !self.accepting.load(Ordering::Acquire)
    }

    /// Persists every cursor as it stands, durably (a second signal during
    /// the drain exits with this, at once).
    pub fn persist_cursors(&self) -> Result<()> {
        self.accepting.store(false, Ordering::Release);
        let generation = self.log.storage().generation();
        for t in &self.targets {
            t.save_position(&self.log, true)?;
        }
        self.log.storage().sync_since(generation)
    }
}

/// A target's record as an open reads it. A damaged one stands for "what
/// it holds is not known": a replica is resynced, a primary gets the kept
/// log shipped again (its own versions are told apart). Either starts
/// from the oldest kept entry: truncation never passes a target's floor,
/// so every target that was not syncing held everything below it. See
/// docs/recovery.md.
fn stored_record(
    storage: &dyn LogStorage,
    name: &str,
    primary: bool,
    first: u64,
) -> Result<TargetRecord> {
    match storage.target(name) {
        Ok(r) => Ok(r.unwrap_or_default()),
        Err(Error::Damaged(why)) => {
            let then = if primary {
                "shipping the kept log to it again from its oldest entry"
            } else {
                "resyncing it from the acting primary"
            };
            tracing::error!(target = %name, error = %why, "{then}");
            Ok(TargetRecord {
                cursor: first.saturating_sub(1),
                state: if primary {
                    TargetState::Active
                } else {
                    TargetState::Syncing
                },
                ..TargetRecord::default()
            })
        }
        Err(e) => Err(e),
    }
}

/// Builds target `i` at open: its store (`given`, or built from its URL)
/// wrapped for ordering and counting, and its handle from its record read
/// back. Returns the handle, its line of the target list and the record
/// as stored (the offset is placed by `place_offsets`).
fn open_target(
    i: usize,
    t: &crate::config::TargetConfig,
    given: Option<Arc<dyn ObjectStore>>,
    storage: &dyn LogStorage,
    metrics: &Arc<Metrics>,
    log: &Log,
) -> Result<(Arc<TargetHandle>, TargetListing, TargetRecord)> {
    let head = log.head();
    let role = match (i, t.is_read_replica) {
        (0, _) => Role::Primary,
        (_, true) => Role::ReadReplica,
        (_, false) => Role::Replica,
    };
    let url = crate::config::TargetUrl::parse(&t.url);
    let (store, built_here) = match given {
        Some(s) => (s, false),
        None => (crate::target::build_store(t)?, true),
    };
    // A local directory's writes to one path land in order, even those a
    // shipper stopped waiting for (see `ordered`): the one built here
    // keeps that order itself (`localdir`); one given is wrapped.
    let store = match url {
        Ok(crate::config::TargetUrl::File(_)) if !built_here => crate::ordered::ordered(store),
        _ => store,
    };
    // Every request to the store is counted (what it bills).
    let store = crate::billing::counted(store, &t.name, metrics);
    let stored = stored_record(storage, &t.name, i == 0, log.first())?;
    let mut cursor = stored.cursor;
    // Guarantee 10: a memory:// store walship made starts empty at every
    // open, so its cursor starts over (from the log, or by a resync when
    // the log no longer has everything).
    if built_here && cursor > 0 && matches!(url, Ok(crate::config::TargetUrl::Memory)) {
        tracing::info!(target = %t.name, cursor, "memory:// target starts empty: shipping it again from the start of the log");
        cursor = 0;
    }
    if cursor > head {
        tracing::warn!(target = %t.name, cursor, head, "persisted cursor is past the head; using the head");
        cursor = head;
    }
    let state = match stored.state {
        TargetState::Paused if i != 0 => TargetState::Paused,
        _ => TargetState::Active,
    };
    let handle = Arc::new(TargetHandle::new(
        i,
        t.clone(),
        role,
        store,
        TargetRecord {
            cursor,
            offset: None,
            // What later writes of the record keep: the state it opens
            // with (a resync cut short is begun again by the open).
            state: match stored.state {
                TargetState::Syncing => TargetState::Syncing,
                _ => state,
            },
            ..stored
        },
        state,
        storage.generation(),
    ));
    if let Some(until) = (TargetRecord { cursor, ..stored }).replaying() {
        tracing::info!(target = %t.name, from = cursor + 1, to = until, "finishing a replay cut short: these entries go over whatever the target holds");
        handle.force_until.store(until, Ordering::Release);
    }
    let listed = TargetListing {
        name: t.name.clone(),
        role,
        region: t.region.clone(),
    };
    Ok((handle, listed, stored))
}

/// Places each target's offset: the one persisted with its cursor, or,
/// for older data dirs (or a log whose offsets were measured afresh), all
/// of them in one scan of the log.
fn place_offsets(log: &Log, targets: &[Arc<TargetHandle>], opened: &[TargetRecord]) -> Result<()> {
    let mut unplaced = Vec::new();
    for (t, stored) in targets.iter().zip(opened) {
        let persisted = stored
            .offset
            .filter(|_| log.offsets_persisted() && t.cursor() == stored.cursor)
            .filter(|o| *o <= log.head_offset());
        match persisted {
            Some(o) => t.offset.store(o, Ordering::Release),
            None => unplaced.push(t.clone()),
        }
    }
    if !unplaced.is_empty() {
        let cursors: Vec<u64> = unplaced.iter().map(|t| t.cursor()).collect();
        for (t, offset) in unplaced.iter().zip(log.offsets_of(&cursors)?) {
            t.offset.store(offset, Ordering::Release);
        }
    }
    Ok(())
}

/// This sidecar's origin id, made once and kept in the log's database.
fn origin_of(storage: &dyn LogStorage) -> Result<String> {
    Ok(match storage.meta(ORIGIN_META)? {
        Some(id) => String::from_utf8_lossy(&id).into_owned(),
        None => {
            let id = format!("{:016x}", rand::random::<u64>());
            storage.set_meta(ORIGIN_META, id.as_bytes())?;
            id
        }
    })
}

/// Starts each target's owner (with its shipper) and the manager.
fn start_tasks(r: &Arc<Replicator>, mailboxes: Vec<tokio::sync::mpsc::Receiver<owner::Command>>) {
    let mut tasks = Vec::new();
    for (t, mailbox) in r.targets.iter().zip(mailboxes) {
        let shipper = Shipper {
            target: t.clone(),
            log: r.log.clone(),
            progress: r.progress.clone(),
            waiters: r.waiters.clone(),
            metrics: r.metrics.clone(),
            engine: r.engine.clone(),
            cancel: r.cancel.clone(),
            window: match crate::config::TargetUrl::parse(&t.cfg.url) {
                Ok(crate::config::TargetUrl::File(_)) => SHIP_WINDOW_LOCAL,
                _ => SHIP_WINDOW,
            },
        };
        tasks.push(tokio::spawn(owner::run(
            Arc::downgrade(r),
            t.clone(),
            shipper,
            mailbox,
            r.cancel.clone(),
        )));
    }
    tasks.push(tokio::spawn(Replicator::supervise_manager(
        Arc::downgrade(r),
        r.cancel.clone(),
    )));
    *r.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
}

/// One health probe: a HEAD of the target's marker. Returns whether the
/// marker is there (`None` when the target did not answer).
/// [`probe_once`] on a task of its own: a probe that panics (a store
/// client's bug) is a failed probe, not the end of the manager.
async fn probe(t: Arc<TargetHandle>) -> Option<bool> {
    match tokio::spawn(probe_once(t.clone())).await {
        Ok(present) => present,
        Err(e) => {
            let msg = if e.is_panic() {
                "the health probe panicked".to_string()
            } else {
                format!("the health probe did not finish: {e}")
            };
            tracing::error!(target = %t.name(), error = %msg, "health probe failed");
            t.record_probe(Err(msg));
            None
        }
    }
}

async fn probe_once(t: Arc<TargetHandle>) -> Option<bool> {
    let timeout = Duration::from_secs_f64(t.cfg.sync_timeout_seconds);
    let started = Instant::now();
    let marker = object_store::path::Path::from(MARKER_KEY);
    let (result, present) = match tokio::time::timeout(timeout, t.store.head(&marker)).await {
        Ok(Ok(_)) => (Ok(started.elapsed().as_secs_f64() * 1000.0), Some(true)),
        Ok(Err(object_store::Error::NotFound { .. })) => {
            (Ok(started.elapsed().as_secs_f64() * 1000.0), Some(false))
        }
        Ok(Err(e)) => (Err(e.to_string()), None),
        Err(_) => (
            Err(format!("no answer within {:.1}s", timeout.as_secs_f64())),
            None,
        ),
    };
    t.record_probe(result);
    present
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
mod lifecycle;
mod owner;
pub use lifecycle::{
    Progress, ReplayFrom, ReplayPlan, VerifyReport, VerifyTarget, latest_keys, verify,
};
