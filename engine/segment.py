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
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import numpy as np
import orjson

from ..kernels.bitset import bitset_set_many
from . import planner
from .bitset import Bitset
from .errors import CorruptData, InvalidArgument
from .filters import Filter, compile_filter, estimate_selectivity, id_lookup_from_ids
from .index import FlatIndex, load_index
from .index.base import scores_from_distances
from .index.registry import index as make_index
from .params import SearchParams
from .payload import PayloadStore
from .persist import file_crc32, fsync_dir, load_arrays, save_arrays
from .tokens import TokenMatrices

SEGMENT_KIND = "segment"
DEFAULT_FIELD = ""
"""The unnamed vector field of a single-vector collection (Qdrant names it "" too)."""
_TRAIN_SAMPLE = 100_000
"""Rows a sealing segment trains a codec on at most (a fixed-seed sample beyond that)."""


def _grown(a: np.ndarray, n: int, fill) -> np.ndarray:
    if a.shape[0] >= n:
        return a
    out = np.full(max(n, 2 * a.shape[0], 64), fill, a.dtype)
    out[: a.shape[0]] = a
    return out


class FieldRows:
    """One vector field's index in a segment, and which segment rows it holds.

    While every row of the segment has the field (always, in single-vector collections), the
    index's positions are the segment's rows and ``rows`` is None: nothing is translated.
    Once a row lacks the field, ``rows`` maps index positions to segment rows and ``pos``
    segment rows to index positions (-1: the row has no vector in this field)."""

    def __init__(self, index, rows: np.ndarray | None = None, n_rows: int | None = None):
        self.index = index
        self.rows = rows
        self.pos: np.ndarray | None = None
        if rows is not None:
            self.pos = np.full(max(n_rows or 0, 1), -1, np.int64)
            self.pos[rows] = np.arange(rows.shape[0])

    @property
    def complete(self) -> bool:
        return self.rows is None

    def __len__(self) -> int:
        return len(self.index)

    def add(self, seg_start: int, batch_rows: np.ndarray | None, n_batch: int,
            vectors: np.ndarray) -> None:
        """Add the vectors of a batch appended at segment row ``seg_start``; ``batch_rows``:
        which of its ``n_batch`` points they belong to (None: all)."""
        m = vectors.shape[0]
        if self.rows is None and batch_rows is None and len(self.index) == seg_start:
            self.index.add(vectors, np.arange(seg_start, seg_start + m, dtype=np.int64))
            return
        if self.rows is None:  # the first row without this field: start translating
            k = len(self.index)
            self.rows = np.arange(k, dtype=np.int64)
            self.pos = np.arange(k, dtype=np.int64)
        seg_rows = seg_start + (np.arange(n_batch, dtype=np.int64) if batch_rows is None
                                else np.asarray(batch_rows, np.int64))
        first = len(self.index)
        self.rows = _grown(self.rows, first + m, -1)
        self.pos = _grown(self.pos, seg_start + n_batch, -1)
        if m:
            self.index.add(vectors, np.arange(first, first + m, dtype=np.int64))
        self.rows[first : first + m] = seg_rows
        self.pos[seg_rows] = np.arange(first, first + m)

    def positions_of(self, seg_rows: np.ndarray) -> np.ndarray:
        """Index positions of segment rows (-1 where the row has no vector here)."""
        if self.rows is None:
            return np.where(seg_rows < len(self.index), seg_rows, -1)
        pos = np.full(seg_rows.shape[0], -1, np.int64)
        inside = seg_rows < self.pos.shape[0]
        pos[inside] = self.pos[seg_rows[inside]]
        return pos

    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        """Segment rows of index positions (-1 stays -1)."""
        if self.rows is None:
            return positions
        return np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)

    def bits_for(self, allowed: Bitset | None, n_rows: int) -> Bitset | None:
        """``allowed`` over segment rows as a Bitset over this field's index positions."""
        n = len(self.index)
        if self.rows is None:
            return allowed
        if allowed is None:
            return None
        return Bitset.from_mask(allowed.to_mask()[self.rows[:n]])

    def memory_usage(self) -> dict[str, int]:
        usage = dict(self.index.memory_usage())
        if self.rows is not None:
            usage["field_rows"] = 8 * (len(self.index) + self.pos.shape[0])
        return usage


