//! The log storage trait and its sled engine.
//!
//! sled 0.34 is beta and its 1.0 is a rewrite, so the replicator only sees
//! [`LogStorage`]: append a batch, make it durable, scan a range, truncate,
//! cursors, the key index and small metadata.
//!
//! Durability (SPEC guarantee 1): `sync` returns only when every appended
//! record is on stable storage. sled's `flush()` on Linux stops at
//! `sync_file_range`, which survives a process crash but not a power loss,
//! so `sync` follows it with `fdatasync` of sled's data file, and of any
//! blob file sled wrote for a large value (sled does not sync those).
//!
//! Layout (one sled database in `data_dir/log`):
//! - tree `log`:     seq (u64 big-endian, so byte order is seq order) of a
//!   frame's first record → the frame (consecutive records, see `frame`)
//! - tree `keys`:    key → [`KeyInfo`] of its newest entry, as sorted runs
//!   with a watermark (see `keyindex`)
//! - tree `cursors`: target name → its [`TargetRecord`] (cursor, offset,
//!   state, replay intent, marked; see `target_record`). Older data dirs
//!   held the cursor alone there and the rest in `meta`: they are
//!   rewritten as records at open
//! - tree `meta`:    small named values (target list, origin, head)
//! - tree `versions`: target NUL key → the version walship knows a target
//!   holds (see `conflict`)
//! - tree `conflicts`: id (u64 big-endian) → an open manual conflict
//!
//! After a failed write, sled's files are copied anew at the reopen (a
//! copy in `data_dir/log.rebuild`, marked complete, put in place of `log`
//! by way of `log.old`; see `SledStorage::must_rebuild`): a page whose
//! write-back failed reads back on this machine but may be missing on the
//! device.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::codec::Op;
use crate::error::{Error, Result};
use crate::frame::{self, FrameBuilder};
use crate::headfile::HeadFile;
pub use crate::headfile::HeadMark;
use crate::keyindex::KeyIndex;
use crate::target_record;
pub use crate::target_record::TargetRecord;

/// A record ready to be appended.
#[derive(Debug)]
pub struct PendingRecord<'a> {
    /// Its seq.
    pub seq: u64,
    /// The encoded record (see `codec`).
    pub record: &'a [u8],
}

/// Where a key's newest entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Seq of the newest entry for the key.
    pub seq: u64,
    /// Whether it put or deleted the key.
    pub op: Op,
    /// Value size of that entry.
    pub size: u64,
    /// The object's metadata (ETag, time, attributes); `None` for a delete
    /// and for keys last written before metadata (codec v1).
    pub meta: Option<crate::object::Meta>,
}

/// The op byte's flag for "an encoded `ObjectMeta` follows".
const WITH_META: u8 = 0x80;

impl KeyInfo {
    /// A key's index record: 17 bytes (seq, op, size) as before metadata;
    /// with metadata the op byte has [`WITH_META`] set and a u16 LE length
    /// and the encoded `ObjectMeta` follow.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_be_bytes());
        let op = match self.op {
            Op::Put => 1,
            Op::Delete => 2,
        };
        let meta = self.meta.as_ref().map(|m| m.encode());
        out.push(if meta.is_some() { op | WITH_META } else { op });
        out.extend_from_slice(&self.size.to_be_bytes());
        if let Some(m) = meta {
            // ObjectMeta::check_size keeps it far below u16::MAX at the door.
            out.extend_from_slice(&(m.len().min(u16::MAX as usize) as u16).to_le_bytes());
            out.extend_from_slice(&m[..m.len().min(u16::MAX as usize)]);
        }
    }

    /// The record's encoded length.
    pub(crate) fn encoded_len(&self) -> usize {
        17 + self.meta.as_ref().map_or(0, |m| 2 + m.encode().len())
    }

    /// Reads a record written by [`KeyInfo::write_to`] at the start of
    /// `b`: the info and the bytes it took.
    pub(crate) fn read_from(b: &[u8]) -> Option<(KeyInfo, usize)> {
        let fixed = b.get(..17)?;
        let op = match fixed[8] & !WITH_META {
            1 => Op::Put,
            2 => Op::Delete,
            _ => return None,
        };
        let mut used = 17;
        let meta = if fixed[8] & WITH_META != 0 {
            let l = b.get(17..19)?;
            let len = u16::from_le_bytes([l[0], l[1]]) as usize;
            let m = crate::object::ObjectMeta::decode(b.get(19..19 + len)?)?;
            used += 2 + len;
            Some(Arc::new(m))
        } else {
            None
        };
        Some((
            KeyInfo {
                seq: u64::from_be_bytes(fixed[..8].try_into().ok()?),
                op,
                size: u64::from_be_bytes(fixed[9..].try_into().ok()?),
                meta,
            },
            used,
        ))
    }

    /// The length of the record at the start of `b`, read from its
    /// header alone (nothing decoded): how a reader skips it.
    pub(crate) fn len_at(b: &[u8]) -> Option<usize> {
        let op = *b.get(8)?;
        if !matches!(op & !WITH_META, 1 | 2) || b.len() < 17 {
            return None;
        }
        if op & WITH_META == 0 {
            return Some(17);
        }
        let l = b.get(17..19)?;
        let n = 19 + u16::from_le_bytes([l[0], l[1]]) as usize;
        (b.len() >= n).then_some(n)
    }

    /// A whole record, nothing after it.
    pub(crate) fn from_bytes(b: &[u8]) -> Option<KeyInfo> {
        let (info, used) = KeyInfo::read_from(b)?;
        (used == b.len()).then_some(info)
    }

    /// The ETag without quotes, when known.
    pub fn etag(&self) -> Option<&str> {
        self.meta
            .as_deref()
            .map(|m| m.etag.as_str())
            .filter(|e| !e.is_empty())
    }
}

