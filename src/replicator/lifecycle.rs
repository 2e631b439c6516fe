//! Log lifecycle (SPEC guarantee 6): truncation, retention, the size cap,
//! resync, replay and verify.
//!
//! Invariants:
//! - entries are removed only below the lowest *floor* of the targets that
//!   still need them (a target's floor is its cursor, or while `syncing`
//!   the seq its resync hands over at), and never inside
//!   `retention_seconds`;
//! - when the kept log passes `max_log_bytes`, the target holding it back
//!   (never the acting primary) goes to `syncing`: it stops pinning the log
//!   and is copied from the acting primary, then ships from the seq the copy
//!   started at. A target is never silently skipped past entries it lacks;
//! - replay moves a cursor back (never below the oldest kept entry) and
//!   ships again; without `execute` it changes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::Replicator;
use crate::codec::Op;
use crate::error::{Error, Result};
use crate::key::{RESERVED_PREFIX, object_path};
use crate::log::{entry_at, first_seq_since, now_ms};
use crate::status::TargetState;
use crate::storage::{KeyInfo, LogStorage};
use crate::target_machine::Event;
use crate::target_state::TargetHandle;

/// Objects copied at once by a resync.
const RESYNC_WINDOW: usize = 8;
/// Keys checked at once per target by verify.
const VERIFY_WINDOW: usize = 8;

/// Where truncation may cut, from the targets' floors and the retention
/// boundary: below `min(lowest floor + 1, first seq inside retention)`.
pub(crate) fn truncation_point(floors: &[u64], first_in_retention: u64) -> u64 {
    let lowest = floors.iter().copied().min().unwrap_or(u64::MAX - 1);
    (lowest + 1).min(first_in_retention)
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// From this seq.
    Seq(u64),
    /// From the first entry appended at or after this unix time in ms.
    Since(u64),
}

/// What a replay ships again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayPlan {
    /// The target.
    pub target: String,
    /// First seq shipped again.
    pub from: u64,
    /// Last seq (the head when planned).
    pub to: u64,
    /// Entries in `from..=to`.
    pub entries: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Distinct keys among them.
    pub keys: u64,
    /// Whether the cursor was moved (false: a plan only).
    pub executed: bool,
}

/// One difference found by verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The key.
    pub key: String,
    /// Its latest seq in the log.
    pub seq: u64,
    /// `missing`, `different size`, `different content`, `deleted but present`, `unreadable`,
    /// or `conflict` (the target keeps another version on purpose; not a failure).
    pub problem: String,
    /// Detail.
    pub detail: String,
}

/// Verify's findings for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetVerify {
    /// Target name.
    pub name: String,
    /// Keys compared.
    pub keys_checked: u64,
    /// Keys whose latest entry is past the target's cursor (not yet
    /// shipped: not a difference).
    pub pending: u64,
    /// What differs.
    pub differences: Vec<Difference>,
}

/// A corrupt entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptEntry {
    /// Its seq.
    pub seq: u64,
    /// What is wrong.
    pub error: String,
}

/// `walship verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Kept entries whose crc was checked.
    pub entries_checked: u64,
    /// Entries that failed.
    pub corrupt: Vec<CorruptEntry>,
    /// Per target.
    pub targets: Vec<TargetVerify>,
    /// Nothing corrupt, nothing different.
    pub ok: bool,
}

/// Told (done, total) as verify goes.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A target to verify: its name, store and cursor.
pub struct VerifyTarget {
    /// Name.
    pub name: String,
    /// Store.
    pub store: Arc<dyn ObjectStore>,
    /// Cursor (keys with a newer latest entry are pending).
    pub cursor: u64,
}

