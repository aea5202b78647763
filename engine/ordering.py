"""Scrolling in the order of a payload value (Qdrant's ``order_by``): newest first by a
timestamp, cheapest first by a price.

A point is ordered by its smallest value of the key (its largest, descending): integers
(exactly), numbers (as floats, once any value is a float) or, where the collection holds no
number there, ISO-8601 datetimes; points without one are left out. Ties go by id. Pages
continue from ``start_from`` (the last page's last value), as in Qdrant, not a cursor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .errors import InvalidArgument
from .payload import INT64_MAX, INT64_MIN, PayloadStore, key_path, parse_datetime


@dataclass(frozen=True)
class OrderBy:
    key: str
    desc: bool = False
    start: int | float | None = None
    """The first value a page may hold (a number, or UTC microseconds for a datetime)."""
    kind: str | None = None
    """What is ordered: "int" (exact int64), "float", "datetime"; None until ``resolve``
    looks at the data (a datetime ``start_from`` fixes it)."""


KINDS = ("int", "float", "datetime")


def parse_order_by(v: Any) -> OrderBy:
    """``"key"`` or ``{"key", "direction": "asc" | "desc", "start_from": number | datetime}``
    (an ``OrderBy`` passes through)."""
    if isinstance(v, OrderBy):
        return v
    if isinstance(v, str):
        v = {"key": v}
    if not isinstance(v, dict) or "key" not in v or not set(v) <= {"key", "direction",
                                                                    "start_from"}:
        raise InvalidArgument('order_by: expected a payload key or {"key", "direction", '
                              f'"start_from"}}, got {v!r:.80}')
    key = v["key"]
    key_path(key, "order_by")
    direction = v.get("direction") or "asc"
    if direction not in ("asc", "desc"):
        raise InvalidArgument(f"order_by.direction: 'asc' or 'desc', got {direction!r:.40}")
    start, kind = v.get("start_from"), None
    if isinstance(start, str):
        start = parse_datetime(start)
        if start is None:
            raise InvalidArgument(f"order_by.start_from: {v['start_from']!r:.60} is no "
                                  f"ISO-8601 datetime")
        kind = "datetime"
    elif start is not None:
        if isinstance(start, bool) or not isinstance(start, (int, float)) or (
                isinstance(start, float) and not math.isfinite(start)):
            raise InvalidArgument(f"order_by.start_from: expected a number or a datetime, got "
                                  f"{start!r:.40}")
        if isinstance(start, int) and not INT64_MIN <= start <= INT64_MAX:
            raise InvalidArgument(f"order_by.start_from: integer {start} does not fit in 64 "
                                  f"bits (signed)")
    return OrderBy(key, direction == "desc", start, kind)


def value_kinds(store: PayloadStore, key: str) -> set[str]:
    """Which of ``KINDS`` the key holds in ``store`` ("datetime": strings that parse)."""
    col = store.column(key)
    found = {k for k, t in (("int", "int"), ("float", "float")) if len(col.typed(t)[0])}
    if len(col.datetimes()[0]):
        found.add("datetime")
    return found


def resolve(order: OrderBy, kinds: set[str]) -> OrderBy:
    """``order`` with its kind fixed from what the collection holds (``value_kinds`` of all
    its segments or shards): numbers before datetimes; floats make it float."""
    if order.kind is not None:
        return order
    if "float" in kinds or isinstance(order.start, float):
        kind = "float"
    elif "int" in kinds:
        kind = "int"
    else:
        kind = "datetime"
    return replace(order, kind=kind)


def order_values(store: PayloadStore, allowed: np.ndarray, order: OrderBy
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(positions, values) of the ``allowed`` positions that hold a value to order by: each
    position's smallest (ascending) or largest (descending), within ``start``; int64 values
    for "int" and "datetime" (exact), float64 for "float". ``order`` is resolved."""
    col = store.column(order.key)
    if order.kind == "float":
        parts = [col.typed("int"), col.typed("float")]
        pos = np.concatenate([p for p, _ in parts])
        val = np.concatenate([v.astype(np.float64) for _, v in parts])
    else:
        pos, val = col.typed("int") if order.kind == "int" else col.datetimes()
    keep = np.isin(pos, allowed)
    if order.start is not None:
        keep &= (val <= order.start) if order.desc else (val >= order.start)
    pos, val = pos[keep], val[keep]
    if not len(pos):
        return pos, val
    by = np.lexsort((-val if order.desc else val, pos))  # per position, its best value first
    pos, val = pos[by], val[by]
    first = np.ones(len(pos), bool)
    first[1:] = pos[1:] != pos[:-1]
    return pos[first], val[first]
