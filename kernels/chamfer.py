"""Multi-vector kernels: exact Chamfer (MaxSim) scores and MUVERA fixed-dimensional encodings.

Token matrices are stored ragged: document i owns rows ``offsets[i]:offsets[i+1]`` of one
(n_tokens, dim) array of float32 values, float16 bits (uint16) or LVQ-8 codes (uint8, with
per-row (bias, step) in ``aux`` and the dataset ``mean``); a kernel compiles per dtype.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from . import INLINE, JIT
from .distance import dot
from .prefetch import prefetch_row
from .topk import heap_push, heap_sorted, select_smallest


def widen(row, buf):
    """``buf[:] = row`` as float32: float32 rows copied, float16 bits (uint16) converted,
    LVQ codes (uint8) as their integer levels (``row_score`` applies bias and step)."""
    raise TypeError("widen is a kernel helper: call it from jitted code")


def row_score(D, aux, r, qm, qs, dot_code):
    """<q, token r> from ``dot_code`` = <q, widened row r>: itself, or for LVQ codes (uint8
    ``D``) <q, mean> + bias_r * sum(q) + step_r * dot_code (``qm``, ``qs`` of the query
    token)."""
    raise TypeError("row_score is a kernel helper: call it from jitted code")


@overload(row_score, jit_options=JIT)
def _row_score(D, aux, r, qm, qs, dot_code):
    if D.dtype == types.uint8:
        def lvq_score(D, aux, r, qm, qs, dot_code):
            return qm + aux[r, 0] * qs + aux[r, 1] * dot_code
        return lvq_score

    def plain_score(D, aux, r, qm, qs, dot_code):
        return dot_code
    return plain_score


_HALF_UNSCALE = np.float32(2.0**112)
"""Half bits shifted into a float32's place read 2**-112 times the half value (exactly)."""


@overload(widen, jit_options=JIT)
def _widen(row, buf):
    if row.dtype == types.uint16:
        def widen_half(row, buf):
            bits = buf.view(np.uint32)
            for j in range(row.shape[0]):
                h = np.uint32(row[j])
                bits[j] = (((h & np.uint32(0x7FFF)) << np.uint32(13))
                           | ((h & np.uint32(0x8000)) << np.uint32(16)))
            for j in range(row.shape[0]):
                buf[j] *= _HALF_UNSCALE
        return widen_half

    def widen_float(row, buf):  # float32 values, or uint8 LVQ levels
        for j in range(row.shape[0]):
            buf[j] = np.float32(row[j])
    return widen_float


ROW_BLOCK = 64
"""Document rows widened to float32 at a time (a longer document is scored in blocks)."""

PREFETCH_DOCS = 8
"""Candidate documents are scattered through the token rows: the rows of the one this many
ahead are prefetched while the current one is scored (up to PREFETCH_BYTES of them)."""

PREFETCH_BYTES = 4096
"""Of a prefetched document, at most this much (16 float16 rows of 128-d)."""


@njit(**INLINE)
def _best_two(q0, q1, tq, qm, qs, D, aux, a, B, nr, best) -> None:
    """best[tq], best[tq + 1] raised to the best score of query tokens q0, q1 over the nr
    widened rows in B (document rows a, a + 1, ...): two tokens by four rows a pass, so each
    loaded value feeds several multiply-adds (about twice the dot-at-a-time speed)."""
    m0, m1 = best[tq], best[tq + 1]
    r = 0
    while r + 3 < nr:
        b0, b1, b2, b3 = B[r], B[r + 1], B[r + 2], B[r + 3]
        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
        for j in range(q0.shape[0]):
            x0, x1, x2, x3 = b0[j], b1[j], b2[j], b3[j]
            y0, y1 = q0[j], q1[j]
            s00 += y0 * x0
            s01 += y0 * x1
            s02 += y0 * x2
            s03 += y0 * x3
            s10 += y1 * x0
            s11 += y1 * x1
            s12 += y1 * x2
            s13 += y1 * x3
        m0 = max(m0, row_score(D, aux, a + r, qm[tq], qs[tq], s00),
                 row_score(D, aux, a + r + 1, qm[tq], qs[tq], s01),
                 row_score(D, aux, a + r + 2, qm[tq], qs[tq], s02),
                 row_score(D, aux, a + r + 3, qm[tq], qs[tq], s03))
        m1 = max(m1, row_score(D, aux, a + r, qm[tq + 1], qs[tq + 1], s10),
                 row_score(D, aux, a + r + 1, qm[tq + 1], qs[tq + 1], s11),
                 row_score(D, aux, a + r + 2, qm[tq + 1], qs[tq + 1], s12),
                 row_score(D, aux, a + r + 3, qm[tq + 1], qs[tq + 1], s13))
        r += 4
    while r < nr:
        b0 = B[r]
        s0 = s1 = np.float32(0.0)
        for j in range(q0.shape[0]):
            s0 += q0[j] * b0[j]
            s1 += q1[j] * b0[j]
        m0 = max(m0, row_score(D, aux, a + r, qm[tq], qs[tq], s0))
        m1 = max(m1, row_score(D, aux, a + r, qm[tq + 1], qs[tq + 1], s1))
        r += 1
    best[tq], best[tq + 1] = m0, m1


