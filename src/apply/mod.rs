//! Applying one log entry to one target, finding conflicts on the way, and
//! resolving them (see `conflict` for what each strategy decides).
//!
//! For an entry E of key K on target T:
//!
//! 1. `known` = the version walship knows T holds for K (side table
//!    `versions`). If an open manual conflict holds K on T, E waits with it:
//!    the record is updated to E and the cursor passes.
//! 2. If `known` came from another origin and was kept by an earlier
//!    decision, E replaces it only when the strategy would pick E
//!    (`conflict::may_replace`); otherwise the cursor passes.
//! 3. E is written conditionally: `PutMode::Update` on the known e-tag, or
//!    `PutMode::Create` when K is unknown on T. A store without conditional
//!    puts (local directories) gets a HEAD first and the e-tags compared;
//!    the race between that HEAD and the write remains (documented). A
//!    delete is always HEAD-then-delete (object_store has no conditional
//!    delete).
//! 4. When T holds something else, the object is read: absent means write
//!    with `Create`; a version this sidecar wrote is not a conflict (its
//!    `walshiporigin` metadata, or, where the store keeps no metadata,
//!    identical bytes or the bytes of an entry of K shipped since this
//!    process opened: a crash between a put and recording its e-tag); any
//!    other version is a conflict: counted once, recorded as `resolving`,
//!    decided, carried out with a conditional write, counted resolved.
//! 5. A write records its e-tag as this sidecar's version of K on T.
//!
//! Each decision on the way is a pure function in [`plan`], tested there;
//! this module reads and writes, and does what `plan` answers.
//!
//! Re-applying an entry is harmless: the version is ours, so step 4 sees no
//! conflict. Every write carries `walshiporigin`, `walshipts` and
//! `walshipseq` where the store keeps metadata.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, PutResult,
};

use crate::codec::{Entry, Op};
use crate::config::ConflictResolution;
use crate::conflict::{
    self, ConflictRecord, Keep, Known, META_ORIGIN, META_SEQ, META_TS, Merge, Tag, Verdict,
    VersionInfo,
};
use crate::error::{Error, Result};
use crate::key::object_path;
use crate::keyed::KeyedLocks;
use crate::log::{Log, now_ms};
use crate::metrics::Metrics;
use crate::storage::Side;
use crate::target_state::{Caps, TargetHandle};

mod plan;

pub(crate) use plan::missing_cap;
use plan::{Delete, First, Found, Mode, Owner, Refused, Who};

/// Rounds of "the target changed under us" before giving up for now (the
/// shipper retries with backoff).
const MAX_ROUNDS: usize = 8;
/// Meta name of the seqs of adopted entries (JSON list).
const ADOPTED_META: &str = "adopted";
/// Meta name of the next conflict id.
const NEXT_ID_META: &str = "conflict_next_id";
/// At most this many log entries are read to recognise a version this
/// sidecar wrote on a store without metadata.
const MAX_OWN_SCAN: u64 = 1_000_000;

/// The outcome of one conditional write.
enum Put {
    Written(PutResult),
    /// The target does not hold the version the write was conditional on.
    Changed,
}

/// What a write carries as metadata.
struct Stamp {
    tag: Tag,
    seq: u64,
    /// The object's own attributes (Content-Type, `x-amz-meta-*`, …),
    /// written with it where the store keeps attributes.
    content: Attributes,
}

/// Applies entries with conflict detection; owns the conflict records.
pub(crate) struct Engine {
    pub(crate) origin: String,
    pub(crate) strategy: ConflictResolution,
    pub(crate) merge: Arc<dyn Merge>,
    pub(crate) log: Arc<Log>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) targets: Vec<Arc<TargetHandle>>,
    pub(crate) acting: Arc<crate::acting::Acting>,
    /// Per conflict id: serialises the changes of its record (a later
    /// entry held by it, a replay clearing it, its resolution). A resolve
    /// waiting on its target's store thus holds up only its own key on its
    /// own target, never another conflict.
    claims: KeyedLocks<u64>,
    /// Serialises the allocation of conflict ids.
    ids: std::sync::Mutex<()>,
    /// Per target (by index): recently known versions.
    cache: Vec<std::sync::Mutex<KnownCache>>,
    /// Per target (by index): keys it holds a version of that is not this
    /// log's (an open conflict, a foreign version kept). Guarantee 9: such
    /// a target neither acknowledges writes of the key nor serves it.
    /// Written only by `set_known`, rebuilt from sled by `load_foreign`.
    foreign: Vec<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Per target (by index): recent seqs whose entry lost to a version the
    /// target kept (adopted as a later entry). Guarantee 9 for the entry
    /// itself: the target does not acknowledge it, even once the adopted
    /// version makes the key this log's again. At most `LOST_KEPT` seqs.
    lost: Vec<std::sync::Mutex<std::collections::BTreeSet<u64>>>,
    /// Largest object the log takes (adoption respects it).
    pub(crate) max_object_bytes: u64,
    /// Seqs of entries that adopt a foreign version (see `adopt`), with the
    /// tag they are written with when it is another sidecar's.
    adopted: std::sync::Mutex<std::collections::BTreeMap<u64, Option<Tag>>>,
    /// Whether `adopted` holds anything: most logs never adopt, and their
    /// writes then skip its lock.
    any_adopted: AtomicBool,
    /// Adoptions between their append and their record in `adopted` (see
    /// `plan::First::Wait`).
    adopting: AtomicUsize,
}

/// What one pass of `Engine::apply` did.
enum Applied {
    /// Applied, or held with its key's conflict.
    Done,
    /// The conflict that held the key went meanwhile, or an adoption was
    /// under way: apply again.
    Again,
}

/// How long an entry that may be an adoption under way waits before it is
/// decided again.
const ADOPTING_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// One adoption under way, counted in `Engine::adopting` while it lives.
struct Adopting<'a>(&'a AtomicUsize);

impl<'a> Adopting<'a> {
    fn start(n: &'a AtomicUsize) -> Adopting<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Adopting(n)
    }
}

impl Drop for Adopting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Seqs of lost entries remembered per target: far more than can be waited
/// for within any `sync_timeout_seconds`.
const LOST_KEPT: usize = 65_536;

