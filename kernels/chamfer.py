"""Multi-vector kernels: exact Chamfer (MaxSim) scores and MUVERA fixed-dimensional encodings.

Token matrices are stored ragged: document i owns rows ``offsets[i]:offsets[i+1]`` of one
(n_tokens, dim) float32 array.
"""

import numpy as np
from numba import njit

from . import INLINE, JIT
from .distance import dot
from .topk import heap_push, heap_sorted


@njit(**INLINE)
def _chamfer(Q, D, a, b) -> np.float32:
    """sum over query tokens of the best inner product with document rows a..b."""
    total = np.float32(0.0)
    for t in range(Q.shape[0]):
        best = np.float32(-np.inf)
        for r in range(a, b):
            s = dot(Q[t], D[r])
            if s > best:
                best = s
        total += best
    return total


@njit(**JIT)
def chamfer_topk_chunk(Q, qoff, D, doff, cand, k, out_d, out_i, first, step):
    """For queries first, first + step, ...: exact Chamfer over the candidate documents
    ``cand[q]`` (-1 padded; all documents if ``cand`` has one column of -2), best k kept as
    distances (negated scores) ascending."""
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    ndocs = doff.shape[0] - 1
    for q in range(first, qoff.shape[0] - 1, step):
        Qt = Q[qoff[q]:qoff[q + 1]]
        size = 0
        if cand.shape[1] == 1 and cand[q, 0] == -2:
            for c in range(ndocs):
                size = heap_push(hd, hi, size, -_chamfer(Qt, D, doff[c], doff[c + 1]), c)
        else:
            for j in range(cand.shape[1]):
                c = cand[q, j]
                if c < 0:
                    continue
                size = heap_push(hd, hi, size, -_chamfer(Qt, D, doff[c], doff[c + 1]), c)
        heap_sorted(hd, hi, size, out_d[q], out_i[q])


@njit(**JIT)
def fde_encode(H, P, offsets, k_sim, average, fill_empty, out):
    """MUVERA FDEs of the token sets ``offsets[i]:offsets[i+1]`` into ``out[i]``, from their
    SimHash projections ``H`` (n_tokens, R * k_sim) and inner projections ``P``
    (n_tokens, R * d_proj), both computed beforehand (one matrix product each).

    Per repetition r: a token's bucket has bit j set when H[t, r * k_sim + j] > 0; a bucket's
    block is its tokens' projections summed (queries) or averaged (documents, ``average``);
    ``fill_empty``: an empty bucket takes the token whose bits differ least from the bucket's.
    out is (n, R * 2**k_sim * d_proj), zero on entry."""
    nb = 1 << k_sim
    reps = H.shape[1] // k_sim
    dp = P.shape[1] // reps
    for i in range(offsets.shape[0] - 1):
        a = offsets[i]
        n = offsets[i + 1] - a
        codes = np.empty(n, np.int64)
        counts = np.empty(nb, np.int64)
        for r in range(reps):
            base = r * nb * dp
            counts[:] = 0
            for t in range(n):
                code = 0
                for j in range(k_sim):
                    if H[a + t, r * k_sim + j] > 0:
                        code |= 1 << j
                codes[t] = code
                counts[code] += 1
                o = base + code * dp
                for p in range(dp):
                    out[i, o + p] += P[a + t, r * dp + p]
            for bk in range(nb):
                o = base + bk * dp
                if counts[bk] > 0:
                    if average and counts[bk] > 1:
                        inv = np.float32(1.0) / np.float32(counts[bk])
                        for p in range(dp):
                            out[i, o + p] *= inv
                elif fill_empty and n > 0:
                    best, best_t = 1 << 30, 0
                    for t in range(n):
                        x = codes[t] ^ bk
                        bits = 0
                        while x:
                            bits += x & 1
                            x >>= 1
                        if bits < best:
                            best, best_t = bits, t
                    for p in range(dp):
                        out[i, o + p] = P[a + best_t, r * dp + p]
