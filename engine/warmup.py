"""Compile ahead: run what a workload will call once, on tiny data, so Numba compiles each
(kernel, codec kind, array type) into its disk cache, or loads it from there, before a request
waits for it.

Kernels compile per codec kind on first use (``kernels.dispatch``), so a warm-up names what it
covers: index specs and metrics. Each spec is exercised twice: as built in memory and as a
sealed segment serves it, loaded back from its files (memory-mapped where a search does not
read them). Kernels get read-only rows either way (``vectors.readonly``), so the second half
loads what the first compiled (it checks that nothing else differs). ``warm_database`` searches every field of
every open collection.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import precompile
from .bitset import Bitset
from .errors import QuiverError
from .index.hnsw import HNSWIndex
from .index.registry import index as make_index
from .index.registry import load_index
from .params import SearchParams
from .planner import Plan

log = logging.getLogger("quiver.warmup")

DEFAULT_SPECS = ("Flat", "HNSW16,F32")
"""What a collection with the default index runs: exact scans of its appendable segments,
the HNSW build at seal time and searches of the sealed, memory-mapped segments."""

DEFAULT_METRICS = ("cosine", "l2", "ip")


def _exercise(index, x: np.ndarray) -> None:
    """Every search path a request may take: one query and a batch, with and without a
    filter, and for graphs each traversal the planner can pick (tiny data plans exact scans)."""
    n = x.shape[0]
    half = Bitset.from_positions(np.arange(0, n, 2), n)
    for nq in (1, 2, 20):
        index.search(x[:nq], 5)
        index.search(x[:nq], 5, allowed=np.arange(0, n, 2))
        index.search(x[:nq], 5, allowed=np.arange(5))
    if isinstance(index, HNSWIndex):
        q = np.ascontiguousarray(x[:2] / np.linalg.norm(x[:2], axis=1, keepdims=True))
        for strategy, bits in (("traversal", None), ("traversal", half),
                               ("filtered-traversal", half)):
            for nq in (1, 2):
                index.search_positions(q[:nq], 5, bits, SearchParams(),
                                       Plan(strategy, n // 2 if bits else n, n))


def warm_index(spec: str, metric: str, dim: int = 16, n: int = 600) -> float:
    """Build ``spec`` on ``n`` random vectors, search it every way, then save it, load it back
    memory-mapped and search that too. Returns the seconds taken."""
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    options = {"ef_construction": 32} if spec.upper().startswith("HNSW") else {}
    index = make_index(spec, dim, metric, **options)
    if index.needs_training:
        index.train(x)
    index.add(x)
    _exercise(index, x)
    with tempfile.TemporaryDirectory(prefix="quiver-warmup-") as tmp:
        index.save(Path(tmp) / "index")
        loaded = load_index(Path(tmp) / "index")
        _exercise(loaded, x)
        del loaded
    return time.perf_counter() - t


def warm_up(specs: Iterable[str] = DEFAULT_SPECS,
            metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """``warm_index`` for every (spec, metric); seconds per pair, in the order run (no
    precompile children: this is the compiling ahead)."""
    took = {}
    for spec in specs:
        for metric in metrics:
            with precompile.held():
                took[f"{spec} {metric}"] = warm_index(spec, metric)
            log.debug("warm: %s %s in %.2f s", spec, metric, took[f"{spec} {metric}"])
    return took


def warm_database(db) -> float:
    """One small search per vector field of every open collection: compiles what their
    segments (sealed ones memory-mapped) really run. Seconds taken."""
    t = time.perf_counter()
    for name in db.list_collections():
        try:
            col = db.get_collection(name)
            for field, vf in col.config.vectors.items():
                if vf.kind != "dense" or col.count() == 0:
                    continue
                q = np.random.default_rng(0).standard_normal((2, vf.dim)).astype(np.float32)
                col.search(q[0], 5, using=field)
                col.search_arrays(q, 5, using=field)
        except (QuiverError, OSError) as exc:  # a broken collection is reported elsewhere
            log.warning("warm-up skipped collection %r: %s", name, exc)
    return time.perf_counter() - t