/// Most keys whose known version is cached per target.
const CACHE_KEYS: usize = 16 * 1024;

/// A bounded map key → known version (`None`: known to be unknown). When
/// full, a quarter of it is dropped: what is dropped is found again in sled
/// or on the target.
#[derive(Default)]
pub(crate) struct KnownCache {
    map: std::collections::HashMap<String, Option<Known>>,
    /// The storage generation what is cached was read or written in: a
    /// reopen of the log may have lost a version written before it (or
    /// brought back one removed), so the cache is emptied then, and what
    /// was read or written in an older generation is not cached.
    generation: u64,
}

impl KnownCache {
    fn get(&self, key: &str) -> Option<&Option<Known>> {
        self.map.get(key)
    }

    /// `k`, read from sled, unless the key was cached meanwhile: then what
    /// was cached (newer). What the key's entry is now.
    fn fill(&mut self, key: &str, k: Option<Known>) -> Option<Known> {
        if let Some(now) = self.map.get(key) {
            return now.clone();
        }
        self.insert(key, k.clone());
        k
    }

    fn insert(&mut self, key: &str, k: Option<Known>) {
        if self.map.len() >= CACHE_KEYS && !self.map.contains_key(key) {
            let drop: Vec<String> = self.map.keys().take(CACHE_KEYS / 4).cloned().collect();
            for d in drop {
                self.map.remove(&d);
            }
        }
        match self.map.get_mut(key) {
            Some(slot) => *slot = k,
            None => {
                self.map.insert(key.to_string(), k);
            }
        }
    }
}

fn versions_key(target: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + 1 + key.len());
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn decode_json<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::Damaged(format!(
            "{what} in the data dir does not decode ({e}); the data dir is damaged: stop walship and restore it from a backup"
        ))
    })
}

fn encode_json<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v)
        .map_err(|e| Error::io(format!("encoding {what}"), std::io::Error::other(e)))
}

fn meta_str<'a>(attrs: &'a Attributes, name: &'static str) -> Option<&'a str> {
    attrs
        .get(&Attribute::Metadata(name.into()))
        .map(|v| v.as_ref())
}

impl Engine {
    pub(crate) fn new(
        origin: String,
        strategy: ConflictResolution,
        merge: Arc<dyn Merge>,
        log: Arc<Log>,
        metrics: Arc<Metrics>,
        targets: Vec<Arc<TargetHandle>>,
        acting: Arc<crate::acting::Acting>,
    ) -> Engine {
        let cache = targets
            .iter()
            .map(|_| std::sync::Mutex::new(KnownCache::default()))
            .collect();
        let foreign = targets.iter().map(|_| Default::default()).collect();
        let lost = targets.iter().map(|_| Default::default()).collect();
        Engine {
            cache,
            foreign,
            lost,
            adopted: Default::default(),
            any_adopted: AtomicBool::new(false),
            adopting: AtomicUsize::new(0),
            max_object_bytes: u64::MAX,
            origin,
            strategy,
            merge,
            log,
            metrics,
            targets,
            acting,
            claims: KeyedLocks::default(),
            ids: std::sync::Mutex::new(()),
        }
    }

    /// The largest object a foreign version may be to be adopted.
    pub(crate) fn with_max_object_bytes(mut self, max: u64) -> Engine {
        self.max_object_bytes = max;
        self
    }

    /// Rebuilds the per-target sets of foreign holdings from the versions
    /// side table (where every such version is kept; see `set_known`).
    pub(crate) fn load_foreign(&self) -> Result<()> {
        for t in &self.targets {
            let mut prefix = t.name().as_bytes().to_vec();
            prefix.push(0);
            let rows = self.log.storage().side_scan(Side::Versions, &prefix)?;
            let mut set = self.foreign_of(t.idx);
            for (k, v) in rows {
                let Ok(key) = std::str::from_utf8(&k[prefix.len()..]) else {
                    continue;
                };
                if let Ok(known) = serde_json::from_slice::<Known>(&v)
                    && self.is_foreign(&known)
                {
                    set.insert(key.to_string());
                }
            }
        }
        Ok(())
    }

    /// A version that is not this log's and stays (a decision under way
    /// is not one yet: its entry has not passed the cursor).
    fn is_foreign(&self, k: &Known) -> bool {
        k.conflict.is_some()
            || (k.tag.origin != self.origin
                && !k.resolving
                && !(k.seq != 0 && self.is_adopted(k.seq)))
    }