/// The latest entry of every key the log knows up to seq `upto`, from the
/// key index plus the entries above its watermark (so it is exact even
/// offline). A running log passes its durable head: a group in the
/// storage but not yet durable (or whose flush failed) was not
/// acknowledged. Offline, `u64::MAX`.
///
/// The index's watermark moves while the index is listed: up, when the
/// index thread checkpoints (the listing then holds entries above the
/// watermark read before), and down, when the log reopens after a failed
/// flush (the reopened index stops at its last durable checkpoint until
/// the log rebuilds it). So the scan starts above the lower of the
/// watermarks read before and after the listing, and a key's higher seq
/// wins. With one read, after the listing, a checkpoint in between left
/// the entries between the two watermarks out of both.
pub fn latest_keys(storage: &dyn LogStorage, upto: u64) -> Result<BTreeMap<String, KeyInfo>> {
    let before = storage.key_index_watermark()?;
    let mut keys: BTreeMap<String, KeyInfo> = storage
        .keys_with_prefix("", "", usize::MAX)?
        .into_iter()
        .collect();
    let from = before.min(storage.key_index_watermark()?) + 1;
    let head = storage.bounds()?.map(|(_, h)| h).unwrap_or(0).min(upto);
    storage.scan(from, head, &mut |seq, rec| {
        if let Ok(e) = crate::codec::decode(seq, rec) {
            if keys.get(&e.key).is_some_and(|k| k.seq >= seq) {
                return true;
            }
            let info = KeyInfo {
                seq,
                op: e.op,
                size: e.value.len() as u64,
                meta: crate::log::meta_or_derived(&e),
            };
            keys.insert(e.key, info);
        }
        true
    })?;
    Ok(keys)
}

/// Checks every kept entry's crc, then compares each target with the
/// latest version of every key. `progress` is told each step (done, total).
pub async fn verify(
    storage: Arc<dyn LogStorage>,
    keys: &BTreeMap<String, KeyInfo>,
    targets: &[VerifyTarget],
    progress: Progress,
    upto: u64,
) -> Result<VerifyReport> {
    let mut corrupt = Vec::new();
    let mut checked = 0u64;
    let (first, head) = storage.bounds()?.unwrap_or((1, 0));
    let head = head.min(upto);
    storage.scan(first, head, &mut |seq, rec| {
        checked += 1;
        if let Err(e) = crate::codec::decode(seq, rec) {
            corrupt.push(CorruptEntry {
                seq,
                error: e.to_string(),
            });
        }
        true
    })?;
    let origin = storage
        .meta("origin")?
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    let total = keys.len() as u64 * targets.len() as u64;
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut reports = Vec::new();
    for t in targets {
        let mut report = TargetVerify {
            name: t.name.clone(),
            keys_checked: 0,
            pending: 0,
            differences: Vec::new(),
        };
        let owned: Vec<(String, KeyInfo)> =
            keys.iter().map(|(k, i)| (k.clone(), i.clone())).collect();
        let results: Vec<Option<Difference>> = futures::stream::iter(owned)
            .map(|(key, info)| {
                let store = t.store.clone();
                let storage = storage.clone();
                let cursor = t.cursor;
                let origin = origin.clone();
                let done = done.clone();
                let progress = progress.clone();
                async move {
                    let d = if info.seq > cursor {
                        None
                    } else {
                        compare(
                            storage.as_ref(),
                            store.as_ref(),
                            (&t.name, &origin),
                            &key,
                            &info,
                        )
                        .await
                    };
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    d
                }
            })
            .buffered(VERIFY_WINDOW)
            .collect()
            .await;
        for ((_, info), d) in keys.iter().zip(results) {
            if info.seq > t.cursor {
                report.pending += 1;
            } else {
                report.keys_checked += 1;
            }
            if let Some(d) = d {
                report.differences.push(d);
            }
        }
        reports.push(report);
    }
    let ok = corrupt.is_empty()
        && reports
            .iter()
            .all(|r| r.differences.iter().all(|d| d.problem == CONFLICT_KEPT));
    Ok(VerifyReport {
        entries_checked: checked,
        corrupt,
        targets: reports,
        ok,
    })
}

