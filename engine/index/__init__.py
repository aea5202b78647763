"""Search structures over codecs: Flat (exact), HNSW and IVF."""

from .base import Index
from .flat import FlatIndex
from .hnsw import HNSWIndex
from .ivf import IVFIndex
from .registry import index, load_index

__all__ = ["FlatIndex", "HNSWIndex", "IVFIndex", "Index", "index", "load_index"]
