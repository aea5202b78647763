"""Inverted-file search: probe the nearest lists, score their rows through a codec, keep top-k.

Layout (``engine/index/ivf.py``): rows are stored list after list, so list ``l`` is slots
``offsets[l]:offsets[l+1]`` of ``codes``/``aux``; ``slot_pos[s]`` is the row position (insertion
order) stored in slot ``s``, the number results and bitsets speak in.

Two ways to search:
- ``search_one``: one query, coarse quantizer and list scans fused in one call;
- ``search_lists``: a batch, *list-major*: each list is read from memory about once for all
  the queries that probe it (each of those queries scans it while it sits in L2), instead of
  once per query. That turns the memory-bound scan of a batch into a compute-bound one
  (WordNet 117k x 384, 1,000 queries, nprobe 16-64, one thread: 19-22 ns a distance).
"""

import numpy as np
from numba import njit, prange

from . import INLINE, JIT
from .bitset import bitset_test
from .dispatch import codec_distance
from .distance import dot
from .topk import heap_push, heap_sorted


@njit(**INLINE)
def _scan_list(kind, qs, codes, aux, a, b, slot_pos, words, filtered, hd, hi, size) -> int:
    k = hd.shape[0]
    for s in range(a, b):
        p = slot_pos[s]
        if filtered and not bitset_test(words, p):
            continue
        d = codec_distance(kind, qs, codes, aux, s)
        if size < k or d < hd[0]:
            size = heap_push(hd, hi, size, d, p)
    return size


@njit(**INLINE)
def _nearest(q, centroids, cnorms, nprobe, pd, pi) -> int:
    """The ``nprobe`` centroids minimising cnorms[c] - 2 <q, c> into the heap (pd, pi)."""
    size = 0
    two = np.float32(2.0)
    for c in range(centroids.shape[0]):
        v = cnorms[c] - two * dot(q, centroids[c])
        if size < nprobe or v < pd[0]:
            size = heap_push(pd, pi, size, v, c)
    return size


@njit(**JIT)
def search_one(kind, q, qs, centroids, cnorms, nprobe, codes, aux, offsets, slot_pos, k,
               words, filtered, out_d, out_i) -> int:
    """Top-k of one query (``q`` float32 for the coarse quantizer, ``qs`` prepared for the
    codec) over its ``nprobe`` nearest lists; returns how many results it found."""
    pd = np.empty(nprobe, np.float32)
    pi = np.empty(nprobe, np.int64)
    probes = _nearest(q, centroids, cnorms, nprobe, pd, pi)
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = 0
    for t in range(probes):
        lst = pi[t]
        size = _scan_list(kind, qs, codes, aux, offsets[lst], offsets[lst + 1], slot_pos, words,
                          filtered, hd, hi, size)
    heap_sorted(hd, hi, size, out_d, out_i)
    return size


@njit(**JIT)
def queries_by_list(probes, q0, q1, nlist):
    """CSR of the queries in [q0, q1) grouped by the lists they probe: starts (nlist + 1) and
    query numbers, ascending within each list."""
    nprobe = probes.shape[1]
    starts = np.zeros(nlist + 1, np.int64)
    for q in range(q0, q1):
        for t in range(nprobe):
            starts[probes[q, t] + 1] += 1
    for lst in range(nlist):
        starts[lst + 1] += starts[lst]
    fill = starts[:-1].copy()
    queries = np.empty(starts[nlist], np.int64)
    for q in range(q0, q1):
        for t in range(nprobe):
            lst = probes[q, t]
            queries[fill[lst]] = q
            fill[lst] += 1
    return starts, queries


@njit(parallel=True, **JIT)
def search_lists(kind, QS, probes, codes, aux, offsets, slot_pos, words, filtered, groups,
                 out_d, out_i) -> None:
    """List-major scan of a query batch: ``probes`` (nq, nprobe) are each query's lists; the
    sorted top-k of each query goes to ``out_d``/``out_i`` (inf/-1 padded).

    The batch is cut into ``groups`` query groups (one per thread); each group walks the
    lists in order and lets each of its queries that probes a list scan it, so the list is
    fetched from memory once per group and then read from L2. A query belongs to one group,
    so its heap is private and tightens across its lists; results do not depend on the
    grouping (each query sees its lists in list order)."""
    nq = QS.shape[0]
    nlist = offsets.shape[0] - 1
    k = out_d.shape[1]
    for g in prange(groups):
        q0 = g * nq // groups
        q1 = (g + 1) * nq // groups
        starts, queries = queries_by_list(probes, q0, q1, nlist)
        hd = np.empty((q1 - q0, k), np.float32)
        hi = np.empty((q1 - q0, k), np.int64)
        sizes = np.zeros(q1 - q0, np.int64)
        # the group's prepared queries, contiguous and private: codecs that use scratch
        # space in the prepared row (f16) never share it with another thread
        qloc = QS[q0:q1].copy()
        for lst in range(nlist):
            a = starts[lst]
            b = starts[lst + 1]
            if a == b:
                continue
            for t in range(a, b):
                u = queries[t] - q0
                sizes[u] = _scan_list(kind, qloc[u], codes, aux, offsets[lst], offsets[lst + 1],
                                      slot_pos, words, filtered, hd[u], hi[u], sizes[u])
        for u in range(q1 - q0):
            heap_sorted(hd[u], hi[u], sizes[u], out_d[q0 + u], out_i[q0 + u])


@njit(parallel=True, **JIT)
def scan_slots(kind, QS, codes, aux, slots, slot_pos, k, out_d, out_i) -> None:
    """Exact top-k of each query over the given slots only (a selective filter's rows),
    reported as row positions."""
    for q in prange(QS.shape[0]):
        hd = np.empty(k, np.float32)
        hi = np.empty(k, np.int64)
        size = 0
        qs = QS[q]
        for j in range(slots.shape[0]):
            s = slots[j]
            d = codec_distance(kind, qs, codes, aux, s)
            if size < k or d < hd[0]:
                size = heap_push(hd, hi, size, d, slot_pos[s])
        heap_sorted(hd, hi, size, out_d[q], out_i[q])


@njit(parallel=True, **JIT)
def copy_rows(src, src_rows, dst_rows, scale, out) -> None:
    """out[dst_rows[i]] = src[src_rows[i]] (times scale[src_rows[i]] unless ``scale`` is
    empty): rows moved into their list slots in parallel, normalised on the way for cosine,
    so a fresh array is touched once."""
    w = src.shape[1]
    scaled = scale.shape[0] > 0
    for i in prange(src_rows.shape[0]):
        s = src_rows[i]
        d = dst_rows[i]
        if scaled:
            f = scale[s]
            for j in range(w):
                out[d, j] = src[s, j] * f
        else:
            for j in range(w):
                out[d, j] = src[s, j]