/// The log's records. Implementations must keep appended records in
/// seq order and make them durable on `sync`.
pub trait LogStore: Send + Sync + 'static {
    /// Stores records. Not durable until `sync`.
    fn append(&self, batch: &[PendingRecord<'_>]) -> Result<()>;
    /// About how many bytes can still be appended now without leaving less
    /// than the reserve the engine needs free (see [`ROOM_RESERVE`]), from
    /// a recent reading of the disk; `None`: no bound. Default: none.
    fn room(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Makes everything appended (and every cursor set) durable.
    fn sync(&self) -> Result<()>;
    /// Calls `f(seq, record)` for stored records with `from <= seq <= to`,
    /// in seq order, until `f` returns false.
    fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()>;
    /// Lowest and highest stored seq.
    fn bounds(&self) -> Result<Option<(u64, u64)>>;
    /// Removes records with seq below `seq`, never the last one; returns
    /// how many.
    fn truncate_below(&self, seq: u64) -> Result<u64>;
    /// Removes every record (repair of a log that lost entries; see
    /// `log::repair`).
    fn clear_log(&self) -> Result<()>;

    /// A group commit's sync: every record appended is durable (for sled,
    /// in its journal: see `journal`), and the head record outside the
    /// engine says `acked` (every seq acknowledged so far) and
    /// `committing` (this group's last seq), durably, by the time it
    /// returns (see `headfile`). Default: a plain sync (no head record).
    fn sync_group(&self, acked: u64, committing: u64) -> Result<()> {
        let _ = (acked, committing);
        self.sync()
    }
    /// Makes everything the engine holds durable on its own and lets go of
    /// what only the journal kept meanwhile (run every 200 ms by the log's
    /// index thread, and as it closes). Default: a sync.
    fn checkpoint(&self) -> Result<()> {
        self.sync()
    }
    /// After a group's sync, before its writers are answered: the head
    /// record says `acked` (no sync of its own; the next group's makes it
    /// durable). Default: nothing.
    fn mark_acked(&self, acked: u64) -> Result<()> {
        let _ = acked;
        Ok(())
    }
    /// The head record as found when the storage opened, `Ok(None)` when
    /// there is none yet. Default: none.
    fn head_mark(&self) -> Result<Option<HeadMark>> {
        Ok(None)
    }
    /// Writes the head record durably (on open, and by repair).
    fn set_head_mark(&self, mark: HeadMark) -> Result<()> {
        let _ = mark;
        Ok(())
    }
    /// The data directory, for messages.
    fn dir(&self) -> PathBuf {
        PathBuf::new()
    }
    /// Whether the engine failed an I/O since it last opened (after which
    /// it may refuse every write until [`LogStore::reopen`], as sled
    /// does). Default: never.
    fn failed(&self) -> bool {
        false
    }
    /// Called (from the failing thread, so it must not block) each time
    /// the engine fails an I/O: the log's committer reopens it then, rather
    /// than only when its own next write fails. Default: never called.
    fn on_failure(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = hook;
    }
    /// How many times the storage has reopened. A change written before a
    /// reopen that no sync had made durable is gone: see `sync_since`.
    /// Default: never reopens.
    fn generation(&self) -> u64 {
        0
    }
    /// Like [`LogStore::sync`], for changes written since `generation`
    /// was read: fails if the storage reopened meanwhile (the changes may
    /// be gone, so the caller must make them again), even though the sync
    /// of the reopened storage worked.
    fn sync_since(&self, generation: u64) -> Result<()> {
        self.sync()?;
        if self.generation() != generation {
            return Err(Error::LogReopened);
        }
        Ok(())
    }
    /// Drops what the engine holds in memory and opens it again from disk
    /// (after a failed flush: what was not made durable is gone).
    /// Default: not possible.
    fn reopen(&self) -> Result<()> {
        Err(Error::BadRequest(
            "this log storage cannot reopen itself; restart walship".into(),
        ))
    }
    /// How long the last [`LogStore::reopen`] worked on the disk (a copy
    /// and an open of the engine's files), not counting its waits for an
    /// old handle or a lock: what paces a failed one (`reopen_pace`).
    /// Default: none.
    fn reopen_work(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Removes every record above `seq` (a tail a failed flush left
    /// behind: its writers were answered with an error). Returns how many.
    fn remove_above(&self, seq: u64) -> Result<u64> {
        let _ = seq;
        Ok(0)
    }
}

/// What is kept next to the log: cursors, the key index, small named
/// values and the side tables. Durable with the log's next `sync`.
pub trait StateStore: Send + Sync + 'static {
    /// Records the newest entry of each key and that the index now covers
    /// every seq up to `watermark` (derived data: rebuilt from the log on
    /// open, so it needs no sync of its own).
    fn index(&self, keys: &[(&str, KeyInfo)], watermark: u64) -> Result<()>;
    /// [`StateStore::index`], only into storage generation `generation`
    /// (see `LogStore::generation`): `LogReopened` when the storage
    /// reopened since, and nothing is written.
    fn index_in(&self, generation: u64, keys: &[(&str, KeyInfo)], watermark: u64) -> Result<()>;
    /// A target's persisted record; `Damaged` when its bytes do not
    /// decode.
    fn target(&self, target: &str) -> Result<Option<TargetRecord>>;
    /// Persists a target's record whole (durable with the next `sync`).
    fn set_target(&self, target: &str, record: &TargetRecord) -> Result<()>;
    /// [`StateStore::set_target`], only into storage generation
    /// `generation` (see `LogStore::generation`): `LogReopened` when the
    /// storage reopened since, and the record is not written.
    fn set_target_in(&self, generation: u64, target: &str, record: &TargetRecord) -> Result<()>;
    /// Every persisted target record, by name; a damaged one is `Err`
    /// (with what is wrong), the others still listed.
    fn targets(&self) -> Result<Vec<(String, std::result::Result<TargetRecord, String>)>>;
    /// The newest entry of a key.
    fn key_info(&self, key: &str) -> Result<Option<KeyInfo>>;
    /// Keys starting with `prefix` and greater than `after` ("" for none),
    /// in key order, at most `limit`.
    fn keys_with_prefix(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, KeyInfo)>>;
    /// The highest seq the key index has absorbed.
    fn key_index_watermark(&self) -> Result<u64>;
    /// A small named value.
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Sets a small named value (durable with the next `sync`).
    fn set_meta(&self, name: &str, value: &[u8]) -> Result<()>;
    /// A value of a side table.
    fn side(&self, table: Side, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Sets (`Some`) or removes (`None`) a value of a side table (durable
    /// with the next `sync`).
    fn set_side(&self, table: Side, key: &[u8], value: Option<&[u8]>) -> Result<()>;
    /// Every entry of a side table whose key starts with `prefix`, in order.
    fn side_scan(&self, table: Side, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// The storage a log needs: its records and what is kept next to them.
pub trait LogStorage: LogStore + StateStore {}

impl<T: LogStore + StateStore> LogStorage for T {}

/// The side tables next to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What walship knows each target holds, per key.
    Versions,
    /// Open manual conflicts.
    Conflicts,
}

/// Whether sled could not take its file lock (another handle holds it).
fn is_lock_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock")
}

/// Tries (100 ms apart) to take sled's file lock before giving up.
const LOCK_WAIT_TRIES: u32 = 30;

/// Records at least this long may land in sled blob files, which need their
/// own fsync.
const BLOB_CANDIDATE_BYTES: usize = 16 * 1024;

/// Free space the committer keeps in `data_dir`: a write is refused (507)
/// before it would leave less ([`LogStore::room`]).
///
/// sled 0.34 stores a value of over a quarter of its 512 KiB segment, and a
/// page it rewrites whole when that large (16 records of 8–64 KiB), in a
/// file of its own, and it does not survive a failed write of such a file:
/// it leaves the write's slot in its I/O buffer reserved for good, so every
/// later flush, and the drop of the database, waits forever (a full disk
/// made the whole sidecar hang). So sled must never meet a full disk: the
/// reserve leaves room for what it writes besides the appended records
/// (pages rewritten, the cursors and version records the shippers write,
/// the key index). What is left is the race with another process filling
/// the disk in the same instant.
pub const ROOM_RESERVE: u64 = 4 << 20;

/// Free space is read at least this often by `room`, and at every group
/// once less than `ROOM_SLACK` beyond the reserve is left.
const ROOM_READ_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
const ROOM_SLACK: u64 = 64 << 20;

/// How long a reopen waits for sled to let go of the old database.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The sled handles of one open of the database (replaced whole by
/// [`LogStore::reopen`]).
struct Sled {
    db: sled::Db,
    log: sled::Tree,
    keys: KeyIndex,
    cursors: sled::Tree,
    meta: sled::Tree,
    versions: sled::Tree,
    conflicts: sled::Tree,
    data_file: File,
}

/// One step of a group's sync with the head record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupStep {
    /// Start the record's fdatasync on its own thread, or submit the
    /// write of its page.
    StartHead,
    /// Submit the write of the journal's new bytes (no wait), to run
    /// alongside the record's.
    StartLog,
    /// Wait for the record's fdatasync, or for its page's write.
    FinishHead,
    /// fdatasync of the journal: the device flush.
    SyncLog,
}

/// The order of a group's sync. With `SharedFlush` the record's
/// write-back must be complete before the journal's fdatasync, whose
/// device flush makes it durable, and the journal's own write goes to the
/// device alongside it; with `OwnSync` the record's fdatasync is waited
/// for last, so the two fdatasyncs overlap.
fn group_sync_steps(d: crate::headfile::Durability) -> &'static [GroupStep] {
    use GroupStep::*;
    match d {
        crate::headfile::Durability::SharedFlush => &[StartHead, StartLog, FinishHead, SyncLog],
        crate::headfile::Durability::OwnSync => &[StartHead, SyncLog, FinishHead],
    }
}

/// [`LogStorage`] on sled 0.34.
pub struct SledStorage {
    path: PathBuf,
    cache_bytes: u64,
    /// `None` only while a reopen has not succeeded yet.
    sled: std::sync::RwLock<Option<Arc<Sled>>>,
    head: HeadFile,
    /// The write-ahead of the log's records (see `journal`).
    journal: crate::journal::Journal,
    /// Held by a checkpoint and by a reopen (sled opened again, the journal
    /// replayed into it): a checkpoint never flushes a sled that lacks
    /// what the journal holds, then removes the journal.
    checkpointing: Mutex<()>,
    /// Off only in `benches/append`, to measure what the head record costs.
    head_record: AtomicBool,
    blobs_pending: AtomicBool,
    /// The blob directory's modification time when it was last listed
    /// (`None`: list it at the next sync). sled also writes pages it
    /// rewrites whole as blob files, after any append: a changed directory
    /// is how those are found.
    blobs_listed: Mutex<Option<std::time::SystemTime>>,
    /// The last free-space reading of `room`: when, how much was
    /// free, and `appended` then.
    room_seen: Mutex<Option<(std::time::Instant, u64, u64)>>,
    /// Bytes appended to the log since open.
    appended: AtomicU64,
    blobs_synced: Mutex<u64>,
    /// Why the log cannot reopen until walship restarts (sled stuck; see
    /// `release`).
    stuck: Mutex<Option<String>>,
    /// Set by any failed sled I/O, cleared by a reopen: sled's flusher
    /// thread meeting a full disk makes every later write of any thread
    /// fail (its "global error") until the database is opened again.
    failed: AtomicBool,
    /// Set by a failed sync of sled's files (its flush or an fdatasync),
    /// cleared as a reopen copies them anew ([`rebuild_sled`]; every reopen
    /// does, as the old handle's own flush as it goes can fail unseen). A
    /// failed read sets only `failed` (a sync that then works says the
    /// storage is well). A page
    /// whose write-back failed is marked clean by Linux: every read in
    /// this process still shows it, and a later sync that succeeds does
    /// not write it again, so the device can lack what sled's later
    /// snapshot says is there (a machine restart then finds the log
    /// "corrupted" and the journal that held it removed). Until rebuilt,
    /// `sync` answers an error: no checkpoint removes a journal file.
    must_rebuild: AtomicBool,
    /// [`LogStore::reopen_work`], µs.
    reopen_work_us: AtomicU64,
    /// Replaced by each `Log::open` on this storage.
    on_failure: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    /// Counts reopens (see `LogStorage::generation`).
    generation: AtomicU64,
    /// A checkpoint fails after its sync, as a failed removal of an old
    /// journal file makes it (see `SledStorage::fail_journal_cleanup`).
    #[cfg(test)]
    fail_cleanup: AtomicBool,
}

impl SledStorage {
    /// [`LogStore::reopen`]; sets `work_from` once its work on the disk
    /// begins (see [`LogStore::reopen_work`]).
    fn reopen_from_disk(&self, work_from: &mut Option<std::time::Instant>) -> Result<()> {
        if let Some(why) = self.stuck.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Error::LogPoisoned(why));
        }
        // No checkpoint in between: sled reopened, the journal replayed.
        let _held = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        let mut guard = self.sled.write().unwrap_or_else(|p| p.into_inner());
        // What the old handle held in memory goes with it.
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = guard.take() {
            self.let_go(old)?;
        }
        // (This process owns the data dir: it held sled's lock until now.)
        // A snapshot sled began on a full disk stays behind half written
        // (`snap.*.generating`) and makes the next open fail as corrupt;
        // it is derived data (sled rebuilds it from its log): remove it.
        if let Ok(dir) = std::fs::read_dir(&self.path) {
            for f in dir.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("snap.") && name.ends_with(".generating") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        // Every reopen follows a failure, and the old handle's own flush as
        // it went (sled's drop) may have failed unseen: its files are
        // copied anew (see `must_rebuild`). Readers meanwhile find no
        // handle and are told the log is reopening, rather than wait.
        drop(guard);
        self.must_rebuild.store(false, Ordering::Release);
        if let Err(e) = rebuild_sled(&self.path, work_from) {
            self.must_rebuild.store(true, Ordering::Release);
            return Err(e);
        }
        let opened = Arc::new(open_sled(&self.path, self.cache_bytes)?);
        // What sled held in memory went with the old handle; the journal
        // still holds every group made durable since the last checkpoint.
        // Put back before the handle is installed: a reader meanwhile
        // (a target rewound onto the reopened log) would find entries
        // missing that only the journal holds.
        if let Err(e) = self
            .replay_into(&opened)
            .and_then(|_| self.reaches_acked(&opened))
        {
            // A sled without what the journal holds must not be flushed
            // by a checkpoint that then removes the journal: no handle
            // until a reopen has replayed it whole. Let go of it as of
            // any other (its flush can hang on a full disk).
            self.let_go(opened)?;
            return Err(e);
        }
        *self.sled.write().unwrap_or_else(|p| p.into_inner()) = Some(opened);
        self.failed.store(false, Ordering::Release);
        Ok(())
    }

    /// Opens (or creates) the log database in `dir`, with a cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStorage> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), e))?;
        let path = dir.join("log");
        finish_rebuild(&path)?;
        let sled = open_sled(&path, cache_bytes)?;
        let journal_dir = dir.join("journal");
        std::fs::create_dir_all(&journal_dir).map_err(|e| {
            Error::io(
                format!("creating the journal directory {}", journal_dir.display()),
                e,
            )
        })?;
        // The record is carried by the journal's fdatasync where it can be.
        let head = HeadFile::open(dir, &journal_dir)?;
        // Make the directory entries of a new database durable once.
        for d in [dir, path.as_path()] {
            if let Ok(f) = File::open(d) {
                let _ = f.sync_all();
            }
        }
        let journal = crate::journal::Journal::open(&journal_dir)?;
        let storage = SledStorage {
            path,
            cache_bytes,
            sled: std::sync::RwLock::new(Some(Arc::new(sled))),
            head,
            journal,
            checkpointing: Mutex::new(()),
            head_record: AtomicBool::new(true),
            blobs_pending: AtomicBool::new(false),
            blobs_listed: Mutex::new(None),
            room_seen: Mutex::new(None),
            appended: AtomicU64::new(0),
            blobs_synced: Mutex::new(0),
            stuck: Mutex::new(None),
            failed: AtomicBool::new(false),
            must_rebuild: AtomicBool::new(false),
            reopen_work_us: AtomicU64::new(0),
            on_failure: Mutex::new(None),
            generation: AtomicU64::new(0),
            #[cfg(test)]
            fail_cleanup: AtomicBool::new(false),
        };
        storage.replay()?;
        Ok(storage)
    }

    /// The first and last seq handle `s` holds (see `LogStore::bounds`).
    fn bounds_in(&self, s: &Sled) -> Result<Option<(u64, u64)>> {
        let first = s.log.first().map_err(self.err("reading the log"))?;
        let last = s.log.last().map_err(self.err("reading the log"))?;
        let (Some((a, _)), Some((b, last))) = (first, last) else {
            // A log emptied by repair keeps its head (no seq is used twice).
            return Ok(s
                .meta
                .get(crate::log::HEAD_FLOOR_META)
                .map_err(self.err("reading metadata"))?
                .and_then(|b| Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?)))
                .map(|h| (h + 1, h)));
        };
        let (first, last_frame) = (frame_seq(&a, 0)?, frame_seq(&b, 0)?);
        let n = frame::count(&last).map_err(|e| Error::Corrupt {
            seq: last_frame + e.index,
            reason: e.reason,
        })?;
        Ok(Some((first, last_frame + n - 1)))
    }

    /// Brings sled up to what the journal holds (see `journal`:
    /// [`crate::journal::View`] reads the files as one run of records,
    /// [`crate::journal::replay_plan`] decides what of it goes in).
    /// Returns the records put in.
    fn replay(&self) -> Result<u64> {
        self.replay_into(&*self.s()?)
    }

    /// [`SledStorage::replay`] into handle `s` (a reopen's, before it is
    /// installed for anyone else to read).
    fn replay_into(&self, s: &Sled) -> Result<u64> {
        let files = self.journal.read()?;
        let Some(view) = crate::journal::View::of(files) else {
            return Ok(0);
        };
        let (sled_first, sled_head) = self.bounds_in(s)?.unwrap_or((1, 0));
        // A damaged head record says nothing: the run alone decides.
        let acked = self.head.found().ok().flatten().map_or(0, |m| m.acked);
        for note in &view.notes {
            tracing::info!(note = %note, "the journal's replay passed over");
        }
        if let Some(why) = &view.damaged {
            tracing::warn!(why = %why, "the journal is damaged: only what lies past the log's head is taken from it");
        }
        let plan = match crate::journal::replay_plan(&view, sled_first, sled_head, acked) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(why = %why, "the journal was not replayed");
                return Ok(0);
            }
        };
        // The trim and what replaces it in one sled batch: a crash midway
        // (sled writes its buffers when they fill) keeps both or neither.
        let mut batch = sled::Batch::default();
        if let Some(seq) = plan.trim_above {
            self.trim_into(s, seq, &mut batch)?;
        }
        let skip = plan.from.saturating_sub(view.first) as usize;
        let mut frames = FrameBuilder::default();
        let mut put = 0u64;
        for (i, r) in view.records.iter().skip(skip).enumerate() {
            frames.push(plan.from + i as u64, r);
            put += 1;
        }
        let (bytes, large) = add_frames(frames, &mut batch);
        s.log
            .apply_batch(batch)
            .map_err(self.err("putting the journal back into the log"))?;
        self.appended.fetch_add(bytes, Ordering::AcqRel);
        if large {
            self.blobs_pending.store(true, Ordering::Release);
        }
        if put > 0 {
            tracing::info!(
                from = plan.from,
                to = plan.from + put - 1,
                "log entries put back from the journal"
            );
        }
        Ok(put)
    }

    /// Puts records into sled's log tree, as frames (no sync).
    fn insert_frames(&self, batch: &[PendingRecord<'_>]) -> Result<()> {
        let mut frames = FrameBuilder::default();
        for r in batch {
            frames.push(r.seq, r.record);
        }
        let frames = frames.finish();
        let large = frames.iter().any(|(_, f)| f.len() >= BLOB_CANDIDATE_BYTES);
        let bytes: u64 = frames.iter().map(|(_, f)| f.len() as u64).sum();
        // A group of one frame (most groups: a frame holds 8 KiB) is one
        // insert, atomic by itself. A batch takes sled's process-wide
        // write lock, which waits for every sled read and write under way
        // (the shippers' cursors and version records): about 40 µs of a
        // single writer's commit here.
        let log = &self.s()?.log;
        let appended = if let [(first, frame)] = frames.as_slice() {
            log.insert(first.to_be_bytes(), frame.as_slice())
                .map(|_| ())
        } else {
            let mut log_batch = sled::Batch::default();
            for (first, frame) in frames {
                log_batch.insert(&first.to_be_bytes(), frame);
            }
            log.apply_batch(log_batch)
        };
        appended.map_err(self.err("appending to the log"))?;
        self.appended.fetch_add(bytes, Ordering::AcqRel);
        if large {
            self.blobs_pending.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Removes sled's records above `seq` (the journal untouched), in one
    /// batch. Returns how many.
    fn remove_in_sled_above(&self, seq: u64) -> Result<u64> {
        let mut batch = sled::Batch::default();
        let s = self.s()?;
        let removed = self.trim_into(&s, seq, &mut batch)?;
        s.log
            .apply_batch(batch)
            .map_err(self.err("trimming the log"))?;
        Ok(removed)
    }

    /// Adds to `batch` what removes sled's records above `seq`: the frames
    /// past it go, a frame that runs past it keeps its records up to
    /// `seq`. Returns how many frames go, and records of the one cut.
    fn trim_into(&self, s: &Sled, seq: u64, batch: &mut sled::Batch) -> Result<u64> {
        let mut removed = 0;
        for kv in s.log.range(seq.saturating_add(1).to_be_bytes()..) {
            let (k, _) = kv.map_err(self.err("reading the log"))?;
            batch.remove(k);
            removed += 1;
        }
        if let Some((k, v)) = s
            .log
            .get_lt(seq.saturating_add(1).to_be_bytes())
            .map_err(self.err("reading the log"))?
        {
            let first = frame_seq(&k, seq)?;
            let recs = frame_records(first, &v)?;
            let keep = (seq + 1 - first) as usize;
            if recs.len() > keep {
                batch.insert(k, frame::frame_of(recs[..keep].iter().copied()));
                removed += (recs.len() - keep) as u64;
            }
        }
        Ok(removed)
    }

    /// Closes a handle taken out of its slot: waits for the readers that
    /// still hold it (one call each at most), so that sled's file lock is
    /// free for the next open, then lets sled flush and go on a thread of
    /// its own ([`release`]); a sled that does not let go poisons the log.
    fn let_go(&self, mut old: Arc<Sled>) -> Result<()> {
        for _ in 0..100 {
            match Arc::try_unwrap(old) {
                Ok(s) => {
                    if let Err(e) = release(s, &self.path) {
                        *self.stuck.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        return Err(e);
                    }
                    return Ok(());
                }
                Err(shared) => {
                    old = shared;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        Ok(())
    }

    /// After a reopen's replay: the log reaches every seq the head record
    /// says was acknowledged (a journal that could not say so leaves it
    /// short, and this process must not write on past the hole).
    fn reaches_acked(&self, s: &Sled) -> Result<()> {
        let head = self.bounds_in(s)?.map_or(0, |(_, h)| h);
        let acked = self.head.found().ok().flatten().map_or(0, |m| m.acked);
        if head < acked {
            return Err(Error::io(
                "replaying the journal into the log",
                std::io::Error::other(format!(
                    "the log reaches seq {head} but seqs up to {acked} were acknowledged, and the journal in {} does not hold the rest; restart walship (the open then says what is missing and how to repair it)",
                    self.journal.dir().display()
                )),
            ));
        }
        Ok(())
    }

    fn s(&self) -> Result<Arc<Sled>> {
        let guard = self.sled.read().unwrap_or_else(|p| p.into_inner());
        self.handle(&guard)
    }

    /// The handle of storage generation `generation`: `LogReopened` when
    /// the storage reopened since. (A reopen moves the generation only
    /// with the handle's write lock held.)
    fn s_in(&self, generation: u64) -> Result<Arc<Sled>> {
        let guard = self.sled.read().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return Err(Error::LogReopened);
        }
        self.handle(&guard)
    }

    fn handle(&self, sled: &Option<Arc<Sled>>) -> Result<Arc<Sled>> {
        sled.clone().ok_or_else(|| {
            match self.stuck.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                Some(why) => Error::LogPoisoned(why),
                None => Error::DiskFull(format!(
                    "the log in {} is being reopened after a failed flush",
                    self.path.display()
                )),
            }
        })
    }

    /// For `benches/append` only: group commits skip the head record, as
    /// before guarantee 8, so one run can measure what it costs. Never
    /// call this in a sidecar: a shorter log would go unnoticed.
    #[doc(hidden)]
    pub fn bench_without_head_record(&self) {
        self.head_record.store(false, Ordering::Relaxed);
    }

    /// The rest of a sync once sled's `flush()` is done: fdatasync of
    /// sled's data file (and of blob files sled wrote).
    fn sync_flushed(&self, s: &Sled) -> Result<()> {
        s.data_file.sync_data().map_err(|e| {
            Error::io(
                format!("fdatasync of {}", self.path.join("db").display()),
                e,
            )
        })?;
        let changed = self.blobs_changed();
        if (self.blobs_pending.swap(false, Ordering::AcqRel) || changed.is_some())
            && let Err(e) = self.sync_new_blobs()
        {
            self.blobs_pending.store(true, Ordering::Release);
            return Err(e);
        }
        if let Some(seen) = changed {
            *self.blobs_listed.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        }
        // sled flushes nothing while its global error is set: it is not.
        self.failed.store(false, Ordering::Release);
        Ok(())
    }

    /// A group's sync with the head record. With `OwnSync` the record's
    /// fdatasync runs alongside the journal's. With `SharedFlush` the
    /// write of its page must be complete before the journal's fdatasync,
    /// whose device flush then carries it ([`group_sync_steps`]).
    fn sync_with_head(&self, mark: HeadMark) -> Result<()> {
        self.head.write(mark)?;
        let mut head_sync = None;
        let mut failed = None;
        for &step in group_sync_steps(self.head.durability()) {
            let done = match step {
                GroupStep::StartHead => {
                    head_sync = Some(self.head.start_sync());
                    Ok(())
                }
                GroupStep::StartLog => {
                    self.journal.start_write_back();
                    Ok(())
                }
                GroupStep::FinishHead => match head_sync.take() {
                    Some(rx) => self.head.finish_sync(rx),
                    None => Ok(()),
                },
                GroupStep::SyncLog => {
                    if failed.is_some() {
                        continue;
                    }
                    self.journal.sync()
                }
            };
            if let Err(e) = done {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn err(&self, op: &'static str) -> impl Fn(sled::Error) -> Error + '_ {
        move |e| {
            if matches!(e, sled::Error::Io(_)) {
                self.note_failure();
            }
            Error::storage(op, &self.path, e)
        }
    }

    /// Fails every checkpoint after its sync from now on (or no longer),
    /// as a failed removal of an old journal file does.
    #[cfg(test)]
    pub(crate) fn fail_journal_cleanup(&self, on: bool) {
        self.fail_cleanup.store(on, Ordering::Release);
    }

    /// Refuses every sync from now on (or no longer), as a failed write of
    /// sled's files does, without telling anyone (no reopen follows).
    #[cfg(test)]
    pub(crate) fn refuse_syncs(&self, on: bool) {
        self.must_rebuild.store(on, Ordering::Release);
    }

    /// What a failed write of sled's files leaves (as the storage test of
    /// the rebuild makes it): its files must be copied anew before a sync
    /// is trusted, and whoever asked is told.
    #[cfg(test)]
    pub(crate) fn fail_a_write(&self) {
        self.must_rebuild.store(true, Ordering::Release);
        self.note_failure();
    }

    /// Records a failed I/O and tells whoever asked (see `failed`).
    fn note_failure(&self) {
        self.failed.store(true, Ordering::Release);
        if let Some(hook) = self
            .on_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            hook();
        }
    }

    /// `r`, noting a failed sled I/O inside it (the key index reports its
    /// errors itself).
    fn noted<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(Error::Storage { source, .. }) = &r
            && matches!(
                source.downcast_ref::<sled::Error>(),
                Some(sled::Error::Io(_))
            )
        {
            self.note_failure();
        }
        r
    }

    /// `Some(what to remember)` when the blob directory changed since it was
    /// last listed (one `stat`). A modification time within the last
    /// 50 ms is not remembered: file times are coarse, and a blob written
    /// in the same tick after the listing would leave it unchanged.
    fn blobs_changed(&self) -> Option<Option<std::time::SystemTime>> {
        let mtime = std::fs::metadata(self.path.join("blobs"))
            .and_then(|m| m.modified())
            .ok()?;
        let listed = *self.blobs_listed.lock().unwrap_or_else(|p| p.into_inner());
        if listed == Some(mtime) {
            return None;
        }
        let settled = std::time::SystemTime::now()
            .duration_since(mtime)
            .is_ok_and(|age| age > std::time::Duration::from_millis(50));
        Some(settled.then_some(mtime))
    }

    /// fsyncs blob files sled wrote since the last call, and their directory.
    fn sync_new_blobs(&self) -> Result<()> {
        let dir = self.path.join("blobs");
        let Ok(read) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut highest = *synced;
        for item in read.flatten() {
            let Some(id) = item
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if id <= *synced {
                continue;
            }
            match File::open(item.path()) {
                Ok(f) => f.sync_data().map_err(|e| {
                    Error::io(format!("fsync of sled blob {}", item.path().display()), e)
                })?,
                // sled may collect a blob between the listing and the open.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("opening sled blob {}", item.path().display()),
                        e,
                    ));
                }
            }
            highest = highest.max(id);
        }
        if highest == *synced {
            // Nothing new (a blob removed, or none written yet).
            return Ok(());
        }
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("fsync of {}", dir.display()), e))?;
        *synced = highest;
        Ok(())
    }
}

