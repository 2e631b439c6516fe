//! The head record: how far the log reached, kept outside the log engine.
//!
//! sled's recovery treats a damaged page as the end of its log, so a flipped
//! byte, a truncated or a deleted `db` file reopens as a shorter log with
//! every remaining crc intact. To notice (SPEC guarantee 8), the committer
//! also records the head in `data_dir/head`, a small file of its own:
//!
//! - before a group's sync it writes `{acked: H0, committing: H1}` (H0 the
//!   head every earlier group made durable and acknowledged, H1 this group's
//!   last seq) and makes it durable *with* the log's sync (the journal's
//!   fdatasync, see `journal`; below);
//! - after both are done, before anyone is answered, it writes
//!   `{acked: H1, committing: H1}` without a sync (a process crash keeps it;
//!   the next group's fdatasync, or a clean close, makes it durable).
//!
//! Invariant: every acknowledged seq is at most the record's `acked` once
//! the process is gone (kill -9 included), and `acked` never exceeds what
//! the log made durable. So on open, a log ending below `acked` lost
//! acknowledged entries, and one ending in `(acked, committing]` merely
//! lost a group nobody was told about.
//!
//! Layout: two 512-byte slots written in turn (a torn write spoils one
//! slot, never both); a slot is `b"WSHD"`, `acked` and `committing` as u64
//! big-endian, and a crc32 of those 20 bytes. The newest valid slot wins.
//! The file is padded to both slots once, at the first record written after
//! open, and made durable, so a record is an overwrite in place: no size,
//! no block, no metadata to sync. Opening only reads: a command that only
//! looks, or an open that refuses, leaves the file as it was (or absent).
//!
//! One flush, where the filesystem allows it ([`durability`]): the
//! record's own fdatasync is a second device cache flush per group, which
//! the device takes after the log's (60–90 µs of a one-writer commit here).
//! On ext4 (not `data=journal`) and xfs, with the record and the log's
//! file on one device (`SharedFlush`), the committer instead submits the
//! write of the record's page to the device
//! (`sync_file_range` WRITE), and *waits for that write to complete*
//! (WAIT_BEFORE | WRITE | WAIT_AFTER), before it calls the log's
//! fdatasync. Both filesystems end an fdatasync with a cache
//! flush of the device (or a journal commit carrying one), and a flush
//! makes every write completed before it durable, whichever file it was
//! for. An overwrite in place there needs nothing else. Anywhere else the
//! record keeps its own fdatasync (`OwnSync`), on a thread of its own
//! alongside the log's fdatasync, so the two overlap.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"WSHD";
const SLOT: u64 = 512;
const RECORD: usize = 24;

/// What the head record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadMark {
    /// Every acknowledged seq is at or below this.
    pub acked: u64,
    /// The last seq of the group being made durable when it was written.
    pub committing: u64,
}

fn encode(m: HeadMark) -> [u8; RECORD] {
    let mut b = [0u8; RECORD];
    b[..4].copy_from_slice(MAGIC);
    b[4..12].copy_from_slice(&m.acked.to_be_bytes());
    b[12..20].copy_from_slice(&m.committing.to_be_bytes());
    let crc = crc32fast::hash(&b[..20]);
    b[20..].copy_from_slice(&crc.to_be_bytes());
    b
}

fn decode(b: &[u8]) -> Option<HeadMark> {
    if b.len() < RECORD || &b[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(b[20..24].try_into().ok()?);
    if crc32fast::hash(&b[..20]) != crc {
        return None;
    }
    Some(HeadMark {
        acked: u64::from_be_bytes(b[4..12].try_into().ok()?),
        committing: u64::from_be_bytes(b[12..20].try_into().ok()?),
    })
}

/// Reads the record in `bytes` (the whole file): the newest valid slot.
/// `Err` when the file holds bytes but no valid slot (it was damaged).
/// Zeros alone (a file padded and never written) are no record;
/// the log's own meta says whether one was kept, so a record zeroed away
/// is still noticed (`log::check_head`).
fn newest(bytes: &[u8]) -> std::result::Result<Option<(usize, HeadMark)>, ()> {
    if bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let best = (0..2)
        .filter_map(|i| {
            let at = i * SLOT as usize;
            bytes.get(at..at + RECORD).and_then(decode).map(|m| (i, m))
        })
        .max_by_key(|(_, m)| (m.acked, m.committing));
    best.map(Some).ok_or(())
}

/// How a group's head record is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Its own fdatasync, alongside the log's.
    OwnSync,
    /// Written back (and the write waited for) before the log's fdatasync,
    /// whose device flush makes it durable too.
    SharedFlush,
}

