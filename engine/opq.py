"""OPQ: an orthogonal rotation learned so that product quantisation of the rotated vectors
loses less (Ge et al., "Optimized Product Quantization", the non-parametric variant).

``OPQ<m>,<index spec>`` (e.g. ``OPQ48,IVF1024,PQ48x8,Refine(F16)``) trains a rotation R for
``m`` sub-vectors by alternating two steps on a sample: fit PQ codebooks to X R, then set R
to the orthogonal matrix closest to mapping X onto the reconstructions Y (Procrustes: R = U
V^T where U S V^T is the SVD of X^T Y). The inner index is trained on and stores rotated
vectors; queries are rotated before they reach it. A rotation preserves norms, distances
and inner products, so every metric means what it meant before.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptData, InvalidArgument
from .kmeans import SEED, sample_rows
from .metric import Metric
from .params import SearchParams
from .persist import load_arrays, save_arrays
from .pq import PQCodec
from .validation import as_vectors, normalize_rows

log = logging.getLogger("quiver.opq")

OPQ_NITER = 8
"""Alternations of PQ fit and Procrustes; the distortion changes little after a handful."""
OPQ_SAMPLE = 32_768
"""Training rows used at most (a seeded sample beyond that)."""
_PQ_NITER = 6
"""k-means iterations of each alternation's PQ fit (the final codebooks are the inner
index's own, trained fully)."""


def train_rotation(x: np.ndarray, m: int, niter: int = OPQ_NITER, seed: int = SEED,
                   adapt: bool = False) -> tuple[np.ndarray, list[float]]:
    """(R, distortion per iteration): a (dim, dim) float32 orthogonal R for ``m`` sub-vectors
    of x R, and the mean squared PQ reconstruction error after each alternation. ``adapt``:
    with too few points to train PQ (a collection's small segment), R is the identity."""
    x = np.ascontiguousarray(sample_rows(x, OPQ_SAMPLE, seed), np.float32)
    dim = x.shape[1]
    pq = PQCodec(dim, m)
    rotation = np.eye(dim, dtype=np.float32)
    if x.shape[0] < pq.ksub:
        if adapt:
            log.info("OPQ%d: %d training points, fewer than %d: no rotation", m, x.shape[0],
                     pq.ksub)
            return rotation, []
        raise InvalidArgument(f"OPQ{m}: needs at least {pq.ksub} training points, got "
                              f"{x.shape[0]}")
    history = []
    t = time.perf_counter()
    for it in range(niter):
        xr = x @ rotation
        pq.fit(xr, seed=seed + it, niter=_PQ_NITER)
        y = pq.decode(pq.encode(xr)[0])
        history.append(float(np.mean(np.sum((xr - y) ** 2, axis=1))))
        u, _, vt = np.linalg.svd(x.T.astype(np.float64) @ y.astype(np.float64))
        rotation = (u @ vt).astype(np.float32)
    log.info("OPQ%d: %d iterations on %d rows in %.1f s; distortion %.4g -> %.4g", m, niter,
             x.shape[0], time.perf_counter() - t, history[0], history[-1])
    return rotation, history


