"""The embedded database: a directory of collections."""

from __future__ import annotations

import logging
import re
import shutil
import tarfile
import threading
from pathlib import Path

from .collection import Collection, CollectionConfig, VectorField, write_manifest
from .errors import AlreadyExists, CorruptData, InvalidArgument, NotFound, QuiverError, ReadOnly
from .lock import DirectoryLock
from .persist import fsync_dir, read_metadata, write_metadata
from .points import DEFAULT_FIELD, check_field_name

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Database:
    """``quiver.connect(path)``: collections live in ``path/collections/<name>/``.

    The directory is held with an OS lock while the Database is open: one writer at a time
    (a second opener gets ``DirectoryLocked`` naming the holder's pid). ``read_only=True``
    shares the lock with other read-only openers, is refused while a writer holds it, and
    serves reads of the sealed state (the write-ahead log tail is not replayed: that would
    take the writer's lock). ``on_corrupt="truncate"`` opens collections whose log has a
    damaged record by cutting the log there (what ``quiver repair`` reports first)."""

    def __init__(self, path: str | Path, optimizer: bool = True, *, read_only: bool = False,
                 on_corrupt: str = "raise"):
        self.path = Path(path)
        if on_corrupt not in ("raise", "truncate"):
            raise InvalidArgument(f"on_corrupt: {on_corrupt!r}, expected 'raise' or 'truncate'")
        if read_only:
            if not (self.path / "collections").is_dir():
                raise NotFound(f"{self.path}: no Quiver data directory here to open read-only")
        else:
            (self.path / "collections").mkdir(parents=True, exist_ok=True)
        self._dir_lock = DirectoryLock(self.path, shared=read_only)
        self.read_only = read_only
        if not read_only:
            self._remove_temporaries()
        self._on_corrupt = on_corrupt
        self._optimizer = optimizer and not read_only
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()
        self._aliases = self._load_aliases()

    def _remove_temporaries(self) -> None:
        """Half-written snapshot archives and restores a crash (or a full disk) left behind:
        never data, only space. Collections clean their own."""
        for tmp in [*(self.path / "snapshots").glob("**/*.tar.tmp"),
                    *(self.path / "snapshots").glob(".upload-*.tar")]:
            log.warning("removing %s (an interrupted snapshot or upload)", tmp)
            tmp.unlink(missing_ok=True)
        for d in (self.path / "collections").glob("*.restoring"):
            log.warning("removing %s (an interrupted snapshot restore)", d)
            shutil.rmtree(d, ignore_errors=True)

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly(f"{self.path}: opened read-only")

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
        self._dir(name)
        self._check_writable()
        config = collection_config(dim, metric, index, vectors=vectors,
                                   ef_construction=ef_construction, segment_size=segment_size,
                                   fsync=fsync)
        return self._create(name, config, exist_ok)

    def _create(self, name: str, config: CollectionConfig, exist_ok: bool,
                extra: dict[str, dict] | None = None) -> Collection:
        """Write the new collection's config (and ``extra`` metadata files by name) and open
        it; an existing one is returned with ``exist_ok``."""
        d = self._dir(name)
        with self._lock:
            if (d / "config.json").exists():
                if exist_ok:
                    return self._get(name)
                raise AlreadyExists(f"name: collection {name!r} already exists")
            if name in self._aliases:
                raise AlreadyExists(f"name: {name!r} is an alias of collection "
                                    f"{self._aliases[name]!r}")
            d.mkdir(parents=True, exist_ok=True)
            for file, obj in (extra or {}).items():
                write_metadata(d / file, obj)
            write_manifest(d, 0, 1, [])
            config.save(d / "config.json")  # last: its presence is what makes a collection
            return self._get(name)

    def _get(self, name: str) -> Collection:
        col = self._open.get(name)
        if col is None:
            d = self._dir(name)
            if not (d / "config.json").exists():
                raise NotFound(f"collection {name!r} does not exist")
            config = CollectionConfig.load(d / "config.json")
            col = Collection(d, config, name, optimizer=self._optimizer,
                             read_only=self.read_only, on_corrupt=self._on_corrupt)
            self._open[name] = col
        return col

    def get_collection(self, name: str) -> Collection:
        """The collection ``name``, or the one an alias of that name points to."""
        with self._lock:
            if name not in self._open and name in self._aliases:
                name = self._aliases[name]
            return self._get(name)

    # --- aliases: other names for a collection (Qdrant's), so a collection can be rebuilt
    # under a new name and swapped in atomically ---------------------------------------------

    def _aliases_path(self) -> Path:
        return self.path / "aliases.json"

    def _load_aliases(self) -> dict[str, str]:
        path = self._aliases_path()
        if not path.exists():
            return {}
        aliases = read_metadata(path).get("aliases")
        if not isinstance(aliases, dict) or not all(
                isinstance(a, str) and isinstance(c, str) for a, c in aliases.items()):
            raise CorruptData(f"{path}: malformed aliases")
        return aliases

    def aliases(self) -> dict[str, str]:
        """Every alias and the collection it names."""
        with self._lock:
            return dict(self._aliases)

    def update_aliases(self, actions: list[tuple[str, ...]]) -> None:
        """Apply ``("create", alias, collection)``, ``("delete", alias)`` and ``("rename",
        old, new)`` in order, all or none (one atomic write): deleting an alias and creating
        it for another collection in one call swaps it with no moment without it."""
        self._check_writable()
        with self._lock:
            new = dict(self._aliases)
            for i, action in enumerate(actions):
                where = f"actions[{i}]"
                op, *names = action
                for n in names:
                    self._dir(n)  # a valid name
                if op == "create" and len(names) == 2:
                    alias, target = names
                    if not (self._dir(target) / "config.json").exists():
                        raise NotFound(f"{where}: collection {target!r} does not exist")
                    if alias in new:
                        raise AlreadyExists(f"{where}: alias {alias!r} already exists")
                    if (self._dir(alias) / "config.json").exists():
                        raise AlreadyExists(f"{where}: {alias!r} is a collection's name")
                    new[alias] = target
                elif op == "delete" and len(names) == 1:
                    if new.pop(names[0], None) is None:
                        raise NotFound(f"{where}: alias {names[0]!r} does not exist")
                elif op == "rename" and len(names) == 2:
                    old, alias = names
                    if old not in new:
                        raise NotFound(f"{where}: alias {old!r} does not exist")
                    if alias in new or (self._dir(alias) / "config.json").exists():
                        raise AlreadyExists(f"{where}: {alias!r} is taken")
                    new[alias] = new.pop(old)
                else:
                    raise InvalidArgument(f"{where}: expected ('create', alias, collection), "
                                          f"('delete', alias) or ('rename', old, new)")
            self._save_aliases(new)

    def _save_aliases(self, aliases: dict[str, str]) -> None:
        """Persist, then adopt: a failed write changes nothing. The caller holds the lock."""
        write_metadata(self._aliases_path(), {"aliases": aliases})
        self._aliases = aliases

    def list_collections(self) -> list[str]:
        root = self.path / "collections"
        return sorted(p.name for p in root.iterdir()
                      if _NAME.match(p.name) and (p / "config.json").exists())

    def drop_collection(self, name: str) -> None:
        d = self._dir(name)
        self._check_writable()
        with self._lock:
            if not (d / "config.json").exists():
                raise NotFound(f"collection {name!r} does not exist")
            col = self._open.pop(name, None)
            if col is not None:
                col.close()
            shutil.rmtree(d)
            if name in self._aliases.values():  # its aliases go with it
                self._save_aliases({a: c for a, c in self._aliases.items() if c != name})

    def restore_snapshot(self, snapshot: str | Path, name: str) -> Collection:
        """Create collection ``name`` from a snapshot archive (it must not exist yet)."""
        d = self._dir(name)
        self._check_writable()
        with self._lock:
            if d.exists():
                raise AlreadyExists(f"name: collection {name!r} already exists")
            tmp = d.with_name(d.name + ".restoring")
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                with tarfile.open(snapshot) as tar:
                    tar.extractall(tmp, filter="data")
                if not (tmp / "config.json").exists():
                    raise InvalidArgument(f"snapshot: {snapshot} is not a Quiver collection snapshot")
                # open it where it lies first: a damaged archive must not become a collection
                Collection(tmp, CollectionConfig.load(tmp / "config.json"), name,
                           optimizer=False).close()
            except (tarfile.TarError, OSError, QuiverError) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(exc, InvalidArgument):
                    raise
                raise InvalidArgument(f"snapshot: cannot restore {Path(snapshot).name} "
                                      f"({exc})") from None
            tmp.rename(d)
            fsync_dir(d.parent)
            return self._get(name)

    def close(self) -> None:
        with self._lock:
            for col in self._open.values():
                col.close()
            self._open.clear()
            self._dir_lock.release()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def collection_config(dim: int | None = None, metric: str = "cosine", index: str = "HNSW16,F32",
                      *, vectors: dict | None = None, ef_construction: int = 200,
                      segment_size: int = 50_000, fsync: str = "batch") -> CollectionConfig:
    """The checked config of a new collection (``Database.create_collection``'s arguments)."""
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
    return CollectionConfig(vectors=fields, ef_construction=ef_construction,
                            segment_size=segment_size, fsync=fsync)


def connect(path: str | Path = "./quiver-data", optimizer: bool = True, *,
            read_only: bool = False, on_corrupt: str = "raise", cluster: str | None = None,
            **cluster_options) -> Database:
    """Open (creating if needed) the embedded database at ``path``; see ``Database``.

    ``cluster="auto"`` (or ``"local"``, or a Ray address) opens it on a Ray cluster instead:
    ``create_collection(..., shards=N, replicas=R)`` then spreads a collection over Ray
    actors, with the same collection API (``engine.cluster.ClusterDatabase``)."""
    if cluster is None:
        if cluster_options:
            raise InvalidArgument(f"{', '.join(cluster_options)}: only with cluster=...")
        return Database(path, optimizer=optimizer, read_only=read_only, on_corrupt=on_corrupt)
    if read_only or on_corrupt != "raise":
        raise InvalidArgument("read_only, on_corrupt: not available with cluster=...")
    from .cluster import ClusterDatabase

    return ClusterDatabase(path, cluster, optimizer=optimizer, **cluster_options)
