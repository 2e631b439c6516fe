"""The seed's ``ReplicationMetrics``, filled from a running sidecar.

:meth:`walship.Client.metrics` builds one from ``GET /v1/status`` (its
``"metrics"`` object: the counters, lag per target, success rate and mean
replication time per target) and, when ``/metrics`` is served
(``enable_metrics = true``), the per-target counts behind those rates
(``walship_replication_success_total{target}`` and
``walship_replication_failure_total{target}``), so that
:meth:`ReplicationMetrics.get_replica_success_rate` and
:meth:`ReplicationMetrics.get_average_replication_time` are the seed's own
formulas over exact counts.

What each field counts in walship:

* ``writes_to_primary``: writes appended to the log (each goes to the acting
  primary);
* ``writes_replicated``: entries applied to replicas, each entry once per
  replica (a retry is not a second success);
* ``writes_failed``: writes answered with an error (a quorum timeout, a log
  failure); failed *requests* to a replica are in the per-replica failure
  counts and lower its success rate;
* ``current_lag_ms``: per target, the age of its oldest unapplied entry
  (0 when caught up);
* the replication time of an entry at a replica is the time from its append
  to the replica's cursor passing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["ReplicationMetrics"]


@dataclass
class ReplicationMetrics:
    """Metrics for replication operations (the seed's ``ReplicationMetrics``).

    Attributes:
        writes_to_primary: Total writes to primary.
        writes_replicated: Total writes successfully replicated.
        writes_failed: Total writes that failed.
        conflicts_detected: Number of conflicts detected.
        conflicts_resolved: Number of conflicts resolved.
        failovers: Number of failover events.
        current_lag_ms: Current replication lag per target.
        total_replication_time_ms: Total time spent replicating.
    """

    writes_to_primary: int = 0
    writes_replicated: int = 0
    writes_failed: int = 0
    conflicts_detected: int = 0
    conflicts_resolved: int = 0
    failovers: int = 0
    current_lag_ms: dict[str, float] = field(default_factory=dict)
    total_replication_time_ms: float = 0.0
    _replica_success_count: dict[str, int] = field(default_factory=dict)
    _replica_failure_count: dict[str, int] = field(default_factory=dict)
    # What the sidecar computed, for when the counts behind it are not served.
    _server_success_rate: dict[str, float] = field(default_factory=dict, repr=False)
    _server_average_ms: dict[str, float] = field(default_factory=dict, repr=False)

    # --- the seed's recording methods (for code that keeps its own) ---

    def record_primary_write(self) -> None:
        """Record a write to primary."""
        self.writes_to_primary += 1

    def record_replication_success(self, target_name: str, time_ms: float) -> None:
        """Record successful replication."""
        self.writes_replicated += 1
        self.total_replication_time_ms += time_ms
        self._replica_success_count[target_name] = (
            self._replica_success_count.get(target_name, 0) + 1
        )

    def record_replication_failure(self, target_name: str) -> None:
        """Record replication failure."""
        self.writes_failed += 1
        self._replica_failure_count[target_name] = (
            self._replica_failure_count.get(target_name, 0) + 1
        )

    def record_conflict(self, resolved: bool = True) -> None:
        """Record a conflict."""
        self.conflicts_detected += 1
        if resolved:
            self.conflicts_resolved += 1

    def record_failover(self) -> None:
        """Record a failover event."""
        self.failovers += 1

    def update_lag(self, target_name: str, lag_ms: float) -> None:
        """Update replication lag for a target."""
        self.current_lag_ms[target_name] = lag_ms

    # --- the seed's reading methods ---

    def get_replica_success_rate(self, target_name: str) -> float:
        """Success rate of a replica in percent (100.0 before any request)."""
        success = self._replica_success_count.get(target_name)
        failure = self._replica_failure_count.get(target_name)
        if success is None and failure is None and target_name in self._server_success_rate:
            return self._server_success_rate[target_name] * 100.0
        total = (success or 0) + (failure or 0)
        if total == 0:
            return 100.0
        return ((success or 0) / total) * 100

    def get_average_replication_time(self) -> float:
        """Average replication time in ms, over every entry applied to a replica."""
        if self.writes_replicated == 0:
            return 0.0
        if not self._replica_success_count and self._server_average_ms:
            # No counts to weigh the sidecar's per-replica means with: their mean.
            means = [
                v for k, v in self._server_average_ms.items() if k in self._server_success_rate
            ] or list(self._server_average_ms.values())
            return sum(means) / len(means)
        return self.total_replication_time_ms / self.writes_replicated

    def get_target_average_replication_time(self, target_name: str) -> float:
        """Mean ms from append to applied at one target (the primary included)."""
        return self._server_average_ms.get(target_name, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """Convert to dictionary (the seed's keys)."""
        names = list(self._replica_success_count) or list(self._server_success_rate)
        return {
            "writes_to_primary": self.writes_to_primary,
            "writes_replicated": self.writes_replicated,
            "writes_failed": self.writes_failed,
            "conflicts_detected": self.conflicts_detected,
            "conflicts_resolved": self.conflicts_resolved,
            "failovers": self.failovers,
            "current_lag_ms": self.current_lag_ms,
            "average_replication_time_ms": self.get_average_replication_time(),
            "replica_success_rates": {
                name: self.get_replica_success_rate(name) for name in names
            },
        }

    # --- from a sidecar ---

    @classmethod
    def from_status(
        cls, status: Mapping[str, Any], prometheus_text: Optional[str] = None
    ) -> "ReplicationMetrics":
        """Builds the metrics from ``/v1/status`` and, if given, ``/metrics``' text."""
        m = status.get("metrics") or {}
        rates = {str(k): float(v) for k, v in (m.get("success_rate") or {}).items()}
        means = {
            str(k): float(v) for k, v in (m.get("average_replication_time_ms") or {}).items()
        }
        out = cls(
            writes_to_primary=int(m.get("writes_to_primary", 0)),
            writes_replicated=int(m.get("writes_replicated", 0)),
            writes_failed=int(m.get("writes_failed", 0)),
            conflicts_detected=int(m.get("conflicts_detected", 0)),
            conflicts_resolved=int(m.get("conflicts_resolved", 0)),
            failovers=int(m.get("failovers", 0)),
            current_lag_ms={str(k): float(v) for k, v in (m.get("current_lag_ms") or {}).items()},
            _server_success_rate=rates,
            _server_average_ms=means,
        )
        if prometheus_text is not None:
            success = _series(prometheus_text, "walship_replication_success_total")
            failure = _series(prometheus_text, "walship_replication_failure_total")
            replicas = list(rates)  # the sidecar rates replicas only
            if replicas and all(r in success for r in replicas):
                out._replica_success_count = {r: int(success[r]) for r in replicas}
                out._replica_failure_count = {r: int(failure.get(r, 0)) for r in replicas}
                out.total_replication_time_ms = sum(
                    means.get(r, 0.0) * out._replica_success_count[r] for r in replicas
                )
        return out


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _series(text: str, name: str) -> dict[str, float]:
    """The samples of ``name{target="…"}`` in a Prometheus/OpenMetrics exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        labels = {k: v.encode().decode("unicode_escape") for k, v in _LABEL.findall(m.group(2))}
        if "target" in labels:
            try:
                out[labels["target"]] = float(m.group(3))
            except ValueError:
                continue
    return out
