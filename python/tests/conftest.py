"""Fixtures: the real walship binary, sidecars on free loopback ports, moto.

The binary comes from ``WALSHIP_BIN``, else ``<repo>/target/debug/walship``;
it is copied to a temporary path once per session (the tree's binary may be
rebuilt meanwhile). A test whose tool is missing skips with the reason, and
fails instead when ``CI=true``. ``s3_sidecar`` starts a sidecar with its S3
API on (:class:`S3Sidecar`: endpoint, HTTP port, target dirs, pid, kill -9,
restart).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

from walship import Client, ReplicaTarget, ReplicationConfig

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Skips with ``reason``; in CI (``CI=true``) fails instead."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test may not be skipped)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], object], timeout: float, what: str, every: float = 0.05):
    """Polls ``pred`` until it returns something truthy; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (
        f" (last error: {last_exc!r})" if last_exc else ""))


def clean_env() -> dict[str, str]:
    """The environment without WALSHIP_* (which would override the config)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WALSHIP_")}


@pytest.fixture(scope="session")
def walship_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = Path(os.environ.get("WALSHIP_BIN") or REPO / "target" / "debug" / "walship")
    if not src.is_file():
        skip_or_fail(f"no walship binary at {src}: run `cargo build` or set WALSHIP_BIN")
    dst = tmp_path_factory.mktemp("bin") / "walship"
    shutil.copy2(src, dst)
    return dst


def check_config(walship_bin: Path, path: Path) -> tuple[int, list[str]]:
    """Runs ``walship check-config``; returns its exit status and the problem
    lines with the ``walship: FILE: `` prefix taken off."""
    r = subprocess.run(
        [str(walship_bin), "check-config", str(path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    lines = []
    for line in (r.stderr + r.stdout).splitlines():
        if line.startswith("walship: "):
            line = line[len("walship: "):]
        prefix = f"{path}: "
        if line.startswith(prefix):
            line = line[len(prefix):]
        if line.strip():
            lines.append(line)
    return r.returncode, lines


class Sidecar:
    """One ``walship serve`` process on a free 127.0.0.1 port."""

    def __init__(self, walship_bin: Path, workdir: Path, config: ReplicationConfig,
                 primary: ReplicaTarget) -> None:
        self.bin = walship_bin
        self.workdir = workdir
        self.primary = primary
        self.config = config
        self.config_path = workdir / "walship.toml"
        self.log_path = workdir / "serve.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.addr = ""

    def start(self) -> "Sidecar":
        for _attempt in range(3):
            self.addr = f"127.0.0.1:{free_port()}"
            cfg = replace(self.config, listen=self.addr)
            cfg.to_toml(primary=self.primary, path=self.config_path)
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(self.bin), "serve", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=self.workdir,
            )
            log.close()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                # Any answer: a sidecar with a token may want it on /healthz too.
                if _http_ok(f"http://{self.addr}/healthz", any_answer=True):
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.stop()
                raise AssertionError(f"walship serve did not answer in 30 s:\n{self.log()}")
            if "listening on" not in self.log():
                break
        raise AssertionError(f"walship serve exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, **kw) -> Client:
        return Client(self.addr, **kw)

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL after 20 s."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _http_ok(url: str, any_answer: bool = False) -> bool:
    """Whether ``url`` answers 200 (with ``any_answer``: answers at all)."""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return any_answer
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def serve(walship_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    """``serve(config, primary)`` starts a sidecar; all are stopped afterwards."""
    started: list[Sidecar] = []

    def start(config: ReplicationConfig, primary: ReplicaTarget, name: str = "sidecar") -> Sidecar:
        workdir = tmp_path / name
        workdir.mkdir(parents=True, exist_ok=True)
        s = Sidecar(walship_bin, workdir, config, primary)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


def file_url(path: Path) -> str:
    return "file://" + str(path.resolve())


def cursor_of(client: Client, name: str) -> int:
    return next(t["cursor"] for t in client.cursors()["targets"] if t["name"] == name)


def caught_up(client: Client) -> bool:
    c = client.cursors()
    return all(t["cursor"] == c["head"] for t in c["targets"] if t["state"] != "paused")


# ------------------------------------------------------------------ moto


class Moto:
    def __init__(self, proc: subprocess.Popen[bytes], endpoint: str) -> None:
        self.proc = proc
        self.endpoint = endpoint

    def s3(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )

    def options(self) -> dict[str, str]:
        """The walship target options for this server."""
        return {
            "endpoint": self.endpoint,
            "allow_http": "true",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "region": "us-east-1",
            "virtual_hosted_style_request": "false",
        }


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """A ``moto_server`` on a free 127.0.0.1 port, stopped by pid afterwards."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        skip_or_fail("boto3 is not installed (python/run-tests.sh installs it)")
    exe = os.environ.get("WALSHIP_MOTO_SERVER") or shutil.which("moto_server")
    if not exe:
        skip_or_fail("moto_server is not installed: pip install 'moto[server]==5.2.5'")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    log.close()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and _http_ok(endpoint + "/moto-api/"), 30,
                   "moto_server to answer")
        yield Moto(proc, endpoint)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# ------------------------------------------------------------ S3 front door

