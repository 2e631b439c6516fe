//! The model check behind `tests/library/t95_model.rs` and `fuzz/fuzz_targets/model.rs`:
//! a sequence of operations (put, delete, target fail/heal, pause/resume,
//! crash-and-reopen) applied to the real log and replicator over in-memory
//! stores behind fault injectors, checked against a plain model after every
//! step. The invariants:
//!
//! 1. every acknowledged seq is in the log after any crash; seqs are gapless
//!    and increasing;
//! 2. per target, cursor ≤ head, and the target never holds an older version
//!    of a key than the newest entry at or below its cursor;
//! 3. after faults heal and the log drains, every target equals the model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::codec::Op;
use crate::config::Config;
use crate::faults::{Fault, Faults, FaultyStore};
use crate::key::Key;
use crate::replicator::Replicator;

/// One operation of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Put a new value under key `k{n}` (n < 4).
    Put(u8),
    /// Delete key `k{n}`.
    Delete(u8),
    /// Replica `n` (0 or 1) starts failing every request.
    Fail(u8),
    /// Replica `n` heals.
    Heal(u8),
    /// Pause replica `n`.
    Pause(u8),
    /// Resume replica `n`.
    Resume(u8),
    /// Shut down at once and reopen on the same data and stores.
    Crash,
}

impl Step {
    /// A step from two bytes (for fuzzing).
    pub fn from_bytes(op: u8, arg: u8) -> Step {
        match op % 13 {
            0..=5 => Step::Put(arg % 4),
            6 | 7 => Step::Delete(arg % 4),
            8 => Step::Fail(arg % 2),
            9 => Step::Heal(arg % 2),
            10 => Step::Pause(arg % 2),
            11 => Step::Resume(arg % 2),
            _ => Step::Crash,
        }
    }
}

const REPLICAS: [&str; 2] = ["r1", "r2"];

struct World {
    dir: tempfile::TempDir,
    cfg: Config,
    rep: Arc<Replicator>,
    stores: HashMap<String, Arc<InMemory>>,
    faults: HashMap<String, Faults>,
}

impl World {
    async fn open(
        dir: tempfile::TempDir,
        cfg: Config,
        stores: HashMap<String, Arc<InMemory>>,
    ) -> Result<World, String> {
        let mut wrapped: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
        let mut faults = HashMap::new();
        for (name, s) in &stores {
            let (w, f) = FaultyStore::wrap(s.clone());
            wrapped.insert(name.clone(), w);
            faults.insert(name.clone(), f);
        }
        let rep = Replicator::open_with_stores(cfg.clone(), wrapped)
            .await
            .map_err(|e| format!("open: {e}"))?;
        Ok(World {
            dir,
            cfg,
            rep,
            stores,
            faults,
        })
    }

