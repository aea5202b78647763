"""Segments: the unit of storage, indexing and deletion.

An *appendable* segment takes writes and is searched exactly (a FlatIndex over its rows). A
*sealed* segment is immutable on disk, memory-mapped on open, and carries an index (HNSW by
default) built over the rows of the appendable segment it replaced. Both keep external ids,
per-row versions (the WAL sequence number of the write), payloads with their indexes, and a
deletion bitmap; row positions are the internal ids every index and filter works with.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import orjson

from ..kernels.bitset import bitset_set_many
from .bitset import Bitset
from .errors import CorruptData
from .filters import Filter, compile_filter, estimate_selectivity, id_lookup_from_ids
from .index import FlatIndex, HNSWIndex
from .index.factory import index as make_index
from .payload import PayloadStore
from .persist import file_crc32, fsync_dir, load_arrays, save_arrays

SEGMENT_KIND = "segment"


class Segment:
    """Rows [0, n) of one segment; see the module docstring."""

    def __init__(self, seg_id: int, index, ext_ids: list, versions: np.ndarray,
                 payloads: PayloadStore, deleted: np.ndarray, sealed: bool,
                 path: Path | None = None):
        self.id = seg_id
        self.index = index
        self.ext_ids = ext_ids
        self.versions = versions
        self.payloads = payloads
        self.deleted = deleted
        self.n_deleted = int(Bitset(deleted, len(ext_ids)).count()) if len(ext_ids) else 0
        self.sealed = sealed
        self.frozen = sealed
        self.path = path
        self.dirty = False
        self.deleted_file: str | None = None
        """Name of the deletion bitmap the manifest points at (sealed segments)."""
        self.deleted_crc: int | None = None
        self.lock = threading.RLock()
        self._lookup = None

    # --- construction ---------------------------------------------------------------

    @classmethod
    def appendable(cls, seg_id: int, dim: int, metric: str, capacity: int = 0) -> Segment:
        """An empty segment for writes, with room for ``capacity`` rows reserved up front."""
        index = FlatIndex(dim, metric)
        index.reserve(capacity)
        return cls(seg_id, index, [], np.zeros(capacity, np.int64), PayloadStore(),
                   np.zeros((capacity + 63) >> 6, np.uint64), sealed=False)

    @property
    def n(self) -> int:
        return len(self.ext_ids)

    @property
    def live(self) -> int:
        return self.n - self.n_deleted

    def append(self, ext_ids: list, vectors: np.ndarray, payloads: list, seq: int) -> np.ndarray:
        """Append rows (the caller holds the collection's write lock)."""
        with self.lock:
            start = self.n
            pos = np.arange(start, start + len(ext_ids), dtype=np.int64)
            self.index.add(vectors, pos)
            self.payloads.extend(payloads, validated=True)
            need = (start + len(ext_ids) + 63) >> 6
            if need > self.deleted.shape[0]:
                words = np.zeros(max(need, 2 * self.deleted.shape[0]), np.uint64)
                words[: self.deleted.shape[0]] = self.deleted
                self.deleted = words
            if self.versions.shape[0] < start + len(ext_ids):
                grown = np.zeros(max(start + len(ext_ids), 2 * self.versions.shape[0]), np.int64)
                grown[:start] = self.versions[:start]
                self.versions = grown
            self.versions[start : start + len(ext_ids)] = seq
            self.ext_ids.extend(ext_ids)
            self._lookup = None
            return pos

    def mark_deleted(self, positions: np.ndarray) -> None:
        if positions.size == 0:
            return
        if not self.deleted.flags.writeable:
            self.deleted = self.deleted.copy()
        bitset_set_many(self.deleted, positions.astype(np.int64))
        self.n_deleted = Bitset(self.deleted, self.n).count()
        self.dirty = True

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """Float32 vectors of rows (normalised for cosine)."""
        return self.index.reconstruct(positions)

    # --- filters & search -------------------------------------------------------------

    def id_lookup(self):
        if self._lookup is None:
            self._lookup = id_lookup_from_ids(self.ext_ids)
        return self._lookup

    def allowed(self, flt: Filter | None, n: int) -> Bitset | None:
        """Rows in [0, n) that are live and pass ``flt`` (None when every row qualifies)."""
        live_words = self.deleted[: (n + 63) >> 6]
        if flt is None:
            if self.n_deleted == 0:
                return None
            return Bitset(_mask_tail(~live_words, n), n)
        bits = compile_filter(flt, self.payloads, n, id_lookup=self.id_lookup())
        return Bitset(bits.words & ~live_words, n)

    def estimate(self, flt: Filter | None) -> float:
        if flt is None:
            return 1.0
        return estimate_selectivity(flt, self.payloads, self.n, id_lookup=self.id_lookup())

    def search(self, q: np.ndarray, k: int, flt: Filter | None, params: dict):
        """(scores, positions, info) for a batch of queries."""
        with self.lock if not self.sealed else contextlib.nullcontext():
            n = self.n
            if n == 0:
                return None
            allowed = self.allowed(flt, n)
            if allowed is not None and allowed.count() == 0:
                return None
            if isinstance(self.index, FlatIndex):
                scores, pos = self.index.search(q, k, allowed=allowed)
                info = {"strategy": "exact", "points": n,
                        "allowed": allowed.count() if allowed is not None else n}
            else:
                scores, pos, info = self.index.search(q, k, allowed=allowed, explain=True, **params)
            return scores, pos, info

    # --- sealing & persistence --------------------------------------------------------

    def build_sealed(self, seg_id: int, spec: str, dim: int, metric: str, path: Path,
                     rows: np.ndarray | None = None, **index_options) -> Segment:
        """A new sealed segment from rows of this one (all rows [0, n) by default), written
        to ``path``. Runs without the collection lock: the rows it reads never change."""
        n = self.n if rows is None else rows.shape[0]
        rows = np.arange(n, dtype=np.int64) if rows is None else rows
        vectors = self.vectors(rows)
        index = make_index(spec, dim, metric, **index_options)
        if len(rows):
            index.add(vectors, np.arange(len(rows), dtype=np.int64))
        ext_ids = [self.ext_ids[r] for r in rows.tolist()]
        versions = np.ascontiguousarray(self.versions[rows])
        payloads = PayloadStore()
        payloads.extend((self.payloads.get(r) for r in rows.tolist()), validated=True)
        for key, kind in self.payloads.indexes():
            payloads.create_index(key, kind)
        path.mkdir(parents=True, exist_ok=True)
        index.save(path / "index")
        payloads.save(path / "payload")
        blob = np.frombuffer(orjson.dumps(ext_ids), np.uint8)
        save_arrays(path, SEGMENT_KIND, {"id": seg_id, "n": n, "spec": spec},
                    {"ext_ids": blob, "versions": versions})
        deleted = np.zeros((n + 63) >> 6, np.uint64)
        seg = Segment(seg_id, index, ext_ids, versions, payloads, deleted, sealed=True, path=path)
        return seg

    @classmethod
    def load(cls, path: Path, deleted_file: str | None, deleted_crc: int | None) -> Segment:
        meta, arrays = load_arrays(path, SEGMENT_KIND)
        from .persist import read_manifest

        try:
            kind = orjson.loads((path / "index" / "manifest.json").read_bytes()).get("kind")
        except (OSError, orjson.JSONDecodeError):
            read_manifest(path / "index", "index")  # raises CorruptData naming the file
            raise
        index = (HNSWIndex if kind == "hnsw" else FlatIndex).load(path / "index")
        try:
            ext_ids = orjson.loads(bytes(arrays["ext_ids"]))
        except orjson.JSONDecodeError:
            raise CorruptData(f"{path / 'ext_ids.npy'}: ids are not valid JSON") from None
        payloads = PayloadStore.load(path / "payload")
        n = meta["n"]
        if len(ext_ids) != n or len(payloads) != n:
            raise CorruptData(f"{path}: ids/payload counts disagree with the manifest ({n})")
        if deleted_file:
            dpath = path / deleted_file
            if not dpath.exists():
                raise CorruptData(f"{dpath}: deletion bitmap missing")
            if deleted_crc is not None and file_crc32(dpath) != deleted_crc:
                raise CorruptData(f"{dpath}: checksum mismatch (file damaged)")
            deleted = np.load(dpath, allow_pickle=False).astype(np.uint64)
            if deleted.shape[0] != (n + 63) >> 6:
                raise CorruptData(f"{dpath}: wrong size for {n} rows")
        else:
            deleted = np.zeros((n + 63) >> 6, np.uint64)
        return cls(meta["id"], index, ext_ids, np.asarray(arrays["versions"]), payloads,
                   deleted, sealed=True, path=path)

    def write_deleted(self, seq: int) -> tuple[str, int]:
        """Persist the deletion bitmap as a new file (sealed files are never rewritten)."""
        name = f"deleted-{seq:020d}.npy"
        k = 0
        while (self.path / name).exists():  # a checkpoint at the same seq: the manifest may
            k += 1                          # still name the old file, so never replace it
            name = f"deleted-{seq:020d}-{k}.npy"
        target = self.path / name
        tmp = target.with_name(name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(self.deleted[: (self.n + 63) >> 6]), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_dir(self.path)
        self.dirty = False
        return name, file_crc32(target)

    def memory_usage(self) -> int:
        usage = self.index.memory_usage()
        return int(sum(usage.values()))


def _mask_tail(words: np.ndarray, n: int) -> np.ndarray:
    words = words.copy()
    if n & 63 and words.shape[0]:
        words[-1] &= np.uint64((1 << (n & 63)) - 1)
    return words

