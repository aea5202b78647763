"""One entry point for every codec distance, selected by a codec *kind* that Numba sees as a type.

A kernel takes ``kind`` (a codec's ``Codec.dist(metric)``, one of ``KINDS``) as its first
argument. Each ``CodecKind`` value has its own Numba type, so a kernel is compiled once per
kind actually used, with only that codec's distance inlined into its loops: the first search
of an f32 HNSW index compiles the f32 arm, not all 30. (An integer argument compiled every arm
into every kernel, minutes on a fresh machine; a jitted function as the argument defeats
Numba's disk cache, whose key would change per process.) ``for_kind`` gives the Python entry
point of a kernel for one kind, which calls at the cost of a plain integer argument.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import types as pytypes
from pathlib import Path

import numpy as np
from numba import njit, types
from numba.core.imputils import lower_constant
from numba.extending import NativeValue, models, overload, register_model, typeof_impl, unbox

from . import JIT
from .distance import f32_ip, f32_l2
from .prefetch import SIDE_BYTES
from .quantized import (
    f16_ip,
    f16_l2,
    leanvec_f16_secondary_ip,
    leanvec_f16_secondary_l2,
    leanvec_i8_secondary_ip,
    leanvec_i8_secondary_l2,
    leanvec_inline_primary_ip,
    leanvec_inline_primary_l2,
    leanvec_int8_primary_ip,
    leanvec_int8_primary_l2,
    leanvec_primary_ip,
    leanvec_primary_l2,
    leanvec_secondary_ip,
    leanvec_secondary_l2,
    lvq8_i8_ip,
    lvq8_i8_l2,
    lvq_ip,
    lvq_l2,
    sq8_ip,
    sq8_l2,
    two_level_ip,
    two_level_l2,
)


class CodecKind:
    """Which distance a kernel computes (codec and metric); ``value`` indexes ``KINDS``."""

    __slots__ = ("value",)

    def __init__(self, value: int):
        self.value = value

    def __reduce__(self):
        return CodecKind, (self.value,)

    def __repr__(self) -> str:
        return f"CodecKind({self.value})"


class CodecKindType(types.Type):
    """The Numba type of one codec kind: the value is in the type, so it is a compile-time
    constant and each kind compiles (and caches) its own specialisation."""

    def __init__(self, value: int):
        self.value = value
        super().__init__(name=f"CodecKind({value})")


@typeof_impl.register(CodecKind)
def _typeof_kind(val: CodecKind, c) -> CodecKindType:
    return CodecKindType(val.value)


register_model(CodecKindType)(models.OpaqueModel)


@unbox(CodecKindType)
def _unbox_kind(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


@lower_constant(CodecKindType)
def _constant_kind(context, builder, ty, pyval):
    return context.get_dummy_value()


KINDS = tuple(CodecKind(v) for v in range(44))
F32_IP, F32_L2, F16_IP, F16_L2, SQ8_IP, SQ8_L2, LVQ8_IP, LVQ8_L2, LVQ4_IP, LVQ4_L2 = KINDS[:10]
LVQ_2L_IP = {(4, 4): KINDS[10], (4, 8): KINDS[11], (8, 4): KINDS[12], (8, 8): KINDS[13]}
LVQ_2L_L2 = {(4, 4): KINDS[14], (4, 8): KINDS[15], (8, 4): KINDS[16], (8, 8): KINDS[17]}
"""Two-level LVQ (primary and residual together): the re-ranking distance of LVQ-B1xB2."""
LEANVEC_PRIMARY_IP = {4: KINDS[18], 8: KINDS[19]}
LEANVEC_PRIMARY_L2 = {4: KINDS[20], 8: KINDS[21]}
LEANVEC_SECONDARY_IP = {4: KINDS[22], 8: KINDS[23]}
LEANVEC_SECONDARY_L2 = {4: KINDS[24], 8: KINDS[25]}
"""LeanVec by its primary's bits: the reduced-dimension distance, and the full one."""
LEANVEC_F16_SECONDARY_IP = {4: KINDS[26], 8: KINDS[27]}
LEANVEC_F16_SECONDARY_L2 = {4: KINDS[28], 8: KINDS[29]}
"""The full distance of LeanVec with a float16 secondary (``LeanVec(d',LVQ*,F16)``)."""
LVQ8_I8_IP, LVQ8_I8_L2 = KINDS[30:32]
"""LVQ-8 against an int8 query by VNNI (``kernels/vnni.py``), where the CPU has it."""
LEANVEC_I8_PRIMARY_IP, LEANVEC_I8_PRIMARY_L2 = KINDS[32:34]
"""LeanVec's LVQ-8 primary against an int8 projected query by VNNI, likewise."""
LEANVEC_I4_PRIMARY_IP, LEANVEC_I4_PRIMARY_L2 = KINDS[34:36]
"""LeanVec's LVQ-4 primary against the int8 projected query (``vnni.dot_u4s8``)."""
LEANVEC_I8_SECONDARY_IP = {4: KINDS[36], 8: KINDS[37]}
LEANVEC_I8_SECONDARY_L2 = {4: KINDS[38], 8: KINDS[39]}
"""LeanVec's LVQ-8 secondary against the full query as two int8 vectors by VNNI (the query
and its rounding error), by the primary's bits."""
LEANVEC_INLINE_PRIMARY_IP = {4: KINDS[40], 8: KINDS[42]}
LEANVEC_INLINE_PRIMARY_L2 = {4: KINDS[41], 8: KINDS[43]}
"""LeanVec's int8 primary (as 32-35) on rows holding its bias and step inline
(``LeanVecCodec.inline_terms``), by the primary's bits: the inner product reads no ``aux``."""


