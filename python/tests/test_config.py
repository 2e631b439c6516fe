"""The seed's config names and defaults; validate() agrees with check-config."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest

from conftest import check_config, file_url
from walship import (
    ConfigError,
    ConflictResolution,
    ReadPreference,
    ReplicaHealth,
    ReplicaState,
    ReplicaTarget,
    ReplicationConfig,
    ReplicationMode,
)

# The seed's members and defaults, as truthound 3.2.0 writes them
# (truthound/stores/replication/base.py). test_truthound.py compares them
# with the installed seed itself.
SEED_ENUMS = {
    ReplicationMode: {"SYNC": "sync", "ASYNC": "async", "SEMI_SYNC": "semi_sync"},
    ReadPreference: {"PRIMARY": "primary", "SECONDARY": "secondary", "NEAREST": "nearest",
                     "ANY": "any"},
    ConflictResolution: {"LAST_WRITE_WINS": "last_write_wins",
                         "FIRST_WRITE_WINS": "first_write_wins",
                         "PRIMARY_WINS": "primary_wins", "MERGE": "merge", "MANUAL": "manual"},
    ReplicaHealth: {"HEALTHY": "healthy", "DEGRADED": "degraded", "UNHEALTHY": "unhealthy",
                    "UNKNOWN": "unknown"},
    ReplicaState: {"ACTIVE": "active", "PAUSED": "paused", "SYNCING": "syncing",
                   "FAILED": "failed", "REMOVED": "removed"},
}


def test_enums_have_the_seeds_members_and_values():
    for enum, members in SEED_ENUMS.items():
        assert {m.name: m.value for m in enum} == members, enum.__name__
        assert issubclass(enum, str)
        assert enum("sync" if enum is ReplicationMode else list(members.values())[0])


def test_dataclasses_have_the_seeds_defaults():
    t = ReplicaTarget(name="r", url="memory://", region="x")
    assert (t.priority, t.is_read_replica, t.sync_timeout_seconds, t.max_retry_attempts,
            t.retry_delay_seconds) == (1, False, 30.0, 3, 1.0)
    assert (t.health, t.state, t.last_sync_time, t.replication_lag_ms) == (
        ReplicaHealth.UNKNOWN, ReplicaState.ACTIVE, None, 0.0)
    c = ReplicationConfig()
    assert c.mode is ReplicationMode.ASYNC and c.targets == []
    assert c.read_preference is ReadPreference.PRIMARY
    assert c.conflict_resolution is ConflictResolution.LAST_WRITE_WINS
    assert (c.min_sync_replicas, c.enable_health_checks, c.health_check_interval_seconds,
            c.max_replication_lag_ms, c.enable_failover, c.enable_metrics) == (
        1, True, 30.0, 5000.0, True, True)
    # The seed's fields come first, in the seed's order (positional use keeps working).
    names = [f.name for f in dataclasses.fields(ReplicationConfig)]
    assert names[:10] == ["mode", "targets", "read_preference", "conflict_resolution",
                          "min_sync_replicas", "enable_health_checks",
                          "health_check_interval_seconds", "max_replication_lag_ms",
                          "enable_failover", "enable_metrics"]
    names = [f.name for f in dataclasses.fields(ReplicaTarget)]
    assert names[:12] == ["name", "url", "region", "priority", "is_read_replica",
                          "sync_timeout_seconds", "max_retry_attempts", "retry_delay_seconds",
                          "health", "state", "last_sync_time", "replication_lag_ms"]


def test_replica_target_marks_as_the_seed_does():
    t = ReplicaTarget(name="r", url="memory://", region="x")
    t.mark_degraded(lag_ms=7000)
    assert (t.health, t.replication_lag_ms) == (ReplicaHealth.DEGRADED, 7000)
    t.mark_unhealthy()
    assert (t.health, t.state) == (ReplicaHealth.UNHEALTHY, ReplicaState.FAILED)
    t.resume()
    assert t.state is ReplicaState.FAILED  # resume only leaves PAUSED
    t.pause()
    t.resume()
    assert t.state is ReplicaState.ACTIVE
    t.mark_syncing()
    assert t.state is ReplicaState.SYNCING
    t.mark_healthy()
    assert (t.health, t.state) == (ReplicaHealth.HEALTHY, ReplicaState.ACTIVE)
    assert t.last_sync_time is not None


def test_the_seeds_own_validate_examples_still_fail():
    # truthound's tests: min_sync_replicas above the targets, a zero interval.
    r1 = ReplicaTarget(name="r1", url="file:///tmp/walship-r1", region="us-east-1")
    with pytest.raises(ValueError, match="min_sync_replicas"):
        ReplicationConfig(mode=ReplicationMode.SEMI_SYNC, targets=[r1],
                          min_sync_replicas=2).validate()
    with pytest.raises(ValueError, match="health_check_interval_seconds"):
        ReplicationConfig(targets=[r1], health_check_interval_seconds=0).validate()


def test_validate_lists_every_problem_in_one_error():
    cfg = ReplicationConfig(
        targets=[
            ReplicaTarget("r1", "ftp://x", "a", sync_timeout_seconds=0),
            ReplicaTarget("r1", "s3://bucket", "b", max_retry_attempts=0),
        ],
        min_sync_replicas=3,
    )
    with pytest.raises(ConfigError) as e:
        cfg.validate(ReplicaTarget("p", "file:///tmp/walship-p", "a"))
    assert isinstance(e.value, ValueError)
    assert e.value.fields == [
        "replication.min_sync_replicas",
        "targets[0].sync_timeout_seconds",
        "targets[0].url",
        "targets[1].max_retry_attempts",
        "targets[1].name",
    ]
    assert str(e.value).count("\n") == 4


def test_a_good_config_validates_and_needs_a_primary_only_for_toml():
    cfg = ReplicationConfig(targets=[ReplicaTarget("r1", "file:///tmp/walship-r1", "a")])
    cfg.validate()
    with pytest.raises(ValueError, match="primary"):
        cfg.to_toml()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_to_toml_writes_every_field_back():
    import tomllib

    p = ReplicaTarget("us-east-1", "s3://primary-bucket/results", "us-east-1",
                      options={"endpoint": "http://127.0.0.1:9000", "allow_http": True})
    r = ReplicaTarget("us-west-2", "s3://replica-bucket/results", "us-west-2", priority=2,
                      is_read_replica=True, sync_timeout_seconds=2.5, max_retry_attempts=5,
                      retry_delay_seconds=0.25)
    cfg = ReplicationConfig(mode=ReplicationMode.SEMI_SYNC, targets=[r],
                            read_preference="nearest",
                            conflict_resolution=ConflictResolution.MANUAL,
                            health_check_interval_seconds=10.0, max_replication_lag_ms=250.0,
                            enable_failover=False, retention_seconds=0.0,
                            max_object_bytes=1024)
    doc = tomllib.loads(cfg.to_toml(primary=p, data_dir="data"))
    assert doc["data_dir"] == "data" and doc["listen"] == "127.0.0.1:7600"
    assert doc["retention_seconds"] == 0.0 and doc["max_object_bytes"] == 1024
    assert "max_connections" not in doc  # defaults are left to the sidecar
    assert doc["replication"] == {
        "mode": "semi_sync", "min_sync_replicas": 1, "read_preference": "nearest",
        "conflict_resolution": "manual", "enable_health_checks": True,
        "health_check_interval_seconds": 10.0, "max_replication_lag_ms": 250.0,
        "enable_failover": False, "enable_metrics": True,
    }
    assert doc["primary"]["options"] == {"endpoint": "http://127.0.0.1:9000",
                                         "allow_http": "true"}
    (t,) = doc["targets"]
    assert (t["name"], t["url"], t["region"], t["priority"], t["is_read_replica"],
            t["sync_timeout_seconds"], t["max_retry_attempts"], t["retry_delay_seconds"]) == (
        "us-west-2", "s3://replica-bucket/results", "us-west-2", 2, True, 2.5, 5, 0.25)


# ------------------------------------------------------- agreement with check-config

def _bad_configs(tmp: Path):
    """(id, config, primary): each refused by check-config (exit 2)."""
    d = tmp / "stores"

    def t(name, **kw):
        kw.setdefault("url", file_url(d / name))
        kw.setdefault("region", "local")
        return ReplicaTarget(name=name, **kw)

    P = t("p")
    yield "duplicate-names", ReplicationConfig(targets=[t("r1"), t("r1", url=file_url(d / "x"))]), P
    yield "same-url-twice", ReplicationConfig(
        targets=[t("r1"), t("r2", url=file_url(d / "r1") + "/")]), P
    yield "replica-on-primary-url", ReplicationConfig(targets=[t("r1", url=P.url)]), P
    yield "no-targets", ReplicationConfig(targets=[]), P
    yield "min-sync-over-replicas", ReplicationConfig(
        mode=ReplicationMode.SEMI_SYNC, min_sync_replicas=3, targets=[t("r1"), t("r2")]), P
    yield "min-sync-zero", ReplicationConfig(min_sync_replicas=0, targets=[t("r1")]), P
    yield "sync-timeout-nan", ReplicationConfig(
        targets=[t("r1", sync_timeout_seconds=math.nan)]), P
    yield "sync-timeout-zero", ReplicationConfig(targets=[t("r1", sync_timeout_seconds=0.0)]), P
    yield "health-interval-inf", ReplicationConfig(
        targets=[t("r1")], health_check_interval_seconds=math.inf), P
    yield "retry-delay-below-1ms", ReplicationConfig(
        targets=[t("r1", retry_delay_seconds=1e-9)]), P
    yield "grace-over-a-year", ReplicationConfig(
        targets=[t("r1")], shutdown_grace_seconds=1e20), P
    yield "retention-negative", ReplicationConfig(targets=[t("r1")], retention_seconds=-1.0), P
    yield "lag-below-1ms", ReplicationConfig(targets=[t("r1")], max_replication_lag_ms=0.5), P
    yield "header-timeout-zero", ReplicationConfig(
        targets=[t("r1")], request_header_timeout_seconds=0.0), P
    yield "unknown-scheme", ReplicationConfig(targets=[t("r1", url="ftp://host/x")]), P
    yield "not-a-url", ReplicationConfig(targets=[t("r1", url="just/a/path")]), P
    yield "file-url-with-host", ReplicationConfig(targets=[t("r1", url="file://host/x")]), P
    yield "s3-without-bucket", ReplicationConfig(targets=[t("r1", url="s3:///prefix")]), P
    yield "memory-primary", ReplicationConfig(targets=[t("r1")]), t("p", url="memory://")
    yield "missing-token-file", ReplicationConfig(
        targets=[t("r1")], auth_token_file=str(tmp / "no-such-token")), P
    yield "open-listen-without-token", ReplicationConfig(
        targets=[t("r1")], listen="0.0.0.0:7600"), P
    yield "listen-not-an-address", ReplicationConfig(
        targets=[t("r1")], listen="localhost:7600"), P
    yield "bad-target-name", ReplicationConfig(
        targets=[ReplicaTarget("us west", file_url(d / "r1"), "local")]), P
    yield "retry-attempts-zero", ReplicationConfig(targets=[t("r1", max_retry_attempts=0)]), P
    yield "unknown-s3-option", ReplicationConfig(
        targets=[t("r1", url="s3://bucket/x", options={"endpont": "http://127.0.0.1:1"})]), P
    yield "unknown-file-option", ReplicationConfig(
        targets=[t("r1", options={"fsnyc": "false"})]), P
    yield "memory-with-options", ReplicationConfig(
        targets=[t("r1", url="memory://", options={"x": "y"})]), P
    yield "max-object-bytes-zero", ReplicationConfig(targets=[t("r1")], max_object_bytes=0), P
    yield "max-connections-zero", ReplicationConfig(targets=[t("r1")], max_connections=0), P
    yield "many-at-once", ReplicationConfig(
        mode=ReplicationMode.SYNC, min_sync_replicas=5, listen="0.0.0.0:1",
        health_check_interval_seconds=-1.0,
        targets=[t("a", sync_timeout_seconds=math.inf), t("a", url="gs:///x"),
                 t("c", url=P.url, max_retry_attempts=0)]), t("p", url="memory://")


BAD_IDS = [i for i, _, _ in _bad_configs(Path("/x"))]


@pytest.mark.parametrize("case", BAD_IDS)
def test_validate_and_check_config_refuse_the_same_config_naming_the_same_fields(
    case, walship_bin, tmp_path
):
    cfg, primary = next((c, p) for i, c, p in _bad_configs(tmp_path) if i == case)
    with pytest.raises(ConfigError) as e:
        cfg.validate(primary, base_dir=tmp_path)
    path = tmp_path / "walship.toml"
    cfg.to_toml(primary=primary, data_dir=str(tmp_path / "data"), path=path, validate=False)
    rc, lines = check_config(walship_bin, path)
    assert rc == 2, f"check-config accepted what validate() refused: {e.value}\n{lines}"
    fields = [line.split(": ", 1)[0] for line in lines]
    assert sorted(e.value.fields) == sorted(fields), (
        f"validate():\n{e.value}\ncheck-config:\n" + "\n".join(lines))


def _good_configs(tmp: Path):
    d = tmp / "stores"

    def t(name, **kw):
        return ReplicaTarget(name=name, url=file_url(d / name), region="local", **kw)

    token = tmp / "token"
    token.write_text("secret\n")
    yield "minimal", ReplicationConfig(targets=[t("r1")]), t("p")
    yield "edges", ReplicationConfig(
        targets=[t("r1", sync_timeout_seconds=0.001, retry_delay_seconds=0.0),
                 t("r2", sync_timeout_seconds=31536000.0)],
        retention_seconds=0.0, shutdown_grace_seconds=0.0, max_replication_lag_ms=1.0,
        mode="semi_sync", min_sync_replicas=2), t("p")
    yield "open-listen-with-token", ReplicationConfig(
        targets=[t("r1")], listen="0.0.0.0:7600", auth_token_file=str(token)), t("p")
    yield "open-listen-allowed", ReplicationConfig(
        targets=[t("r1")], listen="[::]:7600", allow_unauthenticated=True), t("p")
    yield "ipv6-loopback", ReplicationConfig(targets=[t("r1")], listen="[::1]:7600"), t("p")
    yield "memory-replicas", ReplicationConfig(
        targets=[ReplicaTarget("m1", "memory://", "x"), ReplicaTarget("m2", "memory://", "y")]
    ), t("p")
    yield "s3-and-file-options", ReplicationConfig(targets=[
        ReplicaTarget("s3", "s3://bucket/prefix", "us", options={
            "endpoint": "http://127.0.0.1:9000", "allow_http": True, "aws_region": "us-east-1",
            "virtual_hosted_style_request": "false", "timeout": "5s"}),
        t("f", options={"fsync": "false"}),
    ]), t("p")


GOOD_IDS = ["minimal", "edges", "open-listen-with-token", "open-listen-allowed", "ipv6-loopback",
            "memory-replicas", "s3-and-file-options"]


@pytest.mark.parametrize("case", GOOD_IDS)
def test_validate_and_check_config_accept_the_same_config(case, walship_bin, tmp_path):
    cfg, primary = next((c, p) for i, c, p in _good_configs(tmp_path) if i == case)
    cfg.validate(primary, base_dir=tmp_path)
    path = tmp_path / "walship.toml"
    cfg.to_toml(primary=primary, data_dir="data", path=path)
    rc, lines = check_config(walship_bin, path)
    assert rc == 0, "\n".join(lines)
