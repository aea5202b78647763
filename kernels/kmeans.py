"""k-means steps: nearest-centroid selection from BLAS similarities, centroid means, k-means++.

The expensive part of a Lloyd iteration, the similarities between every row and every centroid,
is a matrix product the caller hands to BLAS in row blocks (``S = X_block @ C.T``); these
kernels do what BLAS cannot: the per-row argmin over ``||c||^2 - 2 S`` (plain ``-2 S`` for
inner product), the per-cluster means, and the k-means++ distance updates. Everything is
deterministic: no kernel's result depends on the thread count.
"""

import numpy as np
from numba import njit, prange

from . import INLINE, JIT
from .distance import dot
from .topk import select_smallest, sort_pairs

_LANES = 64
"""Rows per independent lane group in ``assign_block``: a fixed trip count the loop vectoriser
turns into compare-and-blend over registers (4x faster than a per-row argmin, which LLVM
leaves scalar)."""


@njit(**INLINE)
def _assign_lanes(ST, cnorms, i0, w, best, arg) -> None:
    two = np.float32(2.0)
    for j in range(ST.shape[0]):
        row = ST[j, i0 : i0 + w]
        cj = cnorms[j]
        jj = np.int32(j)
        for t in range(w):
            v = cj - two * row[t]
            better = v < best[t]
            best[t] = min(v, best[t])
            arg[t] = jj if better else arg[t]


@njit(parallel=True, **JIT)
def assign_block(ST, cnorms, row0, labels, scores) -> None:
    """For each column i of ``ST`` (k centroids x b rows, ``ST = C @ X_block.T``):
    labels[row0 + i] = argmin_j (cnorms[j] - 2 ST[j, i]), scores[row0 + i] = that minimum.

    For l2, ``cnorms`` are the centroids' squared norms and the row's own norm is left to the
    caller; for inner product they are zeros (argmax of the similarity). Ties go to the
    smaller j. Columns are taken 64 at a time, centroids streamed past them."""
    b = ST.shape[1]
    groups = (b + _LANES - 1) // _LANES
    for g in prange(groups):
        i0 = g * _LANES
        best = np.full(_LANES, np.inf, np.float32)
        arg = np.zeros(_LANES, np.int32)
        if i0 + _LANES <= b:
            _assign_lanes(ST, cnorms, i0, _LANES, best, arg)
        else:
            _assign_lanes(ST, cnorms, i0, b - i0, best, arg)
        for t in range(min(_LANES, b - i0)):
            labels[row0 + i0 + t] = arg[t]
            scores[row0 + i0 + t] = best[t]


_GROUPS = 32
"""``top_lists_block`` bounds a row's ``nprobe`` nearest lists by its groups' minima: group g
holds lists g, g + 32, g + 64, ... (a minimum over 32 lanes at a time, vectorised)."""


@njit(**INLINE)
def _top_lists_row(srow, cnorms, nprobe, v, gmin, gi, cd, ci, sd, si, out) -> None:
    """``out`` = the nprobe j with the smallest cnorms[j] - 2 srow[j], closest first (ties by
    smaller j), -1 padded. Every list among them lies in a group whose minimum is at most the
    nprobe-th smallest value, so in one of the nprobe groups of smallest minimum: the
    nprobe-th smallest of the 32 minima bounds the candidates, and only lists at or below it
    are selected among (about 2 nprobe of 512, where a heap of every list mispredicts a
    branch per push). Buffers: v, cd, ci, sd, si of nlist entries, gmin, gi of 32."""
    k = srow.shape[0]
    two = np.float32(2.0)
    for j in range(k):
        v[j] = cnorms[j] - two * srow[j]
    bound = np.float32(np.inf)
    if nprobe < _GROUPS <= k:
        gmin[:] = np.inf
        for j0 in range(0, k - _GROUPS + 1, _GROUPS):
            for g in range(_GROUPS):
                gmin[g] = min(gmin[g], v[j0 + g])
        for j in range(k - k % _GROUPS, k):
            gmin[j % _GROUPS] = min(gmin[j % _GROUPS], v[j])
        bound = select_smallest(gmin, gi, _GROUPS, nprobe)
    n = 0
    for j in range(k):  # the candidates, in list order
        if v[j] <= bound:
            cd[n] = v[j]
            ci[n] = j
            n += 1
    if n > nprobe:  # keep those below the nprobe-th smallest, then the first equal to it
        sd[:n] = cd[:n]
        bound = select_smallest(sd, si, n, nprobe)
        m = 0
        for t in range(n):
            if cd[t] < bound:
                sd[m] = cd[t]
                si[m] = ci[t]
                m += 1
        for t in range(n):
            if m == nprobe:
                break
            if cd[t] == bound:
                sd[m] = cd[t]
                si[m] = ci[t]
                m += 1
        n = m
        cd, ci = sd, si
    sort_pairs(cd, ci, n)
    for t in range(nprobe):
        out[t] = ci[t] if t < n else -1


