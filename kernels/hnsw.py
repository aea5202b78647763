"""HNSW graph kernels (Malkov & Yashunin): beam search, heuristic neighbour selection, and a
batched parallel insertion that needs no locks.

Graph layout: layer 0 is ``nbr0[node, :2M]``; layers 1..MAX_UPPER live in
``upper[uidx[node], layer-1, :M]`` for the few nodes that reach them. Rows are int32, padded
with -1. ``visited`` holds a byte of generation tag a node (``_next_tag``), so a query almost
never clears it.

Insertion runs in batches: (1) every new node of a batch searches the graph as it was before
the batch and writes only its own rows, in interleaved chunks on threads; (2) the reverse links are grouped by
target node and each target's row is updated by one thread. No two threads write one row, so
the build is lock-free and gives the same graph for any number of threads.
"""

import numpy as np
from numba import njit

from . import INLINE, JIT
from .bitset import bitset_test
from .dispatch import codec_distance, rerank_span, side_bytes, traversal_bytes
from .prefetch import SIDE_BYTES, prefetch_row, prefetch_row_l2, prefetch_span_l2, prefetch_stored_row
from .topk import RANK_SELECT_MAX, heap_push, heap_sorted, rank_select, sort_pairs

PREFETCH_BYTES = 2048
"""How much of each unvisited neighbour's row a traversal prefetches (into L2) before scoring
them: all that its distance reads (``traversal_bytes``: a two-level or LeanVec row's primary
codes) up to a 512-d float32 row (lines not prefetched are waited for one by one: 1,024 of a
384-d float32 row's 1,536 bytes measured 1.33x slower)."""

NEIGHBOURS_PREFETCH_BYTES = 256
"""How much of the next candidate's layer-0 neighbour list a traversal prefetches while it
scores the current one's neighbours: a whole list up to M=32 (64 int32; M=16's is 128
bytes, and prefetch_row stops at the row's end)."""

RERANK_AHEAD = 8
"""Re-ranking reads candidate rows in an order no prefetcher guesses: each row is prefetched
this many candidates ahead of its distance."""
RERANK_PREFETCH_BYTES = 4096
"""How much of a candidate row re-ranking prefetches (a 1,024-d float32 row)."""

MAX_UPPER = 8
"""Layers above 0 that a node can reach (level draws are clamped): P(level > 8) = M**-9."""


@njit(**INLINE)
def _min_push(hd, hi, size, d, i):
    if size >= hd.shape[0]:
        return size  # bounded candidate queue: drop (only reachable in pathological cases)
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if hd[parent] <= d:
            break
        hd[pos] = hd[parent]
        hi[pos] = hi[parent]
        pos = parent
    hd[pos] = d
    hi[pos] = i
    return size + 1


@njit(**INLINE)
def _min_pop(hd, hi, size):
    d0 = hd[0]
    i0 = hi[0]
    size -= 1
    d = hd[size]
    i = hi[size]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and hd[child + 1] < hd[child]:
            child += 1
        if hd[child] >= d:
            break
        hd[pos] = hd[child]
        hi[pos] = hi[child]
        pos = child
    if size > 0:
        hd[pos] = d
        hi[pos] = i
    return d0, i0, size


@njit(**INLINE)
def _next_tag(visited, tag) -> int:
    """The generation tag of the next search over ``visited``: bytes, cleared every 255
    searches, a quarter of int32 tags' memory (117 KB a thread for WordNet's 117k nodes,
    against 468 KB of the 2 MB L2 a traversal's rows share). Queries/s: 1.02-1.04x on the OOD
    queries (HNSW32 LVQ8 and LeanVec(192), saved indexes, a scratch A/B), 0.97-1.00x on the
    in-distribution ones (``python -m quiver.bench.ab --base 8fd56fd --spec HNSW32,LVQ8``)."""
    if tag >= 255:
        visited[:] = 0
        return 1
    return tag + 1


@njit(**INLINE)
def neighbors(nbr0, upper, uidx, node, level):
    if level == 0:
        return nbr0[node]
    return upper[uidx[node], level - 1]