/// Where the head record and the log's file live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// `statfs`'s `f_type` of the data directory.
    pub fs_magic: i64,
    /// The record and the log's file are on one device.
    pub same_device: bool,
    /// The record's file has data blocks of its own (ext4's `inline_data`
    /// keeps a small file in its inode, which only a journal commit makes
    /// durable).
    pub holds_blocks: bool,
    /// The filesystem journals file data (ext4 `data=journal`); `None`
    /// when the mount could not be found.
    pub data_journal: Option<bool>,
}

const EXT4_MAGIC: i64 = 0xEF53;
const XFS_MAGIC: i64 = 0x5846_5342;

/// Whether the log's fdatasync can carry the head record: only where an
/// fdatasync is known to end with a device flush and a page overwritten in
/// place needs nothing but its own write (ext4 without `data=journal`,
/// xfs, a file with blocks of its own), on the one device that flush is
/// for. Anything unknown keeps the record's own sync.
pub(crate) fn durability(p: Placement) -> Durability {
    let fs_ok = match p.fs_magic {
        EXT4_MAGIC => p.data_journal == Some(false),
        XFS_MAGIC => true,
        _ => false,
    };
    if fs_ok && p.same_device && p.holds_blocks {
        Durability::SharedFlush
    } else {
        Durability::OwnSync
    }
}

/// Whether the mount of device `dev` (major, minor) journals file data,
/// read from `/proc/self/mountinfo`'s text; `None` when no line is for it.
fn journals_data(mountinfo: &str, dev: (u64, u64)) -> Option<bool> {
    let want = format!("{}:{}", dev.0, dev.1);
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != want {
            return None;
        }
        // Past the optional fields: "- fstype source superoptions".
        let (_, rest) = line.split_once(" - ")?;
        let super_opts = rest.split(' ').nth(2).unwrap_or("");
        Some(super_opts.split(',').any(|o| o == "data=journal"))
    })
}

#[cfg(target_os = "linux")]
fn placement(dir: &Path, head: &File, log_file: &Path) -> Placement {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let fs_magic = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .ok()
        .and_then(|c| {
            // SAFETY: `c` is a NUL-terminated path and `buf` a zeroed
            // statfs the call fills in.
            let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
            (unsafe { libc::statfs(c.as_ptr(), &mut buf) } == 0).then_some(buf.f_type as i64)
        })
        .unwrap_or(0);
    let head_meta = head.metadata().ok();
    let head_dev = head_meta.as_ref().map(|m| m.dev());
    let log_dev = std::fs::metadata(log_file).map(|m| m.dev()).ok();
    let same_device = head_dev.is_some() && head_dev == log_dev;
    let holds_blocks = head_meta.is_some_and(|m| m.blocks() > 0);
    let data_journal = head_dev.and_then(|d| {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        journals_data(
            &info,
            (u64::from(libc::major(d)), u64::from(libc::minor(d))),
        )
    });
    Placement {
        fs_magic,
        same_device,
        holds_blocks,
        data_journal,
    }
}

#[cfg(not(target_os = "linux"))]
fn placement(_dir: &Path, _head: &File, _log_file: &Path) -> Placement {
    Placement {
        fs_magic: 0,
        same_device: false,
        holds_blocks: false,
        data_journal: None,
    }
}

