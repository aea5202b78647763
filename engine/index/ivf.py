"""IVF: k-means centroids (a flat coarse quantizer) over inverted lists stored contiguously.

A search scores only the rows of the ``nprobe`` lists nearest to the query, so its cost is about
``n * nprobe / nlist`` rows plus ``nlist`` centroids. Rows are kept list after list (``offsets``
+ ``codes`` + ``slot_pos``), the layout that memory-maps from disk and that the list-major batch
kernel (``kernels/ivf.py``) reads once per batch. Row *positions* stay insertion order 0..n-1,
whatever list a row lands in: results, bitsets and ``reconstruct`` speak positions, and
``slot_of`` maps a position to its slot.
"""

from __future__ import annotations

import logging
import math
import os

import numba
import numpy as np

from ...kernels import ivf as ki
from ...kernels.dispatch import for_kind
from ...kernels.topk import short_rows
from .. import planner
from ..bitset import Bitset
from ..codecs import Codec, F16Codec, F32Codec, codec_from_spec
from ..errors import CorruptData, InvalidArgument
from ..idmap import IdMap
from ..kmeans import MAX_POINTS_PER_CENTROID, SEED, assign, kmeans, nearest_lists, sample_rows, sq_norms
from ..metric import Metric
from ..params import SearchParams
from ..persist import load_arrays, save_arrays
from ..spec import parse_spec
from ..validation import as_ids, as_vectors, check_dim, normalize_rows
from ..vectors import VectorStore, readonly
from .base import codec_usage, live_words, mark_removed, search_by_ids
from .hnsw import rerank_candidates

log = logging.getLogger(__name__)

_RERANK_FACTOR = 10
"""Candidates a two-level codec re-ranks per query unless ``ef`` says otherwise: 10 k."""
_DECODABLE = ("f32", "f16")
"""Row codecs whose codes give the vectors back; IVF over any other keeps a float32 copy by
position on disk (memory-mapped, never read by a search) for ``reconstruct``."""
"""Codecs IVF stores rows in (lossless ones: no re-ranking copy needed)."""
MIN_POINTS_PER_LIST = 39
"""Fewer training points per list than this gives poor centroids (FAISS warns below it too);
with ``adapt_nlist`` the index trains fewer lists instead."""
TRAIN_NITER = 10
"""Lloyd iterations of the coarse quantizer, as ``faiss.IndexIVF`` (its ``cp.niter``; plain
``faiss.Clustering`` and ``engine.kmeans`` default to 25)."""
TRAIN_EXACT_ITERS = 3
"""Of those, exact ones; the rest compare each row with its 16 nearest centroids from the last
exact one (``kmeans(exact_iters=...)``: the same objective within 0.03% and the same recall
on WordNet, training in 40% of the time)."""
_ROWS_PATH_SHARE = 0.25
"""Exact scans of filters allowing less than this share of rows read the allowed rows by slot."""
_PAIRS_PER_CALL = 1 << 21
"""Query batches are searched in chunks of at most this many (query, list) pairs, which bounds
the per-call bookkeeping (probes and their by-list index: 16 bytes a pair) at 32 MB."""
_CHECK_US_PER_ROW = 0.002
"""Cost model: a row the bitset rejects costs a bit test, not a distance."""


