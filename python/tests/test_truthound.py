"""truthound 3.2.0: the names match the seed itself; get_store("walship", ...)
works as a ValidationStore; a replica bucket stays readable by truthound's
own S3 store."""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import datetime, timedelta

import pytest

import walship
from conftest import caught_up, file_url, skip_or_fail, wait_until
from walship import ReplicaTarget, ReplicationConfig, ReplicationMode


@pytest.fixture(scope="module")
def truthound():
    try:
        import truthound  # noqa: F401
        import truthound.stores.replication.base  # noqa: F401
    except ImportError as e:
        skip_or_fail(f"truthound is not installed (python/run-tests.sh installs 3.2.0): {e}")
    import truthound

    if truthound.__version__ != "3.2.0":
        skip_or_fail(f"these tests pin truthound 3.2.0, found {truthound.__version__}")
    return truthound


def result(run_id: str, asset: str, status: str, when: datetime, **tags: str):
    from truthound.stores.results import ResultStatistics, ResultStatus, ValidationResult

    return ValidationResult(
        run_id=run_id, run_time=when, data_asset=asset, status=ResultStatus(status),
        statistics=ResultStatistics(total_validators=3, passed_validators=2, total_rows=100),
        tags=dict(tags), metadata={"by": "walship tests"},
    )


def test_names_match_the_seed_member_for_member(truthound):
    from truthound.stores.replication import base as seed

    for name in ("ReplicationMode", "ReadPreference", "ConflictResolution", "ReplicaHealth",
                 "ReplicaState"):
        ours, theirs = getattr(walship, name), getattr(seed, name)
        assert [(m.name, m.value) for m in ours] == [(m.name, m.value) for m in theirs], name

    def defaults(cls, skip=()):
        out = {}
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            if f.default is not dataclasses.MISSING:
                v = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                v = f.default_factory()  # type: ignore[misc]
            else:
                v = "<required>"
            out[f.name] = v.value if hasattr(v, "value") else v
        return out

    ours = defaults(walship.ReplicaTarget, skip={"url", "options"})
    theirs = defaults(seed.ReplicaTarget, skip={"store"})
    assert ours == theirs
    ours = defaults(walship.ReplicationConfig)
    theirs = defaults(seed.ReplicationConfig)
    assert {k: ours[k] for k in theirs} == theirs
    assert list(ours)[: len(theirs)] == list(theirs)  # same order
    ours = defaults(walship.ReplicationMetrics, skip={"_server_success_rate", "_server_average_ms"})
    assert ours == defaults(seed.ReplicationMetrics)
    for method in ("record_primary_write", "record_replication_success",
                   "record_replication_failure", "record_conflict", "record_failover",
                   "update_lag", "get_replica_success_rate", "get_average_replication_time",
                   "to_dict"):
        assert callable(getattr(walship.ReplicationMetrics, method))
    for method in ("mark_healthy", "mark_degraded", "mark_unhealthy", "mark_syncing", "pause",
                   "resume"):
        assert callable(getattr(walship.ReplicaTarget, method))
    assert set(walship.ReplicationMetrics().to_dict()) == set(seed.ReplicationMetrics().to_dict())


@pytest.fixture
def sidecar(serve, tmp_path):
    d = tmp_path / "stores"
    primary = ReplicaTarget("primary", file_url(d / "primary"), "us-east-1")
    cfg = ReplicationConfig(
        mode=ReplicationMode.ASYNC,
        targets=[ReplicaTarget("replica", file_url(d / "replica"), "us-west-2")],
    )
    return serve(cfg, primary)


