//! The key index (key → where its newest entry is) as sorted runs in one
//! sled tree: a small log-structured merge tree.
//!
//! One sled insert per distinct key cost as much as the log itself and
//! halved group commit under many writers. Here every checkpoint of the
//! indexer writes its keys as one new sorted *run*, cut into blocks of up
//! to [`BLOCK_BYTES`] (one sled insert per block, like the log's frames),
//! and a thread of its own merges runs so that each is at least
//! [`FANOUT`] times larger than the next newer one: a key is rewritten
//! about log4(keys) times, in sequential blocks, and a lookup reads one
//! block per run (a handful).
//!
//! Layout of the `keys` tree:
//! - `\0runs` → the manifest: watermark (highest seq the runs cover), the
//!   next run id, and the runs, oldest first (id, number of keys);
//! - `\x01` + run id (u64 BE) + first key of the block → block: entries
//!   `u16 LE key length, key, KeyInfo` in key order (17 bytes, or more
//!   with object metadata: see `KeyInfo::write_to`).
//!
//! Invariants: only runs named in the manifest are read. A run's blocks are
//! written first; then one sled batch (atomic) names it in the manifest and
//! removes the blocks of the runs it replaces, so a crash leaves either the
//! old runs or the new ones, never a run half written (unnamed blocks are
//! removed on open). When a key is in several runs its newest entry
//! (highest seq) wins. Readers hold the manifest lock while they read
//! blocks, so a merge cannot remove a block under them. Data dirs from
//! before runs (one sled entry per key and a
//! `\0watermark`) are turned into a run on open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::storage::KeyInfo;

/// A block closes once it holds this many bytes.
pub(crate) const BLOCK_BYTES: usize = 8 * 1024;
/// Runs are merged until each is at least this many times the next newer.
pub(crate) const FANOUT: u64 = 4;

const MANIFEST: &[u8] = b"\0runs";
const LEGACY_WATERMARK: &[u8] = b"\0watermark";
const RUN: u8 = 0x01;
/// Blocks written per sled batch while a run is built.
const BLOCKS_PER_BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    id: u64,
    len: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Manifest {
    watermark: u64,
    next_id: u64,
    /// Oldest first.
    runs: Vec<Run>,
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.runs.len() * 16);
        b.extend_from_slice(&self.watermark.to_be_bytes());
        b.extend_from_slice(&self.next_id.to_be_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.id.to_be_bytes());
            b.extend_from_slice(&r.len.to_be_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Manifest> {
        if b.len() < 16 || !b.len().is_multiple_of(16) {
            return None;
        }
        let u = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let runs = (16..b.len())
            .step_by(16)
            .map(|at| Run {
                id: u(at),
                len: u(at + 8),
            })
            .collect();
        Some(Manifest {
            watermark: u(0),
            next_id: u(8),
            runs,
        })
    }
}

fn run_prefix(id: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = RUN;
    p[1..].copy_from_slice(&id.to_be_bytes());
    p
}

fn block_key(id: u64, first: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + first.len());
    k.extend_from_slice(&run_prefix(id));
    k.extend_from_slice(first);
    k
}

/// The key index. See the module doc. Merges run on a thread of their own
/// (so the indexer keeps taking updates meanwhile), stopped and joined on
/// drop.
pub(crate) struct KeyIndex {
    inner: Arc<Inner>,
    wake: Option<std::sync::mpsc::Sender<()>>,
    merger: Option<std::thread::JoinHandle<()>>,
}

pub(crate) struct Inner {
    tree: sled::Tree,
    path: PathBuf,
    manifest: RwLock<Manifest>,
    /// The next run id to hand out (checkpoints and merges both take one).
    next_id: AtomicU64,
    /// Held by the one merge running.
    merging: Mutex<()>,
}

