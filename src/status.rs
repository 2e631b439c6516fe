//! Target roles, health and states, and the `cursors` report.
//!
//! The report is the same whether it comes from a running sidecar
//! (`GET /v1/cursors`) or straight from a data directory when none runs
//! (`walship cursors --data-dir D`): `{"head": N, "targets": [...]}` with the
//! fields SPEC.md names. Lag is always cursor distance measured on the log.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::log::lag_of;
use crate::storage::LogStorage;
use crate::target_record::TargetRecord;

/// A target's configured role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The `[primary]` store.
    Primary,
    /// A `[[targets]]` entry that may be promoted.
    Replica,
    /// A `[[targets]]` entry with `is_read_replica = true`.
    ReadReplica,
}

/// How a target is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Requests succeed and lag is within bounds.
    Healthy,
    /// Lag is over `max_replication_lag_ms`.
    Degraded,
    /// Requests keep failing.
    Unhealthy,
    /// Nothing known yet.
    Unknown,
}

/// What walship does with a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Shipping.
    Active,
    /// Not shipping, by request; keeps its cursor.
    Paused,
    /// Being copied from the acting primary.
    Syncing,
    /// Shipping stopped on an error that needs a person (see `error`).
    Failed,
    /// No longer configured.
    Removed,
}

/// One row of the cursors report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRow {
    /// Target name.
    pub name: String,
    /// `primary`, `replica` or `read_replica`.
    pub role: Role,
    /// Region from the config.
    pub region: String,
    /// Health.
    pub health: Health,
    /// State.
    pub state: TargetState,
    /// Highest seq such that every entry up to it is applied.
    pub cursor: u64,
    /// `head - cursor`.
    pub lag_entries: u64,
    /// Bytes of the unapplied entries.
    pub lag_bytes: u64,
    /// Age of the oldest unapplied entry in ms (0 when caught up).
    pub lag_ms: u64,
    /// The last error shipping met, if it has not succeeded since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Progress of a running resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

/// `GET /v1/cursors` and `walship cursors --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CursorsReport {
    /// The highest seq in the log.
    pub head: u64,
    /// One row per target, the primary first.
    pub targets: Vec<TargetRow>,
    /// Read from the data directory, with no sidecar running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

/// What a sidecar records of its targets so offline tools can name them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TargetListing {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) region: String,
}

pub(crate) const TARGETS_META: &str = "targets";

/// The configured primary's name as the data directory last recorded it.
pub fn offline_primary(storage: &dyn LogStorage) -> Result<Option<String>> {
    let records: Vec<TargetListing> = storage
        .meta(TARGETS_META)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok(records
        .into_iter()
        .find(|r| r.role == Role::Primary)
        .map(|r| r.name))
}

/// The cursors report read straight from a data directory's storage.
pub fn offline_report(storage: &dyn LogStorage) -> Result<CursorsReport> {
    let head = storage.bounds()?.map(|(_, h)| h).unwrap_or(0);
    let records: Vec<TargetListing> = storage
        .meta(TARGETS_META)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let stored = storage.targets()?;
    let mut rows = Vec::new();
    let row = |name: &str, role, region: &str, listed: bool| -> Result<TargetRow> {
        let record = stored.iter().find(|(n, _)| n == name).map(|(_, r)| r);
        let mut row = offline_row(storage, name, role, region, record, head)?;
        if let Some(Err(why)) = record {
            let then = match (listed, role) {
                (false, _) => "it is no longer configured, so nothing acts on it",
                (_, Role::Primary) => "walship ships the kept log to it again when it opens",
                _ => "walship resyncs it from the acting primary when it opens",
            };
            row.error = Some(format!("its persisted record is damaged ({why}); {then}"));
        }
        Ok(row)
    };
    for r in &records {
        rows.push(row(&r.name, r.role, &r.region, true)?);
    }
    for (name, _) in &stored {
        if !records.iter().any(|r| &r.name == name) {
            let mut row = row(name, Role::Replica, "", false)?;
            row.state = TargetState::Removed;
            rows.push(row);
        }
    }
    Ok(CursorsReport {
        head,
        targets: rows,
        offline: true,
    })
}

fn offline_row(
    storage: &dyn LogStorage,
    name: &str,
    role: Role,
    region: &str,
    record: Option<&std::result::Result<TargetRecord, String>>,
    head: u64,
) -> Result<TargetRow> {
    let record = record
        .and_then(|r| r.as_ref().ok())
        .copied()
        .unwrap_or_default();
    let cursor = record.cursor;
    let lag = lag_of(storage, cursor, head)?;
    // The state the sidecar persisted (paused and syncing survive restarts).
    let state = record.state;
    Ok(TargetRow {
        name: name.to_string(),
        role,
        region: region.to_string(),
        health: Health::Unknown,
        state,
        cursor,
        lag_entries: lag.entries,
        lag_bytes: lag.bytes,
        lag_ms: lag.ms,
        error: None,
        progress: None,
    })
}

