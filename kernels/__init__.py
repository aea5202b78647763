"""Numba-JIT kernels: pure functions over contiguous arrays, no classes, no I/O.

Convention shared by every kernel: a *distance* is smaller-is-closer. For ``l2`` it is the
squared Euclidean distance; for ``ip`` (and ``cosine`` after normalisation) it is the negative
inner product. The engine turns distances back into user-facing scores.
"""

import hashlib
import os
import re
from pathlib import Path

import numba

JIT = {"cache": True, "nogil": True, "fastmath": True}
"""Options for every hot kernel (see ARCHITECTURE.md, Kernel rules)."""

INLINE = {**JIT, "inline": "always"}
"""Options for small helpers that must fuse into the loop that calls them."""


def _cache_per_source() -> None:
    """Numba keys a cached kernel to its own file's timestamp only, so a kernel that inlines a
    helper from another file (every codec distance inlines ``dispatch.codec_distance``) would
    keep running the old helper after an edit. Caching under a hash of the helper modules
    makes an edit of one start a fresh cache; installed copies never change, so users pay
    nothing."""
    base = numba.config.CACHE_DIR
    if not base:  # no NUMBA_CACHE_DIR: Numba's __pycache__ default, left alone
        return
    here = Path(__file__).parent
    imported = set()  # the helper modules other kernel modules import (and so inline)
    for path in here.glob("*.py"):
        imported |= set(re.findall(r"^from \.(\w+) import", path.read_text(), re.M))
    digest = hashlib.sha1()
    for name in sorted(imported):
        if (here / f"{name}.py").exists():
            digest.update(name.encode() + (here / f"{name}.py").read_bytes())
    numba.config.CACHE_DIR = os.path.join(base, f"src-{digest.hexdigest()[:12]}")


_cache_per_source()
