"""Server warm-up, in the order requests need compiled kernels.

1. what the open collections search (their sealed segments as memory-mapped from disk);
2. the exact scans that appendable segments run (every new collection starts with one);
   ``/readyz`` turns 200 here;
3. in the background, the HNSW build and search that sealing a segment of the default index
   brings: a request arriving meanwhile never waits for it unless it needs that kernel.

With Numba's disk cache each step takes well under a second; on a fresh machine the kernels
compile (``quiver warmup`` or the Docker build fills the cache ahead).
"""

from __future__ import annotations

import logging
import time

from ..engine import warmup

log = logging.getLogger("quiver.server")

READY_SPECS = ("Flat",)
BACKGROUND_SPECS = ("HNSW16,F32",)
METRICS = ("cosine", "l2")  # ip runs the same kernels as cosine


def warm_for_requests(db) -> float:
    """Steps 1 and 2: seconds taken."""
    t = time.perf_counter()
    if db is not None:
        warmup.warm_database(db)
    warmup.warm_up(READY_SPECS, METRICS)
    elapsed = time.perf_counter() - t
    log.info("kernels for requests warm in %.2f s", elapsed)
    return elapsed


def warm_background() -> float:
    """Step 3: seconds taken."""
    t = time.perf_counter()
    warmup.warm_up(BACKGROUND_SPECS, METRICS)
    elapsed = time.perf_counter() - t
    log.info("background kernels warm in %.2f s", elapsed)
    return elapsed

