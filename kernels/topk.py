"""Bounded max-heaps that keep the k smallest distances, and top-k merging."""

import numpy as np
from numba import njit, prange

from . import INLINE, JIT


@njit(**INLINE)
def heap_sift_down(hd: np.ndarray, hi: np.ndarray, size: int, pos: int) -> None:
    d = hd[pos]
    i = hi[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and hd[child + 1] > hd[child]:
            child += 1
        if hd[child] <= d:
            break
        hd[pos] = hd[child]
        hi[pos] = hi[child]
        pos = child
    hd[pos] = d
    hi[pos] = i


@njit(**INLINE)
def heap_push(hd: np.ndarray, hi: np.ndarray, size: int, d: float, i: int) -> int:
    """Push into a max-heap of capacity len(hd); when full, replace the top if d is smaller.

    Returns the new size."""
    cap = hd.shape[0]
    if size < cap:
        pos = size
        while pos > 0:
            parent = (pos - 1) >> 1
            if hd[parent] >= d:
                break
            hd[pos] = hd[parent]
            hi[pos] = hi[parent]
            pos = parent
        hd[pos] = d
        hi[pos] = i
        return size + 1
    if d < hd[0]:
        hd[0] = d
        hi[0] = i
        heap_sift_down(hd, hi, size, 0)
    return size


@njit(**INLINE)
def _after(da, ia, db, ib) -> bool:
    """(da, ia) sorts after (db, ib): by distance, ties by smaller id."""
    return da > db or (da == db and ia > ib)


@njit(**INLINE)
def _sift_pairs(d: np.ndarray, i: np.ndarray, size: int, pos: int) -> None:
    """Sift ``pos`` down the max-heap d[:size] (ordered by ``_after``)."""
    dv = d[pos]
    iv = i[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _after(d[child + 1], i[child + 1], d[child], i[child]):
            child += 1
        if not _after(d[child], i[child], dv, iv):
            break
        d[pos] = d[child]
        i[pos] = i[child]
        pos = child
    d[pos] = dv
    i[pos] = iv


RANK_SELECT_MAX = 64
"""Up to this many candidates a beam search's final top-k is taken by ``rank_select``,
beyond it by a heap (ranking costs the square of the count: 128 random candidates to 10
took 3.3 us ranked against 3.0 with a heap; 64: 0.96 against 1.6; 32: 0.36 against 0.89,
a scratch micro-benchmark)."""


@njit(**INLINE)
def rank_select(d: np.ndarray, ids: np.ndarray, count: int, out_d: np.ndarray,
                out_i: np.ndarray) -> int:
    """The len(out_d) smallest of d[:count] ascending into out_*, ties by smaller id, padded
    with inf / -1; returns how many there were. Each candidate's rank is counted against
    all the others, branch-free and vectorised, and the ones ranked below k are written at
    their rank: no heap's or insertion's unpredictable branches (the comparisons are coin
    flips). The ids of d[:count] must be distinct (a beam search's results are)."""
    k = out_d.shape[0]
    for j in range(count):
        dj = d[j]
        ij = ids[j]
        rank = 0
        for t in range(count):
            rank += (d[t] < dj) | ((d[t] == dj) & (ids[t] < ij))
        if rank < k:
            out_d[rank] = dj
            out_i[rank] = ij
    for t in range(count, k):
        out_d[t] = np.inf
        out_i[t] = -1
    return min(count, k)


@njit(**INLINE)
def select_smallest(d: np.ndarray, i: np.ndarray, size: int, k: int) -> float:
    """Reorder d[:size] in place, carrying i, so that d[:k] hold its k smallest (in no order);
    returns the largest of those. Quickselect: what a reservoir of candidates costs per
    refill, instead of a heap operation per candidate. The partition is branchless (every
    element swapped with the boundary, which advances when the element is below the pivot):
    the comparisons are coin flips a branch predictor loses, and 192 candidates to 96 took
    1.25 us against 2.5 us with Hoare's branching partition."""
    lo, hi = 0, size - 1
    want = k - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        a, b, c = d[lo], d[mid], d[hi]
        pivot = max(min(a, b), min(max(a, b), c))  # median of three
        store = _partition(d, i, lo, hi, pivot, False)
        if store == lo:  # nothing below the pivot, the minimum: split off its copies
            store = _partition(d, i, lo, hi, pivot, True)
            if want < store:
                break
            lo = store
        elif want < store:
            hi = store - 1
        else:
            lo = store
    top = d[0]
    for t in range(1, k):
        top = max(top, d[t])
    return top


@njit(**INLINE)
def _partition(d, i, lo, hi, pivot, inclusive) -> int:
    """Move the elements of d[lo:hi + 1] below ``pivot`` (or equal to it, if ``inclusive``)
    to the front, carrying i; returns where the others start."""
    store = lo
    for j in range(lo, hi + 1):
        v, x = d[j], i[j]
        d[j], i[j] = d[store], i[store]
        d[store], i[store] = v, x
        store += (v <= pivot) if inclusive else (v < pivot)
    return store


@njit(**JIT)
def sort_pairs(d: np.ndarray, i: np.ndarray, size: int) -> None:
    """Sort d[:size] ascending in place, carrying i along (ties by smaller id). A heapsort:
    no allocation, and none of the compile time of Numba's ``np.argsort``."""
    for pos in range(size // 2 - 1, -1, -1):
        _sift_pairs(d, i, size, pos)
    for end in range(size - 1, 0, -1):
        dv = d[end]
        iv = i[end]
        d[end] = d[0]
        i[end] = i[0]
        d[0] = dv
        i[0] = iv
        _sift_pairs(d, i, end, 0)


@njit(**JIT)
def heap_sorted(hd: np.ndarray, hi: np.ndarray, size: int, out_d: np.ndarray, out_i: np.ndarray) -> None:
    """Write the heap's content ascending (ties by smaller id) into out_*, padding with -1/inf."""
    k = out_d.shape[0]
    if size <= k:
        ds, ids = out_d, out_i
    else:
        ds, ids = np.empty(size, out_d.dtype), np.empty(size, out_i.dtype)
    for t in range(size):
        ds[t] = hd[t]
        ids[t] = hi[t]
    sort_pairs(ds, ids, size)
    for t in range(k):
        if t < size:
            out_d[t] = ds[t]
            out_i[t] = ids[t]
        else:
            out_d[t] = np.inf
            out_i[t] = -1


@njit(parallel=True, **JIT)
def merge_topk(D: np.ndarray, I: np.ndarray, k: int) -> tuple:
    """Select the k smallest of each row of candidate lists (D, I) (-1 ids are padding)."""
    nq, m = D.shape
    out_d = np.empty((nq, k), np.float32)
    out_i = np.empty((nq, k), np.int64)
    for q in prange(nq):
        hd = np.empty(k, np.float32)
        hi = np.empty(k, np.int64)
        size = 0
        for j in range(m):
            if I[q, j] >= 0:
                size = heap_push(hd, hi, size, D[q, j], I[q, j])
        heap_sorted(hd, hi, size, out_d[q], out_i[q])
    return out_d, out_i


@njit(**JIT)
def finish_hits(dist, pos, ids, negate, pad, scores, ext) -> None:
    """Kernel hits to results: scores[q, j] = -dist (``negate``: inner product, cosine) or
    dist, and ext[q, j] = ids[pos]; ``pad`` and -1 where pos < 0. One call where NumPy takes
    eight, each of which costs microseconds when a search has just flushed the caches."""
    for q in range(pos.shape[0]):
        for j in range(pos.shape[1]):
            p = pos[q, j]
            if p >= 0:
                scores[q, j] = -dist[q, j] if negate else dist[q, j]
                ext[q, j] = ids[p]
            else:
                scores[q, j] = pad
                ext[q, j] = -1


@njit(**JIT)
def short_rows(pos, need) -> int:
    """How many rows of -1 padded hits hold fewer than ``need`` (column need - 1 is -1): the
    check every search makes for a fallback, without NumPy's reduction set-up (8 us a query
    right after a search has flushed the caches)."""
    n = 0
    if need > 0:
        for q in range(pos.shape[0]):
            n += pos[q, need - 1] < 0
    return n


@njit(**JIT)
def count_below(values, limit) -> int:
    """How many of ``values`` (1-D) are below ``limit``: ``short_rows`` for searches that
    count their hits."""
    n = 0
    for v in values:
        n += v < limit
    return n
