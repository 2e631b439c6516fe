//! The durable log with group commit.
//!
//! Protocol: writers hand their entry to one committer thread and wait. The
//! committer takes everything queued (a lone writer is not delayed, many
//! writers share one flush), gives each entry the next `seq` and a timestamp
//! that never goes backwards, appends the batch, makes it durable with one
//! `sync`, and only then publishes the new durable head and answers the
//! writers. So:
//!
//! - a seq is acknowledged only after the flush that covers it (guarantee 1);
//! - readers (shippers) never see past the durable head;
//! - seqs are gapless: after a failed flush (or any failed I/O of the
//!   storage, which can make sled refuse every later write) the committer
//!   reopens the storage from disk and removes what was not acknowledged
//!   before it takes writes again, so no later batch reuses or skips a seq.
//!
//! Positions, written once here (every other module refers to this):
//!
//! ```text
//!   truncated        kept in the log                      next write
//!   ... first-1 | first ... floor ... cursor ... head | head+1
//! ```
//!
//! - `first ≤ head` once anything was written: truncation never removes the
//!   head entry, so the next seq survives any truncation and restart;
//! - a target's `cursor` is the highest seq it has applied, with every seq
//!   below it; one that ships from the log has `first - 1 ≤ cursor ≤ head`
//!   (one found below `first - 1` is resynced, never skipped ahead);
//! - a target's `floor` is its cursor, or while `syncing` the seq its copy
//!   hands over at; truncation removes only seqs at or below the lowest
//!   floor (and outside retention), so `first - 1 ≤ floor` for every target;
//! - the persisted cursor is at or below the published one (a restart ships
//!   some entries again, never skips one);
//! - lag is `head - cursor` entries and `offset(head) - offset(cursor)`
//!   bytes, offsets counted across truncation (see `offset_of`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{self, Entry, Op};
use crate::error::{Error, Result};
use crate::headfile::HeadMark;
use crate::key::Key;
use crate::storage::{KeyInfo, LogStorage, PendingRecord};
use crate::target_record::TargetRecord;

/// Most entries one flush covers.
const MAX_GROUP: usize = 2048;
/// Most value bytes one flush covers (a group always takes at least one).
const MAX_GROUP_BYTES: usize = 64 << 20;

/// A write to append.
#[derive(Debug, Clone)]
pub struct Write {
    /// Put or delete.
    pub op: Op,
    /// The key.
    pub key: Key,
    /// The value (empty for a delete).
    pub value: Bytes,
    /// The object's metadata (a put; `None` for a delete).
    pub meta: Option<crate::object::Meta>,
    /// What the key's newest version must be for the write to be appended.
    pub cond: Option<crate::object::Precondition>,
}

impl Write {
    /// A put of `value` with its MD5 ETag and crc32, no attributes, no
    /// condition.
    pub fn put(key: Key, value: Bytes) -> Write {
        let meta = Some(std::sync::Arc::new(crate::object::ObjectMeta::of(&value)));
        Write {
            op: Op::Put,
            key,
            value,
            meta,
            cond: None,
        }
    }

    /// A delete of `key`, no condition.
    pub fn delete(key: Key) -> Write {
        Write {
            op: Op::Delete,
            key,
            value: Bytes::new(),
            meta: None,
            cond: None,
        }
    }
}

/// Where an appended write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
    /// Its timestamp, unix ms.
    pub ts_ms: u64,
}

/// What the committer is asked to do.
enum Msg {
    Append(Request),
    /// The storage failed an I/O outside the committer (sled's flusher, a
    /// shipper's record, the key index): reopen it now, so that nothing
    /// waits for the next write to find it refusing every write.
    Recover,
}

struct Request {
    write: Write,
    reply: oneshot::Sender<Result<Appended>>,
    /// Kept until the committer has answered (whether or not anyone still
    /// waits): see [`Log::append_holding`].
    _hold: Option<Box<dyn Send>>,
}

/// Entries read from the log, and the error that stopped the read early.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Good entries, consecutive from the requested seq.
    pub entries: Vec<Entry>,
    /// Stored size of each entry in `entries`.
    pub sizes: Vec<u32>,
    /// Set when an entry could not be read: the entries before it are good.
    pub error: Option<Error>,
}

/// A stretch of the log planned for shipping: for every entry, the index
/// of the last entry of its key in the stretch (the only one applied), its
/// stored size and timestamp. Small stretches carry their entries too.
#[derive(Debug, Default)]
pub struct Window {
    /// Seq of the first entry.
    pub base: u64,
    /// Per entry: index (from `base`) of the last entry of the same key.
    pub owner: Vec<u32>,
    /// Per entry: stored size.
    pub sizes: Vec<u32>,
    /// Per entry: append time, unix ms.
    pub ts_ms: Vec<u64>,
    /// The entries themselves, when the stretch was small enough to keep.
    pub entries: Option<Vec<Entry>>,
    /// Set when an entry could not be read: the stretch ends before it.
    pub error: Option<Error>,
}

impl Window {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.owner.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }
}

/// Lag of a position behind the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// `head - cursor`.
    pub entries: u64,
    /// Bytes of those entries as stored.
    pub bytes: u64,
    /// Age in ms of the oldest entry not yet applied; 0 when caught up.
    pub ms: u64,
}

/// The durable log.
pub struct Log {
    storage: Arc<dyn LogStorage>,
    tx: mpsc::Sender<Msg>,
    head: Arc<watch::Sender<u64>>,
    first: AtomicU64,
    committer: Option<std::thread::JoinHandle<()>>,
    indexer: Option<std::thread::JoinHandle<()>>,
    /// The key index's updates not yet checkpointed to storage; it covers
    /// the head before the head is published.
    pending_index: Arc<Mutex<PendingIndex>>,
    /// The newest committed entries (see `Tail`).
    tail: Arc<Mutex<Tail>>,
    stats: Arc<CommitStats>,
    /// Bytes of stored records from the first kept entry through the head,
    /// as of open, plus every byte committed since ("log offset" of head).
    /// Positions are compared as offsets: lag bytes = offset(head) - offset(cursor).
    /// The offset just before the first kept entry.
    first_offset: AtomicU64,
    /// Offsets were measured afresh on open: persisted cursor offsets do
    /// not apply.
    rebased: bool,
    /// Why writes are refused, while the log could not reopen after a
    /// failed write (set by the committer).
    refusing: Arc<Refusing>,
}

/// The committer's "writes are refused" state, for readers elsewhere
/// (`/readyz`): the flag read without a lock, the reason beside it.
#[derive(Debug, Default)]
struct Refusing {
    on: AtomicBool,
    why: Mutex<String>,
}

/// Counts a writer inside `append` (also across cancellation).
struct ActiveWriter<'a>(&'a AtomicU64);

impl<'a> ActiveWriter<'a> {
    fn enter(n: &'a AtomicU64) -> ActiveWriter<'a> {
        n.fetch_add(1, Ordering::AcqRel);
        ActiveWriter(n)
    }
}

impl Drop for ActiveWriter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counters of the committer.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// Writers inside `append` right now (queued, being flushed, or just
    /// answered and not yet resumed).
    pub active: AtomicU64,
    /// Entries made durable.
    pub entries: AtomicU64,
    /// Offset of the head: bytes of every record kept at open plus every
    /// record committed since.
    pub head_offset: AtomicU64,
    /// Durable flushes (groups).
    pub flushes: AtomicU64,
    /// Time spent gathering groups, µs.
    pub gather_us: AtomicU64,
    /// Time spent appending and syncing, µs.
    pub flush_us: AtomicU64,
    /// Reopens tried after failed writes, whether they worked or not.
    pub reopen_tries: AtomicU64,
}

impl Drop for Log {
    /// Closes the write queue and waits for the committer, so the storage is
    /// released when the last handle to the log is gone.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        for handle in [self.committer.take(), self.indexer.take()]
            .into_iter()
            .flatten()
        {
            let _ = handle.join();
        }
    }
}

