"""The seed's own examples (truthound's replication guide: Quick Start,
Multi-Region HA, Read Scaling, Disaster Recovery) with this package: validate,
write the TOML, check it, serve it, write and read through it.

The seed's stores are S3 buckets in regions; here each is a local directory
(test_truthound.py runs an s3:// replica on moto), so what reached a replica
can be read straight from its directory.
"""

from __future__ import annotations

from pathlib import Path

from conftest import caught_up, check_config, file_url, wait_until
from walship import (
    ConflictResolution,
    ReadPreference,
    ReplicaTarget,
    ReplicationConfig,
    ReplicationMode,
)


def store(tmp: Path, name: str) -> str:
    return file_url(tmp / "stores" / name)


def on_disk(tmp: Path, target: str, key: str) -> bytes | None:
    p = tmp / "stores" / target / key
    return p.read_bytes() if p.is_file() else None


def write_check_serve(serve, walship_bin, tmp_path, config, primary):
    config.validate(primary)
    path = tmp_path / "checked.toml"
    config.to_toml(primary=primary, data_dir=tmp_path / "data", path=path)
    rc, lines = check_config(walship_bin, path)
    assert rc == 0, lines
    return serve(config, primary)


def test_quick_start(serve, walship_bin, tmp_path):
    primary = ReplicaTarget(name="us-east-1", url=store(tmp_path, "primary-bucket"),
                            region="us-east-1")
    config = ReplicationConfig(
        mode=ReplicationMode.ASYNC,
        targets=[
            ReplicaTarget(name="us-west-2", url=store(tmp_path, "replica-west"),
                          region="us-west-2", priority=1),
            ReplicaTarget(name="eu-west-1", url=store(tmp_path, "replica-eu"),
                          region="eu-west-1", priority=2),
        ],
        data_dir=str(tmp_path / "data"),
    )
    s = write_check_serve(serve, walship_bin, tmp_path, config, primary)
    with s.client() as c:
        ack = c.put("validations/run-1.json", b'{"ok": true}')
        assert ack.mode == "async" and "us-east-1" in ack.acked_by
        got = c.get("validations/run-1.json")
        assert got.data == b'{"ok": true}' and got.seq == ack.seq
        assert got.served_by == "us-east-1"  # read_preference PRIMARY
        wait_until(lambda: caught_up(c), 20, "both replicas to catch up")
        status = c.status()
        assert status["mode"] == "async"
        assert [(t["name"], t["region"]) for t in status["targets"]] == [
            ("us-east-1", "us-east-1"), ("us-west-2", "us-west-2"), ("eu-west-1", "eu-west-1")]
    for target in ("primary-bucket", "replica-west", "replica-eu"):
        assert on_disk(tmp_path, target, "validations/run-1.json") == b'{"ok": true}'


def test_multi_region_ha(serve, walship_bin, tmp_path):
    primary = ReplicaTarget(name="us-east-1", url=store(tmp_path, "bucket-east"),
                            region="us-east-1")
    config = ReplicationConfig(
        mode=ReplicationMode.SEMI_SYNC,
        min_sync_replicas=1,  # at least 1 replica must ack
        targets=[
            ReplicaTarget(name="us-west-2", url=store(tmp_path, "bucket-west"),
                          region="us-west-2", priority=1),
            ReplicaTarget(name="eu-west-1", url=store(tmp_path, "bucket-eu"),
                          region="eu-west-1", priority=2),
        ],
        read_preference=ReadPreference.NEAREST,
        enable_failover=True,
        max_replication_lag_ms=5000.0,
    )
    s = write_check_serve(serve, walship_bin, tmp_path, config, primary)
    with s.client() as c:
        for i in range(5):
            ack = c.put(f"ha/{i}", f"value {i}".encode())
            assert ack.mode == "semi_sync"
            replicas = set(ack.acked_by) & {"us-west-2", "eu-west-1"}
            assert "us-east-1" in ack.acked_by and len(replicas) >= 1, ack
            # The acknowledging replica holds the bytes when the write returns.
            for r in replicas:
                name = {"us-west-2": "bucket-west", "eu-west-1": "bucket-eu"}[r]
                assert on_disk(tmp_path, name, f"ha/{i}") == f"value {i}".encode()
        for i in range(5):
            got = c.get(f"ha/{i}")  # NEAREST: any target that has the latest entry
            assert got.data == f"value {i}".encode()
            assert got.served_by in {"us-east-1", "us-west-2", "eu-west-1"}
        status = c.status()
        assert status["failover"]["enabled"] is True and status["mode"] == "semi_sync"


def test_read_scaling(serve, walship_bin, tmp_path):
    primary = ReplicaTarget(name="primary", url=store(tmp_path, "primary"), region="us-east-1")
    config = ReplicationConfig(
        mode=ReplicationMode.ASYNC,
        targets=[
            ReplicaTarget(name="read-replica-1", url=store(tmp_path, "read-1"),
                          region="us-east-1", is_read_replica=True),
            ReplicaTarget(name="read-replica-2", url=store(tmp_path, "read-2"),
                          region="us-east-1", is_read_replica=True),
        ],
        read_preference=ReadPreference.SECONDARY,
    )
    s = write_check_serve(serve, walship_bin, tmp_path, config, primary)
    with s.client() as c:
        roles = {t["name"]: t["role"] for t in c.cursors()["targets"]}
        assert roles == {"primary": "primary", "read-replica-1": "read_replica",
                         "read-replica-2": "read_replica"}
        for i in range(10):
            c.put(f"scale/{i}", bytes([i]) * 100)
        wait_until(lambda: caught_up(c), 20, "the read replicas to catch up")
        served = set()
        for i in range(10):
            got = c.get(f"scale/{i}")  # SECONDARY: a read replica once it caught up
            assert got.data == bytes([i]) * 100
            served.add(got.served_by)
        assert served <= {"read-replica-1", "read-replica-2"} and served, served
        # Per call, the primary.
        assert c.get("scale/0", read_preference="primary").served_by == "primary"


def test_disaster_recovery(serve, walship_bin, tmp_path):
    primary = ReplicaTarget(name="primary", url=store(tmp_path, "primary"), region="us-east-1")
    config = ReplicationConfig(
        mode=ReplicationMode.SYNC,  # strong consistency
        targets=[
            ReplicaTarget(name="dr-site", url=store(tmp_path, "dr"), region="us-west-2",
                          priority=1, sync_timeout_seconds=60.0, max_retry_attempts=5),
        ],
        conflict_resolution=ConflictResolution.PRIMARY_WINS,
        enable_health_checks=True,
        health_check_interval_seconds=10.0,
    )
    s = write_check_serve(serve, walship_bin, tmp_path, config, primary)
    with s.client() as c:
        for i in range(5):
            ack = c.put(f"dr/{i}", f"critical {i}".encode())
            # sync: the DR site holds every acknowledged write when it returns.
            assert ack.mode == "sync" and {"primary", "dr-site"} <= set(ack.acked_by)
            assert on_disk(tmp_path, "dr", f"dr/{i}") == f"critical {i}".encode()
        ack = c.delete("dr/0")
        assert "dr-site" in ack.acked_by and on_disk(tmp_path, "dr", "dr/0") is None
        assert [k.key for k in c.list("dr/")] == ["dr/1", "dr/2", "dr/3", "dr/4"]
