"""Quiver: vector similarity search with Numba-JIT kernels.

    import quiver
    index = quiver.FlatIndex(dim=384, metric="cosine")
    index.add(vectors, ids)
    scores, ids = index.search(queries, k=10)

Names load on first use, so ``import quiver.client`` (an HTTP client) never compiles or even
imports the kernels.
"""

import importlib
import os
from typing import TYPE_CHECKING, Any

# Numba's OpenMP pool spins between parallel regions by default; on a loaded machine the
# spinning threads starve the workers (the batched HNSW build ran 4x slower). Users can
# still choose ACTIVE by setting the variable themselves.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's workers spin for 2**28 cycles (~0.1 s) after each matrix product, beside the
# Numba kernel that follows it (IVF: the coarse quantizer's product, then the list scan); on 2
# cores that made batch searches 1.7x slower. 2**4 cycles puts them to sleep at once. Read
# when NumPy loads OpenBLAS, so it only takes effect if quiver is imported first.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"

_EXPORTS = {
    "AsyncClient": "quiver.client",
    "AuthError": "quiver.client",
    "Client": "quiver.client",
    "Bitset": "quiver.engine.bitset",
    "Collection": "quiver.engine.collection",
    "VectorField": "quiver.engine.collection",
    "Database": "quiver.engine.database",
    "connect": "quiver.engine.database",
    "CorruptData": "quiver.engine.errors",
    "DuplicateId": "quiver.engine.errors",
    "InvalidArgument": "quiver.engine.errors",
    "NotFound": "quiver.engine.errors",
    "QuiverError": "quiver.engine.errors",
    "ShardUnavailable": "quiver.engine.errors",
    "SearchArrays": "quiver.engine.hits",
    "Group": "quiver.engine.groups",
    "FlatIndex": "quiver.engine.index",
    "HNSWIndex": "quiver.engine.index",
    "IVFIndex": "quiver.engine.index",
    "IVFPQIndex": "quiver.engine.index",
    "Index": "quiver.engine.index",
    "index": "quiver.engine.index",
    "load_index": "quiver.engine.index",
    "Metric": "quiver.engine.metric",
    "MultiVectorIndex": "quiver.engine.muvera",
    "FDEConfig": "quiver.engine.muvera",
    "SearchParams": "quiver.engine.params",
    "Point": "quiver.engine.points",
}

__all__ = [
    "AsyncClient",
    "AuthError",
    "Bitset",
    "Client",
    "Collection",
    "CorruptData",
    "Database",
    "DuplicateId",
    "FDEConfig",
    "FlatIndex",
    "Group",
    "HNSWIndex",
    "IVFIndex",
    "IVFPQIndex",
    "Index",
    "InvalidArgument",
    "Metric",
    "MultiVectorIndex",
    "NotFound",
    "Point",
    "QuiverError",
    "SearchArrays",
    "SearchParams",
    "ShardUnavailable",
    "VectorField",
    "__version__",
    "connect",
    "index",
    "load_index",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quiver' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from quiver.client import AsyncClient, AuthError, Client
    from quiver.engine.bitset import Bitset
    from quiver.engine.collection import Collection, VectorField
    from quiver.engine.database import Database, connect
    from quiver.engine.errors import (
        CorruptData,
        DuplicateId,
        InvalidArgument,
        NotFound,
        QuiverError,
        ShardUnavailable,
    )
    from quiver.engine.hits import SearchArrays
    from quiver.engine.index import FlatIndex, HNSWIndex, Index, index, load_index
    from quiver.engine.metric import Metric
    from quiver.engine.muvera import FDEConfig, MultiVectorIndex
    from quiver.engine.params import SearchParams
    from quiver.engine.points import Point
