"""JIT warm-up: run every search path once on tiny data so no request pays for compiling.

With Numba's disk cache this takes well under a second; on a machine that never ran Quiver
it compiles everything (a few minutes), and /readyz answers 503 until it is done."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..engine.bitset import Bitset
from ..engine.index import FlatIndex, HNSWIndex
from ..engine.params import SearchParams
from ..engine.planner import Plan

log = logging.getLogger("quiver.server")


def warm_up(dim: int = 8) -> float:
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, dim)).astype(np.float32)
    for metric in ("l2", "cosine"):
        flat = FlatIndex(dim, metric)
        flat.add(x)
        flat.search(x[0], 5)
        flat.search(x[:20], 5)
        flat.search(x[:2], 5, allowed=np.arange(10))
        for codec in ("f32", "lvq8"):
            h = HNSWIndex(dim, metric, m=8, ef_construction=32, codec=codec)
            h.add(x)
            h.search(x[:2], 5)
            h.search(x[:2], 5, allowed=np.arange(5))
            # tiny data plans exact scans: run each traversal the planner may pick on real data
            q = np.ascontiguousarray(x[:2] / np.linalg.norm(x[:2], axis=1, keepdims=True))
            half = Bitset.from_positions(np.arange(0, 300, 2), 300)
            for strategy, bits in (("traversal", None), ("traversal", half),
                                   ("filtered-traversal", half)):
                for nq in (1, 2):
                    h.search_positions(q[:nq], 5, bits, SearchParams(),
                                       Plan(strategy, 150 if bits else 300, 300))
    elapsed = time.perf_counter() - t
    log.info("kernels warm in %.2f s", elapsed)
    return elapsed
