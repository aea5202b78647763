"""Per-segment payloads: a compact append-only store, lazy per-field columns, payload indexes.

A segment's points have positions 0..n-1 and one JSON-object payload each. Payloads are kept
as dicts while appendable and as one orjson blob + offsets once sealed, so a sealed segment
opens by memory-mapping two arrays instead of decoding every payload. Filters never walk dicts
per query: the first condition on a field flattens it into a typed ``Column`` (cached, extended
on append), and declared ``FieldIndex``es answer equality and ranges with ``np.searchsorted``.

Value semantics (shared with ``filters``): a key is a dotted path (``"meta.author"``; a ``[]``
suffix on a segment, as in Qdrant's ``"a[].b"``, is accepted and changes nothing); walking it
descends through dicts and through the dict elements of lists. The *raw values* are what the
path reaches; the *elements* are the raw values with lists flattened one level and nulls
dropped. Conditions on a field hold if any element satisfies them; types are strict, as in JSON:
``true`` is not ``1`` and ``3.0`` is not the integer ``3``.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import numpy as np
import orjson

from .errors import CorruptData, InvalidArgument
from .geo import geo_point
from .persist import load_arrays, save_arrays

INDEX_KINDS = ("keyword", "integer", "float", "bool", "datetime")
TEXT = "text"
"""The full-text index kind: it changes what ``match.text`` means on its field (every word
of the text, not a substring), so the kinds above, which only speed filters up, leave it out."""
_WORD = re.compile(r"\w+")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_EMPTY_I = np.zeros(0, np.int64)


# ---------------------------------------------------------------- values and paths

def canonical_payload(obj: Any, path: str = "payload") -> dict:
    """A validated JSON-only copy of ``obj`` (None -> {}); tuples become lists, numpy scalars
    Python numbers. Rejects what JSON or the indexes cannot hold: non-string keys, NaN/inf,
    integers outside int64, other objects; the message names the offending path."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{path}: expected a JSON object (dict), got {type(obj).__name__}")
    return _canon(obj, path)


def _check_key(k: str, path: str) -> None:
    """Filters and payload selectors address keys by dotted path (``a.b`` is key b inside
    a; ``a[]`` the elements of list a): a key that path syntax cannot name is refused rather
    than stored where no filter could ever match it."""
    if not k or "." in k or k.endswith("[]"):
        raise InvalidArgument(f"{path}: key {k!r} cannot be used in filters (keys must be "
                              f"non-empty, without '.' or a trailing '[]'; nest objects instead)")


def _canon(v: Any, path: str) -> Any:
    if type(v) is dict:  # fast path: plain JSON values need no conversion, paths stay unbuilt
        out = {}
        for k, x in v.items():
            tx = type(x)
            if type(k) is str and (x is None or tx is str or tx is bool
                                   or (tx is int and INT64_MIN <= x <= INT64_MAX)
                                   or (tx is float and math.isfinite(x))) \
                    and "." not in k and k and not k.endswith("[]"):
                out[k] = x
            else:
                if not isinstance(k, str):
                    raise InvalidArgument(f"{path}: key {k!r} is not a string")
                _check_key(k, path)
                out[k] = _canon(x, f"{path}.{k}")
        return out
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, (int, np.integer)) and not isinstance(v, np.bool_):
        v = int(v)
        if not INT64_MIN <= v <= INT64_MAX:
            raise InvalidArgument(f"{path}: integer {v} does not fit in 64 bits (signed)")
        return v
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            raise InvalidArgument(f"{path}: {v} is not a finite number (JSON has no NaN/inf)")
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise InvalidArgument(f"{path}: key {k!r} is not a string")
            _check_key(k, path)
            out[k] = _canon(x, f"{path}.{k}")
        return out
    if isinstance(v, (list, tuple)):
        return [_canon(x, f"{path}[{i}]") for i, x in enumerate(v)]
    raise InvalidArgument(f"{path}: {type(v).__name__} is not a JSON value")


@lru_cache(maxsize=4096)
def split_key(key: str) -> tuple[str, ...]:
    """``"a[].b.c"`` -> ("a", "b", "c"); raises InvalidArgument on an empty segment."""
    parts = tuple(p[:-2] if p.endswith("[]") else p for p in key.split("."))
    if not key or any(not p for p in parts):
        raise InvalidArgument(f"key {key!r}: expected a dotted path like 'meta.author'")
    return parts


