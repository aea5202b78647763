"""Codecs: how vectors are stored, and the jitted distance over the stored form.

A codec is trained once (``fit``), encodes batches into ``(codes, aux)`` (codes: one row per
vector; aux: float32 per-vector terms), prepares each query once (``prepare``) into a float32
row whose layout the codec's distance functions read, and names the distance function for a
kernel metric (``dist('l2'|'ip')``). Indexes never look inside codes: new codecs (LVQ-4,
LeanVec, PQ) plug in by implementing this class.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..kernels import dispatch as kk
from ..kernels import quantized as kq
from ..kernels import vnni
from .aligned import aligned_empty
from .errors import InvalidArgument
from .kmeans import sq_norms as _sq_norms
from .spec import SpecPart
from .validation import beyond_f16


class Codec:
    name: str = ""
    code_dtype: type = np.float32
    aux_width: int = 0
    lossy: bool = False

    def __init__(self, dim: int):
        self.dim = dim

    @property
    def trained(self) -> bool:
        return True

    def fit(self, x: np.ndarray, queries: np.ndarray | None = None) -> None:
        """Learn codec parameters from a sample (and, for query-aware codecs, a sample of
        queries); lossless codecs need none."""

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def prepare(self, q: np.ndarray) -> np.ndarray:
        """(nq, dim) float32 queries -> (nq, w) float32 prepared rows."""
        raise NotImplementedError

    def dist(self, kernel_metric: str):
        raise NotImplementedError

    def bytes_per_vector(self) -> int:
        return self.code_width * np.dtype(self.code_dtype).itemsize + 4 * self.aux_width

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def resident_nbytes(self) -> int:
        """Bytes the codec's own trained state holds in RAM for searching (a mean, codebooks,
        a projection), apart from the rows: an index's ``memory_usage()["codec"]``."""
        return sum(int(np.asarray(a).nbytes) for a in self.state().values() if a is not None)

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what ``state`` returned."""

    @property
    def code_width(self) -> int:
        """Code entries per row (packed codecs hold fewer than ``dim``)."""
        return self.dim

    def rerank_dist(self, kernel_metric: str) -> int | None:
        """A second, more accurate distance over the same rows, for re-ranking (two-level
        codecs); None when the codec has only one."""
        return None

    def empty(self, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Uninitialised storage for ``cap`` rows (only rows below the store's n are read)."""
        return (aligned_empty((cap, self.code_width), self.code_dtype),
                aligned_empty((cap, self.aux_width), np.float32))


class F32Codec(Codec):
    """Plain float32 rows."""

    name = "f32"

    def encode(self, x):
        return np.ascontiguousarray(x, np.float32), np.zeros((x.shape[0], 0), np.float32)

    def prepare(self, q):
        return np.ascontiguousarray(q, np.float32)

    def dist(self, kernel_metric):
        return kk.F32_L2 if kernel_metric == "l2" else kk.F32_IP


class F16Codec(Codec):
    """Half-precision rows (stored as uint16 bits): half the memory, near-exact distances.

    Prepared query: [q * 2**56 (d), scratch (d), ||q||^2]. aux = [||x||^2]."""

    name = "f16"
    code_dtype = np.uint16
    aux_width = 1

    def encode(self, x):
        bad = beyond_f16(x)
        if bad >= 0:
            raise InvalidArgument(
                f"vectors: row {bad} has a value beyond the float16 range (|x| <= 65504)")
        h = x.astype(np.float16)
        return np.ascontiguousarray(h.view(np.uint16)), _sq_norms(h.astype(np.float32))[:, None]

    def prepare(self, q):
        d = self.dim
        qs = np.zeros((q.shape[0], 2 * d + 1), np.float32)
        kq.f16_prepare(np.ascontiguousarray(q, np.float32), qs)
        return qs

    def dist(self, kernel_metric):
        return kk.F16_L2 if kernel_metric == "l2" else kk.F16_IP

    @staticmethod
    def decode(codes: np.ndarray) -> np.ndarray:
        return codes.view(np.float16).astype(np.float32)


