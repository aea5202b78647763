"""One replica of one shard: the Ray actor that owns an embedded collection on its node's disk.

A replica applies its shard's writes strictly in the order of the shard's sequence numbers
(the driver numbers them), so every replica of a shard holds the same points after the same
writes. Each write also carries the driver's *epoch* (one per start of the shard): numbers a
replica applied in an older epoch beyond where the next epoch started were reused by a later
driver, and such a replica copies a peer instead of trusting its log.

The last applied number and its epoch are kept beside the data (``applied_seq``), written
after the collection's own write-ahead log has the write: after a crash they can only lag (a
write then replays, and every write is idempotent when replayed in order), never lead.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..collection import CollectionConfig
from ..database import Database
from ..errors import InvalidArgument, NotFound, QuiverError

SEQ_FILE = "applied_seq"
ORDER_WAIT_S = 10.0
"""How long a write waits for the writes numbered before it (they are in flight from the
same driver) before the replica reports a gap and the driver repairs it."""

READS = frozenset({"search", "search_arrays", "get", "count", "scroll", "order_kinds", "info",
                   "wait_indexed", "facet", "sample"})
WRITES = frozenset({"upsert_validated", "update_validated", "delete", "set_payload",
                    "overwrite_payload", "delete_payload", "clear_payload", "delete_vectors",
                    "create_payload_index", "delete_payload_index", "train_queries", "noop"})
REFUSALS = (InvalidArgument, NotFound)
"""Errors that depend only on the request and the points (the same on every replica): a
write refused so still counts as applied. Any other error means this replica broke."""


class SequenceGap(QuiverError):
    """A write arrived before one numbered earlier, which never came: the replica is behind."""


class ShardReplica:
    """``root`` is this replica's own data directory (a Quiver database holding one
    collection, ``name``); ``config`` the collection's config as ``CollectionConfig.to_dict``
    gives it, used when the directory is new (a first start, or a node that lost its disk)."""

    def __init__(self, root: str, name: str, config: dict[str, Any], optimizer: bool = True):
        self.root = Path(root)
        self.name = name
        self.db = Database(self.root, optimizer=optimizer)
        for leftover in [*self.root.glob(".catchup-*"), *self.root.glob(".restore-*")]:
            shutil.rmtree(leftover, ignore_errors=True)  # a catch-up a crash interrupted
        self.col = self.db._create(name, CollectionConfig.from_dict(config, "config"),
                                   exist_ok=True)
        self._cond = threading.Condition()
        self._seq_fd = os.open(self.root / SEQ_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        raw = os.pread(self._seq_fd, 16, 0)
        self.applied, self.epoch = (struct.unpack("<qq", raw) if len(raw) == 16 else
                                    (struct.unpack("<q", raw)[0], 0) if len(raw) == 8 else (0, 0))

    # --- state -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the driver needs to route to this replica: the last write it applied, that
        write's epoch, and where it runs."""
        import ray

        return {"applied": self.applied, "epoch": self.epoch, "pid": os.getpid(),
                "node": ray.util.get_node_ip_address()}

    def _advance(self, seq: int, epoch: int) -> None:
        self.applied, self.epoch = seq, epoch
        os.pwrite(self._seq_fd, struct.pack("<qq", seq, epoch), 0)  # may lag, never lead
        self._cond.notify_all()

    # --- writes ----------------------------------------------------------------------

    def apply(self, seq: int, epoch: int, op: bytes) -> tuple[str, Any]:
        """Apply write ``seq`` of ``epoch`` (a pickled ``(method, args, kwargs)``) after every
        write before it. Returns ``("ok", result)``, ``("dup", None)`` for one already
        applied, or ``("error", exc)`` for input the collection refused (``REFUSALS``: the
        same on every replica, so it still counts as applied). Anything else is raised: this
        replica then no longer matches the others and the driver repairs it."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.applied >= seq - 1, ORDER_WAIT_S):
                raise SequenceGap(f"replica {self.root}: write {seq} arrived, but the last "
                                  f"applied is {self.applied}")
            if self.applied >= seq:
                return "dup", None
            method, args, kwargs = pickle.loads(op)
            if method not in WRITES:
                raise InvalidArgument(f"{method!r} is not a replica write")
            try:
                result = None if method == "noop" else getattr(self.col, method)(*args, **kwargs)
            except REFUSALS as exc:
                self._advance(seq, epoch)
                return "error", exc
            self._advance(seq, epoch)
            return "ok", result

    # --- reads -----------------------------------------------------------------------

    def read(self, min_seq: int, request: bytes) -> bytes:
        """A read (a pickled ``(method, args, kwargs)``; its answer pickled too: Ray's own
        serialisation of a small NumPy query costs more than the search) once this replica
        has applied write ``min_seq`` (the shard's last acknowledged one), so a caller reads
        its own writes whichever replica answers."""
        method, args, kwargs = pickle.loads(request)
        if method not in READS:
            raise InvalidArgument(f"{method!r} is not a replica read")
        if self.applied < min_seq:
            with self._cond:
                if not self._cond.wait_for(lambda: self.applied >= min_seq, ORDER_WAIT_S):
                    raise SequenceGap(f"replica {self.root}: at write {self.applied}, the read "
                                      f"needs {min_seq}")
        return pickle.dumps(getattr(self.col, method)(*args, **kwargs), protocol=5)

    def flush(self, timeout: float) -> int:
        self.col.flush(timeout)
        return self.applied

    # --- catching up -----------------------------------------------------------------

    def snapshot(self) -> tuple[bytes, int, int]:
        """The collection as a snapshot archive, and the write (number, epoch) it holds up
        to: what a replica that fell too far behind restores from. (The collection itself
        holds its writes while it archives; this lock only ties the number to the archive.)"""
        with self._cond:
            tmp = Path(tempfile.mkdtemp(prefix=".catchup-", dir=self.root))
            try:
                path = self.col.snapshot(tmp)
                return path.read_bytes(), self.applied, self.epoch
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def restore(self, archive: bytes, seq: int, epoch: int) -> int:
        """Replace this replica's collection with another replica's snapshot at write
        ``seq`` of ``epoch``. The applied number drops to 0 first, so a crash half-way leaves
        a replica that is known to be behind, never one that looks current."""
        with self._cond:
            self._advance(0, 0)
            tmp = Path(tempfile.mkdtemp(prefix=".restore-", dir=self.root))
            try:
                archive_path = tmp / "snapshot.tar"
                archive_path.write_bytes(archive)
                self.db.drop_collection(self.name)
                self.col = self.db.restore_snapshot(archive_path, self.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._advance(seq, epoch)
            return seq

    def drop(self) -> None:
        """Delete this replica's data (its collection was dropped)."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        with self._cond:
            self.db.close()
            if self._seq_fd >= 0:
                os.close(self._seq_fd)
                self._seq_fd = -1