impl LogStore for SledStorage {
    fn room(&self) -> Result<Option<u64>> {
        let appended = self.appended.load(Ordering::Acquire);
        let mut seen = self.room_seen.lock().unwrap_or_else(|p| p.into_inner());
        // Far from full, and read lately: the reading less what was
        // appended since, fourfold (what sled writes per appended byte:
        // pages rewritten, cursors, the index).
        if let Some((at, free, then)) = *seen
            && at.elapsed() < ROOM_READ_EVERY
        {
            let left = free.saturating_sub(appended.saturating_sub(then).saturating_mul(4));
            if left > ROOM_RESERVE.saturating_add(ROOM_SLACK) {
                return Ok(Some(left - ROOM_RESERVE));
            }
        }
        let free = fs2::available_space(&self.path).map_err(|e| {
            Error::io(
                format!("reading the free space of {}", self.path.display()),
                e,
            )
        })?;
        *seen = Some((std::time::Instant::now(), free, appended));
        Ok(Some(free.saturating_sub(ROOM_RESERVE)))
    }

    fn append(&self, batch: &[PendingRecord<'_>]) -> Result<()> {
        // sled first: whatever the journal holds, sled holds too, so a
        // checkpoint's flush covers every journal file it removes.
        self.insert_frames(batch)?;
        if let Some(first) = batch.first() {
            let records: Vec<&[u8]> = batch.iter().map(|r| r.record).collect();
            self.journal.append(first.seq, &records)?;
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        let _held = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        // Groups from now on go to a new journal file; what the older ones
        // hold is in sled (appended there first), durable after this sync.
        self.journal.roll();
        self.sync()?;
        #[cfg(test)]
        if self.fail_cleanup.load(Ordering::Acquire) {
            return Err(Error::io(
                "removing an old journal file",
                std::io::Error::other("a test's fault"),
            ));
        }
        self.journal.remove_older()
    }

    fn sync(&self) -> Result<()> {
        let s = self.s()?;
        if self.must_rebuild.load(Ordering::Acquire) {
            return Err(Error::io(
                format!("syncing the log in {}", self.path.display()),
                std::io::Error::other(
                    "an earlier write of sled's files failed, so what they hold on the disk is not known; the log rebuilds them from what this process holds before it trusts a sync again (by itself; if it keeps failing, check the disk of data_dir and that it has room for a second copy of the log)",
                ),
            ));
        }
        let synced =
            s.db.flush()
                .map_err(self.err("flushing the log"))
                .and_then(|_| self.sync_flushed(&s));
        if synced.is_err() {
            self.must_rebuild.store(true, Ordering::Release);
            self.note_failure();
        }
        synced
    }

    fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()> {
        if from > to {
            return Ok(());
        }
        // The frame holding `from` starts at or before it. Frames are read
        // one lookup at a time, not with a sled iterator: pages a long
        // iteration pulls in stay in memory whatever the cache capacity
        // (sled 0.34, spacejam/sled#1036), so a target catching up on a
        // large backlog would hold the whole log in memory.
        let read = |r: sled::Result<Option<(sled::IVec, sled::IVec)>>| {
            r.map_err(self.err("reading the log"))
        };
        let mut next = match read(self.s()?.log.get_lt(from.saturating_add(1).to_be_bytes()))? {
            Some(kv) => Some(kv),
            None => read(self.s()?.log.get_gt(from.to_be_bytes()))?,
        };
        let mut expect = 0;
        while let Some((k, v)) = next.take() {
            let first = frame_seq(&k, from)?;
            if first > to {
                break;
            }
            if expect == 0 {
                expect = first;
            }
            if first < expect {
                return Err(Error::Corrupt {
                    seq: first,
                    reason: format!(
                        "a frame starting at seq {first} overlaps the frame before it (which ends at {})",
                        expect - 1
                    ),
                });
            }
            for (i, rec) in frame::records(&v).enumerate() {
                let seq = first + i as u64;
                let rec = rec.map_err(|e| Error::Corrupt {
                    seq: first + e.index,
                    reason: e.reason,
                })?;
                expect = seq + 1;
                if seq < from {
                    continue;
                }
                if seq > to || !f(seq, rec) {
                    return Ok(());
                }
            }
            next = read(self.s()?.log.get_gt(&k))?;
        }
        Ok(())
    }

    fn bounds(&self) -> Result<Option<(u64, u64)>> {
        self.bounds_in(&*self.s()?)
    }

    fn clear_log(&self) -> Result<()> {
        self.s()?
            .log
            .clear()
            .map_err(self.err("clearing the log"))?;
        self.journal.roll();
        self.journal.remove_older()
    }

    fn truncate_below(&self, seq: u64) -> Result<u64> {
        let mut removed = 0;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            // One lookup per frame, not a sled iterator (see `scan`).
            let read = |r: sled::Result<Option<(sled::IVec, sled::IVec)>>| {
                r.map_err(self.err("truncating the log"))
            };
            let below = |kv: Option<(sled::IVec, sled::IVec)>| {
                kv.filter(|(k, _)| seq_of(k).is_none_or(|s| s <= seq))
            };
            let mut frame = below(read(self.s()?.log.first())?);
            while let Some((k, v)) = frame.take() {
                let first = frame_seq(&k, seq)?;
                frame = below(read(self.s()?.log.get_gt(&k))?);
                let next = match &frame {
                    Some((nk, _)) => Some(frame_seq(nk, seq)?),
                    None => None,
                };
                if let Some(next) = next {
                    // Every record of this frame is below `seq`.
                    batch.remove(k);
                    removed += next - first;
                    n += 1;
                    if n >= 1024 {
                        break;
                    }
                } else if first < seq {
                    // The frame holding `seq`: keep its records from `seq`
                    // on, as a frame under `seq` (the head entry stays).
                    let recs = frame_records(first, &v)?;
                    let cut = ((seq - first) as usize).min(recs.len().saturating_sub(1));
                    if cut > 0 {
                        batch.remove(k);
                        let at = first + cut as u64;
                        batch.insert(
                            &at.to_be_bytes(),
                            frame::frame_of(recs[cut..].iter().copied()),
                        );
                        removed += cut as u64;
                        n += 1;
                    }
                }
            }
            if n == 0 {
                return Ok(removed);
            }
            self.s()?
                .log
                .apply_batch(batch)
                .map_err(self.err("truncating the log"))?;
        }
    }

    fn reopen(&self) -> Result<()> {
        let mut work_from = None;
        let r = self.reopen_from_disk(&mut work_from);
        let work = work_from.map_or(std::time::Duration::ZERO, |t: std::time::Instant| {
            t.elapsed()
        });
        self.reopen_work_us
            .store(work.as_micros() as u64, Ordering::Release);
        r
    }

    fn reopen_work(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.reopen_work_us.load(Ordering::Acquire))
    }