@njit(**JIT)
def greedy_descent(kind, qs, codes, aux, nbr0, upper, uidx, ep, top_level, stop_level):
    """Walk layers top_level .. stop_level+1 greedily (ef = 1); returns (node, distance)."""
    cur = ep
    cur_d = codec_distance(kind, qs, codes, aux, cur)
    ahead = min(PREFETCH_BYTES, traversal_bytes(kind, qs, codes))
    side = side_bytes(kind)
    for level in range(top_level, stop_level, -1):
        changed = True
        while changed:
            changed = False
            row = neighbors(nbr0, upper, uidx, cur, level)
            for v in row:  # the rows load together, as the beam's do
                if v < 0:
                    break
                prefetch_stored_row(codes, aux, v, ahead, side)
            for v in row:
                if v < 0:
                    break
                d = codec_distance(kind, qs, codes, aux, v)
                if d < cur_d:
                    cur_d = d
                    cur = v
                    changed = True
    return cur, cur_d


@njit(**JIT)
def search_layer(kind, qs, codes, aux, nbr0, upper, uidx, ep, ep_d, level, ef, visited, tag,
                 cand_d, cand_i, res_d, res_i, ok_words, use_ok, budget):
    """Beam search of one layer from ``ep``. Results (a max-heap of size <= ef in res_*) hold
    only nodes passing ``ok_words`` when use_ok; other nodes still route the search.

    An expansion runs in three loops: the unvisited neighbours are gathered (and their rows
    prefetched), then all their distances computed, then the heaps updated. Computed between
    the heap updates' unpredictable branches, a distance's loads were thrown away with every
    misprediction; apart, they overlap: 31 against 42 us a query over 1,500 WordNet LVQ-8
    rows in L2, 103 against 111 over all 117k (ef 46).

    Returns (result count, distances computed); the count is -1 when ``budget`` ran out."""
    csize = 0
    rsize = 0
    ndist = 1
    ahead = min(PREFETCH_BYTES, traversal_bytes(kind, qs, codes))
    side = side_bytes(kind)
    fresh = np.empty(nbr0.shape[1], np.int64)
    fresh_d = np.empty(nbr0.shape[1], np.float32)
    visited[ep] = tag
    csize = _min_push(cand_d, cand_i, csize, ep_d, ep)
    if not use_ok or bitset_test(ok_words, ep):
        rsize = heap_push(res_d, res_i, rsize, ep_d, ep)
    while csize > 0:
        c_d, c, csize = _min_pop(cand_d, cand_i, csize)
        if rsize >= ef and c_d > res_d[0]:
            break
        if csize > 0 and level == 0:  # the likeliest next node's neighbour list (hnswlib too)
            prefetch_row(nbr0, cand_i[0], NEIGHBOURS_PREFETCH_BYTES)
        row = neighbors(nbr0, upper, uidx, c, level)
        nf = 0
        for v in row:
            if v < 0:
                break
            if visited[v] != tag:
                visited[v] = tag
                prefetch_stored_row(codes, aux, v, ahead, side)
                fresh[nf] = v
                nf += 1
        best = -1
        best_d = cand_d[0] if csize > 0 else np.float32(np.inf)
        for j in range(nf):
            fresh_d[j] = codec_distance(kind, qs, codes, aux, fresh[j])
            if fresh_d[j] < best_d:
                best_d = fresh_d[j]
                best = j
        if best >= 0 and level == 0:  # the next node expanded, unless the results reject it
            prefetch_row(nbr0, fresh[best], NEIGHBOURS_PREFETCH_BYTES)
        ndist += nf
        for j in range(nf):
            d = fresh_d[j]
            if rsize < ef or d < res_d[0]:
                csize = _min_push(cand_d, cand_i, csize, d, fresh[j])
                if not use_ok or bitset_test(ok_words, fresh[j]):
                    rsize = heap_push(res_d, res_i, rsize, d, fresh[j])
        if ndist > budget:
            return -1, ndist
    return rsize, ndist


