"""Input checks shared by every index: convert what can be converted, reject the rest clearly."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import DuplicateId, InvalidArgument

_ZEROS = np.zeros(1 << 16, np.float32)
"""What ``all_finite`` dots a query with."""


F16_MAX = 65504.0
"""The largest finite float16: a value beyond it has no F16 code."""


def beyond_f16(x: np.ndarray) -> int:
    """The first row of ``x`` holding a value beyond the float16 range, or -1 (a check
    before a write: rows an F16 store would refuse must be refused before the log takes
    them)."""
    if x.size == 0 or (x.max() <= F16_MAX and x.min() >= -F16_MAX):
        return -1
    return int(np.flatnonzero((np.abs(x) > F16_MAX).any(1))[0])


def check_using(using: Any) -> None:
    """``using`` names a vector field (a string) or is None (the only one there is)."""
    if using is not None and not isinstance(using, str):
        raise InvalidArgument(f"using: expected a vector field name (a string), got "
                              f"{type(using).__name__}")


def check_flag(name: str, value: Any, optional: bool = False) -> bool | None:
    """``value`` as a bool (a Python or NumPy one; None where ``optional``), else an
    InvalidArgument naming ``name``: a list or an array is no flag."""
    if value is None and optional:
        return None
    if not isinstance(value, bool) and not (type(value).__module__ == "numpy"
                                            and getattr(value, "dtype", None) is not None
                                            and value.dtype.kind == "b" and value.ndim == 0):
        raise InvalidArgument(f"{name}: expected true or false, got {value!r:.60}")
    return bool(value)


def all_finite(x: np.ndarray) -> bool:
    """No NaN or infinity in the float32 array ``x``. Up to 65,536 values, one BLAS dot with
    zeros: 0 * v is 0 for every finite v (it cannot overflow) and NaN for a NaN or an
    infinity. A query's check, where ``np.isfinite(x).all()`` allocates a mask and takes
    NumPy's reduction set-up (14 us a query right after a search has flushed the caches)."""
    flat = x.reshape(-1)
    if flat.shape[0] <= _ZEROS.shape[0]:
        with np.errstate(invalid="ignore"):  # 0 * inf: the answer, not a warning
            return math.isfinite(float(flat @ _ZEROS[: flat.shape[0]]))
    return bool(np.isfinite(x).all())


def as_vectors(x, dim: int, name: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (n, dim) matrix; 1-D input is one vector. Rejects NaN/inf."""
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: not a numeric array ({exc})") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"{name}: expected a 2-D array (n, {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise InvalidArgument(
            f"{name}: wrong dimension {arr.shape[1]}, the index has dimension {dim}")
    arr = np.ascontiguousarray(arr)
    if not all_finite(arr):
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise InvalidArgument(f"{name}: row {bad} contains NaN or inf")
    return arr


def as_queries(q, dim: int) -> tuple[np.ndarray, bool]:
    """Queries as (nq, dim) float32 plus whether a single 1-D query was given."""
    arr = as_vectors(q, dim, "queries")  # first: a ragged list gets its error here
    return arr, np.ndim(q) == 1


def as_ids(ids, n: int, name: str = "ids") -> np.ndarray:
    """int64 ids, one per vector, unique within the call."""
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: not an array of integers ({exc})") from None
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise InvalidArgument(f"{name}: expected a 1-D array of integers, got {arr.dtype} {arr.shape}")
    if arr.shape[0] != n:
        raise InvalidArgument(f"{name}: got {arr.shape[0]} ids for {n} vectors")
    if arr.size and arr.min() < 0:
        raise InvalidArgument(f"{name}: ids must be non-negative, got {int(arr.min())}")
    if arr.size and arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise InvalidArgument(f"{name}: ids must fit in int64, got {int(arr.max())}")
    arr = arr.astype(np.int64, copy=False)
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.shape[0] != arr.shape[0]:
        raise DuplicateId(f"{name}: id {int(uniq[counts > 1][0])} appears more than once in this call")
    return arr


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidArgument(f"k: expected a positive integer, got {k!r}")
    if k <= 0:
        raise InvalidArgument(f"k: must be positive, got {k}")
    return int(k)


def check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise InvalidArgument(f"dim: expected a positive integer, got {dim!r}")
    return int(dim)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm rows (zero rows stay zero), for the cosine metric."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    norms[norms == 0] = 1.0
    return x / norms[:, None]


def check_threshold(value: Any, name: str = "score_threshold") -> float:
    """A finite number to compare scores with."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                      np.floating)):
        raise InvalidArgument(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise InvalidArgument(f"{name}: expected a finite number, got {value!r}")
    return float(value)
