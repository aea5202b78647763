#!/bin/sh
# Set up (or reuse) .venv, install Quiver, and serve the REST API on the embedded default
# storage ./quiver-data (docs at http://127.0.0.1:6333/docs). Extra arguments go to
# `quiver serve` (e.g. --port 8080 --api-key KEY).
set -e
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$PWD/.numba_cache}"
exec .venv/bin/quiver serve --data ./quiver-data "$@"