impl KeyIndex {
    /// Opens the index in `tree` (`path` names the database in errors):
    /// turns an older per-key index into a run, removes half-written runs
    /// and starts the merge thread.
    pub(crate) fn open(tree: sled::Tree, path: &Path) -> Result<KeyIndex> {
        let me = Inner {
            tree,
            path: path.to_path_buf(),
            manifest: RwLock::new(Manifest::default()),
            next_id: AtomicU64::new(0),
            merging: Mutex::new(()),
        };
        let manifest = match me.tree.get(MANIFEST).map_err(me.err())? {
            Some(b) => Manifest::decode(&b).ok_or_else(|| me.damaged("the manifest".into()))?,
            None => me.migrate()?,
        };
        // Per-key entries from before runs, now in a run.
        me.remove_range(&[RUN + 1], None)?;
        // Runs never named in the manifest: written by a checkpoint or
        // merge that did not finish.
        me.remove_orphans(&manifest)?;
        me.next_id.store(manifest.next_id, Ordering::Release);
        *me.manifest.write().unwrap_or_else(|e| e.into_inner()) = manifest;
        let inner = Arc::new(me);
        let (wake, rx) = std::sync::mpsc::channel::<()>();
        let merger = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("walship-index-merge".into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        while rx.try_recv().is_ok() {}
                        loop {
                            match inner.compact() {
                                Ok(true) => continue,
                                Ok(false) => break,
                                Err(e) => {
                                    tracing::error!(error = %e, "merging key index runs failed; retrying after the next checkpoint");
                                    break;
                                }
                            }
                        }
                    }
                })
                .map_err(|e| Error::io("starting the key index merge thread", e))?
        };
        Ok(KeyIndex {
            inner,
            wake: Some(wake),
            merger: Some(merger),
        })
    }

    /// The highest seq the index covers.
    pub(crate) fn watermark(&self) -> u64 {
        self.inner.manifest().watermark
    }

    /// Adds `keys` (any order; for a key given twice the higher seq wins)
    /// as a new run covering the log up to `watermark`, and wakes the merge
    /// thread.
    pub(crate) fn add(&self, keys: &[(&str, KeyInfo)], watermark: u64) -> Result<()> {
        self.inner.add(keys, watermark)?;
        if let Some(w) = &self.wake {
            let _ = w.send(());
        }
        Ok(())
    }

    /// Where the newest entry of `key` is, if the runs hold it.
    pub(crate) fn get(&self, key: &str) -> Result<Option<KeyInfo>> {
        self.inner.get(key)
    }

    /// Keys starting with `prefix` and greater than `after` ("" for none)
    /// with their newest entry, in key order, at most `limit`.
    pub(crate) fn with_prefix(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, KeyInfo)>> {
        self.inner.with_prefix(prefix, after, limit)
    }
}

impl Drop for KeyIndex {
    /// Stops the merge thread (after the merge under way) so the database
    /// is released when the index goes.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(h) = self.merger.take() {
            let _ = h.join();
        }
    }
}

impl Inner {
    /// Removes the blocks of every run the manifest does not name.
    fn remove_orphans(&self, manifest: &Manifest) -> Result<()> {
        let mut at = self.tree.get_gt([RUN]).map_err(self.err())?;
        while let Some((k, _)) = at.take() {
            if k.first() != Some(&RUN) || k.len() < 9 {
                break;
            }
            let id = u64::from_be_bytes(k[1..9].try_into().unwrap_or([0; 8]));
            if !manifest.runs.iter().any(|r| r.id == id) {
                self.remove_range(&run_prefix(id), Some(&run_prefix(id + 1)))?;
            }
            // On to the next run.
            at = self
                .tree
                .get_gt(
                    run_prefix(id)
                        .iter()
                        .copied()
                        .chain([0xFF; 1025])
                        .collect::<Vec<u8>>(),
                )
                .map_err(self.err())?;
        }
        Ok(())
    }

