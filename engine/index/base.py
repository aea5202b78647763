"""The protocol every index implements, and helpers they share."""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ...kernels.bitset import bitset_set_many
from ...kernels.topk import finish_hits
from ..bitset import Bitset
from ..errors import InvalidArgument
from ..idmap import IdMap
from ..metric import Metric
from ..params import SearchParams
from ..validation import as_queries, check_k, normalize_rows
from ..vectors import readonly


@runtime_checkable
class Index(Protocol):
    """What every registered index type implements. Search parameters are per call
    (``SearchParams``); ``search_positions`` and ``strategy_costs`` are the collection's and
    the planner's side of the same search."""

    dim: int
    metric: Metric

    @property
    def needs_training(self) -> bool: ...

    def train(self, x: Any, queries: Any = None) -> None: ...

    def add(self, x: Any, ids: Any = None) -> np.ndarray: ...

    def search(self, queries: Any, k: int, allowed: Any = None, params: Any = None,
               explain: bool = False, **knobs: Any) -> tuple: ...

    def search_positions(self, q: np.ndarray, k: int, bits: Bitset | None,
                         params: SearchParams, plan: Any = None,
                         filtered: bool | None = None) -> tuple: ...

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]: ...

    def remove(self, ids: Any) -> int: ...

    def memory_usage(self) -> dict[str, int]: ...

    def save(self, directory: str | os.PathLike) -> None: ...

    def __len__(self) -> int: ...


def codec_usage(codec) -> dict[str, int]:
    """A ``memory_usage`` entry for the codec's trained state, where it holds any."""
    nbytes = codec.resident_nbytes()
    return {"codec": nbytes} if nbytes else {}


def resolve_allowed(allowed, idmap: IdMap, n: int) -> Bitset | None:
    """``allowed`` as a Bitset over row positions.

    Accepts a ``Bitset`` over positions (what the collection layer passes), or any array of
    external ids (what a user passes); unknown ids are ignored."""
    if allowed is None:
        return None
    if isinstance(allowed, Bitset):
        if allowed.n < n:
            words = np.zeros((n + 63) >> 6, np.uint64)
            words[: allowed.words.shape[0]] = allowed.words
            return Bitset(words, n)
        return allowed
    try:
        ids = np.asarray(allowed)
    except (TypeError, ValueError):
        raise InvalidArgument("allowed: expected a Bitset or an array of ids") from None
    if ids.dtype == bool:
        raise InvalidArgument("allowed: pass ids (or a Bitset), not a boolean mask")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise InvalidArgument(f"allowed: ids must be integers, got {ids.dtype}")
    return Bitset.from_positions(idmap.positions(ids, missing="skip"), n)


def live_words(bits: Bitset | None, deleted: np.ndarray, n_deleted: int,
               n: int) -> tuple[np.ndarray, int, bool]:
    """Words of the rows in [0, n) a result may come from, their count, and whether a kernel
    must check them: ``bits`` (the caller's allowed rows) less the index's own ``deleted``
    words, which join in only when there are deletions (never under a collection, whose
    segments pass one bitset with their deletions in it)."""
    w = (n + 63) >> 6
    if bits is None and n_deleted == 0:
        return np.zeros(1, np.uint64), n, False
    if bits is None:
        words = ~deleted[:w]
        if n & 63:
            words[-1] &= np.uint64((1 << (n & 63)) - 1)
        return words, n - n_deleted, True
    words = bits.words[:w]
    if n_deleted:
        words = words & ~deleted[:w]
    return words, Bitset(words, n).count(), True


def mark_removed(idmap: IdMap, ids: Any, row_ids: np.ndarray,
                 deleted: np.ndarray) -> tuple[np.ndarray, int]:
    """Set the rows of ``ids`` (unknown ones ignored, a repeated one counted once) in the
    deletion bitmap ``deleted`` (copied first if it is a read-only map) and drop them from
    ``idmap``; returns the bitmap and how many rows were removed."""
    pos = np.unique(idmap.positions(np.atleast_1d(np.asarray(ids, np.int64)), missing="skip"))
    if pos.size == 0:
        return deleted, 0
    if not deleted.flags.writeable:
        deleted = deleted.copy()
    bitset_set_many(deleted, pos)
    idmap.drop(row_ids[pos])
    return deleted, int(pos.size)


def search_by_ids(index, queries, k, allowed, params, explain: bool, knobs: dict, rows: int):
    """The public ``search`` of every index: validate once, search positions, translate to
    external ids once. ``rows``: the index's row count (deleted rows included)."""
    p = SearchParams.parse(params, **knobs)
    k = check_k(k)
    q, single = as_queries(queries, index.dim)
    if index.metric is Metric.COSINE:
        q = normalize_rows(q)
    bits = resolve_allowed(allowed, index._idmap, rows)
    dist, pos, info = index.search_positions(q, k, bits, p)
    scores, ids = finish_results(index.metric, dist, pos, index._ids, single)
    return (scores, ids, info) if explain else (scores, ids)


def scores_from_distances(metric: Metric, dist: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Kernel distances -> float32 scores in the metric's convention; missing hits
    (position -1) get the worst score."""
    scores = metric.scores_from_distances(dist).astype(np.float32)
    scores[pos < 0] = metric.distance_bound()
    return scores


def finish_results(metric: Metric, dist: np.ndarray, pos: np.ndarray, ids: np.ndarray,
                   single: bool) -> tuple[np.ndarray, np.ndarray]:
    """Distances/positions from kernels -> (scores, external ids), -1 padded."""
    scores = np.empty(pos.shape, np.float32)
    ext = np.empty(pos.shape, np.int64)
    finish_hits(dist, pos, readonly(ids), metric is not Metric.L2, np.float32(metric.distance_bound()),
                scores, ext)
    if single:
        return scores[0], ext[0]
    return scores, ext
