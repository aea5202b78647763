"""Exact search: every query is compared with every (allowed) vector, over float32, float16
or any lossy row codec (SQ8, LVQ, LeanVec)."""

from __future__ import annotations

import os

import numpy as np

from ...kernels import distance as kd
from ...kernels import scan as ks
from .. import planner
from ..bitset import Bitset
from ..codecs import F16Codec, F32Codec, make_codec
from ..errors import InvalidArgument
from ..idmap import IdMap
from ..metric import Metric
from ..params import SearchParams
from ..persist import load_arrays, save_arrays
from ..validation import as_ids, as_vectors, check_dim, normalize_rows
from ..vectors import VectorStore
from .base import codec_usage, search_by_ids
from .hnsw import rerank_candidates

_BLAS_MIN_QUERIES = 16
"""From this batch size on, a float scan goes through BLAS matrix products in row blocks."""
_BLAS_BLOCK_ROWS = 4096
_BLAS_BLOCK_QUERIES = 1024
"""Row blocks of 4096 are decoded (f16) and normed (l2) once, then multiplied with tiles of
up to 1024 queries; the 16 MB similarity tile is folded into the heaps right away."""
_ROWS_PATH_SHARE = 0.25
"""Filters allowing less than this share of rows scan the allowed rows by position."""
_DECODABLE = ("f32", "f16")
"""Storage read back as the vectors themselves; a lossy codec keeps a float32 copy too."""


