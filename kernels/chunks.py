"""Run a nogil kernel's interleaved chunks on threads: chunk c of n handles items c, c + n, ...

Why not ``prange``: a Numba ``parallel=True`` kernel compiles its own parfor machinery, 1-3 s
per kernel and kind on a fresh machine, for work that a plain serial kernel called from a few
threads does as fast (each call runs thousands of distance computations without the GIL).
Kernels stay pure functions; this is only how their calls are spread over threads. The first
chunk runs on the calling thread, the others on a shared pool sized to the machine, of which
``numba.get_num_threads()`` (what ``threadpoolctl`` and the bench's thread settings set) says
how much to use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1),
                                           thread_name_prefix="quiver-chunk")
    return _POOL


def chunk_count(items: int) -> int:
    """How many chunks a call over ``items`` independent items should use."""
    if items <= 1:  # one query a call: skip asking Numba (a few microseconds)
        return 1
    return max(1, min(int(numba.get_num_threads()), items))


def run_chunks(chunk: Callable[[int, int], object], nchunks: int) -> list:
    """``[chunk(c, nchunks) for c in range(nchunks)]``, the chunks running concurrently."""
    if nchunks <= 1:
        return [chunk(0, 1)]
    futures = [_pool().submit(chunk, c, nchunks) for c in range(1, nchunks)]
    first = chunk(0, nchunks)
    return [first, *(f.result() for f in futures)]
