"""Distances on compressed codes (f16, SQ8, LVQ-8) computed without decoding to memory.

Reconstructions: f16 -> exact half-precision value; SQ8 -> ``lo + step * code`` with per-
dimension ``lo``/``step``; LVQ-8 -> ``mean + bias_i + step_i * code`` with per-vector
``bias_i``/``step_i`` (Aguerrebere et al., 2023). Queries are prepared once per search so each
distance is one dot product over the codes plus a few scalar terms. l2 uses
``||q||^2 - 2<q, x> + ||x||^2`` with ``||x||^2`` of the reconstruction stored per vector.
Prepared query layouts are documented on each codec in ``engine/codecs.py``.
"""

import numpy as np
from numba import njit

from . import INLINE, JIT

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
def _lvq8_ip(qs, codes, aux, i):
    d = codes.shape[1]
    return qs[d] + aux[i, 0] * qs[d + 1] + aux[i, 1] * _u8_dot(qs, codes[i])


@njit(**INLINE)
def lvq8_ip(qs, codes, aux, i):
    return -_lvq8_ip(qs, codes, aux, i)


@njit(**INLINE)
def lvq8_l2(qs, codes, aux, i):
    d = codes.shape[1]
    return qs[d + 2] - np.float32(2.0) * _lvq8_ip(qs, codes, aux, i) + aux[i, 2]


# --- encoders -----------------------------------------------------------------------------


@njit(**JIT)
def sq8_encode(X, lo, inv_step, codes) -> None:
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            v = (X[i, j] - lo[j]) * inv_step[j]
            v = min(max(v, np.float32(0.0)), np.float32(255.0))
            codes[i, j] = np.uint8(np.int32(v + np.float32(0.5)))


@njit(**JIT)
def lvq8_encode(X, mean, codes, aux) -> None:
    """Per vector: centre on the dataset mean, then uniform 8-bit codes between its min and max.

    aux[i] = (bias, step, ||reconstruction||^2)."""
    d = X.shape[1]
    r = np.empty(d, np.float32)
    for i in range(X.shape[0]):
        lo = np.float32(np.inf)
        hi = np.float32(-np.inf)
        for j in range(d):
            r[j] = X[i, j] - mean[j]
            lo = min(lo, r[j])
            hi = max(hi, r[j])
        step = (hi - lo) / np.float32(255.0)
        inv = np.float32(0.0) if step == 0 else np.float32(1.0) / step
        norm = np.float32(0.0)
        for j in range(d):
            c = np.int32((r[j] - lo) * inv + np.float32(0.5))
            c = min(max(c, 0), 255)
            codes[i, j] = np.uint8(c)
            x = mean[j] + lo + step * np.float32(c)
            norm += x * x
        aux[i, 0] = lo
        aux[i, 1] = step
        aux[i, 2] = norm
