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


def _thread_count_reader() -> Callable[[], int]:
    """The threading layer's own counter, once ``numba.get_num_threads`` has started the
    layer: the public call takes the layer's start-up lock every time (0.7 us, 10 us a
    query right after a search has flushed the caches), the counter itself 0.09 us. The
    public call where this Numba has no such counter."""
    numba.get_num_threads()
    from numba.np.ufunc import parallel

    fast = getattr(parallel, "_get_num_threads", None)
    return fast if callable(fast) else numba.get_num_threads


_threads: Callable[[], int] | None = None


def chunk_count(items: int) -> int:
    """How many chunks a call over ``items`` independent items should use (at most the
    calling thread's ``numba.get_num_threads()``)."""
    global _threads
    if items <= 1:  # one query a call: no need to ask
        return 1
    if _threads is None:
        _threads = _thread_count_reader()
    return max(1, min(int(_threads()), items))


def run_chunks(chunk: Callable[[int, int], object], nchunks: int) -> list:
    """``[chunk(c, nchunks) for c in range(nchunks)]``, the chunks running concurrently."""
    if nchunks <= 1:
        return [chunk(0, 1)]
    futures = [_pool().submit(chunk, c, nchunks) for c in range(1, nchunks)]
    first = chunk(0, nchunks)
    return [first, *(f.result() for f in futures)]
