"""Index specs that read like FAISS factory strings: "Flat", "Flat,F16", "HNSW16,LVQ8"."""

from __future__ import annotations

import re

from ..errors import InvalidArgument
from ..metric import Metric
from .flat import FlatIndex


def index(spec: str, dim: int, metric: str | Metric = "l2", **options):
    """Build an empty index from a spec string.

    ``Flat[,F32|F16]`` -> FlatIndex; ``HNSW<M>[,F32|F16|SQ8|LVQ8]`` -> HNSWIndex with M links.
    Extra keyword options go to the index constructor (e.g. ``ef_construction=200``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument(f"spec: expected a string like 'HNSW16,LVQ8', got {spec!r}")
    parts = [p.strip() for p in spec.split(",")]
    head, codec = parts[0].upper(), (parts[1].lower() if len(parts) > 1 else "f32")
    if len(parts) > 2:
        raise InvalidArgument(f"spec: {spec!r} has more than two parts")
    if head == "FLAT":
        return FlatIndex(dim, metric, dtype=codec, **options)
    m = re.fullmatch(r"HNSW(\d*)", head)
    if m:
        from .hnsw import HNSWIndex

        links = int(m.group(1)) if m.group(1) else 16
        return HNSWIndex(dim, metric, m=links, codec=codec, **options)
    raise InvalidArgument(f"spec: unknown index type {parts[0]!r} in {spec!r}; use Flat or HNSW<M>")
