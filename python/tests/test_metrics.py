"""client.metrics() is the seed's ReplicationMetrics, and it counts what happened."""

from __future__ import annotations

import time

import pytest

from conftest import caught_up, cursor_of, file_url, wait_until
from walship import QuorumTimeout, ReplicaTarget, ReplicationConfig, ReplicationMetrics

SEED_TO_DICT_KEYS = {
    "writes_to_primary", "writes_replicated", "writes_failed", "conflicts_detected",
    "conflicts_resolved", "failovers", "current_lag_ms", "average_replication_time_ms",
    "replica_success_rates",
}


def test_the_seeds_recording_api_still_works():
    m = ReplicationMetrics()
    m.record_primary_write()
    m.record_replication_success("us-west-2", time_ms=50.0)
    m.record_replication_success("us-west-2", time_ms=30.0)
    m.record_replication_failure("eu-west-1")
    m.record_conflict(resolved=True)
    m.record_failover()
    m.update_lag("us-west-2", lag_ms=100.0)
    assert (m.writes_to_primary, m.writes_replicated, m.writes_failed) == (1, 2, 1)
    assert m.get_replica_success_rate("us-west-2") == 100.0
    assert m.get_replica_success_rate("eu-west-1") == 0.0
    assert m.get_replica_success_rate("never") == 100.0
    assert m.get_average_replication_time() == 40.0
    d = m.to_dict()
    assert set(d) == SEED_TO_DICT_KEYS and d["replica_success_rates"] == {"us-west-2": 100.0}


def test_metrics_after_writes_with_one_replica_failing_for_a_while(serve, tmp_path):
    d = tmp_path / "stores"
    fast = dict(sync_timeout_seconds=1.0, retry_delay_seconds=0.05, max_retry_attempts=2)
    primary = ReplicaTarget("p", file_url(d / "p"), "here", **fast)
    cfg = ReplicationConfig(
        targets=[ReplicaTarget("r1", file_url(d / "r1"), "here", **fast),
                 ReplicaTarget("r2", file_url(d / "r2"), "there", **fast)],
        health_check_interval_seconds=0.2,
        enable_failover=False,
    )
    s = serve(cfg, primary)
    t0 = time.monotonic()
    n_before, n_sync, n_during = 6, 3, 4
    with s.client() as c:
        m0 = c.metrics()
        assert (m0.writes_to_primary, m0.writes_replicated, m0.writes_failed) == (0, 0, 0)
        assert m0.get_replica_success_rate("r2") == 100.0
        assert m0.get_average_replication_time() == 0.0

        for i in range(n_before):
            c.put(f"m/before/{i}", b"x" * 10)
        wait_until(lambda: caught_up(c), 20, "every target to catch up")

        r2 = d / "r2"
        r2.rename(tmp_path / "r2.away")
        r2.write_bytes(b"a file where the replica's directory was")
        timeouts = 0
        for i in range(n_sync):
            with pytest.raises(QuorumTimeout):
                c.put(f"m/sync/{i}", b"y" * 10, mode="sync")
            timeouts += 1
        for i in range(n_during):
            assert c.put(f"m/during/{i}", b"z" * 10).mode == "async"
        # r2 keeps failing for a while.
        wait_until(lambda: c.metrics()._replica_failure_count.get("r2", 0) >= 3, 20,
                   "r2's failures to be counted")
        # r1 is healthy: its lag is 0 once it has the async writes too.
        wait_until(lambda: cursor_of(c, "r1") == n_before + n_sync + n_during, 20,
                   "r1 to take the writes made during r2's outage")
        during = c.metrics()
        assert during.current_lag_ms["r2"] > 0 and during.current_lag_ms["r1"] == 0
        assert during.get_replica_success_rate("r2") < 100.0
        time.sleep(0.5)
        r2.unlink()
        (tmp_path / "r2.away").rename(r2)
        wait_until(lambda: caught_up(c), 60, "r2 to catch up after the outage")
        total = n_before + n_sync + n_during
        assert cursor_of(c, "r2") == total
        m = c.metrics()
    elapsed_ms = (time.monotonic() - t0) * 1000

    assert m.writes_to_primary == total
    assert m.writes_failed == timeouts == n_sync
    assert m.writes_replicated == 2 * total  # each entry once per replica
    assert m._replica_success_count == {"r1": total, "r2": total}
    failures = m._replica_failure_count["r2"]
    assert failures >= 3 and m._replica_failure_count["r1"] == 0
    assert m.get_replica_success_rate("r1") == 100.0
    assert m.get_replica_success_rate("r2") == pytest.approx(100.0 * total / (total + failures))
    assert (m.conflicts_detected, m.conflicts_resolved, m.failovers) == (0, 0, 0)
    assert m.current_lag_ms == {"p": 0.0, "r1": 0.0, "r2": 0.0}
    # r2's entries written during the outage waited at least the half second
    # it stayed broken after the writes; r1's did not.
    r1_ms = m.get_target_average_replication_time("r1")
    r2_ms = m.get_target_average_replication_time("r2")
    assert r2_ms > r1_ms and r2_ms >= 500.0 * (n_sync + n_during) / total
    avg = m.get_average_replication_time()
    assert avg == pytest.approx((r1_ms * total + r2_ms * total) / (2 * total))
    assert 0 < avg < elapsed_ms
    d = m.to_dict()
    assert set(d) == SEED_TO_DICT_KEYS
    assert d["writes_to_primary"] == total and d["writes_replicated"] == 2 * total
    assert set(d["replica_success_rates"]) == {"r1", "r2"}
    assert d["average_replication_time_ms"] == avg


def test_metrics_without_the_prometheus_endpoint_use_the_sidecars_rates(serve, tmp_path):
    d = tmp_path / "stores"
    primary = ReplicaTarget("p", file_url(d / "p"), "here")
    cfg = ReplicationConfig(targets=[ReplicaTarget("r1", file_url(d / "r1"), "here")],
                            enable_metrics=False)
    s = serve(cfg, primary)
    with s.client() as c:
        for i in range(4):
            c.put(f"k/{i}", b"v", mode="sync")
        m = c.metrics()
    assert (m.writes_to_primary, m.writes_replicated, m.writes_failed) == (4, 4, 0)
    assert m._replica_success_count == {}  # no /metrics to count from
    assert m.get_replica_success_rate("r1") == 100.0
    assert m.get_average_replication_time() == m.get_target_average_replication_time("r1")
    assert set(m.to_dict()["replica_success_rates"]) == {"r1"}