@njit(**JIT)
def search_layer_two_hop(kind, qs, codes, aux, nbr0, upper, uidx, ep, ep_d, level, ef, visited,
                         tag, cand_d, cand_i, res_d, res_i, ok_words, budget):
    """``search_layer`` over the nodes passing ``ok_words`` only: a rejected neighbour is
    skipped in favour of its own neighbours (ACORN-1 style expansion), gathered by
    ``_gather_two_hop`` and then scored and pushed as there. A kernel of its own: the build
    never filters, and compiles only ``search_layer``; one kernel serving both (the mode a
    runtime flag) measured 0.92x unfiltered, and inlined with the flag constant it doubled
    the build's compile (12 s against 6 on a fresh install)."""
    csize = 0
    rsize = 0
    ndist = 1
    ahead = min(PREFETCH_BYTES, traversal_bytes(kind, qs, codes))
    side = side_bytes(kind)
    fresh = np.empty(nbr0.shape[1] * nbr0.shape[1], np.int64)
    fresh_d = np.empty(fresh.shape[0], np.float32)
    visited[ep] = tag
    csize = _min_push(cand_d, cand_i, csize, ep_d, ep)
    if bitset_test(ok_words, ep):
        rsize = heap_push(res_d, res_i, rsize, ep_d, ep)
    while csize > 0:
        c_d, c, csize = _min_pop(cand_d, cand_i, csize)
        if rsize >= ef and c_d > res_d[0]:
            break
        if csize > 0 and level == 0:
            prefetch_row(nbr0, cand_i[0], NEIGHBOURS_PREFETCH_BYTES)
        row = neighbors(nbr0, upper, uidx, c, level)
        nf = _gather_two_hop(codes, aux, nbr0, upper, uidx, row, level, visited, tag,
                             ok_words, ahead, side, fresh)
        for j in range(nf):
            fresh_d[j] = codec_distance(kind, qs, codes, aux, fresh[j])
        ndist += nf
        for j in range(nf):
            if rsize < ef or fresh_d[j] < res_d[0]:
                csize = _min_push(cand_d, cand_i, csize, fresh_d[j], fresh[j])
                rsize = heap_push(res_d, res_i, rsize, fresh_d[j], fresh[j])
        if ndist > budget:
            return -1, ndist
    return rsize, ndist


@njit(**INLINE)
def _gather_two_hop(codes, aux, nbr0, upper, uidx, row, level, visited, tag, ok_words, ahead,
                    side, fresh) -> int:
    """A filtered two-hop expansion's nodes to score, in order, into ``fresh`` (their rows
    prefetched): each unvisited allowed neighbour, and in a rejected one's place its own
    unvisited allowed neighbours. Returns their count."""
    nf = 0
    for v in row:
        if v < 0:
            break
        if visited[v] == tag:
            continue
        visited[v] = tag
        if bitset_test(ok_words, v):
            prefetch_stored_row(codes, aux, v, ahead, side)
            fresh[nf] = v
            nf += 1
            continue
        for w in neighbors(nbr0, upper, uidx, v, level):
            if w < 0:
                break
            if visited[w] == tag or not bitset_test(ok_words, w):
                continue
            visited[w] = tag
            prefetch_stored_row(codes, aux, w, ahead, side)
            fresh[nf] = w
            nf += 1
    return nf


@njit(**JIT)
def traverse(kind, qs, codes, aux, nbr0, upper, uidx, entry, max_level, ef, visited, tag,
             cand_d, cand_i, res_d, res_i, ok_words, use_ok, two_hop, budget):
    """Greedy descent, then the layer-0 beam search: returns the result count in res_* (a
    max-heap), or -1 if the budget ran out."""
    layer0 = np.int64(0)  # not a literal 0: one compiled callee for every call site
    ep, ep_d = greedy_descent(kind, qs, codes, aux, nbr0, upper, uidx, entry, max_level, layer0)
    if two_hop:
        rsize, _ = search_layer_two_hop(kind, qs, codes, aux, nbr0, upper, uidx, ep, ep_d, layer0,
                                        ef, visited, tag, cand_d, cand_i, res_d, res_i, ok_words,
                                        budget)
    else:
        rsize, _ = search_layer(kind, qs, codes, aux, nbr0, upper, uidx, ep, ep_d, layer0, ef,
                                visited, tag, cand_d, cand_i, res_d, res_i, ok_words, use_ok,
                                budget)
    return rsize