async fn compare(
    storage: &dyn LogStorage,
    store: &dyn ObjectStore,
    (target, origin): (&str, &str),
    key: &str,
    info: &KeyInfo,
) -> Option<Difference> {
    let diff = |problem: &str, detail: String| {
        Some(Difference {
            key: key.to_string(),
            seq: info.seq,
            problem: problem.to_string(),
            detail,
        })
    };
    let path = object_path(key);
    let (got, etag) = match store.get(&path).await {
        Ok(r) => {
            let etag = r.meta.e_tag.clone();
            match r.bytes().await {
                Ok(b) => (Some(b), etag),
                Err(e) => return diff("unreadable", e.to_string()),
            }
        }
        Err(object_store::Error::NotFound { .. }) => (None, None),
        Err(e) => return diff("unreadable", e.to_string()),
    };
    let mut found = content_difference(storage, info, got)?;
    found.key = key.to_string();
    // A version kept by conflict resolution is a difference on purpose.
    if let Some(k) = crate::apply::known_in(storage, target, key)
        .ok()
        .flatten()
        .filter(|k| k.tag.origin != origin && k.etag.is_some() && k.etag == etag)
    {
        let why = match k.conflict {
            Some(id) => format!(
                "open conflict {id}: `walship conflicts resolve {id} --keep primary|replica`"
            ),
            None => "kept by conflict_resolution".to_string(),
        };
        let who = if k.tag.origin.is_empty() {
            "written outside walship".to_string()
        } else {
            format!("written by sidecar {}", k.tag.origin)
        };
        return diff(
            CONFLICT_KEPT,
            format!("{}; the target holds a version {who} ({why})", found.detail),
        );
    }
    Some(found)
}

/// The `problem` of a difference that conflict resolution chose (not a
/// failure of verify).
pub(crate) const CONFLICT_KEPT: &str = "conflict";

fn content_difference(
    storage: &dyn LogStorage,
    info: &KeyInfo,
    got: Option<bytes::Bytes>,
) -> Option<Difference> {
    let diff = |problem: &str, detail: String| {
        Some(Difference {
            key: String::new(),
            seq: info.seq,
            problem: problem.to_string(),
            detail,
        })
    };
    match (info.op, got) {
        (Op::Delete, None) => None,
        (Op::Delete, Some(b)) => diff(
            "deleted but present",
            format!(
                "deleted at seq {}, target holds {} bytes",
                info.seq,
                b.len()
            ),
        ),
        (Op::Put, None) => diff("missing", format!("written at seq {}", info.seq)),
        (Op::Put, Some(b)) if b.len() as u64 != info.size => diff(
            "different size",
            format!(
                "log has {} bytes at seq {}, target {}",
                info.size,
                info.seq,
                b.len()
            ),
        ),
        (Op::Put, Some(b)) => match entry_at(storage, info.seq) {
            Ok(Some(e)) if e.value != b => diff(
                "different content",
                format!(
                    "same size ({} bytes), other bytes than seq {}",
                    b.len(),
                    info.seq
                ),
            ),
            // Truncated from the log: the size is all there is to compare.
            _ => None,
        },
    }
}

