"""Qdrant's distance matrix: a random sample of points and, for each, its nearest among the
sample (a neighbourhood graph of the sample, for clustering or a map of the data), answered
as pairs or as sparse rows (CSR offsets).

Scores are Qdrant's: the cosine or inner product (higher is nearer), or the Euclid distance
(lower is nearer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...engine.errors import InvalidArgument
from ...engine.points import Point


def _rows(points: list[Point], name: str, dim: int) -> np.ndarray:
    return np.asarray([p.vector[name] if isinstance(p.vector, dict) else p.vector
                       for p in points], np.float64).reshape(len(points), dim)


BLOCK_ROWS = 512
"""Rows of the sample's similarity matrix computed at once (a sample of 10,000 at 384-d:
512 x 10,000 float64, 41 MB, never the whole 800 MB matrix)."""


def nearest_in_sample(points: list[Point], using: str | None, dim: int, metric: str,
                      limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbour positions, scores), each (len(points), min(limit, n - 1)): every sampled
    point's nearest others, nearest first."""
    x = _rows(points, using or "", dim)
    n = len(x)
    m = min(limit, n - 1)
    near = np.zeros((n, max(m, 0)), np.int64)
    scores = np.zeros((n, max(m, 0)))
    if m <= 0:
        return near, scores
    sq = (x * x).sum(1)
    for lo in range(0, n, BLOCK_ROWS):
        hi = min(lo + BLOCK_ROWS, n)
        d = x[lo:hi] @ x.T  # cosine: stored rows are unit length
        if metric == "l2":
            d = np.sqrt(np.maximum(sq[lo:hi, None] + sq[None, :] - 2 * d, 0.0))
        key = d if metric == "l2" else -d
        key[np.arange(hi - lo), np.arange(lo, hi)] = np.inf  # not itself
        part = np.argpartition(key, m - 1, axis=1)[:, :m]
        best = np.take_along_axis(key, part, axis=1)
        order = np.lexsort((part, best), axis=1)  # nearest first, ties by position
        near[lo:hi] = np.take_along_axis(part, order, axis=1)[:, :m]
        scores[lo:hi] = np.take_along_axis(d, near[lo:hi], axis=1)
    return near, scores


def sample_points(col: Any, req: Any, check_k) -> tuple[list[Point], Any]:
    """The sampled points (with the field's vectors) and the field searched."""
    f = col.vector_field(req.using)
    if f.kind == "multi":
        raise InvalidArgument("using: the distance matrix is for dense vector fields, not "
                              "multi-vector ones")
    check_k(req.sample, "sample")
    check_k(req.limit, "limit")
    flt = {"must": [{"has_vector": req.using or ""}]}  # points without one have no place
    if req.filter:
        flt["must"].append(req.filter)
    return col.sample(req.sample, flt, with_payload=False, with_vectors=True), f


def search_matrix(col: Any, req: Any, check_k, form: str) -> dict[str, Any]:
    """The sample's neighbours as ``{"pairs": [{"a", "b", "score"}, ...]}`` (``form``
    "pairs") or as sparse coordinates into ``ids``, ``{"offsets_row", "offsets_col",
    "scores", "ids"}`` ("offsets": row i's neighbours are its entries with offsets_row == i)."""
    points, f = sample_points(col, req, check_k)
    near, scores = (nearest_in_sample(points, req.using, f.dim, f.metric, req.limit) if points
                    else (np.zeros((0, 0), np.int64), np.zeros((0, 0))))
    if form == "pairs":
        return {"pairs": [{"a": points[i].id, "b": points[j].id, "score": float(s)}
                          for i in range(len(points))
                          for j, s in zip(near[i].tolist(), scores[i].tolist(), strict=True)]}
    rows = np.repeat(np.arange(len(points)), near.shape[1])
    return {"offsets_row": rows.tolist(), "offsets_col": near.ravel().tolist(),
            "scores": scores.ravel().tolist(), "ids": [p.id for p in points]}
