//! `walship restore`: the objects as they stood at a point of the log,
//! written into another store (after a bad deploy, say).
//!
//! The state of key K at seq N is the newest entry of K at or below N: its
//! bytes for a put, nothing for a delete. For a key with no entry after N
//! that is also its state now, so the log's entry is used while the log
//! keeps it, else the acting primary's object. A key with entries after N
//! needs its entry at or below N from the log: when the log no longer
//! keeps it (truncated), its state at N is unknown, and it is listed as
//! such, never guessed. A point below the oldest kept entry is refused,
//! naming it. A plan is printed first; only `execute` writes, and it only
//! writes (it deletes nothing in the destination).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::codec::Op;
use crate::error::{Error, Result};
use crate::key::object_path;
use crate::storage::LogStorage;

/// Where a restore comes from, and what it would write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    /// The point: state as of this seq.
    pub seq: u64,
    /// Objects that existed then (and would be written).
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Keys that did not exist then (deleted, or not written yet).
    pub absent: u64,
    /// Keys whose state then the log no longer keeps (listed, not written).
    pub unknown: Vec<String>,
    /// Whether it was carried out.
    pub executed: bool,
}

/// What to restore: the point and the keys.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// State as of this seq.
    pub seq: u64,
    /// Only keys starting with this.
    pub prefix: String,
    /// Write, rather than only plan.
    pub execute: bool,
}

/// The store to restore into: `url`, which must not be a configured
/// target's (restore never writes over a live target).
pub(crate) fn destination(cfg: &crate::config::Config, url: &str) -> Result<Arc<dyn ObjectStore>> {
    let norm = |u: &str| u.trim_end_matches('/').to_string();
    if let Some((_, t)) = cfg.all_targets().find(|(_, t)| norm(&t.url) == norm(url)) {
        return Err(Error::BadRequest(format!(
            "{url} is target {}'s store; restore writes into another store (a new bucket or directory)",
            t.name
        )));
    }
    if let Err(e) = crate::config::TargetUrl::parse(url) {
        return Err(Error::BadRequest(format!("--to {e}")));
    }
    let t = crate::config::TargetConfig {
        name: "restore".into(),
        url: url.to_string(),
        region: String::new(),
        priority: 1,
        is_read_replica: false,
        sync_timeout_seconds: 30.0,
        max_retry_attempts: 3,
        retry_delay_seconds: 1.0,
        options: Default::default(),
    };
    crate::target::build_store(&t)
}

/// The point of `--as-of TIME`: the last entry appended at or before it,
/// at most `upto` (a running log's durable head; offline, `u64::MAX`).
pub(crate) fn seq_as_of(storage: &dyn LogStorage, ts_ms: u64, upto: u64) -> Result<u64> {
    Ok(
        crate::log::first_seq_since(storage, ts_ms.saturating_add(1))?
            .saturating_sub(1)
            .min(upto),
    )
}

/// Plans, and with `execute` carries out, a restore into `to`, reading
/// what the log does not keep from `primary`.
/// `upto` bounds the log read: a running log's durable head (a group in
/// the storage but not yet durable was not acknowledged), offline
/// `u64::MAX`.
pub(crate) async fn restore(
    storage: Arc<dyn LogStorage>,
    primary: Arc<dyn ObjectStore>,
    to: Arc<dyn ObjectStore>,
    req: RestoreRequest,
    upto: u64,
) -> Result<RestorePlan> {
    let (first, head) = storage.bounds()?.unwrap_or((1, 0));
    let head = head.min(upto);
    if req.seq > head {
        return Err(Error::BadRequest(format!(
            "seq {} is past the log's head {head}; pick a seq or time at or before it",
            req.seq
        )));
    }
    if req.seq + 1 < first {
        return Err(Error::BadRequest(format!(
            "the log no longer keeps what stood at seq {}: its oldest kept entry is seq {first}; \
             pick a point at or after seq {}",
            req.seq,
            first - 1
        )));
    }
    // Every key the log knows, with its newest entry; then, for those
    // written after the point, their newest entry at or below it.
    let (storage2, n) = (storage.clone(), req.seq);
    let prefix = req.prefix.clone();
    type Versions = BTreeMap<String, Option<(u64, Option<Bytes>)>>;
    let (latest, at_point): (BTreeMap<String, crate::storage::KeyInfo>, Versions) =
        tokio::task::spawn_blocking(move || -> Result<_> {
            let latest: BTreeMap<_, _> = crate::replicator::latest_keys(storage2.as_ref(), head)?
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .collect();
            let mut at_point: Versions = BTreeMap::new();
            let mut err = None;
            storage2.scan(
                first,
                n,
                &mut |seq, rec| match crate::codec::decode(seq, rec) {
                    Ok(e) => {
                        if latest.contains_key(&e.key) {
                            let v = (e.op == Op::Put).then_some(e.value);
                            at_point.insert(e.key, Some((seq, v)));
                        }
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                },
            )?;
            if let Some(e) = err {
                return Err(e);
            }
            Ok((latest, at_point))
        })
        .await
        .map_err(|e| Error::io("reading the log", std::io::Error::other(e)))??;
    let mut plan = RestorePlan {
        seq: req.seq,
        ..RestorePlan::default()
    };
    for (key, info) in &latest {
        let logged = at_point.get(key).cloned().flatten();
        let bytes: Option<Bytes> = match logged {
            Some((_, v)) => v,
            None if info.seq <= req.seq => {
                // Unchanged since: the acting primary holds it.
                if info.op == Op::Delete {
                    None
                } else {
                    match primary.get(&object_path(key)).await {
                        Ok(r) => Some(r.bytes().await.map_err(|e| Error::target("primary", e))?),
                        Err(object_store::Error::NotFound { .. }) => None,
                        Err(e) => return Err(Error::target("primary", e)),
                    }
                }
            }
            // Written after the point, and nothing at or below it is kept:
            // absent then if the log is whole from seq 1, else unknown.
            None if first <= 1 => None,
            None => {
                plan.unknown.push(key.clone());
                continue;
            }
        };
        match bytes {
            None => plan.absent += 1,
            Some(b) => {
                plan.objects += 1;
                plan.bytes += b.len() as u64;
                if req.execute {
                    to.put(&object_path(key), PutPayload::from(b))
                        .await
                        .map_err(|e| Error::target("restore destination", e))?;
                }
            }
        }
    }
    plan.executed = req.execute;
    Ok(plan)
}
