"""Value counts of a payload key (Qdrant's facet) and uniform samples of points: the two
reads that summarise a filtered collection instead of searching it.

A facet counts each point once per distinct value the key holds there (a list counts each of
its elements), over strings, integers and booleans, the values Qdrant facets; the most
frequent come first, ties in value order (false before true, numbers, then strings).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import InvalidArgument
from .payload import PayloadStore, key_path

MAX_FACET_LIMIT = 10_000


def check_facet(key: Any, limit: Any) -> tuple[tuple[str, ...], int]:
    """The key's path and the limit, or InvalidArgument naming the bad one."""
    path = key_path(key)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_FACET_LIMIT:
        raise InvalidArgument(f"limit: expected an integer in [1, {MAX_FACET_LIMIT}], "
                              f"got {limit!r:.40}")
    return path, limit


def count_values(payloads: PayloadStore, allowed: np.ndarray, key: str, into: Counter
                 ) -> Counter:
    """Adds the distinct facetable values of ``key`` at each allowed position (a bool mask
    over the store) to ``into``, from the key's typed column (built once per key and kept,
    as filters build it)."""
    col = payloads.column(key)
    for t in ("str", "int", "bool"):
        pos, vals = col.typed(t)
        if len(pos):
            keep = allowed[pos]
            pos, vals = pos[keep], vals[keep]
        if not len(pos):
            continue
        if t == "str":
            table, vals = np.unique(vals.astype(str), return_inverse=True)
        vals = vals.astype(np.int64)
        lo, span = int(vals.min()), int(pos.max()) + 1
        if (int(vals.max()) - lo + 1) * span < 1 << 62:  # one int64 key per (value, point)
            pairs = np.unique((vals - lo) * span + pos)  # a point counts once per value
            values, counts = np.unique(pairs // span + lo, return_counts=True)
        else:  # integers too far apart for one key
            values, counts = np.unique(np.unique(np.stack([vals, pos]), axis=1)[0],
                                       return_counts=True)
        kind = bool if t == "bool" else int
        for v, n in zip(values.tolist(), counts.tolist(), strict=True):
            value = table[v].item() if t == "str" else kind(v)
            into[(type(value), value)] += n
    return into


def _value_order(tv: tuple[type, Any]) -> tuple[int, Any]:
    t, v = tv
    return (0, v) if t is bool else (1, v) if t is int else (2, v)


def top_values(counts: Counter, limit: int) -> list[tuple[Any, int]]:
    """The ``limit`` most frequent (value, count), ties in value order."""
    order = sorted(counts.items(), key=lambda kv: (-kv[1], _value_order(kv[0])))
    return [(tv[1], n) for tv, n in order[:limit]]


def merge_counts(parts: Iterable[list[tuple[Any, int]]]) -> Counter:
    """Counts from several ``top_values`` answers (a sharded collection's shards)."""
    total: Counter = Counter()
    for part in parts:
        for v, n in part:
            total[(type(v), v)] += n
    return total


def sample_counts(sizes: list[int], k: int, rng: np.random.Generator) -> list[int]:
    """How many of ``k`` picks, drawn uniformly without replacement from groups of ``sizes``
    (segments, shards), fall in each group."""
    total = sum(sizes)
    if total == 0:
        return [0] * len(sizes)
    return rng.multivariate_hypergeometric(np.asarray(sizes, np.int64), min(k, total)).tolist()