def test_get_store_walship_saves_gets_lists_queries_and_deletes(truthound, sidecar, tmp_path):
    import walship.truthound as wt
    from truthound.stores import StoreQuery, get_store
    from truthound.stores.base import StoreNotFoundError

    store = get_store("walship", addr=sidecar.addr, mode="sync", read_preference="secondary")
    assert isinstance(store, wt.WalshipStore)
    assert store.config.mode == "sync" and store.config.read_preference == "secondary"
    t = datetime(2026, 11, 26, 10, 0, 0)
    runs = [
        result("run-a", "customers.csv", "success", t, team="core"),
        result("run-b", "customers.csv", "failure", t + timedelta(hours=1), team="core"),
        result("run-c", "orders.csv", "success", t + timedelta(hours=2), team="ops"),
    ]
    for r in runs:
        assert store.save(r) == r.run_id
    got = store.get("run-b")
    assert got.to_dict() == runs[1].to_dict()
    assert store.exists("run-a") and not store.exists("run-zzz")
    assert sorted(store.list_ids()) == ["run-a", "run-b", "run-c"]
    assert store.list_ids(StoreQuery(data_asset="customers.csv")) == ["run-b", "run-a"]
    assert store.list_ids(StoreQuery(ascending=True, limit=2)) == ["run-a", "run-b"]
    assert store.list_ids(StoreQuery(tags={"team": "ops"})) == ["run-c"]
    assert [r.run_id for r in store.query(StoreQuery(status="success"))] == ["run-c", "run-a"]
    assert store.get_latest("customers.csv").run_id == "run-b"
    assert [r.run_id for r in store.get_failures()] == ["run-b"]

    # Laid out as truthound's S3 store lays it out, gzip and index included.
    with sidecar.client() as c:
        keys = [k.key for k in c.list("truthound/")]
        assert keys == ["truthound/default/_index.json",
                        "truthound/default/results/run-a.json.gz",
                        "truthound/default/results/run-b.json.gz",
                        "truthound/default/results/run-c.json.gz"]
        raw = c.get("truthound/default/results/run-a.json.gz").data
        assert json.loads(gzip.decompress(raw)) == json.loads(
            json.dumps(runs[0].to_dict(), default=str))
        index = json.loads(c.get("truthound/default/_index.json").data)
        assert index["run-c"] == {"data_asset": "orders.csv", "run_time": runs[2].run_time.isoformat(),
                                  "status": "success",
                                  "key": "truthound/default/results/run-c.json.gz",
                                  "tags": {"team": "ops"}}
        # sync mode: the replica holds the result when save returns.
        replica = tmp_path / "stores" / "replica" / "truthound/default/results/run-c.json.gz"
        assert replica.read_bytes() == c.get("truthound/default/results/run-c.json.gz").data

    # A second store (another process, say) sees the first one's results.
    other = get_store("walship", addr=sidecar.addr)
    assert sorted(other.list_ids()) == ["run-a", "run-b", "run-c"]

    assert store.delete("run-a") is True
    assert store.delete("run-a") is False
    assert not store.exists("run-a")
    with pytest.raises(StoreNotFoundError):
        store.get("run-a")
    assert sorted(other.list_ids()) == ["run-b", "run-c"]
    # Namespaces stay apart.
    ns = get_store("walship", addr=sidecar.addr, namespace="staging")
    assert ns.list_ids() == []
    ns.save(result("run-s", "x.csv", "warning", t))
    assert ns.list_ids() == ["run-s"] and "run-s" not in store.list_ids()
    store.close()
    other.close()
    ns.close()


def test_a_result_saved_through_walship_is_read_by_truthounds_s3_store_from_a_replica_bucket(
    truthound, moto, serve, tmp_path, monkeypatch
):
    from truthound.stores import StoreQuery, get_store

    s3 = moto.s3()
    s3.create_bucket(Bucket="replica-bucket")
    primary = ReplicaTarget("us-east-1", file_url(tmp_path / "stores" / "primary"), "us-east-1")
    cfg = ReplicationConfig(
        mode=ReplicationMode.SEMI_SYNC,
        min_sync_replicas=1,
        targets=[ReplicaTarget("us-west-2", "s3://replica-bucket", "us-west-2",
                               options=moto.options(), sync_timeout_seconds=10.0)],
    )
    s = serve(cfg, primary)
    store = get_store("walship", addr=s.addr, prefix="validations/")
    t = datetime(2026, 11, 26, 12, 0, 0)
    saved = [result("run-1", "customers.csv", "success", t),
             result("run-2", "customers.csv", "failure", t + timedelta(minutes=5), env="prod")]
    for r in saved:
        store.save(r)
    with s.client() as c:
        wait_until(lambda: caught_up(c), 30, "the S3 replica to catch up")
    store.close()
    s.stop()  # the sidecar and its primary are gone; the replica bucket remains

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    reader = get_store("s3", bucket="replica-bucket", prefix="validations/",
                       endpoint_url=moto.endpoint, region="us-east-1")
    assert type(reader).__name__ == "S3Store"
    assert reader.get("run-2").to_dict() == saved[1].to_dict()
    assert sorted(reader.list_ids()) == ["run-1", "run-2"]
    assert reader.list_ids(StoreQuery(tags={"env": "prod"})) == ["run-2"]
    assert reader.exists("run-1")
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="replica-bucket")["Contents"])
    assert "validations/default/results/run-1.json.gz" in listed
    assert "validations/default/_index.json" in listed
