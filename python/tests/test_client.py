"""The client against a real sidecar: objects, listing, modes, reads, errors,
tokens, connection reuse, timeouts, state changes, quorum timeouts."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import caught_up, cursor_of, file_url, wait_until
from walship import (
    BadRequest,
    Client,
    Conflict,
    NotFound,
    QuorumTimeout,
    ReplicaTarget,
    ReplicationConfig,
    TooLarge,
    Unauthorized,
    WalshipConnectionError,
    WalshipTimeout,
)


def three_dirs(tmp: Path, **replica_kw) -> tuple[ReplicationConfig, ReplicaTarget]:
    d = tmp / "stores"
    primary = ReplicaTarget("p", file_url(d / "p"), "here")
    cfg = ReplicationConfig(
        targets=[ReplicaTarget("r1", file_url(d / "r1"), "here"),
                 ReplicaTarget("r2", file_url(d / "r2"), "there", **replica_kw)],
        health_check_interval_seconds=0.2,
    )
    return cfg, primary


@pytest.fixture
def sidecar(serve, tmp_path):
    cfg, primary = three_dirs(tmp_path)
    cfg.max_object_bytes = 1024
    return serve(cfg, primary)


def test_put_get_exists_delete(sidecar):
    with sidecar.client() as c:
        a = c.put("dir/a b%?#.txt", b"one")
        b = c.put("dir/a b%?#.txt", "two")  # str is sent as UTF-8
        assert b.seq == a.seq + 1 and b.mode == "async"
        got = c.get("dir/a b%?#.txt")
        assert (got.data, got.seq, got.served_by) == (b"two", b.seq, "p")
        assert c.exists("dir/a b%?#.txt") and not c.exists("dir/nothing")
        assert [k.key for k in c.list("dir/")] == ["dir/a b%?#.txt"]
        d = c.delete("dir/a b%?#.txt")
        assert d.seq == b.seq + 1
        with pytest.raises(NotFound) as e:
            c.get("dir/a b%?#.txt")
        assert "dir/a b%?#.txt" in e.value.message and e.value.status == 404
        assert not c.exists("dir/a b%?#.txt")
        assert c.list("dir/") == []
        assert c.log(from_seq=a.seq)["head"] == d.seq


def test_list_returns_every_page_in_key_order(sidecar):
    with sidecar.client() as c:
        keys = [f"many/{i:03d}" for i in range(23)]
        for k in reversed(keys):
            c.put(k, k.encode())
        c.put("other/x", b"x")
        c.delete("many/005")
        want = [k for k in keys if k != "many/005"]
        for page in (1, 4, 22, 1000):
            listed = c.list("many/", page_size=page)
            assert [k.key for k in listed] == want, page
        info = {k.key: k for k in c.list("many/", page_size=3)}
        assert info["many/000"].size == len(b"many/000")
        assert info["many/000"].seq > info["many/022"].seq  # written in reverse
        assert len(c.keys()) == len(want) + 1


def test_mode_and_read_preference_per_call(sidecar):
    with sidecar.client() as c:
        ack = c.put("m/sync", b"s", mode="sync")
        assert ack.mode == "sync" and set(ack.acked_by) == {"p", "r1", "r2"}
        assert c.put("m/semi", b"s", mode="semi_sync").mode == "semi_sync"
        assert c.put("m/async", b"a").mode == "async"
        got = c.get("m/sync", read_preference="secondary")
        assert got.served_by in {"r1", "r2"} and got.data == b"s"
        assert c.get("m/sync", read_preference="primary").served_by == "p"
        with pytest.raises(ValueError):
            c.put("m/x", b"x", mode="quorum")
    with sidecar.client(mode="sync", read_preference="secondary") as c:
        ack = c.put("m/default-sync", b"d")
        assert ack.mode == "sync" and {"r1", "r2"} <= set(ack.acked_by)
        assert c.get("m/default-sync").served_by in {"r1", "r2"}


def test_errors_carry_the_sidecars_message(sidecar):
    with sidecar.client() as c:
        with pytest.raises(BadRequest) as e:
            c.put("a/../b", b"x")
        assert e.value.status == 400 and ".." in e.value.message
        with pytest.raises(TooLarge) as e:
            c.put("big", b"x" * 1025)
        assert e.value.status == 413 and "1024" in e.value.message
        with pytest.raises(NotFound) as e:
            c.pause("no-such-target")
        assert "no-such-target" in e.value.message
        with pytest.raises(Conflict) as e:
            c.pause("p")
        assert "acting primary" in e.value.message
        with pytest.raises(BadRequest) as e:
            c.log(limit=0)
        assert "limit" in e.value.message
        # Nothing of the refused writes reached the log.
        assert c.cursors()["head"] == 0


def test_a_token_is_required_when_configured(serve, tmp_path):
    cfg, primary = three_dirs(tmp_path)
    token = tmp_path / "token"
    token.write_text("s3cr3t\n")
    cfg.auth_token_file = str(token)
    s = serve(cfg, primary)
    with pytest.raises(Unauthorized) as e:
        Client(s.addr).put("k", b"v")
    assert "token" in e.value.message
    with pytest.raises(Unauthorized):
        Client(s.addr, token="wrong").status()
    assert Client(s.addr, token="s3cr3t").put("k", b"v").seq == 1
    assert Client(s.addr, token_file=token).get("k").data == b"v"
    old = os.environ.get("WALSHIP_TOKEN")
    os.environ["WALSHIP_TOKEN"] = "s3cr3t"
    try:
        assert Client(s.addr).exists("k")
    finally:
        if old is None:
            del os.environ["WALSHIP_TOKEN"]
        else:
            os.environ["WALSHIP_TOKEN"] = old


def test_requests_reuse_one_connection_per_thread(sidecar):
    c = sidecar.client()
    c.put("reuse/0", b"0")
    sock = c._local.conn.sock
    local = sock.getsockname()
    for i in range(1, 30):
        c.put(f"reuse/{i}", b"x")
        c.get(f"reuse/{i}")
        c.exists(f"reuse/{i}")
    assert c._local.conn.sock is sock and sock.getsockname() == local
    assert len(c._all) == 1
    # Other threads get connections of their own.
    seen = []

    def work():
        c.put(f"reuse/t/{threading.get_ident()}", b"t")
        seen.append(c._local.conn.sock.getsockname())

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 3 and local not in seen and len(c._all) == 4
    # A connection the server dropped is reopened transparently.
    c._local.conn.sock.shutdown(socket.SHUT_RDWR)
    assert c.get("reuse/0").data == b"0"
    c.close()
    assert c._all == []


def test_timeouts_and_unreachable_sidecars():
    # A listener that never answers: the request times out in time.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        c = Client(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(WalshipTimeout):
            c.status()
        assert time.monotonic() - t0 < 5
        with pytest.raises(WalshipTimeout):
            c.put("k", b"v", timeout=0.1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WalshipConnectionError):
        Client(f"127.0.0.1:{port}", timeout=2).status()
    with pytest.raises(ValueError):
        Client("ftp://x")


def test_pause_resume_resync_replay(sidecar, tmp_path):
    with sidecar.client() as c:
        c.put("s/1", b"1", mode="sync")
        assert c.pause("r2")["state"] == "paused"
        # sync waits for every replica that is not paused.
        ack = c.put("s/2", b"2", mode="sync")
        assert "r2" not in ack.acked_by and "r1" in ack.acked_by
        assert cursor_of(c, "r2") == 1
        state = {t["name"]: t["state"] for t in c.cursors()["targets"]}
        assert state["r2"] == "paused"
        assert c.resume("r2")["state"] == "active"
        wait_until(lambda: cursor_of(c, "r2") == ack.seq, 20, "r2 to catch up after resume")
        plan = c.replay("r2", from_seq=1)
        assert cursor_of(c, "r2") == ack.seq  # a plan only
        assert plan
        c.replay("r2", from_seq=1, execute=True)
        wait_until(lambda: cursor_of(c, "r2") == ack.seq, 20, "r2 to ship the replay")
        assert (tmp_path / "stores" / "r2" / "s" / "2").read_bytes() == b"2"
        r = c.resync("r1")
        assert r["state"] == "syncing"
        wait_until(lambda: caught_up(c) and all(
            t["state"] == "active" for t in c.cursors()["targets"]), 30, "the resync to finish")
        with pytest.raises(ValueError):
            c.replay("r2")


def test_quorum_timeout_when_a_replica_cannot_take_the_write(serve, tmp_path):
    cfg, primary = three_dirs(tmp_path, sync_timeout_seconds=1.0, retry_delay_seconds=0.05,
                              max_retry_attempts=2)
    # Short timeouts everywhere: this sidecar bounds a write's wait by the
    # largest sync_timeout_seconds of the targets it waits for.
    primary.sync_timeout_seconds = 1.0
    cfg.targets[0].sync_timeout_seconds = 1.0
    s = serve(cfg, primary)
    r2 = tmp_path / "stores" / "r2"
    with s.client() as c:
        first = c.put("q/0", b"0", mode="sync")
        assert set(first.acked_by) == {"p", "r1", "r2"}
        # The replica's directory is replaced by a file: it cannot hold anything.
        r2.rename(tmp_path / "r2.away")
        r2.write_bytes(b"not a directory")
        t0 = time.monotonic()
        with pytest.raises(QuorumTimeout) as e:
            c.put("q/1", b"1", mode="sync")
        waited = time.monotonic() - t0
        err = e.value
        assert err.status == 504 and isinstance(err.seq, int)
        assert err.seq == first.seq + 1 == c.cursors()["head"]
        assert err.acked < err.required
        assert {"p", "r1"} <= set(err.acked_by) and "r2" not in err.acked_by
        assert f"seq {err.seq}" in err.message and "durable" in err.message
        assert waited < 10, waited  # bounded by sync_timeout_seconds, not the client's 60 s
        # Durable and served all the same; the other replica has it.
        assert c.get("q/1").data == b"1"
        assert (tmp_path / "stores" / "r1" / "q" / "1").read_bytes() == b"1"
        # An async write is not held up by the broken replica.
        assert c.put("q/2", b"2").mode == "async"
        # Once the replica can take writes again it gets the entry: nothing rolled back.
        r2.unlink()
        try:
            (tmp_path / "r2.away").rename(r2)
        except OSError as gone:
            # walship's retry made the directory anew first, and ships into it.
            if gone.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        wait_until(lambda: cursor_of(c, "r2") >= err.seq + 1, 60, "r2 to catch up")
        assert (r2 / "q" / "1").read_bytes() == b"1"


def test_a_connection_the_sidecar_closed_while_idle_is_reopened(serve, tmp_path):
    cfg, primary = three_dirs(tmp_path)
    cfg.request_header_timeout_seconds = 0.3  # idle keep-alive connections are cut off
    s = serve(cfg, primary)
    with s.client() as c:
        for i in range(3):
            c.put(f"idle/{i}", b"v")
            time.sleep(0.8)
            assert c.get(f"idle/{i}").data == b"v"
        assert len(c._all) == 1
