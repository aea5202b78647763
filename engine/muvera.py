"""Multi-vector retrieval: exact Chamfer (MaxSim) and MUVERA fixed-dimensional encodings.

Late-interaction models give every document a matrix of token vectors; the similarity is
Chamfer(Q, P) = sum over query tokens q of max over document tokens p of <q, p>. MUVERA
(Dhulipala et al. 2024) turns each token set into one vector (its FDE) whose inner product
approximates Chamfer: per repetition, SimHash buckets the tokens; a query block sums its
bucket's projected tokens, a document block averages them (the asymmetry that makes <F_q,
F_d> track sum_q <q, nearest p>), and an empty document bucket borrows the token nearest in
SimHash bits. A dense index over document FDEs fetches candidates; exact Chamfer over the
stored tokens re-ranks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels import chamfer as kc
from ..kernels.chunks import chunk_count, run_chunks
from .codecs import F16Codec, F32Codec
from .errors import InvalidArgument
from .index.registry import index as make_index
from .index.registry import parse_index_spec
from .vectors import VectorStore

TOKEN_CODECS = {"f16": F16Codec, "f32": F32Codec}
"""How document tokens are stored: float16 (default; bits as uint16) or float32."""
_F16_MAX = 65504.0

FDE_VERSION = 1
"""Bumped whenever the encoding changes, so an index never mixes two encodings."""


@dataclass(frozen=True)
class FDEConfig:
    """MUVERA parameters: ``k_sim`` SimHash bits (2**k_sim buckets), ``d_proj`` dimensions
    per bucket after a random +-1 projection, ``r_reps`` independent repetitions, ``seed``.
    FDE dimension = r_reps * 2**k_sim * d_proj."""

    k_sim: int = 4
    d_proj: int = 16
    r_reps: int = 20
    seed: int = 42
    version: int = FDE_VERSION

    def __post_init__(self):
        for name, low, high in (("k_sim", 1, 10), ("d_proj", 1, 1024), ("r_reps", 1, 256)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise InvalidArgument(f"fde.{name}: expected an integer in [{low}, {high}], "
                                      f"got {v!r}")
        if self.version != FDE_VERSION:
            raise InvalidArgument(f"fde.version: {self.version} is not this build's encoding "
                                  f"({FDE_VERSION})")

    @property
    def dim(self) -> int:
        return self.r_reps * (1 << self.k_sim) * self.d_proj


class FDEEncoder:
    """Seeded SimHash and projection matrices for token vectors of dimension ``dim``."""

    def __init__(self, dim: int, config: FDEConfig):
        self.dim, self.config = dim, config
        rng = np.random.default_rng(config.seed)
        c = config
        self.simhash = rng.standard_normal((dim, c.r_reps * c.k_sim)).astype(np.float32)
        if c.d_proj == dim:  # the identity (Google's DEFAULT_IDENTITY): no projection noise
            self.projection = np.ascontiguousarray(np.tile(np.eye(dim, dtype=np.float32),
                                                           (1, c.r_reps)))
        else:
            signs = rng.integers(0, 2, (dim, c.r_reps * c.d_proj)).astype(np.float32) * 2 - 1
            self.projection = (signs / np.float32(math.sqrt(c.d_proj))).astype(np.float32)

    def _encode(self, tokens: np.ndarray, offsets: np.ndarray, document: bool) -> np.ndarray:
        out = np.zeros((offsets.shape[0] - 1, self.config.dim), np.float32)
        H = np.ascontiguousarray(tokens @ self.simhash)
        P = np.ascontiguousarray(tokens @ self.projection)
        kc.fde_encode(H, P, offsets, self.config.k_sim, document, document, out)
        return out

    def documents(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(n_docs, fde dim): per bucket the mean of its tokens, empty buckets filled."""
        return self._encode(tokens, offsets, True)

    def queries(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(n_queries, fde dim): per bucket the sum of its tokens, empty buckets left zero."""
        return self._encode(tokens, offsets, False)


def ragged(value, dim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) from a list of (n_i, dim) token matrices or a (vectors, offsets)
    pair; errors name the item."""
    if isinstance(value, tuple) and len(value) == 2:
        tokens = np.ascontiguousarray(value[0], np.float32)
        offsets = np.ascontiguousarray(value[1], np.int64)
        if tokens.ndim != 2 or tokens.shape[1] != dim:
            raise InvalidArgument(f"{what}: token vectors must be (n, {dim}), got shape "
                                  f"{tokens.shape}")
        if (offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0
                or offsets[-1] != tokens.shape[0] or (np.diff(offsets) < 1).any()):
            raise InvalidArgument(f"{what}: offsets must rise from 0 to {tokens.shape[0]} "
                                  f"with at least one token per item")
    else:
        try:
            items = [value] if isinstance(value, np.ndarray) and value.ndim == 2 else list(value)
        except TypeError:
            raise InvalidArgument(f"{what}: expected a list of token matrices or a (vectors, "
                                  f"offsets) pair, got {type(value).__name__}") from None
        mats = []
        for i, item in enumerate(items):
            try:
                m = np.asarray(item, np.float32)
            except (TypeError, ValueError):
                raise InvalidArgument(f"{what}[{i}]: not a matrix of numbers") from None
            if m.ndim != 2 or m.shape[1] != dim:
                raise InvalidArgument(f"{what}[{i}]: expected (tokens, {dim}) token vectors, "
                                      f"got shape {m.shape}")
            if not 1 <= m.shape[0] <= 4096:
                raise InvalidArgument(f"{what}[{i}]: {m.shape[0]} tokens; 1 to 4096 allowed")
            mats.append(m)
        if not mats:
            raise InvalidArgument(f"{what}: no items")
        tokens = np.ascontiguousarray(np.concatenate(mats), np.float32)
        offsets = np.zeros(len(mats) + 1, np.int64)
        np.cumsum([m.shape[0] for m in mats], out=offsets[1:])
    if not np.isfinite(tokens).all():
        bad = int(np.searchsorted(offsets, np.flatnonzero(~np.isfinite(tokens).all(1))[0],
                                  side="right") - 1)
        raise InvalidArgument(f"{what}[{bad}]: NaN or infinite token values")
    return tokens, offsets


def _ids(ids) -> np.ndarray:
    try:
        return np.asarray(ids, np.int64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument("ids: expected integers") from None


class MultiVectorIndex:
    """Documents as token matrices, searched by Chamfer (MaxSim) similarity.

    ``index`` is the dense index spec over the document FDEs (any registered one, e.g.
    ``"HNSW16"``, ``"HNSW16,LVQ8"``, ``"Flat"``); ``fde`` the encoding; ``tokens`` how the
    document tokens are kept for re-ranking (``"f16"``, or ``"f32"``). ``search`` fetches
    ``candidates`` documents by FDE inner product, then re-ranks them by exact Chamfer over
    the stored tokens; ``exact=True`` scores every document. Scores are Chamfer sums."""

    def __init__(self, dim: int, metric: str = "ip", index: str = "HNSW16",
                 fde: FDEConfig | dict | None = None, tokens: str = "f16", **index_options):
        if metric != "ip":
            raise InvalidArgument(f"metric: multi-vector search scores MaxSim by inner product "
                                  f"(normalise tokens for cosine); got {metric!r}")
        if tokens not in TOKEN_CODECS:
            raise InvalidArgument(f"tokens: {tokens!r}; stored as one of {', '.join(TOKEN_CODECS)}")
        self.dim = int(dim)
        self.token_codec = tokens
        self.config = fde if isinstance(fde, FDEConfig) else FDEConfig(**(fde or {}))
        self.encoder = FDEEncoder(self.dim, self.config)
        self.spec = index
        self.fdes = make_index(index, self.config.dim, "ip", **index_options)
        self._graph = parse_index_spec(index).index.family == "HNSW"  # takes ef
        self._tokens = VectorStore(TOKEN_CODECS[tokens](self.dim))
        self._offsets = np.zeros(1, np.int64)
        self._ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self._ids.shape[0]

    def add(self, documents, ids=None) -> np.ndarray:
        """Add documents: a list of (n_i, dim) arrays or a (vectors, offsets) pair. ``ids``
        default to positions; they must be new."""
        tokens, offsets = ragged(documents, self.dim, "documents")
        n = offsets.shape[0] - 1
        ids = (np.arange(len(self), len(self) + n, dtype=np.int64) if ids is None
               else _ids(ids))
        if ids.shape != (n,):
            raise InvalidArgument(f"ids: expected {n} ids, got shape {ids.shape}")
        if np.isin(ids, self._ids).any() or np.unique(ids).shape[0] != n:
            raise InvalidArgument("ids: must be new and distinct")
        if self.token_codec == "f16" and (np.abs(tokens) > _F16_MAX).any():
            row = int(np.flatnonzero((np.abs(tokens) > _F16_MAX).any(1))[0])
            doc = int(np.searchsorted(offsets, row, side="right") - 1)
            raise InvalidArgument(f"documents[{doc}]: a token value beyond the float16 range "
                                  f"(|x| <= 65504); store tokens='f32'")
        fde = self.encoder.documents(tokens, offsets)
        if self.fdes.needs_training and len(self.fdes) == 0:
            self.fdes.train(fde)
        self.fdes.add(fde, np.arange(len(self), len(self) + n, dtype=np.int64))
        self._offsets = np.concatenate([self._offsets, offsets[1:] + self._offsets[-1]])
        self._tokens.append(tokens)
        self._ids = np.concatenate([self._ids, ids])
        return ids

    def memory_usage(self) -> dict[str, int]:
        """Resident bytes: the stored tokens, their offsets and ids, and the FDE index."""
        usage = {f"fde_{k}": v for k, v in self.fdes.memory_usage().items()}
        usage.update(tokens=self._tokens.nbytes(), offsets=int(self._offsets.nbytes),
                     ids=int(self._ids.nbytes))
        return usage

    def default_candidates(self, k: int) -> int:
        """Documents re-ranked per query unless told: 2% of them, at least 8 k."""
        return min(len(self), max(8 * k, math.ceil(0.02 * len(self))))

    def search(self, queries, k: int = 10, candidates: int | None = None, exact: bool = False,
               ef: int | None = None):
        """(scores, ids), each (n_queries, k), -1 padded: queries as a list of token matrices,
        one (n, dim) matrix, or a (vectors, offsets) pair."""
        single = isinstance(queries, np.ndarray) and queries.ndim == 2
        tokens, offsets = ragged(queries, self.dim, "queries")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgument(f"k: expected a positive integer, got {k!r}")
        nq = offsets.shape[0] - 1
        out_d = np.full((nq, k), np.inf, np.float32)
        out_i = np.full((nq, k), -1, np.int64)
        if len(self):
            if exact:
                cand = np.full((nq, 1), -2, np.int64)
            else:
                c = candidates if candidates is not None else self.default_candidates(k)
                if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                    raise InvalidArgument(f"candidates: expected a positive integer, got {c!r}")
                c = min(max(c, k), len(self))
                params = {"ef": max(ef or 0, c)} if self._graph else {}
                _, cand = self.fdes.search(self.encoder.queries(tokens, offsets), c, **params)
                cand = np.ascontiguousarray(cand, np.int64)
            stored = self._tokens.view()[0]

            def rerank(first: int, step: int) -> None:
                kc.chamfer_topk_chunk(tokens, offsets, stored, self._offsets, cand, k, out_d,
                                      out_i, first, step)

            run_chunks(rerank, chunk_count(nq))
        scores = np.where(out_i >= 0, -out_d, -np.inf).astype(np.float32)
        ids = np.where(out_i >= 0, self._ids[np.maximum(out_i, 0)], -1)
        return (scores[0], ids[0]) if single else (scores, ids)
