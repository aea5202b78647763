"""Search structures over codecs: Flat (exact) and HNSW."""

from .base import Index
from .factory import index
from .flat import FlatIndex
from .hnsw import HNSWIndex

__all__ = ["FlatIndex", "HNSWIndex", "Index", "index"]
