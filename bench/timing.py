"""Timing harness: thread control, batch QPS, single-query latency, best of N repetitions.

The box is small and shared, so every number is the best of several repetitions (noise only
ever adds time), thread counts are pinned for Numba, BLAS/OpenMP and the peers alike, and
engines that are compared are timed in interleaved rounds (``rotated``), never one after
another.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

SearchFn = Callable[[np.ndarray], object]
T = TypeVar("T")


def ensure_passive_omp() -> None:
    """Spinning OpenMP threads on a loaded 2-core box slow faiss 13x; must precede faiss import."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def max_threads() -> int:
    """Threads 'all' means: what Numba was started with (it cannot go higher)."""
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def resolve_threads(threads: int | str) -> int:
    if threads in ("all", 0, None):
        return max_threads()
    return max(1, min(int(threads), max_threads()))


@contextlib.contextmanager
def thread_limit(n: int, set_engine: Callable[[int], None] | None = None) -> Iterator[int]:
    """Pin Numba, BLAS and OpenMP (threadpoolctl) and the engine itself to ``n`` threads."""
    import numba

    n = resolve_threads(n)
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is in the bench extra
        limiter = contextlib.nullcontext()
    else:
        limiter = threadpool_limits(limits=n)
    try:
        with limiter:
            if set_engine is not None:
                set_engine(n)
            yield n
    finally:
        numba.set_num_threads(before)


def best_time(fn: Callable[[], object], reps: int = 3) -> float:
    """Smallest wall time of ``reps`` calls, in seconds."""
    best = np.inf
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return float(best)


def batch_qps(search: SearchFn, queries: np.ndarray, reps: int = 3) -> float:
    """Queries per second for one batch call over all ``queries`` (best of ``reps``)."""
    return queries.shape[0] / best_time(lambda: search(queries), reps)


def rotated(items: Sequence[T], round_no: int) -> list[T]:
    """Round ``round_no``'s order: A B C, then B C A, then C A B (A B, B A for two), so each
    engine runs first, and last, as often as the others and box-wide drift cancels out."""
    n = len(items)
    if n == 0:
        return []
    r = round_no % n
    return list(items[r:]) + list(items[:r])


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, ms: np.ndarray) -> Latency:
        """Percentiles of per-query times in milliseconds."""
        return cls(float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean()))


def single_query_times(search: SearchFn, queries: np.ndarray, reps: int = 1) -> np.ndarray:
    """Milliseconds per query, one query per call as a request would arrive; each query's best
    of ``reps`` passes (a pass times every query once)."""
    nq = queries.shape[0]
    rows = [queries[i : i + 1] for i in range(nq)]
    times = np.full(nq, np.inf)
    clock = time.perf_counter_ns
    for _ in range(max(1, reps)):
        for i, q in enumerate(rows):
            t = clock()
            search(q)
            dt = clock() - t
            if dt < times[i]:
                times[i] = dt
    return times / 1e6


def single_query_latency(search: SearchFn, queries: np.ndarray, reps: int = 3) -> Latency:
    """p50/p99/mean of ``single_query_times``."""
    return Latency.of(single_query_times(search, queries, reps))


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(result, seconds) of one call: for builds, which are too slow to repeat."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t
