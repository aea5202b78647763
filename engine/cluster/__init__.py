"""Scale-out on Ray: collections sharded and replicated over Ray actors, behind the embedded
Collection's API (``quiver.connect(path, cluster="auto")``). Importing this package does not
import Ray; connecting does."""

from .collection import PartialResults, PartialSearchArrays, ShardedCollection
from .database import ClusterDatabase, start_ray

__all__ = ["ClusterDatabase", "PartialResults", "PartialSearchArrays", "ShardedCollection",
           "start_ray"]
