"""Searches in Qdrant's dialect: a ``QueryRequest`` (or a legacy search body) as the
arguments of ``Collection.search``, and its hits as Qdrant's ``ScoredPoint``s.

What Qdrant does that the engine leaves to its caller lives here: ``offset`` (search
``offset + limit``, drop the first), a query by point id (search with the point's stored
vector and leave the point out), Euclid scores (Qdrant answers the distance, the engine its
square) and ``with_vector`` naming fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...engine.collection import Collection
from ...engine.errors import InvalidArgument, NotFound
from ...engine.filters import normalize_id
from ...engine.params import SearchParams
from ...engine.points import Point
from . import schemas as q


def engine_params(p: q.QueryParams | None, limit: int) -> SearchParams | None:
    """Qdrant's ``hnsw_ef`` / ``exact`` / ``quantization`` and Quiver's knobs as one
    ``SearchParams``: ``rescore`` (or ``ignore``) re-ranks on the originals, ``oversampling``
    widens the beam to ``limit * oversampling``."""
    if p is None:
        return None
    if p.ef is not None and p.hnsw_ef is not None and p.ef != p.hnsw_ef:
        raise InvalidArgument(f"params: hnsw_ef ({p.hnsw_ef}) and ef ({p.ef}) disagree; give one")
    ef = p.ef if p.ef is not None else p.hnsw_ef
    rerank = p.rerank
    quant = p.quantization
    if quant is not None:
        if quant.ignore:
            rerank = True
        elif quant.rescore is not None:
            rerank = quant.rescore
        if quant.oversampling is not None:
            ef = max(ef or 64, math.ceil(limit * quant.oversampling))
    return SearchParams(ef=ef, nprobe=p.nprobe, rerank=rerank, exact=bool(p.exact))


@dataclass
class Query:
    """One Qdrant search, ready for ``Collection.search(vector, **args)``."""

    vector: Any
    args: dict[str, Any]
    limit: int
    offset: int = 0
    exclude: Any = None
    """The id queried by, left out of its own results."""
    euclid: bool = False
    vector_names: list[str] | None = None

    def answer(self, hits: list[Point]) -> list[dict[str, Any]]:
        """The hits as Qdrant's ``ScoredPoint``s (Quiver keeps no per-point version: 0)."""
        if self.exclude is not None:
            hits = [h for h in hits if h.id != self.exclude]
        hits = hits[self.offset : self.offset + self.limit]
        return [{"id": h.id, "version": 0,
                 "score": math.sqrt(max(h.score, 0.0)) if self.euclid else h.score,
                 "payload": h.payload, "vector": select_vector(h.vector, self.vector_names)}
                for h in hits]


def select_vector(vector: Any, names: list[str] | None) -> Any:
    """``with_vector`` as a list of field names: only those fields of a named vector."""
    if names is None or not isinstance(vector, dict):
        return vector
    return {n: v for n, v in vector.items() if n in names}


def select_vectors(points: list[Point], with_vector: bool | list[str]) -> list[Point]:
    """``points`` (read with their vectors when ``with_vector`` is a list of field names)
    keeping only those fields."""
    if isinstance(with_vector, list):
        for p in points:
            p.vector = select_vector(p.vector, with_vector)
    return points


def query(col: Collection, req: q.QueryRequest, check_k) -> Query:
    """``req`` as a ``Query`` on ``col``; a query by id reads the point's vector here (call in
    the worker pool). ``check_k(k, field)`` applies the server's limit."""
    if req.query is None:
        raise InvalidArgument("query: required (a vector, a point id or {\"nearest\": ...})")
    target = req.query.nearest if isinstance(req.query, q.NearestQuery) else req.query
    by_id = not isinstance(target, list)
    extra = 1 if by_id else 0
    check_k(req.limit + req.offset + extra, "limit + offset")
    out = build(col, None if by_id else target, req.using, req.limit, req.offset, req.filter,
                req.params, req.with_payload, req.with_vector, req.score_threshold, extra)
    if by_id:
        out.exclude = normalize_id(target, "query")
        out.vector = stored_vector(col, out.exclude, req.using)
    return out


def build(col: Collection, vector: Any, using: str | None, limit: int, offset: int,
          filter: dict | None, params: q.QueryParams | None, with_payload: Any,
          with_vector: Any, score_threshold: float | None, extra: int = 0,
          euclid: bool = True) -> Query:
    """The ``Query`` for one search. ``euclid``: answer Euclid distances as Qdrant does
    (legacy ``/points/search`` keeps Quiver's squared ones)."""
    is_l2 = euclid and col.vector_field(using).metric == "l2"
    if is_l2 and score_threshold is not None:  # a distance bound: the engine compares squares
        score_threshold = math.copysign(score_threshold * score_threshold, score_threshold)
    names = with_vector if isinstance(with_vector, list) else None
    args = {"k": limit + offset + extra, "filter": filter,
            "params": engine_params(params, limit + offset), "with_payload": with_payload,
            "with_vectors": bool(with_vector), "score_threshold": score_threshold,
            "using": using}
    return Query(vector, args, limit, offset, None, is_l2, names)


def stored_vector(col: Collection, point_id: Any, using: str | None) -> list[float]:
    """The vector a query by id searches with: the point's, in the field searched."""
    found = col.get([point_id], with_payload=False, with_vectors=True)
    if not found:
        raise NotFound(f"query: no point with id {point_id!r}")
    vec = found[0].vector
    if isinstance(vec, dict):
        name = using or ""
        if name not in vec:
            col.vector_field(using)  # names the fields when `using` is wrong or missing
            raise InvalidArgument(f"query: point {point_id!r} has no vector {name!r}")
        return vec[name]
    return vec
