"""Compile the search kernels on a spare core while the build compiles its own.

On a fresh install the first ``add`` to an HNSW index compiles the insertion kernels (about
5 s on these machines) and the first ``search`` then compiles the traversal (about 4 s more).
Numba compiles under the GIL, so a thread cannot overlap the two; a second process can: when
the first ``add`` of a codec kind finds the traversal missing from the disk cache, it starts
``python -m quiver.engine.precompile`` to compile that traversal into the cache, and the first
search waits for it (it is seconds ahead) instead of compiling it again.

Only where it can help: at least two cores, a cold cache, an interpreter that can run
Python (``sys.executable``); ``QUIVER_PRECOMPILE=0`` turns it off.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PLAIN_CODECS = ("f32", "f16", "sq8", "lvq8")
"""Codecs a child can build on random data with no parameters (others compile in-process)."""
WAIT_S = 30.0
"""At most this long a first search waits for a child (then it compiles for itself)."""

_started: dict[tuple[str, str], subprocess.Popen] = {}
_lock = threading.Lock()
_held = threading.local()


def _cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return n


def _enabled() -> bool:
    return (os.environ.get("QUIVER_PRECOMPILE", "1") != "0" and not getattr(_held, "off", False)
            and os.path.basename(sys.executable or "").startswith("python") and _cores() > 1)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """No children from this thread meanwhile: for a warm-up, which compiles everything
    ahead in its own order (children would compile the same kernels again beside it)."""
    before = getattr(_held, "off", False)
    _held.off = True
    try:
        yield
    finally:
        _held.off = before


def _cached(entry) -> bool | None:
    """Whether a jitted entry point's disk cache holds a compiled variant (kernels get
    read-only rows, ``vectors.readonly``, so there is one); None when that cannot be told
    (Numba's cache internals moved, no cache)."""
    try:
        cache = entry._cache
        files = cache._cache_file
        mine = cache._index_key((), entry.targetctx.codegen())[1:]  # this kernel and kind
        # Numba writes the index before the data: an entry counts once its data is there
        return any(tuple(rest) == mine and os.path.exists(files._data_path(name))
                   for (_sig, *rest), name in files._load_index().items())
    except Exception:
        return None


def hnsw_search_ahead(metric: str, codec: str, kind) -> None:
    """Start compiling the HNSW traversal for (kernel ``metric``, ``codec``) in a child
    process if the cache does not hold it yet (once per process and pair)."""
    key = (metric, codec)
    if key in _started or codec not in PLAIN_CODECS or not _enabled():
        return
    from ..kernels import hnsw as kh
    from ..kernels.dispatch import for_kind

    with _lock:
        if key in _started or _cached(for_kind(kh.search_chunk, kind)) is not False:
            return
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "quiver.engine.precompile", metric, codec],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:  # no process to spare: compile in-process, as without it
            log.debug("no precompile process: %s", exc)
            return
        if not _started:
            atexit.register(_stop_children)
        _started[key] = proc
        threading.Thread(target=proc.wait, daemon=True, name="quiver-precompile-reaper").start()
        log.debug("compiling the HNSW search for %s %s in pid %d", metric, codec, proc.pid)


def _stop_children() -> None:
    """At exit: children still compiling stop (a short script's child would otherwise go on
    using a core for the variants it has not reached; the cache stays whole, as Numba
    writes each file whole)."""
    for proc in _started.values():
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)


def wait_for(metric: str, codec: str, kind) -> None:
    """Before the first search of (kernel ``metric``, ``codec``): while a child is
    compiling it, wait until it is in the cache, so this process loads it instead of
    compiling it again."""
    proc = _started.get((metric, codec))
    if proc is None or proc.poll() is not None:
        return
    from ..kernels import hnsw as kh
    from ..kernels.dispatch import for_kind

    entry = for_kind(kh.search_chunk, kind)
    deadline = time.monotonic() + WAIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        if _cached(entry) is not False:
            return
        time.sleep(0.05)


def _compile_search(metric: str, codec: str) -> None:
    """What the child runs, on a one-node graph: a traversal (built here or memory-mapped
    from disk, an index's kernels get the same read-only rows) and the build's reverse-link
    kernel (with no links to add; a parent still building loads it). Nothing of the
    insertion, which the parent is compiling."""
    import numpy as np

    from ..kernels import hnsw as kh
    from ..kernels.dispatch import for_kind
    from .index.base import finish_results
    from .index.hnsw import HNSWIndex
    from .params import SearchParams
    from .planner import Plan

    index = HNSWIndex(8, metric, codec=codec)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    index.add(x[:1])
    q = x[1:] / np.linalg.norm(x[1:])
    traversal = Plan("traversal", 1, 1)
    dist, pos, _ = index.search_positions(q, 1, None, SearchParams(), traversal)
    finish_results(index.metric, dist, pos, index._ids, False)  # what search then makes of it
    X, aux = index._float.view()
    none = np.zeros(0, np.int64)
    for_kind(kh.link_groups, index._float.codec.dist(index._kmetric))(
        X, aux, index._nbr0, index._upper, index._uidx, 0, none, none, np.zeros(1, np.int64),
        0, 1)


if __name__ == "__main__":
    os.environ["QUIVER_PRECOMPILE"] = "0"  # a child never starts children
    _compile_search(sys.argv[1], sys.argv[2])
