"""The top-level README's "Use it from any S3 client" runs as written: the
embedded default (``walship serve`` with no config) serves the S3 API, and
the section's aws CLI and boto3 examples work against it (on free ports
instead of 7600 and 7602)."""

from __future__ import annotations

import io
import contextlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from conftest import _http_ok, _port_open, clean_env, free_port, skip_or_fail, wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Use it from any S3 client")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_readme_s3_examples_run_as_written_on_the_embedded_default(walship_bin, tmp_path):
    if shutil.which("aws") is None:
        skip_or_fail("the aws CLI is not installed (pip install awscli)")
    sec = section()
    (sh,) = re.findall(r"```sh\n(.*?)```", sec, re.S)
    (py,) = re.findall(r"```python\n(.*?)```", sec, re.S)
    http_port, s3_port = free_port(), free_port()
    env = clean_env()
    env.update(WALSHIP_LISTEN=f"127.0.0.1:{http_port}", WALSHIP_S3_LISTEN=f"127.0.0.1:{s3_port}")
    shutil.copy(README, tmp_path / "README.md")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(walship_bin), "serve"], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_until(lambda: proc.poll() is None and _http_ok(f"http://127.0.0.1:{http_port}/healthz")
                   and _port_open(s3_port), 30, "the embedded default's HTTP and S3 APIs")
        assert (tmp_path / "walship-data" / "s3-secret").is_file()
        script = sh.replace("127.0.0.1:7602", f"127.0.0.1:{s3_port}")
        # The replicas are async in the embedded default: give the last line
        # (ls of every target) a moment.
        lines = script.strip().splitlines()
        body = "\n".join(lines[:-1]) + "\nsleep 1\n" + lines[-1] + "\n"
        env_sh = dict(env, AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
                      AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-creds"))
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env_sh,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "docs/README.md" in r.stdout, r.stdout
        assert r.stdout.count("README.md") >= 4, r.stdout  # ls --recursive + three targets
        for t in ("primary", "replica-1", "replica-2"):
            got = tmp_path / "walship-data" / "targets" / t / "results" / "docs" / "README.md"
            assert got.read_bytes() == README.read_bytes(), t
        out = io.StringIO()
        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(py.replace("127.0.0.1:7602", f"127.0.0.1:{s3_port}"), str(README), "exec"),
                     {"__name__": "__readme__"})
        finally:
            os.chdir(old)
        printed = out.getvalue()
        assert "b'{\"ok\": true}' application/json \"" in printed, printed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
