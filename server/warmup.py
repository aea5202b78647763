"""JIT warm-up: run every search path once on tiny data so no request pays for compiling.

With Numba's disk cache this takes well under a second; on a machine that never ran Quiver
it compiles everything (a few minutes), and /readyz answers 503 until it is done."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..engine.index import FlatIndex, HNSWIndex

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
            h.search(x[:2], 5, allowed=np.arange(0, 300, 2))
            h.search(x[:2], 5, allowed=np.arange(5))
    elapsed = time.perf_counter() - t
    log.info("kernels warm in %.2f s", elapsed)
    return elapsed
