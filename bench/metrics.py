"""Recall: how many of the true top-k ids a search returned, the accuracy half of every plot."""

from __future__ import annotations

import numpy as np


def recall_per_query(found: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """|returned top-k ∩ true top-k| / k for each query (float64, shape (nq,)).

    Counted from the true side, so a duplicated or -1-padded returned id never counts twice."""
    found = np.atleast_2d(np.asarray(found))[:, :k]
    truth = np.atleast_2d(np.asarray(truth))[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"recall: {found.shape[0]} result rows for {truth.shape[0]} queries")
    if truth.shape[1] < k:
        raise ValueError(f"recall: ground truth has only {truth.shape[1]} neighbors, k={k}")
    hits = (truth[:, :, None] == found[:, None, :]).any(axis=2)
    return hits.sum(axis=1) / float(k)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean recall@k over queries."""
    return float(recall_per_query(found, truth, k).mean())
