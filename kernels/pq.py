"""IVF-PQ search: asymmetric distances from per-query tables over residual codes in lists.

A row of list ``l`` stores the PQ code of its residual ``x - c_l`` (``engine/pq.py``), ``c_l``
the list's *base*: its centroid, or for inner products the mean of its rows (a spherical
centroid is a unit vector, further from the rows than their mean). With
``T = <q_j, sub-centroid>`` tables of the query (m x 256):
- inner product: ``-<q, x> = -<q, c_l> - sum_j T[j, code_j]``;
- l2: ``||q - x||^2 = ||q - c_l||^2 + sum_j (L[l, j, code_j] - 2 T[j, code_j])`` with the
  query-independent ``L[l, j, i] = ||r_ji||^2 + 2 <c_l,j, r_ji>`` precomputed per list (as
  FAISS's precomputed tables).
So a row costs m table look-ups (2m for l2) and a list one dot product for its bias. Tables
are flattened (m * 256 floats); batches run query-major (``search_batch``).
"""

import numpy as np
from numba import njit, prange

from . import INLINE, JIT
from .bitset import bitset_test
from .distance import dot
from .topk import heap_push, heap_sorted


@njit(**INLINE)
def _list_bias(q, qnorm, centroids, cnorms, lst, l2):
    s = dot(q, centroids[lst])
    if l2:
        return qnorm + cnorms[lst] - np.float32(2.0) * s
    return -s


@njit(**INLINE)
def _adc(lut, ltab, l2, row, m) -> np.float32:
    """sum_j lut[j * 256 + row[j]] (+ ltab likewise for l2); tables flattened (m * 256)."""
    d = np.float32(0.0)
    if l2:
        for j in range(m):
            o = j * 256 + np.int64(row[j])
            d += lut[o] + ltab[o]
    else:
        for j in range(m):
            d += lut[j * 256 + np.int64(row[j])]
    return d


@njit(**INLINE)
def _adc4(lut, ltab, l2, codes, s, m):
    """``_adc`` of rows s..s+3 at once: four independent sums keep the look-ups in flight."""
    r0 = codes[s]
    r1 = codes[s + 1]
    r2 = codes[s + 2]
    r3 = codes[s + 3]
    d0 = np.float32(0.0)
    d1 = np.float32(0.0)
    d2 = np.float32(0.0)
    d3 = np.float32(0.0)
    if l2:
        for j in range(m):
            o = j * 256
            d0 += lut[o + np.int64(r0[j])] + ltab[o + np.int64(r0[j])]
            d1 += lut[o + np.int64(r1[j])] + ltab[o + np.int64(r1[j])]
            d2 += lut[o + np.int64(r2[j])] + ltab[o + np.int64(r2[j])]
            d3 += lut[o + np.int64(r3[j])] + ltab[o + np.int64(r3[j])]
    else:
        for j in range(m):
            o = j * 256
            d0 += lut[o + np.int64(r0[j])]
            d1 += lut[o + np.int64(r1[j])]
            d2 += lut[o + np.int64(r2[j])]
            d3 += lut[o + np.int64(r3[j])]
    return d0, d1, d2, d3


@njit(**INLINE)
def _table(q, books_t, scale, out) -> None:
    """out[j * ksub + i] = scale * <q_j, sub-centroid i of sub-space j>; ``books_t`` is
    (m, dsub, ksub), so the inner loop runs over the 256 centroids, contiguous."""
    m, dsub, ksub = books_t.shape
    for j in range(m):
        base = j * ksub
        for i in range(ksub):
            out[base + i] = np.float32(0.0)
        for t in range(dsub):
            v = q[j * dsub + t] * scale
            b = books_t[j, t]
            for i in range(ksub):
                out[base + i] += v * b[i]


@njit(parallel=True, **JIT)
def inner_tables(Q, books_t, scale, out) -> None:
    """``_table`` of each query into the rows of ``out`` (nq, m * ksub)."""
    for q in prange(Q.shape[0]):
        _table(Q[q], books_t, scale, out[q])


@njit(**INLINE)
def _scan_list(lut, bias, codes, a, b, slot_pos, words, filtered, ltab, l2, hd, hi, size) -> int:
    """Rows in slots [a, b): ``lut`` holds -T (ip) or -2T (l2), flattened; ``ltab`` the list's
    L table. Four rows at a time where no filter applies."""
    k = hd.shape[0]
    m = codes.shape[1]
    s = a
    while s < b:
        e = min(s + 4, b)
        if e - s == 4 and not filtered:
            d0, d1, d2, d3 = _adc4(lut, ltab, l2, codes, s, m)
            for t, d in ((0, d0 + bias), (1, d1 + bias), (2, d2 + bias), (3, d3 + bias)):
                if size < k or d < hd[0]:
                    size = heap_push(hd, hi, size, d, slot_pos[s + t])
        else:
            for t in range(s, e):
                p = slot_pos[t]
                if filtered and not bitset_test(words, p):
                    continue
                d = bias + _adc(lut, ltab, l2, codes[t], m)
                if size < k or d < hd[0]:
                    size = heap_push(hd, hi, size, d, p)
        s = e
    return size


