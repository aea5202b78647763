"""``quiver.connect(path, cluster=...)``: a database whose collections may be sharded and
replicated over a Ray cluster, with the embedded database's methods.

Layout under ``path`` (the driver's disk; the replica directories are on each replica's
node, at the same path there):

    collections/<name>/config.json       the collection's config (as embedded)
    collections/<name>/cluster.json      shards, replicas, write quorum, routing, placement
    collections/<name>/shards/<s>/replica-<r>/   one replica: a Quiver data directory
                                                 holding collection <name> and applied_seq

Ray owns membership, scheduling, transport and restarts: every replica is an actor with
unlimited restarts, pinned to the node that holds its directory while that node is alive.
A collection created without ``shards`` is an ordinary embedded one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

from ..collection import Collection, CollectionConfig
from ..database import Database, collection_config
from ..errors import AlreadyExists, InvalidArgument, NotFound, QuiverError, ShardUnavailable
from ..persist import read_metadata, write_metadata
from .collection import SNAPSHOT_MANIFEST, ShardedCollection
from .replica import ShardReplica
from .routing import SCHEME
from .shard import Replica, Shard

log = logging.getLogger(__name__)
LAYOUT = "cluster.json"
_ENV = ("NUMBA_CACHE_DIR", "NUMBA_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT",
        "QUIVER_WARMUP")
"""Variables the replica processes should see as the driver does (a remote cluster's
workers do not inherit the driver's environment)."""


def start_ray(cluster: str, num_cpus: int | None = None) -> bool:
    """Connect to (or start) Ray: ``"auto"`` joins the cluster this machine belongs to, or
    starts a local one; ``"local"`` always starts one here; anything else is an address
    (``"ray://head:10001"``, ``"10.0.0.5:6379"``). True when this call started Ray."""
    try:
        import ray
    except ImportError:
        raise InvalidArgument("cluster: Ray is not installed; pip install 'quiver[ray]'") from None
    if not isinstance(cluster, str) or not cluster:
        raise InvalidArgument(f"cluster: expected 'auto', 'local' or a Ray address, got "
                              f"{cluster!r}")
    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in _ENV if k in os.environ}
    common = {"runtime_env": {"env_vars": env} if env else None, "log_to_driver": False,
              "configure_logging": False}
    if cluster != "local":
        try:
            ray.init(address=cluster, **common)
            return True
        except ConnectionError:
            if cluster != "auto":
                raise InvalidArgument(f"cluster: no Ray cluster answers at {cluster!r}") from None
    ray.init(num_cpus=num_cpus, include_dashboard=False, **common)
    return True


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name}: expected a positive integer, got {value!r}")
    return value


