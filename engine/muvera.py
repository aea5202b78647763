"""Multi-vector retrieval: exact Chamfer (MaxSim) and MUVERA fixed-dimensional encodings.

Late-interaction models give every document a matrix of token vectors; the similarity is
Chamfer(Q, P) = sum over query tokens q of max over document tokens p of <q, p>. MUVERA
(Dhulipala et al. 2024) turns each token set into one vector (its FDE) whose inner product
approximates Chamfer: per repetition, SimHash buckets the tokens; a query block sums its
bucket's projected tokens, a document block averages them (the asymmetry that makes <F_q,
F_d> track sum_q <q, nearest p>), and an empty document bucket borrows the first token of the
occupied bucket nearest in SimHash bits. A dense index over document FDEs fetches
candidates; exact Chamfer over the stored tokens re-ranks them.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..kernels import chamfer as kc
from ..kernels import topk as kt
from ..kernels.chunks import chunk_count, run_chunks
from . import planner
from .bitset import Bitset
from .codecs import F16Codec, F32Codec, LVQCodec
from .errors import CorruptData, InvalidArgument
from .index.base import finish_results
from .index.registry import index as make_index
from .index.registry import load_index, parse_index_spec
from .metric import Metric
from .params import SearchParams
from .persist import load_arrays, save_arrays
from .tokens import TokenMatrices, as_token_matrices, check_f16_tokens
from .vectors import VectorStore, readonly

RETRIEVALS = ("fde", "tokens")
"""Where candidates come from: MUVERA FDEs of whole documents in a dense index, or the
nearest document tokens of each query token (a dense index over all tokens; documents voted
by the sum of their best hits, ``kernels.chamfer.token_votes``)."""
QUERY_TOKENS = 32
"""Query tokens the cost model assumes when it is not told (ColBERT's query length)."""
CHAMFER_BYTES_PER_MAC = 0.8
"""Cost model: one multiply-add of exact Chamfer, in bytes of a float32 scan."""
TOKEN_HITS = 64
"""Token retrieval: nearest document tokens fetched per query token. WordNet tokens (10,000
documents, 2% re-ranked), recall@10 with 16 / 32 / 64 / 96 hits: 0.871 / 0.950 / 0.982 /
0.990 over HNSW16, 0.851 / 0.938 / 0.971 / 0.981 over IVF512,PQ64x4fs, where 64 hits cost
about 17% of the queries per second that 16 do (one pass each; HNSW16: none)."""
MAX_TOKEN_HITS = 4096
"""The most tokens a query token may fetch (REST's limit too)."""
TOKEN_CODECS = {"f16": F16Codec, "f32": F32Codec, "lvq8": lambda dim: LVQCodec(dim, 8)}
"""How document tokens are kept: float16 (default), float32, or LVQ-8 (a byte a dimension plus
a per-token bias and step, centred on the mean of the first tokens added)."""
_NO_AUX, _NO_MEAN = np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
"""What the Chamfer kernel takes for the LVQ aux rows and mean of tokens that have none."""

FDE_VERSION = 2
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
    """(tokens, offsets) from a list of (n_i, dim) token matrices, a (vectors, offsets) pair
    or ``TokenMatrices``; errors name the item."""
    x = as_token_matrices(value, dim, what)
    if len(x) == 0:
        raise InvalidArgument(f"{what}: no items")
    return x.tokens, x.offsets


def pool_tokens(tokens: np.ndarray, offsets: np.ndarray, factor: int,
                unit: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each document's tokens pooled to ceil(n / factor) (``kernels.chamfer.pool_tokens``);
    ``unit``: pooled tokens normalised to unit length (default: when every input token is)."""
    if unit is None:
        norms = np.einsum("ij,ij->i", tokens, tokens)
        unit = bool(np.all(np.abs(norms - 1) < 1e-3))
    out_offsets = kc.pool_counts(offsets, factor)
    out = np.empty((int(out_offsets[-1]), tokens.shape[1]), np.float32)
    kc.pool_tokens(tokens, offsets, factor, unit, out_offsets, out)
    return out, out_offsets


def _ids(ids) -> np.ndarray:
    try:
        return np.asarray(ids, np.int64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument("ids: expected integers") from None


@functools.lru_cache(maxsize=256)
def _candidate_search_params(params: SearchParams, ef: int | None) -> SearchParams:
    """The candidate search's knobs: the caller's with beam ``ef``, and neither ``candidates``
    nor ``exact`` (remembered: each query would rebuild and re-check the same ones)."""
    return replace(params, ef=ef, candidates=None, exact=False)


@functools.cache
def _takes_ordered(index_type: type) -> bool:
    return "ordered" in inspect.signature(index_type.search_positions).parameters


class MultiVectorIndex:
    """Documents as token matrices, searched by Chamfer (MaxSim) similarity.

    ``index`` is the dense index spec over the document FDEs (any registered one, e.g.
    ``"HNSW16"``, ``"HNSW16,LVQ8"``, ``"Flat"``), or None for exact search only (no FDEs:
    what a collection's appendable segment uses); ``fde`` the encoding; ``tokens`` how the
    document tokens are kept for re-ranking (``"f16"``, or ``"f32"``); ``pool_factor`` > 1
    pools each document's tokens to 1 / pool_factor of them as it is added. ``search`` fetches
    ``candidates`` documents by FDE inner product, then re-ranks them by exact Chamfer over
    the stored tokens; ``exact=True`` scores every document. Scores are Chamfer sums.

    It also has the interface collection segments drive their field indexes through
    (``search_positions``, ``strategy_costs``, ``reconstruct``, ``save``/``load``), so a
    multi-vector field lives in segments as a dense one does."""

    kind = "multivector"
    needs_training = False

    def __init__(self, dim: int, metric: str = "ip", index: str | None = "HNSW16",
                 fde: FDEConfig | dict | None = None, tokens: str = "f16",
                 retrieval: str = "fde", token_hits: int = TOKEN_HITS, pool_factor: int = 1,
                 **index_options):
        if metric not in ("ip", Metric.IP):
            raise InvalidArgument(f"metric: multi-vector search scores MaxSim by inner product "
                                  f"(normalise tokens for cosine); got {metric!r}")
        if tokens not in TOKEN_CODECS:
            raise InvalidArgument(f"tokens: {tokens!r}; stored as one of {', '.join(TOKEN_CODECS)}")
        self.dim = int(dim)
        self.metric = Metric.IP
        self.token_codec = tokens
        self.config = fde if isinstance(fde, FDEConfig) else FDEConfig(**(fde or {}))
        self.encoder = FDEEncoder(self.dim, self.config)
        if retrieval not in RETRIEVALS:
            raise InvalidArgument(f"retrieval: {retrieval!r}; one of {', '.join(RETRIEVALS)}")
        for name, v in (("token_hits", token_hits), ("pool_factor", pool_factor)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgument(f"{name}: expected a positive integer, got {v!r}")
        if token_hits > MAX_TOKEN_HITS:  # each query token's search allocates by it
            raise InvalidArgument(f"token_hits: at most {MAX_TOKEN_HITS}, got {token_hits}")
        self.pool_factor = int(pool_factor)
        """Documents keep ceil(n / pool_factor) tokens, similar ones merged (token pooling);
        queries keep theirs."""
        self.spec = index
        self.retrieval = retrieval if index is not None else "fde"
        self.token_hits = int(token_hits)
        self.index_options = dict(index_options)
        over = self.config.dim if self.retrieval == "fde" else self.dim
        self.fdes = None if index is None else make_index(index, over, "ip", **index_options)
        """The dense index candidates come from: over document FDEs, or (``retrieval=
        "tokens"``) over every document token."""
        self._doc_of = np.zeros(0, np.int64)
        """Token retrieval: the document of each stored token."""
        self._graph = index is not None and parse_index_spec(index).index.family == "HNSW"
        self._tokens = VectorStore(TOKEN_CODECS[tokens](self.dim))
        self._offsets = np.zeros(1, np.int64)
        self._ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return self._ids.shape[0]

    def add(self, documents, ids=None) -> np.ndarray:
        """Add documents: a list of (n_i, dim) arrays, a (vectors, offsets) pair or
        ``TokenMatrices``. ``ids`` default to positions; they must be new."""
        tokens, offsets = ragged(documents, self.dim, "documents")
        if self.pool_factor > 1:
            tokens, offsets = pool_tokens(tokens, offsets, self.pool_factor)
        n = offsets.shape[0] - 1
        ids = (np.arange(len(self), len(self) + n, dtype=np.int64) if ids is None
               else _ids(ids))
        if ids.shape != (n,):
            raise InvalidArgument(f"ids: expected {n} ids, got shape {ids.shape}")
        if np.unique(ids).shape[0] != n or (len(self) and n and ids.min() <= self._ids.max()
                                             and np.isin(ids, self._ids).any()):
            raise InvalidArgument("ids: must be new and distinct")
        if self.token_codec == "f16":
            check_f16_tokens(tokens, offsets, "documents")
        if not self._tokens.codec.trained:  # LVQ: the mean the codes are centred on
            self._tokens.codec.fit(tokens)
        if self.fdes is not None:
            t0 = self._tokens.n
            rows = (self.encoder.documents(tokens, offsets) if self.retrieval == "fde"
                    else tokens)
            if self.fdes.needs_training and len(self.fdes) == 0:
                self.fdes.train(rows)
            first = len(self) if self.retrieval == "fde" else t0
            self.fdes.add(rows, np.arange(first, first + rows.shape[0], dtype=np.int64))
        if self.retrieval == "tokens":
            self._doc_of = np.concatenate([self._doc_of, len(self) + np.repeat(
                np.arange(n, dtype=np.int64), np.diff(offsets))])
        self._offsets = np.concatenate([self._offsets, offsets[1:] + self._offsets[-1]])
        self._tokens.append(tokens)
        self._ids = np.concatenate([self._ids, ids])
        return ids

    def reconstruct(self, positions) -> TokenMatrices:
        """The float32 token matrices stored at document positions."""
        pos = np.asarray(positions, np.int64)
        codes, aux = self._tokens.view()
        stored = TokenMatrices(codes, self._offsets)[pos]
        if self.token_codec == "f16":
            tokens = stored.tokens.view(np.float16).astype(np.float32)
        elif self.token_codec == "lvq8":
            rows = TokenMatrices(aux, self._offsets)[pos].tokens
            tokens = (self._tokens.codec.mean + rows[:, :1]
                      + rows[:, 1:2] * stored.tokens.astype(np.float32))
        else:
            tokens = stored.tokens
        return TokenMatrices(np.ascontiguousarray(tokens, np.float32), stored.offsets)

    def memory_usage(self) -> dict[str, int]:
        """Resident bytes: the stored tokens, their offsets and ids, and the FDE index."""
        usage = {} if self.fdes is None else {f"fde_{k}": v
                                              for k, v in self.fdes.memory_usage().items()}
        usage.update(tokens=self._tokens.nbytes(), offsets=int(self._offsets.nbytes),
                     ids=int(self._ids.nbytes), token_docs=int(self._doc_of.nbytes))
        return usage

    def default_candidates(self, k: int, n: int | None = None) -> int:
        """Documents re-ranked per query unless told: 2% of the ``n`` searchable (all by
        default), at least 8 k."""
        n = len(self) if n is None else n
        return min(n, max(8 * k, math.ceil(0.02 * n)))

    def search(self, queries, k: int = 10, candidates: int | None = None, exact: bool = False,
               ef: int | None = None, nprobe: int | None = None):
        """(scores, ids), each (n_queries, k), -1 padded: queries as a list of token matrices,
        one (n, dim) matrix, or a (vectors, offsets) pair."""
        single = isinstance(queries, np.ndarray) and queries.ndim == 2
        tokens, offsets = ragged(queries, self.dim, "queries")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgument(f"k: expected a positive integer, got {k!r}")
        params = SearchParams.parse(None, candidates=candidates, exact=exact, ef=ef,
                                    nprobe=nprobe)
        dist, pos, _ = self.search_positions(TokenMatrices(tokens, offsets), k, None, params)
        return finish_results(self.metric, dist, pos, self._ids, single)

    # --- the segment interface -------------------------------------------------------

    def strategy_costs(self, allowed: int, points: int, k: int, params: SearchParams,
                       filtered: bool, query_tokens: float | None = None) -> dict[str, float]:
        """Exact: Chamfer over every allowed document; traversal: the candidates' search
        (one FDE search a query, or one token search a query token) plus Chamfer over them.
        Chamfer is compute-bound: a multiply-add costs about 0.8 bytes of a float32 scan
        (10,000 WordNet documents of 11.9 tokens, queries of 7.5, 128-d: 7.5-8.4 ms with the
        register-tiled kernel; 12 ms before it)."""
        qt = float(query_tokens or QUERY_TOKENS)
        per_doc = CHAMFER_BYTES_PER_MAC * qt * self.dim * max(
            1.0, self._tokens.n / max(len(self), 1))
        costs = {"exact": planner.scan_cost(allowed, per_doc)}
        if self.fdes is not None and points:
            c = self._candidates(params, k, allowed)
            if self.retrieval == "tokens":
                per_tok = self._tokens.n / max(len(self), 1)
                found = self.fdes.strategy_costs(int(allowed * per_tok), len(self.fdes),
                                                 self.token_hits, params, filtered)
                search = qt * min(found.values())
            else:
                search = min(self.fdes.strategy_costs(allowed, points, c, params,
                                                      filtered).values())
            costs["traversal"] = search + planner.scan_cost(c, per_doc)
        return costs

    def _candidates(self, params: SearchParams, k: int, n: int) -> int:
        c = params.candidates if params.candidates is not None else self.default_candidates(k, n)
        return max(1, min(max(c, k), n))

    def search_positions(self, q: TokenMatrices, k: int, bits: Bitset | None,
                         params: SearchParams, plan: planner.Plan | None = None,
                         filtered: bool | None = None):
        """(kernel distances = -Chamfer, document positions, plan info) for validated query
        token matrices and a Bitset of allowed positions. The strategy is chosen here, with
        the queries' token count in the cost model (a ``plan`` made without it is redone)."""
        nq = len(q)
        n_ok = len(self) if bits is None else bits.count()
        plan = planner.choose(self, n_ok, len(self), k, params,
                              bits is not None if filtered is None else filtered,
                              query_tokens=q.tokens.shape[0] / max(nq, 1))
        info = plan.explain()
        if not len(self) or not n_ok or not nq:
            return np.full((nq, k), np.inf, np.float32), np.full((nq, k), -1, np.int64), info
        out_d = np.empty((nq, k), np.float32)  # the re-rank writes every row, padded
        out_i = np.empty((nq, k), np.int64)
        exact = plan.strategy == "exact" or self.fdes is None
        if exact:
            cand = (np.full((1, 1), -2, np.int64) if bits is None
                    else bits.positions().astype(np.int64)[None, :])  # one row: every query
        else:
            c = self._candidates(params, k, n_ok)
            hits = self.token_hits if self.retrieval == "tokens" else c
            knobs = _candidate_search_params(params, max(params.ef or 0, hits) if self._graph
                                             else params.ef)
            if self.retrieval == "tokens":
                tbits = None if bits is None else Bitset.from_mask(bits.to_mask()[self._doc_of])
                hd, hp, _ = self.fdes.search_positions(q.tokens, hits, tbits, knobs, None,
                                                       filtered, **self._any_order())
                cand = np.empty((nq, c), np.int64)
                kc.token_votes(readonly(self._doc_of), np.ascontiguousarray(hp, np.int64),
                               np.ascontiguousarray(hd, np.float32), q.offsets, len(self), cand)
                info.update(candidates=c, token_hits=hits)
            else:
                fq = self.encoder.queries(q.tokens, q.offsets)
                _, cand, _ = self.fdes.search_positions(fq, c, bits, knobs, None, filtered,
                                                        **self._any_order())
                cand = np.ascontiguousarray(cand, np.int64)
                info["candidates"] = c
        stored, aux = self._tokens.view()
        offsets = readonly(self._offsets)  # (as stored ones: one compiled variant)
        if self.token_codec == "lvq8":
            mean = self._tokens.codec.mean
        else:
            aux, mean = _NO_AUX, _NO_MEAN

        def rerank(first: int, step: int) -> None:
            kc.chamfer_topk_chunk(q.tokens, q.offsets, stored, aux, mean, offsets, cand, k,
                                  out_d, out_i, first, step)

        run_chunks(rerank, chunk_count(nq))
        need = min(k, n_ok)
        if not exact and kt.short_rows(out_i, need):  # too few candidates: score those exactly
            short = np.flatnonzero(out_i[:, need - 1] < 0)
            info["fallback_exact"] = int(short.size)
            d, i, _ = self.search_positions(q[short], k, bits, replace(params, exact=True))
            out_d[short], out_i[short] = d, i
        return out_d, out_i, info

    def _any_order(self) -> dict:
        """The candidates are re-scored, so their order is of no use: ask an index that can
        skip its final sort (one whose ``search_positions`` takes ``ordered``) to skip it."""
        return {"ordered": False} if _takes_ordered(type(self.fdes)) else {}

    def save(self, directory: str | os.PathLike) -> None:
        """Tokens, offsets and ids beside the FDE index (``fde/``), memory-mapped on load."""
        meta = {"dim": self.dim, "index": self.spec, "tokens": self.token_codec,
                "fde": asdict(self.config), "index_options": self.index_options,
                "retrieval": self.retrieval, "token_hits": self.token_hits,
                "pool_factor": self.pool_factor}
        codes, aux = self._tokens.view()
        save_arrays(directory, self.kind, meta, {
            "tokens": codes, "tokens_aux": aux, "offsets": self._offsets, "ids": self._ids,
            **{f"tokens_{k}": v for k, v in self._tokens.codec.state().items()}})
        if self.fdes is not None:
            self.fdes.save(os.path.join(directory, "fde"))

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> MultiVectorIndex:
        meta, a = load_arrays(directory, cls.kind, mmap=mmap)
        try:
            index = cls(meta["dim"], "ip", None, FDEConfig(**meta["fde"]), meta["tokens"],
                        token_hits=int(meta.get("token_hits", TOKEN_HITS)),
                        pool_factor=int(meta.get("pool_factor", 1)))
            index.retrieval = meta.get("retrieval", "fde")
            if index.retrieval not in RETRIEVALS:
                raise InvalidArgument(f"retrieval {index.retrieval!r}")
        except (KeyError, TypeError, InvalidArgument) as exc:
            raise CorruptData(f"{directory}: bad multi-vector metadata ({exc})") from None
        offsets, n = a["offsets"], a["ids"].shape[0]
        if (offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != a["tokens"].shape[0]
                or a["tokens"].shape[1:] != (index.dim,)):
            raise CorruptData(f"{os.path.join(directory, 'offsets.npy')}: offsets do not cover "
                              f"the {a['tokens'].shape[0]} tokens of {n} documents")
        index.spec, index.index_options = meta["index"], dict(meta.get("index_options") or {})
        if index.spec is not None:
            index.fdes = load_index(os.path.join(directory, "fde"), mmap=mmap)
            index._graph = parse_index_spec(index.spec).index.family == "HNSW"
            want = n if index.retrieval == "fde" else a["tokens"].shape[0]
            if len(index.fdes) != want:
                raise CorruptData(f"{os.path.join(directory, 'fde')}: {len(index.fdes)} rows "
                                  f"where {want} {index.retrieval} were stored")
            if index.retrieval == "tokens":
                index._doc_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        if a["tokens_aux"].shape[0] != a["tokens"].shape[0]:
            raise CorruptData(f"{os.path.join(directory, 'tokens_aux.npy')}: not one row per "
                              f"token")
        state = {k[7:]: v for k, v in a.items() if k.startswith("tokens_") and k != "tokens_aux"}
        if state:
            index._tokens.codec.load_state(state)
        elif not index._tokens.codec.trained and n:
            raise CorruptData(f"{os.path.join(directory, 'tokens_mean.npy')}: missing")
        index._tokens = VectorStore(index._tokens.codec, a["tokens"], a["tokens_aux"])
        index._offsets, index._ids = offsets, a["ids"]
        return index