    fn err(&self) -> impl Fn(sled::Error) -> Error + '_ {
        move |e| Error::storage("using the key index", &self.path, e)
    }

    fn damaged(&self, what: String) -> Error {
        Error::Damaged(format!(
            "{what} of the key index in {} does not decode; the data dir is damaged: stop walship and restore it from a backup",
            self.path.display()
        ))
    }

    fn manifest(&self) -> std::sync::RwLockReadGuard<'_, Manifest> {
        self.manifest.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns a per-key index (before runs) into the first run.
    fn migrate(&self) -> Result<Manifest> {
        let watermark = self
            .tree
            .get(LEGACY_WATERMARK)
            .map_err(self.err())?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        // Blocks of a migration that did not finish.
        self.remove_range(&[RUN], Some(&[RUN + 1]))?;
        let mut writer = RunWriter::new(1);
        for item in self.tree.range([RUN + 1]..) {
            let (k, v) = item.map_err(self.err())?;
            let info = KeyInfo::from_bytes(&v).ok_or_else(|| {
                self.damaged(format!("the entry of {:?}", String::from_utf8_lossy(&k)))
            })?;
            writer.push(&self.tree, &k, &info).map_err(self.err())?;
        }
        let run = writer.finish(&self.tree).map_err(self.err())?;
        let manifest = Manifest {
            watermark,
            next_id: 2,
            runs: run.into_iter().collect(),
        };
        let mut batch = sled::Batch::default();
        batch.insert(MANIFEST, manifest.encode());
        batch.remove(LEGACY_WATERMARK);
        self.tree.apply_batch(batch).map_err(self.err())?;
        Ok(manifest)
    }

    /// Removes the entries from `from` up to `to` (or the end).
    fn remove_range(&self, from: &[u8], to: Option<&[u8]>) -> Result<()> {
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in self.keys_in(from, to, 4096)? {
                batch.remove(k);
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            self.tree.apply_batch(batch).map_err(self.err())?;
        }
    }

    /// Up to `max` keys of the tree from `from` (included) up to `to` (or
    /// the end), read one lookup at a time (see [`KeyIndex::next_block`]).
    fn keys_in(&self, from: &[u8], to: Option<&[u8]>, max: usize) -> Result<Vec<sled::IVec>> {
        let mut out = Vec::new();
        let mut next = self
            .tree
            .get(from)
            .map_err(self.err())?
            .map(|_| sled::IVec::from(from));
        if next.is_none() {
            next = self.tree.get_gt(from).map_err(self.err())?.map(|(k, _)| k);
        }
        while let Some(k) = next.take() {
            if to.is_some_and(|to| k.as_ref() >= to) || out.len() >= max {
                break;
            }
            next = self.tree.get_gt(&k).map_err(self.err())?.map(|(k, _)| k);
            out.push(k);
        }
        Ok(out)
    }

    /// Adds `keys` (any order; for a key given twice the higher seq wins)
    /// as a new run covering the log up to `watermark`, then merges runs
    /// while the newest are too small next to the older ones.
    fn add(&self, keys: &[(&str, KeyInfo)], watermark: u64) -> Result<()> {
        let mut sorted: Vec<(&str, KeyInfo)> = keys.to_vec();
        sorted.sort_by(|a, b| a.0.cmp(b.0).then(b.1.seq.cmp(&a.1.seq)));
        sorted.dedup_by(|later, earlier| later.0 == earlier.0);
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let mut writer = RunWriter::new(id);
        for (k, info) in &sorted {
            writer
                .push(&self.tree, k.as_bytes(), info)
                .map_err(self.err())?;
        }
        let run = writer.finish(&self.tree).map_err(self.err())?;
        self.commit(|m| {
            m.watermark = m.watermark.max(watermark);
            m.runs.extend(run);
            Vec::new()
        })
    }

    /// Applies `change` to the manifest and writes it, removing the blocks
    /// of the runs `change` returns, in one batch.
    fn commit(&self, change: impl FnOnce(&mut Manifest) -> Vec<Run>) -> Result<()> {
        let mut guard = self.manifest.write().unwrap_or_else(|e| e.into_inner());
        let mut next = guard.clone();
        let gone = change(&mut next);
        next.next_id = next.next_id.max(self.next_id.load(Ordering::Acquire));
        let mut batch = sled::Batch::default();
        batch.insert(MANIFEST, next.encode());
        for run in gone {
            for k in self.keys_in(
                &run_prefix(run.id),
                Some(&run_prefix(run.id + 1)),
                usize::MAX,
            )? {
                batch.remove(k);
            }
        }
        self.tree.apply_batch(batch).map_err(self.err())?;
        *guard = next;
        Ok(())
    }

    /// Merges the newest runs while the one before them is at most
    /// [`FANOUT`] times their size. Whether it merged anything.
    fn compact(&self) -> Result<bool> {
        let _one_at_a_time = self.merging.lock().unwrap_or_else(|e| e.into_inner());
        let runs = {
            let m = self.manifest();
            let mut i = m.runs.len();
            let mut total = 0u64;
            while i > 0 {
                let r = m.runs[i - 1];
                if i < m.runs.len() && r.len > FANOUT * total {
                    break;
                }
                total += r.len;
                i -= 1;
            }
            if m.runs.len() - i < 2 {
                return Ok(false);
            }
            m.runs[i..].to_vec()
        };
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        // Runs are only removed by a merge, and one runs at a time, so
        // reading them without the manifest lock is safe; checkpoints may
        // add newer runs meanwhile (they stay after the merged one).
        let mut writer = RunWriter::new(id);
        {
            let mut iters: Vec<RunIter<'_>> = runs
                .iter()
                .map(|r| self.iter_run(r.id, b""))
                .collect::<Result<_>>()?;
            let mut heads: Vec<Option<(Vec<u8>, KeyInfo)>> = iters
                .iter_mut()
                .map(|it| it.next().transpose())
                .collect::<Result<_>>()?;
            while let Some(min) = heads.iter().flatten().map(|(k, _)| k).min().cloned() {
                let mut best: Option<KeyInfo> = None;
                for (i, h) in heads.iter_mut().enumerate() {
                    if h.as_ref().is_some_and(|(k, _)| *k == min) {
                        let (_, info) = h.take().unwrap_or_else(|| unreachable!());
                        if best.as_ref().is_none_or(|b| info.seq > b.seq) {
                            best = Some(info);
                        }
                        *h = iters[i].next().transpose()?;
                    }
                }
                if let Some(info) = best {
                    writer.push(&self.tree, &min, &info).map_err(self.err())?;
                }
            }
        }
        let merged = writer.finish(&self.tree).map_err(self.err())?;
        let ids: Vec<u64> = runs.iter().map(|r| r.id).collect();
        self.commit(|m| {
            let at = m
                .runs
                .iter()
                .position(|r| ids.contains(&r.id))
                .unwrap_or(m.runs.len());
            m.runs.retain(|r| !ids.contains(&r.id));
            if let Some(merged) = merged {
                m.runs.insert(at, merged);
            }
            runs
        })?;
        Ok(true)
    }

    /// Entries of run `id` from the block holding `from` on, in key order.
    fn iter_run(&self, id: u64, from: &[u8]) -> Result<RunIter<'_>> {
        let first = match self
            .tree
            .get_lt(
                block_key(id, from)
                    .iter()
                    .copied()
                    .chain([0])
                    .collect::<Vec<u8>>(),
            )
            .map_err(self.err())?
        {
            Some((k, v)) if k.starts_with(&run_prefix(id)) => Some((k, v)),
            _ => self.next_block(id, &run_prefix(id))?,
        };
        Ok(RunIter {
            index: self,
            id,
            next: first,
            block: sled::IVec::default(),
            at: 0,
        })
    }

    /// The block of run `id` after key `after`. One lookup per block, not
    /// a sled iterator: pages a long iteration pulls in stay in memory
    /// (see `storage`).
    fn next_block(&self, id: u64, after: &[u8]) -> Result<Option<(sled::IVec, sled::IVec)>> {
        Ok(self
            .tree
            .get_gt(after)
            .map_err(self.err())?
            .filter(|(k, _)| k.starts_with(&run_prefix(id))))
    }

    fn get(&self, key: &str) -> Result<Option<KeyInfo>> {
        let m = self.manifest();
        for run in m.runs.iter().rev() {
            let mut it = self.iter_run(run.id, key.as_bytes())?;
            // The block holding `key` is the first one read; the keys
            // before it are skipped undecoded.
            it.seek(key.as_bytes())?;
            if let Some(item) = it.next_in_block() {
                let (k, info) = item?;
                if k == key.as_bytes() {
                    return Ok(Some(info));
                }
            }
        }
        Ok(None)
    }

    fn with_prefix(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, KeyInfo)>> {
        let m = self.manifest();
        let mut merged: std::collections::BTreeMap<Vec<u8>, KeyInfo> = Default::default();
        let start = if after > prefix { after } else { prefix };
        for run in m.runs.iter() {
            // The first `limit` keys of the result are among the first
            // `limit` of every run.
            let mut taken = 0;
            let mut it = self.iter_run(run.id, start.as_bytes())?;
            it.seek(start.as_bytes())?;
            for item in it {
                let (k, info) = item?;
                if !after.is_empty() && k.as_slice() <= after.as_bytes() {
                    continue;
                }
                if !k.starts_with(prefix.as_bytes()) {
                    if k.as_slice() > prefix.as_bytes() {
                        break;
                    }
                    continue;
                }
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
                taken += 1;
                if taken >= limit {
                    break;
                }
            }
        }
        Ok(merged
            .into_iter()
            .take(limit)
            .filter_map(|(k, info)| String::from_utf8(k).ok().map(|k| (k, info)))
            .collect())
    }
}

