"""IVF-PQ: product-quantised residuals in IVF lists, optionally re-ranked on a refine copy.

``IVF1024,PQ48x8`` keeps 48 bytes a vector in its lists (plus ids); ``Refine(F32|F16)`` also
keeps the vectors themselves, by row position, and re-scores the best ``ef`` candidates of
the PQ scan with them (default 10 k), which is what lifts recall from PQ's ceiling to
nearly that of a flat scan. Lists, training, filters and persistence are ``IVFIndex``'s;
this class supplies the PQ scoring (``kernels/pq.py``) and the refine step.
"""

from __future__ import annotations

import os

import numpy as np

from ...kernels import kmeans as kk
from ...kernels import pq as kp
from ...kernels import scan as ks
from .. import planner
from ..bitset import Bitset
from ..codecs import Codec, codec_from_spec
from ..errors import CorruptData, InvalidArgument
from ..kmeans import SEED, assign
from ..metric import Metric
from ..params import SearchParams
from ..pq import PQCodec
from ..spec import parse_spec
from ..vectors import VectorStore, readonly
from .hnsw import rerank_candidates
from .ivf import TRAIN_NITER, IVFIndex

REFINE_CODECS = ("f32", "f16")
REFINE_FACTOR = 10
"""Candidates re-ranked per query unless ``ef`` says otherwise: 10 k (FAISS's IndexRefine
k_factor is set per search too)."""
_ADC_BYTES_PER_CODE = 4.0
"""Cost model: one table look-up costs about as much as scanning 4 bytes of float32 rows."""
_ENCODE_ROWS = 1 << 16
"""Residuals are formed and encoded in chunks of this many rows (bounded temporary memory)."""


