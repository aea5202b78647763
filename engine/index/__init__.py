"""Search structures over codecs: Flat (exact) and HNSW."""

from .base import Index
from .factory import index
from .flat import FlatIndex

__all__ = ["FlatIndex", "Index", "index"]
