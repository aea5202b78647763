"""The filter language: Qdrant-shaped JSON, parsed once into an immutable tree, compiled per
segment into a ``Bitset`` of allowed positions.

``{"must": [...], "should": [...], "must_not": [...]}``: must = all hold, should = at least
one holds (when non-empty), must_not = none holds. Conditions: ``{"key": k, "match": {"value":
v}}`` / ``{"any": [...]}`` / ``{"except": [...]}``, ``{"key": k, "range": {"gt"|"gte"|"lt"|
"lte": number or ISO-8601 string}}``, ``{"key": k, "match": {"text": s}}`` (a string value
containing s; with a full-text index on k, every word of s), ``{"key": k, "values_count":
{"gt"|...: n}}``, ``{"key": k, "geo_radius" | "geo_bounding_box" | "geo_polygon": ...}``
(payload geo points ``{"lon", "lat"}``; ``geo``), ``{"nested": {"key": k, "filter": f}}``
(one element of the array at k passes f), ``{"has_id": [...]}``, ``{"has_vector": name}``
(answered by the segment), ``{"is_empty": {"key": k}}``, ``{"is_null": {"key": k}}`` and
nested filters; beside the clauses, ``"min_should": {"conditions": [...], "min_count": m}``
(at least m of them hold). Field semantics (dotted paths, arrays match if any element
does, strict JSON types) are described in ``payload``.

Three evaluators share one meaning (a full-text index alone changes ``match.text``, so the
reference below knows only its substring meaning): ``compile`` (vectorised, uses payload indexes),
``estimate_selectivity`` (cheap: index counts, else a sample) and ``matches`` (plain Python,
one payload at a time: the reference the tests hold the other two to).
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bitset import Bitset
from .errors import InvalidArgument
from .geo import GeoBox, GeoPolygon, GeoRadius, geo_point, parse_geo
from .payload import (
    INT64_MAX,
    INT64_MIN,
    TEXT,
    PayloadStore,
    elements,
    key_path,
    parse_datetime,
    raw_values,
    split_key,
    words,
)

_CLAUSES = ("must", "should", "must_not")
_KEYS = (*_CLAUSES, "min_should")
_RANGE_OPS = ("gt", "gte", "lt", "lte")
_GEO = ("geo_radius", "geo_bounding_box", "geo_polygon")
_UNSUPPORTED = {"phrase", "text_any"}


# ---------------------------------------------------------------- tree

@dataclass(frozen=True, slots=True)
class Filter:
    must: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    key: str
    value: str | int | bool


@dataclass(frozen=True, slots=True)
class MatchText:
    """A string value containing ``text`` (Qdrant's match text on a field without a
    full-text index)."""
    key: str
    text: str


@dataclass(frozen=True, slots=True)
class MinShould:
    """At least ``min_count`` of ``conditions`` hold (parsed into the ``must`` clause)."""
    conditions: tuple[Condition, ...]
    min_count: int


@dataclass(frozen=True, slots=True)
class MatchAny:
    key: str
    strs: frozenset[str]
    ints: frozenset[int]


@dataclass(frozen=True, slots=True)
class MatchExcept:
    key: str
    strs: frozenset[str]
    ints: frozenset[int]


@dataclass(frozen=True, slots=True)
class Range:
    """Bounds are numbers, or UTC microseconds when ``datetime``; None = absent."""
    key: str
    gt: int | float | None = None
    gte: int | float | None = None
    lt: int | float | None = None
    lte: int | float | None = None
    datetime: bool = False


@dataclass(frozen=True, slots=True)
class ValuesCount:
    """How many values the key holds (an array's elements, its nulls too, as Qdrant counts
    them; 1 for a non-null scalar, 0 when absent or null) lies within the bounds."""
    key: str
    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None

    def test(self, counts: np.ndarray) -> np.ndarray:
        ok = np.ones(np.shape(counts), bool)
        for bound, holds in ((self.gt, np.greater), (self.gte, np.greater_equal),
                             (self.lt, np.less), (self.lte, np.less_equal)):
            if bound is not None:
                ok &= holds(counts, bound)
        return ok


@dataclass(frozen=True, slots=True)
class Nested:
    """Some object in the array at ``key`` passes ``filter`` on its own: its keys are relative
    to that object, and all its conditions hold for the same element (Qdrant's nested)."""
    key: str
    filter: Filter


@dataclass(frozen=True, slots=True)
class HasVector:
    """The point has a vector in field ``name`` ("" the unnamed one): a segment answers it,
    not the payload (``compile``'s ``vector_lookup``)."""
    name: str


@dataclass(frozen=True, slots=True)
class HasId:
    ids: frozenset[int | str]
    ints: np.ndarray | None = field(default=None, compare=False, repr=False)
    """The integer ids as a sorted uint64 array (the parser sets it; derived when None)."""

    def int_array(self) -> np.ndarray:
        if self.ints is not None:
            return self.ints
        return np.array(sorted(i for i in self.ids if type(i) is int), np.uint64)

    def str_ids(self) -> list[str]:
        if self.ints is not None and len(self.ints) == len(self.ids):
            return []
        return [i for i in self.ids if type(i) is str]


@dataclass(frozen=True, slots=True)
class IsEmpty:
    key: str


@dataclass(frozen=True, slots=True)
class IsNull:
    key: str


Condition = (Filter | Match | MatchText | MatchAny | MatchExcept | Range | HasId | IsEmpty | IsNull
             | MinShould | ValuesCount | GeoRadius | GeoBox | GeoPolygon | Nested | HasVector)
VectorLookup = Callable[[str], np.ndarray]
"""Positions, in one segment, of the rows that have a vector in the named field."""
IdLookup = Callable[["HasId"], np.ndarray]
"""Positions, in one segment, of the points a ``has_id`` condition lists (ids the segment
does not hold are left out); see ``id_lookup_from_ids``."""


# ---------------------------------------------------------------- parsing

def _tname(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _as_int(v: Any) -> int | None:
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    return None


def normalize_id(x: Any, path: str = "id") -> int | str:
    """An external id: an unsigned 64-bit int, or a UUID string in canonical lowercase form."""
    i = _as_int(x)
    if i is not None:
        if not 0 <= i < 1 << 64:
            raise InvalidArgument(f"{path}: id {i} is not an unsigned 64-bit integer")
        return i
    if isinstance(x, str):
        try:
            return str(uuid.UUID(x))
        except ValueError:
            raise InvalidArgument(f"{path}: {x!r} is not a UUID") from None
    raise InvalidArgument(f"{path}: expected an unsigned integer or a UUID string, got {_tname(x)}")


def parse_filter(obj: Any, path: str = "filter") -> Filter:
    """Validate a filter dict (None = match everything) into an immutable ``Filter``; errors
    are InvalidArgument naming the path, e.g. ``filter.must[1].range: unknown operator 'gtx'``."""
    if isinstance(obj, Filter):
        return obj
    if obj is None:
        return Filter()
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{path}: expected an object with must/should/must_not, "
                              f"got {_tname(obj)}")
    for k in obj:
        if k not in _KEYS:
            raise InvalidArgument(f"{path}: unknown clause {k!r} (expected must, should, must_not, "
                                  f"min_should)")
    clauses = {}
    for name in _CLAUSES:
        v = obj.get(name)
        if v is None:
            v = []
        elif isinstance(v, dict):  # a single condition, as Qdrant also accepts
            v = [v]
        elif not isinstance(v, (list, tuple)):
            raise InvalidArgument(f"{path}.{name}: expected a list of conditions, got {_tname(v)}")
        clauses[name] = tuple(_condition(c, f"{path}.{name}[{i}]") for i, c in enumerate(v))
    if obj.get("min_should") is not None:
        clauses["must"] += (_min_should(obj["min_should"], f"{path}.min_should"),)
    return Filter(**clauses)


def _min_should(v: Any, path: str) -> MinShould:
    if not isinstance(v, dict) or set(v) != {"conditions", "min_count"}:
        raise InvalidArgument(f"{path}: expected {{\"conditions\": [...], \"min_count\": n}}")
    conds, n = v["conditions"], _as_int(v["min_count"])
    if not isinstance(conds, (list, tuple)):
        raise InvalidArgument(f"{path}.conditions: expected a list of conditions, got {_tname(conds)}")
    if n is None or n < 0:
        raise InvalidArgument(f"{path}.min_count: expected a non-negative integer, got "
                              f"{v['min_count']!r}")
    return MinShould(tuple(_condition(c, f"{path}.conditions[{i}]") for i, c in enumerate(conds)), n)


def _key(c: dict, path: str) -> str:
    k = c.get("key")
    if not isinstance(k, str):
        raise InvalidArgument(f"{path}.key: expected a string, got {_tname(k)}")
    key_path(k, path)
    return k


def _condition(c: Any, path: str) -> Condition:
    if not isinstance(c, dict):
        raise InvalidArgument(f"{path}: expected a condition object, got {_tname(c)}")
    keys = set(c)
    if "key" in keys:
        key = _key(c, path)
        ops = sorted(keys - {"key"})
        if len(ops) != 1:
            what = "nothing" if not ops else ", ".join(ops)
            raise InvalidArgument(f"{path}: a field condition needs exactly one of match, range, "
                                  f"values_count, geo_radius, geo_bounding_box, geo_polygon; "
                                  f"got {what}")
        op = ops[0]
        if op == "match":
            return _match(c[op], key, f"{path}.match")
        if op == "range":
            return _range(c[op], key, f"{path}.range")
        if op in _GEO:
            return parse_geo(op, c[op], key, f"{path}.{op}")
        if op == "values_count":
            return _values_count(c[op], key, f"{path}.values_count")
        if op in _UNSUPPORTED:
            raise InvalidArgument(f"{path}.{op}: not supported")
        raise InvalidArgument(f"{path}: unknown condition key {op!r}")
    if keys <= set(_KEYS):  # a nested filter; {} matches everything, as at the top
        return parse_filter(c, path)
    if len(keys) != 1:
        raise InvalidArgument(f"{path}: expected one condition per object, got "
                              f"{', '.join(sorted(keys))}")
    (op, v), = c.items()
    if op == "has_id":
        if not isinstance(v, (list, tuple)):
            raise InvalidArgument(f"{path}.has_id: expected a list of ids, got {_tname(v)}")
        return _has_id(v, f"{path}.has_id")
    if op in ("is_empty", "is_null"):
        if not isinstance(v, dict) or set(v) != {"key"}:
            raise InvalidArgument(f"{path}.{op}: expected {{\"key\": <field>}}")
        key = _key(v, f"{path}.{op}")
        return IsEmpty(key) if op == "is_empty" else IsNull(key)
    if op == "has_vector":
        if not isinstance(v, str) or len(v) > 64:
            raise InvalidArgument(f"{path}.has_vector: expected a vector field name, got "
                                  f"{_tname(v)}")
        return HasVector(v)
    if op == "nested":
        if not isinstance(v, dict) or set(v) != {"key", "filter"}:
            raise InvalidArgument(f'{path}.nested: expected {{"key": <array field>, "filter": '
                                  f'{{...}}}}')
        inner = parse_filter(v["filter"], f"{path}.nested.filter")
        if _mentions_points(inner):
            raise InvalidArgument(f"{path}.nested.filter: has_id and has_vector are about "
                                  f"points, not array elements; put them beside the nested "
                                  f"condition")
        return Nested(_key(v, f"{path}.nested"), inner)
    if op in _UNSUPPORTED:
        raise InvalidArgument(f"{path}.{op}: not supported")
    raise InvalidArgument(f"{path}: unknown condition key {op!r}")


def _mentions_points(c: Condition) -> bool:
    """Whether ``c`` holds a condition on points themselves (has_id, has_vector)."""
    if isinstance(c, (HasId, HasVector)):
        return True
    if isinstance(c, Filter):
        return any(map(_mentions_points, (*c.must, *c.should, *c.must_not)))
    if isinstance(c, MinShould):
        return any(map(_mentions_points, c.conditions))
    return False


def _match_scalar(v: Any, path: str, allow_bool: bool) -> str | int | bool:
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        if allow_bool:
            return bool(v)
    else:
        i = _as_int(v)
        if i is not None:
            if not INT64_MIN <= i <= INT64_MAX:
                raise InvalidArgument(f"{path}: integer {i} does not fit in 64 bits (signed)")
            return i
    allowed = "a string, integer or bool" if allow_bool else "a string or integer"
    hint = " (use range for numbers)" if isinstance(v, float) else ""
    raise InvalidArgument(f"{path}: expected {allowed}, got {_tname(v)}{hint}")


def _match(m: Any, key: str, path: str) -> Condition:
    if not isinstance(m, dict):
        raise InvalidArgument(f"{path}: expected an object like {{\"value\": ...}}, got {_tname(m)}")
    if len(m) != 1:
        raise InvalidArgument(f"{path}: expected exactly one of value, any, except, text; "
                              f"got {', '.join(map(str, m)) or 'nothing'}")
    (op, v), = m.items()
    if op == "value":
        return Match(key, _match_scalar(v, f"{path}.value", True))
    if op == "text":
        if not isinstance(v, str):
            raise InvalidArgument(f"{path}.text: expected a string, got {_tname(v)}")
        return MatchText(key, v)
    if op in ("any", "except"):
        if not isinstance(v, (list, tuple)):
            raise InvalidArgument(f"{path}.{op}: expected a list, got {_tname(v)}")
        vals = [_match_scalar(x, f"{path}.{op}[{i}]", False) for i, x in enumerate(v)]
        strs = frozenset(x for x in vals if isinstance(x, str))
        ints = frozenset(x for x in vals if not isinstance(x, str))
        return (MatchAny if op == "any" else MatchExcept)(key, strs, ints)
    if op in _UNSUPPORTED:
        raise InvalidArgument(f"{path}.{op}: not supported")
    raise InvalidArgument(f"{path}: unknown operator {op!r}")


def _values_count(r: Any, key: str, path: str) -> ValuesCount:
    if not isinstance(r, dict) or not r or not set(r) <= set(_RANGE_OPS):
        raise InvalidArgument(f"{path}: expected an object of gt, gte, lt, lte, got {r!r:.60}")
    for op, v in r.items():
        i = None if isinstance(v, bool) else _as_int(v)
        if i is None:
            raise InvalidArgument(f"{path}.{op}: expected an integer, got {_tname(v)}")
        if not INT64_MIN <= i <= INT64_MAX:
            raise InvalidArgument(f"{path}.{op}: integer {i} does not fit in 64 bits (signed)")
    return ValuesCount(key, **{op: int(v) for op, v in r.items()})


def _range(r: Any, key: str, path: str) -> Range:
    if not isinstance(r, dict):
        raise InvalidArgument(f"{path}: expected an object like {{\"gte\": ...}}, got {_tname(r)}")
    bounds: dict[str, int | float] = {}
    kinds = set()
    for op, v in r.items():
        if op not in _RANGE_OPS:
            raise InvalidArgument(f"{path}: unknown operator {op!r}")
        if v is None:
            continue
        i = _as_int(v)
        if i is not None:
            if abs(i) > 1 << 64:
                raise InvalidArgument(f"{path}.{op}: {i} is out of range")
            bounds[op], kind = i, "number"
        elif isinstance(v, (float, np.floating)) and not isinstance(v, bool):
            if not math.isfinite(v):
                raise InvalidArgument(f"{path}.{op}: {v} is not a finite number")
            bounds[op], kind = float(v), "number"
        elif isinstance(v, str):
            us = parse_datetime(v)
            if us is None:
                raise InvalidArgument(f"{path}.{op}: {v!r} is not an ISO-8601 datetime")
            bounds[op], kind = us, "datetime"
        else:
            raise InvalidArgument(f"{path}.{op}: expected a number or an ISO-8601 datetime "
                                  f"string, got {_tname(v)}")
        kinds.add(kind)
    if not bounds:
        raise InvalidArgument(f"{path}: expected at least one of gt, gte, lt, lte")
    if len(kinds) > 1:
        raise InvalidArgument(f"{path}: mixes numbers and datetimes")
    return Range(key, datetime=kinds == {"datetime"}, **bounds)


# ---------------------------------------------------------------- intervals

def _int_interval(r: Range) -> tuple[int, int] | None:
    """The range as an inclusive integer interval [lo, hi] clamped to int64; None if empty.
    Exact for float bounds too (x > 2.5 <=> x >= 3), so int64 columns need no float casts."""
    lo, hi = INT64_MIN, INT64_MAX
    if r.gt is not None:
        lo = max(lo, r.gt + 1 if isinstance(r.gt, int) else math.floor(r.gt) + 1)
    if r.gte is not None:
        lo = max(lo, r.gte if isinstance(r.gte, int) else math.ceil(r.gte))
    if r.lt is not None:
        hi = min(hi, r.lt - 1 if isinstance(r.lt, int) else math.ceil(r.lt) - 1)
    if r.lte is not None:
        hi = min(hi, r.lte if isinstance(r.lte, int) else math.floor(r.lte))
    return (lo, hi) if lo <= hi else None


def _float_interval(r: Range) -> tuple[float, bool, float, bool]:
    """(lo, lo_inclusive, hi, hi_inclusive) over float64, exact for integer bounds that no
    float represents (x > b <=> x > the largest float below b)."""
    lo, lo_in, hi, hi_in = -math.inf, True, math.inf, True
    for op, b in (("gt", r.gt), ("gte", r.gte), ("lt", r.lt), ("lte", r.lte)):
        if b is None:
            continue
        f = float(b)
        lower = op in ("gt", "gte")
        if f == b:
            v, incl = f, op in ("gte", "lte")
        elif lower:
            v, incl = (f if f < b else float(np.nextafter(f, -math.inf))), False
        else:
            v, incl = (f if f > b else float(np.nextafter(f, math.inf))), False
        if lower and (v > lo or (v == lo and not incl)):
            lo, lo_in = v, incl
        elif not lower and (v < hi or (v == hi and not incl)):
            hi, hi_in = v, incl
    return lo, lo_in, hi, hi_in


def _in_range(x: int | float, r: Range) -> bool:
    return ((r.gt is None or x > r.gt) and (r.gte is None or x >= r.gte)
            and (r.lt is None or x < r.lt) and (r.lte is None or x <= r.lte))


# ---------------------------------------------------------------- reference evaluator

def matches(flt: Filter | dict | None, payload: dict | None, point_id: int | str | None = None
            ) -> bool:
    """Does one point pass? Plain Python over the payload dict: the reference semantics."""
    f = parse_filter(flt)
    pid = None if point_id is None else normalize_id(point_id, "point_id")
    return _ref(f, payload or {}, pid)


def _ref(c: Condition, p: dict, pid) -> bool:
    if isinstance(c, Filter):
        return (all(_ref(x, p, pid) for x in c.must)
                and (not c.should or any(_ref(x, p, pid) for x in c.should))
                and not any(_ref(x, p, pid) for x in c.must_not))
    if isinstance(c, HasId):
        return pid in c.ids
    if isinstance(c, MinShould):
        return sum(_ref(x, p, pid) for x in c.conditions) >= c.min_count
    if isinstance(c, HasVector):
        raise InvalidArgument("has_vector: answered by a segment's vectors, not by a payload")
    path = split_key(c.key)
    if isinstance(c, Nested):
        return any(isinstance(e, dict) and _ref(c.filter, e, None) for e in elements(p, path))
    if isinstance(c, IsNull):
        return any(v is None for v in raw_values(p, path))
    if isinstance(c, IsEmpty):
        return next(elements(p, path), None) is None
    if isinstance(c, Match):
        return any(type(e) is type(c.value) and e == c.value for e in elements(p, path))
    if isinstance(c, MatchText):
        return any(type(e) is str and c.text in e for e in elements(p, path))
    if isinstance(c, MatchAny):
        return any((type(e) is str and e in c.strs) or (type(e) is int and e in c.ints)
                   for e in elements(p, path))
    if isinstance(c, MatchExcept):
        return any(not ((type(e) is str and e in c.strs) or (type(e) is int and e in c.ints))
                   for e in elements(p, path))
    if isinstance(c, Range):
        if c.datetime:
            return any(type(e) is str and (t := parse_datetime(e)) is not None
                       and _in_range(t, c) for e in elements(p, path))
        return any(type(e) in (int, float) and _in_range(e, c) for e in elements(p, path))
    if isinstance(c, ValuesCount):
        n = sum(len(v) if isinstance(v, list) else int(v is not None)
                for v in raw_values(p, path))
        return bool(c.test(np.array(n)))
    if isinstance(c, (GeoRadius, GeoBox, GeoPolygon)):
        pts = [g for e in elements(p, path) if (g := geo_point(e)) is not None]
        return bool(pts) and bool(c.test(*np.array(pts, np.float64).T).any())
    raise TypeError(f"not a filter condition: {c!r}")


# ---------------------------------------------------------------- compile

def _has_id(v: list | tuple, path: str) -> HasId:
    # a long list of plain integers (an access list) is checked and sorted by NumPy
    if set(map(type, v)) <= {int} and (not v or min(v) >= 0):
        try:
            ints = np.sort(np.array(v, np.uint64))
        except OverflowError:  # past 64 bits: the general path names the entry
            pass
        else:
            keep = np.empty(len(ints), bool)
            keep[:1] = True
            np.not_equal(ints[1:], ints[:-1], out=keep[1:])
            return HasId(frozenset(v), ints[keep])
    ids = frozenset(normalize_id(x, f"{path}[{i}]") for i, x in enumerate(v))
    return HasId(ids, np.array(sorted(i for i in ids if type(i) is int), np.uint64))


def id_lookup_from_ids(ext_ids: Sequence[int | str] | np.ndarray) -> IdLookup:
    """An ``IdLookup`` over a segment whose position i holds (normalised) external id
    ``ext_ids[i]``; an id held at several positions (replaced rows) gives all of them."""
    ext = ext_ids.tolist() if isinstance(ext_ids, np.ndarray) else list(ext_ids)
    try:
        keys = np.array(ext, np.uint64)
        int_pos = np.arange(len(ext), dtype=np.int64)
        strs: dict[str, list[int]] = {}
    except (TypeError, ValueError, OverflowError):  # UUID ids too
        int_pos = np.fromiter((i for i, x in enumerate(ext) if type(x) is int), np.int64)
        keys = np.array([ext[i] for i in int_pos.tolist()], np.uint64)
        strs = {}
        for i, x in enumerate(ext):
            if type(x) is str:
                strs.setdefault(x, []).append(i)
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_pos = keys[order], int_pos[order]

    def lookup(c: HasId) -> np.ndarray:
        want = c.int_array()
        lo = np.searchsorted(sorted_keys, want, "left")
        hi = np.searchsorted(sorted_keys, want, "right")
        counts = hi - lo
        hit = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts,
                                                                         counts))
        found = sorted_pos[hit]
        extra = [p for u in c.str_ids() for p in strs.get(u, ())]
        return np.concatenate([found, np.array(extra, np.int64)]) if extra else found
    return lookup


