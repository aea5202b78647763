"""Search structures over codecs: Flat (exact) and HNSW."""

from .base import Index
from .flat import FlatIndex
from .hnsw import HNSWIndex
from .registry import index, load_index

__all__ = ["FlatIndex", "HNSWIndex", "Index", "index", "load_index"]
