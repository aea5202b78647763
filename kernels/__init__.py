"""Numba-JIT kernels: pure functions over contiguous arrays, no classes, no I/O.

Convention shared by every kernel: a *distance* is smaller-is-closer. For ``l2`` it is the
squared Euclidean distance; for ``ip`` (and ``cosine`` after normalisation) it is the negative
inner product. The engine turns distances back into user-facing scores.
"""

JIT = {"cache": True, "nogil": True, "fastmath": True}
"""Options for every hot kernel (see ARCHITECTURE.md, Kernel rules)."""

INLINE = {**JIT, "inline": "always"}
"""Options for small helpers that must fuse into the loop that calls them."""