impl Log {
    /// Opens the log on `storage`: finds the head, brings the key index up to
    /// it, and starts the committer thread.
    ///
    /// A log that ends below its head record's acknowledged seq is refused
    /// ([`Error::LogShorter`]), and so is a head record that is damaged or
    /// gone while the log says it kept one: nothing is changed, and
    /// `walship repair --accept-loss` is the way on (see [`repair`]).
    pub fn open(storage: Arc<dyn LogStorage>) -> Result<Arc<Log>> {
        let (first, head) = storage.bounds()?.unwrap_or((1, 0));
        check_head(storage.as_ref(), head)?;
        let mut last_ts = 0;
        let mut head_entry = None;
        storage.scan(head, head, &mut |seq, rec| {
            head_entry = Some(codec::decode(seq, rec));
            false
        })?;
        if let Some(e) = head_entry {
            last_ts = e?.ts_ms;
        }
        rebuild_key_index(storage.as_ref(), head)?;
        let (head_abs, first_abs, rebased) = open_offsets(storage.as_ref(), first, head)?;
        let (tx, rx) = mpsc::channel::<Msg>(MAX_GROUP * 4);
        {
            // Weak: the hook must not keep the committer's queue open.
            let tx = tx.downgrade();
            storage.on_failure(Box::new(move || {
                if let Some(tx) = tx.upgrade() {
                    let _ = tx.try_send(Msg::Recover);
                }
            }));
        }
        let head_tx = Arc::new(watch::channel(head).0);
        let stats = Arc::new(CommitStats::default());
        stats.head_offset.store(head_abs, Ordering::Release);
        let (index_tx, index_rx) = std::sync::mpsc::channel();
        let pending_index = Arc::new(Mutex::new(PendingIndex {
            keys: Default::default(),
            covers: head,
        }));
        let indexer = {
            let storage = storage.clone();
            let pending = pending_index.clone();
            std::thread::Builder::new()
                .name("walship-index".into())
                .spawn(move || run_indexer(storage, index_rx, pending, head))
                .map_err(|e| Error::io("starting the key index thread", e))?
        };
        let tail: Arc<Mutex<Tail>> = Default::default();
        let refusing: Arc<Refusing> = Default::default();
        let committer = Committer {
            tail: tail.clone(),
            stats: stats.clone(),
            storage: storage.clone(),
            head: head_tx.clone(),
            indexer: index_tx,
            pending: pending_index.clone(),
            next_seq: head + 1,
            last_ts,
            refusing: refusing.clone(),
            pace: Default::default(),
            poisoned: None,
        };
        let handle = std::thread::Builder::new()
            .name("walship-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| Error::io("starting the log committer thread", e))?;
        Ok(Arc::new(Log {
            storage,
            tx,
            head: head_tx,
            first: AtomicU64::new(first),
            committer: Some(handle),
            indexer: Some(indexer),
            pending_index,
            tail,
            stats,
            first_offset: AtomicU64::new(first_abs),
            rebased,
            refusing,
        }))
    }

    /// Appends a write and returns once it is durable.
    pub async fn append(&self, write: Write) -> Result<Appended> {
        self.append_holding(write, None).await
    }

    /// Like [`Log::append`]; `hold` is dropped only once the committer has
    /// answered the write, even when the caller stops waiting (a client
    /// that went away): what it guards lasts until the entry is in the log
    /// or refused.
    pub async fn append_holding(
        &self,
        write: Write,
        hold: Option<Box<dyn Send>>,
    ) -> Result<Appended> {
        if let Some(m) = &write.meta {
            m.check_size().map_err(Error::BadRequest)?;
        }
        let _active = ActiveWriter::enter(&self.stats.active);
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(Request {
                write,
                reply,
                _hold: hold,
            }))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Why every write is refused for now, if it is: a write failed and
    /// the log could not reopen from disk yet (a full `data_dir`, a disk
    /// that fails its writes). It retries by itself (see `reopen_pace`).
    pub fn refusing_writes(&self) -> Option<String> {
        if !self.refusing.on.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.refusing
                .why
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// The highest durable seq (0 for an empty log).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The lowest seq still kept.
    pub fn first(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// Watches the durable head.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// The storage under the log.
    pub fn storage(&self) -> &Arc<dyn LogStorage> {
        &self.storage
    }

    /// Reads up to `max_entries` / `max_bytes` (at least one entry) from
    /// `from`, never past the durable head. Every entry is crc-checked; a bad
    /// or missing one ends the batch with an error naming its seq.
    pub fn read(&self, from: u64, max_entries: usize, max_bytes: usize) -> ReadBatch {
        let head = self.head();
        let mut out = ReadBatch::default();
        if from > head {
            return out;
        }
        if let Some(e) = self.truncated(from) {
            out.error = Some(e);
            return out;
        }
        let mut expect = from;
        let mut bytes = 0usize;
        let res = self.storage.scan(from, head, &mut |seq, rec| {
            if seq != expect {
                out.error = Some(Error::Corrupt {
                    seq: expect,
                    reason: "the entry is missing from the log".into(),
                });
                return false;
            }
            match codec::decode(seq, rec) {
                Ok(e) => {
                    bytes += rec.len();
                    out.entries.push(e);
                    out.sizes.push(rec.len() as u32);
                    expect += 1;
                    out.entries.len() < max_entries && bytes < max_bytes
                }
                Err(e) => {
                    out.error = Some(e);
                    false
                }
            }
        });
        if let Err(e) = res {
            out.error = Some(e);
        } else if out.error.is_none() && out.entries.is_empty() {
            out.error = Some(Error::Corrupt {
                seq: from,
                reason: "the entry is missing from the log".into(),
            });
        }
        out
    }

    /// The error for reading from `from` when it is below the oldest kept
    /// entry.
    fn truncated(&self, from: u64) -> Option<Error> {
        (from < self.first()).then(|| Error::Corrupt {
            seq: from,
            reason: format!(
                "the entry was truncated from the log (oldest kept is {}); the target needs a resync",
                self.first()
            ),
        })
    }

    /// Plans up to `max_entries` entries from `from` (never past the
    /// durable head): which entry of each key is the last one. Entries are
    /// kept in the window when there are at most `keep_entries` of them and
    /// `keep_bytes` bytes; otherwise only what the plan needs is (bounded
    /// by `max_entries`, whatever the values weigh).
    pub fn plan(
        &self,
        from: u64,
        max_entries: usize,
        keep_entries: usize,
        keep_bytes: usize,
    ) -> Window {
        let head = self.head();
        let mut w = Window {
            base: from,
            ..Window::default()
        };
        if from > head {
            return w;
        }
        if let Some(e) = self.truncated(from) {
            w.error = Some(e);
            return w;
        }
        let to = head.min(from.saturating_add(max_entries as u64).saturating_sub(1));
        if let Some(w) = self.tail.lock().unwrap_or_else(|e| e.into_inner()).plan(
            from,
            to,
            keep_entries,
            keep_bytes,
        ) {
            return w;
        }
        self.plan_stored(w, from, to, keep_entries, keep_bytes)
    }

    /// [`Log::plan`] of `from..=to`, read from the storage.
    fn plan_stored(
        &self,
        mut w: Window,
        from: u64,
        to: u64,
        keep_entries: usize,
        keep_bytes: usize,
    ) -> Window {
        // Distinct keys without an allocation each: their bytes in one
        // arena, a table of their indices, compared by bytes on a hash hit.
        use std::hash::BuildHasher as _;
        let hasher = std::hash::RandomState::new();
        let mut arena: Vec<u8> = Vec::new();
        let mut spans: Vec<(u32, u32)> = Vec::new();
        let mut table: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
        let mut keys: Vec<u32> = Vec::new();
        let mut kept: Vec<Entry> = Vec::new();
        let mut keeping = true;
        let mut bytes = 0usize;
        let mut expect = from;
        let res = self.storage.scan(from, to, &mut |seq, rec| {
            if seq != expect {
                w.error = Some(Error::Corrupt {
                    seq: expect,
                    reason: "the entry is missing from the log".into(),
                });
                return false;
            }
            match codec::decode_ref(seq, rec) {
                Ok(e) => {
                    w.sizes.push(rec.len() as u32);
                    w.ts_ms.push(e.ts_ms);
                    let k = e.key.as_bytes();
                    let span = |s: &u32| {
                        let (at, len) = spans[*s as usize];
                        &arena[at as usize..(at + len) as usize]
                    };
                    let h = hasher.hash_one(k);
                    let id = match table.find(h, |s| span(s) == k) {
                        Some(s) => *s,
                        None => {
                            let s = spans.len() as u32;
                            spans.push((arena.len() as u32, k.len() as u32));
                            arena.extend_from_slice(k);
                            table.insert_unique(h, s, |s| {
                                let (at, len) = spans[*s as usize];
                                hasher.hash_one(&arena[at as usize..(at + len) as usize])
                            });
                            s
                        }
                    };
                    keys.push(id);
                    bytes += rec.len();
                    keeping = keeping && w.sizes.len() <= keep_entries && bytes <= keep_bytes;
                    if keeping {
                        let meta = match e.meta() {
                            Ok(m) => m,
                            Err(err) => {
                                w.error = Some(err);
                                return false;
                            }
                        };
                        kept.push(Entry {
                            seq,
                            ts_ms: e.ts_ms,
                            op: e.op,
                            key: e.key.to_string(),
                            value: bytes::Bytes::copy_from_slice(e.value),
                            meta,
                        });
                    } else if !kept.is_empty() {
                        kept = Vec::new();
                    }
                    expect += 1;
                    true
                }
                Err(e) => {
                    w.error = Some(e);
                    false
                }
            }
        });
        if let Err(e) = res {
            w.error = Some(e);
        } else if w.error.is_none() && w.sizes.is_empty() {
            w.error = Some(Error::Corrupt {
                seq: from,
                reason: "the entry is missing from the log".into(),
            });
        }
        drop(table);
        // owner[i] = the last index with the same key.
        let mut last_of = vec![0u32; spans.len()];
        for (i, id) in keys.iter().enumerate() {
            last_of[*id as usize] = i as u32;
        }
        w.owner = keys.iter().map(|id| last_of[*id as usize]).collect();
        if keeping {
            w.entries = Some(kept);
        }
        w
    }

    /// Lag of `cursor` behind the head, measured on the log (scans the
    /// unapplied entries; see [`Log::lag_at`] for the O(1) form).
    pub fn lag(&self, cursor: u64) -> Result<Lag> {
        lag_of(self.storage.as_ref(), cursor, self.head())
    }

    /// The offset of the head: stored bytes of every entry kept at open plus
    /// every entry committed since. Lag bytes = head offset - cursor offset.
    pub fn head_offset(&self) -> u64 {
        self.stats.head_offset.load(Ordering::Acquire)
    }

    /// The stored bytes of the entries after `from` up to `to`: how far
    /// apart the offsets just after them are.
    pub(crate) fn bytes_between(&self, from: u64, to: u64) -> Result<u64> {
        let mut bytes = 0u64;
        if to > from {
            self.storage.scan(from + 1, to, &mut |_, rec| {
                bytes += rec.len() as u64;
                true
            })?;
        }
        Ok(bytes)
    }

    /// The offset just after `seq`: the head's offset minus the stored bytes
    /// of the entries after `seq`. Scans those entries; used when a cursor is
    /// (re)placed, after which shippers keep their offset up to date.
    pub fn offset_of(&self, seq: u64) -> Result<u64> {
        let head = self.head();
        let head_offset = self.head_offset();
        let mut after = 0u64;
        self.storage
            .scan(seq.saturating_add(1), head, &mut |_, rec| {
                after += rec.len() as u64;
                true
            })?;
        Ok(head_offset.saturating_sub(after))
    }

    /// [`Log::offset_of`] for many cursors in one scan of the log (none for
    /// cursors at the head or just below the first kept entry).
    pub fn offsets_of(&self, cursors: &[u64]) -> Result<Vec<u64>> {
        let head = self.head();
        let head_offset = self.head_offset();
        let edge = self.first().saturating_sub(1);
        if cursors.iter().all(|c| *c >= head || *c == edge) {
            let first_offset = self.first_offset.load(Ordering::Acquire);
            return Ok(cursors
                .iter()
                .map(|c| {
                    if *c >= head {
                        head_offset
                    } else {
                        first_offset
                    }
                })
                .collect());
        }
        let Some(lo) = cursors.iter().copied().min() else {
            return Ok(Vec::new());
        };
        let mut sorted: Vec<u64> = cursors.iter().copied().filter(|c| *c < head).collect();
        sorted.sort_unstable();
        sorted.dedup();
        // prefix[c] = stored bytes of the entries lo+1 ..= c
        let mut prefix: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut running = 0u64;
        let mut next = sorted.iter().peekable();
        while next.peek().is_some_and(|c| **c <= lo) {
            prefix.insert(lo, 0);
            next.next();
        }
        self.storage
            .scan(lo.saturating_add(1), head, &mut |seq, rec| {
                running += rec.len() as u64;
                while next.peek().is_some_and(|c| **c == seq) {
                    prefix.insert(seq, running);
                    next.next();
                }
                true
            })?;
        let total = running;
        Ok(cursors
            .iter()
            .map(|c| {
                if *c >= head {
                    head_offset
                } else {
                    let after = total - prefix.get(c).copied().unwrap_or(0);
                    head_offset.saturating_sub(after)
                }
            })
            .collect())
    }

    /// Lag of a cursor whose offset is known: O(1) but for reading the
    /// timestamp of the first unapplied entry.
    pub fn lag_at(&self, cursor: u64, cursor_offset: u64) -> Lag {
        let head = self.head();
        if cursor >= head {
            return Lag::default();
        }
        // The oldest entry not applied: from memory when it is among the
        // newest (a target that keeps up), else read back (crc-checked).
        let mut ts = self
            .tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ts_of(cursor + 1);
        if ts.is_none() {
            let _ = self.storage.scan(cursor + 1, cursor + 1, &mut |seq, rec| {
                ts = codec::decode_ref(seq, rec).ok().map(|e| e.ts_ms);
                false
            });
        }
        Lag {
            entries: head - cursor,
            bytes: self.head_offset().saturating_sub(cursor_offset),
            ms: ts.map(|t| now_ms().saturating_sub(t)).unwrap_or(0),
        }
    }

    /// Whether persisted cursor offsets are valid for this log (see
    /// `open_offsets`).
    pub fn offsets_persisted(&self) -> bool {
        !self.rebased
    }

    /// Bytes of the entries still kept.
    pub fn retained_bytes(&self) -> u64 {
        self.head_offset()
            .saturating_sub(self.first_offset.load(Ordering::Acquire))
    }

    /// The newest entry of a key, up to the head (at least): the committer
    /// indexes a group before it publishes its head, so an acknowledged
    /// write is always seen.
    pub async fn key_info(&self, key: &str) -> Result<Option<KeyInfo>> {
        if let Some(info) = self.pending_index().keys.get(key) {
            return Ok(Some(info.clone()));
        }
        self.storage.key_info(key)
    }

    fn pending_index(&self) -> std::sync::MutexGuard<'_, PendingIndex> {
        self.pending_index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys starting with `prefix` and greater than `after` ("" for none)
    /// with their newest entry, in key order, deletes included, at most
    /// `limit`.
    pub async fn keys_with_prefix(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, KeyInfo)>> {
        // The pending keys first: a checkpoint meanwhile moves them to
        // storage, read after, so none is missed; a key in both is taken
        // at its newest.
        let start = if after > prefix { after } else { prefix };
        let pending: Vec<(String, KeyInfo)> = self
            .pending_index()
            .keys
            .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| k.as_str() != after)
            .take(limit)
            .map(|(k, i)| (k.clone(), i.clone()))
            .collect();
        let saved = self.storage.keys_with_prefix(prefix, after, limit)?;
        Ok(merge_listings(saved, pending, limit))
    }

    /// Removes entries below `seq`, never the head entry. Returns how many.
    pub fn truncate_below(&self, seq: u64) -> Result<u64> {
        let seq = seq.min(self.head());
        if seq <= self.first() {
            return Ok(0);
        }
        let mut bytes = 0u64;
        self.storage.scan(self.first(), seq - 1, &mut |_, rec| {
            bytes += rec.len() as u64;
            true
        })?;
        // The new first offset is recorded before the entries go, so a
        // crash in between is seen (and measured) on open.
        let first_offset = self.first_offset.load(Ordering::Acquire) + bytes;
        self.storage
            .set_meta(FIRST_OFFSET_META, &pair(seq, first_offset))?;
        let n = self.storage.truncate_below(seq)?;
        self.first_offset.store(first_offset, Ordering::Release);
        self.first.store(seq, Ordering::Release);
        Ok(n)
    }
}

/// Meta: set once the head record outside the engine exists, so a head
/// file that disappears is noticed rather than made anew.
const HEAD_RECORDED_META: &str = "head_recorded";

/// Guarantee 8 at open: the log reaches the head record's acknowledged seq.
/// Then the record is made to say exactly this head (durably), so a group
/// lost before anyone was told (in `(acked, committing]`) is forgotten.
fn check_head(storage: &dyn LogStorage, head: u64) -> Result<()> {
    let recorded = storage.meta(HEAD_RECORDED_META)?.is_some();
    match need_at(storage, head, recorded)? {
        RepairNeed::Loss { to, .. } => {
            return Err(Error::LogShorter {
                dir: storage.dir(),
                log_head: head,
                acked: to,
            });
        }
        RepairNeed::RecordAnew => {
            return Err(Error::HeadRecordDamaged {
                path: storage.dir().join("head"),
            });
        }
        RepairNeed::Whole => {}
    }
    storage.set_head_mark(HeadMark {
        acked: head,
        committing: head,
    })?;
    if !recorded {
        storage.set_meta(HEAD_RECORDED_META, b"1")?;
        storage.sync()?;
    }
    Ok(())
}

/// What a data directory needs from `walship repair`, as `Log::open`'s
/// check (`check_head`) would find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairNeed {
    /// The log reaches every acknowledged seq: nothing to repair.
    Whole,
    /// The head record is damaged, or gone while the log's meta says one
    /// was kept: the log's length cannot be checked. `--accept-loss`
    /// writes it anew from the log's head (for a log known intact).
    RecordAnew,
    /// Acknowledged seqs `from..=to` are not in the log.
    Loss {
        /// The first lost seq: the log's head + 1.
        from: u64,
        /// The last: the head record's acknowledged seq.
        to: u64,
    },
}

/// Decides [`RepairNeed`] from the log's head, the head record (`Err(())`:
/// both its slots damaged) and whether the log's meta says a record was
/// kept. A damaged record is never taken as none: open refuses it.
pub(crate) fn repair_need(
    log_head: u64,
    mark: std::result::Result<Option<HeadMark>, ()>,
    recorded: bool,
) -> RepairNeed {
    match mark {
        Ok(Some(m)) if m.acked > log_head => RepairNeed::Loss {
            from: log_head + 1,
            to: m.acked,
        },
        Ok(Some(_)) => RepairNeed::Whole,
        Ok(None) if recorded => RepairNeed::RecordAnew,
        Ok(None) => RepairNeed::Whole,
        Err(()) => RepairNeed::RecordAnew,
    }
}

/// The log's head and what it needs from repair, read without changing
/// anything (`walship repair` without `--accept-loss` says this).
pub fn repair_need_of(storage: &dyn LogStorage) -> Result<(u64, RepairNeed)> {
    let (_, log_head) = storage.bounds()?.unwrap_or((1, 0));
    let recorded = storage.meta(HEAD_RECORDED_META)?.is_some();
    Ok((log_head, need_at(storage, log_head, recorded)?))
}

/// [`repair_need`] of `storage`'s head record with the log at `head`.
fn need_at(storage: &dyn LogStorage, head: u64, recorded: bool) -> Result<RepairNeed> {
    let mark = match storage.head_mark() {
        Ok(m) => Ok(m),
        Err(Error::HeadRecordDamaged { .. }) => Err(()),
        Err(e) => return Err(e),
    };
    Ok(repair_need(head, mark, recorded))
}

/// What `walship repair --accept-loss` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Repair {
    /// The first seq that was lost (`lost_from > lost_to`: nothing was).
    pub lost_from: u64,
    /// The last seq that was lost: the head record's acknowledged seq.
    pub lost_to: u64,
    /// The head after repair; the next write gets `head + 1`.
    pub head: u64,
    /// When the loss was recorded, unix ms.
    pub at_ms: u64,
}