class SQ8Codec(Codec):
    """Global scalar quantisation: per-dimension min/max over the training set, uint8 codes.

    Prepared query: [q * step (d), <q, lo>, ||q||^2]. aux = [||x_hat||^2]."""

    name = "sq8"
    code_dtype = np.uint8
    aux_width = 1
    lossy = True

    def __init__(self, dim):
        super().__init__(dim)
        self.lo: np.ndarray | None = None
        self.step: np.ndarray | None = None

    @property
    def trained(self):
        return self.lo is not None

    def fit(self, x, queries=None):
        lo = x.min(axis=0).astype(np.float32)
        hi = x.max(axis=0).astype(np.float32)
        self.lo = lo
        self.step = np.maximum((hi - lo) / np.float32(255.0), np.float32(1e-12)).astype(np.float32)

    def encode(self, x):
        codes = np.empty(x.shape, np.uint8)
        kq.sq8_encode(x, self.lo, (1.0 / self.step).astype(np.float32), codes)
        recon = self.lo + self.step * codes.astype(np.float32)
        return codes, _sq_norms(recon)[:, None]

    def prepare(self, q):
        d = self.dim
        qs = np.empty((q.shape[0], d + 2), np.float32)
        kq.sq8_prepare(np.ascontiguousarray(q, np.float32), self.lo, self.step, qs)
        return qs

    def dist(self, kernel_metric):
        return kk.SQ8_L2 if kernel_metric == "l2" else kk.SQ8_IP

    def state(self):
        return {"lo": self.lo, "step": self.step}

    def load_state(self, arrays):
        self.lo = np.array(arrays["lo"], np.float32)
        self.step = np.array(arrays["step"], np.float32)


