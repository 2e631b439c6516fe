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
//! - seqs are gapless: a failed flush poisons the log, it takes no more
//!   writes until a restart, and no later batch can reuse or skip a seq.
//!
//! Positions: `first ≤ head`, truncation never removes the head entry, so
//! the next seq survives any truncation and restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{self, Entry, Op};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::storage::{KeyInfo, LogStorage, PendingRecord};

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
}

/// Where an appended write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its seq.
    pub seq: u64,
    /// Its timestamp, unix ms.
    pub ts_ms: u64,
}

struct Request {
    write: Write,
    reply: oneshot::Sender<Result<Appended>>,
}

/// Entries read from the log, and the error that stopped the read early.
#[derive(Debug, Default)]
pub struct ReadBatch {
    /// Good entries, consecutive from the requested seq.
    pub entries: Vec<Entry>,
    /// Set when an entry could not be read: the entries before it are good.
    pub error: Option<Error>,
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
    tx: mpsc::Sender<Request>,
    head: Arc<watch::Sender<u64>>,
    first: AtomicU64,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Log {
    /// Closes the write queue and waits for the committer, so the storage is
    /// released when the last handle to the log is gone.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(handle) = self.committer.take() {
            let _ = handle.join();
        }
    }
}

impl Log {
    /// Opens the log on `storage`: finds the head, brings the key index up to
    /// it, and starts the committer thread.
    pub fn open(storage: Arc<dyn LogStorage>) -> Result<Arc<Log>> {
        let (first, head) = storage.bounds()?.unwrap_or((1, 0));
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
        let (tx, rx) = mpsc::channel::<Request>(MAX_GROUP * 4);
        let head_tx = Arc::new(watch::channel(head).0);
        let committer = Committer {
            storage: storage.clone(),
            head: head_tx.clone(),
            next_seq: head + 1,
            last_ts,
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
        }))
    }

    /// Appends a write and returns once it is durable.
    pub async fn append(&self, write: Write) -> Result<Appended> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { write, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
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
        if from < self.first() {
            out.error = Some(Error::Corrupt {
                seq: from,
                reason: format!(
                    "the entry was truncated from the log (oldest kept is {}); the target needs a resync",
                    self.first()
                ),
            });
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

    /// Lag of `cursor` behind the head, measured on the log.
    pub fn lag(&self, cursor: u64) -> Result<Lag> {
        lag_of(self.storage.as_ref(), cursor, self.head())
    }

    /// The newest entry of a key.
    pub fn key_info(&self, key: &str) -> Result<Option<KeyInfo>> {
        self.storage.key_info(key)
    }

    /// Removes entries below `seq`, never the head entry. Returns how many.
    pub fn truncate_below(&self, seq: u64) -> Result<u64> {
        let seq = seq.min(self.head());
        if seq <= self.first() {
            return Ok(0);
        }
        let n = self.storage.truncate_below(seq)?;
        self.first.store(seq, Ordering::Release);
        Ok(n)
    }
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

/// Brings the key index from its watermark up to `head`.
fn rebuild_key_index(storage: &dyn LogStorage, head: u64) -> Result<()> {
    let from = storage.key_index_watermark()? + 1;
    if from > head {
        return Ok(());
    }
    let mut entries = Vec::new();
    let mut err = None;
    storage.scan(from, head, &mut |seq, rec| match codec::decode(seq, rec) {
        Ok(e) => {
            entries.push((e, rec.to_vec()));
            true
        }
        Err(e) => {
            err = Some(e);
            false
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    let pending: Vec<PendingRecord<'_>> = entries
        .iter()
        .map(|(e, rec)| PendingRecord {
            seq: e.seq,
            record: rec,
            key: &e.key,
            op: e.op,
            value_len: e.value.len() as u64,
        })
        .collect();
    storage.append(&pending)?;
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
    storage: Arc<dyn LogStorage>,
    head: Arc<watch::Sender<u64>>,
    next_seq: u64,
    last_ts: u64,
}

impl Committer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
        let mut records: Vec<Vec<u8>> = Vec::with_capacity(MAX_GROUP);
        let mut poisoned: Option<String> = None;
        while let Some(first) = rx.blocking_recv() {
            group.clear();
            let mut bytes = first.write.value.len();
            group.push(first);
            while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.write.value.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            if let Some(why) = &poisoned {
                for r in group.drain(..) {
                    let _ = r.reply.send(Err(Error::LogPoisoned(why.clone())));
                }
                continue;
            }
            let ts = crate::log::now_ms().max(self.last_ts);
            records.clear();
            for (i, r) in group.iter().enumerate() {
                let seq = self.next_seq + i as u64;
                records.push(codec::encode(seq, ts, r.write.op, r.write.key.as_str(), &r.write.value));
            }
            let pending: Vec<PendingRecord<'_>> = group
                .iter()
                .zip(&records)
                .enumerate()
                .map(|(i, (r, rec))| PendingRecord {
                    seq: self.next_seq + i as u64,
                    record: rec,
                    key: r.write.key.as_str(),
                    op: r.write.op,
                    value_len: r.write.value.len() as u64,
                })
                .collect();
            let result = self.storage.append(&pending).and_then(|()| self.storage.sync());
            drop(pending);
            match result {
                Ok(()) => {
                    let first_seq = self.next_seq;
                    self.next_seq += group.len() as u64;
                    self.last_ts = ts;
                    self.head.send_replace(self.next_seq - 1);
                    for (i, r) in group.drain(..).enumerate() {
                        let _ = r.reply.send(Ok(Appended {
                            seq: first_seq + i as u64,
                            ts_ms: ts,
                        }));
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    tracing::error!(error = %why, "durable append failed; the log takes no more writes until restart");
                    for r in group.drain(..) {
                        let _ = r.reply.send(Err(Error::LogPoisoned(why.clone())));
                    }
                    poisoned = Some(why);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SledStorage;

    fn put(key: &str, value: &str) -> Write {
        Write {
            op: Op::Put,
            key: Key::parse(key).expect("key"),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
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
                    seqs.push(log.append(put(&format!("w{w}/{i}"), "v")).await.expect("append").seq);
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
        assert_eq!(log.append(put("after", "x")).await.expect("append").seq, 801);
    }

    #[tokio::test]
    async fn truncation_keeps_the_head_so_seqs_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Arc::new(SledStorage::open(dir.path(), 8 << 20).expect("open"));
        let log = Log::open(storage).expect("log");
        for i in 0..5 {
            log.append(put(&format!("k{i}"), "v")).await.expect("append");
        }
        assert_eq!(log.truncate_below(100).expect("truncate"), 4);
        assert_eq!(log.first(), 5);
        let b = log.read(2, 10, usize::MAX);
        assert!(b.error.expect("truncated").to_string().contains("truncated"));
        assert_eq!(log.append(put("k", "v")).await.expect("append").seq, 6);
    }
}