/// Meta: every loss accepted by repair, a JSON list of [`Repair`].
pub const LOST_META: &str = "lost_ranges";
/// Meta: the head of a log that repair emptied (no entry holds it).
pub const HEAD_FLOOR_META: &str = "head_floor";

/// `walship repair --accept-loss` on a log `Log::open` refused: records the
/// lost range, empties the log with its head moved to the record's
/// acknowledged seq (so no seq is used twice), and rewrites the head record.
/// Every target whose cursor is below that head then needs entries the log
/// no longer has, so the replicator resyncs it from the acting primary when
/// it opens (the primary's cursor is moved to the head: it acknowledged
/// every write, and is what the others are copied from). Returns `None`
/// when the log was whole (nothing changed).
pub fn repair(storage: &dyn LogStorage, primary: Option<&str>) -> Result<Option<Repair>> {
    let (log_head, need) = repair_need_of(storage)?;
    let acked = match need {
        RepairNeed::Whole => return Ok(None),
        RepairNeed::RecordAnew => {
            // The record itself was lost: adopt the log's head.
            storage.set_head_mark(HeadMark {
                acked: log_head,
                committing: log_head,
            })?;
            storage.set_meta(HEAD_RECORDED_META, b"1")?;
            storage.sync()?;
            return Ok(Some(Repair {
                lost_from: log_head + 1,
                lost_to: log_head,
                head: log_head,
                at_ms: now_ms(),
            }));
        }
        RepairNeed::Loss { to, .. } => to,
    };
    let rep = Repair {
        lost_from: log_head + 1,
        lost_to: acked,
        head: acked,
        at_ms: now_ms(),
    };
    let mut lost: Vec<Repair> = storage
        .meta(LOST_META)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    lost.push(rep.clone());
    let lost = serde_json::to_vec(&lost)
        .map_err(|e| Error::io("encoding the lost ranges", std::io::Error::other(e)))?;
    storage.set_meta(LOST_META, &lost)?;
    storage.set_meta(HEAD_FLOOR_META, &acked.to_be_bytes())?;
    storage.set_meta(HEAD_RECORDED_META, b"1")?;
    // Offsets restart from the empty log.
    storage.set_meta(HEAD_OFFSET_META, &pair(acked, 0))?;
    storage.set_meta(FIRST_OFFSET_META, &pair(acked + 1, 0))?;
    let mut records = storage.targets()?;
    if let Some(p) = primary
        && !records.iter().any(|(n, _)| n == p)
    {
        records.push((p.to_string(), Ok(TargetRecord::default())));
    }
    for (name, record) in records {
        let is_primary = Some(name.as_str()) == primary;
        let mut record = match record {
            Ok(r) => r,
            // The primary is moved to the head whatever its record held.
            Err(_) if is_primary => TargetRecord::default(),
            // A replica's damaged record is left to the open: it resyncs it.
            Err(_) => continue,
        };
        if is_primary && record.cursor < acked {
            record.cursor = acked;
        } else if record.cursor < acked {
            continue;
        }
        // It holds everything: its offset restarts with the log's.
        record.offset = Some(0);
        storage.set_target(&name, &record)?;
    }
    storage.clear_log()?;
    storage.sync()?;
    storage.set_head_mark(HeadMark {
        acked,
        committing: acked,
    })?;
    Ok(Some(rep))
}

/// Bytes of the entries a data directory keeps, from the offsets the
/// committer and truncation recorded (offline `status`); measured when
/// they were not recorded.
pub fn offline_retained_bytes(storage: &dyn LogStorage) -> Result<u64> {
    let (first, head) = storage.bounds()?.unwrap_or((1, 0));
    let head_rec = storage.meta(HEAD_OFFSET_META)?.as_deref().and_then(unpair);
    let first_rec = storage.meta(FIRST_OFFSET_META)?.as_deref().and_then(unpair);
    match (head_rec, first_rec) {
        (Some((hs, ha)), Some((fs, fa))) if hs == head && fs == first => Ok(ha.saturating_sub(fa)),
        _ => stored_bytes(storage, first, head),
    }
}

/// The losses repair accepted, oldest first.
pub fn lost_ranges(storage: &dyn LogStorage) -> Result<Vec<Repair>> {
    Ok(storage
        .meta(LOST_META)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default())
}

/// Meta: (head seq, offset just after it), written with every group commit.
const HEAD_OFFSET_META: &str = "head_offset";
/// Meta: (first kept seq, offset just before it), written before truncating.
const FIRST_OFFSET_META: &str = "first_offset";

fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn unpair(b: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let c = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
    Some((a, c))
}

fn stored_bytes(storage: &dyn LogStorage, from: u64, to: u64) -> Result<u64> {
    let mut n = 0u64;
    if from <= to {
        storage.scan(from, to, &mut |_, rec| {
            n += rec.len() as u64;
            true
        })?;
    }
    Ok(n)
}