impl Replicator {
    /// One maintenance pass: truncate what no target needs (outside
    /// retention), and send the target holding an over-cap log to resync.
    pub(crate) async fn maintain(self: &Arc<Self>) -> Result<u64> {
        let retention_ms = (self.cfg.retention_seconds * 1000.0) as u64;
        let storage = self.log.storage().clone();
        let cutoff = now_ms().saturating_sub(retention_ms);
        let in_retention =
            tokio::task::spawn_blocking(move || first_seq_since(storage.as_ref(), cutoff))
                .await
                .map_err(|e| {
                    Error::io("finding the retention boundary", std::io::Error::other(e))
                })??;
        let floors: Vec<u64> = self
            .targets
            .iter()
            .filter(|t| t.state() != TargetState::Removed)
            .map(|t| t.floor())
            .collect();
        let below = truncation_point(&floors, in_retention);
        let log = self.log.clone();
        let targets = self.targets.clone();
        let removed = tokio::task::spawn_blocking(move || {
            // The cursors this goes by are persisted first (each at or past
            // its floor; a syncing target's record keeps `syncing`, so a
            // restart resyncs it anyway): sled keeps writes in order, so a
            // crash that keeps the removal keeps them too, and a restart
            // never finds a cursor below the oldest kept entry (the shipper
            // persists only now and then). Unchanged records are not
            // written again.
            let mut below = below;
            if below > log.first() {
                let generation = log.storage().generation();
                for t in &targets {
                    t.save_position(&log, true)?;
                }
                // A save rewinds its target when the log reopened since the
                // floors were read: never past a floor as it stands now.
                let floors: Vec<u64> = targets
                    .iter()
                    .filter(|t| t.state() != TargetState::Removed)
                    .map(|t| t.floor())
                    .collect();
                below = below.min(truncation_point(&floors, u64::MAX));
                // Those cursors durable before anything is removed: a reopen
                // losing them would rewind a target below the kept log.
                log.storage().sync_since(generation)?;
            }
            log.truncate_below(below)
        })
        .await
        .map_err(|e| Error::io("truncating the log", std::io::Error::other(e)))??;
        if removed > 0 {
            tracing::debug!(removed, below, "log truncated");
        }
        if self.log.retained_bytes() > self.cfg.max_log_bytes {
            let acting = self.acting.get();
            let head = self.log.head();
            let holder = self
                .targets
                .iter()
                .filter(|t| {
                    t.idx != acting
                        && matches!(
                            t.state(),
                            TargetState::Active
                                | TargetState::Paused
                                | TargetState::Failed
                                | TargetState::Syncing
                        )
                })
                .filter(|t| t.floor() < head)
                .min_by_key(|t| t.floor());
            if let Some(t) = holder
                && t.floor() < in_retention.saturating_sub(1)
                && t.state() == TargetState::Syncing
            {
                // Already syncing: its copy hands over at its floor, which
                // holds the log past the cap (a copy that takes long, or
                // keeps failing, while writes go on). The hand-over point
                // moves to the head; the copy starts over there.
                self.ask(t, |reply| super::owner::Command::MoveResyncFloor {
                    to: head,
                    reply,
                })
                .await?;
            } else if let Some(t) = holder
                && t.floor() < in_retention.saturating_sub(1)
            {
                tracing::warn!(
                    target = %t.name(),
                    cursor = t.cursor(),
                    retained = self.log.retained_bytes(),
                    max_log_bytes = self.cfg.max_log_bytes,
                    "log over max_log_bytes: the target holding it back is resynced from the acting primary instead"
                );
                self.start_resync(t.name()).await?;
            }
        }
        Ok(removed)
    }

    /// Starts copying everything from the acting primary to `name`; the
    /// target is `syncing` until it hands over to its cursor.
    pub async fn start_resync(self: &Arc<Self>, name: &str) -> Result<u64> {
        let t = self.target(name)?;
        self.ask(t, super::owner::Command::StartResync).await
    }

    /// [`Replicator::start_resync`], on the target's owner: the hand-over
    /// point, and whether a resync began (the owner then starts copying).
    pub(super) fn begin_resync(&self, t: &TargetHandle) -> Result<(u64, bool)> {
        let name = t.name();
        let refused = || {
            Error::StateRefused(format!(
                "{name} is the acting primary, the source of a resync; it cannot be resynced"
            ))
        };
        let begun = self.acting.unless_acting(t.idx, refused, || {
            if t.state() == TargetState::Syncing {
                return Ok(None);
            }
            let start = self.log.head();
            let step = self.change_state(
                t,
                Event::ResyncStarted,
                |_| {},
                || {
                    t.resync_floor.store(start, Ordering::Release);
                    t.set_progress(Some("starting".into()));
                },
            )?;
            Ok(Some((start, step)))
        })?;
        let Some((start, step)) = begun else {
            return Ok((t.resync_floor.load(Ordering::Acquire), false));
        };
        tracing::info!(target = %name, start, "resync started");
        Ok((start, step.starts_resync()))
    }

    /// On the target's owner: the log passed `max_log_bytes` during a
    /// resync, whose hand-over point holds it. The point moves to `to`
    /// (the head); the copy under way sees it and starts over there.
    pub(super) fn move_resync_floor(&self, t: &TargetHandle, to: u64) {
        let floor = t.resync_floor.load(Ordering::Acquire);
        if t.state() == TargetState::Syncing && floor < to {
            t.resync_floor.store(to, Ordering::Release);
            tracing::warn!(
                target = %t.name(),
                from = floor,
                to,
                retained = self.log.retained_bytes(),
                max_log_bytes = self.cfg.max_log_bytes,
                "log over max_log_bytes during a resync: the resync starts over from the head; if this repeats, raise max_log_bytes"
            );
        }
    }