@njit(**JIT)
def search_one(kind, qs, codes, aux, nbr0, upper, uidx, entry, max_level, ef, visited, tag,
               cand_d, cand_i, res_d, res_i, ok_words, use_ok, two_hop, budget, out_d, out_i):
    """Full HNSW query: greedy descent, then layer-0 beam search; writes the best
    len(out_d) results ascending. Returns the result count, or -1 if the budget ran out."""
    rsize = traverse(kind, qs, codes, aux, nbr0, upper, uidx, entry, max_level, ef, visited,
                     tag, cand_d, cand_i, res_d, res_i, ok_words, use_ok, two_hop, budget)
    if rsize < 0:
        return -1
    k = out_d.shape[0]
    if rsize <= RANK_SELECT_MAX:
        return rank_select(res_d, res_i, rsize, out_d, out_i)
    size = 0
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    for j in range(rsize):
        size = heap_push(hd, hi, size, res_d[j], res_i[j])
    heap_sorted(hd, hi, size, out_d, out_i)
    return size


@njit(**JIT)
def search_chunk(kind, QS, codes, aux, nbr0, upper, uidx, entry, max_level, ef, visited, tag,
                 ok_words, use_ok, two_hop, budget, out_d, out_i, counts, first, step):
    """Queries first, first + step, ... with one visited array; returns the last tag used."""
    cap = max(16 * ef, 1024)
    cand_d = np.empty(cap, np.float32)
    cand_i = np.empty(cap, np.int64)
    res_d = np.empty(ef, np.float32)
    res_i = np.empty(ef, np.int64)
    for q in range(first, QS.shape[0], step):
        tag = _next_tag(visited, tag)
        counts[q] = search_one(kind, QS[q], codes, aux, nbr0, upper, uidx, entry, max_level,
                               ef, visited, tag, cand_d, cand_i, res_d, res_i,
                               ok_words, use_ok, two_hop, budget, out_d[q], out_i[q])
    return tag


@njit(**INLINE)
def _rerank_into(second, qs, codes, aux, cands, count, scratch, out_d, out_i) -> int:
    """The best len(out_d) of ``cands[:count]`` by distance ``second``, ascending;
    ``scratch``: room for ``count`` distances."""
    k = out_d.shape[0]
    if count <= RANK_SELECT_MAX:
        for j in range(count):
            scratch[j] = codec_distance(second, qs, codes, aux, cands[j])
        return rank_select(scratch, cands, count, out_d, out_i)
    size = 0
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    for j in range(count):
        size = heap_push(hd, hi, size, codec_distance(second, qs, codes, aux, cands[j]),
                         cands[j])
    heap_sorted(hd, hi, size, out_d, out_i)
    return size