class FlatIndex:
    """Exact k-NN with external int64 ids over ``dtype`` rows: ``f32``, ``f16`` or a lossy
    row codec (``sq8``, ``lvq8``, ``lvq4x8``, ``LeanVec(128,LVQ8,LVQ8)``, ...), scanned with
    its most accurate distance (a two-level codec's both levels). A lossy codec's float32
    originals are kept beside the codes, as HNSW keeps them: resident while built here,
    memory-mapped once loaded, read only by ``reconstruct`` and ``rerank=True`` (the scan's
    best ``ef`` re-scored on them).

    Scores: ``l2`` squared distance ascending; ``ip`` inner product descending; ``cosine``
    cosine similarity descending. Missing results are id -1 with the worst possible score."""

    kind = "flat"

    def __init__(self, dim: int, metric: str | Metric = "l2", dtype: str = "f32"):
        self.dim = check_dim(dim)
        self.metric = Metric.parse(metric)
        try:
            self.codec = make_codec(dtype, self.dim)
        except InvalidArgument as exc:
            raise InvalidArgument(f"dtype: FlatIndex stores f32, f16 or a row codec ({exc})") from None
        self.dtype = self.codec.name
        self._store = VectorStore(self.codec)
        self._float = None if self.dtype in _DECODABLE else VectorStore(F32Codec(self.dim))
        self._ids = np.zeros(0, np.int64)
        self._idmap = IdMap()

    # --- protocol --------------------------------------------------------------------

    def __len__(self) -> int:
        return self._store.n

    @property
    def ntotal(self) -> int:
        return self._store.n

    def train(self, x=None, queries=None) -> None:
        """Fit a lossy codec (``add`` does it on its first batch if needed); ``queries``: a
        sample of the queries to expect, for query-aware codecs (LeanVec-OOD). Float
        storage needs none."""
        if x is None or self.dtype in _DECODABLE:
            return
        q = None if queries is None else self._prepare_vectors(queries, "queries")
        self.codec.fit(self._prepare_vectors(x, "vectors"), q)

    def _prepare_vectors(self, x, name: str) -> np.ndarray:
        v = as_vectors(x, self.dim, name)
        return normalize_rows(v) if self.metric is Metric.COSINE else v

    def reserve(self, n: int) -> None:
        """Allocate room for ``n`` vectors up front, so appends never copy (the appendable
        segment of a collection reserves its whole size; untouched pages stay unallocated)."""
        self._store.reserve(n)
        if self._float is not None:
            self._float.reserve(n)
        if self._ids.shape[0] < self._store.capacity:
            grown = np.full(self._store.capacity, -1, np.int64)
            grown[: self._ids.shape[0]] = self._ids
            self._ids = grown

    def add(self, x, ids=None) -> np.ndarray:
        """Append vectors; ``ids`` default to consecutive integers after the largest so far."""
        v = self._prepare_vectors(x, "vectors")
        if ids is None:
            start = int(self._ids[: self._store.n].max()) + 1 if self._store.n else 0
            ids = np.arange(start, start + v.shape[0], dtype=np.int64)
        ids = as_ids(ids, v.shape[0])
        self._idmap.check_new(ids)
        if v.shape[0] and not self.codec.trained:
            self.codec.fit(v)
        pos = self._store.append(v)  # first: a codec may reject the batch (f16 range)
        if self._float is not None:
            self._float.append(v)
        if self._ids.shape[0] < self._store.capacity or not self._ids.flags.writeable:
            grown = np.full(self._store.capacity, -1, np.int64)
            grown[: pos[0]] = self._ids[: pos[0]]
            self._ids = grown
        self._ids[pos] = ids
        self._idmap.assign(ids, pos)
        return ids

    def remove(self, ids) -> int:
        """Delete ids (unknown ones are ignored); returns how many were removed.

        The last rows move into the freed slots, so storage stays dense."""
        # unique: a repeated id must free its row once, not also evict the last live row
        pos = np.unique(self._idmap.positions(np.atleast_1d(np.asarray(ids, np.int64)),
                                              missing="skip"))[::-1]
        if pos.size == 0:
            return 0
        self._idmap.drop(self._ids[pos])
        if not self._ids.flags.writeable:
            self._ids = self._ids.copy()
        n = self._store.n
        for p in pos.tolist():  # descending, so "last" is always a live row
            last = n - 1
            if p != last:
                self._store.move(np.array([last]), np.array([p]))
                if self._float is not None:
                    self._float.move(np.array([last]), np.array([p]))
                self._ids[p] = self._ids[last]
                self._idmap.assign(self._ids[p : p + 1], np.array([p]))
            n -= 1
        self._store.truncate(n)
        if self._float is not None:
            self._float.truncate(n)
        return int(pos.size)

    @property
    def needs_training(self) -> bool:
        """Lossy codecs learn from data (``add`` trains on its first batch otherwise)."""
        return not self.codec.trained

    def search(self, queries, k: int, allowed=None, params: SearchParams | dict | None = None,
               explain: bool = False, **knobs):
        """Top-k for one query (1-D, returns 1-D arrays) or a batch (2-D, returns 2-D).
        ``params``/``knobs``: ``SearchParams``; a scan reads only ``rerank`` (a lossy codec's
        best ``ef`` re-scored on the float32 originals) and ``ef``. With ``explain`` a third
        value is the plan."""
        return search_by_ids(self, queries, k, allowed, params, explain, knobs, self._store.n)

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]:
        """The cost model the planner reads: an exact index only scans."""
        return {"exact": planner.scan_cost(allowed, self.codec.bytes_per_vector())}

    def search_positions(self, q: np.ndarray, k: int, bits: Bitset | None, params: SearchParams,
                         plan: planner.Plan | None = None, filtered: bool | None = None):
        """(kernel distances, row positions, plan info) for validated float32 queries (unit
        rows for cosine) and a Bitset of allowed positions: the path segments call, with no
        second validation and no id translation."""
        n = self._store.n
        if plan is None:
            allowed = bits.count() if bits is not None else n
            plan = planner.choose(self, allowed, n, k, params,
                                  bits is not None if filtered is None else filtered)
        rerank = bool(params.rerank) and self._float is not None and self._store.n > 0
        dist, pos = self._search_positions(q, params.beam(k) if rerank else k, bits)
        if rerank:
            X, faux = self._float.view()
            dist, pos = rerank_candidates(self._float.codec.dist(self.metric.kernel_metric), q, X,
                                          faux, pos, k)
            if self.metric.kernel_metric == "l2":
                np.maximum(dist, 0, out=dist)
        return dist, pos, {**plan.explain(), "fallback_exact": 0}

    def _search_positions(self, q: np.ndarray, k: int, bits: Bitset | None):
        n = self._store.n
        nq = q.shape[0]
        codes, aux = self._store.view()
        kmetric = self.metric.kernel_metric
        out_d = np.empty((nq, k), np.float32)
        out_i = np.empty((nq, k), np.int64)
        if not self.codec.trained:  # an empty lossy index: nothing to prepare queries with
            out_d[:], out_i[:] = np.inf, -1
            return out_d, out_i
        dist = self.codec.rerank_dist(kmetric)  # the most accurate level there is
        dist = self.codec.dist(kmetric) if dist is None else dist
        if bits is not None and bits.count() < _ROWS_PATH_SHARE * n:
            rows = bits.positions()
            rows = rows[rows < n]
            qs = self.codec.prepare(q)
            ks.scan_topk_rows_any(dist, qs, codes, aux, rows, k, out_d, out_i)
        elif nq >= _BLAS_MIN_QUERIES and self.dtype in _DECODABLE:
            self._blas_scan(q, k, bits, out_d, out_i)
        else:
            qs = self.codec.prepare(q)
            words = bits.words if bits is not None else np.zeros(1, np.uint64)
            ks.scan_topk_any(dist, qs, codes, aux, n, k, words, bits is not None, out_d, out_i)
        if kmetric == "l2":
            np.maximum(out_d, 0, out=out_d)
        return out_d, out_i

    def _blas_scan(self, q, k, bits, out_d, out_i) -> None:
        nq = q.shape[0]
        codes, _ = self._store.view()
        l2 = self.metric.kernel_metric == "l2"
        heap_d = np.empty((nq, k), np.float32)
        heap_i = np.empty((nq, k), np.int64)
        sizes = np.zeros(nq, np.int64)
        words = bits.words if bits is not None else np.zeros(1, np.uint64)
        norms = np.zeros(0, np.float32)
        for r0 in range(0, codes.shape[0], _BLAS_BLOCK_ROWS):
            block = codes[r0 : r0 + _BLAS_BLOCK_ROWS]
            if self.dtype == "f16":
                block = F16Codec.decode(block)
            if l2:
                norms = np.einsum("ij,ij->i", block, block)
            for q0 in range(0, nq, _BLAS_BLOCK_QUERIES):
                q1 = min(q0 + _BLAS_BLOCK_QUERIES, nq)
                S = q[q0:q1] @ block.T
                kd.topk_update_from_similarities(S, r0, norms, l2, words, bits is not None,
                                                 heap_d[q0:q1], heap_i[q0:q1], sizes[q0:q1])
        kd.heaps_sorted(heap_d, heap_i, sizes, out_d, out_i)
        if l2:
            out_d += np.einsum("ij,ij->i", q, q)[:, None]

    def reconstruct(self, positions) -> np.ndarray:
        """Float32 vectors stored at row positions (normalised for cosine)."""
        pos = np.asarray(positions, np.int64)
        if self._float is not None:
            return np.array(self._float.view()[0][pos], np.float32)
        codes = self._store.view()[0][pos]
        return F16Codec.decode(codes) if self.dtype == "f16" else np.array(codes, np.float32)

    # --- persistence -------------------------------------------------------------------

    def memory_usage(self) -> dict[str, int]:
        """Resident bytes by kind; the values sum to the whole footprint (``codec``: a trained
        codec's own state, where it holds any). A lossy codec's
        float32 originals count while they are in RAM (an index built here); loaded from
        disk they stay memory-mapped, read only by ``reconstruct`` and ``rerank``, and
        count 0."""
        usage = {"vectors": self._store.nbytes(), "ids": 8 * self._store.n,
                 "id_map": self._idmap.nbytes(), **codec_usage(self.codec)}
        if self._float is not None:
            on_disk = isinstance(self._float.view()[0], np.memmap)
            usage["rerank_vectors"] = 0 if on_disk else self._float.nbytes()
        return usage

    def save(self, directory: str | os.PathLike) -> None:
        codes, aux = self._store.view()
        meta = {"dim": self.dim, "metric": self.metric.value, "dtype": self.dtype}
        arrays = {"codes": codes, "aux": aux, "ids": self._ids[: self._store.n]}
        if self._float is not None:
            arrays["vectors"] = self._float.view()[0]
        if self.dtype not in _DECODABLE and self.codec.trained:
            for name, arr in self.codec.state().items():
                arrays[f"codec_{name}"] = arr
        save_arrays(directory, self.kind, meta, arrays)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> FlatIndex:
        meta, arrays = load_arrays(directory, cls.kind, mmap=mmap)
        index = cls(meta["dim"], meta["metric"], meta["dtype"])
        state = {k[6:]: v for k, v in arrays.items() if k.startswith("codec_")}
        if state:
            index.codec.load_state(state)
        index._store = VectorStore(index.codec, arrays["codes"], arrays["aux"])
        if index._float is not None:
            rows = arrays["vectors"]
            index._float = VectorStore(index._float.codec, rows,
                                       np.zeros((rows.shape[0], 0), np.float32))
        index._ids = arrays["ids"]
        index._idmap = IdMap.from_array(index._ids)
        return index

    def __repr__(self) -> str:
        return f"FlatIndex(dim={self.dim}, metric={self.metric.value!r}, dtype={self.dtype!r}, n={len(self)})"
