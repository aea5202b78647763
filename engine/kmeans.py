"""k-means (Lloyd) for coarse quantizers and codebooks: BLAS similarities, jitted steps.

Each iteration assigns every training row to its nearest centroid (``||x||^2 - 2 x.c +
||c||^2``: a float32 matrix product per row block, then a jitted argmin), recomputes the
centroids as means, re-seeds empty clusters by splitting the largest, and, for the spherical
variant (inner product and cosine), normalises the centroids. Defaults follow FAISS
(``faiss.Clustering``): 25 iterations, at most 256 training points per centroid (a seeded
sample beyond that), random initial centroids drawn from the sample; ``init="k-means++"``
spreads them out instead, at the price of k passes over the sample.

Seeded and deterministic: the same input and seed give the same centroids on any thread count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..kernels import kmeans as kk
from .errors import InvalidArgument

log = logging.getLogger(__name__)

MAX_POINTS_PER_CENTROID = 256
"""Training rows per centroid beyond which a seeded sample is taken (as FAISS)."""
NITER = 25
SEED = 1234
_SPLIT_EPS = np.float32(1.0 / 1024.0)
"""Relative perturbation that separates the two halves of a split cluster (as FAISS)."""
_BLOCK_BYTES = 1 << 21
"""Row blocks are sized so their similarity tile (k x rows float32) stays within 2 MB, in cache
for the argmin that follows the matrix product."""
_LOG_AFTER_S = 3.0
"""Trainings running longer than this log their progress each iteration."""


@dataclass(frozen=True)
class KMeans:
    """Trained centroids and how they came about. ``inertia``: the objective of the last
    assignment (sum of squared distances for l2, of negative inner products for ip) over
    the ``points`` training rows used."""

    centroids: np.ndarray
    inertia: float
    iterations: int
    points: int
    seconds: float


def _block_rows(k: int) -> int:
    return max(256, _BLOCK_BYTES // (4 * max(k, 1)))


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray, metric: str = "l2",
           cnorms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row: (labels int64, distances float32). Distances are
    squared l2 for ``metric="l2"`` and negative inner products for ``"ip"``."""
    n = x.shape[0]
    k = centroids.shape[0]
    if cnorms is None:
        cnorms = sq_norms(centroids) if metric == "l2" else np.zeros(k, np.float32)
    labels = np.empty(n, np.int64)
    scores = np.empty(n, np.float32)
    step = _block_rows(k)
    for r0 in range(0, n, step):
        ST = centroids @ x[r0 : r0 + step].T  # (k, rows): the layout the argmin vectorises on
        kk.assign_block(ST, cnorms, r0, labels, scores)
    if metric == "l2":
        scores += sq_norms(x)
        np.maximum(scores, 0, out=scores)
    else:
        scores *= np.float32(0.5)  # the kernel minimised -2 x.c
    return labels, scores


def nearest_lists(q: np.ndarray, centroids: np.ndarray, cnorms: np.ndarray,
                  nprobe: int) -> np.ndarray:
    """(nq, nprobe) int64: each query's ``nprobe`` nearest centroids, closest first.
    ``cnorms``: squared centroid norms for l2, zeros for inner product."""
    out = np.empty((q.shape[0], nprobe), np.int64)
    step = _block_rows(centroids.shape[0])
    for r0 in range(0, q.shape[0], step):
        S = q[r0 : r0 + step] @ centroids.T
        kk.top_lists_block(S, cnorms, r0, nprobe, out)
    return out


