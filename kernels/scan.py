"""Exact scans: one query (or a batch) against all rows, or against a list of rows."""

import numpy as np
from numba import njit, prange

from . import JIT
from .bitset import bitset_test
from .dispatch import codec_distance
from .prefetch import prefetch_row
from .topk import heap_push, heap_sorted

ROWS_AHEAD = 4
ROW_BYTES = 4096
"""A row scan prefetches the row ROWS_AHEAD positions ahead, up to ROW_BYTES of it."""


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
    for j in range(m):
        if j + ROWS_AHEAD < m:  # scattered rows: no hardware prefetcher follows them
            prefetch_row(codes, rows[j + ROWS_AHEAD], ROW_BYTES)
        r = rows[j]
        size = heap_push(hd, hi, size, codec_distance(kind, qs, codes, aux, r), r)
    heap_sorted(hd, hi, size, out_d, out_i)


@njit(parallel=True, **JIT)
def scan_topk_batch(kind, QS, codes, aux, n, k, words, filtered, out_d, out_i) -> None:
    for q in prange(QS.shape[0]):
        scan_topk(kind, QS[q], codes, aux, n, k, words, filtered, out_d[q], out_i[q])


@njit(parallel=True, **JIT)
def scan_topk_rows_batch(kind, QS, codes, aux, rows, k, out_d, out_i) -> None:
    for q in prange(QS.shape[0]):
        scan_topk_rows(kind, QS[q], codes, aux, rows, k, out_d[q], out_i[q])




def scan_topk_any(kind, QS, codes, aux, n, k, words, filtered, out_d, out_i) -> None:
    """``scan_topk_batch``, or for one query the serial kernel (no thread-pool wake-up)."""
    if QS.shape[0] == 1:
        scan_topk(kind, QS[0], codes, aux, n, k, words, filtered, out_d[0], out_i[0])
    else:
        scan_topk_batch(kind, QS, codes, aux, n, k, words, filtered, out_d, out_i)


def scan_topk_rows_any(kind, QS, codes, aux, rows, k, out_d, out_i) -> None:
    """``scan_topk_rows_batch``, or for one query the serial kernel."""
    if QS.shape[0] == 1:
        scan_topk_rows(kind, QS[0], codes, aux, rows, k, out_d[0], out_i[0])
    else:
        scan_topk_rows_batch(kind, QS, codes, aux, rows, k, out_d, out_i)