class IVFPQIndex(IVFIndex):
    """IVF over ``PQ<m>x8`` residual codes (``codec``), with an optional ``refine`` codec
    (``"f32"``/``"f16"``) re-ranking the best ``ef`` candidates (default 10 k; ``rerank=False``
    returns the PQ estimates). ``exact`` scans the refine vectors when there are some, else
    every row's PQ code. See ``IVFIndex`` for the rest."""

    def __init__(self, dim: int, metric: str | Metric = "l2", nlist: int = 1024,
                 codec: str = "PQ8x8", niter: int = TRAIN_NITER, seed: int = SEED,
                 adapt_nlist: bool = False, refine: str | None = None):
        super().__init__(dim, metric, nlist, codec, niter, seed, adapt_nlist)
        self._refine: VectorStore | None = None
        if refine is not None:
            rc = self._parse_codec(refine)
            if rc.name not in REFINE_CODECS:
                raise InvalidArgument(f"spec: IVF-PQ re-ranks on F32 or F16 vectors; Refine("
                                      f"{str(refine).upper()}) is not available")
            self._refine = VectorStore(rc)
        self._tabs = np.zeros((1, self.codec.m * self.codec.ksub), np.float32)
        self._bases: np.ndarray | None = None
        """What each list's residuals are taken from: its centroid (l2), or the mean of its
        training rows (ip/cosine, whose spherical centroids are unit vectors: residuals from
        the mean hold 18% less energy on WordNet, and PQ codes them better)."""

    def _parse_codec(self, name: str) -> Codec:
        parts = parse_spec(name) if isinstance(name, str) else []
        if len(parts) != 1:
            raise InvalidArgument(f"codec: expected one codec such as 'PQ48x8', got {name!r}")
        return codec_from_spec(parts[0], self.dim)

    _NBITS = 8
    """Bits of the PQ codes this class scans (4-bit ones are the fast-scan subclass's)."""

    def _make_codec(self, name: str) -> Codec:
        codec = self._parse_codec(name)
        if not isinstance(codec, PQCodec) or codec.nbits != self._NBITS:
            form = "PQ<m>x8" if self._NBITS == 8 else "PQ<m>x4fs"
            raise InvalidArgument(f"codec: {type(self).__name__} stores {form} codes, got "
                                  f"{name!r}" + (" (4-bit codes: the spec IVF<nlist>,PQ<m>x4fs)"
                                                 if self._NBITS == 8 else ""))
        return codec

    @property
    def refine(self) -> str | None:
        return None if self._refine is None else self._refine.codec.name

    # --- build ----------------------------------------------------------------------

    def _fit_codec(self, v: np.ndarray, queries: np.ndarray | None = None) -> None:
        labels, _ = assign(v, self._centroids, self._kmetric, self._cnorms)
        self._bases = self._centroids
        if self._kmetric != "l2":
            counts = np.zeros(self.lists, np.int64)
            sums = np.zeros_like(self._centroids)
            kk.accumulate_rows(np.ascontiguousarray(v, np.float32), labels, 0, sums, counts)
            self._bases = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None],
                                   self._centroids).astype(np.float32)
        self.codec.fit(v - self._bases[labels], seed=self.seed, adapt=self.adapt_nlist)
        self._set_tables()

    def _set_tables(self) -> None:
        """l2: the per-list tables L[l, j, i] = ||c_ji||^2 + 2 <centroid_l,j, c_ji>."""
        pq = self.codec
        if self._kmetric != "l2":
            self._tabs = np.zeros((1, pq.m * pq.ksub), np.float32)
            return
        tabs = np.empty((self.lists, pq.m, pq.ksub), np.float32)
        for j in range(pq.m):
            sub = np.ascontiguousarray(self._bases[:, j * pq.dsub : (j + 1) * pq.dsub])
            np.matmul(sub, pq.codebooks[j].T, out=tabs[:, j])
        tabs *= 2
        tabs += pq.sq_norms()[None]
        self._tabs = tabs.reshape(self.lists, -1)

    def _encode(self, v: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.empty((v.shape[0], self.codec.code_width), np.uint8)
        for r0 in range(0, v.shape[0], _ENCODE_ROWS):
            r1 = r0 + _ENCODE_ROWS
            codes[r0:r1] = self.codec.encode(v[r0:r1] - self._bases[labels[r0:r1]])[0]
        return codes, np.zeros((v.shape[0], 0), np.float32)

    def _add_rows(self, v: np.ndarray, scale: np.ndarray) -> None:
        if self._refine is not None:
            self._refine.append(v * scale[:, None] if scale.size else v)

    # --- search ---------------------------------------------------------------------

    def _scale(self) -> np.float32:
        """ADC tables hold -<q_j, c_ji> (ip) or -2 <q_j, c_ji> (l2, plus ``_tabs``)."""
        return np.float32(-2.0 if self._kmetric == "l2" else -1.0)

    def _pq_lists(self) -> tuple:
        """(bases, codes, offsets, slot_pos) as kernels read them: read-only views, one
        compiled variant whether built here or memory-mapped (``IVFIndex._lists``)."""
        return tuple(map(readonly, (self._bases, self._codes, self._offsets, self._slot_pos)))

    def _scan_one(self, q, nprobe, words, use_ok, out_d, out_i, ordered=True) -> None:
        bases, codes, offsets, slot_pos = self._pq_lists()
        kp.search_one(q[0], self.codec.books_t(), self._scale(), readonly(self._centroids), bases,
                      self._cnorms, nprobe, codes, offsets, slot_pos, self._tabs,
                      self._kmetric == "l2", out_d.shape[1], words, use_ok, out_d[0], out_i[0])

    def _scan_batch(self, q, probes, words, use_ok, out_d, out_i, ordered=True) -> None:
        bases, codes, offsets, slot_pos = self._pq_lists()
        kp.search_batch(q, self.codec.books_t(), self._scale(), probes, bases, self._cnorms,
                        codes, offsets, slot_pos, self._tabs, self._kmetric == "l2", words,
                        use_ok, out_d, out_i)

    def _scan_slots(self, q, slots, out_d, out_i) -> None:
        lists = np.searchsorted(self._offsets, slots, side="right") - 1
        bases, codes, _, slot_pos = self._pq_lists()
        kp.scan_slots(q, self.codec.inner_tables(q, self._scale()), bases, self._cnorms, codes,
                      slots, lists, slot_pos, self._tabs, self._kmetric == "l2",
                      out_d.shape[1], out_d, out_i)

    def _reranks(self, params: SearchParams) -> bool:
        return self._refine is not None and params.rerank is not False

    def _probe(self, q, k, nprobe, words, use_ok, params: SearchParams, ordered: bool = True):
        """PQ top-``ef`` candidates (10 k by default), re-ranked to k on the refine copy."""
        if not self._reranks(params):
            return super()._probe(q, k, nprobe, words, use_ok, params, ordered)
        r = max(k, params.ef if params.ef is not None else REFINE_FACTOR * k)
        _, cand = super()._probe(q, r, nprobe, words, use_ok, params, ordered=False)
        return self._rerank(q, cand, k)

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int):
        codec = self._refine.codec
        X, aux = self._refine.view()
        return rerank_candidates(codec.dist(self._kmetric), codec.prepare(q), X, aux, cand, k)

    def _exact(self, q, k, words, use_ok, n_ok, params: SearchParams):
        """With a refine copy: an exact scan of it (over the allowed rows); else ADC over
        every allowed row's code."""
        if not self._reranks(params):
            return super()._exact(q, k, words, use_ok, n_ok, params)
        X, aux = self._refine.view()
        codec = self._refine.codec
        kind, qs = codec.dist(self._kmetric), codec.prepare(q)
        out_d = np.empty((q.shape[0], k), np.float32)
        out_i = np.empty((q.shape[0], k), np.int64)
        if use_ok:
            rows = Bitset(words, self._n).positions()
            ks.scan_topk_rows_any(kind, qs, X, aux, rows, k, out_d, out_i)
        else:
            ks.scan_topk_any(kind, qs, X, aux, self._n, k, np.zeros(1, np.uint64), False, out_d,
                             out_i)
        return out_d, out_i

    def _row_cost_bytes(self) -> float:
        return _ADC_BYTES_PER_CODE * self.codec.m

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool) -> dict[str, float]:
        """``IVFIndex``'s model with ADC rows, plus re-ranking ``ef`` candidates on the refine
        copy; exact scans that copy when there is one."""
        costs = super().strategy_costs(allowed, points, k, params, filtered)
        if self._reranks(params):
            bpv = self._refine.codec.bytes_per_vector()
            costs["exact"] = planner.scan_cost(allowed, bpv)
            if "traversal" in costs:
                r = max(k, params.ef if params.ef is not None else REFINE_FACTOR * k)
                costs["traversal"] += planner.scan_cost(r, bpv)
        return costs

    def reconstruct(self, positions) -> np.ndarray:
        """Float32 vectors at row positions: the refine copy's, or the PQ reconstruction
        (centroid plus decoded residual) without one."""
        pos = np.asarray(positions, np.int64)
        if self._refine is not None:
            codes, _ = self._refine.view()
            rows = codes[pos]
            return (rows.view(np.float16).astype(np.float32) if self._refine.codec.name == "f16"
                    else np.array(rows, np.float32))
        slots = self._slot_of[pos]
        lists = np.searchsorted(self._offsets, slots, side="right") - 1
        return self.codec.decode(self._row_codes()[slots]) + self._bases[lists]

    # --- sizes and persistence ------------------------------------------------------

    def memory_usage(self) -> dict[str, int]:
        usage = super().memory_usage()
        usage["pq_tables"] = int(self._tabs.nbytes)
        usage["list_bases"] = (0 if self._bases is None or self._bases is self._centroids
                               else int(self._bases.nbytes))
        usage["refine_vectors"] = 0 if self._refine is None else self._refine.nbytes()
        return usage

    def _extra_meta(self) -> dict:
        return {"refine": self.refine}

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        if self._bases is not None and self._bases is not self._centroids:
            out["list_bases"] = self._bases
        if self._refine is not None:
            out["refine_codes"], out["refine_aux"] = self._refine.view()
        return out

    @classmethod
    def _options_from_meta(cls, meta: dict) -> dict:
        return {"refine": meta.get("refine")}

    def _load_extra(self, directory, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        if self._refine is not None:
            if "refine_codes" not in arrays or arrays["refine_codes"].shape[0] != self._n:
                raise CorruptData(f"{os.path.join(directory, 'refine_codes.npy')}: missing or "
                                  f"not {self._n} rows")
            self._refine = VectorStore(self._refine.codec, arrays["refine_codes"],
                                       arrays["refine_aux"])
        if self._centroids is not None:
            self._bases = arrays.get("list_bases", self._centroids)
            if self._bases.shape != self._centroids.shape:
                raise CorruptData(f"{os.path.join(directory, 'list_bases.npy')}: shape "
                                  f"{self._bases.shape}, expected {self._centroids.shape}")
        if self.codec.trained and self._centroids is not None:
            self._set_tables()
