"""Scrolling in the order of a payload value (Qdrant's ``order_by``): newest first by a
timestamp, cheapest first by a price.

A point is ordered by its smallest value of the key (its largest, descending), numbers or,
where the collection holds no number there, ISO-8601 datetimes; points without one are left
out. Ties go by id. Pages continue from ``start_from`` (the last page's last value), as in
Qdrant, not from a cursor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgument
from .payload import PayloadStore, key_path, parse_datetime


@dataclass(frozen=True, slots=True)
class OrderBy:
    key: str
    desc: bool = False
    start: float | None = None
    """The first value a page may hold (numbers, or UTC microseconds for datetimes)."""
    datetimes: bool = False
    """``start`` came as a datetime: order by datetimes."""


def parse_order_by(v: Any) -> OrderBy:
    """``"key"`` or ``{"key", "direction": "asc" | "desc", "start_from": number | datetime}``."""
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
    start, datetimes = v.get("start_from"), False
    if isinstance(start, str):
        us = parse_datetime(start)
        if us is None:
            raise InvalidArgument(f"order_by.start_from: {start!r:.60} is no ISO-8601 datetime")
        start, datetimes = float(us), True
    elif start is not None:
        if isinstance(start, bool) or not isinstance(start, (int, float)) \
                or not math.isfinite(start):
            raise InvalidArgument(f"order_by.start_from: expected a number or a datetime, got "
                                  f"{start!r:.40}")
        start = float(start)
    return OrderBy(key, direction == "desc", start, datetimes)


def has_numbers(store: PayloadStore, key: str) -> bool:
    col = store.column(key)
    return bool(len(col.typed("int")[0]) or len(col.typed("float")[0]))


def order_values(store: PayloadStore, allowed: np.ndarray, order: OrderBy, numbers: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(positions, values) of the ``allowed`` positions (sorted) that hold a value to order
    by: each position's smallest (ascending) or largest (descending), within ``start``."""
    col = store.column(order.key)
    if numbers:
        parts = [col.typed("int"), col.typed("float")]
        pos = np.concatenate([p for p, _ in parts])
        val = np.concatenate([v.astype(np.float64) for _, v in parts])
    else:
        pos, val = col.datetimes()
        val = val.astype(np.float64)
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
