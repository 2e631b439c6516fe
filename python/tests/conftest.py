"""Fixtures: the real walship binary, sidecars on free loopback ports, moto.

The binary comes from ``WALSHIP_BIN``, else ``<repo>/target/debug/walship``;
it is copied to a temporary path once per session (the tree's binary may be
rebuilt meanwhile). A test whose tool is missing skips with the reason, and
fails instead when ``CI=true``.
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
