//! The journal: the log's write-ahead, what makes a group commit durable.
//!
//! A group commit puts its records into sled (in memory) and appends them
//! to the journal, whose fdatasync is the commit's durability: one `write`
//! and one `fdatasync` on the committer's own thread. sled makes the same
//! records durable later, at a checkpoint (`LogStore::checkpoint`), after
//! which the journal files that checkpoint covers are removed. Before
//! this, every commit waited for sled's flush (its I/O buffer handed to
//! sled's own thread, written, `sync_file_range` waited for) and then an
//! fdatasync of sled's file.
//!
//! Files: `data_dir/journal/<first seq, 20 digits>.wal`, each a run of
//! groups: `u64 LE length of the payload`, `u32 LE crc32 of the payload`,
//! payload = `u64 LE first seq`, `u32 LE count`, then per record `u32 LE
//! length` and the record (as `codec` encodes it).
//!
//! Invariants:
//! - every acknowledged seq is durable in sled or in a journal file that
//!   is (the file's directory entry made durable when it was created, its
//!   group fdatasynced before the group's writers are answered);
//! - a file named `S` says what the log holds from seq `S` on: what an
//!   older file (or sled) holds at or past `S` was never acknowledged (a
//!   group whose sync failed; the journal starts a new file after it);
//! - a file is removed only once sled is durable past every seq in it.
//!
//! Replay (`SledStorage::open` and `reopen`): the files read back as one
//! run ([`View`]: a newer file overrules from its name on, a gap starts
//! the run again), put into sled as [`replay_plan`] decides: the run
//! overrules sled where both hold records (an empty run from its name
//! on), never below sled's first seq; a run short of what the head
//! record says was acknowledged only adds what lies past sled's head, and
//! the head check decides the rest (guarantee 8). A group taken back
//! ([`Journal::restart_at`]) gets its overruling file at once.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// A group's header: payload length (u64) and crc32.
const HEADER: usize = 12;

/// A group read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) first: u64,
    pub(crate) records: Vec<Vec<u8>>,
}

#[cfg(test)]
impl Group {
    pub(crate) fn last(&self) -> u64 {
        self.first + self.records.len() as u64 - 1
    }
}

/// One journal file read back.
#[derive(Debug)]
pub(crate) struct Read {
    /// The seq the file is named by.
    pub(crate) first: u64,
    pub(crate) path: PathBuf,
    /// Its whole groups, in order.
    pub(crate) groups: Vec<Group>,
    /// Why reading stopped before the end of the file, if it did.
    pub(crate) cut: Option<String>,
}

/// The journal of one data directory.
pub(crate) struct Journal {
    dir: PathBuf,
    w: Mutex<Writer>,
}

struct Writer {
    /// The file groups go to; `None` until the first group after an open,
    /// a roll or a restart.
    file: Option<File>,
    /// Its bytes.
    len: u64,
    /// The last seq appended (0: none since open).
    last: u64,
    /// Whether `file` has groups not yet synced.
    dirty: bool,
    /// Files ended (rolled) with groups not yet synced: the next sync
    /// syncs them too (their groups' writers wait for it).
    ended_dirty: Vec<File>,
    /// Every file on disk, oldest first, the current one last.
    files: Vec<PathBuf>,
    /// Bytes in the files on disk.
    bytes: u64,
    /// Whether the journal directory's entry in its parent was made
    /// durable by this process.
    parent_synced: bool,
}

pub(crate) fn name(first: u64) -> String {
    format!("{first:020}.wal")
}

fn first_of(path: &Path) -> Option<u64> {
    let n = path.file_name()?.to_str()?;
    n.strip_suffix(".wal")?.parse().ok()
}

impl Journal {
    /// The journal in `dir` (made at the first group written; opening
    /// changes nothing).
    pub(crate) fn open(dir: &Path) -> Result<Journal> {
        let files = list(dir)?;
        let bytes = files
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(Journal {
            dir: dir.to_path_buf(),
            w: Mutex::new(Writer {
                file: None,
                len: 0,
                last: 0,
                dirty: false,
                ended_dirty: Vec::new(),
                files,
                bytes,
                parent_synced: false,
            }),
        })
    }