    async fn object(&self, target: &str, key: &str) -> Result<Option<Bytes>, String> {
        let path = Key::parse(key).map_err(|e| e.to_string())?.object_path();
        match self.stores[target].get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| e.to_string())?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Invariants 1 (gapless) and 2.
    async fn check(&self) -> Result<(), String> {
        let report = self.rep.cursors().map_err(|e| e.to_string())?;
        let batch = self.rep.log().read(1, usize::MAX, usize::MAX);
        if let Some(e) = batch.error {
            return Err(format!("log unreadable: {e}"));
        }
        let entries = batch.entries;
        if entries.len() as u64 != report.head
            || entries
                .iter()
                .enumerate()
                .any(|(i, e)| e.seq != i as u64 + 1)
        {
            return Err(format!("seqs are not gapless from 1 to {}", report.head));
        }
        for t in &report.targets {
            if t.cursor > report.head {
                return Err(format!(
                    "{} cursor {} past head {}",
                    t.name, t.cursor, report.head
                ));
            }
            for k in 0..4u8 {
                let name = format!("k{k}");
                let versions: Vec<_> = entries.iter().filter(|e| e.key == name).collect();
                let Some(base) = versions.iter().rposition(|e| e.seq <= t.cursor) else {
                    continue;
                };
                let allowed: Vec<Option<Bytes>> = versions[base..]
                    .iter()
                    .map(|e| (e.op == Op::Put).then(|| e.value.clone()))
                    .collect();
                let got = self.object(&t.name, &name).await?;
                if !allowed.contains(&got) {
                    return Err(format!(
                        "{} holds {got:?} for {name}, older than seq {} at or below its cursor {}",
                        t.name, versions[base].seq, t.cursor
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Runs `steps` and checks every invariant; the error says which broke.
pub async fn check(steps: &[Step]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let text = format!(
        "data_dir = {:?}\nshutdown_grace_seconds = 0\n[replication]\nenable_failover = false\nhealth_check_interval_seconds = 0.2\n\
         [primary]\nname = \"p\"\nurl = \"memory://\"\nsync_timeout_seconds = 0.3\nretry_delay_seconds = 0.01\n\
         [[targets]]\nname = \"r1\"\nurl = \"memory://\"\nsync_timeout_seconds = 0.3\nretry_delay_seconds = 0.01\nmax_retry_attempts = 2\n\
         [[targets]]\nname = \"r2\"\nurl = \"memory://\"\nsync_timeout_seconds = 0.3\nretry_delay_seconds = 0.01\nmax_retry_attempts = 2\n",
        dir.path().display().to_string()
    );
    let cfg = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let stores: HashMap<String, Arc<InMemory>> = ["p", "r1", "r2"]
        .iter()
        .map(|n| (n.to_string(), Arc::new(InMemory::new())))
        .collect();
    let mut w = World::open(dir, cfg, stores).await?;
    let mut model: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    let mut acked: Vec<u64> = Vec::new();
    let mut paused = [false; 2];
    for (n, step) in steps.iter().enumerate() {
        match *step {
            Step::Put(k) => {
                let v = Bytes::from(format!("v{n}"));
                let key = Key::parse(&format!("k{k}")).map_err(|e| e.to_string())?;
                let ack = w
                    .rep
                    .put(&key, v.clone(), None)
                    .await
                    .map_err(|e| format!("put: {e}"))?;
                acked.push(ack.seq);
                model.insert(format!("k{k}"), Some(v));
            }
            Step::Delete(k) => {
                let key = Key::parse(&format!("k{k}")).map_err(|e| e.to_string())?;
                let ack = w
                    .rep
                    .delete(&key, None)
                    .await
                    .map_err(|e| format!("delete: {e}"))?;
                acked.push(ack.seq);
                model.insert(format!("k{k}"), None);
            }
            Step::Fail(t) => w.faults[REPLICAS[t as usize % 2]].set(Fault::Fail),
            Step::Heal(t) => w.faults[REPLICAS[t as usize % 2]].heal(),
            Step::Pause(t) => {
                w.rep
                    .pause(REPLICAS[t as usize % 2])
                    .await
                    .map_err(|e| e.to_string())?;
                paused[t as usize % 2] = true;
            }
            Step::Resume(t) => {
                w.rep
                    .resume(REPLICAS[t as usize % 2])
                    .await
                    .map_err(|e| e.to_string())?;
                paused[t as usize % 2] = false;
            }
            Step::Crash => {
                let kept: Vec<Fault> = REPLICAS.iter().map(|r| w.faults[*r].current()).collect();
                w.rep
                    .shutdown(Duration::ZERO)
                    .await
                    .map_err(|e| e.to_string())?;
                let World {
                    dir,
                    cfg,
                    rep,
                    stores,
                    ..
                } = w;
                drop(rep);
                w = World::open(dir, cfg, stores).await?;
                for (r, f) in REPLICAS.iter().zip(kept) {
                    w.faults[*r].set(f);
                }
                let head = w.rep.log().head();
                if let Some(lost) = acked.iter().find(|s| **s > head) {
                    return Err(format!(
                        "acknowledged seq {lost} lost across a crash (head {head})"
                    ));
                }
            }
        }
        w.check()
            .await
            .map_err(|e| format!("after step {n} ({step:?}): {e}"))?;
    }
    for (i, r) in REPLICAS.iter().enumerate() {
        w.faults[*r].heal();
        if paused[i] {
            w.rep.resume(r).await.map_err(|e| e.to_string())?;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let c = w.rep.cursors().map_err(|e| e.to_string())?;
        if c.targets.iter().all(|t| t.cursor == c.head) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("targets did not drain: {c:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in ["p", "r1", "r2"] {
        for (k, v) in &model {
            let got = w.object(t, k).await?;
            if &got != v {
                return Err(format!(
                    "after draining, {t} holds {got:?} for {k}, the model {v:?}"
                ));
            }
        }
    }
    w.rep
        .shutdown(Duration::ZERO)
        .await
        .map_err(|e| e.to_string())?;
    let _ = &w.dir;
    Ok(())
}