def words(text: str) -> list[str]:
    """A full-text index's tokens: lower-cased runs of letters and digits (Qdrant's "word"
    tokenizer, lowercase)."""
    return _WORD.findall(text.lower())


def key_path(key: Any, where: str = "") -> tuple[str, ...]:
    """``split_key`` of a caller's ``key`` field, its errors naming the field's place
    (``where``: ``"filter.must[0]"`` gives ``filter.must[0].key ...``)."""
    at = f"{where}." if where else ""
    if not isinstance(key, str):
        raise InvalidArgument(f"{at}key: expected a string, got {type(key).__name__}")
    try:
        return split_key(key)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{at}{exc}") from None


def object_path(key: Any) -> tuple[str, ...]:
    """The path of the nested object a write goes into (``"meta.author"``): no ``[]`` steps,
    which would name many objects."""
    if isinstance(key, str) and "[]" in key:
        raise InvalidArgument(f"key: {key!r}: a path into list elements ('[]') is not "
                              f"supported here; name one nested object ('meta.author')")
    return key_path(key)


def merge_at(payload: dict, path: tuple[str, ...], new: dict) -> dict:
    """``payload`` with ``new``'s keys merged into the object at ``path`` (created where
    missing, replacing a value there that is not an object); the rest is shared."""
    if not path:
        return {**payload, **new}
    child = payload.get(path[0])
    return {**payload, path[0]: merge_at(child if isinstance(child, dict) else {}, path[1:], new)}


def raw_values(payload: dict, path: tuple[str, ...]) -> list:
    """Values the path reaches, descending through dicts and the dict elements of lists."""
    nodes: list = [payload]
    for part in path:
        nxt = []
        for node in nodes:
            if isinstance(node, dict):
                if part in node:
                    nxt.append(node[part])
            elif isinstance(node, list):
                nxt.extend(e[part] for e in node if isinstance(e, dict) and part in e)
        if not nxt:
            return nxt
        nodes = nxt
    return nodes


def elements(payload: dict, path: tuple[str, ...]) -> Iterator:
    """Raw values with lists flattened one level and nulls dropped: what conditions test."""
    for v in raw_values(payload, path):
        if isinstance(v, list):
            yield from (e for e in v if e is not None)
        elif v is not None:
            yield v


@lru_cache(maxsize=65536)
def parse_datetime(s: str) -> int | None:
    """ISO-8601 string -> UTC microseconds since the epoch (naive means UTC); None if not one."""
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _US


# ---------------------------------------------------------------- columns