    /// The directory of its files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every file, read back in name order.
    pub(crate) fn read(&self) -> Result<Vec<Read>> {
        let files = list(&self.dir)?;
        files.into_iter().map(|p| read_file(&p)).collect()
    }

    /// Appends one group (records with seqs `first`, `first + 1`, …); not
    /// durable before [`Journal::sync`].
    pub(crate) fn append(&self, first: u64, records: &[&[u8]]) -> Result<()> {
        let buf = encode_group(first, records);
        let mut w = self.lock();
        if w.file.is_none() {
            self.start_file(&mut w, first)?;
        }
        let path = w.files.last().cloned().unwrap_or_default();
        let file = w
            .file
            .as_mut()
            .ok_or_else(|| Error::io("writing the journal", std::io::Error::other("no file")))?;
        file.write_all(&buf)
            .map_err(|e| Error::io(format!("writing the journal {}", path.display()), e))?;
        w.len += buf.len() as u64;
        w.bytes += buf.len() as u64;
        w.last = first + records.len() as u64 - 1;
        w.dirty = true;
        Ok(())
    }

    /// Creates the file named `first` (and makes its directory entry
    /// durable) for the groups that follow.
    fn start_file(&self, w: &mut Writer, first: u64) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            Error::io(
                format!("creating the journal directory {}", self.dir.display()),
                e,
            )
        })?;
        let path = self.dir.join(name(first));
        // A file of that name (a group taken back, or this very start
        // retried after its directory's fsync failed) goes, and a new one
        // takes its place: what it held must not come back, and the
        // directory is changed again, so its fsync below writes it whole.
        // (After a failed write-back Linux marks a directory's block
        // clean: a retried fsync that changed nothing would succeed
        // without writing the entry the failed one was for.)
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(
                    format!("removing the journal {} to start it anew", path.display()),
                    e,
                ));
            }
            _ => {}
        }
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating the journal {}", path.display()), e))?;
        // The file's entry, and once per process the journal directory's
        // own entry in the data directory.
        let mut dirs = vec![self.dir.clone()];
        if !w.parent_synced
            && let Some(parent) = self.dir.parent()
        {
            dirs.push(parent.to_path_buf());
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        w.parent_synced = true;
        w.files.retain(|p| p != &path);
        w.files.push(path);
        w.file = Some(file);
        w.len = 0;
        Ok(())
    }

    /// Makes every group appended so far durable (fdatasync), those of a
    /// file ended meanwhile included.
    pub(crate) fn sync(&self) -> Result<()> {
        let mut w = self.lock();
        let failed = |e| {
            Error::io(
                format!("fdatasync of the journal in {}", self.dir.display()),
                e,
            )
        };
        while let Some(f) = w.ended_dirty.first() {
            f.sync_data().map_err(failed)?;
            w.ended_dirty.remove(0);
        }
        if w.dirty
            && let Some(f) = &w.file
        {
            f.sync_data().map_err(failed)?;
        }
        w.dirty = false;
        Ok(())
    }

    /// Starts the write to the device of what the current file holds
    /// unsynced, without waiting (Linux: `sync_file_range` WRITE), so that
    /// it runs alongside the head record's own write; [`Journal::sync`]
    /// still makes it durable. Best effort: a failure here is the sync's
    /// to report.
    pub(crate) fn start_write_back(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let w = self.lock();
            if w.dirty
                && let Some(f) = &w.file
            {
                // SAFETY: a valid open descriptor; offset 0 and length 0
                // mean the whole file.
                let _ = unsafe {
                    libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
                };
            }
        }
    }

    /// Ends the current file (groups not yet synced in it are synced by
    /// the next [`Journal::sync`]): the next group starts a new one.
    /// Returns the last seq appended before (0: none since open).
    pub(crate) fn roll(&self) -> u64 {
        let mut w = self.lock();
        end(&mut w);
        w.last
    }

    /// After a group that was not acknowledged: starts the file named
    /// `seq` (empty, its directory entry durable), which overrules
    /// whatever older files hold from `seq` on, and where the next group
    /// goes. Made at once, not at the next group: a crash before it must
    /// not bring the group back.
    pub(crate) fn restart_at(&self, seq: u64) -> Result<()> {
        let mut w = self.lock();
        end(&mut w);
        w.ended_dirty.clear();
        w.last = w.last.min(seq.saturating_sub(1));
        self.start_file(&mut w, seq)
    }

    /// Removes every file but the one groups now go to (all of them when
    /// none does): once sled is durable past every seq they hold.
    pub(crate) fn remove_older(&self) -> Result<()> {
        let mut w = self.lock();
        let keep = if w.file.is_some() {
            w.files.last().cloned()
        } else {
            None
        };
        let files = std::mem::take(&mut w.files);
        let mut left = Vec::new();
        let mut failed = None;
        let mut removed = false;
        for p in files {
            if Some(&p) == keep.as_ref() || failed.is_some() {
                left.push(p);
                continue;
            }
            match std::fs::remove_file(&p) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    failed = Some(Error::io(
                        format!("removing the journal {}", p.display()),
                        e,
                    ));
                    left.push(p);
                }
            }
        }
        w.bytes = left
            .iter()
            .map(|p| {
                if Some(p) == keep.as_ref() {
                    w.len
                } else {
                    std::fs::metadata(p).map_or(0, |m| m.len())
                }
            })
            .sum();
        w.files = left;
        if let Some(e) = failed {
            return Err(e);
        }
        // Removals made durable: a file coming back after a power loss
        // would stand apart from the run (see `View::of`).
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Bytes in the journal's files.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