class _Compiler:
    def __init__(self, store: PayloadStore, n: int, id_lookup: IdLookup | None,
                 vector_lookup: VectorLookup | None = None):
        self.store, self.n, self.id_lookup = store, n, id_lookup
        self.vector_lookup = vector_lookup

    def mask(self, positions: np.ndarray) -> np.ndarray:
        m = np.zeros(self.n, bool)
        m[positions[positions < self.n]] = True
        return m

    def filter(self, f: Filter) -> np.ndarray:
        m = np.ones(self.n, bool)
        for c in f.must:
            m &= self.cond(c)
            if not m.any():
                return m
        if f.should:
            s = np.zeros(self.n, bool)
            for c in f.should:
                s |= self.cond(c)
            m &= s
        for c in f.must_not:
            if not m.any():
                break
            m &= ~self.cond(c)
        return m

    def cond(self, c: Condition) -> np.ndarray:
        if isinstance(c, Filter):
            return self.filter(c)
        if isinstance(c, HasId):
            if self.id_lookup is None:
                raise InvalidArgument("has_id: no id lookup was given for this segment")
            return self.mask(np.asarray(self.id_lookup(c), np.int64))
        if isinstance(c, HasVector):
            if self.vector_lookup is None:
                raise InvalidArgument("has_vector: no vector lookup was given for this segment")
            return self.mask(np.asarray(self.vector_lookup(c.name), np.int64))
        store = self.store
        if isinstance(c, IsEmpty):
            return ~self.mask(store.column(c.key).present())
        if isinstance(c, IsNull):
            return self.mask(store.column(c.key).typed("null")[0])
        if isinstance(c, MinShould):
            held = np.zeros(self.n, np.int64)
            for x in c.conditions:
                held += self.cond(x)
            return held >= c.min_count
        if isinstance(c, Match):
            return self.mask(self._eq(c.key, c.value))
        if isinstance(c, MatchText):
            idx = store.index(c.key, TEXT)
            if idx is not None:  # a full-text index: points holding every word of the text
                found = [idx.eq(w) for w in dict.fromkeys(words(c.text))]
                hit = functools.reduce(np.intersect1d, found) if found else np.zeros(0, np.int64)
                return self.mask(hit)
            pos, vals = store.column(c.key).typed("str")
            hit = np.fromiter((c.text in v for v in vals.tolist()), bool, len(vals))
            return self.mask(pos[hit])
        if isinstance(c, MatchAny):
            parts = [self._isin(c.key, c.strs, "keyword", "str"),
                     self._isin(c.key, c.ints, "integer", "int")]
            return self.mask(np.concatenate(parts))
        if isinstance(c, MatchExcept):
            col = store.column(c.key)
            parts = [col.typed(t)[0] for t in ("float", "bool", "other")]
            for vals, t in ((c.strs, "str"), (c.ints, "int")):
                p, v = col.typed(t)
                parts.append(p[~np.isin(v, list(vals))] if vals else p)
            return self.mask(np.concatenate(parts))
        if isinstance(c, Range):
            return self.mask(self._range(c))
        if isinstance(c, Nested):  # per payload, over the points holding objects there
            pos = np.unique(store.column(c.key).typed("other")[0])
            pos = pos[pos < self.n]
            hit = np.fromiter((_ref(c, store.get(int(i)), None) for i in pos), bool, len(pos))
            return self.mask(pos[hit])
        if isinstance(c, ValuesCount):
            held = store.column(c.key).counted()
            return c.test(np.bincount(held[held < self.n], minlength=self.n))
        if isinstance(c, (GeoRadius, GeoBox, GeoPolygon)):
            pos, lonlat = store.column(c.key).typed("geo")
            return self.mask(pos[c.test(lonlat[:, 0], lonlat[:, 1])])
        raise TypeError(f"not a filter condition: {c!r}")

    def _eq(self, key: str, value) -> np.ndarray:
        kind, t = (("keyword", "str") if type(value) is str else
                   ("bool", "bool") if type(value) is bool else ("integer", "int"))
        idx = self.store.index(key, kind)
        if idx is not None:
            return idx.eq(value)
        p, v = self.store.column(key).typed(t)
        return p[v == value]

    def _isin(self, key: str, values: frozenset, kind: str, t: str) -> np.ndarray:
        if not values:
            return np.zeros(0, np.int64)
        idx = self.store.index(key, kind)
        if idx is not None:
            return np.concatenate([idx.eq(v) for v in values])
        p, v = self.store.column(key).typed(t)
        return p[np.isin(v, list(values))]

    def _range(self, r: Range) -> np.ndarray:
        store, key = self.store, r.key
        if r.datetime:
            iv = _int_interval(r)
            if iv is None:
                return np.zeros(0, np.int64)
            idx = store.index(key, "datetime")
            if idx is not None:
                return idx.between(iv[0], True, iv[1], True)
            p, v = store.column(key).datetimes()
            return p[(v >= iv[0]) & (v <= iv[1])]
        lo, lo_in, hi, hi_in = _float_interval(r)
        idx = store.index(key, "float")
        if idx is not None:
            return idx.between(None if lo == -math.inf else lo, lo_in,
                               None if hi == math.inf else hi, hi_in)
        p, v = store.column(key).typed("float")
        parts = [p[(v >= lo if lo_in else v > lo) & (v <= hi if hi_in else v < hi)]]
        iv = _int_interval(r)
        if iv is not None:
            idx = store.index(key, "integer")
            if idx is not None:
                parts.append(idx.between(iv[0], True, iv[1], True))
            else:
                p, v = store.column(key).typed("int")
                parts.append(p[(v >= iv[0]) & (v <= iv[1])])
        return np.concatenate(parts)


