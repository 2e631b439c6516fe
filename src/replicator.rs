//! The replicator: one log, one shipper per target, and the write path.
//!
//! Write path (SPEC guarantees 1–3): append durably (group commit), then
//! wait until the cursors the mode requires pass the entry's seq (see
//! `quorum`). A wait longer than the targets' `sync_timeout_seconds`
//! answers [`Error::QuorumTimeout`] with the seq and the acks; nothing is
//! rolled back and shipping goes on.
//!
//! Positions, per target: `first ≤ cursor ≤ head`, and the persisted cursor
//! is at or below the published one, which only moves forward here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::codec::Op;
use crate::config::{Config, Mode, TargetConfig};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::log::{Log, Write};
use crate::quorum::{self, TargetView};
use crate::shipper::Shipper;
use crate::status::{
    CursorsReport, Health, Role, TARGETS_META, TargetRecord, TargetRow, TargetState,
};
use crate::storage::{KeyInfo, LogStorage, SledStorage};

/// Requests in flight per target.
const SHIP_WINDOW: usize = 32;

/// The answer to an acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteAck {
    /// The entry's seq.
    pub seq: u64,
    /// Every target that had applied it when the write was acknowledged.
    pub acked_by: Vec<String>,
    /// The mode the write waited for.
    pub mode: &'static str,
}

pub(crate) struct Status {
    pub(crate) state: TargetState,
    pub(crate) health: Health,
    pub(crate) failures: u32,
    pub(crate) error: Option<String>,
}

/// A target as the replicator holds it.
pub(crate) struct TargetHandle {
    pub(crate) cfg: TargetConfig,
    pub(crate) role: Role,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) cursor_tx: watch::Sender<u64>,
    status: Mutex<Status>,
    /// Healthy with no error recorded: successes need not take the lock.
    pub(crate) clean: AtomicBool,
}

impl TargetHandle {
    pub(crate) fn cursor(&self) -> u64 {
        *self.cursor_tx.borrow()
    }

    pub(crate) fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running replicator (library entry point).
pub struct Replicator {
    cfg: Config,
    log: Arc<Log>,
    targets: Vec<Arc<TargetHandle>>,
    progress: Arc<watch::Sender<u64>>,
    accepting: AtomicBool,
    cancel: CancellationToken,
    shippers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Replicator {
    /// Opens the log in `cfg.data_dir`, builds every target's store from its
    /// URL and starts shipping.
    pub async fn open(cfg: Config) -> Result<Arc<Replicator>> {
        Replicator::open_with_stores(cfg, HashMap::new()).await
    }

    /// Like [`Replicator::open`], but targets named in `stores` use the given
    /// store instead of their URL (tests, custom stores).
    pub async fn open_with_stores(
        cfg: Config,
        mut stores: HashMap<String, Arc<dyn ObjectStore>>,
    ) -> Result<Arc<Replicator>> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(Error::Config { problems });
        }
        let data_dir = cfg.data_dir.clone();
        let cache = cfg.log_cache_bytes;
        let storage: Arc<dyn LogStorage> =
            tokio::task::spawn_blocking(move || SledStorage::open(&data_dir, cache))
                .await
                .map_err(|e| Error::io("opening the log", std::io::Error::other(e)))?
                .map(Arc::new)?;
        let log = Log::open(storage.clone())?;
        let head = log.head();
        let mut targets = Vec::new();
        let mut records = Vec::new();
        for (i, t) in std::iter::once(&cfg.primary)
            .chain(&cfg.targets)
            .enumerate()
        {
            let role = match (i, t.is_read_replica) {
                (0, _) => Role::Primary,
                (_, true) => Role::ReadReplica,
                (_, false) => Role::Replica,
            };
            let store = match stores.remove(&t.name) {
                Some(s) => s,
                None => crate::target::build_store(t)?,
            };
            let mut cursor = storage.cursor(&t.name)?.unwrap_or(0);
            if cursor > head {
                tracing::warn!(target = %t.name, cursor, head, "persisted cursor is past the head; using the head");
                cursor = head;
            }
            records.push(TargetRecord {
                name: t.name.clone(),
                role,
                region: t.region.clone(),
            });
            targets.push(Arc::new(TargetHandle {
                cfg: t.clone(),
                role,
                store,
                cursor_tx: watch::channel(cursor).0,
                status: Mutex::new(Status {
                    state: TargetState::Active,
                    health: Health::Unknown,
                    failures: 0,
                    error: None,
                }),
                clean: AtomicBool::new(false),
            }));
        }
        let meta = serde_json::to_vec(&records)
            .map_err(|e| Error::io("encoding target list", std::io::Error::other(e)))?;
        storage.set_meta(TARGETS_META, &meta)?;
        storage.sync()?;
        let r = Arc::new(Replicator {
            cfg,
            log,
            targets,
            progress: Arc::new(watch::channel(0).0),
            accepting: AtomicBool::new(true),
            cancel: CancellationToken::new(),
            shippers: Mutex::new(Vec::new()),
        });
        let mut handles = Vec::new();
        for t in &r.targets {
            let shipper = Shipper {
                target: t.clone(),
                log: r.log.clone(),
                progress: r.progress.clone(),
                cancel: r.cancel.clone(),
                window: SHIP_WINDOW,
            };
            handles.push(tokio::spawn(shipper.run()));
        }
        *r.shippers.lock().unwrap_or_else(|p| p.into_inner()) = handles;
        tracing::info!(head, targets = r.targets.len(), "replicator open");
        Ok(r)
    }