    fn failed(&self) -> bool {
        // A failure noted while a sync was under way stays noted: that
        // sync clears `failed` as it succeeds, not `must_rebuild`.
        self.failed.load(Ordering::Acquire) || self.must_rebuild.load(Ordering::Acquire)
    }

    fn on_failure(&self, hook: Box<dyn Fn() + Send + Sync>) {
        *self.on_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn remove_above(&self, seq: u64) -> Result<u64> {
        let removed = self.remove_in_sled_above(seq)?;
        // A group the journal holds past `seq` was not acknowledged: a
        // file named `seq + 1` overrules it from now on.
        self.journal.restart_at(seq + 1)?;
        Ok(removed)
    }

    fn sync_group(&self, acked: u64, committing: u64) -> Result<()> {
        if !self.head_record.load(Ordering::Relaxed) {
            return self.journal.sync();
        }
        self.sync_with_head(HeadMark { acked, committing })
    }

    fn mark_acked(&self, acked: u64) -> Result<()> {
        if !self.head_record.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.head.write(HeadMark {
            acked,
            committing: acked,
        })
    }

    fn head_mark(&self) -> Result<Option<HeadMark>> {
        self.head.found()
    }

    fn set_head_mark(&self, mark: HeadMark) -> Result<()> {
        self.head.write_durable(mark)
    }

    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

impl StateStore for SledStorage {
    fn index(&self, keys: &[(&str, KeyInfo)], watermark: u64) -> Result<()> {
        let r = self.s()?.keys.add(keys, watermark);
        self.noted(r)
    }

    fn index_in(&self, generation: u64, keys: &[(&str, KeyInfo)], watermark: u64) -> Result<()> {
        let r = self.s_in(generation)?.keys.add(keys, watermark);
        self.noted(r)
    }

    fn target(&self, target: &str) -> Result<Option<TargetRecord>> {
        let v = self
            .s()?
            .cursors
            .get(target)
            .map_err(self.err("reading a target's record"))?;
        v.map(|v| TargetRecord::decode(&v).map_err(|why| damaged_record(target, &why)))
            .transpose()
    }

    fn set_target(&self, target: &str, record: &TargetRecord) -> Result<()> {
        self.s()?
            .cursors
            .insert(target, &record.encode())
            .map_err(self.err("persisting a target's record"))?;
        Ok(())
    }

    fn set_target_in(&self, generation: u64, target: &str, record: &TargetRecord) -> Result<()> {
        self.s_in(generation)?
            .cursors
            .insert(target, &record.encode())
            .map_err(self.err("persisting a target's record"))?;
        Ok(())
    }

    fn targets(&self) -> Result<Vec<(String, std::result::Result<TargetRecord, String>)>> {
        let mut out = Vec::new();
        for item in self.s()?.cursors.iter() {
            let (k, v) = item.map_err(self.err("reading the target records"))?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                TargetRecord::decode(&v),
            ));
        }
        Ok(out)
    }

    fn key_info(&self, key: &str) -> Result<Option<KeyInfo>> {
        let r = self.s()?.keys.get(key);
        self.noted(r)
    }

    fn keys_with_prefix(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, KeyInfo)>> {
        let r = self.s()?.keys.with_prefix(prefix, after, limit);
        self.noted(r)
    }

    fn key_index_watermark(&self) -> Result<u64> {
        Ok(self.s()?.keys.watermark())
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let v = self
            .s()?
            .meta
            .get(name)
            .map_err(self.err("reading metadata"))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.s()?
            .meta
            .insert(name, value)
            .map_err(self.err("writing metadata"))?;
        Ok(())
    }

    fn side(&self, table: Side, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v = self
            .side_tree(table)?
            .get(key)
            .map_err(self.err("reading a side table"))?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn set_side(&self, table: Side, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let tree = self.side_tree(table)?;
        match value {
            Some(v) => tree.insert(key, v).map(|_| ()),
            None => tree.remove(key).map(|_| ()),
        }
        .map_err(self.err("writing a side table"))
    }

    fn side_scan(&self, table: Side, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.side_tree(table)?
            .scan_prefix(prefix)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(self.err("scanning a side table"))
            })
            .collect()
    }
}

impl SledStorage {
    fn side_tree(&self, table: Side) -> Result<sled::Tree> {
        let s = self.s()?;
        Ok(match table {
            Side::Versions => s.versions.clone(),
            Side::Conflicts => s.conflicts.clone(),
        })
    }
}