def compile(flt: Filter | dict | None, store: PayloadStore, n: int | None = None, *,
            id_lookup: IdLookup | None = None,
            vector_lookup: VectorLookup | None = None) -> Bitset:
    """The positions in [0, n) of ``store`` that pass ``flt`` (n defaults to ``len(store)``).

    Deletions are not our business: AND the result with the segment's live bitmap."""
    f = parse_filter(flt)
    n = len(store) if n is None else int(n)
    if not 0 <= n <= len(store):
        raise InvalidArgument(f"n: {n} is outside [0, {len(store)}] (the store's size)")
    return Bitset.from_mask(_Compiler(store, n, id_lookup, vector_lookup).filter(f))


compile_filter = compile


# ---------------------------------------------------------------- selectivity

class _Estimator:
    def __init__(self, store: PayloadStore, n: int, id_lookup: IdLookup | None,
                 sample_size: int, seed: int, vector_lookup: VectorLookup | None = None):
        self.store, self.n, self.id_lookup = store, n, id_lookup
        self.vector_lookup = vector_lookup
        self.sample_size, self.seed = sample_size, seed

    def sampled(self, c: Condition) -> float:
        sample = self.store.sample(self.sample_size, self.seed)
        return sum(_ref(c, p, None) for p in sample) / max(1, len(sample))

    def indexed(self, c: Condition) -> float | None:
        """Fraction from index counts, or None where no index answers the condition."""
        s = self.store
        if isinstance(c, HasId):
            k = len(c.ids) if self.id_lookup is None else len(self.id_lookup(c))
            return k / self.n
        if isinstance(c, HasVector):  # never sampled: a payload cannot answer it
            return 1.0 if self.vector_lookup is None else len(self.vector_lookup(c.name)) / self.n
        if isinstance(c, Match):
            kind = ("keyword" if type(c.value) is str else
                    "bool" if type(c.value) is bool else "integer")
            idx = s.index(c.key, kind)
            return None if idx is None else idx.count_eq(c.value) / self.n
        if isinstance(c, MatchText):
            idx = s.index(c.key, TEXT)
            if idx is None:
                return None
            counts = [idx.count_eq(w) for w in words(c.text)]
            return min(counts) / self.n if counts else 0.0
        if isinstance(c, MatchAny):
            total = 0
            for vals, kind in ((c.strs, "keyword"), (c.ints, "integer")):
                if vals:
                    idx = s.index(c.key, kind)
                    if idx is None:
                        return None
                    total += sum(idx.count_eq(v) for v in vals)
            return total / self.n
        if isinstance(c, Range):
            if c.datetime:
                idx, iv = s.index(c.key, "datetime"), _int_interval(c)
                if idx is None:
                    return None
                return 0.0 if iv is None else idx.count_between(iv[0], True, iv[1], True) / self.n
            idx = s.index(c.key, "float")
            if idx is not None:
                lo, lo_in, hi, hi_in = _float_interval(c)
                return idx.count_between(None if lo == -math.inf else lo, lo_in,
                                         None if hi == math.inf else hi, hi_in) / self.n
            idx, iv = s.index(c.key, "integer"), _int_interval(c)
            if idx is None:
                return None
            return 0.0 if iv is None else idx.count_between(iv[0], True, iv[1], True) / self.n
        return None

    def has_indexed(self, c: Condition) -> bool:
        if isinstance(c, Filter):
            return any(self.has_indexed(x) for x in (*c.must, *c.should, *c.must_not))
        if isinstance(c, MinShould):
            return any(map(self.has_indexed, c.conditions))
        return self.indexed(c) is not None

    def estimate(self, c: Condition) -> float:
        if isinstance(c, Filter):
            if not self.has_indexed(c):  # sampling the whole subtree keeps its correlations
                return self.sampled(c)
            p = math.prod(self.estimate(x) for x in c.must)
            if c.should:
                p *= 1.0 - math.prod(1.0 - self.estimate(x) for x in c.should)
            return p * math.prod(1.0 - self.estimate(x) for x in c.must_not)
        if isinstance(c, MinShould) and self.has_indexed(c):  # independent: P(>= m of them)
            dist = [1.0]  # dist[j]: P(exactly j hold so far)
            for x in c.conditions:
                p = self.estimate(x)
                dist = [(dist[j] if j < len(dist) else 0.0) * (1 - p)
                        + (dist[j - 1] * p if j else 0.0) for j in range(len(dist) + 1)]
            return float(sum(dist[c.min_count:]))
        v = self.indexed(c)
        return min(1.0, v) if v is not None else self.sampled(c)


def estimate_selectivity(flt: Filter | dict | None, store: PayloadStore, n: int | None = None,
                         *, id_lookup: IdLookup | None = None, sample_size: int = 256,
                         seed: int = 0, vector_lookup: VectorLookup | None = None) -> float:
    """Estimated fraction of [0, n) that passes ``flt``, without compiling it.

    Indexed conditions and has_id use exact counts (upper bounds for multi-valued fields);
    the rest is measured on a fixed random sample of ``sample_size`` payloads; AND/OR/NOT
    combine as if independent. 0.0 for an empty segment."""
    f = parse_filter(flt)
    n = len(store) if n is None else int(n)
    if n <= 0:
        return 0.0
    est = _Estimator(store, min(n, len(store)), id_lookup, sample_size, seed, vector_lookup)
    return float(min(1.0, max(0.0, est.estimate(f))))