@njit(**INLINE)
def _best_one(q0, tq, qm, qs, D, aux, a, B, nr, best) -> None:
    """best[tq] raised to query token q0's best score over the nr widened rows in B."""
    m0 = best[tq]
    r = 0
    while r + 3 < nr:
        b0, b1, b2, b3 = B[r], B[r + 1], B[r + 2], B[r + 3]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for j in range(q0.shape[0]):
            y = q0[j]
            s0 += y * b0[j]
            s1 += y * b1[j]
            s2 += y * b2[j]
            s3 += y * b3[j]
        m0 = max(m0, row_score(D, aux, a + r, qm[tq], qs[tq], s0),
                 row_score(D, aux, a + r + 1, qm[tq], qs[tq], s1),
                 row_score(D, aux, a + r + 2, qm[tq], qs[tq], s2),
                 row_score(D, aux, a + r + 3, qm[tq], qs[tq], s3))
        r += 4
    while r < nr:
        m0 = max(m0, row_score(D, aux, a + r, qm[tq], qs[tq], dot(q0, B[r])))
        r += 1
    best[tq] = m0


@njit(**INLINE)
def _chamfer(Q, qm, qs, D, aux, a, b, best, B) -> np.float32:
    """sum over query tokens of the best inner product with document rows a..b: the rows are
    widened ROW_BLOCK at a time into B, then scored in register tiles."""
    best[:] = -np.inf
    nt = Q.shape[0]
    for r0 in range(a, b, ROW_BLOCK):
        nr = min(ROW_BLOCK, b - r0)
        for r in range(nr):
            widen(D[r0 + r], B[r])
        for t in range(0, nt - 1, 2):
            _best_two(Q[t], Q[t + 1], t, qm, qs, D, aux, r0, B, nr, best)
        if nt % 2:
            _best_one(Q[nt - 1], nt - 1, qm, qs, D, aux, r0, B, nr, best)
    total = np.float32(0.0)
    for t in range(nt):
        total += best[t]
    return total