/// Submits the writes of the file's dirty pages to the device, with no
/// flush of the device's cache (see the module's top); with `wait`, first
/// and last waits for every write of them under way to complete.
#[cfg(target_os = "linux")]
fn write_back(file: &File, wait: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: a valid open descriptor; the range is the whole record.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, (2 * SLOT) as i64, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Never used: [`durability`] chooses `SharedFlush` only on Linux.
#[cfg(not(target_os = "linux"))]
fn write_back(file: &File, _wait: bool) -> std::io::Result<()> {
    file.sync_data()
}

/// A record's sync under way ([`HeadFile::start_sync`]).
pub(crate) enum PendingSync {
    /// The fdatasync on the file's thread.
    Syncing(mpsc::Receiver<std::io::Result<()>>),
    /// The page's write, submitted.
    WritingBack,
    /// Submitting it failed.
    Failed(std::io::Error),
}

struct Inner {
    /// `None` until the first record is written (see `prepared`).
    file: Option<File>,
    /// The slot written last.
    slot: usize,
    /// What the file says now: found at open, then the last write;
    /// `Err` when both slots were found damaged and nothing was written.
    current: std::result::Result<Option<HeadMark>, ()>,
}

/// The head file of a data directory, with a thread that syncs it.
pub(crate) struct HeadFile {
    path: PathBuf,
    dir: PathBuf,
    log_file: PathBuf,
    inner: Mutex<Inner>,
    /// Decided when the file is prepared; `OwnSync` until then.
    durability: std::sync::OnceLock<Durability>,
    sync_tx: Mutex<Option<mpsc::Sender<mpsc::SyncSender<std::io::Result<()>>>>>,
}

impl HeadFile {
    /// Opens (or creates) `dir/head`, next to the log's file `log_file`
    /// (which decides [`HeadFile::durability`]). A file whose slots are both
    /// damaged opens, and [`HeadFile::found`] says so (the next write
    /// replaces it).
    pub(crate) fn open(dir: &Path, log_file: &Path) -> Result<HeadFile> {
        let path = dir.join("head");
        // Only read here: a command that only looks (`walship log`, a
        // `repair` without `--accept-loss`) leaves the file as it was, or
        // absent; the first record written prepares it (`prepared`).
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(Error::io(
                    format!("reading the head record {}", path.display()),
                    e,
                ));
            }
        };
        let (slot, found) = match newest(&bytes) {
            Ok(Some((slot, m))) => (slot, Ok(Some(m))),
            Ok(None) => (1, Ok(None)),
            Err(()) => (1, Err(())),
        };
        Ok(HeadFile {
            path,
            dir: dir.to_path_buf(),
            log_file: log_file.to_path_buf(),
            inner: Mutex::new(Inner {
                file: None,
                slot,
                current: found,
            }),
            durability: std::sync::OnceLock::new(),
            sync_tx: Mutex::new(None),
        })
    }

    /// The file, open for writing and holding both slots: opened (created)
    /// and padded, durably, at the first record written after open, with
    /// its sync thread started and its [`Durability`] decided.
    fn prepared<'a>(&self, inner: &'a mut Inner) -> Result<&'a File> {
        if inner.file.is_none() {
            let path = &self.path;
            let existed = path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| Error::io(format!("opening the head record {}", path.display()), e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io(format!("reading the head record {}", path.display()), e))?
                .len();
            // Both slots exist from now on: a record is an overwrite in
            // place. An older, shorter file keeps its record.
            let whole = 2 * SLOT;
            if len < whole {
                file.write_all_at(&vec![0u8; (whole - len) as usize], len)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| {
                        Error::io(format!("preparing the head record {}", path.display()), e)
                    })?;
            }
            if !existed && let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            let placed = placement(&self.dir, &file, &self.log_file);
            let durability = *self.durability.get_or_init(|| durability(placed));
            tracing::debug!(path = %path.display(), ?placed, ?durability, "head record");
            let (sync_tx, sync_rx) = mpsc::channel::<mpsc::SyncSender<std::io::Result<()>>>();
            let syncer = file
                .try_clone()
                .map_err(|e| Error::io(format!("opening the head record {}", path.display()), e))?;
            std::thread::Builder::new()
                .name("walship-head".into())
                .spawn(move || {
                    while let Ok(reply) = sync_rx.recv() {
                        let _ = reply.send(syncer.sync_data());
                    }
                })
                .map_err(|e| Error::io("starting the head record thread", e))?;
            *self.sync_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(sync_tx);
            inner.file = Some(file);
        }
        inner.file.as_ref().ok_or_else(|| {
            Error::io(
                "preparing the head record",
                std::io::Error::other("not open"),
            )
        })
    }

    /// What the file says (`None`: no record yet); an error naming the
    /// file when both slots were found damaged and nothing was written since.
    pub(crate) fn found(&self) -> Result<Option<HeadMark>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.current.map_err(|()| Error::HeadRecordDamaged {
            path: self.path.clone(),
        })
    }

    /// Writes `mark` into the other slot (no sync).
    pub(crate) fn write(&self, mark: HeadMark) -> Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let slot = 1 - inner.slot;
        self.prepared(&mut inner)?
            .write_all_at(&encode(mark), slot as u64 * SLOT)
            .map_err(|e| {
                Error::io(
                    format!("writing the head record {}", self.path.display()),
                    e,
                )
            })?;
        inner.slot = slot;
        inner.current = Ok(Some(mark));
        Ok(())
    }

    /// How [`HeadFile::start_sync`] makes a record durable: with
    /// `SharedFlush`, only once the log's fdatasync that follows
    /// [`HeadFile::finish_sync`] is done.
    pub(crate) fn durability(&self) -> Durability {
        self.durability
            .get()
            .copied()
            .unwrap_or(Durability::OwnSync)
    }

    /// Starts making the last record durable: an fdatasync on the file's
    /// own thread (`OwnSync`), or the write of its page to the device,
    /// submitted here and not waited for (`SharedFlush`).
    pub(crate) fn start_sync(&self) -> PendingSync {
        if self.durability() == Durability::SharedFlush {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            return match self
                .prepared(&mut inner)
                .map_err(std::io::Error::other)
                .and_then(|f| write_back(f, false))
            {
                Ok(()) => PendingSync::WritingBack,
                Err(e) => PendingSync::Failed(e),
            };
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = match self
            .sync_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(sync) => sync.send(tx.clone()).is_ok(),
            None => false,
        };
        if !sent {
            let _ = tx.send(Err(std::io::Error::other("the head record thread stopped")));
        }
        PendingSync::Syncing(rx)
    }

    /// Waits for what [`HeadFile::start_sync`] started: the fdatasync, or
    /// the completion of the page's write (then only the log's fdatasync that
    /// follows makes it durable).
    pub(crate) fn finish_sync(&self, pending: PendingSync) -> Result<()> {
        let done = match pending {
            PendingSync::Syncing(rx) => rx
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("the head record thread stopped"))),
            PendingSync::WritingBack => {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                self.prepared(&mut inner)
                    .map_err(std::io::Error::other)
                    .and_then(|f| write_back(f, true))
            }
            PendingSync::Failed(e) => Err(e),
        };
        done.map_err(|e| {
            let what = match self.durability() {
                Durability::OwnSync => "fdatasync of",
                Durability::SharedFlush => "writing back",
            };
            Error::io(format!("{what} the head record {}", self.path.display()), e)
        })
    }

    /// Writes `mark` and makes it durable (its own fdatasync, whatever
    /// the durability) before returning.
    pub(crate) fn write_durable(&self, mark: HeadMark) -> Result<()> {
        self.write(mark)?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.prepared(&mut inner)?.sync_data().map_err(|e| {
            Error::io(
                format!("fdatasync of the head record {}", self.path.display()),
                e,
            )
        })
    }
}

