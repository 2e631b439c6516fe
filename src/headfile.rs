//! The head record: how far the log reached, kept outside the log engine.
//!
//! sled's recovery treats a damaged page as the end of its log, so a flipped
//! byte, a truncated or a deleted `db` file reopens as a shorter log with
//! every remaining crc intact. To notice (SPEC guarantee 8), the committer
//! also records the head in `data_dir/head`, a small file of its own:
//!
//! - before a group's sync it writes `{acked: H0, committing: H1}` (H0 the
//!   head every earlier group made durable and acknowledged, H1 this group's
//!   last seq) and fdatasyncs that file *alongside* sled's sync, on a thread
//!   of its own, so the two flushes overlap instead of adding up;
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
fn newest(bytes: &[u8]) -> std::result::Result<Option<(usize, HeadMark)>, ()> {
    if bytes.is_empty() {
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

struct Inner {
    file: File,
    /// The slot written last.
    slot: usize,
    /// What the file says now: found at open, then the last write;
    /// `Err` when both slots were found damaged and nothing was written.
    current: std::result::Result<Option<HeadMark>, ()>,
}

/// The head file of a data directory, with a thread that syncs it.
pub(crate) struct HeadFile {
    path: PathBuf,
    inner: Mutex<Inner>,
    sync_tx: Mutex<mpsc::Sender<mpsc::SyncSender<std::io::Result<()>>>>,
}

impl HeadFile {
    /// Opens (or creates) `dir/head`. A file whose slots are both damaged
    /// opens, and [`HeadFile::found`] says so (the next write replaces it).
    pub(crate) fn open(dir: &Path) -> Result<HeadFile> {
        let path = dir.join("head");
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("opening the head record {}", path.display()), e))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &file, &mut bytes)
            .map_err(|e| Error::io(format!("reading the head record {}", path.display()), e))?;
        let (slot, found) = match newest(&bytes) {
            Ok(Some((slot, m))) => (slot, Ok(Some(m))),
            Ok(None) => (1, Ok(None)),
            Err(()) => (1, Err(())),
        };
        if !existed && let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
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
        Ok(HeadFile {
            path,
            inner: Mutex::new(Inner {
                file,
                slot,
                current: found,
            }),
            sync_tx: Mutex::new(sync_tx),
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
        inner
            .file
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

    /// Starts an fdatasync of the file on its own thread; the returned
    /// receiver answers when it is done.
    pub(crate) fn start_sync(&self) -> mpsc::Receiver<std::io::Result<()>> {
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = self
            .sync_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(tx.clone());
        if sent.is_err() {
            let _ = tx.send(Err(std::io::Error::other("the head record thread stopped")));
        }
        rx
    }

    /// Waits for a sync started by [`HeadFile::start_sync`].
    pub(crate) fn finish_sync(&self, rx: mpsc::Receiver<std::io::Result<()>>) -> Result<()> {
        rx.recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the head record thread stopped")))
            .map_err(|e| {
                Error::io(
                    format!("fdatasync of the head record {}", self.path.display()),
                    e,
                )
            })
    }

    /// Writes `mark` and makes it durable before returning.
    pub(crate) fn write_durable(&self, mark: HeadMark) -> Result<()> {
        self.write(mark)?;
        let rx = self.start_sync();
        self.finish_sync(rx)
    }
}

impl Drop for HeadFile {
    /// A clean close makes the last (unsynced) record durable.
    fn drop(&mut self) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = inner.file.sync_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = HeadFile::open(dir.path()).expect("open");
        assert_eq!(h.found().expect("valid"), None);
        for n in 1..=5 {
            h.write_durable(HeadMark {
                acked: n,
                committing: n + 1,
            })
            .expect("write");
        }
        drop(h);
        let h = HeadFile::open(dir.path()).expect("reopen");
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
        let h = HeadFile::open(dir.path()).expect("reopen");
        assert_eq!(h.found().expect("valid").map(|m| m.acked), Some(4));
        drop(h);
        // Both slots damaged: an error naming the file, not a silent zero.
        let other = SLOT as usize - newest_at;
        bytes[other + 9] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let h = HeadFile::open(dir.path()).expect("opens");
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
        let h = HeadFile::open(dir.path()).expect("reopen");
        assert_eq!(h.found().expect("valid").map(|m| m.acked), Some(9));
    }
}
