#!/usr/bin/env bash
# Runs the Python package's tests against the real walship binary.
#
# Installs what they need from PyPI first (quietly; only what is missing):
# the package itself from this directory, pytest, truthound 3.2.0, moto's
# server 5.2.5 and boto3. The binary is $WALSHIP_BIN, else
# <repo>/target/debug/walship (build it with `cargo build`). With CI=true a
# test whose tool is missing fails instead of skipping. Extra arguments go to
# pytest (e.g. `-k metrics`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
pip=("$py" -m pip install --quiet)

# The package from this tree, every run (it is small and local).
# (Without build isolation when setuptools can build a wheel here already.)
if "$py" -c 'import sys, setuptools
assert int(setuptools.__version__.split(".")[0]) >= 61
try:
    import setuptools.command.bdist_wheel
except ImportError:
    import wheel' 2>/dev/null; then
  "${pip[@]}" --no-build-isolation --no-deps "$here"
else
  "${pip[@]}" --no-deps "$here"
fi

# The test tools, when missing or at another version.
missing=()
want() { # want DIST VERSION|"" REQUIREMENT
  local have
  have="$("$py" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)"
  if [ -z "$have" ] || { [ -n "$2" ] && [ "$have" != "$2" ]; }; then missing+=("$3"); fi
}
want pytest "" pytest
want truthound 3.2.0 'truthound==3.2.0'
want moto 5.2.5 'moto[server]==5.2.5'
want flask "" 'moto[server]==5.2.5'   # moto's server extra
want boto3 "" boto3
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run-tests.sh: installing ${missing[*]}"
  "${pip[@]}" "${missing[@]}"
fi

cd "$here"
exec "$py" -m pytest -rs tests "$@"