impl Drop for HeadFile {
    /// A clean close makes the last (unsynced) record durable.
    fn drop(&mut self) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = &inner.file {
            let _ = f.sync_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(fs_magic: i64, same_device: bool, data_journal: Option<bool>) -> Durability {
        durability(Placement {
            fs_magic,
            same_device,
            holds_blocks: true,
            data_journal,
        })
    }

    #[test]
    fn sleds_flush_carries_the_record_only_on_ext4_and_xfs_on_one_device() {
        use Durability::*;
        assert_eq!(on(EXT4_MAGIC, true, Some(false)), SharedFlush);
        assert_eq!(on(XFS_MAGIC, true, None), SharedFlush);
        // ext4 journalling data writes it back into the journal, not in place.
        assert_eq!(on(EXT4_MAGIC, true, Some(true)), OwnSync);
        // A mount that could not be read is not guessed at.
        assert_eq!(on(EXT4_MAGIC, true, None), OwnSync);
        // Another device's flush is not this one's.
        assert_eq!(on(EXT4_MAGIC, false, Some(false)), OwnSync);
        assert_eq!(on(XFS_MAGIC, false, None), OwnSync);
        // A file kept in its inode (ext4 inline_data) is metadata.
        let inline = Placement {
            fs_magic: EXT4_MAGIC,
            same_device: true,
            holds_blocks: false,
            data_journal: Some(false),
        };
        assert_eq!(durability(inline), OwnSync);
        // Copy-on-write (btrfs) moves an overwrite; tmpfs, overlay, NFS,
        // anything else: the record's own fdatasync.
        for other in [0x9123_683E, 0x0102_1994, 0x794C_7630, 0x6969, 0] {
            assert_eq!(on(other, true, Some(false)), OwnSync, "{other:#x}");
        }
    }

    #[test]
    fn the_mount_of_the_device_says_whether_it_journals_data() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard,errors=remount-ro
31 22 8:17 / /srv rw,noatime shared:7 master:2 - ext4 /dev/sdb1 rw,data=journal
32 22 8:33 / /data rw - xfs /dev/sdc1 rw,attr2,inode64
40 22 0:45 / /tmp rw,nosuid - tmpfs tmpfs rw,size=1024k";
        assert_eq!(journals_data(info, (254, 0)), Some(false));
        assert_eq!(journals_data(info, (8, 17)), Some(true));
        assert_eq!(journals_data(info, (8, 33)), Some(false));
        assert_eq!(journals_data(info, (8, 1)), None);
        assert_eq!(journals_data("", (254, 0)), None);
    }

