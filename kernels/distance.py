"""Float distances: one-to-one, one query against many rows, and blocked many-to-many.

The float32 codec distances live here; ``dispatch.codec_distance`` selects a codec's distance
by its kind, a Numba type, so each kernel compiles only the kinds it is used with.
"""

import numpy as np
from numba import njit, prange

from . import INLINE, JIT
from .bitset import bitset_test
from .topk import heap_push, heap_sorted


@njit(**INLINE)
def dot(a: np.ndarray, b: np.ndarray) -> np.float32:
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s


@njit(**INLINE)
def l2sq(a: np.ndarray, b: np.ndarray) -> np.float32:
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        t = a[j] - b[j]
        s += t * t
    return s


# --- float32 codec distances -------------------------------------------------------------


@njit(**INLINE)
def f32_ip(qs: np.ndarray, codes: np.ndarray, aux: np.ndarray, i: int) -> np.float32:
    return -dot(qs, codes[i])


@njit(**INLINE)
def f32_l2(qs: np.ndarray, codes: np.ndarray, aux: np.ndarray, i: int) -> np.float32:
    return l2sq(qs, codes[i])


@njit(parallel=True, **JIT)
def block_ip(Q: np.ndarray, X: np.ndarray, out: np.ndarray) -> None:
    """out[q, i] = <Q[q], X[i]>, database rows outer and a block of queries inner.

    Each row is loaded once per query block and reused from cache; used where no BLAS
    applies (quantized rows decoded on the fly) and as the reference for the BLAS path."""
    nq = Q.shape[0]
    n = X.shape[0]
    qb = 8
    for r0 in prange((n + 63) // 64):
        for q0 in range(0, nq, qb):
            q1 = min(q0 + qb, nq)
            for i in range(r0 * 64, min(r0 * 64 + 64, n)):
                x = X[i]
                for q in range(q0, q1):
                    out[q, i] = dot(Q[q], x)


@njit(parallel=True, **JIT)
def topk_update_from_similarities(
    S, row0, row_norms, use_norms, words, filtered, heap_d, heap_i, sizes
) -> None:
    """Fold a block of similarities S[q, j] = <q, x_{row0+j}> into per-query heaps.

    Distance is -S for ip, or ||x_j||^2 - 2 S for l2 with ``row_norms`` of the block's rows
    (the query norm is added by the caller)."""
    nq, b = S.shape
    two = np.float32(2.0)
    for q in prange(nq):
        hd = heap_d[q]
        hi = heap_i[q]
        size = sizes[q]
        k = hd.shape[0]
        for j0 in range(0, b, 32):
            j1 = min(j0 + 32, b)
            if size == k:  # skip the chunk unless its best distance can enter the heap
                best = np.float32(np.inf)
                if use_norms:
                    for j in range(j0, j1):
                        best = min(best, row_norms[j] - two * S[q, j])
                else:
                    for j in range(j0, j1):
                        best = min(best, -S[q, j])
                if best >= hd[0]:
                    continue
            for j in range(j0, j1):
                r = row0 + j
                if filtered and not bitset_test(words, r):
                    continue
                if use_norms:
                    d = row_norms[j] - two * S[q, j]
                else:
                    d = -S[q, j]
                if size < k or d < hd[0]:
                    size = heap_push(hd, hi, size, d, r)
        sizes[q] = size


@njit(parallel=True, **JIT)
def heaps_sorted(heap_d, heap_i, sizes, out_d, out_i) -> None:
    for q in prange(heap_d.shape[0]):
        heap_sorted(heap_d[q], heap_i[q], sizes[q], out_d[q], out_i[q])