/// The offsets of the head and of the first kept entry, from what the
/// committer and truncation recorded, scanning only what they had not yet
/// recorded when the process stopped. A log without them (older versions)
/// is measured once, with offsets counted from its first kept entry.
///
/// Offsets are bytes of stored records since the log was created: they do
/// not change when the log is truncated or reopened, so a persisted cursor
/// offset stays valid (lag bytes = head offset - cursor offset).
fn open_offsets(storage: &dyn LogStorage, first: u64, head: u64) -> Result<(u64, u64, bool)> {
    let head_rec = storage.meta(HEAD_OFFSET_META)?.as_deref().and_then(unpair);
    let first_rec = storage.meta(FIRST_OFFSET_META)?.as_deref().and_then(unpair);
    let measured = match head_rec {
        Some((hs, ha)) if hs <= head => {
            let head_abs = ha + stored_bytes(storage, hs + 1, head)?;
            let first_abs = match first_rec {
                Some((fs, fa)) if fs == first => Some(fa),
                // A truncation recorded but not done (or not finished).
                Some((fs, fa)) if fs > first => {
                    Some(fa.saturating_sub(stored_bytes(storage, first, fs - 1)?))
                }
                None if first <= 1 => Some(0),
                _ => None,
            };
            first_abs.map(|f| (head_abs, f))
        }
        _ => None,
    };
    let rebased = measured.is_none();
    let (head_abs, first_abs) = match measured {
        Some(m) => m,
        None => {
            if head > 0 {
                tracing::info!("measuring the log once to record its offsets");
            }
            (stored_bytes(storage, first, head)?, 0)
        }
    };
    storage.set_meta(HEAD_OFFSET_META, &pair(head, head_abs))?;
    storage.set_meta(FIRST_OFFSET_META, &pair(first, first_abs))?;
    Ok((head_abs, first_abs, rebased))
}

/// One line of `walship log`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRow {
    /// The seq.
    pub seq: u64,
    /// Append time, unix ms (0 when the entry cannot be read).
    pub ts_ms: u64,
    /// `put` or `delete` (`?` when the entry cannot be read).
    pub op: String,
    /// The key (`?` when the entry cannot be read).
    pub key: String,
    /// Value size in bytes.
    pub size: u64,
    /// Whether the crc32 matched and the entry decoded.
    pub crc_ok: bool,
    /// What is wrong with it, when it is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Up to `limit` rows of the stored entries from `from` (used offline too).
pub fn inspect(storage: &dyn LogStorage, from: u64, limit: usize) -> Result<Vec<LogRow>> {
    inspect_to(storage, from, u64::MAX, limit)
}