/// fsync of a directory: its entries made durable.
fn sync_dir(d: &Path) -> Result<()> {
    File::open(d)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync of the directory {}", d.display()), e))
}

/// Ends the writer's current file.
fn end(w: &mut Writer) {
    if let Some(f) = w.file.take()
        && w.dirty
    {
        w.ended_dirty.push(f);
    }
    w.dirty = false;
}

/// The journal files in `dir`, oldest (lowest first seq) first.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::io(
                format!("listing the journal {}", dir.display()),
                e,
            ));
        }
    };
    let mut files: Vec<(u64, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| first_of(&p).filter(|f| *f > 0).map(|f| (f, p)))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Reads one file's whole groups, stopping at the first that is cut short
/// or fails its crc (saying why).
fn read_file(path: &Path) -> Result<Read> {
    let first = first_of(path).unwrap_or(0);
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading the journal {}", path.display()), e))?;
    let (groups, cut) = parse_all(&bytes);
    Ok(Read {
        first,
        path: path.to_path_buf(),
        groups,
        cut: cut.map(|why| format!("{why} in {}", path.display())),
    })
}

/// A file's bytes as groups, up to the first that is cut short or fails
/// its crc (and why, saying where).
fn parse_all(bytes: &[u8]) -> (Vec<Group>, Option<String>) {
    let mut groups = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        match parse_group(&bytes[at..]) {
            Ok((g, used)) => {
                groups.push(g);
                at += used;
            }
            Err(why) => return (groups, Some(format!("{why} at byte {at}"))),
        }
    }
    (groups, None)
}