    fn foreign_of(
        &self,
        idx: usize,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.foreign[idx].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that entry `seq` lost on target `idx` to a version it kept.
    fn mark_lost(&self, idx: usize, seq: u64) {
        let mut set = self.lost[idx].lock().unwrap_or_else(|p| p.into_inner());
        set.insert(seq);
        while set.len() > LOST_KEPT {
            set.pop_first();
        }
    }

    /// Whether entry `seq` lost on target `idx` to a version it kept: the
    /// target does not acknowledge it (guarantee 9).
    pub(crate) fn lost_at(&self, idx: usize, seq: u64) -> bool {
        let set = self.lost[idx].lock().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && set.contains(&seq)
    }

    /// Whether target `idx` holds a version of `key` that is not this
    /// log's (guarantee 9).
    pub(crate) fn holds_foreign(&self, idx: usize, key: &str) -> bool {
        let set = self.foreign_of(idx);
        !set.is_empty() && set.contains(key)
    }

    fn on_primary(&self, t: &TargetHandle) -> bool {
        self.acting.is(t.idx)
    }

    fn acting_primary(&self) -> &Arc<TargetHandle> {
        &self.targets[self.acting.get()]
    }

    /// What a write of `e` carries: this sidecar's tag, or for an entry
    /// that adopted another sidecar's version, that version's tag (its
    /// origin kept, so that sidecar sees its own version, not a conflict).
    fn ours(&self, e: &Entry) -> Stamp {
        Stamp {
            tag: self.our_tag(e),
            seq: e.seq,
            content: e.meta.as_ref().map(|m| m.attributes()).unwrap_or_default(),
        }
    }

    /// The tag of [`Engine::ours`].
    fn our_tag(&self, e: &Entry) -> Tag {
        let adopted = if self.any_adopted.load(Ordering::Acquire) {
            let a = self.adopted.lock().unwrap_or_else(|p| p.into_inner());
            a.get(&e.seq).cloned().flatten()
        } else {
            None
        };
        plan::stamp_tag(&self.origin, e, adopted)
    }

    // ---- side tables ----

    /// The version `t` is known to hold for `key`: the cache, else sled.
    pub(crate) fn known(&self, t: &TargetHandle, key: &str) -> Result<Option<Known>> {
        let generation = {
            let c = self.cache(t);
            if let Some(k) = c.get(key) {
                return Ok(k.clone());
            }
            c.generation
        };
        let k = known_in(self.log.storage().as_ref(), t.name(), key)?.map(|mut k| {
            k.in_sled = true;
            k
        });
        // Read without the cache's lock: a `set_known` meanwhile is newer
        // than what was read, and stays.
        let mut c = self.cache(t);
        if c.generation != generation {
            return Ok(k);
        }
        Ok(c.fill(key, k))
    }

    /// Records what `t` holds for `key`. Kept in sled when a restart needs
    /// it to decide right: another origin's version, a conflict under way,
    /// or a store without metadata (where a version cannot say it is ours).
    /// This sidecar's own versions on stores with metadata live in a
    /// bounded cache only: after a restart or an eviction the next write
    /// finds them by their `walshiporigin` (one HEAD more).
    pub(crate) fn set_known(&self, t: &TargetHandle, key: &str, k: Option<&Known>) -> Result<()> {
        let storage = self.log.storage();
        let generation = storage.generation();
        let sled_key = versions_key(t.name(), key);
        let persist = k.is_some_and(|k| {
            k.tag.origin != self.origin
                || k.resolving
                || k.conflict.is_some()
                || t.caps().contains(Caps::NO_ATTRS)
        });
        let cached_before = self
            .cache(t)
            .get(key)
            .map(|prev| prev.as_ref().is_some_and(|p| p.in_sled));
        let in_sled_before = match cached_before {
            Some(b) => b,
            // Not cached: only sled can say (read without the cache's lock).
            None => storage.side(Side::Versions, &sled_key)?.is_some(),
        };
        let cached = match k {
            Some(k) if persist => {
                storage.set_side(
                    Side::Versions,
                    &sled_key,
                    Some(&encode_json("a known version", k)?),
                )?;
                Some(Known {
                    in_sled: true,
                    ..k.clone()
                })
            }
            other => {
                if in_sled_before {
                    storage.set_side(Side::Versions, &sled_key, None)?;
                }
                other.map(|k| Known {
                    in_sled: false,
                    ..k.clone()
                })
            }
        };
        {
            let mut foreign = self.foreign_of(t.idx);
            if cached.as_ref().is_some_and(|k| self.is_foreign(k)) {
                foreign.insert(key.to_string());
            } else if !foreign.is_empty() {
                foreign.remove(key);
            }
        }
        let mut c = self.cache(t);
        if c.generation == generation {
            c.insert(key, cached);
        } else {
            // Written into a storage that reopened meanwhile: sled must
            // say again.
            c.map.remove(key);
        }
        Ok(())
    }

    /// Makes conflict records written since `generation` durable, off the
    /// async threads (fdatasync); fails if the log reopened meanwhile (see
    /// `LogStorage::sync_since`).
    pub(crate) async fn sync_since(&self, generation: u64) -> Result<()> {
        let storage = self.log.storage().clone();
        tokio::task::spawn_blocking(move || storage.sync_since(generation))
            .await
            .map_err(|e| Error::io("syncing conflict records", std::io::Error::other(e)))?
    }

    /// `t`'s cache, emptied first when the log reopened since it was
    /// filled (see [`KnownCache`]).
    fn cache(&self, t: &TargetHandle) -> std::sync::MutexGuard<'_, KnownCache> {
        let mut c = self.cache[t.idx].lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.log.storage().generation();
        if c.generation != generation {
            c.map.clear();
            c.generation = generation;
        }
        c
    }

    fn record(&self, id: u64) -> Result<Option<ConflictRecord>> {
        match self
            .log
            .storage()
            .side(Side::Conflicts, &id.to_be_bytes())?
        {
            Some(b) => decode_json("a conflict record", &b).map(Some),
            None => Ok(None),
        }
    }

    fn set_record(&self, id: u64, r: Option<&ConflictRecord>) -> Result<()> {
        let bytes = r.map(|r| encode_json("a conflict record", r)).transpose()?;
        self.log
            .storage()
            .set_side(Side::Conflicts, &id.to_be_bytes(), bytes.as_deref())
    }

    /// Every open manual conflict, oldest first.
    pub(crate) fn list(&self) -> Result<Vec<ConflictRecord>> {
        list_conflicts(self.log.storage().as_ref())
    }

    // ---- applying ----

    /// Applies `e` to `t`. An error means "not applied yet": the shipper
    /// retries.
    pub(crate) async fn apply(&self, t: &TargetHandle, e: &Entry) -> Result<()> {
        loop {
            match self.apply_once(t, e).await? {
                Applied::Done => return Ok(()),
                // The conflict holding the key was resolved meanwhile (what
                // is known of the key changed), or an adoption was under
                // way: decide again.
                Applied::Again => continue,
            }
        }
    }

