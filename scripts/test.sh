#!/bin/sh
# Set up (or reuse) .venv, install Quiver with its test extras, lint, run the test suite.
set -e
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
# the two workers already use both cores: no compile-ahead children (their own test turns them on)
export QUIVER_PRECOMPILE="${QUIVER_PRECOMPILE:-0}"
.venv/bin/ruff check .
# two workers, one test file each at a time: kernels compile in both at once (2 cores)
exec .venv/bin/python -m pytest -n "${QUIVER_TEST_WORKERS:-2}" --dist loadfile "$@"