    /// One attempt, on a task of the owner's: copies everything the
    /// acting primary holds at `start`. `Ok(true)` when copied (the owner
    /// then hands over), `Ok(false)` when the hand-over point moved
    /// meanwhile (the log passed the cap): start again.
    #[tracing::instrument(name = "resync", skip_all, fields(target = %t.name(), start))]
    pub(super) async fn run_resync(
        self: Arc<Self>,
        t: Arc<TargetHandle>,
        start: u64,
    ) -> Result<bool> {
        // The source must hold everything up to `start`.
        let source = loop {
            let src = self.acting_primary().clone();
            // A primary whose own copy never finished holds less than its
            // cursor says: never copied from (it is failed over first).
            let whole = !self.copy_unfinished(&src);
            if whole && src.cursor() >= start {
                break src;
            }
            t.set_progress(Some(if whole {
                format!("waiting for {} to reach seq {start}", src.name())
            } else {
                format!("waiting for {} to be copied itself", src.name())
            }));
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = self.cancel.cancelled() => return Err(Error::ShuttingDown),
            }
        };
        let listing = |store: Arc<dyn ObjectStore>| async move {
            let all: Vec<ObjectMeta> = store.list(None).try_collect().await?;
            Ok::<_, object_store::Error>(
                all.into_iter()
                    .filter(|m| !m.location.as_ref().starts_with(RESERVED_PREFIX))
                    .collect::<Vec<_>>(),
            )
        };
        let src_objects = listing(source.store.clone())
            .await
            .map_err(|e| Error::target(source.name(), e))?;
        let dst_objects: HashMap<Path, ObjectMeta> = listing(t.store.clone())
            .await
            .map_err(|e| Error::target(t.name(), e))?
            .into_iter()
            .map(|m| (m.location.clone(), m))
            .collect();
        let total = src_objects.len();
        // The versions the copy records are made durable in this storage
        // generation before the hand-over (a reopen would lose them).
        let generation = self.log.storage().generation();
        let copied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let keep: HashSet<Path> = src_objects.iter().map(|m| m.location.clone()).collect();
        let jobs: Vec<(Path, bool)> = src_objects
            .iter()
            .map(|m| {
                let same = dst_objects
                    .get(&m.location)
                    .is_some_and(|d| d.size == m.size && d.e_tag.is_some() && d.e_tag == m.e_tag);
                (m.location.clone(), same)
            })
            .collect();
        let results: Vec<Result<()>> = futures::stream::iter(jobs)
            .map(|(path, same)| {
                let me = self.clone();
                let source = source.clone();
                let t = t.clone();
                let copied = copied.clone();
                async move {
                    // A moved hand-over point makes this attempt moot: the
                    // rest of it is skipped, not copied first.
                    if !same && t.resync_floor.load(Ordering::Acquire) == start {
                        me.copy_object(&source, &t, &path, start).await?;
                    }
                    let n = copied.fetch_add(1, Ordering::Relaxed) + 1;
                    t.set_progress(Some(format!(
                        "copied {n}/{total} objects from {}",
                        source.name()
                    )));
                    Ok(())
                }
            })
            .buffer_unordered(RESYNC_WINDOW)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        if t.resync_floor.load(Ordering::Acquire) != start {
            return Ok(false);
        }
        for extra in dst_objects.keys().filter(|p| !keep.contains(*p)) {
            match t.store.delete(extra).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::target(t.name(), e)),
            }
        }
        for extra in dst_objects.keys().filter(|p| !keep.contains(*p)) {
            self.engine.set_known(&t, extra.as_ref(), None)?;
        }
        self.engine.resynced(&t)?;
        match self.engine.sync_since(generation).await {
            Ok(()) => Ok(true),
            // The log reopened meanwhile, losing versions recorded by the
            // copy: copy again.
            Err(Error::LogReopened) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// On the target's owner, once a copy towards `start` is done: hands
    /// over to the cursor at `start`, unless the hand-over point moved
    /// (`Ok(false)`: copy again).
    pub(super) fn hand_over(&self, t: &TargetHandle, start: u64) -> Result<bool> {
        if t.resync_floor.load(Ordering::Acquire) != start {
            return Ok(false);
        }
        let offset = self.log.offset_of(start)?;
        self.change_state(
            t,
            Event::ResyncDone,
            |r| {
                r.cursor = start;
                r.offset = Some(offset);
            },
            || {
                t.reset(start, offset);
                t.resync_floor.store(0, Ordering::Release);
                t.set_progress(None);
            },
        )?;
        tracing::info!(target = %t.name(), start, "resync done; shipping from the log");
        Ok(true)
    }

    /// Copies one object, retrying until it is copied or the resync's
    /// hand-over point moves from `start` (the attempt is moot then).
    async fn copy_object(
        &self,
        source: &TargetHandle,
        t: &TargetHandle,
        path: &Path,
        start: u64,
    ) -> Result<()> {
        let mut delay =
            Duration::from_secs_f64(t.cfg.retry_delay_seconds).max(Duration::from_millis(10));
        loop {
            let attempt = self.engine.copy(source, t, path);
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(_) if t.resync_floor.load(Ordering::Acquire) != start => return Ok(()),
                Err(e) => {
                    tracing::warn!(target = %t.name(), object = %path, error = %e, "resync copy failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.cancel.cancelled() => return Err(Error::ShuttingDown),
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Plans (and with `execute`, performs) a replay of `name` from `from`.
    ///
    /// The plan (where `from` is in the log, and a scan of what follows
    /// it) is read here, off the target's owner: a scan of a long log
    /// must not hold the owner's other commands (a pause, the manager's
    /// resync) behind it. Only the execution, which moves the cursor, is
    /// the owner's; it checks the plan against the log and the target's
    /// state again.
    pub async fn replay(&self, name: &str, from: ReplayFrom, execute: bool) -> Result<ReplayPlan> {
        let t = self.target(name)?;
        let storage = self.log.storage().clone();
        let head = self.log.head();
        let seq = match from {
            ReplayFrom::Seq(s) => s,
            ReplayFrom::Since(ts) => {
                let storage = storage.clone();
                tokio::task::spawn_blocking(move || first_seq_since(storage.as_ref(), ts))
                    .await
                    .map_err(|e| {
                        Error::io("finding the replay start", std::io::Error::other(e))
                    })??
            }
        };
        self.replay_checks(t, seq, head)?;
        #[cfg(feature = "testing")]
        let _held = self.replay_scans.clone().read_owned().await;
        let (entries, bytes, keys) = tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            let mut b = 0u64;
            let mut keys = HashSet::new();
            storage.scan(seq, head, &mut |s, rec| {
                n += 1;
                b += rec.len() as u64;
                if let Ok(e) = crate::codec::decode(s, rec) {
                    keys.insert(e.key);
                }
                true
            })?;
            Ok::<_, Error>((n, b, keys.len() as u64))
        })
        .await
        .map_err(|e| Error::io("planning the replay", std::io::Error::other(e)))??;
        if execute {
            self.ask(t, |reply| super::owner::Command::Replay {
                seq,
                head,
                reply,
            })
            .await?;
        }
        Ok(ReplayPlan {
            target: name.to_string(),
            from: seq,
            to: head,
            entries,
            bytes,
            keys,
            executed: execute,
        })
    }

    /// Whether `t` may be replayed from `seq` with the log at `head`.
    fn replay_checks(&self, t: &TargetHandle, seq: u64, head: u64) -> Result<()> {
        let name = t.name();
        let first = self.log.first();
        if seq == 0 {
            return Err(Error::BadRequest(
                "seqs start at 1; replay from 1 or later".into(),
            ));
        }
        if seq < first {
            return Err(Error::BadRequest(format!(
                "cannot replay {name} from seq {seq}: entries below {first} were truncated from the log. \
                 Run `walship resync {name}` to copy everything from the acting primary instead"
            )));
        }
        if seq > head {
            return Err(Error::BadRequest(format!(
                "nothing to replay: seq {seq} is past the head ({head})"
            )));
        }
        t.step(Event::Replayed)?;
        Ok(())
    }

    /// Holds every replay's scan until the guard is dropped (tests only:
    /// what a long log's scan does to the owner's other commands).
    #[cfg(feature = "testing")]
    pub async fn hold_replay_scans(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.replay_scans.clone().write_owned().await
    }

    /// [`Replicator::replay`]'s execution, on the target's owner: the
    /// cursor moves back to `seq - 1`, and entries up to `head` are
    /// written over whatever the target holds.
    pub(super) fn replay_now(&self, t: &Arc<TargetHandle>, seq: u64, head: u64) -> Result<()> {
        // Checked again: the log may have been truncated past `seq`, or
        // the target's state changed, since the plan was read.
        self.replay_checks(t, seq, head)?;
        let name = t.name();
        // A repair: this log's versions go over whatever is there. The
        // intent is durable with the moved-back cursor (one sync),
        // before anything ships.
        let until = t.force_until.load(Ordering::Acquire).max(head);
        let offset = self.log.offset_of(seq - 1)?;
        self.change_state(
            t,
            Event::Replayed,
            |r| {
                r.replay_until = until;
                r.cursor = seq - 1;
                r.offset = Some(offset);
            },
            || {
                t.force_until.fetch_max(until, Ordering::AcqRel);
                t.reset(seq - 1, offset);
            },
        )?;
        tracing::info!(target = %name, from = seq, to = head, "replay: cursor moved back");
        Ok(())
    }

    /// Verifies the log and the targets (all, or the one named).
    pub async fn verify(&self, only: Option<&str>) -> Result<VerifyReport> {
        if let Some(n) = only {
            self.target(n)?;
        }
        let storage = self.log.storage().clone();
        let head = self.log.head();
        let keys = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || latest_keys(storage.as_ref(), head))
                .await
                .map_err(|e| Error::io("listing keys", std::io::Error::other(e)))??
        };
        let targets: Vec<VerifyTarget> = self
            .targets
            .iter()
            .filter(|t| only.is_none_or(|n| n == t.name()))
            .map(|t| VerifyTarget {
                name: t.name().to_string(),
                store: t.store.clone(),
                cursor: t.cursor(),
            })
            .collect();
        let mut report = verify(storage, &keys, &targets, Arc::new(|_, _| {}), head).await?;
        // A target that stopped shipping holds back what follows its
        // cursor: not "pending", a failure (guarantee 11).
        for tv in &mut report.targets {
            if let Ok(t) = self.target(&tv.name)
                && t.state() == TargetState::Failed
            {
                tv.differences.push(Difference {
                    key: String::new(),
                    seq: t.cursor() + 1,
                    problem: "failed".into(),
                    detail: t
                        .observed()
                        .error
                        .clone()
                        .unwrap_or_else(|| "shipping to it stopped".into()),
                });
                report.ok = false;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_stops_at_the_lowest_floor_and_at_retention() {
        assert_eq!(truncation_point(&[10, 7, 12], u64::MAX), 8);
        assert_eq!(truncation_point(&[10, 7, 12], 5), 5);
        assert_eq!(truncation_point(&[0, 7], 100), 1);
        assert_eq!(truncation_point(&[], 42), 42);
    }

    fn sled_log() -> (
        tempfile::TempDir,
        Arc<crate::storage::SledStorage>,
        Arc<crate::log::Log>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage =
            Arc::new(crate::storage::SledStorage::open(dir.path(), 32 << 20).expect("open"));
        let log = crate::log::Log::open(storage.clone()).expect("log");
        (dir, storage, log)
    }

    fn put(key: &str) -> crate::log::Write {
        crate::log::Write::put(
            crate::key::Key::parse(key).expect("key"),
            bytes::Bytes::from_static(b"v"),
        )
    }

    /// Restore and verify read the log up to its durable head, as every
    /// live answer does: a group the committer has put in the storage but
    /// not yet made durable (or whose flush failed, until the reopen takes
    /// it back) was not acknowledged. Made to happen by putting one there
    /// as the committer does before its sync.
    #[tokio::test]
    async fn restore_and_verify_stop_at_the_durable_head() {
        let (_dir, storage, log) = crate::log::testing::with_a_group_not_yet_durable().await;
        let head = log.head();
        assert_eq!(head, 3);

        let keys = latest_keys(storage.as_ref(), head).expect("keys");
        assert!(!keys.contains_key("unacked"), "{keys:?}");
        assert_eq!(keys.len(), 3);
        assert!(
            latest_keys(storage.as_ref(), u64::MAX)
                .expect("offline")
                .contains_key("unacked"),
            "offline, what an open finds"
        );
        let report = verify(storage.clone(), &keys, &[], Arc::new(|_, _| {}), head)
            .await
            .expect("verify");
        assert_eq!(
            report.entries_checked, 3,
            "the crc check reads what was acknowledged"
        );

        let far = u64::MAX / 2;
        assert_eq!(
            crate::restore::seq_as_of(storage.as_ref(), far, head).expect("as of"),
            3
        );
        let memory = || -> Arc<dyn ObjectStore> { Arc::new(object_store::memory::InMemory::new()) };
        let req = |seq| crate::restore::RestoreRequest {
            seq,
            prefix: String::new(),
            execute: true,
        };
        match crate::restore::restore(storage.clone(), memory(), memory(), req(4), head).await {
            Err(Error::BadRequest(why)) => assert!(why.contains("past the log's head 3"), "{why}"),
            other => panic!("seq 4 was never acknowledged: {other:?}"),
        }
        let to = memory();
        crate::restore::restore(storage.clone(), memory(), to.clone(), req(3), head)
            .await
            .expect("restore");
        let restored: Vec<String> = to
            .list(None)
            .map(|m| m.expect("listed").location.to_string())
            .collect::<Vec<_>>()
            .await;
        assert_eq!(restored.len(), 3, "{restored:?}");
    }

    /// The index thread checkpoints the key index every 200 ms while writes
    /// go on; a listing of every key meets such a checkpoint now and then.
    /// Every key acknowledged up to the head read before is in the answer,
    /// each time (with the watermark read after the listing, the entries
    /// between the listing's watermark and the new one were in neither).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_key_is_listed_while_the_index_checkpoints() {
        let (_dir, storage, log) = sled_log();
        let acked = Arc::new(std::sync::Mutex::new(Vec::<(u64, String)>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let write = |from: usize, n: usize| {
            let (log, acked, stop) = (log.clone(), acked.clone(), stop.clone());
            async move {
                let mut tasks = tokio::task::JoinSet::new();
                for w in 0..16 {
                    let (log, acked, stop) = (log.clone(), acked.clone(), stop.clone());
                    tasks.spawn(async move {
                        for i in (from + w..from + n).step_by(16) {
                            if stop.load(Ordering::Acquire) {
                                return;
                            }
                            let key = format!("key/{i:08}");
                            let a = log.append(put(&key)).await.expect("append");
                            acked.lock().expect("acked").push((a.seq, key));
                        }
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r.expect("writer");
                }
            }
        };
        // An index large enough that listing it takes a while.
        write(0, 20_000).await;
        let writing = tokio::spawn(write(20_000, 1_000_000));
        let mut missed = None;
        for round in 0..12 {
            let head = log.head();
            let s = storage.clone();
            let keys = tokio::task::spawn_blocking(move || latest_keys(s.as_ref(), head))
                .await
                .expect("join")
                .expect("keys");
            let acked = acked.lock().expect("acked").clone();
            missed = acked
                .into_iter()
                .filter(|(seq, _)| *seq <= head)
                .find(|(seq, key)| keys.get(key).map(|k| k.seq) != Some(*seq))
                .map(|(seq, key)| format!("round {round}: {key} (seq {seq}), acknowledged up to head {head}, is not listed at its seq"));
            if missed.is_some() {
                break;
            }
        }
        // The writers stop, each after its write under way, before any
        // assertion.
        stop.store(true, Ordering::Release);
        writing.await.expect("writers");
        assert_eq!(missed, None);
    }
}