class Segment:
    """Rows [0, n) of one segment; see the module docstring."""

    def __init__(self, seg_id: int, fields: dict[str, FieldRows], ext_ids: list,
                 versions: np.ndarray, payloads: PayloadStore, deleted: np.ndarray, sealed: bool,
                 path: Path | None = None):
        self.id = seg_id
        self.fields = fields
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
    def appendable(cls, seg_id: int, fields: dict[str, FieldSpec],
                   capacity: int = 0) -> Segment:
        """An empty segment for writes, exact-searched, with room for ``capacity`` rows
        reserved up front (dense fields)."""
        rows = {}
        for name, spec in fields.items():
            if spec.kind == "multi":
                index = field_index(spec, exact=True)
            else:
                index = FlatIndex(spec.dim, spec.metric)
                index.reserve(capacity)
            rows[name] = FieldRows(index)
        return cls(seg_id, rows, [], np.zeros(capacity, np.int64), PayloadStore(),
                   np.zeros((capacity + 63) >> 6, np.uint64), sealed=False)

    @property
    def n(self) -> int:
        return len(self.ext_ids)

    @property
    def live(self) -> int:
        return self.n - self.n_deleted

    def append(self, ext_ids: list, vectors: dict[str, tuple[np.ndarray, np.ndarray | None]],
               payloads: list, seq: int) -> np.ndarray:
        """Append rows (the caller holds the collection's write lock). ``vectors``: field
        name -> (matrix, which of the points it belongs to, None for all)."""
        with self.lock:
            start = self.n
            m = len(ext_ids)
            pos = np.arange(start, start + m, dtype=np.int64)
            for name, (x, rows) in vectors.items():
                self.fields[name].add(start, rows, m, x)
            for name, f in self.fields.items():  # fields this batch leaves out
                if name not in vectors and m:
                    f.add(start, np.zeros(0, np.int64), m, _no_vectors(f.index))
            self.payloads.extend(payloads, validated=True)
            need = (start + m + 63) >> 6
            if need > self.deleted.shape[0]:
                words = np.zeros(max(need, 2 * self.deleted.shape[0]), np.uint64)
                words[: self.deleted.shape[0]] = self.deleted
                self.deleted = words
            if self.versions.shape[0] < start + m:
                grown = np.zeros(max(start + m, 2 * self.versions.shape[0]), np.int64)
                grown[:start] = self.versions[:start]
                self.versions = grown
            self.versions[start : start + m] = seq
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

    def vectors(self, positions: np.ndarray, field: str = DEFAULT_FIELD,
                ) -> tuple[np.ndarray, np.ndarray]:
        """Float32 vectors (normalised for cosine) of the rows that have ``field``, and the
        mask of which of ``positions`` those are."""
        f = self.fields[field]
        pos = f.positions_of(np.asarray(positions, np.int64))
        present = pos >= 0
        return f.index.reconstruct(pos[present]), present

    def field_vectors(self, positions: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Every field's vectors of rows, as ``append`` takes them (rows None: all have it)."""
        out = {}
        for name in self.fields:
            x, present = self.vectors(positions, name)
            out[name] = (x, None if present.all() else np.flatnonzero(present))
        return out

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
        bits = compile_filter(flt, self.payloads, n, id_lookup=self.id_lookup(),
                              vector_lookup=self.rows_with)
        return Bitset(bits.words & ~live_words, n)

    def rows_with(self, name: str) -> np.ndarray:
        """Rows that have a vector in field ``name`` (a filter's ``has_vector``)."""
        if name not in self.fields:
            known = ", ".join(repr(f) for f in self.fields if f) or "none (one unnamed vector)"
            raise InvalidArgument(f"has_vector: no vector field {name!r}; named fields: {known}")
        rows = np.arange(self.n, dtype=np.int64)
        return rows[self.fields[name].positions_of(rows) >= 0]

    def estimate(self, flt: Filter | None) -> float:
        if flt is None:
            return 1.0
        return estimate_selectivity(flt, self.payloads, self.n, id_lookup=self.id_lookup(),
                                    vector_lookup=self.rows_with)

    def search(self, q: np.ndarray, k: int, flt: Filter | None, params: SearchParams,
               field: str = DEFAULT_FIELD):
        """(scores, segment rows, plan info) for a batch of validated queries, or None when
        no row qualifies. The planner picks the strategy from the field index's cost model."""
        with self.lock if not self.sealed else contextlib.nullcontext():
            n = self.n
            f = self.fields[field]
            points = len(f.index)
            if n == 0 or points == 0:
                return None
            allowed = f.bits_for(self.allowed(flt, n), n)
            n_ok = allowed.count() if allowed is not None else points
            if n_ok == 0:
                return None
            plan = planner.choose(f.index, n_ok, points, k, params, flt is not None)
            dist, pos, info = f.index.search_positions(q, k, allowed, params, plan,
                                                       filtered=flt is not None)
            scores = scores_from_distances(f.index.metric, dist, pos)
            return scores, f.rows_of(pos), info

    # --- sealing & persistence --------------------------------------------------------

    def build_sealed(self, seg_id: int, specs: dict[str, FieldSpec], path: Path,
                     rows: np.ndarray | None = None) -> Segment:
        """A new sealed segment from rows of this one (all rows [0, n) by default), written
        to ``path``: each field gets the index its spec names, trained on its own vectors
        (a sample of them) where the index needs it. Runs without the collection lock: the
        rows it reads never change."""
        n = self.n if rows is None else rows.shape[0]
        rows = np.arange(n, dtype=np.int64) if rows is None else rows
        path.mkdir(parents=True, exist_ok=True)
        fields, entries, arrays = {}, [], {}
        for i, (name, spec) in enumerate(specs.items()):
            x, present = self.vectors(rows, name)
            index = field_index(spec)
            if x.shape[0] and index.needs_training:
                if spec.queries is not None:  # a query-aware codec (LeanVec-OOD)
                    index.train(_train_sample(x), queries=spec.queries)
                else:
                    index.train(_train_sample(x))
            if x.shape[0]:
                index.add(x, np.arange(x.shape[0], dtype=np.int64))
                if spec.queries is not None and hasattr(index, "link_queries"):
                    index.link_queries(spec.queries)  # the sample's edges (HNSW)
            sub = "index" if name == DEFAULT_FIELD else f"index-{name}"
            index.save(path / sub)
            # served from its files: memory-mapped, and what a lossy codec never reads (the
            # float32 originals) never becomes resident; a GPU (faiss) index keeps what it
            # built and maps only its float32 copy (reloading would build it twice)
            keep = getattr(index, "serve_saved", None)
            index = keep(path / sub) if keep is not None else load_index(path / sub)
            entry = {"name": name, "dir": sub, "kind": spec.kind, "rows": None}
            kept = None
            if not present.all():
                kept = np.flatnonzero(present).astype(np.int64)
                entry["rows"] = f"rows_{i}"
                arrays[f"rows_{i}"] = kept
            entries.append(entry)
            fields[name] = FieldRows(index, kept, n)
        ext_ids = [self.ext_ids[r] for r in rows.tolist()]
        versions = np.ascontiguousarray(self.versions[rows])
        payloads = PayloadStore()
        payloads.extend((self.payloads.get(r) for r in rows.tolist()), validated=True)
        for key, kind in self.payloads.indexes():
            payloads.create_index(key, kind)
        payloads.save(path / "payload")
        blob = np.frombuffer(orjson.dumps(ext_ids), np.uint8)
        save_arrays(path, SEGMENT_KIND, {"id": seg_id, "n": n, "fields": entries},
                    {"ext_ids": blob, "versions": versions, **arrays})
        deleted = np.zeros((n + 63) >> 6, np.uint64)
        return Segment(seg_id, fields, ext_ids, versions, payloads, deleted, sealed=True, path=path)

    @classmethod
    def load(cls, path: Path, deleted_file: str | None, deleted_crc: int | None) -> Segment:
        meta, arrays = load_arrays(path, SEGMENT_KIND)
        n = meta["n"]
        # segments written before named fields hold one unnamed field in index/
        entries = meta.get("fields") or [{"name": DEFAULT_FIELD, "dir": "index", "rows": None}]
        fields = {}
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("dir"), str) or "/" in e["dir"]:
                raise CorruptData(f"{path / 'manifest.json'}: bad field entry {e!r:.80}")
            rows = None
            if e.get("rows"):
                if e["rows"] not in arrays:
                    raise CorruptData(f"{path}: rows of field {e['name']!r} missing")
                rows = np.asarray(arrays[e["rows"]], np.int64)
            index = load_index(path / e["dir"])
            if len(index) != (n if rows is None else rows.shape[0]):
                raise CorruptData(f"{path / e['dir']}: {len(index)} vectors where the segment "
                                  f"expects {n if rows is None else rows.shape[0]}")
            fields[e["name"]] = FieldRows(index, rows, n)
        try:
            ext_ids = orjson.loads(bytes(arrays["ext_ids"]))
        except orjson.JSONDecodeError:
            raise CorruptData(f"{path / 'ext_ids.npy'}: ids are not valid JSON") from None
        payloads = PayloadStore.load(path / "payload")
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
        return cls(meta["id"], fields, ext_ids, np.asarray(arrays["versions"]), payloads,
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
        return int(sum(sum(f.memory_usage().values()) for f in self.fields.values()))


def field_index(spec: FieldSpec, exact: bool = False):
    """An empty index for a field: ``spec.index`` over dense vectors, or for a multi-vector
    field a ``MultiVectorIndex`` over MUVERA encodings indexed by that spec (``exact``:
    none, every search a Chamfer scan, as appendable segments serve)."""
    if spec.kind != "multi":
        return make_index(spec.index, spec.dim, spec.metric, **spec.options)
    from .muvera import MultiVectorIndex

    options = dict(spec.options)
    fde, tokens = options.pop("fde", None), options.pop("tokens", None)
    retrieval = options.pop("retrieval", None) or "fde"
    if fde is not None and not isinstance(fde, dict):
        raise InvalidArgument(f"fde: expected an object of FDEConfig keys, got "
                              f"{type(fde).__name__}")
    try:
        return MultiVectorIndex(spec.dim, "ip", None if exact else spec.index, fde or None,
                                tokens or "f16", retrieval, **({} if exact else options))
    except TypeError as exc:
        raise InvalidArgument(f"fde: {exc}") from None


def _no_vectors(index):
    """An empty batch of what ``index`` holds (dense rows or token matrices)."""
    if getattr(index, "kind", None) == "multivector":
        return TokenMatrices(np.zeros((0, index.dim), np.float32), np.zeros(1, np.int64))
    return np.zeros((0, index.dim), np.float32)


def _train_sample(x: np.ndarray) -> np.ndarray:
    if x.shape[0] <= _TRAIN_SAMPLE:
        return x
    pick = np.sort(np.random.default_rng(0).choice(x.shape[0], _TRAIN_SAMPLE, replace=False))
    return x[pick]


@dataclass(frozen=True)
class FieldSpec:
    """What a sealed segment builds for one field: ``index`` spec over ``dim``-d vectors
    with the kernel ``metric``; ``options`` go to the index (``ef_construction``)."""

    dim: int
    metric: str
    index: str
    kind: str = "dense"
    options: dict = dataclass_field(default_factory=dict)
    queries: np.ndarray | None = dataclass_field(default=None, compare=False, repr=False)
    """A sample of the queries to expect (``Collection.train_queries``), for codecs that
    learn from them."""


def _mask_tail(words: np.ndarray, n: int) -> np.ndarray:
    words = words.copy()
    if n & 63 and words.shape[0]:
        words[-1] &= np.uint64((1 << (n & 63)) - 1)
    return words