    fn who(&self, t: &TargetHandle) -> Who<'_> {
        Who {
            origin: &self.origin,
            strategy: self.strategy,
            on_primary: self.on_primary(t),
        }
    }

    async fn apply_once(&self, t: &TargetHandle, e: &Entry) -> Result<Applied> {
        let forced = e.seq <= t.force_until.load(Ordering::Acquire);
        let known = match self.known(t, &e.key) {
            // Replay writes over whatever is there, so a damaged record of
            // the key's version is no obstacle: the write records it anew.
            Err(Error::Damaged(reason)) if forced => {
                tracing::warn!(target = %t.name(), key = %e.key, %reason, "replay writes over a damaged version record");
                None
            }
            other => other?,
        };
        // Read before `is_adopted`: an adoption done by then has recorded
        // its entry, one under way is seen as such.
        let adopting = self.adopting.load(Ordering::SeqCst) > 0;
        match plan::first_step(
            self.who(t),
            forced,
            self.is_adopted(e.seq),
            adopting,
            || self.our_tag(e),
            known.as_ref(),
        ) {
            First::Force => self.force(t, e, known).await?,
            First::Hold(id) => {
                if !self.hold(id, e).await? {
                    // A record of the key still naming the gone conflict
                    // is stale (the resolution normally rewrites it):
                    // clear it, so that the next pass cannot meet it again.
                    if let Some(mut now) = self.known(t, &e.key)?
                        && now.conflict == Some(id)
                    {
                        now.conflict = None;
                        self.set_known(t, &e.key, Some(&now))?;
                    }
                    return Ok(Applied::Again);
                }
            }
            First::Wait => {
                tokio::time::sleep(ADOPTING_PAUSE).await;
                return Ok(Applied::Again);
            }
            First::KeepTheirs { settle, tag } => {
                if let Some(k) = known.filter(|_| settle) {
                    self.settled(t, &e.key, k)?;
                }
                // The kept version wins over this entry too: it is not the
                // log's newest, so it is adopted again (guarantee 9).
                self.mark_lost(t.idx, e.seq);
                self.foreign_of(t.idx).insert(e.key.clone());
                self.adopt(t, &e.key, &object_path(&e.key), None, tag)
                    .await?;
            }
            First::Write => match e.op {
                Op::Put => self.put(t, e, known).await?,
                Op::Delete => self.delete(t, e, known).await?,
            },
        }
        Ok(Applied::Done)
    }

    /// Replay: this log's version over whatever the target holds.
    async fn force(&self, t: &TargetHandle, e: &Entry, known: Option<Known>) -> Result<()> {
        let path = object_path(&e.key);
        match e.op {
            Op::Put => {
                let stamp = self.ours(e);
                let r = self
                    .put_with(t, &path, e.value.clone(), PutMode::Overwrite, &stamp)
                    .await?;
                self.wrote(t, &e.key, None, r, stamp)?;
            }
            Op::Delete => self.remove(t, &e.key, &path, false).await?,
        }
        if let Some(id) = known.and_then(|k| k.conflict) {
            let _g = self.claims.lock(&id).await;
            if self.record(id)?.is_some() {
                self.set_record(id, None)?;
                self.metrics.conflicts_resolved.inc();
            }
        }
        Ok(())
    }

    async fn put(&self, t: &TargetHandle, e: &Entry, mut known: Option<Known>) -> Result<()> {
        let path = object_path(&e.key);
        // Creates refused as "exists" where a HEAD then found nothing.
        let mut absent_seen = 0;
        for _ in 0..MAX_ROUNDS {
            let stamp = self.ours(e);
            let created = known.is_none();
            if let Put::Written(r) = self
                .try_put(t, &path, e.value.clone(), known.as_ref(), &stamp)
                .await?
            {
                return self.wrote(t, &e.key, known.as_ref(), r, stamp);
            }
            let cur = match self.fetch(t, &path, false).await? {
                Some(head) if plan::read_body(&head) => self.fetch(t, &path, true).await?,
                other => other,
            };
            let mine = match &cur {
                Some(c) => Some(self.is_ours(t, c, e).await?),
                None => {
                    absent_seen += u32::from(created);
                    None
                }
            };
            match plan::after_refused(
                &self.origin,
                e,
                created,
                absent_seen,
                cur.as_ref().zip(mine),
            ) {
                Refused::Absent => known = None,
                Refused::Blocked => {
                    return Err(Error::Rejected {
                        target: t.name().to_string(),
                        seq: e.seq,
                        key: e.key.clone(),
                        reason: "the store says something exists at the key's path but holds no object there (a directory of other keys stands at it)".into(),
                    });
                }
                // Already there (a re-ship): record it, nothing to write.
                Refused::There(mine) => return self.set_known(t, &e.key, Some(&mine)),
                Refused::Over(mine) => known = Some(mine),
                Refused::Conflict => {
                    let before = known.and_then(|k| k.etag);
                    let cur = cur.ok_or_else(|| self.changed_too_often(t, &e.key))?;
                    return self.conflict(t, e, cur, before).await;
                }
            }
        }
        Err(self.changed_too_often(t, &e.key))
    }

    async fn delete(&self, t: &TargetHandle, e: &Entry, known: Option<Known>) -> Result<()> {
        let path = object_path(&e.key);
        let resolving = known.as_ref().is_some_and(|k| k.resolving);
        let head = self.fetch(t, &path, false).await?;
        let cur = match plan::delete_step(&self.origin, known.as_ref(), head.as_ref()) {
            Delete::Gone => {
                self.set_known(t, &e.key, None)?;
                if resolving {
                    self.metrics.conflicts_resolved.inc();
                }
                return Ok(());
            }
            Delete::Remove => return self.remove(t, &e.key, &path, resolving).await,
            Delete::Judge => head,
            Delete::ReadBody => self.fetch(t, &path, true).await?,
        };
        let Some(cur) = cur else {
            return self.remove(t, &e.key, &path, resolving).await;
        };
        if self.is_ours(t, &cur, e).await? {
            return self.remove(t, &e.key, &path, resolving).await;
        }
        let before = known.and_then(|k| k.etag);
        self.conflict(t, e, cur, before).await
    }

    async fn remove(
        &self,
        t: &TargetHandle,
        key: &str,
        path: &Path,
        resolving: bool,
    ) -> Result<()> {
        match t.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::target(t.name(), e)),
        }
        self.set_known(t, key, None)?;
        if resolving {
            self.metrics.conflicts_resolved.inc();
        }
        Ok(())
    }

    fn wrote(
        &self,
        t: &TargetHandle,
        key: &str,
        before: Option<&Known>,
        r: PutResult,
        stamp: Stamp,
    ) -> Result<()> {
        let seq = plan::recorded_seq(
            &self.origin,
            &stamp.tag,
            stamp.seq,
            self.is_adopted(stamp.seq),
        );
        let k = plan::written(r.e_tag, r.version, stamp.tag, seq);
        self.set_known(t, key, Some(&k))?;
        if before.is_some_and(|b| b.resolving) {
            self.metrics.conflicts_resolved.inc();
        }
        Ok(())
    }

    /// A kept foreign version's decision is carried out: count it.
    fn settled(&self, t: &TargetHandle, key: &str, mut k: Known) -> Result<()> {
        k.resolving = false;
        self.set_known(t, key, Some(&k))?;
        self.metrics.conflicts_resolved.inc();
        Ok(())
    }

    fn changed_too_often(&self, t: &TargetHandle, key: &str) -> Error {
        Error::KeyContended {
            key: key.to_string(),
            target: t.name().to_string(),
            rounds: MAX_ROUNDS,
        }
    }

    /// One write of `bytes`, conditional on `over` (the version expected
    /// there; `None`: nothing expected).
    async fn try_put(
        &self,
        t: &TargetHandle,
        path: &Path,
        bytes: Bytes,
        over: Option<&Known>,
        stamp: &Stamp,
    ) -> Result<Put> {
        loop {
            let mode = match plan::put_mode(over, t.caps()) {
                Mode::Store(mode) => mode,
                Mode::HeadFirst => {
                    let cur = self.fetch(t, path, false).await?;
                    if !plan::holds_expected(over, cur.as_ref()) {
                        return Ok(Put::Changed);
                    }
                    PutMode::Overwrite
                }
            };
            let wanted = plan::lacked_by(&mode);
            match self.put_with(t, path, bytes.clone(), mode, stamp).await {
                Ok(r) => return Ok(Put::Written(r)),
                Err(Error::Target { source, .. })
                    if matches!(
                        *source,
                        object_store::Error::Precondition { .. }
                            | object_store::Error::AlreadyExists { .. }
                    ) =>
                {
                    return Ok(Put::Changed);
                }
                // The mode is missing here (now learnt): go by HEAD.
                Err(Error::Target { source, .. })
                    if matches!(*source, object_store::Error::NotImplemented { .. })
                        && wanted.is_some_and(|c| t.caps().contains(c)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// What `t` holds at `path` (`body`: with its bytes).
    async fn fetch(&self, t: &TargetHandle, path: &Path, body: bool) -> Result<Option<Found>> {
        fetch(&t.store, path, body)
            .await
            .map_err(|e| Error::target(t.name(), e))
    }

    /// Whether `cur` is a version this sidecar wrote (see the module doc).
    async fn is_ours(&self, t: &TargetHandle, cur: &Found, e: &Entry) -> Result<bool> {
        let (from, to) = match plan::owner(&self.origin, &self.our_tag(e), e, cur) {
            Owner::Ours => return Ok(true),
            Owner::Theirs => return Ok(false),
            Owner::AskLog => {
                match plan::own_scan(t.opened_cursor, self.log.first(), e.seq, MAX_OWN_SCAN) {
                    Some(range) => range,
                    None => return Ok(false),
                }
            }
        };
        let Some(bytes) = &cur.bytes else {
            return Ok(false);
        };
        // Up to a million entries: on a blocking thread, not an async one.
        let (crc, len) = (crc32fast::hash(bytes), bytes.len());
        let (storage, key) = (self.log.storage().clone(), e.key.clone());
        tokio::task::spawn_blocking(move || {
            let mut found = false;
            storage.scan(from, to, &mut |seq, rec| {
                if let Ok(entry) = crate::codec::decode_ref(seq, rec) {
                    found = entry.key == key.as_str()
                        && entry.op == Op::Put
                        && entry.value.len() == len
                        && crc32fast::hash(entry.value) == crc;
                }
                !found
            })?;
            Ok(found)
        })
        .await
        .map_err(|e| {
            Error::io(
                "looking for this sidecar's own version in the log",
                std::io::Error::other(e),
            )
        })?
    }

    // ---- conflicts ----

    /// `before`: the e-tag this sidecar expected there.
    async fn conflict(
        &self,
        t: &TargetHandle,
        e: &Entry,
        cur: Found,
        before: Option<String>,
    ) -> Result<()> {
        let path = object_path(&e.key);
        let ours = self.ours(e);
        let verdict = conflict::decide(self.strategy, &ours.tag, &cur.tag, self.on_primary(t));
        self.metrics.conflicts_detected.inc();
        tracing::info!(target = %t.name(), key = %e.key, seq = e.seq, theirs_origin = %cur.tag.origin, theirs_ts_ms = cur.tag.ts_ms, ?verdict, "conflict");
        let mut theirs = cur.known(0);
        theirs.resolving = true;
        self.set_known(t, &e.key, Some(&theirs))?;
        let value = (e.op == Op::Put).then(|| e.value.clone());
        match verdict {
            Verdict::Theirs => {
                self.mark_lost(t.idx, e.seq);
                self.settled(t, &e.key, theirs)?;
                let tag = cur.has_origin.then(|| cur.tag.clone());
                let found = cur.bytes.clone().map(|b| (b, cur.content.clone()));
                self.adopt(t, &e.key, &path, found, tag).await
            }
            Verdict::Ours => self.install(t, &e.key, &path, value, ours, &theirs).await,
            Verdict::Primary => {
                let (bytes, stamp) = self.primary_version(&e.key, value, ours).await?;
                self.install(t, &e.key, &path, bytes, stamp, &theirs).await
            }
            Verdict::Merge => {
                let mut cur = cur;
                if cur.bytes.is_none() && value.is_some() {
                    match self.fetch(t, &path, true).await? {
                        // Read again: the conditional write below is on
                        // this version.
                        Some(again) => {
                            theirs.etag = again.etag.clone();
                            theirs.version = again.version.clone();
                            self.set_known(t, &e.key, Some(&theirs))?;
                            cur = again;
                        }
                        None => return Err(self.changed_too_often(t, &e.key)),
                    }
                }
                let merged = match (&value, &cur.bytes) {
                    (Some(mine), Some(other)) => {
                        let (newer, older) = if plan::merge_order(&ours.tag, &cur.tag) {
                            (mine, other)
                        } else {
                            (other, mine)
                        };
                        self.merge.merge(&e.key, newer, older)
                    }
                    _ => None,
                };
                match merged {
                    Some(m) => {
                        let stamp = Stamp {
                            tag: plan::merged_tag(&self.origin, &ours.tag, &cur.tag),
                            seq: e.seq,
                            content: ours.content.clone(),
                        };
                        self.install(t, &e.key, &path, Some(Bytes::from(m)), stamp, &theirs)
                            .await
                    }
                    None => self.open_record(t, e, &cur, theirs, before).await,
                }
            }
            Verdict::Manual => self.open_record(t, e, &cur, theirs, before).await,
        }
    }

    /// Guarantee 9: a foreign version on `t` that the strategy (or a
    /// resolution) keeps becomes this log's newest entry of `key`, so every
    /// target converges to it and reads serve it with its seq. `bytes` when
    /// already read; else they are fetched from `t`.
    async fn adopt(
        &self,
        t: &TargetHandle,
        key: &str,
        path: &Path,
        found: Option<(Bytes, Attributes)>,
        tag: Option<Tag>,
    ) -> Result<()> {
        let (bytes, attrs) = match found {
            Some(b) => b,
            None => match self
                .fetch(t, path, true)
                .await?
                .and_then(|f| f.bytes.map(|b| (b, f.content)))
            {
                Some(b) => b,
                // Gone meanwhile: the next entry of the key meets what is there.
                None => return Ok(()),
            },
        };
        if bytes.len() as u64 > self.max_object_bytes {
            // Not adopted: the target keeps it and stays out of this key's
            // acknowledgements and reads (guarantee 9) until resolved.
            tracing::error!(target = %t.name(), key, size = bytes.len(), max = self.max_object_bytes, "a foreign version that wins is over max_object_bytes and cannot become a log entry; write the key again, or replay the target, to settle it");
            return Ok(());
        }
        let k = crate::key::Key::parse(key)?;
        // From before the entry is readable in the log until it is
        // recorded as adopted (an error or a drop ends it too).
        let adopting = Adopting::start(&self.adopting);
        let appended = self.log.append(adopted_write(k, bytes, &attrs)).await?;
        let list: Vec<(u64, Option<Tag>)> = {
            let mut a = self.adopted.lock().unwrap_or_else(|p| p.into_inner());
            a.insert(appended.seq, tag);
            self.any_adopted.store(true, Ordering::Release);
            a.iter().map(|(s, t)| (*s, t.clone())).collect()
        };
        drop(adopting);
        let generation = self.log.storage().generation();
        self.log
            .storage()
            .set_meta(ADOPTED_META, &encode_json("the adopted entries", &list)?)?;
        self.sync_since(generation).await?;
        tracing::info!(target = %t.name(), key, seq = appended.seq, "a version walship did not write wins: adopted as a new log entry, so every target converges to it");
        Ok(())
    }

    /// Whether `seq` is an entry made by [`Engine::adopt`]: it replaces the
    /// foreign version it copies whatever the strategy says (the bytes are
    /// that version's).
    fn is_adopted(&self, seq: u64) -> bool {
        self.any_adopted.load(Ordering::Acquire)
            && self
                .adopted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&seq)
    }

    /// Loads the adopted entries recorded in the log's metadata.
    pub(crate) fn load_adopted(&self) -> Result<()> {
        if let Some(b) = self.log.storage().meta(ADOPTED_META)? {
            let list: Vec<(u64, Option<Tag>)> = decode_json("the adopted entries", &b)?;
            let mut a = self.adopted.lock().unwrap_or_else(|p| p.into_inner());
            a.extend(list);
            self.any_adopted.store(!a.is_empty(), Ordering::Release);
        }
        Ok(())
    }

    /// Writes (or, `None`, deletes) the chosen version over `over`.
    async fn install(
        &self,
        t: &TargetHandle,
        key: &str,
        path: &Path,
        bytes: Option<Bytes>,
        stamp: Stamp,
        over: &Known,
    ) -> Result<()> {
        match bytes {
            Some(b) => match self.try_put(t, path, b, Some(over), &stamp).await? {
                Put::Written(r) => self.wrote(t, key, Some(over), r, stamp),
                // Changed again: the retry meets the newer version.
                Put::Changed => Err(self.changed_too_often(t, key)),
            },
            None => self.remove(t, key, path, over.resolving).await,
        }
    }

    /// primary_wins on a replica: the acting primary's version of `key`, or
    /// this entry's when the primary holds something older (or nothing).
    async fn primary_version(
        &self,
        key: &str,
        mine: Option<Bytes>,
        ours: Stamp,
    ) -> Result<(Option<Bytes>, Stamp)> {
        let p = self.acting_primary().clone();
        match self.fetch(&p, &object_path(key), true).await? {
            Some(pv) if pv.tag > ours.tag => {
                let seq = plan::found_seq(&self.origin, &pv);
                Ok((
                    pv.bytes,
                    Stamp {
                        tag: pv.tag,
                        seq,
                        content: pv.content,
                    },
                ))
            }
            _ => Ok((mine, ours)),
        }
    }

    async fn open_record(
        &self,
        t: &TargetHandle,
        e: &Entry,
        cur: &Found,
        mut theirs: Known,
        before: Option<String>,
    ) -> Result<()> {
        let storage = self.log.storage();
        let generation = storage.generation();
        let id = {
            let _ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
            let id = match storage.meta(NEXT_ID_META)? {
                Some(b) => b.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(1),
                None => 1,
            };
            storage.set_meta(NEXT_ID_META, &(id + 1).to_be_bytes())?;
            id
        };
        let _g = self.claims.lock(&id).await;
        let rec = ConflictRecord {
            id,
            key: e.key.clone(),
            target: t.name().to_string(),
            detected_ms: now_ms(),
            seq: e.seq,
            op: e.op.as_str().to_string(),
            primary: VersionInfo {
                etag: before,
                ts_ms: e.ts_ms,
                size: e.value.len() as u64,
                origin: self.origin.clone(),
            },
            replica: cur.info(),
        };
        self.set_record(id, Some(&rec))?;
        theirs.resolving = false;
        theirs.conflict = Some(id);
        self.set_known(t, &e.key, Some(&theirs))?;
        self.sync_since(generation).await?;
        tracing::warn!(target = %t.name(), key = %e.key, id, "conflict waits for `walship conflicts resolve {id} --keep primary|replica`");
        Ok(())
    }

    /// A later entry of a key held by manual conflict `id`: it waits too,
    /// and the record now stands for it. `false` when the conflict is gone
    /// by the time its lock is ours (resolved, or settled by a resync,
    /// meanwhile): the entry is not held and must be applied as usual, or
    /// the target would keep the resolved, older version.
    async fn hold(&self, id: u64, e: &Entry) -> Result<bool> {
        let _g = self.claims.lock(&id).await;
        // A record of another key under this id is not this key's conflict.
        let Some(mut rec) = self.record(id)?.filter(|r| r.key == e.key) else {
            return Ok(false);
        };
        rec.seq = e.seq;
        rec.op = e.op.as_str().to_string();
        rec.primary.ts_ms = e.ts_ms;
        rec.primary.size = e.value.len() as u64;
        self.set_record(id, Some(&rec))?;
        Ok(true)
    }

    /// `conflicts resolve ID --keep primary|replica`.
    pub(crate) async fn resolve(&self, id: u64, keep: Keep) -> Result<ConflictRecord> {
        let _g = self.claims.lock(&id).await;
        let generation = self.log.storage().generation();
        let Some(mut rec) = self.record(id)? else {
            return Err(Error::UnknownConflict(id));
        };
        let t = self
            .targets
            .iter()
            .find(|t| t.name() == rec.target)
            .ok_or_else(|| Error::UnknownTarget(rec.target.clone()))?
            .clone();
        if t.state() == crate::status::TargetState::Syncing {
            // The copy settles the target's conflicts when it ends; a
            // resolution written meanwhile could land over the copy.
            return Err(Error::ResolveRefused(format!(
                "{} is being resynced from the acting primary, which settles conflict {id} when the copy ends; look again with `walship conflicts` afterwards",
                rec.target
            )));
        }
        let path = object_path(&rec.key);
        let cur = self.fetch(&t, &path, false).await?;
        let now = cur.as_ref().and_then(|c| c.etag.clone());
        if cur.is_none() || now != rec.replica.etag {
            // Someone changed it again: show them what is there now.
            if let Some(c) = &cur {
                rec.replica = c.info();
            } else {
                rec.replica.etag = None;
                rec.replica.size = 0;
            }
            self.set_record(id, Some(&rec))?;
            self.sync_since(generation).await?;
            return Err(Error::ResolveRefused(format!(
                "key {:?} on target {} changed since conflict {id} was recorded (it is now {}); the record shows the new version: look again with `walship conflicts` and resolve",
                rec.key,
                rec.target,
                now.map(|e| format!("e-tag {e}"))
                    .unwrap_or_else(|| "absent".into())
            )));
        }
        let cur = cur.expect("checked above");
        let mut over = cur.known(0);
        match keep {
            Keep::Replica => {
                self.set_known(&t, &rec.key, Some(&over))?;
                let tag = cur.has_origin.then(|| cur.tag.clone());
                self.adopt(&t, &rec.key, &path, None, tag).await?;
            }
            Keep::Primary => {
                let entry = crate::log::entry_at(self.log.storage().as_ref(), rec.seq)?;
                let logged = entry
                    .as_ref()
                    .map(|e| ((e.op == Op::Put).then(|| e.value.clone()), self.ours(e)));
                let (bytes, stamp) = if self.on_primary(&t) {
                    logged.ok_or_else(|| Error::ResolveRefused(format!(
                        "the log no longer holds seq {} of key {:?}; run `walship resync {}` to copy the acting primary instead",
                        rec.seq, rec.key, rec.target
                    )))?
                } else {
                    // Exactly what the acting primary holds, once it has
                    // this log's entries of the key.
                    let p = self.acting_primary().clone();
                    if p.cursor() < rec.seq {
                        return Err(Error::ResolveRefused(format!(
                            "the acting primary {} has not applied seq {} of key {:?} yet; resolve again once it has (walship cursors)",
                            p.name(),
                            rec.seq,
                            rec.key
                        )));
                    }
                    match self.fetch(&p, &path, true).await? {
                        Some(pv) => {
                            let seq = plan::found_seq(&self.origin, &pv);
                            (
                                pv.bytes,
                                Stamp {
                                    tag: pv.tag,
                                    seq,
                                    content: pv.content,
                                },
                            )
                        }
                        None => (
                            None,
                            Stamp {
                                tag: Tag {
                                    ts_ms: 0,
                                    origin: String::new(),
                                },
                                seq: 0,
                                content: Attributes::new(),
                            },
                        ),
                    }
                };
                over.resolving = false;
                match bytes {
                    Some(b) => match self.try_put(&t, &path, b, Some(&over), &stamp).await? {
                        Put::Written(r) => self.wrote(&t, &rec.key, None, r, stamp)?,
                        Put::Changed => {
                            return Err(Error::ResolveRefused(format!(
                                "key {:?} on target {} changed while resolving conflict {id}; look again with `walship conflicts`",
                                rec.key, rec.target
                            )));
                        }
                    },
                    None => self.remove(&t, &rec.key, &path, false).await?,
                }
            }
        }
        self.set_record(id, None)?;
        self.sync_since(generation).await?;
        self.metrics.conflicts_resolved.inc();
        tracing::info!(target = %rec.target, key = %rec.key, id, ?keep, "conflict resolved");
        Ok(rec)
    }

    /// After a resync copied the acting primary over `t`: its open
    /// conflicts are settled (the primary's version is there now).
    pub(crate) fn resynced(&self, t: &TargetHandle) -> Result<()> {
        for rec in self.list()? {
            if rec.target == t.name() {
                self.set_record(rec.id, None)?;
                if let Some(mut k) = self.known(t, &rec.key)? {
                    k.conflict = None;
                    self.set_known(t, &rec.key, Some(&k))?;
                }
                self.metrics.conflicts_resolved.inc();
            }
        }
        Ok(())
    }

    /// Copies `path` from `source` to `t` unconditionally (resync), with its
    /// metadata, and records it as known. A version without an origin came
    /// from this sidecar's log through the primary: it is recorded as ours.
    pub(crate) async fn copy(
        &self,
        source: &TargetHandle,
        t: &TargetHandle,
        path: &Path,
    ) -> Result<()> {
        let Some(v) = self.fetch(source, path, true).await? else {
            // Deleted since the listing: the log ships the delete.
            return Ok(());
        };
        let (tag, seq) = plan::copied(&self.origin, &v);
        let stamp = Stamp {
            tag,
            seq,
            content: v.content,
        };
        let bytes = v.bytes.unwrap_or_default();
        let r = self
            .put_with(t, path, bytes, PutMode::Overwrite, &stamp)
            .await?;
        self.wrote(t, path.as_ref(), None, r, stamp)
    }

    /// One put in `mode` with the stamp as metadata (dropped, once learnt,
    /// where the store keeps none).
    async fn put_with(
        &self,
        t: &TargetHandle,
        path: &Path,
        bytes: Bytes,
        mode: PutMode,
        stamp: &Stamp,
    ) -> Result<PutResult> {
        loop {
            let caps = t.caps();
            let mut attributes = Attributes::new();
            if !caps.contains(Caps::NO_ATTRS) {
                attributes = if t.cfg.url.starts_with("az") {
                    crate::object::azure_safe(&stamp.content)
                } else {
                    stamp.content.clone()
                };
                for (name, value) in [
                    (META_ORIGIN, stamp.tag.origin.clone()),
                    (META_TS, stamp.tag.ts_ms.to_string()),
                    (META_SEQ, stamp.seq.to_string()),
                ] {
                    if !value.is_empty() {
                        attributes.insert(
                            Attribute::Metadata(name.into()),
                            AttributeValue::from(value),
                        );
                    }
                }
            }
            let opts = PutOptions {
                mode: mode.clone(),
                attributes,
                ..Default::default()
            };
            match t
                .store
                .put_opts(path, PutPayload::from_bytes(bytes.clone()), opts)
                .await
            {
                Err(object_store::Error::NotImplemented { operation, .. })
                    if t.learn(&operation) == Some(Caps::NO_ATTRS) => {}
                other => return other.map_err(|e| Error::target(t.name(), e)),
            }
        }
    }
}

/// The log entry adopting a foreign version: its bytes with the attributes
/// its store kept (without them when they are over what an entry holds).
fn adopted_write(key: crate::key::Key, bytes: Bytes, attrs: &Attributes) -> crate::log::Write {
    let mut w = crate::log::Write::put(key, bytes.clone());
    let meta = crate::object::ObjectMeta::from_attributes(&bytes, attrs);
    match meta.check_size() {
        Ok(()) => w.meta = Some(Arc::new(meta)),
        Err(why) => {
            tracing::warn!(key = %w.key, %why, "an adopted version's attributes are too large for a log entry; adopted without them")
        }
    }
    w
}

/// What `store` holds at `path`, with its walship metadata.
async fn fetch(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    body: bool,
) -> object_store::Result<Option<Found>> {
    let r = match store
        .get_opts(path, GetOptions::default().with_head(!body))
        .await
    {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let origin = meta_str(&r.attributes, META_ORIGIN).map(str::to_string);
    let ts = meta_str(&r.attributes, META_TS).and_then(|s| s.parse::<u64>().ok());
    let seq = meta_str(&r.attributes, META_SEQ).and_then(|s| s.parse::<u64>().ok());
    let meta = r.meta.clone();
    let content: Attributes = r
        .attributes
        .iter()
        .filter(|(k, _)| !conflict::is_walship_meta(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let bytes = if body { Some(r.bytes().await?) } else { None };
    Ok(Some(Found {
        etag: meta.e_tag,
        version: meta.version,
        size: meta.size,
        tag: Tag {
            ts_ms: ts.unwrap_or_else(|| meta.last_modified.timestamp_millis().max(0) as u64),
            origin: origin.clone().unwrap_or_default(),
        },
        seq,
        has_origin: origin.is_some(),
        bytes,
        content,
    }))
}

/// The version walship knows `target` holds for `key`.
pub(crate) fn known_in(
    storage: &dyn crate::storage::LogStorage,
    target: &str,
    key: &str,
) -> Result<Option<Known>> {
    match storage.side(Side::Versions, &versions_key(target, key))? {
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::Damaged(format!(
                "the version of key {key:?} walship recorded for target {target} does not decode ({e}); \
                 the data dir is damaged there: `walship replay {target} --from SEQ --execute`, \
                 SEQ the entry shipping stopped at (or earlier), writes the log's versions over \
                 the target and records them anew; or restore the data dir from a backup"
            ))
        }),
        None => Ok(None),
    }
}

/// Every open manual conflict in a log's side table, oldest first.
pub fn list_conflicts(storage: &dyn crate::storage::LogStorage) -> Result<Vec<ConflictRecord>> {
    storage
        .side_scan(Side::Conflicts, b"")?
        .into_iter()
        .map(|(_, v)| decode_json("a conflict record", &v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(etag: &str) -> Known {
        plan::written(Some(etag.into()), None, Tag::default(), 1)
    }

    #[test]
    fn a_version_read_from_sled_does_not_replace_one_recorded_meanwhile() {
        let mut c = KnownCache::default();
        // Read "old" from sled, while a write recorded "new".
        c.insert("key", Some(k("new")));
        assert_eq!(c.fill("key", Some(k("old"))), Some(k("new")));
        assert_eq!(c.get("key"), Some(&Some(k("new"))));
        // Recorded absent meanwhile: absent it is.
        c.insert("gone", None);
        assert_eq!(c.fill("gone", Some(k("old"))), None);
        // Nothing cached: what was read is cached.
        assert_eq!(c.fill("other", Some(k("read"))), Some(k("read")));
        assert_eq!(c.get("other"), Some(&Some(k("read"))));
    }
}