def _arm(value: int):
    """The distance implementation of kind ``value`` (signature of ``codec_distance``)."""
    if value < 10:
        plain = (f32_ip, f32_l2, f16_ip, f16_l2, sq8_ip, sq8_l2)
        if value < 6:
            fn = plain[value]
            return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i)
        fn, bits = (lvq_ip, lvq_l2)[value % 2], 8 if value < 8 else 4
        return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i, bits)
    if value < 18:
        fn = two_level_ip if value < 14 else two_level_l2
        b1, b2 = ((4, 4), (4, 8), (8, 4), (8, 8))[(value - 10) % 4]
        return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i, b1, b2)
    if value >= 40:  # LeanVec's int8 primary with inline terms: LVQ-4 (40, 41), LVQ-8 (42, 43)
        fn = (leanvec_inline_primary_ip, leanvec_inline_primary_l2)[value % 2]
        bits = 4 if value < 42 else 8
        return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i, bits)
    if value >= 36:  # LeanVec's LVQ-8 secondary against the query as two int8 vectors
        fn = leanvec_i8_secondary_ip if value < 38 else leanvec_i8_secondary_l2
        bits = 4 if value % 2 == 0 else 8
        return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i, bits)
    if value >= 32:  # LeanVec's primary against an int8 query: LVQ-8 (32, 33), LVQ-4 (34, 35)
        fn, bits = (leanvec_int8_primary_ip, leanvec_int8_primary_l2)[value % 2], \
            8 if value < 34 else 4
        return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i, bits)
    if value >= 30:
        fn = (lvq8_i8_ip, lvq8_i8_l2)[value - 30]
        return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i)
    fn = (leanvec_primary_ip, leanvec_primary_l2, leanvec_secondary_ip, leanvec_secondary_l2,
          leanvec_f16_secondary_ip, leanvec_f16_secondary_l2)[(value - 18) // 2]
    bits = 4 if value % 2 == 0 else 8
    return lambda kind, qs, codes, aux, i: fn(qs, codes, aux, i, bits)


def codec_distance(kind: CodecKind, qs: np.ndarray, codes: np.ndarray, aux: np.ndarray, i: int):
    """Distance (smaller is closer) between prepared query ``qs`` and stored row ``i``; only
    callable from jitted code."""
    raise TypeError("codec_distance is a kernel helper: call it from jitted code")


def _inline_vnni_arms(expr, caller_info, callee_info) -> bool:
    """Numba-inline ``codec_distance`` where the kind's arm is built on VNNI intrinsics
    (kinds 30+): LLVM left LeanVec's two-dot secondary a call, 18 against 10.6 ns a hot
    384-d row, 1.01-1.03x LeanVec(256,LVQ4,LVQ8) queries/s in interleaved pairs. The loop
    arms stay LLVM's to inline: Numba's IR inliner warns on their reductions
    (``NumbaIRAssumptionWarning``)."""
    kind = caller_info.typemap.get(expr.args[0].name)
    return isinstance(kind, CodecKindType) and kind.value >= 30


@overload(codec_distance, jit_options=JIT, inline=_inline_vnni_arms)
def _codec_distance(kind, qs, codes, aux, i):
    if not isinstance(kind, CodecKindType):
        raise TypeError(f"codec_distance: kind must be a CodecKind, got {kind}")
    return _arm(kind.value)


def _leanvec_primary(v: int) -> bool:
    """Kind ``v`` is a LeanVec primary's distance (float or int8 query): its row starts with
    the primary codes, the secondary last."""
    return 18 <= v < 22 or 32 <= v < 36 or 40 <= v < 44


def traversal_bytes(kind: CodecKind, qs: np.ndarray, codes: np.ndarray) -> int:
    """Bytes at the start of a row that distance ``kind`` reads: the primary codes of a
    two-level LVQ or LeanVec row (a traversal's prefetch need not load the re-ranking level),
    the whole row otherwise; only callable from jitted code."""
    raise TypeError("traversal_bytes is a kernel helper: call it from jitted code")


@overload(traversal_bytes, jit_options=JIT)
def _traversal_bytes(kind, qs, codes):
    if not isinstance(kind, CodecKindType):
        raise TypeError(f"traversal_bytes: kind must be a CodecKind, got {kind}")
    v = kind.value
    if 6 <= v < 10:  # LVQ: [q (d), <q, mean>, sum(q), ||q||^2]; d bytes at 8 bits, d/2 at 4
        shift = 0 if v < 8 else 1
        return lambda kind, qs, codes: min((qs.shape[0] - 3) >> shift,
                                           codes.shape[1] * codes.itemsize)
    if _leanvec_primary(v):  # d' (the query's last value) codes first, inline terms after
        shift = 1 if (v < 22 and v % 2 == 0) or 34 <= v < 36 or 40 <= v < 42 else 0
        terms = 8 if v >= 40 else 0
        return lambda kind, qs, codes: min((np.int64(qs[qs.shape[0] - 1]) >> shift) + terms,
                                           codes.shape[1] * codes.itemsize)
    return lambda kind, qs, codes: codes.shape[1] * codes.itemsize


def rerank_span(kind: CodecKind, qs: np.ndarray, codes: np.ndarray) -> tuple[int, int]:
    """(start, stop): the bytes of a row that only a codec's re-ranking level reads (a
    two-level LVQ row's residual, a LeanVec row's secondary), after ``traversal_bytes``;
    empty (start == stop) for a single-level codec. Only callable from jitted code."""
    raise TypeError("rerank_span is a kernel helper: call it from jitted code")


@overload(rerank_span, jit_options=JIT)
def _rerank_span(kind, qs, codes):
    if not isinstance(kind, CodecKindType):
        raise TypeError(f"rerank_span: kind must be a CodecKind, got {kind}")
    v = kind.value
    if 6 <= v < 10 or _leanvec_primary(v):
        return lambda kind, qs, codes: (traversal_bytes(kind, qs, codes),
                                        codes.shape[1] * codes.itemsize)
    return lambda kind, qs, codes: (codes.shape[1] * codes.itemsize,
                                    codes.shape[1] * codes.itemsize)


def side_bytes(kind: CodecKind) -> int:
    """How much of a row's ``aux`` side values a traversal by distance ``kind`` prefetches
    (``prefetch_stored_row``): none where the kind reads none (an inline LeanVec primary's
    inner product), a line otherwise. Only callable from jitted code."""
    raise TypeError("side_bytes is a kernel helper: call it from jitted code")


@overload(side_bytes, jit_options=JIT)
def _side_bytes(kind):
    if not isinstance(kind, CodecKindType):
        raise TypeError(f"side_bytes: kind must be a CodecKind, got {kind}")
    side = 0 if kind.value in (40, 42) else SIDE_BYTES
    return lambda kind: side


# --- per-kind Python entry points --------------------------------------------------------------


def _entry_template(kind, key):
    def entry(*args):
        key  # noqa: B018 -- a closure cell, so part of Numba's cache key: one entry per kernel
        return KERNEL(kind, *args)  # noqa: F821 -- bound per kernel in ``for_kind``

    return entry


def _entry_template2(kind, second, key):
    def entry(*args):
        key  # noqa: B018 -- as in _entry_template
        return KERNEL(kind, second, *args)  # noqa: F821 -- bound per kernel in ``for_kind``

    return entry


_ENTRIES: dict[tuple[object, ...], object] = {}
_LOCK = threading.Lock()


def for_kind(kernel, kind: CodecKind, second: CodecKind | None = None):
    """``kernel`` (a jitted function whose first argument is a kind, or first two with
    ``second``) with the kinds bound, as a jitted entry point compiled on its first call and
    cached on disk.

    Calling ``kernel(kind, ...)`` from Python works too, but Numba types a CodecKind argument
    in Python (microseconds per call); the entry takes the kind as a compile-time constant.
    Its cache key names the kernel and a hash of the kernel's source file, so an edited kernel
    never reuses a stale entry."""
    key = (kernel, kind.value) if second is None else (kernel, kind.value, second.value)
    fn = _ENTRIES.get(key)
    if fn is not None:
        return fn
    with _LOCK:
        fn = _ENTRIES.get(key)
        if fn is None:
            py = kernel.py_func
            source = hashlib.sha1(Path(inspect.getfile(py)).read_bytes()).hexdigest()[:16]
            name = f"{py.__module__}.{py.__qualname__}@{source}"
            template = (_entry_template(kind, name) if second is None
                        else _entry_template2(kind, second, name))
            bound = pytypes.FunctionType(template.__code__, {"KERNEL": kernel, "__name__": __name__},
                                         py.__name__, None, template.__closure__)
            fn = _ENTRIES[key] = njit(**JIT)(bound)
    return fn
