"""Search structures over codecs: Flat (exact), HNSW, IVF and IVF-PQ; faiss on a GPU."""

from .base import Index
from .flat import FlatIndex
from .gpu import FaissIndex
from .hnsw import HNSWIndex
from .ivf import IVFIndex
from .ivfpq import IVFPQIndex
from .registry import index, load_index

__all__ = ["FaissIndex", "FlatIndex", "HNSWIndex", "IVFIndex", "IVFPQIndex", "Index", "index", "load_index"]