/// Builds one run, a block at a time.
struct RunWriter {
    id: u64,
    batch: sled::Batch,
    batched: usize,
    block: Vec<u8>,
    first: Vec<u8>,
    len: u64,
}

impl RunWriter {
    fn new(id: u64) -> RunWriter {
        RunWriter {
            id,
            batch: sled::Batch::default(),
            batched: 0,
            block: Vec::new(),
            first: Vec::new(),
            len: 0,
        }
    }

    /// Adds the next key (in key order).
    fn push(&mut self, tree: &sled::Tree, key: &[u8], info: &KeyInfo) -> sled::Result<()> {
        if !self.block.is_empty()
            && self.block.len() + 2 + key.len() + info.encoded_len() > BLOCK_BYTES
        {
            self.close_block(tree)?;
        }
        if self.block.is_empty() {
            self.first = key.to_vec();
        }
        self.block
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.block.extend_from_slice(key);
        info.write_to(&mut self.block);
        self.len += 1;
        Ok(())
    }

    fn close_block(&mut self, tree: &sled::Tree) -> sled::Result<()> {
        let block = std::mem::take(&mut self.block);
        self.batch.insert(block_key(self.id, &self.first), block);
        self.batched += 1;
        if self.batched >= BLOCKS_PER_BATCH {
            tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.batched = 0;
        }
        Ok(())
    }

