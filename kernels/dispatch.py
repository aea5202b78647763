"""One entry point for every codec distance, selected by an integer ``kind``.

Kernels take ``kind`` (a codec's ``Codec.dist(metric)``) rather than a jitted function as an
argument: Numba cannot reuse its on-disk cache for functions specialised on another
dispatcher (the cache key changes per process), while an integer argument caches. The branch
is loop-invariant and perfectly predicted; each arm inlines into the caller's loop.
"""

import numpy as np
from numba import njit

from . import INLINE
from .distance import f32_ip, f32_l2
from .quantized import (
    f16_ip,
    f16_l2,
    leanvec_primary_ip,
    leanvec_primary_l2,
    leanvec_secondary_ip,
    leanvec_secondary_l2,
    lvq_ip,
    lvq_l2,
    sq8_ip,
    sq8_l2,
    two_level_ip,
    two_level_l2,
)

F32_IP, F32_L2, F16_IP, F16_L2, SQ8_IP, SQ8_L2, LVQ8_IP, LVQ8_L2, LVQ4_IP, LVQ4_L2 = range(10)
LVQ_2L_IP = {(4, 4): 10, (4, 8): 11, (8, 4): 12, (8, 8): 13}
LVQ_2L_L2 = {(4, 4): 14, (4, 8): 15, (8, 4): 16, (8, 8): 17}
"""Two-level LVQ (primary and residual together): the re-ranking distance of LVQ-B1xB2."""
LEANVEC_PRIMARY_IP = {4: 18, 8: 19}
LEANVEC_PRIMARY_L2 = {4: 20, 8: 21}
LEANVEC_SECONDARY_IP = {4: 22, 8: 23}
LEANVEC_SECONDARY_L2 = {4: 24, 8: 25}
"""LeanVec by its primary's bits: the reduced-dimension distance, and the full one."""


@njit(**INLINE)
def codec_distance(kind: int, qs: np.ndarray, codes: np.ndarray, aux: np.ndarray, i: int):
    """Distance (smaller is closer) between prepared query ``qs`` and stored row ``i``."""
    if kind == F32_IP:
        return f32_ip(qs, codes, aux, i)
    if kind == F32_L2:
        return f32_l2(qs, codes, aux, i)
    if kind == F16_IP:
        return f16_ip(qs, codes, aux, i)
    if kind == F16_L2:
        return f16_l2(qs, codes, aux, i)
    if kind == SQ8_IP:
        return sq8_ip(qs, codes, aux, i)
    if kind == SQ8_L2:
        return sq8_l2(qs, codes, aux, i)
    if kind == LVQ8_IP:
        return lvq_ip(qs, codes, aux, i, 8)
    if kind == LVQ8_L2:
        return lvq_l2(qs, codes, aux, i, 8)
    if kind == LVQ4_IP:
        return lvq_ip(qs, codes, aux, i, 4)
    if kind == LVQ4_L2:
        return lvq_l2(qs, codes, aux, i, 4)
    if kind < 14:  # two-level ip: 10..13 = (4,4), (4,8), (8,4), (8,8)
        return two_level_ip(qs, codes, aux, i, 4 if kind < 12 else 8, 4 if kind % 2 == 0 else 8)
    if kind < 18:
        return two_level_l2(qs, codes, aux, i, 4 if kind < 16 else 8, 4 if kind % 2 == 0 else 8)
    bits = 4 if kind % 2 == 0 else 8
    if kind < 20:
        return leanvec_primary_ip(qs, codes, aux, i, bits)
    if kind < 22:
        return leanvec_primary_l2(qs, codes, aux, i, bits)
    if kind < 24:
        return leanvec_secondary_ip(qs, codes, aux, i, bits)
    return leanvec_secondary_l2(qs, codes, aux, i, bits)
