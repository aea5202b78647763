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

import contextlib
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

PLAIN_CODECS = ("f32", "f16", "sq8", "lvq8")
"""Codecs a child can build on random data with no parameters (others compile in-process)."""
WAIT_S = 60.0

_started: dict[tuple[str, str], subprocess.Popen] = {}
_lock = threading.Lock()
_held = threading.local()


def _enabled() -> bool:
    return (os.environ.get("QUIVER_PRECOMPILE", "1") != "0" and not getattr(_held, "off", False)
            and (os.cpu_count() or 1) > 1
            and os.path.basename(sys.executable or "").startswith("python"))


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


def _cached(entry) -> bool:
    """Whether a jitted entry point has a compiled overload in the disk cache (unknown: yes,
    so nothing is started on a guess)."""
    try:
        return bool(entry._cache._cache_file._load_index())
    except Exception:  # Numba's cache internals moved, or no cache: stay in-process
        return True


def hnsw_search_ahead(metric: str, codec: str, kind) -> None:
    """Start compiling the HNSW traversal for (``metric``, ``codec``) in a child process if
    it is not cached yet (once per process and pair)."""
    key = (metric, codec)
    if key in _started or codec not in PLAIN_CODECS or not _enabled():
        return
    from ..kernels import hnsw as kh
    from ..kernels.dispatch import for_kind

    with _lock:
        if key in _started or _cached(for_kind(kh.search_chunk, kind)):
            return
        try:
            _started[key] = subprocess.Popen(
                [sys.executable, "-m", "quiver.engine.precompile", metric, codec],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            log.debug("compiling the HNSW search for %s %s in pid %d", metric, codec,
                      _started[key].pid)
        except OSError as exc:  # no process to spare: compile in-process, as without it
            log.debug("no precompile process: %s", exc)


def wait_for(metric: str, codec: str) -> None:
    """Before the first search of (``metric``, ``codec``): let a child compiling it finish,
    so this process loads its result from the cache."""
    proc = _started.get((metric, codec))
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # then it compiles here
            proc.wait(WAIT_S)


def _compile_search(metric: str, codec: str) -> None:
    """What the child runs, on a one-node graph: a traversal, which compiles exactly the
    kernel the parent's first search calls, then the build's reverse-link kernel (with no
    links to add), which a parent still building loads instead of compiling. Nothing of the
    insertion, which the parent is compiling. (The traversal goes first: compiled here from
    scratch it takes longer than the parent's insertion, which shares some of its code.)"""
    import numpy as np

    from ..kernels import hnsw as kh
    from ..kernels.dispatch import for_kind
    from .index.hnsw import HNSWIndex
    from .params import SearchParams
    from .planner import Plan

    index = HNSWIndex(8, metric, codec=codec)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    index.add(x[:1])
    q = x[1:] / np.linalg.norm(x[1:])
    index.search_positions(q, 1, None, SearchParams(), Plan("traversal", 1, 1))
    X, aux = index._float.view()  # then the link kernel, for a build still compiling
    none = np.zeros(0, np.int64)
    for_kind(kh.link_groups, index._float.codec.dist(index._kmetric))(
        X, aux, index._nbr0, index._upper, index._uidx, 0, none, none, np.zeros(1, np.int64),
        0, 1)


if __name__ == "__main__":
    os.environ["QUIVER_PRECOMPILE"] = "0"  # a child never starts children
    _compile_search(sys.argv[1], sys.argv[2])
