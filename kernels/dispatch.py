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
from .quantized import f16_ip, f16_l2, lvq8_ip, lvq8_l2, sq8_ip, sq8_l2

F32_IP, F32_L2, F16_IP, F16_L2, SQ8_IP, SQ8_L2, LVQ8_IP, LVQ8_L2 = range(8)


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
        return lvq8_ip(qs, codes, aux, i)
    return lvq8_l2(qs, codes, aux, i)
