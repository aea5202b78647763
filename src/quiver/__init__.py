"""Quiver: vector similarity search with Numba-JIT kernels.

    import quiver
    index = quiver.FlatIndex(dim=384, metric="cosine")
    index.add(vectors, ids)
    scores, ids = index.search(queries, k=10)
"""

from quiver.engine.bitset import Bitset
from quiver.engine.errors import CorruptData, DuplicateId, InvalidArgument, NotFound, QuiverError
from quiver.engine.index import FlatIndex, HNSWIndex, Index, index
from quiver.engine.metric import Metric

__version__ = "0.1.0"

__all__ = [
    "Bitset",
    "CorruptData",
    "DuplicateId",
    "FlatIndex",
    "HNSWIndex",
    "Index",
    "InvalidArgument",
    "Metric",
    "NotFound",
    "QuiverError",
    "__version__",
    "index",
]