class Column:
    """One field flattened into typed element arrays: ``(positions, values)`` per JSON type.

    Built once per field by walking the payloads, then extended on append. Each extension
    publishes a new dict of immutable numpy arrays in one assignment, so a filter that is
    reading the column while another thread extends it sees a consistent snapshot."""

    _TYPES = ("str", "int", "float", "bool", "other", "null")
    def __init__(self, key: str):
        self.key = key
        self.path = split_key(key)
        self.n = 0
        self._np: dict[str, tuple[np.ndarray, np.ndarray]] = {
            t: (_EMPTY_I, np.zeros(0, _COL_DTYPES.get(t, np.float64))) for t in self._TYPES}
        self._np["geo"] = (_EMPTY_I, np.zeros((0, 2)))  # the "other" elements that are geo points
        self._np["list_null"] = (_EMPTY_I, np.zeros(0))  # nulls inside arrays (values_count)
        self._dt: tuple[dict, np.ndarray, np.ndarray] | None = None

    def extend(self, payloads: Iterable[dict]) -> None:
        """Add the next payloads (positions n, n+1, ...). Callers serialise extensions."""
        pos: dict[str, list[int]] = {t: [] for t in (*self._TYPES, "geo", "list_null")}
        val: dict[str, list] = {t: [] for t in (*_COL_DTYPES, "geo")}
        i = self.n
        for p in payloads:
            for v in raw_values(p, self.path):
                if v is None:
                    pos["null"].append(i)
                    continue
                for e in (v if isinstance(v, list) else (v,)):
                    t = _TYPE_NAME.get(type(e), "other")
                    if t == "null":
                        pos["list_null"].append(i)
                        continue
                    pos[t].append(i)
                    if t != "other":
                        val[t].append(e)
                    elif (g := geo_point(e)) is not None:
                        pos["geo"].append(i)
                        val["geo"].append(g)
            i += 1
        out = {}
        for t, (old_p, old_v) in self._np.items():
            if not pos[t]:
                out[t] = (old_p, old_v)
                continue
            v = old_v
            if t == "geo":
                v = np.concatenate([old_v, np.asarray(val[t], np.float64).reshape(-1, 2)])
            elif t in val:
                v = np.empty(len(val[t]), _COL_DTYPES[t])
                v[:] = val[t]
                v = np.concatenate([old_v, v])
            out[t] = (np.concatenate([old_p, np.asarray(pos[t], np.int64)]), v)
        self._np = out
        self.n = i

    def typed(self, t: str) -> tuple[np.ndarray, np.ndarray]:
        """(positions int64, values) of the elements of type t ('str' values are an object
        array, 'int' int64, 'float' float64, 'bool' bool, 'geo' (m, 2) float64 of lon, lat for
        the objects that are geo points; 'other'/'null' values are empty)."""
        return self._np[t]

    def datetimes(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions, UTC microseconds) of the string elements that parse as datetimes."""
        snap, dt = self._np, self._dt
        if dt is None or dt[0] is not snap:
            p, v = snap["str"]
            us = [parse_datetime(s) for s in v.tolist()]
            ok = np.fromiter((u is not None for u in us), bool, len(us))
            dt = self._dt = (snap, p[ok], np.asarray([u for u in us if u is not None], np.int64))
        return dt[1], dt[2]

    def present(self) -> np.ndarray:
        """Positions with at least one non-null element (not ``is_empty``); may repeat."""
        snap = self._np
        return np.concatenate([snap[t][0] for t in ("str", "int", "float", "bool", "other")])

    def counted(self) -> np.ndarray:
        """A position once per value it holds (``values_count``: an array's elements, its
        nulls too, or 1 for a non-null scalar)."""
        return np.concatenate([self.present(), self._np["list_null"][0]])


_COL_DTYPES = {"str": object, "int": np.int64, "float": np.float64, "bool": np.bool_}
_TYPE_NAME = {str: "str", int: "int", float: "float", bool: "bool", type(None): "null"}


# ---------------------------------------------------------------- indexes

class FieldIndex:
    """Sorted ``(value, position)`` pairs of one field's elements of one kind.

    One structure serves both inverted lookups (value -> positions is a ``searchsorted`` slice)
    and ranges. Pairs are unique, so an equality count is the exact number of points; a range
    or multi-value count is an upper bound when points hold arrays. Keyword values are stored as
    codes into a sorted string table. ``n`` is the number of points it was built over."""

    __slots__ = ("_codes", "key", "kind", "n", "pos", "strings", "vals")

    def __init__(self, key: str, kind: str, vals: np.ndarray, pos: np.ndarray, n: int,
                 strings: list[str] | None = None):
        self.key, self.kind, self.n = key, kind, n
        self.vals, self.pos, self.strings = vals, pos, strings
        self._codes = {s: i for i, s in enumerate(strings)} if strings is not None else None

    @classmethod
    def build(cls, key: str, kind: str, col: Column) -> FieldIndex:
        strings = None
        if kind in ("keyword", TEXT):
            p, v = col.typed("str")
            if kind == TEXT:  # one (word, position) pair per word of each string
                toks = [words(x) for x in v.tolist()]
                p = np.repeat(p, [len(t) for t in toks])
                v = [w for t in toks for w in t]
            else:
                v = v.tolist()
            strings = sorted(set(v))
            code = {s: i for i, s in enumerate(strings)}
            vals = np.fromiter((code[s] for s in v), np.int64, len(v))
        elif kind == "integer":
            p, vals = col.typed("int")
        elif kind == "bool":
            p, v = col.typed("bool")
            vals = v.astype(np.int64)
        elif kind == "float":
            ip, iv = col.typed("int")
            fp, fv = col.typed("float")
            p, vals = np.concatenate([ip, fp]), np.concatenate([iv.astype(np.float64), fv])
        elif kind == "datetime":
            p, vals = col.datetimes()
        else:
            raise InvalidArgument(f"index kind {kind!r}: expected one of {', '.join(INDEX_KINDS)}")
        order = np.lexsort((p, vals))
        vals, p = vals[order], p[order]
        if len(vals) > 1:  # drop repeated (value, position) pairs: counts become exact
            keep = np.ones(len(vals), bool)
            keep[1:] = (vals[1:] != vals[:-1]) | (p[1:] != p[:-1])
            vals, p = vals[keep], p[keep]
        return cls(key, kind, np.ascontiguousarray(vals), np.ascontiguousarray(p), col.n, strings)

    def _slice(self, v) -> tuple[int, int]:
        if self._codes is not None:
            v = self._codes.get(v)
            if v is None:
                return 0, 0
        elif self.kind == "bool":
            v = int(v)
        elif self.kind in ("integer", "datetime") and not INT64_MIN <= v <= INT64_MAX:
            return 0, 0
        return (int(np.searchsorted(self.vals, v, "left")),
                int(np.searchsorted(self.vals, v, "right")))

    def eq(self, value) -> np.ndarray:
        """Positions whose field has an element equal to ``value`` (sorted, unique)."""
        a, b = self._slice(value)
        return self.pos[a:b]

    def count_eq(self, value) -> int:
        a, b = self._slice(value)
        return b - a

    def _range(self, lo, lo_incl: bool, hi, hi_incl: bool) -> tuple[int, int]:
        a = 0 if lo is None else int(np.searchsorted(self.vals, lo, "left" if lo_incl else "right"))
        b = len(self.vals) if hi is None else int(
            np.searchsorted(self.vals, hi, "right" if hi_incl else "left"))
        return a, max(a, b)

    def between(self, lo=None, lo_incl: bool = True, hi=None, hi_incl: bool = True) -> np.ndarray:
        """Positions with an element in the interval (None = unbounded); may repeat."""
        a, b = self._range(lo, lo_incl, hi, hi_incl)
        return self.pos[a:b]

    def count_between(self, lo=None, lo_incl: bool = True, hi=None, hi_incl: bool = True) -> int:
        a, b = self._range(lo, lo_incl, hi, hi_incl)
        return b - a

    def to_arrays(self, prefix: str) -> tuple[dict, dict[str, np.ndarray]]:
        arrays = {f"{prefix}_vals": self.vals, f"{prefix}_pos": self.pos}
        if self.strings is not None:
            arrays[f"{prefix}_strings"] = np.frombuffer(orjson.dumps(self.strings), np.uint8)
        return {"key": self.key, "kind": self.kind, "n": self.n, "prefix": prefix}, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> FieldIndex:
        p = meta["prefix"]
        strings = None
        if meta["kind"] in ("keyword", TEXT):
            strings = orjson.loads(np.asarray(arrays[f"{p}_strings"]).tobytes())
        return cls(meta["key"], meta["kind"], arrays[f"{p}_vals"], arrays[f"{p}_pos"],
                   int(meta["n"]), strings)


# ---------------------------------------------------------------- the store

class PayloadStore:
    """Payloads of one segment by position, plus its payload indexes.

    Append-only: a *base* part (orjson blob + offsets, e.g. memory-mapped from a sealed
    segment) followed by a *tail* list of dicts. Deletion is the segment's bitmap, not ours.
    Indexes are declared per (field, kind); after appends they are rebuilt from the column on
    next use (a numpy sort, no payload walk beyond the new points)."""

    PERSIST_KIND = "payload"

    def __init__(self) -> None:
        self._blob: np.ndarray = np.zeros(0, np.uint8)
        self._offsets: np.ndarray = np.zeros(1, np.int64)
        self._tail: list[dict] = []
        self._columns: dict[str, Column] = {}
        self._indexes: dict[tuple[str, str], FieldIndex | None] = {}
        self._lock = threading.RLock()  # appends vs lazy column/index builds
        self._sample: tuple[tuple[int, int, int], list[dict]] | None = None

    def __len__(self) -> int:
        return len(self._offsets) - 1 + len(self._tail)

    @property
    def _base_n(self) -> int:
        return len(self._offsets) - 1

    def append(self, payload: dict | None) -> int:
        """Add one payload (validated, copied); returns its position."""
        p = canonical_payload(payload)
        with self._lock:
            self._tail.append(p)
            return len(self) - 1

    def extend(self, payloads: Iterable[dict | None], validated: bool = False) -> range:
        """Add payloads in order; returns their positions. ``validated``: the caller already
        passed each through ``canonical_payload`` (and will not mutate them)."""
        if validated:
            new = list(payloads)
        else:
            new = [canonical_payload(p, f"payloads[{i}]") for i, p in enumerate(payloads)]
        with self._lock:
            start = len(self)
            self._tail.extend(new)
            return range(start, len(self))

    def get(self, pos: int) -> dict:
        """The payload at ``pos`` (a fresh dict for sealed payloads; do not mutate tail ones)."""
        base = self._base_n
        if pos < 0 or pos >= len(self):
            raise IndexError(f"payload position {pos} out of range [0, {len(self)})")
        if pos >= base:
            return self._tail[pos - base]
        a, b = int(self._offsets[pos]), int(self._offsets[pos + 1])
        return orjson.loads(self._blob[a:b].tobytes())

    def iter_payloads(self, start: int = 0) -> Iterator[dict]:
        base = self._base_n
        for i in range(start, base):
            yield self.get(i)
        yield from self._tail[max(0, start - base):]

    def __iter__(self) -> Iterator[dict]:
        return self.iter_payloads()

    def column(self, key: str) -> Column:
        """The field's typed column, built or extended to cover every stored payload."""
        with self._lock:
            col = self._columns.get(key)
            if col is None:
                col = self._columns[key] = Column(key)
            if col.n < len(self):
                col.extend(self.iter_payloads(col.n))
            return col

    def sample(self, k: int, seed: int = 0) -> list[dict]:
        """Up to ``k`` payloads at fixed random positions (cached until the store grows): what
        selectivity estimates measure unindexed conditions on."""
        tag = (len(self), k, seed)
        cached = self._sample
        if cached is not None and cached[0] == tag:
            return cached[1]
        n = len(self)
        pos = (np.sort(np.random.default_rng(seed).choice(n, k, replace=False)).tolist()
               if k < n else range(n))
        out = [self.get(i) for i in pos]
        self._sample = (tag, out)
        return out

    # ---- indexes

    def create_index(self, key: str, kind: str) -> FieldIndex | None:
        """Declare (and build) an index of ``kind`` on field ``key``; ``geo`` is declared
        only (geo filters scan the column's points, ``Column.typed("geo")``)."""
        if kind == "geo":
            split_key(key)
            return None
        if kind not in (*INDEX_KINDS, TEXT):
            raise InvalidArgument(f"index kind {kind!r}: expected one of "
                                  f"{', '.join((*INDEX_KINDS, TEXT, 'geo'))}")
        split_key(key)
        with self._lock:
            self._indexes.setdefault((key, kind), None)
            return self.index(key, kind)

    def drop_index(self, key: str, kind: str | None = None) -> None:
        with self._lock:
            for k in [k for k in self._indexes if k[0] == key and kind in (None, k[1])]:
                del self._indexes[k]

    def index(self, key: str, kind: str) -> FieldIndex | None:
        """The up-to-date index of ``kind`` on ``key``, or None if none is declared."""
        idx = self._indexes.get((key, kind), False)
        if idx is False:
            return None
        if idx is None or idx.n != len(self):
            with self._lock:
                if (key, kind) not in self._indexes:
                    return None
                idx = self._indexes[(key, kind)]
                if idx is None or idx.n != len(self):
                    idx = FieldIndex.build(key, kind, self.column(key))
                    self._indexes[(key, kind)] = idx
        return idx

    def indexes(self) -> list[tuple[str, str]]:
        """Declared (key, kind) pairs."""
        with self._lock:
            return list(self._indexes)

    # ---- persistence

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able meta, named arrays) holding payloads and up-to-date indexes."""
        chunks = [orjson.dumps(p) for p in self._tail]
        lens = np.fromiter((len(c) for c in chunks), np.int64, len(chunks))
        offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(lens)])
        blob = np.concatenate([np.asarray(self._blob, np.uint8),
                               np.frombuffer(b"".join(chunks), np.uint8)])
        arrays = {"payload_blob": blob, "payload_offsets": offsets}
        metas = []
        for i, (key, kind) in enumerate(self.indexes()):
            m, a = self.index(key, kind).to_arrays(f"idx{i}")
            metas.append(m)
            arrays.update(a)
        return {"n": len(self), "indexes": metas}, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> PayloadStore:
        """Reopen what ``to_arrays`` produced; arrays may be read-only memory maps."""
        s = cls()
        s._blob, s._offsets = arrays["payload_blob"], arrays["payload_offsets"]
        if len(s) != meta["n"] or (len(s._offsets) and int(s._offsets[-1]) != len(s._blob)):
            raise CorruptData(f"payload store: offsets do not match the blob or n={meta['n']}")
        for m in meta["indexes"]:
            s._indexes[(m["key"], m["kind"])] = FieldIndex.from_arrays(m, arrays)
        return s

    def save(self, directory: str | os.PathLike) -> None:
        meta, arrays = self.to_arrays()
        save_arrays(directory, self.PERSIST_KIND, meta, arrays)

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> PayloadStore:
        meta, arrays = load_arrays(directory, cls.PERSIST_KIND, mmap=mmap)
        return cls.from_arrays(meta, arrays)
