"""The one interface every benchmarked engine implements, and Quiver's own adapter.

Peers (``peers.py``) and Quiver indexes are driven by the same runner through this interface,
so a new index spec or a new peer needs no change to the runner.
"""

from __future__ import annotations

import numpy as np

from ..engine.errors import InvalidArgument
from ..engine.index import index as make_index
from ..engine.index.registry import parse_index_spec
from ..engine.metric import Metric
from .timing import batch_qps, single_query_times, timed


class Engine:
    """Build once, search with per-call params, report memory; ``param`` names the sweep knob."""

    engine: str = "?"
    index: str = "?"
    param: str | None = None
    learn: np.ndarray | None = None
    """The dataset's learn queries, set by the runner (query-aware codecs train on them)."""

    def __init__(self, dim: int, metric: str):
        self.dim = dim
        self.metric = Metric.parse(metric).value

    def build(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, q: np.ndarray, k: int, **params) -> np.ndarray:
        """Ids of the top-k for a 2-D batch, shape (nq, k), -1 where fewer were found."""
        raise NotImplementedError

    def memory(self) -> int:
        """Bytes the built index holds (vectors + graph/lists + ids)."""
        raise NotImplementedError

    def set_threads(self, n: int) -> None:
        """Threads for the engine's own pool; Numba/BLAS/OpenMP are pinned by the harness."""

    def warmup(self, x: np.ndarray, q: np.ndarray) -> None:
        """Pay one-time costs (JIT compilation) before anything is timed."""

    def sweep(self, grid: dict[str, list]) -> list[dict]:
        """The search-param points to measure: one empty dict when there is no knob."""
        if self.param is None or not grid.get(self.param):
            return [{}]
        return [{self.param: v} for v in grid[self.param]]

    def timed_build(self, x: np.ndarray) -> float:
        """``build``, in seconds (an engine in another process times it there)."""
        return timed(lambda: self.build(x))[1]

    def batch_qps(self, queries: np.ndarray, k: int, params: dict, reps: int) -> float:
        """Queries per second of one batch call (best of ``reps``)."""
        return batch_qps(lambda batch: self.search(batch, k, **params), queries, reps)

    def latency_ms(self, queries: np.ndarray, k: int, params: dict) -> np.ndarray:
        """Milliseconds per query, one query a call."""
        return single_query_times(lambda q: self.search(q, k, **params), queries, reps=1)

    def close(self) -> None:
        """Drop the index so the next engine has the memory."""


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine as inner product for peers that lack cosine)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1), np.float32)


def pad_ids(ids: np.ndarray, k: int) -> np.ndarray:
    """int64 (nq, k), -1 padded on the right."""
    ids = np.asarray(ids).astype(np.int64, copy=False)
    if ids.shape[1] >= k:
        return ids[:, :k]
    out = np.full((ids.shape[0], k), -1, np.int64)
    out[:, : ids.shape[1]] = ids
    return out


class QuiverEngine(Engine):
    """Any ``quiver.index`` spec; HNSW and CAGRA specs sweep ``ef``, IVF specs ``nprobe``."""

    engine = "quiver"

    def __init__(self, spec: str, dim: int, metric: str, **options):
        super().__init__(dim, metric)
        self.index = spec
        spec, cuda, device = spec.partition("@cuda")
        if cuda:  # SPEC@cuda (@cuda:1): the faiss GPU index of that spec (engine.index.gpu)
            options = {**options, "device": "cuda" + device}
        # SPEC@learn: the codec trains with the dataset's learn queries (LeanVec-OOD);
        # SPEC@links: the graph, once built, gets their edges (HNSWIndex.link_queries)
        self.use_learn = self.link_learn = False
        while spec.endswith(("@learn", "@links")):
            self.use_learn |= spec.endswith("@learn")
            self.link_learn |= spec.endswith("@links")
            spec = spec.rsplit("@", 1)[0]
        self.spec = spec
        self.options = options
        try:  # the index type, after an OPQ<m> transform if any
            family = parse_index_spec(spec).index.family
        except InvalidArgument:  # reported when the build fails
            family = spec.split(",")[0].strip().upper()
        self.param = "ef" if family.startswith(("HNSW", "CAGRA")) else "nprobe" if \
            family.startswith("IVF") else None
        self.idx = None

    def warmup(self, x: np.ndarray, q: np.ndarray) -> None:
        """Build and search a small index of the same spec: Numba compiles (or loads its
        cache) here, so build time and latency measure the work, not the compiler. IVF specs
        train fewer lists on the small sample (``adapt_nlist``): the same kernels compile."""
        options = self.options
        if self.param == "nprobe":
            self.options = {**options, "adapt_nlist": True}
        try:
            self.build(x[: min(len(x), 512)])
        finally:
            self.options = options
        for batch in (q[:1], q[:32]):
            self.search(batch, min(10, len(self.idx)))
        self.idx = None

    def build(self, x: np.ndarray) -> None:
        self.idx = make_index(self.spec, self.dim, self.metric, **self.options)
        if self.use_learn:
            if self.learn is None:
                raise ValueError(f"{self.index}: the dataset has no learn queries")
            self.idx.train(x, queries=self.learn)
        else:
            self.idx.train(x)
        self.idx.add(x)
        if self.link_learn:
            if self.learn is None:
                raise ValueError(f"{self.index}: the dataset has no learn queries")
            if not hasattr(self.idx, "link_queries"):
                raise ValueError(f"{self.index}: @links needs a graph index (HNSW)")
            self.idx.link_queries(self.learn)
        codec = getattr(self.idx, "codec", None)
        if codec is not None and codec.lossy:
            self._serve_from_files()

    def _serve_from_files(self, load=None) -> None:
        """Search a lossy index the way a collection's sealed segment is searched: saved and
        loaded back (by ``load``, default ``load_index``), so the float32 originals it never
        reads stay out of RAM (and out of ``memory()``). The save counts in the build time,
        as it does for a segment."""
        import tempfile

        if load is None:
            from ..engine.index import load_index as load

        self._files = tempfile.TemporaryDirectory(prefix="quiver-bench-")
        self.idx.save(self._files.name)
        self.idx = load(self._files.name)

    def search(self, q: np.ndarray, k: int, **params) -> np.ndarray:
        _, ids = self.idx.search(q, k, **params)
        return pad_ids(np.atleast_2d(ids), k)

    def memory(self) -> int:
        return int(sum(self.idx.memory_usage().values()))

    def close(self) -> None:
        self.idx = None
        files = getattr(self, "_files", None)
        if files is not None:
            files.cleanup()
            self._files = None