    /// Writes what is left; the run, or `None` when it holds no key.
    fn finish(mut self, tree: &sled::Tree) -> sled::Result<Option<Run>> {
        if !self.block.is_empty() {
            self.close_block(tree)?;
        }
        tree.apply_batch(std::mem::take(&mut self.batch))?;
        Ok((self.len > 0).then_some(Run {
            id: self.id,
            len: self.len,
        }))
    }
}

/// Entries of one run in key order.
struct RunIter<'a> {
    index: &'a Inner,
    id: u64,
    /// The block to read once the current one is done.
    next: Option<(sled::IVec, sled::IVec)>,
    block: sled::IVec,
    at: usize,
}

impl RunIter<'_> {
    /// Moves to the next block; false at the end of the run.
    fn advance(&mut self) -> Result<bool> {
        let Some((k, b)) = self.next.take() else {
            return Ok(false);
        };
        self.next = self.index.next_block(self.id, &k)?;
        self.block = b;
        self.at = 0;
        Ok(true)
    }

    /// Reads the first block if none was read yet; false at the end of
    /// the run.
    fn started(&mut self) -> Result<bool> {
        if self.at == 0 && self.block.is_empty() {
            return self.advance();
        }
        Ok(true)
    }

    /// Skips the entries of the current block before `target`, reading
    /// only their keys (the block `iter_run` starts at is the one that
    /// would hold `target`, so no later block holds a key before it).
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        if !self.started()? {
            return Ok(());
        }
        while self.at < self.block.len() {
            let b = &self.block[self.at..];
            let entry = b.get(..2).and_then(|l| {
                let len = u16::from_le_bytes([l[0], l[1]]) as usize;
                let key = b.get(2..2 + len)?;
                Some((key, 2 + len + KeyInfo::len_at(b.get(2 + len..)?)?))
            });
            match entry {
                Some((key, _)) if key >= target => return Ok(()),
                Some((_, n)) => self.at += n,
                None => {
                    return Err(self.index.damaged(format!("a block (at byte {})", self.at)));
                }
            }
        }
        Ok(())
    }

    /// The next entry of the current block (reading the first block if
    /// none was read yet); `None` at the end of a block.
    fn next_in_block(&mut self) -> Option<Result<(Vec<u8>, KeyInfo)>> {
        match self.started() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        let b = &self.block[self.at..];
        if b.is_empty() {
            return None;
        }
        let entry = b.get(..2).and_then(|l| {
            let len = u16::from_le_bytes([l[0], l[1]]) as usize;
            let key = b.get(2..2 + len)?;
            let (info, used) = KeyInfo::read_from(b.get(2 + len..)?)?;
            Some((key.to_vec(), info, 2 + len + used))
        });
        match entry {
            Some((k, info, n)) => {
                self.at += n;
                Some(Ok((k, info)))
            }
            None => {
                let at = self.at;
                self.at = self.block.len();
                Some(Err(self.index.damaged(format!("a block (at byte {at})"))))
            }
        }
    }
}