/// [`inspect`], up to seq `to`: a running log's durable head (see
/// `server::log_json`).
pub fn inspect_to(
    storage: &dyn LogStorage,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<Vec<LogRow>> {
    let mut rows = Vec::new();
    if limit == 0 {
        return Ok(rows);
    }
    storage.scan(from, to, &mut |seq, rec| {
        rows.push(match codec::decode(seq, rec) {
            Ok(e) => LogRow {
                seq,
                ts_ms: e.ts_ms,
                op: e.op.as_str().to_string(),
                key: e.key,
                size: e.value.len() as u64,
                crc_ok: true,
                error: None,
            },
            Err(err) => LogRow {
                seq,
                ts_ms: 0,
                op: "?".into(),
                key: "?".into(),
                size: rec.len() as u64,
                crc_ok: false,
                error: Some(err.to_string()),
            },
        });
        rows.len() < limit
    })?;
    Ok(rows)
}

/// The decoded entry at `seq`, if kept.
pub fn entry_at(storage: &dyn LogStorage, seq: u64) -> Result<Option<Entry>> {
    let mut out = None;
    storage.scan(seq, seq, &mut |s, rec| {
        out = Some(codec::decode(s, rec));
        false
    })?;
    out.transpose()
}

/// The first kept seq whose timestamp is at or after `ts_ms` (`head + 1`
/// when none is): timestamps never go backwards, so a binary search.
pub fn first_seq_since(storage: &dyn LogStorage, ts_ms: u64) -> Result<u64> {
    let Some((first, head)) = storage.bounds()? else {
        return Ok(1);
    };
    let ts_of = |seq: u64| -> Result<u64> {
        let mut ts = 0;
        storage.scan(seq, head, &mut |s, rec| {
            // A corrupt entry takes the time of the next readable one.
            match codec::decode(s, rec) {
                Ok(e) => {
                    ts = e.ts_ms;
                    false
                }
                Err(_) => true,
            }
        })?;
        Ok(ts)
    };
    let (mut lo, mut hi) = (first, head + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ts_of(mid)? >= ts_ms {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// Lag of `cursor` behind `head` in `storage` (used offline too).
pub fn lag_of(storage: &dyn LogStorage, cursor: u64, head: u64) -> Result<Lag> {
    if cursor >= head {
        return Ok(Lag::default());
    }
    let mut lag = Lag {
        entries: head - cursor,
        ..Lag::default()
    };
    let mut oldest: Option<Result<u64>> = None;
    storage.scan(cursor + 1, head, &mut |seq, rec| {
        if oldest.is_none() {
            oldest = Some(codec::decode(seq, rec).map(|e| e.ts_ms));
        }
        lag.bytes += rec.len() as u64;
        true
    })?;
    if let Some(Ok(ts)) = oldest {
        lag.ms = now_ms().saturating_sub(ts);
    }
    Ok(lag)
}

/// An entry's metadata; for a put from before metadata (format 1), what
/// its bytes and time give (ETag, crc32, time; no attributes).
pub(crate) fn meta_or_derived(e: &codec::Entry) -> Option<crate::object::Meta> {
    match (&e.meta, e.op) {
        (Some(m), _) => Some(m.clone()),
        (None, Op::Put) => {
            let mut m = crate::object::ObjectMeta::of(&e.value);
            m.ts_ms = e.ts_ms;
            Some(std::sync::Arc::new(m))
        }
        (None, Op::Delete) => None,
    }
}

/// Brings the key index from its watermark up to `head`. An entry that
/// cannot be decoded is left out of the index (shipping reports it).
fn rebuild_key_index(storage: &dyn LogStorage, head: u64) -> Result<()> {
    let from = storage.key_index_watermark()? + 1;
    if from > head {
        return Ok(());
    }
    let mut entries: Vec<(String, KeyInfo)> = Vec::new();
    storage.scan(from, head, &mut |seq, rec| {
        match codec::decode(seq, rec) {
            Ok(e) => {
                let info = KeyInfo {
                    seq,
                    op: e.op,
                    size: e.value.len() as u64,
                    meta: meta_or_derived(&e),
                };
                entries.push((e.key, info));
            }
            Err(e) => tracing::warn!(error = %e, "entry left out of the key index"),
        }
        true
    })?;
    let keys: Vec<(&str, KeyInfo)> = entries
        .iter()
        .map(|(k, i)| (k.as_str(), i.clone()))
        .collect();
    storage.index(&keys, head)?;
    storage.sync()
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Committer {
    /// Each group goes in before its head is published.
    tail: Arc<Mutex<Tail>>,
    stats: Arc<CommitStats>,
    storage: Arc<dyn LogStorage>,
    head: Arc<watch::Sender<u64>>,
    /// Asks the checkpointer for a checkpoint before its next tick.
    indexer: std::sync::mpsc::Sender<()>,
    /// The key index's pending map (kept by this committer, checkpointed
    /// by the index thread): conditional writes are decided against it.
    pending: Arc<Mutex<PendingIndex>>,
    next_seq: u64,
    last_ts: u64,
    refusing: Arc<Refusing>,
    /// When a failed reopen may be tried again (see `reopen_pace`).
    pace: crate::reopen_pace::ReopenPace,
    /// Set while the log could not reopen after a failed write: what
    /// writes are refused with, from the latest failed try.
    poisoned: Option<Refusal>,
}

/// What writes are refused with while the log cannot reopen: the latest
/// failed try's reason, and whether the disk is full (507 rather than 500).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    why: String,
    full: bool,
}

impl Refusal {
    /// The refusal a failed reopen's error `e` makes.
    fn of(e: &Error) -> Refusal {
        match e {
            // Their own reason, not wrapped twice.
            Error::DiskFull(why) => Refusal {
                why: why.clone(),
                full: true,
            },
            // Stuck: it will not reopen by itself (restart).
            Error::LogPoisoned(why) => Refusal {
                why: why.clone(),
                full: false,
            },
            e => Refusal {
                why: e.to_string(),
                full: e.is_disk_full(),
            },
        }
    }

    /// The error a refused write gets.
    fn error(&self) -> Error {
        if self.full {
            Error::DiskFull(self.why.clone())
        } else {
            Error::LogPoisoned(self.why.clone())
        }
    }
}

/// What `/readyz` says from a failed write until the log has reopened (or
/// its first try failed, which says why).
const REOPENING: &str = "a write failed and the log is reopening from disk";

impl Committer {
    /// Publishes whether writes are refused, and why.
    fn publish_refusing(&self, why: Option<&str>) {
        match why {
            None => self.refusing.on.store(false, Ordering::Release),
            Some(why) => {
                let mut said = self.refusing.why.lock().unwrap_or_else(|p| p.into_inner());
                if *said != why {
                    *said = why.to_string();
                }
                self.refusing.on.store(true, Ordering::Release);
            }
        }
    }

    /// Answers `DiskFull`, before sled is touched, to the writes of
    /// `group` that `data_dir` lacks room for (`LogStore::room`: its free
    /// space less the reserve sled needs): taken in order while they fit,
    /// the others refused, so that sled never meets a full disk in the
    /// middle of a write (a large value, or a page sled rewrites whole,
    /// left it stuck for good: see `storage::ROOM_RESERVE`).
    fn check_room(&self, group: &mut Vec<Request>) {
        let mut room = match self.storage.room() {
            Ok(Some(room)) => room,
            Ok(None) => return,
            Err(e) => {
                // Not a reason to refuse writes: sled answers for itself.
                tracing::warn!(error = %e, "could not read the free space of data_dir; writing without the check");
                return;
            }
        };
        let dir = self.storage.dir();
        let mut kept = Vec::with_capacity(group.len());
        for r in group.drain(..) {
            // The record and its share of sled's framing, twice over for
            // the pages sled rewrites as it goes, and once in the journal
            // until the next checkpoint.
            let need = 3 * (r.write.value.len() + r.write.key.as_str().len() + 128) as u64;
            if need <= room {
                room -= need;
                kept.push(r);
                continue;
            }
            let why = format!(
                "{} has room for about {room} more bytes beyond the {} walship keeps free for the log's own writes; this write needs {need}",
                dir.display(),
                crate::storage::ROOM_RESERVE
            );
            tracing::warn!(error = %why, "a write refused: data_dir lacks room for it");
            let _ = r.reply.send(Err(Error::DiskFull(why)));
        }
        *group = kept;
    }

    /// Refuses the group's writes whose precondition does not hold against
    /// the key's newest version: the log up to the published head (this
    /// committer indexed it) and the writes of this group before it. The
    /// committer is the one appender, so this is atomic with every other
    /// write.
    fn check_conditions(&self, group: &mut Vec<Request>) {
        if group.iter().all(|r| r.write.cond.is_none()) {
            return;
        }
        // key → its newest version's ETag ("" when unknown), None: absent.
        let mut seen: std::collections::HashMap<String, Option<String>> = Default::default();
        let mut kept = Vec::with_capacity(group.len());
        for r in group.drain(..) {
            let key = r.write.key.as_str().to_string();
            if let Some(cond) = &r.write.cond {
                let current = match seen.get(&key) {
                    Some(c) => Ok(c.clone()),
                    None => self.newest(&key),
                };
                match current {
                    Err(e) => {
                        let _ = r.reply.send(Err(e));
                        continue;
                    }
                    Ok(cur) if !cond.holds(cur.as_deref()) => {
                        let reason = match (&cond, &cur) {
                            (_, None) => "the key does not exist".to_string(),
                            (crate::object::Precondition::Absent, Some(_)) => {
                                "the key already exists (If-None-Match: *)".to_string()
                            }
                            (_, Some(etag)) => format!("its newest version has ETag {etag:?}"),
                        };
                        let _ = r.reply.send(Err(Error::PreconditionFailed { key, reason }));
                        continue;
                    }
                    Ok(_) => {}
                }
            }
            let now = match r.write.op {
                Op::Put => Some(
                    r.write
                        .meta
                        .as_ref()
                        .map(|m| m.etag.clone())
                        .unwrap_or_default(),
                ),
                Op::Delete => None,
            };
            seen.insert(key, now);
            kept.push(r);
        }
        *group = kept;
    }

    /// The newest version of `key` up to the indexed head: `None` when
    /// absent, else its ETag ("" when unknown).
    fn newest(&self, key: &str) -> Result<Option<String>> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(key)
            .cloned();
        let info = match pending {
            Some(i) => Some(i),
            None => self.storage.key_info(key)?,
        };
        Ok(info
            .filter(|i| i.op == Op::Put)
            .map(|i| i.etag().unwrap_or_default().to_string()))
    }

    /// After a failed flush: reopens the storage from disk, removes any
    /// tail above the published head (its writers were answered with an
    /// error), and makes that durable.
    fn recover(&self) -> Result<()> {
        let published = self.next_seq - 1;
        self.storage.reopen()?;
        let trimmed = self.storage.remove_above(published)?;
        if trimmed > 0 {
            tracing::warn!(
                trimmed,
                head = published,
                "removed log frames a failed flush left behind"
            );
        }
        // The key index's last checkpoint may not have reached the disk:
        // bring it up to the head again from the log, as an open does.
        rebuild_key_index(self.storage.as_ref(), published)?;
        self.storage.sync()?;
        // Wakes the shippers, whose targets are rewound onto the reopened
        // storage (see `target_state`).
        self.head.send_modify(|_| {});
        Ok(())
    }

    /// [`Committer::recover`], counted and paced: a failure sets when the
    /// next try may start (see `reopen_pace`) and what writes are refused
    /// with until then; a success takes writes again. Readers of
    /// [`Log::refusing_writes`] hear that writes are refused while it
    /// runs: they wait for it, and are refused if it fails.
    fn try_recover(&mut self) -> Result<()> {
        if self.poisoned.is_none() {
            self.publish_refusing(Some(REOPENING));
        }
        self.stats.reopen_tries.fetch_add(1, Ordering::Relaxed);
        let r = self.recover();
        match &r {
            Ok(()) => {
                self.pace.succeeded();
                self.poisoned = None;
                self.publish_refusing(None);
                tracing::info!(
                    "the log reopened from disk after a failed write; taking writes again"
                );
            }
            Err(e) => {
                let rest = self
                    .pace
                    .failed(std::time::Instant::now(), self.storage.reopen_work());
                let refusal = Refusal::of(e);
                // Said once, and again when it turns to or from room (a
                // reason for room names bytes that change with every try).
                if self.poisoned.as_ref().map(|p| p.full) != Some(refusal.full) {
                    tracing::warn!(error = %e, disk_full = refusal.full, retry_in_ms = rest.as_millis() as u64, "the log cannot reopen from disk yet; it refuses writes and retries by itself");
                }
                self.publish_refusing(Some(&refusal.why));
                self.poisoned = Some(refusal);
            }
        }
        r
    }

    /// A reopen asked for by a failure outside the committer: at most one
    /// every `RECOVER_EVERY`, and none once the storage is well again.
    fn recover_asked(&mut self, last: &mut Option<std::time::Instant>) {
        if self.poisoned.is_some() || !self.storage.failed() {
            return;
        }
        // A failed read, or a late error of a handle already replaced,
        // leaves the storage well: a sync that works says so.
        if self.storage.sync().is_ok() {
            return;
        }
        // Not ready from here (writes wait for the reopen).
        self.publish_refusing(Some(REOPENING));
        if let Some(wait) = last.and_then(|t| RECOVER_EVERY.checked_sub(t.elapsed())) {
            std::thread::sleep(wait);
        }
        *last = Some(std::time::Instant::now());
        tracing::warn!("the log failed a write outside the committer; it reopens from disk");
        let _ = self.try_recover();
    }

    /// Takes what is queued behind the group's first write (adaptive
    /// batching): while more writers are inside `append` than queued
    /// (just answered, about to send again), waits for them up to
    /// `max_wait`. A lone writer is never delayed. Returns whether a
    /// reopen was asked for meanwhile.
    fn gather(
        &self,
        rx: &mut mpsc::Receiver<Msg>,
        group: &mut Vec<Request>,
        mut bytes: usize,
        started: std::time::Instant,
        max_wait: std::time::Duration,
    ) -> bool {
        let mut asked = false;
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(Msg::Append(r)) => {
                    bytes += r.write.value.len();
                    group.push(r);
                }
                Ok(Msg::Recover) => asked = true,
                Err(_) => {
                    let active = self.stats.active.load(Ordering::Acquire) as usize;
                    if active <= group.len() || started.elapsed() >= max_wait {
                        break;
                    }
                    std::thread::yield_now();
                }
            }
        }
        asked
    }

    /// Encodes the group's writes with the next seqs, appends them, makes
    /// them durable (and the head record) and answers each writer. When
    /// that fails every writer gets the error and the log reopens from
    /// disk (see [`Committer::try_recover`]).
    fn commit(
        &mut self,
        group: &mut Vec<Request>,
        records: &mut Vec<Vec<u8>>,
        started: std::time::Instant,
        last_flush: &mut std::time::Duration,
    ) {
        let ts = crate::log::now_ms().max(self.last_ts);
        let first_seq = self.next_seq;
        records.clear();
        for (i, r) in group.iter().enumerate() {
            let w = &r.write;
            records.push(codec::encode_with(
                first_seq + i as u64,
                ts,
                w.op,
                w.key.as_str(),
                &w.value,
                w.meta.as_deref(),
            ));
        }
        let pending: Vec<PendingRecord<'_>> = records
            .iter()
            .enumerate()
            .map(|(i, rec)| PendingRecord {
                seq: first_seq + i as u64,
                record: rec,
            })
            .collect();
        let flush_started = std::time::Instant::now();
        let group_bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        let head_offset = self.stats.head_offset.load(Ordering::Acquire) + group_bytes;
        let last_seq = first_seq + records.len() as u64 - 1;
        let result = self
            .storage
            .append(&pending)
            .and_then(|()| {
                self.storage
                    .set_meta(HEAD_OFFSET_META, &pair(last_seq, head_offset))
            })
            .and_then(|()| {
                crate::crash::point("append");
                self.storage.sync_group(first_seq - 1, last_seq)
            })
            .and_then(|()| self.storage.mark_acked(last_seq));
        if result.is_ok() {
            crate::crash::point("flush");
        }
        *last_flush = flush_started.elapsed();
        self.stats
            .flush_us
            .fetch_add(last_flush.as_micros() as u64, Ordering::Relaxed);
        self.stats.gather_us.fetch_add(
            (flush_started - started).as_micros() as u64,
            Ordering::Relaxed,
        );
        drop(pending);
        match result {
            Ok(()) => {
                self.next_seq += group.len() as u64;
                self.last_ts = ts;
                self.stats.head_offset.store(head_offset, Ordering::Release);
                let last = self.next_seq - 1;
                let mut keys = Vec::with_capacity(group.len());
                let mut replies = Vec::with_capacity(group.len());
                let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
                for (i, Request { write, reply, .. }) in group.drain(..).enumerate() {
                    let seq = first_seq + i as u64;
                    let meta = write.meta.map(|mut m| {
                        // The writer's copy is unique: stamped in place.
                        std::sync::Arc::make_mut(&mut m).ts_ms = ts;
                        m
                    });
                    tail.push(
                        Entry {
                            seq,
                            ts_ms: ts,
                            op: write.op,
                            key: write.key.as_str().to_string(),
                            value: write.value.clone(),
                            meta: meta.clone(),
                        },
                        records[i].len() as u32,
                    );
                    let info = KeyInfo {
                        seq,
                        op: write.op,
                        size: write.value.len() as u64,
                        meta,
                    };
                    keys.push((write.key.into_string(), info));
                    replies.push((seq, reply));
                }
                drop(tail);
                // The group is in the key index before its head is
                // published: whoever sees the head sees its keys, with no
                // hand-off to wait for.
                let pending_keys = {
                    let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    p.keys.extend(keys);
                    p.covers = last;
                    p.keys.len()
                };
                self.head.send_replace(last);
                self.stats
                    .entries
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                for (seq, reply) in replies {
                    let _ = reply.send(Ok(Appended { seq, ts_ms: ts }));
                }
                if pending_keys >= INDEX_MAX_PENDING {
                    // Checkpoint now rather than at the next tick.
                    let _ = self.indexer.send(());
                }
            }
            Err(e) => {
                let why = e.to_string();
                let full = e.is_disk_full();
                tracing::error!(error = %why, disk_full = full, "durable append failed; the log reopens from disk before it takes writes again");
                // Not ready from before the writers hear of it.
                self.publish_refusing(Some(REOPENING));
                for r in group.drain(..) {
                    let _ = r.reply.send(Err(if full {
                        Error::DiskFull(why.clone())
                    } else {
                        Error::LogPoisoned(why.clone())
                    }));
                }
                // What the failed group left in memory (or partly on
                // disk) goes: the log is what was made durable and
                // answered, and the next group continues its seqs.
                let _ = self.try_recover();
            }
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
        let mut records: Vec<Vec<u8>> = Vec::with_capacity(MAX_GROUP);
        let mut last_asked: Option<std::time::Instant> = None;
        let mut last_flush = std::time::Duration::ZERO;
        loop {
            // While the log cannot reopen, try again as its pace allows
            // (see `reopen_pace`) without waiting for a write (readers
            // need it back too).
            let first = if self.poisoned.is_some() {
                match rx.try_recv() {
                    Ok(Msg::Append(r)) => r,
                    Ok(Msg::Recover) => continue,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        // Looks for writes (to refuse them at once) and a
                        // shutdown every step until the pace allows a try.
                        let now = std::time::Instant::now();
                        if self.pace.may_try(now) {
                            let _ = self.try_recover();
                        } else {
                            std::thread::sleep(self.pace.wait(now).min(REFUSING_STEP));
                        }
                        continue;
                    }
                }
            } else {
                match rx.blocking_recv() {
                    Some(Msg::Append(r)) => r,
                    Some(Msg::Recover) => {
                        self.recover_asked(&mut last_asked);
                        continue;
                    }
                    None => break,
                }
            };
            group.clear();
            let bytes = first.write.value.len();
            group.push(first);
            // Adaptive batching (see `gather`), waiting up to half a flush.
            let started = std::time::Instant::now();
            let max_wait = (last_flush / 2).min(std::time::Duration::from_micros(500));
            let asked = self.gather(&mut rx, &mut group, bytes, started, max_wait);
            // Also without a message: the hook's queue may have been full.
            let tried = (asked || self.storage.failed()) && self.poisoned.is_none();
            if tried {
                self.recover_asked(&mut last_asked);
            }
            // Take writes again once the log reopens cleanly from disk (not
            // again at once when it just failed to, nor before its pace
            // allows: a failed reopen may have copied the whole log).
            if self.poisoned.is_some() && !tried && self.pace.may_try(std::time::Instant::now()) {
                let _ = self.try_recover();
            }
            if let Some(refusal) = &self.poisoned {
                for r in group.drain(..) {
                    let _ = r.reply.send(Err(refusal.error()));
                }
                continue;
            }
            // Room first: a write refused for room must not count as the
            // key's newest version for a condition after it.
            self.check_room(&mut group);
            self.check_conditions(&mut group);
            if group.is_empty() {
                continue;
            }
            self.commit(&mut group, &mut records, started, &mut last_flush);
        }
    }
}

/// The first `limit` keys of two key-ordered listings together, each key
/// at its newest entry: what a listing of storage and of the pending index
/// answers, given the first `limit` of each.
fn merge_listings(
    a: Vec<(String, KeyInfo)>,
    b: Vec<(String, KeyInfo)>,
    limit: usize,
) -> Vec<(String, KeyInfo)> {
    let mut merged: std::collections::BTreeMap<String, KeyInfo> = Default::default();
    for (k, info) in a.into_iter().chain(b) {
        match merged.entry(k) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(info);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if info.seq > o.get().seq {
                    o.insert(info);
                }
            }
        }
    }
    merged.into_iter().take(limit).collect()
}