def _means(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster sizes; ``centroids`` updated in place to the means (empty ones untouched)."""
    k = centroids.shape[0]
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    starts = np.zeros(k + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    kk.centroid_means(x, order, starts, centroids)
    return counts


def split_empty(centroids: np.ndarray, counts: np.ndarray) -> int:
    """Re-seed each empty cluster by splitting the currently largest one in two (its
    centroid nudged apart by +-1/1024 on alternating dimensions); returns how many."""
    empty = np.flatnonzero(counts == 0)
    counts = counts.copy()
    up = np.ones(centroids.shape[1], np.float32)
    up[0::2] += _SPLIT_EPS
    up[1::2] -= _SPLIT_EPS
    down = np.float32(2.0) - up
    for ci in empty.tolist():
        cj = int(np.argmax(counts))
        centroids[ci] = centroids[cj] * up
        centroids[cj] *= down
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
    return int(empty.size)


def _normalise(c: np.ndarray) -> None:
    norms = np.sqrt(sq_norms(c))
    norms[norms == 0] = 1.0
    c /= norms[:, None]


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each next centroid is a row drawn
    with probability proportional to its squared distance to the nearest one so far."""
    n, d = x.shape
    xnorms = sq_norms(x)
    out = np.empty((k, d), np.float32)
    mind = np.full(n, np.inf, np.float32)
    i = int(rng.integers(n))
    for c in range(k):
        out[c] = x[i]
        kk.min_sq_dist_update(x, xnorms, out[c], np.float32(xnorms[i]), mind)
        if c + 1 < k:
            i = int(kk.pick_weighted(mind, float(rng.random())))
    return out


def sample_rows(x: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``x`` itself, or a seeded sample of ``limit`` rows (in their original order)."""
    if x.shape[0] <= limit:
        return x
    pick = np.sort(np.random.default_rng(seed).choice(x.shape[0], limit, replace=False))
    return np.ascontiguousarray(x[pick])


def _check_count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InvalidArgument(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def kmeans(x: np.ndarray, k: int, *, niter: int = NITER, seed: int = SEED,
           metric: str = "l2", spherical: bool | None = None,
           init: str | np.ndarray = "random",
           max_points_per_centroid: int | None = MAX_POINTS_PER_CENTROID) -> KMeans:
    """Cluster the rows of ``x`` (float32, C-contiguous) into ``k`` centroids.

    ``metric``: how rows are assigned, ``"l2"`` or ``"ip"`` (largest inner product);
    ``spherical`` (default: for ip) normalises the centroids after each update;
    ``init``: ``"random"`` (k distinct sample rows), ``"k-means++"``, or a (k, d) array;
    ``max_points_per_centroid``: sample at most that many rows per centroid (None: all)."""
    k = _check_count("k", k)
    niter = _check_count("niter", niter, 0)
    if metric not in ("l2", "ip"):
        raise InvalidArgument(f"metric: k-means assigns by 'l2' or 'ip', got {metric!r}")
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2:
        raise InvalidArgument(f"x: expected a 2-D array, got shape {x.shape}")
    if x.shape[0] < k:
        raise InvalidArgument(f"k: {k} clusters need at least {k} training points, got "
                              f"{x.shape[0]}")
    spherical = metric == "ip" if spherical is None else bool(spherical)
    t0 = time.perf_counter()
    if max_points_per_centroid is not None:
        x = sample_rows(x, _check_count("max_points_per_centroid", max_points_per_centroid) * k,
                        seed)
    rng = np.random.default_rng(seed)
    if isinstance(init, np.ndarray):
        if init.shape != (k, x.shape[1]):
            raise InvalidArgument(f"init: expected centroids of shape {(k, x.shape[1])}, got "
                                  f"{init.shape}")
        C = np.array(init, np.float32, order="C")
    elif init == "random":
        C = np.ascontiguousarray(x[np.sort(rng.choice(x.shape[0], k, replace=False))])
    elif init == "k-means++":
        C = kmeans_pp(x, k, rng)
    else:
        raise InvalidArgument(f"init: expected 'random', 'k-means++' or an array, got {init!r}")
    if spherical:
        _normalise(C)
    inertia = float("nan")
    splits = 0
    for it in range(niter):
        labels, dist = assign(x, C, metric)
        inertia = float(dist.sum(dtype=np.float64))
        counts = _means(x, labels, C)
        splits += split_empty(C, counts)
        if spherical:
            _normalise(C)
        elapsed = time.perf_counter() - t0
        if elapsed > _LOG_AFTER_S:
            log.info("k-means %d x %d -> %d: iteration %d/%d, objective %.6g, %.1f s",
                     x.shape[0], x.shape[1], k, it + 1, niter, inertia, elapsed)
    seconds = time.perf_counter() - t0
    log.debug("k-means %d x %d -> %d: %d iterations, %d empty clusters split, %.2f s",
              x.shape[0], x.shape[1], k, niter, splits, seconds)
    return KMeans(C, inertia, niter, x.shape[0], seconds)