@njit(**INLINE)
def _prefetch_doc(D, doff, c) -> None:
    """Start loading document c's rows (up to PREFETCH_BYTES)."""
    row_bytes = D.shape[1] * D.itemsize
    for r in range(doff[c], min(doff[c + 1], doff[c] + max(1, PREFETCH_BYTES // row_bytes))):
        prefetch_row(D, r, row_bytes)


@njit(**JIT)
def chamfer_topk_chunk(Q, qoff, D, aux, mean, doff, cand, k, out_d, out_i, first, step):
    """For queries first, first + step, ...: exact Chamfer over the candidate documents
    (rows ``D``; ``aux`` (n, 0) and ``mean`` empty unless they are LVQ codes)
    ``cand[q]`` (-1 padded; a single row serves every query; all documents if that row is one
    -2), best k kept as distances (negated scores) ascending."""
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    B = np.empty((ROW_BLOCK, D.shape[1]), np.float32)
    ndocs = doff.shape[0] - 1
    for q in range(first, qoff.shape[0] - 1, step):
        Qt = Q[qoff[q]:qoff[q + 1]]
        best = np.empty(Qt.shape[0], np.float32)
        qm = np.zeros(Qt.shape[0], np.float32)
        qs = np.zeros(Qt.shape[0], np.float32)
        if mean.shape[0]:
            for t in range(Qt.shape[0]):
                qm[t] = dot(Qt[t], mean)
                for j in range(Qt.shape[1]):
                    qs[t] += Qt[t, j]
        size = 0
        row = cand[q] if cand.shape[0] > 1 else cand[0]
        if row.shape[0] == 1 and row[0] == -2:
            for c in range(ndocs):
                d = -_chamfer(Qt, qm, qs, D, aux, doff[c], doff[c + 1], best, B)
                size = heap_push(hd, hi, size, d, c)
        else:
            for j in range(min(PREFETCH_DOCS, row.shape[0])):
                if row[j] >= 0:
                    _prefetch_doc(D, doff, row[j])
            for j in range(row.shape[0]):
                c = row[j]
                if j + PREFETCH_DOCS < row.shape[0] and row[j + PREFETCH_DOCS] >= 0:
                    _prefetch_doc(D, doff, row[j + PREFETCH_DOCS])
                if c < 0:
                    continue
                d = -_chamfer(Qt, qm, qs, D, aux, doff[c], doff[c + 1], best, B)
                size = heap_push(hd, hi, size, d, c)
        heap_sorted(hd, hi, size, out_d[q], out_i[q])


@njit(**JIT)
def fde_encode(H, P, offsets, k_sim, average, fill_empty, out):
    """MUVERA FDEs of the token sets ``offsets[i]:offsets[i+1]`` into ``out[i]``, from their
    SimHash projections ``H`` (n_tokens, R * k_sim) and inner projections ``P``
    (n_tokens, R * d_proj), both computed beforehand (one matrix product each).

    Per repetition r: a token's bucket has bit j set when H[t, r * k_sim + j] > 0; a bucket's
    block is its tokens' projections summed (queries) or averaged (documents, ``average``);
    ``fill_empty``: an empty bucket takes the first token of the occupied bucket whose id
    differs from its own in fewest bits (the lowest such id: the paper's and fastembed's
    choice, worth 0.015 recall@10 at 2% candidates on WordNet over the first such token).
    out is (n, R * 2**k_sim * d_proj), zero on entry."""
    nb = 1 << k_sim
    reps = H.shape[1] // k_sim
    dp = P.shape[1] // reps
    for i in range(offsets.shape[0] - 1):
        a = offsets[i]
        n = offsets[i + 1] - a
        codes = np.empty(n, np.int64)
        counts = np.empty(nb, np.int64)
        occupied = np.empty(min(n, nb), np.int64)
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
            n_occ = 0
            for bk in range(nb):
                if counts[bk] > 0:
                    occupied[n_occ] = bk
                    n_occ += 1
            for bk in range(nb):
                o = base + bk * dp
                if counts[bk] > 0:
                    if average and counts[bk] > 1:
                        inv = np.float32(1.0) / np.float32(counts[bk])
                        for p in range(dp):
                            out[i, o + p] *= inv
                elif fill_empty and n > 0:
                    best, best_b = 1 << 30, 0
                    for u in range(n_occ):  # the nearest occupied bucket (lowest id on ties)
                        ob = occupied[u]
                        x = ob ^ bk
                        bits = 0
                        while x:
                            bits += x & 1
                            x >>= 1
                        if bits < best:
                            best, best_b = bits, ob
                    best_t = 0
                    for t in range(n):  # its first token
                        if codes[t] == best_b:
                            best_t = t
                            break
                    for p in range(dp):
                        out[i, o + p] = P[a + best_t, r * dp + p]


_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
"""Fibonacci hashing of document numbers into the vote table."""


@njit(**INLINE)
def _vote_slot(keys, d, shift) -> int:
    """The slot of document d in the open-addressed table ``keys`` (-1 = empty; size
    2**(64 - shift), never full): where d is, or the empty slot where it goes."""
    mask = keys.shape[0] - 1
    h = np.int64((np.uint64(d) * _HASH_MUL) >> np.uint64(shift)) & mask
    while keys[h] != -1 and keys[h] != d:
        h = (h + 1) & mask
    return h


@njit(**INLINE)
def _vote(h, s, t, score, cur, stamp) -> None:
    """The document in slot h gets similarity s from query token t: its vote is the sum over
    query tokens of the best s each gave it. Selects, not branches (a new document, a first
    hit from this token and a better one are coin flips to a branch predictor): an empty slot
    holds score 0 and stamp -1."""
    first = stamp[h] != t
    old = cur[h]
    score[h] += s if first else max(s - old, np.float32(0.0))
    cur[h] = s if first else max(old, s)
    stamp[h] = t


@njit(**INLINE)
def _best_voted(keys, score, stamp, touched, nt, vd, vi, out) -> None:
    """The ``out.shape[0]`` best-voted touched documents into out (-1 padded); empties the
    table's touched slots."""
    c = out.shape[0]
    for i in range(nt):
        vd[i] = -score[touched[i]]
        vi[i] = keys[touched[i]]
    keep = nt
    if nt > c:
        select_smallest(vd, vi, nt, c)
        keep = c
    for i in range(c):
        out[i] = vi[i] if i < keep else -1
    for i in range(nt):
        h = touched[i]
        keys[h] = -1
        score[h] = 0
        stamp[h] = -1


VOTE_MISSING = np.float32(0.5)
"""A query token that did not retrieve any of a document's tokens adds this share of its worst
retrieved similarity to the document's vote (XTR's imputation adds all of it; 0 would add
nothing). WordNet tokens over IVF512,PQ64x4fs, 96 hits, nprobe 16, recall@10 at 60/80/100
candidates: 0.913/0.938/0.955 with 0, 0.929/0.949/0.959 with 0.5, 0.927/0.947/0.959 with 0.75,
0.876/0.909/0.930 with 1; over HNSW16,SQ8 with 48 hits 0 and 0.5 tie (0.948 at 100)."""


@njit(**INLINE)
def _worst_hit(pos, dist, f, h):
    """The largest distance among the hits in pos[f:f + h] (-1 padded)."""
    worst = np.float32(-np.inf)
    for j in range(f, f + h):
        if pos[j] < 0:
            break
        worst = max(worst, dist[j])
    return worst


@njit(**JIT)
def token_votes(doc_of, hit_pos, hit_dist, qoff, ndocs, out_cand) -> None:
    """Candidate documents from token-level nearest neighbours: for query q (token rows
    qoff[q]:qoff[q+1] of the hit matrices, each -1 padded at its end), a document's vote
    estimates its Chamfer score, summed over the query tokens: the best similarity
    (-distance) among its tokens that the token retrieved, or, where it retrieved none,
    ``VOTE_MISSING`` times the token's worst retrieved similarity (each token's sum is
    shifted by that constant, so only retrieved tokens are tallied). The best
    ``out_cand.shape[1]`` documents by vote go to out_cand[q] (-1 padded). The votes live in
    a hash table sized by the hits, not by the ``ndocs`` documents, so a query costs the same
    in a collection of any size.

    A query's document numbers are gathered first, in a loop of independent loads whose
    misses overlap; the tally then reads them in order. With the selects of ``_vote``: 14 us
    a WordNet query of 718 hits, against 26 us with the loads prefetched in the tally."""
    h = hit_pos.shape[1]
    most = 1
    for q in range(qoff.shape[0] - 1):
        most = max(most, (qoff[q + 1] - qoff[q]) * h)
    most = min(most, ndocs)
    size, shift = 16, 60
    while size < 2 * most:
        size, shift = size * 2, shift - 1
    keys = np.full(size, -1, np.int64)
    stamp = np.full(size, -1, np.int64)
    score = np.zeros(size, np.float32)
    cur = np.empty(size, np.float32)
    touched = np.empty(most + 1, np.int64)
    vd = np.empty(most + 1, np.float32)
    vi = np.empty(most + 1, np.int64)
    pos = hit_pos.reshape(-1)
    dist = hit_dist.reshape(-1)
    docs = np.empty(pos.shape[0], np.int64)
    for q in range(qoff.shape[0] - 1):
        for f in range(qoff[q] * h, qoff[q + 1] * h):
            docs[f] = doc_of[pos[f]] if pos[f] >= 0 else -1
        nt = 0
        for t in range(qoff[q], qoff[q + 1]):
            missing = VOTE_MISSING * _worst_hit(pos, dist, t * h, h)
            for f in range(t * h, (t + 1) * h):
                d = docs[f]
                if d < 0:  # the token's hits end here
                    break
                slot = _vote_slot(keys, d, shift)
                touched[nt] = slot
                nt += keys[slot] == -1
                keys[slot] = d
                _vote(slot, missing - dist[f], t, score, cur, stamp)
        _best_voted(keys, score, stamp, touched, nt, vd, vi, out_cand[q])


POOL_WINDOW = 128
"""Token pooling clusters a document's tokens within windows of this many consecutive
tokens (greedy merging costs the cube of the window)."""


@njit(**JIT)
def pool_counts(offsets, factor):
    """Tokens each document keeps when pooled by ``factor``: ceil(n / factor) per window."""
    n = offsets.shape[0] - 1
    out = np.empty(n + 1, np.int64)
    out[0] = 0
    for i in range(n):
        kept = 0
        a = offsets[i]
        while a < offsets[i + 1]:
            w = min(POOL_WINDOW, offsets[i + 1] - a)
            kept += (w + factor - 1) // factor
            a += w
        out[i + 1] = out[i] + kept
    return out


@njit(**JIT)
def pool_tokens(T, offsets, factor, unit, out_offsets, out):
    """Token pooling (Clavie et al., 2024): each document's tokens, window by window, are
    clustered agglomeratively by Ward's criterion, as the paper's ``ward`` linkage: the two
    clusters whose merge least grows the within-cluster sum of squares (na nb / (na + nb)
    ||mean_a - mean_b||^2) merge first, until ceil(n / factor) remain; a cluster becomes its
    mean token (normalised to unit length if ``unit``). ``out_offsets`` from ``pool_counts``;
    ``out`` (out_offsets[-1], dim)."""
    dim = T.shape[1]
    sums = np.empty((POOL_WINDOW, dim), np.float32)
    cnt = np.empty(POOL_WINDOW, np.float32)
    alive = np.empty(POOL_WINDOW, np.bool_)
    cost = np.empty((POOL_WINDOW, POOL_WINDOW), np.float32)
    for i in range(offsets.shape[0] - 1):
        o = out_offsets[i]
        a = offsets[i]
        while a < offsets[i + 1]:
            w = min(POOL_WINDOW, offsets[i + 1] - a)
            target = (w + factor - 1) // factor
            for r in range(w):
                alive[r] = True
                cnt[r] = 1
                for j in range(dim):
                    sums[r, j] = T[a + r, j]
            for r in range(w):
                for c in range(r + 1, w):
                    cost[r, c] = _ward_cost(sums[r], cnt[r], sums[c], cnt[c])
            left = w
            while left > target:
                best, br, bc = np.float32(np.inf), -1, -1
                for r in range(w):
                    if alive[r]:
                        for c in range(r + 1, w):
                            if alive[c] and cost[r, c] < best:
                                best, br, bc = cost[r, c], r, c
                if br < 0:  # no finite cost (values whose squares overflow): the first two merge
                    br = 0
                    while not alive[br]:
                        br += 1
                    bc = br + 1
                    while not alive[bc]:
                        bc += 1
                for j in range(dim):
                    sums[br, j] += sums[bc, j]
                cnt[br] += cnt[bc]
                alive[bc] = False
                left -= 1
                for c in range(w):
                    if alive[c] and c != br:
                        s = _ward_cost(sums[br], cnt[br], sums[c], cnt[c])
                        if c > br:
                            cost[br, c] = s
                        else:
                            cost[c, br] = s
            for r in range(w):
                if alive[r]:
                    norm = np.float32(0.0)
                    for j in range(dim):
                        norm += sums[r, j] * sums[r, j]
                    scale = np.float32(1.0) / cnt[r]
                    if unit and norm > 0:
                        scale = np.float32(1.0) / np.sqrt(norm)
                    for j in range(dim):
                        out[o, j] = sums[r, j] * scale
                    o += 1
            a += w


@njit(**INLINE)
def _ward_cost(sa, na, sb, nb) -> np.float32:
    """Growth of the within-cluster sum of squares when clusters of sums ``sa``, ``sb`` and
    sizes ``na``, ``nb`` merge: na nb / (na + nb) ||sa / na - sb / nb||^2."""
    ia = np.float32(1.0) / na
    ib = np.float32(1.0) / nb
    s = np.float32(0.0)
    for j in range(sa.shape[0]):
        diff = sa[j] * ia - sb[j] * ib
        s += diff * diff
    return na * nb / (na + nb) * s