impl Iterator for RunIter<'_> {
    type Item = Result<(Vec<u8>, KeyInfo)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.next_in_block() {
                return Some(item);
            }
            // End of this block: on to the next one.
            match self.advance() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
impl KeyIndex {
    /// Runs merges until none is due (the merge thread may be running one).
    fn settle(&self) {
        while self.inner.compact().expect("merge") {}
    }
}

#[cfg(test)]
impl std::ops::Deref for KeyIndex {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Op;
    use std::collections::BTreeMap;

    fn open(dir: &Path) -> (sled::Db, KeyIndex) {
        // sled's flusher thread may hold the lock of a just-closed db a
        // moment longer.
        let mut tries = 0;
        let db = loop {
            match sled::open(dir) {
                Ok(db) => break db,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("sled: {e}"),
            }
        };
        let idx = KeyIndex::open(db.open_tree("keys").expect("tree"), dir).expect("index");
        (db, idx)
    }

    fn info(seq: u64) -> KeyInfo {
        KeyInfo {
            seq,
            op: if seq.is_multiple_of(5) {
                Op::Delete
            } else {
                Op::Put
            },
            size: seq * 3,
            // Every third put carries metadata: records of both lengths.
            meta: (seq.is_multiple_of(3) && !seq.is_multiple_of(5)).then(|| {
                let mut m = crate::object::ObjectMeta::of(&seq.to_be_bytes());
                m.content_type = Some(format!("type/{seq}"));
                std::sync::Arc::new(m)
            }),
        }
    }

