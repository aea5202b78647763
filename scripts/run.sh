#!/bin/sh
# Set up (or reuse) .venv, install Quiver with its benchmark extras, run the quickstart
# benchmark on the shared real embeddings (or a generated dataset when they are absent).
set -e
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
export OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/quiver bench --quickstart "$@"
