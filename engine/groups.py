"""Search results grouped by a payload value (Qdrant's ``search/groups``): the best
``limit`` groups of up to ``group_size`` hits each, e.g. the best chunks of the best ten
documents when every point is a chunk carrying its document's id.

A search cannot know how many hits fill the groups, so it fetches more until they are
full, the collection has no more matching points, or ``max_hits`` is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument
from .payload import elements, split_key
from .points import Point
from .projection import payload_projection

FIRST_FETCH = 2
"""The first search fetches ``FIRST_FETCH * limit * group_size`` hits, then 4x as many."""


@dataclass
class Group:
    """One value of the grouping key and its best hits, best first."""

    id: str | int
    hits: list[Point] = field(default_factory=list)


def group_values(payload: dict | None, path: tuple[str, ...]) -> list[str | int]:
    """The values a point is grouped under: the key's strings and integers (a list puts the
    point in each of its values' groups); none, and the point is in no group."""
    if not payload:
        return []
    return list(dict.fromkeys(v for v in elements(payload, path)
                              if isinstance(v, str) or (isinstance(v, int)
                                                        and not isinstance(v, bool))))


def group_hits(hits: list[Point], path: tuple[str, ...], limit: int,
               group_size: int) -> list[Group]:
    """Hits (best first) into groups ordered by their best hit: at most ``limit`` groups,
    ``group_size`` hits each."""
    groups: dict[str | int, Group] = {}
    for h in hits:
        for v in group_values(h.payload, path):
            g = groups.get(v)
            if g is None:
                if len(groups) == limit:
                    continue
                g = groups[v] = Group(v)
            if len(g.hits) < group_size:
                g.hits.append(h)
    return list(groups.values())


def search_groups(search: Callable[..., list[Point]], group_by: str, limit: int,
                  group_size: int, max_hits: int, with_payload: Any = False,
                  with_vectors: bool = False, filter: dict | None = None) -> list[Group]:
    """Groups from ``search(k=, filter=, with_payload=True, with_vectors=)``: see the module
    docstring. Points without a string or integer value under ``group_by`` are skipped."""
    if not isinstance(group_by, str):
        raise InvalidArgument(f"group_by: expected a payload key, got {type(group_by).__name__}")
    try:
        path = split_key(group_by)
    except InvalidArgument as exc:
        raise InvalidArgument(f"group_by: {exc}") from None
    for name, v in (("limit", limit), ("group_size", group_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidArgument(f"{name}: expected a positive integer, got {v!r}")
    projection = payload_projection(with_payload)
    has_key = {"must_not": [{"is_empty": {"key": group_by}}]}
    flt = has_key if filter is None else {"must": [filter, has_key]}
    fetch = min(FIRST_FETCH * limit * group_size, max_hits)
    while True:
        hits = search(k=fetch, filter=flt, with_payload=True, with_vectors=with_vectors)
        groups = group_hits(hits, path, limit, group_size)
        full = len(groups) == limit and all(len(g.hits) == group_size for g in groups)
        if full or len(hits) < fetch or fetch >= max_hits:
            break
        fetch = min(4 * fetch, max_hits)
    for g in groups:
        for h in g.hits:
            h.payload = projection(h.payload) if projection is not None else None
    return groups