class OPQIndex:
    """An index (any registered type) over OPQ-rotated vectors; everything but the rotation
    is the inner index's. ``rotation`` is None until ``train``."""

    kind = "opq"

    def __init__(self, inner: Any, m: int, niter: int = OPQ_NITER, seed: int = SEED):
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise InvalidArgument(f"spec: OPQ<m> needs a positive m, got {m!r}")
        if inner.dim % m:
            raise InvalidArgument(f"spec: OPQ{m}: m={m} does not divide the dimension "
                                  f"{inner.dim}")
        self.inner, self.m, self.niter, self.seed = inner, int(m), int(niter), int(seed)
        self.dim: int = inner.dim
        self.metric: Metric = inner.metric
        self.rotation: np.ndarray | None = None

    # --- build ----------------------------------------------------------------------

    @property
    def needs_training(self) -> bool:
        return self.rotation is None or self.inner.needs_training

    def train(self, x, queries=None) -> None:
        """Learn the rotation on ``x`` (unit rows for cosine), then train the inner index on
        the rotated rows (and rotated ``queries`` for a query-aware codec)."""
        v = as_vectors(x, self.dim, "vectors")
        if len(self.inner):
            raise InvalidArgument(f"train: the index already holds {len(self.inner)} vectors; "
                                  f"build a new index to train again")
        self.rotation, _ = train_rotation(normalize_rows(v) if self.metric is Metric.COSINE
                                          else v, self.m, self.niter, self.seed,
                                          getattr(self.inner, "adapt_nlist", False))
        rq = None if queries is None else self._rotate(as_vectors(queries, self.dim, "queries"))
        self.inner.train(self._rotate(v), queries=rq)

    def add(self, x, ids=None) -> np.ndarray:
        self._require_trained("add")
        return self.inner.add(self._rotate(as_vectors(x, self.dim, "vectors")), ids)

    def _require_trained(self, what: str) -> None:
        if self.rotation is None:
            raise InvalidArgument(f"{what}: OPQ{self.m} is not trained; call train(x) first")

    def _rotate(self, q: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(q @ self.rotation, np.float32)

    # --- search ---------------------------------------------------------------------

    def search(self, queries, k: int, allowed=None, params: SearchParams | dict | None = None,
               explain: bool = False, **knobs):
        """As the inner index's ``search``, with the queries rotated."""
        self._require_trained("search")
        try:
            q = np.asarray(queries, np.float32)
        except (TypeError, ValueError):
            q = None  # the inner index names what is wrong
        if q is not None and q.ndim in (1, 2) and q.shape[-1] == self.dim:
            queries = q @ self.rotation
        return self.inner.search(queries, k, allowed, params, explain, **knobs)

    def search_positions(self, q: np.ndarray, k: int, bits, params: SearchParams,
                         plan=None, filtered: bool | None = None):
        self._require_trained("search")
        return self.inner.search_positions(self._rotate(q), k, bits, params, plan, filtered)

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]:
        return self.inner.strategy_costs(allowed, points, k, params, filtered)

    def remove(self, ids) -> int:
        return self.inner.remove(ids)

    def reconstruct(self, positions) -> np.ndarray:
        """Vectors at row positions, rotated back."""
        return self.inner.reconstruct(positions) @ self.rotation.T

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def ntotal(self) -> int:
        return len(self)

    def __getattr__(self, name: str):
        # what a caller reads of the inner index (nlist, codec, lists, nprobe_for ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # --- sizes and persistence ------------------------------------------------------

    def memory_usage(self) -> dict[str, int]:
        usage = dict(self.inner.memory_usage())
        usage["rotation"] = 0 if self.rotation is None else int(self.rotation.nbytes)
        return usage

    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        self.inner.save(d / "inner")
        rotation = self.rotation if self.rotation is not None else np.zeros((0, self.dim),
                                                                            np.float32)
        save_arrays(d, self.kind, {"m": self.m, "niter": self.niter, "seed": self.seed,
                                   "trained": self.rotation is not None},
                    {"rotation": rotation})

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> OPQIndex:
        from .index.registry import load_index

        meta, arrays = load_arrays(directory, cls.kind, mmap=False)
        inner = load_index(Path(directory) / "inner", mmap=mmap)
        try:
            index = cls(inner, int(meta["m"]), int(meta["niter"]), int(meta["seed"]))
            trained = bool(meta["trained"])
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise CorruptData(f"{directory}: bad OPQ metadata ({exc})") from None
        rotation = np.asarray(arrays["rotation"], np.float32)
        if trained:
            if rotation.shape != (index.dim, index.dim):
                raise CorruptData(f"{os.path.join(directory, 'rotation.npy')}: shape "
                                  f"{rotation.shape}, expected {(index.dim, index.dim)}")
            index.rotation = np.ascontiguousarray(rotation)
        return index

    def __repr__(self) -> str:
        return f"OPQIndex(m={self.m}, inner={self.inner!r})"