@njit(**JIT)
def search_rerank_chunk(kind, second, QS, codes, aux, nbr0, upper, uidx, entry, max_level, ef,
                        visited, tag, ok_words, use_ok, two_hop, budget, out_d, out_i, counts,
                        first, step):
    """``search_chunk`` of a two-level codec: each query's ef results re-scored with the
    accurate distance ``second``, the best len(out_d[q]) kept.

    Pipelined: a query's results get their re-ranking bytes (``rerank_span``) prefetched,
    the next query traverses, and only then is the first re-ranked, its rows in L2 by then.
    A re-ranking pass after the batch's traversals waited on every row from memory: 3.6 of
    LeanVec(192)'s 55 us a WordNet query at ef 32, prefetching 8 rows ahead."""
    cap = max(16 * ef, 1024)
    cand_d = np.empty(cap, np.float32)
    cand_i = np.empty(cap, np.int64)
    res_d = np.empty(ef, np.float32)
    res_i = np.empty(ef, np.int64)
    held = np.empty((2, ef), np.int64)  # the results of the query in flight, and the next's
    scratch = np.empty(ef, np.float32)  # their re-ranking distances
    if first >= QS.shape[0]:
        return tag
    span0, span1 = rerank_span(kind, QS[first], codes)
    prev = -1
    prev_n = 0
    slot = 0
    for q in range(first, QS.shape[0], step):
        tag = _next_tag(visited, tag)
        rsize = traverse(kind, QS[q], codes, aux, nbr0, upper, uidx, entry, max_level, ef,
                         visited, tag, cand_d, cand_i, res_d, res_i, ok_words, use_ok, two_hop,
                         budget)
        for j in range(max(rsize, 0)):
            held[slot, j] = res_i[j]
            prefetch_span_l2(codes, res_i[j], span0, span1)
            prefetch_row_l2(aux, res_i[j], SIDE_BYTES)
        if prev >= 0:
            counts[prev] = _rerank_into(second, QS[prev], codes, aux, held[1 - slot], prev_n, scratch,
                                        out_d[prev], out_i[prev])
        if rsize < 0:
            counts[q] = -1  # out of budget: nothing written
            prev = -1
        else:
            prev, prev_n, slot = q, rsize, 1 - slot
    if prev >= 0:
        counts[prev] = _rerank_into(second, QS[prev], codes, aux, held[1 - slot], prev_n, scratch,
                                    out_d[prev], out_i[prev])
    return tag


# --- construction --------------------------------------------------------------------------


@njit(**JIT)
def select_heuristic(kind, X, aux, cand_d, cand_i, count, m, out):
    """Malkov & Yashunin's heuristic: take candidates by increasing distance, keeping one only
    if it is closer to the base than to every neighbour already kept. Returns the kept count."""
    nsel = 0
    for j in range(count):
        c = cand_i[j]
        dc = cand_d[j]
        good = True
        for s in range(nsel):
            if codec_distance(kind, X[c], X, aux, out[s]) < dc:
                good = False
                break
        if good:
            out[nsel] = c
            nsel += 1
            if nsel == m:
                break
    return nsel


@njit(**JIT)
def _sort_pairs(d, i, count):
    sd, si = d[:count].copy(), i[:count].copy()
    sort_pairs(sd, si, count)
    return sd, si


@njit(**JIT)
def insert_chunk(kind, X, aux, nodes, levels, nbr0, upper, uidx, entry, max_level, efc, m,
                 visited, tag, first, step):
    """Phase 1 for nodes[first::step]: connect each to the graph as it was before the batch,
    writing only its own rows. Returns the last visited tag used."""
    cap = max(16 * efc, 1024)
    cand_d = np.empty(cap, np.float32)
    cand_i = np.empty(cap, np.int64)
    res_d = np.empty(efc, np.float32)
    res_i = np.empty(efc, np.int64)
    sel = np.empty(nbr0.shape[1], np.int64)
    dummy = np.zeros(1, np.uint64)
    no, unbounded = np.bool_(False), np.int64(1 << 62)  # typed like search_one's arguments
    for j in range(first, nodes.shape[0], step):
        u = nodes[j]
        qs = X[u]
        lu = levels[u]
        ep, ep_d = greedy_descent(kind, qs, X, aux, nbr0, upper, uidx, entry, max_level,
                                  min(lu, max_level))
        for level in range(min(lu, max_level), -1, -1):
            tag = _next_tag(visited, tag)
            rsize, _ = search_layer(kind, qs, X, aux, nbr0, upper, uidx, ep, ep_d, level,
                                    efc, visited, tag, cand_d, cand_i, res_d, res_i,
                                    dummy, no, unbounded)
            sd, si = _sort_pairs(res_d, res_i, rsize)
            nsel = select_heuristic(kind, X, aux, sd, si, rsize, m, sel)
            row = neighbors(nbr0, upper, uidx, u, level)
            row[:] = -1
            for s in range(nsel):
                row[s] = sel[s]
            ep = si[0]
            ep_d = sd[0]
    return tag