@njit(parallel=True, **JIT)
def top_lists_block(S, cnorms, row0, nprobe, out) -> None:
    """out[row0 + i] = the ``nprobe`` j with the smallest cnorms[j] - 2 S[i, j], closest first
    (the IVF coarse quantizer of a query batch; multi-assignment)."""
    nq, k = S.shape
    for i in prange(nq):
        _top_lists_row(S[i], cnorms, nprobe, np.empty(k, np.float32),
                       np.empty(_GROUPS, np.float32), np.empty(_GROUPS, np.int64),
                       np.empty(k, np.float32), np.empty(k, np.int64),
                       np.empty(k, np.float32), np.empty(k, np.int64), out[row0 + i])


@njit(**JIT)
def top_lists_rows(S, cnorms, nprobe, out) -> None:
    """``top_lists_block`` for the few rows of one query (its tokens), on the calling thread:
    a parallel kernel's launch costs more than their work."""
    nq, k = S.shape
    v, cd, sd = np.empty(k, np.float32), np.empty(k, np.float32), np.empty(k, np.float32)
    ci, si = np.empty(k, np.int64), np.empty(k, np.int64)
    gmin, gi = np.empty(_GROUPS, np.float32), np.empty(_GROUPS, np.int64)
    for i in range(nq):
        _top_lists_row(S[i], cnorms, nprobe, v, gmin, gi, cd, ci, sd, si, out[i])


@njit(**JIT)
def accumulate_rows(xb, labels, row0, sums, counts) -> None:
    """sums[labels[row0 + i]] += xb[i], counts likewise: called on each row block right after
    its assignment, while the block is still in cache, in a fixed order. float32 sums (as
    FAISS) keep the k x d table half the size in cache, at 1e-7 relative error a row."""
    d = xb.shape[1]
    for i in range(xb.shape[0]):
        c = labels[row0 + i]
        counts[c] += 1
        for j in range(d):
            sums[c, j] += xb[i, j]


@njit(parallel=True, **JIT)
def assign_candidates(x, centroids, cnorms, cand, labels, scores) -> None:
    """Like ``assign_block``, but row i is compared with its candidate centroids cand[i] only
    (pruned Lloyd iterations); ties go to the earlier candidate."""
    two = np.float32(2.0)
    for i in prange(x.shape[0]):
        row = x[i]
        best = np.float32(np.inf)
        arg = cand[i, 0]
        for t in range(cand.shape[1]):
            c = cand[i, t]
            v = cnorms[c] - two * dot(row, centroids[c])
            if v < best:
                best = v
                arg = c
        labels[i] = arg
        scores[i] = best


@njit(parallel=True, **JIT)
def min_sq_dist_update(x, xnorms, c, cnorm, mind) -> None:
    """mind[i] = min(mind[i], ||x_i - c||^2) for k-means++."""
    n, d = x.shape
    for i in prange(n):
        row = x[i]
        s = np.float32(0.0)
        for j in range(d):
            s += row[j] * c[j]
        v = max(xnorms[i] + cnorm - np.float32(2.0) * s, np.float32(0.0))
        if v < mind[i]:
            mind[i] = v


@njit(**JIT)
def pick_weighted(weights, r) -> int:
    """Index i drawn with probability weights[i] / sum(weights), for ``r`` uniform in [0, 1):
    the first i whose running sum passes r * total (both sums serial, so deterministic)."""
    n = weights.shape[0]
    total = 0.0
    for i in range(n):
        total += weights[i]
    u = r * total
    acc = 0.0
    for i in range(n):
        acc += weights[i]
        if acc > u:
            return i
    for i in range(n - 1, -1, -1):  # u at the very top (rounding): the last non-zero weight
        if weights[i] > 0:
            return i
    return n - 1