    /// The config it runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The log.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Stores `value` under `key`: durable locally, then replicated per
    /// `mode` (the configured mode when `None`).
    pub async fn put(&self, key: &Key, value: Bytes, mode: Option<Mode>) -> Result<WriteAck> {
        if value.len() as u64 > self.cfg.max_object_bytes {
            return Err(Error::TooLarge {
                size: value.len(),
                max: self.cfg.max_object_bytes as usize,
            });
        }
        self.write(Op::Put, key, value, mode).await
    }

    /// Deletes `key`, as a log entry like a put.
    pub async fn delete(&self, key: &Key, mode: Option<Mode>) -> Result<WriteAck> {
        self.write(Op::Delete, key, Bytes::new(), mode).await
    }

    async fn write(&self, op: Op, key: &Key, value: Bytes, mode: Option<Mode>) -> Result<WriteAck> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let mode = mode.unwrap_or(self.cfg.replication.mode);
        let appended = self
            .log
            .append(Write {
                op,
                key: key.clone(),
                value,
            })
            .await?;
        self.wait_for(appended.seq, mode).await
    }

    /// Waits until `seq` is acknowledged under `mode`, or times out.
    pub async fn wait_for(&self, seq: u64, mode: Mode) -> Result<WriteAck> {
        let timeout = self.write_timeout(mode);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.progress.subscribe();
        loop {
            rx.borrow_and_update();
            let verdict = self.evaluate(seq, mode);
            if verdict.done {
                return Ok(WriteAck {
                    seq,
                    acked_by: verdict.acked_by,
                    mode: mode.as_str(),
                });
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    let v = self.evaluate(seq, mode);
                    if v.done {
                        continue;
                    }
                    return Err(Error::QuorumTimeout {
                        seq,
                        acked: v.acked,
                        required: v.required,
                        acked_by: v.acked_by,
                    });
                }
            }
        }
    }

    fn evaluate(&self, seq: u64, mode: Mode) -> quorum::Verdict {
        let states: Vec<(TargetState, u64)> = self
            .targets
            .iter()
            .map(|t| (t.status().state, t.cursor()))
            .collect();
        let views: Vec<TargetView<'_>> = self
            .targets
            .iter()
            .zip(&states)
            .map(|(t, (state, cursor))| TargetView {
                name: &t.cfg.name,
                acting_primary: t.role == Role::Primary,
                waited_for: !matches!(state, TargetState::Paused | TargetState::Removed),
                cursor: *cursor,
            })
            .collect();
        quorum::evaluate(mode, self.cfg.replication.min_sync_replicas, seq, &views)
    }

    /// A write waits at most the largest `sync_timeout_seconds` of the
    /// targets it may wait for.
    fn write_timeout(&self, mode: Mode) -> Duration {
        let secs = self
            .targets
            .iter()
            .filter(|t| t.role == Role::Primary || mode != Mode::Async)
            .map(|t| t.cfg.sync_timeout_seconds)
            .fold(0.0, f64::max);
        Duration::from_secs_f64(secs)
    }

    fn acting_primary(&self) -> &Arc<TargetHandle> {
        &self.targets[0]
    }

    /// Reads `key` from the acting primary: the value, the target that
    /// served it, and the key's latest seq in the log.
    pub async fn get(&self, key: &Key) -> Result<Option<(Bytes, String, Option<u64>)>> {
        let t = self.acting_primary();
        let seq = self.log.key_info(key.as_str()).await?.map(|i| i.seq);
        match t.store.get(&key.object_path()).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| Error::target(&t.cfg.name, e))?;
                Ok(Some((bytes, t.cfg.name.clone(), seq)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::target(&t.cfg.name, e)),
        }
    }

    /// HEAD of `key` on the acting primary.
    pub async fn head_object(
        &self,
        key: &Key,
    ) -> Result<Option<(ObjectMeta, String, Option<u64>)>> {
        let t = self.acting_primary();
        let seq = self.log.key_info(key.as_str()).await?.map(|i| i.seq);
        match t.store.head(&key.object_path()).await {
            Ok(m) => Ok(Some((m, t.cfg.name.clone(), seq))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::target(&t.cfg.name, e)),
        }
    }

    /// Live keys (latest entry a put) starting with `prefix`, from the log's
    /// key index, at most `limit`.
    pub async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<(String, KeyInfo)>> {
        let mut out = Vec::new();
        // The index holds deletes too; page past them.
        let all = self.log.keys_with_prefix(prefix, usize::MAX).await?;
        for (k, info) in all {
            if info.op == Op::Put {
                out.push((k, info));
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The cursors report: head and, per target, cursor, lag, health, state.
    pub fn cursors(&self) -> Result<CursorsReport> {
        let head = self.log.head();
        let mut rows = Vec::new();
        for t in &self.targets {
            let cursor = t.cursor();
            let lag = self.log.lag(cursor)?;
            let s = t.status();
            rows.push(TargetRow {
                name: t.cfg.name.clone(),
                role: t.role,
                region: t.cfg.region.clone(),
                health: s.health,
                state: s.state,
                cursor,
                lag_entries: lag.entries,
                lag_bytes: lag.bytes,
                lag_ms: lag.ms,
                error: s.error.clone(),
            });
        }
        Ok(CursorsReport {
            head,
            targets: rows,
        })
    }

    /// Whether the acting primary answers (a HEAD of a marker object).
    pub async fn primary_reachable(&self) -> bool {
        let t = self.acting_primary();
        let marker = object_store::path::Path::from(".walship/ready");
        let probe = t.store.head(&marker);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. }))
        )
    }

    /// Stops taking writes, lets shipping drain up to `grace`, stops the
    /// shippers, persists every cursor and makes it durable.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.accepting.store(false, Ordering::Release);
        let head = self.log.head();
        let deadline = tokio::time::Instant::now() + grace;
        let mut rx = self.progress.subscribe();
        loop {
            rx.borrow_and_update();
            let drained = self.targets.iter().all(|t| {
                let state = t.status().state;
                t.cursor() >= head || !matches!(state, TargetState::Active | TargetState::Syncing)
            });
            if drained {
                break;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                let behind: Vec<String> = self
                    .targets
                    .iter()
                    .filter(|t| t.cursor() < head)
                    .map(|t| format!("{} at {}", t.cfg.name, t.cursor()))
                    .collect();
                tracing::warn!(head, behind = ?behind, "shutdown grace over; these targets catch up from the log after restart");
                break;
            }
        }
        self.cancel.cancel();
        let handles = std::mem::take(&mut *self.shippers.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.await;
        }
        for t in &self.targets {
            self.log.storage().set_cursor(&t.cfg.name, t.cursor())?;
        }
        self.log.storage().sync()
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
