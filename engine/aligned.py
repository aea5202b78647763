"""Cache-line aligned arrays for the rows kernels read.

NumPy's allocator aligns to 16 bytes, so a 1,536-byte float32 row of 384 dimensions starts
mid cache line and spans 25 lines instead of 24, and a prefetched "first line" covers less of
it. Aligning storage to 64 bytes measured 5-10% more HNSW queries/s on WordNet (in-RAM index
against the same index memory-mapped, whose .npy data already starts on a 64-byte boundary).
"""

from __future__ import annotations

import math
import os

import numpy as np

ALIGN = 64


def aligned_empty(shape: int | tuple[int, ...], dtype, align: int = ALIGN) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align``-byte boundary
    (pages never written cost no memory, as with ``np.empty``)."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buf = np.empty(nbytes + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def aligned_full(shape: int | tuple[int, ...], fill, dtype) -> np.ndarray:
    out = aligned_empty(shape, dtype)
    out.fill(fill)
    return out


def load_npy_aligned(path: str | os.PathLike) -> np.ndarray:
    """A .npy file read into an aligned array (``np.load`` would give a 16-byte aligned one)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise ValueError("object arrays are not supported")
        out = aligned_empty(shape[::-1] if fortran else shape, dtype)
        view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
        got = f.readinto(view) if out.size else 0
        if got != out.nbytes:
            raise ValueError(f"{out.nbytes} bytes expected, {got} read")
    return out.T if fortran else out