class LVQCodec(Codec):
    """LVQ (Aguerrebere et al., 2023): centre on the dataset mean, then per-vector uniform
    codes between the vector's own min and max (an adaptive grid global SQ8 cannot have).
    ``bits`` 8 or 4 (two codes per byte). Two-level LVQ-B1xB2 adds ``residual_bits`` coding
    the primary's error over [-step/2, step/2]: traversal reads the primary codes, re-ranking
    both (``rerank_dist``), so no float32 is needed to re-score.

    Prepared query: [q (d), <q, mean>, sum(q), ||q||^2]. A row: primary codes (d or d/2
    bytes; at 4 bits byte j holds dims j and j + d/2), then the residual codes. aux = [bias,
    step, ||x1||^2] (+ [bias2, step2, ||x||^2] for two levels)."""

    code_dtype = np.uint8
    lossy = True

    def __init__(self, dim, bits: int = 8, residual_bits: int = 0):
        super().__init__(dim)
        if (bits == 4 or residual_bits == 4) and dim % 2:
            raise InvalidArgument(f"dim: 4-bit LVQ packs two dimensions per byte and needs an "
                                  f"even dimension, got {dim}")
        self.bits, self.residual_bits = bits, residual_bits
        self.name = f"lvq{bits}" + (f"x{residual_bits}" if residual_bits else "")
        self.aux_width = 6 if residual_bits else 3
        self.mean: np.ndarray | None = None

    @property
    def code_width(self) -> int:
        def width(b: int) -> int:
            return 0 if b == 0 else (self.dim if b == 8 else self.dim // 2)
        return width(self.bits) + width(self.residual_bits)

    @property
    def trained(self):
        return self.mean is not None

    def fit(self, x, queries=None):
        self.mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)

    def encode(self, x):
        codes = np.empty((x.shape[0], self.code_width), np.uint8)
        aux = np.empty((x.shape[0], self.aux_width), np.float32)
        kq.lvq_encode(np.ascontiguousarray(x, np.float32), self.mean, self.bits,
                      self.residual_bits, codes, aux)
        return codes, aux

    @property
    def int8_queries(self) -> bool:
        """Single-level LVQ-8 on a VNNI CPU scores int8 queries (``kernels/vnni.py``): a
        384-d row in 6 instructions instead of 48; WordNet recall@10 of an exact scan 0.9940
        against 0.9959 with float32 queries."""
        return vnni.USE_VNNI and self.bits == 8 and not self.residual_bits

    def prepare(self, q):
        d = self.dim
        if self.int8_queries:
            return self._prepare_int8(q)
        qs = np.empty((q.shape[0], d + 3), np.float32)
        kq.lvq_prepare(np.ascontiguousarray(q, np.float32), self.mean, qs)
        return qs

    @staticmethod
    def int8_query(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q8, 1/s): q8 = rint(s q) with s = 127 / max|q| per query (1 for a zero query), so
        ``q8 / s`` is the query the codes' dot product sees (``kernels/quantized.py``,
        ``lvq8_i8_ip``; the other terms use q itself)."""
        q = np.ascontiguousarray(q, np.float32)
        q8 = np.empty(q.shape, np.int8)
        inv = np.empty(q.shape[0], np.float32)
        kq.int8_quantize(q, q8, inv)
        return q8, inv

    def _prepare_int8(self, q):
        """[q8 (d bytes in ceil(d/4) slots), <q, mean>, sum(q), ||q||^2, 1/s]."""
        qs = np.zeros((q.shape[0], (self.dim + 3) // 4 + 4), np.float32)
        kq.lvq8_prepare_int8(np.ascontiguousarray(q, np.float32), self.mean, qs, 0, False)
        return qs

    def dist(self, kernel_metric):
        l2 = kernel_metric == "l2"
        if self.int8_queries:
            return kk.LVQ8_I8_L2 if l2 else kk.LVQ8_I8_IP
        if self.bits == 8:
            return kk.LVQ8_L2 if l2 else kk.LVQ8_IP
        return kk.LVQ4_L2 if l2 else kk.LVQ4_IP

    def rerank_dist(self, kernel_metric):
        if not self.residual_bits:
            return None
        table = kk.LVQ_2L_L2 if kernel_metric == "l2" else kk.LVQ_2L_IP
        return table[(self.bits, self.residual_bits)]

    def state(self):
        return {"mean": self.mean}

    def load_state(self, arrays):
        self.mean = np.array(arrays["mean"], np.float32)


@dataclass(frozen=True)
class CodecEntry:
    """How a spec writes the codec (``form``, for error messages) and how to build it from
    its spec part; the ``cls`` restores a stored codec by its ``name``."""

    form: str
    cls: Callable[[int], Codec]
    build: Callable[[SpecPart, int], Codec]


CODECS: dict[str, CodecEntry] = {}
"""The one codec table, keyed by a spec part's ``key`` (``LVQ8``) or, for parameterised
codecs, its ``family`` (``PQ``): a new codec is a class plus one ``register_codec`` call."""


def register_codec(key: str, form: str, cls: Callable[[int], Codec],
                   build: Callable[[SpecPart, int], Codec] | None = None) -> None:
    CODECS[key.upper()] = CodecEntry(form, cls, build or _plain(cls))


def _plain(cls: Callable[[int], Codec]) -> Callable[[SpecPart, int], Codec]:
    def build(part: SpecPart, dim: int) -> Codec:
        if part.args:
            raise InvalidArgument(f"spec: codec {part.key} takes no arguments, got {part}")
        return cls(dim)
    return build


for _cls in (F32Codec, F16Codec, SQ8Codec):
    register_codec(_cls.name, _cls.name.upper(), _cls)
register_codec("FLAT", "Flat (= F32)", F32Codec)
for _b1, _b2 in ((8, 0), (4, 0), (4, 4), (4, 8), (8, 8)):
    _name = f"lvq{_b1}" + (f"x{_b2}" if _b2 else "")
    register_codec(_name, _name.upper(), functools.partial(LVQCodec, bits=_b1, residual_bits=_b2))


def accepted_codecs() -> str:
    return ", ".join(dict.fromkeys(e.form for e in CODECS.values()))


def codec_from_spec(part: SpecPart, dim: int) -> Codec:
    """The codec a spec part names; unknown ones list what is accepted."""
    entry = CODECS.get(part.key) or CODECS.get(part.family)
    if entry is None:
        raise InvalidArgument(f"spec: unknown codec {str(part)!r}; accepted: {accepted_codecs()}")
    return entry.build(part, dim)


def make_codec(name: str, dim: int) -> Codec:
    """A codec by its stored ``name``: a key (``"lvq8"``, ``"LVQ8"``) or, for parameterised
    codecs, the spec part it was written as (``"LeanVec(128,LVQ8,LVQ8)"``)."""
    entry = CODECS.get(str(name).upper()) if isinstance(name, str) else None
    if entry is None and isinstance(name, str) and "(" in name:
        from .spec import parse_spec

        parts = parse_spec(name)
        if len(parts) == 1:
            return codec_from_spec(parts[0], dim)
    if entry is None:
        raise InvalidArgument(f"codec: unknown codec {name!r}; available: {accepted_codecs()}")
    return entry.cls(dim)


from . import leanvec as _leanvec  # noqa: E402,F401  (registers LeanVec)