/// Failover state in `walship status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverReport {
    /// `enable_failover`.
    pub enabled: bool,
    /// The target writes wait for and `primary` reads go to.
    pub acting_primary: String,
    /// The `[primary]` of the config.
    pub configured_primary: String,
    /// Failovers since start.
    pub failovers: u64,
    /// Failbacks since start.
    pub failbacks: u64,
}

/// The seed's `ReplicationMetrics.to_dict()` view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedMetrics {
    /// Writes appended to the log (each one goes to the acting primary).
    pub writes_to_primary: u64,
    /// Entries applied to replicas (each entry once per replica).
    pub writes_replicated: u64,
    /// Writes answered with an error (quorum timeout, log failure).
    pub writes_failed: u64,
    /// Conflicts detected.
    pub conflicts_detected: u64,
    /// Conflicts resolved.
    pub conflicts_resolved: u64,
    /// Failovers.
    pub failovers: u64,
    /// Per target: age of its oldest unapplied entry.
    pub current_lag_ms: std::collections::BTreeMap<String, u64>,
    /// Per replica: applied / (applied + failed requests); 1.0 before any.
    pub success_rate: std::collections::BTreeMap<String, f64>,
    /// Per target: mean ms from append to applied.
    pub average_replication_time_ms: std::collections::BTreeMap<String, f64>,
}

/// `GET /v1/status` and `walship status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Configured replication mode.
    pub mode: String,
    /// The highest seq.
    pub head: u64,
    /// The cursors table.
    pub targets: Vec<TargetRow>,
    /// Failover state.
    pub failover: FailoverReport,
    /// The target with the lowest cursor, when it is behind the head: the
    /// one holding log truncation back.
    pub truncation_held_by: Option<String>,
    /// Bytes of entries kept in the log.
    pub log_retained_bytes: u64,
    /// Conflicts waiting in the manual queue.
    pub open_conflicts: u64,
    /// This sidecar's id: the origin its writes carry (`walshiporigin`).
    #[serde(default)]
    pub sidecar_id: String,
    /// The data directory it serves (a client given a config checks it).
    #[serde(default)]
    pub data_dir: String,
    /// Read from the data directory, with no sidecar running.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
    /// The seed's metrics view.
    pub metrics: SeedMetrics,
}

impl StatusReport {
    /// What a data directory alone can tell: cursors and lag, no live
    /// health, failover or counters.
    /// `failover`: the config's `enable_failover` when known; `retained`:
    /// the log's kept bytes.
    pub fn offline(
        cursors: CursorsReport,
        mode: Option<String>,
        failover: Option<bool>,
        retained: u64,
        data_dir: String,
    ) -> StatusReport {
        let configured = cursors
            .targets
            .iter()
            .find(|t| t.role == Role::Primary)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let held = cursors
            .targets
            .iter()
            .filter(|r| r.state != TargetState::Removed)
            .min_by_key(|r| r.cursor)
            .filter(|r| r.cursor < cursors.head)
            .map(|r| r.name.clone());
        StatusReport {
            mode: mode.unwrap_or_else(|| "unknown".into()),
            head: cursors.head,
            failover: FailoverReport {
                enabled: failover.unwrap_or(false),
                acting_primary: configured.clone(),
                configured_primary: configured,
                failovers: 0,
                failbacks: 0,
            },
            truncation_held_by: held,
            log_retained_bytes: retained,
            open_conflicts: 0,
            sidecar_id: String::new(),
            data_dir,
            offline: true,
            metrics: SeedMetrics {
                writes_to_primary: 0,
                writes_replicated: 0,
                writes_failed: 0,
                conflicts_detected: 0,
                conflicts_resolved: 0,
                failovers: 0,
                current_lag_ms: cursors
                    .targets
                    .iter()
                    .map(|t| (t.name.clone(), t.lag_ms))
                    .collect(),
                success_rate: Default::default(),
                average_replication_time_ms: Default::default(),
            },
            targets: cursors.targets,
        }
    }
}

/// The name of a health value as SPEC writes it.
pub fn health_name(h: Health) -> &'static str {
    match h {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::Unhealthy => "unhealthy",
        Health::Unknown => "unknown",
    }
}