    /// Deterministic pseudo-random numbers (xorshift).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn check(idx: &KeyIndex, model: &BTreeMap<String, KeyInfo>, rng: &mut Rng) {
        for _ in 0..200 {
            let k = format!("k/{}/{}", rng.below(7), rng.below(3000));
            assert_eq!(idx.get(&k).expect("get"), model.get(&k).cloned(), "{k}");
        }
        for prefix in ["", "k/", "k/3/", "k/3/1", "k/6/29", "x"] {
            for limit in [1, 7, 100, usize::MAX] {
                let want: Vec<(String, KeyInfo)> = model
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .take(limit)
                    .map(|(k, i)| (k.clone(), i.clone()))
                    .collect();
                assert_eq!(
                    idx.with_prefix(prefix, "", limit).expect("list"),
                    want,
                    "{prefix:?} {limit}"
                );
            }
        }
    }

    /// The runs answer like one map of key → newest entry, through merges
    /// and reopening; runs stay few.
    #[test]
    fn runs_answer_like_one_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut model: BTreeMap<String, KeyInfo> = BTreeMap::new();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut seq = 0u64;
        for round in 0..15 {
            let (db, idx) = open(dir.path());
            assert_eq!(idx.watermark(), seq);
            check(&idx, &model, &mut rng);
            for _ in 0..5 {
                // Checkpoints of very different sizes, keys repeated
                // within one and across them.
                let n = [1, 3, 40, 700, 2500][rng.below(5) as usize];
                let mut batch = Vec::new();
                for _ in 0..n {
                    seq += 1;
                    let k = format!("k/{}/{}", rng.below(7), rng.below(3000));
                    batch.push((k, info(seq)));
                }
                let refs: Vec<(&str, KeyInfo)> =
                    batch.iter().map(|(k, i)| (k.as_str(), i.clone())).collect();
                idx.add(&refs, seq).expect("add");
                for (k, i) in batch {
                    model.insert(k, i);
                }
                idx.settle();
                let runs = idx.manifest().runs.clone();
                assert!(runs.len() <= 8, "round {round}: {runs:?}");
            }
            check(&idx, &model, &mut rng);
            db.flush().expect("flush");
        }
        let (_db, idx) = open(dir.path());
        let m = idx.manifest().clone();
        // Only the runs in the manifest are in the tree.
        let ids: std::collections::BTreeSet<u64> = idx
            .tree
            .range([RUN]..[RUN + 1])
            .map(|i| u64::from_be_bytes(i.expect("item").0[1..9].try_into().expect("id")))
            .collect();
        assert_eq!(ids, m.runs.iter().map(|r| r.id).collect());
        // Runs hold every key at least once, and not much more than once.
        let held: u64 = m.runs.iter().map(|r| r.len).sum();
        assert!(
            held >= model.len() as u64 && held < 3 * model.len() as u64,
            "{held}"
        );
    }

    /// An index from before runs (one sled entry per key) becomes a run on
    /// open, with its watermark; a half-written run is dropped.
    #[test]
    fn an_older_index_and_half_written_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (db, idx) = open(dir.path());
            drop(idx);
            // Remove what a fresh open wrote, leaving an index as older
            // versions wrote it.
            let t = db.open_tree("keys").expect("tree");
            t.clear().expect("clear");
            for i in 0..1000u64 {
                t.insert(format!("old/{i:04}"), {
                    let mut b = Vec::new();
                    KeyInfo {
                        meta: None,
                        ..info(i + 1)
                    }
                    .write_to(&mut b);
                    b
                })
                .expect("insert");
            }
            t.insert(LEGACY_WATERMARK, &1000u64.to_be_bytes())
                .expect("wm");
            db.flush().expect("flush");
        }
        {
            let (db, idx) = open(dir.path());
            assert_eq!(idx.watermark(), 1000);
            assert_eq!(idx.get("old/0042").expect("get"), Some(info(43)));
            assert_eq!(
                idx.with_prefix("old/", "", usize::MAX).expect("list").len(),
                1000
            );
            assert_eq!(
                idx.tree.range([RUN + 1]..).count(),
                0,
                "per-key entries removed"
            );
            assert!(idx.tree.get(LEGACY_WATERMARK).expect("get").is_none());
            // A run written but never named in the manifest (a crash
            // before the checkpoint finished).
            // Ids handed out but never committed: above the manifest's next
            // id, and below it (a merge takes an id before a checkpoint
            // that commits first).
            let next = idx.manifest().next_id;
            for id in [0, next, next + 3] {
                let mut w = RunWriter::new(id);
                w.push(&idx.tree, b"old/0042", &info(5000)).expect("push");
                w.finish(&idx.tree).expect("finish");
            }
            db.flush().expect("flush");
        }
        let (_db, idx) = open(dir.path());
        assert_eq!(idx.get("old/0042").expect("get"), Some(info(43)));
        let ids: Vec<u64> = idx.manifest().runs.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1]);
        // Only run 1's blocks are left.
        let blocks = idx.tree.range([RUN]..[RUN + 1]).count();
        let own = idx.tree.range(run_prefix(1)..run_prefix(2)).count();
        assert_eq!((blocks, own > 0), (own, true));
    }

    /// Block and manifest bytes are the on-disk format: pinned.
    #[test]
    fn golden_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, idx) = open(dir.path());
        let put = KeyInfo {
            seq: 7,
            op: Op::Put,
            size: 3,
            meta: None,
        };
        let del = KeyInfo {
            seq: 9,
            op: Op::Delete,
            size: 0,
            meta: None,
        };
        let with_meta = KeyInfo {
            seq: 8,
            op: Op::Put,
            size: 1,
            meta: Some(std::sync::Arc::new(crate::object::ObjectMeta {
                etag: "e".into(),
                crc32: 1,
                ts_ms: 2,
                ..Default::default()
            })),
        };
        idx.add(&[("b", del), ("a", put), ("c", with_meta.clone())], 9)
            .expect("add");
        assert_eq!(idx.get("c").expect("get"), Some(with_meta));
        let blocks: Vec<(Vec<u8>, Vec<u8>)> = idx
            .tree
            .range([RUN]..[RUN + 1])
            .map(|i| i.expect("item"))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        #[rustfmt::skip]
        let block = vec![
            1, 0, b'a', 0, 0, 0, 0, 0, 0, 0, 7, 1, 0, 0, 0, 0, 0, 0, 0, 3,
            1, 0, b'b', 0, 0, 0, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 0, 0, 0, 0,
            // With metadata: op | 0x80, then u16 LE length and ObjectMeta.
            1, 0, b'c', 0, 0, 0, 0, 0, 0, 0, 8, 0x81, 0, 0, 0, 0, 0, 0, 0, 1,
            10, 0, 1, b'e', 1, 2, 0, 0, 0, 0, 0, 0,
        ];
        // Run 2 (run 1 is what an older index becomes on a first open).
        assert_eq!(blocks, vec![(vec![1, 0, 0, 0, 0, 0, 0, 0, 2, b'a'], block)]);
        let manifest = idx.tree.get(MANIFEST).expect("get").expect("manifest");
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0, 0, 0, 0, 0, 0, 0, 9, // watermark
            0, 0, 0, 0, 0, 0, 0, 3, // next run id
            0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, // run 2: 3 keys
        ];
        assert_eq!(manifest.to_vec(), want);
    }

    #[test]
    fn a_damaged_block_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, idx) = open(dir.path());
        idx.add(&[("a", info(1)), ("b", info(2))], 2).expect("add");
        let (k, mut v) = idx
            .tree
            .range([RUN]..[RUN + 1])
            .next()
            .expect("block")
            .expect("read");
        let mut bad = v.to_vec();
        bad.truncate(bad.len() - 3);
        v = bad.into();
        idx.tree.insert(k, v).expect("insert");
        match idx.get("b") {
            Err(Error::Damaged(reason)) => {
                assert!(reason.contains("key index"), "{reason}");
                assert!(reason.contains("damaged"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(idx.with_prefix("", "", 10).is_err());
    }
}
