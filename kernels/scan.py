"""Exact scans: one query (or a batch) against all rows, or against a list of rows.

``scan_topk_any`` and ``scan_topk_rows_any`` are the Python entry points: a codec kind and a
batch of prepared queries, run on threads (``chunks``)."""

import numpy as np
from numba import njit

from . import JIT
from .bitset import bitset_test
from .chunks import chunk_count, run_chunks
from .dispatch import codec_distance, for_kind, side_bytes
from .prefetch import prefetch_stored_row
from .topk import heap_push, heap_sorted

ROWS_AHEAD = 4
ROW_BYTES = 4096
"""A row scan prefetches the row ROWS_AHEAD positions ahead, up to ROW_BYTES of it, and its
side values, into L2 (``prefetch_stored_row``, as traversals do). Over 5% of WordNet's rows
(sorted, scattered), a kernel timed in interleaved rounds: 384-d float32 rows 53 ns against 68
with the prefetch into L1 in one run, 52 against 55 in another; LVQ-8 rows within 1 ns either
way, the side values too."""


@njit(**JIT)
def scan_topk(kind, qs, codes, aux, n, k, words, filtered, out_d, out_i) -> None:
    """Exact top-k of one query over rows [0, n), skipping rows not in ``words`` if filtered."""
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = 0
    for i in range(n):
        if filtered and not bitset_test(words, i):
            continue
        size = heap_push(hd, hi, size, codec_distance(kind, qs, codes, aux, i), i)
    heap_sorted(hd, hi, size, out_d, out_i)


@njit(**JIT)
def scan_topk_rows(kind, qs, codes, aux, rows, k, out_d, out_i) -> None:
    """Exact top-k of one query over the given rows only (selective filters)."""
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = 0
    m = rows.shape[0]
    side = side_bytes(kind)
    for j in range(m):
        if j + ROWS_AHEAD < m:  # scattered rows: no hardware prefetcher follows them
            prefetch_stored_row(codes, aux, rows[j + ROWS_AHEAD], ROW_BYTES, side)
        r = rows[j]
        size = heap_push(hd, hi, size, codec_distance(kind, qs, codes, aux, r), r)
    heap_sorted(hd, hi, size, out_d, out_i)


@njit(**JIT)
def scan_topk_chunk(kind, QS, codes, aux, n, k, words, filtered, out_d, out_i, first, step):
    """``scan_topk`` for queries first, first + step, ..."""
    for q in range(first, QS.shape[0], step):
        scan_topk(kind, QS[q], codes, aux, n, k, words, filtered, out_d[q], out_i[q])


@njit(**JIT)
def scan_topk_rows_chunk(kind, QS, codes, aux, rows, k, out_d, out_i, first, step):
    """``scan_topk_rows`` for queries first, first + step, ..."""
    for q in range(first, QS.shape[0], step):
        scan_topk_rows(kind, QS[q], codes, aux, rows, k, out_d[q], out_i[q])


def scan_topk_any(kind, QS, codes, aux, n, k, words, filtered, out_d, out_i) -> None:
    """``scan_topk`` for every query of ``QS``, a batch in interleaved chunks on threads."""
    scan = for_kind(scan_topk_chunk, kind)
    run_chunks(lambda c, m: scan(QS, codes, aux, n, k, words, filtered, out_d, out_i, c, m),
               chunk_count(QS.shape[0]))


def scan_topk_rows_any(kind, QS, codes, aux, rows, k, out_d, out_i) -> None:
    """``scan_topk_rows`` for every query of ``QS``, a batch in interleaved chunks."""
    scan = for_kind(scan_topk_rows_chunk, kind)
    run_chunks(lambda c, m: scan(QS, codes, aux, rows, k, out_d, out_i, c, m),
               chunk_count(QS.shape[0]))
