"""Qdrant's scores that compare each candidate with every example instead of searching
around one vector: the recommendation strategies, discovery and context search.

A similarity is higher for closer points, as Qdrant's recommendation scores take it: the
inner product (cosine: of unit vectors), or minus the squared Euclid distance.
- ``best_score``: a candidate closer to some positive than to every negative scores
  sigmoid(its best positive similarity), in (0, 1); any other scores -sigmoid(its best
  negative similarity), below 0. So points on the positive side come first, nearest
  first, and the rest follow, the farthest from every negative first.
- ``sum_scores``: the sum of the similarities to the positives minus the sum of those to
  the negatives.
- discovery: per context pair +1 when the candidate is closer to its positive, -1 when to its
  negative, summed, plus sigmoid(similarity to the target) in (0, 1); so the points on the
  positive side of the most pairs come first, nearest the target first.
- context: per pair, how far the candidate is on the negative side (0 on the positive side),
  squashed into (-1, 0] and summed: 0 for points inside every pair's positive side.
"""

from __future__ import annotations

import numpy as np

from ...engine.mmr import similarity_rows


def similarities(x: np.ndarray, examples: np.ndarray, metric: str) -> np.ndarray:
    """(candidates, examples) similarities, float64 (``engine.mmr.similarity_rows``; l2
    squared back, as Qdrant sums and compares squared distances here)."""
    if not len(examples):
        return np.zeros((len(x), 0))
    s = np.stack([similarity_rows(x, e, metric) for e in examples], axis=1)
    return -(s * s) if metric == "l2" else s


def signed_sigmoid(s: np.ndarray) -> np.ndarray:
    """Monotone onto (-1, 1), 0 at 0."""
    return s / (1.0 + np.abs(s))


def fast_sigmoid(s: np.ndarray) -> np.ndarray:
    """Monotone onto (0, 1), cheap, and defined for any similarity scale."""
    return 0.5 * (signed_sigmoid(s) + 1.0)


def discovery_scores(x: np.ndarray, target: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                     metric: str) -> np.ndarray:
    """Each candidate row's discovery score (module docstring); ``pos[i]`` and ``neg[i]``
    are pair i."""
    rank = np.sign(similarities(x, pos, metric) - similarities(x, neg, metric)).sum(1)
    return rank + fast_sigmoid(similarities(x, target, metric)[:, 0])


def context_scores(x: np.ndarray, pos: np.ndarray, neg: np.ndarray, metric: str) -> np.ndarray:
    """Each candidate row's context score (module docstring); pairs as in ``discovery_scores``."""
    margin = similarities(x, pos, metric) - similarities(x, neg, metric)
    return signed_sigmoid(np.minimum(margin, 0.0)).sum(1)


def example_scores(x: np.ndarray, pos: np.ndarray, neg: np.ndarray, metric: str,
                   strategy: str) -> np.ndarray:
    """Each candidate row's score under ``strategy`` (module docstring)."""
    sp, sn = similarities(x, pos, metric), similarities(x, neg, metric)
    if strategy == "sum_scores":
        return sp.sum(1) - sn.sum(1)
    best_p = sp.max(1) if sp.shape[1] else np.full(len(x), -1e300)  # none: always below
    best_n = sn.max(1) if sn.shape[1] else np.full(len(x), -1e300)
    return np.where(best_p > best_n, fast_sigmoid(best_p), -fast_sigmoid(best_n))
