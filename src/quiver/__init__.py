"""Quiver: vector similarity search with Numba-JIT kernels.

    import quiver
    index = quiver.FlatIndex(dim=384, metric="cosine")
    index.add(vectors, ids)
    scores, ids = index.search(queries, k=10)
"""

import os

# Numba's OpenMP pool spins between parallel regions by default; on a loaded machine the
# spinning threads starve the workers (the batched HNSW build ran 4x slower). Users can
# still choose ACTIVE by setting the variable themselves.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from quiver.client import AsyncClient, AuthError, Client
from quiver.engine.bitset import Bitset
from quiver.engine.collection import Collection, Point
from quiver.engine.database import Database, connect
from quiver.engine.errors import CorruptData, DuplicateId, InvalidArgument, NotFound, QuiverError
from quiver.engine.hits import SearchArrays
from quiver.engine.index import FlatIndex, HNSWIndex, Index, index
from quiver.engine.metric import Metric

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AuthError",
    "Bitset",
    "Client",
    "Collection",
    "CorruptData",
    "Database",
    "DuplicateId",
    "FlatIndex",
    "HNSWIndex",
    "Index",
    "InvalidArgument",
    "Metric",
    "NotFound",
    "Point",
    "QuiverError",
    "SearchArrays",
    "__version__",
    "connect",
    "index",
]
