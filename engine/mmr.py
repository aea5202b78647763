"""Maximal marginal relevance (Carbonell & Goldstein, 1998): a diverse top-k from a pool of
nearest candidates, as Qdrant's ``{"nearest": v, "mmr": {...}}`` query (and LangChain's MMR
retrievers through it) expect.

Each pick maximises ``(1 - diversity) * sim(query, p) - diversity * max sim(p, picked)``,
with the field's own similarity: the inner product (cosine: of unit rows) or the negative
Euclidean distance. The pairwise similarities are computed one picked row at a time, so the
pool costs O(k n d) time and O(n) memory, never an n x n matrix.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgument


def similarity_rows(x: np.ndarray, v: np.ndarray, metric: str) -> np.ndarray:
    """sim(x_i, v) for every row of ``x``: higher is closer, under ``metric``."""
    if metric == "l2":
        return -np.sqrt(np.maximum(((x - v) ** 2).sum(axis=1), 0.0))
    return x @ v  # cosine rows are unit length: the inner product is the cosine


def mmr_order(query: np.ndarray, pool: np.ndarray, k: int, diversity: float,
              metric: str) -> list[int]:
    """Positions in ``pool`` (candidate rows) of the ``k`` picks, in pick order."""
    if not 0.0 <= diversity <= 1.0:
        raise InvalidArgument(f"mmr.diversity: {diversity} is outside [0, 1]")
    pool = np.asarray(pool, np.float32)
    if metric == "cosine":
        pool = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-30)
        query = query / max(float(np.linalg.norm(query)), 1e-30)
    n = pool.shape[0]
    relevance = similarity_rows(pool, np.asarray(query, np.float32), metric)
    nearest_picked = np.full(n, -np.inf, np.float32)
    free = np.ones(n, bool)
    order: list[int] = []
    for _ in range(min(k, n)):
        gain = (1.0 - diversity) * relevance - diversity * np.where(
            np.isfinite(nearest_picked), nearest_picked, 0.0)
        gain[~free] = -np.inf
        j = int(np.argmax(gain))
        order.append(j)
        free[j] = False
        np.maximum(nearest_picked, similarity_rows(pool, pool[j], metric), out=nearest_picked)
    return order