/// The newest committed entries, each with its stored size, kept for the
/// shippers: a target that keeps up plans each new group from here, with
/// no read of the storage and no decode, three times a write with three
/// targets. Invariant: the entries are consecutive and end at the last
/// committed seq (the committer adds a group before publishing its head);
/// at most `TAIL_ENTRIES` of them and `TAIL_BYTES` of values. They are
/// the bytes the log made durable and acknowledged; an entry read back
/// from the storage is crc-checked (guarantee 7).
#[derive(Default)]
struct Tail {
    entries: std::collections::VecDeque<(Entry, u32)>,
    value_bytes: usize,
}

const TAIL_ENTRIES: usize = 256;
const TAIL_BYTES: usize = 1 << 20;

impl Tail {
    /// Adds the next committed entry; the oldest go past the bounds (a
    /// value over `TAIL_BYTES` goes at once, and everything before it).
    fn push(&mut self, e: Entry, size: u32) {
        if self
            .entries
            .back()
            .is_some_and(|(last, _)| last.seq + 1 != e.seq)
        {
            self.entries.clear();
            self.value_bytes = 0;
        }
        self.value_bytes += e.value.len();
        self.entries.push_back((e, size));
        while self.entries.len() > TAIL_ENTRIES || self.value_bytes > TAIL_BYTES {
            if let Some((old, _)) = self.entries.pop_front() {
                self.value_bytes -= old.value.len();
            }
        }
    }

    /// The time of entry `seq`, when it is here.
    fn ts_of(&self, seq: u64) -> Option<u64> {
        let first = self.entries.front()?.0.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get(i).map(|(e, _)| e.ts_ms)
    }

    /// `from..=to` planned from here (see [`Log::plan`]), when every entry
    /// of it is here.
    fn plan(&self, from: u64, to: u64, keep_entries: usize, keep_bytes: usize) -> Option<Window> {
        let first = self.entries.front()?.0.seq;
        let last = self.entries.back()?.0.seq;
        if from < first || to > last || from > to {
            return None;
        }
        let stretch = self
            .entries
            .range((from - first) as usize..=(to - first) as usize);
        let n = (to - from + 1) as usize;
        let mut w = Window {
            base: from,
            owner: Vec::with_capacity(n),
            sizes: Vec::with_capacity(n),
            ts_ms: Vec::with_capacity(n),
            ..Window::default()
        };
        let mut last_of: hashbrown::HashMap<&str, u32> = hashbrown::HashMap::with_capacity(n);
        let mut bytes = 0usize;
        for (i, (e, size)) in stretch.clone().enumerate() {
            w.sizes.push(*size);
            w.ts_ms.push(e.ts_ms);
            last_of.insert(e.key.as_str(), i as u32);
            bytes += *size as usize;
        }
        w.owner = stretch
            .clone()
            .map(|(e, _)| last_of[e.key.as_str()])
            .collect();
        if n <= keep_entries && bytes <= keep_bytes {
            w.entries = Some(stretch.map(|(e, _)| e.clone()).collect());
        }
        Some(w)
    }
}

/// Key index updates not yet written to storage; lookups see them first.
/// The committer adds each group before it publishes the group's head.
struct PendingIndex {
    /// In key order: a prefix is a range.
    keys: std::collections::BTreeMap<String, KeyInfo>,
    /// The head these updates (with storage's checkpoint) cover.
    covers: u64,
}

/// Fewest time between two reopens asked for by failures outside the
/// committer (a disk that stays full fails every write anew).
const RECOVER_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// While writes are refused, how often the committer looks for writes
/// to refuse between its tries to reopen.
const REFUSING_STEP: std::time::Duration = std::time::Duration::from_millis(10);

/// How often the index thread writes the pending key index to storage.
const INDEX_CHECKPOINT: std::time::Duration = std::time::Duration::from_millis(200);
/// Most pending keys before a checkpoint is asked for.
const INDEX_MAX_PENDING: usize = 100_000;

/// Writes the pending key index (kept by the committer, what lookups see)
/// to storage with its watermark, every `INDEX_CHECKPOINT`, when the
/// committer asks (too many pending), and once more when it is gone. A
/// crash loses nothing: the log rebuilds what a checkpoint missed.
fn run_indexer(
    storage: Arc<dyn LogStorage>,
    rx: std::sync::mpsc::Receiver<()>,
    pending: Arc<Mutex<PendingIndex>>,
    mut saved: u64,
) {
    loop {
        let closed = matches!(
            rx.recv_timeout(INDEX_CHECKPOINT),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        // One checkpoint answers every ask queued so far.
        while rx.try_recv().is_ok() {}
        // The storage the index is written to, read before the snapshot: a
        // reopen (after a failed flush) drops what sled held in memory, an
        // index not yet durable with it, and the log rebuilds the index on
        // the reopened storage; a snapshot taken before would write older
        // entries over the rebuild's.
        let generation = storage.generation();
        // The keys and the head they cover, taken together.
        let (snapshot, last): (Vec<(String, KeyInfo)>, u64) = {
            let p = pending.lock().unwrap_or_else(|e| e.into_inner());
            let last = p.covers;
            if last == saved {
                (Vec::new(), last)
            } else {
                (
                    p.keys.iter().map(|(k, i)| (k.clone(), i.clone())).collect(),
                    last,
                )
            }
        };
        let mut indexed = false;
        if last != saved {
            let keys: Vec<(&str, KeyInfo)> = snapshot
                .iter()
                .map(|(k, i)| (k.as_str(), i.clone()))
                .collect();
            match storage.index_in(generation, &keys, last) {
                Ok(()) => indexed = true,
                // Taken again from the keys pending at the next tick.
                Err(Error::LogReopened) => {}
                Err(e) => tracing::error!(error = %e, "key index checkpoint failed; retrying"),
            }
        }
        // The log's records, cursors and the index just written made
        // durable in the engine; the journal they were kept in goes.
        let synced = match storage.checkpoint() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "log checkpoint failed; the journal keeps every record meanwhile, retrying");
                // The checkpoint's sync may have worked and only the
                // journal's clean-up failed: the index is durable then.
                storage.sync().is_ok()
            }
        };
        let durable = synced && storage.generation() == generation;
        // Readers find a key in the pending map until its index entry is
        // durable in the storage they read: dropped earlier, a reopen
        // before the sync left it in neither until the log rebuilt the
        // index (a GET of an acknowledged key answered 404 meanwhile).
        if indexed && durable {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            // Drop what was saved, unless a newer entry came meanwhile.
            for (k, i) in &snapshot {
                if p.keys.get(k).is_some_and(|cur| cur.seq == i.seq) {
                    p.keys.remove(k);
                }
            }
            saved = last;
        }
        if closed {
            return;
        }
    }
}

