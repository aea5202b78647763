"""Recall: how many of the true top-k ids a search returned, the accuracy half of every plot;
and QPS at a target recall, read off a sweep."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_per_query(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """|returned top-k ∩ true top-k| / |true top-k| for each query (float64, shape (nq,)).

    Counted from the true side, so a duplicated or -1-padded returned id never counts twice.
    True rows may be -1 padded (a filter allowing fewer than k points): the padding is not a
    neighbour to find, and a query with no true neighbour at all scores 1."""
    found = np.atleast_2d(np.asarray(found))[:, :k]
    truth = np.atleast_2d(np.asarray(truth))[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"recall: {found.shape[0]} result rows for {truth.shape[0]} queries")
    if truth.shape[1] < k:
        raise ValueError(f"recall: ground truth has only {truth.shape[1]} neighbors, k={k}")
    valid = truth >= 0
    hits = ((truth[:, :, None] == found[:, None, :]) & valid[:, :, None]).any(axis=2).sum(axis=1)
    denom = valid.sum(axis=1)
    return np.where(denom > 0, hits / np.maximum(denom, 1), 1.0)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean recall@k over queries."""
    return float(recall_per_query(found, truth, k).mean())


def at_target(points: Sequence[dict], target: float, qps: str = "qps",
              param: str = "ef") -> dict:
    """QPS at ``target`` recall from a sweep (points in sweep order, each with "recall", the
    ``qps`` key and the ``param`` key), linear in recall between the first two consecutive
    points that bracket it: the one number that compares engines whose knobs differ.

    ``status``: 'interpolated' (``between`` names the two points' ``param``), 'lower bound'
    (the first point already reaches the target: its QPS, which the engine at least reaches
    there) or 'not reached' (qps None)."""
    for i, p in enumerate(points):
        if p["recall"] < target:
            continue
        if i == 0:
            return {"qps": p[qps], "status": "lower bound", "between": [p[param]]}
        lo = points[i - 1]
        t = (target - lo["recall"]) / (p["recall"] - lo["recall"])
        return {"qps": lo[qps] + t * (p[qps] - lo[qps]), "status": "interpolated",
                "between": [lo[param], p[param]]}
    return {"qps": None, "status": "not reached", "between": []}