@njit(**INLINE)
def _search_probes(q, lut, probes, centroids, cnorms, codes, offsets, slot_pos, tabs, l2, words,
                   filtered, hd, hi) -> int:
    qnorm = dot(q, q)
    size = 0
    for t in range(probes.shape[0]):
        lst = probes[t]
        bias = _list_bias(q, qnorm, centroids, cnorms, lst, l2)
        size = _scan_list(lut, bias, codes, offsets[lst], offsets[lst + 1], slot_pos, words,
                          filtered, tabs[lst if l2 else 0], l2, hd, hi, size)
    return size


@njit(**INLINE)
def nearest_probes(q, centroids, cnorms, l2, nprobe):
    """The ``nprobe`` lists nearest to ``q``, nearest first (fewer if there are fewer)."""
    pd = np.empty(nprobe, np.float32)
    pi = np.empty(nprobe, np.int64)
    size = 0
    two = np.float32(2.0)
    for c in range(centroids.shape[0]):
        v = cnorms[c] - two * dot(q, centroids[c]) if l2 else -dot(q, centroids[c])
        if size < nprobe or v < pd[0]:
            size = heap_push(pd, pi, size, v, c)
    sd = np.empty(nprobe, np.float32)
    probes = np.empty(nprobe, np.int64)
    heap_sorted(pd, pi, size, sd, probes)
    return probes[:size]


@njit(**JIT)
def search_one(q, books_t, scale, centroids, bases, cnorms, nprobe, codes, offsets, slot_pos,
               tabs, l2, k, words, filtered, out_d, out_i) -> int:
    """Top-k of one query (``q`` float32) over its ``nprobe`` nearest lists (by ``centroids``;
    ``bases`` give the lists' biases), nearest first; its table (``scale`` times the inner
    products) is built here. Returns how many results it found."""
    lut = np.empty(books_t.shape[0] * books_t.shape[2], np.float32)
    _table(q, books_t, scale, lut)
    probes = nearest_probes(q, centroids, cnorms, l2, nprobe)
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    found = _search_probes(q, lut, probes, bases, cnorms, codes, offsets, slot_pos, tabs, l2,
                           words, filtered, hd, hi)
    heap_sorted(hd, hi, found, out_d, out_i)
    return found


@njit(parallel=True, **JIT)
def search_batch(Q, books_t, scale, probes, centroids, cnorms, codes, offsets, slot_pos, tabs,
                 l2, words, filtered, out_d, out_i) -> None:
    """A query batch, parallel over queries: each builds its table and scans its lists
    nearest first with the table hot in cache (query-major: a 48 KB table outweighs the 5 KB
    of codes a list holds, so the list-major order of ``kernels/ivf`` would stream tables
    instead of rows; and no batch of tables is ever allocated)."""
    k = out_d.shape[1]
    w = books_t.shape[0] * books_t.shape[2]
    for q in prange(Q.shape[0]):
        lut = np.empty(w, np.float32)
        _table(Q[q], books_t, scale, lut)
        hd = np.empty(k, np.float32)
        hi = np.empty(k, np.int64)
        size = _search_probes(Q[q], lut, probes[q], centroids, cnorms, codes, offsets,
                              slot_pos, tabs, l2, words, filtered, hd, hi)
        heap_sorted(hd, hi, size, out_d[q], out_i[q])


@njit(parallel=True, **JIT)
def scan_slots(Q, luts, centroids, cnorms, codes, slots, slot_lists, slot_pos, tabs, l2, k,
               out_d, out_i) -> None:
    """ADC top-k of each query over the given slots only (a selective filter's rows), sorted
    by list; ``slot_lists[j]``: the list slot ``slots[j]`` belongs to."""
    nowords = np.zeros(1, np.uint64)
    for q in prange(Q.shape[0]):
        hd = np.empty(k, np.float32)
        hi = np.empty(k, np.int64)
        size = 0
        qnorm = dot(Q[q], Q[q])
        j = 0
        while j < slots.shape[0]:  # runs of slots in the same list share the bias
            lst = slot_lists[j]
            bias = _list_bias(Q[q], qnorm, centroids, cnorms, lst, l2)
            e = j
            while e < slots.shape[0] and slot_lists[e] == lst:
                e += 1
            for t in range(j, e):
                s = slots[t]
                size = _scan_list(luts[q], bias, codes, s, s + 1, slot_pos, nowords, False,
                                  tabs[lst if l2 else 0], l2, hd, hi, size)
            j = e
        heap_sorted(hd, hi, size, out_d[q], out_i[q])
