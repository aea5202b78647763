"""The embedded database: a directory of collections."""

from __future__ import annotations

import re
import shutil
import tarfile
import threading
from pathlib import Path

from .collection import Collection, CollectionConfig, VectorField
from .errors import AlreadyExists, InvalidArgument, NotFound
from .persist import atomic_write_bytes
from .points import DEFAULT_FIELD, check_field_name

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Database:
    """``quiver.connect(path)``: collections live in ``path/collections/<name>/``."""

    def __init__(self, path: str | Path, optimizer: bool = True):
        self.path = Path(path)
        (self.path / "collections").mkdir(parents=True, exist_ok=True)
        self._optimizer = optimizer
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgument(
                f"name: {name!r} is not a valid collection name (1-64 of A-Z a-z 0-9 _ -)")
        return self.path / "collections" / name

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine",
                          index: str = "HNSW16,F32", *, vectors: dict | None = None,
                          ef_construction: int = 200, segment_size: int = 50_000,
                          fsync: str = "batch", exist_ok: bool = False) -> Collection:
        """Create a collection with one unnamed vector (``dim``, ``metric``, ``index`` spec
        such as "HNSW16,F32", "HNSW16,LVQ8", "Flat"), or with named vector fields:
        ``vectors={"text": {"dim": 384, "metric": "cosine", "index": "HNSW16,F32"}, ...}``."""
        d = self._dir(name)
        if (dim is None) == (vectors is None):
            raise InvalidArgument("pass dim (one unnamed vector) or vectors (named fields), not both"
                                  if dim is not None else "dim or vectors: one is required")
        if vectors is not None:
            if not isinstance(vectors, dict) or not vectors:
                raise InvalidArgument("vectors: expected a non-empty dict of fields by name")
            fields = {check_field_name(n): VectorField.parse(f, f"vectors[{n!r}]")
                      for n, f in vectors.items()}
        else:
            fields = {DEFAULT_FIELD: VectorField.parse(
                {"dim": dim, "metric": metric, "index": index}, "")}
        if fsync not in ("batch", "always", "never"):
            raise InvalidArgument(f"fsync: {fsync!r}, expected 'batch', 'always' or 'never'")
        if isinstance(segment_size, bool) or not isinstance(segment_size, int) or segment_size < 1:
            raise InvalidArgument(f"segment_size: expected a positive integer, got {segment_size!r}")
        if (isinstance(ef_construction, bool) or not isinstance(ef_construction, int)
                or ef_construction < 1):
            raise InvalidArgument(f"ef_construction: expected a positive integer, got "
                                  f"{ef_construction!r}")
        with self._lock:
            if (d / "config.json").exists():
                if exist_ok:
                    return self._get(name)
                raise AlreadyExists(f"name: collection {name!r} already exists")
            d.mkdir(parents=True, exist_ok=True)
            config = CollectionConfig(vectors=fields, ef_construction=ef_construction,
                                      segment_size=segment_size, fsync=fsync)
            atomic_write_bytes(d / "config.json", config.to_json())
            return self._get(name)

    def _get(self, name: str) -> Collection:
        col = self._open.get(name)
        if col is None:
            d = self._dir(name)
            if not (d / "config.json").exists():
                raise NotFound(f"collection {name!r} does not exist")
            config = CollectionConfig.from_json((d / "config.json").read_bytes(), d / "config.json")
            col = Collection(d, config, name, optimizer=self._optimizer)
            self._open[name] = col
        return col

    def get_collection(self, name: str) -> Collection:
        with self._lock:
            return self._get(name)

    def list_collections(self) -> list[str]:
        root = self.path / "collections"
        return sorted(p.name for p in root.iterdir() if (p / "config.json").exists())

    def drop_collection(self, name: str) -> None:
        d = self._dir(name)
        with self._lock:
            if not (d / "config.json").exists():
                raise NotFound(f"collection {name!r} does not exist")
            col = self._open.pop(name, None)
            if col is not None:
                col.close()
            shutil.rmtree(d)

    def restore_snapshot(self, snapshot: str | Path, name: str) -> Collection:
        """Create collection ``name`` from a snapshot archive (it must not exist yet)."""
        d = self._dir(name)
        with self._lock:
            if d.exists():
                raise AlreadyExists(f"name: collection {name!r} already exists")
            tmp = d.with_name(d.name + ".restoring")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                with tarfile.open(snapshot) as tar:
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise InvalidArgument(f"snapshot: cannot read {snapshot} ({exc})") from None
            if not (tmp / "config.json").exists():
                shutil.rmtree(tmp, ignore_errors=True)
                raise InvalidArgument(f"snapshot: {snapshot} is not a Quiver collection snapshot")
            tmp.rename(d)
            return self._get(name)

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(path: str | Path = "./quiver-data", optimizer: bool = True) -> Database:
    """Open (creating if needed) the embedded database at ``path``."""
    return Database(path, optimizer=optimizer)