def default_nprobe(nlist: int) -> int:
    """Lists a search probes unless ``nprobe`` is given: max(8, nlist // 32), at most nlist
    (32 of 1024 lists: recall@10 about 0.95 on WordNet 117k x 384)."""
    return min(nlist, max(8, nlist // 32))


def scaled_nprobe(params: SearchParams, nlist: int, lists: int) -> int:
    """The lists a search with ``params`` probes in an index of ``nlist`` lists that trained
    ``lists`` (fewer with ``adapt_nlist``: nprobe scaled by the same ratio); nprobe above
    nlist is an error naming both."""
    nprobe = params.nprobe if params.nprobe is not None else default_nprobe(nlist)
    if nprobe > nlist:
        raise InvalidArgument(f"params.nprobe: {nprobe} exceeds nlist {nlist} (the index has "
                              f"{nlist} lists)")
    lists = max(lists, 1)
    if lists == nlist:
        return nprobe
    return min(lists, max(1, math.ceil(nprobe * lists / nlist)))


class IVFIndex:
    """Inverted file over k-means lists of codec rows (F32, F16, SQ8, LVQ, LeanVec) and
    external int64 ids. A two-level codec (LVQ-B1xB2) scans its lists on the first level and
    re-ranks the best ``ef`` candidates (default 10 k) on both; ``rerank=False`` skips that.

    ``train(x)`` clusters (a sample of) the data into ``nlist`` lists (spherical k-means for
    ``ip``/``cosine``); ``add`` assigns rows to their nearest list; ``search`` probes the
    ``nprobe`` nearest lists (``SearchParams.nprobe``, default ``default_nprobe(nlist)``;
    ``nprobe = nlist`` is an exact search). ``adapt_nlist``: with fewer than
    ``MIN_POINTS_PER_LIST`` training points per list, train fewer lists (down to one list, an
    exact scan) and scale each search's ``nprobe`` by the same ratio, instead of failing when
    there are fewer points than lists; collections set it for their sealed segments.

    Scores follow ``quiver.Metric``. ``remove`` marks rows deleted (positions stay stable).
    Searches may run from many threads at once; ``add`` and ``remove`` must not overlap them."""

    kind = "ivf"

    def __init__(self, dim: int, metric: str | Metric = "l2", nlist: int = 1024,
                 codec: str = "f32", niter: int = TRAIN_NITER, seed: int = SEED,
                 adapt_nlist: bool = False):
        self.dim = check_dim(dim)
        self.metric = Metric.parse(metric)
        for name, value, low in (("nlist", nlist, 1), ("niter", niter, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InvalidArgument(f"{name}: expected an integer >= {low}, got {value!r}")
        if not isinstance(adapt_nlist, bool):
            raise InvalidArgument(f"adapt_nlist: expected true or false, got {adapt_nlist!r}")
        self.codec = self._make_codec(codec)
        self.nlist = int(nlist)
        self.niter = int(niter)
        self.seed = int(seed)
        self.adapt_nlist = adapt_nlist
        self._kmetric = self.metric.kernel_metric
        self._centroids: np.ndarray | None = None
        self._cnorms = np.zeros(0, np.float32)
        self._offsets = np.zeros(1, np.int64)
        self._codes, self._aux = self.codec.empty(0)
        self._slot_pos = np.zeros(0, np.int64)
        self._slot_of = np.zeros(0, np.int64)
        self._ids = np.zeros(0, np.int64)
        self._deleted = np.zeros(0, np.uint64)
        self._n_deleted = 0
        self._n = 0
        self._idmap = IdMap()
        self._float = None if self.codec.name in _DECODABLE or self.codec.name.startswith(
            "pq") else VectorStore(F32Codec(self.dim))

    def _make_codec(self, name: str) -> Codec:
        """The codec a stored name or spec part names (``"f16"``, ``"PQ48x8"``)."""
        parts = parse_spec(name) if isinstance(name, str) else []
        if len(parts) != 1:
            raise InvalidArgument(f"codec: expected one codec such as 'F32', got {name!r}")
        codec = codec_from_spec(parts[0], self.dim)
        if codec.name.startswith("pq"):
            raise InvalidArgument(f"codec: PQ codes are IVFPQIndex's (spec IVF<nlist>,"
                                  f"{codec.name.upper()}); IVFIndex stores row codecs such as F32")
        return codec

    # --- sizes ----------------------------------------------------------------------

    def __len__(self) -> int:
        """Live (not removed) rows."""
        return self._n - self._n_deleted

    @property
    def ntotal(self) -> int:
        return len(self)

    @property
    def needs_training(self) -> bool:
        return self._centroids is None

    @property
    def lists(self) -> int:
        """Lists actually trained (``nlist``, or fewer with ``adapt_nlist``; 0 untrained)."""
        return 0 if self._centroids is None else self._centroids.shape[0]

    def list_sizes(self) -> np.ndarray:
        """Rows per list (deleted rows included)."""
        return np.diff(self._offsets)

    def memory_usage(self) -> dict[str, int]:
        """Resident bytes by kind; the values sum to the whole footprint (``codec``: a trained
        codec's own state, PQ codebooks included, where it holds any). The float32 copy a
        lossy row codec keeps for ``reconstruct`` counts while it is in RAM (an index built
        here); loaded from disk it stays memory-mapped, never read by a search, and counts 0."""
        n = self._n
        copy = 0
        if self._float is not None and not isinstance(self._float.view()[0], np.memmap):
            copy = self._float.nbytes()
        return {"centroids": 0 if self._centroids is None else int(
                    self._centroids.nbytes + self._centroids_t.nbytes + self._cnorms.nbytes),
                "vectors": n * self.codec.bytes_per_vector(), "float_copy": copy,
                "lists": int(self._offsets.nbytes) + 16 * n,
                "deleted": 8 * ((n + 63) >> 6), "ids": 8 * n, "id_map": self._idmap.nbytes(),
                **codec_usage(self.codec)}

    # --- build ----------------------------------------------------------------------

    def _require_trained(self, what: str) -> None:
        if self._centroids is None:
            raise InvalidArgument(f"{what}: the IVF index is not trained; train first "
                                  f"(index.train(x) with a sample of the data)")

    def train(self, x, queries=None) -> None:
        """Learn the ``nlist`` centroids from ``x`` (at most 256 points per list are used, a
        seeded sample beyond that). An index that holds rows cannot be re-trained.
        ``queries`` (a query sample, for query-aware codecs) is not used by IVF's codecs."""
        v = as_vectors(x, self.dim, "vectors")
        if self._n:
            raise InvalidArgument(f"train: the index already holds {self._n} vectors; build a "
                                  f"new index to train again")
        n = v.shape[0]
        nlist = self.nlist
        if self.adapt_nlist and n < nlist * MIN_POINTS_PER_LIST:
            nlist = max(1, min(nlist, n // MIN_POINTS_PER_LIST))
            log.info("IVF%d: %d training points are fewer than %d per list; training %d lists "
                     "(%s), searches scale nprobe by %d/%d", self.nlist, n, MIN_POINTS_PER_LIST,
                     nlist, "an exact scan" if nlist == 1 else "nlist reduced", nlist,
                     self.nlist)
        elif n < nlist:
            raise InvalidArgument(f"nlist: {nlist} lists need at least {nlist} training points, "
                                  f"got {n}")
        elif n < nlist * MIN_POINTS_PER_LIST:
            log.warning("IVF%d: %d training points, fewer than %d per list: centroids may be "
                        "poor", nlist, n, MIN_POINTS_PER_LIST)
        v = sample_rows(v, MAX_POINTS_PER_CENTROID * nlist, self.seed)  # before normalising
        if self.metric is Metric.COSINE:
            v = normalize_rows(v)
        km = kmeans(v, nlist, niter=self.niter, seed=self.seed, metric=self._kmetric,
                    exact_iters=TRAIN_EXACT_ITERS)
        self._set_centroids(km.centroids)
        self._offsets = np.zeros(nlist + 1, np.int64)
        self._fit_codec(v, queries)

    def _fit_codec(self, v: np.ndarray, queries: np.ndarray | None = None) -> None:
        """Train the row codec on the (normalised) training sample, once centroids exist;
        ``queries`` for a query-aware codec (LeanVec-OOD)."""
        if queries is not None:
            queries = as_vectors(queries, self.dim, "queries")
            if self.metric is Metric.COSINE:
                queries = normalize_rows(queries)
        self.codec.fit(v, queries)

    def _set_centroids(self, centroids: np.ndarray) -> None:
        self._centroids = centroids
        self._centroids_t = np.ascontiguousarray(centroids.T)  # for the coarse product
        self._cnorms = (sq_norms(centroids) if self._kmetric == "l2"
                        else np.zeros(centroids.shape[0], np.float32))

    def add(self, x, ids=None) -> np.ndarray:
        """Assign vectors to their nearest lists; ``ids`` default to consecutive integers
        after the largest so far. Rows get positions in insertion order."""
        self._require_trained("add")
        v = as_vectors(x, self.dim, "vectors")
        scale = np.zeros(0, np.float32)
        if self.metric is Metric.COSINE and self.codec.name == "f32":
            # normalised while copied into the lists; the nearest centroid by inner product
            # is the same for a row and its unit multiple
            norms = np.sqrt(sq_norms(v))
            scale = np.divide(1.0, norms, out=np.ones_like(norms), where=norms > 0)
        elif self.metric is Metric.COSINE:
            v = normalize_rows(v)
        if ids is None:
            start = int(self._ids.max()) + 1 if self._n else 0
            ids = np.arange(start, start + v.shape[0], dtype=np.int64)
        ids = as_ids(ids, v.shape[0])
        self._idmap.check_new(ids)
        if v.shape[0] == 0:
            return ids
        labels, _ = assign(v, self._centroids, self._kmetric, self._cnorms)
        codes, aux = self._encode(v, labels)
        self._add_rows(v, scale)
        n0 = self._n
        self._merge(labels, codes, aux, scale)
        self._ids = np.concatenate([self._ids[:n0], ids])
        words = np.zeros((self._n + 63) >> 6, np.uint64)
        words[: self._deleted.shape[0]] = self._deleted
        self._deleted = words
        self._idmap.assign(ids, np.arange(n0, self._n, dtype=np.int64))
        return ids

    def _encode(self, v: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes, aux) the lists store for rows ``v`` assigned to ``labels``."""
        return self.codec.encode(v)

    def _add_rows(self, v: np.ndarray, scale: np.ndarray) -> None:
        """Keep what is stored by position besides the lists: the float32 copy of rows whose
        codes do not give them back."""
        if self._float is not None:
            self._float.append(v)

    def _merge(self, labels: np.ndarray, codes: np.ndarray, aux: np.ndarray,
               scale: np.ndarray) -> None:
        """Rebuild the contiguous lists with new rows (of ``labels``) appended to theirs;
        ``scale``: per new row factors for their codes (empty: none)."""
        n0 = self._n
        n1 = n0 + labels.shape[0]
        old = np.searchsorted(self._offsets, self._slot_of[:n0], side="right") - 1
        labels = np.concatenate([old, labels])
        order = np.argsort(labels, kind="stable")  # by list, then insertion order
        offsets = np.zeros(self.lists + 1, np.int64)
        np.cumsum(np.bincount(labels, minlength=self.lists), out=offsets[1:])
        new_codes, new_aux = self.codec.empty(n1)
        was = order < n0
        old_dst, new_dst = np.flatnonzero(was), np.flatnonzero(~was)
        none = np.zeros(0, np.float32)
        for src, dst, c, a, f in (
                (self._slot_of[order[old_dst]], old_dst, self._codes, self._aux, none),
                (order[new_dst] - n0, new_dst, codes, aux, scale)):
            ki.copy_rows(c, src, dst, f, new_codes)
            ki.copy_rows(a, src, dst, none, new_aux)
        slot_of = np.empty(n1, np.int64)
        slot_of[order] = np.arange(n1, dtype=np.int64)
        self._codes, self._aux, self._offsets = new_codes, new_aux, offsets
        self._slot_pos, self._slot_of, self._n = order.astype(np.int64), slot_of, n1

    def remove(self, ids) -> int:
        """Mark ids deleted (unknown ones are ignored); returns how many were removed."""
        self._deleted, n = mark_removed(self._idmap, ids, self._ids, self._deleted)
        self._n_deleted += n
        return n

    # --- search ---------------------------------------------------------------------

    def search(self, queries, k: int, allowed=None, params: SearchParams | dict | None = None,
               explain: bool = False, **knobs):
        """Top-k per query. ``params`` (or the same as keywords): ``nprobe`` lists to probe
        (default ``default_nprobe(nlist)``, at most nlist), ``exact`` to scan every allowed
        row. ``allowed``: ids or a Bitset the results must come from. With ``explain`` a
        third value is the planner's choice and estimates."""
        return search_by_ids(self, queries, k, allowed, params, explain, knobs, self._n)

    def nprobe_for(self, params: SearchParams) -> int:
        """The lists a search with ``params`` probes (``scaled_nprobe``)."""
        return scaled_nprobe(params, self.nlist, self.lists)

    def _row_cost_bytes(self) -> float:
        """What scoring one row costs, in bytes of a float32 scan (the planner's unit)."""
        return self.codec.bytes_per_vector()

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]:
        """The cost model the planner reads (microseconds per query, one thread).

        Exact scans the allowed rows. Traversal computes ``nlist`` centroid distances and
        scans the ``n * nprobe / nlist`` rows of the probed lists, scoring only the allowed
        ones; if those are expected to hold fewer than k allowed rows, the exact fallback it
        will need is added."""
        bpv = self._row_cost_bytes()
        costs = {"exact": planner.scan_cost(allowed, bpv)}
        if self._centroids is None or points == 0:
            return costs
        nprobe = self.nprobe_for(params)
        rows = points * nprobe / self.lists
        share = allowed / points
        cost = (planner.scan_cost(self.lists, 4 * self.dim) + planner.scan_cost(rows * share, bpv)
                + rows * _CHECK_US_PER_ROW * filtered)
        if rows * share < k and nprobe < self.lists:
            cost += costs["exact"]
        costs["traversal"] = cost
        return costs

    def search_positions(self, q: np.ndarray, k: int, bits: Bitset | None, params: SearchParams,
                         plan: planner.Plan | None = None, filtered: bool | None = None,
                         ordered: bool = True):
        """(kernel distances, row positions, plan info) for validated float32 queries (unit
        rows for cosine) and a Bitset of allowed positions: the path segments call, with no
        second validation and no id translation. ``ordered=False``: each row's hits in any
        order (still -1 padded at the end), for a caller that re-scores them anyway; a fast
        scan then skips its final sort."""
        self._require_trained("search")
        nprobe = self.nprobe_for(params)
        n = self._n
        words, n_ok, use_ok = live_words(bits, self._deleted, self._n_deleted, n)
        if plan is None:
            plan = planner.choose(self, n_ok, n, k, params,
                                  bits is not None if filtered is None else filtered)
        info = {**plan.explain(), "fallback_exact": 0, "nprobe": nprobe}
        second = None if params.rerank is False else self.codec.rerank_dist(self._kmetric)
        r = k if second is None else max(k, params.ef if params.ef is not None
                                         else _RERANK_FACTOR * k)
        if plan.strategy == "exact" or n == 0:
            dist, pos = self._exact(q, r, words, use_ok, n_ok, params)
        else:
            dist, pos = self._probe(q, r, nprobe, words, use_ok, params,
                                    ordered and second is None)  # a re-rank sorts anyway
            need = min(k, n_ok)
            if nprobe < self.lists and short_rows(pos, need):  # -1 padded at the end
                redo = np.flatnonzero(pos[:, need - 1] < 0)
                info["fallback_exact"] = int(redo.size)
                dist[redo], pos[redo] = self._exact(q[redo], r, words, use_ok, n_ok, params)
        if second is not None and n:
            dist, pos = self._rerank_two_level(second, q, pos, k)
        if self._kmetric == "l2":
            np.maximum(dist, 0, out=dist)
        return dist, pos, info

    def _rerank_two_level(self, second, q, pos, k):
        """Re-score candidate positions on both levels of a two-level codec's codes."""
        slots = np.where(pos >= 0, self._slot_of[np.maximum(pos, 0)], -1)
        dist, best = rerank_candidates(second, self.codec.prepare(q), self._codes, self._aux,
                                       slots, k)
        return dist, np.where(best >= 0, self._slot_pos[np.maximum(best, 0)], -1)

    def _probe(self, q, k, nprobe, words, use_ok, params: SearchParams, ordered: bool = True):
        """Top-k over each query's ``nprobe`` nearest lists (a batch in chunks of query-list
        pairs, so the per-call bookkeeping stays bounded)."""
        nq = q.shape[0]
        out_d = np.empty((nq, k), np.float32)
        out_i = np.empty((nq, k), np.int64)
        if nq == 1:
            self._scan_one(q, nprobe, words, use_ok, out_d, out_i, ordered)
            return out_d, out_i
        chunk = max(1, _PAIRS_PER_CALL // nprobe)
        for q0 in range(0, nq, chunk):
            q1 = min(nq, q0 + chunk)
            probes = nearest_lists(q[q0:q1], self._centroids_t, self._cnorms, nprobe)
            self._scan_batch(q[q0:q1], probes, words, use_ok, out_d[q0:q1], out_i[q0:q1],
                             ordered)
        return out_d, out_i

    def _lists(self) -> tuple:
        """The lists as kernels read them (read-only views: one compiled variant, built
        here or memory-mapped)."""
        return tuple(map(readonly, (self._codes, self._aux, self._offsets, self._slot_pos)))

    def _scan_one(self, q, nprobe, words, use_ok, out_d, out_i, ordered=True) -> None:
        """(Its kernels sort whether ``ordered`` or not, as do IVF-PQ's.)"""
        qs = self.codec.prepare(q)
        for_kind(ki.search_one, self.codec.dist(self._kmetric))(
            q[0], qs[0], readonly(self._centroids), self._cnorms, nprobe, *self._lists(),
            out_d.shape[1], words, use_ok, out_d[0], out_i[0])

    def _scan_batch(self, q, probes, words, use_ok, out_d, out_i, ordered=True) -> None:
        groups = min(q.shape[0], numba.get_num_threads())
        for_kind(ki.search_lists, self.codec.dist(self._kmetric))(self.codec.prepare(q), probes,
                        *self._lists(), words, use_ok, groups, out_d, out_i)

    def _exact(self, q, k, words, use_ok, n_ok, params: SearchParams):
        """Top-k over every allowed row: a selective filter's rows by slot, else all lists."""
        n = self._n
        if n == 0 or not use_ok or n_ok >= _ROWS_PATH_SHARE * n:
            return self._probe(q, k, max(self.lists, 1), words, use_ok, params)
        slots = np.sort(self._slot_of[Bitset(words, n).positions()])  # list order: sequential
        out_d = np.empty((q.shape[0], k), np.float32)
        out_i = np.empty((q.shape[0], k), np.int64)
        self._scan_slots(q, slots, out_d, out_i)
        return out_d, out_i

    def _scan_slots(self, q, slots, out_d, out_i) -> None:
        codes, aux, _, slot_pos = self._lists()
        for_kind(ki.scan_slots, self.codec.dist(self._kmetric))(
            self.codec.prepare(q), codes, aux, slots, slot_pos, out_d.shape[1], out_d, out_i)

    def reconstruct(self, positions) -> np.ndarray:
        """Float32 vectors stored at row positions (normalised for cosine)."""
        pos = np.asarray(positions, np.int64)
        if self._float is not None:
            return np.array(self._float.view()[0][pos], np.float32)
        codes = self._codes[self._slot_of[pos]]
        return F16Codec.decode(codes) if self.codec.name == "f16" else np.array(codes, np.float32)

    # --- persistence ----------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        n = self._n
        meta = {"dim": self.dim, "metric": self.metric.value, "nlist": self.nlist,
                "codec": self.codec.name, "niter": self.niter, "seed": self.seed,
                "adapt_nlist": self.adapt_nlist, "trained": self._centroids is not None,
                "n": n, "n_deleted": self._n_deleted}
        arrays = {"centroids": (self._centroids if self._centroids is not None
                                else np.zeros((0, self.dim), np.float32)),
                  "offsets": self._offsets, "codes": self._saved_codes(), "aux": self._aux[:n],
                  "slot_pos": self._slot_pos[:n], "slot_of": self._slot_of[:n],
                  "ids": self._ids[:n], "deleted": self._deleted[: (n + 63) >> 6]}
        if self.codec.trained:
            for name, arr in self.codec.state().items():
                arrays[f"codec_{name}"] = arr
        meta.update(self._extra_meta())
        arrays.update(self._extra_arrays())
        save_arrays(directory, self.kind, meta, arrays)

    def _row_codes(self) -> np.ndarray:
        """The lists' codes, one row per slot."""
        return self._codes[: self._n]

    def _saved_codes(self) -> np.ndarray:
        """What ``save`` writes as ``codes``."""
        return self._row_codes()

    def _extra_meta(self) -> dict:
        return {}

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        return {} if self._float is None else {"float_rows": self._float.view()[0]}

    def _load_extra(self, directory, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restore what ``_extra_arrays`` saved (after the lists and codec are back)."""
        if self._float is not None:
            rows = arrays.get("float_rows")
            if rows is None or rows.shape != (self._n, self.dim):
                raise CorruptData(f"{os.path.join(directory, 'float_rows.npy')}: missing or not "
                                  f"{self._n} x {self.dim}")
            self._float = VectorStore(self._float.codec, rows, np.zeros((self._n, 0), np.float32))

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> IVFIndex:
        meta, a = load_arrays(directory, cls.kind, mmap=mmap)
        try:
            kind = _list_class(meta["codec"])
            index = kind(meta["dim"], meta["metric"], meta["nlist"], meta["codec"], meta["niter"],
                         meta["seed"], meta["adapt_nlist"], **kind._options_from_meta(meta))
            n, trained = int(meta["n"]), bool(meta["trained"])
            n_deleted = int(meta["n_deleted"])
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise CorruptData(f"{directory}: bad IVF metadata ({exc})") from None
        _check_layout(directory, a, n, trained, index.dim)
        state = {k[6:]: v for k, v in a.items() if k.startswith("codec_")}
        if state:
            index.codec.load_state(state)
        if trained:
            index._set_centroids(a["centroids"])
        index._offsets, index._codes, index._aux = a["offsets"], a["codes"], a["aux"]
        index._slot_pos, index._slot_of, index._ids = a["slot_pos"], a["slot_of"], a["ids"]
        index._deleted, index._n_deleted, index._n = a["deleted"], n_deleted, n
        live = ~Bitset(index._deleted, n).to_mask() if n else np.zeros(0, bool)
        index._idmap = IdMap.from_array(index._ids, live)
        index._load_extra(directory, meta, a)
        return index

    @classmethod
    def _options_from_meta(cls, meta: dict) -> dict:
        return {}

    def __repr__(self) -> str:
        return (f"IVFIndex(dim={self.dim}, metric={self.metric.value!r}, nlist={self.nlist}, "
                f"codec={self.codec.name!r}, n={len(self)})")


def _list_class(codec: str) -> type[IVFIndex]:
    """The class whose lists a stored codec name belongs to: PQ codes are IVFPQIndex's, 4-bit
    ones its fast-scan subclass's."""
    if str(codec).lower().startswith("pq"):
        from .fastscan import IVFPQFastScanIndex
        from .ivfpq import IVFPQIndex

        return IVFPQFastScanIndex if str(codec).lower().endswith("fs") else IVFPQIndex
    return IVFIndex


def _check_layout(directory, a: dict[str, np.ndarray], n: int, trained: bool, dim: int) -> None:
    """Sizes that must agree before any kernel indexes with them (a checksum passes files
    that were saved inconsistent by a bug; this names the file instead of reading past it)."""
    lists = a["centroids"].shape[0]
    expect = {"centroids": ((lists, dim) if trained else (0, dim)),
              "offsets": (lists + 1,) if trained else (1,),
              "codes": (n,), "aux": (n,), "slot_pos": (n,), "slot_of": (n,), "ids": (n,),
              "deleted": ((n + 63) >> 6,)}
    for name, shape in expect.items():
        got = a[name].shape[: len(shape)]
        if got != shape:
            raise CorruptData(f"{os.path.join(directory, name + '.npy')}: shape {a[name].shape}, "
                              f"expected {shape}")
    off = a["offsets"]
    if off[0] != 0 or off[-1] != n or (off.shape[0] > 1 and np.any(np.diff(off) < 0)):
        raise CorruptData(f"{os.path.join(directory, 'offsets.npy')}: list offsets do not cover "
                          f"the {n} rows")
