"""Qdrant's score formulas (score boosting): the points a query's ``prefetch`` searches found,
re-scored by an expression over their prefetch scores, payload values and conditions, e.g.
``{"sum": ["$score", {"mult": [0.5, {"key": "tag", "match": {"value": "h1"}}]}]}``.

An expression is a number; a variable (``"$score"`` or ``"$score[i]"``, the point's score in
the first or the i-th prefetch, or a payload key's number, its first one if a list); a
condition or filter (1 where the point passes, else 0); or one of ``sum``, ``mult``, ``max``,
``min`` (lists), ``neg``, ``abs``, ``sqrt``, ``exp``, ``log10``, ``ln``, ``acosh``, ``div``
(``left``, ``right``, ``by_zero_default``), ``pow`` (``base``, ``exponent``),
``geo_distance`` (metres from ``origin`` to the point at payload key ``to``), ``datetime`` (a
constant) and ``datetime_key`` (a payload key), both in seconds since the epoch, and the decays
``lin_decay``, ``exp_decay``, ``gauss_decay`` (``x``, ``target`` = 0, ``scale`` = 1,
``midpoint`` = 0.5: 1 at the target, ``midpoint`` at ``scale`` away):
- linear: max(0, 1 - (1 - midpoint) |x - target| / scale);
- exponential: midpoint ^ (|x - target| / scale);
- Gaussian: midpoint ^ ((x - target)^2 / scale^2).
A variable the point lacks (a prefetch that did not find it, a payload without the key) takes
its ``defaults`` entry, else 0. A value that is not finite (a division by zero without
``by_zero_default``, the root of a negative number...) is a 400 naming the point.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...engine.errors import InvalidArgument
from ...engine.filters import matches, parse_filter
from ...engine.geo import geo_point, haversine_m
from ...engine.payload import elements, key_path, parse_datetime
from ...engine.points import Point

_SCORE = re.compile(r"^\$score(?:\[(\d+)\])?$")
_LISTS = {"sum": np.sum, "mult": np.prod, "max": np.max, "min": np.min}
_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "neg": np.negative, "abs": np.abs, "sqrt": np.sqrt, "exp": np.exp, "log10": np.log10,
    "ln": np.log, "acosh": np.arccosh}
_DECAYS = ("lin_decay", "exp_decay", "gauss_decay")
_FILTER_KEYS = {"must", "should", "must_not", "min_should"}


@dataclass
class Scope:
    """What a formula reads, one entry per candidate point: its payload, its id and its
    score in each prefetch (NaN where that prefetch did not find it)."""

    payloads: list[dict]
    ids: list
    scores: np.ndarray
    defaults: dict[str, Any]

    def missing(self, name: str) -> float:
        v = self.defaults.get(name, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InvalidArgument(f"query.defaults.{name}: expected a number, got {v!r:.40}")
        return float(v)


Node = Callable[[Scope], np.ndarray]


def compile_formula(expr: Any, n_prefetch: int, where: str = "query.formula") -> Node:
    """The expression as a function of a ``Scope`` giving one float64 per point; every error
    in it (an unknown operator, a bad key, a prefetch index past ``n_prefetch``) is raised
    here, before anything is searched."""
    if isinstance(expr, bool):
        raise InvalidArgument(f"{where}: expected a number, a variable or an expression, "
                              f"got {expr}")
    if isinstance(expr, (int, float)):
        if not math.isfinite(expr):
            raise InvalidArgument(f"{where}: {expr} is not a finite number")
        c = float(expr)
        return lambda s: np.full(len(s.ids), c)
    if isinstance(expr, str):
        return _variable(expr, n_prefetch, where)
    if not isinstance(expr, dict) or not expr:
        raise InvalidArgument(f"{where}: expected a number, a variable or an expression, "
                              f"got {type(expr).__name__}")
    if len(expr) == 1:
        (op, arg), = expr.items()
        at = f"{where}.{op}"
        if op in _LISTS:
            if not isinstance(arg, list) or not arg:
                raise InvalidArgument(f"{at}: expected a non-empty list of expressions")
            parts = [compile_formula(a, n_prefetch, f"{at}[{i}]") for i, a in enumerate(arg)]
            reduce = _LISTS[op]
            return lambda s: reduce(np.stack([p(s) for p in parts]), axis=0)
        if op in _UNARY:
            inner, fn = compile_formula(arg, n_prefetch, at), _UNARY[op]
            return lambda s: fn(inner(s))
        if op == "div":
            return _div(_params(arg, at, {"left", "right"}, {"by_zero_default"}), n_prefetch, at)
        if op == "pow":
            p = _params(arg, at, {"base", "exponent"})
            base, exp = (compile_formula(p[k], n_prefetch, f"{at}.{k}") for k in ("base", "exponent"))
            return lambda s: np.power(base(s), exp(s))
        if op == "datetime":
            c = _seconds(arg, at)
            return lambda s: np.full(len(s.ids), c)
        if op == "datetime_key":
            return _payload_values(arg, at, lambda e: _seconds(e, None))
        if op == "geo_distance":
            return _geo_distance(_params(arg, at, {"origin", "to"}), at)
        if op in _DECAYS:
            return _decay(op, _params(arg, at, {"x"}, {"target", "scale", "midpoint"}),
                          n_prefetch, at)
    return _condition(expr, where)


def _params(arg: Any, at: str, required: set[str], optional: frozenset | set = frozenset()
            ) -> dict:
    if not isinstance(arg, dict):
        raise InvalidArgument(f"{at}: expected an object with {', '.join(sorted(required))}")
    if missing := required - set(arg):
        raise InvalidArgument(f"{at}: missing {', '.join(sorted(missing))}")
    if extra := set(arg) - required - set(optional):
        raise InvalidArgument(f"{at}: unknown {', '.join(sorted(extra))}")
    return {k: v for k, v in arg.items() if v is not None}


def _number(v: Any, at: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidArgument(f"{at}: expected a finite number, got {v!r:.40}")
    return float(v)


def _variable(name: str, n_prefetch: int, where: str) -> Node:
    m = _SCORE.match(name)
    if m:
        i = int(m.group(1) or 0)
        if i >= n_prefetch:
            raise InvalidArgument(f"{where}: {name} names prefetch {i}, but the query has "
                                  f"{n_prefetch}")

        def score(s: Scope) -> np.ndarray:
            col = s.scores[:, i]
            return np.where(np.isnan(col), s.missing(name), col)
        return score
    if name.startswith("$"):
        raise InvalidArgument(f'{where}: unknown variable {name!r} ("$score" or "$score[i]")')
    return _payload_values(name, where, lambda e: None if isinstance(e, bool) else
                           float(e) if isinstance(e, (int, float)) else None)


def _payload_values(key: Any, where: str, read: Callable[[Any], float | None]) -> Node:
    """Each point's first element of payload ``key`` that ``read`` makes a number (the
    key's ``defaults`` entry, else 0, where there is none)."""
    try:
        path = key_path(key)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{where}: {exc}") from None

    def values(s: Scope) -> np.ndarray:
        out = np.empty(len(s.payloads))
        for j, p in enumerate(s.payloads):
            v = next((x for e in elements(p, path) if (x := read(e)) is not None), None)
            out[j] = s.missing(key) if v is None else v
        return out
    return values