/// Opens sled's database at `path` and its trees.
/// Drops an old database, flushing what sled still holds, on a thread of
/// its own: a sled left stuck by a failed blob write never finishes its
/// flush (see [`ROOM_RESERVE`]). After [`RELEASE_WAIT`] this gives up
/// and says so; the log stays closed (every request answers an error, none
/// hangs) until walship restarts.
fn release(old: Sled, path: &Path) -> Result<()> {
    let (done, released) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("walship-release".into())
        .spawn(move || {
            drop(old);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        return Err(Error::io("starting a thread to close the log", e));
    }
    match released.recv_timeout(RELEASE_WAIT) {
        Ok(()) => Ok(()),
        Err(_) => Err(Error::LogPoisoned(format!(
            "sled did not let go of the log in {} within {} s after a failed write (it can stay stuck after a large write met a full disk); nothing acknowledged is lost: free space in data_dir and restart walship",
            path.display(),
            RELEASE_WAIT.as_secs()
        ))),
    }
}

fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db> {
    let path = path.to_path_buf();
    let locked = |e: &sled::Error| matches!(e, sled::Error::Io(io) if is_lock_error(io));
    // sled releases its file lock from a background thread a moment
    // after the last handle goes, so a reopen in the same process (a
    // restart of the library) may find it still held: wait for it a
    // little before calling it another process's.
    let mut waited = 0;
    loop {
        // sled's recovery can panic on damaged files instead of answering
        // an error: that is a damaged log, said as one, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // No flusher thread of sled's own: sled is made durable at the
            // log's checkpoints (see `journal`).
            sled::Config::new()
                .path(&path)
                .cache_capacity(cache_bytes)
                .flush_every_ms(None)
                .open()
        }))
        .map_err(|panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "an internal error".into());
            Error::Damaged(format!(
                "the log in {} is damaged beyond what sled can recover (it stopped with: {why}); walship wrote nothing, but sled's recovery may have zeroed the torn part of its file before it stopped. Move data_dir aside (keep it for inspection) and restore it from a backup",
                path.display()
            ))
        })?;
        match opened {
            Err(e) if locked(&e) && waited < LOCK_WAIT_TRIES => {
                waited += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => break other,
        }
    }
    .map_err(|e| match e {
        sled::Error::Io(io) if is_lock_error(&io) => Error::io(
            format!(
                "opening the log in {}: it is in use by another walship process (only one may open a data_dir; talk to it with --addr)",
                path.display()
            ),
            io,
        ),
        other => Error::storage("opening the log", &path, other),
    })
}

/// Copies sled's files at `path` byte for byte into `log.rebuild` beside
/// it, makes every file of the copy durable, and puts it in `path`'s place
/// (see `SledStorage::must_rebuild`). The copy is read through this
/// machine's pages, which hold what this process wrote, and written as new
/// files, so their sync covers all of it; no sled handle is open on either
/// while it runs (so neither changes). Steps, each durable before the
/// next: the copy; the marker `log.rebuild.complete`; `path` moved to
/// `log.old` and the copy to `path`; the marker and `log.old` removed.
/// [`finish_rebuild`] at open finishes a rebuild whose marker exists and
/// removes one without it.
fn rebuild_sled(path: &Path, work_from: &mut Option<std::time::Instant>) -> Result<()> {
    let (fresh, old, done) = rebuild_paths(path);
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {} (rebuilding the log's files)", p.display());
        move |e| Error::io(what, e)
    };
    // An earlier attempt cut short is finished or undone first: a copy it
    // marked complete is put in place, never removed with the files it
    // stands for; no marker is left for the copy made below.
    finish_rebuild(path)?;
    if !path.exists() {
        return Err(io("copying", path)(std::io::Error::other(
            "the log's files are not there; restart walship (its open says what is missing)",
        )));
    }
    // sled must not meet a full disk (see `ROOM_RESERVE`): the copy is
    // made only with room for all of it and the reserve. Checked before
    // the lock is waited for too, so that a try on a disk still full fails
    // at once, and is tried again soon (see `reopen_pace`), even while an
    // old handle's flush waits for room with the lock held. (That handle
    // may still change the files then: a measure that fails is left to
    // the check under the lock.)
    let room = || -> Result<()> {
        let need = size_under(path).map_err(io("measuring", path))? + ROOM_RESERVE;
        let free = fs2::available_space(path).map_err(io("reading the free space of", path))?;
        if free < need {
            return Err(Error::DiskFull(format!(
                "the log's files in {} are copied anew after a failed write, which needs {need} bytes free and {free} are: free at least {} more bytes there (walship retries by itself every 500 ms)",
                path.display(),
                need - free
            )));
        }
        Ok(())
    };
    if let Err(e @ Error::DiskFull(_)) = room() {
        return Err(e);
    }
    // sled's own lock on its data file, as an open of sled takes it: no
    // sled (a handle of this process still letting go, or another
    // process) changes the files while they are copied.
    let _locked = lock_sled_files(path)?;
    *work_from = Some(std::time::Instant::now());
    for stale in [&fresh, &old] {
        remove_dir_if_any(stale).map_err(io("removing", stale))?;
    }
    room()?;
    copy_files(path, &fresh).map_err(io("copying into", &fresh))?;
    sync_everything_under(&fresh).map_err(io("fsync of", &fresh))?;
    let parent = path.parent().unwrap_or(Path::new("."));
    File::create(&done)
        .and_then(|f| f.sync_all())
        .map_err(io("marking complete", &done))?;
    sync_dir(parent).map_err(io("fsync of", parent))?;
    put_in_place(path).map_err(io("putting in place", &fresh))?;
    tracing::warn!(path = %path.display(), "a write of the log's files failed: copied them anew from what this machine holds, and made the copy durable");
    Ok(())
}

/// sled's lock on its data file in `path`, taken as an open of sled takes
/// it (waiting as [`open_db`] does for a handle of this process still
/// letting go); held until the file is dropped.
fn lock_sled_files(path: &Path) -> Result<File> {
    use fs2::FileExt as _;
    let db = path.join("db");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&db)
        .map_err(|e| Error::io(format!("opening {} to lock it", db.display()), e))?;
    for _ in 0..LOCK_WAIT_TRIES {
        match file.try_lock_exclusive() {
            Ok(()) => return Ok(file),
            Err(e) if is_lock_error(&e) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => return Err(Error::io(format!("locking {}", db.display()), e)),
        }
    }
    Err(Error::io(
        format!("locking {}", db.display()),
        std::io::Error::other(
            "still locked by a handle of the log that did not let go, or by another walship process; its files are not copied while they are (retried)",
        ),
    ))
}

/// `log.rebuild`, `log.old` and the marker `log.rebuild.complete`.
fn rebuild_paths(path: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        path.with_extension("rebuild"),
        path.with_extension("old"),
        path.with_extension("rebuild.complete"),
    )
}

/// The last steps of a rebuild whose copy is complete (its marker durable):
/// `path` (if still there) moved aside, the copy put in its place, then
/// the marker and the old files removed.
fn put_in_place(path: &Path) -> std::io::Result<()> {
    let (fresh, old, done) = rebuild_paths(path);
    let parent = path.parent().unwrap_or(Path::new("."));
    if path.exists() {
        remove_dir_if_any(&old)?;
        std::fs::rename(path, &old)?;
    }
    std::fs::rename(&fresh, path)?;
    sync_dir(parent)?;
    std::fs::remove_file(&done)?;
    sync_dir(parent)?;
    if let Err(e) = remove_dir_if_any(&old) {
        tracing::warn!(path = %old.display(), error = %e, "could not remove the log's old files after copying them anew; the next open removes them");
    }
    Ok(())
}

/// At open: a rebuild a crash cut short is finished when its copy was
/// complete (its marker there), and undone when not.
fn finish_rebuild(path: &Path) -> Result<()> {
    let (fresh, old, done) = rebuild_paths(path);
    let io = |what: &str, p: &Path| {
        let what = format!(
            "{what} {} (finishing a rebuild of the log's files)",
            p.display()
        );
        move |e| Error::io(what, e)
    };
    if done.exists() && fresh.exists() {
        return put_in_place(path).map_err(io("putting in place", &fresh));
    }
    if done.exists() {
        std::fs::remove_file(&done).map_err(io("removing", &done))?;
        let parent = path.parent().unwrap_or(Path::new("."));
        sync_dir(parent).map_err(io("fsync of", parent))?;
    }
    if path.exists() {
        remove_dir_if_any(&fresh).map_err(io("removing", &fresh))?;
        remove_dir_if_any(&old).map_err(io("removing", &old))?;
    }
    Ok(())
}

/// Every file under `from` copied to the same place under `to`, read and
/// written (never `copy_file_range`, which may share the old blocks).
fn copy_files(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    std::fs::create_dir(to)?;
    let mut buf = vec![0u8; 1 << 20];
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_files(&entry.path(), &dest)?;
            continue;
        }
        let mut src = File::open(entry.path())?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)?;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n])?;
        }
    }
    Ok(())
}

/// Bytes of every file under `dir`.
fn size_under(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        total += if entry.file_type()?.is_dir() {
            size_under(&entry.path())?
        } else {
            entry.metadata()?.len()
        };
    }
    Ok(total)
}