/// One group as the journal holds it (see the module's top).
fn encode_group(first: u64, records: &[&[u8]]) -> Vec<u8> {
    let mut payload_len = 12;
    for r in records {
        payload_len += 4 + r.len();
    }
    let mut buf = Vec::with_capacity(HEADER + payload_len);
    buf.extend_from_slice(&(payload_len as u64).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&first.to_le_bytes());
    buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
        buf.extend_from_slice(r);
    }
    let crc = crc32fast::hash(&buf[HEADER..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// One group at the start of `b`, and the bytes it took.
fn parse_group(b: &[u8]) -> std::result::Result<(Group, usize), String> {
    let header = b.get(..HEADER).ok_or("a group header cut short")?;
    let len = u64::from_le_bytes(header[..8].try_into().map_err(|_| "a bad header")?);
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len < 12 {
        return Err(format!("a group length of {len} bytes"));
    }
    let payload = usize::try_from(len)
        .ok()
        .and_then(|len| b.get(HEADER..HEADER.checked_add(len)?))
        .ok_or("a group cut short")?;
    if crc32fast::hash(payload) != crc {
        return Err("a group that fails its crc32".into());
    }
    let u32_at = |at: usize| -> std::result::Result<usize, String> {
        payload
            .get(at..at + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
            .ok_or_else(|| "a record cut short".to_string())
    };
    let first = u64::from_le_bytes(payload[..8].try_into().map_err(|_| "a bad header")?);
    let count = u32_at(8)?;
    let mut records = Vec::with_capacity(count.min(1 << 16));
    let mut at = 12;
    for _ in 0..count {
        let n = u32_at(at)?;
        let rec = payload
            .get(at + 4..at + 4 + n)
            .ok_or("a record cut short")?;
        records.push(rec.to_vec());
        at += 4 + n;
    }
    if at != payload.len() || records.is_empty() || first == 0 {
        return Err("a group whose records do not fill it".into());
    }
    Ok((Group { first, records }, HEADER + payload.len()))
}

/// What the journal's files hold, read as one run of records from the
/// oldest file's name on: each file takes back what the run holds from
/// its own name on (what an older file holds there was never
/// acknowledged).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct View {
    /// The seq of `records[0]`.
    pub(crate) first: u64,
    pub(crate) records: Vec<Vec<u8>>,
    /// Why the run stops before the files' end: a group out of place. (A
    /// group cut short or failing its crc ends its file's part of the run:
    /// in the last file it is a crash in the middle of its write, nobody
    /// was answered for it; elsewhere the next file overrules or starts
    /// the run again.)
    pub(crate) damaged: Option<String>,
    /// What was passed over on the way (cuts, gaps), for the log.
    pub(crate) notes: Vec<String>,
}

impl View {
    /// The files read back (in name order) as one run; `None` when there
    /// are no files. A file starting past where the run reached (a file
    /// whose removal a crash undid, or one cut short before another
    /// began) starts the run again from its name: what lies before the
    /// gap is sled's to hold, and [`replay_plan`] puts nothing back when
    /// sled does not reach it. A file cut short where the next one
    /// overrules loses nothing.
    pub(crate) fn of(files: Vec<Read>) -> Option<View> {
        let mut view: Option<View> = None;
        for f in files {
            let v = view.get_or_insert_with(|| View {
                first: f.first,
                records: Vec::new(),
                damaged: None,
                notes: Vec::new(),
            });
            if v.damaged.is_some() {
                break;
            }
            let next = v.next();
            if f.first > next {
                v.notes.push(format!(
                    "{} starts at seq {} past the run's end at {}: the run starts again there",
                    f.path.display(),
                    f.first,
                    next - 1
                ));
                v.first = f.first;
                v.records.clear();
            }
            let keep = f.first.saturating_sub(v.first) as usize;
            v.records.truncate(keep);
            if let Some(cut) = &f.cut {
                v.notes.push(cut.clone());
            }
            for g in f.groups {
                if g.first != v.next() {
                    v.damaged = Some(format!(
                        "{} holds a group from seq {} where {} was next",
                        f.path.display(),
                        g.first,
                        v.next()
                    ));
                    break;
                }
                v.records.extend(g.records);
            }
        }
        view
    }

    /// The seq after the run's last.
    pub(crate) fn next(&self) -> u64 {
        self.first + self.records.len() as u64
    }
}

/// What a replay does to sled's log (decided by [`replay_plan`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Replay {
    /// sled's records above this seq go first (`None`: none go).
    pub(crate) trim_above: Option<u64>,
    /// The run's records from this seq to its end then go in, in order.
    pub(crate) from: u64,
}

/// How the journal's run (`view`) goes into sled, whose log holds
/// `sled_first..=sled_head` (`(1, 0)` when empty), when the head record
/// says every seq up to `acked` was acknowledged.
///
/// - The run overrules sled from where both hold records: sled holds what
///   the run does (appended there first) or, past the run's end, groups
///   nobody was answered for, and a record sled lost to damage comes back.
///   An empty run (a file made as a group was taken back) overrules sled
///   from its name on.
/// - Never below sled's first seq: what was truncated stays truncated.
/// - A run that is damaged, or that ends below `acked`, lacks records
///   sled may hold durably (from a checkpoint): it only adds what lies
///   past sled's head, and the head check decides the rest.
/// - A run that starts past sled's head + 1 leaves a gap: nothing goes in
///   (`Err`, why), and the head check decides.
pub(crate) fn replay_plan(
    view: &View,
    sled_first: u64,
    sled_head: u64,
    acked: u64,
) -> std::result::Result<Replay, String> {
    let end = view.next() - 1;
    if sled_head + 1 < view.first {
        return Err(format!(
            "the journal holds seqs {}..={end} but the log ends at {sled_head}",
            view.first
        ));
    }
    if view.damaged.is_some() || end < acked {
        return Ok(Replay {
            trim_above: None,
            from: view.first.max(sled_head + 1),
        });
    }
    let from = view.first.max(sled_first);
    // An empty run (a file made when a group was taken back, or one a
    // crash left before its first group) says nothing was acknowledged
    // from its name on.
    let overrules = from <= end || view.records.is_empty();
    Ok(Replay {
        trim_above: (overrules && sled_head >= from).then(|| from - 1),
        from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(seqs: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
        seqs.map(|s| format!("record {s}").into_bytes()).collect()
    }

    fn append(j: &Journal, first: u64, n: u64) {
        let r = recs(first..=first + n - 1);
        let refs: Vec<&[u8]> = r.iter().map(|r| r.as_slice()).collect();
        j.append(first, &refs).expect("append");
    }

    #[test]
    fn groups_read_back_in_order_and_files_are_named_by_their_first_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("journal")).expect("open");
        assert!(j.read().expect("read").is_empty(), "nothing written yet");
        assert!(!dir.path().join("journal").exists(), "opening made nothing");
        append(&j, 1, 3);
        append(&j, 4, 1);
        j.sync().expect("sync");
        assert_eq!(j.roll(), 4);
        append(&j, 5, 2);
        let read = j.read().expect("read");
        assert_eq!(read.iter().map(|r| r.first).collect::<Vec<_>>(), vec![1, 5]);
        assert_eq!(
            read[0].groups,
            vec![
                Group {
                    first: 1,
                    records: recs(1..=3)
                },
                Group {
                    first: 4,
                    records: recs(4..=4)
                }
            ]
        );
        assert_eq!(read[1].groups[0].last(), 6);
        assert!(read.iter().all(|r| r.cut.is_none()));
        // Past a checkpoint only the current file stays.
        j.remove_older().expect("remove");
        let read = j.read().expect("read");
        assert_eq!(read.iter().map(|r| r.first).collect::<Vec<_>>(), vec![5]);
        assert_eq!(
            j.bytes(),
            std::fs::metadata(&read[0].path).expect("meta").len()
        );
        j.roll();
        j.remove_older().expect("remove");
        assert!(j.read().expect("read").is_empty());
        assert_eq!(j.bytes(), 0);
    }

    #[test]
    fn a_group_cut_short_or_damaged_ends_the_file_and_says_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jdir = dir.path().join("journal");
        let j = Journal::open(&jdir).expect("open");
        append(&j, 1, 2);
        append(&j, 3, 2);
        j.sync().expect("sync");
        let path = jdir.join(name(1));
        let whole = std::fs::read(&path).expect("file");
        // A crash in the middle of the second group's write.
        std::fs::write(&path, &whole[..whole.len() - 5]).expect("cut");
        let read = j.read().expect("read");
        assert_eq!(read[0].groups.len(), 1);
        assert!(
            read[0]
                .cut
                .as_deref()
                .is_some_and(|c| c.contains("cut short")),
            "{:?}",
            read[0].cut
        );
        // A flipped byte in the first group: nothing of it is believed.
        let mut bad = whole.clone();
        bad[HEADER + 14] ^= 0x01;
        std::fs::write(&path, &bad).expect("flip");
        let read = j.read().expect("read");
        assert!(read[0].groups.is_empty());
        assert!(
            read[0]
                .cut
                .as_deref()
                .is_some_and(|c| c.contains("crc32") && c.contains("byte 0")),
            "{:?}",
            read[0].cut
        );
    }

    /// A checkpoint may end the file between a group's append and its
    /// sync: the sync still covers that group.
    #[test]
    fn a_file_ended_before_its_group_was_synced_is_synced_by_the_next_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("journal")).expect("open");
        append(&j, 1, 2);
        j.roll();
        assert_eq!(j.lock().ended_dirty.len(), 1);
        j.sync().expect("sync");
        assert!(j.lock().ended_dirty.is_empty());
        // Synced already: ending it leaves nothing to sync.
        append(&j, 3, 1);
        j.sync().expect("sync");
        j.roll();
        assert!(j.lock().ended_dirty.is_empty());
    }

    #[test]
    fn a_restart_names_the_next_file_by_the_seq_it_supersedes_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("journal")).expect("open");
        append(&j, 1, 5);
        // Seqs 4 and 5 were not acknowledged: the next group is 4 again.
        j.restart_at(4).expect("restart");
        append(&j, 4, 1);
        let read = j.read().expect("read");
        assert_eq!(read.iter().map(|r| r.first).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(read[1].groups[0].records, recs(4..=4));
        // A reopened journal keeps appending to a new file.
        drop(j);
        let j = Journal::open(&dir.path().join("journal")).expect("reopen");
        append(&j, 5, 1);
        assert_eq!(j.read().expect("read").len(), 3);
    }

    fn file(first: u64, groups: &[(u64, u64)], cut: bool) -> Read {
        Read {
            first,
            path: PathBuf::from(name(first)),
            groups: groups
                .iter()
                .map(|&(f, n)| Group {
                    first: f,
                    records: recs(f..=f + n - 1),
                })
                .collect(),
            cut: cut.then(|| "a group cut short".to_string()),
        }
    }

    #[test]
    fn the_files_read_as_one_run_where_a_newer_file_overrules_from_its_name_on() {
        assert_eq!(View::of(Vec::new()), None);
        // 1..=10, then a failed group 11..=12 taken back by the file named 11.
        let v = View::of(vec![
            file(1, &[(1, 4), (5, 8)], false),
            file(13, &[(13, 2)], false),
        ])
        .expect("view");
        assert_eq!((v.first, v.next(), v.damaged.as_deref()), (1, 15, None));
        assert_eq!(v.records, recs(1..=14));
        let v = View::of(vec![
            file(1, &[(1, 12)], false),
            file(11, &[(11, 3)], false),
        ])
        .expect("view");
        assert_eq!(v.records.len(), 13);
        assert_eq!(v.records[10], b"record 11".to_vec());
        // The last group of the last file cut short: a crash mid-write.
        let v = View::of(vec![file(1, &[(1, 2)], false), file(3, &[(3, 2)], true)]).expect("view");
        assert_eq!((v.next(), v.damaged), (5, None));
        // A file cut short where the next one overrules loses nothing.
        let v = View::of(vec![file(1, &[(1, 2)], true), file(3, &[(3, 2)], false)]).expect("view");
        assert_eq!((v.first, v.next(), v.damaged.is_some()), (1, 5, false));
        assert_eq!(v.notes.len(), 1, "the cut is told");
        // A gap (a removed file back after a power loss, or a file cut
        // short before the next began): the run starts again after it.
        for cut in [false, true] {
            let v =
                View::of(vec![file(1, &[(1, 2)], cut), file(5, &[(5, 2)], false)]).expect("view");
            assert_eq!((v.first, v.next(), v.damaged.is_some()), (5, 7, false));
            assert_eq!(v.records, recs(5..=6));
        }
        // A group out of place: damage, the run stops there.
        let v = View::of(vec![file(1, &[(1, 2), (4, 1)], false)]).expect("view");
        assert_eq!(v.next(), 3);
        assert!(v.damaged.is_some());
    }

    #[test]
    fn a_replay_overrules_sled_where_both_hold_records_and_never_below_its_first() {
        let run = |first: u64, n: u64, damaged: bool| View {
            first,
            records: recs(first..=first + n - 1),
            damaged: damaged.then(|| "damage".to_string()),
            notes: Vec::new(),
        };
        let plan = |first, sled: (u64, u64), acked| replay_plan(&first, sled.0, sled.1, acked);
        // sled flushed up to 12 at a checkpoint, the run holds 10..=20.
        assert_eq!(
            plan(run(10, 11, false), (1, 12), 20),
            Ok(Replay {
                trim_above: Some(9),
                from: 10
            })
        );
        // sled holds a group past the run nobody was answered for.
        assert_eq!(
            plan(run(10, 11, false), (1, 25), 20),
            Ok(Replay {
                trim_above: Some(9),
                from: 10
            })
        );
        // sled behind the run's start: only adds.
        assert_eq!(
            plan(run(10, 11, false), (1, 9), 20),
            Ok(Replay {
                trim_above: None,
                from: 10
            })
        );
        // Truncated below 15 since: 10..=14 stay gone.
        assert_eq!(
            plan(run(10, 11, false), (15, 18), 20),
            Ok(Replay {
                trim_above: Some(14),
                from: 15
            })
        );
        // A damaged run, or one short of what was acknowledged: past sled's
        // head only.
        for (view, acked) in [(run(10, 11, true), 20), (run(10, 11, false), 24)] {
            assert_eq!(
                plan(view, (1, 16), acked),
                Ok(Replay {
                    trim_above: None,
                    from: 17
                })
            );
        }
        // A gap between sled and the run: nothing.
        assert!(plan(run(10, 11, false), (1, 7), 20).is_err_and(|e| e.contains("ends at 7")));
        // An empty run named 11 (a group taken back, sled flushed with it
        // before): sled's 11.. go; one below what was acknowledged says
        // nothing.
        let empty = |first: u64| View {
            first,
            records: Vec::new(),
            damaged: None,
            notes: Vec::new(),
        };
        assert_eq!(
            plan(empty(11), (1, 13), 10),
            Ok(Replay {
                trim_above: Some(10),
                from: 11
            })
        );
        assert_eq!(
            plan(empty(11), (1, 13), 12),
            Ok(Replay {
                trim_above: None,
                from: 14
            })
        );
        // An empty log (repair kept its head at 9) takes the run.
        assert_eq!(
            plan(run(10, 2, false), (10, 9), 9),
            Ok(Replay {
                trim_above: None,
                from: 10
            })
        );
    }

    proptest::proptest! {
        /// Whatever happens to a file's bytes (cut anywhere, one byte
        /// changed anywhere), what reads back is a prefix of the groups
        /// written, every one whole, and the rest is said to be cut; the
        /// untouched file reads back whole.
        #[test]
        fn a_damaged_file_reads_back_a_prefix_of_its_groups(
            sizes in proptest::collection::vec(proptest::collection::vec(0usize..300, 1..5), 1..8),
            cut_at in proptest::num::usize::ANY,
            flip_at in proptest::num::usize::ANY,
            flip in 1u8..=255,
        ) {
            let mut bytes = Vec::new();
            let mut groups = Vec::new();
            let mut seq = 1u64;
            for g in &sizes {
                let records: Vec<Vec<u8>> = g.iter().enumerate()
                    .map(|(i, n)| vec![(seq as u8).wrapping_add(i as u8); *n])
                    .collect();
                let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
                bytes.extend(encode_group(seq, &refs));
                groups.push(Group { first: seq, records });
                seq += g.len() as u64;
            }
            let (whole, cut) = parse_all(&bytes);
            proptest::prop_assert_eq!(&whole, &groups);
            proptest::prop_assert!(cut.is_none());
            let mut damaged = [
                bytes[..cut_at % bytes.len()].to_vec(),
                bytes.clone(),
            ];
            let i = flip_at % bytes.len();
            damaged[1][i] ^= flip;
            for (n, d) in damaged.iter().enumerate() {
                let (read, cut) = parse_all(d);
                proptest::prop_assert!(read.len() < groups.len(), "damage {n} left every group");
                proptest::prop_assert_eq!(&read[..], &groups[..read.len()]);
                // Only a cut between two groups reads as a shorter file.
                let whole: usize = read
                    .iter()
                    .map(|g| HEADER + 12 + g.records.iter().map(|r| 4 + r.len()).sum::<usize>())
                    .sum();
                proptest::prop_assert!(cut.is_some() || (n == 0 && whole == d.len()));
            }
        }
    }
}