def _seconds(v: Any, at: str | None) -> float | None:
    """An ISO-8601 datetime as seconds since the epoch (``at``: raise, naming it, if it is
    none; else None)."""
    us = parse_datetime(v) if isinstance(v, str) else None
    if us is None:
        if at is None:
            return None
        raise InvalidArgument(f"{at}: expected an ISO-8601 datetime, got {v!r:.40}")
    return us / 1e6


def _div(p: dict, n_prefetch: int, at: str) -> Node:
    left, right = (compile_formula(p[k], n_prefetch, f"{at}.{k}") for k in ("left", "right"))
    by_zero = _number(p["by_zero_default"], f"{at}.by_zero_default") \
        if "by_zero_default" in p else math.nan

    def div(s: Scope) -> np.ndarray:
        a, b = left(s), right(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(b == 0, by_zero, a / np.where(b == 0, 1.0, b))
    return div


def _geo_distance(p: dict, at: str) -> Node:
    origin = geo_point(p["origin"])
    if origin is None:
        raise InvalidArgument(f"{at}.origin: expected {{\"lon\", \"lat\"}}")

    def metres(e: Any) -> float | None:
        g = geo_point(e)
        return None if g is None else float(
            haversine_m(np.array([g[0]]), np.array([g[1]]), *origin)[0])
    return _payload_values(p["to"], f"{at}.to", metres)


def _decay(op: str, p: dict, n_prefetch: int, at: str) -> Node:
    x = compile_formula(p["x"], n_prefetch, f"{at}.x")
    target = compile_formula(p.get("target", 0.0), n_prefetch, f"{at}.target")
    scale = _number(p.get("scale", 1.0), f"{at}.scale")
    midpoint = _number(p.get("midpoint", 0.5), f"{at}.midpoint")
    if scale <= 0:
        raise InvalidArgument(f"{at}.scale: expected a number above 0, got {scale:g}")
    if not (0.0 <= midpoint < 1.0 if op == "lin_decay" else 0.0 < midpoint < 1.0):
        raise InvalidArgument(f"{at}.midpoint: expected a number in "
                              f"{'[0, 1)' if op == 'lin_decay' else '(0, 1)'}, got {midpoint:g}")

    def decay(s: Scope) -> np.ndarray:
        d = np.abs(x(s) - target(s)) / scale
        if op == "lin_decay":
            return np.maximum(0.0, 1.0 - (1.0 - midpoint) * d)
        return np.power(midpoint, d if op == "exp_decay" else d * d)
    return decay


def _condition(expr: dict, where: str) -> Node:
    body = expr if set(expr) & _FILTER_KEYS else {"must": [expr]}
    try:
        flt = parse_filter(body, where)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc} (a formula's object is an operator {{"
                              f"{', '.join(sorted((*_LISTS, *_UNARY, 'div', 'pow')))}, ...}} "
                              f"or a condition)") from None

    def passes(s: Scope) -> np.ndarray:
        return np.fromiter((matches(flt, p, i) for p, i in zip(s.payloads, s.ids, strict=True)),
                           np.float64, len(s.ids))
    return passes


def rescore(node: Node, lists: list[list[Point]], payloads: dict, defaults: dict[str, Any]
            ) -> list[Point]:
    """The prefetched points (first found first) with the formula's value as their score,
    best first (ties keep that order)."""
    ids = list(dict.fromkeys(h.id for hits in lists for h in hits if h.id in payloads))
    if not ids:
        return []
    at = {pid: j for j, pid in enumerate(ids)}
    scores = np.full((len(ids), len(lists)), np.nan)
    for i, hits in enumerate(lists):
        for h in hits:
            if h.id in at:
                scores[at[h.id], i] = h.score
    scope = Scope([payloads[i] or {} for i in ids], ids, scores, defaults)
    with np.errstate(all="ignore"):
        value = np.asarray(node(scope), np.float64)
    bad = np.flatnonzero(~np.isfinite(value))
    if len(bad):
        raise InvalidArgument(f"query.formula: not a finite number for point {ids[bad[0]]!r} "
                              f"(a division by zero without by_zero_default, the root or "
                              f"logarithm of a number out of range?)")
    order = np.argsort(-value, kind="stable")
    return [Point(ids[j], float(value[j])) for j in order.tolist()]
