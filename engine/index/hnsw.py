"""HNSW over any codec: lock-free parallel batched build, filtered traversal, deletes."""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from ...kernels import hnsw as kh
from ...kernels import scan as ks
from ...kernels.chunks import chunk_count, run_chunks
from ...kernels.dispatch import for_kind
from ...kernels.topk import count_below
from .. import planner, precompile
from ..aligned import aligned_full
from ..bitset import Bitset
from ..codecs import F32Codec, make_codec
from ..errors import InvalidArgument
from ..idmap import IdMap
from ..metric import Metric
from ..params import SearchParams
from ..persist import load_arrays, read_manifest, save_arrays
from ..validation import as_ids, as_vectors, check_dim, normalize_rows
from ..vectors import VectorStore, readonly
from .base import codec_usage, live_words, mark_removed, search_by_ids

_BATCH_SHARE = 0.02
"""A build batch holds at most this share of the nodes already in the graph (nodes of one
batch do not see each other, so small batches keep the graph as good as a serial build)."""
_MAX_BATCH = 4096
_PARALLEL_MIN_BATCH = 64
"""Smaller batches insert on one thread: waking the pool costs more than it saves, and on a
busy machine a parallel region waits for every one of its threads to be scheduled."""
_TWO_HOP_US_PER_EF = 10.0
"""Cost model: a two-hop filtered traversal costs about 10 us per unit of beam width at 384
dimensions, nearly independent of the selectivity (WordNet 117k x 384, one thread; an exact
scan there costs 0.13 us a row, so the two cross near 77 rows per unit of ef)."""
_TRAVERSAL_US_PER_EF = 3.0
"""Cost model: a plain traversal costs about 3 us per unit of ef at 384 dimensions when
every row qualifies, and 1/share times that under a filter (it must wade through rejected
nodes); it beats two-hop above a share of about 0.3."""
QUERY_HOOD = 16
"""``link_queries``' default neighbourhood: 16 nearest points a sample query (32 measured
1.41x against 16's 1.38x at recall 0.90 on WordNet's OOD queries, with twice the edges: a
scratch run over one saved HNSW32,LVQ8 index)."""
_MIN_TRAVERSAL_SHARE = 0.08
"""Below this share the allowed points fragment the two-hop graph (recall@10 0.958 at 5%,
0.983 at 10% with ef=64 on WordNet): the cost model prices it out, so the planner scans."""