S3_ACCESS_KEY_ID = "walship"
S3_SECRET = "walship-tests-s3-secret-0123456789"
S3_REGION = "us-east-1"
S3_TARGETS = ("p", "r1", "r2")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class S3Sidecar:
    """``walship serve`` with ``[s3]`` on: a ``file://`` primary ``p`` and two
    ``file://`` replicas ``r1``, ``r2`` under ``workdir/stores``, mode ``sync``
    by default (so a 200 means every target holds the bytes), objects up to
    32 MiB, the replicas' ``sync_timeout_seconds`` as given.

    ``buckets`` are ``(name, mode or None)``; a bucket's prefix is the
    default ``NAME/``, so S3 key K of bucket B is the file
    ``stores/<target>/B/K`` (:meth:`target_file`).
    """

    def __init__(self, walship_bin: Path, workdir: Path, *, mode: str = "sync",
                 buckets: tuple[tuple[str, Optional[str]], ...] = (("results", None),
                                                                   ("fast", "async")),
                 max_object_bytes: int = 33554432, sync_timeout_seconds: float = 30.0,
                 allow_create_bucket: bool = False) -> None:
        self.bin = walship_bin
        self.allow_create_bucket = allow_create_bucket
        self.workdir = workdir
        self.mode = mode
        self.buckets = buckets
        self.max_object_bytes = max_object_bytes
        self.sync_timeout_seconds = sync_timeout_seconds
        self.stores = workdir / "stores"
        self.target_dirs = {n: self.stores / n for n in S3_TARGETS}
        self.config_path = workdir / "walship.toml"
        self.log_path = workdir / "serve.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.http_port = 0
        self.s3_port = 0
        self._log_from = 0
        (workdir / "s3-secret").write_text(S3_SECRET + "\n")

    # -- addresses
    @property
    def addr(self) -> str:
        """The HTTP API's address (for :class:`walship.Client`)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the sidecar is not running"
        return self.proc.pid

    # -- config
    def config_text(self) -> str:
        cfg = ReplicationConfig(
            mode=self.mode,
            targets=[ReplicaTarget(n, file_url(self.target_dirs[n]), region,
                                   sync_timeout_seconds=self.sync_timeout_seconds)
                     for n, region in (("r1", "here"), ("r2", "there"))],
            max_object_bytes=self.max_object_bytes,
        )
        primary = ReplicaTarget("p", file_url(self.target_dirs["p"]), "here")
        text = cfg.to_toml(primary=primary, listen=self.addr, path=None)
        text += "\n".join([
            "",
            "[s3]",
            f'listen = "127.0.0.1:{self.s3_port}"',
            f'access_key_id = "{S3_ACCESS_KEY_ID}"',
            'secret_access_key_file = "s3-secret"',
            f'region = "{S3_REGION}"',
            f'allow_create_bucket = {"true" if self.allow_create_bucket else "false"}',
        ])
        for name, mode in self.buckets:
            text += f'\n\n[[s3.buckets]]\nname = "{name}"'
            if mode:
                text += f'\nmode = "{mode}"'
        return text + "\n"

    # -- process
    def start(self, new_ports: bool = True) -> "S3Sidecar":
        """Starts ``walship serve`` and waits for ``/healthz`` and the S3 port.
        With ``new_ports=False`` (a restart) the same ports are tried first."""
        for attempt in range(3):
            if new_ports or attempt > 0 or not self.http_port:
                self.http_port, self.s3_port = free_port(), free_port()
                while self.s3_port == self.http_port:
                    self.s3_port = free_port()
            self.config_path.write_text(self.config_text())
            try:
                self._log_from = self.log_path.stat().st_size
            except FileNotFoundError:
                self._log_from = 0
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(self.bin), "serve", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=self.workdir,
            )
            log.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if (_http_ok(f"http://{self.addr}/healthz", any_answer=True)
                        and _port_open(self.s3_port)):
                    return self
                time.sleep(0.05)
            if self.proc.poll() is None:
                healthz = _http_ok(f"http://{self.addr}/healthz", any_answer=True)
                self.kill9()
                raise AssertionError(
                    f"walship serve did not answer in 60 s (/healthz answered: {healthz}; "
                    f"S3 port {self.s3_port} open: False):\n{self.log()}")
            if "in use" not in self.log():
                break
        raise AssertionError(f"walship serve exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        """This run's log (since the last start)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_from)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        """SIGKILL by pid (no drain, no cursor persisting)."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=20)

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL after 20 s."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)

    def restart(self) -> "S3Sidecar":
        """Stops the sidecar if it runs (SIGTERM) and starts it again on the
        same config and data dir, on the same ports when they are free."""
        self.stop()
        return self.start(new_ports=False)

    # -- clients
    def client(self, **kw) -> Client:
        """The HTTP API client."""
        return Client(self.addr, **kw)

    def s3(self, *, access_key_id: str = S3_ACCESS_KEY_ID, secret: str = S3_SECRET,
           max_attempts: int = 1, **config):
        """A boto3 S3 client on this endpoint: path style, region us-east-1,
        ``max_attempts`` attempts in all (default 1: no retries, so an error
        is the server's first answer); ``config`` goes to botocore's Config."""
        import boto3
        from botocore.config import Config

        opts = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4",
                "retries": {"mode": "standard", "total_max_attempts": max_attempts},
                "connect_timeout": 5, "read_timeout": 120}
        opts.update(config)
        cfg = Config(**opts)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=S3_REGION,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret, config=cfg)

    # -- targets
    def target_file(self, target: str, bucket: str, key: str) -> Path:
        """Where a ``file://`` target holds S3 key ``key`` of ``bucket``."""
        return self.target_dirs[target] / bucket / key

    def missing_on_targets(self, bucket: str, key: str, data: bytes) -> list[str]:
        """The targets that do not hold exactly ``data`` for the key, with why."""
        out = []
        for t in S3_TARGETS:
            f = self.target_file(t, bucket, key)
            if not f.is_file():
                out.append(f"{t}: no file {f}")
                continue
            got = f.read_bytes()
            if got != data:
                out.append(f"{t}: {f} holds {len(got)} bytes that differ from the "
                           f"{len(data)} written")
        return out

    def assert_on_every_target(self, bucket: str, key: str, data: bytes) -> None:
        bad = self.missing_on_targets(bucket, key, data)
        assert not bad, f"{bucket}/{key}: " + "; ".join(bad)

    def assert_on_no_target(self, bucket: str, key: str) -> None:
        there = [t for t in S3_TARGETS if self.target_file(t, bucket, key).exists()]
        assert not there, f"{bucket}/{key} is still on {there}"

    def wait_caught_up(self, timeout: float = 60) -> None:
        with self.client() as c:
            wait_until(lambda: caught_up(c), timeout, "every target to catch up")


@pytest.fixture
def s3_sidecar(walship_bin: Path, tmp_path: Path) -> Iterator[Callable[..., S3Sidecar]]:
    """``s3_sidecar(name="s3", mode="sync", buckets=..., max_object_bytes=...,
    sync_timeout_seconds=...)``
    starts an :class:`S3Sidecar` (needs boto3); all are stopped afterwards."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        skip_or_fail("boto3 is not installed (python/run-tests.sh installs it)")
    started: list[S3Sidecar] = []

    def start(name: str = "s3", **kw) -> S3Sidecar:
        workdir = tmp_path / name
        workdir.mkdir(parents=True, exist_ok=True)
        s = S3Sidecar(walship_bin, workdir, **kw)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()
