"""Distances on compressed codes (f16, SQ8, LVQ-8) computed without decoding to memory.

Reconstructions: f16 -> exact half-precision value; SQ8 -> ``lo + step * code`` with per-
dimension ``lo``/``step``; LVQ-8 -> ``mean + bias_i + step_i * code`` with per-vector
``bias_i``/``step_i`` (Aguerrebere et al., 2023). Queries are prepared once per search so each
distance is one dot product over the codes plus a few scalar terms. l2 uses
``||q||^2 - 2<q, x> + ||x||^2`` with ``||x||^2`` of the reconstruction stored per vector.
Prepared query layouts are documented on each codec in ``engine/codecs.py``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import INLINE, JIT
from .vnni import dot16_u8s8, dot_u4s8, dot_u8s8

F16_SCALE = np.float32(2.0**56)
"""Prepared f16 queries are ``q * F16_SCALE``. Half bits shifted into a float32 exponent read
2**-112 times the half value, so the dot product is scaled back by 2**56 at the end; splitting
2**112 this way keeps ``q * F16_SCALE`` finite for any practical query (|q| < 4.7e21)."""
_F16_UNSCALE = np.float32(2.0**56)


@njit(**INLINE)
def _f16_dot(qs: np.ndarray, row: np.ndarray) -> np.float32:
    # qs = [q * 2**56 (d), scratch (d)]: the row's bits are widened into the scratch
    # and read back as float32, which equals value * 2**-112 (exact, subnormals included).
    d = row.shape[0]
    buf = qs[d : 2 * d].view(np.uint32)
    for j in range(d):
        h = np.uint32(row[j])
        buf[j] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
    xf = qs[d : 2 * d]
    s = np.float32(0.0)
    for j in range(d):
        s += qs[j] * xf[j]
    return s * _F16_UNSCALE


@njit(**INLINE)
def f16_ip(qs, codes, aux, i):
    return -_f16_dot(qs, codes[i])


@njit(**INLINE)
def f16_l2(qs, codes, aux, i):
    d = codes.shape[1]
    return qs[2 * d] - np.float32(2.0) * _f16_dot(qs, codes[i]) + aux[i, 0]


@njit(**INLINE)
def _u8_dot(qv: np.ndarray, row: np.ndarray) -> np.float32:
    s = np.float32(0.0)
    for j in range(row.shape[0]):
        s += qv[j] * np.float32(row[j])
    return s


@njit(**INLINE)
def sq8_ip(qs, codes, aux, i):
    d = codes.shape[1]
    return -(qs[d] + _u8_dot(qs, codes[i]))


@njit(**INLINE)
def sq8_l2(qs, codes, aux, i):
    d = codes.shape[1]
    return qs[d + 1] - np.float32(2.0) * (qs[d] + _u8_dot(qs, codes[i])) + aux[i, 0]


@njit(**INLINE)
def _u4_dot(qv: np.ndarray, row: np.ndarray, h: int) -> np.float32:
    """Packed 4-bit codes: byte j holds dimension j (low nibble) and j + h (high nibble), so
    both halves of the query are read contiguously. One loop per nibble: the fused loop
    (both nibbles per byte) vectorised to half this speed (40 vs 18 ns a 384-d row; 8-bit
    codes 14 ns). The uint32 casts let every arm of ``codec_distance`` type-check on float
    rows too."""
    s = np.float32(0.0)
    for j in range(h):
        s += qv[j] * np.float32(np.uint32(row[j]) & np.uint32(15))
    t = np.float32(0.0)
    for j in range(h):
        t += qv[j + h] * np.float32(np.uint32(row[j]) >> np.uint32(4))
    return s + t


# LVQ layouts (engine/codecs.py): prepared query [q (d), <q, mean>, sum(q), ||q||^2]; a row
# holds the primary codes first (d bytes at 8 bits, d/2 at 4 bits) and, for two-level codecs,
# the residual codes after them; aux = [bias, step, ||x1||^2 (, bias2, step2, ||x||^2)].


@njit(**INLINE)
def _lvq_ip(qs, row, bias, step, d: int, bits: int):
    """<q, x_hat> for LVQ codes of a d-dim vector at the start of ``row``, the prepared query
    [q (d), <q, mean>, sum(q), ...] at the start of ``qs``."""
    dot = _u8_dot(qs, row[:d]) if bits == 8 else _u4_dot(qs, row, d >> 1)
    return qs[d] + bias * qs[d + 1] + step * dot


@njit(**INLINE)
def lvq_ip(qs, codes, aux, i, bits: int):
    return -_lvq_ip(qs, codes[i], aux[i, 0], aux[i, 1], qs.shape[0] - 3, bits)


@njit(**INLINE)
def lvq_l2(qs, codes, aux, i, bits: int):
    d = qs.shape[0] - 3
    return (qs[d + 2] - np.float32(2.0) * _lvq_ip(qs, codes[i], aux[i, 0], aux[i, 1], d, bits)
            + aux[i, 2])


@njit(**INLINE)
def _two_level_ip(qs, codes, aux, i, b1: int, b2: int):
    """<q, x_hat> with x_hat = mean + bias + step * c1 + bias2 + step2 * c2."""
    d = qs.shape[0] - 3
    row = codes[i]
    w1 = d if b1 == 8 else d >> 1
    p1 = _u8_dot(qs, row[:w1]) if b1 == 8 else _u4_dot(qs, row, d >> 1)
    p2 = _u8_dot(qs, row[w1 : w1 + d]) if b2 == 8 else _u4_dot(qs, row[w1:], d >> 1)
    return qs[d] + (aux[i, 0] + aux[i, 3]) * qs[d + 1] + aux[i, 1] * p1 + aux[i, 4] * p2


@njit(**INLINE)
def two_level_ip(qs, codes, aux, i, b1: int, b2: int):
    return -_two_level_ip(qs, codes, aux, i, b1, b2)


@njit(**INLINE)
def two_level_l2(qs, codes, aux, i, b1: int, b2: int):
    d = qs.shape[0] - 3
    return qs[d + 2] - np.float32(2.0) * _two_level_ip(qs, codes, aux, i, b1, b2) + aux[i, 5]


# LVQ-8 with an int8 query (VNNI hosts): prepared query [q8 (d bytes, in ceil(d/4) float32
# slots), <q, mean>, sum(q), ||q||^2, 1/s] where q8 = rint(s q), s = 127 / max|q|; the codes'
# dot product is exact in integers, the other terms use q itself.


@njit(**INLINE)
def _lvq8_i8_ip(qs, codes, aux, i):
    return _i8_ip(qs, codes[i], aux[i, 0], aux[i, 1], qs.shape[0] - 4, codes.shape[1])


@njit(**INLINE)
def _i8_ip(qs, row, bias, step, w: int, nbytes: int):
    """<q, x_hat> for the LVQ-8 codes at the start of ``row``, against the int8 query in the
    first bytes of ``qs`` with its terms [<q, mean>, sum(q), ||q||^2, 1/s] at slot w."""
    dot = np.float32(dot_u8s8(row, qs, nbytes))
    return qs[w] + bias * qs[w + 1] + step * dot * qs[w + 3]


@njit(**INLINE)
def lvq8_i8_ip(qs, codes, aux, i):
    return -_lvq8_i8_ip(qs, codes, aux, i)


@njit(**INLINE)
def lvq8_i8_l2(qs, codes, aux, i):
    return qs[qs.shape[0] - 2] - np.float32(2.0) * _lvq8_i8_ip(qs, codes, aux, i) + aux[i, 2]


# LeanVec: prepared query [Pq (dp), <Pq, mean_p>, sum(Pq), ||Pq||^2, q (d), <q, mean>,
# sum(q), ||q||^2, dp]; a row holds the primary LVQ codes of the projected vector (dp or dp/2
# bytes) first and the LVQ-8 codes of the full vector (d bytes) last, padding between them
# where the row is rounded to whole cache lines (``LeanVecCodec.code_width``); aux =
# [bias_p, step_p, ||z||^2, bias, step, ||x||^2].


@njit(**INLINE)
def leanvec_primary_ip(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    return -_lvq_ip(qs, codes[i], aux[i, 0], aux[i, 1], dp, bits)


@njit(**INLINE)
def leanvec_primary_l2(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    return (qs[dp + 2] - np.float32(2.0) * _lvq_ip(qs, codes[i], aux[i, 0], aux[i, 1], dp, bits)
            + aux[i, 2])


# LeanVec with an int8 query on VNNI hosts: the primary part of the prepared query keeps its
# d' + 3 slots, now [z8 (d' bytes in w = ceil(d'/4) slots), <z, mean_p>, sum(z), ||z||^2, 1/s,
# unused], so the full query's part, and the secondary kernels, stay put. An LVQ-8 primary
# is one ``vpdpbusd`` a 64-byte block; an LVQ-4 one splits its nibbles in registers, each
# half of the query one operand (``vnni.dot_u4s8``).


@njit(**INLINE)
def _leanvec_int8_primary_dot(qs, row, bias, step, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    w = (dp + 3) >> 2
    if bits == 8:
        return _i8_ip(qs, row, bias, step, w, dp)
    dot = np.float32(dot_u4s8(row, qs, dp >> 1))
    return qs[w] + bias * qs[w + 1] + step * dot * qs[w + 3]


@njit(**INLINE)
def _leanvec_int8_primary_ip(qs, codes, aux, i, bits: int):
    return _leanvec_int8_primary_dot(qs, codes[i], aux[i, 0], aux[i, 1], bits)


@njit(**INLINE)
def leanvec_int8_primary_ip(qs, codes, aux, i, bits: int):
    return -_leanvec_int8_primary_ip(qs, codes, aux, i, bits)


@njit(**INLINE)
def leanvec_int8_primary_l2(qs, codes, aux, i, bits: int):
    w = (np.int64(qs[qs.shape[0] - 1]) + 3) >> 2
    return (qs[w + 2] - np.float32(2.0) * _leanvec_int8_primary_ip(qs, codes, aux, i, bits)
            + aux[i, 2])


# LeanVec rows with the primary's bias and step inline (``LeanVecCodec.inline_terms``): two
# float32 right after the primary codes, in the room their last cache line has left, so an
# inner-product traversal reads no ``aux`` line: 2 lines a LeanVec(240,LVQ4) row, not 3
# (a traversal 1.06x as fast, rows otherwise equal). l2 still reads ||z||^2 from ``aux``.


@njit(**INLINE)
def _leanvec_inline_primary_ip(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    w1 = dp if bits == 8 else dp >> 1
    row = codes[i]
    return _leanvec_int8_primary_dot(qs, row, _f32_at(row, w1), _f32_at(row, w1 + 4), bits)


@njit(**INLINE)
def leanvec_inline_primary_ip(qs, codes, aux, i, bits: int):
    return -_leanvec_inline_primary_ip(qs, codes, aux, i, bits)


@njit(**INLINE)
def leanvec_inline_primary_l2(qs, codes, aux, i, bits: int):
    w = (np.int64(qs[qs.shape[0] - 1]) + 3) >> 2
    return (qs[w + 2] - np.float32(2.0) * _leanvec_inline_primary_ip(qs, codes, aux, i, bits)
            + aux[i, 2])


@njit(**INLINE)
def _leanvec_secondary_ip(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    d = qs.shape[0] - dp - 7
    w1 = codes.shape[1] - d  # the secondary: the row's last d bytes
    o = dp + 3
    # Slices, not offset indices: Numba wraps an index it cannot prove non-negative
    # (``o + j``) on every read, which kept this loop scalar (648 ns a 384-d row, 59 sliced).
    dot = _u8_dot(qs[o : o + d], codes[i, w1 : w1 + d])
    return qs[o + d] + aux[i, 3] * qs[o + d + 1] + aux[i, 4] * dot


@njit(**INLINE)
def leanvec_secondary_ip(qs, codes, aux, i, bits: int):
    return -_leanvec_secondary_ip(qs, codes, aux, i, bits)


@njit(**INLINE)
def leanvec_secondary_l2(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    d = qs.shape[0] - dp - 7
    return (qs[dp + 3 + d + 2] - np.float32(2.0) * _leanvec_secondary_ip(qs, codes, aux, i, bits)
            + aux[i, 5])


# LeanVec's LVQ-8 secondary against the full query as two int8 vectors (VNNI hosts): the
# full query's d + 3 slots hold [q8 (d bytes in w = ceil(d/4) slots), <q, mean>, sum(q),
# ||q||^2, 1/s, r8 (d bytes in w slots), unused], q8 = rint(s q) as ``_lvq8_i8_ip``'s and
# r8 = rint(254 (s q - q8)) its rounding error, so the codes' dot product with
# (q8 + r8 / 254) / s is within 1/64,516 of max|q| a dimension of the float one (an int8
# query alone cost re-ranking 0.001 of recall@10); the layout keeps the float one's length,
# so d is found as there. Two ``vpdpbusd`` a 64-byte block: 10.6 ns a hot 384-d row, 31.5
# with the float kernel (8-wide widen-and-multiply).


@njit(**INLINE)
def _leanvec_i8_secondary_ip(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    d = qs.shape[0] - dp - 7
    w1 = codes.shape[1] - d
    o = dp + 3
    w = o + ((d + 3) >> 2)
    row = codes[i, w1 : w1 + d]
    r = w + 4
    dot = (np.float32(dot_u8s8(row, qs[o:w], d))
           + np.float32(dot_u8s8(row, qs[r : r + w - o], d)) * np.float32(1.0 / 254.0))
    return qs[w] + aux[i, 3] * qs[w + 1] + aux[i, 4] * dot * qs[w + 3]


@njit(**INLINE)
def leanvec_i8_secondary_ip(qs, codes, aux, i, bits: int):
    return -_leanvec_i8_secondary_ip(qs, codes, aux, i, bits)


@njit(**INLINE)
def leanvec_i8_secondary_l2(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    w = dp + 3 + ((qs.shape[0] - dp - 4) >> 2)  # o + ceil(d / 4), d = len - dp - 7
    return (qs[w + 2] - np.float32(2.0) * _leanvec_i8_secondary_ip(qs, codes, aux, i, bits)
            + aux[i, 5])


@njit(**INLINE)
def _leanvec_f16_dot(qs, row, w1, dp, d) -> np.float32:
    """<q, x> from the float16 secondary of a LeanVec row (little-endian half bits from byte
    ``w1``, to the row's end); qs = [z (dp), zm, zs, zz, q * 2**56 (d), scratch (d), ||q||^2, dp]."""
    o = dp + 3
    half = row[w1 : w1 + 2 * d]  # sliced, as in ``_leanvec_secondary_ip``
    buf = qs[o + d : o + 2 * d].view(np.uint32)
    for j in range(d):
        h = np.uint32(half[2 * j]) | (np.uint32(half[2 * j + 1]) << np.uint32(8))
        buf[j] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
    qv = qs[o : o + d]
    xf = qs[o + d : o + 2 * d]
    s = np.float32(0.0)
    for j in range(d):
        s += qv[j] * xf[j]
    return s * _F16_UNSCALE


@njit(**INLINE)
def leanvec_f16_secondary_ip(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    d = (qs.shape[0] - dp - 5) >> 1
    return -_leanvec_f16_dot(qs, codes[i], codes.shape[1] - 2 * d, dp, d)


@njit(**INLINE)
def leanvec_f16_secondary_l2(qs, codes, aux, i, bits: int):
    dp = np.int64(qs[qs.shape[0] - 1])
    d = (qs.shape[0] - dp - 5) >> 1
    dot = _leanvec_f16_dot(qs, codes[i], codes.shape[1] - 2 * d, dp, d)
    return qs[dp + 3 + 2 * d] - np.float32(2.0) * dot + aux[i, 5]


# --- encoders -----------------------------------------------------------------------------


@njit(**JIT)
def lvq_encode(X, mean, b1: int, b2: int, codes, aux) -> None:
    """LVQ-``b1`` (and, with ``b2`` > 0, a ``b2``-bit residual): centre each vector on the
    dataset mean, code it uniformly between its own min and max, then code the primary's
    error uniformly over [-step/2, step/2]. 4-bit codes pack two per byte (dims j, j + d/2).

    aux[i] = (bias, step, ||x1||^2) and, two-level, (bias2, step2, ||x||^2) after them."""
    n, d = X.shape
    h = d >> 1
    w1 = d if b1 == 8 else h
    l1 = np.float32((1 << b1) - 1)
    l2 = np.float32((1 << b2) - 1) if b2 > 0 else np.float32(1.0)
    r = np.empty(d, np.float32)
    c1 = np.empty(d, np.int32)
    c2 = np.empty(d, np.int32)
    for i in range(n):
        lo = np.float32(np.inf)
        hi = np.float32(-np.inf)
        for j in range(d):
            r[j] = X[i, j] - mean[j]
            lo = min(lo, r[j])
            hi = max(hi, r[j])
        step = (hi - lo) / l1
        inv = np.float32(0.0) if step == 0 else np.float32(1.0) / step
        step2 = step / l2
        inv2 = np.float32(0.0) if step2 == 0 else np.float32(1.0) / step2
        lo2 = -step * np.float32(0.5)
        n1 = np.float32(0.0)
        n2 = np.float32(0.0)
        for j in range(d):
            c = min(max(np.int32((r[j] - lo) * inv + np.float32(0.5)), 0), np.int32(l1))
            c1[j] = c
            x1 = lo + step * np.float32(c)
            n1 += (mean[j] + x1) * (mean[j] + x1)
            if b2 > 0:
                e = min(max(np.int32((r[j] - x1 - lo2) * inv2 + np.float32(0.5)), 0),
                        np.int32(l2))
                c2[j] = e
                x = mean[j] + x1 + lo2 + step2 * np.float32(e)
                n2 += x * x
        if b1 == 8:
            for j in range(d):
                codes[i, j] = np.uint8(c1[j])
        else:
            for j in range(h):
                codes[i, j] = np.uint8(c1[j] | (c1[j + h] << 4))
        aux[i, 0] = lo
        aux[i, 1] = step
        aux[i, 2] = n1
        if b2 > 0:
            if b2 == 8:
                for j in range(d):
                    codes[i, w1 + j] = np.uint8(c2[j])
            else:
                for j in range(h):
                    codes[i, w1 + j] = np.uint8(c2[j] | (c2[j + h] << 4))
            aux[i, 3] = lo2
            aux[i, 4] = step2
            aux[i, 5] = n2


@njit(**JIT)
def lvq_prepare(Q, mean, out) -> None:
    """LVQ's prepared queries [q (d), <q, mean>, sum(q), ||q||^2] into ``out`` (nq, d + 3):
    one pass a query (a 384-d query 5.5 us in NumPy's four calls, most of a small search)."""
    d = Q.shape[1]
    for r in range(Q.shape[0]):
        for j in range(d):
            out[r, j] = Q[r, j]
        out[r, d], out[r, d + 1], out[r, d + 2] = _query_terms(Q[r], mean)


@njit(**INLINE)
def _query_terms(q, mean) -> tuple[np.float32, np.float32, np.float32]:
    """(<q, mean>, sum(q), ||q||^2): the scalar terms of every LVQ distance."""
    dot = np.float32(0.0)
    total = np.float32(0.0)
    sq = np.float32(0.0)
    for j in range(q.shape[0]):
        v = q[j]
        dot += v * mean[j]
        total += v
        sq += v * v
    return dot, total, sq


@njit(**JIT)
def f16_prepare(Q, out) -> None:
    """Float16 rows' prepared queries [q * F16_SCALE (d), scratch (d), ||q||^2] into ``out``
    (nq, 2d + 1), zeroed (3.5 us a 384-d query in NumPy)."""
    d = Q.shape[1]
    for r in range(Q.shape[0]):
        sq = np.float32(0.0)
        for j in range(d):
            v = Q[r, j]
            out[r, j] = v * F16_SCALE
            sq += v * v
        out[r, 2 * d] = sq


@njit(**JIT)
def sq8_prepare(Q, lo, step, out) -> None:
    """SQ8's prepared queries [q * step (d), <q, lo>, ||q||^2] into ``out`` (nq, d + 2)
    (4.6 us a 384-d query in NumPy)."""
    d = Q.shape[1]
    for r in range(Q.shape[0]):
        for j in range(d):
            out[r, j] = Q[r, j] * step[j]
        dot, _, sq = _query_terms(Q[r], lo)
        out[r, d] = dot
        out[r, d + 1] = sq


@njit(**INLINE)
def _abs_max(q) -> np.float32:
    """max|q| as the largest of the bit patterns with the sign cleared (non-negative floats
    order as their bits do): an integer max, which vectorises, where LLVM kept the float one
    scalar (a 256-d query: 178 ns against about 20)."""
    bits = q.view(np.int32)
    top = np.int32(0)
    for j in range(bits.shape[0]):
        top = max(top, bits[j] & np.int32(0x7FFFFFFF))
    return _float_of_bits(top)


@intrinsic
def _float_of_bits(typingctx, word):
    """The float32 whose bits are the low 32 of the integer ``word`` (32 bits or more)."""
    if not isinstance(word, types.Integer) or word.bitwidth < 32:
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if word.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(word), codegen


@intrinsic
def _f32_at(typingctx, row, offset):
    """The float32 stored (little-endian, any alignment) at byte ``offset`` of the 1-D
    C-contiguous uint8 array ``row``: a LeanVec row's inline terms."""
    if not (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
            and row.dtype == types.uint8 and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        off = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(data, [off]), ir.FloatType().as_pointer())
        return builder.load(ptr, align=1)

    return types.float32(row, offset), codegen


@njit(**INLINE)
def _int8_row(q, q8) -> np.float32:
    """q8 = rint(s q) with s = 127 / max|q| (1 for a zero query); returns 1/s."""
    peak = _abs_max(q)
    scale = np.float32(127.0) / peak if peak > 0 else np.float32(1.0)
    for j in range(q.shape[0]):
        q8[j] = np.int8(np.rint(q[j] * scale))
    return np.float32(1.0) / scale


@njit(**JIT)
def int8_quantize(Q, q8, inv) -> None:
    """Each query row's int8 form (``_int8_row``) into ``q8`` and its 1/s into ``inv``."""
    for r in range(Q.shape[0]):
        inv[r] = _int8_row(Q[r], q8[r])


@njit(**JIT)
def lvq8_prepare_int8(Q, mean, qs, at, split) -> None:
    """LVQ-8's int8 prepared queries (layout above ``_lvq8_i8_ip``) into columns at.. of
    ``qs`` (nq, C-contiguous float32, zeroed); ``split``: the rounding error as int8 after
    them too (layout above ``_leanvec_i8_secondary_ip``). Rows are viewed whole, so every
    loop runs over contiguous bytes (2-D slices kept them scalar: 0.68 against 0.3 us of
    LeanVec's preparation); 14.5 us a 384-d query in NumPy, most of a small search."""
    d = Q.shape[1]
    w = (d + 3) >> 2
    for r in range(Q.shape[0]):
        row = qs[r]
        q = Q[r]
        hi8 = row[at : at + w].view(np.int8)[:d]
        inv = _int8_row(q, hi8)
        t = at + w
        row[t + 3] = inv
        row[t], row[t + 1], row[t + 2] = _query_terms(q, mean)
        if split:
            lo8 = row[t + 4 : t + 4 + w].view(np.int8)[:d]
            scale = np.float32(1.0) / inv
            for j in range(d):
                lo8[j] = np.int8(np.rint((q[j] * scale - np.float32(hi8[j])) * np.float32(254.0)))


@njit(**JIT)
def project_int8(Q, blocks, colsum, colstep, Z) -> None:
    """Z = Q P on VNNI hosts, with Q as int8 (``_int8_row``) and P as int8 per column
    (``engine/leanvec.py``, ``int8_blocks``): four queries at a time, their bytes offset by
    128 to be unsigned, against P's 64-byte blocks of 4 rows x 16 columns
    (``vnni.dot16_u8s8``), the offset's column sums taken back out. Its error, about 1e-3 of
    a unit query's projection, is below the int8 rounding LeanVec's primary query gets
    next."""
    nq, d = Q.shape
    k4 = (d + 3) >> 2
    q8 = np.empty(d, np.int8)
    u = np.full(16 * k4, 128, np.uint8)  # four queries' bytes, zero (128) past d
    inv = np.ones(4, np.float32)
    acc = np.empty(64, np.int32)
    for r0 in range(0, nq, 4):
        m = min(4, nq - r0)
        for r in range(m):
            inv[r] = _int8_row(Q[r0 + r], q8)
            for j in range(d):
                u[4 * k4 * r + j] = np.uint8(np.int32(q8[j]) + 128)
        for g in range(Z.shape[1] >> 4):
            dot16_u8s8(u, blocks, g * k4 * 64, k4, acc)
            for r in range(m):
                for c in range(16):
                    col = 16 * g + c
                    Z[r0 + r, col] = (np.float32(acc[16 * r + c] - 128 * colsum[col])
                                      * inv[r] * colstep[col])


@njit(**JIT)
def sq8_encode(X, lo, inv_step, codes) -> None:
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            v = (X[i, j] - lo[j]) * inv_step[j]
            v = min(max(v, np.float32(0.0)), np.float32(255.0))
            codes[i, j] = np.uint8(np.int32(v + np.float32(0.5)))