def rerank_candidates(kind, qs: np.ndarray, X: np.ndarray, aux: np.ndarray, cand: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each query's candidate positions (-1 padded) with distance ``kind`` over the
    rows (X, aux); the best k of each, ascending."""
    out_d = np.empty((qs.shape[0], k), np.float32)
    out_i = np.empty((qs.shape[0], k), np.int64)
    rerank = for_kind(kh.rerank_chunk, kind)
    run_chunks(lambda c, n: rerank(qs, X, aux, cand, k, out_d, out_i, c, n),
               chunk_count(qs.shape[0] // 8))  # a thread hand-off pays for itself at ~8 queries
    return out_d, out_i


class HNSWIndex:
    """Hierarchical navigable small-world graph (Malkov & Yashunin, 2018).

    The graph is built on float32 vectors; searches (traversals and exact scans alike) read
    only the ``codec``'s codes (``f32``, ``f16``, ``sq8``, ``lvq8``), so a saved index loaded
    back keeps the float32 originals on disk, memory-mapped and untouched; ``rerank=True``
    re-scores the ``ef`` best candidates on them. Scores follow ``quiver.Metric``.

    Searches may run from many threads at once; ``add``, ``remove`` and ``compact`` must not
    overlap with searches (collections get that by searching immutable sealed segments)."""

    kind = "hnsw"

    def __init__(self, dim: int, metric: str | Metric = "l2", m: int = 16,
                 ef_construction: int = 200, codec: str = "f32", seed: int = 0):
        self.dim = check_dim(dim)
        self.metric = Metric.parse(metric)
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 2 <= m <= 256:
            raise InvalidArgument(f"m: expected an integer in [2, 256], got {m!r}")
        if (isinstance(ef_construction, bool) or not isinstance(ef_construction, (int, np.integer))
                or ef_construction < 1):
            raise InvalidArgument(f"ef_construction: expected a positive integer, got {ef_construction!r}")
        self.m = int(m)
        self.ef_construction = max(int(ef_construction), self.m)
        self.codec = make_codec(codec, self.dim)
        self.seed = int(seed)
        self._rng = np.random.default_rng(seed)
        self._kmetric = self.metric.kernel_metric
        self._float = VectorStore(F32Codec(self.dim))
        self._codes = self._float if self.codec.name == "f32" else VectorStore(self.codec)
        self._ids = np.zeros(0, np.int64)
        self._levels = np.zeros(0, np.int32)
        self._uidx = np.zeros(0, np.int32)
        self._nbr0 = np.zeros((0, 2 * self.m), np.int32)
        self._upper = np.zeros((0, kh.MAX_UPPER, self.m), np.int32)
        self._n_upper = 0
        self._deleted = np.zeros(0, np.uint64)
        self._n_deleted = 0
        self._entry = -1
        self._max_level = -1
        self._idmap = IdMap()
        self._tls = threading.local()
        self._write_lock = threading.Lock()

    # --- sizes ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Live (not removed) points."""
        return self._float.n - self._n_deleted

    @property
    def ntotal(self) -> int:
        return len(self)

    def memory_usage(self) -> dict[str, int]:
        """Resident bytes by kind; the values sum to the whole footprint (``codec``: a trained
        codec's own state, as a LeanVec projection, where it holds any). A lossy codec's
        float32 originals count while they are in RAM (an index built or added to here:
        adding links new nodes on them); loaded from disk they stay memory-mapped, read only
        by ``rerank=True``, and count as 0."""
        n = self._float.n
        on_disk = isinstance(self._float.view()[0], np.memmap)
        rerank = 0 if self._codes is self._float or on_disk else self._float.nbytes()
        return {"vectors": self._codes.nbytes(), "rerank_vectors": rerank,
                "graph": n * 2 * self.m * 4 + self._n_upper * kh.MAX_UPPER * self.m * 4 + n * 8,
                "deleted": 8 * ((n + 63) >> 6), "ids": 8 * n, "id_map": self._idmap.nbytes(),
                **codec_usage(self.codec)}

    # --- build ----------------------------------------------------------------------

    def train(self, x, queries=None) -> None:
        """Fit the codec (a sample of the data is enough; ``add`` does it if needed).
        ``queries``: a sample of the queries to expect, for query-aware codecs (LeanVec
        learns an out-of-distribution projection from them)."""
        q = None if queries is None else self._prepare_vectors(queries, "queries")
        self.codec.fit(self._prepare_vectors(x, "vectors"), q)

    def _prepare_vectors(self, x, name):
        v = as_vectors(x, self.dim, name)
        return normalize_rows(v) if self.metric is Metric.COSINE else v

    def _grow(self, total: int) -> None:
        cap = self._nbr0.shape[0]
        if total <= cap and self._nbr0.flags.writeable:
            return
        cap = max(total, 2 * cap, 1024) if total > cap else cap

        def grown(a, fill, shape_tail=()):
            out = aligned_full((cap, *shape_tail), fill, a.dtype)
            out[: a.shape[0]] = a
            return out

        self._ids = grown(self._ids, -1)
        self._levels = grown(self._levels, 0)
        self._uidx = grown(self._uidx, -1)
        self._nbr0 = grown(self._nbr0, -1, (2 * self.m,))
        words = np.zeros((cap + 63) >> 6, np.uint64)
        words[: self._deleted.shape[0]] = self._deleted
        self._deleted = words

    def _grow_upper(self, total: int) -> None:
        if total <= self._upper.shape[0] and self._upper.flags.writeable:
            return
        cap = max(total, 2 * self._upper.shape[0], 64)
        out = aligned_full((cap, kh.MAX_UPPER, self.m), -1, np.int32)
        out[: self._upper.shape[0]] = self._upper
        self._upper = out

    def add(self, x, ids=None) -> np.ndarray:
        """Insert vectors (in parallel batches); ``ids`` default to consecutive integers."""
        v = self._prepare_vectors(x, "vectors")
        with self._write_lock:
            if ids is None:
                live = self._ids[: self._float.n]
                start = int(live.max()) + 1 if live.size else 0
                ids = np.arange(start, start + v.shape[0], dtype=np.int64)
            ids = as_ids(ids, v.shape[0])
            self._idmap.check_new(ids)
            if v.shape[0] == 0:
                return ids
            if not self.codec.trained:
                self.codec.fit(v)
            n0 = self._float.n
            if self._codes is not self._float:
                self._codes.append(v)  # first: a codec may reject the batch (f16 range)
            pos = self._float.append(v)
            self._grow(self._float.n)
            self._ids[pos] = ids
            levels = np.minimum(
                (-np.log(1.0 - self._rng.random(v.shape[0])) / math.log(self.m)).astype(np.int32),
                kh.MAX_UPPER)
            self._levels[pos] = levels
            up = pos[levels > 0]
            self._grow_upper(self._n_upper + up.shape[0])
            self._uidx[up] = np.arange(self._n_upper, self._n_upper + up.shape[0], dtype=np.int32)
            self._n_upper += up.shape[0]
            self._insert(n0, self._float.n)
            self._idmap.assign(ids, pos)
        return ids

    def _visited(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread generation-tagged visited arrays, reused across calls."""
        n = self._nbr0.shape[0]
        vis = getattr(self._tls, "visited", None)
        if vis is None or vis.shape[0] < rows or vis.shape[1] < n:
            vis = np.zeros((rows, n), np.uint8)
            self._tls.visited = vis
            self._tls.tags = np.zeros(rows, np.int64)
        return vis[:rows], self._tls.tags[:rows]

    def _insert(self, start: int, stop: int) -> None:
        X, aux = self._float.view()
        dist = self._float.codec.dist(self._kmetric)
        nchunks = chunk_count(stop - start)
        visited, tags = self._visited(nchunks)
        pos = start
        if self._entry < 0:
            self._entry, self._max_level = start, int(self._levels[start])
            pos += 1
        if pos < stop:  # the build compiles here; the search can compile meanwhile, elsewhere
            precompile.hnsw_search_ahead(self._kmetric, self.codec.name,
                                         self.codec.dist(self._kmetric))
        insert = for_kind(kh.insert_chunk, dist)
        while pos < stop:
            size = int(min(_MAX_BATCH, max(1, pos * _BATCH_SHARE), stop - pos))
            nodes = np.arange(pos, pos + size, dtype=np.int64)
            args = (X, aux, nodes, self._levels, self._nbr0, self._upper, self._uidx,
                    self._entry, self._max_level, self.ef_construction, self.m)
            parts = 1 if size < _PARALLEL_MIN_BATCH else nchunks
            tags[:parts] = run_chunks(
                lambda c, n, args=args: insert(*args, visited[c], tags[c], c, n), parts)
            top = int(self._levels[pos : pos + size].max())
            for level in range(min(top, self._max_level), -1, -1):
                self._link_back(dist, X, aux, nodes, level)
            if top > self._max_level:
                self._entry = pos + int(np.argmax(self._levels[pos : pos + size]))
                self._max_level = top
            pos += size

    def _link_back(self, dist, X, aux, nodes, level: int) -> None:
        nodes = nodes[self._levels[nodes] >= level]
        if nodes.size == 0:
            return
        if level == 0:
            rows = self._nbr0[nodes]
        else:
            rows = self._upper[self._uidx[nodes], level - 1]
        src = np.repeat(nodes, rows.shape[1])
        tgt = rows.ravel().astype(np.int64)
        keep = tgt >= 0
        src, tgt = src[keep], tgt[keep]
        order = np.lexsort((src, tgt))
        src, tgt = src[order], tgt[order]
        starts = np.flatnonzero(np.r_[True, tgt[1:] != tgt[:-1], True]).astype(np.int64)
        graph = (X, aux, self._nbr0, self._upper, self._uidx, level, tgt, src, starts)
        link = for_kind(kh.link_groups, dist)
        parts = 1 if starts.shape[0] < 4 * _PARALLEL_MIN_BATCH else chunk_count(starts.shape[0])
        run_chunks(lambda c, n: link(*graph, c, n), parts)

    def link_queries(self, queries, k: int = QUERY_HOOD) -> int:
        """Add query-guided edges for out-of-distribution queries (``kernels/hnsw.py``,
        ``link_query_hoods``): each sample query's ``k`` nearest points are found by a search,
        and the nearest is linked both ways to the others, in free base-level slots.

        ``queries``: a sample of the queries to expect (e.g. 10,000 logged ones). On WordNet's
        headword queries against definitions HNSW32,LVQ8 then reaches recall@10 0.90 at
        1.35x the QPS, while in-distribution queries search as before (README, run AG). Call it once
        the points are in; ``compact`` rebuilds the graph without these edges. Returns the
        number of edges added."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 2 <= k <= 256:
            raise InvalidArgument(f"k: expected an integer in [2, 256], got {k!r}")
        q = self._prepare_vectors(queries, "queries")
        with self._write_lock:
            if q.shape[0] == 0 or self._entry < 0:
                return 0
            _, hoods, _ = self.search_positions(q, int(k), None, SearchParams(ef=max(64, 2 * k)))
            self._grow(self._float.n)  # a loaded graph is memory-mapped, read-only
            return int(kh.link_query_hoods(self._nbr0, hoods))

    # --- delete ---------------------------------------------------------------------

    def remove(self, ids) -> int:
        """Mark ids deleted: they still route searches but are never returned."""
        with self._write_lock:
            self._deleted, n = mark_removed(self._idmap, ids, self._ids, self._deleted)
            self._n_deleted += n
            return n

    def compact(self) -> None:
        """Rebuild the graph without deleted points, reclaiming their memory.

        Like ``add`` and ``remove``, not to be run while other threads search this index (the
        collection layer never does: it vacuums by building a new segment and swapping it in)."""
        with self._write_lock:
            n = self._float.n
            live = ~Bitset(self._deleted, n).to_mask() if n else np.zeros(0, bool)
            X = np.array(self._float.view()[0][live])
            ids = np.array(self._ids[:n][live])
            fresh = HNSWIndex(self.dim, self.metric, self.m, self.ef_construction,
                              self.codec.name, self.seed)
            if self.codec.trained:
                fresh.codec = self.codec
                if fresh._codes is not fresh._float:
                    fresh._codes = VectorStore(self.codec)
            if X.shape[0]:
                fresh.add(X, ids)  # cosine rows are unit already: normalising again is a no-op
            state = dict(fresh.__dict__)
            state["_write_lock"] = self._write_lock
            state["_tls"] = threading.local()
            self.__dict__.update(state)

    # --- search ---------------------------------------------------------------------

    def _live_words(self, bits: Bitset | None) -> tuple[np.ndarray, int, bool]:
        return live_words(bits, self._deleted, self._n_deleted, self._float.n)

    @property
    def needs_training(self) -> bool:
        """Lossy codecs learn from data (``add`` trains on its first batch otherwise)."""
        return not self.codec.trained

    def search(self, queries, k: int, allowed=None, params: SearchParams | dict | None = None,
               explain: bool = False, **knobs):
        """Top-k per query. ``params`` (or the same as keywords): ``ef`` beam width (default
        max(64, k)), ``rerank`` re-score a lossy codec's candidates on the float32 originals,
        ``exact`` scan instead of traversing. ``allowed``: ids or a Bitset the results must
        come from. With ``explain`` a third value is the planner's choice and estimates."""
        return search_by_ids(self, queries, k, allowed, params, explain, knobs, self._float.n)

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]:
        """The cost model the planner reads (microseconds per query, one thread).

        Exact scans the float32 rows. A plain traversal needs about 1/share times the work
        to collect ``ef`` allowed results; the two-hop filtered traversal costs about the
        same at any share, but only holds its recall above ``_MIN_TRAVERSAL_SHARE``."""
        ef = params.beam(k)
        scale = self.dim / 384
        share = allowed / points if points else 0.0
        costs = {"exact": planner.scan_cost(allowed, 4 * self.dim)}
        if self._entry < 0 or share == 0.0:
            return costs
        if filtered:
            costs["filtered-traversal"] = (ef * _TWO_HOP_US_PER_EF * scale
                                           if share >= _MIN_TRAVERSAL_SHARE else math.inf)
        costs["traversal"] = ef * _TRAVERSAL_US_PER_EF * scale / share
        return costs

    def search_positions(self, q: np.ndarray, k: int, bits: Bitset | None, params: SearchParams,
                         plan: planner.Plan | None = None, filtered: bool | None = None):
        """(kernel distances, row positions, plan info) for validated float32 queries (unit
        rows for cosine) and a Bitset of allowed positions: the path segments call, with no
        second validation and no id translation. ``filtered``: the bitset comes from a filter
        (default: whenever one is given), so a filter-aware traversal may pay off."""
        n = self._float.n
        nq = q.shape[0]
        ef = params.beam(k)
        exact_rerank = bool(params.rerank) and self.codec.lossy  # f32 codes are the originals
        second = self.codec.rerank_dist(self._kmetric)  # a two-level codec's accurate level
        if params.rerank is False or exact_rerank:
            second = None
        words, n_ok, use_ok = self._live_words(bits)
        filtered = bits is not None if filtered is None else filtered
        if plan is None:
            plan = planner.choose(self, n_ok, n, k, params, filtered)
        info = {**plan.explain(), "fallback_exact": 0}
        if plan.strategy == "exact" or self._entry < 0:
            dist, pos = self._exact(q, k, words if use_ok else None, n)
        else:
            r = ef if exact_rerank else k
            out_d = np.empty((nq, r), np.float32)
            out_i = np.full((nq, r), -1, np.int64)  # a query out of budget writes nothing
            counts = np.zeros(nq, np.int64)
            nchunks = chunk_count(nq)
            visited, tags = self._visited(nchunks)
            codes, aux = self._codes.view()
            qs = self.codec.prepare(q)
            budget = max(n_ok, 4 * ef) if use_ok else 1 << 62
            two_hop = use_ok and plan.strategy == "filtered-traversal"
            graph = (readonly(self._nbr0), readonly(self._upper), readonly(self._uidx),
                     self._entry, self._max_level, ef)
            kind = self.codec.dist(self._kmetric)
            if second is not None:  # re-scored on both levels of the codes, in the traversal
                search = for_kind(kh.search_rerank_chunk, kind, second)
            else:
                search = for_kind(kh.search_chunk, kind)
            precompile.wait_for(self._kmetric, self.codec.name, kind)
            tags[:nchunks] = run_chunks(
                lambda c, n: search(qs, codes, aux, *graph, visited[c], tags[c], words, use_ok,
                                    two_hop, budget, out_d, out_i, counts, c, n), nchunks)
            if exact_rerank:
                X, faux = self._float.view()
                dist, pos = rerank_candidates(self._float.codec.dist(self._kmetric), q, X, faux,
                                              out_i, k)
            else:
                dist, pos = out_d, out_i
            if count_below(counts, min(k, n_ok)):  # too few hits: those queries exactly
                redo = np.flatnonzero(counts < min(k, n_ok))
                info["fallback_exact"] = int(redo.size)
                d2, p2 = self._exact(q[redo], k, words if use_ok else None, n)
                dist[redo], pos[redo] = d2, p2
        if self._kmetric == "l2":
            np.maximum(dist, 0, out=dist)
        return dist, pos, info

    def _exact(self, q, k, words, n):
        """Scan the codes (for a lossy codec too: reading the float32 originals would make
        them resident), the way a traversal scores rows."""
        X, aux = self._codes.view()
        out_d = np.empty((q.shape[0], k), np.float32)
        out_i = np.empty((q.shape[0], k), np.int64)
        if n == 0:  # (an empty index may have an untrained codec: nothing to prepare)
            out_d[:], out_i[:] = np.inf, -1
            return out_d, out_i
        rerank_dist = self.codec.rerank_dist(self._kmetric)  # the most accurate level there is
        dist = self.codec.dist(self._kmetric) if rerank_dist is None else rerank_dist
        qs = self.codec.prepare(q)
        if words is None:
            ks.scan_topk_any(dist, qs, X, aux, n, k, np.zeros(1, np.uint64), False, out_d, out_i)
        else:
            rows = Bitset(words, n).positions()
            ks.scan_topk_rows_any(dist, qs, X, aux, rows, k, out_d, out_i)
        return out_d, out_i

    def reconstruct(self, positions) -> np.ndarray:
        """Float32 vectors stored at row positions (normalised for cosine)."""
        return np.array(self._float.view()[0][np.asarray(positions, np.int64)], np.float32)

    # --- persistence ----------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        n = self._float.n
        meta = {"dim": self.dim, "metric": self.metric.value, "m": self.m,
                "ef_construction": self.ef_construction, "codec": self.codec.name,
                "seed": self.seed, "entry": self._entry, "max_level": self._max_level,
                "n_deleted": self._n_deleted}
        arrays = {"vectors": self._float.view()[0], "ids": self._ids[:n],
                  "levels": self._levels[:n], "uidx": self._uidx[:n], "nbr0": self._nbr0[:n],
                  "upper": self._upper[: self._n_upper],
                  "deleted": self._deleted[: (n + 63) >> 6]}
        if self._codes is not self._float:
            codes, aux = self._codes.view()
            arrays["codes"], arrays["aux"] = codes, aux
        if self.codec.trained:  # an empty index may have an untrained codec: nothing to save
            for name, arr in self.codec.state().items():
                arrays[f"codec_{name}"] = arr
        save_arrays(directory, self.kind, meta, arrays)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> HNSWIndex:
        """``mmap``: memory-map what a search does not read (a lossy codec's float32
        originals); the graph and the rows a traversal scores are read into memory either way,
        where NumPy asks for 2 MiB pages. Served from the page cache, files an earlier process
        wrote ran at 0.90-0.94x (HNSW32 LVQ8 and LeanVec on WordNet; mapped 4 KiB at a time,
        a traversal's random rows miss the TLB), files just written as fast as memory."""
        files = read_manifest(directory, cls.kind)["files"]
        hot = ("nbr0", "upper", "uidx", "codes", "aux") if "codes" in files else \
            ("nbr0", "upper", "uidx", "vectors", "aux")
        meta, a = load_arrays(directory, cls.kind, mmap=mmap, resident=hot)
        index = cls(meta["dim"], meta["metric"], meta["m"], meta["ef_construction"],
                    meta["codec"], meta["seed"])
        state = {k[6:]: v for k, v in a.items() if k.startswith("codec_")}
        if state:
            index.codec.load_state(state)
        n = a["vectors"].shape[0]
        index._float = VectorStore(F32Codec(index.dim), a["vectors"],
                                   np.zeros((n, 0), np.float32))
        if "codes" in a:
            index._codes = VectorStore(index.codec, a["codes"], a["aux"])
        else:
            index._codes = index._float
        index._ids, index._levels, index._uidx = a["ids"], a["levels"], a["uidx"]
        index._nbr0, index._upper = a["nbr0"], a["upper"]
        index._n_upper = a["upper"].shape[0]
        index._deleted = a["deleted"]
        index._n_deleted = meta["n_deleted"]
        index._entry, index._max_level = meta["entry"], meta["max_level"]
        live = ~Bitset(index._deleted, n).to_mask() if n else np.zeros(0, bool)
        index._idmap = IdMap.from_array(index._ids, live)
        index._rng = np.random.default_rng([index.seed, n])
        return index

    def __repr__(self) -> str:
        return (f"HNSWIndex(dim={self.dim}, metric={self.metric.value!r}, m={self.m}, "
                f"codec={self.codec.name!r}, n={len(self)})")