@njit(**JIT)
def link_groups(kind, X, aux, nbr0, upper, uidx, level, targets, sources, starts, first, step):
    """Phase 2 for groups first, first + step, ...: group g adds
    sources[starts[g]:starts[g+1]] to the row of targets[starts[g]]; a row that overflows is
    pruned with the heuristic. Each target's row is written by exactly one group."""
    ngroups = starts.shape[0] - 1
    for g in range(first, ngroups, step):
        t = targets[starts[g]]
        row = neighbors(nbr0, upper, uidx, t, level)
        cap = row.shape[0]
        cnt = 0
        while cnt < cap and row[cnt] >= 0:
            cnt += 1
        nnew = starts[g + 1] - starts[g]
        if cnt + nnew <= cap:
            for j in range(nnew):
                row[cnt + j] = sources[starts[g] + j]
            continue
        total = cnt + nnew
        cd = np.empty(total, np.float32)
        ci = np.empty(total, np.int64)
        qs = X[t]
        for j in range(cnt):
            ci[j] = row[j]
        for j in range(nnew):
            ci[cnt + j] = sources[starts[g] + j]
        for j in range(total):
            cd[j] = codec_distance(kind, qs, X, aux, ci[j])
        sd, si = _sort_pairs(cd, ci, total)
        sel = np.empty(cap, np.int64)
        nsel = select_heuristic(kind, X, aux, sd, si, total, cap, sel)
        row[:] = -1
        for s in range(nsel):
            row[s] = sel[s]


@njit(**JIT)
def link_query_hoods(nbr0, hoods) -> int:
    """Query-guided edges: each row of ``hoods`` is a sample query's nearest nodes, nearest
    first; its nearest node (the hub) and every other one are linked both ways, into free
    base-level slots only (a full list keeps its pruned neighbours). Out-of-distribution
    queries (short questions against passages) land in regions the data's own neighbour
    lists link poorly; these edges give the beam a way through them (RoarGraph, Chen et
    al. 2024, makes a graph of such neighbourhoods). Returns the edges added."""
    added = 0
    for h in range(hoods.shape[0]):
        hub = hoods[h, 0]
        if hub < 0:
            continue
        for j in range(1, hoods.shape[1]):
            v = hoods[h, j]
            if v < 0 or v == hub:
                continue
            added += _link_free(nbr0[hub], v) + _link_free(nbr0[v], hub)
    return added


@njit(**INLINE)
def _link_free(row, v) -> int:
    """Append ``v`` to a -1-terminated neighbour row where it is absent and a slot is free."""
    for s in range(row.shape[0]):
        if row[s] == v:
            return 0
        if row[s] < 0:
            row[s] = v
            return 1
    return 0


@njit(**JIT)
def rerank_chunk(kind, Q, X, aux, cand_i, k, out_d, out_i, first, step):
    """Re-score the candidates of queries first, first + step, ... with an accurate distance
    and keep the best k of each."""
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    for q in range(first, Q.shape[0], step):
        cands = cand_i[q]
        size = 0
        for t in range(min(RERANK_AHEAD, cands.shape[0])):
            if cands[t] >= 0:
                prefetch_stored_row(X, aux, cands[t], RERANK_PREFETCH_BYTES, SIDE_BYTES)
        for t in range(cands.shape[0]):
            c = cands[t]
            if c < 0:
                break
            ahead = t + RERANK_AHEAD
            if ahead < cands.shape[0] and cands[ahead] >= 0:
                prefetch_stored_row(X, aux, cands[ahead], RERANK_PREFETCH_BYTES, SIDE_BYTES)
            size = heap_push(hd, hi, size, codec_distance(kind, Q[q], X, aux, c), c)
        heap_sorted(hd, hi, size, out_d[q], out_i[q])