    #[test]
    fn opening_changes_nothing_and_the_first_record_prepares_both_slots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("head");
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("open");
        assert_eq!(h.found().expect("valid"), None);
        // Looking creates nothing.
        assert!(!path.exists(), "open created the head record");
        h.write(HeadMark {
            acked: 3,
            committing: 4,
        })
        .expect("write");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 2 * SLOT);
        h.write(HeadMark {
            acked: 4,
            committing: 4,
        })
        .expect("write");
        // Records are overwrites: the file does not grow.
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 2 * SLOT);
        drop(h);
        // An older, shorter file is read as it is, and left so, until a
        // record is written: then it is padded without losing its record.
        let bytes = std::fs::read(&path).expect("read");
        let short = bytes[..SLOT as usize + RECORD].to_vec();
        std::fs::write(&path, &short).expect("write");
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("reopen");
        assert_eq!(h.found().expect("valid").map(|m| m.acked), Some(4));
        drop(h);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            short,
            "open or close changed it"
        );
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("reopen");
        h.write(HeadMark {
            acked: 5,
            committing: 5,
        })
        .expect("write");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 2 * SLOT);
        drop(h);
        let bytes = std::fs::read(&path).expect("read");
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("reopen");
        assert_eq!(h.found().expect("valid").map(|m| m.acked), Some(5));
        // The older record is still in its slot.
        assert_eq!(
            decode(&bytes[SLOT as usize..]).map(|m| m.acked),
            Some(4),
            "padding lost the older record"
        );
    }

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("open");
        assert_eq!(h.found().expect("valid"), None);
        for n in 1..=5 {
            h.write_durable(HeadMark {
                acked: n,
                committing: n + 1,
            })
            .expect("write");
        }
        drop(h);
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("reopen");
        assert_eq!(
            h.found().expect("valid"),
            Some(HeadMark {
                acked: 5,
                committing: 6
            })
        );
        drop(h);
        // Tear the newest slot: the other one (acked 4) is read.
        let path = dir.path().join("head");
        let mut bytes = std::fs::read(&path).expect("read");
        let newest_at = if decode(&bytes[..RECORD]).map(|m| m.acked) == Some(5) {
            0
        } else {
            SLOT as usize
        };
        bytes[newest_at + 7] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("reopen");
        assert_eq!(h.found().expect("valid").map(|m| m.acked), Some(4));
        drop(h);
        // Both slots damaged: an error naming the file, not a silent zero.
        let other = SLOT as usize - newest_at;
        bytes[other + 9] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("opens");
        match h.found() {
            Err(Error::HeadRecordDamaged { path: p }) => assert_eq!(p, path),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a damaged head record was accepted"),
        }
        // The next write replaces it.
        h.write_durable(HeadMark {
            acked: 9,
            committing: 9,
        })
        .expect("write");
        drop(h);
        let h = HeadFile::open(dir.path(), &dir.path().join("db")).expect("reopen");
        assert_eq!(h.found().expect("valid").map(|m| m.acked), Some(9));
    }
}
