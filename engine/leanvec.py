"""LeanVec (Tepper et al., 2023): traverse on LVQ codes of a linear projection of the vectors to
d' dimensions, re-rank on LVQ-8 (or float16) codes of the full vectors. Both live in one row,
so a traversal reads d' (or d'/2) bytes per vector and no float32 is needed at any step.

The projection P (d x d', orthonormal columns) preserves inner products ``<q, x> ~ <Pq, Px>``:
- in-distribution (LeanVec-ID, ``train(x)``): the top principal directions of the data's
  second moment;
- out-of-distribution (LeanVec-OOD, ``train(x, queries=Q)``): queries that do not look like the
  data (short questions against passages) need directions the queries use. The error to
  minimise is E[(q^T (I - PP^T) x)^2] = tr(Kq (I - PP^T) Kx (I - PP^T)), Kq and Kx the
  query and data second moments. Searched over the eigenvectors of the blends
  lambda Kq / tr(Kq) + (1 - lambda) Kx / tr(Kx) (the paper's eigenvector search), keeping the
  lambda whose projection has the least error.
"""

from __future__ import annotations

import logging

import numpy as np

from ..kernels import dispatch as kk
from ..kernels import quantized as kq
from ..kernels import vnni
from .codecs import Codec, _sq_norms, register_codec
from .errors import InvalidArgument
from .spec import SpecPart
from .validation import beyond_f16

log = logging.getLogger(__name__)