fn remove_dir_if_any(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn sync_dir(p: &Path) -> std::io::Result<()> {
    File::open(p)?.sync_all()
}

/// fsync of every file and directory under `dir`, and of `dir`.
fn sync_everything_under(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_everything_under(&entry.path())?;
        } else {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn open_sled(path: &Path, cache_bytes: u64) -> Result<Sled> {
    let db = open_db(path, cache_bytes)?;
    let path = path.to_path_buf();
    let tree = |name: &str| {
        db.open_tree(name)
            .map_err(|e| Error::storage("opening a tree", &path, e))
    };
    let log = tree("log")?;
    let keys = KeyIndex::open(tree("keys")?, &path)?;
    let cursors = tree("cursors")?;
    let meta = tree("meta")?;
    migrate_target_records(&cursors, &meta)
        .map_err(|e| Error::storage("rewriting the target records as one each", &path, e))?;
    let versions = tree("versions")?;
    let conflicts = tree("conflicts")?;
    let data_file = File::open(path.join("db"))
        .map_err(|e| Error::io(format!("opening sled's data file in {}", path.display()), e))?;
    Ok(Sled {
        db,
        log,
        keys,
        cursors,
        meta,
        versions,
        conflicts,
        data_file,
    })
}

/// The error for a target record that does not decode.
fn damaged_record(target: &str, why: &str) -> Error {
    Error::Damaged(format!(
        "the persisted record of target {target} (its cursor and state) is damaged ({why}); \
         when walship opens it resyncs such a replica from the acting primary, and ships the \
         kept log to such a primary again"
    ))
}

/// Rewrites the target records of a data dir from before records (a
/// cursor value of 8 or 16 bytes, the rest in `meta`) as one record each,
/// and removes the old meta records. The records are flushed before any
/// old part is removed, so a crash midway leaves the old parts, or the
/// records with some old parts (a record wins over old parts).
fn migrate_target_records(cursors: &sled::Tree, meta: &sled::Tree) -> sled::Result<()> {
    // Only a cursor of the old lengths is one: any other value is a record
    // (`decode` says what is wrong with a damaged one).
    let legacy = |v: &[u8]| v.len() == 8 || v.len() == 16;
    let mut names: Vec<String> = Vec::new();
    for item in cursors.iter() {
        let (k, v) = item?;
        if legacy(&v) {
            names.push(String::from_utf8_lossy(&k).into_owned());
        }
    }
    for prefix in ["state/", "replay/", "marker/"] {
        for item in meta.scan_prefix(prefix) {
            let (k, _) = item?;
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    for name in &names {
        let metas = target_record::legacy_meta(name);
        let cursor = cursors.get(name)?;
        if cursor.as_ref().is_none_or(|c| legacy(c)) {
            let parts = [
                meta.get(&metas[0])?,
                meta.get(&metas[1])?,
                meta.get(&metas[2])?,
            ];
            let record = TargetRecord::from_legacy(
                cursor.as_deref(),
                parts[0].as_deref(),
                parts[1].as_deref(),
                parts[2].as_deref(),
            );
            cursors.insert(name.as_str(), &record.encode())?;
        }
    }
    // The records are on disk before any old part goes.
    cursors.flush()?;
    for name in &names {
        for m in &target_record::legacy_meta(name) {
            meta.remove(m.as_str())?;
        }
    }
    Ok(())
}

/// The seq a log key stands for, or a corrupt error (reported at `near`).
fn frame_seq(k: &[u8], near: u64) -> Result<u64> {
    seq_of(k).ok_or_else(|| Error::Corrupt {
        seq: near,
        reason: format!("a log key of {} bytes is not a seq", k.len()),
    })
}

/// Every record of the frame starting at `first`; a damaged one is said
/// as the seq it would hold.
fn frame_records(first: u64, v: &[u8]) -> Result<Vec<&[u8]>> {
    frame::records(v)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Corrupt {
            seq: first + e.index,
            reason: e.reason,
        })
}

/// The frames built, added to `batch`: their bytes, and whether one is
/// large enough for sled to keep as a file of its own.
fn add_frames(frames: FrameBuilder, batch: &mut sled::Batch) -> (u64, bool) {
    let mut bytes = 0;
    let mut large = false;
    for (first, frame) in frames.finish() {
        bytes += frame.len() as u64;
        large |= frame.len() >= BLOB_CANDIDATE_BYTES;
        batch.insert(&first.to_be_bytes(), frame);
    }
    (bytes, large)
}

fn seq_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_flush_waits_for_the_records_write_back_before_the_journals_fdatasync() {
        use crate::headfile::Durability;
        let at = |steps: &[GroupStep], s: GroupStep| {
            steps.iter().position(|x| *x == s).expect("every step runs")
        };
        let shared = group_sync_steps(Durability::SharedFlush);
        assert!(at(shared, GroupStep::StartHead) < at(shared, GroupStep::StartLog));
        assert!(at(shared, GroupStep::StartLog) < at(shared, GroupStep::FinishHead));
        assert!(at(shared, GroupStep::FinishHead) < at(shared, GroupStep::SyncLog));
        let own = group_sync_steps(Durability::OwnSync);
        // The two fdatasyncs overlap: the record's is waited for last.
        assert!(at(own, GroupStep::StartHead) < at(own, GroupStep::SyncLog));
        assert!(at(own, GroupStep::SyncLog) < at(own, GroupStep::FinishHead));
    }

    fn rec_at(cursor: u64, offset: u64) -> TargetRecord {
        TargetRecord {
            cursor,
            offset: Some(offset),
            ..TargetRecord::default()
        }
    }

    #[test]
    fn a_data_dir_from_before_records_opens_with_one_record_per_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path().join("log")).expect("sled");
            let cursors = db.open_tree("cursors").expect("tree");
            let meta = db.open_tree("meta").expect("tree");
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&41u64.to_be_bytes());
            v[8..].copy_from_slice(&900u64.to_be_bytes());
            cursors.insert("r1", &v).expect("cursor");
            cursors.insert("r2", &7u64.to_be_bytes()).expect("cursor");
            meta.insert("state/r1", b"paused").expect("state");
            meta.insert("replay/r1", &77u64.to_be_bytes())
                .expect("replay");
            meta.insert("marker/r1", b"1").expect("marker");
            // A target with a state and no cursor yet.
            meta.insert("state/r3", b"syncing").expect("state");
            meta.insert("origin", b"abc").expect("other meta");
            db.flush().expect("flush");
        }
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        let r1 = TargetRecord {
            cursor: 41,
            offset: Some(900),
            state: crate::status::TargetState::Paused,
            replay_until: 77,
            marked: true,
        };
        let r2 = TargetRecord {
            cursor: 7,
            ..TargetRecord::default()
        };
        let r3 = TargetRecord {
            state: crate::status::TargetState::Syncing,
            ..TargetRecord::default()
        };
        assert_eq!(s.target("r1").expect("r1"), Some(r1));
        assert_eq!(s.target("r2").expect("r2"), Some(r2));
        assert_eq!(s.target("r3").expect("r3"), Some(r3));
        for old in ["state/r1", "replay/r1", "marker/r1", "state/r3"] {
            assert_eq!(s.meta(old).expect("meta"), None, "{old} left behind");
        }
        assert_eq!(
            s.meta("origin").expect("meta").as_deref(),
            Some(&b"abc"[..])
        );
        s.sync().expect("sync");
        drop(s);
        // Opened again: the records are as they were (nothing rewritten
        // from defaults).
        let s = SledStorage::open(dir.path(), 8 << 20).expect("reopen");
        assert_eq!(s.target("r1").expect("r1"), Some(r1));
        assert_eq!(s.targets().expect("all").len(), 3);
    }

    #[test]
    fn a_damaged_target_record_is_an_error_naming_the_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        s.set_target("r1", &rec_at(5, 50)).expect("record");
        let mut bad = rec_at(6, 60).encode();
        bad[3] ^= 0x10;
        s.s()
            .expect("sled")
            .cursors
            .insert("r2", &bad)
            .expect("raw");
        // A record cut short is not taken for a cursor of older data dirs.
        s.s()
            .expect("sled")
            .cursors
            .insert("r3", &rec_at(7, 70).encode()[..30])
            .expect("raw");
        drop(s);
        let s = SledStorage::open(dir.path(), 8 << 20).expect("reopen");
        assert!(s.target("r3").is_err(), "a short record must stay damaged");
        let err = s.target("r2").expect_err("damaged").to_string();
        assert!(err.contains("target r2") && err.contains("crc32"), "{err}");
        let all = s.targets().expect("all");
        assert_eq!(all[0], ("r1".to_string(), Ok(rec_at(5, 50))));
        assert!(all[1].1.is_err() && all[2].1.is_err());
    }

    fn rec<'a>(seq: u64, record: &'a [u8], key: &'a str) -> PendingRecord<'a> {
        let _ = key;
        PendingRecord { seq, record }
    }

    fn info(seq: u64) -> KeyInfo {
        KeyInfo {
            seq,
            op: Op::Put,
            size: 1,
            meta: None,
        }
    }

    /// A key index record's length read from its header is the length a
    /// full decode takes; a cut or unknown record has none.
    #[test]
    fn a_records_length_is_read_without_decoding_it() {
        let mut with_meta = info(7);
        with_meta.meta = Some(Arc::new(crate::object::ObjectMeta {
            content_type: Some("text/plain".into()),
            ..crate::object::ObjectMeta::of(b"value")
        }));
        let delete = KeyInfo {
            op: Op::Delete,
            ..info(8)
        };
        for i in [info(3), with_meta, delete] {
            let mut b = Vec::new();
            i.write_to(&mut b);
            let used = KeyInfo::read_from(&b).expect("decodes").1;
            assert_eq!(KeyInfo::len_at(&b), Some(used));
            b.extend_from_slice(b"next entry");
            assert_eq!(KeyInfo::len_at(&b), Some(used), "followed by more");
            assert_eq!(KeyInfo::len_at(&b[..used - 1]), None, "cut short");
        }
        let mut bad = Vec::new();
        info(1).write_to(&mut bad);
        bad[8] = 9;
        assert_eq!(KeyInfo::len_at(&bad), None, "unknown op");
    }

    /// A change written before a reopen may be gone with the old handle: a
    /// sync for it must not report it durable, though the new handle syncs.
    #[test]
    fn a_sync_since_a_reopen_refuses_to_vouch_for_earlier_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        let before = s.generation();
        s.set_meta("k", b"v").expect("meta");
        s.reopen().expect("reopen");
        let err = s.sync_since(before).expect_err("the change may be gone");
        assert!(err.to_string().contains("reopened"), "{err}");
        // Made again since the reopen: durable.
        let now = s.generation();
        s.set_meta("k", b"v").expect("meta");
        s.sync_since(now).expect("sync");
        assert_eq!(s.meta("k").expect("meta").as_deref(), Some(&b"v"[..]));
    }

    /// A target's record is written only into the generation its writer
    /// checked: after a reopen it is refused, and nothing is written.
    #[test]
    fn a_target_record_checked_before_a_reopen_is_not_written_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        let before = s.generation();
        s.set_target_in(before, "t", &rec_at(3, 30))
            .expect("same generation");
        s.reopen().expect("reopen");
        let err = s
            .set_target_in(before, "t", &rec_at(9, 90))
            .expect_err("checked before the reopen");
        assert!(err.to_string().contains("reopened"), "{err}");
        assert_ne!(s.target("t").expect("read").map(|r| r.cursor), Some(9));
        s.set_target_in(s.generation(), "t", &rec_at(9, 90))
            .expect("the new generation");
        assert_eq!(s.target("t").expect("read").map(|r| r.cursor), Some(9));
    }

    /// The room left is the disk's free space less the reserve, and a
    /// reading is reused only while far from full, less what was appended.
    #[test]
    fn room_is_the_disks_free_space_less_the_reserve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        let free = fs2::available_space(dir.path()).expect("free");
        let room = s.room().expect("room").expect("a bound");
        assert!(room < free, "{room} of {free}");
        // A reading taken near full is not reused.
        *s.room_seen.lock().expect("lock") = Some((std::time::Instant::now(), ROOM_RESERVE + 1, 0));
        let again = s.room().expect("room").expect("a bound");
        assert!(again > 1, "read again: {again}");
        // A reading far from full is reused, less four times what was
        // appended since.
        let far = ROOM_RESERVE + ROOM_SLACK + (100 << 20);
        *s.room_seen.lock().expect("lock") = Some((std::time::Instant::now(), far, 0));
        s.append(&[rec(1, &[7u8; 1000], "k")]).expect("append");
        let appended = s.appended.load(Ordering::Acquire);
        assert!(appended >= 1000, "{appended}");
        assert_eq!(
            s.room().expect("room"),
            Some(far - 4 * appended - ROOM_RESERVE)
        );
    }

    /// A blob file sled writes on its own (a page it rewrote whole) is
    /// made durable by the next sync, though no large value was appended.
    #[test]
    fn a_sync_makes_blob_files_durable_whoever_wrote_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        s.append(&[rec(1, b"small", "k")]).expect("append");
        s.sync().expect("sync");
        let blobs = dir.path().join("log/blobs");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        std::fs::write(blobs.join("4242"), b"a page").expect("blob");
        s.append(&[rec(2, b"small", "k")]).expect("append");
        s.sync().expect("sync");
        assert_eq!(
            *s.blobs_synced.lock().expect("lock"),
            4242,
            "the new blob was fsynced"
        );
    }

    #[test]
    fn append_scan_truncate_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
            s.append(&[
                rec(1, b"one", "a"),
                rec(2, b"two", "b"),
                rec(3, b"three", "a"),
            ])
            .expect("append");
            s.index(&[("a", info(1)), ("b", info(2)), ("a", info(3))], 3)
                .expect("index");
            s.set_target("t", &rec_at(2, 77)).expect("record");
            s.sync().expect("sync");
            assert_eq!(s.bounds().expect("bounds"), Some((1, 3)));
            assert_eq!(s.key_info("a").expect("ki").map(|i| i.seq), Some(3));
            assert_eq!(s.key_index_watermark().expect("wm"), 3);
            let mut seen = vec![];
            s.scan(2, 3, &mut |seq, r| {
                seen.push((seq, r.to_vec()));
                true
            })
            .expect("scan");
            assert_eq!(seen, vec![(2, b"two".to_vec()), (3, b"three".to_vec())]);
            assert_eq!(s.truncate_below(3).expect("truncate"), 2);
            s.sync().expect("sync");
        }
        let s = SledStorage::open(dir.path(), 8 << 20).expect("reopen");
        assert_eq!(s.bounds().expect("bounds"), Some((3, 3)));
        assert_eq!(s.target("t").expect("record"), Some(rec_at(2, 77)));
        assert_eq!(
            s.targets().expect("records"),
            vec![("t".to_string(), Ok(rec_at(2, 77)))]
        );
        let keys = s.keys_with_prefix("", "", 10).expect("keys");
        assert_eq!(
            keys.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
    }

    fn seqs(s: &SledStorage, from: u64, to: u64) -> Result<Vec<u64>> {
        let mut seen = vec![];
        s.scan(from, to, &mut |seq, r| {
            assert_eq!(r, record_for(seq), "record {seq}");
            seen.push(seq);
            true
        })?;
        Ok(seen)
    }

    fn record_for(seq: u64) -> Vec<u8> {
        let mut r = vec![1u8; 300];
        r[..8].copy_from_slice(&seq.to_be_bytes());
        r[0] = 1;
        r
    }

    /// Records share frames; any stretch reads back exactly, truncation
    /// inside a frame keeps the rest of it, older lone records still read,
    /// and damaged framing is named.
    #[test]
    fn frames_read_from_any_seq_and_truncate_inside_a_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=104).map(record_for).collect();
        {
            let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
            let batch: Vec<PendingRecord<'_>> = (1..=100)
                .map(|seq| rec(seq, &recs[seq as usize], "k"))
                .collect();
            s.append(&batch).expect("append");
            s.append(&[rec(101, &recs[101], "k"), rec(102, &recs[102], "k")])
                .expect("append");
            s.sync().expect("sync");
            // A hundred records in a handful of frames.
            assert!(
                s.s().expect("sled").log.len() < 10,
                "{} frames",
                s.s().expect("sled").log.len()
            );
            assert_eq!(s.bounds().expect("bounds"), Some((1, 102)));
            for from in [1, 2, 26, 27, 28, 55, 100, 101, 102] {
                for to in [from, from + 1, 60, 102, 500] {
                    let want: Vec<u64> = (from..=to.min(102)).collect();
                    assert_eq!(seqs(&s, from, to).expect("scan"), want, "{from}..={to}");
                }
            }
            assert_eq!(s.truncate_below(50).expect("truncate"), 49);
            assert_eq!(s.bounds().expect("bounds"), Some((50, 102)));
            assert_eq!(
                seqs(&s, 1, 102).expect("scan"),
                (50..=102).collect::<Vec<_>>()
            );
            // Truncation never removes the head entry.
            assert_eq!(s.truncate_below(500).expect("truncate"), 52);
            assert_eq!(s.bounds().expect("bounds"), Some((102, 102)));
            // A lone record, as written before frames (and before the
            // journal: a checkpoint first empties it), follows on.
            s.checkpoint().expect("checkpoint");
            s.s()
                .expect("sled")
                .log
                .insert(103u64.to_be_bytes(), recs[103].as_slice())
                .expect("insert");
            s.sync().expect("sync");
        }
        let s = SledStorage::open(dir.path(), 8 << 20).expect("reopen");
        assert_eq!(s.bounds().expect("bounds"), Some((102, 103)));
        assert_eq!(seqs(&s, 100, 200).expect("scan"), vec![102, 103]);
        // A frame whose second length runs past its end.
        let mut bad = frame::frame_of([recs[104].as_slice(), recs[104].as_slice()]);
        bad.truncate(bad.len() - 10);
        s.s()
            .expect("sled")
            .log
            .insert(104u64.to_be_bytes(), bad)
            .expect("insert");
        match seqs(&s, 103, 200) {
            Err(Error::Corrupt { seq: 105, reason }) => {
                assert!(reason.contains("does not fit"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(s.bounds(), Err(Error::Corrupt { seq: 105, .. })));
        // A frame that starts inside the one before it.
        let s2dir = tempfile::tempdir().expect("tempdir");
        let s2 = SledStorage::open(s2dir.path(), 8 << 20).expect("open");
        s2.append(&[
            rec(1, &recs[1], "k"),
            rec(2, &recs[2], "k"),
            rec(3, &recs[3], "k"),
        ])
        .expect("append");
        s2.append(&[rec(2, &recs[2], "k")]).expect("append");
        match seqs(&s2, 1, 3) {
            Err(Error::Corrupt { seq: 2, reason }) => {
                assert!(reason.contains("overlaps"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A data dir held open is refused with an error naming it (after the
    /// wait for a lock sled is about to release); one released during the
    /// wait opens.
    #[test]
    fn a_data_dir_in_use_is_refused_and_one_released_meanwhile_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = SledStorage::open(dir.path(), 8 << 20).expect("open");
        match SledStorage::open(dir.path(), 8 << 20) {
            Err(e) => assert!(
                e.to_string().contains("in use by another walship process"),
                "{e}"
            ),
            Ok(_) => panic!("opened a data dir another handle holds"),
        }
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        SledStorage::open(dir.path(), 8 << 20).expect("opens once released");
        release.join().expect("release");
    }

    #[test]
    fn large_records_sync_their_blobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        let big = vec![7u8; 1 << 20];
        s.append(&[rec(1, &big, "big")]).expect("append");
        s.sync().expect("sync with a blob");
        let mut got = 0;
        s.scan(1, 1, &mut |_, r| {
            got = r.len();
            true
        })
        .expect("scan");
        assert_eq!(got, big.len());
    }

    #[test]
    fn a_reopen_drops_what_was_not_synced_and_remove_above_trims_a_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        let recs: Vec<Vec<u8>> = (0..=20).map(record_for).collect();
        let batch: Vec<PendingRecord<'_>> =
            (1..=10).map(|i| rec(i, &recs[i as usize], "k")).collect();
        s.append(&batch).expect("append");
        s.sync().expect("sync");
        // A group that was appended but whose flush "failed".
        let tail: Vec<PendingRecord<'_>> =
            (11..=13).map(|i| rec(i, &recs[i as usize], "k")).collect();
        s.append(&tail).expect("append");
        assert_eq!(
            s.remove_above(10).expect("trim"),
            1,
            "one frame for the group"
        );
        assert_eq!(s.bounds().expect("bounds"), Some((1, 10)));
        s.reopen().expect("reopen");
        assert_eq!(s.bounds().expect("bounds"), Some((1, 10)));
        assert_eq!(seqs(&s, 1, 20).expect("scan"), (1..=10).collect::<Vec<_>>());
        // It still takes appends after the reopen.
        s.append(&[rec(11, &recs[11], "k")]).expect("append");
        s.sync().expect("sync");
        drop(s);
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open again");
        assert_eq!(s.bounds().expect("bounds"), Some((1, 11)));
    }

    /// The data directory as a crash leaves it: every file copied while
    /// the storage is open (sled holds only what its last checkpoint
    /// wrote; the journal what was written to it).
    fn crash_copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read dir").flatten() {
            let dest = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                crash_copy(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), &dest).expect("copy");
            }
        }
    }

    /// A storage in a new directory with seqs 1–10 committed.
    fn ten_committed() -> (tempfile::TempDir, SledStorage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=10).map(record_for).collect();
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        commit(&s, &recs, 1..=10);
        (dir, s)
    }

    fn commit(s: &SledStorage, recs: &[Vec<u8>], seqs: std::ops::RangeInclusive<u64>) {
        let batch: Vec<PendingRecord<'_>> = seqs
            .clone()
            .map(|i| rec(i, &recs[i as usize], "k"))
            .collect();
        s.append(&batch).expect("append");
        s.sync_group(seqs.start() - 1, *seqs.end()).expect("sync");
        s.mark_acked(*seqs.end()).expect("acked");
    }

    /// Guarantee 1 with the journal: a group is durable once its journal
    /// fdatasync returns, before sled writes anything of it.
    #[test]
    fn acknowledged_groups_come_back_from_the_journal_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=400).map(record_for).collect();
        let s = SledStorage::open(&dir.path().join("a"), 8 << 20).expect("open");
        commit(&s, &recs, 1..=100);
        s.checkpoint().expect("checkpoint");
        for g in 0..30 {
            commit(&s, &recs, 101 + g * 10..=110 + g * 10);
        }
        crash_copy(&dir.path().join("a"), &dir.path().join("b"));
        let b = SledStorage::open(&dir.path().join("b"), 8 << 20).expect("open the copy");
        assert_eq!(b.bounds().expect("bounds"), Some((1, 400)));
        assert_eq!(
            seqs(&b, 1, 400).expect("scan"),
            (1..=400).collect::<Vec<_>>()
        );
        // A checkpoint makes sled hold them on its own; the journal goes.
        b.checkpoint().expect("checkpoint");
        assert!(b.journal.read().expect("read").is_empty());
        drop(b);
        let b = SledStorage::open(&dir.path().join("b"), 8 << 20).expect("reopen");
        assert_eq!(seqs(&b, 1, 400).expect("scan").len(), 400);
    }

    /// A group taken back (its sync failed; its writers were told) stays
    /// gone after a crash, though its bytes reached the journal's file; a
    /// stretch truncated stays truncated.
    #[test]
    fn a_replay_brings_back_neither_a_group_taken_back_nor_a_truncated_stretch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        let s = SledStorage::open(&dir.path().join("a"), 8 << 20).expect("open");
        commit(&s, &recs, 1..=10);
        commit(&s, &recs, 11..=20);
        let failed: Vec<PendingRecord<'_>> =
            (21..=23).map(|i| rec(i, &recs[i as usize], "k")).collect();
        s.append(&failed).expect("append");
        s.remove_above(20).expect("take back");
        s.truncate_below(15).expect("truncate");
        s.sync().expect("sync");
        crash_copy(&dir.path().join("a"), &dir.path().join("b"));
        let b = SledStorage::open(&dir.path().join("b"), 8 << 20).expect("open the copy");
        assert_eq!(b.bounds().expect("bounds"), Some((15, 20)));
        // The next group after the crash takes seq 21.
        commit(&b, &recs, 21..=22);
        crash_copy(&dir.path().join("b"), &dir.path().join("c"));
        let c = SledStorage::open(&dir.path().join("c"), 8 << 20).expect("open the copy");
        assert_eq!(
            seqs(&c, 1, 40).expect("scan"),
            (15..=22).collect::<Vec<_>>()
        );
    }

    /// A journal damaged in the middle says nothing past the damage: what
    /// sled holds there stays, and where sled lacks it the head record,
    /// which says more was acknowledged, makes the log refuse (guarantee
    /// 8).
    #[test]
    fn a_damaged_journal_takes_nothing_away_from_sled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        for sled_synced in [true, false] {
            let d = dir.path().join(format!("synced-{sled_synced}"));
            let s = SledStorage::open(&d.join("a"), 8 << 20).expect("open");
            commit(&s, &recs, 1..=10);
            s.checkpoint().expect("checkpoint");
            commit(&s, &recs, 11..=20);
            commit(&s, &recs, 21..=30);
            if sled_synced {
                // As a checkpoint does before it removes the journal.
                s.sync().expect("sync");
            }
            crash_copy(&d.join("a"), &d.join("b"));
            let files = s.journal.read().expect("read");
            assert_eq!(files.len(), 1);
            let name = files[0].path.file_name().expect("name").to_owned();
            let path = d.join("b/journal").join(name);
            let mut bytes = std::fs::read(&path).expect("journal");
            // Inside the second group (21..=30); the first is 3064 bytes.
            bytes[3064 + 40] ^= 0x10;
            std::fs::write(&path, &bytes).expect("flip");
            let b = SledStorage::open(&d.join("b"), 8 << 20).expect("open the copy");
            let head = if sled_synced { 30 } else { 20 };
            assert_eq!(
                b.bounds().expect("bounds"),
                Some((1, head)),
                "sled synced: {sled_synced}"
            );
            assert_eq!(
                seqs(&b, 1, 40).expect("scan"),
                (1..=head).collect::<Vec<_>>()
            );
            assert!(
                b.head_mark().expect("head").is_some_and(|m| m.acked >= 20),
                "the head record says what was acknowledged"
            );
        }
    }

    /// A group taken back after its failed sync stays gone after a crash
    /// that comes before the recovery's own sync, though sled's file has
    /// it: when it was the first group of its file (sled's handle, closed
    /// by the reopen, flushed it), and when a checkpoint ran between its
    /// append and its sync (and removed every older file).
    #[test]
    fn a_group_taken_back_stays_gone_though_sled_flushed_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        for checkpoint_between in [false, true] {
            let d = dir.path().join(format!("between-{checkpoint_between}"));
            let s = SledStorage::open(&d.join("a"), 8 << 20).expect("open");
            commit(&s, &recs, 1..=10);
            if !checkpoint_between {
                s.checkpoint().expect("checkpoint");
            }
            let failed: Vec<PendingRecord<'_>> =
                (11..=13).map(|i| rec(i, &recs[i as usize], "k")).collect();
            s.append(&failed).expect("append");
            if checkpoint_between {
                s.checkpoint().expect("checkpoint");
            } else {
                s.reopen().expect("reopen");
            }
            s.remove_above(10).expect("take back");
            crash_copy(&d.join("a"), &d.join("b"));
            let b = SledStorage::open(&d.join("b"), 8 << 20).expect("open the copy");
            assert_eq!(
                b.bounds().expect("bounds"),
                Some((1, 10)),
                "checkpoint between: {checkpoint_between}"
            );
        }
    }

    /// After a failed sled I/O, a sync is refused (so no checkpoint removes
    /// the journal) until a reopen has rebuilt sled's files: new files,
    /// written whole, holding every tree as it was.
    #[test]
    fn a_reopen_rebuilds_sleds_files_whole_and_a_failure_holds_the_journal_until_then() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        commit(&s, &recs, 1..=10);
        s.set_target("r1", &rec_at(7, 700)).expect("target");
        s.set_meta("m", b"meta value").expect("meta");
        s.set_side(Side::Versions, b"r1\0k", Some(b"v1"))
            .expect("side");
        s.checkpoint().expect("checkpoint");
        commit(&s, &recs, 11..=20);
        let inode = || {
            std::fs::metadata(dir.path().join("log/db"))
                .expect("db")
                .ino()
        };
        let before = inode();

        // What a failed sync of sled's files leaves (its flush or fdatasync
        // failing), then a sync under way clearing `failed` as it succeeds.
        s.must_rebuild.store(true, Ordering::Release);
        s.note_failure();
        s.failed.store(false, Ordering::Release);
        assert!(s.failed(), "the failure still asks for a reopen");
        assert!(
            s.sync().is_err(),
            "a sync is refused until the files are rebuilt"
        );
        assert!(s.checkpoint().is_err());
        assert!(
            !s.journal.read().expect("read").is_empty(),
            "the journal is kept"
        );

        s.reopen().expect("reopen");
        assert_ne!(inode(), before, "sled's data file was written anew");
        for leftover in ["log.rebuild", "log.old", "log.rebuild.complete"] {
            assert!(!dir.path().join(leftover).exists(), "{leftover} is gone");
        }
        assert_eq!(seqs(&s, 1, 40).expect("scan"), (1..=20).collect::<Vec<_>>());
        assert_eq!(s.target("r1").expect("target"), Some(rec_at(7, 700)));
        assert_eq!(
            s.meta("m").expect("meta").as_deref(),
            Some(&b"meta value"[..])
        );
        assert_eq!(
            s.side(Side::Versions, b"r1\0k").expect("side").as_deref(),
            Some(&b"v1"[..])
        );
        s.sync().expect("a sync is trusted again");
        s.checkpoint().expect("checkpoint");
        drop(s);
        let again = SledStorage::open(dir.path(), 8 << 20).expect("reopen the copy");
        assert_eq!(
            seqs(&again, 1, 40).expect("scan"),
            (1..=20).collect::<Vec<_>>()
        );
    }

    /// sled's lock on the files in `log`, as a handle holds it, until the
    /// returned file is dropped (waiting, as an open does, for a handle
    /// dropped just before whose background writes still hold it).
    fn hold_sleds_lock(log: &Path) -> File {
        use fs2::FileExt as _;
        let db = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(log.join("db"))
            .expect("db");
        for _ in 0..LOCK_WAIT_TRIES {
            if db.try_lock_exclusive().is_ok() {
                return db;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("sled's lock did not come");
    }

    /// The index thread's snapshot of the pending keys is written only
    /// into the storage it was taken for: after a reopen, whose rebuild of
    /// the index is newer, it is refused and writes nothing.
    #[test]
    fn an_index_written_for_an_earlier_generation_is_refused_after_a_reopen() {
        let (_dir, s) = ten_committed();
        let before = s.generation();
        let info = KeyInfo {
            seq: 3,
            op: Op::Put,
            size: 1,
            meta: None,
        };
        s.reopen().expect("reopen");
        assert!(matches!(
            s.index_in(before, &[("k", info.clone())], 3),
            Err(Error::LogReopened)
        ));
        assert_eq!(s.key_info("k").expect("lookup"), None, "nothing written");
        s.index_in(s.generation(), &[("k", info.clone())], 3)
            .expect("the current generation");
        assert_eq!(s.key_info("k").expect("lookup"), Some(info));
    }

    /// A rebuild checks for room before it waits for sled's lock: on a disk
    /// still full it fails at once (and is tried again soon), even while
    /// the lock is held (an old handle whose flush waits for room). Room is
    /// made short by a sparse file of 8 TiB among sled's files, which a
    /// copy would need room for.
    #[test]
    fn a_rebuild_short_of_room_says_so_at_once_without_waiting_for_the_lock() {
        let (dir, s) = ten_committed();
        drop(s);
        let log = dir.path().join("log");
        let huge = 8u64 << 40;
        assert!(
            fs2::available_space(&log).expect("free space") < huge,
            "this test needs a disk with less than 8 TiB free"
        );
        std::fs::File::create(log.join("huge"))
            .and_then(|f| f.set_len(huge))
            .expect("a sparse file");
        let held = hold_sleds_lock(&log);
        match rebuild_sled(&log, &mut None) {
            Err(e @ Error::DiskFull(_)) => assert!(
                e.to_string().contains("free at least"),
                "it says how much to free: {e}"
            ),
            other => panic!("a rebuild short of room says so before the lock: {other:?}"),
        }
        drop(held);

        // With room, it copies (and takes the lock).
        std::fs::remove_file(log.join("huge")).expect("rm");
        rebuild_sled(&log, &mut None).expect("a rebuild with room");
        let again = SledStorage::open(dir.path(), 8 << 20).expect("open the copy");
        assert_eq!(
            seqs(&again, 1, 20).expect("scan"),
            (1..=10).collect::<Vec<_>>()
        );
    }

    /// What paces a failed reopen is its work on the disk, not its waits:
    /// a reopen that copied sled's files and then failed (sled refuses its
    /// damaged settings file) reports that work; one that waited for
    /// sled's lock in vain reports none, so it is tried again soon.
    #[test]
    fn a_reopen_reports_its_work_on_the_disk_not_its_wait_for_the_lock() {
        let (dir, s) = ten_committed();
        let conf = dir.path().join("log/conf");
        let good = std::fs::read(&conf).expect("sled's settings file");
        std::fs::write(&conf, b"not sled's settings\n\0\0\0\0").expect("damage it");
        s.fail_a_write();
        assert!(s.reopen().is_err(), "sled refuses the damaged file");
        assert!(
            s.reopen_work() > std::time::Duration::ZERO,
            "it copied sled's files"
        );

        let held = hold_sleds_lock(&dir.path().join("log"));
        let refused = s.reopen().expect_err("the lock does not come");
        assert!(refused.to_string().contains("lock"), "{refused}");
        assert_eq!(
            s.reopen_work(),
            std::time::Duration::ZERO,
            "a wait for the lock is no work on the disk"
        );
        drop(held);

        std::fs::write(&conf, &good).expect("mend it");
        s.reopen().expect("reopen");
        assert_eq!(seqs(&s, 1, 20).expect("scan"), (1..=10).collect::<Vec<_>>());
    }

    /// A rebuild a crash cut short: a copy without its marker is removed;
    /// a copy marked complete is put in place, whether or not the old files
    /// were moved aside yet; old files left behind are removed.
    #[test]
    fn a_rebuild_cut_short_is_undone_or_finished_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        let log = dir.path().join("log");
        let (fresh, old, done) = rebuild_paths(&log);
        {
            let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
            commit(&s, &recs, 1..=10);
            s.checkpoint().expect("checkpoint");
        }
        let reads_all = |what: &str| {
            let s = SledStorage::open(dir.path(), 8 << 20).expect(what);
            assert_eq!(
                seqs(&s, 1, 40).expect("scan"),
                (1..=10).collect::<Vec<_>>(),
                "{what}"
            );
            for leftover in [&fresh, &old, &done] {
                assert!(!leftover.exists(), "{what}: {} is gone", leftover.display());
            }
        };
        // Cut during the copy: no marker.
        std::fs::create_dir(&fresh).expect("mkdir");
        std::fs::write(fresh.join("db"), b"half").expect("half");
        reads_all("a copy cut short");
        // The copy marked complete, the old files still in place.
        crash_copy(&log, &fresh);
        std::fs::write(&done, b"").expect("marker");
        reads_all("a complete copy, not yet in place");
        // The old files moved aside, the copy not yet in their place.
        crash_copy(&log, &fresh);
        std::fs::write(&done, b"").expect("marker");
        std::fs::rename(&log, &old).expect("aside");
        reads_all("a complete copy, the old files aside");
        // Old files left behind.
        crash_copy(&log, &old);
        reads_all("old files left");
        // A marker left by an attempt whose copy is gone: removed, so that
        // the next copy is not taken as complete before it is.
        std::fs::write(&done, b"").expect("marker");
        reads_all("a marker without its copy");
    }

    /// A reopen whose replay fails leaves no sled to flush: a checkpoint
    /// then fails and keeps the journal, which holds what sled lacks.
    #[test]
    fn a_failed_replay_keeps_the_journal_from_any_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        commit(&s, &recs, 1..=10);
        commit(&s, &recs, 11..=20);
        // A journal that cannot be read: a directory where a file is.
        let blocker = dir.path().join("journal").join(crate::journal::name(30));
        std::fs::create_dir(&blocker).expect("mkdir");
        assert!(s.reopen().is_err());
        std::fs::remove_dir(&blocker).expect("rmdir");
        assert!(s.checkpoint().is_err(), "no sled to flush before a replay");
        assert!(!s.journal.read().expect("read").is_empty());
        s.reopen().expect("reopen");
        assert_eq!(seqs(&s, 1, 40).expect("scan"), (1..=20).collect::<Vec<_>>());
    }

    /// A group cut short by a failed write, taken back, and groups
    /// acknowledged after it in the file that overrules it: they all come
    /// back from the journal.
    #[test]
    fn groups_after_a_torn_group_taken_back_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        let s = SledStorage::open(&dir.path().join("a"), 8 << 20).expect("open");
        commit(&s, &recs, 1..=10);
        let failed: Vec<PendingRecord<'_>> =
            (11..=13).map(|i| rec(i, &recs[i as usize], "k")).collect();
        s.append(&failed).expect("append");
        // The write of its last bytes never landed (a full disk).
        let f = dir.path().join("a/journal").join(crate::journal::name(1));
        let len = std::fs::metadata(&f).expect("meta").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .and_then(|f| f.set_len(len - 5))
            .expect("cut");
        s.remove_above(10).expect("take back");
        commit(&s, &recs, 11..=12);
        crash_copy(&dir.path().join("a"), &dir.path().join("b"));
        let b = SledStorage::open(&dir.path().join("b"), 8 << 20).expect("open the copy");
        assert_eq!(b.bounds().expect("bounds"), Some((1, 12)));
        assert_eq!(seqs(&b, 1, 40).expect("scan"), (1..=12).collect::<Vec<_>>());
    }

    /// A reopen after which the log does not reach what the head record
    /// says was acknowledged fails, and the log takes nothing more until a
    /// reopen reaches it: no write goes on past a hole. (Here the record
    /// says more than was written; in life, a journal lost with sled's
    /// flush failing.)
    #[test]
    fn a_reopen_short_of_what_was_acknowledged_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let recs: Vec<Vec<u8>> = (0..=40).map(record_for).collect();
        let s = SledStorage::open(dir.path(), 8 << 20).expect("open");
        commit(&s, &recs, 1..=10);
        commit(&s, &recs, 11..=20);
        s.mark_acked(25).expect("acked");
        let err = s.reopen().expect_err("short of 25");
        assert!(
            err.to_string()
                .contains("reaches seq 20 but seqs up to 25 were acknowledged"),
            "{err}"
        );
        assert!(s.checkpoint().is_err(), "no sled to flush");
        assert!(s.bounds().is_err(), "no log to read");
        s.mark_acked(20).expect("acked");
        s.reopen().expect("reopen");
        assert_eq!(seqs(&s, 1, 40).expect("scan"), (1..=20).collect::<Vec<_>>());
    }
}
