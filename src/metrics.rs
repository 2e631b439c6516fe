//! Prometheus metrics (SPEC.md "Metrics").
//!
//! Counters count what happened, once: `replication_success_total{target}`
//! counts entries a target's cursor passed (each entry once per target, a
//! retry is not a second success, a coalesced older version counts as
//! applied because the cursor passed it), `replication_failure_total{target}`
//! counts failed requests to the target. Gauges (head, cursors, lag, health,
//! retained bytes) are set from the live state at each scrape.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `{target="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// Target name.
    pub target: String,
}

/// `{target="...",health="..."}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// Target name.
    pub target: String,
    /// One of healthy, degraded, unhealthy, unknown.
    pub health: String,
}

/// `{target="...",op="..."}`: what a store bills.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Target name.
    pub target: String,
    /// put, get, head, delete, list or copy.
    pub op: String,
}

/// `{op="...",status="..."}`: one request to the S3 API.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct S3Labels {
    /// The S3 operation (PutObject, GetObject, …; `Other` when unknown).
    pub op: String,
    /// The HTTP status answered.
    pub status: String,
}

fn replication_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every series walship exports.
pub struct Metrics {
    registry: Registry,
    /// Writes appended to the log.
    pub writes: Counter,
    /// Writes that answered an error (quorum timeout, log failure).
    pub writes_failed: Counter,
    /// Entries applied per target.
    pub success: Family<TargetLabel, Counter>,
    /// Failed requests per target.
    pub failure: Family<TargetLabel, Counter>,
    /// Seconds from append to applied, per target.
    pub replication_seconds: Family<TargetLabel, Histogram, fn() -> Histogram>,
    /// Conflicts detected.
    pub conflicts_detected: Counter,
    /// Conflicts resolved.
    pub conflicts_resolved: Counter,
    /// Failovers (a replica became acting primary).
    pub failovers: Counter,
    /// Failbacks (the configured primary took its place back).
    pub failbacks: Counter,
    /// Writes whose wait ran past the timeout.
    pub quorum_timeouts: Counter,
    /// Highest seq.
    pub head_seq: Gauge,
    /// Cursor per target.
    pub cursor_seq: Family<TargetLabel, Gauge>,
    /// Lag in entries per target.
    pub lag_entries: Family<TargetLabel, Gauge>,
    /// Lag in bytes per target.
    pub lag_bytes: Family<TargetLabel, Gauge>,
    /// Lag in seconds per target.
    pub lag_seconds: Family<TargetLabel, Gauge<f64, AtomicU64>>,
    /// 1 for the current health of each target, 0 for the others.
    pub target_health: Family<HealthLabels, Gauge>,
    /// Bytes of entries kept in the log.
    pub log_retained_bytes: Gauge,
    /// Requests sent to each target's store, by kind.
    pub target_requests: Family<RequestLabels, Counter>,
    /// Requests to the S3 API, by operation and status.
    pub s3_requests: Family<S3Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every series registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            writes: Counter::default(),
            writes_failed: Counter::default(),
            success: Family::default(),
            failure: Family::default(),
            replication_seconds: Family::new_with_constructor(
                replication_histogram as fn() -> Histogram,
            ),
            conflicts_detected: Counter::default(),
            conflicts_resolved: Counter::default(),
            failovers: Counter::default(),
            failbacks: Counter::default(),
            quorum_timeouts: Counter::default(),
            head_seq: Gauge::default(),
            cursor_seq: Family::default(),
            lag_entries: Family::default(),
            lag_bytes: Family::default(),
            lag_seconds: Family::default(),
            target_health: Family::default(),
            log_retained_bytes: Gauge::default(),
            target_requests: Family::default(),
            s3_requests: Family::default(),
        };
        registry.register(
            "walship_s3_requests",
            "Requests to the S3 API, by operation and HTTP status",
            m.s3_requests.clone(),
        );
        registry.register(
            "walship_target_requests",
            "Requests sent to a target's store, by op (put, get, head, delete, list, copy): what the store bills",
            m.target_requests.clone(),
        );
        // prometheus-client adds `_total` to counter names.
        registry.register(
            "walship_writes",
            "Writes appended to the log",
            m.writes.clone(),
        );
        registry.register(
            "walship_writes_failed",
            "Writes answered with an error (quorum timeout, log failure)",
            m.writes_failed.clone(),
        );
        registry.register(
            "walship_replication_success",
            "Entries applied to a target (each entry once per target)",
            m.success.clone(),
        );
        registry.register(
            "walship_replication_failure",
            "Failed requests to a target",
            m.failure.clone(),
        );
        registry.register(
            "walship_replication_seconds",
            "Seconds from append to applied at a target",
            m.replication_seconds.clone(),
        );
        registry.register(
            "walship_conflicts_detected",
            "Conflicts detected",
            m.conflicts_detected.clone(),
        );
        registry.register(
            "walship_conflicts_resolved",
            "Conflicts resolved",
            m.conflicts_resolved.clone(),
        );
        registry.register(
            "walship_failovers",
            "Failovers: a replica became acting primary",
            m.failovers.clone(),
        );
        registry.register(
            "walship_failbacks",
            "Failbacks: the configured primary took its place back",
            m.failbacks.clone(),
        );
        registry.register(
            "walship_quorum_timeouts",
            "Writes whose replication wait ran past sync_timeout_seconds",
            m.quorum_timeouts.clone(),
        );
        registry.register(
            "walship_head_seq",
            "Highest seq in the log",
            m.head_seq.clone(),
        );
        registry.register(
            "walship_cursor_seq",
            "Cursor of a target",
            m.cursor_seq.clone(),
        );
        registry.register(
            "walship_lag_entries",
            "Entries not yet applied",
            m.lag_entries.clone(),
        );
        registry.register(
            "walship_lag_bytes",
            "Bytes of entries not yet applied",
            m.lag_bytes.clone(),
        );
        registry.register(
            "walship_lag_seconds",
            "Age of the oldest entry not yet applied",
            m.lag_seconds.clone(),
        );
        registry.register(
            "walship_target_health",
            "1 for the target's current health",
            m.target_health.clone(),
        );
        registry.register(
            "walship_log_retained_bytes",
            "Bytes of entries kept in the log",
            m.log_retained_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The label of one target.
    pub fn target(name: &str) -> TargetLabel {
        TargetLabel {
            target: name.to_string(),
        }
    }
}
/// The Prometheus text format 0.0.4 of an OpenMetrics exposition, for
/// scrapers that do not ask for OpenMetrics: counter families are named
/// with their `_total` suffix (a 0.0.4 parser matches TYPE lines to sample
/// names), and `# UNIT` and `# EOF` lines go.
pub(crate) fn text_004(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            (counters.contains(name) && !name.ends_with("_total"))
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_004_names_counters_as_their_samples_and_drops_openmetrics_lines() {
        let m = Metrics::new();
        m.writes.inc();
        let om = m.encode();
        assert!(om.contains("# TYPE walship_writes counter"), "{om}");
        let t = text_004(&om);
        assert!(t.contains("# TYPE walship_writes_total counter\n"), "{t}");
        assert!(t.contains("# HELP walship_writes_total "), "{t}");
        assert!(t.contains("\nwalship_writes_total 1\n"), "{t}");
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");
        // Gauges keep their names.
        assert!(t.contains("# TYPE walship_head_seq gauge"), "{t}");
    }
}