_BLENDS = (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
ROW_LAYOUT = 2
"""The row layout new codes are written in (``LeanVecCodec.code_width``)."""
INLINE_TERMS_BYTES = 8
"""The primary's bias and step as float32, inline after its codes (``inline_terms``)."""


def _second_moment(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.T @ x / max(len(x), 1)


def _top_eigenvectors(m: np.ndarray, k: int) -> np.ndarray:
    _, vecs = np.linalg.eigh(m)
    return np.ascontiguousarray(vecs[:, ::-1][:, :k], np.float32)


def ip_error(p: np.ndarray, kx: np.ndarray, kq: np.ndarray) -> float:
    """E[(q^T (I - PP^T) x)^2] under second moments ``kx``, ``kq``."""
    r = np.eye(p.shape[0]) - p.astype(np.float64) @ p.T.astype(np.float64)
    return float(np.trace(kq @ r @ kx @ r))


def learn_projection(x: np.ndarray, d_out: int, queries: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, str, float]:
    """(P, "id" | "ood", blend) for ``d_out`` dimensions; see the module docstring."""
    kx = _second_moment(x)
    if queries is None or len(queries) == 0:
        return _top_eigenvectors(kx, d_out), "id", 0.0
    kq = _second_moment(queries)
    kxn, kqn = kx / np.trace(kx), kq / np.trace(kq)
    best = None
    for lam in _BLENDS:
        p = _top_eigenvectors(lam * kqn + (1 - lam) * kxn, d_out)
        err = ip_error(p, kx, kq)
        if best is None or err < best[0]:
            best = (err, p, lam)
    log.info("LeanVec-OOD: blend %.2f of query statistics (inner-product error %.4g)",
             best[2], best[0])
    return best[1], "ood", best[2]


def _block_grid(d: int, dp: int) -> tuple[int, int]:
    """(row groups of 4, column groups of 16) of ``int8_blocks`` for a d x d' projection."""
    return -(-d // 4), -(-dp // 16)


def int8_blocks_nbytes(d: int, dp: int) -> int:
    """What ``int8_blocks`` of a d x d' projection holds: the int8 blocks, the int32 column
    sums and the float32 column steps."""
    k4, groups = _block_grid(d, dp)
    return 4 * k4 * 16 * groups + 2 * 4 * 16 * groups


def int8_blocks(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blocks, column sums, column steps): the projection ``p`` (d, d') as int8 per column
    (step max|column| / 127), its rows padded to a multiple of 4 and its columns to one of
    16, laid out as ``kernels/vnni.py``'s ``dot16_u8s8`` reads it: per block of 16 columns,
    per 4 rows, 64 bytes (column-major within, the 4 rows' bytes of a column together)."""
    d, dp = p.shape
    k4, groups = _block_grid(d, dp)
    peak = np.zeros(16 * groups, np.float32)
    peak[:dp] = np.abs(p).max(axis=0)
    step = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
    p8 = np.zeros((4 * k4, 16 * groups), np.int8)
    p8[:d, :dp] = np.rint(p / step[:dp]).astype(np.int8)
    blocks = np.ascontiguousarray(p8.reshape(k4, 4, groups, 16).transpose(2, 0, 3, 1)).ravel()
    return blocks, p8.sum(axis=0, dtype=np.int32), step


class LeanVecCodec(Codec):
    """``LeanVec(d', LVQ4|LVQ8, LVQ8|F16)``: primary LVQ codes of ``P^T x`` (d' dims) first
    in each row, the secondary codes of ``x`` last (``code_width``): LVQ-8 (a byte a dimension) or
    float16 (two, little-endian: the exact half value re-ranks); see the module docstring and
    the layouts in kernels/quantized.py."""

    code_dtype = np.uint8
    lossy = True
    aux_width = 6

    def __init__(self, dim: int, d_out: int, primary_bits: int = 8, secondary: str = "lvq8"):
        super().__init__(dim)
        if not 1 <= d_out <= dim:
            raise InvalidArgument(f"spec: LeanVec reduces to d' dimensions with 1 <= d' <= "
                                  f"{dim} (the vector dimension), got {d_out}")
        if primary_bits == 4 and d_out % 2:
            raise InvalidArgument(f"spec: LeanVec with an LVQ4 primary needs an even d', "
                                  f"got {d_out}")
        if secondary not in ("lvq8", "f16"):
            raise InvalidArgument(f"spec: LeanVec's secondary codec is LVQ8 or F16, got "
                                  f"{secondary!r}")
        self.d_out, self.primary_bits, self.secondary = d_out, primary_bits, secondary
        self.name = f"LeanVec({d_out},LVQ{primary_bits},{secondary.upper()})"
        self.projection: np.ndarray | None = None
        self.mean: np.ndarray | None = None
        self.mean_p: np.ndarray | None = None
        self.kind = "id"
        self._p8: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        """The projection as int8 blocks (``int8_blocks``), made on first use."""
        self.layout = ROW_LAYOUT
        """The row layout the codes were written in (``code_width``); an index saved before
        layout 2 loads as layout 1."""

    @property
    def primary_width(self) -> int:
        """Bytes of primary codes, first in a row."""
        return self.d_out if self.primary_bits == 8 else self.d_out // 2

    @property
    def secondary_width(self) -> int:
        """Bytes of secondary codes, last in a row."""
        return self.dim if self.secondary == "lvq8" else 2 * self.dim

    @property
    def inline_terms(self) -> bool:
        """The primary's bias and step (float32) follow its codes in the row, where the
        codes' last cache line has 8 bytes to spare (d' = 240 at LVQ-4: 120 + 8 = 128), so an
        inner-product traversal reads one line less (its ``aux`` line): LeanVec(240,LVQ4,LVQ8)
        traversed 1.06x faster than with them in ``aux`` only (WordNet OOD, ef 32, rows
        otherwise equal, one process). Layout 2 only."""
        return self.layout >= 2 and (-self.primary_width) % 64 >= INLINE_TERMS_BYTES

    @property
    def code_width(self) -> int:
        """Layout 1: [primary | secondary]. Layout 2: [primary | inline terms | padding |
        secondary], rounded to whole 64-byte lines. LeanVec(240,LVQ4,LVQ8) on WordNet OOD, one
        process: 504-byte rows (layout 1, straddling lines) ran at 0.85x LVQ8's queries/s;
        512-byte rows with the terms inline at 1.13-1.18x (ef 28-36), where LeanVec(256,..)
        ran at 1.08-1.11x."""
        w = self.primary_width + self.secondary_width
        if self.layout < 2:
            return w
        w += INLINE_TERMS_BYTES if self.inline_terms else 0
        return -(-w // 64) * 64

    @property
    def trained(self) -> bool:
        return self.projection is not None

    def fit(self, x: np.ndarray, queries: np.ndarray | None = None) -> None:
        x = np.ascontiguousarray(x, np.float32)
        self.projection, self.kind, _ = learn_projection(x, self.d_out, queries)
        self._p8 = None
        self.mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.mean_p = (x @ self.projection).mean(axis=0, dtype=np.float64).astype(np.float32)

    def encode(self, x):
        x = np.ascontiguousarray(x, np.float32)
        codes = np.zeros((x.shape[0], self.code_width), np.uint8)
        aux = np.empty((x.shape[0], 6), np.float32)
        w1, w2 = self.primary_width, self.code_width - self.secondary_width
        z = np.ascontiguousarray(x @ self.projection, np.float32)
        kq.lvq_encode(z, self.mean_p, self.primary_bits, 0, codes[:, :w1], aux[:, :3])
        if self.inline_terms:
            codes[:, w1 : w1 + INLINE_TERMS_BYTES] = aux[:, :2].astype("<f4").view(np.uint8)
        if self.secondary == "lvq8":
            kq.lvq_encode(x, self.mean, 8, 0, codes[:, w2:], aux[:, 3:])
        else:
            bad = beyond_f16(x)
            if bad >= 0:
                raise InvalidArgument(f"vectors: row {bad} has a value beyond the float16 "
                                      f"range (|x| <= 65504) of this LeanVec's F16 secondary")
            half = x.astype("<f2")
            codes[:, w2:] = half.view(np.uint8).reshape(x.shape[0], 2 * self.dim)
            aux[:, 3:5] = 0
            aux[:, 5] = _sq_norms(half.astype(np.float32))
        return codes, aux

    def prepare(self, q):
        """LVQ-8 secondary: [z (d'), <z, mean_p>, sum(z), ||z||^2, q (d), <q, mean>, sum(q),
        ||q||^2, d']; float16: [z part, q * 2**56 (d), scratch (d), ||q||^2, d']. On VNNI
        hosts both parts hold int8 queries instead (``int8_queries``, ``int8_secondary``)."""
        d = self.dim
        if self.secondary == "f16":
            qs, o = self._prepare_reduced(q, 2 * d + 5)
            qs[:, o : o + d] = q * kq.F16_SCALE
            qs[:, o + 2 * d] = _sq_norms(q)
            return qs
        qs, o = self._prepare_reduced(q, d + 7)
        q = np.ascontiguousarray(q, np.float32)
        if self.int8_secondary:  # the layout above kernels/quantized.py's _leanvec_i8_secondary_ip
            kq.lvq8_prepare_int8(q, self.mean, qs, o, True)
        else:
            kq.lvq_prepare(q, self.mean, qs[:, o : o + d + 3])
        return qs

    @property
    def int8_queries(self) -> bool:
        """On a VNNI CPU the primary scores the projected query as int8, as single-level
        LVQ-8 does (``LVQCodec.int8_queries``): the traversal's distance in d'/64
        instructions, for an LVQ-4 primary as for an LVQ-8 one (``vnni.dot_u4s8``)."""
        return vnni.USE_VNNI and self.d_out >= 4

    @property
    def int8_secondary(self) -> bool:
        """On a VNNI CPU an LVQ-8 secondary re-ranks against the full query as two int8
        vectors (the query and its rounding error: as exact as float32 for re-ranking), 12
        ``vpdpbusd`` a 384-d row (``kernels/quantized.py``, ``_leanvec_i8_secondary_ip``)."""
        return self.int8_queries and self.secondary == "lvq8" and self.dim >= 4

    def _prepare_reduced(self, q, rest: int) -> tuple[np.ndarray, int]:
        """Prepared rows of d' + ``rest`` floats with the projected part filled (and d' last);
        returns them and where the full query's part starts."""
        dp = self.d_out
        qs = np.zeros((q.shape[0], dp + rest), np.float32)
        z = self._project(q)
        if self.int8_queries:  # the layout above kernels/quantized.py's leanvec_int8_primary_ip
            kq.lvq8_prepare_int8(z, self.mean_p, qs, 0, False)
        else:
            kq.lvq_prepare(z, self.mean_p, qs[:, : dp + 3])  # the LVQ layout over z
        qs[:, -1] = dp
        return qs, dp + 3

    def _project(self, q: np.ndarray) -> np.ndarray:
        """P^T q for each row: by ``kq.project_int8`` on VNNI hosts (the int8 projection is
        made once, on first use), by BLAS elsewhere."""
        if not self.int8_queries:
            return np.ascontiguousarray(q @ self.projection, np.float32)
        if self._p8 is None:
            self._p8 = int8_blocks(self.projection)
        blocks, colsum, step = self._p8
        z = np.empty((q.shape[0], step.shape[0]), np.float32)
        kq.project_int8(np.ascontiguousarray(q, np.float32), blocks, colsum, step, z)
        return z if z.shape[1] == self.d_out else np.ascontiguousarray(z[:, : self.d_out])

    def dist(self, kernel_metric):
        if self.int8_queries:
            if self.inline_terms:
                table = kk.LEANVEC_INLINE_PRIMARY_L2 if kernel_metric == "l2" else \
                    kk.LEANVEC_INLINE_PRIMARY_IP
                return table[self.primary_bits]
            if self.primary_bits == 4:
                return kk.LEANVEC_I4_PRIMARY_L2 if kernel_metric == "l2" else \
                    kk.LEANVEC_I4_PRIMARY_IP
            return kk.LEANVEC_I8_PRIMARY_L2 if kernel_metric == "l2" else kk.LEANVEC_I8_PRIMARY_IP
        table = kk.LEANVEC_PRIMARY_L2 if kernel_metric == "l2" else kk.LEANVEC_PRIMARY_IP
        return table[self.primary_bits]

    def rerank_dist(self, kernel_metric):
        l2 = kernel_metric == "l2"
        if self.secondary == "f16":
            table = kk.LEANVEC_F16_SECONDARY_L2 if l2 else kk.LEANVEC_F16_SECONDARY_IP
        elif self.int8_secondary:
            table = kk.LEANVEC_I8_SECONDARY_L2 if l2 else kk.LEANVEC_I8_SECONDARY_IP
        else:
            table = kk.LEANVEC_SECONDARY_L2 if l2 else kk.LEANVEC_SECONDARY_IP
        return table[self.primary_bits]

    def resident_nbytes(self) -> int:
        """The projection and the two means, and on VNNI hosts the int8 projection
        ``_project`` makes on first use (counted before it exists, so the figure does not
        change with the first search)."""
        if not self.trained:
            return 0
        total = sum(int(a.nbytes) for a in (self.projection, self.mean, self.mean_p))
        if self.int8_queries:
            total += int8_blocks_nbytes(self.dim, self.d_out)
        return total

    def state(self):
        state = {"projection": self.projection, "mean": self.mean, "mean_p": self.mean_p,
                 "ood": np.array([self.kind == "ood"])}
        if self.layout > 1:  # layout 1 saves as it always did
            state["layout"] = np.array([self.layout])
        return state

    def load_state(self, arrays):
        self.projection = np.array(arrays["projection"], np.float32, order="C")
        self._p8 = None
        self.mean = np.array(arrays["mean"], np.float32)
        self.mean_p = np.array(arrays["mean_p"], np.float32)
        self.kind = "ood" if bool(np.asarray(arrays.get("ood", [False]))[0]) else "id"
        self.layout = int(np.asarray(arrays.get("layout", [1]))[0])
        if not 1 <= self.layout <= ROW_LAYOUT:
            raise InvalidArgument(f"LeanVec state: row layout {self.layout} is newer than this "
                                  f"version reads (up to {ROW_LAYOUT})")


def _build(part: SpecPart, dim: int) -> Codec:
    args = part.args
    if (part.numbers or len(args) != 3 or not isinstance(args[0], int)
            or not all(isinstance(a, SpecPart) for a in args[1:])):
        raise InvalidArgument(f"spec: write LeanVec(d', PRIMARY, SECONDARY), e.g. "
                              f"LeanVec(128,LVQ8,LVQ8); got {part}")
    primary, secondary = args[1].key, args[2].key
    if primary not in ("LVQ4", "LVQ8"):
        raise InvalidArgument(f"spec: LeanVec's primary codec is LVQ4 or LVQ8, got {args[1]}")
    if secondary not in ("LVQ8", "F16"):
        raise InvalidArgument(f"spec: LeanVec's secondary codec is LVQ8 or F16, got {args[2]}")
    return LeanVecCodec(dim, args[0], int(primary[3:]), secondary.lower())


register_codec("LEANVEC", "LeanVec(d',LVQ4|LVQ8,LVQ8|F16)", lambda dim: LeanVecCodec(dim, dim),
               _build)