/// A set-up shared by the tests of the answers that read the log.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::storage::{LogStore as _, PendingRecord, SledStorage};

    /// A log on sled with three acknowledged writes (seqs 1–3, keys
    /// `k0`–`k2`) and a fourth, key `unacked`, put in sled as the committer
    /// puts a group there before its sync: in the storage, not durable,
    /// never acknowledged.
    pub(crate) async fn with_a_group_not_yet_durable()
    -> (tempfile::TempDir, Arc<SledStorage>, Arc<Log>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage.clone()).expect("log");
        for i in 0..3 {
            log.append(Write::put(
                Key::parse(&format!("k{i}")).expect("key"),
                Bytes::from_static(b"v"),
            ))
            .await
            .expect("append");
        }
        assert_eq!(log.head(), 3);
        let unacked = codec::encode(4, 1, Op::Put, "unacked", b"v");
        storage
            .append(&[PendingRecord {
                seq: 4,
                record: &unacked,
            }])
            .expect("in sled, not yet durable");
        (dir, storage, log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{LogStore as _, SledStorage, StateStore as _};

    fn put(key: &str, value: &str) -> Write {
        Write::put(
            Key::parse(key).expect("key"),
            Bytes::copy_from_slice(value.as_bytes()),
        )
    }

    #[test]
    fn repair_is_needed_for_a_lost_range_or_a_record_that_cannot_be_trusted() {
        let m = |acked| {
            Ok(Some(HeadMark {
                acked,
                committing: acked + 3,
            }))
        };
        // The log reaches every acknowledged seq, recorded or not.
        assert_eq!(repair_need(10, m(10), true), RepairNeed::Whole);
        assert_eq!(repair_need(12, m(10), true), RepairNeed::Whole);
        // It ends below them: those are lost.
        assert_eq!(
            repair_need(7, m(10), true),
            RepairNeed::Loss { from: 8, to: 10 }
        );
        assert_eq!(
            repair_need(0, m(10), false),
            RepairNeed::Loss { from: 1, to: 10 }
        );
        // No record, and none was ever kept (a data directory from before
        // the record): open makes one, nothing to repair.
        assert_eq!(repair_need(5, Ok(None), false), RepairNeed::Whole);
        // No record where one was kept, or a damaged one: the length cannot
        // be checked, and open refuses; never "whole".
        assert_eq!(repair_need(5, Ok(None), true), RepairNeed::RecordAnew);
        assert_eq!(repair_need(5, Err(()), true), RepairNeed::RecordAnew);
        assert_eq!(repair_need(5, Err(()), false), RepairNeed::RecordAnew);
    }

    #[tokio::test]
    async fn concurrent_appends_get_gapless_seqs_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage).expect("log");
        let mut tasks = Vec::new();
        for w in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..50 {
                    seqs.push(
                        log.append(put(&format!("w{w}/{i}"), "v"))
                            .await
                            .expect("append")
                            .seq,
                    );
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all.sort_unstable();
        assert_eq!(all, (1..=800).collect::<Vec<u64>>());
        assert_eq!(log.head(), 800);
        let batch = log.read(1, 10_000, usize::MAX);
        assert!(batch.error.is_none());
        assert_eq!(batch.entries.len(), 800);
        assert!(batch.entries.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        drop(batch);
        drop(log);
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("reopen"));
        let log = Log::open(storage).expect("log");
        assert_eq!(log.head(), 800);
        assert_eq!(
            log.append(put("after", "x")).await.expect("append").seq,
            801
        );
    }

    /// Appends `key` until the log takes it (once it has reopened by
    /// itself), for at most a minute.
    async fn append_once_reopened(log: &Log, key: &str) -> Appended {
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                if let Ok(a) = log.append(put(key, "v")).await {
                    return a;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the log reopened by itself and took a write")
    }

    /// An acknowledged key stays in the pending index, which every lookup
    /// reads first, until its entry in the storage's key index is durable.
    /// A reopen after a failed flush drops what sled held in memory: a key
    /// dropped from the pending map once its index entry was written, before
    /// that was synced, was then in neither until the log rebuilt the index
    /// (a GET of it answered 404). Made to happen: the index checkpoint's
    /// sync refused, as after a failed write of sled's files.
    #[tokio::test]
    async fn a_key_leaves_the_pending_index_only_once_its_index_entry_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage.clone()).expect("log");
        let pending = |key: &str| log.pending_index().keys.contains_key(key);
        let wait = |what: &'static str, done: &dyn Fn() -> bool| {
            for _ in 0..6000 {
                if done() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            panic!("{what}: not within 30 s");
        };
        // A key written, then syncs refused before its index entry is
        // durable (the index thread checkpoints every 200 ms: a try that
        // finds the key already saved is made again with another).
        let mut kept = None;
        for n in 0..5 {
            let key = format!("k{n}");
            let seq = log.append(put(&key, "v")).await.expect("append").seq;
            storage.refuse_syncs(true);
            if !pending(&key) {
                storage.refuse_syncs(false);
                continue;
            }
            wait("the index thread writes the entry", &|| {
                storage.key_index_watermark().expect("watermark") >= seq
            });
            // Let its checkpoint, refused, run to the end.
            std::thread::sleep(INDEX_CHECKPOINT * 2);
            if pending(&key) {
                kept = Some(key);
                break;
            }
            storage.refuse_syncs(false);
        }
        let key = kept.expect("the key stays pending while its index entry is not durable");
        storage.refuse_syncs(false);
        wait("it leaves once a checkpoint makes it durable", &|| {
            !pending(&key)
        });
        assert!(
            storage.key_info(&key).expect("lookup").is_some(),
            "the storage's index answers for it"
        );
    }

    /// A checkpoint whose sync worked made the index durable, even when
    /// the removal of an old journal file after it failed: the keys leave
    /// the pending index (kept there, every distinct key written would
    /// pile up in memory and be written out again at every checkpoint).
    #[tokio::test]
    async fn keys_leave_the_pending_index_when_only_the_journals_clean_up_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage.clone()).expect("log");
        storage.fail_journal_cleanup(true);
        for i in 0..5 {
            log.append(put(&format!("k{i}"), "v"))
                .await
                .expect("append");
        }
        let mut left = false;
        for _ in 0..6000 {
            if log.pending_index().keys.is_empty() {
                left = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(left, "the keys left the pending index within 30 s");
        assert!(storage.key_info("k3").expect("lookup").is_some());
    }

    /// Why the log refuses writes, once it says it does (within 20 s).
    async fn refusing(log: &Log) -> String {
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                if let Some(why) = log.refusing_writes() {
                    return why;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the log says it refuses writes")
    }

    /// A refused write gets the latest failed reopen's reason: 507 when it
    /// says the disk is full (its own words, not wrapped twice), 500
    /// otherwise, and a stuck log's "restart" as it is.
    #[test]
    fn a_refusal_answers_with_the_latest_reopens_reason() {
        let full = Refusal::of(&Error::DiskFull("free at least 5 more bytes".into()));
        match full.error() {
            Error::DiskFull(why) => assert_eq!(why, "free at least 5 more bytes"),
            other => panic!("507 for a disk full: {other:?}"),
        }
        let stuck = Refusal::of(&Error::LogPoisoned("restart walship".into()));
        match stuck.error() {
            Error::LogPoisoned(why) => assert_eq!(why, "restart walship"),
            other => panic!("500 for a stuck log: {other:?}"),
        }
        let enospc = Refusal::of(&Error::io("copying", std::io::Error::from_raw_os_error(28)));
        assert!(matches!(enospc.error(), Error::DiskFull(_)), "{enospc:?}");
        let eio = Refusal::of(&Error::io("copying", std::io::Error::from_raw_os_error(5)));
        match eio.error() {
            Error::LogPoisoned(why) => assert!(why.contains("copying"), "{why}"),
            other => panic!("500 for a failed copy: {other:?}"),
        }
    }

    /// While the log reopens after a failed write (a copy of sled's files,
    /// which takes a while for a log of some size), it says it refuses
    /// writes (`/readyz` answers 503 then), and once reopened it takes
    /// them again and says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_says_it_refuses_writes_while_it_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage.clone()).expect("log");
        let value = "v".repeat(256 << 10);
        for i in 0..128 {
            log.append(put(&format!("k{i}"), &value))
                .await
                .expect("append");
        }
        assert_eq!(log.refusing_writes(), None);
        storage.fail_a_write();
        let said = refusing(&log).await;
        assert!(said.contains("reopening"), "{said}");
        let back = append_once_reopened(&log, "back").await;
        assert_eq!(back.seq, 129);
        assert_eq!(log.refusing_writes(), None, "ready again");
        assert!(log.stats().reopen_tries.load(Ordering::Relaxed) >= 1);
    }

    /// A reopen that keeps failing after its copy of sled's files (here
    /// sled refuses its damaged settings file, copied with the rest) is
    /// not tried again for every refused write, which would copy the whole
    /// log each time (see `reopen_pace`): writes are refused at once, with
    /// the latest try's reason, until the pace allows a try, which comes
    /// without a write. (The log reopening once the cause is gone is
    /// `the_log_says_it_refuses_writes_while_it_reopens`; the file is not
    /// mended here, as a try may be copying it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopen_that_keeps_failing_is_not_tried_for_every_refused_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage.clone()).expect("log");
        for i in 0..20 {
            log.append(put(&format!("k{i}"), "v"))
                .await
                .expect("append");
        }
        let conf = dir.path().join("log/conf");
        std::fs::write(&conf, b"not sled's settings\n\0\0\0\0").expect("damage it");
        storage.fail_a_write();
        refusing(&log).await;
        let tries = || log.stats().reopen_tries.load(Ordering::Relaxed);
        let first = tries();
        assert!(first >= 1, "a reopen was tried");
        for _ in 0..20 {
            match log.append(put("refused", "v")).await {
                // (sled refusing its file, or, on a slow machine, the old
                // handle's lock not let go in time.)
                Err(Error::LogPoisoned(why)) => assert!(
                    why.contains("opening the log") || why.contains("locking"),
                    "a refusal says why the latest reopen failed: {why}"
                ),
                other => panic!("writes are refused (500) until the log reopens: {other:?}"),
            }
        }
        // Each try rests at least 500 ms: 20 refusals in a row meet a few
        // at most, even on a slow machine.
        assert!(
            tries() <= first + 5,
            "20 refused writes tried {} reopens more, each a copy of the whole log",
            tries() - first
        );
        // Without a write, it tries again by itself (within the longest
        // rest).
        let seen = tries();
        let longest = crate::reopen_pace::CEILING + std::time::Duration::from_secs(10);
        tokio::time::timeout(longest, async {
            while tries() == seen {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the log tries to reopen again by itself");
    }

    /// Offsets are recorded by the committer and by truncation; a data dir
    /// without them (older versions), or one that stopped between writing
    /// entries and recording, is measured right on open.
    #[test]
    fn offsets_are_right_after_open_whatever_was_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let records: Vec<Vec<u8>> = (1..=6u64)
            .map(|seq| {
                codec::encode(
                    seq,
                    seq,
                    Op::Put,
                    &format!("k{seq}"),
                    &vec![b'x'; seq as usize * 10],
                )
            })
            .collect();
        let pending: Vec<PendingRecord<'_>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| PendingRecord {
                seq: i as u64 + 1,
                record: r,
            })
            .collect();
        // As an older version left it: entries, no offsets.
        storage.append(&pending).expect("append");
        let size = |from: usize, to: usize| -> u64 {
            records[from - 1..to].iter().map(|r| r.len() as u64).sum()
        };
        let log = Log::open(storage.clone()).expect("log");
        assert!(!log.offsets_persisted());
        assert_eq!(log.head_offset(), size(1, 6));
        assert_eq!(log.retained_bytes(), size(1, 6));
        assert_eq!(log.offset_of(2).expect("offset"), size(1, 2));
        drop(log);
        // Recorded now: the next open trusts it.
        let log = Log::open(storage.clone()).expect("log");
        assert!(log.offsets_persisted());
        assert_eq!(log.head_offset(), size(1, 6));
        drop(log);
        // Stopped after writing seqs 5 and 6 but before recording them.
        storage
            .set_meta(HEAD_OFFSET_META, &pair(4, size(1, 4)))
            .expect("meta");
        // And after recording a truncation below 3 but before doing it.
        storage
            .set_meta(FIRST_OFFSET_META, &pair(3, size(1, 2)))
            .expect("meta");
        let log = Log::open(storage.clone()).expect("log");
        assert!(log.offsets_persisted());
        assert_eq!(log.head_offset(), size(1, 6));
        assert_eq!(
            log.retained_bytes(),
            size(1, 6),
            "seqs 1 and 2 are still kept"
        );
        assert_eq!(log.truncate_below(3).expect("truncate"), 2);
        assert_eq!(log.retained_bytes(), size(3, 6));
        drop(log);
        let log = Log::open(storage).expect("log");
        assert_eq!(log.retained_bytes(), size(3, 6));
        assert_eq!(log.head_offset(), size(1, 6));
    }

    #[tokio::test]
    async fn a_plan_names_each_entrys_last_version_and_stops_at_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage.clone()).expect("log");
        for k in ["a", "b", "a", "c", "b", "d"] {
            log.append(put(k, k)).await.expect("append");
        }
        let w = log.plan(1, 5, 100, usize::MAX);
        assert_eq!(w.base, 1);
        // The stretch is seq 1..=5: d (seq 6) is outside it.
        assert_eq!(w.owner, vec![2, 4, 2, 3, 4]);
        assert_eq!(w.sizes.len(), 5);
        let kept = w.entries.expect("small enough to keep");
        assert_eq!(
            kept.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        // Too many to keep: the plan alone.
        let w = log.plan(2, 100, 2, usize::MAX);
        assert_eq!(w.owner, vec![3, 1, 2, 3, 4]);
        assert!(w.entries.is_none());
        assert!(w.error.is_none());
        // A damaged entry ends the stretch just before it, and is named.
        let mut rec = Vec::new();
        storage
            .scan(4, 4, &mut |_, r| {
                rec = r.to_vec();
                false
            })
            .expect("scan");
        let n = rec.len();
        rec[n - 6] ^= 0x40;
        storage
            .append(&[PendingRecord {
                seq: 4,
                record: &rec,
            }])
            .expect("overwrite");
        // (Read from the storage: the tail in memory holds the entries as
        // they were written, undamaged.)
        log.tail.lock().expect("tail").entries.clear();
        let w = log.plan(1, 100, 100, usize::MAX);
        assert_eq!(w.owner, vec![2, 1, 2]);
        assert!(
            matches!(w.error, Some(Error::Corrupt { seq: 4, .. })),
            "{:?}",
            w.error
        );
    }

    /// A target keeping up plans from the tail in memory: what it plans
    /// there is what a plan read from the storage says, and a stretch the
    /// tail no longer holds is read from the storage.
    #[tokio::test]
    async fn the_tail_in_memory_plans_as_the_storage_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(Arc::new(
            SledStorage::open(dir.path(), 8 << 20).expect("open"),
        ))
        .expect("log");
        // Keys repeated within a stretch, deletes, metadata, one value
        // larger than the tail keeps (at seq LARGE + 1).
        const LARGE: u64 = TAIL_ENTRIES as u64 - 10;
        for i in 0..(TAIL_ENTRIES as u64 + 40) {
            let key = format!("k{}", i % 7);
            let mut w = if i % 11 == 5 {
                Write::delete(Key::parse(&key).expect("key"))
            } else {
                let size = if i == LARGE {
                    TAIL_BYTES + 1
                } else {
                    1 + i as usize % 90
                };
                Write::put(
                    Key::parse(&key).expect("key"),
                    Bytes::from(vec![b'v'; size]),
                )
            };
            if i % 3 == 0
                && let Some(m) = w.meta.as_mut()
            {
                std::sync::Arc::make_mut(m).content_type = Some(format!("type/{i}"));
            }
            log.append(w).await.expect("append");
        }
        let head = log.head();
        let same = |from: u64, to: u64, keep: usize| {
            let tail = log
                .tail
                .lock()
                .expect("tail")
                .plan(from, to, keep, usize::MAX);
            let stored = log.plan_stored(
                Window {
                    base: from,
                    ..Window::default()
                },
                from,
                to,
                keep,
                usize::MAX,
            );
            (tail, stored)
        };
        let after_large = LARGE + 2;
        for (from, to, keep) in [
            (after_large, head, usize::MAX),
            (head, head, 1),
            (head - 30, head - 2, 5),
        ] {
            let (tail, stored) = same(from, to, keep);
            let tail = tail.expect("in the tail");
            assert!(stored.error.is_none(), "{:?}", stored.error);
            assert_eq!(
                (tail.base, &tail.owner, &tail.sizes, &tail.ts_ms),
                (stored.base, &stored.owner, &stored.sizes, &stored.ts_ms),
                "{from}..={to}"
            );
            assert_eq!(tail.entries, stored.entries, "{from}..={to}");
        }
        // Older than the tail (it keeps the newest only), or the large
        // value it dropped: read from the storage.
        assert!(same(1, 10, usize::MAX).0.is_none());
        assert!(same(after_large - 3, head, usize::MAX).0.is_none());
        let w = log.plan(1, 10, usize::MAX, usize::MAX);
        assert_eq!((w.len(), w.entries.map(|e| e.len())), (10, Some(10)));
    }

    /// A lag's age comes from the entry after the cursor: from memory for
    /// the newest, read back for older ones, the same time either way.
    #[tokio::test]
    async fn the_time_of_an_entry_in_memory_is_the_time_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(Arc::new(
            SledStorage::open(dir.path(), 8 << 20).expect("open"),
        ))
        .expect("log");
        for i in 0..(TAIL_ENTRIES as u64 + 8) {
            if i % 50 == 0 || i + 6 > TAIL_ENTRIES as u64 {
                // Entries a few ms apart, so that a neighbour's time
                // differs from their own.
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            }
            let key = Key::parse(&format!("k{i}")).expect("key");
            log.append(Write::put(key, Bytes::from_static(b"v")))
                .await
                .expect("append");
        }
        let head = log.head();
        let mut in_memory = 0;
        for seq in 1..=head {
            let mut stored = None;
            log.storage
                .scan(seq, seq, &mut |s, rec| {
                    stored = Some(codec::decode(s, rec).expect("decode").ts_ms);
                    false
                })
                .expect("scan");
            let here = log.tail.lock().expect("tail").ts_of(seq);
            if let Some(ts) = here {
                assert_eq!(Some(ts), stored, "seq {seq}");
                in_memory += 1;
            }
        }
        assert_eq!(in_memory, TAIL_ENTRIES, "the newest entries are in memory");
        assert!(log.tail.lock().expect("tail").ts_of(head + 1).is_none());
        assert_eq!(log.lag_at(head, 0).entries, 0);
        assert_eq!(log.lag_at(head - 1, 0).entries, 1);
    }

    #[tokio::test]
    async fn truncation_keeps_the_head_so_seqs_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage).expect("log");
        for i in 0..5 {
            log.append(put(&format!("k{i}"), "v"))
                .await
                .expect("append");
        }
        assert_eq!(log.truncate_below(100).expect("truncate"), 4);
        assert_eq!(log.first(), 5);
        let b = log.read(2, 10, usize::MAX);
        assert!(
            b.error
                .expect("truncated")
                .to_string()
                .contains("truncated")
        );
        assert_eq!(log.append(put("k", "v")).await.expect("append").seq, 6);
    }

    /// Whoever sees a head sees its keys, without waiting: the committer
    /// indexes a group before it publishes the group's head, so a lookup
    /// (a key's fit, a precondition) never waits on a hand-off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_published_head_is_already_in_the_key_index() {
        use futures::FutureExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage).expect("log");
        let total = 16 * 40;
        let watcher = {
            let log = log.clone();
            std::thread::spawn(move || {
                let (mut looked, mut seen) = (0u64, 0u64);
                let started = std::time::Instant::now();
                while seen < total {
                    assert!(
                        started.elapsed() < std::time::Duration::from_secs(30),
                        "the writers stopped at head {seen} of {total}"
                    );
                    let head = log.head();
                    if head == seen {
                        std::thread::yield_now();
                        continue;
                    }
                    seen = head;
                    let batch = log.read(head, 1, usize::MAX);
                    let key = batch.entries[0].key.clone();
                    let found = log
                        .key_info(&key)
                        .now_or_never()
                        .expect("a lookup of a published entry's key waited")
                        .expect("lookup");
                    assert!(
                        found.is_some_and(|i| i.seq >= head),
                        "head {head} was published before its key {key:?} was indexed"
                    );
                    looked += 1;
                }
                looked
            })
        };
        let mut tasks = Vec::new();
        for w in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..40 {
                    log.append(put(&format!("w{w}/{i}"), "v"))
                        .await
                        .expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let looked = watcher.join().expect("watcher");
        assert!(looked > 0);
    }

    #[tokio::test]
    async fn key_index_sees_acked_writes_at_once_and_survives_reopen_and_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = Log::open(Arc::new(
                SledStorage::open(dir.path(), 8 << 20).expect("open"),
            ))
            .expect("log");
            log.append(put("a/1", "x")).await.expect("append");
            log.append(put("b", "yy")).await.expect("append");
            log.append(put("a/1", "zzz")).await.expect("append");
            let mut del = put("a/2", "");
            del.op = Op::Delete;
            log.append(del).await.expect("append");
            let a = log.key_info("a/1").await.expect("info").expect("present");
            assert_eq!((a.seq, a.size, a.op), (3, 3, Op::Put));
            let keys = log.keys_with_prefix("a/", "", 10).await.expect("keys");
            assert_eq!(
                keys.iter()
                    .map(|(k, i)| (k.as_str(), i.seq))
                    .collect::<Vec<_>>(),
                vec![("a/1", 3), ("a/2", 4)]
            );
        }
        // Closing checkpoints the index; reopening reads it back.
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("reopen"));
        assert_eq!(storage.key_index_watermark().expect("wm"), 4);
        // Entries the index never saw (a crash between commit and
        // checkpoint) are indexed again from the log on open.
        let rec = codec::encode(5, 1, Op::Put, "c", b"cc");
        storage
            .append(&[PendingRecord {
                seq: 5,
                record: &rec,
            }])
            .expect("raw append");
        storage.sync().expect("sync");
        let log = Log::open(storage).expect("log");
        assert_eq!(
            log.key_info("c").await.expect("info").map(|i| i.seq),
            Some(5)
        );
        assert_eq!(
            log.key_info("b").await.expect("info").map(|i| i.seq),
            Some(2)
        );
    }

    proptest::proptest! {
        /// A listing of storage and of the pending index, each cut at the
        /// limit, answers the first keys of both together, each at its
        /// newest entry.
        #[test]
        fn listings_merge_like_one_map(
            a in proptest::collection::btree_map("[a-d]{1,3}", 1u64..50, 0..20),
            b in proptest::collection::btree_map("[a-d]{1,3}", 1u64..50, 0..20),
            limit in 1usize..25,
        ) {
            let info = |seq: u64| KeyInfo { seq, op: Op::Put, size: 0, meta: None };
            let mut model = a.clone();
            for (k, seq) in &b {
                let e = model.entry(k.clone()).or_insert(*seq);
                *e = (*e).max(*seq);
            }
            let want: Vec<(String, u64)> = model.into_iter().take(limit).collect();
            let cut = |m: &std::collections::BTreeMap<String, u64>| -> Vec<(String, KeyInfo)> {
                m.iter().take(limit).map(|(k, s)| (k.clone(), info(*s))).collect()
            };
            let got: Vec<(String, u64)> = merge_listings(cut(&a), cut(&b), limit)
                .into_iter()
                .map(|(k, i)| (k, i.seq))
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn offsets_of_many_cursors_match_one_by_one_and_lag_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(Arc::new(
            SledStorage::open(dir.path(), 8 << 20).expect("open"),
        ))
        .expect("log");
        for i in 0..12 {
            log.append(put(&format!("k{i}"), &"x".repeat(i * 7)))
                .await
                .expect("append");
        }
        let cursors = [0, 3, 3, 7, 12, 5];
        let many = log.offsets_of(&cursors).expect("offsets");
        for (c, o) in cursors.iter().zip(&many) {
            assert_eq!(*o, log.offset_of(*c).expect("offset"), "cursor {c}");
            assert_eq!(
                log.lag_at(*c, *o).bytes,
                log.lag(*c).expect("lag").bytes,
                "cursor {c}"
            );
        }
    }
}
