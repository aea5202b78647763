"""Collections: durable point storage (WAL + segments) with hybrid filtered search.

Writes: validate everything -> one WAL record per batch (fsync by policy) -> apply to the
appendable segment -> acknowledge. A background optimizer seals the appendable segment into
an indexed, memory-mapped one once it holds ``segment_size`` points, merges small sealed
segments, vacuums ones with many deletions, and records a checkpoint (manifest + deletion
bitmaps) so the WAL before it can be dropped. Opening replays the WAL after the checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import shutil
import tarfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .device import DeviceUnavailable, device_name, parse_device
from .errors import CorruptData, InvalidArgument, NotFound, ReadOnly
from .facets import check_facet, count_values, sample_counts, top_values
from .filters import Filter, normalize_id, parse_filter
from .frame import decode_batch, encode_batch
from .groups import Group, search_groups
from .hits import SearchArrays
from .index.registry import index as make_index
from .index.registry import parse_index_spec
from .metric import Metric
from .muvera import pool_tokens
from .ordering import OrderBy, order_values, parse_order_by, resolve, value_kinds
from .params import SearchParams
from .payload import canonical_payload, merge_at, object_path, split_key
from .persist import load_arrays, read_metadata, save_arrays, write_metadata
from .points import (
    DEFAULT_FIELD,
    FieldBatch,
    Point,
    field_rows,
    pack_fields,
    require_points,
    unpack_fields,
)
from .points import upsert_columns as upsert_columns
from .projection import PayloadProjection, payload_paths, payload_projection
from .segment import FieldSpec, Segment, field_index
from .tokens import TokenMatrices, as_token_matrices, check_f16_tokens, is_one_query, normalize_tokens
from .validation import (
    as_vectors,
    beyond_f16,
    check_dim,
    check_flag,
    check_k,
    check_threshold,
    check_using,
    normalize_rows,
)
from .wal import OP_DELETE, OP_UPSERT, WAL

log = logging.getLogger(__name__)
_MAX_LEARN_QUERIES = 100_000
_SEG_DIR = re.compile(r"^seg-\d{6,}$")

_MAX_RESERVED_ROWS = 1_000_000
"""Rows an appendable segment reserves up front (virtual memory until written)."""
PAYLOAD_INDEX_TYPES = ("keyword", "integer", "float", "bool", "datetime")
VECTOR_KINDS = ("dense", "multi")
"""Field kinds: a dense vector per point, or a token matrix (multi-vector, MaxSim)."""
MULTIVECTOR_COMPARATORS = ("max_sim",)


@dataclass
class VectorField:
    """One vector field: its dimension, metric and index spec. ``kind`` says what one
    point holds in it: a dense vector, or (``"multi"``) a matrix of token vectors scored by
    MaxSim, whose ``index`` is the dense index its candidates come from: over their MUVERA
    encodings (``retrieval`` "fde", ``fde``: its ``FDEConfig`` keys) or over every token
    (``retrieval`` "tokens", ``token_hits`` tokens found per query token); its tokens are kept
    as ``tokens`` (f16, f32 or lvq8), pooled to
    1 / ``pool_factor`` of them as they are written when that is above 1. ``device``
    (dense fields): ``"cuda"`` / ``"cuda:<n>"`` builds and serves the sealed segments' index
    with faiss on that GPU (``engine.index.gpu``); None is the CPU."""

    dim: int
    metric: str = "cosine"
    index: str = "HNSW16,F32"
    kind: str = "dense"
    fde: dict | None = None
    tokens: str | None = None
    retrieval: str | None = None
    pool_factor: int | None = None
    device: str | None = None
    token_hits: int | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> VectorField:
        """From a dict (``{"dim", "metric", "index"}``, plus ``"multivector": "max_sim"`` and
        optionally ``"fde"``, ``"tokens"`` for a multi-vector field) or a VectorField;
        checks each value, and builds the index once so a bad spec fails before anything is
        written. ``where`` prefixes messages (empty for the single-vector form, whose keys
        are top-level)."""
        pre = f"{where}." if where else ""
        if isinstance(value, VectorField):
            value = {k: v for k, v in value.__dict__.items() if v is not None}
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where}: expected {{'dim', 'metric', 'index'}}, got "
                                  f"{type(value).__name__}")
        value = dict(value)
        known = {"dim", "metric", "index", "kind", "multivector", "fde", "tokens", "retrieval",
                 "pool_factor", "device", "token_hits"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidArgument(f"{where or 'collection'}: unknown key(s) {unknown}; known: "
                                  f"{', '.join(sorted(known))}")
        if "dim" not in value:
            raise InvalidArgument(f"{pre}dim: required")
        try:
            dim = check_dim(value["dim"])
            metric = Metric.parse(value.get("metric", "cosine")).value
        except InvalidArgument as exc:
            raise InvalidArgument(f"{pre}{exc}") from None
        comparator = value.pop("multivector", None)
        if comparator is not None and comparator not in MULTIVECTOR_COMPARATORS:
            raise InvalidArgument(f"{pre}multivector: {comparator!r}; comparators: "
                                  f"{', '.join(MULTIVECTOR_COMPARATORS)}")
        kind = value.get("kind", "multi" if comparator else "dense")
        if comparator and kind != "multi":
            raise InvalidArgument(f"{pre}kind: {kind!r} contradicts multivector "
                                  f"{comparator!r} (a multi-vector field's kind is 'multi')")
        if kind not in VECTOR_KINDS:
            raise InvalidArgument(f"{pre}kind: {kind!r}; available: {', '.join(VECTOR_KINDS)}")
        spec = value.get("index", "HNSW16,F32")
        device = device_name(parse_device(value.get("device"), f"{pre}device"))
        if kind == "dense":
            for key in ("fde", "tokens", "retrieval", "pool_factor", "token_hits"):
                if value.get(key) is not None:
                    raise InvalidArgument(f"{pre}{key}: only for multi-vector fields "
                                          f"(multivector: 'max_sim')")
            try:
                make_index(spec, dim, metric, device=device)
            except DeviceUnavailable as exc:
                raise DeviceUnavailable(f"{pre}device: {exc}") from None
            except InvalidArgument as exc:
                if not where:
                    raise
                raise InvalidArgument(f"{pre}index: {exc}") from None
            return cls(dim, metric, spec, kind, device=None if device == "cpu" else device)
        if device != "cpu":
            raise InvalidArgument(f"{pre}device: only dense fields build on a GPU; a multi-vector "
                                  f"field's index stays on the CPU")
        if metric == "l2":
            raise InvalidArgument(f"{pre}metric: multi-vector (MaxSim) fields score by inner "
                                  f"product; use 'cosine' or 'ip'")
        if not isinstance(spec, str):
            raise InvalidArgument(f"{pre}index: expected the spec of the dense index candidates "
                                  f"come from, e.g. 'HNSW16', got {spec!r}")
        fde, tokens = value.get("fde"), value.get("tokens") or "f16"
        retrieval = value.get("retrieval") or "fde"
        pool = value.get("pool_factor")
        pool = 1 if pool is None else pool
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise InvalidArgument(f"{pre}pool_factor: expected a positive integer, got {pool!r}")
        hits = value.get("token_hits")
        if hits is not None and retrieval != "tokens":
            raise InvalidArgument(f"{pre}token_hits: only with retrieval 'tokens' (this field's "
                                  f"candidates come from {retrieval!r})")
        options = {"fde": fde, "tokens": tokens, "retrieval": retrieval,
                   **({"token_hits": hits} if hits is not None else {})}
        try:
            field_index(FieldSpec(dim, "ip", spec, kind, options))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{pre}{exc}") from None
        return cls(dim, metric, spec, kind, dict(fde) if fde else None, tokens, retrieval,
                   pool if pool != 1 else None, token_hits=hits)


@dataclass
class CollectionConfig:
    """``vectors``: the fields by name; a single-vector collection has one field, ""."""

    vectors: dict[str, VectorField]
    ef_construction: int = 200
    segment_size: int = 50_000
    max_segments: int = 8
    vacuum_share: float = 0.2
    fsync: str = "batch"
    payload_indexes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "vectors": {
            n: {k: v for k, v in f.__dict__.items() if v is not None}
            for n, f in self.vectors.items()}}

    def save(self, path: Path) -> None:
        """Checksummed and atomic (``persist.write_metadata``)."""
        write_metadata(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> CollectionConfig:
        return cls.from_dict(read_metadata(path), path)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], path: Path | str) -> CollectionConfig:
        """The config ``to_dict`` gave (or a file held); ``path`` names it in errors."""
        obj = dict(obj)
        try:
            obj.pop("format_version", None)
            if "vectors" not in obj:  # written before named fields: one unnamed field
                obj["vectors"] = {DEFAULT_FIELD: {k: obj.pop(k) for k in ("dim", "metric", "index")
                                                  if k in obj}}
            obj["vectors"] = {n: VectorField(**f) for n, f in obj["vectors"].items()}
            config = cls(**obj)
            for n, f in config.vectors.items():  # values a checksum cannot judge
                if not isinstance(f.dim, int) or f.dim < 1 or f.kind not in VECTOR_KINDS:
                    raise ValueError(f"field {n!r}: {f.__dict__}")
                Metric.parse(f.metric)
                parse_index_spec(f.index)
            return config
        except (TypeError, AttributeError, ValueError) as exc:
            raise CorruptData(f"{path}: invalid collection config ({exc})") from None


def _still_matching(locs: list, flt: Filter) -> list:
    """The (id, (segment, position)) pairs whose rows pass ``flt`` now."""
    allowed: dict[int, Any] = {}
    out = []
    for x, (seg, pos) in locs:
        if id(seg) not in allowed:
            with seg.lock if not seg.sealed else contextlib.nullcontext():  # as searches do
                allowed[id(seg)] = seg.allowed(flt, seg.n)
        bits = allowed[id(seg)]
        if bits is None or pos in bits:
            out.append((x, (seg, pos)))
    return out


def normalize_ids(ids: Any, what: str = "ids") -> list[int | str]:
    """A list (or array) of external ids, each normalised; a single id is an error naming
    ``what``, as is anything that is not a sequence."""
    if isinstance(ids, (str, int, np.integer)):
        raise InvalidArgument(f"{what}: expected a list of ids, got a single value")
    try:
        id_list = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    except TypeError:
        raise InvalidArgument(f"{what}: expected a list of ids, got {type(ids).__name__}") from None
    return [normalize_id(x, f"{what}[{i}]") for i, x in enumerate(id_list)]


def _ndim(x: Any, field: str) -> int:
    try:
        return np.ndim(x)
    except ValueError:  # ragged nesting
        raise InvalidArgument(f"{field}: expected a vector or a matrix of equal-length rows")\
            from None


MAX_GROUP_HITS = 10_000
"""The most points an embedded ``search_groups`` searches (the server uses its ``max_k``)."""


class CollectionSchema:
    """A collection's fields and the checks on what is written to and searched in them:
    shared by the embedded ``Collection`` and the sharded one (``engine/cluster``), so both
    accept and refuse exactly the same input."""

    def __init__(self, config: CollectionConfig):
        self.config = config
        self.fields = dict(config.vectors)
        self._metrics = {n: Metric.parse(f.metric) for n, f in self.fields.items()}
        """Segments see cosine as ip: the collection normalises vectors and queries once."""

    # --- fields ------------------------------------------------------------------------

    @property
    def named(self) -> bool:
        """Whether the collection has named vector fields (not one unnamed vector)."""
        return DEFAULT_FIELD not in self.fields

    @property
    def dim(self) -> int | None:
        """The dimension of the default field (None with several named fields)."""
        f = self._default_field()
        return self.fields[f].dim if f is not None else None

    @property
    def metric(self) -> Metric | None:
        f = self._default_field()
        return self._metrics[f] if f is not None else None

    def _default_field(self) -> str | None:
        if DEFAULT_FIELD in self.fields:
            return DEFAULT_FIELD
        return next(iter(self.fields)) if len(self.fields) == 1 else None

    def _field(self, using: str | None) -> str:
        """The field a search uses: ``using``, or the only one there is."""
        check_using(using)
        if using is None or using == DEFAULT_FIELD:
            f = self._default_field()
            if f is None:
                raise InvalidArgument(f"using: this collection has named vectors "
                                      f"({', '.join(map(repr, self.fields))}); say which to search")
            return f
        if using not in self.fields:
            known = ", ".join(repr(n) for n in self.fields if n) or "none (one unnamed vector)"
            raise InvalidArgument(f"using: no vector field {using!r}; named fields: {known}")
        return using

    def vector_field(self, using: str | None = None) -> VectorField:
        """The field a search with ``using`` reads (InvalidArgument naming the fields if none)."""
        return self.fields[self._field(using)]

    def _validate_points(self, ids, vectors, payloads) -> tuple[list, FieldBatch, list]:
        norm = normalize_ids(ids)
        if len(set(norm)) != len(norm):
            seen = set()
            dup = next(x for x in norm if x in seen or seen.add(x))
            raise InvalidArgument(f"ids: id {dup!r} appears more than once in this batch")
        fields = self._validate_vectors(vectors, len(norm))
        if payloads is None:
            pl = [{}] * len(norm)
        else:
            if not isinstance(payloads, (list, tuple)):
                raise InvalidArgument(f"payloads: expected a list with one payload per id, got "
                                      f"{type(payloads).__name__}")
            pl = [canonical_payload(p, f"payloads[{i}]") for i, p in enumerate(payloads)]
            if len(pl) != len(norm):
                raise InvalidArgument(f"payloads: got {len(pl)} payloads for {len(norm)} ids")
        return norm, fields, pl

    def _validate_vectors(self, vectors, n: int) -> FieldBatch:
        """Each field's float32 vectors (unit rows for cosine) and the points they belong to.

        ``vectors``: a matrix (the default field, or the only one); or a dict by field name
        of a matrix (every point), a list with None for points without the field, or a
        ``(matrix, rows)`` pair (the vectors of the points at indices ``rows``)."""
        if not isinstance(vectors, dict):
            f = self._default_field()
            if f is None:
                raise InvalidArgument(f"vectors: this collection has named vectors "
                                      f"({', '.join(map(repr, self.fields))}); pass a dict by name")
            vectors = {f: vectors}
        out: FieldBatch = {}
        for name, value in vectors.items():
            if name not in self.fields:
                known = ", ".join(repr(x) for x in self.fields)
                raise InvalidArgument(f"vectors: no vector field {name!r}; fields: {known}")
            where = f"vectors[{name!r}]" if name else "vectors"
            value, rows = field_rows(value, n, where)
            dim = self.fields[name].dim
            m = n if rows is None else rows.shape[0]
            multi = self.fields[name].kind == "multi"
            if multi:
                x = as_token_matrices(value, dim, where)
            else:
                x = as_vectors(value, dim, where) if m else np.zeros((0, dim), np.float32)
            if x.shape[0] != m:
                raise InvalidArgument(f"{where}: got {x.shape[0]} "
                                      f"{'token matrices' if multi else 'vectors'} for {m} "
                                      f"{'ids' if rows is None else 'rows'}")
            if self._metrics[name] is Metric.COSINE:
                x = normalize_tokens(x) if multi else normalize_rows(x)
            if multi and (self.fields[name].pool_factor or 1) > 1 and len(x):
                x = TokenMatrices(*pool_tokens(x.tokens, x.offsets, self.fields[name].pool_factor,
                                               self._metrics[name] is Metric.COSINE))
            self._check_storable(name, x, where)
            out[name] = (x, rows)
        if DEFAULT_FIELD in self.fields and DEFAULT_FIELD not in out and n:
            raise InvalidArgument("vectors: required")
        return out

    def _check_storable(self, name: str, x: np.ndarray | TokenMatrices, where: str) -> None:
        """Refuse what field ``name``'s float16 store cannot hold, before the log takes it:
        after the log, a failed write would leave a partial row, or a segment no seal can
        build."""
        f = self.fields[name]
        if f.kind == "multi":
            if (f.tokens or "f16") == "f16":
                check_f16_tokens(x.tokens, x.offsets, where)
            return
        if _stores_f16(f.index):
            row = beyond_f16(x)
            if row >= 0:
                raise InvalidArgument(f"{where}[{row}]: a value beyond the float16 range "
                                      f"(|x| <= 65504), which this field's {f.index} index "
                                      f"stores; use F32, SQ8 or LVQ codes")

    def _check_vector_names(self, names: Any) -> None:
        """``names`` lists named vector fields of this collection (``delete_vectors``)."""
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
            raise InvalidArgument(f"vector: expected a non-empty list of field names, got "
                                  f"{names!r:.60}")
        for n in names:
            if n not in self.fields or n == DEFAULT_FIELD:
                raise InvalidArgument(f"vector: {n!r} is not a named vector field of this "
                                      f"collection ({', '.join(map(repr, self.fields))})")

    def is_single_query(self, vector, using: str | None) -> bool:
        """Whether a search input is one query: a vector, or for a multi-vector field one
        token matrix (a 2-D array or list of equal rows; a batch is a list of them)."""
        if self.fields[self._field(using)].kind != "multi":
            return _ndim(vector, "vector") == 1
        return is_one_query(vector)

    def search_groups(self, vector, group_by: str, limit: int = 10, group_size: int = 3,
                      filter: dict | None = None, params: SearchParams | dict | None = None,
                      with_payload: bool | list | dict = False, with_vectors: bool = False,
                      score_threshold: float | None = None, using: str | None = None,
                      max_hits: int = MAX_GROUP_HITS) -> list[Group]:
        """The best ``limit`` groups of points sharing a value under the payload key
        ``group_by`` (a document id on its chunks, say), each with its best ``group_size``
        hits, for one query; groups ordered by their best hit (engine/groups.py). At most
        ``max_hits`` points are searched for them."""
        if not self.is_single_query(vector, using):
            raise InvalidArgument("vector: search_groups takes one query, not a batch")

        def search(**kw):
            return self.search(vector, params=params, score_threshold=score_threshold,
                               using=using, **kw)

        return search_groups(search, group_by, limit, group_size, max_hits, with_payload,
                             with_vectors, filter)


def write_manifest(directory: Path, checkpoint_seq: int, next_segment: int,
                   segments: list[dict]) -> None:
    """A collection's checkpoint, atomically: the sealed segments it is made of and the last
    log record they hold. A new collection gets an empty one before its config, so a segment
    directory with no manifest beside it is always damage, never a first seal cut short."""
    write_metadata(Path(directory) / "manifest.json", {"checkpoint_seq": checkpoint_seq,
                                                       "next_segment": next_segment,
                                                       "segments": segments})


class Collection(CollectionSchema):
    """Use ``Database.create_collection`` / ``get_collection`` rather than this constructor."""

    def __init__(self, path: Path, config: CollectionConfig, name: str, optimizer: bool = True,
                 *, read_only: bool = False, on_corrupt: str = "raise"):
        self.path = path
        self.name = name
        self.read_only = read_only
        self._on_corrupt = on_corrupt
        CollectionSchema.__init__(self, config)
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._opt_lock = threading.Lock()
        self._build_devices: dict[str, tuple[str, str | None]] = {}  # by field: spec, device
        self._device_guard = threading.Lock()
        self._segments: list[Segment] = []
        self._locator: dict[int | str, tuple[Segment, int]] = {}
        self._checkpoint_seq = 0
        self._next_segment = 1
        self._closed = False
        self._unsealed: list[tuple[Segment, int]] = []
        self._wal: WAL | None = None
        self._open()
        self._wake = threading.Event()
        self._optimizer: threading.Thread | None = None
        self._optimizer_error: BaseException | None = None
        self._idle = threading.Event()
        self._idle.set()
        if optimizer and not read_only:
            self._optimizer = threading.Thread(target=self._optimize_loop, daemon=True,
                                               name=f"quiver-optimizer-{name}")
            self._optimizer.start()

    # --- open / replay ---------------------------------------------------------------

    def _open(self) -> None:
        """Load the manifest's segments and replay the log after its checkpoint. Nothing is
        deleted until all of it has succeeded: a damaged store raises naming the file."""
        seg_root = self.path / "segments"
        if not self.read_only:
            seg_root.mkdir(parents=True, exist_ok=True)
        entries = self._read_manifest(seg_root)
        for e in entries:
            seg = Segment.load(seg_root / e["dir"], e.get("deleted"), e.get("deleted_crc"))
            seg.deleted_file, seg.deleted_crc = e.get("deleted"), e.get("deleted_crc")
            for key, kind in self.config.payload_indexes.items():  # declared after it sealed
                seg.payloads.create_index(key, kind)
            self._segments.append(seg)
            live = _live_mask(seg)
            for pos in np.flatnonzero(live).tolist():
                self._locator[seg.ext_ids[pos]] = (seg, pos)
        self._appendable = self._new_appendable()
        self._segments.append(self._appendable)
        self._last_seq = self._checkpoint_seq
        if self.read_only:  # the sealed state only: opening the log may truncate its tail
            return
        self._wal = WAL(self.path / "wal", fsync=self.config.fsync,
                        start_seq=self._checkpoint_seq + 1, on_corrupt=self._on_corrupt)
        if self._wal.repair is not None:
            log.warning("collection %s: %s", self.name, self._wal.repair)
        for rec in self._wal.replay(after_seq=self._checkpoint_seq):
            batch = decode_batch(rec.body, legacy=True)
            ids = [normalize_id(i) for i in (batch.ids.tolist() if isinstance(batch.ids, np.ndarray)
                                             else batch.ids)]
            if rec.op == OP_UPSERT:
                self._apply_upsert(ids, unpack_fields(batch.vectors, len(ids)),
                                   batch.payloads or [{}] * len(ids), rec.seq)
            elif rec.op == OP_DELETE:
                self._apply_delete(ids)
            self._last_seq = rec.seq
        self._last_seq = max(self._last_seq, self._wal.last_seq)
        self._remove_leftovers(seg_root, {e["dir"] for e in entries})

    def _read_manifest(self, seg_root: Path) -> list[dict]:
        """The checkpoint's segment entries (checked); none for a collection never sealed."""
        path = self.path / "manifest.json"
        if not path.exists():
            found = sorted(d.name for d in seg_root.iterdir()) if seg_root.is_dir() else []
            if found:
                raise CorruptData(
                    f"{path}: missing, but {seg_root} holds {len(found)} segment "
                    f"director{'y' if len(found) == 1 else 'ies'} ({', '.join(found[:3])}"
                    f"{', ...' if len(found) > 3 else ''}); nothing was deleted. "
                    f"`quiver repair {self.path.parent.parent}` reports what can be recovered")
            return []
        manifest = read_metadata(path)
        try:
            self._checkpoint_seq = int(manifest["checkpoint_seq"])
            self._next_segment = int(manifest["next_segment"])
            entries = list(manifest["segments"])
            for e in entries:
                if not isinstance(e, dict) or not _SEG_DIR.match(str(e.get("dir"))):
                    raise ValueError(f"bad segment entry {e!r:.80}")
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptData(f"{path}: malformed ({exc})") from None
        return entries

    def _remove_leftovers(self, seg_root: Path, known: set[str]) -> None:
        """Segment directories no checkpoint names (builds a crash interrupted, sources of a
        merge whose removal it cut short) and temporary files: only once the open has fully
        succeeded, so a damaged manifest can never make Quiver delete data."""
        for d in seg_root.iterdir():
            if d.name not in known:
                log.warning("collection %s: removing %s (not in the manifest: an interrupted "
                            "build or merge)", self.name, d)
                shutil.rmtree(d, ignore_errors=True)
        for tmp in self.path.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
    def _field_specs(self) -> dict[str, FieldSpec]:
        out = {}
        for name, f in self.fields.items():
            spec, device = self._build_device(name, f)
            family = parse_index_spec(spec).index.family
            # IVF: a segment with too few rows for its nlist trains fewer lists (see IVFIndex)
            options = ({"ef_construction": self.config.ef_construction} if family == "HNSW"
                       else {"adapt_nlist": True} if family == "IVF" else {})
            if device is not None:  # sealed segments build (and serve) on that GPU
                options["device"] = device
            if f.kind == "multi":
                options = {"fde": f.fde, "tokens": f.tokens, "retrieval": f.retrieval, **options,
                           **({"token_hits": f.token_hits} if f.token_hits is not None else {})}
            out[name] = FieldSpec(f.dim, self._metrics[name].kernel_metric, spec, f.kind,
                                  options, self._learn_queries(name))
        return out

    def _build_device(self, name: str, f: VectorField) -> tuple[str, str | None]:
        """The spec and device a field's sealed segments build with: its own, or, where this
        machine cannot reach its ``device`` (no GPU, no GPU faiss), Quiver's CPU index of the
        spec (CAGRA<d>: HNSW<d/2>, the same base-level degree), warned once per field, so
        seals and merges keep working; segments built on a GPU still load (on the CPU)."""
        if f.device is None:
            return f.index, None
        with self._device_guard:
            if name not in self._build_devices:
                from .index import gpu

                parsed = gpu.FaissSpec.parse(f.index, f.dim)
                try:
                    gpu.backend_for(parse_device(f.device), parsed.family == "cagra")
                    self._build_devices[name] = (f.index, f.device)
                except DeviceUnavailable as exc:
                    cpu = (f"HNSW{max(2, parsed.degree // 2)}" if parsed.family == "cagra"
                           else f.index)
                    self._build_devices[name] = (cpu, None)
                    log.warning("collection %s: field %r asks for device %s, which this machine "
                                "cannot reach (%s); its segments build on the CPU (%s) until "
                                "it is opened where that device is", self.name, name,
                                f.device, exc, cpu)
            return self._build_devices[name]

    def _learn_dir(self, name: str) -> Path:
        return self.path / "learn" / (name or "_default")

    def _learn_queries(self, name: str) -> np.ndarray | None:
        d = self._learn_dir(name)
        if not (d / "manifest.json").exists():
            return None
        try:
            return np.asarray(load_arrays(d, "learn_queries", mmap=False)[1]["queries"],
                              np.float32)
        except CorruptData as exc:  # an input to training only: seal without it, loudly
            log.warning("collection %s: ignoring the query sample of field %r (%s); call "
                        "train_queries again", self.name, name, exc)
            return None

    def train_queries(self, queries, using: str | None = None) -> int:
        """Keep a sample of the queries a field will see (e.g. 10,000 logged ones): when
        segments seal, query-aware codecs (``LeanVec``: the out-of-distribution projection)
        train on it and HNSW graphs get its edges (``HNSWIndex.link_queries``). Replaces an
        earlier sample; returns how many were kept."""
        self._check_writable()
        name = self._field(using)
        if self.fields[name].kind == "multi":
            raise InvalidArgument(f"using: {name!r} is a multi-vector field; its MUVERA "
                                  f"encodings learn nothing from queries")
        q = as_vectors(queries, self.fields[name].dim, "queries")
        if self._metrics[name] is Metric.COSINE:
            q = normalize_rows(q)
        if q.shape[0] == 0:
            raise InvalidArgument("queries: expected at least one query")
        q = q[:_MAX_LEARN_QUERIES]
        with self._write_lock:
            save_arrays(self._learn_dir(name), "learn_queries", {"field": name}, {"queries": q})
        return int(q.shape[0])

    def _new_appendable(self) -> Segment:
        seg = Segment.appendable(self._next_segment,
                                 {n: FieldSpec(f.dim, self._metrics[n].kernel_metric, f.index,
                                               f.kind, {"fde": f.fde, "tokens": f.tokens})
                                  for n, f in self.fields.items()},
                                 min(self.config.segment_size, _MAX_RESERVED_ROWS))
        self._next_segment += 1
        for key, kind in self.config.payload_indexes.items():
            seg.payloads.create_index(key, kind)
        return seg

    # --- validation ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"collection {self.name!r} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnly(f"collection {self.name!r}: opened read-only")

    # --- writes ----------------------------------------------------------------------

    def upsert(self, ids=None, vectors=None, payloads=None, *, points=None) -> int:
        """Insert or replace points: columnar (``ids``, ``vectors``, ``payloads``) or
        ``points=[{"id", "vector", "payload"}, ...]``. Returns the WAL sequence number once
        the batch is durable."""
        self._check_writable()
        ids, vectors, payloads = upsert_columns(ids, vectors, payloads, points)
        return self.upsert_validated(*self._validate_points(ids, vectors, payloads))

    def upsert_validated(self, ids: list, fields: FieldBatch, payloads: list) -> int:
        """``upsert`` of a batch ``_validate_points`` has already checked (normalised ids,
        unit rows for cosine, pooled tokens): how a shard replica applies its share of a
        batch the cluster validated once."""
        self._check_writable()
        if not ids:
            return self._last_seq
        with self._write_lock:
            seq = self._log_upsert(ids, fields, payloads)
        if self._appendable.n >= self.config.segment_size:
            self._wake.set()
        return seq

    def _log_upsert(self, ids: list, fields: FieldBatch, payloads: list) -> int:
        """WAL record, then apply; the caller holds the write lock."""
        seq = self._wal.append(OP_UPSERT, encode_batch(ids, pack_fields(fields), payloads))
        with self._lock:
            self._apply_upsert(ids, fields, payloads, seq)
            self._last_seq = seq
        return seq

    # payload updates ---------------------------------------------------------------------

    def set_payload(self, payload: dict, ids=None, filter: dict | None = None,
                    key: str | None = None) -> int:
        """Merge ``payload``'s keys into the payloads of the points given by ``ids`` or
        ``filter`` (vectors unchanged), or with ``key`` (``"meta.author"``) into the nested
        object there (created where missing); returns how many points were updated."""
        new = canonical_payload(payload, "payload")
        if key is None:
            return self._rewrite(ids, filter, lambda old: {**old, **new})
        path = object_path(key)
        return self._rewrite(ids, filter, lambda old: merge_at(old, path, new))

    def overwrite_payload(self, payload: dict, ids=None, filter: dict | None = None) -> int:
        """Replace the payloads of the points given by ``ids`` or ``filter`` with ``payload``."""
        new = canonical_payload(payload, "payload")
        return self._rewrite(ids, filter, lambda old: new)

    def delete_payload(self, keys: list[str], ids=None, filter: dict | None = None) -> int:
        """Remove ``keys`` (dotted paths reach into nested objects) from the payloads of the
        points given by ``ids`` or ``filter``."""
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            raise InvalidArgument(f"keys: expected a list of payload keys, got {keys!r:.60}")
        drop = PayloadProjection(exclude=payload_paths(keys, "keys"))
        return self._rewrite(ids, filter, drop)

    def clear_payload(self, ids=None, filter: dict | None = None) -> int:
        """Empty the payloads of the points given by ``ids`` or ``filter``."""
        return self._rewrite(ids, filter, lambda old: {})

    _PAYLOAD_BATCH = 10_000
    """Points per WAL record of a payload update (each record is atomic)."""

    def update_vectors(self, ids, vectors) -> int:
        """Replace some vector fields of existing points, keeping their other fields and
        payloads (Qdrant's update_vectors). ``vectors`` as in ``upsert``, one entry per id:
        a matrix, or a dict by field name. Returns how many points were updated; an id that
        names no point is a NotFound, and nothing is written."""
        self._check_writable()
        norm, new, _ = self._validate_points(ids, vectors, None)
        return self.update_validated(norm, new)

    def update_validated(self, norm: list, new: FieldBatch) -> int:
        """``update_vectors`` of ids and fields ``_validate_points`` has already checked."""
        self._check_writable()
        at = {x: j for j, x in enumerate(norm)}

        def merge(present: list, stored: FieldBatch) -> FieldBatch:
            keep = np.asarray([at[x] for x in present], np.int64)  # ascending, as ids came
            return _merge_fields(stored, _subset_fields(new, keep, len(norm)), len(present))

        return self._rewrite(norm, None, lambda old: old, merge)

    def delete_vectors(self, names: list[str], ids=None, filter: dict | None = None) -> int:
        """Remove the named vector fields from the points given by ``ids`` or ``filter``
        (they drop out of those fields' searches; payloads and other fields are kept)."""
        self._check_vector_names(names)
        return self._rewrite(ids, filter, lambda old: old,
                             lambda _, stored: {n: v for n, v in stored.items() if n not in names})

    def _rewrite(self, ids, filter, change, vectors=None) -> int:
        """Rewrite the points' payloads (``change(old) -> new``) and, with ``vectors``
        (``(ids, stored FieldBatch) -> FieldBatch``), their vectors, as new rows through the
        WAL like an upsert (so replay, versions and segment swaps need nothing new). Each
        batch of ``_PAYLOAD_BATCH`` points is one atomic record."""
        self._check_writable()
        flt = parse_filter(filter) if filter is not None else None
        targets = self._targets(ids, flt)
        if flt is None:
            with self._lock:
                require_points(targets, self._locator.__contains__)
        done = 0
        for start in range(0, len(targets), self._PAYLOAD_BATCH):
            with self._write_lock:
                with self._lock:
                    locs = [(x, self._locator.get(x)) for x in
                            targets[start : start + self._PAYLOAD_BATCH]]
                locs = [(x, loc) for x, loc in locs if loc is not None]
                if flt is not None:  # a write since the match may have moved a point out
                    locs = _still_matching(locs, flt)
                if not locs:
                    continue
                fields = self._stored_vectors([loc for _, loc in locs])
                if vectors is not None:
                    fields = vectors([x for x, _ in locs], fields)
                pls = [canonical_payload(change(seg.payloads.get(pos)), "payload")
                       for _, (seg, pos) in locs]
                self._log_upsert([x for x, _ in locs], fields, pls)
            done += len(locs)
        if self._appendable.n >= self.config.segment_size:
            self._wake.set()
        return done

    def _stored_vectors(self, locs: list[tuple[Segment, int]]) -> FieldBatch:
        """The stored vectors of rows (in order), field by field, as an upsert batch."""
        by_seg: dict[int, tuple[Segment, list[int]]] = {}
        for j, (seg, _pos) in enumerate(locs):
            by_seg.setdefault(id(seg), (seg, []))[1].append(j)
        out: FieldBatch = {}
        for name, f in self.fields.items():
            parts, order = [], []
            for seg, js in by_seg.values():
                x, present = seg.vectors(np.array([locs[j][1] for j in js]), name)
                parts.append(x)
                order.append(np.asarray(js, np.int64)[present])
            at = np.concatenate(order) if order else np.zeros(0, np.int64)
            if not at.size:
                continue
            if f.kind == "multi":
                vecs = TokenMatrices.concat(parts, f.dim)[np.argsort(at, kind="stable")]
            else:
                vecs = np.concatenate(parts)[np.argsort(at, kind="stable")]
            has = np.sort(at)
            out[name] = (vecs, None if has.shape[0] == len(locs) else has)
        return out

    def _targets(self, ids, flt: Filter | None) -> list:
        """External ids named by ``ids`` or matched by ``flt`` (exactly one is given)."""
        if (ids is None) == (flt is None):
            raise InvalidArgument("pass exactly one of ids or filter")
        if flt is not None:
            return list(dict.fromkeys(p.id for p in self._matching(flt)))
        return list(dict.fromkeys(normalize_ids(ids)))

    def _apply_upsert(self, ids: list, fields: FieldBatch, payloads: list, seq: int) -> None:
        keep = []
        for j, ext in enumerate(ids):
            loc = self._locator.get(ext)
            if loc is not None:
                seg, pos = loc
                if seg.versions[pos] >= seq:  # replay of a write already applied
                    continue
                seg.mark_deleted(np.array([pos]))
            keep.append(j)
        if len(keep) < len(ids):
            fields = _subset_fields(fields, np.asarray(keep, np.int64), len(ids))
            ids = [ids[j] for j in keep]
            payloads = [payloads[j] for j in keep]
        if not ids:
            return
        seg = self._appendable
        pos = seg.append(ids, fields, payloads, seq)
        for ext, p in zip(ids, pos.tolist(), strict=True):
            self._locator[ext] = (seg, p)

    def delete(self, ids=None, filter: dict | None = None) -> int:
        """Delete by ids or by filter; returns how many live points were deleted."""
        self._check_writable()
        if (ids is None) == (filter is None):
            raise InvalidArgument("delete: pass exactly one of ids or filter")
        norm = self._targets(ids, parse_filter(filter) if filter is not None else None)
        with self._write_lock:
            with self._lock:
                present = [x for x in dict.fromkeys(norm) if x in self._locator]
            if not present:
                return 0
            seq = self._wal.append(OP_DELETE, encode_batch(present))
            with self._lock:
                n = self._apply_delete(present)
                self._last_seq = seq
        self._wake.set()
        return n

    def _apply_delete(self, ids: list) -> int:
        n = 0
        for ext in ids:
            loc = self._locator.pop(ext, None)
            if loc is not None:
                loc[0].mark_deleted(np.array([loc[1]]))
                n += 1
        return n

    def create_payload_index(self, field_name: str, field_type: str) -> None:
        """Index a payload field (keyword, integer, float, bool, datetime) in every segment.
        Qdrant's ``uuid`` is a keyword index; ``geo`` is declared and builds nothing (geo
        filters scan the points' coordinates); ``text`` is a full-text index of lower-cased
        words, and ``match.text`` on its field then asks for every word (not a substring)."""
        self._check_writable()
        if not isinstance(field_name, str) or not field_name:
            raise InvalidArgument("field: expected a non-empty string")
        if not isinstance(field_type, str):
            raise InvalidArgument(f"type: expected a string naming the index type, got "
                                  f"{type(field_type).__name__}")
        field_type = {"uuid": "keyword"}.get(field_type, field_type)
        if field_type not in (*PAYLOAD_INDEX_TYPES, "geo", "text"):
            raise InvalidArgument(f"type: {field_type!r} is not one of "
                                  f"{', '.join(PAYLOAD_INDEX_TYPES)}, uuid, geo, text")
        try:  # everything that can reject it, before anything is persisted
            split_key(field_name)
        except InvalidArgument as exc:
            raise InvalidArgument(f"field_name: {exc}") from None
        with self._write_lock, self._lock:
            for seg in self._segments:
                seg.payloads.create_index(field_name, field_type)
            self._save_config({**self.config.payload_indexes, field_name: field_type})

    def delete_payload_index(self, field_name: str) -> None:
        self._check_writable()
        with self._write_lock, self._lock:
            if field_name not in self.config.payload_indexes:
                raise NotFound(f"field: no payload index on {field_name!r}")
            self._save_config({k: v for k, v in self.config.payload_indexes.items()
                               if k != field_name})
            for seg in self._segments:
                seg.payloads.drop_index(field_name)

    def _save_config(self, payload_indexes: dict[str, str]) -> None:
        """Persist a changed config, then adopt it: a failed write changes nothing."""
        new = CollectionConfig(**{**self.config.__dict__, "payload_indexes": payload_indexes})
        new.save(self.path / "config.json")
        self.config = new

    # --- reads -----------------------------------------------------------------------

    def _point(self, seg: Segment, pos: int, payload: PayloadProjection | None,
               with_vectors: bool, score: float | None = None) -> Point:
        return Point(seg.ext_ids[pos], score,
                     payload(seg.payloads.get(pos)) if payload is not None else None,
                     self._vector_of(seg, pos) if with_vectors else None)

    def _vector_of(self, seg: Segment, pos: int) -> list[float] | dict[str, list[float]]:
        """A point's stored vector: a list, or a dict by field name (fields it has)."""
        out = {}
        for name, f in self.fields.items():
            x, present = seg.vectors(np.array([pos]), name)
            if present[0]:
                out[name] = x.doc(0).tolist() if f.kind == "multi" else x[0].tolist()
        return out if self.named else out[DEFAULT_FIELD]

    def get(self, ids, with_payload: bool | list | dict = True,
            with_vectors: bool = False) -> list[Point]:
        """Points by id, in the order asked; unknown ids are left out. ``with_payload``:
        True/False, a list of keys, or ``{"include": [...]}`` / ``{"exclude": [...]}``."""
        self._check_open()
        proj = payload_projection(with_payload)
        with_vectors = check_flag("with_vectors", with_vectors)
        norm = normalize_ids(ids)
        with self._lock:
            locs = [self._locator.get(x) for x in norm]
        return [self._point(s, p, proj, with_vectors) for s, p in (x for x in locs if x)]

    def _matching(self, flt: Filter | None) -> list[Point]:
        with self._lock:
            segs = list(self._segments)
        out = []
        for seg in segs:
            n = seg.n
            allowed = seg.allowed(flt, n)
            pos = np.arange(n) if allowed is None else allowed.positions()
            out.extend(Point(seg.ext_ids[p]) for p in pos.tolist())
        return out

    def count(self, filter: dict | None = None) -> int:
        self._check_open()
        flt = parse_filter(filter) if filter is not None else None
        if flt is None:
            return len(self._locator)
        with self._lock:
            segs = list(self._segments)
        total = 0
        for seg in segs:
            allowed = seg.allowed(flt, seg.n)
            total += seg.n if allowed is None else allowed.count()
        return total

    def scroll(self, filter: dict | None = None, limit: int = 10, cursor=None,
               with_payload: bool | list | dict = True,
               with_vectors: bool = False, order_by: str | dict | None = None
               ) -> tuple[list[Point], Any]:
        """Points matching ``filter`` in id order (integers first, then UUIDs), ``limit`` per
        page; pass the returned cursor to get the next page (None when done).

        ``order_by`` (a payload key, or ``{"key", "direction", "start_from"}``): in the
        order of that value instead (engine/ordering.py), each point's ``score`` its value;
        no cursor then: the next page starts from the last value."""
        self._check_open()
        limit = check_k(limit)
        payload_projection(with_payload)  # bad input fails before the work
        flt = parse_filter(filter) if filter is not None else None
        if order_by is not None:
            return self._scroll_ordered(flt, limit, cursor, with_payload, with_vectors,
                                        parse_order_by(order_by))
        ids = sorted((p.id for p in self._matching(flt)), key=_id_order)
        if cursor is not None:
            start = _id_order(normalize_id(cursor, "cursor"))
            ids = [i for i in ids if _id_order(i) >= start]
        page, rest = ids[:limit], ids[limit:]
        return self.get(page, with_payload, with_vectors), (rest[0] if rest else None)

    def facet(self, key: str, filter: dict | None = None, limit: int = 10
              ) -> list[tuple[Any, int]]:
        """The ``limit`` most frequent values of payload ``key`` among the points ``filter``
        admits, each with how many points hold it (engine/facets.py)."""
        self._check_open()
        _, limit = check_facet(key, limit)
        flt = parse_filter(filter) if filter is not None else None
        with self._lock:
            segs = list(self._segments)
        counts: Counter = Counter()
        for seg in segs:
            n = seg.n
            allowed = seg.allowed(flt, n)
            mask = np.zeros(len(seg.payloads), bool)  # (rows past n: written meanwhile)
            if allowed is None:
                mask[:n] = True
            else:
                mask[allowed.positions()] = True
            count_values(seg.payloads, mask, key, counts)
        return top_values(counts, limit)

    def sample(self, k: int = 10, filter: dict | None = None,
               with_payload: bool | list | dict = True, with_vectors: bool = False
               ) -> list[Point]:
        """``k`` points drawn uniformly at random, without replacement, among those ``filter``
        admits (fewer when fewer match), in random order."""
        self._check_open()
        k = check_k(k)
        payload_projection(with_payload)
        flt = parse_filter(filter) if filter is not None else None
        rng = np.random.default_rng()
        with self._lock:
            segs = list(self._segments)
        rows = []
        for seg in segs:
            allowed = seg.allowed(flt, seg.n)
            rows.append(np.arange(seg.n) if allowed is None else allowed.positions())
        ids = []
        for seg, pos, m in zip(segs, rows, sample_counts([len(r) for r in rows], k, rng),
                               strict=True):
            ids.extend(seg.ext_ids[p] for p in rng.choice(pos, m, replace=False).tolist())
        rng.shuffle(ids)
        return self.get(ids, with_payload, with_vectors)

    def order_kinds(self, key: str) -> set[str]:
        """What the payload key holds to order by (``engine.ordering.value_kinds``): a
        sharded collection asks each shard, so all order alike."""
        with self._lock:
            segs = list(self._segments)
        return set().union(*(value_kinds(s.payloads, key) for s in segs))

    def _scroll_ordered(self, flt: Filter | None, limit: int, cursor, with_payload,
                        with_vectors: bool, order: OrderBy) -> tuple[list[Point], None]:
        if cursor is not None:
            raise InvalidArgument("cursor: a scroll with order_by continues from "
                                  "order_by.start_from (the last value seen), not a cursor")
        order = resolve(order, self.order_kinds(order.key))
        with self._lock:
            segs = list(self._segments)
        rows: list[tuple[float, Any]] = []
        for seg in segs:
            n = seg.n
            allowed = seg.allowed(flt, n)
            pos = np.arange(n) if allowed is None else allowed.positions()
            at, vals = order_values(seg.payloads, pos, order)
            rows.extend(zip(vals.tolist(), (seg.ext_ids[p] for p in at.tolist()), strict=True))
        sign = -1 if order.desc else 1  # an int: int64 values stay exact in the key
        rows.sort(key=lambda r: (sign * r[0], _id_order(r[1])))
        rows = rows[:limit]
        got = {p.id: p for p in self.get([i for _, i in rows], with_payload, with_vectors)}
        points = []
        for v, i in rows:
            if i in got:  # a point deleted meanwhile is gone
                got[i].score = v
                points.append(got[i])
        return points, None

    def search(self, vector, k: int = 10, filter: dict | None = None,
               params: SearchParams | dict | None = None,
               with_payload: bool | list | dict = False, with_vectors: bool = False,
               explain: bool = False, score_threshold: float | None = None,
               using: str | None = None):
        """Top-k points for one query (a list of Points) or a batch (a list of lists).

        ``params``: ``SearchParams`` or its dict (``ef`` beam width, ``exact`` scan,
        ``rerank`` for lossy codecs, ``nprobe``). ``using``: the vector field to search (a
        collection with one field needs none).
        ``score_threshold`` drops hits scoring worse than it (below it for ip/cosine, above it
        for l2). With ``explain``, returns ``(results, plan)`` where plan lists each segment's
        strategy, estimated and actual selectivity."""
        single = self.is_single_query(vector, using)
        if score_threshold is not None:
            score_threshold = check_threshold(score_threshold)
        proj = payload_projection(with_payload)
        q, k, found, plan, name = self._search_segments(vector, k, filter, params, explain,
                                                        "vector", using)
        plain = proj is None and not with_vectors
        results = [[Point(seg.ext_ids[p], s) if plain else
                     self._point(seg, p, proj, with_vectors, s) for seg, p, s in row]
                   for row in self._best_rows(found, q.shape[0], k, self._metrics[name],
                                              score_threshold)]
        out = results[0] if single else results
        return (out, plan) if explain else out

    def search_arrays(self, queries, k: int = 10, filter: dict | None = None,
                      params: SearchParams | dict | None = None,
                      score_threshold: float | None = None,
                      using: str | None = None) -> SearchArrays:
        """Top-k of a batch of queries as FAISS-style matrices (``ids``, ``scores``,
        ``counts``): for evaluation and bulk pipelines, with no per-hit objects."""
        if self.fields[self._field(using)].kind == "multi":
            if self.is_single_query(queries, using):
                raise InvalidArgument("queries: expected a list of token matrices (one per "
                                      "query), got one matrix")
        else:
            nd = _ndim(queries, "queries")
            if nd != 2:
                raise InvalidArgument(f"queries: expected a 2-D matrix (one query per row), "
                                      f"got {nd} dimension(s)")
        if score_threshold is not None:
            score_threshold = check_threshold(score_threshold)
        q, k, found, _, name = self._search_segments(queries, k, filter, params, False,
                                                     "queries", using)
        rows = self._best_rows(found, q.shape[0], k, self._metrics[name], score_threshold)
        return SearchArrays.from_rows([[seg.ext_ids[p] for seg, p, _ in row] for row in rows],
                                      [[s for _, _, s in row] for row in rows], k)

    def _search_segments(self, vector, k, filter, params, explain: bool, what: str,
                         using: str | None):
        """Validated queries and k, each segment's (segment, scores, rows), the plan and the
        field searched: the one place a search's input is checked."""
        self._check_open()
        k = check_k(k)
        p = SearchParams.parse(params)
        name = self._field(using)
        flt = parse_filter(filter) if filter is not None else None
        if self.fields[name].kind == "multi":
            one = self.is_single_query(vector, using)
            q = as_token_matrices([vector] if one else vector, self.fields[name].dim, what)
            if self._metrics[name] is Metric.COSINE:
                q = normalize_tokens(q)
        else:
            q = as_vectors(vector, self.fields[name].dim, what)
            if self._metrics[name] is Metric.COSINE:
                q = normalize_rows(q)
        with self._lock:
            segs = list(self._segments)
        found, plan = [], []
        for seg in segs if q.shape[0] else ():
            res = seg.search(q, k, flt, p, name)
            if res is None:
                continue
            scores, pos, info = res
            found.append((seg, scores, pos))
            if explain:
                plan.append({"segment": seg.id, "sealed": seg.sealed, "field": name,
                             "estimated_selectivity": seg.estimate(flt), **info})
        return q, k, found, plan, name

    def _best_rows(self, found: list, nq: int, k: int, metric: Metric,
                   threshold: float | None = None) -> list[list[tuple[Segment, int, float]]]:
        """Each query's best k (segment, position, score) over the segments' top-k rows
        (positions -1 where a segment had fewer hits), none worse than ``threshold``."""
        if threshold is not None:
            # worse than the threshold reads as padding from here on
            found = [(seg, sc, np.where(sc >= threshold if metric.higher_is_better
                                        else sc <= threshold, pos, -1))
                     for seg, sc, pos in found]
        if len(found) == 1:  # the common case: no sort, no duplicates to drop
            seg, s_arr, pos = found[0]
            return [[(seg, p, s) for s, p in zip(srow, prow, strict=True) if p >= 0]
                    for srow, prow in zip(s_arr.tolist(), pos.tolist(), strict=True)]
        if not found:
            return [[] for _ in range(nq)]
        scores = np.concatenate([f[1] for f in found], axis=1)
        pos = np.concatenate([f[2] for f in found], axis=1)
        owner = np.repeat(np.arange(len(found)), [f[2].shape[1] for f in found])
        key = -scores if metric.higher_is_better else scores
        order = np.lexsort((key, pos < 0), axis=1)  # hits by score, then the padding
        segs = [f[0] for f in found]
        out = []
        for qi in range(nq):
            # searches take no lock: a point replaced meanwhile can be met in its old segment
            # and in the appendable one; keep only its newest row
            cands, newest = [], {}
            for j in order[qi].tolist():
                p = int(pos[qi, j])
                if p < 0:
                    break
                seg = segs[owner[j]]
                ext, ver = seg.ext_ids[p], seg.versions[p]
                if ext in newest and newest[ext] >= ver:
                    continue
                newest[ext] = ver
                cands.append((ext, seg, p, float(scores[qi, j])))
            out.append([(seg, p, s) for ext, seg, p, s in cands
                        if newest[ext] == seg.versions[p]][:k])
        return out

    # --- info ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._locator)

    def info(self) -> dict[str, Any]:
        with self._lock:
            segs = list(self._segments)
        return {
            "name": self.name,
            "points": len(self._locator),
            **({"dim": self.dim, "metric": self.metric.value,
                "index": self.fields[self._default_field()].index} if not self.named else {}),
            "vectors": {n: {k: v for k, v in f.__dict__.items() if v is not None}
                        for n, f in self.fields.items()},
            "segments": [{"id": s.id, "sealed": s.sealed, "points": s.n, "deleted": s.n_deleted,
                          "memory_bytes": s.memory_usage()} for s in segs],
            "indexed_points": sum(s.live for s in segs if s.sealed),
            "status": "green" if all(s.sealed or s.n < self.config.segment_size for s in segs)
            and self._idle.is_set() else "yellow",
            "payload_indexes": dict(self.config.payload_indexes),
            "last_seq": self._last_seq,
        }

    # --- optimizer -------------------------------------------------------------------

    def _optimize_loop(self) -> None:
        failures, retry_at = 0, 0.0
        while not self._closed:
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if self._closed:
                break
            if time.monotonic() < retry_at:  # after a failure (a full disk), back off
                continue
            try:
                self._idle.clear()
                self.optimize_once()
                failures, self._optimizer_error = 0, None
            except Exception as exc:  # keep serving; report via info/log
                self._optimizer_error = exc
                failures += 1
                retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** failures)
                log.exception("collection %s: optimizer failed (retrying in %.1f s)", self.name,
                              retry_at - time.monotonic())
            finally:
                self._idle.set()

    def optimize_once(self, force_seal: bool = False) -> bool:
        """One optimizer step: seal, merge or vacuum; returns whether anything changed."""
        with self._opt_lock, self._lock:
            if self._unsealed:  # frozen by a seal that failed (a full disk): retry, oldest first
                return self._build_frozen(*self._unsealed[0])
            app = self._appendable
            if app.n and (force_seal or app.n >= self.config.segment_size):
                self._freeze(app)
                return self._build_frozen(*self._unsealed[0])
            sealed = [s for s in self._segments if s.sealed]
            dirty = [s for s in sealed if s.n_deleted > self.config.vacuum_share * max(s.n, 1)]
            if dirty:
                return self._rebuild([dirty[0]])
            small = sorted((s for s in sealed if s.live < self.config.segment_size // 2),
                           key=lambda s: s.live)
            if len(sealed) > self.config.max_segments and len(small) >= 2:
                return self._rebuild(small[:2])
        return False

    def _freeze(self, app: Segment) -> None:
        """Stop writes to ``app`` (holding the lock): a new appendable segment takes them,
        and ``app`` waits in ``_unsealed`` with the last seq it holds until it is sealed."""
        app.frozen = True
        self._unsealed.append((app, self._last_seq))
        self._appendable = self._new_appendable()
        self._segments.append(self._appendable)

    def _build_frozen(self, frozen: Segment, seq: int) -> bool:
        # called holding self._lock; builds without it. A failed build (a full disk) leaves
        # no partial directory and keeps the segment frozen and searchable for a retry; its
        # rows stay in the log until a checkpoint covers them.
        seg_id = self._next_segment
        self._next_segment += 1
        path = self.path / "segments" / f"seg-{seg_id:06d}"
        self._lock.release()
        try:
            sealed = frozen.build_sealed(seg_id, self._field_specs(), path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            self._lock.acquire()
        self._unsealed.pop(0)
        self._swap([frozen], sealed, None)
        self._checkpoint(seq)
        return True

    def _rebuild(self, sources: list[Segment]) -> bool:
        """Merge/vacuum: one new sealed segment holding the live rows of ``sources``."""
        seg_id = self._next_segment
        self._next_segment += 1
        snapshot = [(s, ~_live_mask(s)) for s in sources]
        self._lock.release()
        try:
            merged = _concat_live(sources, snapshot, self._field_specs())
            sealed = merged.build_sealed(seg_id, self._field_specs(),
                                         self.path / "segments" / f"seg-{seg_id:06d}")
        except BaseException:
            shutil.rmtree(self.path / "segments" / f"seg-{seg_id:06d}", ignore_errors=True)
            raise
        finally:
            self._lock.acquire()
        # rows deleted in the sources while we built stay deleted in the result
        origin = [(s, p) for s, dead in snapshot for p in np.flatnonzero(~dead).tolist()]
        self._swap(sources, sealed, origin)
        if sealed.live == 0:  # everything was deleted meanwhile: keep no empty segment
            self._segments.remove(sealed)
            shutil.rmtree(sealed.path, ignore_errors=True)
        # not _last_seq: the appendable segment's rows live only in the WAL after the last
        # checkpoint, so that checkpoint stays; the new bitmaps may include later deletes,
        # which replay applies again harmlessly
        self._checkpoint(self._checkpoint_seq)
        for s in sources:
            shutil.rmtree(s.path, ignore_errors=True)
        return True

    def _swap(self, sources: list[Segment], sealed: Segment, origin) -> None:
        """Replace ``sources`` by ``sealed`` (holding the lock). ``origin[i]`` is the source row
        of sealed row i (None: row i of the single source)."""
        if origin is None:
            origin = [(sources[0], i) for i in range(sealed.n)]
        dead = []
        for i, (src, p) in enumerate(origin):
            ext = sealed.ext_ids[i]
            loc = self._locator.get(ext)
            if loc is not None and loc[0] is src and loc[1] == p:
                self._locator[ext] = (sealed, i)
            else:
                dead.append(i)
        sealed.mark_deleted(np.asarray(dead, np.int64))
        sealed.dirty = True
        for key, kind in self.config.payload_indexes.items():
            sealed.payloads.create_index(key, kind)
        idx = self._segments.index(sources[0])
        self._segments[idx] = sealed
        for s in sources[1:]:
            self._segments.remove(s)

    def _checkpoint(self, seq: int) -> None:
        """Persist deletion bitmaps and the manifest; WAL records <= seq are then redundant."""
        entries = []
        old_files = []
        for s in self._segments:
            if not s.sealed:
                continue
            prev = s.deleted_file
            if s.dirty or prev is None:
                name, crc = s.write_deleted(seq)
                if prev and prev != name:
                    old_files.append(s.path / prev)
                s.deleted_file, s.deleted_crc = name, crc
            entries.append({"id": s.id, "dir": s.path.name, "deleted": s.deleted_file,
                            "deleted_crc": s.deleted_crc})
        write_manifest(self.path, seq, self._next_segment, entries)
        self._checkpoint_seq = seq
        for f in old_files:
            f.unlink(missing_ok=True)
        self._wal.truncate_before(seq + 1)

    def flush(self, timeout: float = 600.0) -> None:
        """Seal every row written before the call into indexed segments, then finish the
        merges and vacuums due. Writes made meanwhile go to a fresh appendable segment and
        do not extend the flush, so it ends under a steady stream of upserts."""
        self._check_writable()
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise InvalidArgument(f"timeout: expected a positive number of seconds, got {timeout!r}")
        deadline = time.monotonic() + timeout

        def step() -> None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"flush: optimizer still busy after the {timeout:g} s timeout")

        with self._opt_lock, self._lock:
            target = self._last_seq
            if self._appendable.n:
                self._freeze(self._appendable)
        while True:
            with self._lock:
                pending = any(seq <= target for _, seq in self._unsealed)
            if not pending:
                break
            self.optimize_once()  # builds the oldest frozen segment first
            step()
        while self.optimize_once():
            step()
        self._wake.set()

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._idle.wait(0.05):
            if time.monotonic() > deadline:
                raise TimeoutError("optimizer still busy")

    def wait_indexed(self, timeout: float = 600.0) -> None:
        """Block until no segment waits for sealing, merging or vacuuming."""
        deadline = time.monotonic() + timeout
        while True:
            self._wake.set()
            time.sleep(0.05)
            self._wait_idle(max(0.0, deadline - time.monotonic()))
            if self.info()["status"] == "green":
                return
            if time.monotonic() > deadline:
                raise TimeoutError("collection not indexed in time")

    # --- snapshots & lifecycle -----------------------------------------------------

    def snapshot(self, directory: str | Path | None = None) -> Path:
        """A tar archive of the collection at its current acknowledged state."""
        self._check_writable()
        out_dir = Path(directory) if directory else self.path.parent.parent / "snapshots"
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{self.name}-{time.strftime('%Y%m%dT%H%M%S')}-{self._last_seq}.tar"
        with self._write_lock:
            self._wait_idle(600)
            with self._lock:
                self._wal.sync()
                tmp = target.with_name(target.name + ".tmp")
                try:
                    with tarfile.open(tmp, "w") as tar:
                        for name in ("config.json", "manifest.json"):
                            if (self.path / name).exists():
                                tar.add(self.path / name, arcname=name)
                        for s in self._segments:
                            if s.sealed:
                                tar.add(s.path, arcname=f"segments/{s.path.name}")
                        tar.add(self.path / "wal", arcname="wal")
                        if (self.path / "learn").is_dir():
                            tar.add(self.path / "learn", arcname="learn")
                    tmp.replace(target)
                except BaseException:  # a full disk: no half-written archive eats the space
                    tmp.unlink(missing_ok=True)
                    raise
        return target

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._optimizer is not None:
            self._optimizer.join(timeout=600)
        if self._wal is not None:
            self._wal.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _id_order(x):
    return (0, x, "") if isinstance(x, int) else (1, 0, x)


def _live_mask(seg: Segment) -> np.ndarray:
    from .bitset import Bitset

    return ~Bitset(seg.deleted[: (seg.n + 63) >> 6], seg.n).to_mask() if seg.n else np.zeros(0, bool)


def _concat_live(sources, snapshot, specs: dict[str, FieldSpec]) -> Segment:
    """An in-memory appendable segment holding the live rows of several segments."""
    seg = Segment.appendable(0, specs)
    for s, dead in snapshot:
        rows = np.flatnonzero(~dead)
        if rows.size == 0:
            continue
        start = seg.n
        seg.append([s.ext_ids[r] for r in rows.tolist()], s.field_vectors(rows),
                   [s.payloads.get(r) for r in rows.tolist()], 0)
        seg.versions[start : start + rows.size] = s.versions[rows]
    return seg


def _merge_fields(old: FieldBatch, new: FieldBatch, n: int) -> FieldBatch:
    """The fields of ``n`` points: ``new``'s vectors where it has them, else ``old``'s."""
    out: FieldBatch = {}
    for name in dict.fromkeys([*old, *new]):
        rows: dict[int, np.ndarray] = {}
        for batch in (old, new):
            if name in batch:
                x, r = batch[name]
                rows.update(zip(range(n) if r is None else r.tolist(), x, strict=True))
        if rows:
            has = sorted(rows)
            multi = any(isinstance(b[name][0], TokenMatrices) for b in (old, new) if name in b)
            x = (as_token_matrices([rows[i] for i in has], rows[has[0]].shape[1], name) if multi
                 else np.stack([rows[i] for i in has]))
            out[name] = (x, None if len(has) == n else np.asarray(has, np.int64))
    return out


def _subset_fields(fields: FieldBatch, keep: np.ndarray, n: int) -> FieldBatch:
    """The fields of the points at batch indices ``keep`` (ascending), renumbered."""
    new_index = np.full(n, -1, np.int64)
    new_index[keep] = np.arange(keep.shape[0])
    out: FieldBatch = {}
    for name, (x, rows) in fields.items():
        if rows is None:
            out[name] = (x[keep], None)
            continue
        mapped = new_index[rows]
        sel = mapped >= 0
        out[name] = (x[sel], mapped[sel] if sel.sum() < keep.shape[0] else None)
    return out


@functools.lru_cache(maxsize=256)
def _stores_f16(spec: str) -> bool:
    """``ParsedSpec.stores_f16`` of an index spec, parsed once: every write asks."""
    return parse_index_spec(spec).stores_f16()
