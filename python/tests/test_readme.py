"""python/README.md's Quick Start runs as written (on a free port instead of 7600)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
from pathlib import Path

from conftest import _http_ok, check_config, clean_env, free_port, skip_or_fail, wait_until

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def run(code: str, where: Path) -> str:
    out = io.StringIO()
    old = os.getcwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(old)
    return out.getvalue()


def test_the_quick_start_runs_as_written(walship_bin, tmp_path):
    config_block, client_block, truthound_block = python_blocks()[:3]
    run(config_block, tmp_path)
    toml = tmp_path / "walship.toml"
    rc, lines = check_config(walship_bin, toml)
    assert rc == 0, lines
    addr = f"127.0.0.1:{free_port()}"
    text = toml.read_text()
    assert 'listen = "127.0.0.1:7600"' in text
    toml.write_text(text.replace('listen = "127.0.0.1:7600"', f'listen = "{addr}"'))
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(walship_bin), "serve", "--config", str(toml)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    log.close()
    try:
        wait_until(lambda: proc.poll() is None and _http_ok(f"http://{addr}/healthz"), 30,
                   "the Quick Start's sidecar")
        out = run(client_block.replace("127.0.0.1:7600", addr), tmp_path)
        assert "validations/run-1.json" in out and "'writes_to_primary': 2" in out, out
        assert (tmp_path / "walship-data").is_dir()
        assert (tmp_path / "stores" / "replica-west" / "validations" / "run-2.json").is_file()
        try:
            import truthound  # noqa: F401
        except ImportError:
            skip_or_fail("truthound is not installed: the Quick Start's truthound part did not run")
        out = run(truthound_block.replace("127.0.0.1:7600", addr), tmp_path)
        assert "success" in out and "run-2026-11-26" in out, out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