class ClusterDatabase(Database):
    """A ``Database`` whose ``create_collection`` also takes ``shards``, ``replicas`` and
    ``write_quorum``. ``timeout``: seconds a replica may take to apply a write or to answer
    a liveness probe before it counts as down (and to come back before a write waiting for it
    fails). ``read_timeout``: seconds a search, snapshot or catch-up copy may take (a slow
    answer is a TimeoutError, not a replica down). ``tail_bytes``: how much of each shard's
    latest writes the driver keeps for replicas that missed them; one that missed more copies
    a live replica's snapshot."""

    def __init__(self, path: str | Path, cluster: str = "auto", optimizer: bool = True, *,
                 num_cpus: int | None = None, timeout: float = 60.0,
                 read_timeout: float = 600.0, tail_bytes: int = 128 << 20):
        for name, value in (("timeout", timeout), ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"{name}: expected a positive number of seconds, got "
                                      f"{value!r}")
        self.tail_bytes = _positive(tail_bytes, "tail_bytes")
        self.timeout, self.read_timeout = float(timeout), float(read_timeout)
        self._optimizer_flag = optimizer
        self._started_ray = start_ray(cluster, num_cpus)
        try:
            super().__init__(path, optimizer=optimizer)
        except BaseException:  # a held directory: leave no Ray of ours running
            if self._started_ray:
                import ray

                ray.shutdown()
            raise

    # --- collections -----------------------------------------------------------------

    def create_collection(self, name: str, dim: int | None = None, metric: str = "cosine",
                          index: str = "HNSW16,F32", *, vectors: dict | None = None,
                          ef_construction: int = 200, segment_size: int = 50_000,
                          fsync: str = "batch", exist_ok: bool = False,
                          shards: int | None = None, replicas: int = 1,
                          write_quorum: int | None = None) -> Collection | ShardedCollection:
        """As ``Database.create_collection``; with ``shards`` the collection is split into
        that many shards of ``replicas`` copies each (Ray actors), and a write is
        acknowledged once ``write_quorum`` copies of its shard have it (default: all)."""
        self._dir(name)
        self._check_writable()
        config = collection_config(dim, metric, index, vectors=vectors,
                                   ef_construction=ef_construction, segment_size=segment_size,
                                   fsync=fsync)
        if shards is None:
            if replicas != 1 or write_quorum is not None:
                raise InvalidArgument("replicas, write_quorum: only for a sharded collection "
                                      "(pass shards)")
            return self._create(name, config, exist_ok)
        layout = {"shards": _positive(shards, "shards"),
                  "replicas": _positive(replicas, "replicas"),
                  "write_quorum": _positive(replicas if write_quorum is None else write_quorum,
                                            "write_quorum"),
                  "routing": SCHEME, "placement": {}, "state": {}}
        if layout["write_quorum"] > layout["replicas"]:
            raise InvalidArgument(f"write_quorum: {write_quorum} exceeds replicas ({replicas})")
        return self._create(name, config, exist_ok, extra={LAYOUT: layout})

    def _get(self, name: str) -> Collection | ShardedCollection:
        col = self._open.get(name)
        if col is not None:
            return col
        d = self._dir(name)
        if not (d / LAYOUT).exists():
            return super()._get(name)
        if not (d / "config.json").exists():
            raise NotFound(f"collection {name!r} does not exist")
        config = CollectionConfig.load(d / "config.json")
        layout = read_metadata(d / LAYOUT)
        if layout.get("routing") != SCHEME:
            raise InvalidArgument(f"{d / LAYOUT}: routing {layout.get('routing')!r} is not "
                                  f"{SCHEME!r} (written by another Quiver version)")
        shards: list[Shard] = []
        try:
            for s in range(layout["shards"]):
                shards.append(self._start_shard(d, name, config, layout, s))
            write_metadata(d / LAYOUT, layout)  # the new epochs, where the replicas run now
        except BaseException:
            self._stop_shards(shards)
            raise
        col = ShardedCollection(d, config, name, shards)
        self._open[name] = col
        return col

    def _start_shard(self, d: Path, name: str, config: CollectionConfig, layout: dict,
                     s: int) -> Shard:
        import ray

        alive = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}
        actor_class = ray.remote(concurrency_groups={"writes": 8, "reads": 32})(ShardReplica)
        replicas = []
        for r in range(layout["replicas"]):
            key = f"{s}/{r}"
            options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0,
                                       "max_concurrency": 4, "num_cpus": 0}
            node = layout["placement"].get(key)
            if node in alive:  # its directory is on that node's disk
                options["resources"] = {f"node:{node}": 0.001}
            else:
                if node is not None:
                    log.warning("collection %s: node %s of replica %s is gone; the replica "
                                "starts elsewhere and copies a live replica", name, node, key)
                options["scheduling_strategy"] = "SPREAD"
            root = d / "shards" / str(s) / f"replica-{r}"
            actor = actor_class.options(**options).remote(str(root), name, config.to_dict(),
                                                          self._optimizer_flag)
            replicas.append(Replica(s, r, actor))
        shard = Shard(name, s, replicas, write_quorum=layout["write_quorum"],
                      tail_bytes=self.tail_bytes, timeout=self.timeout,
                      read_timeout=self.read_timeout,
                      state=layout.setdefault("state", {}).setdefault(str(s), {}))
        try:
            shard.start()
        except BaseException:
            self._stop_shards([shard])
            raise
        for replica in replicas:
            if replica.node is not None:
                layout["placement"][f"{s}/{replica.index}"] = replica.node
        return shard

    def drop_collection(self, name: str) -> None:
        """Drop a collection; a sharded one's replicas delete their own directories (on
        their nodes' disks). One whose shards cannot start is deleted here all the same
        (replica directories on other nodes' disks then stay behind, and say so in the log)."""
        self._check_writable()
        d = self._dir(name)
        if (d / LAYOUT).exists() and (d / "config.json").exists():
            try:
                col = self.get_collection(name)
            except ShardUnavailable as exc:
                log.warning("dropping %s without its shards' help: %s", name, exc)
            else:
                for shard in col.shards:
                    with contextlib.suppress(QuiverError, TimeoutError):
                        shard.each_replica("drop")
                self._stop_shards(col.shards)
                with self._lock:
                    self._open.pop(name, None)
        super().drop_collection(name)

    def restore_snapshot(self, snapshot: str | Path, name: str, *,
                         replicas: int = 1) -> Collection | ShardedCollection:
        """A sharded snapshot (the archive ``ShardedCollection.snapshot`` wrote) becomes a
        collection with as many shards, ``replicas`` copies each, every copy restored from
        its shard's archive; an embedded snapshot restores as ``Database.restore_snapshot``
        does. A damaged archive leaves no collection behind."""
        self._check_writable()
        replicas = _positive(replicas, "replicas")
        path = Path(snapshot)
        try:
            with tarfile.open(path) as tar:
                member = tar.getmember(SNAPSHOT_MANIFEST) if SNAPSHOT_MANIFEST in \
                    tar.getnames() else None
                if member is None:
                    return super().restore_snapshot(path, name)
                manifest = json.loads(tar.extractfile(member).read())
                archives = [tar.extractfile(e["file"]).read() for e in manifest["shards"]]
                config = CollectionConfig.from_dict(manifest["config"], path)
        except (tarfile.TarError, OSError, KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"snapshot: cannot restore {path.name} ({exc})") from None
        if (self._dir(name) / "config.json").exists():
            raise AlreadyExists(f"name: collection {name!r} already exists")
        layout = {"shards": len(archives), "replicas": replicas, "write_quorum": replicas,
                  "routing": SCHEME, "placement": {}, "state": {}}
        col = self._create(name, config, False, extra={LAYOUT: layout})
        import ray

        try:
            for entry, archive, shard in zip(manifest["shards"], archives, col.shards,
                                             strict=True):
                ref = ray.put(archive)
                for replica in shard.replicas:
                    replica.applied = ray.get(replica.call("restore").remote(
                        ref, entry["seq"], shard.epoch), timeout=self.read_timeout)
                    replica.epoch = shard.epoch
                with shard.lock:
                    shard.seq = shard.acked = entry["seq"]
        except (ray.exceptions.RayError, QuiverError) as exc:
            self.drop_collection(name)
            cause = getattr(exc, "cause", None) or exc
            raise InvalidArgument(f"snapshot: cannot restore {path.name} ({cause})") from None
        return col

    # --- shutting down ---------------------------------------------------------------

    def _stop_shards(self, shards: list[Shard]) -> None:
        """Close and kill the shards' actors, recording each shard's last acknowledged write
        (a later start refuses replicas that lost it)."""
        import ray

        for shard in shards:
            shard.closed = True
            shard.state["acked"] = shard.acked
            for replica in shard.replicas:
                with contextlib.suppress(ray.exceptions.RayError):  # down: nothing to close
                    ray.get(replica.call("close").remote(), timeout=5.0)
                ray.kill(replica.actor, no_restart=True)

    def _stop(self, col: ShardedCollection) -> None:
        col.close()
        self._stop_shards(col.shards)
        layout = col.path / LAYOUT
        if layout.exists():
            obj = read_metadata(layout)
            obj["state"] = {str(s.index): s.state for s in col.shards}
            write_metadata(layout, obj)

    def close(self) -> None:
        with self._lock:
            for name, col in list(self._open.items()):
                if isinstance(col, ShardedCollection):
                    self._stop(col)
                    del self._open[name]
        super().close()
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
